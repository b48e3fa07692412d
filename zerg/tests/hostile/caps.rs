//! Connection caps: at the cap the engine stops accepting, so clients past it wait in the listen
//! backlog — none is accepted and closed — and are served once others leave (accepting resumes
//! at 90 % of the cap). Before, connections past `max_connections_per_reactor` were accepted and
//! closed at once: a flood locked everyone out.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use zerg_uring::{AcceptMode, Connection, EngineStats};

use crate::util::{self, Mode, TestServer, assert_same, tagged};

const CAP: u64 = 4;
const CLIENTS: u64 = 10;

fn round_trip(c: &mut TcpStream, id: u64) {
    let msg = tagged(id, 512);
    c.write_all(&msg).unwrap();
    let mut got = vec![0u8; msg.len()];
    c.read_exact(&mut got)
        .unwrap_or_else(|e| panic!("client {id} was not served: {e}"));
    assert_same(&got, &msg, &format!("client {id}"));
}

/// Handlers running now, and the most that ever ran at once. A handler starts after its
/// connection took a place and ends before the place is given back, so this never exceeds the
/// number of connections admitted (the per-reactor stats, published by each reactor on its own,
/// can lag each other by a connection).
#[derive(Default)]
struct Live {
    now: AtomicU64,
    max: AtomicU64,
}

async fn counted_echo(conn: Connection, live: Arc<Live>) {
    let n = live.now.fetch_add(1, Ordering::SeqCst) + 1;
    live.max.fetch_max(n, Ordering::SeqCst);
    util::echo(conn).await;
    live.now.fetch_sub(1, Ordering::SeqCst);
}

fn accept_pauses(s: &EngineStats) -> u64 {
    s.total().accept_pauses + s.acceptor.accept_pauses
}

/// A client past the cap: connected (the kernel completed the handshake) and its request sent,
/// but neither served nor closed. Returns the thread that waits for its echo, then leaves.
fn wait_in_backlog(server: &TestServer, id: u64) -> std::thread::JoinHandle<()> {
    let mut c = server.connect();
    let msg = tagged(id, 512);
    c.write_all(&msg).unwrap();
    c.set_nonblocking(true).unwrap();
    let mut probe = [0u8; 1];
    match c.peek(&mut probe) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("client {id} past the cap got {other:?}: served or closed"),
    }
    c.set_nonblocking(false).unwrap();
    std::thread::spawn(move || {
        let mut got = vec![0u8; msg.len()];
        c.read_exact(&mut got).unwrap_or_else(|e| {
            panic!("client {id} past the cap was never served (closed or starved): {e}")
        });
        assert_same(&got, &msg, &format!("client {id}"));
        // Leaving makes room for the next one.
    })
}

/// `engine_cap` 0: only the per-reactor cap (`reactor_cap`) applies.
fn caps(mode: Mode, accept: AcceptMode, reactors: usize, engine_cap: u32, reactor_cap: u32) {
    let _serial = crate::serial();
    let mut opts = util::options(reactors, false);
    opts.accept_mode = accept;
    opts.max_connections = engine_cap;
    opts.reactor_configs[0].max_connections_per_reactor = reactor_cap;
    let live = Arc::new(Live::default());
    let l = live.clone();
    let server = TestServer::start(mode, opts, move |c| counted_echo(c, l.clone()));

    let mut first: Vec<TcpStream> = (0..CAP)
        .map(|id| {
            let mut c = server.connect();
            round_trip(&mut c, id);
            c
        })
        .collect();
    server.wait_stats(Duration::from_secs(5), "the first clients adopted", |s| {
        s.total().connections == CAP
    });

    // Past the cap: the handshake completes in the kernel, the request waits with it.
    let waiting: Vec<_> = (CAP..CLIENTS)
        .map(|id| wait_in_backlog(&server, id))
        .collect();
    let t = server.engine().stats().total();
    assert!(
        t.connections <= CAP,
        "{} live past a cap of {CAP}",
        t.connections
    );

    // The first clients leave: everyone waiting is served in turn.
    for c in first.drain(..) {
        drop(c);
    }
    for w in waiting {
        w.join()
            .expect("every client past the cap is served once others leave");
    }
    server.assert_quiescent();
    let s = server.engine().stats();
    let t = s.total();
    println!(
        "caps ({mode:?}, {accept:?}, {reactors} reactors, engine cap {engine_cap}, reactor cap \
         {reactor_cap}): {} connections served, at most {} live, accepting paused {} times, \
         shed {}",
        t.connections_total,
        live.max.load(Ordering::SeqCst),
        accept_pauses(&s),
        t.connections_shed
    );
    assert!(accept_pauses(&s) >= 1, "accepting never paused");
    assert_eq!(
        t.connections_total, CLIENTS,
        "every client was adopted once"
    );
    assert_eq!(t.connections_shed, 0, "nobody was accepted and closed");
    assert!(
        live.max.load(Ordering::SeqCst) <= CAP,
        "more handlers than the cap"
    );
    server.stop();
}

#[test]
fn reactor_cap_dedicated_accept() {
    caps(Mode::Runtime, AcceptMode::Dedicated, 1, 0, CAP as u32);
}

#[test]
fn reactor_cap_per_reactor_accept() {
    caps(Mode::Reactor, AcceptMode::PerReactor, 1, 0, CAP as u32);
}

#[test]
fn engine_cap_dedicated_accept_two_reactors() {
    caps(Mode::Runtime, AcceptMode::Dedicated, 2, CAP as u32, 8192);
}

#[test]
fn engine_cap_per_reactor_accept_two_reactors() {
    caps(Mode::Reactor, AcceptMode::PerReactor, 2, CAP as u32, 8192);
}
