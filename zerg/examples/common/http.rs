//! HTTP/1.1 request framing for the plaintext examples: a common request head is found and
//! validated in one pass ([`parse_simple`], about half of httparse's cost and no separate search
//! for its end); any other head is found with `memchr::memmem` (`"\r\n\r\n"`) and parsed with
//! `httparse`, which decides. Bodies are skipped and every part of a request is bounded. Pure
//! byte logic, no I/O: the examples feed it what they read.
//!
//! Limits, like common servers' defaults, each answered with a prebuilt response and a close:
//!
//! | request | answer |
//! |---|---|
//! | head (request line, headers, empty line) over [`MAX_HEAD`] = 8 KiB, or more than [`MAX_HEADERS`] = 100 fields | 431 Request Header Fields Too Large |
//! | malformed request line or header, a line ended by a bare LF, several different `Content-Length`s | 400 Bad Request |
//! | `Content-Length` over [`MAX_BODY`] = 1 MiB | 413 Content Too Large |
//! | `Transfer-Encoding` (chunked bodies are not implemented) | 501 Not Implemented |
//!
//! A body up to [`MAX_BODY`] is skipped unread; `Connection: close` (or HTTP/1.0 without
//! `keep-alive`) is answered, then the connection closes.
#![allow(dead_code, unreachable_pub)]

use std::mem::MaybeUninit;
use std::sync::LazyLock;

use memchr::memmem::Finder;

/// Most bytes in a request head, its final empty line included (nginx and Apache also answer
/// 4xx past 8 KiB per header line).
pub const MAX_HEAD: usize = 8 * 1024;
/// Most header fields in a request (hyper's default).
pub const MAX_HEADERS: usize = 100;
/// Largest request body skipped (nginx's `client_max_body_size` default).
pub const MAX_BODY: usize = 1024 * 1024;

/// The answer to every request.
pub const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nHello, World!";
/// The answer to a request that asked to close the connection.
pub const RESPONSE_CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nHello, World!";

/// The end of a request head.
pub const END: &[u8] = b"\r\n\r\n";

static END_FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(END));

/// Why a request is refused; the connection closes after the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// 400: malformed.
    BadRequest,
    /// 413: the body is over [`MAX_BODY`].
    ContentTooLarge,
    /// 431: the head is over [`MAX_HEAD`] or has more than [`MAX_HEADERS`] fields.
    HeaderTooLarge,
    /// 501: a transfer coding (chunked body), which these examples do not implement.
    NotImplemented,
}

impl Reject {
    /// The HTTP status code.
    pub fn status(self) -> u16 {
        match self {
            Reject::BadRequest => 400,
            Reject::ContentTooLarge => 413,
            Reject::HeaderTooLarge => 431,
            Reject::NotImplemented => 501,
        }
    }

    /// What was wrong, for the log.
    pub fn reason(self) -> &'static str {
        match self {
            Reject::BadRequest => "malformed request",
            Reject::ContentTooLarge => "request body over 1 MiB",
            Reject::HeaderTooLarge => "request head over 8 KiB or 100 header fields",
            Reject::NotImplemented => "request with a Transfer-Encoding",
        }
    }

    /// The complete response, closing the connection.
    pub fn response(self) -> &'static [u8] {
        match self {
            Reject::BadRequest => {
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            }
            Reject::ContentTooLarge => {
                b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            }
            Reject::HeaderTooLarge => {
                b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            }
            Reject::NotImplemented => {
                b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            }
        }
    }
}

/// A parsed request head: what follows it and whether the connection stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Body bytes after the head (its `Content-Length`), to skip.
    pub body: usize,
    /// The client asked to close after the answer.
    pub close: bool,
}

/// Offset just past the first `"\r\n\r\n"` at or after `from` in `bytes`.
pub fn head_end(bytes: &[u8], from: usize) -> Option<usize> {
    END_FINDER
        .find(&bytes[from..])
        .map(|i| from + i + END.len())
}

