//! [`Connection`]: one accepted TCP connection, usable from any thread and any async runtime.
//!
//! A connection's state is split in two. The reactor that owns the socket keeps the kernel-facing
//! part (armed operations, the bytes being sent). [`ConnShared`] holds what both sides touch: the
//! received pieces not yet read, the pieces handed back, the bytes to send next, the wakers. Each
//! side takes the lock only to move whole batches in or out, and asks the reactor for work by
//! setting request bits and queueing the connection's token once.

mod read;
mod shared;
mod write;

pub use read::{Read, ReadSnapshot, RecvBuffer, Segments, Sequence};
pub use write::{Flush, FlushState, Shutdown, ShutdownState, WriteAll};

pub(crate) use shared::{ConnShared, ConnState, request};

use std::fmt;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;

use crate::error::CloseReason;
use crate::ring::token::ConnectionId;

/// One accepted TCP connection.
///
/// `Connection` is `Send`: hand it to a task on any runtime. It owns the socket; dropping it
/// closes the connection (the reactor cancels what is in flight, waits for the kernel to finish,
/// then closes the descriptor), discarding bytes written but not flushed.
///
/// Reading: [`read`](Self::read) returns a [`ReadSnapshot`] of everything received so far (C# zerg:
/// `ReadAsync`). Writing: [`write`](Self::write) (or [`span_mut`](Self::span_mut) +
/// [`commit`](Self::commit), [`std::io::Write`], [`bytes::BufMut`]) stages bytes,
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

    /// The socket's file descriptor (C# zerg: `ClientFd`). It stays owned by zerg: valid while
    /// this handle lives and the engine runs; do not close it or read from it directly.
    pub fn fd(&self) -> RawFd {
        self.shared.fd
    }

    /// Index of the reactor that owns this connection (C# zerg: `Reactor`).
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

    /// The local address of the connection: the address the client connected to, which tells
    /// the listeners apart when the engine accepts on several
    /// ([`EngineOptions::listeners`](crate::EngineOptions::listeners)).
    ///
    /// # Errors
    ///
    /// The `getsockname(2)` error, or `NotConnected` once the engine closed the socket.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        let st = self.shared.lock();
        if st.fd_closed {
            return Err(std::io::ErrorKind::NotConnected.into());
        }
        // The lock keeps the reactor from closing the descriptor meanwhile.
        crate::sys::local_addr(self.shared.fd)
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
