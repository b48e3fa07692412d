//! tokio-util codecs on zerg: `Framed<ConnectionStream, LinesCodec>`, a line echo server. Every
//! line (ending in `\n` or `\r\n`) comes back as a line; lines longer than 64 KiB close the
//! connection. A connection whose first line is an HTTP/1.1 request line is answered as HTTP
//! instead (one "200 OK" per request, at each request's empty line), so curl and wrk work too.
//!
//! ```text
//! cargo run --release --features tokio --example codec      # listens on 0.0.0.0:8080
//! printf 'hello\nzerg\n' | nc -q1 127.0.0.1 8080
//! curl -i http://127.0.0.1:8080/
//! wrk -c256 -d10s http://127.0.0.1:8080/
//! ```
//!
//! Flags: --port, --reactors, --recv-buffer-size, --buffer-ring-entries, --incremental,
//! --mode runtime|reactor, --accept dedicated|per-reactor, --workers, --sqpoll. SIGINT/SIGTERM
//! stop it.

mod common;

use common::{Args, RESPONSE};
use futures::{SinkExt, StreamExt};
use tokio_util::codec::{Framed, LinesCodec};
use zerg_uring::{Connection, ConnectionStream};

async fn handle(conn: Connection) {
    let codec = LinesCodec::new_with_max_length(64 * 1024);
    let mut framed = Framed::new(ConnectionStream::new(conn), codec);
    let mut http = None;
    while let Some(line) = framed.next().await {
        let Ok(line) = line else {
            return; // an I/O error, or a line over the limit
        };
        let http = *http.get_or_insert_with(|| line.ends_with(" HTTP/1.1"));
        if !http {
            // `feed` encodes the line (appending '\n') into the write buffer without flushing.
            if framed.feed(line).await.is_err() {
                return;
            }
        } else if line.is_empty() {
            // The end of a request's headers: answer it, bypassing the encoder.
            framed.write_buffer_mut().extend_from_slice(RESPONSE);
        }
        // Flush once the lines already received are answered (batches pipelined requests).
        if !framed.read_buffer().contains(&b'\n')
            && SinkExt::<String>::flush(&mut framed).await.is_err()
        {
            return;
        }
    }
}

fn main() {
    let args = Args::parse();
    common::run(&args, args.options(), handle);
}
