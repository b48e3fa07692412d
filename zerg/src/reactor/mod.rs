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
//! One file per concern: `accept.rs` (new connections, connection caps), `recv.rs`,
//! `pressure.rs` (the per-connection bound, the ring running low), `watch.rs` (closes noticed
//! while a receive is paused), `send.rs`, `inbox.rs` (requests from handles), `close.rs`
//! (closing, stopping, teardown), `timers.rs` (connection timeouts), `connect.rs` (outbound
//! connections) and `outbound.rs` (their requests and answers), `fds.rs` (descriptors: direct
//! ones, installs, shutdowns, closes; zero-copy sends' buffers), `wait.rs` (the end of an
//! iteration: wake-ups handed to other threads, submit and wait); `conn.rs` holds the reactor's
//! half of a connection.

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
mod timers;
mod wait;
mod watch;

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use io_uring::cqueue;

use crate::admission::Admission;
use crate::buf_ring::{BufRing, RecvItem};
use crate::config::ReactorConfig;
use crate::conn::{ConnShared, Connection};
use crate::error::{Error, Result};
use crate::lifecycle::{Lifecycle, ThreadGuard};
use crate::log_throttle::Throttles;
use crate::ring::slots::Slots;
use crate::ring::token::{ConnectionId, Kind, Token};
use crate::ring::{Ring, SockFd};
use crate::runtime::{ReactorShared, executor, local};
use crate::stats::ReactorStats;
use crate::sys::{self, EventFd};

use accept::Accepting;
use conn::Conn;
use outbound::{Outbound, OutboundRequest};
use pressure::Pressure;
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

/// Everything a reactor thread needs to start.
pub(crate) struct ReactorInit {
    pub(crate) index: usize,
    pub(crate) config: ReactorConfig,
    pub(crate) mode: Mode,
    /// Per-reactor accept mode: the listener this reactor accepts on (its own `SO_REUSEPORT`
    /// socket, or one it shares with the other reactors).
    pub(crate) listener: Option<RawFd>,
    pub(crate) engine: Arc<Lifecycle>,
    /// Held for the thread's whole life (`Engine::stopped`).
    pub(crate) exit: ThreadGuard,
    /// The tokio runtime whose context the thread enters (`EngineOptions::tokio_context`).
    #[cfg(feature = "tokio-context")]
    pub(crate) tokio: Option<tokio::runtime::Handle>,
    /// The engine's connection counts and caps.
    pub(crate) admission: Arc<Admission>,
}

/// A started reactor: its shared part, its outbound inbox, its thread.
pub(crate) struct Spawned {
    pub(crate) shared: Arc<ReactorShared>,
    pub(crate) outbound: Arc<Outbound>,
    pub(crate) thread: std::thread::JoinHandle<()>,
}

type Ready = Result<(Arc<ReactorShared>, Arc<Outbound>)>;

/// Starts a reactor thread; returns once its ring and buffer ring are set up.
pub(crate) fn spawn(init: ReactorInit) -> Result<Spawned> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Ready>(1);
    let index = init.index;
    let thread = std::thread::Builder::new()
        .name(format!("zerg-reactor-{index}"))
        .spawn(move || thread_main(init, tx))
        .map_err(|e| Error::io(format!("spawn thread zerg-reactor-{index}"), e))?;
    match rx.recv() {
        Ok(Ok((shared, outbound))) => Ok(Spawned {
            shared,
            outbound,
            thread,
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(Error::ReactorFailed {
                reactor: index,
                reason: "the reactor thread exited during setup".into(),
            })
        }
    }
}

fn thread_main(init: ReactorInit, ready: std::sync::mpsc::SyncSender<Ready>) {
    // Declared first, dropped last: after everything below has been torn down.
    let _exit = init.exit.clone();
    let index = init.index;
    // Every event of this thread (and of thread-per-core handlers) carries `reactor`. At
    // `error` level so that it is on whenever any event is.
    let _span = tracing::error_span!("reactor", reactor = index).entered();
    let engine = init.engine.clone();
    // Entered for the thread's whole life: every handler poll runs in the runtime's context.
    #[cfg(feature = "tokio-context")]
    let tokio = init.tokio.clone();
    #[cfg(feature = "tokio-context")]
    let _tokio = tokio.as_ref().map(tokio::runtime::Handle::enter);
    let mut reactor = match Reactor::new(init) {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _guard = local::enter(&reactor.shared);
    let _outbound_guard = outbound::enter(&reactor.outbound);
    let _ring_guard = crate::ring::fixed::enter(&reactor.ring);
    if let Err(e) = reactor.build_sink() {
        reactor.teardown(true);
        let _ = ready.send(Err(e));
        return;
    }
    let _ = ready.send(Ok((reactor.shared.clone(), reactor.outbound.clone())));
    drop(ready);
    tracing::debug!("reactor started");

    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reactor.run()));
    let failure = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(payload) => Some(panic_message(payload.as_ref())),
    };
    if let Some(reason) = &failure {
        tracing::error!(%reason, "reactor failed; stopping the engine");
        engine.fail(Error::ReactorFailed {
            reactor: index,
            reason: reason.clone(),
        });
    }
    reactor.fail_outbound();
    reactor.teardown(failure.is_some());
    // A batch of wake-ups may still wait for its leader; nobody bounds that wait any more.
    reactor.shared.deliver_wakes();
    tracing::debug!("reactor stopped");
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

