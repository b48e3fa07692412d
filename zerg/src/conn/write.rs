//! Writing: stage bytes in the connection's buffer, then flush them to the reactor, which sends
//! them (resubmitting partial sends) and completes the flush with the outcome.
#![allow(unsafe_code)]

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::{CloseReason, Error, Result};

use super::{ConnShared, ConnState, Connection, ReadSnapshot, request, shared};
use crate::buf_ring::RecvItem;
use crate::ring::outgoing::Outgoing;

/// The staging buffer of a connection.
///
/// `out.bytes[..len]` is staged. After [`Connection::span_mut`], `out.bytes` may be longer than
/// `len`: the tail is the span handed out (initialised memory, so the span is a plain
/// `&mut [u8]`). Received pieces staged by [`Connection::write_snapshot`] are listed in `out`.
pub(crate) struct WriteBuf {
    out: Outgoing,
    len: usize,
    limit: usize,
}

impl WriteBuf {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            out: Outgoing::default(),
            len: 0,
            limit,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn room(&self) -> usize {
        self.limit - self.len
    }

    fn stage(&mut self, data: &[u8]) {
        self.out.bytes.truncate(self.len);
        self.out.bytes.extend_from_slice(data);
        self.len += data.len();
    }

    /// Nothing staged: no bytes, no pieces.
    fn is_empty(&self) -> bool {
        self.len == 0 && self.out.segs.is_empty()
    }

    /// Moves what is staged into `st.outgoing` (swapping buffers when it is empty, so no bytes
    /// are copied) and counts a flush.
    fn hand_over(&mut self, st: &mut ConnState) {
        self.out.bytes.truncate(self.len);
        st.outgoing.append(&mut self.out);
        self.len = 0;
        st.flush_requested += 1;
    }

    /// Moves the staged pieces out, for handing back unsent (the handle is dropped).
    pub(crate) fn take_pieces(&mut self, out: &mut Vec<RecvItem>) {
        self.out.bytes.truncate(self.len);
        self.out.take_pieces(out);
    }
}

