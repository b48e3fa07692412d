//! Every io_uring operation zerg submits, behind a safe [`Ring`] wrapper.
//!
//! The memory an operation points to is owned by the [`Ring`] itself (the eventfd read target,
//! timer specs, all boxed so their addresses are stable), by a [`SendBuf`], which keeps its
//! bytes untouched while its send is in flight and leaks them rather than free them if dropped
//! mid-flight, or by a [`ConnectOp`] (a connect's peer address and timeout), which does the same.
//! With that, pushing an entry cannot hand the kernel dangling memory.
//!
//! Every method takes `&self`: a reactor's ring is shared (`Rc`) with code running on its thread
//! that needs an answer from the kernel at once (installing a direct descriptor for a handler,
//! `fixed.rs`). The queues are borrowed only inside one method and the type is neither `Send`
//! nor `Sync` to other threads' code, so two submission or completion queue views never exist at
//! the same time.
#![allow(unsafe_code)]

use std::cell::{Cell, RefCell, UnsafeCell};
use std::collections::VecDeque;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use io_uring::types::{self, CancelBuilder, Fd, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};

use crate::sys;

mod connect_op;
mod fd;
pub(crate) mod fixed;
pub(crate) mod outgoing;
mod send_buf;
pub(crate) mod slots;
pub(crate) mod token;

pub(crate) use connect_op::ConnectOp;
pub(crate) use fd::{SockFd, on_fd};
pub(crate) use send_buf::{SendBuf, SendProgress, zc_copied};

/// The general timeout of a `min_wait` wait with nothing else bounding it: how often an idle
/// reactor with `min_wait` wakes.
const MIN_WAIT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// An io_uring plus the memory its operations point to.
pub(crate) struct Ring {
    uring: IoUring,
    // Target of the eventfd read (the kernel writes it).
    wake_buf: ManuallyDrop<Box<UnsafeCell<u64>>>,
    backoff: ManuallyDrop<Box<Timespec>>,
    grace: ManuallyDrop<Box<Cell<Timespec>>>,
    /// The boxes above are leaked instead of freed (operations may still use them).
    leaked: Cell<bool>,
    /// Completions taken out of the queue while looking for one answer (`fixed.rs`), handed out
    /// first, in their order, by [`completion`](Self::completion).
    stash: RefCell<VecDeque<cqueue::Entry>>,
    /// Descriptors installed inline (`fixed.rs`), for the stats.
    installs: Cell<u64>,
    /// Upper bound on every wait (`cq_timeout`), if configured.
    wait_timeout: Option<Duration>,
    /// `min_wait` of every blocking wait, in microseconds (0: off). A cell: submitting takes
    /// `&self`, and a kernel that refuses the value turns it off from then on.
    min_wait_usec: Cell<u32>,
}

/// The completions of a [`Ring`], in the order the kernel posted them.
pub(crate) struct Completions<'a> {
    stash: &'a RefCell<VecDeque<cqueue::Entry>>,
    cq: cqueue::CompletionQueue<'a>,
}

impl Completions<'_> {
    pub(crate) fn is_empty(&self) -> bool {
        self.stash.borrow().is_empty() && self.cq.is_empty()
    }
}

impl Iterator for Completions<'_> {
    type Item = cqueue::Entry;

    fn next(&mut self) -> Option<cqueue::Entry> {
        if let Some(e) = self.stash.borrow_mut().pop_front() {
            return Some(e);
        }
        self.cq.next()
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if !self.leaked.get() {
            // SAFETY: dropped once, here; nothing in flight uses them (a ring with operations in
            // flight is leaked with `leak_buffers` first).
            unsafe {
                ManuallyDrop::drop(&mut self.wake_buf);
                ManuallyDrop::drop(&mut self.backoff);
                ManuallyDrop::drop(&mut self.grace);
            }
        }
    }
}

