//! Closes noticed while a connection does not receive.
//!
//! Two ways a receive stops: the connection holds its bound (`Bound`: the handler keeps every
//! byte, waiting for a `\r\n\r\n` that never comes) or the ring is empty (`Starved`: a hog
//! connection holds every buffer and the victim's receive ended with `-ENOBUFS`). Then the peer
//! resets, or half-closes. Without a watch on the socket the handler would wait forever and its
//! descriptor and buffers would never come back; with it:
//!
//! - reset: the handler's read ends with `Reset` at once;
//! - FIN, everything before it already received: the read ends with `PeerClosed` at once, after
//!   every byte; the handler can still answer (half-close);
//! - FIN with bytes still in the socket: the handler is told nothing yet; once buffers come back
//!   it reads those bytes, then `PeerClosed`.
//!
//! Every case ends with no connection, every buffer back and the descriptor count at its
//! baseline.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use tokio::sync::oneshot;
use zerg_uring::{CloseReason, Connection, ConnectionReader, ConnectionStream, EngineStats};

use crate::util::{self, Mode, TestServer, tagged};

const BUF: usize = 4096;
const RING: u32 = 16;
/// How long a handler may take to learn of a close (generous: it is "at once" in practice).
const TOLD: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Raw,
    Reader,
    Stream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pause {
    /// The victim holds its bound (2 buffers) and waits for more.
    Bound,
    /// A hog holds the whole ring; the victim's receive ran dry.
    Starved,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    Reset,
    /// FIN after everything sent was received.
    Fin,
    /// FIN while bytes before it are still in the socket.
    FinWithLeftover,
}

/// What a victim handler saw: how its reads ended and how many bytes it read.
#[derive(Debug)]
struct Seen {
    ended: String,
    bytes: usize,
}

struct Ctx {
    api: Api,
    starved: bool,
    seen: Mutex<mpsc::Sender<Seen>>,
    hog_release: Mutex<Option<oneshot::Receiver<()>>>,
    victim_release: Mutex<Option<oneshot::Receiver<()>>>,
}

fn reason(r: Option<CloseReason>) -> String {
    format!("{:?}", r.expect("a completed read has a reason"))
}

/// Holds every snapshot until released, then reads on; returns how reads ended.
async fn raw(conn: &mut Connection, mut release: oneshot::Receiver<()>) -> Seen {
    let (mut held, mut bytes, mut released) = (Vec::new(), 0, false);
    loop {
        tokio::select! {
            biased;
            _ = &mut release, if !released => {
                released = true;
                held.clear();
            }
            snap = conn.read() => {
                if snap.is_closed() {
                    return Seen { ended: reason(snap.close_reason()), bytes };
                }
                bytes += snap.len();
                if !released {
                    held.push(snap);
                }
            }
        }
    }
}

/// Examines everything and consumes nothing until released (a parser waiting for `\r\n\r\n`),
/// then consumes everything. A reader that holds its connection's whole receive bound gives up
/// with `MessageTooLarge` rather than wait (reported as such).
async fn reader(reader: &mut ConnectionReader, mut release: oneshot::Receiver<()>) -> Seen {
    let (mut consumed, mut view, mut released) = (0, 0, false);
    loop {
        let done = tokio::select! {
            biased;
            _ = &mut release, if !released => None,
            r = reader.read() => {
                if r.error().is_some() {
                    return Seen { ended: "MessageTooLarge".into(), bytes: consumed + view };
                }
                assert!(r.buffer().position_of(b"\r\n\r\n").is_none());
                view = r.buffer().len();
                Some(r.close_reason())
            }
        };
        match done {
            None => released = true,
            Some(Some(r)) => {
                return Seen {
                    ended: reason(Some(r)),
                    bytes: consumed + view,
                };
            }
            Some(None) => {}
        }
        if released {
            reader.advance(view, view);
            consumed += view;
            view = 0;
        }
    }
}

/// Plain `AsyncRead` until end of file or an error.
async fn stream(stream: &mut ConnectionStream) -> Seen {
    use tokio::io::AsyncReadExt;
    let (mut buf, mut bytes) = (vec![0u8; BUF], 0);
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => {
                return Seen {
                    ended: "PeerClosed".into(),
                    bytes,
                };
            }
            Ok(n) => bytes += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Seen {
                    ended: "Reset".into(),
                    bytes,
                };
            }
            Err(e) => {
                return Seen {
                    ended: format!("{e}"),
                    bytes,
                };
            }
        }
    }
}

