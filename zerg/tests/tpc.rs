//! Thread-per-core mode (`Engine::serve`) and per-reactor accept: handlers on the reactor thread,
//! wake-ups from other threads, graceful stop mid-request, and the measured cross-thread wake of
//! the runtime mode.

mod util;

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use util::{Mode, TestServer, echo, options, pattern, roundtrip};
use zerg_uring::{AcceptMode, CloseReason, Connection, Engine};

fn client(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// The core echo suite with per-reactor accept (SO_REUSEPORT listeners, accept in each reactor
/// ring), handlers on tokio and on the reactor threads, normal and incremental buffers.
#[test]
fn echo_suite_with_per_reactor_accept() {
    for mode in [Mode::Runtime, Mode::Reactor] {
        for incremental in [false, true] {
            let mut opts = options(2, incremental);
            opts.accept_mode = AcceptMode::PerReactor;
            let server = TestServer::start(mode, opts, echo);
            let addr = server.addr;
            let clients: Vec<_> = (0..32u64)
                .map(|id| {
                    std::thread::spawn(move || {
                        let mut c = client(addr);
                        for j in 0..20u64 {
                            let msg = pattern(id * 100 + j, 1 + (j as usize * 97) % 3000);
                            assert_eq!(roundtrip(&mut c, &msg), msg);
                        }
                    })
                })
                .collect();
            for c in clients {
                c.join().unwrap();
            }
            let stats = server.engine().stats();
            // 32 connections hashed over two listeners: both reactors serve (2^-31 odds otherwise).
            assert!(
                stats.reactors.iter().all(|r| r.connections_total > 0),
                "{mode:?}: per-reactor accept used one reactor only: {stats:#?}"
            );
            assert_eq!(
                stats.acceptor.accepted, 0,
                "no acceptor thread in per-reactor mode"
            );
            server.assert_quiescent();
            server.stop();
        }
    }
}

/// A reactor-hosted handler (not `Send`: it holds an `Rc`) awaits a tokio oneshot completed by a
/// plain thread; the wake reaches the reactor through its eventfd and the response goes out.
#[test]
fn reactor_handler_awaits_a_future_woken_from_another_thread() {
    let woken = Arc::new(AtomicUsize::new(0));
    let w = woken.clone();
    let engine = Engine::serve(options(1, false), move |mut conn: Connection| {
        let w = w.clone();
        async move {
            let local = Rc::new(Cell::new(0u32)); // makes this future !Send
            loop {
                let snap = conn.read().await;
                if snap.is_closed() {
                    return;
                }
                let n = snap.len();
                drop(snap);
                let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(20));
                    let _ = tx.send(n as u32);
                });
                let value = rx.await.expect("sender thread completes the oneshot");
                local.set(local.get() + 1);
                w.fetch_add(1, Ordering::Relaxed);
                conn.write(format!("{value}:{}\n", local.get()).as_bytes())
                    .unwrap();
                if conn.flush().await.is_err() {
                    return;
                }
            }
        }
    })
    .unwrap();
    let mut c = client(engine.local_addr());
    for i in 1..=5 {
        c.write_all(b"abc").unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while byte[0] != b'\n' {
            c.read_exact(&mut byte).unwrap();
            line.push(byte[0]);
        }
        assert_eq!(line, format!("3:{i}\n").as_bytes());
    }
    assert_eq!(woken.load(Ordering::Relaxed), 5);
    drop(c);
    engine.stop();
    engine.join().unwrap();
}

