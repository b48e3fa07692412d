//! [`ConnectionReader`]: zero-copy reads with partial consumption (C# zerg:
//! `ConnectionPipeReader`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::Inbound;
use crate::conn::{Connection, Sequence};
use crate::error::{CloseReason, Error};

/// Zero-copy reader with partial consumption (C# zerg: `ConnectionPipeReader`).
///
/// [`read`](Self::read) returns a [`ReaderResult`]: a multi-segment view ([`Sequence`]) of
/// everything received and not yet consumed — possibly spanning several receive buffers and
/// several reads — plus whether the connection is completed (no more bytes will come). The bytes
/// are read in place in the kernel's receive buffers. [`advance`](Self::advance) then says
/// how far the application got:
///
/// - `consumed`: bytes that are done with. Every receive buffer that lies wholly before this
///   offset goes back to the kernel at once; the rest of the view is offered again.
/// - `examined`: bytes that were looked at. If the application examined everything (an
///   incomplete message, say), the next `read` waits for new bytes instead of returning the same
///   view again, so parsing a partial message never busy-loops.
///
/// A `read` with no `advance` since the previous one counts as `advance(0, len)`: nothing
/// consumed, everything examined.
///
/// Writing goes through the connection: [`ReaderResult::connection`] (while the view is alive,
/// say to write bytes straight from it) or [`get_mut`](Self::get_mut), for
/// [`write`](Connection::write) and [`flush`](Connection::flush).
/// [`into_inner`](Self::into_inner) (C# zerg: `Complete`) returns every held buffer and hands the
/// connection back.
///
/// With the `tokio` or `futures-io` feature the reader also implements `AsyncBufRead` (one
/// receive buffer at a time, zero-copy) and `AsyncRead` (one copy).
///
/// # Memory bound
///
/// Unconsumed bytes keep their receive buffers out of the ring. A connection holding
/// [`max_buffers_per_connection`](crate::ReactorConfig::max_buffers_per_connection) buffers
/// (pieces, in incremental mode; 256 KiB worth by default) stops receiving until some are consumed. A reader that examined
/// everything it holds at that bound, and asks for more, would wait forever: instead its `read`
/// ends with [`Error::MessageTooLarge`] ([`ReaderResult::error`]) naming the bound, and the held
/// buffers go back to the kernel. [`with_max_message`](Self::with_max_message) sets a smaller,
/// application-level bound. To take messages larger than the receive bound, consume what you
/// can (or copy a large message aside and consume it).
///
/// # Example
///
/// A line echo server: every complete line is written back; a line split across receive buffers
/// or reads is found as one, and an incomplete one waits for its end without spinning.
///
/// ```no_run
/// use zerg_uring::{ConnectionReader, Engine, EngineOptions};
///
/// #[tokio::main]
/// async fn main() -> zerg_uring::Result<()> {
///     let engine = Engine::listen(EngineOptions::with_port(7000))?;
///     while let Some(conn) = engine.accept().await {
///         tokio::spawn(async move {
///             let mut reader = ConnectionReader::new(conn);
///             loop {
///                 let mut result = reader.read().await;
///                 if result.is_completed() {
///                     break;
///                 }
///                 let mut buffer = result.buffer();
///                 let (mut consumed, examined) = (0, buffer.len());
///                 while let Some(i) = buffer.position_of(b"\n") {
///                     // Write the line straight from the receive buffers.
///                     for segment in buffer.slice(0, i + 1).segments() {
///                         result.connection().write_all(segment).await?;
///                     }
///                     buffer = buffer.slice(i + 1, buffer.len() - i - 1);
///                     consumed += i + 1;
///                 }
///                 result.connection().flush().await?;
///                 reader.advance(consumed, examined);
///             }
///             Ok::<(), zerg_uring::Error>(())
///         });
///     }
///     engine.join_async().await
/// }
/// ```
pub struct ConnectionReader {
    // Declared before `conn`: the held buffers go back before the connection asks to close.
    inbound: Inbound,
    /// The last view was examined to its end: the next read waits for new bytes.
    wait: bool,
    /// Most unconsumed bytes an incomplete message may reach.
    max_message: Option<usize>,
    /// The message grew past a bound: reading is over.
    too_large: Option<Error>,
    conn: Connection,
}

impl ConnectionReader {
    /// A reader over `conn`. It takes the connection's reads from now on.
    pub fn new(conn: Connection) -> Self {
        ConnectionReader {
            inbound: Inbound::new(),
            wait: false,
            max_message: None,
            too_large: None,
            conn,
        }
    }

