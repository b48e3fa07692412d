//! The provided-buffer ring: receive memory the kernel fills and the bookkeeping that decides
//! when each buffer goes back to it. This module holds all unsafe code for ring memory.
//!
//! Two mappings per reactor:
//! - [`BufPool`]: `capacity × size` bytes of receive buffers (`pool.rs`). The kernel writes into
//!   a buffer only while it is *in the ring*; zerg reads a buffer only while it is *held*
//!   (delivered by a completion and not yet returned). Shared with connections through an `Arc`,
//!   so a snapshot that outlives its reactor still points at mapped memory.
//! - [`BufRing`]: the ring of `io_uring_buf` entries the kernel consumes from its head while the
//!   reactor appends at the tail. Only the reactor thread touches it.
//!
//! Index math (docs/architecture.md, rule 2): a returned buffer is written at
//! `local_tail & mask`, the tail advances by one per buffer, and [`BufRing::publish`] stores the
//! new tail with `Release`. Every bid is in the ring at most once: its state says whether the
//! kernel or zerg owns it, and a completion that names a bid zerg holds is reported as
//! [`BidError`] (the reactor then fails loudly) instead of being delivered twice.
//!
//! **Circulation.** The ring has room for every buffer of the pool, but only `active` of them
//! circulate (in the ring or held): the reactor starts small and [`grow`](BufRing::grow)s when
//! the ring runs low; after a [`shrink_to`](BufRing::shrink_to) buffers coming back are
//! *retired* instead of returned to the ring until `active` is down to the target, and
//! [`discard_retired`](BufRing::discard_retired) gives their pages back to the system. Since the
//! kernel takes buffers in ring order, the memory a workload touches is the circulating set, not
//! the pool.
//!
//! **Bundles** (`IORING_RECVSEND_BUNDLE`): one completion names its first buffer and a byte
//! count that continues through the following ring entries; [`BufRing::on_recv_bundle`] walks
//! them from the first buffer's ring position.
#![allow(unsafe_code)]

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

mod pool;
pub(crate) mod probe;
#[cfg(test)]
mod tests;

pub(crate) use pool::BufPool;
use pool::Mapping;

/// One received piece: `len` bytes at offset `off` of buffer `bid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecvItem {
    pub(crate) bid: u16,
    pub(crate) off: u32,
    pub(crate) len: u32,
}

/// Ownership of one buffer.
#[derive(Debug, Clone, Copy, Default)]
struct BidState {
    /// The kernel owns the buffer: it is in the ring (possibly partly consumed, incremental mode).
    in_ring: bool,
    /// Pieces of this buffer delivered and not yet released.
    refs: u32,
    /// Incremental mode: offset where the kernel's next write into this buffer lands.
    offset: u32,
    /// Ring position (unmasked) of the entry that last carried this buffer.
    pos: u16,
}

/// A completion named a buffer zerg holds, or one the ring does not have where the completion
/// says: the ring bookkeeping is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("kernel delivered buffer {bid}, which is still held by the application")]
pub(crate) struct BidError {
    pub(crate) bid: u16,
}

/// The provided-buffer ring of one reactor.
#[derive(Debug)]
pub(crate) struct BufRing {
    entries: Mapping,
    pool: Arc<BufPool>,
    // Invariant: one less than the ring size, a power of two.
    mask: u16,
    // Tail as zerg sees it, including entries not yet published.
    local_tail: u16,
    published_tail: u16,
    bgid: u16,
    incremental: bool,
    state: Vec<BidState>,
    // Buffers the kernel owns.
    in_ring: u32,
    // Incremental mode: the buffer the kernel is filling (the ring head).
    current: Option<u16>,
    /// Buffers in circulation: in the ring or held.
    active: u32,
    /// Circulation wanted: a buffer that comes back while `active > target` is retired.
    target: u32,
    /// Buffers out of circulation whose pages were released (or never touched).
    spare: Vec<u16>,
    /// Buffers retired since the last [`discard_retired`](Self::discard_retired).
    retired: Vec<u16>,
    /// The kernel writes received data only while the owning thread is inside
    /// `io_uring_enter` (`DEFER_TASKRUN`): idle buffers in the ring may have their pages
    /// released ([`discard_idle`](Self::discard_idle)).
    idle_discard: bool,
}

