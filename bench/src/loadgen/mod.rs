//! The load generator: N connections driven from one io_uring per load thread (one thread by
//! default; the runner pins it to the load CPU). It is built to cost the load side less than the
//! cheapest server costs the server side, so that the server is the saturated process:
//!
//! - one `io_uring_enter` submits every send of a round and reaps every completion;
//!   `DEFER_TASKRUN` runs the completion work in one batch, and a throughput run waits for
//!   several completions at once (`--batch`, auto: an eighth of the busy connections, at most
//!   32), so the thread is woken a few times per round instead of once per response;
//! - receives are multishot into a provided-buffer ring (no re-arming, no per-connection
//!   buffer), sends come from request buffers built once (a pipelined batch is one send, no copy
//!   in user space);
//! - responses are checked in place ([`check`]); latency is recorded once per batch of requests
//!   that share a send time (`record_n`), not once per response.
//!
//! Modes (`--mode`):
//! - `echo`: messages of `--size` bytes, `--depth` in flight per connection (1 = ping-pong);
//!   every echoed byte is checked against a per-connection pattern.
//! - `http`: `--depth` pipelined `GET /plaintext` requests per connection; responses checked
//!   against the suite's fixed response, or with `--any-http` parsed as any `200` with a
//!   `Content-Length` (hyper adds headers).
//! - `churn`: `http` with one request per connection (= `--reqs-per-conn 1`).
//! - `idle`: open `--conns` connections, print a `ready` event, hold them for `--duration`
//!   seconds, exit.
//!
//! `--reqs-per-conn K`: close each connection after its K-th response (with RST, see
//! [`worker`]) and open a new one; counts completed connections.
//! `--rate R`: open loop at R requests/s in total: the i-th request is due at `start + i/R` on
//! connection `i mod N`, is sent when due even if earlier ones are unanswered (pipelined), and its
//! latency counts from that intended time, so a stalled server is not hidden by the generator
//! waiting for it (no coordinated omission). Waits use the ring's timeout (microseconds).
//!
//! Output, one JSON object per line on stdout: `{"event":"measure_start"}` when the warm-up ends,
//! then `{"event":"result",...}` (or `ready` for `idle`). Only completions inside the measured
//! window count.

mod check;
mod conn;
mod idle;
mod ring;
mod worker;

use std::net::SocketAddrV4;
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::args::{self, Args};
use crate::proto;

/// What the load generator prints, one JSON object per line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum Event {
    /// The warm-up is over; the measured window starts now.
    MeasureStart,
    /// `idle` mode: all connections are open.
    Ready { connected: usize, errors: u64 },
    /// The measured window is over.
    Result(LoadResult),
}

/// The measurement of one load run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct LoadResult {
    pub(crate) mode: String,
    pub(crate) conns: usize,
    pub(crate) depth: usize,
    pub(crate) size: usize,
    pub(crate) rate_target: Option<f64>,
    /// Length of the measured window.
    pub(crate) elapsed_s: f64,
    /// Completions (responses, echoed messages) in it.
    pub(crate) requests: u64,
    pub(crate) throughput: f64,
    /// Connections closed after their `--reqs-per-conn` responses, in the window.
    pub(crate) conns_completed: u64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    pub(crate) max_us: f64,
    /// Connect failures, resets, wrong bytes (each closes the connection).
    pub(crate) errors: u64,
    /// Connections that were established at some point.
    pub(crate) connected: u64,
    /// CPU time of the load generator itself in the window (getrusage), seconds.
    pub(crate) cpu_s: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Echo,
    Http,
    Idle,
}

/// Options of one load run.
#[derive(Clone, Debug)]
pub(crate) struct Opts {
    pub(crate) addr: SocketAddrV4,
    pub(crate) mode: Mode,
    pub(crate) conns: usize,
    pub(crate) depth: usize,
    pub(crate) size: usize,
    pub(crate) rate: Option<f64>,
    pub(crate) reqs_per_conn: u64,
    pub(crate) any_http: bool,
    /// Completions to wait for at once; 0 = auto.
    pub(crate) batch: usize,
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
    pub(crate) threads: usize,
}

impl Opts {
    fn mode_name(&self) -> &'static str {
        match self.mode {
            Mode::Echo => "echo",
            Mode::Http if self.reqs_per_conn > 0 => "http-conn-cycle",
            Mode::Http => "http",
            Mode::Idle => "idle",
        }
    }
}

/// Largest histogram value: 60 s in nanoseconds.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

pub(crate) fn main(argv: Vec<String>) -> Result<(), String> {
    let opts = parse(argv)?;
    proto::raise_nofile_limit();
    match opts.mode {
        Mode::Idle => idle::run(&opts),
        _ => timed(opts),
    }
}

