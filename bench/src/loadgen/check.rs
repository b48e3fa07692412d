//! Counting and checking responses as they stream in, without copying them.
//!
//! - [`Expect::Stream`]: the response stream is one fixed message repeated (echo: the
//!   connection's pattern; HTTP against the suite's servers: [`proto::RESPONSE`]); every byte is
//!   compared, so a byte delivered to the wrong connection or a wrong response fails the run.
//! - [`Expect::Http`]: any HTTP/1.1 `200` response with a `Content-Length` body (hyper and other
//!   servers add headers such as `date`): the head is parsed, the body skipped by length. The
//!   suite's fixed response is recognised by one comparison before any parsing.

use memchr::memmem;

use crate::proto;

/// What the responses on a connection look like.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Expect {
    /// This message, repeated.
    Stream(&'static [u8]),
    /// HTTP/1.x responses with status 200 and a Content-Length.
    Http,
}

/// Largest response head accepted in [`Expect::Http`] mode.
const MAX_HEAD: usize = 8 * 1024;

/// Per-connection parse state.
#[derive(Debug, Default)]
pub(crate) struct Checker {
    /// Stream: offset inside the message. Http: body bytes still to skip.
    off: usize,
    /// Http: a response head split across reads.
    head: Vec<u8>,
}

impl Checker {
    /// Back to the start of a response (a new connection).
    pub(crate) fn reset(&mut self) {
        self.off = 0;
        self.head.clear();
    }

    /// Consumes `data`; returns how many responses it completed.
    pub(crate) fn feed(&mut self, expect: Expect, data: &[u8]) -> Result<usize, String> {
        match expect {
            Expect::Stream(msg) => self.feed_stream(msg, data),
            Expect::Http => self.feed_http(data),
        }
    }

    fn feed_stream(&mut self, msg: &[u8], mut data: &[u8]) -> Result<usize, String> {
        let mut done = 0;
        while !data.is_empty() {
            let take = data.len().min(msg.len() - self.off);
            if data[..take] != msg[self.off..self.off + take] {
                return Err("received bytes differ from the expected response".into());
            }
            self.off += take;
            data = &data[take..];
            if self.off == msg.len() {
                self.off = 0;
                done += 1;
            }
        }
        Ok(done)
    }

    fn feed_http(&mut self, mut data: &[u8]) -> Result<usize, String> {
        let mut done = 0;
        while !data.is_empty() {
            if self.off > 0 {
                // Inside a body.
                let take = self.off.min(data.len());
                self.off -= take;
                data = &data[take..];
                if self.off == 0 {
                    done += 1;
                }
                continue;
            }
            if self.head.is_empty() && data.starts_with(proto::RESPONSE) {
                done += 1;
                data = &data[proto::RESPONSE.len()..];
                continue;
            }
            // A head: find its end, in `data` alone or after what was kept.
            let (head_len, body) = if self.head.is_empty() {
                match memmem::find(data, b"\r\n\r\n") {
                    Some(i) => (i + 4, parse_head(&data[..i + 4])?),
                    None => {
                        self.keep(data)?;
                        return Ok(done);
                    }
                }
            } else {
                let kept = self.head.len();
                let from = kept.saturating_sub(3);
                let take = data.len().min(MAX_HEAD + 1 - kept.min(MAX_HEAD));
                self.head.extend_from_slice(&data[..take]);
                match memmem::find(&self.head[from..], b"\r\n\r\n") {
                    Some(i) => {
                        let end = from + i + 4;
                        let body = parse_head(&self.head[..end])?;
                        self.head.clear();
                        (end - kept, body)
                    }
                    None => {
                        if self.head.len() > MAX_HEAD {
                            return Err(format!("response head longer than {MAX_HEAD} bytes"));
                        }
                        return Ok(done);
                    }
                }
            };
            data = &data[head_len..];
            if body == 0 {
                done += 1;
            } else {
                self.off = body;
            }
        }
        Ok(done)
    }

    fn keep(&mut self, data: &[u8]) -> Result<(), String> {
        if data.len() > MAX_HEAD {
            return Err(format!("response head longer than {MAX_HEAD} bytes"));
        }
        self.head.extend_from_slice(data);
        Ok(())
    }
}

/// Checks a response head (status line to the empty line) and returns its body length.
fn parse_head(head: &[u8]) -> Result<usize, String> {
    let text = std::str::from_utf8(head).map_err(|_| "response head is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or("");
    let mut parts = status.split(' ');
    let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") || code != "200" {
        return Err(format!("unexpected status line {status:?}"));
    }
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("chunked responses are not supported".into());
        }
    }
    length.ok_or_else(|| "response without Content-Length".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_counts_split_responses_and_rejects_wrong_bytes() {
        let mut c = Checker::default();
        let e = Expect::Stream(b"abcd");
        assert_eq!(c.feed(e, b"ab").unwrap(), 0);
        assert_eq!(c.feed(e, b"cdabcdab").unwrap(), 2);
        assert!(c.feed(e, b"xx").is_err());
    }

    const HYPER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\n\
date: Thu, 26 Nov 2026 07:24:03 GMT\r\n\r\nHello, World!";

    #[test]
    fn http_counts_any_200_split_anywhere() {
        let mut stream = Vec::new();
        for _ in 0..3 {
            stream.extend_from_slice(HYPER);
            stream.extend_from_slice(proto::RESPONSE);
        }
        for a in 0..stream.len() {
            for b in (a..stream.len()).step_by(7) {
                let mut c = Checker::default();
                let n = c.feed(Expect::Http, &stream[..a]).unwrap()
                    + c.feed(Expect::Http, &stream[a..b]).unwrap()
                    + c.feed(Expect::Http, &stream[b..]).unwrap();
                assert_eq!(n, 6, "split at {a}, {b}");
            }
        }
    }

    #[test]
    fn http_rejects_errors_and_unbounded_heads() {
        let mut c = Checker::default();
        let bad = b"HTTP/1.1 500 Oops\r\ncontent-length: 0\r\n\r\n";
        assert!(c.feed(Expect::Http, bad).is_err());
        let mut c = Checker::default();
        assert!(
            c.feed(Expect::Http, b"HTTP/1.1 200 OK\r\n\r\n")
                .unwrap_err()
                .contains("Content-Length")
        );
        let mut c = Checker::default();
        let long = vec![b'x'; MAX_HEAD + 10];
        let mut r = Ok(0);
        for piece in long.chunks(1000) {
            r = c.feed(Expect::Http, piece);
            if r.is_err() {
                break;
            }
        }
        assert!(r.is_err(), "an endless head must fail");
    }
}