// SAFETY: `entries` is memory only this value and the kernel use; moving the value to another
// thread moves that exclusive access with it.
unsafe impl Send for BufRing {}

impl BufRing {
    /// Maps `capacity` buffers of `size` bytes and a ring with room for all of them, and puts the
    /// first `initial` in the ring (published, not yet registered).
    pub(crate) fn new(
        capacity: u16,
        initial: u16,
        size: u32,
        bgid: u16,
        incremental: bool,
    ) -> io::Result<Self> {
        assert!(
            capacity.is_power_of_two(),
            "ring size must be a power of two"
        );
        let initial = initial.clamp(1, capacity);
        let pool = Arc::new(BufPool::new(u32::from(capacity), size)?);
        let entries = Mapping::new(capacity as usize * std::mem::size_of::<BufRingEntry>())?;
        let mut ring = Self {
            entries,
            pool,
            mask: capacity - 1,
            local_tail: 0,
            published_tail: 0,
            bgid,
            incremental,
            state: vec![BidState::default(); capacity as usize],
            in_ring: 0,
            current: None,
            active: u32::from(initial),
            target: u32::from(initial),
            spare: (initial..capacity).rev().collect(),
            retired: Vec::new(),
            idle_discard: false,
        };
        for bid in 0..initial {
            ring.push(bid);
        }
        ring.publish();
        Ok(ring)
    }

    pub(crate) fn pool(&self) -> &Arc<BufPool> {
        &self.pool
    }

    /// Buffers in circulation (in the ring or held).
    pub(crate) fn total(&self) -> u32 {
        self.active
    }

    /// Buffers the ring and the pool have room for.
    pub(crate) fn capacity(&self) -> u32 {
        u32::from(self.mask) + 1
    }

    /// Buffers in the kernel's hands.
    pub(crate) fn free(&self) -> u32 {
        self.in_ring
    }

    /// Circulation wanted (see [`shrink_to`](Self::shrink_to)).
    pub(crate) fn target(&self) -> u32 {
        self.target
    }

    /// Allows [`discard_idle`](Self::discard_idle): the caller guarantees that the kernel writes
    /// into ring buffers only while the owning thread is inside `io_uring_enter`
    /// (`IORING_SETUP_DEFER_TASKRUN`: no SQPOLL thread, no task work run at other syscalls'
    /// return).
    pub(crate) fn allow_idle_discard(&mut self, allowed: bool) {
        self.idle_discard = allowed;
    }

    /// Registers the ring with `submitter` under `bgid`.
    pub(crate) fn register(&self, submitter: &io_uring::Submitter<'_>) -> io::Result<()> {
        let flags = if self.incremental {
            io_uring::types::IOU_PBUF_RING_INC as u16
        } else {
            0
        };
        // SAFETY: `entries` is a page-aligned mapping of `capacity()` entries that stays mapped
        // until `self` is dropped, which the reactor does only after unregistering (or after the
        // ring is gone).
        unsafe {
            submitter.register_buf_ring_with_flags(
                self.entries.ptr.as_ptr() as u64,
                self.capacity() as u16,
                self.bgid,
                flags,
            )
        }
    }

    fn entry_ptr(&self, index: u16) -> *mut BufRingEntry {
        let base = self.entries.ptr.as_ptr().cast::<BufRingEntry>();
        // SAFETY: `index & mask` is below the number of entries in the mapping.
        unsafe { base.add(usize::from(index & self.mask)) }
    }

