//! The reactor: one thread, one io_uring, one provided-buffer ring, its connections.
//!
//! One loop serves every configuration (runtime or thread-per-core handlers, dedicated or
//! per-reactor accept):
//!
//! ```text
//! loop {
//!     reap completions (batch)         recv → connection queue, send → resubmit / complete flush
//!     drain requests                   same-thread list + cross-thread queue: returns, flushes, closes
//!     run ready local tasks            thread-per-core handlers
//!     drain requests again             what those tasks asked for
//!     re-arm starved receives          when buffers came back
//!     publish buffer-ring tail
//!     hand wake-ups to other threads   one wake per batch (runtime/relay.rs)
//!     submit and wait                  one io_uring_enter; blocks only when nothing is left to do
//! }
//! ```
//!
//! Cross-thread work wakes the loop through an eventfd read that stays armed in the ring, and new
//! connections from the acceptor arrive as MSG_RING completions, so an idle reactor sleeps in the
//! kernel without a timeout.
//!
//! One file per concern: `setup.rs` (the io_uring and receive ring a reactor starts with),
//! `accept.rs` (new connections, connection caps), `recv.rs`,
//! `pressure.rs` (the per-connection bound, the ring running low), `watch.rs` (closes noticed
//! while a receive is paused), `send.rs`, `inbox.rs` (requests from handles), `close.rs`
//! (closing, stopping, teardown), `timers.rs` (connection timeouts), `connect.rs` (outbound
//! connections) and `outbound.rs` (their requests and answers), `fds.rs` (descriptors: direct
//! ones, installs, shutdowns, closes; zero-copy sends' buffers), `wait.rs` (the end of an
//! iteration: wake-ups handed to other threads, submit and wait), `start.rs` (the thread, the
//! rings, setup and the end of the thread); `conn.rs` holds the reactor's half of a connection.

mod accept;
mod close;
mod conn;
mod connect;
mod fds;
mod inbox;
pub(crate) mod outbound;
mod pressure;
mod recv;
mod send;
mod setup;
mod start;
mod timers;
mod wait;
mod watch;

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use io_uring::cqueue;

use crate::buf_ring::{BufRing, RecvItem};
use crate::conn::{ConnShared, Connection};
use crate::error::{Error, Result};
use crate::lifecycle::Lifecycle;
use crate::log_throttle::Throttles;
use crate::ring::slots::Slots;
use crate::ring::token::{ConnectionId, Kind, Token};
use crate::ring::{Ring, SockFd};
use crate::runtime::{ReactorShared, executor};
use crate::stats::ReactorStats;

use accept::Accepting;
use conn::Conn;
use outbound::{Outbound, OutboundRequest};
use pressure::Pressure;
use recv::Receiving;
pub(crate) use start::{ReactorInit, spawn};
use timers::{ConnTimers, Timeouts};

/// Buffer-group id of every reactor's ring (each reactor has its own io_uring).
const BGID: u16 = 0;
/// Send buffers up to this size are always kept for the next response; larger ones shrink when a
/// response no longer fills them.
const RETAIN_SEND_CAPACITY: usize = 256 * 1024;
/// Local tasks run per loop iteration before completions are looked at again.
const TASK_BUDGET: usize = 1024;

/// Builds, on each reactor thread (argument: the reactor's index), what it does with a new
/// connection in thread-per-core mode: typically spawn a handler on the local executor, with
/// whatever per-reactor state the closure captured.
pub(crate) type HandlerFactory = Arc<dyn Fn(usize) -> Box<dyn FnMut(Connection)> + Send + Sync>;

/// Where accepted connections go.
#[derive(Clone)]
pub(crate) enum Mode {
    /// To [`Engine::accept`](crate::Engine::accept), for handlers on any runtime.
    Runtime(async_channel::Sender<Connection>),
    /// To a handler on the reactor thread, built there by the factory.
    Serve(HandlerFactory),
}

