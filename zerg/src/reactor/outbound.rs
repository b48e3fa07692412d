//! Outbound requests (connect, adopt) on their way to a reactor, and the answer on its way back.
//!
//! A request carries a socket the caller created (or a connected one to adopt) and a
//! [`Resolver`]; the reactor takes it from its [`Outbound`] inbox, and the future waiting for the
//! connection learns the outcome through the [`Pending`] both share. Dropping the future mid-way
//! abandons the request: the reactor then cancels the connect, reaps it and closes the socket —
//! the future never owns memory the kernel reads.

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::conn::{ConnShared, Connection, request};
use crate::error::{Error, Result};
use crate::runtime::{ReactorShared, local};

/// What the reactor is asked to do with a request's socket.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// Connect the (non-blocking, unconnected) socket to `addr`, within `timeout` if set.
    Connect {
        addr: SocketAddr,
        timeout: Option<Duration>,
    },
    /// The socket is connected already (to `peer`): take it over as it is.
    Adopt { peer: SocketAddr },
}

impl Target {
    /// The error for this request failing with `source`.
    pub(crate) fn error(&self, source: io::Error) -> Error {
        match *self {
            Target::Connect { addr, .. } => Error::Connect { addr, source },
            Target::Adopt { peer } => Error::io(format!("adopt the connection to {peer}"), source),
        }
    }
}

/// One outbound request: the socket, what to do with it, where the answer goes.
#[derive(Debug)]
pub(crate) struct OutboundRequest {
    pub(crate) fd: OwnedFd,
    pub(crate) target: Target,
    pub(crate) resolver: Resolver,
}

/// A reactor's inbox of outbound requests, from its own thread and from others.
pub(crate) struct Outbound {
    reactor: Arc<ReactorShared>,
    queue: Mutex<Queue>,
    /// Requests are queued: the reactor looks at `queue` only when this is set.
    queued: AtomicBool,
}

#[derive(Default)]
struct Queue {
    /// The reactor exited: requests are refused.
    closed: bool,
    requests: Vec<OutboundRequest>,
}

impl fmt::Debug for Outbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbound")
            .field("reactor", &self.reactor.index)
            .finish_non_exhaustive()
    }
}

impl Outbound {
    pub(crate) fn new(reactor: Arc<ReactorShared>) -> Self {
        Self {
            reactor,
            queue: Mutex::new(Queue::default()),
            queued: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `req` for the reactor and wakes it; gives `req` back if the reactor has exited.
    pub(crate) fn submit(&self, req: OutboundRequest) -> std::result::Result<(), OutboundRequest> {
        {
            let mut q = self.lock();
            if q.closed {
                return Err(req);
            }
            q.requests.push(req);
        }
        self.queued.store(true, Ordering::Release);
        // On the reactor's own thread the request is drained before the reactor next waits (its
        // pre-sleep check looks at `queued`); from elsewhere, the reactor may be asleep.
        if !local::is_current(&self.reactor) {
            self.reactor.wake();
        }
        Ok(())
    }

    /// Requests are waiting (the reactor's pre-sleep check, after `prepare_sleep`).
    pub(crate) fn has_work(&self) -> bool {
        self.queued.load(Ordering::Acquire)
    }

    /// Moves the queued requests into `out` (reactor thread).
    pub(super) fn take(&self, out: &mut Vec<OutboundRequest>) {
        if self.queued.swap(false, Ordering::Acquire) {
            out.append(&mut self.lock().requests);
        }
    }

    /// The reactor exits: refuses requests from now on and returns the ones still queued.
    pub(super) fn close(&self) -> Vec<OutboundRequest> {
        let mut q = self.lock();
        q.closed = true;
        std::mem::take(&mut q.requests)
    }
}

thread_local! {
    /// The inbox of the reactor running on this thread.
    static CURRENT: RefCell<Option<Arc<Outbound>>> = const { RefCell::new(None) };
}

/// The inbox of the reactor running on the calling thread, if it is a reactor thread.
pub(crate) fn current() -> Option<Arc<Outbound>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Makes `outbound` the calling thread's for the guard's lifetime (the reactor thread).
pub(super) fn enter(outbound: &Arc<Outbound>) -> CurrentGuard {
    CURRENT.with(|c| *c.borrow_mut() = Some(outbound.clone()));
    CurrentGuard(())
}

#[derive(Debug)]
pub(super) struct CurrentGuard(());

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.borrow_mut().take());
    }
}

/// Where the future waiting for an outbound connection and its reactor meet.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    state: Mutex<PendingState>,
}

#[derive(Default)]
struct PendingState {
    outcome: Option<Result<Connection>>,
    waker: Option<Waker>,
    /// The future was dropped before it took the outcome.
    abandoned: bool,
    /// The connection being set up, from the moment the reactor took the request until it
    /// resolved it: abandoning the request closes it.
    conn: Option<Arc<ConnShared>>,
}

impl fmt::Debug for PendingState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingState")
            .field("resolved", &self.outcome.is_some())
            .field("abandoned", &self.abandoned)
            .finish_non_exhaustive()
    }
}

/// The future's side.
impl Pending {
    fn lock(&self) -> MutexGuard<'_, PendingState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn poll(&self, cx: &mut Context<'_>) -> Poll<Result<Connection>> {
        let mut st = self.lock();
        if let Some(outcome) = st.outcome.take() {
            return Poll::Ready(outcome);
        }
        match &mut st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The future is dropped: a connection already made closes like any dropped handle; one
    /// still being made is closed by its reactor (the connect is cancelled and reaped first).
    pub(crate) fn abandon(&self) {
        let (outcome, conn) = {
            let mut st = self.lock();
            st.abandoned = true;
            st.waker = None;
            (st.outcome.take(), st.conn.take())
        };
        drop(outcome);
        if let Some(conn) = conn {
            conn.request(request::CLOSE);
        }
    }
}

/// The reactor's end of a [`Pending`]. Dropped unresolved (the request refused, the reactor
/// gone), it resolves with [`Error::EngineStopped`]: a waiting future always wakes.
pub(crate) struct Resolver(Option<Arc<Pending>>);

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Resolver").finish()
    }
}

impl Resolver {
    pub(crate) fn new(pending: Arc<Pending>) -> Self {
        Self(Some(pending))
    }

    /// The reactor took the request for `conn`. Returns `false` when the future is gone already:
    /// the request is dropped then.
    pub(super) fn started(&self, conn: &Arc<ConnShared>) -> bool {
        let Some(p) = &self.0 else {
            return false;
        };
        let mut st = p.lock();
        if st.abandoned {
            return false;
        }
        st.conn = Some(conn.clone());
        true
    }

    /// Hands `outcome` to the future (a connection nobody waits for any more is dropped, which
    /// closes it).
    pub(super) fn resolve(mut self, outcome: Result<Connection>) {
        if let Some(p) = self.0.take() {
            deliver(&p, outcome);
        }
    }
}

fn deliver(p: &Pending, outcome: Result<Connection>) {
    let (waker, unwanted) = {
        let mut st = p.lock();
        st.conn = None;
        if st.abandoned {
            (None, Some(outcome))
        } else {
            st.outcome = Some(outcome);
            (st.waker.take(), None)
        }
    };
    drop(unwanted);
    if let Some(w) = waker {
        w.wake();
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            deliver(&p, Err(Error::EngineStopped));
        }
    }
}
