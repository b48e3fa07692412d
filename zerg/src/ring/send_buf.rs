//! [`SendBuf`]: the bytes (and received pieces) one connection is sending, owned so that the
//! memory a send points to stays untouched while the kernel may read it.
#![allow(unsafe_code)]

use std::os::fd::RawFd;

use io_uring::types::Fd;
use io_uring::{opcode, squeue};

use crate::buf_ring::{BufPool, RecvItem};

use super::outgoing::{Outgoing, Seg};

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
    /// The send (or `sendmsg`) of what is left, without SIGPIPE: one `send` for plain bytes, one
    /// `sendmsg` over an iovec per segment when received pieces are sent in place. Marks the
    /// buffer in flight until [`complete`](Self::into_inner); the entry points into this buffer
    /// (and into `pool` for pieces), which stays untouched until then.
    pub(crate) fn next_send(&mut self, pool: &BufPool, fd: RawFd) -> squeue::Entry {
        assert!(
            !self.inflight,
            "a send is already in flight for this buffer"
        );
        self.inflight = true;
        if self.out.segs.is_empty() {
            let rest = &self.out.bytes[self.pos..];
            let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
            opcode::Send::new(Fd(fd), rest.as_ptr(), len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        } else {
            let msg = self.build_iovecs(pool);
            opcode::SendMsg::new(Fd(fd), msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
        }
    }

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
