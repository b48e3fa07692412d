//! The load generator's io_uring: one ring per load thread with a provided-buffer ring for
//! multishot receives. This module holds all of the load generator's unsafe code; the rest of it
//! only sees safe methods.
//!
//! Memory the kernel may touch after a request was submitted is never freed while the process
//! lives: send buffers are `&'static` (built once at start-up and leaked on purpose) and the
//! receive buffers and the buffer ring are mappings that are not unmapped. A load thread creates
//! one ring, so the leak is bounded by the thread count.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::types::{BufRingEntry, Fd, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};

/// Buffer group of the receive buffers.
const BGID: u16 = 0;

/// One completion, copied out of the completion queue.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cqe {
    pub(crate) user_data: u64,
    pub(crate) result: i32,
    pub(crate) flags: u32,
}

impl Cqe {
    /// The receive buffer this completion filled, if any.
    pub(crate) fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }

    /// The request stays armed (multishot).
    pub(crate) fn more(&self) -> bool {
        cqueue::more(self.flags)
    }
}

/// Anonymous, page-aligned memory that is never unmapped (see the module docs).
fn map(len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: an anonymous private mapping with no address hint; the result is checked for
    // MAP_FAILED below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len.max(1),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}

/// A ring and its receive buffers. Single-threaded by construction (it is not `Send`: it holds
/// raw pointers).
pub(crate) struct Ring {
    uring: IoUring,
    /// `count` receive buffers of `buf_size` bytes, contiguous.
    pool: NonNull<u8>,
    buf_size: u32,
    count: u16,
    /// The `io_uring_buf` entries the kernel consumes from.
    entries: NonNull<BufRingEntry>,
    local_tail: u16,
    /// The address every connect goes to (the kernel reads it when the connect is issued).
    addr: Box<libc::sockaddr_in>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("buf_size", &self.buf_size)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl Ring {
    /// A ring with `sq` submission entries, `cq` completion entries, and `count` (a power of
    /// two) receive buffers of `buf_size` bytes; connects go to `addr`.
    pub(crate) fn new(
        sq: u32,
        cq: u32,
        count: u16,
        buf_size: u32,
        addr: std::net::SocketAddrV4,
    ) -> io::Result<Self> {
        assert!(
            count.is_power_of_two(),
            "buffer count must be a power of two"
        );
        // DEFER_TASKRUN: completion work runs only when this thread waits, in one batch, and a
        // waiter for N completions is woken once, not N times. Older kernels: plain ring.
        let uring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(cq)
            .build(sq)
            .or_else(|_| IoUring::builder().setup_cqsize(cq).build(sq))?;
        let pool = map(usize::from(count) * buf_size as usize)?;
        let entries = map(usize::from(count) * std::mem::size_of::<BufRingEntry>())?.cast();
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*addr.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let mut ring = Self {
            uring,
            pool,
            buf_size,
            count,
            entries,
            local_tail: 0,
            addr: Box::new(sin),
        };
        for bid in 0..count {
            ring.give_back(bid);
        }
        ring.publish();
        // SAFETY: `entries` holds `count` entries, is page-aligned and is never unmapped.
        unsafe {
            ring.uring.submitter().register_buf_ring_with_flags(
                entries_addr(&ring),
                count,
                BGID,
                0,
            )?;
        }
        Ok(ring)
    }

    /// Queues an entry, submitting first if the submission queue is full.
    ///
    /// # Safety
    ///
    /// Every pointer in `e` stays valid until its completion arrives.
    unsafe fn push(&mut self, e: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: the caller's contract.
            if unsafe { self.uring.submission().push(e) }.is_ok() {
                return Ok(());
            }
            self.uring.submit()?;
        }
    }

    /// Connects `fd` to the ring's address.
    pub(crate) fn connect(&mut self, fd: RawFd, user_data: u64) -> io::Result<()> {
        let e = opcode::Connect::new(
            Fd(fd),
            std::ptr::from_ref(&*self.addr).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
        .build()
        .user_data(user_data);
        // SAFETY: the address is boxed in `self`, which outlives the ring's requests (the ring
        // is dropped with it).
        unsafe { self.push(&e) }
    }

    /// Sends `buf` on `fd`.
    pub(crate) fn send(&mut self, fd: RawFd, buf: &'static [u8], user_data: u64) -> io::Result<()> {
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let e = opcode::Send::new(Fd(fd), buf.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data);
        // SAFETY: `buf` is 'static.
        unsafe { self.push(&e) }
    }

    /// Arms a multishot receive on `fd` into the ring's buffers.
    pub(crate) fn recv_multishot(&mut self, fd: RawFd, user_data: u64) -> io::Result<()> {
        let e = opcode::RecvMulti::new(Fd(fd), BGID)
            .build()
            .user_data(user_data);
        // SAFETY: no pointer; the kernel picks buffers from the registered ring.
        unsafe { self.push(&e) }
    }

    /// Cancels the request submitted with `target` (its completion still arrives).
    pub(crate) fn cancel(&mut self, target: u64, user_data: u64) -> io::Result<()> {
        let e = opcode::AsyncCancel::new(target)
            .build()
            .user_data(user_data);
        // SAFETY: no pointer.
        unsafe { self.push(&e) }
    }

    /// Submits what is queued, waits for `want` completions or `timeout`, and appends the
    /// completions to `out`. A timeout or a signal is not an error.
    pub(crate) fn wait(
        &mut self,
        want: usize,
        timeout: Duration,
        out: &mut Vec<Cqe>,
    ) -> io::Result<()> {
        let ts = Timespec::from(timeout);
        let args = SubmitArgs::new().timespec(&ts);
        match self.uring.submitter().submit_with_args(want, &args) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) => {}
            Err(e) => return Err(e),
        }
        out.extend(self.uring.completion().map(|c| Cqe {
            user_data: c.user_data(),
            result: c.result(),
            flags: c.flags(),
        }));
        Ok(())
    }

    /// The first `len` bytes of receive buffer `bid`, which a completion just delivered.
    pub(crate) fn data(&self, bid: u16, len: usize) -> &[u8] {
        assert!(
            bid < self.count && len <= self.buf_size as usize,
            "receive buffer {bid} len {len} out of bounds"
        );
        let off = usize::from(bid) * self.buf_size as usize;
        // SAFETY: in bounds of the pool (checked above). The buffer left the ring with the
        // completion that named it and goes back only through `give_back` (which takes
        // `&mut self`, so not while this borrow lives); the kernel does not write to it now.
        unsafe { std::slice::from_raw_parts(self.pool.as_ptr().add(off), len) }
    }

    /// Hands receive buffer `bid` back to the kernel (visible after [`Ring::publish`]).
    pub(crate) fn give_back(&mut self, bid: u16) {
        let mask = self.count - 1;
        // SAFETY: `local_tail & mask` < count: inside the entries mapping. That slot is at or
        // past the published tail, so the kernel does not read it now, and since at most `count`
        // buffers are in the ring, it has consumed whatever the slot held before.
        unsafe {
            let e = self
                .entries
                .as_ptr()
                .add(usize::from(self.local_tail & mask));
            (*e).set_addr(self.pool.as_ptr() as u64 + u64::from(bid) * u64::from(self.buf_size));
            (*e).set_len(self.buf_size);
            (*e).set_bid(bid);
        }
        self.local_tail = self.local_tail.wrapping_add(1);
    }

    /// Makes the buffers given back visible to the kernel.
    pub(crate) fn publish(&mut self) {
        // SAFETY: the tail aliases the reserved word of the first entry, inside the mapping,
        // 2-byte aligned; the kernel reads it atomically.
        let tail = unsafe { &*BufRingEntry::tail(self.entries.as_ptr()).cast::<AtomicU16>() };
        tail.store(self.local_tail, Ordering::Release);
    }
}

fn entries_addr(ring: &Ring) -> u64 {
    ring.entries.as_ptr() as u64
}

/// CPU time of this process (all threads, user + system), seconds, from getrusage: the load
/// generator's own cost over its window, to the microsecond.
pub(crate) fn process_cpu_s() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `ru` is valid, writable memory for one rusage, which getrusage fills on success.
    let ru = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) != 0 {
            return 0.0;
        }
        ru.assume_init()
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}
