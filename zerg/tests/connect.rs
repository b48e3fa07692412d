//! Outbound connections: `zerg_uring::connect` / `connect_timeout` / `adopt` on a reactor thread,
//! `Engine::connect` / `Engine::adopt` from other runtimes; errors that name the address and the
//! errno, the kernel-side connect timeout, cancellation, engine stop and graceful drain, and no
//! descriptor leaked on any path. Every peer is on 127.0.0.1.
//!
//! The tests count the process's open descriptors, so they run one at a time (a lock) when the
//! harness runs them as threads of one process.

#[path = "util/on_reactor.rs"]
mod on_reactor;
#[path = "util/upstream.rs"]
mod upstream;
mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use on_reactor::{OnReactor, WAIT};
use upstream::{Blackhole, Echo, closed_port};
use util::{assert_same, open_fds, options, pattern, wait_until};
use zerg_uring::{CloseReason, Connection, ConnectionReader, Engine, Error};

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn runtime_engine(reactors: usize) -> (Engine, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (Engine::listen(options(reactors, false)).unwrap(), rt)
}

/// Writes `data`, reads the echo back (`data` is small enough to sit in socket buffers), then
/// half-closes and expects the echo server's FIN.
async fn echo_exchange(conn: &mut Connection, data: &[u8]) -> (Vec<u8>, Option<CloseReason>) {
    conn.write_all(data).await.unwrap();
    conn.flush().await.unwrap();
    let mut got = Vec::new();
    while got.len() < data.len() {
        let snap = conn.read().await;
        if snap.is_closed() {
            break;
        }
        got.extend(snap.buffers().flatten());
    }
    conn.shutdown().await.unwrap();
    let snap = conn.read().await;
    assert!(snap.is_empty(), "nothing after the echo");
    (got, snap.close_reason())
}

fn assert_connect_error(e: &Error, addr: SocketAddr, errno: i32) {
    match e {
        Error::Connect { addr: a, source } => {
            assert_eq!(*a, addr);
            assert_eq!(source.raw_os_error(), Some(errno), "{e}");
        }
        other => panic!("expected Error::Connect, got {other:?}"),
    }
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
}

/// A connect made on a reactor is a connection like an accepted one: same reactor, its own
/// slot, reads, writes, half-close, peer address; and it works under `ConnectionReader`.
#[test]
fn connect_on_the_reactor_gives_a_full_connection() {
    let _g = serial();
    let up = Echo::start();
    let r = OnReactor::start(2);
    let fds = open_fds();
    let addr = up.addr;
    let data = pattern(7, 100_000);
    let d = data.clone();
    let (got, reason, same_reactor, ids_differ, peer) = r.run(move |trigger| async move {
        let mut c = zerg_uring::connect(addr).await.expect("connect");
        let same = c.reactor() == trigger.reactor();
        let differ = c.id() != trigger.id();
        let peer = c.peer_addr().unwrap();
        let (got, reason) = echo_exchange(&mut c, &d).await;
        (got, reason, same, differ, peer)
    });
    assert_same(&got, &data, "echo through an outbound connection");
    assert_eq!(reason, Some(CloseReason::PeerClosed));
    assert!(
        same_reactor,
        "the connection belongs to the caller's reactor"
    );
    assert!(ids_differ);
    assert_eq!(peer, addr);

    // The zero-copy reader works on it too.
    let got = r.run(move |_trigger| async move {
        let mut c = zerg_uring::connect_timeout(addr, Duration::from_secs(5))
            .await
            .expect("connect");
        c.write(b"hello reader").unwrap();
        c.shutdown().await.unwrap();
        let mut reader = ConnectionReader::new(c);
        loop {
            let res = reader.read().await;
            if res.is_completed() {
                let got = res.buffer().to_vec();
                let n = got.len();
                reader.advance(n, n);
                return got;
            }
            let n = res.buffer().len();
            reader.advance(0, n);
        }
    });
    assert_eq!(got, b"hello reader");
    assert!(
        wait_until(WAIT, || r.live_connections() == 0 && open_fds() == fds),
        "connections {} / fds {} (baseline {fds})",
        r.live_connections(),
        open_fds()
    );
    assert!(wait_until(WAIT, || up.finished() == 2), "{}", up.finished());
    r.stop();
}

