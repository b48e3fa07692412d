//! Setting a reactor up: its io_uring and its receive ring, with a clear error for what the
//! kernel refuses.

use io_uring::IoUring;

use super::BGID;
use crate::buf_ring::BufRing;
use crate::config::ReactorConfig;
use crate::error::{Error, Result};
use crate::sys;

/// The io_uring a reactor runs on: queue sizes and setup flags from its configuration.
pub(super) fn ring_spec(config: &ReactorConfig) -> sys::ring::RingSpec {
    sys::ring::RingSpec {
        entries: config.ring_entries,
        cq_entries: (config.buffer_ring_entries * 2).clamp(config.ring_entries * 2, 65536),
        single_issuer: config.single_issuer,
        defer_taskrun: config.defer_taskrun,
        sqpoll: config.sqpoll,
        sq_cpu: config.sq_cpu,
        sq_thread_idle: config.sq_thread_idle,
    }
}

/// Maps the receive buffers and registers them as the provided-buffer ring of `uring`.
pub(super) fn receive_ring(config: &ReactorConfig, uring: &IoUring, who: &str) -> Result<BufRing> {
    let mut bufs = BufRing::new(
        config.buffer_ring_entries as u16,
        config.effective_initial_recv_buffers() as u16,
        config.recv_buffer_size,
        BGID,
        config.incremental_buffer_consumption,
    )
    .map_err(|e| {
        Error::io(
            format!(
                "map {} receive buffers of {} bytes for {who}",
                config.buffer_ring_entries, config.recv_buffer_size
            ),
            e,
        )
    })?;
    if let Err(e) = bufs.register(&uring.submitter()) {
        return Err(register_error(
            e,
            config.incremental_buffer_consumption,
            who,
        ));
    }
    // With DEFER_TASKRUN (which excludes SQPOLL) the kernel writes received data only inside
    // this thread's io_uring_enter, so between two enters, with every completion reaped, idle
    // buffers in the ring may give their pages back.
    bufs.allow_idle_discard(config.defer_taskrun);
    Ok(bufs)
}

/// The error for a failed buffer-ring registration: kernels before 6.12 reject the
/// `IOU_PBUF_RING_INC` flag with `EINVAL`.
fn register_error(e: std::io::Error, incremental: bool, who: &str) -> Error {
    if incremental && e.raw_os_error() == Some(libc::EINVAL) {
        Error::Unsupported {
            feature: "incremental buffer consumption (IOU_PBUF_RING_INC)",
            needs: "6.12",
            source: e,
        }
    } else {
        Error::io(format!("IORING_REGISTER_PBUF_RING for {who}"), e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_kernel_rejecting_incremental_rings_gets_a_clear_error() {
        let einval = || std::io::Error::from_raw_os_error(libc::EINVAL);
        let e = register_error(einval(), true, "reactor 0");
        let msg = e.to_string();
        assert!(
            matches!(e, Error::Unsupported { needs: "6.12", .. }),
            "{e:?}"
        );
        assert!(
            msg.contains("IOU_PBUF_RING_INC") && msg.contains("Linux 6.12"),
            "{msg}"
        );
        // Without the flag, EINVAL is a plain registration failure naming the reactor.
        let e = register_error(einval(), false, "reactor 3");
        assert!(
            e.to_string()
                .starts_with("IORING_REGISTER_PBUF_RING for reactor 3"),
            "{e}"
        );
    }
}
