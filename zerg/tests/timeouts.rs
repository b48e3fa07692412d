//! Connection timeouts (`ReactorConfig::{idle,read,request,write}_timeout`) in both handler
//! modes: idle clients are closed while an active one survives, a read that waits too long ends
//! with `TimedOut` (time spent not reading does not count), a slowloris client that trickles a
//! request is closed by the request timeout, and TCP keep-alive reaches accepted sockets.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use util::{Mode, TestServer, echo, options, wait_until};
use zerg_uring::{CloseReason, Connection, EngineOptions};

fn with_timeouts(f: impl FnOnce(&mut zerg_uring::ReactorConfig)) -> EngineOptions {
    let mut o = options(1, false);
    f(&mut o.reactor_configs[0]);
    o
}

/// Whether the server closed `s` (EOF or reset) by `deadline`, reading and discarding meanwhile.
fn closed_by(s: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

fn idle_clients_close_while_an_active_one_survives(mode: Mode) {
    const IDLE: usize = 200;
    let timeout = Duration::from_millis(400);
    let server = TestServer::start(
        mode,
        with_timeouts(|rc| rc.idle_timeout = Some(timeout)),
        echo,
    );
    let start = Instant::now();
    let mut idle: Vec<TcpStream> = (0..IDLE).map(|_| server.connect()).collect();
    let mut active = server.connect();
    server.wait_stats(Duration::from_secs(5), "all connected", |s| {
        s.total().connections_total == IDLE as u64 + 1
    });
    // The active client talks every 100 ms for three timeouts' worth.
    let mut rounds = 0;
    while start.elapsed() < timeout * 3 {
        assert_eq!(
            util::roundtrip(&mut active, b"ping"),
            b"ping",
            "round {rounds}"
        );
        rounds += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every idle client was closed by then (timeout plus the reactor's millisecond granularity
    // and scheduling slack on a busy machine).
    let deadline = Instant::now() + Duration::from_secs(2);
    for (i, s) in idle.iter_mut().enumerate() {
        assert!(
            closed_by(s, deadline),
            "idle client {i} still open ({mode:?})"
        );
    }
    assert_eq!(util::roundtrip(&mut active, b"still here"), b"still here");
    // The reactor publishes its counters once per loop iteration: a client can see its close
    // before the count that goes with it is published.
    server.wait_stats(Duration::from_secs(5), "every idle client counted", |s| {
        s.total().idle_timeouts >= IDLE as u64
    });
    let t = server.engine().stats().total();
    println!(
        "{mode:?}: {rounds} active rounds; {} idle timeouts",
        t.idle_timeouts
    );
    assert_eq!(t.idle_timeouts, IDLE as u64);
    drop(active);
    drop(idle);
    server.assert_quiescent();
    server.stop();
}

#[test]
fn idle_timeout_runtime() {
    idle_clients_close_while_an_active_one_survives(Mode::Runtime);
}

#[test]
fn idle_timeout_reactor() {
    idle_clients_close_while_an_active_one_survives(Mode::Reactor);
}

type Report = Arc<Mutex<mpsc::Sender<(Option<CloseReason>, Duration)>>>;

/// Reads once (after an optional busy pause that must not count) and reports how the read
/// ended and how long it waited.
async fn read_once(mut conn: Connection, pause: Duration, report: Report) {
    if !pause.is_zero() {
        util::sleep(pause).await;
    }
    let start = Instant::now();
    let snap = conn.read().await;
    let outcome = (snap.close_reason(), start.elapsed());
    drop(snap);
    let _ = report.lock().unwrap().send(outcome);
}

fn read_timeout(mode: Mode) {
    let timeout = Duration::from_millis(300);
    let (tx, rx) = mpsc::channel();
    let report: Report = Arc::new(Mutex::new(tx));
    // The first connection's handler is busy for twice the timeout before it reads: that time
    // does not count, and the bytes sent after it started reading arrive in time.
    let busy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let server = TestServer::start(
        mode,
        with_timeouts(|rc| rc.read_timeout = Some(timeout)),
        move |conn| {
            let pause = if busy.swap(false, std::sync::atomic::Ordering::SeqCst) {
                Duration::from_millis(600)
            } else {
                Duration::ZERO
            };
            read_once(conn, pause, report.clone())
        },
    );
    let mut patient = server.connect();
    std::thread::sleep(Duration::from_millis(800));
    patient.write_all(b"late but fine").unwrap();
    let (reason, _) = rx.recv_timeout(Duration::from_secs(5)).expect("report");
    assert_eq!(reason, None, "the read got data ({mode:?})");

    // A silent peer: the read ends with TimedOut, not before the timeout.
    let mut silent = server.connect();
    let (reason, waited) = rx.recv_timeout(Duration::from_secs(5)).expect("report");
    assert_eq!(reason, Some(CloseReason::TimedOut), "({mode:?})");
    assert!(
        waited >= timeout - Duration::from_millis(5),
        "fired early: {waited:?}"
    );
    assert!(closed_by(
        &mut silent,
        Instant::now() + Duration::from_secs(2)
    ));
    server.wait_stats(Duration::from_secs(5), "the read timeout counted", |s| {
        s.total().read_timeouts == 1
    });
    drop((patient, silent));
    server.assert_quiescent();
    server.stop();
}

#[test]
fn read_timeout_runtime() {
    read_timeout(Mode::Runtime);
}

#[test]
fn read_timeout_reactor() {
    read_timeout(Mode::Reactor);
}

/// Sends one line and reads its answer.
fn request(s: &mut TcpStream) -> Vec<u8> {
    s.write_all(b"GET\n").unwrap();
    let mut out = vec![0; 3];
    s.read_exact(&mut out).unwrap();
    out
}

/// Line protocol: answers each complete line with "ok\n", so a request ends with a flush.
async fn line_server(mut conn: Connection) {
    let mut pending = Vec::new();
    loop {
        let snap = conn.read().await;
        if snap.is_closed() {
            return;
        }
        for b in snap.buffers() {
            pending.extend_from_slice(b);
        }
        drop(snap);
        while let Some(i) = pending.iter().position(|&b| b == b'\n') {
            pending.drain(..=i);
            if conn.write(b"ok\n").is_err() {
                return;
            }
        }
        if conn.flush().await.is_err() {
            return;
        }
    }
}

fn slowloris_is_closed_by_the_request_timeout(mode: Mode) {
    let timeout = Duration::from_millis(500);
    let server = TestServer::start(
        mode,
        with_timeouts(|rc| {
            rc.request_timeout = Some(timeout);
            // Read and idle timeouts alone do not stop a client that keeps trickling.
            rc.read_timeout = Some(Duration::from_secs(10));
            rc.idle_timeout = Some(Duration::from_secs(10));
        }),
        line_server,
    );
    // A well-behaved client: complete requests, each answered, for three timeouts' worth.
    let mut good = server.connect();
    let mut slow = server.connect();
    let start = Instant::now();
    let mut trickled = 0;
    let mut slow_closed_at = None;
    while start.elapsed() < timeout * 3 {
        assert_eq!(request(&mut good), b"ok\n");
        if slow_closed_at.is_none() {
            // One byte of a request that never ends, every 50 ms.
            if slow.write_all(b"x").is_err()
                || closed_by(&mut slow, Instant::now() + Duration::from_millis(50))
            {
                slow_closed_at = Some(start.elapsed());
            } else {
                trickled += 1;
            }
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let closed = slow_closed_at.expect("the slowloris client was closed");
    println!("{mode:?}: slowloris closed after {closed:?} ({trickled} bytes trickled)");
    assert!(
        closed >= timeout - Duration::from_millis(60),
        "closed early: {closed:?}"
    );
    assert!(
        closed < timeout + Duration::from_secs(1),
        "closed late: {closed:?}"
    );
    assert_eq!(request(&mut good), b"ok\n");
    let t = server.engine().stats().total();
    assert_eq!(
        (t.request_timeouts, t.read_timeouts, t.idle_timeouts),
        (1, 0, 0)
    );
    drop((good, slow));
    server.assert_quiescent();
    server.stop();
}

#[test]
fn request_timeout_runtime() {
    slowloris_is_closed_by_the_request_timeout(Mode::Runtime);
}

#[test]
fn request_timeout_reactor() {
    slowloris_is_closed_by_the_request_timeout(Mode::Reactor);
}

#[test]
fn timeouts_must_be_non_zero() {
    let opts = with_timeouts(|rc| rc.idle_timeout = Some(Duration::ZERO));
    let err = opts.validate().unwrap_err();
    assert!(err.to_string().contains("idle_timeout"), "{err}");
}

#[test]
fn tcp_keepalive_reaches_accepted_sockets() {
    let mut opts = options(1, false);
    opts.tcp_keepalive = Some(Duration::from_secs(42));
    let (tx, rx) = mpsc::channel();
    let tx = Arc::new(Mutex::new(tx));
    let server = TestServer::start(Mode::Reactor, opts, move |conn: Connection| {
        let tx = tx.clone();
        async move {
            // SAFETY: the descriptor stays open while `conn` lives, which outlasts the borrow.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(conn.fd()) };
            let sock = socket2::SockRef::from(&fd);
            let got = (
                sock.keepalive().unwrap(),
                sock.tcp_keepalive_time().unwrap(),
            );
            let _ = tx.lock().unwrap().send(got);
            drop(conn);
        }
    });
    let _c = server.connect();
    let (on, idle) = rx.recv_timeout(Duration::from_secs(5)).expect("report");
    assert!(on, "SO_KEEPALIVE is on");
    assert_eq!(idle, Duration::from_secs(42));
    assert!(wait_until(Duration::from_secs(5), || server
        .engine()
        .stats()
        .total()
        .connections
        == 0));
    server.stop();
}
