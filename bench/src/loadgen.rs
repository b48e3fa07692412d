//! The load generator: N connections driven by a lean edge-triggered mio loop
//! per thread (one thread by default; the runner pins it to CPU 1).
//!
//! Modes:
//! - `echo`: messages of `--size` bytes, `--depth` in flight per connection
//!   (1 = ping-pong); every echoed byte is checked against a per-connection
//!   pattern, so bytes delivered to the wrong connection are caught.
//! - `http`: `--depth` pipelined `GET /plaintext` requests per connection;
//!   responses are counted by bytes (each is exactly [`proto::RESPONSE`]) and
//!   compared with it.
//! - `churn`: connect, one request, read the response, close (with RST, see
//!   `Worker::close`), again; counts completed connections.
//! - `idle`: open `--conns` connections, print a `ready` event, hold them for
//!   `--duration` seconds, exit.
//!
//! `--rate R` paces `echo`/`http` at R requests/s in total (latency is then
//! measured from the scheduled send time, so a stall is not hidden).
//!
//! Output, one JSON object per line on stdout: `{"event":"measure_start"}` when
//! the warm-up ends, then `{"event":"result",...}` (or `ready` for `idle`).
//! Only completions inside the measured window count.
//!
//! Why mio and not tokio here: with edge-triggered epoll a short read means
//! the socket is drained, so the loop skips the extra read that returns
//! EAGAIN, which saves one syscall per response.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
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
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct LoadResult {
    pub(crate) mode: String,
    pub(crate) conns: usize,
    pub(crate) depth: usize,
    pub(crate) size: usize,
    pub(crate) rate_target: Option<f64>,
    /// Length of the measured window.
    pub(crate) elapsed_s: f64,
    /// Completions (responses, echoed messages, closed connections) in it.
    pub(crate) requests: u64,
    pub(crate) throughput: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    pub(crate) max_us: f64,
    /// Connect failures, resets, wrong bytes (each closes the connection).
    pub(crate) errors: u64,
    /// Connections that were established at some point.
    pub(crate) connected: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Echo,
    Http,
    Churn,
    Idle,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::Http => "http",
            Mode::Churn => "churn",
            Mode::Idle => "idle",
        }
    }
}

#[derive(Clone, Debug)]
struct Opts {
    addr: SocketAddr,
    mode: Mode,
    conns: usize,
    depth: usize,
    size: usize,
    rate: Option<f64>,
    warmup: Duration,
    duration: Duration,
    threads: usize,
}

/// Delay before a failed connection is opened again (no hot loop against a
/// dead server).
const RECONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// Largest histogram value: 60 s in nanoseconds.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

