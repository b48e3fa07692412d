//! Outbound connections: [`connect`], [`connect_timeout`] and [`adopt`] on the reactor the
//! calling task runs on (thread-per-core handlers), and their [`Engine`](crate::Engine)
//! counterparts for code on any other thread or runtime.
//!
//! Either way the result is a [`Connection`] exactly like an accepted one: it lives in the
//! reactor's connection table (slot + generation), receives through a multishot receive from the
//! reactor's buffer ring, and works with every adapter.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::conn::Connection;
use crate::error::{Error, Result};
use crate::reactor::outbound::{self, Outbound, OutboundRequest, Pending, Resolver, Target};

/// Opens a TCP connection to `addr` on the reactor running the calling task.
///
/// Call it (await it) from a handler started by [`Engine::serve`](crate::Engine::serve) or any
/// task on a reactor thread: the socket (non-blocking, close-on-exec, `TCP_NODELAY`) is created
/// at the first poll and connected with `IORING_OP_CONNECT` on that reactor's ring; the
/// connection then belongs to that reactor. Elsewhere — a tokio task, a plain thread — use
/// [`Engine::connect`](crate::Engine::connect).
///
/// `addr` is a resolved address (anything `Into<SocketAddr>`, such as `([127, 0, 0, 1], 80)`):
/// name resolution blocks, so resolve host names beforehand (at start-up, or on a blocking
/// thread) rather than on the reactor.
///
/// # Cancel safety
///
/// Dropping the future before it resolves abandons the attempt and loses nothing else: the
/// reactor cancels the connect, waits for the kernel to let go of it, then closes the socket (a
/// connection made meanwhile is closed).
///
/// # Errors
///
/// [`Error::Connect`] naming `addr` with the errno (`ECONNREFUSED` for a closed port);
/// [`Error::NotOnReactor`] when polled off a reactor thread; [`Error::EngineStopped`] when the
/// engine stops first.
pub fn connect(addr: impl Into<SocketAddr>) -> Connect {
    Connect::new(Job::connect(addr.into(), None), None)
}

/// Like [`connect`], giving up after `timeout`: a timeout linked to the connect in the kernel
/// (`IORING_OP_LINK_TIMEOUT`) cancels it, and the future resolves with
/// [`Error::ConnectTimedOut`] naming the address.
///
/// # Cancel safety
///
/// As for [`connect`].
///
/// # Errors
///
/// As for [`connect`]; a zero `timeout` is refused with [`Error::Connect`]
/// (`InvalidInput`).
pub fn connect_timeout(addr: impl Into<SocketAddr>, timeout: Duration) -> Connect {
    Connect::new(Job::connect(addr.into(), Some(timeout)), None)
}

/// Takes over an already connected `stream` on the reactor running the calling task: it is set
/// non-blocking with `TCP_NODELAY` and becomes a [`Connection`] of that reactor.
///
/// On an error the stream is closed.
///
/// # Cancel safety
///
/// The stream is given up at the call: dropping the future before it resolves closes it (and
/// the connection, if the reactor had already taken it over).
///
/// # Errors
///
/// [`Error::Io`] when the stream is not connected or cannot be set up;
/// [`Error::NotOnReactor`] when polled off a reactor thread (use
/// [`Engine::adopt`](crate::Engine::adopt) there); [`Error::EngineStopped`].
pub fn adopt(stream: TcpStream) -> Connect {
    Connect::new(Job::Adopt(stream), None)
}

/// Future of [`connect`], [`connect_timeout`], [`adopt`] and their [`Engine`](crate::Engine)
/// counterparts: resolves with the new [`Connection`].
///
/// It is `Send` and `'static`.
///
/// # Cancel safety
///
/// Dropping it before it resolves abandons the attempt (the reactor cancels the connect and
/// closes the socket; a connection made meanwhile is closed) and loses nothing else.
#[must_use = "futures do nothing unless polled"]
pub struct Connect {
    state: State,
}

enum State {
    /// Not polled yet. `via`: the reactor chosen by the engine (`None`: the current thread's).
    Start {
        job: Job,
        via: Option<Arc<Outbound>>,
    },
    Waiting(Arc<Pending>),
    Done,
}

