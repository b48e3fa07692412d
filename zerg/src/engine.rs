//! [`Engine`]: starts the acceptor and reactors, hands out connections, stops everything.

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::acceptor;
use crate::admission::Admission;
use crate::config::{AcceptMode, EngineOptions};
use crate::conn::Connection;
use crate::error::Result;
use crate::lifecycle::{Lifecycle, ThreadGuard};
use crate::net::{Connect, Job};
use crate::reactor::outbound::Outbound;
use crate::reactor::{self, HandlerFactory, Mode, ReactorInit};
use crate::runtime::executor;
use crate::stats::{EngineStats, StatsHandle};
use crate::sys::listener::Listeners;

/// A running zerg server: one acceptor thread (or per-reactor accept) and N reactor threads.
///
/// Start it with [`Engine::listen`] (connections come out of [`Engine::accept`], for handlers on
/// any async runtime) or [`Engine::serve`] (each connection's handler runs on the reactor thread
/// that owns it). Stop it with [`stop`](Engine::stop) or [`shutdown`](Engine::shutdown); dropping
/// the engine stops it and joins its threads.
///
/// Engines share nothing: several can run in one process.
///
/// # Waiting for the end
///
/// [`join`](Engine::join) blocks the calling thread: call it from `main` or a plain thread,
/// **never from async code** (it would block a runtime worker, and on a single-threaded runtime
/// the handlers it waits for). In async code, await [`join_async`](Engine::join_async) or
/// [`stopped`](Engine::stopped) instead. Dropping the engine also stops and joins it, blocking
/// in the same way.
///
/// ```no_run
/// use std::time::Duration;
/// use zerg_uring::Engine;
///
/// #[tokio::main]
/// async fn main() -> zerg_uring::Result<()> {
///     let engine = Engine::listen(([0, 0, 0, 0], 8080))?;
///     tokio::select! {
///         _ = tokio::signal::ctrl_c() => engine.shutdown(Duration::from_secs(5)),
///         _ = engine.stopped() => {} // a thread failed: join_async reports why
///     }
///     engine.join_async().await // no thread of the runtime is blocked
/// }
/// ```
#[must_use = "dropping the Engine stops the server at once: keep it until it should stop, then \
              `shutdown`/`stop` it and `join` (or `join_async`) it"]
pub struct Engine {
    shared: Arc<Lifecycle>,
    accept_rx: async_channel::Receiver<Connection>,
    /// The distinct addresses listened on (at least one).
    local_addrs: Vec<SocketAddr>,
    reactor_count: usize,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Closes once every acceptor and reactor thread is done (each holds a [`ThreadGuard`]).
    exited: async_channel::Receiver<()>,
    // Kept open until the threads are joined (own ones shut down for reading at stop).
    listeners: Listeners,
    /// The tokio runtime zerg started for `TokioContext::Owned`; stopped after the reactors.
    #[cfg(feature = "tokio-context")]
    owned_tokio: Mutex<Option<crate::tokio_context::OwnedRuntime>>,
    /// Each reactor's inbox for outbound connections, and the next one to use.
    outbound: Vec<Arc<Outbound>>,
    next_outbound: AtomicUsize,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("local_addrs", &self.local_addrs)
            .field("reactors", &self.reactor_count)
            .field("running", &self.is_running())
            .finish()
    }
}

