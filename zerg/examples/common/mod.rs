//! Shared by the examples: command-line flags (`lexopt`), logging (`tracing-subscriber`), the
//! timeouts and limits, the run loop for both handler modes, signals, and answering and closing
//! HTTP connections. Request framing is in [`http`], the `--metrics-port` endpoint in
//! [`metrics`].
#![allow(dead_code, unreachable_pub)]

pub mod http;
pub mod metrics;

use std::future::Future;
use std::time::Duration;

use lexopt::prelude::*;
use zerg_uring::{AcceptMode, Connection, Engine, EngineOptions, ReactorConfig};

use http::{Batch, RESPONSE, RESPONSE_CLOSE, Reject, Then};

/// Where handlers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// On a tokio runtime, connections taken with `Engine::accept`.
    Runtime,
    /// On the reactor thread that owns the connection (`Engine::serve`).
    Reactor,
}

/// What an example speaks: HTTP examples also take `--header-timeout`, RESP ones
/// `--command-timeout` (both a request timeout: from a request's first byte to its answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Http,
    Resp,
    Tcp,
}

impl Kind {
    /// The flag of the request timeout, if this kind has one.
    fn request_timeout_flag(self) -> Option<&'static str> {
        match self {
            Kind::Http => Some("header-timeout"),
            Kind::Resp => Some("command-timeout"),
            Kind::Tcp => None,
        }
    }
}

/// Default write timeout: a peer that takes no bytes for this long is dropped.
pub const WRITE_TIMEOUT: u64 = 30;
/// Default read timeout: off. A read that waits includes the wait for the next request on a
/// keep-alive connection, which the idle timeout governs; an unfinished request is the header
/// timeout's (HTTP). Turn it on for protocols where the server waits for the client mid-message.
pub const READ_TIMEOUT: u64 = 0;
/// Default request timeout: HTTP's header timeout (nginx's `client_header_timeout`), RESP's
/// command timeout.
pub const REQUEST_TIMEOUT: u64 = 60;
/// Default idle timeout between requests (nginx's `keepalive_timeout`).
pub const IDLE_TIMEOUT: u64 = 75;

/// Most bytes a connection may stage for sending (the library's default is 64 MiB).
pub const MAX_WRITE_BUFFER: usize = 1024 * 1024;

/// Flags every example takes.
#[derive(Debug, Clone)]
pub struct Args {
    /// `None`: the library's default (every IPv6 and IPv4 address).
    pub ip: Option<std::net::IpAddr>,
    pub port: u16,
    pub reactors: usize,
    pub recv_buffer_size: u32,
    pub buffer_ring_entries: u32,
    pub incremental: bool,
    pub mode: Mode,
    pub accept: AcceptMode,
    pub workers: usize,
    pub sqpoll: bool,
    /// `--direct-descriptors`: `ReactorConfig::direct_descriptors`.
    pub direct_descriptors: bool,
    /// `None`: off.
    pub write_timeout: Option<Duration>,
    pub read_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    /// HTTP (`--header-timeout`) and RESP (`--command-timeout`) examples only: from the first
    /// byte of a request to its answer.
    pub request_timeout: Option<Duration>,
    /// Most live connections in the engine; `None` keeps the library's per-reactor default.
    pub max_connections: Option<u32>,
    /// The example enforces `request_timeout` itself (hyper's `header_read_timeout`), so the
    /// reactor's request timeout stays off.
    pub request_timeout_applied: bool,
    pub kind: Kind,
    /// `--metrics-port`: serve Prometheus metrics there ([`metrics`]).
    pub metrics_port: Option<u16>,
}

