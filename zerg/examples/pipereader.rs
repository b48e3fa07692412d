//! The HTTP/1.1 "200 OK" server on `ConnectionReader` (the C# zerg's `PipeReaderExample`): requests
//! are found in place in the receive buffers, across buffer boundaries; complete requests are
//! consumed (their buffers go back to the kernel at once) and an incomplete one stays in its
//! buffers, examined, until the rest arrives — no copy, no busy loop, and the scan for its end
//! resumes where it stopped.
//!
//! ```text
//! cargo run --release --example pipereader          # listens on 0.0.0.0:8080
//! curl -i http://127.0.0.1:8080/
//! wrk -c256 -d10s http://127.0.0.1:8080/
//! cargo run --release --example pipereader -- --mode runtime --incremental
//! ```
//!
//! An incomplete request holds its receive buffers, so it is bounded twice: at most 8 KiB
//! (`common::http::MAX_HEAD`) and at most 64 receive buffers, or half the connection's
//! `max_buffers_per_connection` if that is less (a client dribbling its head one byte per packet
//! would otherwise pin one buffer per byte, until the connection's receive pauses for good). Past either it is answered 431, the
//! rejection logged, and the connection closed; malformed requests get 400, bodies over 1 MiB
//! 413, `Transfer-Encoding` 501. Bodies up to 1 MiB are consumed as they arrive.
//!
//! Flags (`--help`): --port, --reactors, --recv-buffer-size, --buffer-ring-entries,
//! --incremental, --mode reactor|runtime, --accept per-reactor|dedicated, --workers, --sqpoll,
//! --max-connections, --write-timeout (default 30 s), --header-timeout (60 s), --read-timeout
//! (off), --idle-timeout (75 s); 0 turns a timeout off. SIGINT/SIGTERM stop it.

mod common;

use common::http::{self, Batch, END, MAX_HEAD, Reject};
use common::{Args, Kind};
use zerg_uring::{Connection, ConnectionReader, Sequence};

/// Most receive buffers an incomplete request may hold (fewer when a connection may hold fewer:
/// the reader must never reach `max_buffers_per_connection`, where receiving pauses).
const MAX_SEGMENTS: usize = 64;

/// Parsing state kept between reads.
struct Requests {
    /// Most receive buffers an incomplete request may hold.
    max_segments: usize,
    /// Bytes of the incomplete head at the front of the view already scanned for its end.
    scanned: usize,
    /// Body bytes of the last request still to consume.
    skip: usize,
    /// A head that straddles receive buffers, gathered for httparse (reused).
    scratch: Vec<u8>,
}

impl Requests {
    /// Adds the requests complete in `view` to `batch`; returns how many bytes they took.
    fn parse(&mut self, view: &Sequence<'_>, batch: &mut Batch) -> usize {
        let mut consumed = 0;
        while batch.open() {
            let k = self.skip.min(view.len() - consumed);
            consumed += k;
            self.skip -= k;
            let rest = view.slice(consumed, view.len() - consumed);
            if rest.is_empty() {
                break;
            }
            // The common head within one receive buffer: found and checked in one pass.
            if self.scanned == 0
                && let Some((head, len)) = http::parse_simple(rest.first())
            {
                consumed += len;
                self.skip = head.body;
                batch.push(Ok(head));
                continue;
            }
            // Resume the scan 3 bytes before where it stopped: the end may straddle.
            let from = self.scanned.saturating_sub(END.len() - 1);
            let limit = rest.len().min(MAX_HEAD);
            let head = match rest.slice(from, limit - from).position_of(END) {
                Some(i) => {
                    let len = from + i + END.len();
                    consumed += len;
                    self.scanned = 0;
                    self.parse_in_place(&rest.slice(0, len))
                }
                None if limit == MAX_HEAD => Err(http::over_limit(&rest.slice(0, limit).to_vec())),
                None if rest.segments().count() >= self.max_segments => Err(Reject::HeaderTooLarge),
                None => {
                    // Incomplete: check its start once, then wait for more.
                    if self.scanned == 0
                        && let Err(r) = http::check_start(self.gather(&rest))
                    {
                        batch.push(Err(r));
                        break;
                    }
                    self.scanned = rest.len();
                    break;
                }
            };
            if let Ok(h) = head {
                self.skip = h.body;
            }
            batch.push(head);
        }
        consumed
    }

    /// Parses a complete head: in its receive buffer, or gathered when it straddles several.
    fn parse_in_place(&mut self, head: &Sequence<'_>) -> Result<http::Head, Reject> {
        let first = head.first();
        if first.len() == head.len() {
            return http::parse_head(first);
        }
        http::parse_head(self.gather(head))
    }

    /// The bytes of `seq`, contiguous: in place when it is one segment, else copied.
    fn gather<'s>(&'s mut self, seq: &Sequence<'s>) -> &'s [u8] {
        let first = seq.first();
        if first.len() == seq.len() {
            return first;
        }
        self.scratch.clear();
        for segment in seq.segments() {
            self.scratch.extend_from_slice(segment);
        }
        &self.scratch
    }
}

async fn handle(conn: Connection, max_segments: usize) {
    let mut reader = ConnectionReader::new(conn);
    let mut requests = Requests {
        max_segments,
        scanned: 0,
        skip: 0,
        scratch: Vec::new(),
    };
    loop {
        let result = reader.read().await;
        if result.is_completed() {
            return;
        }
        let view = result.buffer();
        let len = view.len();
        let mut batch = Batch::default();
        let consumed = requests.parse(&view, &mut batch);
        // Complete requests are consumed; the rest was examined: wait for more bytes.
        reader.advance(consumed, len);
        if !batch.open() {
            // Closing: every held buffer goes back now, then the final answers.
            let mut conn = reader.into_inner();
            common::answer(&mut conn, &batch).await;
            return;
        }
        if !common::answer(reader.get_mut(), &batch).await {
            return;
        }
    }
}

fn main() {
    let args = Args::parse(Kind::Http);
    let options = args.options();
    let per_connection = options.reactor_configs[0].effective_max_buffers_per_connection();
    let max_segments = (per_connection as usize / 2).clamp(1, MAX_SEGMENTS);
    common::run(&args, options, move |conn| handle(conn, max_segments));
}