impl Engine {
    /// Binds, starts the acceptor and the reactors, and returns once all of them run (C# zerg:
    /// `new Engine(options)` + `Listen()`). Connections are then taken with
    /// [`accept`](Self::accept).
    ///
    /// `options` is an [`EngineOptions`] or anything that converts into one: an address
    /// (`SocketAddr`, `([127, 0, 0, 1], 8080)`, see [`EngineOptions::bind`] for host names) or
    /// a `std::net::TcpListener` already listening (see [`EngineOptions::listener`]), each
    /// with every other setting at its default.
    ///
    /// ```no_run
    /// use zerg_uring::{Engine, EngineOptions};
    ///
    /// let a = Engine::listen(EngineOptions::with_port(8080))?;
    /// let b = Engine::listen(([127, 0, 0, 1], 8081))?;
    /// let c = Engine::listen(EngineOptions::bind("localhost:8082")?)?;
    /// let d = Engine::listen(std::net::TcpListener::bind("[::1]:0")?)?;
    /// # drop((a, b, c, d));
    /// # Ok::<(), zerg_uring::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Config`](crate::Error::Config) for an invalid configuration (or a given
    /// listener that is not a listening TCP socket); [`Error::Io`](crate::Error::Io) naming
    /// what failed (bind, `io_uring_setup`, buffer-ring registration, thread spawn) with its
    /// errno; [`Error::Unsupported`](crate::Error::Unsupported) when the kernel lacks a required
    /// feature. Nothing keeps running after an error.
    pub fn listen(options: impl Into<EngineOptions>) -> Result<Engine> {
        let options = options.into();
        options.validate()?;
        let capacity = (0..options.reactor_count)
            .map(|i| options.reactor_config(i).max_connections_per_reactor as usize)
            .sum::<usize>()
            .clamp(1, 65536);
        let (tx, rx) = async_channel::bounded(capacity);
        Self::start(options, Mode::Runtime(tx), rx)
    }

    /// Like [`listen`](Self::listen), but each connection's handler runs on the reactor thread
    /// that owns the connection (thread-per-core): `handler(conn)` is called there and the future
    /// it returns is driven by the reactor's local executor. The future need not be `Send`.
    /// [`accept`](Self::accept) yields nothing in this mode.
    ///
    /// Handlers (and tasks they spawn with [`spawn_local`](crate::spawn_local)) can use the
    /// reactor's timers ([`crate::time`]). They may also await futures woken from other threads
    /// (a tokio channel, a timer on another runtime): such a wake reaches the reactor at once
    /// through its eventfd. A panicking handler closes its own connection and is counted in
    /// [`ReactorStats::handler_panics`](crate::ReactorStats::handler_panics).
    ///
    /// `options` converts into [`EngineOptions`] as for [`listen`](Self::listen).
    ///
    /// # Errors
    ///
    /// As for [`listen`](Self::listen).
    pub fn serve<H, F>(options: impl Into<EngineOptions>, handler: H) -> Result<Engine>
    where
        H: Fn(Connection) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + 'static,
    {
        let handler = Arc::new(handler);
        Self::serve_factory(options.into(), move |_| {
            let handler = handler.clone();
            move |conn| handler(conn)
        })
    }

    /// Like [`serve`](Self::serve), with per-reactor state: `init(reactor_index)` runs once on
    /// each reactor thread, before it takes connections, and every handler on that reactor gets
    /// the result (a per-core cache, a connection pool to an upstream, counters — no locks
    /// needed: the state never leaves its thread, so it need not be `Send`).
    ///
    /// ```no_run
    /// use std::cell::Cell;
    /// use zerg_uring::{Engine, EngineOptions};
    ///
    /// // Counts the requests each reactor served, without atomics.
    /// let engine = Engine::serve_with_state(
    ///     EngineOptions::with_port(8080),
    ///     |_reactor| Cell::new(0u64),
    ///     |mut conn, served| async move {
    ///         while !conn.read().await.is_closed() {
    ///             served.set(served.get() + 1);
    ///         }
    ///     },
    /// )?;
    /// # engine.stop();
    /// # Ok::<(), zerg_uring::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`listen`](Self::listen); a panic in `init` fails the start with
    /// [`Error::ReactorFailed`](crate::Error::ReactorFailed).
    pub fn serve_with_state<S, I, H, F>(
        options: impl Into<EngineOptions>,
        init: I,
        handler: H,
    ) -> Result<Engine>
    where
        S: 'static,
        I: Fn(usize) -> S + Send + Sync + 'static,
        H: Fn(Connection, Rc<S>) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + 'static,
    {
        let handler = Arc::new(handler);
        Self::serve_factory(options.into(), move |index| {
            let state = Rc::new(init(index));
            let handler = handler.clone();
            move |conn| handler(conn, state.clone())
        })
    }

