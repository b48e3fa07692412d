//! tokio-util codecs on zerg: `Framed<ConnectionStream, _>` with a decoder that picks the
//! protocol from the first line. Normally a line echo server (`LinesCodec`): every line (ending
//! in `\n` or `\r\n`) comes back as a line; lines longer than 64 KiB close the connection. A
//! connection whose first line is an HTTP/1.x request line is served as HTTP instead — requests
//! framed by `common::http` (httparse), one "200 OK" each — so curl and wrk work too.
//!
//! ```text
//! cargo run --release --features tokio --example codec      # listens on 0.0.0.0:8080
//! printf 'hello\nzerg\n' | nc -q1 127.0.0.1 8080
//! curl -i http://127.0.0.1:8080/
//! wrk -c256 -d10s http://127.0.0.1:8080/
//! ```
//!
//! HTTP limits: head over 8 KiB or 100 fields → 431, malformed → 400, body over 1 MiB → 413,
//! `Transfer-Encoding` → 501, each answered and the connection closed; bodies up to 1 MiB are
//! skipped.
//!
//! Flags (`--help`): --port, --reactors, --recv-buffer-size, --buffer-ring-entries,
//! --incremental, --mode reactor|runtime, --accept per-reactor|dedicated, --workers, --sqpoll,
//! --max-connections, --write-timeout (default 30 s), --header-timeout (60 s, HTTP), --read-timeout
//! (off), --idle-timeout (75 s); 0 turns a timeout off. SIGINT/SIGTERM stop it.

mod common;

use bytes::{Buf, BytesMut};
use common::http::{self, Head, MAX_HEAD, RESPONSE, RESPONSE_CLOSE, Reject};
use common::{Args, Kind};
use futures::{SinkExt, StreamExt};
use tokio_util::codec::{Decoder, Encoder, Framed, LinesCodec, LinesCodecError};
use zerg_uring::{Connection, ConnectionStream};

/// Longest line echoed.
const MAX_LINE: usize = 64 * 1024;

/// What the decoder yields.
enum Frame {
    Line(String),
    /// A request head (its body skipped by the decoder), or why it is refused.
    Request(Result<Head, Reject>),
}

#[derive(PartialEq)]
enum Protocol {
    Undecided,
    Lines,
    Http,
}

/// Lines, or HTTP requests when the first line is a request line.
struct LineOrHttp {
    protocol: Protocol,
    lines: LinesCodec,
    http: HttpDecoder,
}

impl LineOrHttp {
    fn new() -> Self {
        LineOrHttp {
            protocol: Protocol::Undecided,
            lines: LinesCodec::new_with_max_length(MAX_LINE),
            http: HttpDecoder::default(),
        }
    }

    /// Picks the protocol once the first line is in (without consuming it); `false` until then.
    fn decide(&mut self, buf: &BytesMut, eof: bool) -> bool {
        if self.protocol != Protocol::Undecided {
            return true;
        }
        let seen = &buf[..buf.len().min(MAX_LINE + 1)];
        let Some(nl) = memchr::memchr(b'\n', seen) else {
            if seen.len() > MAX_LINE || eof {
                // Too long for a request line, or the last bytes: the lines codec handles it.
                self.protocol = Protocol::Lines;
            }
            return self.protocol != Protocol::Undecided;
        };
        let line = seen[..nl].strip_suffix(b"\r").unwrap_or(&seen[..nl]);
        self.protocol = if line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0") {
            Protocol::Http
        } else {
            Protocol::Lines
        };
        true
    }
}