/// Parses `head`, a request head through its first `"\r\n\r\n"`: the common case by
/// [`parse_simple`], anything else by httparse ([`parse_head_httparse`]). Both give the same
/// outcome for every head `parse_simple` takes.
pub fn parse_head(head: &[u8]) -> Result<Head, Reject> {
    match parse_simple(head) {
        Some((h, n)) if n == head.len() => Ok(h),
        _ => parse_head_httparse(head),
    }
}

/// httparse's verdict on `head`, a request head through its first `"\r\n\r\n"`.
pub fn parse_head_httparse(head: &[u8]) -> Result<Head, Reject> {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, &mut fields) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        // Ended before the "\r\n\r\n" (on bare LFs), or nothing but empty lines.
        Ok(_) => return Err(Reject::BadRequest),
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::HeaderTooLarge),
        Err(_) => return Err(Reject::BadRequest),
    }
    let mut close = req.version == Some(0);
    let mut body = None;
    for field in req.headers.iter() {
        let name = field.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = content_length(field.value)?;
            if body.is_some_and(|b| b != n) {
                return Err(Reject::BadRequest);
            }
            body = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Reject::NotImplemented);
        } else if name.eq_ignore_ascii_case("connection") {
            connection_tokens(field.value, req.version == Some(0), &mut close);
        }
    }
    Ok(Head {
        body: body.unwrap_or(0),
        close,
    })
}

/// Bytes of a token (RFC 9110 `tchar`): a method or a header name, as httparse checks them.
static TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    t
};

/// The common request head at the start of `head`, found and validated in one pass without
/// httparse or a separate search for its end: a request line `METHOD SP TARGET SP HTTP/1.x
/// CRLF` (an upper-case method, a target of visible ASCII), then at most [`MAX_HEADERS`] fields
/// `NAME ":" VALUE CRLF` (a token name, a value of visible ASCII, spaces and tabs), then the
/// empty line, at most [`MAX_HEAD`] bytes in all, with valid `Content-Length` and `Connection`
/// fields and no `Transfer-Encoding`. Returns the head's outcome and length.
///
/// No CR can occur before the empty line but in a line's CRLF, so the head found is the one
/// ending at the first `"\r\n\r\n"`; and each byte taken is one httparse accepts in its place,
/// so the head is one [`parse_head_httparse`] takes, with the same outcome. `None` for anything
/// else — other bytes, other shapes, an incomplete head, a field that makes the request refused —
/// which the general path then decides.
pub fn parse_simple(head: &[u8]) -> Option<(Head, usize)> {
    let at = |i: usize| head.get(i).copied().unwrap_or(0);
    let mut i = if head.starts_with(b"GET ") {
        4
    } else {
        let method = head.iter().take_while(|b| b.is_ascii_uppercase()).count();
        if method == 0 || at(method) != b' ' {
            return None;
        }
        method + 1
    };
    let target = visible_run(head, i, 0x21);
    if target == 0 {
        return None;
    }
    i += target;
    let http10 = match head.get(i..i + 11)? {
        b" HTTP/1.1\r\n" => false,
        b" HTTP/1.0\r\n" => true,
        _ => return None,
    };
    i += 11;
    let mut head_out = Head {
        body: 0,
        close: http10,
    };
    let mut length = None;
    let mut fields = 0;
    while at(i) != b'\r' {
        if i > MAX_HEAD {
            return None;
        }
        let name = i;
        while TOKEN[at(i) as usize] {
            i += 1;
        }
        if i == name || at(i) != b':' {
            return None;
        }
        let name = &head[name..i];
        i += 1;
        let value = i;
        loop {
            i += visible_run(head, i, 0x20);
            if at(i) != b'\t' {
                break;
            }
            i += 1;
        }
        if at(i) != b'\r' || at(i + 1) != b'\n' {
            return None;
        }
        let value = &head[value..i];
        i += 2;
        fields += 1;
        if fields > MAX_HEADERS {
            return None;
        }
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => match content_length(value) {
                Ok(n) if length.is_none_or(|l| l == n) => length = Some(n),
                _ => return None,
            },
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => return None,
            10 if name.eq_ignore_ascii_case(b"connection") => {
                connection_tokens(value, http10, &mut head_out.close)
            }
            _ => {}
        }
    }
    // The empty line.
    if at(i + 1) != b'\n' || i + 2 > MAX_HEAD {
        return None;
    }
    head_out.body = length.unwrap_or(0);
    Some((head_out, i + 2))
}

