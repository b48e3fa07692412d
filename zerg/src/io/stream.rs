//! [`ConnectionStream`]: the connection as a byte stream for the tokio and futures I/O traits.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use super::Inbound;
use crate::conn::{Connection, FlushState, ShutdownState};

/// The connection as an async byte stream (C# zerg: `ConnectionStream`), for crates written
/// against Rust's I/O traits: hyper (through hyper-util's `TokioIo`), tokio-util codecs,
/// `tokio::io::copy`, and so on.
///
/// Implements `tokio::io::{AsyncRead, AsyncWrite, AsyncBufRead}` with the `tokio` feature and
/// `futures_io::{AsyncRead, AsyncWrite, AsyncBufRead}` with the `futures-io` feature.
///
/// - **Reading** copies once, from the receive buffer into the caller's buffer. Bytes that did
///   not fit stay in their receive buffer for the next read (not copied again); a receive buffer
///   goes back to the kernel as soon as it is read to its end. `AsyncBufRead` reads in place,
///   without the copy. End of file once the peer closed its side and everything was read; other
///   endings (reset, engine stopping) are errors.
/// - **Writing** stages bytes in the connection, like a `BufWriter`: nothing is sent until
///   `poll_flush` (or until [`max_write_buffer`](crate::ReactorConfig::max_write_buffer) bytes
///   are staged, when a write first flushes: back-pressure). Flush after writing a message.
/// - `poll_flush` is [`Connection::flush`]; `poll_shutdown` (futures' `poll_close`) flushes and
///   then half-closes the write side (the peer reads end of file; reading goes on).
///
/// Dropping the stream at any point, even with a read or a flush pending, is safe: held receive
/// buffers go back to the kernel, the connection closes, staged bytes not yet flushed are
/// discarded.
///
/// # Cancel safety
///
/// The futures of tokio's and futures' extension traits (`AsyncReadExt::read`,
/// `AsyncWriteExt::write_all`, ...) behave as those traits document for any stream: a `read`
/// dropped before it completes took nothing (bytes stay in the stream), a dropped `write_all`
/// may have written an unknown prefix, and a dropped `flush` has handed the staged bytes to the
/// reactor, which still sends them.
///
/// # Example
///
/// An HTTP/1.1 server with hyper, keep-alive on:
///
/// ```no_run
/// use std::convert::Infallible;
///
/// use http_body_util::Full;
/// use hyper::body::Bytes;
/// use hyper::{Request, Response};
/// use hyper_util::rt::TokioIo;
/// use zerg_uring::{ConnectionStream, Engine, EngineOptions};
///
/// async fn hello(_: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
///     Ok(Response::new(Full::new(Bytes::from_static(b"Hello, World!"))))
/// }
///
/// #[tokio::main]
/// async fn main() -> zerg_uring::Result<()> {
///     let engine = Engine::listen(EngineOptions::with_port(8080))?;
///     while let Some(conn) = engine.accept().await {
///         let io = TokioIo::new(ConnectionStream::new(conn));
///         tokio::spawn(async move {
///             let service = hyper::service::service_fn(hello);
///             let _ = hyper::server::conn::http1::Builder::new()
///                 .serve_connection(io, service)
///                 .await;
///         });
///     }
///     engine.join_async().await
/// }
/// ```
///
/// Or by hand, with tokio's extension traits:
///
/// ```no_run
/// # async fn handle(conn: zerg_uring::Connection) -> std::io::Result<()> {
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// let mut stream = zerg_uring::ConnectionStream::new(conn);
/// let mut buf = [0u8; 4096];
/// loop {
///     let n = stream.read(&mut buf).await?;
///     if n == 0 {
///         return Ok(()); // the peer closed
///     }
///     stream.write_all(&buf[..n]).await?; // echo
///     stream.flush().await?;
/// }
/// # }
/// ```
#[cfg_attr(docsrs, doc(cfg(any(feature = "tokio", feature = "futures-io"))))]
pub struct ConnectionStream {
    // Declared before `conn`: the held buffers go back before the connection asks to close.
    inbound: Inbound,
    flush: FlushState,
    shutdown: ShutdownState,
    /// `poll_shutdown` was called: writes fail from now on.
    shut_down: bool,
    conn: Connection,
}

impl ConnectionStream {
    /// A stream over `conn`. It takes the connection's reads and writes from now on.
    pub fn new(conn: Connection) -> Self {
        ConnectionStream {
            inbound: Inbound::new(),
            flush: FlushState::default(),
            shutdown: ShutdownState::default(),
            shut_down: false,
            conn,
        }
    }

