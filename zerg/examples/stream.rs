//! The HTTP/1.1 "200 OK" server on `ConnectionStream` (the seed's `StreamExample`): plain
//! `tokio::io::{AsyncReadExt, AsyncWriteExt}` calls, one copy per read into a local buffer.
//!
//! ```text
//! cargo run --release --features tokio --example stream     # listens on 0.0.0.0:8080
//! curl -i http://127.0.0.1:8080/
//! wrk -c256 -d10s http://127.0.0.1:8080/
//! cargo run --release --features tokio --example stream -- --mode reactor
//! ```
//!
//! Flags: --port, --reactors, --recv-buffer-size, --buffer-ring-entries, --incremental,
//! --mode runtime|reactor, --accept dedicated|per-reactor, --workers, --sqpoll. SIGINT/SIGTERM
//! stop it.

mod common;

use common::{Args, RESPONSE, RequestCounter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zerg_uring::{Connection, ConnectionStream};

async fn handle(conn: Connection) {
    let mut stream = ConnectionStream::new(conn);
    let mut counter = RequestCounter::default();
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        for _ in 0..counter.feed(&buf[..n]) {
            if stream.write_all(RESPONSE).await.is_err() {
                return;
            }
        }
        if stream.flush().await.is_err() {
            return;
        }
    }
}

fn main() {
    let args = Args::parse();
    common::run(&args, args.options(), handle);
}