    /// Sets the largest message the application accepts, in bytes: once the reader holds
    /// `limit` unconsumed bytes that were all examined (an incomplete message that large), the
    /// next [`read`](Self::read) ends reading with [`Error::MessageTooLarge`] instead of waiting
    /// for more. Without it, the bound is the connection's receive bound
    /// ([`max_buffers_per_connection`](crate::ReactorConfig::max_buffers_per_connection)
    /// buffers), past which no more bytes could arrive.
    #[must_use]
    pub fn with_max_message(mut self, limit: usize) -> Self {
        self.max_message = Some(limit);
        self
    }

    /// Waits until there is something new to look at, then returns the view of every byte
    /// received and not yet consumed (C# zerg: `ReadAsync`).
    ///
    /// Returns at once when the previous view was not examined to its end, or when the
    /// connection is completed (the view then holds whatever was left unconsumed; it never grows
    /// again). Otherwise waits for new bytes.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: bytes that arrive while the future waits are kept in the reader, so
    /// dropping it loses nothing — the next `read` returns them in its view.
    pub fn read(&mut self) -> ReaderRead<'_> {
        ReaderRead { reader: Some(self) }
    }

    /// Poll-style [`read`](Self::read), for hand-written futures: `Ready` with the view, or
    /// `Pending` after registering `cx`'s waker.
    pub fn poll_read_view(&mut self, cx: &mut Context<'_>) -> Poll<ReaderResult<'_>> {
        match self.poll_fill(cx) {
            Poll::Ready(()) => Poll::Ready(self.result()),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Takes what arrived; `Ready` when there is a view to return.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.too_large.is_some() {
            return Poll::Ready(());
        }
        let must_wait = self.wait || self.inbound.len() == 0;
        match self.inbound.poll_more(&mut self.conn, cx) {
            Poll::Ready(()) => {}
            Poll::Pending if must_wait => {
                // Waiting for the rest of a message that can never come, or may not?
                if self.over_bound(true) {
                    return Poll::Ready(());
                }
                return Poll::Pending;
            }
            Poll::Pending => {}
        }
        if must_wait && self.over_bound(false) {
            return Poll::Ready(());
        }
        // Until told otherwise by `advance`, this view counts as examined to its end.
        self.wait = true;
        Poll::Ready(())
    }

    /// The application examined every unconsumed byte and wants more: past the message limit,
    /// or (`stalled`, no bytes came) holding the connection's whole receive bound, reading ends
    /// with [`Error::MessageTooLarge`] and the held buffers go back to the kernel.
    fn over_bound(&mut self, stalled: bool) -> bool {
        let held = self.inbound.len();
        let shared = &self.conn.shared.reactor;
        let error = if self.max_message.is_some_and(|m| held >= m) {
            Error::MessageTooLarge {
                held,
                limit: self.max_message.unwrap_or_default(),
                setting: "ConnectionReader::with_max_message",
            }
        } else if stalled
            && self.inbound.end().is_none()
            && self.inbound.pieces() >= shared.max_held as usize
        {
            Error::MessageTooLarge {
                held,
                limit: shared.max_held as usize * shared.buf_size as usize,
                setting: "ReactorConfig::max_buffers_per_connection",
            }
        } else {
            return false;
        };
        tracing::debug!(reactor = shared.index, conn = %self.conn.id(), %error, "reader gave up");
        self.inbound.consume(held);
        self.too_large = Some(error);
        true
    }

    fn result(&mut self) -> ReaderResult<'_> {
        ReaderResult {
            buffer: self.inbound.view(),
            end: self.inbound.end(),
            error: self.too_large.as_ref(),
            conn: &mut self.conn,
        }
    }

    /// Tells the reader how far the application got in the last view (C# zerg: `AdvanceTo`):
    /// the first `consumed` bytes are done with (receive buffers wholly inside them go back to
    /// the kernel now), and the first `examined` bytes were looked at. When `examined` is the
    /// view's length, the next [`read`](Self::read) waits for new bytes; otherwise it returns
    /// the remaining view at once.
    ///
    /// # Panics
    ///
    /// If `consumed > examined` or `examined` exceeds the view's length.
    #[doc(alias = "AdvanceTo")]
    pub fn advance(&mut self, consumed: usize, examined: usize) {
        let len = self.inbound.len();
        assert!(
            consumed <= examined && examined <= len,
            "advance({consumed}, {examined}) on a {len}-byte view"
        );
        self.wait = examined == len;
        self.inbound.consume(consumed);
    }

    /// The connection, for its address, id and the like.
    pub fn get_ref(&self) -> &Connection {
        &self.conn
    }

    /// The connection, for writing and flushing. Do not read through it: bytes it returns would
    /// be missing from the reader's view.
    pub fn get_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Ends reading (C# zerg: `Complete`): every held receive buffer goes back to the kernel
    /// now and unconsumed bytes are discarded. Returns the connection, to keep writing or to drop
    /// (which closes it).
    #[doc(alias = "Complete")]
    pub fn into_inner(self) -> Connection {
        let ConnectionReader { inbound, conn, .. } = self;
        drop(inbound);
        conn
    }
}

impl From<Connection> for ConnectionReader {
    fn from(conn: Connection) -> Self {
        ConnectionReader::new(conn)
    }
}

impl fmt::Debug for ConnectionReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionReader")
            .field("unconsumed", &self.inbound.len())
            .field("completed", &self.inbound.end())
            .field("conn", &self.conn)
            .finish()
    }
}

