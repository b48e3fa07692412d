//! The receive ring's circulation and receive bundles (`ReactorConfig::recv_ring`), end to end:
//!
//! - a ring that starts small grows when handlers hold most of it, shrinks after light use
//!   (`ring_grows`, `ring_shrinks`, pages given back), and comes back to its initial size as
//!   traffic cycles through it;
//! - bundle receives (several buffers per completion) deliver large transfers byte-exact, with
//!   and without incremental consumption, end of stream after the data, every buffer back;
//! - with bundles a connection that stops reading still holds at most its bound (the kernel's
//!   multishot byte limit caps a bundle too).
//!
//! The hostile-peer tests (`tests/hostile/ring.rs`) run with bundles and a growing ring too.

mod util;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use util::{Mode, TestServer, assert_same, sleep, tagged};
use zerg_uring::{Connection, EngineOptions, Error, ReactorStats};

fn total(s: &TestServer) -> ReactorStats {
    s.engine().stats().total()
}

/// Keeps every snapshot until a newline arrives, then answers with the byte count, drops them
/// and starts over.
async fn hold_until_newline(mut conn: Connection) {
    let mut kept = Vec::new();
    let mut bytes = 0usize;
    loop {
        let snap = conn.read().await;
        if snap.is_closed() {
            return;
        }
        bytes += snap.len();
        let newline = snap.buffers().any(|b| b.contains(&b'\n'));
        kept.push(snap);
        if newline {
            kept.clear();
            if conn.write(format!("{bytes}\n").as_bytes()).is_err() || conn.flush().await.is_err() {
                return;
            }
            bytes = 0;
        }
    }
}

fn read_line(c: &mut std::net::TcpStream) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while c.read(&mut b).expect("answer") == 1 && b[0] != b'\n' {
        out.push(b[0]);
    }
    String::from_utf8(out).unwrap()
}

