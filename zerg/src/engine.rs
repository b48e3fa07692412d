//! [`Engine`]: starts the acceptor and reactors, hands out connections, stops everything.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::Socket;

use crate::acceptor;
use crate::admission::Admission;
use crate::config::{AcceptMode, EngineOptions};
use crate::conn::Connection;
use crate::error::{Error, Result};
use crate::lifecycle::Lifecycle;
use crate::net::{Connect, Job};
use crate::reactor::outbound::Outbound;
use crate::reactor::{self, HandlerFactory, Mode, ReactorInit};
use crate::runtime::executor;
use crate::stats::{EngineStats, StatsHandle};
use crate::sys;

/// A running zerg server: one acceptor thread (or per-reactor accept) and N reactor threads.
///
/// Start it with [`Engine::listen`] (connections come out of [`Engine::accept`], for handlers on
/// any async runtime) or [`Engine::serve`] (each connection's handler runs on the reactor thread
/// that owns it). Stop it with [`stop`](Engine::stop) or [`shutdown`](Engine::shutdown); dropping
/// the engine stops it and joins its threads.
///
/// Engines share nothing: several can run in one process.
pub struct Engine {
    shared: Arc<Lifecycle>,
    accept_rx: async_channel::Receiver<Connection>,
    local_addr: SocketAddr,
    reactor_count: usize,
    threads: Mutex<Vec<JoinHandle<()>>>,
    // Kept open until the threads are joined (shut down for reading at stop).
    listeners: Vec<Socket>,
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
            .field("local_addr", &self.local_addr)
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
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid configuration; [`Error::Io`] naming what failed (bind,
    /// `io_uring_setup`, buffer-ring registration, thread spawn) with its errno;
    /// [`Error::Unsupported`] when the kernel lacks a required feature. Nothing keeps running
    /// after an error.
    pub fn listen(options: EngineOptions) -> Result<Engine> {
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
    /// # Errors
    ///
    /// As for [`listen`](Self::listen).
    pub fn serve<H, F>(options: EngineOptions, handler: H) -> Result<Engine>
    where
        H: Fn(Connection) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + 'static,
    {
        let handler = Arc::new(handler);
        Self::serve_factory(options, move |_| {
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
    /// [`Error::ReactorFailed`].
    pub fn serve_with_state<S, I, H, F>(
        options: EngineOptions,
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
        Self::serve_factory(options, move |index| {
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
        let version = options.acceptor.ip_version;
        let addr = sys::listener::bind_addr(options.ip, options.port, version);
        let per_reactor = options.accept_mode == AcceptMode::PerReactor;
        let mut listeners = Vec::new();
        let first = sys::listener::listen(
            addr,
            version,
            options.backlog,
            per_reactor,
            options.tcp_keepalive,
        )?;
        let bound = first
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| {
                Error::io(
                    format!("getsockname for listener {addr}"),
                    std::io::Error::last_os_error(),
                )
            })?;
        listeners.push(first);
        if per_reactor {
            for _ in 1..options.reactor_count {
                listeners.push(sys::listener::listen(
                    bound,
                    version,
                    options.backlog,
                    true,
                    options.tcp_keepalive,
                )?);
            }
        }
        let local_addr = match (options.ip, bound) {
            (IpAddr::V4(v4), SocketAddr::V6(_)) if !v4.is_unspecified() => {
                SocketAddr::new(IpAddr::V4(v4), bound.port())
            }
            _ => bound,
        };

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
            local_addr,
            reactor_count: options.reactor_count,
            threads: Mutex::new(Vec::new()),
            listeners: Vec::new(),
            #[cfg(feature = "tokio-context")]
            owned_tokio: Mutex::new(tokio.as_mut().and_then(|(_, owned)| owned.take())),
            outbound: Vec::new(),
            next_outbound: AtomicUsize::new(0),
        };

        let admission = Arc::new(Admission::for_engine(&options));
        let mut reactors = Vec::with_capacity(options.reactor_count);
        for index in 0..options.reactor_count {
            let listener = listeners.get(index).filter(|_| per_reactor);
            let init = ReactorInit {
                index,
                config: options.reactor_config(index).clone(),
                mode: mode.clone(),
                listener: listener.map(|l| l.as_raw_fd()),
                engine: shared.clone(),
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
                listeners[0].as_raw_fd(),
                reactors,
                shared.clone(),
                admission,
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
        tracing::info!(addr = %local_addr, reactors = options.reactor_count, mode = ?options.accept_mode, "zerg engine listening");
        Ok(engine)
    }

    /// The address the engine listens on (with the actual port when `port` was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Number of reactor threads.
    pub fn reactor_count(&self) -> usize {
        self.reactor_count
    }

    /// Waits for the next connection, from any reactor (C# zerg: `AcceptAsync`). Works from any
    /// async runtime. Returns `None` once the engine stopped (or in [`serve`](Self::serve) mode).
    pub async fn accept(&self) -> Option<Connection> {
        self.accept_rx.recv().await.ok()
    }

    /// Opens a TCP connection to `addr` from any thread or runtime: the request goes to the
    /// engine's reactors in turn (round-robin) through their cross-thread inbox, and the
    /// connection belongs to that reactor — like an accepted one, usable from anywhere. The
    /// socket is non-blocking, close-on-exec, with `TCP_NODELAY`. On a reactor thread,
    /// [`zerg_uring::connect`](crate::connect) keeps the connection on the caller's reactor.
    ///
    /// `addr` must be resolved (see [`connect`](crate::connect)). Dropping the future before
    /// it resolves cancels the attempt.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] naming `addr` with the errno; [`Error::EngineStopped`] when the engine
    /// stopped or stops first.
    pub fn connect(&self, addr: impl Into<SocketAddr>) -> Connect {
        self.outbound_request(Job::connect(addr.into(), None))
    }

    /// Like [`connect`](Self::connect), giving up after `timeout` with
    /// [`Error::ConnectTimedOut`] (a timeout linked to the connect in the kernel).
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
    /// # Errors
    ///
    /// [`Error::Io`] when the stream is not connected or cannot be set up;
    /// [`Error::EngineStopped`].
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
    /// threads exit. Does not block; [`join`](Self::join) waits for the threads.
    pub fn stop(&self) {
        self.shared.stop(Duration::ZERO);
        self.stop_listening();
    }

    /// Stops gracefully: accepting stops at once (new connections are refused), live
    /// connections get up to `grace` to finish (handlers keep reading and writing), then
    /// whatever is left is closed as by [`stop`](Self::stop). Does not block.
    pub fn shutdown(&self, grace: Duration) {
        self.shared.stop(grace);
        self.stop_listening();
    }

    /// Takes the listeners out of LISTEN (`shutdown(SHUT_RD)`, after the stop flag is set):
    /// connections waiting in the backlog are reset and new ones refused, and an armed accept
    /// ends with an error. Without it the kernel kept completing handshakes until `join` closed
    /// the listeners, and clients that connected during a graceful drain hung until then.
    fn stop_listening(&self) {
        for l in &self.listeners {
            if let Err(e) = l.shutdown(std::net::Shutdown::Read) {
                tracing::debug!(error = %e, "shutdown of a listener");
            }
        }
    }

    /// Waits until every thread exited (after [`stop`](Self::stop) or
    /// [`shutdown`](Self::shutdown), or a failure), then releases the listeners.
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