impl Decoder for LineOrHttp {
    type Item = Frame;
    type Error = LinesCodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, LinesCodecError> {
        if !self.decide(buf, false) {
            return Ok(None);
        }
        match self.protocol {
            Protocol::Http => Ok(self.http.decode(buf).map(Frame::Request)),
            _ => Ok(self.lines.decode(buf)?.map(Frame::Line)),
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, LinesCodecError> {
        if !self.decide(buf, true) {
            return Ok(None);
        }
        match self.protocol {
            // An incomplete request at the end of the stream is dropped.
            Protocol::Http => Ok(self.http.decode(buf).map(Frame::Request)),
            _ => Ok(self.lines.decode_eof(buf)?.map(Frame::Line)),
        }
    }
}

impl Encoder<String> for LineOrHttp {
    type Error = LinesCodecError;

    fn encode(&mut self, line: String, buf: &mut BytesMut) -> Result<(), LinesCodecError> {
        self.lines.encode(line, buf)
    }
}

/// HTTP request heads in the read buffer: the scan for a head's end resumes where it stopped;
/// bodies are skipped as they arrive.
#[derive(Default)]
struct HttpDecoder {
    /// Bytes at the front of the buffer already scanned for the end of the head.
    scanned: usize,
    /// Body bytes of the last request still to skip.
    skip: usize,
}

impl HttpDecoder {
    fn decode(&mut self, buf: &mut BytesMut) -> Option<Result<Head, Reject>> {
        let k = self.skip.min(buf.len());
        buf.advance(k);
        self.skip -= k;
        if buf.is_empty() {
            return None;
        }
        let limit = buf.len().min(MAX_HEAD);
        let from = self.scanned.saturating_sub(http::END.len() - 1);
        match http::head_end(&buf[..limit], from) {
            Some(end) => {
                let head = http::parse_head(&buf[..end]);
                buf.advance(end);
                self.scanned = 0;
                if let Ok(h) = head {
                    self.skip = h.body;
                }
                Some(head)
            }
            None if limit == MAX_HEAD => Some(Err(http::over_limit(&buf[..limit]))),
            None => {
                if self.scanned == 0
                    && let Err(r) = http::check_start(buf)
                {
                    return Some(Err(r));
                }
                self.scanned = buf.len();
                None
            }
        }
    }
}

async fn handle(conn: Connection) {
    let mut framed = Framed::new(ConnectionStream::new(conn), LineOrHttp::new());
    while let Some(frame) = framed.next().await {
        let last = match frame {
            // An I/O error, or a line over the limit.
            Err(_) => return,
            Ok(Frame::Line(line)) => {
                // `feed` encodes the line (appending '\n') into the write buffer, unflushed.
                if framed.feed(line).await.is_err() {
                    return;
                }
                None
            }
            Ok(Frame::Request(Ok(head))) if !head.close => {
                framed.write_buffer_mut().extend_from_slice(RESPONSE);
                None
            }
            Ok(Frame::Request(Ok(_))) => Some(RESPONSE_CLOSE),
            Ok(Frame::Request(Err(r))) => {
                common::log_reject(framed.get_ref().get_ref(), r);
                Some(r.response())
            }
        };
        if let Some(last) = last {
            // The final answer: send it, then close without losing it.
            framed.write_buffer_mut().extend_from_slice(last);
            if SinkExt::<String>::flush(&mut framed).await.is_ok() {
                let mut conn = framed.into_inner().into_inner();
                common::close_gracefully(&mut conn).await;
            }
            return;
        }
        // Flush once everything already received is answered (batches pipelined requests).
        if !has_frame(&framed) && SinkExt::<String>::flush(&mut framed).await.is_err() {
            return;
        }
    }
}

/// Whether the read buffer may already hold another complete frame.
fn has_frame(framed: &Framed<ConnectionStream, LineOrHttp>) -> bool {
    let buf = framed.read_buffer();
    match framed.codec().protocol {
        // After the body still to skip: a "\r\n\r\n" inside a body is no request.
        Protocol::Http => {
            let body = framed.codec().http.skip.min(buf.len());
            http::head_end(&buf[body..], 0).is_some()
        }
        _ => memchr::memchr(b'\n', buf).is_some(),
    }
}

fn main() {
    let args = Args::parse(Kind::Http);
    common::run(&args, args.options(), handle);
}