/// A reactor's destination for new connections, once built on its thread.
enum Sink {
    Runtime(async_channel::Sender<Connection>),
    Serve(Box<dyn FnMut(Connection)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// Not accepting; waiting up to the grace period for connections to end.
    Draining,
    /// Closing every connection, then exiting.
    Closing,
}

struct Reactor {
    index: usize,
    shared: Arc<ReactorShared>,
    /// Connect and adopt requests for this reactor.
    outbound: Arc<Outbound>,
    outbound_reqs: Vec<OutboundRequest>,
    engine: Arc<Lifecycle>,
    /// Shared with code on this thread that needs an answer from the kernel at once
    /// (`ring/fixed.rs`).
    ring: Rc<Ring>,
    bufs: BufRing,
    /// Direct descriptors and zero-copy sends, as set up and probed (`fds.rs`).
    features: fds::Features,
    conns: Slots<Conn>,
    /// Until [`build_sink`](Self::build_sink) runs on the reactor thread: how to build `sink`.
    mode: Option<Mode>,
    sink: Sink,
    incremental: bool,
    max_conns: usize,
    max_held: u32,
    pressure: Pressure,
    /// How receives are armed (bundles or not).
    receiving: Receiving,
    /// The connection caps: places, and the accept against them (per-reactor accept mode).
    accepting: Accepting,
    /// Bytes per receive buffer.
    buf_size: u32,
    /// Arm receives with a byte limit of the buffers the connection may still take
    /// (`IORING_RECV_MSHOT_LIM`). Without it a pause is a cancellation that lands only after the
    /// kernel, which runs a multishot receive many times per `io_uring_enter`, filled whatever
    /// the ring had: one connection that does not read took every buffer (docs/architecture.md, rule 7). Cleared when
    /// the kernel rejects the limit (before Linux 6.17); the cancellation then is all there is.
    recv_limit: bool,
    /// A limited receive delivered data: the kernel supports the limit, so a later `EINVAL` is a
    /// real error, not a reason to drop the limit.
    recv_limit_works: bool,
    batch: usize,
    cqes: Vec<cqueue::Entry>,
    tokens: Vec<u64>,
    items: Vec<RecvItem>,
    starved: VecDeque<ConnectionId>,
    /// Shared state of freed connections that something (a read snapshot, an adapter) still
    /// references. Pieces it hands back arrive with the freed connection's token; they are
    /// released from here, or they would never reach the ring again.
    zombies: Vec<Arc<ConnShared>>,
    wake_fd: RawFd,
    wake_armed: bool,
    listener: Option<RawFd>,
    accept_armed: bool,
    /// Engine-level operations in flight (wake read, accept, timers, cancellations).
    misc_ops: u32,
    stats: ReactorStats,
    /// Warnings that could repeat at the rate of traffic.
    logs: Throttles,
    phase: Phase,
    cancel_all_sent: bool,
    /// Reactor time in milliseconds, read once per loop iteration.
    now: u64,
    timeouts: Timeouts,
    conn_timers: ConnTimers,
    wakers: Vec<std::task::Waker>,
    /// Wake-ups of tasks on other threads deferred during the iteration (`wait.rs`).
    deferred: Vec<std::task::Waker>,
}

fn fatal(e: std::io::Error, what: &str) -> Error {
    Error::io(what.to_string(), e)
}

impl Reactor {
    fn submit(&mut self, wait: bool, bound: Option<Duration>) -> Result<()> {
        self.ring
            .submit(wait, bound)
            .map_err(|e| fatal(e, &format!("io_uring_enter for reactor {}", self.index)))
    }

    fn arm_wake(&mut self) -> Result<()> {
        self.ring
            .read_wake(self.wake_fd, Token::engine(Kind::Wake))
            .map_err(|e| fatal(e, "arm the wake-up read"))?;
        self.wake_armed = true;
        self.misc_ops += 1;
        Ok(())
    }