    /// The buffer id and length of the entry at ring position `pos`, which the kernel has
    /// consumed (it writes an entry's length only while the entry is at its head: it shortens
    /// the first entry of a bundle to the bytes it may take).
    fn consumed_entry(&self, pos: u16) -> (u16, u32) {
        let e = self.entry_ptr(pos);
        // SAFETY: in the mapping; the entry was written by `push` and the kernel no longer
        // writes it (it moved past it), so a volatile copy reads a settled value.
        let e = unsafe { std::ptr::read_volatile(e) };
        (e.bid(), e.len())
    }

    /// Appends `bid` (not yet visible to the kernel until [`publish`](Self::publish)).
    fn push(&mut self, bid: u16) {
        let pos = self.local_tail;
        let st = &mut self.state[usize::from(bid)];
        debug_assert!(!st.in_ring && st.refs == 0, "bid {bid} pushed twice");
        st.in_ring = true;
        st.offset = 0;
        st.pos = pos;
        self.in_ring += 1;
        let addr = self.pool.addr(bid);
        let len = self.pool.size;
        let entry = self.entry_ptr(pos);
        // SAFETY: the slot at `local_tail` is not visible to the kernel (it lies at or past the
        // published tail) and at most `capacity()` bids are in the ring, so the kernel has
        // consumed whatever this slot held before. Only this thread writes entries.
        unsafe {
            (*entry).set_addr(addr);
            (*entry).set_len(len);
            (*entry).set_bid(bid);
        }
        self.local_tail = pos.wrapping_add(1);
    }

    /// Makes every pushed entry visible to the kernel.
    pub(crate) fn publish(&mut self) {
        if self.local_tail != self.published_tail {
            // SAFETY: the tail field aliases the first entry's reserved word, inside the mapping;
            // the kernel reads it atomically.
            let tail = unsafe { BufRingEntry::tail(self.entries.ptr.as_ptr().cast()) };
            // SAFETY: `tail` points into our mapping, is 2-byte aligned and only accessed
            // atomically by us and the kernel.
            let tail = unsafe { &*tail.cast::<AtomicU16>() };
            // Publishes the entries written above.
            tail.store(self.local_tail, Ordering::Release);
            self.published_tail = self.local_tail;
        }
    }

    /// Records a receive of `len > 0` bytes into `bid`. `buf_more` is `IORING_CQE_F_BUF_MORE`
    /// (incremental mode: the kernel keeps filling this buffer).
    pub(crate) fn on_recv(
        &mut self,
        bid: u16,
        len: u32,
        buf_more: bool,
    ) -> Result<RecvItem, BidError> {
        if usize::from(bid) >= self.state.len() {
            return Err(BidError { bid });
        }
        if !self.incremental {
            let st = &mut self.state[usize::from(bid)];
            if !st.in_ring {
                return Err(BidError { bid });
            }
            st.in_ring = false;
            st.refs = 1;
            self.in_ring -= 1;
            return Ok(RecvItem { bid, off: 0, len });
        }
        self.leave_current(bid);
        let item = self.take_piece(bid, len)?;
        self.finish_piece(bid, buf_more);
        Ok(item)
    }

