//! The hot path allocates nothing: after warm-up, 10,000 request/response cycles through the raw
//! API (read → buffers → write → flush) make no heap allocation, on the reactor threads
//! (thread-per-core mode) or with handlers on tokio.
//!
//! A counting global allocator counts every allocation in the process while switched on. The
//! client switches it on after warm-up: it is a blocking loop over pre-allocated buffers (std
//! `TcpStream` reads and writes do not allocate), so whatever is counted comes from the server
//! side. The first allocations are recorded with their thread and a backtrace, to say where.
//!
//! One test function runs both modes in turn: tests running in parallel would be counted too.

mod util;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use util::{Mode, TestServer, echo, options};

struct Counting;

static ENABLED: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
/// (thread, backtrace) of the first allocations counted.
static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
const RECORD: usize = 4;

thread_local! {
    // Set while the hook itself runs (it allocates to record a backtrace).
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

fn record(size: usize) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    if IN_HOOK.with(|h| h.replace(true)) {
        return;
    }
    let n = ALLOCS.fetch_add(1, Ordering::Relaxed);
    BYTES.fetch_add(size as u64, Ordering::Relaxed);
    if (n as usize) < RECORD {
        let thread = std::thread::current()
            .name()
            .unwrap_or("<unnamed>")
            .to_string();
        let bt = std::backtrace::Backtrace::force_capture();
        if let Ok(mut seen) = SEEN.lock() {
            seen.push(format!("allocation of {size} B on thread {thread}:\n{bt}"));
        }
    }
    IN_HOOK.with(|h| h.set(false));
}

// SAFETY: forwards every call to the system allocator unchanged; the bookkeeping around it
// touches only atomics, a const thread-local and (re-entrancy guarded) a mutex.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const WARM_UP: usize = 2_000;
const CYCLES: usize = 10_000;
const MSG: usize = 64;

/// Echo that copies every snapshot into a new vector: one allocation per read, for the control.
async fn copying_echo(mut conn: zerg_uring::Connection) {
    loop {
        let snap = conn.read().await;
        if snap.is_closed() {
            return;
        }
        let copy = snap.to_vec();
        drop(snap);
        if conn.write(&copy).is_err() || conn.flush().await.is_err() {
            return;
        }
    }
}

/// Echo sending the receive buffers in place (`write_snapshot`).
async fn zero_copy_echo(mut conn: zerg_uring::Connection) {
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

/// Runs warm-up and `cycles` counted cycles on one connection; returns allocations counted, their
/// bytes and the time the counted cycles took.
fn measure<H, F>(
    mode: Mode,
    incremental: bool,
    timeouts: bool,
    handler: H,
    cycles: usize,
) -> (u64, u64, Duration, usize)
where
    H: Fn(zerg_uring::Connection) -> F + Send + Sync + Clone + 'static,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut opts = options(1, incremental);
    if timeouts {
        // Every timeout armed; the idle one is short, so the connection's timer entry comes due
        // and moves several times during the counted cycles (run for at least 1.5 s), while a
        // client stalled by a busy machine is not closed by it.
        let rc = &mut opts.reactor_configs[0];
        rc.read_timeout = Some(Duration::from_secs(30));
        rc.request_timeout = Some(Duration::from_secs(30));
        rc.write_timeout = Some(Duration::from_secs(30));
        rc.idle_timeout = Some(Duration::from_millis(300));
    }
    let server = TestServer::start(mode, opts, handler);
    let addr = server.addr;
    let client = std::thread::spawn(move || {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_nodelay(true).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let msg = util::pattern(1, MSG);
        let mut got = vec![0u8; MSG];
        for _ in 0..WARM_UP {
            c.write_all(&msg).unwrap();
            c.read_exact(&mut got).unwrap();
        }
        assert_eq!(got, msg);
        // Nothing below allocates on this thread until counting is off again.
        ALLOCS.store(0, Ordering::SeqCst);
        BYTES.store(0, Ordering::SeqCst);
        let t0 = Instant::now();
        ENABLED.store(true, Ordering::SeqCst);
        let mut ok = true;
        // With timeouts, long enough for the connection's timer entry to come due and move
        // several times.
        let min_time = if timeouts {
            Duration::from_millis(1500)
        } else {
            Duration::ZERO
        };
        let mut n = 0;
        while n < cycles || t0.elapsed() < min_time {
            if c.write_all(&msg).is_err() || c.read_exact(&mut got).is_err() {
                ok = false;
                break;
            }
            n += 1;
        }
        ENABLED.store(false, Ordering::SeqCst);
        let took = t0.elapsed();
        assert!(ok, "a counted cycle failed");
        assert_eq!(got, msg);
        (
            ALLOCS.load(Ordering::SeqCst),
            BYTES.load(Ordering::SeqCst),
            took,
            n,
        )
    });
    let res = client.join().unwrap();
    server.assert_quiescent();
    server.stop();
    res
}

#[test]
fn hot_path_allocates_nothing() {
    let mut failures = Vec::new();
    for mode in [Mode::Reactor, Mode::Runtime] {
        // Control: a handler that allocates once per read is seen (the counter covers the
        // server's threads).
        let (allocs, _, _, _) = measure(mode, false, false, copying_echo, 1000);
        println!("control ({mode:?}): {allocs} allocations in 1000 cycles with to_vec()");
        assert!(
            allocs >= 1000,
            "the counter missed the handler's allocations"
        );

        for (incremental, zero_copy, timeouts) in [
            (false, false, false),
            (true, false, false),
            (false, true, false),
            (false, false, true),
        ] {
            SEEN.lock().unwrap().clear();
            let (allocs, bytes, took, cycles) = if zero_copy {
                measure(mode, incremental, timeouts, zero_copy_echo, CYCLES)
            } else {
                measure(mode, incremental, timeouts, echo, CYCLES)
            };
            println!(
                "allocations ({mode:?}, incremental {incremental}, zero-copy {zero_copy}, \
                 timeouts {timeouts}): {allocs} ({bytes} B) in {cycles} request/response \
                 cycles ({:?} per cycle, debug build)",
                took / cycles as u32
            );
            if allocs > 0 {
                let seen = SEEN.lock().unwrap();
                for s in seen.iter() {
                    println!("{s}");
                }
                failures.push(format!(
                    "{mode:?}, incremental {incremental}, zero-copy {zero_copy}, timeouts \
                     {timeouts}: {allocs} allocations ({bytes} B)"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "the hot path allocated: {failures:?} (backtraces above)"
    );
}