/// The flags, for `--help` and errors. HTTP examples add `--header-timeout`, RESP ones
/// `--command-timeout`.
pub const USAGE: &str = "flags:
  --ip ADDR                 address to listen on (default: all, IPv6 and IPv4)
  --port N                  TCP port (default 8080; 0: any free port, printed at startup)
  --reactors N              reactor threads (default 1)
  --recv-buffer-size N      bytes per receive buffer (default 16384)
  --buffer-ring-entries N   receive buffers per reactor, a power of two (default 4096)
  --incremental             incremental buffer consumption (Linux 6.12+)
  --mode reactor|runtime    handlers on the reactor threads (default: thread-per-core, the fast
                            path), or on a tokio runtime
  --accept per-reactor|dedicated
                            SO_REUSEPORT accept in every reactor (default), or an acceptor thread
  --workers N               tokio worker threads in runtime mode (default: number of CPUs)
  --sqpoll                  IORING_SETUP_SQPOLL for the reactors
  --direct-descriptors      connections as direct descriptors in the rings' file tables
                            (Linux 6.8+; the table needs RLIMIT_NOFILE above the connection
                            cap, or the reactors use plain descriptors and log why)
  --max-connections N       most live connections, split evenly over the reactors
                            (default: 8192 per reactor)
  --write-timeout SECS      drop a peer that takes no bytes for SECS (default 30; 0: off)
  --read-timeout SECS       close a connection whose read waited SECS for bytes (default 0: off;
                            the idle and header timeouts cover HTTP)
  --idle-timeout SECS       close a connection that sent and received nothing for SECS
                            (default 75; 0: off)
  --metrics-port N          serve Prometheus metrics at http://IP:N/metrics, IP being --ip
                            (default: all addresses); needs --features prometheus
logging: RUST_LOG (tracing-subscriber EnvFilter syntax), default \"info\"; logs go to stderr";

const HTTP_USAGE: &str = "HTTP flags:
  --header-timeout SECS     close a connection whose request was not answered SECS after its
                            first byte (default 60; 0: off): slowloris clients
HTTP limits: request head 8 KiB and 100 fields (431), body 1 MiB (413), no Transfer-Encoding (501),
malformed requests 400; each is answered, then the connection closes";

const RESP_USAGE: &str = "RESP flags:
  --command-timeout SECS    close a connection whose command was not answered SECS after its
                            first byte (default 60; 0: off): slowloris clients";

impl Args {
    /// Installs logging, then parses the process's flags (exits with the usage on a bad one).
    pub fn parse(kind: Kind) -> Args {
        Self::parse_with(kind, "", |_, _| Ok(false))
    }

    /// Like [`parse`](Self::parse), offering each flag to `extra` first (for an example's own
    /// flags, described by `extra_usage`); `extra` returns whether it took the flag.
    pub fn parse_with(
        kind: Kind,
        extra_usage: &str,
        extra: impl FnMut(&str, &mut lexopt::Parser) -> Result<bool, lexopt::Error>,
    ) -> Args {
        init_tracing();
        let usage = usage(kind, extra_usage);
        match Self::parse_from(kind, std::env::args_os(), extra) {
            Ok(Some(args)) => args,
            Ok(None) => {
                println!("{usage}");
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("error: {e}\n{usage}");
                std::process::exit(2);
            }
        }
    }

