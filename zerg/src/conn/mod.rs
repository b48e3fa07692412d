//! [`Connection`]: one accepted TCP connection, usable from any thread and any async runtime.
//!
//! A connection's state is split in two. The reactor that owns the socket keeps the kernel-facing
//! part (armed operations, the bytes being sent). [`ConnShared`] holds what both sides touch: the
//! received pieces not yet read, the pieces handed back, the bytes to send next, the wakers. Each
//! side takes the lock only to move whole batches in or out, and asks the reactor for work by
//! setting request bits and queueing the connection's token once.

mod fd;
mod read;
mod shared;
mod write;

pub use read::{Read, ReadSnapshot, RecvBuffer, Segments, Sequence};
pub use write::{Flush, FlushState, Shutdown, ShutdownState, WriteAll};

pub(crate) use fd::ConnFd;
pub(crate) use shared::{ConnShared, ConnState, request};

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;

use crate::error::CloseReason;
use crate::ring::token::{ConnectionId, Kind, Token};
use crate::runtime::local;

/// One accepted TCP connection.
///
/// `Connection` is `Send`: hand it to a task on any runtime. It owns the socket; dropping it
/// closes the connection (the reactor cancels what is in flight, waits for the kernel to finish,
/// then closes the descriptor), discarding bytes written but not flushed.
///
/// Its descriptor can be borrowed ([`AsFd`], [`AsRawFd`], [`try_as_fd`](Self::try_as_fd)) for
/// socket options and the like: it stays open as long as the handle lives, even past the
/// engine's stop (the socket is then shut down, and closed when the handle is dropped). Do not
/// read from it, write to it or close it: the reactor owns the socket's I/O.
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

    /// The socket's file descriptor (C# zerg: `ClientFd`); the same as
    /// [`as_raw_fd`](AsRawFd::as_raw_fd), with the same panic. It stays owned by zerg: valid
    /// while this handle lives; do not close it or read from it directly.
    pub fn fd(&self) -> RawFd {
        self.as_raw_fd()
    }

    /// Borrows the socket's descriptor.
    ///
    /// A connection on a direct descriptor
    /// ([`ReactorConfig::direct_descriptors`](crate::ReactorConfig::direct_descriptors)) has
    /// none in the process's table until it is asked for: the first call installs one
    /// (`IORING_OP_FIXED_FD_INSTALL`), inline when called on the connection's reactor thread,
    /// otherwise by asking the reactor and blocking until it answered (one round trip: about
    /// 25 µs on a 2-core test machine when the reactor has to be woken for it). It is
    /// synchronous rather than `async` so that [`AsFd`] works everywhere (`socket2::SockRef`,
    /// `nix`, ...), and costs nothing after the first call; a handler that wants no blocking
    /// call at all runs on the reactor thread, where the install is inline.
    ///
    /// # Errors
    ///
    /// The install's error (`EMFILE`: the process is out of descriptors), or `ENOTCONN` when
    /// the engine stopped before a descriptor was installed.
    pub fn try_as_fd(&self) -> io::Result<BorrowedFd<'_>> {
        fd::borrow(self)
    }

    /// Index of the reactor that owns this connection (C# zerg: `Reactor`).
    pub fn reactor(&self) -> usize {
        self.shared.reactor.index
    }

    /// Identity of this connection within its reactor: slot and generation.
    pub fn id(&self) -> ConnectionId {
        self.shared.id
    }

    /// The peer's address (`getpeername(2)`; on a direct descriptor, installs the descriptor
    /// first, as [`try_as_fd`](Self::try_as_fd) does).
    ///
    /// # Errors
    ///
    /// The `getpeername(2)` error (`ENOTCONN` once the engine stopped and shut the socket
    /// down), or [`try_as_fd`](Self::try_as_fd)'s.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        crate::sys::peer_addr(self.try_as_fd()?)
    }

    /// The local address of the connection: the address the client connected to, which tells
    /// the listeners apart when the engine accepts on several
    /// ([`EngineOptions::listeners`](crate::EngineOptions::listeners)). On a direct descriptor,
    /// installs the descriptor first, as [`try_as_fd`](Self::try_as_fd) does.
    ///
    /// # Errors
    ///
    /// The `getsockname(2)` error, or [`try_as_fd`](Self::try_as_fd)'s (`ENOTCONN` when the
    /// engine stopped before a descriptor was installed).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        crate::sys::local_addr(self.try_as_fd()?)
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

/// # Panics
///
/// When no descriptor can be had ([`Connection::try_as_fd`] fails): only for a connection on a
/// direct descriptor whose install failed (the process is out of descriptors) or that the
/// engine let go of before one was installed. Use `try_as_fd` to handle that.
impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self.try_as_fd() {
            Ok(fd) => fd,
            Err(e) => panic!("zerg: no descriptor for this connection: {e}"),
        }
    }
}

/// # Panics
///
/// As [`AsFd`]'s implementation.
impl AsRawFd for Connection {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

impl ConnShared {
    /// The connection's descriptor in the process's table, installed first if it has only a
    /// direct one (`ConnFd`).
    pub(crate) fn descriptor(&self) -> io::Result<RawFd> {
        let here = local::is_current(&self.reactor);
        match self.fd.lookup(!here)? {
            fd::Lookup::Ready(fd) => Ok(fd),
            fd::Lookup::Install { index, .. } if here => {
                let result = crate::ring::fixed::install_here(index)
                    .unwrap_or_else(|| Err(io::Error::from_raw_os_error(libc::ENOTCONN)));
                self.fd.installed(result)
            }
            fd::Lookup::Install { ask, .. } => {
                if ask {
                    // One request however many threads wait; the reactor answers every
                    // connection before it exits, so the wait ends.
                    self.reactor
                        .enqueue(Token::conn(Kind::InstallRequest, self.id));
                }
                self.fd.wait()
            }
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
