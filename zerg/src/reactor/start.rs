//! Starting a reactor: its thread, its ring and provided-buffer ring, where its connections go;
//! and what the thread does when the loop ends (a failure stops the engine, teardown).

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::accept::Accepting;
use super::outbound::{self, Outbound};
use super::pressure::Pressure;
use super::recv::Receiving;
use super::timers::{ConnTimers, Timeouts};
use super::{Mode, Phase, Reactor, Sink, fds, setup};
use crate::admission::Admission;
use crate::buf_ring::BufRing;
use crate::config::ReactorConfig;
use crate::error::{Error, Result};
use crate::lifecycle::{Lifecycle, ThreadGuard};
use crate::log_throttle::Throttles;
use crate::ring::Ring;
use crate::ring::slots::Slots;
use crate::runtime::{ReactorShared, local};
use crate::stats::ReactorStats;
use crate::sys::{self, EventFd};

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

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// Pins the thread (`cpu`), builds the reactor's ring and registers its provided-buffer ring;
/// probes how it receives.
fn open_rings(
    config: &ReactorConfig,
    index: usize,
    who: &str,
) -> Result<(Rc<Ring>, BufRing, Receiving)> {
    if let Some(cpu) = config.cpu {
        sys::pin_current_thread(cpu)
            .map_err(|e| Error::io(format!("pin reactor {index} to CPU {cpu}"), e))?;
    }
    let uring = sys::ring::build(&setup::ring_spec(config), who)?;
    let bufs = setup::receive_ring(config, &uring, who)?;
    let receiving = Receiving::new(config, &uring, index);
    let min_wait = sys::ring::min_wait_usec(&uring, config.min_wait, who);
    let ring = Rc::new(Ring::new(
        uring,
        Duration::from_millis(100),
        config.cq_timeout,
    ));
    ring.set_min_wait(min_wait);
    Ok((ring, bufs, receiving))
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
        let who = format!("reactor {index}");
        let (ring, bufs, receiving) = open_rings(&config, index, &who)?;
        let features = fds::Features::setup(&ring, &config);
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
            receiving,
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
}
