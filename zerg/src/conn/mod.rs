//! [`Connection`]: one accepted TCP connection, usable from any thread and any async runtime.
//!
//! A connection's state is split in two. The reactor that owns the socket keeps the kernel-facing
//! part (armed operations, the bytes being sent). [`ConnShared`] holds what both sides touch: the
//! received pieces not yet read, the pieces handed back, the bytes to send next, the wakers. Each
//! side takes the lock only to move whole batches in or out, and asks the reactor for work by
//! setting request bits and queueing the connection's token once.

pub(crate) mod outgoing;
mod read;
mod write;

pub use read::{Read, ReadSnapshot, RingItem, Segments, Sequence};
pub use write::{Flush, FlushState, Shutdown, ShutdownState, WriteAll};

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use crate::buf_ring::RecvItem;
use crate::error::CloseReason;
use crate::reactor::ReactorShared;
use crate::reactor::token::{ConnectionId, Kind, Token};

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
    pub(crate) fd: RawFd,
    pub(crate) reactor: Arc<ReactorShared>,
    state: Mutex<ConnState>,
}

#[derive(Default)]
pub(crate) struct ConnState {
    /// Received pieces not yet taken by a read, in arrival order.
    pub(crate) recv: VecDeque<RecvItem>,
    /// An empty vector with capacity, for the next snapshot.
    pub(crate) spare: Vec<RecvItem>,
    /// Pieces handed back, waiting for the reactor to recycle them.
    pub(crate) returned: Vec<RecvItem>,
    /// No more bytes will arrive, for this reason; reported once `recv` is empty.
    pub(crate) read_end: Option<CloseReason>,
    pub(crate) read_waker: Option<Waker>,

    /// What the handle flushed and the reactor has not taken yet.
    pub(crate) outgoing: outgoing::Outgoing,
    /// Flushes requested / completed (a flush is done when `flush_done >= its sequence`).
    pub(crate) flush_requested: u64,
    pub(crate) flush_done: u64,
    /// Writes fail with this from now on.
    pub(crate) write_end: Option<CloseReason>,
    /// The write side was shut down (FIN sent) at the application's request.
    pub(crate) shut_down: bool,
    pub(crate) flush_waker: Option<Waker>,

    /// Request bits for the reactor and whether the token is queued.
    pub(crate) requests: u8,
    pub(crate) queued: bool,
    /// The reactor closed the descriptor (engine stop); the fd number means nothing any more.
    pub(crate) fd_closed: bool,
    /// The `Connection` handle was dropped: returns are queued at once.
    pub(crate) handle_dropped: bool,
    /// The handler took data with its last read and has not flushed or waited since: a return
    /// can ride on its next flush (or wait) instead of a request of its own.
    pub(crate) in_cycle: bool,
}

impl ConnShared {
    pub(crate) fn new(id: ConnectionId, fd: RawFd, reactor: Arc<ReactorShared>) -> Self {
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

/// One accepted TCP connection.
///
/// `Connection` is `Send`: hand it to a task on any runtime. It owns the socket; dropping it
/// closes the connection (the reactor cancels what is in flight, waits for the kernel to finish,
/// then closes the descriptor), discarding bytes written but not flushed.
///
/// Reading: [`read`](Self::read) returns a [`ReadSnapshot`] of everything received so far (the
/// seed's `ReadAsync`). Writing: [`write`](Self::write) (or [`get_span`](Self::get_span) +
/// [`advance`](Self::advance), [`std::io::Write`], [`bytes::BufMut`]) stages bytes,
/// [`flush`](Self::flush) sends them.
pub struct Connection {
    pub(crate) shared: Arc<ConnShared>,
    pub(crate) wbuf: write::WriteBuf,
}

impl Connection {
    pub(crate) fn new(shared: Arc<ConnShared>, max_write_buffer: usize) -> Self {
        Self {
            shared,
            wbuf: write::WriteBuf::new(max_write_buffer),
        }
    }

    /// The socket's file descriptor (the seed's `ClientFd`). It stays owned by zerg: valid while
    /// this handle lives and the engine runs; do not close it or read from it directly.
    pub fn fd(&self) -> RawFd {
        self.shared.fd
    }

    /// Index of the reactor that owns this connection (the seed's `Reactor`).
    pub fn reactor(&self) -> usize {
        self.shared.reactor.index
    }

    /// Identity of this connection within its reactor: slot and generation.
    pub fn id(&self) -> ConnectionId {
        self.shared.id
    }

    /// The peer's address.
    ///
    /// # Errors
    ///
    /// The `getpeername(2)` error, or `NotConnected` once the engine closed the socket.
    pub fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        let st = self.shared.lock();
        if st.fd_closed {
            return Err(std::io::ErrorKind::NotConnected.into());
        }
        // The lock keeps the reactor from closing the descriptor meanwhile.
        crate::sys::peer_addr(self.shared.fd)
    }

    /// Why the connection is closed for reading, once it is and everything received was read.
    pub fn close_reason(&self) -> Option<CloseReason> {
        let st = self.shared.lock();
        if st.recv.is_empty() {
            st.read_end
        } else {
            None
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let queue = {
            let mut st = self.shared.lock();
            // Received pieces staged for sending and never flushed go back to the kernel.
            let st = &mut *st;
            self.wbuf.take_pieces(&mut st.returned);
            if !st.returned.is_empty() {
                st.requests |= request::RETURN;
            }
            st.handle_dropped = true;
            ConnShared::raise(st, request::CLOSE)
        };
        if queue {
            self.shared.enqueue();
        }
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("fd", &self.shared.fd)
            .field("reactor", &self.shared.reactor.index)
            .field("id", &self.shared.id)
            .field("staged", &self.wbuf.len())
            .finish()
    }
}
