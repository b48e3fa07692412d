//! io_uring construction, feature probing and the enter calls the event loops use.

use std::io;
use std::time::Duration;

use io_uring::{IoUring, opcode, types};

use crate::error::{Error, Result};

/// Ring setup flags, typed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RingSpec {
    pub(crate) entries: u32,
    pub(crate) cq_entries: u32,
    pub(crate) single_issuer: bool,
    pub(crate) defer_taskrun: bool,
    pub(crate) sqpoll: bool,
    pub(crate) sq_cpu: Option<u32>,
    pub(crate) sq_thread_idle: Duration,
}

/// Builds a ring on the calling thread (with SINGLE_ISSUER the creating thread becomes the only
/// submitter) and checks the opcodes zerg relies on.
pub(crate) fn build(spec: &RingSpec, who: &str) -> Result<IoUring> {
    let mut b = IoUring::builder();
    b.setup_cqsize(spec.cq_entries.max(spec.entries * 2))
        .setup_submit_all();
    if spec.single_issuer {
        b.setup_single_issuer();
    }
    if spec.defer_taskrun {
        // TASKRUN_FLAG makes the kernel flag pending deferred work in the SQ ring, which the
        // io-uring crate turns into GETEVENTS on every submit (docs/architecture.md, rule 12).
        b.setup_defer_taskrun().setup_taskrun_flag();
    }
    if spec.sqpoll {
        let idle = u32::try_from(spec.sq_thread_idle.as_millis()).unwrap_or(u32::MAX);
        b.setup_sqpoll(idle);
        if let Some(cpu) = spec.sq_cpu {
            b.setup_sqpoll_cpu(cpu);
        }
    }
    let ring = b
        .build(spec.entries)
        .map_err(|e| setup_error(e, who, spec))?;
    probe(&ring, who)?;
    Ok(ring)
}

fn setup_error(e: io::Error, who: &str, spec: &RingSpec) -> Error {
    let op = format!("io_uring_setup for {who}");
    match e.raw_os_error() {
        Some(libc::ENOSYS) => Error::io(
            format!("{op} (io_uring is not available in this kernel)"),
            e,
        ),
        Some(libc::EPERM) => Error::io(
            format!(
                "{op} (io_uring is disabled: check the kernel.io_uring_disabled sysctl or a \
                 seccomp profile such as Docker's default)"
            ),
            e,
        ),
        Some(libc::EINVAL) if spec.defer_taskrun || spec.single_issuer => Error::Unsupported {
            feature: "IORING_SETUP_SINGLE_ISSUER / IORING_SETUP_DEFER_TASKRUN",
            needs: "6.1",
            source: e,
        },
        _ => Error::io(op, e),
    }
}

fn probe(ring: &IoUring, who: &str) -> Result<()> {
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| Error::io(format!("IORING_REGISTER_PROBE for {who}"), e))?;
    let needed: [(u8, &'static str, &'static str); 5] = [
        (opcode::AcceptMulti::CODE, "multishot accept", "5.19"),
        (opcode::RecvMulti::CODE, "multishot recv", "6.0"),
        (opcode::MsgRingData::CODE, "IORING_OP_MSG_RING", "5.18"),
        (opcode::AsyncCancel2::CODE, "async cancel", "5.19"),
        (opcode::Send::CODE, "IORING_OP_SEND", "5.6"),
    ];
    for (code, feature, needs) in needed {
        if !probe.is_supported(code) {
            return Err(Error::Unsupported {
                feature,
                needs,
                source: io::Error::from_raw_os_error(libc::EOPNOTSUPP),
            });
        }
    }
    Ok(())
}

/// Opcodes zerg uses when a switch asks for them, with a fallback when the kernel lacks them.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Optional {
    /// `IORING_OP_FIXED_FD_INSTALL` (Linux 6.8; direct descriptors need it, and the kernels
    /// that have it have every other operation on direct descriptors zerg uses).
    pub(crate) fixed_fd_install: bool,
    /// `IORING_OP_SHUTDOWN` (Linux 5.11).
    pub(crate) shutdown: bool,
    /// `IORING_OP_SEND_ZC` (Linux 6.0) and `IORING_OP_SENDMSG_ZC` (6.1).
    pub(crate) send_zc: bool,
}

