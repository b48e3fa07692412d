//! One load thread: its connections, driven from one io_uring.
//!
//! Every request buffer is built once and leaked (`&'static`, see [`super::ring`]): a
//! connection's requests are its message repeated, so whatever it still has to send is a slice
//! of that buffer starting at the current phase of the message, whatever was sent before.
//!
//! Closing: a connection that is done (`--reqs-per-conn`) or failed is closed with RST
//! (SO_LINGER 0). A FIN close would leave each client port in TIME_WAIT for 60 s, and at
//! 10–20k connections/s the 28k ephemeral ports run out within seconds, after which connect()
//! either fails or scans the port range and the generator measures itself. Its multishot
//! receive is cancelled first (a pending request holds the socket open), and its completions,
//! which may still arrive, are recognised by the connection's generation and ignored (their
//! receive buffers go back to the ring).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Barrier, OnceLock};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use super::check::Expect;
use super::conn::{
    Conn, OP_CANCEL, OP_CONNECT, OP_RECV, OP_SEND, State, echo_pattern, split, user_data,
};
use super::ring::{Cqe, Ring};
use super::{Mode, Opts, Stats};
use crate::proto;

/// The time frame of a run, shared by all threads.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub(crate) start: Instant,
    pub(crate) measure_at: Instant,
    pub(crate) end_at: Instant,
}

/// The rendezvous of the load threads and the main thread: every thread opens its connections,
/// then the main thread sets the window (so connection set-up is outside warm-up and window).
#[derive(Debug)]
pub(crate) struct Sync {
    pub(crate) connected: Barrier,
    pub(crate) window: OnceLock<Window>,
    pub(crate) window_set: Barrier,
}

impl Sync {
    pub(crate) fn new(parties: usize) -> Self {
        Self {
            connected: Barrier::new(parties),
            window: OnceLock::new(),
            window_set: Barrier::new(parties),
        }
    }
}

/// Delay before a failed connection is opened again (no hot loop against a dead server).
const RECONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// Longest wait for a batch of several completions (a slow server then costs at most this).
const BATCH_WAIT: Duration = Duration::from_millis(1);
/// Open loop: most requests one send carries (more stay queued for the next).
const OPEN_LOOP_BATCH: usize = 64;

struct Worker<'a> {
    opts: &'a Opts,
    ring: Ring,
    conns: Vec<Conn>,
    win: Window,
    /// The window is set: requests flow.
    started: bool,
    stats: Stats,
    /// Connections with something to submit.
    dirty: Vec<usize>,
    /// (due, connection): reconnects.
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Open connections with requests in flight (sizes the completion batch).
    busy: usize,
    /// Open loop: time between two requests, the next one's due time and connection.
    interval: Option<Duration>,
    next_due: Instant,
    /// This thread's first request is due this long after the start.
    offset: Duration,
    next_conn: usize,
}

/// Opens connections `ids` (until `connect_by` at most), waits for the window, runs the load
/// until it ends. Meets the other threads at both rendezvous whatever fails.
pub(crate) fn run(
    opts: &Opts,
    ids: &[usize],
    sync: &Sync,
    connect_by: Instant,
) -> io::Result<Stats> {
    let mut w = prepare(opts, ids, connect_by);
    let connected = match &mut w {
        Ok(w) => w.connect_all(),
        Err(_) => Ok(()),
    };
    sync.connected.wait();
    sync.window_set.wait();
    let mut w = w?;
    connected?;
    let win = *sync.window.get().expect("the main thread sets the window");
    w.win = win;
    w.next_due = win.start + w.offset;
    w.start();
    w.run()?;
    Ok(w.stats)
}

