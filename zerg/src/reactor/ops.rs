//! Every io_uring operation zerg submits, behind a safe [`Ring`] wrapper.
//!
//! The memory an operation points to is owned by the [`Ring`] itself (the eventfd read target,
//! timer specs, all boxed so their addresses are stable) or by a [`SendBuf`], which keeps its
//! bytes untouched while its send is in flight and leaks them rather than free them if dropped
//! mid-flight. With that, pushing an entry cannot hand the kernel dangling memory.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use io_uring::types::{CancelBuilder, Fd, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};

use crate::buf_ring::{BufPool, RecvItem};
use crate::conn::outgoing::{Outgoing, Seg};
use crate::sys;

/// An io_uring plus the memory its operations point to.
pub(crate) struct Ring {
    uring: IoUring,
    // Target of the eventfd read.
    wake_buf: Box<u64>,
    backoff: Box<Timespec>,
    grace: Box<Timespec>,
    write_timeout: Option<Box<Timespec>>,
    wait_timeout: Option<Timespec>,
}

impl Ring {
    pub(crate) fn new(
        uring: IoUring,
        backoff: Duration,
        write_timeout: Option<Duration>,
        wait_timeout: Option<Duration>,
    ) -> Self {
        Self {
            uring,
            wake_buf: Box::new(0),
            backoff: Box::new(sys::ring::timespec(backoff)),
            grace: Box::new(Timespec::new()),
            write_timeout: write_timeout.map(|d| Box::new(sys::ring::timespec(d))),
            wait_timeout: wait_timeout.map(sys::ring::timespec),
        }
    }

    pub(crate) fn uring(&self) -> &IoUring {
        &self.uring
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.uring.as_raw_fd()
    }

    fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        for _ in 0..64 {
            // SAFETY: entries are built only by this type's methods and point to memory owned by
            // `self` (boxed, stable, alive until the ring is dropped or leaked) or by a `SendBuf`
            // that keeps its bytes until the send's completion is handed to `SendBuf::complete`.
            if unsafe { self.uring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            // Full: hand what is queued to the kernel and retry.
            match self.uring.submit() {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EBUSY | libc::EINTR | libc::EAGAIN)
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(
            "submission queue stayed full after 64 submits",
        ))
    }

    /// Submits and, with `wait`, blocks until a completion (or the configured wait timeout).
    pub(crate) fn submit(&self, wait: bool) -> io::Result<()> {
        sys::ring::submit(&self.uring, wait, self.wait_timeout.as_ref())
    }

    /// Submits and waits at most `timeout` (teardown).
    pub(crate) fn submit_wait_for(&self, timeout: Duration) -> io::Result<()> {
        let ts = sys::ring::timespec(timeout);
        sys::ring::submit(&self.uring, true, Some(&ts))
    }