fn parse(argv: Vec<String>) -> Result<Opts, String> {
    let mut a = Args::parse(argv)?;
    let port: u16 = a.req("port")?;
    let mut reqs_per_conn = a.get("reqs-per-conn", 0u64)?;
    let mode = match a.req::<String>("mode")?.as_str() {
        "echo" => Mode::Echo,
        "http" => Mode::Http,
        "churn" => {
            reqs_per_conn = 1;
            Mode::Http
        }
        "idle" => Mode::Idle,
        m => return Err(format!("--mode {m:?}: expected echo, http, churn or idle")),
    };
    let opts = Opts {
        addr: SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port),
        mode,
        conns: a.req("conns")?,
        depth: a.get("depth", 1)?,
        size: args::size_opt(&mut a, "size", 64)?,
        rate: a.opt("rate")?,
        reqs_per_conn,
        any_http: a.flag("any-http")?,
        batch: a.get("batch", 0)?,
        warmup: Duration::from_secs_f64(a.get("warmup", 1.0)?),
        duration: Duration::from_secs_f64(a.get("duration", 5.0)?),
        threads: a.get("threads", 1)?,
    };
    a.finish()?;
    if opts.conns == 0 || opts.depth == 0 || opts.size == 0 || opts.threads == 0 {
        return Err("--conns, --depth, --size and --threads must be > 0".into());
    }
    if opts.rate.is_some_and(|r| r <= 0.0 || !r.is_finite()) {
        return Err("--rate must be > 0".into());
    }
    if opts.rate.is_some() && opts.reqs_per_conn > 0 {
        return Err("--rate and --reqs-per-conn do not combine".into());
    }
    Ok(opts)
}

pub(crate) fn emit(event: &Event) {
    // stdout is line-buffered: each event reaches the runner at once.
    println!(
        "{}",
        serde_json::to_string(event).expect("events serialize")
    );
}

/// Per-thread measurement, merged by the main thread.
#[derive(Debug)]
pub(crate) struct Stats {
    pub(crate) hist: Histogram<u64>,
    pub(crate) requests: u64,
    pub(crate) conns_completed: u64,
    pub(crate) errors: u64,
    pub(crate) connected: u64,
    /// Sends and receive completions (the whole run, warm-up included).
    pub(crate) sends: u64,
    pub(crate) recvs: u64,
    pub(crate) first_error: Option<String>,
}

impl Stats {
    pub(crate) fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid bounds"),
            requests: 0,
            conns_completed: 0,
            errors: 0,
            connected: 0,
            sends: 0,
            recvs: 0,
            first_error: None,
        }
    }

    pub(crate) fn error(&mut self, what: &str, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{what}: {e}"));
        }
    }

    fn merge(&mut self, s: Stats) -> Result<(), String> {
        self.hist
            .add(&s.hist)
            .map_err(|e| format!("histogram: {e}"))?;
        self.requests += s.requests;
        self.conns_completed += s.conns_completed;
        self.errors += s.errors;
        self.connected += s.connected;
        self.sends += s.sends;
        self.recvs += s.recvs;
        if self.first_error.is_none() {
            self.first_error = s.first_error;
        }
        Ok(())
    }
}

/// Longest time the load threads take to open their connections before the clock starts.
const CONNECT_PHASE: Duration = Duration::from_secs(10);

