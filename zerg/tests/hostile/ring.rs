//! Ring fairness.
//!
//! `hogs_*`: echo servers with the default per-connection bound (256 KiB = 16 buffers of 16 KiB)
//! in a 256-buffer ring with the default reserve (16). Fourteen peers send without ever reading
//! — fewer than (ring − reserve) / bound = 15, the documented fraction — so their handlers block
//! in flush and stop reading, and each connection holds its bound (received bytes, or with
//! `write_snapshot` the pieces staged for the stalled send). A well-behaved client must still be
//! served byte-exact. Before the bound was derived from bytes it was a quarter of the ring, and
//! four such peers took every buffer.
//!
//! `gradual_hoarders_*`: eight connections whose handlers keep everything they read, fed slowly,
//! would together take the whole ring (8 × 16 buffers of 128); when the ring runs low (fewer
//! free than the reserve of 32) the heavy ones pause, and a light client is still served.
//!
//! Both also run with receive bundles (a completion may take several buffers at once) and in a
//! ring that starts with a few buffers in circulation and grows under the hogs: the guarantee
//! is the same once the ring has grown to its capacity.

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use zerg_uring::{AcceptMode, Connection, EngineOptions, Error};

use crate::util::{self, Mode, TestServer, assert_same, tagged};

const RING: u32 = 256;
/// The default bound with 16 KiB buffers.
const BOUND: u64 = 16;
const HOGS: usize = 14;
const HOG_BYTES: usize = 16 << 20;
/// How long the well-behaved client may wait for one echo (generous: a starved client waits
/// forever, a served one a few milliseconds).
const SERVED: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Echo {
    Copy,
    Snapshot,
}

/// How the receive ring is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ring {
    /// Receive bundles.
    bundle: bool,
    /// Buffers circulating at start (0: the whole ring).
    initial: u32,
}

const PLAIN: Ring = Ring {
    bundle: false,
    initial: 0,
};

impl Ring {
    fn apply(self, rc: &mut zerg_uring::ReactorConfig) {
        rc.recv_ring.bundle = self.bundle;
        rc.recv_ring.initial_buffers = if self.initial == 0 {
            rc.buffer_ring_entries
        } else {
            self.initial
        };
    }
}

/// Echo; `flushing` counts handlers waiting for a flush.
async fn echo(mut conn: Connection, how: Echo, flushing: Arc<AtomicUsize>) {
    loop {
        let snap = conn.read().await;
        if snap.is_closed() {
            return;
        }
        match how {
            Echo::Copy => {
                for b in snap.buffers() {
                    if conn.write(b).is_err() {
                        return;
                    }
                }
            }
            Echo::Snapshot => {
                if conn.write_snapshot(snap).is_err() {
                    return;
                }
            }
        }
        flushing.fetch_add(1, Ordering::SeqCst);
        let res = conn.flush().await;
        flushing.fetch_sub(1, Ordering::SeqCst);
        if res.is_err() {
            return;
        }
    }
}

/// A peer that sends up to `HOG_BYTES` and never reads.
struct Hog {
    sock: TcpStream,
    writer: JoinHandle<()>,
}

