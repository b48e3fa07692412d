//! The provided-buffer ring: receive memory the kernel fills and the bookkeeping that decides
//! when each buffer goes back to it. This module holds all unsafe code for ring memory.
//!
//! Two mappings per reactor:
//! - [`BufPool`]: `count × size` bytes of receive buffers. The kernel writes into a buffer only
//!   while it is *in the ring*; zerg reads a buffer only while it is *held* (delivered by a
//!   completion and not yet returned). Shared with connections through an `Arc`, so a snapshot
//!   that outlives its reactor still points at mapped memory.
//! - [`BufRing`]: the ring of `io_uring_buf` entries the kernel consumes from its head while the
//!   reactor appends at the tail. Only the reactor thread touches it.
//!
//! Index math (docs/architecture.md, rule 2): a returned buffer is written at `local_tail & mask`, the tail
//! advances by one per buffer, and [`BufRing::publish`] stores the new tail with `Release`.
//! Every bid is in the ring at most once: its state says whether the kernel or zerg owns it, and a
//! completion that names a bid zerg holds is reported as [`BidError`] (the reactor then fails
//! loudly) instead of being delivered twice.
#![allow(unsafe_code)]

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

/// One received piece: `len` bytes at offset `off` of buffer `bid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecvItem {
    pub(crate) bid: u16,
    pub(crate) off: u32,
    pub(crate) len: u32,
}