    /// Thread-per-core mode with a handler built on each reactor thread by `make(index)`.
    fn serve_factory<M, H, F>(options: EngineOptions, make: M) -> Result<Engine>
    where
        M: Fn(usize) -> H + Send + Sync + 'static,
        H: FnMut(Connection) -> F + 'static,
        F: Future<Output = ()> + 'static,
    {
        options.validate()?;
        let (_tx, rx) = async_channel::bounded(1);
        let factory: HandlerFactory = Arc::new(move |index| {
            let mut handler = make(index);
            Box::new(move |conn: Connection| {
                let reactor = conn.shared.reactor.clone();
                executor::spawn_detached(&reactor, handler(conn));
            })
        });
        Self::start(options, Mode::Serve(factory), rx)
    }

    fn start(
        options: EngineOptions,
        mode: Mode,
        rx: async_channel::Receiver<Connection>,
    ) -> Result<Engine> {
        // Only thread-per-core handlers run on the reactors: nothing to enter otherwise.
        #[cfg(feature = "tokio-context")]
        let mut tokio = match (&mode, &options.tokio_context) {
            (Mode::Serve(_), Some(ctx)) => Some(crate::tokio_context::resolve(ctx)?),
            _ => None,
        };
        let per_reactor = options.accept_mode == AcceptMode::PerReactor;
        let listeners = Listeners::open(&options)?;
        let local_addrs = listeners.addrs().to_vec();
        let (exit, exited) = ThreadGuard::new();

        // On stop, `accept` returns `None` from then on and connections not yet accepted close.
        let queue = rx.clone();
        let on_stop = Box::new(move || {
            queue.close();
            while let Ok(conn) = queue.try_recv() {
                drop(conn);
            }
        });
        let shared = Arc::new(Lifecycle::new(per_reactor, on_stop));
        let mut engine = Engine {
            shared: shared.clone(),
            accept_rx: rx,
            local_addrs: local_addrs.clone(),
            reactor_count: options.reactor_count,
            threads: Mutex::new(Vec::new()),
            exited,
            listeners: Listeners::default(),
            #[cfg(feature = "tokio-context")]
            owned_tokio: Mutex::new(tokio.as_mut().and_then(|(_, owned)| owned.take())),
            outbound: Vec::new(),
            next_outbound: AtomicUsize::new(0),
        };

        let admission = Arc::new(Admission::for_engine(&options));
        let mut reactors = Vec::with_capacity(options.reactor_count);
        for index in 0..options.reactor_count {
            let init = ReactorInit {
                index,
                config: options.reactor_config(index).clone(),
                mode: mode.clone(),
                listener: listeners.for_reactor(index).filter(|_| per_reactor),
                engine: shared.clone(),
                exit: exit.clone(),
                #[cfg(feature = "tokio-context")]
                tokio: tokio.as_ref().map(|(h, _)| h.clone()),
                admission: admission.clone(),
            };
            match reactor::spawn(init) {
                Ok(spawned) => {
                    reactors.push(spawned.shared);
                    engine.outbound.push(spawned.outbound);
                    engine
                        .threads
                        .get_mut()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(spawned.thread);
                }
                Err(e) => {
                    shared.set_reactors(reactors);
                    shared.stop(Duration::ZERO);
                    engine.join_threads();
                    return Err(e);
                }
            }
        }
        drop(mode);
        shared.set_reactors(reactors.clone());

        if !per_reactor {
            match acceptor::spawn(
                options.acceptor.clone(),
                listeners.fds(),
                reactors,
                shared.clone(),
                admission,
                exit,
            ) {
                Ok((a, thread)) => {
                    shared.set_acceptor(a);
                    engine
                        .threads
                        .get_mut()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(thread);
                }
                Err(e) => {
                    shared.stop(Duration::ZERO);
                    engine.join_threads();
                    return Err(e);
                }
            }
        }
        engine.listeners = listeners;
        // A thread that failed during start-up asked to stop before everyone was registered.
        if shared.is_stopping() {
            shared.stop(Duration::ZERO);
        }
        tracing::info!(addrs = ?local_addrs, reactors = options.reactor_count, mode = ?options.accept_mode, "zerg engine listening");
        Ok(engine)
    }