/// `Engine::connect` from a tokio task: requests go round-robin to the reactors, the
/// connections work from the tokio thread.
#[test]
fn engine_connect_from_another_runtime() {
    let _g = serial();
    let up = Echo::start();
    let (engine, rt) = runtime_engine(2);
    let fds = open_fds();
    let addr = up.addr;
    let reactors = rt.block_on(async {
        let mut reactors = Vec::new();
        for i in 0..4u64 {
            let mut c = engine.connect(addr).await.expect("connect");
            reactors.push(c.reactor());
            let data = pattern(i, 50_000 + i as usize);
            let (got, reason) = echo_exchange(&mut c, &data).await;
            assert_same(&got, &data, "echo through Engine::connect");
            assert_eq!(reason, Some(CloseReason::PeerClosed));
        }
        reactors
    });
    assert_eq!(reactors, [0, 1, 0, 1], "round-robin over the reactors");
    assert!(wait_until(WAIT, || {
        engine.stats().total().connections == 0 && open_fds() == fds
    }));
    engine.stop();
    engine.join().unwrap();
}

#[cfg(feature = "tokio")]
#[test]
fn engine_connect_works_with_connection_stream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _g = serial();
    let up = Echo::start();
    let (engine, rt) = runtime_engine(1);
    rt.block_on(async {
        let c = engine.connect(up.addr).await.unwrap();
        let mut s = zerg_uring::ConnectionStream::new(c);
        s.write_all(b"ping over a stream").await.unwrap();
        s.flush().await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping over a stream");
    });
    engine.stop();
    engine.join().unwrap();
}

/// A closed port: `ECONNREFUSED`, naming the address, on both paths; nothing leaks.
#[test]
fn connect_to_a_closed_port_is_refused_naming_the_address() {
    let _g = serial();
    let addr = closed_port();
    let r = OnReactor::start(1);
    let fds = open_fds();
    let e = r
        .run(move |_| zerg_uring::connect(addr))
        .expect_err("nobody listens");
    assert_connect_error(&e, addr, libc::ECONNREFUSED);
    assert_eq!(std::io::Error::from(e).kind(), ErrorKind::ConnectionRefused);
    assert!(wait_until(WAIT, || r.live_connections() == 0 && open_fds() == fds));
    r.stop();

    let (engine, rt) = runtime_engine(1);
    let fds = open_fds();
    let e = rt
        .block_on(engine.connect(addr))
        .expect_err("nobody listens");
    assert_connect_error(&e, addr, libc::ECONNREFUSED);
    assert!(wait_until(WAIT, || {
        engine.stats().total().connections == 0 && open_fds() == fds
    }));
    engine.stop();
    engine.join().unwrap();
}

/// A listener that drops SYNs (full accept queue): the linked timeout cancels the connect in the
/// kernel and the error names the address and the timeout.
#[test]
fn connect_timeout_fires_in_the_kernel() {
    let _g = serial();
    let hole = Blackhole::start();
    let addr = hole.addr;
    let timeout = Duration::from_millis(200);
    let r = OnReactor::start(1);
    let fds = open_fds();
    let started = Instant::now();
    let e = r
        .run(move |_| zerg_uring::connect_timeout(addr, timeout))
        .expect_err("the SYN is dropped");
    let elapsed = started.elapsed();
    match &e {
        Error::ConnectTimedOut {
            addr: a,
            timeout: t,
        } => {
            assert_eq!((*a, *t), (addr, timeout));
        }
        other => panic!("expected ConnectTimedOut, got {other:?}"),
    }
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
    assert_eq!(std::io::Error::from(e).kind(), ErrorKind::TimedOut);
    assert!(
        elapsed >= timeout,
        "resolved before the timeout: {elapsed:?}"
    );
    assert!(wait_until(WAIT, || r.live_connections() == 0 && open_fds() == fds));
    r.stop();

    let (engine, rt) = runtime_engine(1);
    let e = rt
        .block_on(engine.connect_timeout(addr, timeout))
        .expect_err("the SYN is dropped");
    assert!(matches!(e, Error::ConnectTimedOut { .. }), "{e:?}");
    let e = rt
        .block_on(engine.connect_timeout(addr, Duration::ZERO))
        .expect_err("zero timeout");
    match e {
        Error::Connect { source, .. } => assert_eq!(source.kind(), ErrorKind::InvalidInput),
        other => panic!("expected Connect(InvalidInput), got {other:?}"),
    }
    engine.stop();
    engine.join().unwrap();
}

