//! Reading: the read snapshot, its high-level views (byte slices, [`Sequence`]) and the
//! low-level ring items. Receive buffers are read in place, never copied.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use memchr::memmem::Finder;

use crate::buf_ring::RecvItem;
use crate::error::CloseReason;

use super::{ConnShared, Connection, shared};

impl Connection {
    /// Waits until bytes arrived or the connection closed, then takes everything received so far
    /// as one [`ReadSnapshot`] (C# zerg: `ReadAsync` + `GetAllSnapshotRings`).
    ///
    /// Bytes that arrived before the peer closed are always delivered before the closed snapshot.
    /// The snapshot owns its receive buffers and hands them back to the kernel when dropped (or
    /// [`released`](ReadSnapshot::release)), so the next `read` needs no reset call; `&mut self`
    /// keeps reads one at a time.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: bytes are taken from the connection only when the future resolves, so
    /// dropping it before (in a `select!` with a timer, say) loses nothing — the next `read`
    /// returns them. Time spent waiting in a dropped read does not count against
    /// [`read_timeout`](crate::ReactorConfig::read_timeout).
    pub fn read(&mut self) -> Read<'_> {
        Read {
            conn: self,
            waiting: false,
        }
    }
}

/// Future of [`Connection::read`]. Cancel-safe (see there).
#[must_use = "futures do nothing unless polled"]
pub struct Read<'a> {
    conn: &'a mut Connection,
    /// It returned `Pending`: the read timeout's clock may be running.
    waiting: bool,
}

impl Drop for Read<'_> {
    fn drop(&mut self) {
        if self.waiting {
            // A read woken and dropped instead of polled (a `select!` took another branch) still
            // delivers what the reactor handed over.
            self.conn.shared.reactor.deliver_wakes();
            // Nobody waits any more: time from here on does not count against the read timeout.
            self.conn.shared.lock().read_since = None;
        }
    }
}

impl fmt::Debug for Read<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Read").finish_non_exhaustive()
    }
}

impl Future for Read<'_> {
    type Output = ReadSnapshot;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ReadSnapshot> {
        let this = self.get_mut();
        let res = this.conn.poll_read(cx);
        this.waiting = res.is_pending();
        res
    }
}

impl Connection {
    /// Poll-style [`read`](Self::read), for adapters and hand-written futures: `Ready` with a
    /// snapshot of everything received (or a closed snapshot), or `Pending` after registering
    /// `cx`'s waker.
    ///
    /// With a [`read_timeout`](crate::ReactorConfig::read_timeout), the first `Pending` starts
    /// the timeout's clock and the next `Ready` stops it.
    pub fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<ReadSnapshot> {
        let shared = &self.shared;
        // Wake-ups the reactor handed over for this thread to deliver (docs/architecture.md,
        // "Requests and wake-ups").
        shared.reactor.deliver_wakes();
        let mut st = shared.lock();
        if !st.recv.is_empty() || st.read_end.is_some() {
            st.read_since = None;
        }
        if !st.recv.is_empty() {
            let mut items = std::mem::take(&mut st.spare);
            // Two slice copies, not an element-by-element drain.
            let (a, b) = st.recv.as_slices();
            items.extend_from_slice(a);
            items.extend_from_slice(b);
            st.recv.clear();
            st.in_cycle = true;
            drop(st);
            return Poll::Ready(ReadSnapshot {
                items,
                next: 0,
                shared: Some(shared.clone()),
                closed: None,
            });
        }
        if let Some(reason) = st.read_end {
            return Poll::Ready(ReadSnapshot {
                items: Vec::new(),
                next: 0,
                shared: None,
                closed: Some(reason),
            });
        }
        st.read_remote = shared::register(&mut st.read_waker, cx.waker(), &shared.reactor);
        if shared.reactor.stamp_reads && st.read_since.is_none() {
            st.read_since = Some(shared.reactor.clock.now_ms());
        }
        // About to wait: hand the reactor whatever was raised lazily (returned pieces).
        st.in_cycle = false;
        let queue = st.requests != 0 && !std::mem::replace(&mut st.queued, true);
        drop(st);
        if queue {
            shared.enqueue();
        }
        Poll::Pending
    }
}