impl Ring {
    pub(crate) fn new(uring: IoUring, backoff: Duration, wait_timeout: Option<Duration>) -> Self {
        Self {
            uring,
            wake_buf: ManuallyDrop::new(Box::new(UnsafeCell::new(0))),
            backoff: ManuallyDrop::new(Box::new(sys::ring::timespec(backoff))),
            grace: ManuallyDrop::new(Box::new(Cell::new(Timespec::new()))),
            leaked: Cell::new(false),
            stash: RefCell::new(VecDeque::new()),
            installs: Cell::new(0),
            wait_timeout,
            min_wait_usec: Cell::new(0),
        }
    }

    /// Batches completions in every blocking wait from now on ([`sys::ring::Wait`]); 0 turns it
    /// off.
    pub(crate) fn set_min_wait(&self, usec: u32) {
        self.min_wait_usec.set(usec);
    }

    pub(crate) fn uring(&self) -> &IoUring {
        &self.uring
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.uring.as_raw_fd()
    }

    fn push(&self, entry: &squeue::Entry) -> io::Result<()> {
        for _ in 0..64 {
            // SAFETY: (1) the submission queue view lives only for this statement and the ring is
            // used from one thread, so no other view exists (`submission_shared`'s contract).
            // (2) entries are built only by this type's methods and `SendBuf::next_send`, and
            // point to memory owned by `self` (boxed, stable, alive until the ring is dropped or
            // leaked), by a `SendBuf` that keeps its bytes until the send's completions are
            // handed to it, or by a `ConnectOp` that keeps its address and timespec until both of
            // its completions arrived (and leaks them if dropped before).
            if unsafe { self.uring.submission_shared().push(entry) }.is_ok() {
                return Ok(());
            }
            self.submit_queued()?;
        }
        Err(io::Error::other(
            "submission queue stayed full after 64 submits",
        ))
    }

