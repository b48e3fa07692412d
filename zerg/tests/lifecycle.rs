//! Close protocol and engine lifecycle (docs/architecture.md, rules 10 and 11): graceful shutdown
//! drains in-flight responses and refuses new connections at once, a hard stop does not wait for
//! slow peers, engines are independent, and start-up failures return an error and leave nothing
//! running.
//!
//! These tests count the process's `zerg-*` threads and open descriptors, so they run one at a
//! time (a lock) when the harness runs them as threads of one process.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use util::{Mode, TestServer, assert_same, connect_small_rcvbuf, echo, options, pattern, sleep};
use zerg_uring::{CloseReason, Connection, Engine, EngineOptions, Error};

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn zerg_threads() -> usize {
    util::threads_named("zerg-")
}

/// What a connection attempt to a stopping engine gets.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Refused,
    Reset,
    Served,
    Hung,
}

fn try_connect(addr: SocketAddr) -> Attempt {
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        Ok(s) => s,
        Err(_) => return Attempt::Refused,
    };
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let _ = s.write_all(b"x");
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(0) => Attempt::Reset,
        Ok(_) => Attempt::Served,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Attempt::Hung,
        Err(_) => Attempt::Reset,
    }
}

const RESPONSE: usize = 1 << 20;
const CHUNK: usize = 32 * 1024;

/// Answers a 1-byte request with 1 MiB, paced (32 chunks, 10 ms apart) so that it is in flight
/// when the test shuts the engine down; then closes.
async fn paced_response(mut conn: Connection, started: Arc<AtomicUsize>) {
    let snap = conn.read().await;
    if snap.is_closed() {
        return;
    }
    let id = u64::from(snap.buffers().next().unwrap()[0]);
    drop(snap);
    started.fetch_add(1, Ordering::AcqRel);
    let body = pattern(id, RESPONSE);
    for chunk in body.chunks(CHUNK) {
        if conn.write_all(chunk).await.is_err() || conn.flush().await.is_err() {
            return;
        }
        sleep(Duration::from_millis(10)).await;
    }
}

fn graceful_shutdown(mode: Mode, accept: zerg_uring::AcceptMode) {
    let _serial = serial();
    let mut opts = options(2, false);
    opts.accept_mode = accept;
    opts.reactor_configs[0].max_write_buffer = 64 * 1024;
    let started = Arc::new(AtomicUsize::new(0));
    let s = started.clone();
    let mut server = TestServer::start(mode, opts, move |c| paced_response(c, s.clone()));
    let addr = server.addr;
    let finished = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..20u8)
        .map(|id| {
            let finished = finished.clone();
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(addr).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                c.write_all(&[id]).unwrap();
                let mut got = Vec::new();
                c.read_to_end(&mut got)
                    .expect("the whole response, then EOF");
                assert_same(&got, &pattern(u64::from(id), RESPONSE), "response");
                finished.fetch_add(1, Ordering::AcqRel);
            })
        })
        .collect();
    assert!(
        util::wait_until(Duration::from_secs(5), || started.load(Ordering::Acquire)
            == 20),
        "handlers did not start"
    );

    let grace = Duration::from_secs(2);
    let t0 = Instant::now();
    server.engine().shutdown(grace);
    // Accepting stops at once: a new client is refused or reset, while the 20 responses are
    // still in flight (each takes over 300 ms).
    let attempt = try_connect(addr);
    let rejected_after = t0.elapsed();
    let in_flight = 20 - finished.load(Ordering::Acquire);
    let stats = server.engine().stats();
    let accept_errors = stats.acceptor.accept_errors + stats.total().accept_errors;
    let res = server.join();
    let joined_after = t0.elapsed();
    for c in clients {
        c.join().expect("every in-flight response completes");
    }
    println!(
        "graceful shutdown ({mode:?}, {accept:?} accept): new connection {attempt:?} after {rejected_after:?} \
         ({in_flight} responses still in flight); join returned after {joined_after:?} \
         (grace {grace:?}); accept errors counted {accept_errors}"
    );
    assert!(
        matches!(attempt, Attempt::Refused | Attempt::Reset),
        "a connection attempt during shutdown was {attempt:?}"
    );
    assert!(
        in_flight > 0,
        "the rejection came only after every in-flight response had completed"
    );
    res.expect("join after a graceful shutdown");
    assert!(
        joined_after < grace,
        "join waited {joined_after:?}: the drain should end when the last connection closes"
    );
    assert_eq!(finished.load(Ordering::Acquire), 20);
    drop(server);
    assert!(util::wait_until(Duration::from_secs(2), || zerg_threads() == 0));
}