pub(crate) fn main(argv: Vec<String>) -> Result<(), String> {
    let mut a = Args::parse(argv)?;
    let port: u16 = a.req("port")?;
    let mode = match a.req::<String>("mode")?.as_str() {
        "echo" => Mode::Echo,
        "http" => Mode::Http,
        "churn" => Mode::Churn,
        "idle" => Mode::Idle,
        m => return Err(format!("--mode {m:?}: expected echo, http, churn or idle")),
    };
    let opts = Opts {
        addr: (std::net::Ipv4Addr::LOCALHOST, port).into(),
        mode,
        conns: a.req("conns")?,
        depth: a.get("depth", 1)?,
        size: args::size_opt(&mut a, "size", 64)?,
        rate: a.opt("rate")?,
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
    proto::raise_nofile_limit();
    match opts.mode {
        Mode::Idle => idle(&opts),
        _ => timed(opts),
    }
}

fn emit(event: &Event) {
    // stdout is line-buffered: each event reaches the runner at once.
    println!(
        "{}",
        serde_json::to_string(event).expect("events serialize")
    );
}

/// `idle`: open every connection (blocking connects in a plain loop; the
/// handshake completes in the kernel even before the server accepts), report,
/// hold, exit.
fn idle(opts: &Opts) -> Result<(), String> {
    let deadline = Instant::now() + opts.duration;
    let mut held = Vec::with_capacity(opts.conns);
    let mut errors = 0u64;
    while held.len() < opts.conns && Instant::now() < deadline {
        match std::net::TcpStream::connect_timeout(&opts.addr, Duration::from_secs(5)) {
            Ok(s) => held.push(s),
            Err(e) => {
                errors += 1;
                if errors == 1 {
                    eprintln!("loadgen idle: connect: {e}");
                }
                if errors > 100 {
                    return Err(format!("idle: {errors} connect errors, last: {e}"));
                }
                thread::sleep(RECONNECT_BACKOFF);
            }
        }
    }
    emit(&Event::Ready {
        connected: held.len(),
        errors,
    });
    let now = Instant::now();
    thread::sleep(deadline.saturating_duration_since(now));
    Ok(())
}

/// Per-thread measurement, merged by the main thread.
struct Stats {
    hist: Histogram<u64>,
    requests: u64,
    errors: u64,
    connected: u64,
    first_error: Option<String>,
}

impl Stats {
    fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid bounds"),
            requests: 0,
            errors: 0,
            connected: 0,
            first_error: None,
        }
    }

    fn error(&mut self, what: &str, e: &io::Error) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{what}: {e}"));
        }
    }
}

fn timed(opts: Opts) -> Result<(), String> {
    let start = Instant::now();
    let measure_at = start + opts.warmup;
    let end_at = measure_at + opts.duration;
    let (tx, rx) = mpsc::channel::<Result<Stats, String>>();
    let mut handles = Vec::new();
    for t in 0..opts.threads {
        let ids: Vec<usize> = (t..opts.conns).step_by(opts.threads).collect();
        let opts = opts.clone();
        let tx = tx.clone();
        let h = thread::Builder::new()
            .name(format!("loadgen-{t}"))
            .spawn(move || {
                let r = Worker::new(&opts, &ids, measure_at, end_at).and_then(|w| w.run());
                let _ = tx.send(r.map_err(|e| e.to_string()));
            })
            .map_err(|e| format!("spawn: {e}"))?;
        handles.push(h);
    }
    drop(tx);
    thread::sleep(measure_at.saturating_duration_since(Instant::now()));
    emit(&Event::MeasureStart);

    let mut total = Stats::new();
    for r in rx.iter() {
        let s = r?;
        total
            .hist
            .add(&s.hist)
            .map_err(|e| format!("histogram: {e}"))?;
        total.requests += s.requests;
        total.errors += s.errors;
        total.connected += s.connected;
        if total.first_error.is_none() {
            total.first_error = s.first_error;
        }
    }
    for h in handles {
        h.join().map_err(|_| "a load thread panicked".to_string())?;
    }
    if let Some(e) = &total.first_error {
        eprintln!("loadgen: {} errors, first: {e}", total.errors);
    }
    let secs = opts.duration.as_secs_f64();
    let q = |p: f64| total.hist.value_at_quantile(p) as f64 / 1000.0;
    emit(&Event::Result(LoadResult {
        mode: opts.mode.name().to_string(),
        conns: opts.conns,
        depth: opts.depth,
        size: opts.size,
        rate_target: opts.rate,
        elapsed_s: secs,
        requests: total.requests,
        throughput: total.requests as f64 / secs,
        p50_us: q(0.5),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: total.hist.max() as f64 / 1000.0,
        errors: total.errors,
        connected: total.connected,
    }));
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for a reconnect timer.
    Closed,
    /// Non-blocking connect in progress.
    Connecting,
    Open,
}