/// Counts handler futures dropped, to prove none is left behind.
struct DropCount(Arc<AtomicUsize>);
impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Graceful stop while reactor-hosted handlers are mid-request: accepting stops, the in-flight
/// responses still complete within the grace period, and the engine joins cleanly.
#[test]
fn graceful_shutdown_lets_reactor_handlers_finish() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    let engine = Engine::serve(options(2, false), move |mut conn: Connection| {
        let guard = DropCount(d.clone());
        async move {
            let _guard = guard;
            let snap = conn.read().await;
            if snap.is_closed() {
                return;
            }
            drop(snap);
            // Work that completes on another thread, 200 ms later.
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                let _ = tx.send(());
            });
            let _ = rx.await;
            let body = pattern(9, 256 * 1024);
            if conn.write_all(&body).await.is_err() {
                return;
            }
            let _ = conn.flush().await;
            let _ = conn.shutdown().await;
        }
    })
    .unwrap();
    let addr = engine.local_addr();
    let mut clients: Vec<TcpStream> = (0..10).map(|_| client(addr)).collect();
    for c in &mut clients {
        c.write_all(b"GET\r\n\r\n").unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    let t0 = Instant::now();
    engine.shutdown(Duration::from_secs(5));
    // New connections are refused (or reset) from now on.
    std::thread::sleep(Duration::from_millis(50));
    let refused = match TcpStream::connect(addr) {
        Err(_) => true,
        Ok(mut s) => {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut b = [0u8; 1];
            !matches!(s.read(&mut b), Ok(n) if n > 0)
        }
    };
    assert!(refused, "a connection after shutdown was served");
    let want = pattern(9, 256 * 1024);
    for c in &mut clients {
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        assert!(
            got == want,
            "in-flight response cut short ({} bytes)",
            got.len()
        );
    }
    engine.join().unwrap();
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(4), "shutdown waited {took:?}");
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        10,
        "every handler future was dropped"
    );
}

/// `stop()` while reactor-hosted handlers wait on something that never completes: the handlers
/// are cancelled (their futures dropped on the reactor thread) and the engine joins promptly.
#[test]
fn stop_cancels_stuck_reactor_handlers() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    let senders = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = senders.clone();
    let engine = Engine::serve(options(1, false), move |mut conn: Connection| {
        let guard = DropCount(d.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        s2.lock().unwrap().push(tx); // kept alive: `rx` never completes
        async move {
            let _guard = guard;
            let _snap = conn.read().await;
            let _ = rx.await;
        }
    })
    .unwrap();
    let addr = engine.local_addr();
    let mut clients: Vec<TcpStream> = (0..8).map(|_| client(addr)).collect();
    for c in &mut clients {
        c.write_all(b"x").unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while engine.stats().total().connections < 8 {
        assert!(Instant::now() < deadline, "connections not accepted");
        std::thread::sleep(Duration::from_millis(5));
    }
    let t0 = Instant::now();
    engine.stop();
    engine.join().unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "stop took {:?}",
        t0.elapsed()
    );
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        8,
        "stuck handlers were cancelled"
    );
    for c in &mut clients {
        let mut b = [0u8; 16];
        // The server closed the socket: EOF or reset.
        assert!(matches!(c.read(&mut b), Ok(0) | Err(_)));
    }
    drop(senders);
}

/// A handler on a tokio task waits for a signal, then writes and flushes; measures the time from
/// the signal to the bytes arriving at the peer (the flush crosses from tokio to the reactor
/// through the eventfd). Prints p50/p99; asserts only that every byte arrived.
#[test]
fn cross_thread_flush_wake_latency() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let engine = Arc::new(Engine::listen(options(1, false)).unwrap());
    let addr = engine.local_addr();
    let (sig_tx, sig_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let e = engine.clone();
    rt.spawn(async move {
        let mut conn = e.accept().await.expect("a connection");
        let mut sig_rx = sig_rx;
        while sig_rx.recv().await.is_some() {
            conn.write(b"!").unwrap();
            if conn.flush().await.is_err() {
                return;
            }
        }
        let snap = conn.read().await;
        assert_eq!(snap.close_reason(), Some(CloseReason::PeerClosed));
    });
    let mut c = client(addr);
    let mut samples = Vec::with_capacity(1000);
    let mut b = [0u8; 1];
    for i in 0..1100 {
        // Let the reactor go idle first, so each wake is a real wake-up.
        std::thread::sleep(Duration::from_micros(200));
        let t0 = Instant::now();
        sig_tx.send(()).unwrap();
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"!");
        if i >= 100 {
            samples.push(t0.elapsed());
        }
    }
    samples.sort();
    let p = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    eprintln!(
        "cross-thread flush wake (tokio task -> reactor -> peer), {} samples: p50 {:?}, p99 {:?}, max {:?}",
        samples.len(),
        p(0.50),
        p(0.99),
        samples[samples.len() - 1]
    );
    drop(c);
    drop(sig_tx);
    engine.stop();
    rt.shutdown_timeout(Duration::from_secs(2));
    let engine = Arc::try_unwrap(engine).expect("accept loop ended");
    engine.join().unwrap();
}