    /// Parses `args` (the first item is the program name); `None` when help was asked for.
    pub fn parse_from<I>(
        kind: Kind,
        args: I,
        mut extra: impl FnMut(&str, &mut lexopt::Parser) -> Result<bool, lexopt::Error>,
    ) -> Result<Option<Args>, lexopt::Error>
    where
        I: IntoIterator,
        I::Item: Into<std::ffi::OsString>,
    {
        let secs = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        let mut a = Args {
            ip: None,
            port: 8080,
            reactors: 1,
            recv_buffer_size: 16 * 1024,
            buffer_ring_entries: 4096,
            incremental: false,
            mode: Mode::Reactor,
            accept: AcceptMode::PerReactor,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            sqpoll: false,
            direct_descriptors: false,
            write_timeout: secs(WRITE_TIMEOUT),
            read_timeout: secs(READ_TIMEOUT),
            idle_timeout: secs(IDLE_TIMEOUT),
            request_timeout: kind
                .request_timeout_flag()
                .map(|_| Duration::from_secs(REQUEST_TIMEOUT)),
            max_connections: None,
            request_timeout_applied: false,
            kind,
            metrics_port: None,
        };
        let mut p = lexopt::Parser::from_iter(args);
        while let Some(arg) = p.next()? {
            let name = match arg {
                Long(name) => name.to_owned(),
                Short('h') => return Ok(None),
                _ => return Err(arg.unexpected()),
            };
            if extra(&name, &mut p)? {
                continue;
            }
            match name.as_str() {
                "help" => return Ok(None),
                "ip" => a.ip = Some(p.value()?.parse()?),
                "port" => a.port = p.value()?.parse()?,
                "reactors" => a.reactors = p.value()?.parse()?,
                "recv-buffer-size" => a.recv_buffer_size = p.value()?.parse()?,
                "buffer-ring-entries" => a.buffer_ring_entries = p.value()?.parse()?,
                "incremental" => a.incremental = true,
                "sqpoll" => a.sqpoll = true,
                "direct-descriptors" => a.direct_descriptors = true,
                "workers" => a.workers = p.value()?.parse()?,
                "mode" => {
                    a.mode = match p.value()?.string()?.as_str() {
                        "runtime" => Mode::Runtime,
                        "reactor" => Mode::Reactor,
                        other => return Err(format!("unknown mode {other:?}").into()),
                    }
                }
                "accept" => {
                    a.accept = match p.value()?.string()?.as_str() {
                        "dedicated" => AcceptMode::Dedicated,
                        "per-reactor" => AcceptMode::PerReactor,
                        other => return Err(format!("unknown accept mode {other:?}").into()),
                    }
                }
                "max-connections" => match p.value()?.parse()? {
                    0 => return Err("--max-connections must be at least 1".into()),
                    n => a.max_connections = Some(n),
                },
                "write-timeout" => a.write_timeout = secs(p.value()?.parse()?),
                "read-timeout" => a.read_timeout = secs(p.value()?.parse()?),
                "idle-timeout" => a.idle_timeout = secs(p.value()?.parse()?),
                flag if kind.request_timeout_flag() == Some(flag) => {
                    a.request_timeout = secs(p.value()?.parse()?)
                }
                "metrics-port" if metrics::AVAILABLE => a.metrics_port = Some(p.value()?.parse()?),
                "metrics-port" => {
                    return Err("--metrics-port needs the prometheus feature: \
                                cargo run --example NAME --features prometheus -- --metrics-port N"
                        .into());
                }
                _ => return Err(Long(&name).unexpected()),
            }
        }
        Ok(Some(a))
    }

    /// Engine options for these flags.
    pub fn options(&self) -> EngineOptions {
        let mut reactor = ReactorConfig::default();
        reactor.recv_buffer_size = self.recv_buffer_size;
        reactor.buffer_ring_entries = self.buffer_ring_entries;
        reactor.incremental_buffer_consumption = self.incremental;
        reactor.direct_descriptors = self.direct_descriptors;
        // Responses staged per connection: a client pipelining requests without reading the
        // answers holds at most this much (then the handler waits for the peer to read).
        reactor.max_write_buffer = MAX_WRITE_BUFFER;
        if self.sqpoll {
            reactor.sqpoll = true;
            reactor.defer_taskrun = false;
        }
        // The library caps connections per reactor; a per-engine cap is to come (then this sets
        // it instead).
        if let Some(n) = self.max_connections {
            reactor.max_connections_per_reactor = (n / self.reactors.max(1) as u32).max(1);
        }
        apply_timeouts(self, &mut reactor);
        let mut opts = EngineOptions::with_port(self.port);
        if let Some(ip) = self.ip {
            opts.ip = ip;
        }
        opts.reactor_count = self.reactors;
        opts.accept_mode = self.accept;
        opts.reactor_configs = vec![reactor];
        opts
    }
}

/// The one place where the timeout flags reach the reactor configuration: write, read and idle
/// timeouts as given; the header timeout of HTTP examples (the command timeout of RESP ones) as
/// the reactor's request timeout (from the first byte of a request to the flush of its answer),
/// unless the example enforces it itself (hyper's `header_read_timeout`).
pub fn apply_timeouts(args: &Args, rc: &mut ReactorConfig) {
    rc.write_timeout = args.write_timeout;
    rc.read_timeout = args.read_timeout;
    rc.idle_timeout = args.idle_timeout;
    if !args.request_timeout_applied {
        rc.request_timeout = args.request_timeout;
    }
}

/// The usage text of an example of `kind` with its own flags `extra`.
pub fn usage(kind: Kind, extra: &str) -> String {
    let mut u = String::from(USAGE);
    match kind {
        Kind::Http => u = format!("{u}\n{HTTP_USAGE}"),
        Kind::Resp => u = format!("{u}\n{RESP_USAGE}"),
        Kind::Tcp => {}
    }
    if !extra.is_empty() {
        u = format!("{u}\n{extra}");
    }
    u
}

