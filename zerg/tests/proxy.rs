//! The proxy example's copy loop (compiled from `examples/proxy_copy/mod.rs`) between real
//! clients, a zerg engine in either handler mode and plain upstream servers, all on 127.0.0.1:
//! byte-exact under random segmentation with concurrent clients, half-close in both directions,
//! a refused upstream, a client reset, and bounded memory when a client does not read.

#[path = "../examples/proxy_copy/mod.rs"]
mod proxy_copy;
#[path = "util/upstream.rs"]
mod upstream;
mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use proxy_copy::{Outcome, proxy};
use upstream::{Echo, Upstream, closed_port};
use util::{Mode, Rng, assert_same, options, pattern, wait_until};
use zerg_uring::{CloseReason, Connection, Engine, EngineOptions, Error};

const WAIT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A proxy engine in `mode` in front of `upstream`; every pair's outcome arrives on `outcomes`.
struct Proxy {
    engine: Option<Arc<Engine>>,
    rt: Option<tokio::runtime::Runtime>,
    outcomes: mpsc::Receiver<Outcome>,
}

impl Proxy {
    fn start(mode: Mode, upstream: SocketAddr, opts: EngineOptions) -> Proxy {
        let (tx, outcomes) = mpsc::channel();
        match mode {
            Mode::Reactor => {
                let handler = move |client: Connection| {
                    let tx = tx.clone();
                    async move {
                        let up = zerg_uring::connect_timeout(upstream, CONNECT_TIMEOUT);
                        let _ = tx.send(proxy(client, up).await);
                    }
                };
                let engine = Engine::serve(opts, handler).expect("engine starts");
                Proxy {
                    engine: Some(Arc::new(engine)),
                    rt: None,
                    outcomes,
                }
            }
            Mode::Runtime => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                let engine = Arc::new(Engine::listen(opts).expect("engine starts"));
                let e = engine.clone();
                rt.spawn(async move {
                    while let Some(client) = e.accept().await {
                        let up = e.connect_timeout(upstream, CONNECT_TIMEOUT);
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            let _ = tx.send(proxy(client, up).await);
                        });
                    }
                });
                Proxy {
                    engine: Some(engine),
                    rt: Some(rt),
                    outcomes,
                }
            }
        }
    }

    fn engine(&self) -> &Engine {
        self.engine.as_ref().unwrap()
    }

    fn client(&self) -> TcpStream {
        let s = TcpStream::connect(self.engine().local_addr()).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.set_write_timeout(Some(WAIT)).unwrap();
        s
    }

    fn outcome(&self) -> Outcome {
        self.outcomes.recv_timeout(WAIT).expect("the pair ended")
    }

    fn assert_quiescent(&self) {
        let e = self.engine();
        assert!(
            wait_until(WAIT, || {
                let t = e.stats().total();
                t.connections == 0 && t.buffers_free == t.buffers_total
            }),
            "{:#?}",
            e.stats()
        );
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(e) = self.engine.take() {
            e.stop();
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// Small buffers and a 64 KiB write buffer, so that a batch often does not fit at once.
fn proxy_options(reactors: usize) -> EngineOptions {
    let mut o = options(reactors, false);
    o.reactor_configs[0].max_write_buffer = 64 * 1024;
    o.reactor_configs[0].write_timeout = Some(Duration::from_secs(20));
    o
}

/// Sends `data` in random-sized writes while reading the echo in random-sized reads, then
/// half-closes and reads to the end.
fn random_exchange(s: TcpStream, data: Arc<Vec<u8>>, seed: u64) -> Vec<u8> {
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut rng = Rng::new(seed);
        let mut off = 0;
        while off < data.len() {
            let n = (1 + rng.below(65_536) as usize).min(data.len() - off);
            w.write_all(&data[off..off + n]).unwrap();
            off += n;
        }
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut r = s;
    let mut rng = Rng::new(seed ^ 0xfeed);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let want = 1 + rng.below(buf.len() as u64) as usize;
        match r.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("client read: {e} after {} bytes", got.len()),
        }
    }
    writer.join().unwrap();
    got
}

