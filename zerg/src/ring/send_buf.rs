//! [`SendBuf`]: the bytes (and received pieces) one connection is sending, owned so that the
//! memory a send points to stays untouched while the kernel may read it.
//!
//! A zero-copy send (`IORING_OP_SEND_ZC` / `SENDMSG_ZC`, Linux 6.0 / 6.1) completes twice: first
//! with its result (flagged `IORING_CQE_F_MORE` when a notification follows), then with a
//! notification (`IORING_CQE_F_NOTIF`) once the kernel no longer reads the buffer — for TCP,
//! after the peer acknowledged the bytes. Until every notification arrived the buffer stays
//! untouched: the flush completes and the memory is reused only then.
#![allow(unsafe_code)]

use io_uring::{opcode, squeue};

use crate::buf_ring::{BufPool, RecvItem};

use super::outgoing::{Outgoing, Seg};
use super::{SockFd, on_fd};

/// `IORING_SEND_ZC_REPORT_USAGE` (Linux 6.2): the notification says whether the kernel copied
/// the bytes after all (`IORING_NOTIF_USAGE_ZC_COPIED` in its result).
const SEND_ZC_REPORT_USAGE: u16 = 1 << 3;
/// `IORING_NOTIF_USAGE_ZC_COPIED`, in a notification's result.
const NOTIF_USAGE_ZC_COPIED: u32 = 1 << 31;

/// Whether a notification's result says the kernel copied the bytes instead of sending them
/// from the buffer (loopback always does: the receiving socket cannot keep the sender's pages).
pub(crate) fn zc_copied(res: i32) -> bool {
    res as u32 & NOTIF_USAGE_ZC_COPIED != 0
}

/// What one connection is sending. Owns the memory its send points to and never changes it
/// while a send is in flight or a zero-copy notification is outstanding; dropped then, it leaks
/// that memory rather than free it.
#[derive(Debug, Default)]
pub(crate) struct SendBuf {
    out: Outgoing,
    /// Plain form: bytes sent so far.
    pos: usize,
    /// A send's result is outstanding.
    inflight: bool,
    /// Zero-copy notifications outstanding: the kernel may still read the buffer.
    notifs: u32,
    /// A zero-copy send is part of this batch: received pieces it sent go back only once every
    /// notification arrived (they stay in `out` until then).
    zc_batch: bool,
    /// The send in flight is zero-copy.
    zc_inflight: bool,
    /// Everything was sent; the batch completes once the notifications arrived.
    sent_all: bool,
    /// A send failed (this result) while notifications were outstanding; reported once they
    /// arrived.
    failed: Option<i32>,
    /// What is unsent is dropped once the notifications arrived (the connection closes).
    discarding: bool,
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
    /// Nothing to do until the zero-copy notifications arrived ([`SendBuf::notified`]).
    Waiting,
    /// The kernel refused the zero-copy send (`EINVAL`, `EOPNOTSUPP`): nothing was sent, send
    /// the same bytes again without it.
    ZcRefused,
}

/// Most iovecs per `sendmsg` (`UIO_MAXIOV`).
const MAX_IOV: usize = 1024;

impl SendBuf {
    /// The send (or `sendmsg`) of what is left, without SIGPIPE: one `send` for plain bytes, one
    /// `sendmsg` over an iovec per segment when received pieces are sent in place; zero-copy
    /// (`SEND_ZC`, `SENDMSG_ZC`) when at least `zc_threshold` bytes are left (0: never). Marks
    /// the buffer in flight until [`complete`](Self::complete) (and, zero-copy,
    /// [`notified`](Self::notified)); the entry points into this buffer (and into `pool` for
    /// pieces), which stays untouched until then.
    pub(crate) fn next_send(
        &mut self,
        pool: &BufPool,
        fd: SockFd,
        zc_threshold: usize,
    ) -> squeue::Entry {
        assert!(
            !self.inflight,
            "a send is already in flight for this buffer"
        );
        self.inflight = true;
        if self.out.segs.is_empty() {
            let rest = &self.out.bytes[self.pos..];
            let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
            self.zc_inflight = zc_threshold > 0 && len as usize >= zc_threshold;
            self.zc_batch |= self.zc_inflight;
            if self.zc_inflight {
                on_fd!(fd, |f| opcode::SendZc::new(f, rest.as_ptr(), len)
                    .flags(libc::MSG_NOSIGNAL)
                    .zc_flags(SEND_ZC_REPORT_USAGE)
                    .build())
            } else {
                on_fd!(fd, |f| opcode::Send::new(f, rest.as_ptr(), len)
                    .flags(libc::MSG_NOSIGNAL)
                    .build())
            }
        } else {
            let (msg, len) = self.build_iovecs(pool);
            self.zc_inflight = zc_threshold > 0 && len >= zc_threshold;
            self.zc_batch |= self.zc_inflight;
            if self.zc_inflight {
                on_fd!(fd, |f| opcode::SendMsgZc::new(f, msg)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .ioprio(SEND_ZC_REPORT_USAGE)
                    .build())
            } else {
                on_fd!(fd, |f| opcode::SendMsg::new(f, msg)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build())
            }
        }
    }