#[test]
fn graceful_shutdown_drains_and_refuses_runtime() {
    graceful_shutdown(Mode::Runtime, zerg_uring::AcceptMode::Dedicated);
}

#[test]
fn graceful_shutdown_drains_and_refuses_reactor() {
    graceful_shutdown(Mode::Reactor, zerg_uring::AcceptMode::Dedicated);
}

#[test]
fn graceful_shutdown_drains_and_refuses_per_reactor_accept() {
    graceful_shutdown(Mode::Reactor, zerg_uring::AcceptMode::PerReactor);
}

/// Writes 16 MiB to a peer that never reads, and reports how the flush ended.
async fn stuck_writer(
    mut conn: Connection,
    started: Arc<AtomicUsize>,
    report: mpsc::Sender<String>,
) {
    let snap = conn.read().await;
    if snap.is_closed() {
        return;
    }
    drop(snap);
    conn.write(&vec![5u8; 16 << 20]).unwrap();
    started.fetch_add(1, Ordering::AcqRel);
    let res = conn.flush().await;
    let _ = report.send(format!("{res:?}"));
}

fn stop_with_slow_readers(mode: Mode) {
    let _serial = serial();
    let started = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    let s = started.clone();
    let mut server = TestServer::start(mode, options(1, false), move |c| {
        stuck_writer(c, s.clone(), tx.clone())
    });
    let clients: Vec<_> = (0..10)
        .map(|_| {
            let mut c = connect_small_rcvbuf(server.addr, 4096);
            c.write_all(b"x").unwrap();
            c
        })
        .collect();
    assert!(util::wait_until(Duration::from_secs(5), || started
        .load(Ordering::Acquire)
        == 10));
    std::thread::sleep(Duration::from_millis(50));
    let t0 = Instant::now();
    server.engine().stop();
    let res = server.join();
    let took = t0.elapsed();
    println!("stop with 10 stuck flushes ({mode:?}): joined after {took:?}");
    res.expect("join after stop");
    assert!(took < Duration::from_secs(1), "stop + join took {took:?}");
    for _ in 0..10 {
        let r = rx
            .recv_timeout(Duration::from_secs(2))
            .expect("every flush resolves");
        assert!(r.starts_with("Err("), "flush during stop: {r}");
    }
    drop(clients);
    drop(server);
    assert!(util::wait_until(Duration::from_secs(2), || zerg_threads() == 0));
}

#[test]
fn stop_with_slow_readers_returns_fast_runtime() {
    stop_with_slow_readers(Mode::Runtime);
}

#[test]
fn stop_with_slow_readers_returns_fast_reactor() {
    stop_with_slow_readers(Mode::Reactor);
}

#[test]
fn reads_see_engine_stopping() {
    let _serial = serial();
    let (tx, rx) = mpsc::channel();
    let mut server = TestServer::start(
        Mode::Runtime,
        options(1, false),
        move |mut c: Connection| {
            let tx = tx.clone();
            async move {
                let first = c.read().await;
                drop(first);
                let snap = c.read().await;
                let _ = tx.send(snap.close_reason());
            }
        },
    );
    let mut c = server.connect();
    c.write_all(b"x").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    server.engine().stop();
    server.join().unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(2)).unwrap(),
        Some(CloseReason::EngineStopping)
    );
}

