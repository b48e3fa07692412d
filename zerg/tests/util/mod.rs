//! Test harness: real engines on 127.0.0.1:0, handlers in either mode, blocking std clients.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zerg_uring::{Connection, Engine, EngineOptions, ReactorConfig};

/// Where handlers run in a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// On a tokio runtime (`Engine::listen` + `accept`).
    Runtime,
    /// On the reactor threads (`Engine::serve`).
    Reactor,
}

/// Options for a loopback engine with small buffers.
///
/// `ZERG_TEST_DIRECT_DESCRIPTORS=1` turns on `direct_descriptors` and
/// `ZERG_TEST_SEND_ZEROCOPY=N` sets `send_zerocopy_threshold`, so the whole suite can run on
/// those paths (`ZERG_TEST_DIRECT_DESCRIPTORS=1 cargo test`).
pub fn options(reactors: usize, incremental: bool) -> EngineOptions {
    let mut rc = ReactorConfig::default();
    rc.buffer_ring_entries = 256;
    rc.recv_buffer_size = 4096;
    rc.ring_entries = 256;
    rc.incremental_buffer_consumption = incremental;
    rc.direct_descriptors = std::env::var("ZERG_TEST_DIRECT_DESCRIPTORS").is_ok_and(|v| v == "1");
    rc.send_zerocopy_threshold = std::env::var("ZERG_TEST_SEND_ZEROCOPY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut o = EngineOptions::with_port(0);
    o.ip = "127.0.0.1".parse().unwrap();
    o.reactor_count = reactors;
    o.reactor_configs = vec![rc];
    o
}

/// A running engine plus, in runtime mode, the tokio runtime driving its handlers.
pub struct TestServer {
    pub engine: Option<Arc<Engine>>,
    pub addr: SocketAddr,
    rt: Option<tokio::runtime::Runtime>,
}

impl TestServer {
    /// Starts `opts` with `handler` run for every connection in `mode`.
    pub fn start<H, F>(mode: Mode, opts: EngineOptions, handler: H) -> TestServer
    where
        H: Fn(Connection) -> F + Send + Sync + Clone + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        Self::try_start(mode, opts, handler).expect("engine starts")
    }

    /// Like [`start`](Self::start), returning the engine's start-up error instead of panicking.
    pub fn try_start<H, F>(
        mode: Mode,
        opts: EngineOptions,
        handler: H,
    ) -> zerg_uring::Result<TestServer>
    where
        H: Fn(Connection) -> F + Send + Sync + Clone + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        Ok(match mode {
            Mode::Runtime => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                let engine = Arc::new(Engine::listen(opts)?);
                let addr = engine.local_addr();
                let e = engine.clone();
                rt.spawn(async move {
                    while let Some(conn) = e.accept().await {
                        tokio::spawn(handler(conn));
                    }
                });
                TestServer {
                    engine: Some(engine),
                    addr,
                    rt: Some(rt),
                }
            }
            Mode::Reactor => {
                let engine = Arc::new(Engine::serve(opts, handler)?);
                let addr = engine.local_addr();
                TestServer {
                    engine: Some(engine),
                    addr,
                    rt: None,
                }
            }
        })
    }

    /// Wraps an engine the test started itself (e.g. with `Engine::serve_with_state`).
    pub fn from_engine(engine: Engine) -> TestServer {
        let addr = engine.local_addr();
        TestServer {
            engine: Some(Arc::new(engine)),
            addr,
            rt: None,
        }
    }

    pub fn engine(&self) -> &Engine {
        self.engine.as_ref().unwrap()
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    /// Waits until `pred` holds for the engine's stats, or panics after `timeout`.
    pub fn wait_stats(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&zerg_uring::EngineStats) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.engine().stats();
            if pred(&s) {
                return;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; stats: {s:#?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until no connection is live and every buffer is back in the ring.
    pub fn assert_quiescent(&self) {
        self.wait_stats(
            Duration::from_secs(5),
            "no connections and all buffers free",
            |s| {
                let t = s.total();
                t.connections == 0 && t.buffers_free == t.buffers_total
            },
        );
    }

    /// Stops the engine and joins its threads; panics if it failed.
    pub fn stop(mut self) {
        let engine = self.engine.take().unwrap();
        engine.stop();
        let engine = wait_unique(engine);
        engine.join().expect("engine ran without failure");
        drop(self.rt.take());
    }

    /// Joins the engine after the test stopped or shut it down itself (the handler runtime
    /// keeps running meanwhile).
    pub fn join(&mut self) -> zerg_uring::Result<()> {
        wait_unique(self.engine.take().expect("engine not joined yet")).join()
    }
}

fn wait_unique(mut engine: Arc<Engine>) -> Engine {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Arc::try_unwrap(engine) {
            Ok(e) => return e,
            Err(e) => {
                assert!(Instant::now() < deadline, "engine still shared after stop");
                engine = e;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(e) = self.engine.take() {
            e.stop();
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// Echo handler: writes back every byte it reads.
pub async fn echo(mut conn: Connection) {
    loop {
        let snap = conn.read().await;
        if snap.is_closed() {
            return;
        }
        for b in snap.buffers() {
            if conn.write(b).is_err() {
                return;
            }
        }
        drop(snap);
        if conn.flush().await.is_err() {
            return;
        }
    }
}

/// Writes `data` and reads back exactly as many bytes.
pub fn roundtrip(s: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    s.write_all(data).unwrap();
    let mut out = vec![0; data.len()];
    s.read_exact(&mut out).unwrap();
    out
}

/// Deterministic pseudo-random bytes, different per `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Small xorshift generator: reproducible randomness without a dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A tagged stream: 16-byte blocks `[id: u64 LE][seq: u64 LE]`, so a byte that belongs to
/// another stream (or another position) is detected exactly.
pub fn tagged(id: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 16);
    let mut seq = 0u64;
    while v.len() < len {
        v.extend_from_slice(&id.to_le_bytes());
        v.extend_from_slice(&seq.to_le_bytes());
        seq += 1;
    }
    v.truncate(len);
    v
}

/// Panics with the first differing offset (and both bytes around it) if `got != want`.
pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let end = |v: &[u8]| (first + 16).min(v.len());
    panic!(
        "{what}: {} bytes received, {} expected, first difference at offset {first}: got {:02x?}, want {:02x?}",
        got.len(),
        want.len(),
        &got[first.min(got.len())..end(got)],
        &want[first.min(want.len())..end(want)],
    );
}

/// Connects with `SO_RCVBUF` set before the handshake (so the window starts small).
pub fn connect_small_rcvbuf(addr: SocketAddr, rcvbuf: usize) -> TcpStream {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .unwrap();
    s.set_recv_buffer_size(rcvbuf).unwrap();
    s.connect(&addr.into()).expect("connect");
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Closes `s` with a reset (`SO_LINGER` 0): the peer sees `ECONNRESET`, not a FIN.
pub fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

/// Threads of this process whose name starts with `prefix` (`/proc/self/task/*/comm`).
pub fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Waits up to `timeout` for `pred`; returns whether it held.
pub fn wait_until(timeout: Duration, mut pred: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pred() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

// ---------------------------------------------------------------------------------------------
// A runtime-independent timer: `sleep` works in tokio tasks and on the reactor's local executor
// alike (the wake comes from another thread, as a real timer's would); `drop_later` hands a value
// (a read snapshot, say) to the timer thread, which drops it at the deadline: buffers then return
// out of order and from a foreign thread.

mod timer {
    use std::collections::BinaryHeap;
    use std::sync::{Arc, Condvar, Mutex, OnceLock};
    use std::task::Waker;
    use std::time::Instant;

    pub(super) enum Action {
        Wake(Arc<Mutex<(bool, Option<Waker>)>>),
        Drop(#[allow(dead_code)] Box<dyn Send>),
    }

    pub(super) struct Entry {
        pub(super) at: Instant,
        pub(super) seq: u64,
        pub(super) action: Action,
    }

    impl PartialEq for Entry {
        fn eq(&self, o: &Self) -> bool {
            (self.at, self.seq) == (o.at, o.seq)
        }
    }
    impl Eq for Entry {}
    impl PartialOrd for Entry {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    impl Ord for Entry {
        // Reversed: the heap's top is the earliest deadline.
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            (o.at, o.seq).cmp(&(self.at, self.seq))
        }
    }

    pub(super) struct Timer {
        pub(super) heap: Mutex<(BinaryHeap<Entry>, u64)>,
        pub(super) cv: Condvar,
    }

    pub(super) fn get() -> &'static Timer {
        static TIMER: OnceLock<&'static Timer> = OnceLock::new();
        TIMER.get_or_init(|| {
            let t: &'static Timer = Box::leak(Box::new(Timer {
                heap: Mutex::new((BinaryHeap::new(), 0)),
                cv: Condvar::new(),
            }));
            std::thread::Builder::new()
                .name("test-timer".into())
                .spawn(move || run(t))
                .unwrap();
            t
        })
    }

    pub(super) fn add(at: Instant, action: Action) {
        let t = get();
        let mut g = t.heap.lock().unwrap();
        g.1 += 1;
        let seq = g.1;
        g.0.push(Entry { at, seq, action });
        drop(g);
        t.cv.notify_one();
    }

    fn run(t: &'static Timer) {
        let mut g = t.heap.lock().unwrap();
        loop {
            let now = Instant::now();
            match g.0.peek() {
                Some(e) if e.at <= now => {
                    let e = g.0.pop().unwrap();
                    drop(g);
                    match e.action {
                        Action::Wake(state) => {
                            let w = {
                                let mut s = state.lock().unwrap();
                                s.0 = true;
                                s.1.take()
                            };
                            if let Some(w) = w {
                                w.wake();
                            }
                        }
                        Action::Drop(v) => drop(v),
                    }
                    g = t.heap.lock().unwrap();
                }
                Some(e) => {
                    let d = e.at - now;
                    g = t.cv.wait_timeout(g, d).unwrap().0;
                }
                None => g = t.cv.wait(g).unwrap(),
            }
        }
    }
}

/// Whether a [`Sleep`] fired, and the waker to call when it does.
type SleepState = Arc<std::sync::Mutex<(bool, Option<std::task::Waker>)>>;

/// Future of [`sleep`].
pub struct Sleep {
    at: Instant,
    state: Option<SleepState>,
}

/// Sleeps for `d` on any executor.
pub fn sleep(d: Duration) -> Sleep {
    Sleep {
        at: Instant::now() + d,
        state: None,
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if Instant::now() >= self.at {
            return std::task::Poll::Ready(());
        }
        match &self.state {
            None => {
                let state = Arc::new(std::sync::Mutex::new((false, Some(cx.waker().clone()))));
                self.state = Some(state.clone());
                timer::add(self.at, timer::Action::Wake(state));
                std::task::Poll::Pending
            }
            Some(state) => {
                let mut s = state.lock().unwrap();
                if s.0 {
                    return std::task::Poll::Ready(());
                }
                s.1 = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        }
    }
}

/// Drops `value` on the timer thread after `d`.
pub fn drop_later<T: Send + 'static>(value: T, d: Duration) {
    timer::add(Instant::now() + d, timer::Action::Drop(Box::new(value)));
}
