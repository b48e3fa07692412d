//! A connection's descriptor: `AsFd`/`AsRawFd` on `Connection` are sound (the descriptor stays
//! open while the handle lives, even across the engine's stop), and direct descriptors
//! (`ReactorConfig::direct_descriptors`) keep connections out of the process's descriptor table
//! until someone asks for one.
//!
//! The tests run one at a time (`serial`): some count the process's descriptors.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use util::{Mode, TestServer, echo, options, wait_until};
use zerg_uring::{AcceptMode, Connection, Engine, EngineOptions};

const WAIT: Duration = Duration::from_secs(10);

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn opts(direct: bool) -> EngineOptions {
    let mut o = options(1, false);
    o.reactor_configs[0].direct_descriptors = direct;
    o
}

/// What `/proc/self/fd/N` points to (`socket:[inode]`), if `fd` is open.
fn target(fd: RawFd) -> Option<String> {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .ok()
        .map(|p| p.display().to_string())
}

/// `a` with an IPv4-mapped IPv6 address as the IPv4 one (the engine listens dual-stack).
fn canon(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

fn local_addr(conn: &Connection) -> SocketAddr {
    let addr = canon(conn.local_addr().unwrap());
    let sock = socket2::SockRef::from(conn).local_addr().unwrap();
    assert_eq!(
        canon(sock.as_socket().unwrap()),
        addr,
        "local_addr is getsockname"
    );
    addr
}

fn peer_addr(conn: &Connection) -> SocketAddr {
    canon(conn.peer_addr().unwrap())
}

/// A listening engine and a runtime to take its connections on this (non-reactor) thread.
struct Listening {
    engine: Engine,
    rt: tokio::runtime::Runtime,
}

impl Listening {
    fn start(o: EngineOptions) -> Listening {
        Listening {
            engine: Engine::listen(o).expect("engine starts"),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    /// Connects a client and takes its connection.
    fn pair(&self) -> (TcpStream, Connection) {
        let client = TcpStream::connect(self.engine.local_addr()).unwrap();
        client.set_read_timeout(Some(WAIT)).unwrap();
        let conn = self
            .rt
            .block_on(async {
                tokio::time::timeout(WAIT, self.engine.accept())
                    .await
                    .ok()
                    .flatten()
            })
            .expect("a connection");
        (client, conn)
    }
}

/// The handle outlives the engine: its descriptor stays open and keeps naming the same socket,
/// which the stop shut down (the peer reads end of file); dropping the handle closes it.
fn descriptor_outlives_stop(direct: bool, borrow_before_stop: bool) {
    let l = Listening::start(opts(direct));
    let server = l.engine.local_addr();
    let (mut client, conn) = l.pair();
    let before = borrow_before_stop.then(|| {
        let fd = conn.as_raw_fd();
        assert_eq!(peer_addr(&conn), client.local_addr().unwrap());
        (fd, target(fd).expect("open"))
    });
    l.engine.stop();
    l.engine.join().expect("engine ran without failure");
    // The socket was shut down: the client sees the close at once.
    let mut byte = [0u8; 1];
    assert_eq!(client.read(&mut byte).unwrap_or(0), 0, "end of file");
    // Same descriptor (or, direct and never asked before, one installed at the stop), still
    // open, still this connection's socket.
    let fd = conn.as_raw_fd();
    let link = target(fd).expect("open after the stop");
    assert!(link.starts_with("socket:"), "{link}");
    if let Some((before, link_before)) = before {
        assert_eq!(fd, before);
        assert_eq!(link, link_before);
    }
    assert_eq!(local_addr(&conn), server);
    assert_eq!(conn.as_fd().as_raw_fd(), fd);
    drop(conn);
    // Closed with the handle (the number may be reused at once by a parallel test: compare
    // what it names).
    assert_ne!(target(fd), Some(link), "closed when the handle went");
}

#[test]
fn descriptor_outlives_engine_stop_plain() {
    let _s = serial();
    descriptor_outlives_stop(false, true);
}

#[test]
fn descriptor_outlives_engine_stop_direct_borrowed_before() {
    let _s = serial();
    descriptor_outlives_stop(true, true);
}

#[test]
fn descriptor_outlives_engine_stop_direct_never_borrowed() {
    let _s = serial();
    descriptor_outlives_stop(true, false);
}

/// Direct descriptors: the accepted connections are not in the process's table; asking for a
/// descriptor from another thread installs one (once), which names the connection's socket.
#[test]
fn direct_descriptors_install_on_demand_off_the_reactor() {
    let _s = serial();
    let l = Listening::start(opts(true));
    let fds0 = util::open_fds();
    let pairs: Vec<_> = (0..32).map(|_| l.pair()).collect();
    // Only the 32 client ends were added to this process's table.
    assert_eq!(util::open_fds() - fds0, 32);
    let t = l.engine.stats().total();
    assert_eq!((t.direct_connections, t.fd_installs), (32, 0), "{t:?}");

    let (client, conn) = &pairs[5];
    let t0 = std::time::Instant::now();
    let fd = conn.as_raw_fd();
    println!(
        "first as_raw_fd on a direct descriptor, from another thread, reactor asleep: {:?}",
        t0.elapsed()
    );
    assert_eq!(conn.as_raw_fd(), fd, "installed once");
    assert_eq!(peer_addr(conn), client.local_addr().unwrap());
    assert!(socket2::SockRef::from(conn).tcp_nodelay().unwrap());
    assert_eq!(util::open_fds() - fds0, 33);
    assert_eq!(l.engine.stats().total().fd_installs, 1);
    // local_addr on another connection installs its descriptor too, and names the listener.
    let (_, other) = &pairs[6];
    assert_eq!(local_addr(other), l.engine.local_addr());
    assert_eq!(util::open_fds() - fds0, 34);
    assert_eq!(l.engine.stats().total().fd_installs, 2);

    // Dropping the connection closes both the slot and the installed descriptor.
    let link = target(fd).unwrap();
    drop(pairs);
    assert!(wait_until(WAIT, || l.engine.stats().total().connections == 0));
    assert_ne!(target(fd), Some(link));
    assert!(wait_until(WAIT, || util::open_fds() <= fds0));
    l.engine.stop();
    l.engine.join().unwrap();
}

/// A handler on the reactor thread installs inline, in the middle of its traffic, while other
/// connections' completions keep arriving; nothing is lost or misdelivered.
#[test]
fn direct_descriptor_installed_inline_by_reactor_handlers() {
    let _s = serial();
    let (tx, rx) = mpsc::channel::<(RawFd, SocketAddr)>();
    let tx = std::sync::Arc::new(Mutex::new(tx));
    let server = TestServer::start(Mode::Reactor, opts(true), move |mut conn| {
        let tx = tx.lock().unwrap().clone();
        async move {
            let mut n = 0u64;
            loop {
                let snap = conn.read().await;
                if snap.is_closed() {
                    return;
                }
                for b in snap.buffers() {
                    conn.write(b).unwrap();
                }
                drop(snap);
                n += 1;
                if n == 50 {
                    let fd = conn.as_raw_fd();
                    tx.send((fd, peer_addr(&conn))).unwrap();
                }
                if conn.flush().await.is_err() {
                    return;
                }
            }
        }
    });
    let clients: Vec<_> = (0..8u64)
        .map(|i| {
            let addr = server.addr;
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(addr).unwrap();
                c.set_read_timeout(Some(WAIT)).unwrap();
                c.set_nodelay(true).unwrap();
                for round in 0..200u64 {
                    let msg = util::tagged(i * 1000 + round, 200);
                    c.write_all(&msg).unwrap();
                    let mut got = vec![0u8; msg.len()];
                    c.read_exact(&mut got).unwrap();
                    util::assert_same(&got, &msg, "echo across an inline install");
                }
                c.local_addr().unwrap()
            })
        })
        .collect();
    let locals: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let mut seen: Vec<_> = (0..8).map(|_| rx.recv_timeout(WAIT).unwrap()).collect();
    seen.sort_by_key(|s| s.1);
    let mut want = locals.clone();
    want.sort();
    assert_eq!(seen.iter().map(|s| s.1).collect::<Vec<_>>(), want);
    let t = server.engine().stats().total();
    assert_eq!((t.direct_connections, t.fd_installs), (8, 8), "{t:?}");
    server.assert_quiescent();
    server.stop();
}

/// Direct descriptors with per-reactor accept (each reactor accepts into its own table) and
/// with the acceptor thread (passed ring to ring), several reactors, connections churning.
#[test]
fn direct_descriptors_churn_in_both_accept_modes() {
    let _s = serial();
    for mode in [AcceptMode::PerReactor, AcceptMode::Dedicated] {
        let mut o = opts(true);
        o.reactor_count = 2;
        o.accept_mode = mode;
        let server = TestServer::start(Mode::Reactor, o, echo);
        for i in 0..200u64 {
            let mut c = server.connect();
            let msg = util::tagged(i, 64);
            assert_eq!(util::roundtrip(&mut c, &msg), msg);
        }
        server.assert_quiescent();
        let t = server.engine().stats().total();
        assert_eq!(t.direct_connections, 200, "{mode:?}: {t:?}");
        assert_eq!(t.fd_installs, 0, "{mode:?}");
        if mode == AcceptMode::Dedicated {
            assert_eq!(server.engine().stats().acceptor.handoff_failures, 0);
        }
        server.stop();
    }
}

/// A table the kernel refuses (more slots than `RLIMIT_NOFILE`) means plain descriptors, and the
/// engine serves as usual.
#[test]
fn direct_descriptors_fall_back_to_plain_ones() {
    let _s = serial();
    // The soft limit, from /proc/self/limits ("Max open files  <soft>  <hard>  files").
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap()
        .to_string();
    let Some(too_many) = soft.parse::<u32>().ok().and_then(|n| n.checked_add(1)) else {
        eprintln!("SKIPPED: RLIMIT_NOFILE is {soft} here; no table size the kernel refuses");
        return;
    };
    let mut o = opts(true);
    o.reactor_configs[0].max_connections_per_reactor = too_many;
    let server = TestServer::start(Mode::Runtime, o, echo);
    let mut c = server.connect();
    assert_eq!(util::roundtrip(&mut c, b"plain"), b"plain");
    drop(c);
    server.assert_quiescent();
    let t = server.engine().stats().total();
    assert_eq!((t.connections_total, t.direct_connections), (1, 0), "{t:?}");
    server.stop();
}

/// At the connection cap with direct descriptors: accepting pauses (clients wait in the
/// backlog), no hand-off fails for want of a slot, nothing is shed, and the waiting clients are
/// served once the first ones leave — in both accept modes.
#[test]
fn direct_descriptors_at_the_connection_cap() {
    let _s = serial();
    for mode in [AcceptMode::PerReactor, AcceptMode::Dedicated] {
        let mut o = opts(true);
        o.accept_mode = mode;
        o.reactor_configs[0].max_connections_per_reactor = 16;
        let server = TestServer::start(Mode::Reactor, o, echo);
        // Sixteen clients take every place and keep it.
        let holders: Vec<_> = (0..16u64)
            .map(|i| {
                let mut c = server.connect();
                let msg = util::tagged(i, 100);
                assert_eq!(util::roundtrip(&mut c, &msg), msg);
                c
            })
            .collect();
        let pauses =
            |s: &zerg_uring::EngineStats| s.total().accept_pauses + s.acceptor.accept_pauses;
        server.wait_stats(WAIT, "accepting paused at the cap", |s| pauses(s) >= 1);
        // More clients connect (the kernel completes their handshakes into the listen backlog)
        // and send a request meanwhile; none is served while the first sixteen stay.
        let (sent_tx, sent_rx) = mpsc::channel();
        let waiting: Vec<_> = (0..48u64)
            .map(|i| {
                let addr = server.addr;
                let sent = sent_tx.clone();
                std::thread::spawn(move || {
                    let mut c = TcpStream::connect(addr).unwrap();
                    c.set_read_timeout(Some(WAIT)).unwrap();
                    let msg = util::tagged(100 + i, 100);
                    c.write_all(&msg).unwrap();
                    sent.send(()).unwrap();
                    let mut got = vec![0u8; msg.len()];
                    c.read_exact(&mut got).unwrap();
                    util::assert_same(&got, &msg, "served after waiting at the cap");
                })
            })
            .collect();
        for _ in 0..waiting.len() {
            sent_rx
                .recv_timeout(WAIT)
                .expect("a waiting client connected and sent");
        }
        let t = server.engine().stats().total();
        assert_eq!(t.connections, 16, "{mode:?}: past the cap: {t:?}");
        drop(holders);
        for c in waiting {
            c.join().unwrap();
        }
        server.assert_quiescent();
        let stats = server.engine().stats();
        let t = stats.total();
        assert_eq!(t.direct_connections, 64, "{mode:?}: {t:?}");
        assert_eq!(t.connections_shed, 0, "{mode:?}");
        assert_eq!(stats.acceptor.handoff_failures, 0, "{mode:?}");
        server.stop();
    }
}
