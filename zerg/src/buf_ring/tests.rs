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

    /// A bundle: up to `n` bytes through the entries from the head, each filled before the
    /// next; returns (first bid, bytes, buf_more). Non-incremental, every buffer it wrote into
    /// is consumed; incremental, the last one stays at the head if it has room left.
    fn recv_bundle(
        &mut self,
        ring: &BufRing,
        n: u32,
        incremental: bool,
    ) -> Option<(u16, u32, bool)> {
        let (first, _) = ring.kernel_peek(self.head)?;
        let (mut left, mut total) = (n, 0);
        while left > 0 {
            let Some((_, len)) = ring.kernel_peek(self.head) else {
                break;
            };
            let avail = if incremental {
                self.left.unwrap_or(len)
            } else {
                len
            };
            let take = left.min(avail);
            total += take;
            left -= take;
            if incremental && take < avail {
                self.left = Some(avail - take);
                return Some((first, total, true));
            }
            self.head = self.head.wrapping_add(1);
            self.left = None;
        }
        Some((first, total, false))
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

/// Tests that count released bytes assume 4 KiB pages.
fn four_kib_pages() -> bool {
    let ok = pool::page_size() == 4096;
    if !ok {
        eprintln!("SKIPPED: the page size is {}, not 4096", pool::page_size());
    }
    ok
}

fn ring(capacity: u16, size: u32, incremental: bool) -> BufRing {
    BufRing::new(capacity, capacity, size, 0, incremental).unwrap()
}

#[test]
fn out_of_order_returns_never_hand_out_a_held_buffer() {
    // docs/architecture.md, rule 2. With the C# index math (absolute counter as offset) the fake
    // kernel soon reads a stale slot and `on_recv` reports a held bid.
    for &size in &[4u16, 8, 64] {
        let mut ring = ring(size, 64, false);
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
    let mut ring = ring(4, 64, false);
    let item = ring.on_recv(2, 5, false).unwrap();
    assert_eq!(ring.on_recv(2, 5, false), Err(BidError { bid: 2 }));
    ring.release(&item);
    assert_eq!(ring.free(), 4);
    assert_eq!(ring.on_recv(9, 1, false), Err(BidError { bid: 9 }));
}

#[test]
fn incremental_pieces_share_a_buffer_and_return_out_of_order() {
    let mut ring = ring(4, 100, true);
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
    let mut ring = ring(4, 100, true);
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
fn incremental_piece_past_the_buffer_is_an_error() {
    let mut ring = ring(4, 100, true);
    ring.on_recv(0, 90, true).unwrap();
    assert_eq!(ring.on_recv(0, 20, true), Err(BidError { bid: 0 }));
}

#[test]
fn incremental_random_pieces_keep_every_buffer_accounted() {
    let mut ring = ring(8, 256, true);
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

/// The bytes of `items` as the kernel laid them out: bundles fill ring entries in order.
fn pieces(items: &[RecvItem]) -> Vec<(u16, u32, u32)> {
    items.iter().map(|i| (i.bid, i.off, i.len)).collect()
}

#[test]
fn bundle_spans_consecutive_ring_entries_not_consecutive_bids() {
    let mut ring = ring(8, 100, false);
    let mut kernel = FakeKernel::new();
    // Hold 0..3 and return them out of order: the ring now holds 4..7, then 2, 0, 3, 1.
    let mut first = Vec::new();
    for _ in 0..4 {
        let bid = kernel.recv(&ring).unwrap();
        first.push(ring.on_recv(bid, 100, false).unwrap());
    }
    for i in [2, 0, 3, 1] {
        ring.release(&first[i]);
    }
    ring.publish();
    for _ in 0..4 {
        let bid = kernel.recv(&ring).unwrap();
        let item = ring.on_recv(bid, 1, false).unwrap();
        ring.release(&item);
    }
    ring.publish();
    // The head is now bid 2 (pushed first of the returns): 250 bytes take 2, 0 and half of 3.
    let (bid, len, more) = kernel.recv_bundle(&ring, 250, false).unwrap();
    assert_eq!((bid, len, more), (2, 250, false));
    let mut out = Vec::new();
    ring.on_recv_bundle(bid, len, more, &mut out).unwrap();
    assert_eq!(pieces(&out), vec![(2, 0, 100), (0, 0, 100), (3, 0, 50)]);
    assert_eq!(ring.free(), 8 - 3);
    // Delivering any of them again is an error.
    let mut again = Vec::new();
    assert!(ring.on_recv_bundle(0, 10, false, &mut again).is_err());
    for item in &out {
        ring.release(item);
    }
    assert_eq!(ring.free(), 8);
}

#[test]
fn bundle_starting_at_a_shortened_entry_reads_its_length() {
    // The kernel shortens the first entry of a bundle to what it may take; if that receive gets
    // nothing, the next bundle starts at the short entry and continues into full ones.
    let mut ring = ring(8, 100, false);
    ring.kernel_shorten(0, 30);
    let mut kernel = FakeKernel::new();
    let (bid, len, _) = kernel.recv_bundle(&ring, 130, false).unwrap();
    assert_eq!((bid, len), (0, 130));
    let mut out = Vec::new();
    ring.on_recv_bundle(bid, len, false, &mut out).unwrap();
    assert_eq!(pieces(&out), vec![(0, 0, 30), (1, 0, 100)]);
}

#[test]
fn incremental_bundle_continues_the_partly_filled_head() {
    let mut ring = ring(8, 100, true);
    let mut kernel = FakeKernel::new();
    let (bid, len, more) = kernel.recv_inc(&ring, 40).unwrap();
    let a = ring.on_recv(bid, len, more).unwrap();
    // 60 bytes finish buffer 0, 100 fill buffer 1, 30 start buffer 2.
    let (bid, len, more) = kernel.recv_bundle(&ring, 190, true).unwrap();
    assert_eq!((bid, len, more), (0, 190, true));
    let mut out = Vec::new();
    ring.on_recv_bundle(bid, len, more, &mut out).unwrap();
    assert_eq!(pieces(&out), vec![(0, 40, 60), (1, 0, 100), (2, 0, 30)]);
    // Buffer 2 is still the kernel's: its next piece lands at offset 30.
    let (bid, len, more) = kernel.recv_inc(&ring, 5).unwrap();
    assert_eq!(
        ring.on_recv(bid, len, more).unwrap(),
        RecvItem {
            bid: 2,
            off: 30,
            len: 5
        }
    );
    ring.release(&a);
    for item in &out {
        ring.release(item);
    }
    // 0 and 1 are back in the ring; 2 is still being filled.
    assert_eq!(ring.free(), 8);
}

fn random_bundles(incremental: bool, seed: u64) {
    let capacity = 16;
    let mut ring = BufRing::new(capacity, 4, 64, 0, incremental).unwrap();
    let mut kernel = FakeKernel::new();
    let mut held: Vec<RecvItem> = Vec::new();
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    let (mut grows, mut bundles) = (0, 0);
    for step in 0..200_000u32 {
        match rng.below(10) {
            0..=3 if !held.is_empty() => {
                let i = rng.below(held.len() as u64) as usize;
                ring.release(&held.swap_remove(i));
            }
            4 => ring.publish(),
            5 if step % 64 == 0 => {
                if ring.total() < ring.capacity() && rng.below(2) == 0 {
                    grows += ring.grow();
                } else {
                    ring.shrink_to(4);
                }
                ring.discard_retired();
            }
            _ => {
                let n = 1 + rng.below(300) as u32;
                if let Some((bid, len, more)) = kernel.recv_bundle(&ring, n, incremental) {
                    out.clear();
                    ring.on_recv_bundle(bid, len, more, &mut out)
                        .expect("bundle accounting broke");
                    assert_eq!(out.iter().map(|i| i.len).sum::<u32>(), len);
                    held.extend_from_slice(&out);
                    bundles += 1;
                }
            }
        }
        if !incremental {
            assert_eq!(ring.free() as usize + held.len(), ring.total() as usize);
        }
        assert!(ring.total() <= ring.capacity());
    }
    for item in held.drain(..) {
        ring.release(&item);
    }
    if !incremental {
        assert_eq!(ring.free(), ring.total(), "every buffer is back");
    }
    assert!(
        grows > 0 && bundles > 10_000,
        "{grows} grows, {bundles} bundles"
    );
}

#[test]
fn random_bundles_with_growth_and_shrinking_keep_every_buffer_accounted() {
    random_bundles(false, 7);
    random_bundles(false, 0xdead_beef);
}

#[test]
fn random_incremental_bundles_with_growth_and_shrinking_keep_every_buffer_accounted() {
    random_bundles(true, 11);
    random_bundles(true, 0x1234_5678);
}

#[test]
fn circulation_starts_small_grows_by_doubling_and_shrinks_as_buffers_return() {
    if !four_kib_pages() {
        return;
    }
    let mut ring = BufRing::new(64, 8, 4096, 0, false).unwrap();
    assert_eq!((ring.total(), ring.free(), ring.capacity()), (8, 8, 64));
    let mut kernel = FakeKernel::new();
    let held: Vec<RecvItem> = (0..8)
        .map(|_| {
            let bid = kernel.recv(&ring).unwrap();
            ring.on_recv(bid, 10, false).unwrap()
        })
        .collect();
    assert_eq!(ring.free(), 0);
    assert!(kernel.recv(&ring).is_none(), "only 8 buffers circulate");
    assert_eq!(ring.grow(), 8);
    ring.publish();
    assert_eq!((ring.total(), ring.free()), (16, 8));
    let new = kernel.recv(&ring).unwrap();
    assert!(new >= 8, "the added buffers were never used: {new}");
    let extra = ring.on_recv(new, 10, false).unwrap();
    // Shrink back: returned buffers leave the ring until 8 circulate.
    ring.shrink_to(8);
    for item in held.iter().chain([&extra]) {
        ring.release(item);
    }
    ring.publish();
    // The first eight returns left the ring, the ninth went back: 7 unused + 1.
    assert_eq!((ring.total(), ring.free()), (8, 8));
    // Pages of retired buffers go back to the system (4096-byte buffers are whole pages).
    assert_eq!(ring.discard_retired(), 8 * 4096);
    assert_eq!(ring.discard_retired(), 0);
    // Growing reuses them.
    assert_eq!(ring.grow(), 8);
    assert_eq!(ring.total(), 16);
}

#[test]
fn idle_discard_releases_only_unheld_buffers_when_allowed() {
    if !four_kib_pages() {
        return;
    }
    let mut ring = BufRing::new(8, 8, 4096, 0, false).unwrap();
    let mut kernel = FakeKernel::new();
    let bid = kernel.recv(&ring).unwrap();
    let held = ring.on_recv(bid, 10, false).unwrap();
    assert_eq!(ring.discard_idle(), 0, "not allowed by default");
    ring.allow_idle_discard(true);
    assert_eq!(ring.discard_idle(), 7 * 4096);
    ring.release(&held);
}

#[test]
fn discarding_never_touches_a_page_shared_with_a_buffer_in_use() {
    if !four_kib_pages() {
        return;
    }
    // 1000-byte buffers: pages straddle buffers; only pages wholly inside a run of retired
    // buffers go back.
    let mut ring = BufRing::new(16, 16, 1000, 0, false).unwrap();
    let mut kernel = FakeKernel::new();
    let items: Vec<RecvItem> = (0..16)
        .map(|_| {
            let bid = kernel.recv(&ring).unwrap();
            ring.on_recv(bid, 1000, false).unwrap()
        })
        .collect();
    ring.shrink_to(1);
    // Buffer 1 alone: bytes 1000..2000, inside page 0 with buffers 0..4 in use: nothing.
    ring.release(&items[1]);
    assert_eq!(ring.discard_retired(), 0);
    // Buffers 4..=12 (bytes 4000..13000): pages 1 and 2 (4096..12288) lie wholly inside.
    for item in &items[4..13] {
        ring.release(item);
    }
    assert_eq!(ring.discard_retired(), 2 * 4096);
    for item in items[..1].iter().chain(&items[2..4]).chain(&items[13..]) {
        ring.release(item);
    }
    assert_eq!(ring.total(), 1);
}