fn hog(server: &TestServer, id: u64) -> Hog {
    let sock = util::connect_small_rcvbuf(server.addr, 4096);
    let mut w = sock.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = tagged(id, 64 * 1024);
        for _ in 0..HOG_BYTES / chunk.len() {
            if w.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    Hog { sock, writer }
}

/// Round trips of a well-behaved client while the hogs hold their share; returns the slowest.
fn well_behaved(server: &TestServer, rounds: u64, len: usize) -> Duration {
    let mut c = server.connect();
    c.set_read_timeout(Some(SERVED)).unwrap();
    let mut slowest = Duration::ZERO;
    for j in 0..rounds {
        let msg = tagged(1000 + j, len);
        let t = Instant::now();
        c.write_all(&msg).unwrap();
        let mut got = vec![0u8; len];
        std::io::Read::read_exact(&mut c, &mut got)
            .unwrap_or_else(|e| panic!("the well-behaved client was not served (round {j}): {e}"));
        slowest = slowest.max(t.elapsed());
        assert_same(&got, &msg, &format!("well-behaved round {j}"));
    }
    slowest
}

/// Samples the most buffers held while `f` runs.
fn max_held_during<T>(server: &TestServer, f: impl FnOnce() -> T) -> (T, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let max = Arc::new(AtomicU64::new(0));
    let engine = server.engine.clone().unwrap();
    let sampler = {
        let (stop, max) = (stop.clone(), max.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                max.fetch_max(engine.stats().total().buffers_held, Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    let out = f();
    stop.store(true, Ordering::Release);
    sampler.join().unwrap();
    (out, max.load(Ordering::Relaxed))
}

fn hogs(mode: Mode, accept: AcceptMode, incremental: bool, how: Echo, ring: Ring) {
    let _serial = crate::serial();
    let mut opts = util::options(1, incremental);
    opts.accept_mode = accept;
    let rc = &mut opts.reactor_configs[0];
    rc.buffer_ring_entries = RING;
    rc.recv_buffer_size = 16 * 1024;
    rc.max_buffers_per_connection = 0; // the default: derived from max_recv_bytes_per_connection
    ring.apply(rc);
    assert_eq!(u64::from(rc.effective_max_buffers_per_connection()), BOUND);
    let flushing = Arc::new(AtomicUsize::new(0));
    let f = flushing.clone();
    let server = match TestServer::try_start(mode, opts, move |c| echo(c, how, f.clone())) {
        Ok(s) => s,
        Err(e @ Error::Unsupported { .. }) => {
            eprintln!("SKIPPED: {e}; the incremental ring-hog test did not run");
            return;
        }
        Err(e) => panic!("engine start: {e}"),
    };
    let hogs: Vec<Hog> = (0..HOGS as u64).map(|id| hog(&server, id)).collect();
    // Every hog's handler is stuck in a flush and its connection holds between half its bound
    // (where a paused receive resumes: the piece the handler was copying comes back after the
    // pause) and all of it; in incremental mode pieces may share buffers. Or the hogs took the
    // whole ring, which the bound is there to prevent: the well-behaved client then fails below.
    let pinned = HOGS as u64 * BOUND / 2;
    server.wait_stats(Duration::from_secs(20), "the hogs hold their bound", |s| {
        let t = s.total();
        (flushing.load(Ordering::SeqCst) >= HOGS && t.buffers_held >= pinned) || t.buffers_free == 0
    });

    let (slowest, max_held) = max_held_during(&server, || well_behaved(&server, 32, 4096));
    let t = server.engine().stats().total();
    println!(
        "ring hogs ({mode:?}, {accept:?}, incremental {incremental}, {how:?}, {ring:?}): {HOGS} \
         hogs held at most {max_held}/{RING} buffers; the well-behaved client's slowest echo \
         took {slowest:?}; pauses {}, enobufs {}, ring low {}, grows {}, bundles {}",
        t.recv_pauses, t.enobufs, t.ring_low, t.ring_grows, t.recv_bundles
    );
    assert!(
        max_held <= HOGS as u64 * BOUND + BOUND,
        "{max_held} buffers held: more than {HOGS} hogs × {BOUND} + the client's own"
    );

    for h in &hogs {
        let _ = h.sock.shutdown(Shutdown::Both);
    }
    for h in hogs {
        h.writer.join().unwrap();
        util::reset(h.sock);
    }
    server.assert_quiescent();
    server.stop();
}

#[test]
fn hogs_runtime_mode() {
    hogs(
        Mode::Runtime,
        AcceptMode::Dedicated,
        false,
        Echo::Copy,
        PLAIN,
    );
}

#[test]
fn hogs_reactor_mode_per_reactor_accept() {
    hogs(
        Mode::Reactor,
        AcceptMode::PerReactor,
        false,
        Echo::Copy,
        PLAIN,
    );
}

#[test]
fn hogs_incremental() {
    hogs(
        Mode::Runtime,
        AcceptMode::Dedicated,
        true,
        Echo::Copy,
        PLAIN,
    );
}

/// The peer never reads its echo, sent in place with `write_snapshot`: the pieces staged for
/// the stalled send count against the bound, so they pin no more than received bytes would.
#[test]
fn hogs_echoing_with_write_snapshot() {
    hogs(
        Mode::Runtime,
        AcceptMode::Dedicated,
        false,
        Echo::Snapshot,
        PLAIN,
    );
}

#[test]
fn hogs_echoing_with_write_snapshot_reactor_mode() {
    hogs(
        Mode::Reactor,
        AcceptMode::Dedicated,
        false,
        Echo::Snapshot,
        PLAIN,
    );
}

#[test]
fn hogs_with_bundles_in_a_growing_ring() {
    let ring = Ring {
        bundle: true,
        initial: 16,
    };
    hogs(
        Mode::Reactor,
        AcceptMode::Dedicated,
        false,
        Echo::Snapshot,
        ring,
    );
}

#[test]
fn hogs_with_incremental_bundles_in_a_growing_ring() {
    let ring = Ring {
        bundle: true,
        initial: 16,
    };
    hogs(Mode::Runtime, AcceptMode::Dedicated, true, Echo::Copy, ring);
}

// ---------------------------------------------------------------------------------------------

const KEEPERS: u64 = 8;
const SMALL_RING: u32 = 128;
const RESERVE: u32 = 32;

/// `K…`: keeps every snapshot until the connection ends; anything else: echo.
async fn keep_or_echo(mut conn: Connection) {
    let first = conn.read().await;
    if first.is_closed() {
        return;
    }
    if first.to_vec()[0] != b'K' {
        let bytes = first.to_vec();
        drop(first);
        if conn.write(&bytes).is_err() || conn.flush().await.is_err() {
            return;
        }
        return echo(conn, Echo::Copy, Arc::default()).await;
    }
    let mut kept = vec![first];
    loop {
        let snap = conn.read().await;
        if snap.is_closed() {
            return;
        }
        kept.push(snap);
    }
}

fn gradual_hoarders(mode: Mode, ring: Ring) {
    let _serial = crate::serial();
    let mut opts: EngineOptions = util::options(1, false);
    let rc = &mut opts.reactor_configs[0];
    rc.buffer_ring_entries = SMALL_RING;
    rc.recv_buffer_size = 4096;
    rc.max_buffers_per_connection = 16;
    rc.recv_reserve_buffers = RESERVE;
    ring.apply(rc);
    let server = TestServer::start(mode, opts, keep_or_echo);
    // 4 KiB every 5 ms: a slow upload, 24 buffers each (more than the bound of 16).
    let keepers: Vec<_> = (0..KEEPERS)
        .map(|id| {
            let mut s = server.connect();
            std::thread::spawn(move || {
                let mut chunk = tagged(id, 4096);
                chunk[0] = b'K';
                for _ in 0..24 {
                    s.write_all(&chunk).unwrap();
                    std::thread::sleep(Duration::from_millis(5));
                }
                s
            })
        })
        .collect();
    let keepers: Vec<TcpStream> = keepers.into_iter().map(|k| k.join().unwrap()).collect();
    server.wait_stats(
        Duration::from_secs(10),
        "the keepers took the ring down to its reserve",
        |s| s.total().buffers_held >= u64::from(SMALL_RING - RESERVE),
    );

    let (slowest, max_held) = max_held_during(&server, || well_behaved(&server, 16, 1024));
    let t = server.engine().stats().total();
    println!(
        "gradual hoarders ({mode:?}, {ring:?}): {KEEPERS} keepers held at most \
         {max_held}/{SMALL_RING}; the light client's slowest echo took {slowest:?}; ring low {} \
         times, pauses {}, grows {}",
        t.ring_low, t.recv_pauses, t.ring_grows
    );
    assert!(t.ring_low >= 1, "the ring never ran low");
    assert!(max_held < u64::from(SMALL_RING), "the ring ran dry");

    // Resets end the keepers' reads at once (their receives are paused).
    for k in keepers {
        util::reset(k);
    }
    server.assert_quiescent();
    server.stop();
}

#[test]
fn gradual_hoarders_are_held_at_the_quota_when_the_ring_runs_low() {
    gradual_hoarders(Mode::Runtime, PLAIN);
}

#[test]
fn gradual_hoarders_are_held_at_the_quota_when_the_ring_runs_low_reactor_mode() {
    gradual_hoarders(Mode::Reactor, PLAIN);
}

#[test]
fn gradual_hoarders_with_bundles_in_a_growing_ring() {
    let ring = Ring {
        bundle: true,
        initial: 8,
    };
    gradual_hoarders(Mode::Reactor, ring);
}
