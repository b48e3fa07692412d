//! Where an engine listens: addresses converted into options, listening sockets inherited from
//! the application (systemd socket activation, hot restarts), several listeners in both accept
//! modes, and the checks that refuse a socket zerg cannot accept on.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::OwnedFd;
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, Type};
use util::{Mode, TestServer, echo, options, roundtrip};
use zerg_uring::{AcceptMode, Connection, Engine, EngineOptions, Error};

const WAIT: Duration = Duration::from_secs(10);

fn loopback_listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind a loopback listener")
}

fn client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Answers every read with the index of the reactor serving the connection, then echoes.
async fn reactor_tag(mut conn: Connection) {
    let tag = [conn.reactor() as u8];
    loop {
        let snap = conn.read().await;
        if snap.is_closed() {
            return;
        }
        drop(snap);
        if conn.write(&tag).is_err() || conn.flush().await.is_err() {
            return;
        }
    }
}

fn tag_of(addr: SocketAddr) -> u8 {
    let mut s = client(addr);
    s.write_all(b"?").unwrap();
    let mut tag = [0u8; 1];
    s.read_exact(&mut tag).unwrap();
    tag[0]
}

#[test]
fn an_ipv4_address_listens_on_ipv4_and_reports_ipv4_peers() {
    // `From<(IpAddr, u16)>`: an IPv4 address is bound on an IPv4 socket, as std does, so peers
    // are IPv4 addresses rather than IPv4-mapped IPv6 ones.
    let engine = Engine::listen(([127, 0, 0, 1], 0)).expect("engine starts");
    let addr = engine.local_addr();
    assert!(addr.is_ipv4() && addr.port() != 0, "{addr}");
    assert_eq!(engine.local_addrs(), [addr]);
    let mut s = client(addr);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let peer = rt.block_on(async {
        let conn = engine.accept().await.expect("a connection");
        conn.peer_addr().expect("peer address")
    });
    assert_eq!(peer, s.local_addr().unwrap());
    assert!(peer.is_ipv4(), "{peer}");
    s.write_all(b"x").unwrap();
    engine.stop();
    engine.join().unwrap();
}

#[test]
fn bind_resolves_a_host_name() {
    let mut opts = EngineOptions::bind("localhost:0").expect("localhost resolves");
    opts.reactor_configs = options(1, false).reactor_configs;
    let server = TestServer::start(Mode::Runtime, opts, echo);
    assert!(server.addr.ip().is_loopback(), "{}", server.addr);
    let mut s = server.connect();
    assert_eq!(roundtrip(&mut s, b"resolved"), b"resolved");
    server.stop();
}

fn inherited_listener_serves(mode: Mode, accept: AcceptMode, reactors: usize) {
    let listener = loopback_listener();
    let addr = listener.local_addr().unwrap();
    let ours = listener.try_clone().unwrap();
    let mut opts = options(reactors, false);
    opts.accept_mode = accept;
    opts.tcp_keepalive = Some(Duration::from_secs(30));
    opts.add_listener(listener);
    let server = TestServer::start(mode, opts, echo);
    assert_eq!(server.addr, addr, "local_addr is the inherited listener's");
    // zerg set the options accepted sockets inherit on the listening socket itself.
    let sock = SockRef::from(&ours);
    assert!(sock.tcp_nodelay().unwrap(), "TCP_NODELAY on the listener");
    assert!(sock.keepalive().unwrap(), "SO_KEEPALIVE on the listener");

    let mut clients: Vec<TcpStream> = (0..8).map(|_| client(addr)).collect();
    for (i, s) in clients.iter_mut().enumerate() {
        let msg = format!("hello {i}");
        assert_eq!(roundtrip(s, msg.as_bytes()), msg.as_bytes());
    }
    let served: u64 = server
        .engine()
        .stats()
        .reactors
        .iter()
        .map(|r| r.connections_total)
        .sum();
    assert_eq!(served, 8);
    drop(clients);
    server.stop();

    // The engine stopped without taking the socket out of the listening state: the next
    // process of a hot restart (here, the test) still accepts on it.
    let _late = client(addr);
    ours.set_nonblocking(false).unwrap();
    let (accepted, _) = ours.accept().expect("the listener still listens");
    drop(accepted);
}

