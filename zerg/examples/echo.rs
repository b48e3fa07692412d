//! A TCP echo server: every byte received is sent back without being copied — the receive
//! buffers themselves are sent (`write_snapshot`) and go back to the kernel once sent.
//!
//! ```text
//! cargo run --release --example echo                # listens on 0.0.0.0:8080
//! printf 'hello\n' | socat - TCP:127.0.0.1:8080     # or any TCP client
//! cargo run --release --example echo -- --mode runtime --reactors 2
//! ```
//!
//! Memory per connection is bounded by the library: a peer that sends without reading gets no
//! more than `max_buffers_per_connection` receive buffers in flight (TCP flow control pushes back
//! on it), and one that stops reading is dropped by the write timeout.
//!
//! Flags (`--help`): --port, --reactors, --recv-buffer-size, --buffer-ring-entries,
//! --incremental, --mode reactor|runtime, --accept per-reactor|dedicated, --workers, --sqpoll,
//! --max-connections, --write-timeout (default 30 s), --read-timeout (off), --idle-timeout
//! (75 s); 0 turns a timeout off. SIGINT/SIGTERM stop it.

mod common;

use common::{Args, Kind};
use zerg_uring::Connection;

async fn handle(mut conn: Connection) {
    loop {
        let snapshot = conn.read().await;
        if snapshot.is_closed() {
            return;
        }
        // The snapshot's buffers are queued for sending as they are: no copy.
        if conn.write_snapshot(snapshot).is_err() {
            return;
        }
        if conn.flush().await.is_err() {
            return;
        }
    }
}

fn main() {
    let args = Args::parse(Kind::Tcp);
    common::run(&args, args.options(), handle);
}