impl Connection {
    /// Stages `data` for sending (C# zerg: `Write`). Nothing reaches the peer until
    /// [`flush`](Self::flush).
    ///
    /// # Errors
    ///
    /// [`Error::WriteBufferFull`] if the staged bytes would exceed
    /// `ReactorConfig::max_write_buffer`; nothing is staged then. Flush and retry, or use
    /// [`write_all`](Self::write_all), which waits for room instead.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        if data.len() > self.wbuf.room() {
            return Err(Error::WriteBufferFull {
                staged: self.wbuf.len,
                requested: data.len(),
                limit: self.wbuf.limit,
            });
        }
        self.wbuf.stage(data);
        Ok(())
    }

    /// Stages every byte of `snapshot` for sending, after what is staged already. When the
    /// snapshot was read from this connection its receive buffers are sent as they are — no copy
    /// (echo, forwarding) — and go back to the kernel once sent; they count against
    /// `max_buffers_per_connection`, not `max_write_buffer`, until then. A snapshot of another
    /// connection is copied, like [`write`](Self::write).
    ///
    /// # Errors
    ///
    /// [`Error::WriteBufferFull`] when a copied snapshot does not fit `max_write_buffer`; nothing
    /// is staged then (the snapshot's buffers go back to the kernel).
    pub fn write_snapshot(&mut self, mut snapshot: ReadSnapshot) -> Result<()> {
        if !snapshot.is_from(&self.shared) {
            let n = snapshot.len();
            if n > self.wbuf.room() {
                return Err(Error::WriteBufferFull {
                    staged: self.wbuf.len,
                    requested: n,
                    limit: self.wbuf.limit,
                });
            }
            for b in snapshot.buffers() {
                self.wbuf.stage(b);
            }
            return Ok(());
        }
        self.wbuf.out.bytes.truncate(self.wbuf.len);
        for item in snapshot.take_items() {
            self.wbuf.out.push_piece(item);
        }
        Ok(())
    }

    /// Bytes staged and not yet flushed.
    pub fn staged(&self) -> usize {
        self.wbuf.len
    }

    /// A span of at least `size_hint` bytes (at least 1) to write into directly; commit what was
    /// written with [`commit`](Self::commit) (C# zerg: `IBufferWriter.GetSpan`). The span's
    /// initial contents are unspecified (zeroes or earlier bytes).
    #[doc(alias = "GetSpan")]
    pub fn span_mut(&mut self, size_hint: usize) -> &mut [u8] {
        let want = self.wbuf.len + size_hint.max(1);
        if self.wbuf.out.bytes.len() < want {
            self.wbuf.out.bytes.resize(want, 0);
        }
        &mut self.wbuf.out.bytes[self.wbuf.len..]
    }

    /// Commits `count` bytes written into the span from [`span_mut`](Self::span_mut).
    ///
    /// # Errors
    ///
    /// [`Error::CommitOutOfRange`] if `count` exceeds the span; [`Error::WriteBufferFull`] if it
    /// would exceed `max_write_buffer`. Nothing is committed then.
    #[doc(alias = "Advance")]
    pub fn commit(&mut self, count: usize) -> Result<()> {
        let available = self.wbuf.out.bytes.len() - self.wbuf.len;
        if count > available {
            return Err(Error::CommitOutOfRange {
                requested: count,
                available,
            });
        }
        if count > self.wbuf.room() {
            return Err(Error::WriteBufferFull {
                staged: self.wbuf.len,
                requested: count,
                limit: self.wbuf.limit,
            });
        }
        self.wbuf.len += count;
        Ok(())
    }

    /// Sends everything staged and waits until the kernel took all of it (C# zerg:
    /// `FlushAsync`). Partial sends are resubmitted by the reactor. A flush with nothing staged
    /// still waits for earlier flushes that are in progress.
    ///
    /// This is the only way to send: [`std::io::Write::flush`] on a connection cannot wait and
    /// sends nothing (see the [`std::io::Write` impl](#impl-Write-for-Connection)).
    ///
    /// # Cancel safety
    ///
    /// Nothing is lost by dropping the future. Dropped before its first poll, it did nothing:
    /// the bytes stay staged. Dropped later, the staged bytes were already handed to the
    /// reactor, which sends them anyway; only the outcome is not reported — the next `flush`
    /// waits for them too and reports a failure that happened meanwhile.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] with the reason when the connection failed or closed first (peer reset,
    /// write side shut down, engine stopping), [`Error::TimedOut`] when a send made no progress
    /// within `ReactorConfig::write_timeout`.
    pub fn flush(&mut self) -> Flush<'_> {
        Flush {
            conn: self,
            target: None,
        }
    }

    /// Stages and sends all of `data`, flushing whenever the staging buffer is full: any size,
    /// with memory bounded by `max_write_buffer` (back-pressure instead of an error). Call
    /// [`flush`](Self::flush) afterwards for what remains staged.
    ///
    /// # Cancel safety
    ///
    /// Not cancel-safe, like `tokio::io::AsyncWriteExt::write_all`: dropped before it resolves,
    /// an unknown prefix of `data` has been staged (and possibly sent), the rest has not. What
    /// was staged stays staged; what was handed to the reactor is still sent. Writing `data`
    /// again would duplicate that prefix: after a cancelled `write_all`, close the connection
    /// (or use [`write`](Self::write), which stages all or nothing, under a bound you chose).
    ///
    /// # Errors
    ///
    /// As for [`flush`](Self::flush).
    pub fn write_all<'a>(&'a mut self, data: &'a [u8]) -> WriteAll<'a> {
        WriteAll {
            conn: self,
            data,
            flushing: None,
        }
    }

    /// Flushes, then shuts the write side down (the peer reads end-of-file). Reading continues.
    ///
    /// # Cancel safety
    ///
    /// No staged byte is lost by dropping the future (as for [`flush`](Self::flush)), but
    /// whether the write side gets shut down depends on how far it got: dropped while flushing,
    /// no FIN is sent; dropped after the flush completed, the reactor sends the FIN anyway.
    /// Await `shutdown` again to be sure (it is idempotent).
    ///
    /// # Errors
    ///
    /// As for [`flush`](Self::flush).
    pub fn shutdown(&mut self) -> Shutdown<'_> {
        Shutdown {
            conn: self,
            state: ShutdownPhase::Flushing(None),
        }
    }

    /// Starts a flush (with the lock held): hands what is staged to the reactor. Returns the
    /// sequence number to wait for and whether the caller must queue the token once it released
    /// the lock.
    fn start_flush(
        wbuf: &mut WriteBuf,
        st: &mut ConnState,
    ) -> std::result::Result<(u64, bool), CloseReason> {
        if let Some(reason) = st.write_end {
            return Err(reason);
        }
        st.in_cycle = false;
        let mut queue = false;
        if !wbuf.is_empty() {
            wbuf.hand_over(st);
            queue = ConnShared::raise(st, request::FLUSH);
        } else if st.requests != 0 {
            // Nothing to send, but returns raised lazily must not wait any longer.
            queue = !std::mem::replace(&mut st.queued, true);
        }
        Ok((st.flush_requested, queue))
    }

    /// Poll-style [`flush`](Self::flush), for adapters. `state` carries the flush in progress
    /// between polls; it is ready for the next flush once this returns `Ready`.
    ///
    /// # Errors
    ///
    /// As for [`flush`](Self::flush).
    pub fn poll_flush(&mut self, state: &mut FlushState, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.poll_flush_inner(&mut state.target, cx)
    }

    /// Poll-style [`shutdown`](Self::shutdown), for adapters; `state` carries it between polls.
    ///
    /// # Errors
    ///
    /// As for [`flush`](Self::flush).
    pub fn poll_shutdown(
        &mut self,
        state: &mut ShutdownState,
        cx: &mut Context<'_>,
    ) -> Poll<Result<()>> {
        self.poll_shutdown_inner(&mut state.flushing, &mut state.requested, cx)
    }

    /// Bytes that can still be staged before `max_write_buffer` is reached.
    pub fn write_capacity(&self) -> usize {
        self.wbuf.room()
    }

    /// Poll-style flush for adapters: starts (once) and polls a flush of what is staged, under
    /// one lock.
    pub(crate) fn poll_flush_inner(
        &mut self,
        target: &mut Option<u64>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<()>> {
        let (shared, wbuf) = (&self.shared, &mut self.wbuf);
        // Wake-ups the reactor handed over for this thread to deliver (docs/architecture.md,
        // "Requests and wake-ups").
        shared.reactor.deliver_wakes();
        let mut queue = false;
        let res = {
            let mut st = shared.lock();
            let t = match *target {
                Some(t) => Ok(t),
                None => Self::start_flush(wbuf, &mut st).map(|(t, q)| {
                    queue = q;
                    *target = Some(t);
                    t
                }),
            };
            match t {
                Err(reason) => Poll::Ready(Err(reason)),
                Ok(t) if st.flush_done >= t => Poll::Ready(Ok(())),
                Ok(_) => match st.write_end {
                    Some(reason) => Poll::Ready(Err(reason)),
                    None => {
                        st.flush_remote =
                            shared::register(&mut st.flush_waker, cx.waker(), &shared.reactor);
                        Poll::Pending
                    }
                },
            }
        };
        if queue {
            shared.enqueue();
        }
        match res {
            Poll::Pending => Poll::Pending,
            Poll::Ready(r) => {
                *target = None;
                Poll::Ready(r.map_err(|reason| match reason {
                    CloseReason::TimedOut => Error::TimedOut,
                    r => Error::Closed(r),
                }))
            }
        }
    }
}

