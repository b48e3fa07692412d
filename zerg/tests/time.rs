//! The reactor as a runtime: `zerg_uring::time` timers, `spawn_local` and its `JoinHandle`, and
//! per-reactor state for `serve_with_state`, in thread-per-core handlers.

mod util;

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use util::{TestServer, options, wait_until};
use zerg_uring::task::JoinError;
use zerg_uring::time;
use zerg_uring::{Connection, Engine, spawn_local};

/// Starts a reactor-mode engine whose handler runs `body` once per connection and reports what
/// it returns; returns the server and the report channel. A client connects to trigger it.
fn on_reactor<T, F, Fut>(body: F) -> (TestServer, mpsc::Receiver<T>)
where
    T: Send + 'static,
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    let (tx, rx) = mpsc::channel();
    let tx = Arc::new(Mutex::new(tx));
    let engine = Engine::serve(options(1, false), move |conn: Connection| {
        let (body, tx) = (body.clone(), tx.clone());
        async move {
            let out = body().await;
            let _ = tx.lock().unwrap().send(out);
            drop(conn);
        }
    })
    .expect("engine starts");
    let server = TestServer::from_engine(engine);
    (server, rx)
}

fn trigger(server: &TestServer) -> std::net::TcpStream {
    server.connect()
}

#[test]
fn timers_fire_in_deadline_order_and_a_dropped_one_never_fires() {
    let (server, rx) = on_reactor(|| async {
        let order = Rc::new(RefCell::new(Vec::new()));
        let start = Instant::now();
        let mut handles = Vec::new();
        for (name, ms) in [("c", 90u64), ("a", 30), ("d", 120), ("b", 60)] {
            let order = order.clone();
            handles.push(spawn_local(async move {
                time::sleep(Duration::from_millis(ms)).await;
                order.borrow_mut().push((name, start.elapsed()));
            }));
        }
        // A sleep dropped before its deadline: its task is aborted, the timer cancelled.
        let dropped = spawn_local({
            let order = order.clone();
            async move {
                time::sleep(Duration::from_millis(45)).await;
                order.borrow_mut().push(("dropped", start.elapsed()));
            }
        });
        time::sleep(Duration::from_millis(10)).await;
        dropped.abort();
        let aborted = dropped.await;
        for h in handles {
            h.await.expect("task completes");
        }
        (order.take(), aborted)
    });
    let _c = trigger(&server);
    let (order, aborted) = rx.recv_timeout(Duration::from_secs(10)).expect("report");
    let names: Vec<_> = order.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        ["a", "b", "c", "d"],
        "fired in deadline order: {order:?}"
    );
    for ((_, at), ms) in order.iter().zip([30u64, 60, 90, 120]) {
        assert!(
            *at >= Duration::from_millis(ms),
            "fired early: {at:?} < {ms} ms"
        );
    }
    assert_eq!(aborted, Err(JoinError::Cancelled));
    server.wait_stats(Duration::from_secs(5), "timers counted", |s| {
        s.total().timers_fired >= 5
    });
    server.stop();
}

#[test]
fn timeout_and_interval() {
    let (server, rx) = on_reactor(|| async {
        let never = std::future::pending::<()>();
        let elapsed = time::timeout(Duration::from_millis(20), never).await;
        let ready = time::timeout(Duration::from_secs(5), async { 7 }).await;
        let mut ticks = Vec::new();
        let mut interval = time::interval(Duration::from_millis(25));
        for _ in 0..4 {
            ticks.push(interval.tick().await);
        }
        (elapsed, ready, ticks)
    });
    let _c = trigger(&server);
    let (elapsed, ready, ticks) = rx.recv_timeout(Duration::from_secs(10)).expect("report");
    assert!(elapsed.is_err(), "{elapsed:?}");
    assert_eq!(ready, Ok(7));
    for w in ticks.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(25),
            "ticks closer than the period: {ticks:?}"
        );
    }
    server.stop();
}

#[test]
fn an_idle_reactor_wakes_for_its_next_timer_and_not_before() {
    let (server, rx) = on_reactor(|| async {
        time::sleep(Duration::from_millis(400)).await;
        Instant::now()
    });
    let before = server.engine().stats().total().wakeups;
    let asked = Instant::now();
    let _c = trigger(&server);
    let fired = rx.recv_timeout(Duration::from_secs(10)).expect("report");
    assert!(fired - asked >= Duration::from_millis(400));
    let wakeups = server.engine().stats().total().wakeups - before;
    // The accept, the timer and a few request batches; a reactor polling every millisecond
    // would have woken hundreds of times.
    assert!(wakeups <= 10, "{wakeups} wake-ups during one 400 ms sleep");
    server.stop();
}