/// Logs to stderr through `tracing-subscriber`, filtered by `RUST_LOG` (default `info`), so the
/// library's events are seen.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let (filter, bad) = match EnvFilter::try_from_default_env() {
        Ok(f) => (f, None),
        Err(e) if std::env::var_os("RUST_LOG").is_some() => (EnvFilter::new("info"), Some(e)),
        Err(_) => (EnvFilter::new("info"), None),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    if let Some(e) = bad {
        tracing::warn!("RUST_LOG ignored ({e}); logging at info");
    }
}

/// Runs `handler` for every connection until SIGINT or SIGTERM, then stops the engine (giving
/// connections half a second) and returns.
pub fn run<H, F>(args: &Args, options: EngineOptions, handler: H)
where
    H: Fn(Connection) -> F + Send + Sync + Clone + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    match args.mode {
        Mode::Runtime => run_runtime(
            args,
            || Engine::listen(options),
            |_, conn| {
                tokio::spawn(handler(conn));
            },
        ),
        Mode::Reactor => run_reactor(args, || Engine::serve(options, handler)),
    }
}

/// Runtime mode: starts the engine with `listen` (`Engine::listen`) on a multi-threaded tokio
/// runtime of `--workers` threads, hands every accepted connection to `on_accept` (which spawns
/// its task) until SIGINT or SIGTERM, then stops the engine like [`run`].
pub fn run_runtime(
    args: &Args,
    listen: impl FnOnce() -> zerg_uring::Result<Engine>,
    mut on_accept: impl FnMut(&Engine, Connection),
) {
    // Bound before the engine starts: a taken port fails before anything runs.
    let metrics = metrics::Endpoint::bind(args);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        // Listen for signals before the server starts, so none is missed.
        let mut stop = Stop::new();
        let engine = start(args, listen);
        if let Some(m) = metrics {
            m.serve(&engine);
        }
        loop {
            tokio::select! {
                conn = engine.accept() => match conn {
                    Some(conn) => on_accept(&engine, conn),
                    None => break,
                },
                _ = stop.recv() => break,
            }
        }
        engine.shutdown(GRACE);
        done(engine.join_async().await);
    });
}

/// Reactor mode: starts the engine with `serve` (`Engine::serve` or `Engine::serve_with_state`),
/// runs until SIGINT or SIGTERM, then stops it like [`run`].
pub fn run_reactor(args: &Args, serve: impl FnOnce() -> zerg_uring::Result<Engine>) {
    // Bound before the engine starts: a taken port fails before anything runs.
    let metrics = metrics::Endpoint::bind(args);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut stop = {
        let _in_runtime = rt.enter();
        Stop::new()
    };
    let engine = start(args, serve);
    if let Some(m) = metrics {
        // The metrics run on this runtime, driven while it waits for the signal.
        let _in_runtime = rt.enter();
        m.serve(&engine);
    }
    rt.block_on(stop.recv());
    // Off the runtime: a blocking join is fine on this thread.
    engine.shutdown(GRACE);
    done(engine.join());
}