/// A flush in progress, for [`Connection::poll_flush`]. Start with `FlushState::default()`.
#[derive(Debug, Default, Clone, Copy)]
pub struct FlushState {
    target: Option<u64>,
}

/// A shutdown in progress, for [`Connection::poll_shutdown`]. Start with
/// `ShutdownState::default()`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ShutdownState {
    flushing: Option<u64>,
    requested: bool,
}

/// Future of [`Connection::flush`]. Dropping it loses no byte (see there).
#[must_use = "futures do nothing unless polled"]
pub struct Flush<'a> {
    conn: &'a mut Connection,
    target: Option<u64>,
}

impl Future for Flush<'_> {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        this.conn.poll_flush_inner(&mut this.target, cx)
    }
}

impl fmt::Debug for Flush<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flush")
            .field("target", &self.target)
            .finish()
    }
}

/// Future of [`Connection::write_all`]. Not cancel-safe (see there).
#[must_use = "futures do nothing unless polled"]
pub struct WriteAll<'a> {
    conn: &'a mut Connection,
    data: &'a [u8],
    flushing: Option<u64>,
}

impl Future for WriteAll<'_> {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        loop {
            if this.flushing.is_some() {
                match this.conn.poll_flush_inner(&mut this.flushing, cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {}
                }
            }
            if this.data.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let n = this.data.len().min(this.conn.wbuf.room());
            if n > 0 {
                this.conn.wbuf.stage(&this.data[..n]);
                this.data = &this.data[n..];
            }
            if this.data.is_empty() {
                return Poll::Ready(Ok(()));
            }
            // Staging is full: flush it before taking more.
            match this.conn.poll_flush_inner(&mut this.flushing, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
        }
    }
}

impl fmt::Debug for WriteAll<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteAll")
            .field("left", &self.data.len())
            .finish()
    }
}

enum ShutdownPhase {
    Flushing(Option<u64>),
    ShuttingDown,
}

/// Future of [`Connection::shutdown`]. See there for what dropping it does.
#[must_use = "futures do nothing unless polled"]
pub struct Shutdown<'a> {
    conn: &'a mut Connection,
    state: ShutdownPhase,
}