    /// A send is in flight or the kernel may still read the buffer (zero-copy notifications
    /// outstanding): nothing may be loaded or sent.
    pub(crate) fn is_inflight(&self) -> bool {
        self.inflight || self.notifs > 0
    }

    /// The send in flight (or the last one) is zero-copy.
    pub(crate) fn is_zc(&self) -> bool {
        self.zc_inflight
    }

    /// Zero-copy notifications outstanding.
    pub(crate) fn notifications(&self) -> u32 {
        self.notifs
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

    /// Fills the iovecs for what is unsent and returns the `msghdr` pointing at them, with the
    /// bytes they cover.
    fn build_iovecs(&mut self, pool: &BufPool) -> (*const libc::msghdr, usize) {
        let st = self
            .segs
            .as_mut()
            .expect("segment form has its sendmsg state");
        st.iov.clear();
        let mut off = st.seg_off;
        let mut total = 0;
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
            total += len - off;
            off = 0;
        }
        st.msg.msg_iov = st.iov.as_mut_ptr();
        st.msg.msg_iovlen = st.iov.len();
        (&raw const st.msg, total)
    }

    /// Applies a send's result; `more`: a zero-copy notification follows
    /// (`IORING_CQE_F_MORE`). A buffer larger than `retain` shrinks once recent batches used
    /// less than half of it.
    pub(crate) fn complete(&mut self, res: i32, more: bool, retain: usize) -> SendProgress {
        self.inflight = false;
        if more {
            self.notifs += 1;
        }
        if self.zc_inflight && !more && (res == -libc::EINVAL || res == -libc::EOPNOTSUPP) {
            // Nothing was sent and no notification comes: the same bytes go again, plainly.
            return SendProgress::ZcRefused;
        }
        if res <= 0 {
            if self.notifs > 0 {
                self.failed = Some(res);
                return SendProgress::Waiting;
            }
            self.abandon();
            return SendProgress::Failed(res);
        }
        if self.advance(res as usize) {
            return SendProgress::Partial;
        }
        if self.notifs > 0 {
            self.sent_all = true;
            return SendProgress::Waiting;
        }
        self.finish(retain)
    }

    /// Applies a zero-copy notification: once the last one arrived (and no send is in flight),
    /// what the batch was waiting for happens — `Done`, `Failed`, or the discard of the rest.
    pub(crate) fn notified(&mut self, retain: usize) -> Option<SendProgress> {
        self.notifs = self.notifs.saturating_sub(1);
        if self.notifs > 0 || self.inflight {
            return None;
        }
        if self.discarding {
            self.abandon();
            return None;
        }
        if let Some(res) = self.failed.take() {
            self.abandon();
            return Some(SendProgress::Failed(res));
        }
        if std::mem::take(&mut self.sent_all) {
            return Some(self.finish(retain));
        }
        None
    }