fn growing_ring(mode: Mode, incremental: bool) {
    const INITIAL: u32 = 16;
    const CLIENTS: usize = 8;
    const HELD_EACH: usize = 6 * 4096;
    let mut opts: EngineOptions = util::options(1, incremental);
    let rc = &mut opts.reactor_configs[0];
    rc.buffer_ring_entries = 256;
    rc.recv_buffer_size = 4096;
    rc.max_buffers_per_connection = 32;
    rc.recv_ring.initial_buffers = INITIAL;
    rc.recv_ring.shrink_after = Some(Duration::from_millis(100));
    let server = match TestServer::try_start(mode, opts, hold_until_newline) {
        Ok(s) => s,
        Err(e @ Error::Unsupported { .. }) => {
            eprintln!("SKIPPED: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    assert_eq!(total(&server).buffers_total, u64::from(INITIAL));

    // Eight connections hold 6 buffers' worth each: 48 held, three times the initial ring.
    let mut clients: Vec<_> = (0..CLIENTS).map(|_| server.connect()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let mut msg = tagged(i as u64, HELD_EACH);
        msg.iter_mut().for_each(|b| *b |= 0x80); // no newline in it
        c.write_all(&msg).unwrap();
    }
    let held = (CLIENTS * HELD_EACH / 4096) as u64;
    server.wait_stats(Duration::from_secs(10), "the ring grew", |s| {
        let t = s.total();
        t.ring_grows >= 1
            && t.buffers_total > u64::from(INITIAL)
            && t.bytes_received >= (CLIENTS * HELD_EACH) as u64
    });
    let grown = total(&server);
    assert!(
        grown.buffers_held >= held.min(grown.buffers_total),
        "{grown:?}"
    );
    for c in &mut clients {
        c.write_all(b"\n").unwrap();
        assert_eq!(read_line(c), (HELD_EACH + 1).to_string());
    }

    // Idle: the ring shrinks back and gives pages back.
    server.wait_stats(Duration::from_secs(10), "the ring shrank", |s| {
        let t = s.total();
        t.ring_shrinks >= 1 && t.recv_memory_released > 0
    });
    // Traffic cycles the ring: returned buffers leave it until the initial size is left.
    let c = &mut clients[0];
    for j in 0..200u64 {
        let mut msg = tagged(j, 1000);
        msg.iter_mut().for_each(|b| *b |= 0x80);
        msg.push(b'\n');
        c.write_all(&msg).unwrap();
        assert_eq!(read_line(c), "1001");
        if total(&server).buffers_total == u64::from(INITIAL) {
            break;
        }
    }
    let t = total(&server);
    println!(
        "growing ring ({mode:?}, incremental {incremental}): grew {} times to {} buffers, shrank \
         {} times, {} KiB given back, {} circulating now",
        t.ring_grows,
        grown.buffers_total,
        t.ring_shrinks,
        t.recv_memory_released / 1024,
        t.buffers_total
    );
    assert_eq!(t.buffers_total, u64::from(INITIAL), "{t:?}");
    drop(clients);
    server.assert_quiescent();
    server.stop();
}

#[test]
fn ring_grows_under_load_and_shrinks_back_reactor() {
    growing_ring(Mode::Reactor, false);
}

#[test]
fn ring_grows_under_load_and_shrinks_back_runtime() {
    growing_ring(Mode::Runtime, false);
}

#[test]
fn incremental_ring_grows_and_shrinks_back() {
    growing_ring(Mode::Reactor, true);
}

/// Echo with `write_snapshot`: received buffers go back out as they are.
async fn echo(mut conn: Connection) {
    loop {
        let snap = conn.read().await;
        if snap.is_closed() {
            return;
        }
        if conn.write_snapshot(snap).is_err() || conn.flush().await.is_err() {
            return;
        }
    }
}

fn bundle_options(incremental: bool) -> EngineOptions {
    let mut opts = util::options(1, incremental);
    let rc = &mut opts.reactor_configs[0];
    rc.recv_ring.bundle = true;
    rc.recv_ring.initial_buffers = 32;
    opts
}

fn bundles_echo(mode: Mode, incremental: bool) {
    const CLIENTS: u64 = 4;
    const BYTES: usize = 1 << 20;
    let server = match TestServer::try_start(mode, bundle_options(incremental), echo) {
        Ok(s) => s,
        Err(e @ Error::Unsupported { .. }) => {
            eprintln!("SKIPPED: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let c = server.connect();
            std::thread::spawn(move || {
                let msg = tagged(id, BYTES);
                let mut w = c.try_clone().unwrap();
                let writer = {
                    let msg = msg.clone();
                    std::thread::spawn(move || {
                        for piece in msg.chunks(100_000) {
                            w.write_all(piece).unwrap();
                        }
                        // End of stream after the data: the echo must still be complete.
                        w.shutdown(Shutdown::Write).unwrap();
                    })
                };
                let mut got = Vec::with_capacity(BYTES);
                let mut r = c;
                r.read_to_end(&mut got).unwrap();
                writer.join().unwrap();
                assert_same(&got, &msg, &format!("client {id}"));
            })
        })
        .collect();
    for c in clients {
        c.join().expect("byte-exact echo");
    }
    server.assert_quiescent();
    let t = total(&server);
    println!(
        "bundles ({mode:?}, incremental {incremental}): {} of the receive completions carried \
         several buffers; {} bytes received",
        t.recv_bundles, t.bytes_received
    );
    if t.recv_bundles == 0 {
        // The kernel lacks bundles or failed the self-test: the reactor said so in a warning.
        eprintln!("SKIPPED: no bundle completions (see the reactor's warning)");
    }
    server.stop();
}

#[test]
fn bundles_echo_large_transfers_byte_exact_reactor() {
    bundles_echo(Mode::Reactor, false);
}

#[test]
fn bundles_echo_large_transfers_byte_exact_runtime() {
    bundles_echo(Mode::Runtime, false);
}

#[test]
fn incremental_bundles_echo_large_transfers_byte_exact() {
    bundles_echo(Mode::Reactor, true);
}

#[test]
fn without_the_switch_no_completion_is_a_bundle() {
    let server = TestServer::start(Mode::Reactor, util::options(1, false), echo);
    let mut c = server.connect();
    let msg = tagged(7, 256 * 1024);
    let got = util::roundtrip(&mut c, &msg);
    assert_same(&got, &msg, "echo");
    assert_eq!(total(&server).recv_bundles, 0);
    drop(c);
    server.assert_quiescent();
    server.stop();
}

/// Reads once, then never again until released.
async fn hog(mut conn: Connection, started: Arc<AtomicBool>, release: Arc<AtomicBool>) {
    let first = conn.read().await;
    if first.is_closed() {
        return;
    }
    started.store(true, Ordering::Release);
    let _kept = first;
    for _ in 0..20_000 {
        if release.load(Ordering::Acquire) {
            return;
        }
        sleep(Duration::from_millis(1)).await;
    }
}

fn bundle_bound(mode: Mode, incremental: bool) {
    const LIMIT: u64 = 8;
    let mut opts = bundle_options(incremental);
    let rc = &mut opts.reactor_configs[0];
    rc.buffer_ring_entries = 64;
    rc.recv_ring.initial_buffers = 64;
    rc.max_buffers_per_connection = LIMIT as u32;
    let (started, release) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (s, r) = (started.clone(), release.clone());
    let server = match TestServer::try_start(mode, opts, move |c| hog(c, s.clone(), r.clone())) {
        Ok(s) => s,
        Err(e @ Error::Unsupported { .. }) => {
            eprintln!("SKIPPED: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let c = server.connect();
    let mut w = c.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let writer = {
        let sent = sent.clone();
        std::thread::spawn(move || {
            let chunk = vec![b'H'; 64 * 1024];
            for _ in 0..128 {
                if w.write_all(&chunk).is_err() {
                    return;
                }
                sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        })
    };
    assert!(util::wait_until(Duration::from_secs(5), || started.load(Ordering::Acquire)));
    // The client keeps writing until TCP pushes back; meanwhile sample what the hog holds.
    let mut max_held = 0;
    let mut last = (0, std::time::Instant::now());
    while last.1.elapsed() < Duration::from_millis(300) {
        max_held = max_held.max(total(&server).buffers_held);
        let now = sent.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, std::time::Instant::now());
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let t = total(&server);
    println!(
        "bundle bound ({mode:?}, incremental {incremental}): held at most {max_held} (limit \
         {LIMIT}) after the client wrote {} B; pauses {}, bundles {}",
        sent.load(Ordering::Relaxed),
        t.recv_pauses,
        t.recv_bundles
    );
    // In incremental mode the bound counts pieces, and one bundle may end in a piece that shares
    // a buffer with the next: one more than the limit.
    assert!(max_held <= LIMIT + 1, "held {max_held}, limit {LIMIT}");
    assert!(
        max_held >= LIMIT / 2,
        "the hog took less than expected: {max_held}"
    );
    assert!(
        sent.load(Ordering::Relaxed) < 8 << 20,
        "the client was never pushed back"
    );
    release.store(true, Ordering::Release);
    let _ = c.shutdown(Shutdown::Both);
    writer.join().unwrap();
    server.assert_quiescent();
    server.stop();
}

#[test]
fn bundles_stop_at_the_per_connection_bound_reactor() {
    bundle_bound(Mode::Reactor, false);
}

#[test]
fn bundles_stop_at_the_per_connection_bound_runtime() {
    bundle_bound(Mode::Runtime, false);
}

#[test]
fn incremental_bundles_stop_at_the_per_connection_bound() {
    bundle_bound(Mode::Reactor, true);
}
