//! Receive memory: an anonymous mapping of `count × size` bytes the kernel writes received data
//! into, and the pages it can give back to the system when buffers leave circulation.
#![allow(unsafe_code)]

use std::io;
use std::ptr::NonNull;

use super::RecvItem;

/// Anonymous, page-aligned, zero-filled memory.
#[derive(Debug)]
pub(super) struct Mapping {
    pub(super) ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    pub(super) fn new(len: usize) -> io::Result<Self> {
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

/// Receive buffers: `count` buffers of `size` bytes, contiguous. The whole range is reserved as
/// address space; a page takes memory only once the kernel writes into it, and gives it back
/// when [`BufPool::discard`] releases it.
#[derive(Debug)]
pub(crate) struct BufPool {
    map: Mapping,
    pub(super) size: u32,
    count: u32,
}

// SAFETY: the pool is plain memory. Concurrent access follows the ownership protocol in the
// module docs: the kernel writes a buffer only while it is in the ring, and threads read a buffer
// only while they hold it, so no byte is written and read at the same time.
unsafe impl Send for BufPool {}
// SAFETY: as for `Send`; `&BufPool` gives no way to write.
unsafe impl Sync for BufPool {}

/// Bytes per page (the unit `madvise` releases).
pub(super) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

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

    pub(super) fn addr(&self, bid: u16) -> u64 {
        debug_assert!(u32::from(bid) < self.count);
        self.map.ptr.as_ptr() as u64 + u64::from(bid) * u64::from(self.size)
    }

    /// The bytes of a received piece.
    ///
    /// # Safety
    ///
    /// The caller holds `item`: it came from [`BufRing::on_recv`](super::BufRing::on_recv) (or
    /// `on_recv_bundle`) of the ring over this pool and has not been passed to
    /// [`BufRing::release`](super::BufRing::release) yet, and will not be while the returned
    /// slice lives. Then the buffer is out of the kernel's hands and nobody writes to it.
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

    /// Gives the pages of the buffers `first..first + n` back to the system: they read as zeros
    /// afterwards and take no memory until written again. Only pages wholly inside the range are
    /// released, so a neighbouring buffer is never touched. Returns the bytes released.
    ///
    /// # Safety
    ///
    /// Nobody reads those buffers and nobody may write into them concurrently: they are out of
    /// circulation, or in the ring of a kernel that writes received data only while the
    /// reactor thread (the caller) is inside `io_uring_enter` (no SQPOLL thread).
    pub(super) unsafe fn discard(&self, first: u16, n: u32) -> usize {
        let page = page_size();
        let start = self.addr(first) as usize;
        let end = start + n as usize * self.size as usize;
        let lo = start.next_multiple_of(page);
        let hi = end - end % page;
        if hi <= lo {
            return 0;
        }
        // SAFETY: `lo..hi` lies inside the mapping (inside the buffers' range); per the caller's
        // contract nothing uses those bytes now, and MADV_DONTNEED on private anonymous memory
        // only makes them read as zeros later.
        let rc = unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_DONTNEED) };
        if rc == 0 { hi - lo } else { 0 }
    }
}