#[test]
fn two_engines_are_independent() {
    let _serial = serial();
    let mut a = TestServer::start(Mode::Reactor, options(1, false), echo);
    let b = TestServer::start(Mode::Runtime, options(2, false), echo);
    for s in [&a, &b] {
        let mut c = s.connect();
        assert_eq!(util::roundtrip(&mut c, b"both"), b"both");
    }
    let mut b_conn = b.connect();
    assert_eq!(util::roundtrip(&mut b_conn, b"before"), b"before");
    a.engine().stop();
    a.join().unwrap();
    // B is untouched: its open connection and new ones work.
    assert_eq!(util::roundtrip(&mut b_conn, b"after"), b"after");
    let mut c = b.connect();
    assert_eq!(util::roundtrip(&mut c, b"new"), b"new");
    assert_eq!(
        zerg_threads(),
        3,
        "B's two reactors and its acceptor, and none of A's threads, should be running"
    );
    drop((b_conn, c));
    b.assert_quiescent();
    b.stop();
    assert!(util::wait_until(Duration::from_secs(2), || zerg_threads() == 0));
}

fn config_field(res: zerg_uring::Result<Engine>) -> String {
    match res {
        Err(Error::Config(c)) => {
            println!("config error: {c}");
            c.field().to_string()
        }
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn invalid_config_is_an_error_naming_the_field() {
    let _serial = serial();
    let threads = zerg_threads();
    let mut o = options(1, false);
    o.reactor_configs[0].buffer_ring_entries = 1000;
    assert_eq!(config_field(Engine::listen(o)), "buffer_ring_entries");
    let mut o = options(1, false);
    o.reactor_configs[0].max_buffers_per_connection = 1 << 20;
    assert_eq!(
        config_field(Engine::serve(o, |_c| async {})),
        "max_buffers_per_connection"
    );
    let mut o = options(1, false);
    o.acceptor.ring_entries = 1;
    assert_eq!(config_field(Engine::listen(o)), "acceptor.ring_entries");
    let mut o = options(2, false);
    o.reactor_configs = vec![zerg_uring::ReactorConfig::default(); 3];
    assert_eq!(config_field(Engine::listen(o)), "reactor_configs");
    assert_eq!(zerg_threads(), threads);
}

/// Start-up failures: nothing may keep running (threads, descriptors).
fn assert_failed_start(res: zerg_uring::Result<Engine>, errno: i32, op_starts: &str) {
    let threads = 0;
    match res {
        Err(Error::Io { op, source }) => {
            println!("start-up error: {op}: {source}");
            assert_eq!(source.raw_os_error(), Some(errno), "{op}: {source}");
            assert!(op.starts_with(op_starts), "{op}");
        }
        other => panic!("expected an I/O error ({op_starts}), got {other:?}"),
    }
    assert!(
        util::wait_until(Duration::from_secs(2), || zerg_threads() == threads),
        "{} zerg threads still running",
        zerg_threads()
    );
}

#[test]
fn failed_start_returns_error_and_leaves_nothing_running() {
    let _serial = serial();
    assert_eq!(zerg_threads(), 0);
    let fds = util::open_fds();

    // The port is taken (no SO_REUSEPORT): EADDRINUSE before any thread starts.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut o = options(2, false);
    o.port = taken.local_addr().unwrap().port();
    assert_failed_start(Engine::listen(o.clone()), libc::EADDRINUSE, "bind");
    assert_failed_start(Engine::serve(o, |_c| async {}), libc::EADDRINUSE, "bind");
    drop(taken);

    // Reactor 1 fails after reactor 0 is running (no such CPU): reactor 0 is stopped and joined.
    let mut o = options(2, false);
    let mut bad = o.reactor_configs[0].clone();
    bad.cpu = Some(1000);
    o.reactor_configs = vec![o.reactor_configs[0].clone(), bad];
    assert_failed_start(Engine::listen(o), libc::EINVAL, "pin reactor 1");

    // The acceptor fails after every reactor runs.
    let mut o: EngineOptions = options(2, false);
    o.acceptor.cpu = Some(1000);
    assert_failed_start(Engine::listen(o), libc::EINVAL, "pin acceptor");

    assert!(
        util::wait_until(Duration::from_secs(2), || util::open_fds() == fds),
        "descriptors leaked: {} open, {fds} before",
        util::open_fds()
    );
}