    fn run(&mut self) -> Result<()> {
        loop {
            self.now = self.shared.clock.now_ms();
            self.reap()?;
            self.fire_timers()?;
            self.drain_requests()?;
            if executor::run_tasks(TASK_BUDGET) > 0 {
                self.drain_requests()?;
            }
            self.drain_outbound()?;
            self.check_pressure()?;
            self.rearm_starved()?;
            self.check_accept()?;
            if self.phase == Phase::Closing
                && self.conns.is_empty()
                && self.engine.is_acceptor_done()
            {
                if self.misc_ops == 0 {
                    return Ok(());
                }
                if !self.cancel_all_sent {
                    // Wake read, accept, timers: nothing is needed any more.
                    self.ring
                        .cancel_any(Token::engine(Kind::AcceptCancel))
                        .map_err(|e| fatal(e, "cancel"))?;
                    self.misc_ops += 1;
                    self.cancel_all_sent = true;
                }
            }
            if !self.wake_armed && !self.cancel_all_sent {
                self.arm_wake()?;
            }
            self.bufs.publish();
            self.hand_off_wakes();
            self.publish_stats();
            self.submit_and_wait()?;
        }
    }

    fn publish_stats(&mut self) {
        self.stats.connections = self.conns.len() as u64;
        self.stats.buffers_total = u64::from(self.bufs.total());
        self.stats.buffers_free = u64::from(self.bufs.free());
        self.stats.buffers_held = u64::from(self.bufs.total() - self.bufs.free());
        self.stats.handler_panics = executor::panics();
        self.stats.fd_installs = self.ring.installs();
        self.shared.stats.publish(&self.stats);
    }

    /// Handles up to `batch_cqes` completions.
    fn reap(&mut self) -> Result<()> {
        let mut handled = 0;
        while handled < self.batch {
            let mut cqes = std::mem::take(&mut self.cqes);
            cqes.extend(self.ring.completion().take(self.batch - handled));
            if cqes.is_empty() {
                self.cqes = cqes;
                break;
            }
            handled += cqes.len();
            for cqe in cqes.drain(..) {
                self.dispatch(cqe.user_data(), cqe.result(), cqe.flags())?;
            }
            self.cqes = cqes;
        }
        Ok(())
    }

    fn dispatch(&mut self, user_data: u64, res: i32, flags: u32) -> Result<()> {
        let Some(token) = Token::decode(user_data) else {
            tracing::warn!(user_data, res, "completion with an unknown user_data");
            return Ok(());
        };
        match token.kind {
            Kind::Recv => self.on_recv(token.id, res, flags),
            Kind::Send => self.on_send(token.id, res, flags),
            Kind::Connect => self.on_connect(token.id, res),
            Kind::ConnectTimeout => {
                self.on_connect_timeout(token.id, res);
                Ok(())
            }
            Kind::Watch => self.on_watch(token.id, res, flags),
            Kind::Cancel => {
                if let Some(conn) = self.conns.get_mut(token.id) {
                    conn.ops -= 1;
                    self.maybe_finish_close(token.id);
                } else {
                    self.stats.stale_completions += 1;
                }
                Ok(())
            }
            Kind::Wake => {
                self.misc_ops -= 1;
                self.wake_armed = false;
                self.shared.wake_consumed();
                Ok(())
            }
            Kind::NewConn if res >= 0 => self.adopt(SockFd::Raw(res)),
            Kind::NewDirect
            | Kind::CloseSlot
            | Kind::ShutdownWrite
            | Kind::ShutdownBoth
            | Kind::QuietClose => self.on_fd_op(token, res),
            Kind::Accept => self.on_accept(res, flags),
            Kind::AcceptBackoff => self.on_accept_backoff(),
            Kind::Grace => self.on_grace(),
            Kind::AcceptCancel => {
                self.misc_ops -= 1;
                Ok(())
            }
            // Answered elsewhere, or not completions of this ring.
            Kind::NewConn
            | Kind::HandOff
            | Kind::HandOffClose
            | Kind::Install
            | Kind::InstallRequest => Ok(()),
        }
    }
}