    /// The address the engine listens on (with the actual port when `port` was 0); with several
    /// listeners, the first one's (see [`local_addrs`](Self::local_addrs)).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addrs[0]
    }

    /// Every distinct address the engine listens on, in the order of the listeners given
    /// ([`EngineOptions::listeners`]); one address when the engine bound `ip:port` itself.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Number of reactor threads.
    pub fn reactor_count(&self) -> usize {
        self.reactor_count
    }

    /// Waits for the next connection, from any reactor (C# zerg: `AcceptAsync`). Works from any
    /// async runtime. Returns `None` once the engine stopped (or in [`serve`](Self::serve) mode).
    ///
    /// Several tasks may accept at once; each connection goes to one of them.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future (in a `select!` with a shutdown signal, say) loses no
    /// connection — one not yet taken stays queued for the next `accept`.
    pub async fn accept(&self) -> Option<Connection> {
        self.accept_rx.recv().await.ok()
    }

    /// Opens a TCP connection to `addr` from any thread or runtime: the request goes to the
    /// engine's reactors in turn (round-robin) through their cross-thread inbox, and the
    /// connection belongs to that reactor — like an accepted one, usable from anywhere. The
    /// socket is non-blocking, close-on-exec, with `TCP_NODELAY`. On a reactor thread,
    /// [`zerg_uring::connect`](crate::connect) keeps the connection on the caller's reactor.
    ///
    /// `addr` must be resolved (see [`connect`](crate::connect)).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it resolves abandons the attempt and loses nothing else: the
    /// reactor cancels the connect, waits for the kernel to let go of it, then closes the
    /// socket (a connection made meanwhile is closed).
    ///
    /// # Errors
    ///
    /// [`Error::Connect`](crate::Error::Connect) naming `addr` with the errno;
    /// [`Error::EngineStopped`](crate::Error::EngineStopped) when the engine
    /// stopped or stops first.
    pub fn connect(&self, addr: impl Into<SocketAddr>) -> Connect {
        self.outbound_request(Job::connect(addr.into(), None))
    }

    /// Like [`connect`](Self::connect), giving up after `timeout` with
    /// [`Error::ConnectTimedOut`](crate::Error::ConnectTimedOut) (a timeout linked to the
    /// connect in the kernel).
    ///
    /// # Cancel safety
    ///
    /// As for [`connect`](Self::connect).
    ///
    /// # Errors
    ///
    /// As for [`connect`](Self::connect); a zero `timeout` is refused.
    pub fn connect_timeout(&self, addr: impl Into<SocketAddr>, timeout: Duration) -> Connect {
        self.outbound_request(Job::connect(addr.into(), Some(timeout)))
    }

    /// Takes over an already connected `stream` (set non-blocking with `TCP_NODELAY`) as a
    /// connection of one of the engine's reactors (round-robin). On an error the stream is
    /// closed.
    ///
    /// # Cancel safety
    ///
    /// The stream is given up at the call: dropping the future before it resolves closes it
    /// (and the connection, if the reactor had already taken it over).
    ///
    /// # Errors
    ///
    /// [`Error::Io`](crate::Error::Io) when the stream is not connected or cannot be set up;
    /// [`Error::EngineStopped`](crate::Error::EngineStopped).
    pub fn adopt(&self, stream: std::net::TcpStream) -> Connect {
        self.outbound_request(Job::Adopt(stream))
    }

    fn outbound_request(&self, job: Job) -> Connect {
        if self.outbound.is_empty() {
            return Connect::failed();
        }
        let i = self.next_outbound.fetch_add(1, Ordering::Relaxed) % self.outbound.len();
        Connect::new(job, Some(self.outbound[i].clone()))
    }

    /// Whether the engine still runs (not stopped, no thread failed).
    pub fn is_running(&self) -> bool {
        !self.shared.is_stopping()
    }

    /// Stops now: no more accepts, every connection closes (reads see
    /// [`CloseReason::EngineStopping`](crate::CloseReason::EngineStopping), flushes fail), the
    /// threads exit. Does not block; [`join`](Self::join) (or [`join_async`](Self::join_async))
    /// waits for the threads.
    pub fn stop(&self) {
        self.shared.stop(Duration::ZERO);
        self.listeners.stop();
    }

    /// Stops gracefully: accepting stops at once, live connections get up to `grace` to finish
    /// (handlers keep reading and writing), then whatever is left is closed as by
    /// [`stop`](Self::stop). Does not block.
    ///
    /// New connections are refused at once on the listeners the engine bound (they leave the
    /// listening state). Listeners given with [`EngineOptions::listener`] keep listening for
    /// their other holders: connections that arrive meanwhile wait in the backlog for the next
    /// process (hot restart) or for systemd.
    pub fn shutdown(&self, grace: Duration) {
        self.shared.stop(grace);
        self.listeners.stop();
    }

    /// Waits until every thread exited (after [`stop`](Self::stop) or
    /// [`shutdown`](Self::shutdown), or a failure), then releases the listeners. It does not
    /// stop the engine itself.
    ///
    /// **This blocks the calling thread.** Call it from `main` or a plain thread, never from
    /// async code: on a runtime it blocks a worker thread (on a single-threaded runtime,
    /// possibly the very handlers it waits for, which never finishes). In async code use
    /// [`join_async`](Self::join_async).
    ///
    /// # Errors
    ///
    /// The failure that stopped the engine, if a thread failed.
    pub fn join(self) -> Result<()> {
        self.join_threads();
        match self.shared.take_failure() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// [`join`](Self::join) for async code: waits, without blocking any thread, until every
    /// thread exited (after [`stop`](Self::stop) or [`shutdown`](Self::shutdown), or a
    /// failure), then releases the listeners. Works on any runtime. It does not stop the
    /// engine itself.
    ///
    /// # Cancel safety
    ///
    /// The future owns the engine: dropping it before it completes drops the engine, which stops
    /// it and joins its threads, blocking (see [`Engine`]'s drop). To wait without giving the
    /// engine up, use [`stopped`](Self::stopped).
    ///
    /// # Errors
    ///
    /// The failure that stopped the engine, if a thread failed.
    pub async fn join_async(self) -> Result<()> {
        self.stopped().await;
        #[cfg(feature = "tokio-context")]
        {
            let owned = self
                .owned_tokio
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(rt) = owned {
                rt.stop_async().await;
            }
        }
        // Every thread is past its last instruction of ours: joining only reaps it.
        self.join()
    }

    /// Resolves once every acceptor and reactor thread of the engine has exited: after
    /// [`stop`](Self::stop) or [`shutdown`](Self::shutdown) once the last connection closed,
    /// or after a thread failed (then [`join`](Self::join) / [`join_async`](Self::join_async)
    /// return the failure). It does not stop the engine.
    ///
    /// The future is `Send + 'static` and does not borrow the engine, so it can be spawned or
    /// awaited in a `select!` next to a shutdown signal, on any runtime. It waits on an event
    /// the threads signal as they exit; nothing polls. Every call returns a new future; all of
    /// them resolve.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping it changes nothing.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let exited = self.exited.clone();
        async move {
            // Nothing is ever sent: `recv` ends when the last thread drops its guard.
            let _ = exited.recv().await;
        }
    }

    fn join_threads(&self) {
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let name = t.thread().name().unwrap_or("zerg").to_string();
            if t.join().is_err() {
                tracing::error!(thread = %name, "thread panicked");
            }
        }
        #[cfg(feature = "tokio-context")]
        if let Some(mut rt) = self
            .owned_tokio
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            rt.stop();
        }
    }

    /// Counters of every reactor and the acceptor.
    pub fn stats(&self) -> EngineStats {
        self.stats_handle().stats()
    }

    /// A handle that reads [`stats`](Self::stats) from anywhere, without borrowing the engine:
    /// for a metrics exporter that outlives this borrow (it keeps only the counters alive).
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle::new(
            self.shared
                .reactors()
                .iter()
                .map(|r| r.stats.clone())
                .collect(),
            self.shared.acceptor().map(|a| a.stats.clone()),
        )
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shared.stop(Duration::ZERO);
        self.join_threads();
    }
}