    /// The connection, for its address, id and the like.
    pub fn get_ref(&self) -> &Connection {
        &self.conn
    }

    /// The connection. Writing through it is fine (it is the same staging buffer); reading
    /// through it skips the bytes the stream holds.
    pub fn get_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// The connection back. Bytes received and not yet read through the stream are discarded
    /// (their buffers go back to the kernel); staged bytes stay staged.
    pub fn into_inner(self) -> Connection {
        let ConnectionStream { inbound, conn, .. } = self;
        drop(inbound);
        conn
    }

    /// Flushes until nothing is staged: a flush started by an earlier poll covers only what was
    /// staged then, so bytes written since need another.
    fn poll_flush_all(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.shut_down && self.conn.staged() == 0 {
            // Everything was sent before the FIN; nothing can be staged since.
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(self.conn.poll_flush(&mut self.flush, cx))?;
            if self.conn.staged() == 0 {
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Waits until something can be staged (flushing when the staging buffer is full).
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.shut_down {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        if self.conn.write_capacity() == 0 {
            ready!(self.poll_flush_all(cx))?;
        }
        Poll::Ready(Ok(self.conn.write_capacity()))
    }

    fn poll_write_inner(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let room = ready!(self.poll_room(cx))?;
        let n = data.len().min(room);
        self.conn.write(&data[..n])?;
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored_inner(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if bufs.iter().all(|b| b.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        let mut room = ready!(self.poll_room(cx))?;
        let mut n = 0;
        for b in bufs {
            let k = b.len().min(room);
            self.conn.write(&b[..k])?;
            n += k;
            room -= k;
            if room == 0 {
                break;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn poll_shutdown_inner(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shut_down = true;
        ready!(self.conn.poll_shutdown(&mut self.shutdown, cx))?;
        Poll::Ready(Ok(()))
    }
}

impl From<Connection> for ConnectionStream {
    fn from(conn: Connection) -> Self {
        ConnectionStream::new(conn)
    }
}

impl fmt::Debug for ConnectionStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionStream")
            .field("unread", &self.inbound.len())
            .field("read_end", &self.inbound.end())
            .field("shut_down", &self.shut_down)
            .field("conn", &self.conn)
            .finish()
    }
}

#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
impl tokio::io::AsyncRead for ConnectionStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.inbound.poll_copy_buf(&mut this.conn, cx, buf)
    }
}

#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
impl tokio::io::AsyncBufRead for ConnectionStream {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        this.inbound.poll_fill_buf(&mut this.conn, cx)
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        self.get_mut().inbound.consume(amt);
    }
}

#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
impl tokio::io::AsyncWrite for ConnectionStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_inner(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_vectored_inner(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_flush_all(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_shutdown_inner(cx)
    }
}

#[cfg(feature = "futures-io")]
#[cfg_attr(docsrs, doc(cfg(feature = "futures-io")))]
impl futures_io::AsyncRead for ConnectionStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.inbound.poll_copy(&mut this.conn, cx, buf)
    }
}

#[cfg(feature = "futures-io")]
#[cfg_attr(docsrs, doc(cfg(feature = "futures-io")))]
impl futures_io::AsyncBufRead for ConnectionStream {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        this.inbound.poll_fill_buf(&mut this.conn, cx)
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        self.get_mut().inbound.consume(amt);
    }
}

#[cfg(feature = "futures-io")]
#[cfg_attr(docsrs, doc(cfg(feature = "futures-io")))]
impl futures_io::AsyncWrite for ConnectionStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_inner(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_vectored_inner(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_flush_all(cx)
    }

    /// Flushes, then half-closes the write side (the peer reads end of file).
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_shutdown_inner(cx)
    }
}

// hyper reads and writes the connection directly, without tokio's traits or hyper-util's
// `TokioIo` in between.
#[cfg(feature = "hyper")]
impl hyper::rt::Read for ConnectionStream {
    /// Copies what is unread (one copy, as `AsyncRead`); end of file once the peer closed its
    /// side and everything was read.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // `put_slice` copies into the cursor's unfilled part and advances it (no unsafe).
        let room = buf.remaining();
        if room > 0 && ready!(this.inbound.poll_available(&mut this.conn, cx))? {
            this.inbound.copy_with(room, |s| buf.put_slice(s));
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(feature = "hyper")]
impl hyper::rt::Write for ConnectionStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_inner(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_vectored_inner(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_flush_all(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_shutdown_inner(cx)
    }
}