/// The error for a failed buffer-ring registration: kernels before 6.12 reject the
/// `IOU_PBUF_RING_INC` flag with `EINVAL`.
fn register_error(e: std::io::Error, incremental: bool, who: &str) -> Error {
    if incremental && e.raw_os_error() == Some(libc::EINVAL) {
        Error::Unsupported {
            feature: "incremental buffer consumption (IOU_PBUF_RING_INC)",
            needs: "6.12",
            source: e,
        }
    } else {
        Error::io(format!("IORING_REGISTER_PBUF_RING for {who}"), e)
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

fn fatal(e: std::io::Error, what: &str) -> Error {
    Error::io(what.to_string(), e)
}

impl Reactor {
    fn new(init: ReactorInit) -> Result<Self> {
        let ReactorInit {
            index,
            config,
            mode,
            listener,
            engine,
            admission,
            ..
        } = init;
        if let Some(cpu) = config.cpu {
            sys::pin_current_thread(cpu)
                .map_err(|e| Error::io(format!("pin reactor {index} to CPU {cpu}"), e))?;
        }
        let who = format!("reactor {index}");
        let spec = sys::ring::RingSpec {
            entries: config.ring_entries,
            cq_entries: (config.buffer_ring_entries * 2).clamp(config.ring_entries * 2, 65536),
            single_issuer: config.single_issuer,
            defer_taskrun: config.defer_taskrun,
            sqpoll: config.sqpoll,
            sq_cpu: config.sq_cpu,
            sq_thread_idle: config.sq_thread_idle,
        };
        let uring = sys::ring::build(&spec, &who)?;
        let bufs = BufRing::new(
            config.buffer_ring_entries as u16,
            config.recv_buffer_size,
            BGID,
            config.incremental_buffer_consumption,
        )
        .map_err(|e| {
            Error::io(
                format!(
                    "map {} receive buffers of {} bytes for {who}",
                    config.buffer_ring_entries, config.recv_buffer_size
                ),
                e,
            )
        })?;
        if let Err(e) = bufs.register(&uring.submitter()) {
            return Err(register_error(
                e,
                config.incremental_buffer_consumption,
                &who,
            ));
        }
        let min_wait = sys::ring::min_wait_usec(&uring, config.min_wait, &who);
        let ring = Rc::new(Ring::new(
            uring,
            Duration::from_millis(100),
            config.cq_timeout,
        ));
        ring.set_min_wait(min_wait);
        let features = fds::Features::setup(&ring, &config, index);
        let eventfd = EventFd::new().map_err(|e| Error::io(format!("eventfd for {who}"), e))?;
        let wake_fd = eventfd.raw();
        let max_conns = config.max_connections_per_reactor as usize;
        let shared = Arc::new(ReactorShared::new(
            index,
            bufs.pool().clone(),
            ring.raw_fd(),
            features.direct,
            eventfd,
            &config,
        ));
        let stats = ReactorStats {
            buffers_total: u64::from(bufs.total()),
            buffers_free: u64::from(bufs.free()),
            ..ReactorStats::default()
        };
        shared.stats.publish(&stats);
        let batch = config.batch_cqes as usize;
        let outbound = Arc::new(Outbound::new(shared.clone()));
        let mut reactor = Self {
            index,
            shared,
            outbound,
            outbound_reqs: Vec::new(),
            engine,
            ring,
            bufs,
            features,
            conns: Slots::with_capacity(max_conns.min(1024)),
            mode: Some(mode),
            sink: Sink::Serve(Box::new(drop)),
            incremental: config.incremental_buffer_consumption,
            max_conns,
            max_held: config.effective_max_buffers_per_connection(),
            pressure: Pressure::new(&config),
            accepting: Accepting::new(admission),
            buf_size: config.recv_buffer_size,
            recv_limit: true,
            recv_limit_works: false,
            batch,
            cqes: Vec::with_capacity(batch.min(4096)),
            tokens: Vec::with_capacity(1024),
            items: Vec::with_capacity(256),
            starved: VecDeque::new(),
            zombies: Vec::new(),
            wake_fd,
            wake_armed: false,
            listener,
            accept_armed: false,
            misc_ops: 0,
            stats,
            logs: Throttles::default(),
            phase: Phase::Running,
            cancel_all_sent: false,
            now: 0,
            timeouts: Timeouts::new(&config),
            conn_timers: ConnTimers::default(),
            wakers: Vec::new(),
            deferred: Vec::with_capacity(1024),
        };
        reactor.arm_wake()?;
        if reactor.listener.is_some() {
            reactor.arm_accept()?;
        }
        reactor.submit(false, None)?;
        Ok(reactor)
    }

    /// Builds where new connections go, on the reactor thread (thread-per-core handlers may
    /// build per-reactor state here). A panic there fails the start.
    fn build_sink(&mut self) -> Result<()> {
        self.sink = match self.mode.take().expect("built once") {
            Mode::Runtime(tx) => Sink::Runtime(tx),
            Mode::Serve(factory) => {
                let index = self.index;
                let built =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| factory(index)));
                Sink::Serve(built.map_err(|p| Error::ReactorFailed {
                    reactor: index,
                    reason: format!(
                        "the per-reactor state initialiser panicked: {}",
                        panic_message(p.as_ref())
                    ),
                })?)
            }
        };
        Ok(())
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_kernel_rejecting_incremental_rings_gets_a_clear_error() {
        let einval = || std::io::Error::from_raw_os_error(libc::EINVAL);
        let e = register_error(einval(), true, "reactor 0");
        let msg = e.to_string();
        assert!(
            matches!(e, Error::Unsupported { needs: "6.12", .. }),
            "{e:?}"
        );
        assert!(
            msg.contains("IOU_PBUF_RING_INC") && msg.contains("Linux 6.12"),
            "{msg}"
        );
        // Without the flag, EINVAL is a plain registration failure naming the reactor.
        let e = register_error(einval(), false, "reactor 3");
        assert!(
            e.to_string()
                .starts_with("IORING_REGISTER_PBUF_RING for reactor 3"),
            "{e}"
        );
    }
}