impl Connection {
    pub(crate) fn poll_shutdown_inner(
        &mut self,
        flushing: &mut Option<u64>,
        requested: &mut bool,
        cx: &mut Context<'_>,
    ) -> Poll<Result<()>> {
        if !*requested {
            match self.poll_flush_inner(flushing, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(Error::Closed(CloseReason::Local))) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            *requested = true;
            self.shared.request(request::SHUTDOWN);
        }
        let mut st = self.shared.lock();
        if st.shut_down {
            return Poll::Ready(Ok(()));
        }
        if let Some(reason) = st.write_end {
            return Poll::Ready(Err(Error::Closed(reason)));
        }
        st.flush_remote = shared::register(&mut st.flush_waker, cx.waker(), &self.shared.reactor);
        Poll::Pending
    }
}

impl Future for Shutdown<'_> {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        let (mut flushing, mut requested) = match this.state {
            ShutdownPhase::Flushing(t) => (t, false),
            ShutdownPhase::ShuttingDown => (None, true),
        };
        let res = this
            .conn
            .poll_shutdown_inner(&mut flushing, &mut requested, cx);
        this.state = if requested {
            ShutdownPhase::ShuttingDown
        } else {
            ShutdownPhase::Flushing(flushing)
        };
        res
    }
}

impl fmt::Debug for Shutdown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown").finish_non_exhaustive()
    }
}

/// Stages bytes, for `write!` and code written against [`std::io::Write`].
///
/// **`std::io::Write::flush` does not send anything**: a synchronous call cannot wait for the
/// reactor. Send with [`Connection::flush`]`().await` (the inherent method, which `conn.flush()`
/// resolves to). So that code relying on `flush` to deliver does not lose bytes silently (a
/// connection dropped after a "successful" flush discards what is staged), the trait's `flush`
/// returns `Ok(())` only when there is nothing to send — nothing staged and no flush in progress
/// — and otherwise fails with [`ErrorKind::WouldBlock`](std::io::ErrorKind::WouldBlock), whose
/// message points to `Connection::flush().await`. Nothing is lost by that error: the bytes stay
/// staged.
///
/// `write` stages as much as fits under `max_write_buffer` and fails with `WouldBlock` when
/// nothing fits.
///
/// ```no_run
/// # async fn f(mut conn: zerg_uring::Connection) -> zerg_uring::Result<()> {
/// use std::io::Write as _;
///
/// write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}", 2, "OK")?;
/// // std::io::Write::flush(&mut conn) would fail with WouldBlock here: bytes are staged.
/// conn.flush().await?; // the inherent async flush sends them
/// # Ok(()) }
/// ```
impl std::io::Write for Connection {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(self.wbuf.room());
        if n == 0 && !data.is_empty() {
            return Err(Error::WriteBufferFull {
                staged: self.wbuf.len,
                requested: data.len(),
                limit: self.wbuf.limit,
            }
            .into());
        }
        self.wbuf.stage(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let staged = self.wbuf.len;
        let in_flight = {
            let st = self.shared.lock();
            st.write_end.is_none() && st.flush_done < st.flush_requested
        };
        if staged == 0 && !in_flight {
            return Ok(());
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            format!(
                "std::io::Write::flush cannot send on a zerg Connection ({staged} bytes staged{}): \
                 call Connection::flush().await",
                if in_flight {
                    ", a flush in progress"
                } else {
                    ""
                }
            ),
        ))
    }
}

/// Stages bytes through `bytes::BufMut` (`put_slice`, `put_u32`, ...; encoders that write into a
/// `BufMut`). [`remaining_mut`](bytes::BufMut::remaining_mut) is the room left under
/// `max_write_buffer`; as `BufMut` requires, a `put` that does not fit panics, so check
/// `remaining_mut` (or [`Connection::write_capacity`]) first, or use [`Connection::write`],
/// which returns an error instead. Nothing is sent until [`Connection::flush`].
// SAFETY: `chunk_mut` hands out the spare capacity of the staging vector after the staged bytes;
// `advance_mut` commits exactly what the caller initialised there (the caller's contract), and
// `remaining_mut` never exceeds `max_write_buffer - staged`.
unsafe impl bytes::BufMut for Connection {
    fn remaining_mut(&self) -> usize {
        self.wbuf.room()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        assert!(cnt <= self.wbuf.room(), "advance_mut past max_write_buffer");
        // SAFETY: the caller initialised `cnt` bytes of the chunk returned by `chunk_mut`, which
        // is the vector's spare capacity right after `len` (the vector was truncated to `len`).
        unsafe { bytes::BufMut::advance_mut(&mut self.wbuf.out.bytes, cnt) };
        self.wbuf.len += cnt;
    }

    fn chunk_mut(&mut self) -> &mut bytes::buf::UninitSlice {
        self.wbuf.out.bytes.truncate(self.wbuf.len);
        bytes::BufMut::chunk_mut(&mut self.wbuf.out.bytes)
    }
}
