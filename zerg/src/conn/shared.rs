//! [`ConnShared`]: the state a connection's handle and its reactor both touch, behind one lock.
//!
//! The handle side (`read.rs`, `write.rs`) takes received pieces, hands pieces back, stages
//! flushes and registers wakers. The reactor side goes through the methods below, which move
//! whole batches in or out and wake whoever waits; it never touches the fields.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use super::fd::ConnFd;
use crate::buf_ring::RecvItem;
use crate::error::CloseReason;
use crate::ring::SendBuf;
use crate::ring::outgoing::Outgoing;
use crate::ring::token::{ConnectionId, Kind, Token};
use crate::runtime::{ReactorShared, local};

/// Returned pieces that may wait for the connection's next request before the reactor is asked
/// to recycle them.
const LAZY_RETURNS: usize = 32;

/// Request bits a connection raises for its reactor.
pub(crate) mod request {
    /// Pieces were handed back (`ConnState::returned`).
    pub(crate) const RETURN: u8 = 1;
    /// Bytes were staged for sending (`ConnState::outgoing`).
    pub(crate) const FLUSH: u8 = 2;
    /// Shut the write side down once everything staged is sent.
    pub(crate) const SHUTDOWN: u8 = 4;
    /// The application dropped its handle: close.
    pub(crate) const CLOSE: u8 = 8;
}

/// State shared between a connection's handle and its reactor.
pub(crate) struct ConnShared {
    pub(crate) id: ConnectionId,
    /// The socket's descriptor and who owns it.
    pub(crate) fd: ConnFd,
    pub(crate) reactor: Arc<ReactorShared>,
    state: Mutex<ConnState>,
}

/// The fields behind [`ConnShared`]'s lock. The handle side (this module's children) uses them
/// directly; the reactor only through [`ConnShared`]'s methods.
#[derive(Default)]
pub(crate) struct ConnState {
    /// Received pieces not yet taken by a read, in arrival order.
    pub(super) recv: VecDeque<RecvItem>,
    /// An empty vector with capacity, for the next snapshot.
    pub(super) spare: Vec<RecvItem>,
    /// Pieces handed back, waiting for the reactor to recycle them.
    pub(super) returned: Vec<RecvItem>,
    /// No more bytes will arrive, for this reason; reported once `recv` is empty.
    pub(super) read_end: Option<CloseReason>,
    pub(super) read_waker: Option<Waker>,
    /// `read_waker` was registered on a thread other than the reactor's: its wake is deferred
    /// to the end of the reactor's loop iteration and handed over in a batch.
    pub(super) read_remote: bool,
    /// Reactor time (ms) a read started waiting, while one waits (only stamped when a read
    /// timeout is configured).
    pub(super) read_since: Option<u64>,

    /// What the handle flushed and the reactor has not taken yet.
    pub(super) outgoing: Outgoing,
    /// Flushes requested / completed (a flush is done when `flush_done >= its sequence`).
    pub(super) flush_requested: u64,
    pub(super) flush_done: u64,
    /// Writes fail with this from now on.
    pub(super) write_end: Option<CloseReason>,
    /// The write side was shut down (FIN sent) at the application's request.
    pub(super) shut_down: bool,
    pub(super) flush_waker: Option<Waker>,
    /// As `read_remote`, for `flush_waker`.
    pub(super) flush_remote: bool,

    /// Request bits for the reactor and whether the token is queued.
    pub(super) requests: u8,
    pub(super) queued: bool,
    /// The `Connection` handle was dropped: returns are queued at once.
    pub(super) handle_dropped: bool,
    /// The handler took data with its last read and has not flushed or waited since: a return
    /// can ride on its next flush (or wait) instead of a request of its own.
    pub(super) in_cycle: bool,
}

/// What [`ConnShared::take_requests`] found.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Requests {
    /// The request bits that were raised.
    pub(crate) bits: u8,
    /// Staged bytes were loaded into the send buffer; the send completes this flush sequence.
    pub(crate) send: Option<u64>,
}