#[test]
fn byte_exact_under_random_segmentation_with_concurrent_clients() {
    const CLIENTS: u64 = 4;
    const LEN: usize = 4 << 20;
    for mode in [Mode::Reactor, Mode::Runtime] {
        let up = Echo::start();
        let p = Proxy::start(mode, up.addr, proxy_options(2));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|id| {
                let s = p.client();
                let data = Arc::new(util::tagged(id, LEN));
                std::thread::spawn(move || {
                    let got = random_exchange(s, data.clone(), id + 1);
                    assert_same(&got, &data, &format!("{mode:?} client {id}"));
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        for _ in 0..CLIENTS {
            match p.outcome() {
                Outcome::Done { up, down } => assert_eq!((up, down), (LEN as u64, LEN as u64)),
                other => panic!("{mode:?}: {other:?}"),
            }
        }
        // Each upstream connection saw the client's FIN after every byte, and echoed it all.
        assert!(wait_until(WAIT, || up.finished() == CLIENTS as usize));
        p.assert_quiescent();
    }
}

/// Reads everything until EOF, then answers with the byte count and closes.
fn reply_after_eof(mut conn: TcpStream) -> bool {
    let mut n = 0usize;
    let mut buf = [0u8; 16384];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return false,
        }
    }
    conn.write_all(format!("{n}\n").as_bytes()).is_ok()
}

/// Greets, half-closes at once, then expects exactly 50 000 bytes before the client's FIN.
fn greet_then_drain(mut conn: TcpStream) -> bool {
    if conn.write_all(b"hello\n").is_err() || conn.shutdown(Shutdown::Write).is_err() {
        return false;
    }
    let mut got = Vec::new();
    conn.read_to_end(&mut got).is_ok() && got == pattern(5, 50_000)
}

#[test]
fn half_close_propagates_both_ways() {
    for mode in [Mode::Reactor, Mode::Runtime] {
        // Client → upstream: the client's FIN reaches the upstream after its bytes, and the
        // upstream's answer (sent only after that FIN) still comes back, then the upstream's FIN.
        let up = Upstream::start(reply_after_eof);
        let p = Proxy::start(mode, up.addr, proxy_options(1));
        let mut c = p.client();
        c.write_all(&pattern(4, 100_000)).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "100000\n", "{mode:?}");
        match p.outcome() {
            Outcome::Done { up, down } => assert_eq!((up, down), (100_000, 7)),
            other => panic!("{mode:?}: {other:?}"),
        }
        // The upstream's handler counts itself once its answer went out.
        assert!(wait_until(WAIT, || up.finished() == 1), "{mode:?}");

        // Upstream → client: the upstream's FIN reaches the client while the client can still
        // send, and everything it sends afterwards reaches the upstream.
        let up = Upstream::start(greet_then_drain);
        let p = Proxy::start(mode, up.addr, proxy_options(1));
        let mut c = p.client();
        let mut greeting = Vec::new();
        c.read_to_end(&mut greeting).unwrap();
        assert_eq!(greeting, b"hello\n", "{mode:?}");
        c.write_all(&pattern(5, 50_000)).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        match p.outcome() {
            Outcome::Done { up, down } => assert_eq!((up, down), (50_000, 6)),
            other => panic!("{mode:?}: {other:?}"),
        }
        assert!(wait_until(WAIT, || up.finished() == 1), "{mode:?}");
        p.assert_quiescent();
    }
}

#[test]
fn a_refused_upstream_closes_the_client() {
    let addr = closed_port();
    for mode in [Mode::Reactor, Mode::Runtime] {
        let p = Proxy::start(mode, addr, proxy_options(1));
        let mut c = p.client();
        let mut buf = [0u8; 16];
        match c.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("{mode:?}: the client should be closed, got {other:?}"),
        }
        match p.outcome() {
            Outcome::ConnectFailed(Error::Connect { addr: a, source }) => {
                assert_eq!(a, addr);
                assert_eq!(source.raw_os_error(), Some(libc::ECONNREFUSED));
            }
            other => panic!("{mode:?}: {other:?}"),
        }
        p.assert_quiescent();
    }
}

#[test]
fn a_client_reset_closes_both_sides() {
    for mode in [Mode::Reactor, Mode::Runtime] {
        let up = Echo::start();
        let p = Proxy::start(mode, up.addr, proxy_options(1));
        let mut c = p.client();
        c.write_all(b"some bytes").unwrap();
        let mut buf = [0u8; 10];
        c.read_exact(&mut buf).unwrap();
        util::reset(c);
        match p.outcome() {
            Outcome::Failed(Error::Closed(CloseReason::Reset)) => {}
            other => panic!("{mode:?}: {other:?}"),
        }
        // The upstream connection was closed too: the echo server saw its end.
        assert!(wait_until(WAIT, || up.finished() == 1), "{mode:?}");
        p.assert_quiescent();
    }
}

/// A client that sends a lot and reads nothing: the proxy stops reading from it once the
/// upstream's answers back up, so the client's writes stall, and the engine holds at most a
/// bounded number of receive buffers meanwhile. Then the client reads, and every byte arrives.
#[test]
fn a_client_that_does_not_read_is_held_back_with_bounded_memory() {
    const LEN: usize = 64 << 20;
    let up = Echo::start();
    let opts = proxy_options(1);
    let max_held = opts.reactor_configs[0].effective_max_buffers_per_connection();
    let p = Proxy::start(Mode::Reactor, up.addr, opts);
    let c = p.client();
    let data = Arc::new(pattern(9, LEN));
    let mut w = c.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let d = data.clone();
    let writer = std::thread::spawn(move || {
        let mut off = 0;
        // Writes until a write makes no progress for half a second (or everything is sent).
        while off < d.len() {
            match w.write(&d[off..(off + 65_536).min(d.len())]) {
                Ok(n) => off += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return (off, w);
                }
                Err(e) => panic!("client write: {e}"),
            }
        }
        (off, w)
    });
    let (stalled_at, mut w) = writer.join().unwrap();
    assert!(
        stalled_at < LEN,
        "the client's writes never stalled: the proxy buffered everything"
    );
    // Both connections of the pair are paused at their bound (plus the slack of a short
    // receive counted before the pause, as in the per-connection bound rule: 2).
    let held = p.engine().stats().total().buffers_held;
    let bound = 2 * (u64::from(max_held) + 2);
    assert!(
        held <= bound,
        "{held} buffers held, more than two connections' bound of {max_held} (+2 each)"
    );
    // Now read everything while the rest is sent.
    w.set_write_timeout(Some(WAIT)).unwrap();
    let rest = std::thread::spawn(move || {
        w.write_all(&data[stalled_at..]).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
        data
    });
    let mut got = Vec::with_capacity(LEN);
    let mut r = c;
    r.read_to_end(&mut got).unwrap();
    let data = rest.join().unwrap();
    assert_same(&got, &data, "after the stall");
    assert!(matches!(p.outcome(), Outcome::Done { .. }));
    p.assert_quiescent();
}