/// Everything a connection had received when [`Connection::read`] returned (C# zerg:
/// `RingSnapshot`), or the news that it is closed.
///
/// The snapshot holds its receive buffers: they stay out of the kernel's hands, and readable,
/// until the snapshot is dropped or [`release`](Self::release)d, which returns them all in one
/// call. Borrowed views ([`buffers`](Self::buffers), [`sequence`](Self::sequence),
/// [`RecvBuffer::as_slice`]) cannot outlive that.
pub struct ReadSnapshot {
    items: Vec<RecvItem>,
    // Items before `next` were handed out as `RecvBuffer`s, which return themselves.
    next: usize,
    shared: Option<Arc<ConnShared>>,
    closed: Option<CloseReason>,
}

impl ReadSnapshot {
    /// Whether the connection is closed for reading; no more data will come.
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// Why the connection closed, if it did.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.closed
    }

    fn live(&self) -> &[RecvItem] {
        &self.items[self.next..]
    }

    /// Bytes in the snapshot (not counting ring items already taken).
    pub fn len(&self) -> usize {
        self.live().iter().map(|i| i.len as usize).sum()
    }

    /// Whether the snapshot holds no bytes (it is then a closed snapshot).
    pub fn is_empty(&self) -> bool {
        self.live().is_empty()
    }

    /// Number of receive buffers (pieces, in incremental mode) in the snapshot.
    pub fn buffer_count(&self) -> usize {
        self.live().len()
    }

    fn slice(&self, item: &RecvItem) -> &[u8] {
        let shared = self
            .shared
            .as_ref()
            .expect("a snapshot with data has its connection");
        // SAFETY: `item` was delivered to this connection by the reactor and is owned by this
        // snapshot until `release`/drop hands it back; the returned slice borrows `self`, so it
        // cannot outlive that. The pool is kept alive by `shared`.
        unsafe { shared.reactor.pool.slice(item) }
    }

    /// The received bytes, one slice per receive buffer, in order (C# zerg:
    /// `GetAllSnapshotRingsAsUnmanagedMemory`).
    pub fn buffers(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.live().iter().map(move |i| self.slice(i))
    }

    /// All received bytes as one multi-segment [`Sequence`] (C# zerg: `ToReadOnlySequence`),
    /// good for parsing across buffer boundaries.
    pub fn sequence(&self) -> Sequence<'_> {
        Sequence::new(self)
    }

    /// Copies the received bytes into a new vector (a convenience; allocates).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        for b in self.buffers() {
            v.extend_from_slice(b);
        }
        v
    }

    /// Takes the next receive buffer for low-level processing (C# zerg: `TryGetRing`). The
    /// item returns its buffer to the kernel when dropped or [`released`](RecvBuffer::release);
    /// take the next one after that.
    #[doc(alias = "TryGetRing")]
    pub fn next_buffer(&mut self) -> Option<RecvBuffer<'_>> {
        let item = *self.items.get(self.next)?;
        self.next += 1;
        Some(RecvBuffer {
            item,
            snapshot: self,
        })
    }

    /// Hands every buffer back to the kernel now (C# zerg: `ReturnRingBuffers`); same as
    /// dropping the snapshot.
    #[doc(alias = "ReturnRingBuffers")]
    pub fn release(self) {}

    /// Whether this snapshot was read from the connection `shared`.
    pub(crate) fn is_from(&self, shared: &Arc<ConnShared>) -> bool {
        self.shared.as_ref().is_some_and(|s| Arc::ptr_eq(s, shared))
    }

    /// Takes the live pieces out (the caller now owns them and must hand them back).
    pub(crate) fn take_items(&mut self) -> std::vec::Drain<'_, RecvItem> {
        // Pieces before `next` went out as ring items, which hand themselves back.
        let next = std::mem::take(&mut self.next);
        self.items.drain(..next);
        self.items.drain(..)
    }

    /// An empty snapshot (no pieces, not closed), for adapters that gather several reads.
    pub(crate) const fn empty() -> Self {
        ReadSnapshot {
            items: Vec::new(),
            next: 0,
            shared: None,
            closed: None,
        }
    }

    /// Appends the pieces of `other` (a data snapshot of the same connection), so that one
    /// snapshot spans several reads.
    pub(crate) fn absorb(&mut self, mut other: ReadSnapshot) {
        debug_assert!(self.closed.is_none() && other.closed.is_none());
        if self.live().is_empty() {
            // Take `other` whole; the old (empty) self drops and recycles its vector.
            std::mem::swap(self, &mut other);
            return;
        }
        self.items.drain(..self.next);
        self.next = 0;
        self.items.extend_from_slice(other.live());
        other.items.clear();
        other.next = 0;
    }

    /// Hands the first `n` live pieces back to the kernel now, in one batch; views taken later
    /// start after them.
    ///
    /// # Panics
    ///
    /// If the snapshot holds fewer than `n` pieces.
    pub(crate) fn release_front(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let end = self.next + n;
        assert!(end <= self.items.len(), "release_front past the snapshot");
        let shared = self
            .shared
            .as_ref()
            .expect("a snapshot with data has its connection");
        let queue = {
            let mut st = shared.lock();
            st.returned.extend_from_slice(&self.items[self.next..end]);
            ConnShared::raise_return(&mut st)
        };
        self.next = end;
        if queue {
            shared.enqueue();
        }
    }
}

