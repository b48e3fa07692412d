//! The HTTP/1.1 "200 OK" server on `ConnectionReader` (the seed's `PipeReaderExample`): requests
//! are found in place in the receive buffers, across buffer boundaries; complete requests are
//! consumed (their buffers go back to the kernel at once) and an incomplete one stays in its
//! buffers, examined, until the rest arrives — no copy, no busy loop.
//!
//! ```text
//! cargo run --release --example pipereader          # listens on 0.0.0.0:8080
//! curl -i http://127.0.0.1:8080/
//! wrk -c256 -d10s http://127.0.0.1:8080/
//! cargo run --release --example pipereader -- --mode reactor --incremental
//! ```
//!
//! Flags: --port, --reactors, --recv-buffer-size, --buffer-ring-entries, --incremental,
//! --mode runtime|reactor, --accept dedicated|per-reactor, --workers, --sqpoll. SIGINT/SIGTERM
//! stop it.

mod common;

use common::{Args, RESPONSE};
use zerg_uring::{Connection, ConnectionReader};

const END: &[u8] = b"\r\n\r\n";

async fn handle(conn: Connection) {
    let mut reader = ConnectionReader::new(conn);
    loop {
        let result = reader.read().await;
        if result.is_completed() {
            return;
        }
        let buffer = result.buffer();
        // Each request ends with an empty line; consume through the last complete one.
        let mut consumed = 0;
        let mut requests = 0;
        let mut rest = buffer.clone();
        while let Some(i) = rest.position_of(END) {
            requests += 1;
            consumed += i + END.len();
            rest = buffer.slice(consumed, buffer.len() - consumed);
        }
        let examined = buffer.len();
        reader.advance_to(consumed, examined);

        let conn = reader.get_mut();
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