/// One connection's state machine. Everything it sends is `batch` (its
/// message repeated `depth` times): the unsent bytes are always a suffix of
/// the periodic request stream, so they are found in `batch` without copying.
struct Conn {
    stream: Option<TcpStream>,
    state: State,
    /// The message repeated `depth` times.
    batch: Vec<u8>,
    /// The expected bytes of one response.
    expect: Vec<u8>,
    msg_len: usize,
    /// Bytes queued but not yet written (<= batch.len()).
    unsent: usize,
    /// Stamp of each request in flight (sent or queued), oldest first.
    inflight: VecDeque<Instant>,
    /// Offset inside the response being received.
    expect_off: usize,
    readable: bool,
    writable: bool,
    /// Paced mode: when the next request is due.
    next_send: Option<Instant>,
    timer_armed: bool,
    connect_started: Instant,
    /// Requests queued on this TCP connection (churn sends exactly one).
    queued_on_conn: u64,
}

struct Worker {
    mode: Mode,
    addr: SocketAddr,
    depth: usize,
    period: Option<Duration>,
    poll: Poll,
    conns: Vec<Conn>,
    /// (due, conn index): reconnects and paced sends.
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    rbuf: Vec<u8>,
    measure_at: Instant,
    end_at: Instant,
    stats: Stats,
}

impl Worker {
    fn new(opts: &Opts, ids: &[usize], measure_at: Instant, end_at: Instant) -> io::Result<Self> {
        let period = opts
            .rate
            .map(|r| Duration::from_secs_f64(opts.conns as f64 / r));
        let now = Instant::now();
        let conns = ids
            .iter()
            .map(|&id| {
                let (msg, expect) = match opts.mode {
                    Mode::Echo => {
                        let m = echo_pattern(id, opts.size);
                        (m.clone(), m)
                    }
                    _ => (proto::REQUEST.to_vec(), proto::RESPONSE.to_vec()),
                };
                let depth = if opts.mode == Mode::Churn {
                    1
                } else {
                    opts.depth
                };
                Conn {
                    stream: None,
                    state: State::Closed,
                    batch: msg.repeat(depth),
                    expect,
                    msg_len: msg.len(),
                    unsent: 0,
                    inflight: VecDeque::with_capacity(depth),
                    expect_off: 0,
                    readable: false,
                    writable: false,
                    // Spread the first paced sends over one period.
                    next_send: period.map(|p| now + p.mul_f64(id as f64 / opts.conns as f64)),
                    timer_armed: false,
                    connect_started: now,
                    queued_on_conn: 0,
                }
            })
            .collect();
        let rbuf_len = (opts.size * opts.depth).clamp(16 * 1024, 256 * 1024);
        Ok(Self {
            mode: opts.mode,
            addr: opts.addr,
            depth: if opts.mode == Mode::Churn {
                1
            } else {
                opts.depth
            },
            period,
            poll: Poll::new()?,
            conns,
            timers: BinaryHeap::new(),
            rbuf: vec![0; rbuf_len],
            measure_at,
            end_at,
            stats: Stats::new(),
        })
    }

