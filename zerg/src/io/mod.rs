//! Adapters over the connection API, so that code written for Rust's I/O traits runs on zerg.
//!
//! - [`ConnectionReader`] (C# zerg: `ConnectionPipeReader`): a zero-copy, multi-segment view of
//!   everything received and not yet consumed, with `advance(consumed, examined)`.
//! - [`ConnectionStream`] (C# zerg: `ConnectionStream`): `tokio::io::{AsyncRead, AsyncWrite}`
//!   and `futures_io::{AsyncRead, AsyncWrite}`, one copy per read; hyper and tokio-util codecs
//!   run on it.
//! - [`axum::Listener`](crate::axum::Listener) (feature `axum`): an engine as an
//!   `axum::serve::Listener`, its connections `ConnectionStream`s.
//!
//! The reader and the stream keep the unconsumed bytes in the receive buffers they came in ([`Inbound`]) and hand
//! buffers back to the kernel as soon as everything in them is consumed.

#[cfg(feature = "axum")]
pub(crate) mod axum;
mod reader;
#[cfg(any(feature = "tokio", feature = "futures-io", feature = "hyper"))]
mod stream;

pub use reader::{ConnectionReader, ReaderRead, ReaderResult};
#[cfg(any(feature = "tokio", feature = "futures-io", feature = "hyper"))]
pub use stream::ConnectionStream;

use std::task::{Context, Poll};

use crate::conn::{Connection, ReadSnapshot, Sequence};
use crate::error::CloseReason;

/// Received bytes not yet consumed, gathered over several reads without copying.
///
/// Invariant: `held`'s live pieces hold `head + len` bytes; the first `head` bytes of the first
/// piece are consumed (a piece is handed back once all of it is consumed, so `head` is less than
/// the first piece's length whenever `len > 0`).
#[derive(Debug)]
pub(crate) struct Inbound {
    held: ReadSnapshot,
    head: usize,
    len: usize,
    /// The connection reported its end; no more bytes will come.
    end: Option<CloseReason>,
}

impl Inbound {
    pub(crate) const fn new() -> Self {
        Inbound {
            held: ReadSnapshot::empty(),
            head: 0,
            len: 0,
            end: None,
        }
    }

    /// Unconsumed bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Receive buffers (pieces, in incremental mode) the unconsumed bytes occupy.
    pub(crate) fn pieces(&self) -> usize {
        self.held.buffer_count()
    }

    pub(crate) fn end(&self) -> Option<CloseReason> {
        self.end
    }

    /// Polls the connection once for what it received since the last call: `Ready` when new
    /// bytes were added or the end was seen (now or before), `Pending` (with `cx`'s waker
    /// registered) when nothing new is there.
    pub(crate) fn poll_more(&mut self, conn: &mut Connection, cx: &mut Context<'_>) -> Poll<()> {
        if self.end.is_some() {
            return Poll::Ready(());
        }
        let snapshot = std::task::ready!(conn.poll_read(cx));
        if snapshot.is_closed() {
            self.end = snapshot.close_reason();
        } else {
            self.len += snapshot.len();
            self.held.absorb(snapshot);
        }
        Poll::Ready(())
    }

    /// The unconsumed bytes, as one multi-segment view.
    pub(crate) fn view(&self) -> Sequence<'_> {
        self.held.sequence().slice(self.head, self.len)
    }

    /// Drops the first `n` unconsumed bytes, handing every piece they cover entirely back to the
    /// kernel at once.
    ///
    /// # Panics
    ///
    /// If fewer than `n` bytes are unconsumed.
    pub(crate) fn consume(&mut self, n: usize) {
        assert!(
            n <= self.len,
            "consuming {n} bytes of {} unconsumed",
            self.len
        );
        if n == 0 {
            return;
        }
        self.len -= n;
        let mut off = self.head + n;
        let mut whole = 0;
        for piece in self.held.buffers() {
            if off < piece.len() {
                break;
            }
            off -= piece.len();
            whole += 1;
        }
        self.held.release_front(whole);
        self.head = off;
    }
}

/// The read side of the I/O traits, shared by the reader and the stream.
#[cfg(any(feature = "tokio", feature = "futures-io", feature = "hyper"))]
impl Inbound {
    /// The first contiguous run of unconsumed bytes (empty if there are none).
    pub(crate) fn first(&self) -> &[u8] {
        match self.held.buffers().next() {
            Some(b) if self.len > 0 => &b[self.head..],
            _ => &[],
        }
    }

    /// Hands up to `max` unconsumed bytes to `sink`, segment by segment, and consumes them;
    /// returns the count.
    pub(crate) fn copy_with(&mut self, max: usize, mut sink: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        for segment in self.view().segments() {
            let k = segment.len().min(max - n);
            sink(&segment[..k]);
            n += k;
            if n == max {
                break;
            }
        }
        self.consume(n);
        n
    }

    /// Waits for bytes unless some are unconsumed: `Ok(true)` when there are, `Ok(false)` at end
    /// of file, an error when the connection ended otherwise.
    pub(crate) fn poll_available(
        &mut self,
        conn: &mut Connection,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<bool>> {
        if self.len == 0 {
            std::task::ready!(self.poll_more(conn, cx));
            if self.len == 0 {
                return Poll::Ready(eof_or_error(self.end).map(|()| false));
            }
        }
        Poll::Ready(Ok(true))
    }

    /// `AsyncRead` into a plain slice: one copy.
    #[cfg(feature = "futures-io")]
    pub(crate) fn poll_copy(
        &mut self,
        conn: &mut Connection,
        cx: &mut Context<'_>,
        dst: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        if dst.is_empty() || !std::task::ready!(self.poll_available(conn, cx))? {
            return Poll::Ready(Ok(0));
        }
        let mut at = 0;
        Poll::Ready(Ok(self.copy_with(dst.len(), |s| {
            dst[at..at + s.len()].copy_from_slice(s);
            at += s.len();
        })))
    }

    /// `AsyncRead` into a tokio `ReadBuf`: one copy, no zeroing.
    #[cfg(feature = "tokio")]
    pub(crate) fn poll_copy_buf(
        &mut self,
        conn: &mut Connection,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if buf.remaining() > 0 && std::task::ready!(self.poll_available(conn, cx))? {
            self.copy_with(buf.remaining(), |s| buf.put_slice(s));
        }
        Poll::Ready(Ok(()))
    }

    /// `AsyncBufRead::poll_fill_buf`: the first receive buffer's unconsumed bytes, in place.
    pub(crate) fn poll_fill_buf(
        &mut self,
        conn: &mut Connection,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<&[u8]>> {
        std::task::ready!(self.poll_available(conn, cx))?;
        Poll::Ready(Ok(self.first()))
    }
}

/// What a read that found no bytes reports: end of file for a peer that closed its side, an
/// error for everything else (reset, socket error, engine stopping).
#[cfg(any(feature = "tokio", feature = "futures-io", feature = "hyper"))]
pub(crate) fn eof_or_error(end: Option<CloseReason>) -> std::io::Result<()> {
    match end {
        None | Some(CloseReason::PeerClosed) => Ok(()),
        Some(reason) => Err(crate::Error::Closed(reason).into()),
    }
}