/// Dropping a connect future while the connect is in flight: the reactor cancels it, reaps it
/// and closes the socket.
#[test]
fn dropping_a_connect_in_flight_closes_its_socket() {
    let _g = serial();
    let hole = Blackhole::start();
    let addr = hole.addr;

    // From another runtime.
    let (engine, rt) = runtime_engine(1);
    let fds = open_fds();
    let engine = Arc::new(engine);
    let e = engine.clone();
    let task = rt.spawn(async move { e.connect(addr).await });
    let live = || engine.stats().total().connections;
    // Drive the runtime until the request reached the reactor (a connecting connection).
    rt.block_on(async {
        let deadline = Instant::now() + WAIT;
        while live() != 1 {
            assert!(Instant::now() < deadline, "the connect never started");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    task.abort();
    let aborted = rt.block_on(task).expect_err("aborted");
    assert!(aborted.is_cancelled());
    assert!(
        wait_until(WAIT, || live() == 0 && open_fds() == fds),
        "connections {} / fds {} (baseline {fds})",
        live(),
        open_fds()
    );

    // On the reactor: the handler drops the future once the test says so.
    let r = OnReactor::start(1);
    let fds = open_fds();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let (rx, client) = r.spawn(move |trigger| async move {
        let _trigger = trigger;
        let connect = zerg_uring::connect(addr);
        futures::pin_mut!(connect);
        futures::future::select(connect, go_rx).await;
        "dropped"
    });
    assert!(
        wait_until(WAIT, || r.live_connections() == 2),
        "trigger + connecting: {}; {:?}",
        r.live_connections(),
        rx.try_recv()
    );
    go_tx.send(()).unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "dropped");
    drop(client);
    assert!(wait_until(WAIT, || r.live_connections() == 0 && open_fds() == fds));
    r.stop();
    let engine = Arc::try_unwrap(engine).unwrap();
    engine.stop();
    engine.join().unwrap();
}

/// Off a reactor thread, `connect` and `adopt` fail at once with an error naming the fix.
#[test]
fn connect_off_the_reactor_is_refused_with_the_fix() {
    let addr = closed_port();
    let e = futures::executor::block_on(zerg_uring::connect(addr)).unwrap_err();
    assert!(
        matches!(e, Error::NotOnReactor { what: "connect" }),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("Engine::serve") && msg.contains("Engine::connect"),
        "{msg}"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let e = rt
        .block_on(zerg_uring::connect_timeout(addr, Duration::from_secs(1)))
        .unwrap_err();
    assert!(matches!(e, Error::NotOnReactor { .. }), "{e:?}");

    let up = Echo::start();
    let stream = TcpStream::connect(up.addr).unwrap();
    let e = futures::executor::block_on(zerg_uring::adopt(stream)).unwrap_err();
    assert!(matches!(e, Error::NotOnReactor { what: "adopt" }), "{e:?}");
    assert!(e.to_string().contains("Engine::adopt"), "{e}");
}

/// `adopt` on a reactor and `Engine::adopt` from elsewhere turn a connected std stream into a
/// connection; an unconnected socket is refused.
#[test]
fn adopting_a_connected_stream() {
    let _g = serial();
    let up = Echo::start();
    let addr = up.addr;
    let r = OnReactor::start(1);
    let data = pattern(3, 30_000);
    let d = data.clone();
    let (got, reason) = r.run(move |_| async move {
        let stream = TcpStream::connect(addr).unwrap();
        let mut c = zerg_uring::adopt(stream).await.expect("adopt");
        echo_exchange(&mut c, &d).await
    });
    assert_same(&got, &data, "echo through an adopted stream");
    assert_eq!(reason, Some(CloseReason::PeerClosed));
    r.stop();

    let (engine, rt) = runtime_engine(1);
    let fds = open_fds();
    rt.block_on(async {
        let stream = TcpStream::connect(addr).unwrap();
        let mut c = engine.adopt(stream).await.expect("adopt");
        let (got, _) = echo_exchange(&mut c, b"adopted").await;
        assert_eq!(got, b"adopted");

        let unconnected: TcpStream =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .unwrap()
                .into();
        let e = engine.adopt(unconnected).await.unwrap_err();
        assert!(e.to_string().contains("must be connected"), "{e}");
    });
    assert!(wait_until(WAIT, || {
        engine.stats().total().connections == 0 && open_fds() == fds
    }));
    engine.stop();
    engine.join().unwrap();
}

/// Stopping the engine resolves every pending connect with `EngineStopped`, the reactors exit
/// (operation accounting stays exact) and no socket is left open; later requests fail at once.
#[test]
fn engine_stop_resolves_pending_connects() {
    let _g = serial();
    let hole = Blackhole::start();
    let addr = hole.addr;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fds = open_fds();
    let engine = Arc::new(Engine::listen(options(2, false)).unwrap());
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let e = engine.clone();
            rt.spawn(async move { e.connect(addr).await })
        })
        .collect();
    rt.block_on(async {
        let deadline = Instant::now() + WAIT;
        while engine.stats().total().connections != 6 {
            assert!(Instant::now() < deadline, "the connects never started");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    engine.stop();
    for t in tasks {
        let res = rt.block_on(t).unwrap();
        assert!(matches!(res, Err(Error::EngineStopped)), "{res:?}");
    }
    let late = rt.block_on(engine.connect(addr));
    assert!(matches!(late, Err(Error::EngineStopped)), "{late:?}");
    Arc::try_unwrap(engine).unwrap().join().unwrap();
    assert!(
        wait_until(WAIT, || open_fds() == fds),
        "{} / {fds}",
        open_fds()
    );
}

/// A graceful shutdown drains pending connects like connections: one that completes during the
/// grace period is delivered and works; the engine exits once it is done, well before the grace
/// period ends.
#[test]
fn graceful_shutdown_drains_pending_connects() {
    let _g = serial();
    let mut hole = Blackhole::start();
    let addr = hole.addr;
    let (engine, rt) = runtime_engine(1);
    let engine = Arc::new(engine);
    let e = engine.clone();
    let task = rt.spawn(async move {
        let mut c = e.connect(addr).await?;
        c.write(b"during the drain")?;
        c.flush().await?;
        Ok::<_, Error>(c.reactor())
    });
    rt.block_on(async {
        let deadline = Instant::now() + WAIT;
        while engine.stats().total().connections != 1 {
            assert!(Instant::now() < deadline, "the connect never started");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let grace = Duration::from_secs(30);
    let started = Instant::now();
    engine.shutdown(grace);
    // The kernel retries the dropped SYN (after about a second) and now finds room.
    hole.make_room();
    let res = rt.block_on(task).unwrap();
    assert_eq!(res.expect("delivered during the drain"), 0);
    Arc::try_unwrap(engine).unwrap().join().unwrap();
    assert!(
        started.elapsed() < grace,
        "the engine waited for the whole grace period"
    );
}

/// Many connects, refusals and cancellations in a row leave the reactor's accounting exact: it
/// still stops at once and cleanly.
#[test]
fn mixed_outcomes_keep_the_reactor_accounting_exact() {
    let _g = serial();
    let up = Echo::start();
    let hole = Blackhole::start();
    let refused = closed_port();
    let (up_addr, hole_addr) = (up.addr, hole.addr);
    let r = OnReactor::start(1);
    let fds = open_fds();
    let (ok, errors) = r.run(move |_| async move {
        let (mut ok, mut errors) = (0, 0);
        for i in 0..30 {
            let res = match i % 3 {
                0 => zerg_uring::connect(up_addr).await,
                1 => zerg_uring::connect(refused).await,
                _ => zerg_uring::connect_timeout(hole_addr, Duration::from_millis(5)).await,
            };
            match res {
                Ok(mut c) => {
                    c.write(b"x").unwrap();
                    c.flush().await.unwrap();
                    ok += 1;
                }
                Err(_) => errors += 1,
            }
        }
        // Dropped before their first poll, and after it.
        drop(zerg_uring::connect(hole_addr));
        let mut pending = Box::pin(zerg_uring::connect(hole_addr));
        futures::future::poll_immediate(&mut pending).await;
        drop(pending);
        (ok, errors)
    });
    assert_eq!((ok, errors), (10, 20));
    assert!(
        wait_until(WAIT, || r.live_connections() == 0 && open_fds() == fds),
        "connections {} / fds {} (baseline {fds})",
        r.live_connections(),
        open_fds()
    );
    r.stop();
    drop((up, hole));
}

/// Several tasks exchange data over outbound connections at once, on two reactors, while the
/// test reads what each upstream connection saw: no byte reaches the wrong connection.
#[test]
fn concurrent_outbound_connections_keep_their_bytes_apart() {
    let _g = serial();
    let up = Echo::start();
    let r = OnReactor::start(2);
    let addr = up.addr;
    let waits: Vec<_> = (0..8u64)
        .map(|id| {
            r.spawn(move |_| async move {
                let mut c = zerg_uring::connect(addr).await.unwrap();
                let data = util::tagged(id, 60_000);
                let (got, _) = echo_exchange(&mut c, &data).await;
                got == data
            })
        })
        .collect();
    for (rx, _client) in waits {
        assert!(
            rx.recv_timeout(WAIT).unwrap(),
            "bytes of another connection"
        );
    }
    r.stop();
    let mut s = TcpStream::connect(up.addr).unwrap();
    s.write_all(b"still up").unwrap();
    let mut buf = [0u8; 8];
    s.read_exact(&mut buf).unwrap();
}

/// Outbound connections count against `max_connections_per_reactor`: past it, a connect is
/// refused with an error that says so, and nothing is left open.
#[test]
fn connects_past_the_connection_limit_are_refused() {
    let _g = serial();
    let up = Echo::start();
    let addr = up.addr;
    let mut opts = options(1, false);
    opts.reactor_configs[0].max_connections_per_reactor = 2;
    let r = OnReactor::with_options(opts);
    let (first, second) = r.run(move |trigger| async move {
        // The trigger connection is one of the two.
        let _trigger = trigger;
        let first = zerg_uring::connect(addr).await;
        let second = zerg_uring::connect(addr).await.map(drop);
        (first.map(drop), second)
    });
    first.expect("the second connection fits");
    let e = second.expect_err("a third does not");
    assert!(
        matches!(&e, Error::Connect { addr: a, .. } if *a == addr),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("max_connections_per_reactor (2)"),
        "{e}"
    );
    assert!(wait_until(WAIT, || r.live_connections() == 0));
    r.stop();
}

/// IPv6 loopback works the same (skipped, loudly, where the host has no `::1`).
#[test]
fn connect_over_ipv6_loopback() {
    let _g = serial();
    let listener = match std::net::TcpListener::bind("[::1]:0") {
        Ok(l) => l,
        Err(e) => {
            eprintln!("SKIPPED connect_over_ipv6_loopback: no IPv6 loopback here ({e})");
            return;
        }
    };
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        s.write_all(b"six").unwrap();
        peer
    });
    let r = OnReactor::start(1);
    let (got, local) = r.run(move |_| async move {
        let mut c = zerg_uring::connect(addr).await.expect("connect to ::1");
        let snap = c.read().await;
        (snap.to_vec(), c.peer_addr().unwrap())
    });
    assert_eq!(got, b"six");
    assert_eq!(local, addr);
    assert!(server.join().unwrap().is_ipv6());
    r.stop();
}
