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
//!     submit and wait                  one io_uring_enter; blocks only when nothing is left to do
//! }
//! ```
//!
//! Cross-thread work wakes the loop through an eventfd read that stays armed in the ring, and new
//! connections from the acceptor arrive as MSG_RING completions, so an idle reactor sleeps in the
//! kernel without a timeout.

pub(crate) mod local;
pub(crate) mod ops;
pub(crate) mod slots;
pub(crate) mod token;
pub(crate) mod wake;

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_task::Runnable;
use crossbeam_queue::ArrayQueue;
use io_uring::cqueue;

use crate::buf_ring::{BufPool, BufRing, RecvItem};
use crate::config::ReactorConfig;
use crate::conn::{ConnShared, Connection, request};
use crate::engine::EngineShared;
use crate::error::{CloseReason, Error, Result};
use crate::stats::{ReactorStats, ReactorStatsCell};
use crate::sys::{self, EventFd};

use ops::{Ring, SendBuf, SendProgress};
use slots::Slots;
use token::{ConnectionId, Kind, Token};
use wake::Notifier;

/// Buffer-group id of every reactor's ring (each reactor has its own io_uring).
const BGID: u16 = 0;
/// Send buffers up to this size are always kept for the next response; larger ones shrink when a
/// response no longer fills them.
const RETAIN_SEND_CAPACITY: usize = 256 * 1024;
/// Local tasks run per loop iteration before completions are looked at again.
const TASK_BUDGET: usize = 1024;

/// Where accepted connections go.
#[derive(Clone)]
pub(crate) enum Mode {
    /// To [`Engine::accept`](crate::Engine::accept), for handlers on any runtime.
    Runtime(async_channel::Sender<Connection>),
    /// To a handler spawned on the reactor thread.
    Serve(Arc<dyn Fn(Connection) + Send + Sync>),
}

/// The part of a reactor other threads see.
pub(crate) struct ReactorShared {
    pub(crate) index: usize,
    pub(crate) pool: Arc<BufPool>,
    /// The reactor ring's descriptor, for MSG_RING hand-offs.
    pub(crate) ring_fd: RawFd,
    pub(crate) max_write_buffer: usize,
    notifier: Notifier<EventFd>,
    /// Tokens of connections with requests, from other threads. Each connection is queued at most
    /// once at a time, so the capacity (max connections + slack) is never exceeded in practice;
    /// `overflow` catches the rest.
    remote: ArrayQueue<u64>,
    overflow: Mutex<Vec<u64>>,
    remote_runnables: Mutex<Vec<Runnable>>,
    stop: Mutex<Option<Duration>>,
    /// Something was put in `overflow`, `remote_runnables` or `stop`: spares the reactor three
    /// locks per loop iteration, and tells its pre-sleep check there is work.
    hint: AtomicBool,
    pub(crate) stats: ReactorStatsCell,
    exited: AtomicBool,
}

impl ReactorShared {
    /// Queues a connection token for the reactor (same thread: no atomics, no syscall).
    pub(crate) fn enqueue(&self, token: u64) {
        if local::is_current(self) {
            local::push_token(token);
            return;
        }
        if self.exited.load(Ordering::Acquire) {
            return;
        }
        if let Err(t) = self.remote.push(token) {
            self.overflow
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(t);
            self.hint.store(true, Ordering::Relaxed);
        }
        self.notifier.notify();
    }

    /// Schedules a local task (thread-per-core mode) woken from any thread.
    pub(crate) fn schedule(&self, runnable: Runnable) {
        if local::is_current(self) {
            local::push_runnable(runnable);
            return;
        }
        let mut q = self
            .remote_runnables
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if self.exited.load(Ordering::Acquire) {
            // The reactor is gone; the task was cancelled when it exited. Running or dropping the
            // runnable here would touch a future that belongs to that thread.
            std::mem::forget(runnable);
            return;
        }
        q.push(runnable);
        drop(q);
        self.hint.store(true, Ordering::Relaxed);
        self.notifier.notify();
    }

