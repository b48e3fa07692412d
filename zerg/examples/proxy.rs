//! A TCP proxy: every accepted connection gets its own connection to the upstream, and bytes are
//! copied both ways with half-close — when one side sends FIN, the other side's write half is
//! shut down after everything before it was sent; the pair closes once both directions ended,
//! and an error on either side closes both.
//!
//! ```text
//! cargo run --release --example echo -- --port 9000 &              # an upstream
//! cargo run --release --example proxy -- --upstream 127.0.0.1:9000 # listens on 0.0.0.0:8080
//! printf 'hello\n' | nc -N 127.0.0.1 8080
//! cargo run --release --example proxy -- --upstream localhost:9000 --mode runtime --reactors 2
//! ```
//!
//! In reactor mode (the default) each handler runs on the reactor that accepted the client and
//! opens the upstream connection there with `zerg_uring::connect_timeout`, so both connections
//! of a pair live on one thread. In runtime mode the handlers run on tokio and use
//! `Engine::connect_timeout`.
//!
//! Memory is bounded per pair: a direction reads the next batch only after the previous one was
//! sent (a slow reader on one side pauses the receive from the other; TCP flow control does the
//! rest), and at most `--max-write-buffer` bytes are staged per side. Forwarded bytes are copied
//! once, from the receive buffers of one connection into the write buffer of the other.
//!
//! Flags: --upstream HOST:PORT (required, resolved once at start-up), --port (8080),
//! --reactors (1), --accept dedicated|per-reactor, --mode reactor|runtime, --connect-timeout SECS
//! (5), --write-timeout SECS (30), --max-write-buffer BYTES (1 MiB), --idle-timeout SECS,
//! --read-timeout SECS. SIGINT/SIGTERM stop it.

use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use zerg_uring::{
    AcceptMode, CloseReason, Connection, Engine, EngineOptions, Error, FlushState, ReactorConfig,
    ReadSnapshot, ShutdownState,
};

/// How a proxied pair ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Both directions ended with a FIN that was passed on; bytes copied client → upstream and
    /// upstream → client.
    Done { up: u64, down: u64 },
    /// The upstream connection could not be opened; the client was closed.
    ConnectFailed(Error),
    /// A side failed (reset, write timeout, engine stopping); both were closed.
    Failed(Error),
}

/// Proxies `client` to the connection `upstream` resolves to, until both directions ended.
pub(crate) async fn proxy<F>(client: Connection, upstream: F) -> Outcome
where
    F: Future<Output = zerg_uring::Result<Connection>>,
{
    let upstream = match upstream.await {
        Ok(c) => c,
        // Dropping the client closes it: it learns the upstream is not there.
        Err(e) => return Outcome::ConnectFailed(e),
    };
    match (Splice {
        client,
        upstream,
        up: Pump::default(),
        down: Pump::default(),
    })
    .await
    {
        Ok((up, down)) => Outcome::Done { up, down },
        Err(e) => Outcome::Failed(e),
    }
}

/// Copies both ways between two connections (one future, so it runs on any executor, including a
/// reactor's, without spawning). Dropping it drops — closes — both connections.
struct Splice {
    client: Connection,
    upstream: Connection,
    up: Pump,
    down: Pump,
}

impl Future for Splice {
    type Output = zerg_uring::Result<(u64, u64)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let up = this.up.poll(&mut this.client, &mut this.upstream, cx)?;
        let down = this.down.poll(&mut this.upstream, &mut this.client, cx)?;
        if up.is_ready() && down.is_ready() {
            Poll::Ready(Ok((this.up.bytes, this.down.bytes)))
        } else {
            Poll::Pending
        }
    }
}

/// One direction: read from one connection, stage a copy in the other, flush, repeat; on FIN,
/// shut the other's write half down.
#[derive(Default)]
struct Pump {
    state: PumpState,
    bytes: u64,
}

