//! The `resp` example's protocol: RESP2 commands decoded from a byte stream fed in arbitrary
//! pieces (receive buffers), and replies encoded. Pure byte logic, no I/O (shared with the
//! example tests).
//!
//! A command is an array of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`) or an inline
//! command (words separated by spaces on one line, `PING\r\n`; no quoting). A command that lies
//! within one piece is parsed in place and its arguments borrow the piece; one that straddles
//! pieces is gathered in a carry buffer, and parsed again only when the bytes it waits for have
//! arrived (the rest of a line, or the whole of a bulk string whose length is known), so a
//! multi-MiB value is copied once and never rescanned.
//!
//! Every part is bounded ([`Limits`]); a violation is a [`ProtocolError`], answered with
//! `-ERR Protocol error: ...` after which the connection closes.
#![allow(dead_code, unreachable_pub)]

use std::fmt;

/// Bounds on what a client may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest bulk string (a key or a value).
    pub max_bulk: usize,
    /// Most arguments in one command (the array length).
    pub max_args: usize,
    /// Longest inline command line.
    pub max_inline: usize,
}

impl Limits {
    /// Largest command: one bulk string at the limit plus room for the rest of it.
    pub fn max_command(&self) -> usize {
        self.max_bulk + 64 * 1024
    }
}

/// Default [`Limits::max_bulk`]: 16 MiB.
pub const MAX_BULK: usize = 16 << 20;
/// Default [`Limits::max_args`].
pub const MAX_ARGS: usize = 1024;
/// Default [`Limits::max_inline`] (Redis's too).
pub const MAX_INLINE: usize = 64 * 1024;
/// Longest length line (`*N` or `$N`) before its CRLF.
const MAX_NUMBER_LINE: usize = 20;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk: MAX_BULK,
            max_args: MAX_ARGS,
            max_inline: MAX_INLINE,
        }
    }
}

/// Why a request cannot be parsed; the connection closes after the error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// An array length that is not a number, or above [`Limits::max_args`].
    MultibulkLength,
    /// A bulk length that is not a number, or above [`Limits::max_bulk`].
    BulkLength,
    /// Something else where a bulk string (`$`) must start.
    ExpectedBulk(u8),
    /// A line not ended by CRLF, or a bulk string not followed by CRLF.
    MissingCrlf,
    /// An inline command longer than [`Limits::max_inline`].
    InlineTooLong,
    /// A command larger than [`Limits::max_command`].
    CommandTooLarge,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::MultibulkLength => f.write_str("invalid multibulk length"),
            ProtocolError::BulkLength => f.write_str("invalid bulk length"),
            ProtocolError::ExpectedBulk(b) => {
                write!(f, "expected '$', got '{}'", printable(&[*b]))
            }
            ProtocolError::MissingCrlf => f.write_str("expected CRLF"),
            ProtocolError::InlineTooLong => f.write_str("too big inline request"),
            ProtocolError::CommandTooLarge => f.write_str("command too large"),
        }
    }
}

/// `bytes` safe to put in an error line: printable ASCII kept, anything else (CR and LF
/// included, which would end the line) as `?`, at most 64 characters.
pub fn printable(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(64)
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            }
        })
        .collect()
}

/// One command: its arguments, in the piece it was parsed in or in the carry buffer.
#[derive(Debug, Clone, Copy)]
pub struct Command<'s> {
    src: &'s [u8],
    spans: &'s [(usize, usize)],
}

impl<'s> Command<'s> {
    /// How many arguments, the command name included.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The `i`-th argument (0: the command name).
    pub fn arg(&self, i: usize) -> &'s [u8] {
        let (start, end) = self.spans[i];
        &self.src[start..end]
    }

    /// The arguments after the command name.
    pub fn args(&self) -> impl ExactSizeIterator<Item = &'s [u8]> + '_ {
        self.spans[1..].iter().map(|&(s, e)| &self.src[s..e])
    }
}

/// The outcome of parsing one command at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
enum Parse {
    /// A command of this many bytes (its arguments in the spans).
    Done(usize),
    /// Incomplete inside a bulk string: the command needs at least this many bytes in all.
    Payload(usize),
    /// Incomplete inside a line: no parse can succeed before a `\n` arrives, and the buffer may
    /// grow to this many bytes before the line is too long.
    Line(usize),
    Error(ProtocolError),
}