    fn run(mut self) -> io::Result<Stats> {
        for i in 0..self.conns.len() {
            self.connect(i);
        }
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            if now >= self.end_at {
                break;
            }
            let mut wake = self.end_at;
            if let Some(Reverse((due, _))) = self.timers.peek() {
                wake = wake.min(*due);
            }
            // mio rounds the timeout up to whole milliseconds.
            match self
                .poll
                .poll(&mut events, Some(wake.saturating_duration_since(now)))
            {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for ev in events.iter() {
                let i = ev.token().0;
                let c = &mut self.conns[i];
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    c.readable = true;
                }
                if ev.is_writable() || ev.is_error() {
                    c.writable = true;
                }
                self.on_ready(i);
            }
            let now = Instant::now();
            while let Some(Reverse((due, i))) = self.timers.peek().copied() {
                if due > now {
                    break;
                }
                self.timers.pop();
                self.conns[i].timer_armed = false;
                match self.conns[i].state {
                    State::Closed => self.connect(i),
                    State::Open => self.on_ready(i),
                    State::Connecting => {}
                }
            }
        }
        Ok(self.stats)
    }

    fn connect(&mut self, i: usize) {
        let c = &mut self.conns[i];
        c.connect_started = Instant::now();
        match TcpStream::connect(self.addr) {
            Ok(mut s) => {
                if let Err(e) = self.poll.registry().register(
                    &mut s,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    self.stats.error("register", &e);
                    self.schedule_reconnect(i);
                    return;
                }
                c.stream = Some(s);
                c.state = State::Connecting;
                c.readable = false;
                c.writable = false;
            }
            Err(e) => {
                self.stats.error("connect", &e);
                self.schedule_reconnect(i);
            }
        }
    }

    fn schedule_reconnect(&mut self, i: usize) {
        let c = &mut self.conns[i];
        c.state = State::Closed;
        if !c.timer_armed {
            c.timer_armed = true;
            self.timers
                .push(Reverse((Instant::now() + RECONNECT_BACKOFF, i)));
        }
    }

    /// Closes connection `i`; `error` says whether that was a failure.
    fn close(&mut self, i: usize, error: Option<(&str, io::Error)>) {
        let c = &mut self.conns[i];
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
            if self.mode == Mode::Churn {
                // Abort (RST) instead of FIN: a FIN close leaves each client
                // port in TIME_WAIT for 60 s, and at ~10k connections/s the
                // 28k ephemeral ports run out within seconds, after which
                // every connect() scans the port range (load CPU) or fails.
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            }
        }
        c.unsent = 0;
        c.inflight.clear();
        c.expect_off = 0;
        c.queued_on_conn = 0;
        match error {
            Some((what, e)) => {
                self.stats.error(what, &e);
                self.schedule_reconnect(i);
            }
            None => self.connect(i),
        }
    }

    fn on_ready(&mut self, i: usize) {
        match self.conns[i].state {
            State::Closed => {}
            State::Connecting => {
                let c = &mut self.conns[i];
                let Some(s) = c.stream.as_ref() else { return };
                if !c.writable && !c.readable {
                    return;
                }
                match s.take_error() {
                    Ok(Some(e)) | Err(e) => return self.close(i, Some(("connect", e))),
                    Ok(None) => {}
                }
                match s.peer_addr() {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                        // Spurious wakeup; wait for the next edge.
                        c.writable = false;
                        c.readable = false;
                        return;
                    }
                    Err(e) => return self.close(i, Some(("connect", e))),
                }
                let _ = s.set_nodelay(true);
                c.state = State::Open;
                self.stats.connected += 1;
                self.drive(i);
            }
            State::Open => self.drive(i),
        }
    }

    /// Queues due requests, writes, reads, until nothing moves.
    fn drive(&mut self, i: usize) {
        loop {
            let now = Instant::now();
            let mut moved = false;
            let c = &mut self.conns[i];
            // 1. queue requests up to the depth (and, paced, up to now).
            while c.inflight.len() < self.depth {
                if self.mode == Mode::Churn && c.queued_on_conn > 0 {
                    break;
                }
                let stamp = match (c.next_send.as_mut(), self.period) {
                    (Some(due), Some(period)) => {
                        if *due > now {
                            if !c.timer_armed {
                                c.timer_armed = true;
                                self.timers.push(Reverse((*due, i)));
                            }
                            break;
                        }
                        let s = *due;
                        *due += period;
                        s
                    }
                    _ if self.mode == Mode::Churn => c.connect_started,
                    _ => now,
                };
                c.inflight.push_back(stamp);
                c.unsent += c.msg_len;
                c.queued_on_conn += 1;
            }
            let Some(stream) = c.stream.as_mut() else {
                return;
            };
            // 2. write.
            if c.unsent > 0 && c.writable {
                let from = (c.msg_len - c.unsent % c.msg_len) % c.msg_len;
                match stream.write(&c.batch[from..from + c.unsent]) {
                    Ok(n) => {
                        if n < c.unsent {
                            // Short write: the send buffer is full; wait for
                            // the next writable edge.
                            c.writable = false;
                        }
                        c.unsent -= n;
                        moved = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.writable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => moved = true,
                    Err(e) => return self.close(i, Some(("write", e))),
                }
            }
            // 3. read.
            if c.readable {
                match stream.read(&mut self.rbuf) {
                    Ok(0) => {
                        let e = io::Error::from(io::ErrorKind::UnexpectedEof);
                        return self.close(i, Some(("read", e)));
                    }
                    Ok(n) => {
                        if n < self.rbuf.len() {
                            // Short read: drained; edge-triggered epoll
                            // reports the next arrival.
                            c.readable = false;
                        }
                        let done = match consume(&self.rbuf[..n], &c.expect, &mut c.expect_off) {
                            Ok(done) => done,
                            Err(e) => return self.close(i, Some(("verify", e))),
                        };
                        if done > 0 {
                            let t = Instant::now();
                            let in_window = t >= self.measure_at && t < self.end_at;
                            for _ in 0..done {
                                let Some(sent) = c.inflight.pop_front() else {
                                    let e = io::Error::new(
                                        io::ErrorKind::InvalidData,
                                        "response without a request",
                                    );
                                    return self.close(i, Some(("verify", e)));
                                };
                                if in_window {
                                    self.stats.requests += 1;
                                    let ns = t.saturating_duration_since(sent).as_nanos() as u64;
                                    self.stats.hist.saturating_record(ns.max(1));
                                }
                            }
                            if self.mode == Mode::Churn {
                                return self.close(i, None);
                            }
                        }
                        moved = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.readable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => moved = true,
                    Err(e) => return self.close(i, Some(("read", e))),
                }
            }
            if !moved {
                return;
            }
        }
    }
}

/// Connection `id`'s echo message: a byte pattern whose phase depends on the
/// connection, so bytes echoed to the wrong connection fail verification.
fn echo_pattern(id: usize, size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| ((i + id * 37) as u8).wrapping_mul(131) ^ ((id >> 8) as u8))
        .collect()
}