#[derive(Default)]
enum PumpState {
    #[default]
    Reading,
    /// `snapshot[offset..]` is still to be staged (it did not fit the write buffer at once).
    Copying {
        snapshot: ReadSnapshot,
        offset: usize,
    },
    /// Sending what was staged; then the rest of `rest`, or the next read.
    Flushing {
        flush: FlushState,
        rest: Option<(ReadSnapshot, usize)>,
    },
    ShuttingDown(ShutdownState),
    Done,
}

impl Pump {
    fn poll(
        &mut self,
        from: &mut Connection,
        to: &mut Connection,
        cx: &mut Context<'_>,
    ) -> Poll<zerg_uring::Result<()>> {
        loop {
            match std::mem::replace(&mut self.state, PumpState::Done) {
                PumpState::Reading => match from.poll_read(cx) {
                    Poll::Pending => {
                        self.state = PumpState::Reading;
                        return Poll::Pending;
                    }
                    Poll::Ready(snapshot) => match snapshot.close_reason() {
                        None => {
                            self.state = PumpState::Copying {
                                snapshot,
                                offset: 0,
                            };
                        }
                        Some(CloseReason::PeerClosed) => {
                            self.state = PumpState::ShuttingDown(ShutdownState::default());
                        }
                        Some(reason) => return Poll::Ready(Err(Error::Closed(reason))),
                    },
                },
                PumpState::Copying { snapshot, offset } => {
                    let end = offset + (snapshot.len() - offset).min(to.write_capacity());
                    for segment in snapshot.sequence().slice(offset, end - offset).segments() {
                        to.write(segment)?;
                    }
                    self.bytes += (end - offset) as u64;
                    // A snapshot copied in full goes back to the kernel before the flush.
                    let rest = (end < snapshot.len()).then_some((snapshot, end));
                    self.state = PumpState::Flushing {
                        flush: FlushState::default(),
                        rest,
                    };
                }
                PumpState::Flushing { mut flush, rest } => match to.poll_flush(&mut flush, cx) {
                    Poll::Pending => {
                        self.state = PumpState::Flushing { flush, rest };
                        return Poll::Pending;
                    }
                    Poll::Ready(res) => {
                        res?;
                        self.state = match rest {
                            Some((snapshot, offset)) => PumpState::Copying { snapshot, offset },
                            None => PumpState::Reading,
                        };
                    }
                },
                PumpState::ShuttingDown(mut st) => match to.poll_shutdown(&mut st, cx) {
                    Poll::Pending => {
                        self.state = PumpState::ShuttingDown(st);
                        return Poll::Pending;
                    }
                    Poll::Ready(res) => {
                        res?;
                        return Poll::Ready(Ok(()));
                    }
                },
                PumpState::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The program: flags, the engine in either mode, counters, signals.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Reactor,
    Runtime,
}

#[derive(Debug, Clone)]
struct Args {
    upstream: SocketAddr,
    port: u16,
    reactors: usize,
    accept: AcceptMode,
    mode: Mode,
    connect_timeout: Duration,
    write_timeout: Duration,
    max_write_buffer: usize,
    idle_timeout: Option<Duration>,
    read_timeout: Option<Duration>,
}

const USAGE: &str = "usage: proxy --upstream HOST:PORT [flags]
  --upstream HOST:PORT      where to connect (resolved once, at start-up)
  --port N                  TCP port to listen on (default 8080)
  --reactors N              reactor threads (default 1)
  --accept dedicated|per-reactor
  --mode reactor|runtime    handlers on the reactor threads (default) or on tokio
  --connect-timeout SECS    upstream connect timeout (default 5)
  --write-timeout SECS      a send that makes no progress this long fails (default 30)
  --max-write-buffer BYTES  bytes staged per connection (default 1048576)
  --idle-timeout SECS       close a pair idle this long
  --read-timeout SECS       close a side that sends nothing this long
logging: RUST_LOG (tracing-subscriber EnvFilter syntax), default \"info\"; logs go to stderr";

/// Logs to stderr through `tracing-subscriber`, filtered by `RUST_LOG` (default `info`), so the
/// library's events are seen.
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}\n{USAGE}");
    std::process::exit(2)
}

fn parse_num<T: std::str::FromStr>(flag: &str, v: &str) -> T {
    v.parse()
        .unwrap_or_else(|_| fail(&format!("{flag}: {v:?} is not a valid number")))
}

fn secs(flag: &str, v: &str) -> Duration {
    let s: f64 = parse_num(flag, v);
    if !(s > 0.0 && s <= 86_400.0) {
        fail(&format!("{flag}: {v} is not between 0 and 86400 seconds"));
    }
    Duration::from_secs_f64(s)
}

fn resolve(upstream: &str) -> SocketAddr {
    match upstream.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .unwrap_or_else(|| fail(&format!("--upstream {upstream}: no address"))),
        Err(e) => fail(&format!("--upstream {upstream}: {e}")),
    }
}