    /// Moves past `n` sent bytes; `true` if some are left. Received pieces fully sent go to
    /// `done`, unless a zero-copy send of this batch may still read them.
    fn advance(&mut self, mut n: usize) -> bool {
        if self.out.segs.is_empty() {
            self.pos += n;
            return self.pos < self.out.bytes.len();
        }
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
                if let Seg::Piece(item) = seg
                    && !self.zc_batch
                {
                    self.done.push(item);
                }
                st.seg += 1;
                st.seg_off = 0;
            }
        }
        st.seg < self.out.segs.len()
    }

    /// Everything was sent and the kernel is done with the buffer: empties it for the next
    /// batch.
    fn finish(&mut self, retain: usize) -> SendProgress {
        if std::mem::take(&mut self.zc_batch) {
            // The pieces waited for the notifications.
            for seg in &self.out.segs {
                if let Seg::Piece(item) = *seg {
                    self.done.push(item);
                }
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

    /// Drops what is unsent; received pieces go to `done`. Only when no send is in flight; with
    /// zero-copy notifications outstanding, once the last one arrived.
    pub(crate) fn discard(&mut self) {
        if self.inflight {
            return;
        }
        if self.notifs > 0 {
            self.discarding = true;
        } else {
            self.abandon();
        }
    }

    fn abandon(&mut self) {
        // After a zero-copy send the pieces before the unsent ones were kept too.
        let first = if std::mem::take(&mut self.zc_batch) {
            0
        } else {
            self.segs.as_ref().map_or(0, |s| s.seg)
        };
        self.sent_all = false;
        self.discarding = false;
        self.failed = None;
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
        if self.is_inflight() {
            // The kernel may still read these bytes and iovecs: never free them.
            std::mem::forget(std::mem::take(&mut self.out));
            std::mem::forget(self.segs.take());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> BufPool {
        BufPool::new(4, 4096).unwrap()
    }

    fn loaded(bytes: &[u8], pieces: &[RecvItem]) -> SendBuf {
        let mut out = Outgoing::default();
        out.bytes.extend_from_slice(bytes);
        for &p in pieces {
            out.push_piece(p);
        }
        let mut send = SendBuf::default();
        send.load(&mut out);
        send
    }

    const FD: SockFd = SockFd::Raw(0);

    #[test]
    fn a_zero_copy_batch_completes_with_its_last_notification() {
        let pool = pool();
        let mut send = loaded(&[1; 100], &[]);
        // Partial: the rest goes out while the first part's notification is outstanding.
        send.next_send(&pool, FD, 70);
        assert!(send.is_zc());
        assert_eq!(send.complete(40, true, 0), SendProgress::Partial);
        assert!(
            send.is_inflight(),
            "the kernel may still read the first 40 bytes"
        );
        send.next_send(&pool, FD, 70);
        assert!(!send.is_zc(), "60 bytes left: under the threshold");
        assert_eq!(send.complete(60, false, 0), SendProgress::Waiting);
        assert!(send.is_inflight());
        assert_eq!(send.notified(0), Some(SendProgress::Done));
        assert!(!send.is_inflight() && send.is_empty());
    }

    #[test]
    fn notifications_may_come_before_the_last_result() {
        let pool = pool();
        let mut send = loaded(&[1; 100], &[]);
        send.next_send(&pool, FD, 1);
        assert_eq!(send.complete(30, true, 0), SendProgress::Partial);
        send.next_send(&pool, FD, 1);
        // The first notification arrives while the second send is in flight: nothing yet.
        assert_eq!(send.notified(0), None);
        assert_eq!(send.complete(70, true, 0), SendProgress::Waiting);
        assert_eq!(send.notified(0), Some(SendProgress::Done));
    }

    #[test]
    fn a_failure_is_reported_once_the_notifications_arrived() {
        let pool = pool();
        let mut send = loaded(&[1; 100], &[]);
        send.next_send(&pool, FD, 1);
        assert_eq!(send.complete(30, true, 0), SendProgress::Partial);
        send.next_send(&pool, FD, 1);
        assert_eq!(
            send.complete(-libc::ECONNRESET, false, 0),
            SendProgress::Waiting
        );
        assert_eq!(
            send.notified(0),
            Some(SendProgress::Failed(-libc::ECONNRESET))
        );
        assert!(!send.is_inflight() && send.is_empty());
    }

    #[test]
    fn a_refused_zero_copy_send_is_sent_again_plainly() {
        let pool = pool();
        let mut send = loaded(&[1; 100], &[]);
        send.next_send(&pool, FD, 1);
        assert_eq!(
            send.complete(-libc::EINVAL, false, 0),
            SendProgress::ZcRefused
        );
        send.next_send(&pool, FD, 0);
        assert!(!send.is_zc());
        assert_eq!(send.complete(100, false, 0), SendProgress::Done);
    }

    #[test]
    fn pieces_go_back_only_after_the_notifications() {
        let pool = pool();
        let a = RecvItem {
            bid: 0,
            off: 0,
            len: 10,
        };
        let b = RecvItem {
            bid: 1,
            off: 0,
            len: 10,
        };
        let mut send = loaded(b"head", &[a, b]);
        send.next_send(&pool, FD, 1);
        // Everything sent at once; the notification is outstanding: nothing is handed back.
        assert_eq!(send.complete(24, true, 0), SendProgress::Waiting);
        assert!(send.done().is_empty());
        assert_eq!(send.notified(0), Some(SendProgress::Done));
        assert_eq!(send.done().as_slice(), &[a, b]);
    }

    #[test]
    fn a_discard_with_notifications_outstanding_waits_for_them() {
        let pool = pool();
        let a = RecvItem {
            bid: 2,
            off: 0,
            len: 10,
        };
        let b = RecvItem {
            bid: 3,
            off: 0,
            len: 10,
        };
        let mut send = loaded(&[], &[a, b]);
        send.next_send(&pool, FD, 1);
        assert_eq!(send.complete(10, true, 0), SendProgress::Partial);
        // The connection closes instead of sending the rest.
        send.discard();
        assert!(send.done().is_empty(), "a is still read by the kernel");
        assert!(send.is_inflight());
        assert_eq!(send.notified(0), None);
        assert_eq!(send.done().as_slice(), &[a, b]);
        assert!(!send.is_inflight() && send.is_empty());
    }

    #[test]
    fn plain_sends_hand_pieces_back_as_they_go() {
        let pool = pool();
        let a = RecvItem {
            bid: 0,
            off: 0,
            len: 10,
        };
        let b = RecvItem {
            bid: 1,
            off: 0,
            len: 10,
        };
        let mut send = loaded(&[], &[a, b]);
        send.next_send(&pool, FD, 0);
        assert_eq!(send.complete(10, false, 0), SendProgress::Partial);
        assert_eq!(send.done().as_slice(), &[a]);
        send.next_send(&pool, FD, 0);
        assert_eq!(send.complete(10, false, 0), SendProgress::Done);
        assert_eq!(send.done().as_slice(), &[a, b]);
    }
}