#[test]
fn an_inherited_listener_serves_handlers_on_a_runtime() {
    inherited_listener_serves(Mode::Runtime, AcceptMode::Dedicated, 2);
}

#[test]
fn an_inherited_listener_serves_thread_per_core_handlers() {
    inherited_listener_serves(Mode::Reactor, AcceptMode::Dedicated, 2);
}

#[test]
fn a_reactor_accepts_on_an_inherited_listener_in_per_reactor_mode() {
    inherited_listener_serves(Mode::Reactor, AcceptMode::PerReactor, 1);
}

#[test]
fn an_owned_fd_is_taken_as_a_listener() {
    let listener = loopback_listener();
    let addr = listener.local_addr().unwrap();
    let fd: OwnedFd = listener.into();
    let mut opts = EngineOptions::listener(fd);
    opts.reactor_configs = options(1, false).reactor_configs;
    let server = TestServer::start(Mode::Reactor, opts, echo);
    let mut s = client(addr);
    assert_eq!(roundtrip(&mut s, b"from an fd"), b"from an fd");
    server.stop();
}

/// With plain descriptors and with direct ones (each listener's accept into the acceptor's file
/// table, handed ring to ring).
#[test]
fn the_acceptor_accepts_on_several_listeners() {
    for direct in [false, true] {
        let listeners: Vec<TcpListener> = (0..3).map(|_| loopback_listener()).collect();
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let mut opts = EngineOptions::listeners(listeners);
        opts.reactor_count = 2;
        opts.reactor_configs = options(1, false).reactor_configs;
        opts.reactor_configs[0].direct_descriptors = direct;
        let server = TestServer::start(Mode::Runtime, opts, echo);
        assert_eq!(server.engine().local_addrs(), addrs.as_slice());
        for round in 0..3 {
            for (i, &addr) in addrs.iter().enumerate() {
                let mut s = client(addr);
                let msg = format!("listener {i} round {round}");
                assert_eq!(roundtrip(&mut s, msg.as_bytes()), msg.as_bytes());
            }
        }
        server.wait_stats(WAIT, "the nine connections counted", |s| {
            s.acceptor.accepted == 9 && s.total().connections_total == 9
        });
        let want = if direct { 9 } else { 0 };
        assert_eq!(server.engine().stats().total().direct_connections, want);
        server.stop();
    }
}

/// Answers every read with the port the connection was accepted on (its local address).
async fn local_port(mut conn: Connection) {
    let port = conn.local_addr().expect("local address").port();
    loop {
        let snap = conn.read().await;
        if snap.is_closed() {
            return;
        }
        drop(snap);
        if conn.write(&port.to_le_bytes()).is_err() || conn.flush().await.is_err() {
            return;
        }
    }
}

/// Also on direct descriptors, where `local_addr` installs a descriptor first.
#[test]
fn connections_know_the_listener_they_came_in_on() {
    let listeners: Vec<TcpListener> = (0..2).map(|_| loopback_listener()).collect();
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let mut opts = EngineOptions::listeners(listeners);
    opts.reactor_configs = options(1, false).reactor_configs;
    for direct in [false, true] {
        opts.reactor_configs[0].direct_descriptors = direct;
        for mode in [Mode::Runtime, Mode::Reactor] {
            let server = TestServer::start(mode, opts.clone(), local_port);
            for &addr in addrs.iter().chain(addrs.iter().rev()) {
                let mut s = client(addr);
                assert_eq!(roundtrip(&mut s, b"?!"), addr.port().to_le_bytes());
            }
            // The counters are published once per loop iteration: wait for this one's.
            let want = if direct { 4 } else { 0 };
            server.wait_stats(WAIT, "the four connections counted", |s| {
                let t = s.total();
                t.connections_total == 4 && t.fd_installs == want
            });
            assert_eq!(server.engine().stats().total().direct_connections, want);
            server.stop();
        }
    }
}