impl Args {
    fn parse() -> Args {
        let mut upstream = None;
        let mut a = Args {
            upstream: SocketAddr::from(([127, 0, 0, 1], 0)),
            port: 8080,
            reactors: 1,
            accept: AcceptMode::Dedicated,
            mode: Mode::Reactor,
            connect_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
            max_write_buffer: 1 << 20,
            idle_timeout: None,
            read_timeout: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if flag == "-h" || flag == "--help" {
                println!("{USAGE}");
                std::process::exit(0);
            }
            let v = it
                .next()
                .unwrap_or_else(|| fail(&format!("{flag} needs a value (or unknown flag)")));
            match flag.as_str() {
                "--upstream" => upstream = Some(resolve(&v)),
                "--port" => a.port = parse_num(&flag, &v),
                "--reactors" => a.reactors = parse_num(&flag, &v),
                "--accept" => {
                    a.accept = match v.as_str() {
                        "dedicated" => AcceptMode::Dedicated,
                        "per-reactor" => AcceptMode::PerReactor,
                        _ => fail(&format!("--accept: unknown mode {v:?}")),
                    }
                }
                "--mode" => {
                    a.mode = match v.as_str() {
                        "reactor" => Mode::Reactor,
                        "runtime" => Mode::Runtime,
                        _ => fail(&format!("--mode: unknown mode {v:?}")),
                    }
                }
                "--connect-timeout" => a.connect_timeout = secs(&flag, &v),
                "--write-timeout" => a.write_timeout = secs(&flag, &v),
                "--max-write-buffer" => a.max_write_buffer = parse_num(&flag, &v),
                "--idle-timeout" => a.idle_timeout = Some(secs(&flag, &v)),
                "--read-timeout" => a.read_timeout = Some(secs(&flag, &v)),
                _ => fail(&format!("unknown flag {flag:?}")),
            }
        }
        a.upstream = upstream.unwrap_or_else(|| fail("--upstream is required"));
        a
    }

    fn options(&self) -> EngineOptions {
        let mut reactor = ReactorConfig::default();
        reactor.write_timeout = Some(self.write_timeout);
        reactor.max_write_buffer = self.max_write_buffer;
        apply_read_timeouts(&mut reactor, self);
        let mut opts = EngineOptions::with_port(self.port);
        opts.reactor_count = self.reactors;
        opts.accept_mode = self.accept;
        opts.reactor_configs = vec![reactor];
        opts
    }
}

/// `--idle-timeout` closes a pair whose two connections both stayed silent that long (each
/// connection times out on its own, and the copy loop then closes the other side);
/// `--read-timeout` closes a connection whose read waited that long (a direction with nothing to
/// send counts as waiting: prefer the idle timeout for long-lived, mostly one-way pairs).
fn apply_read_timeouts(reactor: &mut ReactorConfig, args: &Args) {
    reactor.idle_timeout = args.idle_timeout;
    reactor.read_timeout = args.read_timeout;
}

