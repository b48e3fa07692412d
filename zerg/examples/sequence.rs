//! The raw HTTP/1.1 "200 OK" server, parsing with the multi-segment `Sequence` view: requests are
//! found with `position_of`, even when one straddles two receive buffers, and a request split
//! across reads is kept (its bytes copied aside) until the rest arrives.
//!
//! ```text
//! cargo run --release --example sequence            # listens on 0.0.0.0:8080
//! curl -i http://127.0.0.1:8080/
//! wrk -c256 -d10s http://127.0.0.1:8080/
//! ```
//!
//! Flags: --port, --reactors, --recv-buffer-size, --buffer-ring-entries, --incremental,
//! --mode runtime|reactor, --accept dedicated|per-reactor, --workers. SIGINT/SIGTERM stop it.

mod common;

use common::{Args, RESPONSE};
use zerg_uring::Connection;

const END: &[u8] = b"\r\n\r\n";

async fn handle(mut conn: Connection) {
    // Bytes of an incomplete request carried over from the previous read (rare: only when a
    // request is split across reads).
    let mut partial: Vec<u8> = Vec::new();
    loop {
        let snapshot = conn.read().await;
        if snapshot.is_closed() {
            return;
        }
        let mut seq = snapshot.sequence();
        let mut requests = 0;
        if partial.is_empty() {
            // Zero-copy path: find each request end in place, across buffer boundaries.
            while let Some(i) = seq.position_of(END) {
                requests += 1;
                seq = seq.slice(i + END.len(), seq.len() - i - END.len());
            }
            partial.extend_from_slice(&seq.to_vec());
        } else {
            partial.extend_from_slice(&seq.to_vec());
            let mut start = 0;
            while let Some(i) = partial[start..].windows(END.len()).position(|w| w == END) {
                requests += 1;
                start += i + END.len();
            }
            partial.drain(..start);
        }
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
    let args = Args::parse();
    common::run(&args, args.options(), handle);
}