fn prepare<'a>(opts: &'a Opts, ids: &[usize], connect_by: Instant) -> io::Result<Worker<'a>> {
    let depth = opts.depth;
    let qcap = if opts.rate.is_some() {
        OPEN_LOOP_BATCH
    } else {
        depth
    };
    // One shared request buffer for HTTP; a pattern per connection for echo.
    let http_batch: &'static [u8] = Box::leak(proto::REQUEST.repeat(qcap).into_boxed_slice());
    let conns: Vec<Conn> = ids
        .iter()
        .map(|&id| {
            let (batch, msg_len, expect) = match opts.mode {
                Mode::Echo => {
                    let b: &'static [u8] =
                        Box::leak(echo_pattern(id, opts.size).repeat(qcap).into_boxed_slice());
                    (b, opts.size, Expect::Stream(&b[..opts.size]))
                }
                _ => {
                    let e = if opts.any_http {
                        Expect::Http
                    } else {
                        Expect::Stream(proto::RESPONSE)
                    };
                    (http_batch, proto::REQUEST.len(), e)
                }
            };
            Conn::new(batch, msg_len, expect, qcap)
        })
        .collect();
    let n = conns.len().max(1);
    let buf_size = (opts.size * depth)
        .next_power_of_two()
        .clamp(4096, 64 * 1024);
    let max_bufs = (64 << 20) / buf_size;
    let count = (2 * n).next_power_of_two().clamp(64, 8192).min(max_bufs);
    let sq = (2 * n).next_power_of_two().clamp(64, 4096) as u32;
    let cq = (4 * n).next_power_of_two().clamp(1024, 65536) as u32;
    let ring = Ring::new(sq, cq, count as u16, buf_size as u32, opts.addr)?;
    // Until the window is known, `end_at` bounds the connect phase.
    let connect_win = Window {
        start: connect_by,
        measure_at: connect_by,
        end_at: connect_by,
    };
    let interval = opts
        .rate
        .map(|r| Duration::from_secs_f64(opts.conns as f64 / r / n as f64));
    // Threads interleave: thread t's first request is due t/R after the start.
    let offset = opts
        .rate
        .map(|r| Duration::from_secs_f64(ids.first().copied().unwrap_or(0) as f64 / r))
        .unwrap_or_default();
    Ok(Worker {
        opts,
        ring,
        conns,
        win: connect_win,
        started: false,
        stats: Stats::new(),
        dirty: Vec::with_capacity(n),
        timers: BinaryHeap::new(),
        busy: 0,
        interval,
        next_due: connect_by,
        offset,
        next_conn: 0,
    })
}

