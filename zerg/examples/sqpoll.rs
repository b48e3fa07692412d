//! The raw HTTP/1.1 "200 OK" server with `IORING_SETUP_SQPOLL | IORING_SETUP_SQ_AFF`: a kernel
//! thread per reactor polls the submission queue, so submitting needs no syscall while it is
//! awake. Trades a CPU core per reactor for fewer syscalls under sustained load.
//!
//! ```text
//! cargo run --release --example sqpoll              # listens on 0.0.0.0:8080, SQPOLL on CPU 0
//! cargo run --release --example sqpoll -- --sq-cpu 1 --mode reactor
//! curl -i http://127.0.0.1:8080/
//! ```
//!
//! Flags: --sq-cpu N (CPU of the SQPOLL threads, default 0) and the common ones: --port,
//! --reactors, --recv-buffer-size, --buffer-ring-entries, --incremental, --mode runtime|reactor,
//! --accept dedicated|per-reactor, --workers. SIGINT/SIGTERM stop it.

mod common;

use std::time::Duration;

use common::{Args, RESPONSE, RequestCounter};
use zerg_uring::Connection;

async fn handle(mut conn: Connection) {
    let mut counter = RequestCounter::default();
    loop {
        let snapshot = conn.read().await;
        if snapshot.is_closed() {
            return;
        }
        let requests: usize = snapshot.buffers().map(|b| counter.feed(b)).sum();
        drop(snapshot);
        for _ in 0..requests {
            if conn.write(RESPONSE).is_err() {
                return;
            }
        }
        if conn.flush().await.is_err() {
            return;
        }
    }
}

fn main() {
    // `--sq-cpu N` is ours; everything else goes to the common parser.
    let mut sq_cpu = 0u32;
    let mut rest = vec![std::env::args().next().unwrap_or_default()];
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == "--sq-cpu" {
            sq_cpu = it
                .next()
                .and_then(|v| v.parse().ok())
                .expect("--sq-cpu needs a CPU number");
        } else {
            rest.push(a);
        }
    }
    let args = Args::parse_from(rest);
    let mut options = args.options();
    for rc in &mut options.reactor_configs {
        // SQPOLL excludes DEFER_TASKRUN.
        rc.sqpoll = true;
        rc.defer_taskrun = false;
        rc.sq_cpu = Some(sq_cpu);
        rc.sq_thread_idle = Duration::from_millis(100);
    }
    common::run(&args, options, handle);
}