#[test]
fn per_reactor_mode_gives_each_reactor_its_own_listener() {
    let listeners: Vec<TcpListener> = (0..2).map(|_| loopback_listener()).collect();
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let mut opts = EngineOptions::listeners(listeners);
    opts.reactor_count = 2;
    opts.accept_mode = AcceptMode::PerReactor;
    opts.reactor_configs = options(1, false).reactor_configs;
    let server = TestServer::start(Mode::Reactor, opts, reactor_tag);
    for _ in 0..4 {
        assert_eq!(tag_of(addrs[0]), 0, "listener 0 belongs to reactor 0");
        assert_eq!(tag_of(addrs[1]), 1, "listener 1 belongs to reactor 1");
    }
    server.stop();
}

#[test]
fn per_reactor_mode_refuses_listeners_it_cannot_give_one_per_reactor() {
    for (listeners, reactors) in [(2, 3), (1, 2)] {
        let mut opts = EngineOptions::listeners((0..listeners).map(|_| loopback_listener()));
        opts.reactor_count = reactors;
        opts.accept_mode = AcceptMode::PerReactor;
        let err = Engine::listen(opts).unwrap_err();
        match &err {
            Error::Config(c) => {
                assert_eq!(c.field(), "listeners");
                assert!(c.reason().contains("AcceptMode::Dedicated"), "{err}");
            }
            other => panic!("expected a config error, got {other:?}"),
        }
    }
}

/// Starts an engine on `fd` as its only listener and returns the configuration error.
fn refused(fd: OwnedFd) -> String {
    match Engine::listen(EngineOptions::listener(fd)) {
        Err(Error::Config(c)) => {
            assert_eq!(c.field(), "listeners[0]", "{c}");
            c.to_string()
        }
        Err(other) => panic!("expected a config error, got {other:?}"),
        Ok(engine) => panic!("started on a socket it cannot accept on: {engine:?}"),
    }
}