impl Worker<'_> {
    /// Keep-alive loads send one request per connection before the clock starts and wait for
    /// its response: the kernel completes a handshake before the server accepts, so only an
    /// answer shows that the server holds the connection (4,096 accepts are not free). Loads
    /// that cycle connections measure their set-up anyway.
    fn primes(&self) -> bool {
        self.opts.reqs_per_conn == 0
    }

    fn ready(&self, c: &Conn) -> bool {
        c.state == State::Open && (!self.primes() || (c.done_on_conn > 0 && c.inflight_n == 0))
    }

    /// Opens (and primes) every connection, until `win.end_at` at most (connections still
    /// failing then are retried during the run).
    fn connect_all(&mut self) -> io::Result<()> {
        for i in 0..self.conns.len() {
            self.connect(i);
        }
        let mut cqes: Vec<Cqe> = Vec::with_capacity(4096);
        while self.conns.iter().any(|c| !self.ready(c)) {
            let now = Instant::now();
            if now >= self.win.end_at {
                break;
            }
            self.fire_timers(now);
            while let Some(i) = self.dirty.pop() {
                self.pump(i);
            }
            let wake = self
                .timers
                .peek()
                .map_or(self.win.end_at, |Reverse((due, _))| *due)
                .min(self.win.end_at);
            cqes.clear();
            self.ring
                .wait(1, wake.saturating_duration_since(now), &mut cqes)?;
            let now = Instant::now();
            for c in &cqes {
                self.complete(c, now);
            }
            self.ring.publish();
        }
        Ok(())
    }

    /// The window is set: every open connection gets its requests.
    fn start(&mut self) {
        self.started = true;
        let now = Instant::now();
        for i in 0..self.conns.len() {
            if self.conns[i].state == State::Open {
                self.refill(i, now);
                self.mark(i);
            }
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((due, i))) = self.timers.peek().copied() {
            if due > now {
                break;
            }
            self.timers.pop();
            self.conns[i].timer_armed = false;
            if self.conns[i].state == State::Closed {
                self.connect(i);
            }
        }
    }

    fn run(&mut self) -> io::Result<()> {
        let mut cqes: Vec<Cqe> = Vec::with_capacity(4096);
        loop {
            let now = Instant::now();
            if now >= self.win.end_at {
                return Ok(());
            }
            if let Some(iv) = self.interval {
                while self.next_due <= now {
                    let i = self.next_conn;
                    self.next_conn = (i + 1) % self.conns.len();
                    self.queue(i, self.next_due, 1);
                    self.next_due += iv;
                }
            }
            self.fire_timers(now);
            while let Some(i) = self.dirty.pop() {
                self.pump(i);
            }
            let mut deadline = self.win.end_at;
            if self.interval.is_some() {
                deadline = deadline.min(self.next_due);
            }
            if let Some(Reverse((due, _))) = self.timers.peek() {
                deadline = deadline.min(*due);
            }
            let want = self.want();
            let mut timeout = deadline.saturating_duration_since(now);
            if want > 1 {
                timeout = timeout.min(BATCH_WAIT);
            }
            cqes.clear();
            self.ring.wait(want, timeout, &mut cqes)?;
            let now = Instant::now();
            for c in &cqes {
                self.complete(c, now);
            }
            self.ring.publish();
        }
    }

    /// Completions to wait for at once.
    fn want(&self) -> usize {
        if self.opts.batch > 0 {
            return self.opts.batch.min(self.busy.max(1));
        }
        if self.interval.is_some() {
            return 1;
        }
        (self.busy / 8).clamp(1, 32)
    }

    fn mark(&mut self, i: usize) {
        self.dirty.push(i);
    }

    fn connect(&mut self, i: usize) {
        let sock = match Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)) {
            Ok(s) => s,
            Err(e) => return self.fail(i, "socket", e),
        };
        let _ = sock.set_tcp_nodelay(true);
        let c = &mut self.conns[i];
        let ud = user_data(i, c.generation, OP_CONNECT);
        if let Err(e) = self.ring.connect(sock.as_raw_fd(), ud) {
            return self.fail(i, "connect", e);
        }
        let c = &mut self.conns[i];
        c.sock = Some(sock);
        c.state = State::Connecting;
    }

    /// A failed connection: count it, close it, reopen it after a back-off.
    fn fail(&mut self, i: usize, what: &str, e: impl std::fmt::Display) {
        self.stats.error(what, e);
        self.close(i);
        let c = &mut self.conns[i];
        if !c.timer_armed {
            c.timer_armed = true;
            self.timers
                .push(Reverse((Instant::now() + RECONNECT_BACKOFF, i)));
        }
    }

    /// Closes connection `i` with RST and forgets its requests.
    fn close(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if let Some(sock) = c.sock.take() {
            let g = c.generation;
            if c.recv_armed {
                let _ = self
                    .ring
                    .cancel(user_data(i, g, OP_RECV), user_data(i, g, OP_CANCEL));
            }
            if c.state == State::Connecting {
                let _ = self
                    .ring
                    .cancel(user_data(i, g, OP_CONNECT), user_data(i, g, OP_CANCEL));
            }
            let _ = sock.set_linger(Some(Duration::ZERO));
            drop(sock);
        }
        if c.state == State::Open && c.inflight_n > 0 {
            self.busy -= 1;
        }
        c.generation = c.generation.wrapping_add(1);
        c.state = State::Closed;
        c.phase = 0;
        c.unsent = 0;
        c.sending = 0;
        c.recv_armed = false;
        c.inflight.clear();
        c.inflight_n = 0;
        c.checker.reset();
        c.queued_on_conn = 0;
        c.done_on_conn = 0;
    }

    /// Queues `k` requests stamped `stamp` on connection `i`.
    fn queue(&mut self, i: usize, stamp: Instant, k: u32) {
        let c = &mut self.conns[i];
        if c.state == State::Open && c.inflight_n == 0 {
            self.busy += 1;
        }
        c.unsent += c.msg_len * k as usize;
        c.inflight_n += k as usize;
        c.queued_on_conn += u64::from(k);
        match c.inflight.back_mut() {
            Some((t, n)) if *t == stamp => *n += k,
            _ => c.inflight.push_back((stamp, k)),
        }
        self.mark(i);
    }

    /// Closed loop: tops connection `i` up to the depth (within `--reqs-per-conn`).
    fn refill(&mut self, i: usize, now: Instant) {
        if self.interval.is_some() || !self.started {
            return;
        }
        let c = &self.conns[i];
        let mut k = self.opts.depth.saturating_sub(c.inflight_n) as u64;
        if self.opts.reqs_per_conn > 0 {
            k = k.min(self.opts.reqs_per_conn - c.queued_on_conn);
        }
        if k > 0 {
            self.queue(i, now, k as u32);
        }
    }

    /// Submits what connection `i` has to send, and re-arms its receive.
    fn pump(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if c.state != State::Open {
            return;
        }
        let Some(fd) = c.sock.as_ref().map(|s| s.as_raw_fd()) else {
            return;
        };
        let g = c.generation;
        if !c.recv_armed {
            c.recv_armed = true;
            if let Err(e) = self.ring.recv_multishot(fd, user_data(i, g, OP_RECV)) {
                return self.fail(i, "recv", e);
            }
        }
        let c = &mut self.conns[i];
        if c.sending == 0 && c.unsent > 0 {
            let batch: &'static [u8] = c.batch;
            let len = c.unsent.min(batch.len() - c.phase);
            let buf = &batch[c.phase..c.phase + len];
            c.sending = len;
            c.unsent -= len;
            self.stats.sends += 1;
            if let Err(e) = self.ring.send(fd, buf, user_data(i, g, OP_SEND)) {
                self.fail(i, "send", e);
            }
        }
    }

    fn complete(&mut self, cqe: &Cqe, now: Instant) {
        let (i, g, op) = split(cqe.user_data);
        let current = self
            .conns
            .get(i)
            .is_some_and(|c| c.generation & 0xff_ffff == g);
        if op == OP_RECV {
            self.on_recv(i, current, cqe, now);
            return;
        }
        if !current {
            return;
        }
        match op {
            OP_CONNECT => self.on_connect(i, cqe.result, now),
            OP_SEND => self.on_send(i, cqe.result),
            _ => {}
        }
    }

    fn on_connect(&mut self, i: usize, res: i32, now: Instant) {
        if res < 0 {
            return self.fail(i, "connect", io::Error::from_raw_os_error(-res));
        }
        self.stats.connected += 1;
        let c = &mut self.conns[i];
        c.state = State::Open;
        if c.inflight_n > 0 {
            // Open loop: requests came due while connecting.
            self.busy += 1;
        }
        if !self.started && self.primes() {
            self.queue(i, now, 1);
        }
        self.refill(i, now);
        self.mark(i);
    }

    fn on_send(&mut self, i: usize, res: i32) {
        if res < 0 {
            return self.fail(i, "send", io::Error::from_raw_os_error(-res));
        }
        let c = &mut self.conns[i];
        let n = res as usize;
        c.phase = (c.phase + n) % c.msg_len;
        c.unsent += c.sending - n.min(c.sending);
        c.sending = 0;
        self.pump(i);
    }

    fn on_recv(&mut self, i: usize, current: bool, cqe: &Cqe, now: Instant) {
        let res = cqe.result;
        self.stats.recvs += 1;
        let mut verdict: Result<usize, String> = Ok(0);
        if let Some(bid) = cqe.buffer() {
            if current && res > 0 {
                let data = self.ring.data(bid, res as usize);
                let c = &mut self.conns[i];
                verdict = c.checker.feed(c.expect, data);
            }
            self.ring.give_back(bid);
        }
        if !current {
            return;
        }
        if !cqe.more() {
            self.conns[i].recv_armed = false;
        }
        match res {
            r if r > 0 => match verdict {
                Ok(0) => {}
                Ok(done) => self.on_responses(i, done, now),
                Err(e) => return self.fail(i, "verify", e),
            },
            0 => return self.fail(i, "read", "connection closed by the server"),
            r if r == -libc::ENOBUFS => {}
            r => return self.fail(i, "read", io::Error::from_raw_os_error(-r)),
        }
        if !self.conns[i].recv_armed && self.conns[i].state == State::Open {
            self.mark(i);
        }
    }

    /// `done` responses completed on connection `i` at `now`.
    fn on_responses(&mut self, i: usize, done: usize, now: Instant) {
        let in_window = now >= self.win.measure_at && now < self.win.end_at;
        let c = &mut self.conns[i];
        if done > c.inflight_n {
            return self.fail(i, "verify", "response without a request");
        }
        let mut left = done;
        while left > 0 {
            let Some((sent, n)) = c.inflight.front_mut() else {
                break;
            };
            let m = (*n as usize).min(left);
            if in_window {
                let ns = now.saturating_duration_since(*sent).as_nanos() as u64;
                self.stats.hist.saturating_record_n(ns.max(1), m as u64);
                self.stats.requests += m as u64;
            }
            *n -= m as u32;
            if *n == 0 {
                c.inflight.pop_front();
            }
            left -= m;
        }
        c.inflight_n -= done;
        c.done_on_conn += done as u64;
        if c.inflight_n == 0 {
            self.busy -= 1;
        }
        let cycle = self.opts.reqs_per_conn;
        if cycle > 0 && c.done_on_conn >= cycle {
            if in_window {
                self.stats.conns_completed += 1;
            }
            self.close(i);
            self.connect(i);
            return;
        }
        self.refill(i, now);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn any_phase_of_the_stream_is_a_slice_of_the_batch() {
        // What `pump` relies on: from any phase, the next bytes of the periodic stream are
        // batch[phase..], for as long as the batch lasts.
        let msg = b"0123456789";
        let batch = msg.repeat(3);
        let stream = msg.repeat(10);
        for sent in 0..stream.len() - batch.len() {
            let phase = sent % msg.len();
            let avail = batch.len() - phase;
            assert_eq!(&batch[phase..], &stream[sent..sent + avail]);
        }
    }
}