    pub(crate) fn completion(&mut self) -> cqueue::CompletionQueue<'_> {
        self.uring.completion()
    }

    /// Multishot receive into buffers of group `bgid`. A non-zero `limit` ends it (a completion
    /// without `F_MORE`) once that many bytes were received (`IORING_RECV_MSHOT_LIM`, Linux
    /// 6.17; older kernels fail the receive with `EINVAL`).
    pub(crate) fn recv_multi(
        &mut self,
        fd: RawFd,
        bgid: u16,
        limit: u32,
        user_data: u64,
    ) -> io::Result<()> {
        let mut entry = opcode::RecvMulti::new(Fd(fd), bgid)
            .build()
            .user_data(user_data);
        if limit > 0 {
            set_optlen(&mut entry, limit);
        }
        self.push(&entry)
    }

    /// Reads the eventfd counter into the ring's own 8-byte buffer.
    pub(crate) fn read_wake(&mut self, eventfd: RawFd, user_data: u64) -> io::Result<()> {
        let buf: *mut u64 = &mut *self.wake_buf;
        self.push(
            &opcode::Read::new(Fd(eventfd), buf.cast(), 8)
                .build()
                .user_data(user_data),
        )
    }

    /// Multishot accept; accepted descriptors are close-on-exec.
    pub(crate) fn accept_multi(&mut self, listener: RawFd, user_data: u64) -> io::Result<()> {
        self.push(
            &opcode::AcceptMulti::new(Fd(listener))
                .flags(libc::SOCK_CLOEXEC)
                .build()
                .user_data(user_data),
        )
    }

    /// A timer of the configured accept back-off.
    pub(crate) fn backoff_timer(&mut self, user_data: u64) -> io::Result<()> {
        let ts: *const Timespec = &*self.backoff;
        self.push(&opcode::Timeout::new(ts).build().user_data(user_data))
    }

    /// A timer of `d` (one at a time: the spec is read when the entry is submitted).
    pub(crate) fn grace_timer(&mut self, d: Duration, user_data: u64) -> io::Result<()> {
        *self.grace = sys::ring::timespec(d);
        let ts: *const Timespec = &*self.grace;
        self.push(&opcode::Timeout::new(ts).build().user_data(user_data))?;
        // Submit now so the spec is consumed before anything could change it.
        self.uring.submit().map(drop)
    }

    /// Cancels the operations whose `user_data` is `target`.
    pub(crate) fn cancel(&mut self, target: u64, user_data: u64) -> io::Result<()> {
        self.push(
            &opcode::AsyncCancel2::new(CancelBuilder::user_data(target).all())
                .build()
                .user_data(user_data),
        )
    }

    /// Cancels every operation on `fd`.
    pub(crate) fn cancel_fd(&mut self, fd: RawFd, user_data: u64) -> io::Result<()> {
        self.push(
            &opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(fd)).all())
                .build()
                .user_data(user_data),
        )
    }

    /// Cancels every operation in the ring.
    pub(crate) fn cancel_any(&mut self, user_data: u64) -> io::Result<()> {
        self.push(
            &opcode::AsyncCancel2::new(CancelBuilder::any())
                .build()
                .user_data(user_data),
        )
    }

    /// Posts a completion `(target_user_data, value)` into the ring `target_ring`. Only a failure
    /// completes in this ring (success skips it).
    pub(crate) fn msg_ring(
        &mut self,
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

    /// Sends what is left in `buf` (without SIGPIPE): one `send` for plain bytes, one `sendmsg`
    /// over an iovec per segment when received pieces are sent in place. With a write timeout
    /// configured, a linked timeout follows (returns `true`: two completions will come).
    pub(crate) fn send(
        &mut self,
        buf: &mut SendBuf,
        pool: &BufPool,
        fd: RawFd,
        user_data: u64,
        timeout_user_data: u64,
    ) -> io::Result<bool> {
        assert!(!buf.inflight, "a send is already in flight for this buffer");
        let mut entry = if buf.out.segs.is_empty() {
            let rest = &buf.out.bytes[buf.pos..];
            let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
            opcode::Send::new(Fd(fd), rest.as_ptr(), len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        } else {
            let msg = buf.build_iovecs(pool);
            opcode::SendMsg::new(Fd(fd), msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
        }
        .user_data(user_data);
        let linked = self.write_timeout.is_some();
        if linked {
            entry = entry.flags(squeue::Flags::IO_LINK);
        }
        buf.inflight = true;
        self.push(&entry)?;
        if let Some(ts) = &self.write_timeout {
            let ts: *const Timespec = &**ts;
            self.push(
                &opcode::LinkTimeout::new(ts)
                    .build()
                    .user_data(timeout_user_data),
            )?;
        }
        Ok(linked)
    }

    /// After a failure left operations in flight: keep the ring's own buffers alive forever.
    pub(crate) fn leak_buffers(&mut self) {
        std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new(0)));
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

/// What one connection is sending. Owns the memory its send points to and never changes it
/// while the send is in flight; dropped mid-flight, it leaks that memory rather than free it.
#[derive(Debug, Default)]
pub(crate) struct SendBuf {
    out: Outgoing,
    /// Plain form: bytes sent so far.
    pos: usize,
    inflight: bool,
    /// Received pieces that were sent (or will not be), for the reactor to hand back.
    done: Vec<RecvItem>,
    /// Recent largest batch, decaying: how much capacity is worth keeping.
    peak: usize,
    /// Segment form's state, allocated the first time a connection sends pieces in place (an
    /// idle connection carries none of it).
    segs: Option<Box<SegSend>>,
}

/// The `sendmsg` state of the segment form.
#[derive(Debug)]
struct SegSend {
    /// Index of the first unsent segment and bytes of it already sent.
    seg: usize,
    seg_off: usize,
    /// The iovecs and header of the `sendmsg` in flight (boxed with this struct: stable address).
    iov: Vec<libc::iovec>,
    msg: libc::msghdr,
}

// SAFETY: the raw pointers in `SegSend` point into this value's own vectors or into the receive
// pool, and are only dereferenced by the kernel while a send is in flight; the value moves
// between threads only with the reactor that owns it, before any send exists.
unsafe impl Send for SendBuf {}

/// What a send completion means for its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendProgress {
    /// Part was sent; send the rest.
    Partial,
    /// Everything was sent; the buffer is empty again.
    Done,
    /// The send failed with this result (negative errno, or 0).
    Failed(i32),
}

/// Most iovecs per `sendmsg` (`UIO_MAXIOV`).
const MAX_IOV: usize = 1024;

impl SendBuf {
    pub(crate) fn is_inflight(&self) -> bool {
        self.inflight
    }

    /// Nothing left to send.
    pub(crate) fn is_empty(&self) -> bool {
        if self.out.segs.is_empty() {
            self.pos >= self.out.bytes.len()
        } else {
            self.segs
                .as_ref()
                .is_none_or(|s| s.seg >= self.out.segs.len())
        }
    }

    /// Takes `next` as the next thing to send, leaving an empty buffer in its place.
    pub(crate) fn load(&mut self, next: &mut Outgoing) {
        assert!(
            !self.inflight && self.is_empty(),
            "loading a busy send buffer"
        );
        self.out.clear();
        std::mem::swap(&mut self.out, next);
        self.out.seal();
        self.pos = 0;
        if !self.out.segs.is_empty() {
            let st = self.segs.get_or_insert_with(|| {
                Box::new(SegSend {
                    seg: 0,
                    seg_off: 0,
                    iov: Vec::new(),
                    // SAFETY: an all-zero `msghdr` (no name, no iovecs, no control) is valid.
                    msg: unsafe { std::mem::zeroed() },
                })
            });
            st.seg = 0;
            st.seg_off = 0;
        }
    }

    /// Received pieces fully sent (or abandoned), to hand back to the ring.
    pub(crate) fn done(&mut self) -> &mut Vec<RecvItem> {
        &mut self.done
    }

    /// Fills the iovecs for what is unsent and returns the `msghdr` pointing at them.
    fn build_iovecs(&mut self, pool: &BufPool) -> *const libc::msghdr {
        let st = self
            .segs
            .as_mut()
            .expect("segment form has its sendmsg state");
        st.iov.clear();
        let mut off = st.seg_off;
        for seg in &self.out.segs[st.seg..] {
            if st.iov.len() == MAX_IOV {
                break;
            }
            let (ptr, len) = match *seg {
                Seg::Bytes { start, len } => (
                    self.out.bytes[start as usize..(start + len) as usize].as_ptr(),
                    len as usize,
                ),
                Seg::Piece(item) => {
                    // SAFETY: the piece was delivered to this connection and is held until the
                    // reactor takes it from `done` after the send; the kernel does not write
                    // into a held buffer.
                    let bytes = unsafe { pool.slice(&item) };
                    (bytes.as_ptr(), bytes.len())
                }
            };
            st.iov.push(libc::iovec {
                iov_base: ptr.wrapping_add(off) as *mut libc::c_void,
                iov_len: len - off,
            });
            off = 0;
        }
        st.msg.msg_iov = st.iov.as_mut_ptr();
        st.msg.msg_iovlen = st.iov.len();
        &raw const st.msg
    }

    /// Applies a send completion. A buffer larger than `retain` shrinks once recent batches
    /// used less than half of it.
    pub(crate) fn complete(&mut self, res: i32, retain: usize) -> SendProgress {
        self.inflight = false;
        if res <= 0 {
            self.abandon();
            return SendProgress::Failed(res);
        }
        let mut n = res as usize;
        if self.out.segs.is_empty() {
            self.pos += n;
            if self.pos < self.out.bytes.len() {
                return SendProgress::Partial;
            }
        } else {
            let st = self
                .segs
                .as_mut()
                .expect("segment form has its sendmsg state");
            while n > 0 && st.seg < self.out.segs.len() {
                let seg = self.out.segs[st.seg];
                let left = seg.len() - st.seg_off;
                if n < left {
                    st.seg_off += n;
                    n = 0;
                } else {
                    n -= left;
                    if let Seg::Piece(item) = seg {
                        self.done.push(item);
                    }
                    st.seg += 1;
                    st.seg_off = 0;
                }
            }
            if st.seg < self.out.segs.len() {
                return SendProgress::Partial;
            }
        }
        let sent = self.out.bytes.len();
        self.out.clear();
        self.pos = 0;
        // Keep a large buffer while responses stay large (steady streaming reuses it without
        // reallocating or faulting pages in); shrink it once they no longer need it.
        self.peak = sent.max(self.peak - self.peak / 8);
        if self.out.bytes.capacity() > retain
            && self.peak.saturating_mul(2) < self.out.bytes.capacity()
        {
            self.out.bytes.shrink_to(self.peak.max(retain));
        }
        SendProgress::Done
    }

    /// Drops what is unsent; received pieces go to `done`. Only when no send is in flight.
    pub(crate) fn discard(&mut self) {
        if !self.inflight {
            self.abandon();
        }
    }

    fn abandon(&mut self) {
        let first = self.segs.as_ref().map_or(0, |s| s.seg);
        for seg in &self.out.segs[first.min(self.out.segs.len())..] {
            if let Seg::Piece(item) = *seg {
                self.done.push(item);
            }
        }
        self.out.clear();
        self.pos = 0;
        if let Some(st) = &mut self.segs {
            st.seg = 0;
            st.seg_off = 0;
        }
    }
}

impl Drop for SendBuf {
    fn drop(&mut self) {
        if self.inflight {
            // The kernel may still read these bytes and iovecs: never free them.
            std::mem::forget(std::mem::take(&mut self.out));
            std::mem::forget(self.segs.take());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(e: &squeue::Entry) -> [u8; 64] {
        // SAFETY: as in `set_optlen`: 64 bytes of plain integers.
        unsafe { *std::ptr::from_ref(e).cast::<[u8; 64]>() }
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