/// Starts the engine with `listen` and prints where it listens; exits with the error if it
/// cannot start.
///
/// With per-reactor accept the listeners set `SO_REUSEPORT`, which would let a second server
/// on the same port start and silently take half the connections: a fixed port is first
/// checked to be free with a plain bind, which fails when anyone listens there.
pub fn start(args: &Args, listen: impl FnOnce() -> zerg_uring::Result<Engine>) -> Engine {
    if args.accept == AcceptMode::PerReactor
        && args.port != 0
        && let Err(e) = port_is_free(args)
    {
        eprintln!("error: port {} is taken: {e}", args.port);
        std::process::exit(1);
    }
    match listen() {
        Ok(e) => {
            println!(
                "listening on {} ({} reactor(s), handlers on {}, {:?} accept{})",
                e.local_addr(),
                args.reactors,
                match args.mode {
                    Mode::Runtime => "tokio",
                    Mode::Reactor => "the reactor threads",
                },
                args.accept,
                if args.incremental {
                    ", incremental buffers"
                } else {
                    ""
                },
            );
            e
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

/// Binds and releases the address the engine will listen on, with `SO_REUSEADDR` (connections
/// of an earlier server in `TIME_WAIT` do not count) but not `SO_REUSEPORT` (a listener does).
fn port_is_free(args: &Args) -> std::io::Result<()> {
    use socket2::{Domain, Socket, Type};
    let ip = args
        .ip
        .unwrap_or(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
    let addr = std::net::SocketAddr::new(ip, args.port);
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())
}

/// How long connections get to finish once a signal came.
pub const GRACE: Duration = Duration::from_millis(500);

/// Reports how the engine ended; exits 1 if a thread of it failed.
fn done(joined: zerg_uring::Result<()>) {
    match joined {
        Ok(()) => println!("stopped"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

/// SIGINT and SIGTERM, listened for from the moment it is created (inside a tokio runtime).
pub struct Stop {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Stop {
    pub fn new() -> Stop {
        use tokio::signal::unix::{SignalKind, signal};
        Stop {
            term: signal(SignalKind::terminate()).expect("SIGTERM handler"),
            int: signal(SignalKind::interrupt()).expect("SIGINT handler"),
        }
    }

    /// Resolves on the next SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Stages the answers to `batch` — one copy of the prebuilt response per request — and sends
/// them. Returns whether the connection stays open: after a request asking to close, or a
/// rejection (logged), the connection is closed gracefully first.
pub async fn answer(conn: &mut Connection, batch: &Batch) -> bool {
    let keep = match batch.then {
        Then::Close => batch.requests - 1,
        _ => batch.requests,
    };
    for _ in 0..keep {
        // The common case stays synchronous: one copy into the staging buffer.
        if conn.write(RESPONSE).is_err() && !stage(conn, RESPONSE).await {
            return false;
        }
    }
    match batch.then {
        Then::Continue => conn.flush().await.is_ok(),
        Then::Close => {
            if stage(conn, RESPONSE_CLOSE).await {
                close_gracefully(conn).await;
            }
            false
        }
        Then::Reject(r) => {
            log_reject(conn, r);
            if stage(conn, r.response()).await {
                close_gracefully(conn).await;
            }
            false
        }
    }
}

/// Logs a rejected request (at `info`: the client's fault, not the server's).
pub fn log_reject(conn: &Connection, r: Reject) {
    tracing::info!(
        peer = ?conn.peer_addr().ok(),
        status = r.status(),
        "closing the connection: {}",
        r.reason()
    );
}

/// [`answer`] for a byte stream (`tokio::io`): the responses go through `write_all`; the
/// closing is like [`close_gracefully`]'s. Rejections are logged by the caller.
#[cfg(feature = "tokio")]
pub async fn answer_stream<S>(stream: &mut S, batch: &Batch) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let keep = match batch.then {
        Then::Close => batch.requests - 1,
        _ => batch.requests,
    };
    for _ in 0..keep {
        if stream.write_all(RESPONSE).await.is_err() {
            return false;
        }
    }
    let last = match batch.then {
        Then::Continue => return stream.flush().await.is_ok(),
        Then::Close => RESPONSE_CLOSE,
        Then::Reject(r) => r.response(),
    };
    if stream.write_all(last).await.is_err() || stream.shutdown().await.is_err() {
        return false;
    }
    let mut sink = [0u8; 4096];
    let mut dropped = 0;
    while dropped < LINGER_BYTES {
        match stream.read(&mut sink).await {
            Ok(0) | Err(_) => break,
            Ok(n) => dropped += n,
        }
    }
    false
}

/// Stages `bytes`; when the write buffer is full (a long pipelined batch), sends what is staged
/// first. `false` when the connection failed.
async fn stage(conn: &mut Connection, bytes: &[u8]) -> bool {
    if conn.write(bytes).is_ok() {
        return true;
    }
    conn.flush().await.is_ok() && conn.write(bytes).is_ok()
}

/// Most bytes read and dropped after a final answer, waiting for the peer to close.
pub const LINGER_BYTES: usize = 256 * 1024;

/// Closes after a final answer without losing it: sends what is staged, shuts the write side
/// (the peer reads the answer, then end-of-file), then reads and drops what the peer still sends
/// — at most [`LINGER_BYTES`] — until it closes. Closing with unread bytes would make the kernel
/// reset the connection, which can destroy the answer before the peer reads it. (A peer that
/// neither sends nor closes is bounded by the idle timeout, once the library has it.)
pub async fn close_gracefully(conn: &mut Connection) {
    if conn.shutdown().await.is_err() {
        return;
    }
    let mut dropped = 0;
    while dropped < LINGER_BYTES {
        let snapshot = conn.read().await;
        if snapshot.is_closed() {
            return;
        }
        dropped += snapshot.len();
    }
}