/// Which optional opcodes `ring`'s kernel has (all `false` if it cannot say).
pub(crate) fn optional(ring: &IoUring) -> Optional {
    let mut probe = io_uring::Probe::new();
    if ring.submitter().register_probe(&mut probe).is_err() {
        return Optional::default();
    }
    Optional {
        fixed_fd_install: probe.is_supported(opcode::FixedFdInstall::CODE),
        shutdown: probe.is_supported(opcode::Shutdown::CODE),
        send_zc: probe.is_supported(opcode::SendZc::CODE)
            && probe.is_supported(opcode::SendMsgZc::CODE),
    }
}

/// Completions a [`Wait::min_wait_usec`] wait collects before it returns early: enough for a
/// batch to pay off, few enough that a busy reactor rarely waits out the whole `min_wait`.
pub(crate) const MIN_WAIT_BATCH: usize = 32;

/// How a blocking enter waits.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Wait<'a> {
    /// Return after this long at most (ETIME), with or without a completion.
    pub(crate) timeout: Option<&'a types::Timespec>,
    /// Wait up to this many microseconds for [`MIN_WAIT_BATCH`] completions before returning
    /// for fewer (0: return for the first). Linux 6.12 (`IORING_FEAT_MIN_TIMEOUT`).
    pub(crate) min_wait_usec: u32,
}

/// The `min_wait` a ring can use: `wanted` in microseconds, or 0 with a log line when the kernel
/// lacks `IORING_FEAT_MIN_TIMEOUT` (before Linux 6.12).
pub(crate) fn min_wait_usec(ring: &IoUring, wanted: Option<Duration>, who: &str) -> u32 {
    let Some(d) = wanted else {
        return 0;
    };
    if !ring.params().is_feature_min_timeout() {
        tracing::warn!(
            %who,
            "min_wait needs Linux 6.12 (IORING_FEAT_MIN_TIMEOUT); waiting for the first completion instead"
        );
        return 0;
    }
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX).max(1)
}

/// Submits pending entries and, when `wait` is set, blocks until at least one completion (or
/// the wait's timeout; with a `min_wait`, until a batch or the `min_wait` ran out). Always enters
/// with GETEVENTS so deferred completion work runs.
///
/// Returns `Ok(())` also for the interruptions that are part of normal operation (`EINTR`,
/// `ETIME` from the timeout, `EBUSY` while the completion queue overflows: the caller reaps and
/// comes back).
pub(crate) fn submit(ring: &IoUring, wait: Option<Wait<'_>>) -> io::Result<()> {
    let submitter = ring.submitter();
    let res = match wait {
        // With DEFER_TASKRUN the ring has TASKRUN_FLAG, and the crate adds GETEVENTS whenever
        // the kernel flags pending completion work.
        None => submitter.submit(),
        Some(Wait {
            timeout: None,
            min_wait_usec: 0,
        }) => submitter.submit_and_wait(1),
        Some(Wait {
            timeout,
            min_wait_usec,
        }) => {
            // The kernel returns once `want` completions arrived, or, after `min_wait_usec`, as
            // soon as there is one (at once if some arrived meanwhile).
            let want = if min_wait_usec > 0 { MIN_WAIT_BATCH } else { 1 };
            let args = types::SubmitArgs::new().min_wait_usec(min_wait_usec);
            match timeout {
                Some(ts) => submitter.submit_with_args(want, &args.timespec(ts)),
                None => submitter.submit_with_args(want, &args),
            }
        }
    };
    match res {
        Ok(_) => Ok(()),
        Err(e) => match e.raw_os_error() {
            Some(libc::EINTR | libc::ETIME | libc::EBUSY | libc::EAGAIN) => Ok(()),
            _ => Err(e),
        },
    }
}

/// A `Timespec` for a `Duration`.
pub(crate) fn timespec(d: Duration) -> types::Timespec {
    types::Timespec::new()
        .sec(d.as_secs())
        .nsec(d.subsec_nanos())
}