/// Runs the load threads: every connection is opened first, then the clock starts (warm-up,
/// then the measured window), then the result is printed.
fn timed(opts: Opts) -> Result<(), String> {
    // Two rendezvous of all load threads and this one: "all connected", then "window set".
    let sync = Arc::new(worker::Sync::new(opts.threads + 1));
    let (tx, rx) = mpsc::channel::<Result<Stats, String>>();
    let mut handles = Vec::new();
    for t in 0..opts.threads {
        let ids: Vec<usize> = (t..opts.conns).step_by(opts.threads).collect();
        let opts = opts.clone();
        let tx = tx.clone();
        let sync = sync.clone();
        let h = thread::Builder::new()
            .name(format!("loadgen-{t}"))
            .spawn(move || {
                let connect_by = Instant::now() + CONNECT_PHASE;
                let r = worker::run(&opts, &ids, &sync, connect_by).map_err(|e| e.to_string());
                let _ = tx.send(r);
            })
            .map_err(|e| format!("spawn: {e}"))?;
        handles.push(h);
    }
    drop(tx);
    sync.connected.wait();
    let start = Instant::now();
    let measure_at = start + opts.warmup;
    let end_at = measure_at + opts.duration;
    let _ = sync.window.set(worker::Window {
        start,
        measure_at,
        end_at,
    });
    sync.window_set.wait();
    thread::sleep(measure_at.saturating_duration_since(Instant::now()));
    let cpu0 = ring::process_cpu_s();
    emit(&Event::MeasureStart);

    let mut total = Stats::new();
    let mut cpu1 = None;
    for r in rx.iter() {
        cpu1.get_or_insert_with(ring::process_cpu_s);
        total.merge(r?)?;
    }
    for h in handles {
        h.join().map_err(|_| "a load thread panicked".to_string())?;
    }
    eprintln!(
        "loadgen: {} sends, {} receive completions in the whole run",
        total.sends, total.recvs
    );
    if let Some(e) = &total.first_error {
        eprintln!("loadgen: {} errors, first: {e}", total.errors);
    }
    let secs = opts.duration.as_secs_f64();
    let q = |p: f64| total.hist.value_at_quantile(p) as f64 / 1000.0;
    emit(&Event::Result(LoadResult {
        mode: opts.mode_name().to_string(),
        conns: opts.conns,
        depth: opts.depth,
        size: opts.size,
        rate_target: opts.rate,
        elapsed_s: secs,
        requests: total.requests,
        throughput: total.requests as f64 / secs,
        conns_completed: total.conns_completed,
        p50_us: q(0.5),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: total.hist.max() as f64 / 1000.0,
        errors: total.errors,
        connected: total.connected,
        cpu_s: cpu1.unwrap_or(cpu0) - cpu0,
    }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::servers;

    /// Runs one load thread against `port` for a 0.4 s window (0.1 s warm-up).
    fn drive(port: u16, args: &str) -> Stats {
        let mut opts = parse(argv(&format!("--port {port} {args}"))).unwrap();
        opts.threads = 1;
        let ids: Vec<usize> = (0..opts.conns).collect();
        let sync = worker::Sync::new(2);
        thread::scope(|sc| {
            let h = sc
                .spawn(|| worker::run(&opts, &ids, &sync, Instant::now() + Duration::from_secs(1)));
            sync.connected.wait();
            let start = Instant::now();
            let _ = sync.window.set(worker::Window {
                start,
                measure_at: start + Duration::from_millis(100),
                end_at: start + Duration::from_millis(500),
            });
            sync.window_set.wait();
            h.join().unwrap().unwrap()
        })
    }

    #[test]
    fn drives_every_mode_against_a_real_server_without_errors() {
        let http = servers::tests::start(servers::tokio::main, &["--workload", "http"]);
        let echo = servers::tests::start(
            servers::tokio::main,
            &["--workload", "echo", "--buf-size", "4096"],
        );
        let hyper = servers::tests::start(servers::hyper::main, &[]);
        for (port, args) in [
            (http, "--mode http --conns 8 --depth 16"),
            (http, "--mode http --conns 8 --reqs-per-conn 10"),
            (http, "--mode http --conns 64 --rate 2000"),
            (echo, "--mode echo --conns 4 --size 64"),
            (echo, "--mode echo --conns 2 --size 100000 --depth 2"),
            (hyper, "--mode http --any-http --conns 4 --depth 8"),
        ] {
            let s = drive(port, args);
            assert_eq!(s.errors, 0, "{args}: {:?}", s.first_error);
            assert!(s.requests > 0, "{args}: no request completed");
            assert_eq!(s.hist.len(), s.requests, "{args}: one latency per request");
            if args.contains("reqs-per-conn") {
                assert!(s.conns_completed > 0, "{args}: no connection completed");
            }
            if args.contains("rate") {
                // 2000/s over a 0.4 s window: about 800 requests, not a closed-loop flood.
                assert!((400..1200).contains(&s.requests), "{args}: {}", s.requests);
            }
        }
    }

    #[test]
    fn wrong_bytes_are_errors() {
        // An echo server sends the request back instead of the fixed response, which both
        // HTTP checks reject.
        let echo = servers::tests::start(servers::tokio::main, &["--workload", "echo"]);
        for args in ["--mode http --conns 2", "--mode http --any-http --conns 2"] {
            let s = drive(echo, args);
            assert!(s.errors > 0 && s.requests == 0, "{args}: {s:?}");
            assert!(s.first_error.unwrap().starts_with("verify"));
        }
    }

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options() {
        let o = parse(argv("--port 1 --mode churn --conns 4")).unwrap();
        assert_eq!((o.mode, o.reqs_per_conn), (Mode::Http, 1));
        assert!(parse(argv("--port 1 --mode http --conns 0")).is_err());
        assert!(
            parse(argv(
                "--port 1 --mode http --conns 1 --rate 5 --reqs-per-conn 2"
            ))
            .is_err()
        );
        assert!(parse(argv("--port 1 --mode x --conns 1")).is_err());
    }
}
