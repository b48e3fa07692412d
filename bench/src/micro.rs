//! What the reactor's runtime pieces cost: timers, local tasks, and tokio's timer through the
//! tokio context, each run on a reactor thread in a loop and timed by CPU time.
//!
//! `zerg-bench micro [--iters N] [--reps R]`
//!
//! Each case runs `N` operations (`N / 50` for the sleeps, which really wait) in a handler on a one-reactor engine (`Engine::serve`), started
//! by one loopback connection. It reports CPU nanoseconds per operation: the reactor thread's own
//! (`RUSAGE_THREAD`), and the process's (`RUSAGE_SELF`, which adds the threads that work for the
//! reactor: tokio's for the tokio cases), plus wall time. CPU time is what a busy server pays; a
//! loaded machine stretches wall time but much less CPU time. The median of `R` repetitions is
//! printed.

use std::future::Future;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zerg_uring::{Connection, Engine, EngineOptions, TokioContext};

use crate::args::Args;

/// CPU time of the calling thread (`RUSAGE_THREAD`) or process (`RUSAGE_SELF`).
fn cpu(who: libc::c_int) -> Duration {
    // SAFETY: rusage is plain integers; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage(2) writes one rusage through a pointer to a live local.
    let rc = unsafe { libc::getrusage(who, &mut ru) };
    assert_eq!(rc, 0, "getrusage failed");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// One measurement: CPU of the reactor thread and of the process, wall time, per operation.
#[derive(Debug, Clone, Copy)]
struct Sample {
    thread_ns: f64,
    process_ns: f64,
    wall_ns: f64,
}

/// Runs `case(iters)` in a handler on a fresh engine and measures it.
fn measure<F, Fut>(opts: EngineOptions, iters: u64, case: F) -> Result<Sample, String>
where
    F: Fn(u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let (tx, rx) = mpsc::channel::<Sample>();
    let tx = Arc::new(Mutex::new(tx));
    let engine = Engine::serve(opts, move |conn: Connection| {
        let (case, tx) = (case.clone(), tx.clone());
        async move {
            let (t0, p0, w0) = (
                cpu(libc::RUSAGE_THREAD),
                cpu(libc::RUSAGE_SELF),
                Instant::now(),
            );
            case(iters).await;
            let (t1, p1, w1) = (
                cpu(libc::RUSAGE_THREAD),
                cpu(libc::RUSAGE_SELF),
                Instant::now(),
            );
            let per = |d: Duration| d.as_nanos() as f64 / iters as f64;
            let _ = tx.lock().map(|tx| {
                tx.send(Sample {
                    thread_ns: per(t1 - t0),
                    process_ns: per(p1 - p0),
                    wall_ns: per(w1 - w0),
                })
            });
            drop(conn);
        }
    })
    .map_err(|e| e.to_string())?;
    let _client = std::net::TcpStream::connect(engine.local_addr()).map_err(|e| e.to_string())?;
    let sample = rx
        .recv_timeout(Duration::from_secs(120))
        .map_err(|_| "the case did not finish within 120 s".to_string())?;
    engine.stop();
    engine.join().map_err(|e| e.to_string())?;
    Ok(sample)
}

fn options(tokio: bool) -> EngineOptions {
    let mut o = EngineOptions::with_port(0);
    o.ip = std::net::Ipv4Addr::LOCALHOST.into();
    if tokio {
        o.tokio_context = Some(TokioContext::Owned);
    }
    o
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub(crate) fn main(argv: Vec<String>) -> Result<(), String> {
    let mut args = Args::parse(argv)?;
    let iters: u64 = args.get("iters", 100_000)?;
    let reps: usize = args.get("reps", 5)?;
    args.finish()?;
    println!(
        "| case | reactor thread CPU ns/op | process CPU ns/op | wall ns/op |\n|---|---|---|---|"
    );
    type Case = (
        &'static str,
        bool,
        fn(u64) -> std::pin::Pin<Box<dyn Future<Output = ()>>>,
    );
    let cases: [Case; 6] = [
        ("zerg time::sleep(1 µs), awaited", false, |n| {
            Box::pin(async move {
                for _ in 0..n {
                    zerg_uring::time::sleep(Duration::from_micros(1)).await;
                }
            })
        }),
        ("zerg time::timeout around a ready future", false, |n| {
            Box::pin(async move {
                for i in 0..n {
                    let _ = zerg_uring::time::timeout(Duration::from_secs(1), async { i }).await;
                }
            })
        }),
        (
            "zerg time::timeout around a future that yields once (timer registered, cancelled)",
            false,
            |n| {
                Box::pin(async move {
                    for _ in 0..n {
                        let _ =
                            zerg_uring::time::timeout(Duration::from_secs(1), yield_once()).await;
                    }
                })
            },
        ),
        ("spawn_local + await its JoinHandle", false, |n| {
            Box::pin(async move {
                for i in 0..n {
                    let _ = zerg_uring::spawn_local(async move { i }).await;
                }
            })
        }),
        (
            "tokio::time::sleep(1 µs) via tokio_context (timer on the zerg-tokio thread)",
            true,
            |n| {
                Box::pin(async move {
                    for _ in 0..n {
                        tokio::time::sleep(Duration::from_micros(1)).await;
                    }
                })
            },
        ),
        (
            "tokio::time::timeout around a future that yields once, via tokio_context",
            true,
            |n| {
                Box::pin(async move {
                    for _ in 0..n {
                        let _ = tokio::time::timeout(Duration::from_secs(1), yield_once()).await;
                    }
                })
            },
        ),
    ];
    for (name, tokio, case) in cases {
        // A sleep really waits (about a millisecond: the timers' resolution): fewer of those.
        let n = if name.contains("sleep") {
            (iters / 50).max(1)
        } else {
            iters
        };
        let mut samples = Vec::new();
        for _ in 0..reps {
            samples.push(measure(options(tokio), n, case)?);
        }
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} |",
            median(samples.iter().map(|s| s.thread_ns).collect()),
            median(samples.iter().map(|s| s.process_ns).collect()),
            median(samples.iter().map(|s| s.wall_ns).collect()),
        );
    }
    Ok(())
}

/// Returns `Pending` once (waking itself), then `Ready`: a future that is not ready at once.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await;
}