/// Anonymous, page-aligned, zero-filled memory.
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Self> {
        let len = len.max(1);
        // SAFETY: an anonymous private mapping with no address hint; the kernel chooses the
        // address and the result is checked for MAP_FAILED below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // Receive memory must not be shared with a forked child: the kernel keeps writing into it.
        // SAFETY: `ptr..ptr+len` is the mapping created above.
        unsafe { libc::madvise(ptr, len, libc::MADV_DONTFORK) };
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was created by `Mapping::new` with this length and nothing refers to
        // it any more: owners drop it only after the kernel stopped using it.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Receive buffers: `count` buffers of `size` bytes, contiguous.
#[derive(Debug)]
pub(crate) struct BufPool {
    map: Mapping,
    size: u32,
    count: u32,
}

// SAFETY: the pool is plain memory. Concurrent access follows the ownership protocol in the
// module docs: the kernel writes a buffer only while it is in the ring, and threads read a buffer
// only while they hold it, so no byte is written and read at the same time.
unsafe impl Send for BufPool {}
// SAFETY: as for `Send`; `&BufPool` gives no way to write.
unsafe impl Sync for BufPool {}

impl BufPool {
    pub(crate) fn new(count: u32, size: u32) -> io::Result<Self> {
        let bytes = (count as usize)
            .checked_mul(size as usize)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        Ok(Self {
            map: Mapping::new(bytes)?,
            size,
            count,
        })
    }

    fn addr(&self, bid: u16) -> u64 {
        debug_assert!(u32::from(bid) < self.count);
        self.map.ptr.as_ptr() as u64 + u64::from(bid) * u64::from(self.size)
    }

    /// The bytes of a received piece.
    ///
    /// # Safety
    ///
    /// The caller holds `item`: it came from [`BufRing::on_recv`] of the ring over this pool and
    /// has not been passed to [`BufRing::release`] yet, and will not be while the returned slice
    /// lives. Then the buffer is out of the kernel's hands and nobody writes to it.
    pub(crate) unsafe fn slice(&self, item: &RecvItem) -> &[u8] {
        assert!(
            u32::from(item.bid) < self.count
                && u64::from(item.off) + u64::from(item.len) <= u64::from(self.size),
            "receive item out of bounds: {item:?}"
        );
        let ptr = self.addr(item.bid) as usize + item.off as usize;
        // SAFETY: in bounds of the mapping (checked above); not written while held (caller's
        // contract); the mapping lives as long as `&self`.
        unsafe { std::slice::from_raw_parts(ptr as *const u8, item.len as usize) }
    }
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
}

/// A completion named a buffer zerg holds: the ring bookkeeping is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("kernel delivered buffer {bid}, which is still held by the application")]
pub(crate) struct BidError {
    pub(crate) bid: u16,
}

/// The provided-buffer ring of one reactor.
#[derive(Debug)]
pub(crate) struct BufRing {
    entries: Mapping,
    pool: std::sync::Arc<BufPool>,
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
}

// SAFETY: `entries` is memory only this value and the kernel use; moving the value to another
// thread moves that exclusive access with it.
unsafe impl Send for BufRing {}

impl BufRing {
    /// Maps `count` buffers of `size` bytes and a ring holding all of them (not yet published or
    /// registered).
    pub(crate) fn new(count: u16, size: u32, bgid: u16, incremental: bool) -> io::Result<Self> {
        assert!(count.is_power_of_two(), "ring size must be a power of two");
        let pool = std::sync::Arc::new(BufPool::new(u32::from(count), size)?);
        let entries = Mapping::new(count as usize * std::mem::size_of::<BufRingEntry>())?;
        let mut ring = Self {
            entries,
            pool,
            mask: count - 1,
            local_tail: 0,
            published_tail: 0,
            bgid,
            incremental,
            state: vec![BidState::default(); count as usize],
            in_ring: 0,
            current: None,
        };
        for bid in 0..count {
            ring.push(bid);
        }
        ring.publish();
        Ok(ring)
    }

    pub(crate) fn pool(&self) -> &std::sync::Arc<BufPool> {
        &self.pool
    }

    pub(crate) fn total(&self) -> u32 {
        u32::from(self.mask) + 1
    }

    /// Buffers in the kernel's hands.
    pub(crate) fn free(&self) -> u32 {
        self.in_ring
    }

    /// Registers the ring with `submitter` under `bgid`.
    pub(crate) fn register(&self, submitter: &io_uring::Submitter<'_>) -> io::Result<()> {
        let flags = if self.incremental {
            io_uring::types::IOU_PBUF_RING_INC as u16
        } else {
            0
        };
        // SAFETY: `entries` is a page-aligned mapping of `total()` entries that stays mapped
        // until `self` is dropped, which the reactor does only after unregistering (or after the
        // ring is gone).
        unsafe {
            submitter.register_buf_ring_with_flags(
                self.entries.ptr.as_ptr() as u64,
                self.total() as u16,
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

    /// Appends `bid` (not yet visible to the kernel until [`publish`](Self::publish)).
    fn push(&mut self, bid: u16) {
        let st = &mut self.state[usize::from(bid)];
        debug_assert!(!st.in_ring && st.refs == 0, "bid {bid} pushed twice");
        st.in_ring = true;
        st.offset = 0;
        self.in_ring += 1;
        let addr = self.pool.addr(bid);
        let len = self.pool.size;
        let entry = self.entry_ptr(self.local_tail);
        // SAFETY: the slot at `local_tail` is not visible to the kernel (it lies at or past the
        // published tail) and at most `total()` bids are in the ring, so the kernel has consumed
        // whatever this slot held before. Only this thread writes entries.
        unsafe {
            (*entry).set_addr(addr);
            (*entry).set_len(len);
            (*entry).set_bid(bid);
        }
        self.local_tail = self.local_tail.wrapping_add(1);
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
        // Incremental mode. The kernel consumes buffers in ring order, so a completion for a new
        // bid means it moved past the previous one even if no completion said so.
        if let Some(prev) = self.current
            && prev != bid
        {
            self.kernel_done(prev);
        }
        let st = &mut self.state[usize::from(bid)];
        if !st.in_ring {
            return Err(BidError { bid });
        }
        if u64::from(st.offset) + u64::from(len) > u64::from(self.pool.size) {
            return Err(BidError { bid });
        }
        let item = RecvItem {
            bid,
            off: st.offset,
            len,
        };
        st.offset += len;
        st.refs += 1;
        if buf_more {
            self.current = Some(bid);
        } else {
            self.current = None;
            self.kernel_done(bid);
        }
        Ok(item)
    }

    /// Incremental mode: the kernel will not write into `bid` again until it is pushed.
    fn kernel_done(&mut self, bid: u16) {
        let st = &mut self.state[usize::from(bid)];
        if st.in_ring {
            st.in_ring = false;
            self.in_ring -= 1;
            if st.refs == 0 {
                self.push(bid);
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
            self.push(item.bid);
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for the kernel: consumes entries from the head as the kernel does.
    struct FakeKernel {
        head: u16,
        // Incremental mode: bytes left in the head buffer.
        left: Option<u32>,
    }

    impl FakeKernel {
        fn new() -> Self {
            Self {
                head: 0,
                left: None,
            }
        }

        /// Non-incremental: takes a whole buffer, like a multishot recv.
        fn recv(&mut self, ring: &BufRing) -> Option<u16> {
            let (bid, _) = ring.kernel_peek(self.head)?;
            self.head = self.head.wrapping_add(1);
            Some(bid)
        }

        /// Incremental: writes `n` bytes into the head buffer; returns (bid, written, buf_more).
        fn recv_inc(&mut self, ring: &BufRing, n: u32) -> Option<(u16, u32, bool)> {
            let (bid, len) = ring.kernel_peek(self.head)?;
            let left = self.left.unwrap_or(len);
            let take = n.min(left);
            let rest = left - take;
            if rest == 0 {
                self.head = self.head.wrapping_add(1);
                self.left = None;
                Some((bid, take, false))
            } else {
                self.left = Some(rest);
                Some((bid, take, true))
            }
        }
    }

    /// Tiny xorshift so the test needs no dependency and is reproducible.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn out_of_order_returns_never_hand_out_a_held_buffer() {
        // docs/architecture.md, rule 2. With the C# index math (absolute counter as offset) the fake kernel
        // soon reads a stale slot and `on_recv` reports a held bid.
        for &size in &[4u16, 8, 64] {
            let mut ring = BufRing::new(size, 64, 0, false).unwrap();
            let mut kernel = FakeKernel::new();
            let mut held: Vec<RecvItem> = Vec::new();
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(size));
            let mut picks = 0;
            for _ in 0..200_000 {
                if !held.is_empty() && (rng.below(2) == 0 || ring.free() == 0) {
                    let i = rng.below(held.len() as u64) as usize;
                    let item = held.swap_remove(i);
                    ring.release(&item);
                    if rng.below(3) == 0 {
                        ring.publish();
                    }
                } else if let Some(bid) = kernel.recv(&ring) {
                    let item = ring.on_recv(bid, 10, false).expect("held bid handed out");
                    held.push(item);
                    picks += 1;
                } else {
                    ring.publish();
                }
                assert_eq!(ring.free() as usize + held.len(), size as usize);
            }
            assert!(picks > 50_000, "{picks}");
        }
    }

    #[test]
    fn delivering_a_held_bid_is_an_error() {
        let mut ring = BufRing::new(4, 64, 0, false).unwrap();
        let item = ring.on_recv(2, 5, false).unwrap();
        assert_eq!(ring.on_recv(2, 5, false), Err(BidError { bid: 2 }));
        ring.release(&item);
        assert_eq!(ring.free(), 4);
        assert_eq!(ring.on_recv(9, 1, false), Err(BidError { bid: 9 }));
    }

    #[test]
    fn incremental_pieces_share_a_buffer_and_return_out_of_order() {
        let mut ring = BufRing::new(4, 100, 0, true).unwrap();
        let mut kernel = FakeKernel::new();
        // Three small receives land in buffer 0 at successive offsets.
        let mut items = Vec::new();
        for n in [10, 20, 30] {
            let (bid, len, more) = kernel.recv_inc(&ring, n).unwrap();
            assert!(more);
            items.push(ring.on_recv(bid, len, more).unwrap());
        }
        assert_eq!(
            items
                .iter()
                .map(|i| (i.bid, i.off, i.len))
                .collect::<Vec<_>>(),
            vec![(0, 0, 10), (0, 10, 20), (0, 30, 30)]
        );
        // Returning every piece does not recycle the buffer: the kernel is still filling it.
        for item in items.drain(..).rev() {
            ring.release(&item);
        }
        assert_eq!(ring.free(), 4);
        // The last 40 bytes finish buffer 0 (no BUF_MORE); it is held until that piece returns.
        let (bid, len, more) = kernel.recv_inc(&ring, 64).unwrap();
        assert_eq!((bid, len, more), (0, 40, false));
        let last = ring.on_recv(bid, len, more).unwrap();
        assert_eq!((last.off, last.len), (60, 40));
        assert_eq!(ring.free(), 3);
        ring.release(&last);
        assert_eq!(ring.free(), 4);
    }

    #[test]
    fn incremental_new_bid_completes_the_previous_one() {
        let mut ring = BufRing::new(4, 100, 0, true).unwrap();
        let a = ring.on_recv(0, 10, true).unwrap();
        // The kernel moved on to buffer 1 without a final completion for buffer 0.
        let b = ring.on_recv(1, 10, true).unwrap();
        assert_eq!(ring.free(), 3);
        ring.release(&a);
        assert_eq!(
            ring.free(),
            4,
            "buffer 0 goes back once its last piece returns"
        );
        ring.release(&b);
        assert_eq!(ring.free(), 4);
    }

    #[test]
    fn incremental_random_pieces_keep_every_buffer_accounted() {
        let mut ring = BufRing::new(8, 256, 0, true).unwrap();
        let mut kernel = FakeKernel::new();
        let mut held: Vec<RecvItem> = Vec::new();
        let mut rng = Rng(42);
        for _ in 0..100_000 {
            if !held.is_empty() && (rng.below(2) == 0) {
                let i = rng.below(held.len() as u64) as usize;
                let item = held.swap_remove(i);
                ring.release(&item);
                ring.publish();
            } else {
                let n = 1 + rng.below(200) as u32;
                match kernel.recv_inc(&ring, n) {
                    Some((bid, len, more)) => {
                        held.push(ring.on_recv(bid, len, more).expect("held bid handed out"))
                    }
                    None => ring.publish(),
                }
            }
        }
        for item in held.drain(..) {
            ring.release(&item);
        }
        assert_eq!(ring.free(), 8, "every buffer is back in the kernel's hands");
    }
}
