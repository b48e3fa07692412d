//! The HTTP/1.1 "200 OK" server on `ConnectionStream` (the C# zerg's `StreamExample`): plain
//! `tokio::io::{AsyncReadExt, AsyncWriteExt}` calls, one copy per read into a local buffer.
//!
//! ```text
//! cargo run --release --features tokio --example stream     # listens on 0.0.0.0:8080
//! curl -i http://127.0.0.1:8080/
//! wrk -c256 -d10s http://127.0.0.1:8080/
//! cargo run --release --features tokio --example stream -- --mode runtime
//! ```
//!
//! Requests are framed by `common::http` (httparse; a head split across reads carried aside, at
//! most 8 KiB): head over 8 KiB or 100 fields → 431, malformed → 400, body over 1 MiB → 413,
//! `Transfer-Encoding` → 501, each answered and the connection closed; bodies up to 1 MiB are
//! skipped.
//!
//! Flags (`--help`): --port, --reactors, --recv-buffer-size, --buffer-ring-entries,
//! --incremental, --mode reactor|runtime, --accept per-reactor|dedicated, --workers, --sqpoll,
//! --max-connections, --write-timeout (default 30 s), --header-timeout (60 s), --read-timeout
//! (off), --idle-timeout (75 s); 0 turns a timeout off. SIGINT/SIGTERM stop it.

mod common;

use common::http::{Batch, Framer, Then};
use common::{Args, Kind};
use tokio::io::AsyncReadExt;
use zerg_uring::{Connection, ConnectionStream};

async fn handle(conn: Connection) {
    let mut stream = ConnectionStream::new(conn);
    let mut framer = Framer::default();
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut batch = Batch::default();
        framer.feed(&buf[..n], &mut batch);
        if let Then::Reject(r) = batch.then {
            common::log_reject(stream.get_ref(), r);
        }
        if !common::answer_stream(&mut stream, &batch).await {
            return;
        }
    }
}

fn main() {
    let args = Args::parse(Kind::Http);
    common::run(&args, args.options(), handle);
}