/// How many bytes from `bytes[from..]` are in `lo..=0x7e` (`lo` is 0x20 or 0x21: visible ASCII,
/// with or without the space): eight at a time (SWAR), the last few one by one.
fn visible_run(bytes: &[u8], from: usize, lo: u8) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let rest = bytes.get(from..).unwrap_or_default();
    let mut n = 0;
    while let Some(chunk) = rest.get(n..n + 8) {
        let x = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        // A lane's high bit is set when the byte is under `lo` (exact for the lowest such lane:
        // a borrow only leaves a lane that is under `lo` itself), or 0x7f and above (a carry
        // only leaves a lane holding 0xff, whose own high bit is set).
        let below = x.wrapping_sub(ONES * u64::from(lo)) & !x;
        let above = x.wrapping_add(ONES) | x;
        let outside = (below | above) & HIGH;
        if outside != 0 {
            return n + (outside.trailing_zeros() / 8) as usize;
        }
        n += 8;
    }
    n + rest[n..]
        .iter()
        .position(|&b| !(lo..=0x7e).contains(&b))
        .unwrap_or(rest.len() - n)
}

/// Applies a `Connection` field's tokens to `close`.
fn connection_tokens(value: &[u8], http10: bool, close: &mut bool) {
    for token in value.split(|&b| b == b',') {
        let token = token.trim_ascii();
        if token.eq_ignore_ascii_case(b"close") {
            *close = true;
        } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 {
            *close = false;
        }
    }
}

/// A `Content-Length` value: digits only, at most [`MAX_BODY`].
fn content_length(value: &[u8]) -> Result<usize, Reject> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(Reject::BadRequest);
    }
    let mut n = 0usize;
    for &d in digits {
        n = n * 10 + usize::from(d - b'0');
        if n > MAX_BODY {
            return Err(Reject::ContentTooLarge);
        }
    }
    Ok(n)
}

/// Checks the first bytes of a request whose head is not complete yet (no `"\r\n\r\n"` in them,
/// fewer than [`MAX_HEAD`]): a malformed start (a TLS handshake, binary junk) is refused at once
/// instead of waiting for the rest.
pub fn check_start(bytes: &[u8]) -> Result<(), Reject> {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    match httparse::Request::new(&mut []).parse_with_uninit_headers(bytes, &mut fields) {
        Ok(httparse::Status::Partial) => Ok(()),
        // A head that ended without "\r\n\r\n": bare LFs.
        Ok(httparse::Status::Complete(_)) => Err(Reject::BadRequest),
        Err(httparse::Error::TooManyHeaders) => Err(Reject::HeaderTooLarge),
        Err(_) => Err(Reject::BadRequest),
    }
}

/// The answer to a request whose first [`MAX_HEAD`] bytes hold no complete head: 400 when
/// those bytes are already malformed (so the status does not depend on how they were split into
/// reads), 431 otherwise.
pub fn over_limit(first: &[u8]) -> Reject {
    check_start(first).err().unwrap_or(Reject::HeaderTooLarge)
}

/// What comes after the requests of a [`Batch`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Keep reading.
    #[default]
    Continue,
    /// The last request asked to close: answer it with [`RESPONSE_CLOSE`], then close.
    Close,
    /// Answer the requests, then this rejection, then close.
    Reject(Reject),
}

/// Requests found in what was read: how many to answer, then what.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    pub requests: usize,
    pub then: Then,
}