impl Requests {
    pub(crate) fn has(&self, bit: u8) -> bool {
        self.bits & bit != 0
    }
}

/// Wakes `w` (called on the reactor thread): at once if it was registered there, else with the
/// other wakes of this loop iteration ([`local::defer_wake`]).
#[inline]
fn wake(w: Option<Waker>, remote: bool) {
    if let Some(w) = w {
        if remote {
            local::defer_wake(w);
        } else {
            w.wake();
        }
    }
}

/// Stores `cx`'s waker in `slot` unless it is there already; returns whether it was registered
/// on a thread other than `reactor`'s.
pub(super) fn register(slot: &mut Option<Waker>, waker: &Waker, reactor: &ReactorShared) -> bool {
    match slot {
        Some(w) if w.will_wake(waker) => {}
        slot => *slot = Some(waker.clone()),
    }
    !local::is_current(reactor)
}

/// The handle's side.
impl ConnShared {
    pub(crate) fn new(id: ConnectionId, fd: ConnFd, reactor: Arc<ReactorShared>) -> Self {
        Self {
            id,
            fd,
            reactor,
            state: Mutex::new(ConnState::default()),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, ConnState> {
        // A panic while holding this lock leaves only plain data behind; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn token(&self) -> u64 {
        Token::conn(Kind::Recv, self.id)
    }

    /// Raises `bits` (with the lock held). Returns whether the caller must queue the token, which
    /// it does after releasing the lock with [`ConnShared::enqueue`].
    pub(crate) fn raise(state: &mut ConnState, bits: u8) -> bool {
        state.requests |= bits;
        !std::mem::replace(&mut state.queued, true)
    }

    pub(crate) fn enqueue(&self) {
        self.reactor.enqueue(self.token());
    }

    /// Raises `RETURN` for pieces just appended to `returned`. While the handler is between a
    /// read and its flush (and few pieces wait), the token is not queued: the flush (or the next
    /// read that has to wait, or the handle's drop) queues it, so a read–respond cycle costs one
    /// request. Otherwise — the handler waits, or the handle is gone — it is queued at once.
    pub(crate) fn raise_return(state: &mut ConnState) -> bool {
        state.requests |= request::RETURN;
        let lazy = state.in_cycle && !state.handle_dropped && state.returned.len() < LAZY_RETURNS;
        if state.queued || lazy {
            return false;
        }
        state.queued = true;
        true
    }

    pub(crate) fn request(&self, bits: u8) {
        let queue = Self::raise(&mut self.lock(), bits);
        if queue {
            self.enqueue();
        }
    }

    /// Hands one piece back to the kernel (through the reactor).
    pub(crate) fn give_back_one(&self, item: RecvItem) {
        let queue = {
            let mut st = self.lock();
            st.returned.push(item);
            Self::raise_return(&mut st)
        };
        if queue {
            self.enqueue();
        }
    }

    /// Hands pieces back to the kernel (through the reactor).
    pub(crate) fn give_back(&self, items: &mut Vec<RecvItem>, keep_vec: bool) {
        if items.is_empty() {
            return;
        }
        let queue = {
            let mut st = self.lock();
            if st.returned.is_empty() {
                std::mem::swap(&mut st.returned, items);
            } else {
                st.returned.append(items);
            }
            if keep_vec && st.spare.capacity() < items.capacity() {
                std::mem::swap(&mut st.spare, items);
            }
            Self::raise_return(&mut st)
        };
        if queue {
            self.enqueue();
        }
    }
}

/// The reactor's side.
impl ConnShared {
    /// Queues a received piece for the next read and wakes the reader.
    pub(crate) fn deliver(&self, item: RecvItem) {
        let w = {
            let mut st = self.lock();
            st.recv.push_back(item);
            (st.read_waker.take(), st.read_remote)
        };
        wake(w.0, w.1);
    }

    /// No more bytes will be read: the reader learns `reason` after what is queued.
    pub(crate) fn end_read(&self, reason: CloseReason) {
        let w = {
            let mut st = self.lock();
            st.read_end.get_or_insert(reason);
            (st.read_waker.take(), st.read_remote)
        };
        wake(w.0, w.1);
    }

    /// Writes fail with `reason` from now on; a waiting flush learns it.
    pub(crate) fn end_write(&self, reason: CloseReason) {
        let w = {
            let mut st = self.lock();
            st.write_end.get_or_insert(reason);
            (st.flush_waker.take(), st.flush_remote)
        };
        wake(w.0, w.1);
    }

    /// Takes the raised requests: pieces handed back go into `returned`. With `send` (no send in
    /// flight, the connection open) and a flush raised, the staged bytes move into `send` and
    /// [`Requests::send`] names the flush sequence they complete; with nothing staged the flush
    /// completes at once.
    pub(crate) fn take_requests(
        &self,
        returned: &mut Vec<RecvItem>,
        send: Option<&mut SendBuf>,
    ) -> Requests {
        let mut out = Requests::default();
        let mut w = (None, false);
        {
            let mut st = self.lock();
            out.bits = std::mem::take(&mut st.requests);
            st.queued = false;
            if out.has(request::RETURN) {
                std::mem::swap(&mut st.returned, returned);
            }
            if out.has(request::FLUSH)
                && let Some(send) = send
            {
                if st.outgoing.is_empty() {
                    st.flush_done = st.flush_requested;
                    w = (st.flush_waker.take(), st.flush_remote);
                } else {
                    send.load(&mut st.outgoing);
                    out.send = Some(st.flush_requested);
                }
            }
        }
        wake(w.0, w.1);
        out
    }

    /// A send completed everything it had. With `send` (the connection open) and more bytes
    /// flushed meanwhile, loads them and returns the flush sequence they complete; otherwise
    /// completes the flushes up to `done` and wakes the waiting flush.
    pub(crate) fn send_done(&self, done: u64, send: Option<&mut SendBuf>) -> Option<u64> {
        let w = {
            let mut st = self.lock();
            if let Some(send) = send
                && !st.outgoing.is_empty()
            {
                send.load(&mut st.outgoing);
                return Some(st.flush_requested);
            }
            st.flush_done = st.flush_done.max(done);
            (st.flush_waker.take(), st.flush_remote)
        };
        wake(w.0, w.1);
        None
    }

    /// The write side was shut down (`Ok`) or could not be (`Err`, the errno's reason); tells a
    /// waiting `shutdown`.
    pub(crate) fn shut_down(&self, result: Result<(), CloseReason>) {
        let w = {
            let mut st = self.lock();
            match result {
                Ok(()) => {
                    st.shut_down = true;
                    st.write_end.get_or_insert(CloseReason::Local);
                }
                Err(reason) => {
                    st.write_end.get_or_insert(reason);
                }
            }
            (st.flush_waker.take(), st.flush_remote)
        };
        wake(w.0, w.1);
    }

    /// The reactor frees the connection: every piece the connection still has (unread,
    /// handed back, flushed for sending in place) goes into `items`, reads and writes end, and
    /// both wakers are woken.
    pub(crate) fn close_fd(&self, items: &mut Vec<RecvItem>) {
        let (rw, fw) = {
            let mut st = self.lock();
            items.extend(st.recv.drain(..));
            items.append(&mut st.returned);
            st.outgoing.take_pieces(items);
            st.read_end.get_or_insert(CloseReason::Local);
            st.write_end.get_or_insert(CloseReason::Local);
            (
                (st.read_waker.take(), st.read_remote),
                (st.flush_waker.take(), st.flush_remote),
            )
        };
        wake(rw.0, rw.1);
        wake(fw.0, fw.1);
    }

    /// Since when (reactor time, ms) a read has been waiting for bytes, if one is.
    pub(crate) fn read_waiting_since(&self) -> Option<u64> {
        self.lock().read_since
    }

    /// For a freed connection: takes the pieces handed back since, and clears its requests.
    pub(crate) fn take_returned(&self, items: &mut Vec<RecvItem>) {
        let mut st = self.lock();
        st.requests = 0;
        st.queued = false;
        items.append(&mut st.returned);
    }
}