#[test]
fn a_sleep_polled_on_another_thread_still_fires() {
    let (server, rx) = on_reactor(|| async {
        let sleep = time::sleep(Duration::from_millis(50));
        let start = Instant::now();
        // Hand the sleep to a plain thread that blocks on it (the reactor keeps sleeping).
        let waited = std::thread::spawn(move || {
            futures::executor::block_on(sleep);
            start.elapsed()
        });
        // Keep this task (and the reactor) idle meanwhile.
        time::sleep(Duration::from_millis(10)).await;
        waited
    });
    let _c = trigger(&server);
    let waited = rx.recv_timeout(Duration::from_secs(10)).expect("report");
    let took = waited.join().expect("thread");
    assert!(took >= Duration::from_millis(50), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    server.stop();
}

#[test]
fn spawn_local_join_handle_outputs_panics_and_detaches() {
    let (server, rx) = on_reactor(|| async {
        let value = spawn_local(async { 40 + 2 }).await;
        let panicked = spawn_local(async {
            if true {
                panic!("boom in a local task");
            }
        })
        .await;
        // A detached task keeps running after its handle is dropped.
        let flag = Rc::new(Cell::new(false));
        drop(spawn_local({
            let flag = flag.clone();
            async move {
                time::sleep(Duration::from_millis(20)).await;
                flag.set(true);
            }
        }));
        time::sleep(Duration::from_millis(60)).await;
        (value, panicked, flag.get())
    });
    let _c = trigger(&server);
    let (value, panicked, detached_ran) = rx.recv_timeout(Duration::from_secs(10)).expect("report");
    assert_eq!(value, Ok(42));
    match panicked {
        Err(JoinError::Panicked(msg)) => assert!(msg.contains("boom"), "{msg}"),
        other => panic!("expected a panic, got {other:?}"),
    }
    assert!(detached_ran);
    server.stop();
}

#[test]
fn outside_a_reactor_timers_and_spawn_local_panic_naming_the_fix() {
    let sleep = std::panic::catch_unwind(|| drop(time::sleep(Duration::from_millis(1))));
    let text = |p: Box<dyn std::any::Any + Send>| match p.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => p.downcast_ref::<&str>().unwrap().to_string(),
    };
    let msg = text(sleep.unwrap_err());
    assert!(
        msg.contains("outside a reactor thread") && msg.contains("tokio::time"),
        "{msg}"
    );
    let spawn = std::panic::catch_unwind(|| drop(spawn_local(async {})));
    let msg = text(spawn.unwrap_err());
    assert!(
        msg.contains("Engine::serve") && msg.contains("tokio::spawn"),
        "{msg}"
    );
}

#[test]
fn per_reactor_state_is_built_once_per_reactor_and_shared_by_its_handlers() {
    let inits = Arc::new(Mutex::new(Vec::new()));
    let recorded = inits.clone();
    let mut opts = options(2, false);
    opts.accept_mode = zerg_uring::AcceptMode::Dedicated;
    let engine = Engine::serve_with_state(
        opts,
        move |index| {
            recorded
                .lock()
                .unwrap()
                .push((index, std::thread::current().name().map(String::from)));
            Cell::new(0u32)
        },
        |mut conn: Connection, served: Rc<Cell<u32>>| async move {
            loop {
                let snap = conn.read().await;
                if snap.is_closed() {
                    return;
                }
                drop(snap);
                served.set(served.get() + 1);
                // Answer with this reactor's running count.
                let n = served.get().to_string();
                if conn
                    .write(format!("{}:{n}\n", conn.reactor()).as_bytes())
                    .is_err()
                    || conn.flush().await.is_err()
                {
                    return;
                }
            }
        },
    )
    .expect("engine starts");
    let server = TestServer::from_engine(engine);
    let mut per_reactor = std::collections::HashMap::<usize, u32>::new();
    for _ in 0..6 {
        let mut c = server.connect();
        c.write_all(b"x").unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8];
        while c.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let line = String::from_utf8(line).unwrap();
        let (reactor, count) = line.split_once(':').unwrap();
        let (reactor, count): (usize, u32) = (reactor.parse().unwrap(), count.parse().unwrap());
        let seen = per_reactor.entry(reactor).or_default();
        *seen += 1;
        assert_eq!(
            count, *seen,
            "reactor {reactor}'s handlers share one counter"
        );
    }
    let mut inits = inits.lock().unwrap().clone();
    inits.sort();
    assert_eq!(inits.len(), 2, "one init per reactor: {inits:?}");
    for (i, (index, thread)) in inits.iter().enumerate() {
        assert_eq!(*index, i);
        assert_eq!(
            thread.as_deref(),
            Some(format!("zerg-reactor-{i}").as_str())
        );
    }
    server.stop();
}

#[test]
fn a_panicking_state_initialiser_fails_the_start() {
    let res = Engine::serve_with_state(
        options(1, false),
        |_| -> u32 { panic!("no config file") },
        |_conn: Connection, _state: Rc<u32>| async {},
    );
    let err = res.expect_err("start fails");
    assert!(err.to_string().contains("no config file"), "{err}");
    assert!(wait_until(Duration::from_secs(5), || util::threads_named(
        "zerg-"
    ) == 0));
}