    /// Records a bundle completion: `len > 0` bytes starting in `bid` and continuing through the
    /// ring entries after it, each filled before the next. Appends one piece per buffer to
    /// `out`. `buf_more`: the kernel keeps filling the last buffer (incremental mode).
    pub(crate) fn on_recv_bundle(
        &mut self,
        bid: u16,
        len: u32,
        buf_more: bool,
        out: &mut Vec<RecvItem>,
    ) -> Result<(), BidError> {
        if usize::from(bid) >= self.state.len() {
            return Err(BidError { bid });
        }
        if self.incremental {
            self.leave_current(bid);
        }
        let mut pos = self.state[usize::from(bid)].pos;
        let mut b = bid;
        let mut left = len;
        loop {
            // The entry must be one zerg pushed and the kernel has not been told about twice.
            let pushed_ago = self.local_tail.wrapping_sub(pos);
            let st = self.state[usize::from(b)];
            if pushed_ago == 0 || u32::from(pushed_ago) > self.capacity() || st.pos != pos {
                return Err(BidError { bid: b });
            }
            let (entry_bid, entry_len) = self.consumed_entry(pos);
            if entry_bid != b {
                return Err(BidError { bid: b });
            }
            let piece = if self.incremental {
                // What is left of the buffer after the pieces the kernel put there before.
                let room = self.pool.size.saturating_sub(st.offset);
                self.take_piece(b, left.min(room))?
            } else {
                // The kernel may have shortened this entry (the first of a bundle).
                self.take_whole(b, left.min(entry_len.min(self.pool.size)))?
            };
            left -= piece.len;
            out.push(piece);
            if left == 0 {
                if self.incremental {
                    self.finish_piece(b, buf_more);
                }
                return Ok(());
            }
            if self.incremental {
                // The bytes go on in the next buffer: the kernel is done with this one.
                self.current = None;
                self.kernel_done(b);
            }
            if piece.len == 0 {
                return Err(BidError { bid: b });
            }
            pos = pos.wrapping_add(1);
            b = self.consumed_entry(pos).0;
            if usize::from(b) >= self.state.len() {
                return Err(BidError { bid: b });
            }
        }
    }

    /// Non-incremental: the kernel filled `len` bytes of `bid` and is done with it.
    fn take_whole(&mut self, bid: u16, len: u32) -> Result<RecvItem, BidError> {
        let st = &mut self.state[usize::from(bid)];
        if !st.in_ring {
            return Err(BidError { bid });
        }
        st.in_ring = false;
        st.refs = 1;
        self.in_ring -= 1;
        Ok(RecvItem { bid, off: 0, len })
    }

    /// Incremental: `len` bytes at `bid`'s current offset.
    fn take_piece(&mut self, bid: u16, len: u32) -> Result<RecvItem, BidError> {
        let st = &mut self.state[usize::from(bid)];
        if !st.in_ring || u64::from(st.offset) + u64::from(len) > u64::from(self.pool.size) {
            return Err(BidError { bid });
        }
        let item = RecvItem {
            bid,
            off: st.offset,
            len,
        };
        st.offset += len;
        st.refs += 1;
        Ok(item)
    }

    /// Incremental: the kernel consumes buffers in ring order, so a completion for another bid
    /// means it moved past the previous one even if no completion said so.
    fn leave_current(&mut self, bid: u16) {
        if let Some(prev) = self.current
            && prev != bid
        {
            self.current = None;
            self.kernel_done(prev);
        }
    }

    /// Incremental: after the last piece of a completion in `bid`.
    fn finish_piece(&mut self, bid: u16, buf_more: bool) {
        if buf_more {
            self.current = Some(bid);
        } else {
            self.current = None;
            self.kernel_done(bid);
        }
    }

    /// Incremental mode: the kernel will not write into `bid` again until it is pushed.
    fn kernel_done(&mut self, bid: u16) {
        let st = &mut self.state[usize::from(bid)];
        if st.in_ring {
            st.in_ring = false;
            self.in_ring -= 1;
            if st.refs == 0 {
                self.recycle(bid);
            }
        }
    }

    /// Returns one delivered piece. The buffer goes back to the ring once no piece of it is held
    /// and the kernel is done with it.
    pub(crate) fn release(&mut self, item: &RecvItem) {
        let st = &mut self.state[usize::from(item.bid)];
        debug_assert!(
            st.refs > 0,
            "bid {} released more often than delivered",
            item.bid
        );
        st.refs = st.refs.saturating_sub(1);
        if st.refs == 0 && !st.in_ring {
            self.recycle(item.bid);
        }
    }

    /// A buffer nobody uses: back into the ring, or out of circulation while above the target.
    fn recycle(&mut self, bid: u16) {
        if self.active > self.target {
            self.active -= 1;
            self.state[usize::from(bid)].offset = 0;
            self.retired.push(bid);
        } else {
            self.push(bid);
        }
    }

