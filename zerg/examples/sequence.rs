//! The raw HTTP/1.1 "200 OK" server, parsing with the multi-segment `Sequence` view: a common
//! head lying in one receive buffer is found and validated in one pass (`common::http`); any
//! other head's end is found with `position_of` (memchr's memmem per buffer, plus the few bytes
//! around each buffer boundary), even when it straddles two or more receive buffers. A head that
//! is still incomplete at the end of a read is copied aside (at most 8 KiB) and its scan resumes
//! where it stopped when the rest arrives: no byte is scanned twice.
//!
//! ```text
//! cargo run --release --example sequence            # listens on 0.0.0.0:8080
//! curl -i http://127.0.0.1:8080/
//! wrk -c256 -d10s http://127.0.0.1:8080/
//! ```
//!
//! Limits (`common::http`): head 8 KiB or 100 fields → 431, malformed → 400, body over 1 MiB →
//! 413, `Transfer-Encoding` → 501, each answered and the connection closed; bodies up to 1 MiB
//! are skipped.
//!
//! Flags (`--help`): --port, --reactors, --recv-buffer-size, --buffer-ring-entries,
//! --incremental, --mode reactor|runtime, --accept per-reactor|dedicated, --workers, --sqpoll,
//! --max-connections, --write-timeout (default 30 s), --header-timeout (60 s), --read-timeout
//! (off), --idle-timeout (75 s); 0 turns a timeout off. SIGINT/SIGTERM stop it.

mod common;

use bytes::Buf;
use common::http::{self, Batch, END, MAX_HEAD, Partial, Reject};
use common::{Args, Kind};
use zerg_uring::{Connection, Sequence};

/// Parsing state kept between reads.
#[derive(Default)]
struct Requests {
    /// The incomplete head of the next request, when a read ended inside it.
    partial: Partial,
    /// Body bytes of the last request still to skip.
    skip: usize,
    /// A head that straddles receive buffers, gathered for httparse (reused).
    scratch: Vec<u8>,
}

impl Requests {
    /// Adds the requests completed by `seq` to `batch`.
    fn parse(&mut self, mut seq: Sequence<'_>, batch: &mut Batch) {
        while batch.open() {
            let k = self.skip.min(seq.len());
            seq.advance(k);
            self.skip -= k;
            if seq.is_empty() {
                return;
            }
            let head = if self.partial.is_empty() {
                // The common head within the first segment: found and checked in one pass.
                if let Some((head, len)) = http::parse_simple(seq.first()) {
                    seq.advance(len);
                    self.skip = head.body;
                    batch.push(Ok(head));
                    continue;
                }
                // In place: look for the end of the head in at most MAX_HEAD bytes.
                let window = seq.slice(0, seq.len().min(MAX_HEAD));
                match window.position_of(END) {
                    Some(i) => {
                        let head = self.parse_in_place(&seq.slice(0, i + END.len()));
                        seq.advance(i + END.len());
                        head
                    }
                    None if window.len() == MAX_HEAD => Err(http::over_limit(&window.to_vec())),
                    None => match self.partial.start(seq.segments()) {
                        Ok(()) => return,
                        Err(r) => Err(r),
                    },
                }
            } else {
                // Resume the carried head with the bytes of the next buffer.
                let piece = seq.first();
                match self.partial.resume(piece) {
                    Some((head, used)) => {
                        seq.advance(used);
                        head
                    }
                    None => {
                        seq.advance(piece.len());
                        continue;
                    }
                }
            };
            if let Ok(h) = head {
                self.skip = h.body;
            }
            batch.push(head);
        }
    }

    /// Parses a complete head: in its receive buffer, or gathered when it straddles several.
    fn parse_in_place(&mut self, head: &Sequence<'_>) -> Result<http::Head, Reject> {
        let first = head.first();
        if first.len() == head.len() {
            return http::parse_head(first);
        }
        self.scratch.clear();
        for segment in head.segments() {
            self.scratch.extend_from_slice(segment);
        }
        http::parse_head(&self.scratch)
    }
}

async fn handle(mut conn: Connection) {
    let mut requests = Requests::default();
    loop {
        let snapshot = conn.read().await;
        if snapshot.is_closed() {
            return;
        }
        let mut batch = Batch::default();
        requests.parse(snapshot.sequence(), &mut batch);
        drop(snapshot);
        if !common::answer(&mut conn, &batch).await {
            return;
        }
    }
}

fn main() {
    let args = Args::parse(Kind::Http);
    common::run(&args, args.options(), handle);
}
