//! The raw HTTP/1.1 "200 OK" server with `IORING_SETUP_SQPOLL | IORING_SETUP_SQ_AFF`: a kernel
//! thread per reactor polls the submission queue, so submitting needs no syscall while it is
//! awake. Trades a CPU core per reactor for fewer syscalls under sustained load.
//!
//! ```text
//! cargo run --release --example sqpoll              # listens on 0.0.0.0:8080, SQPOLL on CPU 0
//! cargo run --release --example sqpoll -- --sq-cpu 1 --mode runtime
//! curl -i http://127.0.0.1:8080/
//! ```
//!
//! Requests are framed like in `raw` (limits: head 8 KiB → 431, body 1 MiB → 413, malformed →
//! 400, each then closed).
//!
//! Flags (`--help`): --sq-cpu N (CPU of the SQPOLL threads, default 0) and the common ones:
//! --port, --reactors, --recv-buffer-size, --buffer-ring-entries, --incremental,
//! --mode reactor|runtime, --accept per-reactor|dedicated, --workers, --max-connections,
//! --write-timeout (default 30 s), --header-timeout (60 s), --read-timeout (off),
//! --idle-timeout (75 s); 0 turns a timeout off. SIGINT/SIGTERM stop it.

mod common;

use std::time::Duration;

use common::http::{Batch, Framer};
use common::{Args, Kind};
use lexopt::ValueExt;
use zerg_uring::Connection;

async fn handle(mut conn: Connection) {
    let mut framer = Framer::default();
    loop {
        let snapshot = conn.read().await;
        if snapshot.is_closed() {
            return;
        }
        let mut batch = Batch::default();
        for buf in snapshot.buffers() {
            framer.feed(buf, &mut batch);
        }
        drop(snapshot);
        if !common::answer(&mut conn, &batch).await {
            return;
        }
    }
}

fn main() {
    let mut sq_cpu = 0u32;
    let args = Args::parse_with(
        Kind::Http,
        "sqpoll flags:\n  --sq-cpu N                CPU of the SQPOLL threads (default 0)",
        |flag, p| {
            if flag != "sq-cpu" {
                return Ok(false);
            }
            sq_cpu = p.value()?.parse()?;
            Ok(true)
        },
    );
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