/// What happened to the pairs, reported when the proxy stops.
#[derive(Debug)]
struct Counters {
    done: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    connect_failed: AtomicU64,
    failed: AtomicU64,
    write_timeouts: AtomicU64,
}

static COUNTERS: Counters = Counters {
    done: AtomicU64::new(0),
    bytes_up: AtomicU64::new(0),
    bytes_down: AtomicU64::new(0),
    connect_failed: AtomicU64::new(0),
    failed: AtomicU64::new(0),
    write_timeouts: AtomicU64::new(0),
};

/// Counts `outcome`. The first upstream connect failure is printed (the upstream may be down or
/// misconfigured); later ones, and pairs failing (a reset, a write timeout), are only counted.
fn count(outcome: &Outcome) {
    match outcome {
        Outcome::Done { up, down } => {
            COUNTERS.done.fetch_add(1, Ordering::Relaxed);
            COUNTERS.bytes_up.fetch_add(*up, Ordering::Relaxed);
            COUNTERS.bytes_down.fetch_add(*down, Ordering::Relaxed);
        }
        Outcome::ConnectFailed(e) => {
            if COUNTERS.connect_failed.fetch_add(1, Ordering::Relaxed) == 0 {
                eprintln!("warning: {e} (further failures are only counted)");
            }
        }
        Outcome::Failed(e) => {
            COUNTERS.failed.fetch_add(1, Ordering::Relaxed);
            if matches!(e, Error::TimedOut) {
                COUNTERS.write_timeouts.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM (listening from the moment it is called, inside a
/// tokio runtime).
fn stop_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

fn started(engine: zerg_uring::Result<Engine>, args: &Args) -> Engine {
    match engine {
        Ok(e) => {
            println!(
                "proxying {} -> {} ({} reactor(s), handlers on {}, {:?} accept)",
                e.local_addr(),
                args.upstream,
                args.reactors,
                match args.mode {
                    Mode::Reactor => "the reactor threads",
                    Mode::Runtime => "tokio",
                },
                args.accept,
            );
            e
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

fn main() {
    init_tracing();
    let args = Args::parse();
    let (upstream, timeout) = (args.upstream, args.connect_timeout);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(if args.mode == Mode::Runtime { 2 } else { 1 })
        .enable_all()
        .build()
        .expect("tokio runtime");
    let engine = rt.block_on(async {
        // Listen for signals before the server starts, so none is missed.
        let stop = stop_signal();
        match args.mode {
            Mode::Reactor => {
                let handler = move |client: Connection| async move {
                    count(&proxy(client, zerg_uring::connect_timeout(upstream, timeout)).await);
                };
                let engine = started(Engine::serve(args.options(), handler), &args);
                stop.await;
                engine
            }
            Mode::Runtime => {
                let engine = started(Engine::listen(args.options()), &args);
                tokio::pin!(stop);
                loop {
                    tokio::select! {
                        conn = engine.accept() => match conn {
                            Some(client) => {
                                let up = engine.connect_timeout(upstream, timeout);
                                tokio::spawn(async move { count(&proxy(client, up).await) });
                            }
                            None => break,
                        },
                        _ = &mut stop => break,
                    }
                }
                engine
            }
        }
    });
    engine.shutdown(Duration::from_secs(1));
    let result = engine.join();
    let c = &COUNTERS;
    println!(
        "stopped: {} pairs done ({} B up, {} B down), {} upstream connects failed, {} pairs \
         failed ({} on a write timeout)",
        c.done.load(Ordering::Relaxed),
        c.bytes_up.load(Ordering::Relaxed),
        c.bytes_down.load(Ordering::Relaxed),
        c.connect_failed.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed),
        c.write_timeouts.load(Ordering::Relaxed),
    );
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
