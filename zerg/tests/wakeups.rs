//! How the reactor wakes tasks on other threads and how it waits:
//!
//! - wake-ups of handler tasks on another runtime are handed over in batches (one wake per
//!   batch from the reactor thread, the rest delivered by the first task's next call into its
//!   connection); a batch whose first task never calls again is still delivered, by the reactor
//!   itself after a short grace;
//! - `ReactorConfig::min_wait` batches completions in the reactor's waits without changing what
//!   is served, and an idle engine with it still sleeps.

mod util;

use std::future::poll_fn;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use util::{Mode, TestServer, echo, options};
use zerg_uring::Connection;

/// Handlers that wait for their first bytes with one `poll_read`, then, once woken, never touch
/// the connection again (they keep it open until the test ends): a woken task that does not
/// deliver the batch it leads. Every task must still be woken.
#[test]
fn relayed_wakes_reach_tasks_whose_leader_never_polls_again() {
    const CONNS: usize = 32;
    let mut opts = options(1, false);
    // Waits of 20 ms collect the 32 receives of one burst into one loop iteration, so their
    // wake-ups form batches.
    opts.reactor_configs[0].min_wait = Some(Duration::from_millis(20));
    let woken = Arc::new(AtomicUsize::new(0));
    let held = Arc::new(std::sync::Mutex::new(Vec::<Connection>::new()));
    let (w, h) = (woken.clone(), held.clone());
    let server = TestServer::start(Mode::Runtime, opts, move |mut conn: Connection| {
        let (woken, held) = (w.clone(), h.clone());
        async move {
            let mut polled = false;
            poll_fn(|cx| {
                if polled {
                    // Woken: return without calling into the connection.
                    return Poll::Ready(());
                }
                polled = true;
                match conn.poll_read(cx) {
                    Poll::Ready(_) => Poll::Ready(()),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            woken.fetch_add(1, Ordering::SeqCst);
            held.lock().unwrap().push(conn);
        }
    });
    let mut clients: Vec<_> = (0..CONNS).map(|_| server.connect()).collect();
    // Every handler has registered its waker before the burst.
    let accepted = util::wait_until(Duration::from_secs(10), || {
        server.engine().stats().total().connections == CONNS as u64
    });
    assert!(accepted, "not every connection was accepted");
    std::thread::sleep(Duration::from_millis(100));
    for c in &mut clients {
        c.write_all(b"x").unwrap();
    }
    let all = util::wait_until(Duration::from_secs(10), || {
        woken.load(Ordering::SeqCst) == CONNS
    });
    let stats = server.engine().stats().total();
    assert!(
        all,
        "{} of {CONNS} tasks woken; stats: {stats:#?}",
        woken.load(Ordering::SeqCst)
    );
    println!(
        "wakes relayed {}, batches the reactor delivered itself {}",
        stats.wakes_relayed, stats.relay_fallbacks
    );
    // Nobody here delivers a batch but the reactor: whatever was relayed went through its
    // fallback.
    if stats.wakes_relayed > 0 {
        assert!(stats.relay_fallbacks > 0, "{stats:#?}");
    }
    held.lock().unwrap().clear();
    drop(clients);
    server.stop();
}

/// Many connections echoing at once through handlers on tokio (a current-thread and a
/// multi-thread runtime): every byte comes back, and wake-ups went out in batches.
#[test]
fn echo_through_relayed_wakes_is_exact() {
    for min_wait in [None, Some(Duration::from_millis(2))] {
        let mut opts = options(1, false);
        opts.reactor_configs[0].min_wait = min_wait;
        let server = TestServer::start(Mode::Runtime, opts, echo);
        let addr = server.addr;
        let clients: Vec<_> = (0..24u64)
            .map(|id| {
                std::thread::spawn(move || {
                    let mut s = std::net::TcpStream::connect(addr).unwrap();
                    s.set_nodelay(true).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut got = vec![0u8; 300];
                    for round in 0..200u64 {
                        let msg = util::pattern(id * 1000 + round, 300);
                        s.write_all(&msg).unwrap();
                        s.read_exact(&mut got).unwrap();
                        util::assert_same(&got, &msg, "echo");
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().expect("client ran");
        }
        let stats = server.engine().stats().total();
        println!(
            "min_wait {min_wait:?}: wakes relayed {}, fallbacks {}, reactor wake-ups {}",
            stats.wakes_relayed, stats.relay_fallbacks, stats.wakeups
        );
        assert!(
            stats.wakes_relayed > 0,
            "24 busy connections never woke two tasks in one iteration: {stats:#?}"
        );
        server.assert_quiescent();
        server.stop();
    }
}

/// With `min_wait`, both modes serve exactly, and an idle engine still sleeps: the batching wait
/// only applies while completions come in.
#[test]
fn min_wait_serves_and_an_idle_engine_still_sleeps() {
    for mode in [Mode::Reactor, Mode::Runtime] {
        let mut opts = options(1, false);
        opts.reactor_configs[0].min_wait = Some(Duration::from_millis(1));
        let server = TestServer::start(mode, opts, echo);
        let mut c = server.connect();
        for i in 0..50u64 {
            let msg = util::pattern(i, 100);
            util::assert_same(&util::roundtrip(&mut c, &msg), &msg, "echo");
        }
        drop(c);
        server.assert_quiescent();
        let before = server.engine().stats().total().wakeups;
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(1));
        let woke = server.engine().stats().total().wakeups - before;
        println!(
            "{mode:?}: idle for {:?} with min_wait 1 ms: {woke} wake-ups",
            t0.elapsed()
        );
        assert!(
            woke <= 20,
            "an idle reactor with min_wait woke {woke} times"
        );
        server.stop();
    }
}