impl Drop for ReadSnapshot {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            let mut items = std::mem::take(&mut self.items);
            if self.next > 0 {
                items.drain(..self.next);
            }
            if items.is_empty() {
                let mut st = shared.lock();
                if st.spare.capacity() < items.capacity() {
                    st.spare = items;
                }
            } else {
                shared.give_back(&mut items, true);
            }
        }
    }
}

impl fmt::Debug for ReadSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadSnapshot")
            .field("closed", &self.closed)
            .field("buffers", &self.buffer_count())
            .field("len", &self.len())
            .finish()
    }
}

/// One receive buffer taken from a snapshot (C# zerg: `RecvBuffer`).
///
/// The bytes are readable through [`as_slice`](Self::as_slice) while the item lives; dropping it
/// or calling [`release`](Self::release) hands the buffer back to the kernel, after which
/// no slice of it can be alive.
pub struct RecvBuffer<'a> {
    item: RecvItem,
    snapshot: &'a ReadSnapshot,
}

impl RecvBuffer<'_> {
    /// The received bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.snapshot.slice(&self.item)
    }

    /// Pointer to the first byte (C# zerg: `Ptr`). Reading through it is `unsafe` and only
    /// valid while this item lives.
    pub fn ptr(&self) -> *const u8 {
        self.as_slice().as_ptr()
    }

    /// Number of bytes received (C# zerg: `Length`).
    pub fn len(&self) -> usize {
        self.item.len as usize
    }

    /// Always `false`: the kernel does not deliver empty buffers.
    pub fn is_empty(&self) -> bool {
        self.item.len == 0
    }

    /// The kernel's buffer id (C# zerg: `BufferId`).
    pub fn buffer_id(&self) -> u16 {
        self.item.bid
    }

    /// Hands the buffer back to the kernel (C# zerg: `ReturnRing`); same as dropping the item.
    #[doc(alias = "ReturnRing")]
    pub fn release(self) {}
}

/// The received bytes, as [`as_slice`](RecvBuffer::as_slice).
impl std::ops::Deref for RecvBuffer<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for RecvBuffer<'_> {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Drop for RecvBuffer<'_> {
    fn drop(&mut self) {
        if let Some(shared) = &self.snapshot.shared {
            shared.give_back_one(self.item);
        }
    }
}

impl fmt::Debug for RecvBuffer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvBuffer")
            .field("buffer_id", &self.item.bid)
            .field("len", &self.item.len)
            .finish()
    }
}

/// A read-only, multi-segment view of received bytes (C# zerg: `ReadOnlySequence<byte>`).
///
/// Implements [`bytes::Buf`], so it can be consumed with `get_u8`, `copy_to_slice` and friends;
/// [`position_of`](Self::position_of) and [`slice`](Self::slice) help find message boundaries
/// that straddle receive buffers.
#[derive(Clone)]
pub struct Sequence<'a> {
    snapshot: &'a ReadSnapshot,
    // Index into the snapshot's live items, offset into that item, bytes left.
    seg: usize,
    off: usize,
    remaining: usize,
}

impl<'a> Sequence<'a> {
    fn new(snapshot: &'a ReadSnapshot) -> Self {
        let mut s = Sequence {
            snapshot,
            seg: 0,
            off: 0,
            remaining: snapshot.len(),
        };
        s.skip_empty();
        s
    }