    pub(crate) fn take_remote_runnables(&self) {
        let taken = std::mem::take(
            &mut *self
                .remote_runnables
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for r in taken {
            local::push_runnable(r);
        }
    }

    /// Asks the reactor to stop: connections get `grace` to finish, then are closed.
    pub(crate) fn request_stop(&self, grace: Duration) {
        {
            let mut s = self.stop.lock().unwrap_or_else(|p| p.into_inner());
            *s = Some(match *s {
                Some(g) => g.min(grace),
                None => grace,
            });
        }
        self.hint.store(true, Ordering::Relaxed);
        self.notifier.notify();
    }

    /// Wakes the reactor so it re-checks engine-wide state.
    pub(crate) fn wake(&self) {
        self.hint.store(true, Ordering::Relaxed);
        self.notifier.notify();
    }

    /// Work from other threads is waiting (checked after `prepare_sleep`).
    fn has_remote_work(&self) -> bool {
        !self.remote.is_empty() || self.hint.load(Ordering::Relaxed)
    }

    pub(crate) fn has_exited(&self) -> bool {
        self.exited.load(Ordering::Acquire)
    }
}

/// Everything a reactor thread needs to start.
pub(crate) struct ReactorInit {
    pub(crate) index: usize,
    pub(crate) config: ReactorConfig,
    pub(crate) mode: Mode,
    /// Per-reactor accept mode: this reactor's `SO_REUSEPORT` listener.
    pub(crate) listener: Option<RawFd>,
    pub(crate) engine: Arc<EngineShared>,
}

/// Starts a reactor thread; returns once its ring and buffer ring are set up.
pub(crate) fn spawn(
    init: ReactorInit,
) -> Result<(Arc<ReactorShared>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Arc<ReactorShared>>>(1);
    let index = init.index;
    let thread = std::thread::Builder::new()
        .name(format!("zerg-reactor-{index}"))
        .spawn(move || thread_main(init, tx))
        .map_err(|e| Error::io(format!("spawn thread zerg-reactor-{index}"), e))?;
    match rx.recv() {
        Ok(Ok(shared)) => Ok((shared, thread)),
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

fn thread_main(init: ReactorInit, ready: std::sync::mpsc::SyncSender<Result<Arc<ReactorShared>>>) {
    let index = init.index;
    let engine = init.engine.clone();
    let mut reactor = match Reactor::new(init) {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _guard = local::enter(&reactor.shared);
    let _ = ready.send(Ok(reactor.shared.clone()));
    drop(ready);
    tracing::debug!(reactor = index, "reactor started");

    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reactor.run()));
    let failure = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(payload) => Some(
            payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into()),
        ),
    };
    if let Some(reason) = &failure {
        tracing::error!(reactor = index, %reason, "reactor failed; stopping the engine");
        engine.fail(Error::ReactorFailed {
            reactor: index,
            reason: reason.clone(),
        });
    }
    reactor.teardown(failure.is_some());
    tracing::debug!(reactor = index, "reactor stopped");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecvState {
    /// A multishot receive is in flight.
    Armed,
    /// Not armed, to be armed by whoever set this state.
    Idle,
    /// Holding `max_buffers_per_connection`; re-armed when buffers come back.
    Paused,
    /// Ended with `-ENOBUFS`; re-armed when the ring has buffers again.
    Starved,
    /// End of stream, an error, or closing: never armed again.
    Ended,
}

/// A connection as the reactor sees it.
struct Conn {
    fd: RawFd,
    shared: Arc<ConnShared>,
    recv: RecvState,
    /// A pause cancellation of the receive is in flight.
    pausing: bool,
    /// Pieces delivered and not yet returned.
    held: u32,
    /// Operations in flight (receive, send, linked timeout, cancellations).
    ops: u32,
    /// Bytes being sent.
    send: SendBuf,
    /// Flush sequence completed when `send` is fully sent.
    batch_seq: u64,
    timed_out: bool,
    shutdown_pending: bool,
    handle_alive: bool,
    /// No more I/O will be started; the descriptor closes once `ops == 0` (and the handle is
    /// gone, unless the engine is stopping).
    closing: bool,
    /// No receive will be armed again (the connection failed); the handle decides when to close.
    dead: bool,
    cancel_sent: bool,
    /// The armed receive carries a byte limit (see `Reactor::recv_limit`).
    limited: bool,
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
    engine: Arc<EngineShared>,
    ring: Ring,
    bufs: BufRing,
    conns: Slots<Conn>,
    mode: Mode,
    incremental: bool,
    max_conns: usize,
    max_held: u32,
    /// Bytes per receive buffer.
    buf_size: u32,
    /// Arm receives with a byte limit of the buffers the connection may still take
    /// (`IORING_RECV_MSHOT_LIM`). Without it a pause is a cancellation that lands only after the
    /// kernel, which runs a multishot receive many times per `io_uring_enter`, filled whatever
    /// the ring had: one connection that does not read took every buffer (rule 7). Cleared when
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
    phase: Phase,
    cancel_all_sent: bool,
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
        let ring = Ring::new(
            uring,
            Duration::from_millis(100),
            config.write_timeout,
            config.cq_timeout,
        );
        let eventfd = EventFd::new().map_err(|e| Error::io(format!("eventfd for {who}"), e))?;
        let wake_fd = eventfd.raw();
        let max_conns = config.max_connections_per_reactor as usize;
        let shared = Arc::new(ReactorShared {
            index,
            pool: bufs.pool().clone(),
            ring_fd: ring.raw_fd(),
            max_write_buffer: config.max_write_buffer,
            notifier: Notifier::new(eventfd),
            remote: ArrayQueue::new(max_conns + 64),
            overflow: Mutex::new(Vec::new()),
            remote_runnables: Mutex::new(Vec::new()),
            stop: Mutex::new(None),
            hint: AtomicBool::new(false),
            stats: ReactorStatsCell::default(),
            exited: AtomicBool::new(false),
        });
        let stats = ReactorStats {
            buffers_total: u64::from(bufs.total()),
            buffers_free: u64::from(bufs.free()),
            ..ReactorStats::default()
        };
        shared.stats.publish(&stats);
        let batch = config.batch_cqes as usize;
        let mut reactor = Self {
            index,
            shared,
            engine,
            ring,
            bufs,
            conns: Slots::with_capacity(max_conns.min(1024)),
            mode,
            incremental: config.incremental_buffer_consumption,
            max_conns,
            max_held: config.effective_max_buffers_per_connection(),
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
            phase: Phase::Running,
            cancel_all_sent: false,
        };
        reactor.arm_wake()?;
        if reactor.listener.is_some() {
            reactor.arm_accept()?;
        }
        reactor.submit(false)?;
        Ok(reactor)
    }