#[test]
fn sockets_zerg_cannot_accept_on_are_refused_with_the_reason() {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let msg = refused(udp.into());
    assert!(msg.contains("not a stream socket"), "{msg}");

    // Bound, never listening.
    let tcp = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    tcp.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let msg = refused(tcp.into());
    assert!(msg.contains("is not listening"), "{msg}");

    let dir = std::env::temp_dir().join(format!("zerg-listen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sock");
    let _ = std::fs::remove_file(&path);
    let unix = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let msg = refused(unix.into());
    assert!(msg.contains("Unix-domain"), "{msg}");
    let _ = std::fs::remove_dir_all(&dir);

    let file = std::fs::File::open("/proc/self/status").unwrap();
    let msg = refused(file.into());
    assert!(msg.contains("is not a socket"), "{msg}");
}

#[test]
fn one_socket_given_twice_is_refused() {
    let listener = loopback_listener();
    let twin = listener.try_clone().unwrap();
    let mut opts = EngineOptions::listeners([loopback_listener(), listener, twin]);
    opts.reactor_configs = options(1, false).reactor_configs;
    match Engine::listen(opts) {
        Err(Error::Config(c)) => {
            assert_eq!(c.field(), "listeners[2]");
            assert!(c.reason().contains("same socket as listeners[1]"), "{c}");
        }
        Err(other) => panic!("expected a config error, got {other:?}"),
        Ok(engine) => panic!("started with one socket twice: {engine:?}"),
    }
}

#[test]
fn a_listener_shut_down_by_another_holder_stops_alone_without_spinning() {
    let gone = loopback_listener();
    let ours = gone.try_clone().unwrap();
    let kept = loopback_listener();
    let kept_addr = kept.local_addr().unwrap();
    let mut opts = EngineOptions::listeners([gone, kept]);
    opts.reactor_configs = options(1, false).reactor_configs;
    let server = TestServer::start(Mode::Reactor, opts, echo);
    // Another holder takes the socket out of the listening state: the accept on it fails.
    SockRef::from(&ours).shutdown(Shutdown::Read).unwrap();
    server.wait_stats(Duration::from_secs(10), "the failed accept", |s| {
        s.acceptor.accept_errors >= 1
    });
    // The other listener keeps serving; a few round trips later the failed one was not
    // re-armed over and over (a spinning acceptor counts an error per attempt).
    for i in 0..20 {
        let mut s = client(kept_addr);
        let msg = format!("still here {i}");
        assert_eq!(roundtrip(&mut s, msg.as_bytes()), msg.as_bytes());
    }
    assert_eq!(server.engine().stats().acceptor.accept_errors, 1);
    assert!(server.engine().is_running());
    server.stop();
}

#[test]
fn a_reactor_whose_listener_was_shut_down_stops_accepting_without_spinning() {
    let gone = loopback_listener();
    let ours = gone.try_clone().unwrap();
    let mut opts = EngineOptions::listeners([gone, loopback_listener()]);
    opts.reactor_count = 2;
    opts.accept_mode = AcceptMode::PerReactor;
    opts.reactor_configs = options(1, false).reactor_configs;
    let server = TestServer::start(Mode::Runtime, opts, echo);
    SockRef::from(&ours).shutdown(Shutdown::Read).unwrap();
    server.wait_stats(Duration::from_secs(10), "the failed accept", |s| {
        s.reactors[0].accept_errors >= 1
    });
    // Keep reactor 0 busy with outbound connections to an echo peer the test runs: a reactor
    // re-arming the failed accept over and over would count an error per attempt meanwhile.
    let upstream = loopback_listener();
    let upstream_addr = upstream.local_addr().unwrap();
    let peer = std::thread::spawn(move || {
        for _ in 0..4 {
            let (mut s, _) = upstream.accept().unwrap();
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).unwrap();
            s.write_all(&buf[..n]).unwrap();
        }
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut on_reactor_0 = 0;
    rt.block_on(async {
        for i in 0..4 {
            let mut conn = server.engine().connect(upstream_addr).await.unwrap();
            on_reactor_0 += usize::from(conn.reactor() == 0);
            let msg = format!("ping {i}");
            conn.write(msg.as_bytes()).unwrap();
            conn.flush().await.unwrap();
            let mut got = Vec::new();
            while got.len() < msg.len() {
                let snap = conn.read().await;
                assert!(!snap.is_closed(), "the echo peer closed early");
                got.extend(snap.to_vec());
            }
            assert_eq!(got, msg.as_bytes());
        }
    });
    peer.join().unwrap();
    assert_eq!(on_reactor_0, 2, "outbound connections go round-robin");
    let stats = server.engine().stats();
    assert_eq!(stats.reactors[0].accept_errors, 1, "{stats:#?}");
    // The other reactor still accepts on its listener.
    let kept = server.engine().local_addrs()[1];
    let mut s = client(kept);
    assert_eq!(roundtrip(&mut s, b"still here"), b"still here");
    server.stop();
}

/// `join_async` can be spawned on a work-stealing runtime.
#[allow(dead_code)]
fn join_async_is_send(
    engine: Engine,
) -> impl std::future::Future<Output = zerg_uring::Result<()>> + Send {
    engine.join_async()
}

#[test]
fn stopped_and_join_async_wait_without_blocking_the_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let engine = Engine::listen(options(2, false)).expect("engine starts");
        let addr = engine.local_addr();
        let stopped = tokio::spawn(engine.stopped());
        assert!(
            futures::FutureExt::now_or_never(engine.stopped()).is_none(),
            "a running engine is not stopped"
        );
        let peer = tokio::task::spawn_blocking(move || {
            let mut s = client(addr);
            s.write_all(b"x").unwrap();
            s
        });
        let mut conn = engine.accept().await.expect("a connection");
        let mut peer = peer.await.unwrap();
        // A handler on this very (single-threaded) runtime, which answers only once the test
        // awaits: a blocking `join` here would keep it from running until the grace ran out.
        let handler = tokio::spawn(async move {
            let snap = conn.read().await;
            assert_eq!(snap.to_vec(), b"x");
            drop(snap);
            conn.write(b"bye").unwrap();
            conn.flush().await.unwrap();
        });
        engine.shutdown(Duration::from_secs(60));
        tokio::time::timeout(Duration::from_secs(30), engine.join_async())
            .await
            .expect("join_async finishes long before the 60 s grace period")
            .expect("the engine ran without failure");
        handler.await.unwrap();
        let got = tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 3];
            peer.read_exact(&mut buf).unwrap();
            buf
        })
        .await
        .unwrap();
        assert_eq!(&got, b"bye");
        tokio::time::timeout(Duration::from_secs(5), stopped)
            .await
            .expect("stopped() resolved")
            .unwrap();
    });
}