/// The victim: reads with its API until the connection ends, reports, answers "bye".
async fn victim(mut conn: Connection, ctx: Arc<Ctx>) {
    let release = ctx.victim_release.lock().unwrap().take().unwrap();
    let report = |seen| ctx.seen.lock().unwrap().send(seen).unwrap();
    match ctx.api {
        Api::Raw => {
            report(raw(&mut conn, release).await);
            if conn.write(b"bye\n").is_ok() {
                let _ = conn.flush().await;
            }
        }
        Api::Reader => {
            let mut r = ConnectionReader::new(conn);
            report(reader(&mut r, release).await);
            if r.get_mut().write(b"bye\n").is_ok() {
                let _ = r.get_mut().flush().await;
            }
        }
        Api::Stream => {
            use tokio::io::AsyncWriteExt;
            let mut s = ConnectionStream::new(conn);
            report(stream(&mut s).await);
            if s.write_all(b"bye\n").await.is_ok() {
                let _ = s.flush().await;
            }
        }
    }
}

async fn handler(mut conn: Connection, ctx: Arc<Ctx>) {
    // The hog is the engine's first connection (slot 0): handlers may start in any order.
    if ctx.starved && conn.id().slot() == 0 {
        // The hog: holds everything until released.
        let release = ctx.hog_release.lock().unwrap().take().unwrap();
        raw(&mut conn, release).await;
        return;
    }
    victim(conn, ctx).await;
}

fn stats(server: &TestServer) -> zerg_uring::ReactorStats {
    server.engine().stats().total()
}

fn wait_stats(server: &TestServer, what: &str, pred: impl Fn(&EngineStats) -> bool) {
    server.wait_stats(TOLD, what, pred);
}

/// The peer's side after a FIN: it reads the handler's answer, then end of file.
fn expect_bye(mut v: TcpStream) {
    let mut got = Vec::new();
    v.read_to_end(&mut got)
        .expect("the half-closed peer reads the answer");
    assert_eq!(got, b"bye\n", "the handler answered after the peer's FIN");
}

/// A running engine for one scenario, with the channels to its handlers.
struct Setup {
    server: TestServer,
    seen: mpsc::Receiver<Seen>,
    hog_release: oneshot::Sender<()>,
    victim_release: oneshot::Sender<()>,
}

fn start(mode: Mode, api: Api, pause: Pause) -> Setup {
    let mut opts = util::options(1, false);
    let rc = &mut opts.reactor_configs[0];
    rc.buffer_ring_entries = RING;
    rc.recv_buffer_size = BUF as u32;
    rc.max_buffers_per_connection = if pause == Pause::Bound { 2 } else { RING };
    let (seen_tx, seen) = mpsc::channel();
    let (hog_release, hog_rx) = oneshot::channel();
    let (victim_release, victim_rx) = oneshot::channel();
    let ctx = Arc::new(Ctx {
        api,
        starved: pause == Pause::Starved,
        seen: Mutex::new(seen_tx),
        hog_release: Mutex::new(Some(hog_rx)),
        victim_release: Mutex::new(Some(victim_rx)),
    });
    Setup {
        server: TestServer::start(mode, opts, move |c| handler(c, ctx.clone())),
        seen,
        hog_release,
        victim_release,
    }
}

/// Connects the victim, sends `len` bytes and waits until its receive stopped.
fn pause_victim(server: &TestServer, pause: Pause, len: usize) -> TcpStream {
    let mut v = server.connect();
    v.write_all(&tagged(7, len)).unwrap();
    match pause {
        Pause::Bound => wait_stats(server, "the victim's receive paused", |s| {
            s.total().recv_pauses >= 1 && s.total().buffers_held >= 2
        }),
        Pause::Starved if len > 0 => wait_stats(server, "the victim's receive ran dry", |s| {
            s.total().enobufs >= 1
        }),
        Pause::Starved => {}
    }
    v
}