/// Future of [`ConnectionReader::read`]. Cancel-safe (see there).
#[must_use = "futures do nothing unless polled"]
pub struct ReaderRead<'a> {
    reader: Option<&'a mut ConnectionReader>,
}

impl<'a> Future for ReaderRead<'a> {
    type Output = ReaderResult<'a>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ReaderResult<'a>> {
        let this = self.get_mut();
        let reader = this
            .reader
            .as_mut()
            .expect("ReaderRead polled after completion");
        std::task::ready!(reader.poll_fill(cx));
        let reader = this.reader.take().expect("checked above");
        Poll::Ready(reader.result())
    }
}

impl fmt::Debug for ReaderRead<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReaderRead").finish_non_exhaustive()
    }
}

/// What [`ConnectionReader::read`] returns (C# zerg: `ReadResult`): the unconsumed bytes,
/// whether more can come, and the connection for writing meanwhile.
#[derive(Debug)]
pub struct ReaderResult<'a> {
    buffer: Sequence<'a>,
    end: Option<CloseReason>,
    error: Option<&'a Error>,
    conn: &'a mut Connection,
}

impl<'a> ReaderResult<'a> {
    /// Every byte received and not yet consumed, in place in the receive buffers (C# zerg:
    /// `Buffer`). Offsets into it are what [`ConnectionReader::advance`] takes.
    pub fn buffer(&self) -> Sequence<'a> {
        self.buffer.clone()
    }

    /// Whether reading is over (C# zerg: `IsCompleted`): the connection is closed for reading
    /// ([`buffer`](Self::buffer) holds what was left unconsumed), or the message grew past a
    /// bound ([`error`](Self::error)).
    pub fn is_completed(&self) -> bool {
        self.end.is_some() || self.error.is_some()
    }

    /// Why reading ended early: [`Error::MessageTooLarge`] when a message grew past the reader's
    /// limit or the connection's receive bound (its bytes were discarded). `None` otherwise.
    pub fn error(&self) -> Option<&'a Error> {
        self.error
    }

    /// Why the connection closed, once it is completed.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.end
    }

    /// The connection, to write (for example bytes straight from [`buffer`](Self::buffer)) and
    /// flush while the view is alive. Do not read through it: bytes it returns would be missing
    /// from the reader's view.
    pub fn connection(&mut self) -> &mut Connection {
        self.conn
    }
}

#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
impl tokio::io::AsyncRead for ConnectionReader {
    /// Copies unconsumed bytes into `buf` and consumes them; end of file once the peer closed
    /// and everything was read.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        this.wait = false;
        this.inbound.poll_copy_buf(&mut this.conn, cx, buf)
    }
}

#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
impl tokio::io::AsyncBufRead for ConnectionReader {
    /// The unconsumed bytes of the first receive buffer, in place; empty at end of file.
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<&[u8]>> {
        let this = self.get_mut();
        this.inbound.poll_fill_buf(&mut this.conn, cx)
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        this.wait = false;
        this.inbound.consume(amt);
    }
}

#[cfg(feature = "futures-io")]
#[cfg_attr(docsrs, doc(cfg(feature = "futures-io")))]
impl futures_io::AsyncRead for ConnectionReader {
    /// Copies unconsumed bytes into `buf` and consumes them; `Ok(0)` once the peer closed and
    /// everything was read.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.wait = false;
        this.inbound.poll_copy(&mut this.conn, cx, buf)
    }
}

#[cfg(feature = "futures-io")]
#[cfg_attr(docsrs, doc(cfg(feature = "futures-io")))]
impl futures_io::AsyncBufRead for ConnectionReader {
    /// The unconsumed bytes of the first receive buffer, in place; empty at end of file.
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<&[u8]>> {
        let this = self.get_mut();
        this.inbound.poll_fill_buf(&mut this.conn, cx)
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        this.wait = false;
        this.inbound.consume(amt);
    }
}