    /// Doubles the circulation (at most to the capacity), cancelling a shrink under way: the
    /// new buffers go into the ring. Returns how many were added.
    pub(crate) fn grow(&mut self) -> u32 {
        let before = self.active;
        self.target = (self.target.max(self.active).max(1) * 2).min(self.capacity());
        while self.active < self.target {
            let Some(bid) = self.retired.pop().or_else(|| self.spare.pop()) else {
                break;
            };
            self.push(bid);
            self.active += 1;
        }
        self.active.saturating_sub(before)
    }

    /// Lowers the circulation wanted to `target` (at least one buffer): buffers that come back
    /// from now on leave the ring until `active` is down to it.
    pub(crate) fn shrink_to(&mut self, target: u32) {
        self.target = target.clamp(1, self.target.max(1));
    }

    /// Gives the pages of the buffers retired since the last call back to the system; they
    /// become spares. Returns the bytes released.
    pub(crate) fn discard_retired(&mut self) -> usize {
        if self.retired.is_empty() {
            return 0;
        }
        let mut bids = std::mem::take(&mut self.retired);
        let released = self.discard_runs(&mut bids);
        self.spare.append(&mut bids);
        self.retired = bids;
        released
    }

    /// Gives back the pages of the buffers in the ring that nobody holds a piece of (when
    /// allowed, see [`allow_idle_discard`](Self::allow_idle_discard)): an idle reactor keeps its
    /// circulation but not its memory; the kernel's next write faults a page in again. The
    /// caller has reaped every completion (a buffer named by an unreaped one looks idle here).
    /// Returns the bytes released.
    pub(crate) fn discard_idle(&mut self) -> usize {
        if !self.idle_discard {
            return 0;
        }
        let mut bids: Vec<u16> = (0..self.state.len() as u16)
            .filter(|&b| {
                let st = self.state[usize::from(b)];
                st.in_ring && st.refs == 0
            })
            .collect();
        self.discard_runs(&mut bids)
    }

    /// Releases the pages of `bids` (sorted here), run by run of consecutive ids.
    fn discard_runs(&self, bids: &mut [u16]) -> usize {
        bids.sort_unstable();
        let mut released = 0;
        let mut i = 0;
        while i < bids.len() {
            let first = bids[i];
            let mut n = 1;
            while i + n < bids.len() && bids[i + n] == first.wrapping_add(n as u16) {
                n += 1;
            }
            // SAFETY: every buffer of the run is out of circulation (retired: not in the ring, no
            // piece held) or, with `idle_discard`, in the ring with no piece held and no
            // completion naming it unreaped, while the kernel writes only inside this thread's
            // `io_uring_enter`: nothing reads or writes it now.
            released += unsafe { self.pool.discard(first, n as u32) };
            i += n;
        }
        released
    }

    /// Test hook: what the kernel sees at ring position `head`, if published.
    #[cfg(test)]
    fn kernel_peek(&self, head: u16) -> Option<(u16, u32)> {
        // SAFETY: as in `publish`.
        let tail =
            unsafe { &*BufRingEntry::tail(self.entries.ptr.as_ptr().cast()).cast::<AtomicU16>() };
        if tail.load(Ordering::Acquire) == head {
            return None;
        }
        let e = self.entry_ptr(head);
        // SAFETY: `head` is before the published tail, so the entry was fully written.
        unsafe { Some(((*e).bid(), (*e).len())) }
    }

    /// Test hook: the kernel shortens the entry at `pos` (as the first entry of a bundle).
    #[cfg(test)]
    fn kernel_shorten(&self, pos: u16, len: u32) {
        // SAFETY: in the mapping; tests are single-threaded stand-ins for the kernel.
        unsafe { (*self.entry_ptr(pos)).set_len(len) };
    }
}