/// Decodes commands from pieces of a byte stream (see the module docs).
#[derive(Debug, Default)]
pub struct Decoder {
    limits: Limits,
    /// The start of a command that straddles pieces.
    carry: Vec<u8>,
    /// What the carried command waits for (meaningful while `carry` is not empty).
    waiting: Waiting,
    /// The last command came from `carry`: clear it before going on.
    carry_used: bool,
    /// Argument spans of the last command (reused).
    spans: Vec<(usize, usize)>,
}

#[derive(Debug, Default, Clone, Copy)]
enum Waiting {
    /// Parse again once the carry holds this many bytes.
    #[default]
    Nothing,
    Bytes(usize),
    /// Parse again once a `\n` arrives, or the carry grows past this many bytes.
    Line(usize),
}

impl Decoder {
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            limits,
            ..Decoder::default()
        }
    }

    /// Bytes of an incomplete command held in the carry buffer.
    pub fn carried(&self) -> usize {
        if self.carry_used { 0 } else { self.carry.len() }
    }

    /// The next command from `rest` (the unread part of the current piece), which it advances
    /// past the bytes used. `None`: `rest` is used up and no command is complete (its start, if
    /// any, is carried to the next piece).
    pub fn next<'s, 'p: 's>(
        &'s mut self,
        rest: &mut &'p [u8],
    ) -> Option<Result<Command<'s>, ProtocolError>> {
        if self.carry_used {
            self.carry.clear();
            self.carry_used = false;
        }
        if self.carry.is_empty() {
            return self.next_in_place(rest);
        }
        let piece: &'p [u8] = rest;
        let old = self.carry.len();
        let mut taken = 0;
        loop {
            let left = &piece[taken..];
            let take = match self.waiting {
                Waiting::Bytes(n) => (n - self.carry.len()).min(left.len()),
                Waiting::Line(_) | Waiting::Nothing => left.len(),
            };
            if take == 0 {
                *rest = &[];
                return None;
            }
            let added = &left[..take];
            self.carry.extend_from_slice(added);
            taken += take;
            let ready = match self.waiting {
                Waiting::Bytes(n) => self.carry.len() >= n,
                Waiting::Line(limit) => {
                    memchr::memchr(b'\n', added).is_some() || self.carry.len() > limit
                }
                Waiting::Nothing => true,
            };
            if !ready {
                continue;
            }
            match parse(&self.carry, &self.limits, &mut self.spans) {
                Parse::Done(n) => {
                    // The bytes after the command go back to the piece.
                    *rest = &piece[n - old..];
                    self.carry_used = true;
                    return Some(Ok(Command {
                        src: &self.carry,
                        spans: &self.spans,
                    }));
                }
                Parse::Payload(n) => {
                    self.carry.reserve_exact(n - self.carry.len());
                    self.waiting = Waiting::Bytes(n);
                }
                Parse::Line(limit) => self.waiting = Waiting::Line(limit),
                Parse::Error(e) => return Some(Err(e)),
            }
        }
    }

    fn next_in_place<'s, 'p: 's>(
        &'s mut self,
        rest: &mut &'p [u8],
    ) -> Option<Result<Command<'s>, ProtocolError>> {
        let piece: &'p [u8] = rest;
        if piece.is_empty() {
            return None;
        }
        match parse(piece, &self.limits, &mut self.spans) {
            Parse::Done(n) => {
                *rest = &piece[n..];
                Some(Ok(Command {
                    src: piece,
                    spans: &self.spans,
                }))
            }
            Parse::Payload(n) => {
                self.carry.reserve_exact(n);
                self.carry.extend_from_slice(piece);
                self.waiting = Waiting::Bytes(n);
                *rest = &[];
                None
            }
            Parse::Line(limit) => {
                self.carry.extend_from_slice(piece);
                self.waiting = Waiting::Line(limit);
                *rest = &[];
                None
            }
            Parse::Error(e) => Some(Err(e)),
        }
    }
}

