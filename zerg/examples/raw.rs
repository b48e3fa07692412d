//! The quick start: an HTTP/1.1 plaintext server answering every request with "200 OK", with
//! keep-alive and pipelining, reading received buffers in place as byte slices.
//!
//! ```text
//! cargo run --release --example raw                  # listens on 0.0.0.0:8080
//! curl -i http://127.0.0.1:8080/
//! wrk -c256 -d10s http://127.0.0.1:8080/
//! cargo run --release --example raw -- --reactors 2        # two reactors, SO_REUSEPORT accept
//! cargo run --release --example raw -- --mode runtime --accept dedicated   # handlers on tokio
//! ```
//!
//! By default the handlers run on the reactor thread that owns the connection (thread-per-core,
//! `Engine::serve`) and every reactor accepts its own connections (`SO_REUSEPORT`): zerg's fast
//! path. `--mode runtime` runs them on a tokio runtime instead (`Engine::accept`).
//!
//! Requests are framed by `common::http` in place in the receive buffers: a common head (an
//! upper-case method, visible-ASCII target and fields, HTTP/1.x) is found and validated in one
//! pass; any other is found with memchr's memmem and parsed with httparse, which decides; a head
//! split across buffers is copied aside (at most 8 KiB). Bodies up to 1 MiB (`Content-Length`) are skipped; a request over the limits is
//! answered 431/413, a malformed one 400, a `Transfer-Encoding` 501, and the connection closed.
//!
//! Flags (`--help`): --port, --reactors, --recv-buffer-size, --buffer-ring-entries,
//! --incremental, --mode reactor|runtime, --accept per-reactor|dedicated, --workers, --sqpoll,
//! --max-connections, and the timeouts: --write-timeout (default 30 s), --header-timeout (60 s),
//! --read-timeout (off), --idle-timeout (75 s); 0 turns one off. SIGINT/SIGTERM stop it.
//!
//! Metrics: `--metrics-port 9090` (built with `--features prometheus`) serves the engine's
//! counters as Prometheus text at `http://IP:9090/metrics` (IP: `--ip`, default all addresses):
//!
//! ```text
//! cargo run --release --example raw --features prometheus -- --metrics-port 9090
//! curl -s http://127.0.0.1:9090/metrics | grep zerg_connections
//! ```

mod common;

use common::http::{Batch, Framer};
use common::{Args, Kind};
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
        // Every buffer goes back to the kernel here, in one call.
        drop(snapshot);
        // One copy of the prebuilt response per request, one flush per read.
        if !common::answer(&mut conn, &batch).await {
            return;
        }
    }
}

fn main() {
    let args = Args::parse(Kind::Http);
    common::run(&args, args.options(), handle);
}