    /// Hands what is queued to the kernel (the submission queue is full).
    fn submit_queued(&self) -> io::Result<()> {
        match self.uring.submit() {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EBUSY | libc::EINTR | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Pushes `first` (flagged `IO_LINK`) and the `second` linked to it into one submission: a
    /// chain split by a submit in between would run `first` without its link, and the kernel
    /// would fail the orphaned `second`.
    fn push_linked(&self, first: &squeue::Entry, second: &squeue::Entry) -> io::Result<()> {
        for _ in 0..64 {
            // SAFETY: a view for this statement only, on the ring's one thread (see `push`).
            let room = unsafe {
                let sq = self.uring.submission_shared();
                sq.capacity() - sq.len()
            };
            if room >= 2 {
                self.push(first)?;
                return self.push(second);
            }
            self.submit_queued()?;
        }
        Err(io::Error::other(
            "submission queue stayed full after 64 submits",
        ))
    }

    /// Submits and, with `wait`, blocks until a completion (a batch of them, with a `min_wait`),
    /// or for at most `bound` (and the configured wait timeout).
    pub(crate) fn submit(&self, wait: bool, bound: Option<Duration>) -> io::Result<()> {
        if !wait {
            return sys::ring::submit(&self.uring, None);
        }
        let bound = match (bound, self.wait_timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let (bound, min_wait_usec) = wait_plan(bound, self.min_wait_usec.get());
        let ts = bound.map(sys::ring::timespec);
        let res = sys::ring::submit(
            &self.uring,
            Some(sys::ring::Wait {
                timeout: ts.as_ref(),
                min_wait_usec,
            }),
        );
        match res {
            Err(e) if min_wait_usec > 0 && e.raw_os_error() == Some(libc::EINVAL) => {
                // The kernel advertised min_wait but refuses it: wait without it from now on.
                tracing::warn!(error = %e, "min_wait refused by the kernel; waiting for the first completion instead");
                self.min_wait_usec.set(0);
                Ok(())
            }
            res => res,
        }
    }

    /// Submits and waits at most `timeout` (teardown).
    pub(crate) fn submit_wait_for(&self, timeout: Duration) -> io::Result<()> {
        let ts = sys::ring::timespec(timeout);
        sys::ring::submit(
            &self.uring,
            Some(sys::ring::Wait {
                timeout: Some(&ts),
                min_wait_usec: 0,
            }),
        )
    }

    /// The completions to handle: those taken aside while waiting for an answer first
    /// (`fixed.rs`), then the queue's. Drop the iterator before calling other methods.
    pub(crate) fn completion(&self) -> Completions<'_> {
        Completions {
            stash: &self.stash,
            // SAFETY: the ring's methods never hold a completion queue view across a call
            // that could create another (`install_now` creates its own only after this one's
            // users dropped theirs: it runs from handler code, never inside a reap).
            cq: unsafe { self.uring.completion_shared() },
        }
    }

    /// No completion waits to be reaped, neither in the completion queue nor in the kernel's
    /// overflow list: every buffer the kernel filled has been seen.
    pub(crate) fn drained(&self) -> bool {
        if !self.stash.borrow().is_empty() {
            return false;
        }
        // SAFETY: views for this statement only, on the ring's one thread, while no other view
        // is alive (see `push` and `completion`).
        unsafe {
            self.uring.completion_shared().is_empty()
                && !self.uring.submission_shared().cq_overflow()
        }
    }

    /// Multishot receive into buffers of group `bgid`. A non-zero `limit` ends it (a completion
    /// without `F_MORE`) once that many bytes were received (`IORING_RECV_MSHOT_LIM`, Linux
    /// 6.17; older kernels fail the receive with `EINVAL`). With `bundle`
    /// (`IORING_RECVSEND_BUNDLE`, Linux 6.10) a completion may fill several buffers: its buffer
    /// id is the first, its byte count runs on through the ring entries after it.
    pub(crate) fn recv_multi(
        &self,
        fd: SockFd,
        bgid: u16,
        limit: u32,
        bundle: bool,
        user_data: u64,
    ) -> io::Result<()> {
        let entry = if bundle {
            on_fd!(fd, |f| opcode::RecvMultiBundle::new(f, bgid).build())
        } else {
            on_fd!(fd, |f| opcode::RecvMulti::new(f, bgid).build())
        };
        let mut entry = entry.user_data(user_data);
        if limit > 0 {
            set_optlen(&mut entry, limit);
        }
        self.push(&entry)
    }

    /// A multishot poll of `fd` for `events` (`POLL*` bits; the kernel adds `POLLERR`, `POLLHUP`
    /// and `POLLRDHUP`): one completion (result: the events that are ready) when armed on a
    /// ready socket and one per wake-up carrying those events, until cancelled.
    pub(crate) fn poll_multi(&self, fd: SockFd, events: u32, user_data: u64) -> io::Result<()> {
        let entry = on_fd!(fd, |f| opcode::PollAdd::new(f, events).multi(true).build());
        self.push(&entry.user_data(user_data))
    }

    /// Reads the eventfd counter into the ring's own 8-byte buffer.
    pub(crate) fn read_wake(&self, eventfd: RawFd, user_data: u64) -> io::Result<()> {
        let buf: *mut u64 = self.wake_buf.get();
        self.push(
            &opcode::Read::new(Fd(eventfd), buf.cast(), 8)
                .build()
                .user_data(user_data),
        )
    }

    /// Multishot accept; accepted descriptors are close-on-exec. With `direct`, each connection
    /// goes into a free slot of the ring's file table instead (`IORING_FILE_INDEX_ALLOC`) and the
    /// result is the slot; `-ENFILE` when the table is full. (A direct descriptor is never
    /// inherited across `exec`; the kernel rejects `SOCK_CLOEXEC` with it.)
    pub(crate) fn accept_multi(
        &self,
        listener: RawFd,
        direct: bool,
        user_data: u64,
    ) -> io::Result<()> {
        self.push(
            &opcode::AcceptMulti::new(Fd(listener))
                .flags(accept_flags(direct))
                .allocate_file_index(direct)
                .build()
                .user_data(user_data),
        )
    }

    /// A single accept (one connection); close-on-exec, or into the file table with `direct`.
    pub(crate) fn accept_one(
        &self,
        listener: RawFd,
        direct: bool,
        user_data: u64,
    ) -> io::Result<()> {
        let slot = direct.then(types::DestinationSlot::auto_target);
        self.push(
            &opcode::Accept::new(Fd(listener), std::ptr::null_mut(), std::ptr::null_mut())
                .flags(accept_flags(direct))
                .file_index(slot)
                .build()
                .user_data(user_data),
        )
    }

    /// A timer of the configured accept back-off.
    pub(crate) fn backoff_timer(&self, user_data: u64) -> io::Result<()> {
        let ts: *const Timespec = &**self.backoff;
        self.push(&opcode::Timeout::new(ts).build().user_data(user_data))
    }

    /// A timer of `d` (one at a time: the spec is read when the entry is submitted).
    pub(crate) fn grace_timer(&self, d: Duration, user_data: u64) -> io::Result<()> {
        self.grace.set(sys::ring::timespec(d));
        let ts: *const Timespec = self.grace.as_ptr();
        self.push(&opcode::Timeout::new(ts).build().user_data(user_data))?;
        // Submit now so the spec is consumed before anything could change it.
        self.uring.submit().map(drop)
    }

    /// Cancels the operations whose `user_data` is `target`.
    pub(crate) fn cancel(&self, target: u64, user_data: u64) -> io::Result<()> {
        self.push(
            &opcode::AsyncCancel2::new(CancelBuilder::user_data(target).all())
                .build()
                .user_data(user_data),
        )
    }

    /// Cancels every operation on `fd`.
    pub(crate) fn cancel_fd(&self, fd: SockFd, user_data: u64) -> io::Result<()> {
        let builder = on_fd!(fd, |f| CancelBuilder::fd(f).all());
        self.push(
            &opcode::AsyncCancel2::new(builder)
                .build()
                .user_data(user_data),
        )
    }

    /// Cancels every operation in the ring.
    pub(crate) fn cancel_any(&self, user_data: u64) -> io::Result<()> {
        self.push(
            &opcode::AsyncCancel2::new(CancelBuilder::any())
                .build()
                .user_data(user_data),
        )
    }

    /// Posts a completion `(target_user_data, value)` into the ring `target_ring`. Only a failure
    /// completes in this ring (success skips it).
    pub(crate) fn msg_ring(
        &self,
        target_ring: RawFd,
        value: i32,
        target_user_data: u64,
        user_data: u64,
    ) -> io::Result<()> {
        self.push(
            &opcode::MsgRingData::new(Fd(target_ring), value, target_user_data, None)
                .build()
                .flags(squeue::Flags::SKIP_SUCCESS)
                .user_data(user_data),
        )
    }

    /// Submits a send built by [`SendBuf::next_send`] (which owns the memory it points to).
    pub(crate) fn send(&self, entry: squeue::Entry, user_data: u64) -> io::Result<()> {
        self.push(&entry.user_data(user_data))
    }

    /// Connects `fd` to the address of `op`, with `op`'s timeout linked when it has one (returns
    /// `true` then: two completions will come, `user_data` and `timeout_user_data`). `op` must
    /// stay alive, unmoved in its boxes, until they arrived; it leaks its memory otherwise.
    pub(crate) fn connect(
        &self,
        fd: SockFd,
        op: &mut ConnectOp,
        user_data: u64,
        timeout_user_data: u64,
    ) -> io::Result<bool> {
        let addr = op.addr();
        let entry = on_fd!(fd, |f| opcode::Connect::new(
            f,
            addr.as_ptr().cast(),
            addr.len()
        )
        .build())
        .user_data(user_data);
        let linked = match op.timeout() {
            Some(ts) => {
                let ts: *const Timespec = ts;
                let timeout = opcode::LinkTimeout::new(ts)
                    .build()
                    .user_data(timeout_user_data);
                self.push_linked(&entry.flags(squeue::Flags::IO_LINK), &timeout)?;
                true
            }
            None => {
                self.push(&entry)?;
                false
            }
        };
        op.submitted(if linked { 2 } else { 1 });
        Ok(linked)
    }

    /// After a failure left operations in flight: keep the ring's own buffers alive forever.
    pub(crate) fn leak_buffers(&self) {
        self.leaked.set(true);
    }
}

/// `accept4` flags: close-on-exec, except for direct descriptors (`EINVAL` with them).
fn accept_flags(direct: bool) -> i32 {
    if direct { 0 } else { libc::SOCK_CLOEXEC }
}

/// The general timeout and the `min_wait` (µs) of a blocking wait bounded by `bound`.
fn wait_plan(bound: Option<Duration>, min_wait_usec: u32) -> (Option<Duration>, u32) {
    let min_wait = Duration::from_micros(u64::from(min_wait_usec));
    match bound {
        // The kernel arms the general timeout only once `min_wait` ran out: a shorter bound (a
        // timer due soon) waits without it.
        Some(b) if b <= min_wait => (Some(b), 0),
        Some(b) => (Some(b), min_wait_usec),
        // Without a general timeout the kernel ends the wait after `min_wait` even with no
        // completion at all; a long one keeps an idle reactor asleep.
        None if min_wait_usec > 0 => (Some(MIN_WAIT_IDLE_TIMEOUT), min_wait_usec),
        None => (None, 0),
    }
}

/// Byte offset of `optlen` (a union with `file_index`) in the kernel's 64-byte `io_uring_sqe`.
const SQE_OPTLEN_OFFSET: usize = 44;
const _: () = assert!(std::mem::size_of::<squeue::Entry>() == 64);

/// Sets `sqe->optlen`, for which the io-uring crate (0.7.16) has no builder method: on a
/// multishot receive it is the total byte limit.
fn set_optlen(entry: &mut squeue::Entry, value: u32) {
    // SAFETY: `squeue::Entry` is a `#[repr(C)]` wrapper around the kernel's `io_uring_sqe`, 64
    // bytes (asserted above) of plain integers, so viewing it as bytes is sound; bytes 44..48
    // are the `u32` `optlen` member in native byte order (include/uapi/linux/io_uring.h).
    let raw = unsafe { &mut *std::ptr::from_mut(entry).cast::<[u8; 64]>() };
    raw[SQE_OPTLEN_OFFSET..SQE_OPTLEN_OFFSET + 4].copy_from_slice(&value.to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(e: &squeue::Entry) -> [u8; 64] {
        // SAFETY: as in `set_optlen`: 64 bytes of plain integers.
        unsafe { *std::ptr::from_ref(e).cast::<[u8; 64]>() }
    }

    #[test]
    fn min_wait_never_delays_a_timer_nor_wakes_an_idle_reactor() {
        let ms = Duration::from_millis;
        // Off: the bound as it is.
        assert_eq!(wait_plan(None, 0), (None, 0));
        assert_eq!(wait_plan(Some(ms(5)), 0), (Some(ms(5)), 0));
        // On, nothing due: a long general timeout, so no completion means no wake-up.
        assert_eq!(wait_plan(None, 50), (Some(MIN_WAIT_IDLE_TIMEOUT), 50));
        // On, a timer due later than min_wait: both.
        assert_eq!(wait_plan(Some(ms(5)), 50), (Some(ms(5)), 50));
        // A timer due sooner than min_wait would wait for min_wait: no min_wait then.
        assert_eq!(wait_plan(Some(Duration::from_micros(30)), 50).1, 0);
        assert_eq!(wait_plan(Some(Duration::ZERO), 50).1, 0);
    }

    #[test]
    fn set_optlen_writes_the_field_the_crate_calls_optlen() {
        let value = 0xa1b2_c3d4;
        // SetSockOpt is a builder that sets `optlen` itself.
        let reference = opcode::SetSockOpt::new(Fd(0), 0, 0, std::ptr::null(), value).build();
        let mut recv = opcode::RecvMulti::new(Fd(0), 0).build();
        let before = bytes(&recv);
        set_optlen(&mut recv, value);
        let after = bytes(&recv);
        let field = SQE_OPTLEN_OFFSET..SQE_OPTLEN_OFFSET + 4;
        assert_eq!(after[field.clone()], bytes(&reference)[field.clone()]);
        for i in (0..64).filter(|i| !field.contains(i)) {
            assert_eq!(after[i], before[i], "byte {i} changed");
        }
    }
}