/// Checks `data` against the expected response stream and returns how many
/// responses it completed.
fn consume(mut data: &[u8], expect: &[u8], off: &mut usize) -> io::Result<usize> {
    let mut done = 0;
    while !data.is_empty() {
        let take = data.len().min(expect.len() - *off);
        if data[..take] != expect[*off..*off + take] {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "received bytes differ from the expected response",
            ));
        }
        *off += take;
        data = &data[take..];
        if *off == expect.len() {
            *off = 0;
            done += 1;
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consume_counts_split_responses() {
        let exp = b"abcd";
        let mut off = 0;
        assert_eq!(consume(b"ab", exp, &mut off).unwrap(), 0);
        assert_eq!(consume(b"cdabcdab", exp, &mut off).unwrap(), 2);
        assert_eq!(off, 2);
        assert!(consume(b"xx", exp, &mut off).is_err());
    }

    #[test]
    fn patterns_differ_between_connections() {
        assert_ne!(echo_pattern(0, 64), echo_pattern(1, 64));
        assert_ne!(echo_pattern(0, 64), echo_pattern(256, 64));
    }

    #[test]
    fn unsent_bytes_are_a_suffix_of_the_batch() {
        // The `from` arithmetic in `drive`: any unsent count <= batch length
        // starts at the right phase of the message.
        let msg = b"0123456789";
        let depth = 3;
        let batch = msg.repeat(depth);
        let stream: Vec<u8> = msg.repeat(10);
        for written in 0..stream.len() {
            let queued = (written / msg.len() + 1).min(10) * msg.len();
            let queued = queued.max(written);
            let unsent = queued - written;
            if unsent == 0 || unsent > batch.len() {
                continue;
            }
            let from = (msg.len() - unsent % msg.len()) % msg.len();
            assert_eq!(&batch[from..from + unsent], &stream[written..queued]);
        }
    }
}