/// What a [`Connect`] asks its reactor for.
pub(crate) enum Job {
    Connect {
        addr: SocketAddr,
        timeout: Option<Duration>,
    },
    Adopt(TcpStream),
}

impl Connect {
    /// `via`: the reactor to ask (`None`: the one running the task that polls it).
    pub(crate) fn new(job: Job, via: Option<Arc<Outbound>>) -> Self {
        Connect {
            state: State::Start { job, via },
        }
    }

    /// An engine with no reactor to ask (stopped before it started).
    pub(crate) fn failed() -> Self {
        Connect { state: State::Done }
    }
}

impl Job {
    pub(crate) fn connect(addr: SocketAddr, timeout: Option<Duration>) -> Self {
        Job::Connect { addr, timeout }
    }

    fn name(&self) -> &'static str {
        match self {
            Job::Connect { .. } => "connect",
            Job::Adopt(_) => "adopt",
        }
    }

    /// Prepares the socket and hands the request to `outbound`'s reactor.
    fn submit(self, outbound: &Outbound) -> Result<Arc<Pending>> {
        let (fd, target) = match self {
            Job::Connect { addr, timeout } => (
                open_socket(addr, timeout)?,
                Target::Connect { addr, timeout },
            ),
            Job::Adopt(stream) => adopt_socket(stream)?,
        };
        let pending = Arc::new(Pending::default());
        let req = OutboundRequest {
            fd,
            target,
            resolver: Resolver::new(pending.clone()),
        };
        match outbound.submit(req) {
            Ok(()) => Ok(pending),
            // The reactor exited; dropping the request closes the socket.
            Err(_req) => Err(Error::EngineStopped),
        }
    }
}

/// A non-blocking, close-on-exec TCP socket with `TCP_NODELAY`, for connecting to the target.
fn open_socket(addr: SocketAddr, timeout: Option<Duration>) -> Result<OwnedFd> {
    let err = |source: io::Error| Error::Connect { addr, source };
    if timeout.is_some_and(|t| t.is_zero()) {
        return Err(err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a connect timeout must be longer than zero",
        )));
    }
    let ty = Type::STREAM.nonblocking().cloexec();
    let socket = Socket::new(Domain::for_address(addr), ty, Some(Protocol::TCP)).map_err(err)?;
    socket.set_tcp_nodelay(true).map_err(err)?;
    Ok(socket.into())
}

/// Sets an adopted stream non-blocking with `TCP_NODELAY`; refuses one that is not connected.
fn adopt_socket(stream: TcpStream) -> Result<(OwnedFd, Target)> {
    let peer = stream
        .peer_addr()
        .map_err(|e| Error::io("adopt a TcpStream (it must be connected)", e))?;
    let target = Target::Adopt { peer };
    stream.set_nonblocking(true).map_err(|e| target.error(e))?;
    stream.set_nodelay(true).map_err(|e| target.error(e))?;
    Ok((stream.into(), target))
}

impl Future for Connect {
    type Output = Result<Connection>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Connection>> {
        let this = self.get_mut();
        loop {
            match std::mem::replace(&mut this.state, State::Done) {
                State::Start { job, via } => {
                    let outbound = match via.or_else(outbound::current) {
                        Some(o) => o,
                        None => {
                            return Poll::Ready(Err(Error::NotOnReactor { what: job.name() }));
                        }
                    };
                    match job.submit(&outbound) {
                        Ok(pending) => this.state = State::Waiting(pending),
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                State::Waiting(pending) => {
                    let res = pending.poll(cx);
                    if res.is_pending() {
                        this.state = State::Waiting(pending);
                    }
                    return res;
                }
                // Polled again after it resolved, or an engine without reactors.
                State::Done => return Poll::Ready(Err(Error::EngineStopped)),
            }
        }
    }
}

impl Drop for Connect {
    fn drop(&mut self) {
        if let State::Waiting(pending) = &self.state {
            pending.abandon();
        }
    }
}

impl fmt::Debug for Connect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Start { .. } => "not started",
            State::Waiting(_) => "waiting",
            State::Done => "done",
        };
        f.debug_struct("Connect").field("state", &state).finish()
    }
}
