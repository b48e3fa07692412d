//! A TCP proxy: every accepted connection gets its own connection to the upstream, and bytes are
//! copied both ways with half-close — when one side sends FIN, the other side's write half is
//! shut down after everything before it was sent; the pair closes once both directions ended,
//! and an error on either side closes both. The copy loop is in `proxy_copy`.
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
//! Timeouts: the common ones apply to each connection of a pair — `--idle-timeout` (default
//! 75 s) closes a connection that sent and received nothing that long, and the copy loop then
//! closes the other side; `--read-timeout` (default off) closes one whose read waited that long
//! (a direction with nothing to send counts as waiting: prefer the idle timeout for long-lived,
//! mostly one-way pairs); `--write-timeout` (30 s) drops a side that takes no bytes.
//!
//! Flags (`--help`): --upstream HOST:PORT (required, resolved once at start-up),
//! --connect-timeout SECS (5), --max-write-buffer BYTES (1 MiB), and the common ones: --port,
//! --reactors, --recv-buffer-size, --buffer-ring-entries, --incremental, --mode reactor|runtime,
//! --accept per-reactor|dedicated, --workers, --sqpoll, --max-connections, --write-timeout,
//! --read-timeout, --idle-timeout. SIGINT/SIGTERM stop it.

mod common;
mod proxy_copy;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Args, Kind, Mode};
use proxy_copy::{Outcome, proxy};
use zerg_uring::{Connection, Engine, Error};

const PROXY_USAGE: &str = "proxy flags:
  --upstream HOST:PORT      where to connect (required; resolved once, at start-up)
  --connect-timeout SECS    upstream connect timeout (default 5)
  --max-write-buffer BYTES  bytes staged per connection (default 1048576)";

/// The proxy's own flags.
struct ProxyArgs {
    upstream: Option<SocketAddr>,
    connect_timeout: Duration,
    max_write_buffer: usize,
}

fn resolve(upstream: &str) -> Result<SocketAddr, lexopt::Error> {
    let mut addrs = upstream
        .to_socket_addrs()
        .map_err(|e| format!("--upstream {upstream}: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("--upstream {upstream}: no address").into())
}

impl ProxyArgs {
    /// Takes `flag` if it is one of the proxy's.
    fn take(&mut self, flag: &str, p: &mut lexopt::Parser) -> Result<bool, lexopt::Error> {
        use lexopt::ValueExt;
        match flag {
            "upstream" => self.upstream = Some(resolve(&p.value()?.string()?)?),
            "connect-timeout" => {
                let s: f64 = p.value()?.parse()?;
                if !(s > 0.0 && s <= 86_400.0) {
                    return Err(format!("--connect-timeout {s}: not in (0, 86400] seconds").into());
                }
                self.connect_timeout = Duration::from_secs_f64(s);
            }
            "max-write-buffer" => match p.value()?.parse()? {
                0 => return Err("--max-write-buffer must be at least 1".into()),
                n => self.max_write_buffer = n,
            },
            _ => return Ok(false),
        }
        Ok(true)
    }
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

/// Counts `outcome`. The first upstream connect failure is logged (the upstream may be down or
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
                tracing::warn!(error = %e, "upstream connect failed (later ones are only counted)");
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

fn main() {
    let mut own = ProxyArgs {
        upstream: None,
        connect_timeout: Duration::from_secs(5),
        max_write_buffer: common::MAX_WRITE_BUFFER,
    };
    let args = Args::parse_with(Kind::Tcp, PROXY_USAGE, |flag, p| own.take(flag, p));
    let Some(upstream) = own.upstream else {
        eprintln!(
            "error: --upstream HOST:PORT is required\n{}",
            common::usage(Kind::Tcp, PROXY_USAGE)
        );
        std::process::exit(2);
    };
    let timeout = own.connect_timeout;
    let mut options = args.options();
    for rc in &mut options.reactor_configs {
        rc.max_write_buffer = own.max_write_buffer;
    }
    tracing::info!(%upstream, ?timeout, "proxying");
    match args.mode {
        Mode::Reactor => {
            let handler = move |client: Connection| async move {
                count(&proxy(client, zerg_uring::connect_timeout(upstream, timeout)).await);
            };
            common::run_reactor(&args, || Engine::serve(options, handler));
        }
        Mode::Runtime => common::run_runtime(
            &args,
            || Engine::listen(options),
            |engine, client| {
                let up = engine.connect_timeout(upstream, timeout);
                tokio::spawn(async move { count(&proxy(client, up).await) });
            },
        ),
    }
    let c = &COUNTERS;
    println!(
        "{} pairs done ({} B up, {} B down), {} upstream connects failed, {} pairs failed ({} on \
         a write timeout)",
        c.done.load(Ordering::Relaxed),
        c.bytes_up.load(Ordering::Relaxed),
        c.bytes_down.load(Ordering::Relaxed),
        c.connect_failed.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed),
        c.write_timeouts.load(Ordering::Relaxed),
    );
}