    fn items(&self) -> &'a [RecvItem] {
        self.snapshot.live()
    }

    fn skip_empty(&mut self) {
        let items = self.items();
        while self.seg < items.len() && self.off >= items[self.seg].len as usize {
            self.off -= items[self.seg].len as usize;
            self.seg += 1;
        }
    }

    /// Bytes in the view.
    pub fn len(&self) -> usize {
        self.remaining
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }

    /// The view's segments, in order.
    pub fn segments(&self) -> Segments<'a> {
        Segments { seq: self.clone() }
    }

    /// The first segment (empty if the view is).
    pub fn first(&self) -> &'a [u8] {
        self.segments().next().unwrap_or(&[])
    }

    /// The sub-view of `len` bytes starting `start` bytes in.
    ///
    /// # Panics
    ///
    /// If `start + len` exceeds [`len`](Self::len).
    pub fn slice(&self, start: usize, len: usize) -> Sequence<'a> {
        assert!(
            start
                .checked_add(len)
                .is_some_and(|end| end <= self.remaining),
            "slice {start}+{len} out of a {}-byte sequence",
            self.remaining
        );
        let mut s = self.clone();
        s.off += start;
        s.skip_empty();
        s.remaining = len;
        s
    }

    /// Offset of the first occurrence of `needle`, which may straddle any number of segments.
    ///
    /// Each segment is searched in place with `memchr::memmem`; around each boundary only the
    /// `needle.len() - 1` bytes on either side are gathered, to find a match that crosses it.
    pub fn position_of(&self, needle: &[u8]) -> Option<usize> {
        position_in(self.segments(), needle)
    }

    /// Copies the view into a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.remaining);
        for s in self.segments() {
            v.extend_from_slice(s);
        }
        v
    }
}

/// Offset of the first occurrence of `needle` in the concatenation of `segments`.
fn position_in(segments: Segments<'_>, needle: &[u8]) -> Option<usize> {
    let m = needle.len();
    if m == 0 {
        return Some(0);
    }
    FINDER.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.as_ref().is_none_or(|f| f.needle() != needle) {
            *cached = Some(Finder::new(needle).into_owned());
        }
        let finder = cached.as_ref().expect("just set");
        search(segments, finder)
    })
}

thread_local! {
    /// The searcher for the needle last looked for on this thread: building one costs several
    /// times more than searching a short message, and parsers look for the same needle (a
    /// delimiter) again and again.
    static FINDER: RefCell<Option<Finder<'static>>> = const { RefCell::new(None) };
}

fn search(segments: Segments<'_>, finder: &Finder<'_>) -> Option<usize> {
    let m = finder.needle().len();
    // The bytes around one boundary: at most m - 1 before it, then at most m - 1 after it. Any
    // match found there starts before the boundary and ends after it.
    let mut small = [0u8; 64];
    let mut large = Vec::new();
    let window: &mut [u8] = if 2 * (m - 1) <= small.len() {
        &mut small
    } else {
        large.resize(2 * (m - 1), 0);
        &mut large
    };
    let mut base = 0;
    let mut rest = segments;
    while let Some(segment) = rest.next() {
        // A match inside this segment comes before one that starts here and straddles out.
        if let Some(i) = finder.find(segment) {
            return Some(base + i);
        }
        let tail = &segment[segment.len().saturating_sub(m - 1)..];
        window[..tail.len()].copy_from_slice(tail);
        let mut len = tail.len();
        for next in rest.clone() {
            let take = next.len().min(tail.len() + m - 1 - len);
            window[len..len + take].copy_from_slice(&next[..take]);
            len += take;
            if len == tail.len() + m - 1 {
                break;
            }
        }
        if len > tail.len()
            && let Some(i) = finder.find(&window[..len])
        {
            return Some(base + segment.len() - tail.len() + i);
        }
        base += segment.len();
    }
    None
}

impl fmt::Debug for Sequence<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sequence")
            .field("len", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl bytes::Buf for Sequence<'_> {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.first()
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end of a Sequence");
        self.remaining -= cnt;
        let items = self.items();
        while cnt > 0 {
            let left = items[self.seg].len as usize - self.off;
            if cnt < left {
                self.off += cnt;
                return;
            }
            cnt -= left;
            self.seg += 1;
            self.off = 0;
        }
        self.skip_empty();
    }
}

/// Iterator over the segments of a [`Sequence`].
#[derive(Debug, Clone)]
pub struct Segments<'a> {
    seq: Sequence<'a>,
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.seq.remaining == 0 {
            return None;
        }
        let items = self.seq.items();
        let item = items.get(self.seq.seg)?;
        let whole = self.seq.snapshot.slice(item);
        let end = whole.len().min(self.seq.off + self.seq.remaining);
        let s = &whole[self.seq.off..end];
        self.seq.remaining -= s.len();
        self.seq.seg += 1;
        self.seq.off = 0;
        Some(s)
    }
}