impl Batch {
    /// Counts the outcome of one request head; a close or a rejection ends the batch.
    pub fn push(&mut self, head: Result<Head, Reject>) {
        match head {
            Ok(head) => {
                self.requests += 1;
                if head.close {
                    self.then = Then::Close;
                }
            }
            Err(r) => self.then = Then::Reject(r),
        }
    }

    /// Whether more requests may follow (no close or rejection yet).
    pub fn open(&self) -> bool {
        self.then == Then::Continue
    }
}

/// An incomplete request head copied aside until its end arrives: at most [`MAX_HEAD`] bytes,
/// and the search for the end resumes where it stopped (no byte is scanned twice).
#[derive(Debug, Default)]
pub struct Partial {
    bytes: Vec<u8>,
}

impl Partial {
    /// No head is being carried.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Carries the first bytes of a request (given as pieces; no `"\r\n\r\n"` in them, fewer than
    /// [`MAX_HEAD`] in all), after checking them with [`check_start`].
    pub fn start<'a>(&mut self, pieces: impl IntoIterator<Item = &'a [u8]>) -> Result<(), Reject> {
        for p in pieces {
            self.bytes.extend_from_slice(p);
        }
        let checked = check_start(&self.bytes);
        if checked.is_err() {
            self.bytes.clear();
        }
        checked
    }

    /// Takes bytes from `more` until the head is complete. Returns the outcome and how many
    /// bytes of `more` belonged to the head, or `None` when all of `more` was taken and the head
    /// is still incomplete.
    pub fn resume(&mut self, more: &[u8]) -> Option<(Result<Head, Reject>, usize)> {
        let old = self.bytes.len();
        let take = more.len().min(MAX_HEAD - old);
        self.bytes.extend_from_slice(&more[..take]);
        // The end may start in the last three bytes carried before.
        let outcome = match head_end(&self.bytes, old.saturating_sub(END.len() - 1)) {
            Some(end) => Some((parse_head(&self.bytes[..end]), end - old)),
            None if self.bytes.len() == MAX_HEAD => Some((Err(over_limit(&self.bytes)), take)),
            None => return None,
        };
        self.bytes.clear();
        outcome
    }
}

/// Frames requests in a byte stream fed in arbitrary pieces (receive buffers, reads): a head
/// within one piece is parsed in place; one split across pieces is carried in a [`Partial`].
#[derive(Debug, Default)]
pub struct Framer {
    partial: Partial,
    /// Body bytes of the last request still to skip.
    skip: usize,
}

impl Framer {
    /// Adds the requests completed by `piece` to `batch`. Stops at a close or a rejection (the
    /// rest of the stream is not looked at).
    pub fn feed(&mut self, mut piece: &[u8], batch: &mut Batch) {
        while batch.open() {
            let k = self.skip.min(piece.len());
            self.skip -= k;
            piece = &piece[k..];
            if piece.is_empty() {
                return;
            }
            if !self.partial.is_empty() {
                match self.partial.resume(piece) {
                    Some((head, used)) => {
                        piece = &piece[used..];
                        self.push(head, batch);
                    }
                    None => return,
                }
                continue;
            }
            // The common head, found and checked in one pass.
            if let Some((head, len)) = parse_simple(piece) {
                piece = &piece[len..];
                self.push(Ok(head), batch);
                continue;
            }
            let window = &piece[..piece.len().min(MAX_HEAD)];
            match head_end(window, 0) {
                Some(end) => {
                    piece = &piece[end..];
                    self.push(parse_head(&window[..end]), batch);
                }
                None if window.len() == MAX_HEAD => batch.push(Err(over_limit(window))),
                None => {
                    if let Err(r) = self.partial.start([piece]) {
                        batch.push(Err(r));
                    }
                    return;
                }
            }
        }
    }

    fn push(&mut self, head: Result<Head, Reject>, batch: &mut Batch) {
        if let Ok(h) = head {
            self.skip = h.body;
        }
        batch.push(head);
    }
}