fn scenario(mode: Mode, api: Api, pause: Pause, close: Close) {
    let _serial = crate::serial();
    let setup = start(mode, api, pause);
    let server = &setup.server;
    let fds = util::open_fds();
    let hog = (pause == Pause::Starved).then(|| {
        let mut h = server.connect();
        h.write_all(&vec![b'H'; RING as usize * BUF]).unwrap();
        wait_stats(server, "the hog holds the whole ring", |s| {
            s.total().buffers_free == 0
        });
        h
    });
    let len = match (pause, close) {
        (Pause::Bound, Close::FinWithLeftover) => 2 * BUF + 100,
        (Pause::Bound, _) => 2 * BUF,
        (Pause::Starved, Close::Fin) => 0,
        (Pause::Starved, _) => 100,
    };
    let v = pause_victim(server, pause, len);
    let what = format!("{api:?}/{pause:?}/{close:?}");
    let told = |event: &str| {
        setup
            .seen
            .recv_timeout(TOLD)
            .unwrap_or_else(|_| panic!("{what}: the handler never learned of the {event}"))
    };
    match close {
        Close::Reset => {
            util::reset(v);
            let seen = told("reset");
            assert_eq!(seen.ended, "Reset", "{what}: {seen:?}");
        }
        Close::Fin => {
            v.shutdown(Shutdown::Write).unwrap();
            let seen = told("FIN");
            assert_eq!(seen.ended, "PeerClosed", "{what}: {seen:?}");
            assert_eq!(seen.bytes, len, "every byte before the FIN, then the close");
            expect_bye(v);
        }
        Close::FinWithLeftover => {
            v.shutdown(Shutdown::Write).unwrap();
            wait_stats(server, "the watch saw the FIN", |s| {
                s.total().paused_closes >= 1
            });
            assert!(
                setup.seen.try_recv().is_err(),
                "bytes before the FIN are still in the socket: the read must not end yet"
            );
            // Buffers come back: the rest is received, then the end.
            let _ = match pause {
                Pause::Bound => setup.victim_release.send(()),
                Pause::Starved => setup.hog_release.send(()),
            };
            let seen = told("rest and the FIN");
            assert_eq!(seen.ended, "PeerClosed", "{what}: {seen:?}");
            assert_eq!(seen.bytes, len, "every byte before the FIN was delivered");
            expect_bye(v);
            return finish(setup.server, hog, fds, None);
        }
    }
    finish(setup.server, hog, fds, Some(setup.hog_release));
}

/// Releases the hog, closes every client, and checks that everything came back.
fn finish(
    server: TestServer,
    hog: Option<TcpStream>,
    fds: usize,
    hog_release: Option<oneshot::Sender<()>>,
) {
    if let Some(tx) = hog_release {
        let _ = tx.send(());
    }
    if let Some(h) = hog {
        util::reset(h);
    }
    server.assert_quiescent();
    let t = stats(&server);
    assert_eq!((t.connections, t.buffers_held), (0, 0));
    assert!(
        util::wait_until(TOLD, || util::open_fds() == fds),
        "descriptors leaked: {} open, {fds} before",
        util::open_fds()
    );
    println!("paused closes noticed: {}", t.paused_closes);
    server.stop();
}

#[test]
fn raw_bound_reset() {
    scenario(Mode::Runtime, Api::Raw, Pause::Bound, Close::Reset);
}

#[test]
fn raw_bound_reset_reactor_mode() {
    scenario(Mode::Reactor, Api::Raw, Pause::Bound, Close::Reset);
}

#[test]
fn raw_bound_half_close() {
    scenario(Mode::Runtime, Api::Raw, Pause::Bound, Close::Fin);
}

#[test]
fn raw_bound_fin_with_bytes_in_the_socket() {
    scenario(
        Mode::Runtime,
        Api::Raw,
        Pause::Bound,
        Close::FinWithLeftover,
    );
}

#[test]
fn raw_starved_reset() {
    scenario(Mode::Runtime, Api::Raw, Pause::Starved, Close::Reset);
}

#[test]
fn raw_starved_half_close() {
    scenario(Mode::Runtime, Api::Raw, Pause::Starved, Close::Fin);
}

/// A `ConnectionReader` never waits at its connection's receive bound (no byte could come): it
/// ends with `MessageTooLarge` at once, its buffers go back, and the peer's reset later frees
/// the rest. (Closes noticed while a reader waits are covered by the starved cases.)
#[test]
fn reader_at_its_bound_gives_up_instead_of_waiting() {
    let _serial = crate::serial();
    let setup = start(Mode::Runtime, Api::Reader, Pause::Bound);
    let server = &setup.server;
    let fds = util::open_fds();
    let mut v = server.connect();
    v.write_all(&tagged(7, 2 * BUF)).unwrap();
    let seen = setup
        .seen
        .recv_timeout(TOLD)
        .expect("the reader gave up at its bound");
    assert_eq!(seen.ended, "MessageTooLarge", "{seen:?}");
    util::reset(v);
    finish(setup.server, None, fds, Some(setup.hog_release));
}

#[test]
fn reader_starved_reset() {
    scenario(Mode::Runtime, Api::Reader, Pause::Starved, Close::Reset);
}

#[test]
fn stream_starved_reset() {
    scenario(Mode::Runtime, Api::Stream, Pause::Starved, Close::Reset);
}

#[test]
fn stream_starved_half_close() {
    scenario(Mode::Runtime, Api::Stream, Pause::Starved, Close::Fin);
}

#[test]
fn stream_starved_fin_with_bytes_in_the_socket() {
    scenario(
        Mode::Reactor,
        Api::Stream,
        Pause::Starved,
        Close::FinWithLeftover,
    );
}