/// Parses one command at the start of `buf` (not empty), its argument spans into `spans`.
fn parse(buf: &[u8], limits: &Limits, spans: &mut Vec<(usize, usize)>) -> Parse {
    spans.clear();
    if buf[0] != b'*' {
        return parse_inline(buf, limits, spans);
    }
    let (count, mut pos) = match number_line(buf, 1) {
        Ok(Some(line)) => line,
        Ok(None) => return Parse::Line(1 + MAX_NUMBER_LINE + 2),
        Err(_) => return Parse::Error(ProtocolError::MultibulkLength),
    };
    // `*0` and `*-1` are empty commands: skipped, not answered (as Redis does).
    let count = match usize::try_from(count) {
        Ok(n) if n <= limits.max_args => n,
        Ok(_) => return Parse::Error(ProtocolError::MultibulkLength),
        Err(_) => return Parse::Done(pos),
    };
    for _ in 0..count {
        let Some(&first) = buf.get(pos) else {
            return Parse::Line(pos + 1 + MAX_NUMBER_LINE + 2);
        };
        if first != b'$' {
            return Parse::Error(ProtocolError::ExpectedBulk(first));
        }
        let (len, start) = match number_line(buf, pos + 1) {
            Ok(Some((n, start))) => match usize::try_from(n) {
                Ok(n) if n <= limits.max_bulk => (n, start),
                _ => return Parse::Error(ProtocolError::BulkLength),
            },
            Ok(None) => return Parse::Line(pos + 1 + MAX_NUMBER_LINE + 2),
            Err(_) => return Parse::Error(ProtocolError::BulkLength),
        };
        let end = start + len;
        if end + 2 > limits.max_command() {
            return Parse::Error(ProtocolError::CommandTooLarge);
        }
        if buf.len() < end + 2 {
            return Parse::Payload(end + 2);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Parse::Error(ProtocolError::MissingCrlf);
        }
        spans.push((start, end));
        pos = end + 2;
    }
    Parse::Done(pos)
}

/// A decimal number (optionally negative) from `buf[from..]` up to its CRLF: the number and the
/// offset after the CRLF; `None` when the line is not complete yet.
fn number_line(buf: &[u8], from: usize) -> Result<Option<(i64, usize)>, ProtocolError> {
    let window = &buf[from..buf.len().min(from + MAX_NUMBER_LINE + 2)];
    let Some(nl) = memchr::memchr(b'\n', window) else {
        return if window.len() == MAX_NUMBER_LINE + 2 {
            Err(ProtocolError::MissingCrlf)
        } else {
            Ok(None)
        };
    };
    let Some(digits) = window[..nl].strip_suffix(b"\r") else {
        return Err(ProtocolError::MissingCrlf);
    };
    let (negative, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ProtocolError::MissingCrlf);
    }
    let n = digits
        .iter()
        .fold(0i64, |n, &d| n * 10 + i64::from(d - b'0'));
    Ok(Some((if negative { -n } else { n }, from + nl + 1)))
}

/// An inline command: words separated by spaces or tabs, up to `\n` (a `\r` before it dropped).
fn parse_inline(buf: &[u8], limits: &Limits, spans: &mut Vec<(usize, usize)>) -> Parse {
    let window = &buf[..buf.len().min(limits.max_inline + 1)];
    let Some(nl) = memchr::memchr(b'\n', window) else {
        return if window.len() > limits.max_inline {
            Parse::Error(ProtocolError::InlineTooLong)
        } else {
            Parse::Line(limits.max_inline)
        };
    };
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut start = None;
    for (i, &b) in line.iter().enumerate() {
        let blank = b == b' ' || b == b'\t';
        match (start, blank) {
            (None, false) => start = Some(i),
            (Some(s), true) => {
                spans.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        spans.push((s, line.len()));
    }
    if spans.len() > limits.max_args {
        return Parse::Error(ProtocolError::MultibulkLength);
    }
    Parse::Done(nl + 1)
}

/// Appends a bulk string reply's header, `$<len>\r\n`, to `out`.
pub fn bulk_header(len: usize, out: &mut Vec<u8>) {
    out.push(b'$');
    out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends an integer reply, `:<n>\r\n`, to `out`.
pub fn integer(n: i64, out: &mut Vec<u8>) {
    out.push(b':');
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}