    fn submit(&mut self, wait: bool) -> Result<()> {
        self.ring
            .submit(wait)
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

    fn arm_accept(&mut self) -> Result<()> {
        if let Some(fd) = self.listener {
            self.ring
                .accept_multi(fd, Token::engine(Kind::Accept))
                .map_err(|e| fatal(e, "arm accept"))?;
            self.accept_armed = true;
            self.misc_ops += 1;
        }
        Ok(())
    }

    fn run(&mut self) -> Result<()> {
        loop {
            self.reap()?;
            self.drain_requests()?;
            if local::run_tasks(TASK_BUDGET) > 0 {
                self.drain_requests()?;
            }
            self.rearm_starved()?;
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
            self.publish_stats();
            let mut idle = !local::has_local_work() && self.ring.completion().is_empty();
            if idle {
                // From here on other threads signal the eventfd; a last look catches what they
                // queued before they could see that.
                self.shared.notifier.prepare_sleep();
                if self.shared.has_remote_work() {
                    self.shared.notifier.woke();
                    idle = false;
                }
            }
            self.submit(idle)?;
            if idle {
                self.shared.notifier.woke();
                self.stats.wakeups += 1;
            }
        }
    }

    fn publish_stats(&mut self) {
        self.stats.connections = self.conns.len() as u64;
        self.stats.buffers_free = u64::from(self.bufs.free());
        self.stats.buffers_held = u64::from(self.bufs.total() - self.bufs.free());
        self.stats.handler_panics = local::panics();
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
            Kind::Send => self.on_send(token.id, res),
            Kind::SendTimeout => {
                if let Some(conn) = self.conns.get_mut(token.id) {
                    conn.ops -= 1;
                    if res == -libc::ETIME {
                        conn.timed_out = true;
                    }
                    self.maybe_finish_close(token.id);
                } else {
                    self.stats.stale_completions += 1;
                }
                Ok(())
            }
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
                self.shared.notifier.reset();
                Ok(())
            }
            Kind::NewConn => {
                if res >= 0 {
                    self.adopt(res)
                } else {
                    Ok(())
                }
            }
            Kind::Accept => self.on_accept(res, flags),
            Kind::AcceptBackoff => {
                self.misc_ops -= 1;
                if self.phase == Phase::Running && !self.accept_armed {
                    self.stats.accept_rearms += 1;
                    self.arm_accept()?;
                }
                Ok(())
            }
            Kind::Grace => {
                self.misc_ops -= 1;
                if self.phase == Phase::Draining {
                    self.begin_closing()?;
                }
                Ok(())
            }
            Kind::AcceptCancel => {
                self.misc_ops -= 1;
                Ok(())
            }
            Kind::HandOff => Ok(()),
        }
    }

    fn on_accept(&mut self, res: i32, flags: u32) -> Result<()> {
        let more = cqueue::more(flags);
        if !more {
            self.misc_ops -= 1;
            self.accept_armed = false;
        }
        if res >= 0 {
            self.adopt(res)?;
        } else if res != -libc::ECANCELED && !self.engine.is_stopping() {
            self.stats.accept_errors += 1;
            tracing::warn!(reactor = self.index, error = %std::io::Error::from_raw_os_error(-res), "accept failed");
        }
        // Stopping: the listener was shut down, which ends the accept with an error.
        if !more && self.phase == Phase::Running && !self.engine.is_stopping() {
            if res == -libc::EMFILE || res == -libc::ENFILE {
                // Out of descriptors: retrying at once would spin. Try again after a pause.
                self.ring
                    .backoff_timer(Token::engine(Kind::AcceptBackoff))
                    .map_err(|e| fatal(e, "arm the accept back-off"))?;
                self.misc_ops += 1;
            } else {
                self.stats.accept_rearms += 1;
                self.arm_accept()?;
            }
        }
        Ok(())
    }

    /// Takes ownership of an accepted descriptor.
    fn adopt(&mut self, fd: RawFd) -> Result<()> {
        if self.phase != Phase::Running {
            sys::close(fd);
            return Ok(());
        }
        if self.conns.len() >= self.max_conns {
            self.stats.connections_shed += 1;
            sys::close(fd);
            return Ok(());
        }
        let id = self.conns.next_id();
        let shared = Arc::new(ConnShared::new(id, fd, self.shared.clone()));
        let inserted = self.conns.insert(Conn {
            fd,
            shared: shared.clone(),
            recv: RecvState::Idle,
            pausing: false,
            held: 0,
            ops: 0,
            send: SendBuf::default(),
            batch_seq: 0,
            timed_out: false,
            shutdown_pending: false,
            handle_alive: true,
            closing: false,
            dead: false,
            cancel_sent: false,
            limited: false,
        });
        debug_assert_eq!(inserted, id);
        self.stats.connections_total += 1;
        self.arm_recv(id)?;
        let conn = Connection::new(shared, self.shared.max_write_buffer);
        match &self.mode {
            Mode::Runtime(tx) => {
                if let Err(e) = tx.try_send(conn) {
                    // Nobody accepts (engine stopping) or the backlog of unaccepted connections
                    // is full: shed it. Dropping the handle queues its close.
                    if e.is_full() {
                        self.stats.connections_shed += 1;
                    }
                    drop(e.into_inner());
                }
            }
            Mode::Serve(handler) => handler(conn),
        }
        Ok(())
    }

    fn arm_recv(&mut self, id: ConnectionId) -> Result<()> {
        let Some(conn) = self.conns.get_mut(id) else {
            return Ok(());
        };
        conn.recv = RecvState::Armed;
        conn.ops += 1;
        let fd = conn.fd;
        // At most the buffers this connection may still take (at least one, so it progresses).
        let limit = if self.recv_limit {
            self.max_held
                .saturating_sub(conn.held)
                .max(1)
                .saturating_mul(self.buf_size)
        } else {
            0
        };
        conn.limited = limit > 0;
        self.ring
            .recv_multi(fd, BGID, limit, Token::conn(Kind::Recv, id))
            .map_err(|e| fatal(e, "arm recv"))
    }

    fn cancel_recv(&mut self, id: ConnectionId) -> Result<()> {
        self.ring
            .cancel(Token::conn(Kind::Recv, id), Token::conn(Kind::Cancel, id))
            .map_err(|e| fatal(e, "cancel recv"))
    }

    fn bid_error(&self, e: crate::buf_ring::BidError) -> Error {
        Error::ReactorFailed {
            reactor: self.index,
            reason: e.to_string(),
        }
    }

    fn on_recv(&mut self, id: ConnectionId, res: i32, flags: u32) -> Result<()> {
        let more = cqueue::more(flags);
        let item = match cqueue::buffer_select(flags) {
            Some(bid) if res > 0 => Some(
                self.bufs
                    .on_recv(bid, res as u32, cqueue::buffer_more(flags))
                    .map_err(|e| self.bid_error(e))?,
            ),
            Some(bid) if res == 0 && !self.incremental => {
                // The kernel consumed a buffer without writing into it: give it straight back.
                let item = self
                    .bufs
                    .on_recv(bid, 0, false)
                    .map_err(|e| self.bid_error(e))?;
                self.bufs.release(&item);
                None
            }
            _ => None,
        };
        let max_held = self.max_held;
        let Some(conn) = self.conns.get_mut(id) else {
            self.stats.stale_completions += 1;
            if let Some(item) = item {
                self.bufs.release(&item);
            }
            return Ok(());
        };
        let mut pause = false;
        if let Some(item) = item {
            self.recv_limit_works |= conn.limited;
            conn.held += 1;
            self.stats.bytes_received += u64::from(item.len);
            let waker = {
                let mut st = conn.shared.lock();
                st.recv.push_back(item);
                st.read_waker.take()
            };
            if let Some(w) = waker {
                w.wake();
            }
            if more && conn.held >= max_held && !conn.pausing && !conn.closing {
                conn.pausing = true;
                conn.ops += 1;
                pause = true;
            }
        }
        if pause {
            // Counted in `recv_pauses` once the receive has ended (`recv_ended`).
            self.cancel_recv(id)?;
        }
        if more {
            return Ok(());
        }
        // The multishot receive ended.
        let conn = self.conns.get_mut(id).expect("looked up above");
        conn.ops -= 1;
        conn.pausing = false;
        conn.recv = RecvState::Idle;
        if conn.closing || conn.dead {
            conn.recv = RecvState::Ended;
            self.maybe_finish_close(id);
            return Ok(());
        }
        match res {
            r if r > 0 || r == -libc::ECANCELED => self.recv_ended(id),
            0 => {
                conn.recv = RecvState::Ended;
                end_read(conn, CloseReason::PeerClosed);
                Ok(())
            }
            r if r == -libc::ENOBUFS => {
                self.stats.enobufs += 1;
                conn.recv = RecvState::Starved;
                self.starved.push_back(id);
                Ok(())
            }
            r if r == -libc::EINVAL && conn.limited && !self.recv_limit_works => {
                // The kernel predates IORING_RECV_MSHOT_LIM: receive without the limit.
                if self.recv_limit {
                    tracing::debug!(
                        reactor = self.index,
                        "multishot receive limit unsupported (Linux < 6.17); pausing by cancellation only"
                    );
                    self.recv_limit = false;
                }
                self.recv_ended(id)
            }
            r => {
                conn.recv = RecvState::Ended;
                conn.dead = true;
                let reason = CloseReason::from_errno(-r);
                end_read(conn, reason);
                end_write(conn, reason);
                Ok(())
            }
        }
    }

    /// The receive of a live connection ended without EOF or error: pause or re-arm.
    fn recv_ended(&mut self, id: ConnectionId) -> Result<()> {
        let max_held = self.max_held;
        let Some(conn) = self.conns.get_mut(id) else {
            return Ok(());
        };
        if conn.held >= max_held {
            conn.recv = RecvState::Paused;
            self.stats.recv_pauses += 1;
            Ok(())
        } else {
            self.stats.recv_rearms += 1;
            self.arm_recv(id)
        }
    }

    fn rearm_starved(&mut self) -> Result<()> {
        let mut budget = self.bufs.free();
        while budget > 0 {
            let Some(id) = self.starved.pop_front() else {
                break;
            };
            let max_held = self.max_held;
            let Some(conn) = self.conns.get_mut(id) else {
                continue;
            };
            if conn.recv != RecvState::Starved || conn.closing || conn.dead {
                continue;
            }
            if conn.held >= max_held {
                conn.recv = RecvState::Paused;
                self.stats.recv_pauses += 1;
                continue;
            }
            budget -= 1;
            self.stats.recv_rearms += 1;
            self.arm_recv(id)?;
        }
        Ok(())
    }

    fn start_send(&mut self, id: ConnectionId) -> Result<()> {
        let Some(conn) = self.conns.get_mut(id) else {
            return Ok(());
        };
        let linked = self
            .ring
            .send(
                &mut conn.send,
                &self.shared.pool,
                conn.fd,
                Token::conn(Kind::Send, id),
                Token::conn(Kind::SendTimeout, id),
            )
            .map_err(|e| fatal(e, "submit send"))?;
        conn.ops += if linked { 2 } else { 1 };
        Ok(())
    }

    fn on_send(&mut self, id: ConnectionId, res: i32) -> Result<()> {
        let Some(conn) = self.conns.get_mut(id) else {
            self.stats.stale_completions += 1;
            return Ok(());
        };
        conn.ops -= 1;
        let progress = conn.send.complete(res, RETAIN_SEND_CAPACITY);
        if res > 0 {
            self.stats.bytes_sent += res as u64;
        }
        if !conn.send.done().is_empty() {
            // Received pieces sent in place go back to the ring (and may resume the receive).
            self.release_sent(id)?;
        }
        let Some(conn) = self.conns.get_mut(id) else {
            return Ok(());
        };
        match progress {
            SendProgress::Partial if conn.closing => {
                conn.send.discard();
                self.release_sent(id)?;
            }
            // The rest goes out next.
            SendProgress::Partial => return self.start_send(id),
            SendProgress::Done => {
                let (next, waker) = {
                    let mut st = conn.shared.lock();
                    if !st.outgoing.is_empty() && !conn.closing {
                        conn.send.load(&mut st.outgoing);
                        conn.batch_seq = st.flush_requested;
                        (true, None)
                    } else {
                        st.flush_done = st.flush_done.max(conn.batch_seq);
                        (false, st.flush_waker.take())
                    }
                };
                if let Some(w) = waker {
                    w.wake();
                }
                if next {
                    return self.start_send(id);
                }
                if conn.shutdown_pending {
                    conn.shutdown_pending = false;
                    shutdown_now(conn);
                }
            }
            SendProgress::Failed(res) => {
                let reason = if conn.closing {
                    CloseReason::Local
                } else if conn.timed_out || res == -libc::ECANCELED {
                    CloseReason::TimedOut
                } else if res == 0 {
                    CloseReason::Error(libc::EPIPE)
                } else {
                    CloseReason::from_errno(-res)
                };
                if !conn.closing {
                    self.stats.flush_errors += 1;
                    end_write(conn, reason);
                    if reason == CloseReason::TimedOut {
                        // The connection is unusable: stop receiving too.
                        end_read(conn, reason);
                        conn.dead = true;
                        if conn.recv == RecvState::Armed && !conn.pausing {
                            conn.pausing = true;
                            conn.ops += 1;
                            self.cancel_recv(id)?;
                        }
                    }
                }
            }
        }
        self.maybe_finish_close(id);
        Ok(())
    }

    /// Hands back to the ring the received pieces a send no longer needs.
    fn release_sent(&mut self, id: ConnectionId) -> Result<()> {
        let Some(conn) = self.conns.get_mut(id) else {
            return Ok(());
        };
        let done = conn.send.done();
        let n = done.len() as u32;
        for item in done.drain(..) {
            self.bufs.release(&item);
        }
        conn.held = conn.held.saturating_sub(n);
        self.maybe_resume(id)
    }

    /// Re-arms a paused receive once the connection holds few enough buffers.
    fn maybe_resume(&mut self, id: ConnectionId) -> Result<()> {
        let max_held = self.max_held;
        let Some(conn) = self.conns.get_mut(id) else {
            return Ok(());
        };
        if conn.recv == RecvState::Paused
            && conn.held <= max_held / 2
            && !conn.closing
            && !conn.dead
        {
            self.stats.recv_rearms += 1;
            self.arm_recv(id)?;
        }
        Ok(())
    }

    fn drain_requests(&mut self) -> Result<()> {
        let mut tokens = std::mem::take(&mut self.tokens);
        local::take_tokens(&mut tokens);
        while let Some(t) = self.shared.remote.pop() {
            tokens.push(t);
        }
        // The mutex-protected inboxes are looked at only when a producer flagged them.
        let hinted = self.shared.hint.swap(false, Ordering::Acquire);
        if hinted {
            tokens.append(
                &mut self
                    .shared
                    .overflow
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            );
        }
        for t in tokens.drain(..) {
            self.handle_token(t)?;
        }
        self.tokens = tokens;
        if hinted {
            self.shared.take_remote_runnables();
            let stop = self
                .shared
                .stop
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(grace) = stop {
                self.begin_stop(grace)?;
            }
        }
        Ok(())
    }

    fn handle_token(&mut self, t: u64) -> Result<()> {
        let Some(token) = Token::decode(t) else {
            return Ok(());
        };
        let id = token.id;
        let Some(conn) = self.conns.get_mut(id) else {
            self.zombie_returns(id);
            return Ok(());
        };
        let mut items = std::mem::take(&mut self.items);
        let mut start = false;
        let mut waker = None;
        let bits = {
            let mut st = conn.shared.lock();
            let bits = std::mem::take(&mut st.requests);
            st.queued = false;
            if bits & request::RETURN != 0 {
                std::mem::swap(&mut st.returned, &mut items);
            }
            if bits & request::FLUSH != 0 && !conn.send.is_inflight() && !conn.closing {
                if st.outgoing.is_empty() {
                    st.flush_done = st.flush_requested;
                    waker = st.flush_waker.take();
                } else {
                    conn.send.load(&mut st.outgoing);
                    conn.batch_seq = st.flush_requested;
                    start = true;
                }
            }
            bits
        };
        if let Some(w) = waker {
            w.wake();
        }
        let released = !items.is_empty();
        if released {
            for item in &items {
                self.bufs.release(item);
            }
            conn.held = conn.held.saturating_sub(items.len() as u32);
            items.clear();
        }
        self.items = items;
        if released {
            self.maybe_resume(id)?;
        }
        if start {
            self.start_send(id)?;
        }
        if bits & request::SHUTDOWN != 0
            && let Some(conn) = self.conns.get_mut(id)
        {
            if conn.send.is_inflight() || !conn.send.is_empty() {
                conn.shutdown_pending = true;
            } else {
                shutdown_now(conn);
            }
        }
        if bits & request::CLOSE != 0 {
            if let Some(conn) = self.conns.get_mut(id) {
                conn.handle_alive = false;
            }
            self.begin_close(id, None)?;
        }
        Ok(())
    }

    /// A request for a freed connection: release what a late snapshot handed back.
    fn zombie_returns(&mut self, id: ConnectionId) {
        let Some(i) = self.zombies.iter().position(|z| z.id == id) else {
            return;
        };
        // Read before draining: if nobody else holds it now, every return already happened and
        // the drain below sees it. (Read after, a snapshot could return and let go in between.)
        let last = Arc::strong_count(&self.zombies[i]) == 1;
        self.release_zombie(i);
        if last {
            self.zombies.swap_remove(i);
        }
    }

    /// Releases the pieces zombie `i` holds in `returned`.
    fn release_zombie(&mut self, i: usize) {
        let mut items = std::mem::take(&mut self.items);
        {
            let mut st = self.zombies[i].lock();
            st.requests = 0;
            st.queued = false;
            items.append(&mut st.returned);
        }
        for item in &items {
            self.bufs.release(item);
        }
        items.clear();
        self.items = items;
    }

    /// Forgets the zombies nobody else holds any more, after releasing what they were handed
    /// (their last return may still be waiting for a token that was queued earlier).
    fn prune_zombies(&mut self) {
        let mut i = 0;
        while i < self.zombies.len() {
            if Arc::strong_count(&self.zombies[i]) == 1 {
                self.release_zombie(i);
                self.zombies.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// Stops all I/O of a connection; it is freed once its operations completed and its handle
    /// is gone (or the engine stops).
    fn begin_close(&mut self, id: ConnectionId, reason: Option<CloseReason>) -> Result<()> {
        let Some(conn) = self.conns.get_mut(id) else {
            return Ok(());
        };
        conn.closing = true;
        conn.send.discard();
        let unsent = conn.send.done().len() as u32;
        for item in conn.send.done().drain(..) {
            self.bufs.release(&item);
        }
        conn.held = conn.held.saturating_sub(unsent);
        if let Some(r) = reason {
            end_read(conn, r);
            end_write(conn, r);
        }
        if conn.ops > 0 && !conn.cancel_sent {
            conn.cancel_sent = true;
            conn.ops += 1;
            let fd = conn.fd;
            self.ring
                .cancel_fd(fd, Token::conn(Kind::Cancel, id))
                .map_err(|e| fatal(e, "cancel connection"))?;
        }
        self.maybe_finish_close(id);
        Ok(())
    }

    fn maybe_finish_close(&mut self, id: ConnectionId) {
        let stopping = self.phase == Phase::Closing;
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if !(conn.closing && conn.ops == 0 && (!conn.handle_alive || stopping)) {
            return;
        }
        let mut items = std::mem::take(&mut self.items);
        let (rw, fw) = {
            let mut st = conn.shared.lock();
            st.fd_closed = true;
            items.extend(st.recv.drain(..));
            items.append(&mut st.returned);
            // Received pieces flushed for sending in place and never sent.
            st.outgoing.take_pieces(&mut items);
            conn.send.discard();
            items.append(conn.send.done());
            st.read_end.get_or_insert(CloseReason::Local);
            st.write_end.get_or_insert(CloseReason::Local);
            (st.read_waker.take(), st.flush_waker.take())
        };
        sys::close(conn.fd);
        for item in &items {
            self.bufs.release(item);
        }
        items.clear();
        self.items = items;
        if let Some(conn) = self.conns.remove(id) {
            // A snapshot that outlives its connection hands its pieces back later, with this
            // connection's token: keep the shared state reachable for `zombie_returns`. The
            // prune drops it at once if nothing else holds it, after releasing what a snapshot
            // returned since the drain above.
            self.zombies.push(conn.shared);
            self.prune_zombies();
        }
        if let Some(w) = rw {
            w.wake();
        }
        if let Some(w) = fw {
            w.wake();
        }
        if self.phase == Phase::Draining && self.conns.is_empty() {
            self.phase = Phase::Closing;
        }
    }

    fn begin_stop(&mut self, grace: Duration) -> Result<()> {
        if self.phase == Phase::Closing {
            return Ok(());
        }
        if self.phase == Phase::Running && self.accept_armed {
            self.ring
                .cancel(
                    Token::engine(Kind::Accept),
                    Token::engine(Kind::AcceptCancel),
                )
                .map_err(|e| fatal(e, "cancel accept"))?;
            self.misc_ops += 1;
        }
        if grace.is_zero() || self.conns.is_empty() {
            return self.begin_closing();
        }
        if self.phase == Phase::Running {
            self.phase = Phase::Draining;
            self.ring
                .grace_timer(grace, Token::engine(Kind::Grace))
                .map_err(|e| fatal(e, "arm the grace timer"))?;
            self.misc_ops += 1;
        }
        Ok(())
    }

    fn begin_closing(&mut self) -> Result<()> {
        self.phase = Phase::Closing;
        for id in self.conns.ids() {
            self.begin_close(id, Some(CloseReason::EngineStopping))?;
        }
        Ok(())
    }

    fn inflight(&mut self) -> u32 {
        let ids = self.conns.ids();
        let conn_ops: u32 = ids
            .iter()
            .filter_map(|&id| self.conns.get_mut(id).map(|c| c.ops))
            .sum();
        conn_ops + self.misc_ops
    }

    /// Leaves the ring drained and frees what the kernel shared, or leaks it if the kernel might
    /// still write into it (only after a failure).
    fn teardown(&mut self, failed: bool) {
        if failed {
            // Wake every handler with an error and cancel whatever is in flight.
            for id in self.conns.ids() {
                if let Some(conn) = self.conns.get_mut(id) {
                    end_read(conn, CloseReason::EngineStopping);
                    end_write(conn, CloseReason::EngineStopping);
                }
            }
            self.phase = Phase::Closing;
            // Its own completion uses an ignored token: it is not counted in `misc_ops`.
            let _ = self.ring.cancel_any(Token::engine(Kind::HandOff));
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while self.inflight() > 0 && std::time::Instant::now() < deadline {
                let _ = self.ring.submit_wait_for(Duration::from_millis(50));
                let pending: Vec<_> = self.ring.completion().collect();
                for cqe in pending {
                    let _ = self.dispatch(cqe.user_data(), cqe.result(), cqe.flags());
                }
            }
            let left = self.inflight();
            if left > 0 {
                tracing::error!(
                    reactor = self.index,
                    operations = left,
                    "operations still in flight after a failure; leaking their memory"
                );
                std::mem::forget(self.bufs.pool().clone());
                self.ring.leak_buffers();
                for id in self.conns.ids() {
                    if let Some(conn) = self.conns.remove(id) {
                        std::mem::forget(conn);
                    }
                }
            }
        }
        for id in self.conns.ids() {
            if let Some(conn) = self.conns.remove(id) {
                conn.shared.lock().fd_closed = true;
                sys::close(conn.fd);
            }
        }
        self.shared.exited.store(true, Ordering::Release);
        local::cancel_all(&self.shared);
        if let Err(e) = self.ring.uring().submitter().unregister_buf_ring(BGID) {
            tracing::debug!(reactor = self.index, error = %e, "unregister buffer ring");
        }
        self.publish_stats();
    }
}

/// No more bytes will be read: tell the reader (after what is queued).
fn end_read(conn: &mut Conn, reason: CloseReason) {
    let w = {
        let mut st = conn.shared.lock();
        st.read_end.get_or_insert(reason);
        st.read_waker.take()
    };
    if let Some(w) = w {
        w.wake();
    }
}

/// Writes fail from now on: tell a waiting flush.
fn end_write(conn: &mut Conn, reason: CloseReason) {
    let w = {
        let mut st = conn.shared.lock();
        st.write_end.get_or_insert(reason);
        st.flush_waker.take()
    };
    if let Some(w) = w {
        w.wake();
    }
}

/// Sends FIN now (everything staged was sent) and tells the waiting `shutdown`.
fn shutdown_now(conn: &mut Conn) {
    let res = if conn.closing {
        Ok(())
    } else {
        sys::shutdown_write(conn.fd)
    };
    let w = {
        let mut st = conn.shared.lock();
        match res {
            Ok(()) => {
                st.shut_down = true;
                st.write_end.get_or_insert(CloseReason::Local);
            }
            Err(e) => {
                st.write_end.get_or_insert(CloseReason::from_errno(
                    e.raw_os_error().unwrap_or(libc::EIO),
                ));
            }
        }
        st.flush_waker.take()
    };
    if let Some(w) = w {
        w.wake();
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
