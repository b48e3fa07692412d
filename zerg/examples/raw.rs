//! The quick start: an HTTP/1.1 plaintext server answering every request with "200 OK", with
//! keep-alive and pipelining, reading received buffers in place as byte slices.
//!
//! ```text
//! cargo run --release --example raw                  # listens on 0.0.0.0:8080
//! curl -i http://127.0.0.1:8080/
//! wrk -c256 -d10s http://127.0.0.1:8080/
//! cargo run --release --example raw -- --mode reactor --accept per-reactor --reactors 2
//! ```
//!
//! Flags: --port, --reactors, --recv-buffer-size, --buffer-ring-entries, --incremental,
//! --mode runtime|reactor, --accept dedicated|per-reactor, --workers. SIGINT/SIGTERM stop it.

mod common;

use common::{Args, RESPONSE, RequestCounter};
use zerg_uring::Connection;

async fn handle(mut conn: Connection) {
    let mut counter = RequestCounter::default();
    loop {
        let snapshot = conn.read().await;
        if snapshot.is_closed() {
            return;
        }
        let mut requests = 0;
        for buf in snapshot.buffers() {
            requests += counter.feed(buf);
        }
        // Every buffer goes back to the kernel here, in one call.
        drop(snapshot);
        for _ in 0..requests {
            let span = conn.get_span(RESPONSE.len());
            span[..RESPONSE.len()].copy_from_slice(RESPONSE);
            if conn.advance(RESPONSE.len()).is_err() {
                return;
            }
        }
        if conn.flush().await.is_err() {
            return;
        }
    }
}

fn main() {
    let args = Args::parse();
    common::run(&args, args.options(), handle);
}
