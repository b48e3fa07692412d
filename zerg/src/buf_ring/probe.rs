//! Whether receive bundles work here: the kernel's feature flag, then a short self-test on a
//! scratch ring over a loopback TCP pair that checks the bytes a bundle receive delivers against
//! the bytes sent, through the same bookkeeping the reactors use
//! ([`BufRing::on_recv_bundle`]), including a ring that runs dry and is refilled (an incremental
//! ring used with bundles once stopped delivering after the first completion on some kernels).
//! The self-test result is a fact about the running kernel: it is computed once per process and
//! per consumption mode.
#![allow(unsafe_code)]

use std::io::Write;
use std::mem::ManuallyDrop;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use io_uring::types::{Fd, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode};

use super::{BufRing, RecvItem};

/// Buffers of the scratch ring and their size: small, so that bundles span several buffers and
/// the ring runs dry.
const BUFFERS: u16 = 8;
const BUF_SIZE: u32 = 64;
/// What the self-test sends, in this order: pieces smaller and larger than a buffer and one
/// larger than the whole ring.
const CHUNKS: [usize; 10] = [10, 100, 64, 1, 200, 700, 63, 65, 128, 300];
const RECV: u64 = 1;

/// `Ok` if receives on `uring` can be bundles: the kernel has `IORING_RECVSEND_BUNDLE` and
/// delivers bundles correctly into a ring of this consumption mode; otherwise why not.
pub(crate) fn bundles(uring: &IoUring, incremental: bool) -> Result<(), String> {
    if !uring.params().is_feature_recvsend_bundle() {
        return Err("the kernel lacks IORING_RECVSEND_BUNDLE (Linux 6.10)".into());
    }
    static PLAIN: OnceLock<Result<(), String>> = OnceLock::new();
    static INCREMENTAL: OnceLock<Result<(), String>> = OnceLock::new();
    let cell = if incremental { &INCREMENTAL } else { &PLAIN };
    cell.get_or_init(|| {
        self_test(incremental, Accounting::Bundles).map_err(|e| {
            let mode = if incremental {
                "with incremental buffer consumption"
            } else {
                "into a provided-buffer ring"
            };
            format!("the receive-bundle self-test {mode} failed: {e}")
        })
    })
    .clone()
}

/// The byte at position `i` of the test stream (not periodic in the buffer size).
fn pattern(i: usize) -> u8 {
    (i * 7 + i / 251) as u8
}

/// A scratch ring with a bundle receive on a loopback connection.
struct Scratch {
    uring: IoUring,
    /// Freed in `Drop` only once no receive is in flight.
    bufs: ManuallyDrop<BufRing>,
    server: TcpStream,
    client: TcpStream,
    /// The receive is in flight.
    armed: bool,
}

impl Scratch {
    fn new(incremental: bool) -> Result<Self, String> {
        let uring = IoUring::builder()
            .setup_cqsize(64)
            .build(8)
            .map_err(|e| format!("io_uring_setup: {e}"))?;
        let bufs = BufRing::new(BUFFERS, BUFFERS, BUF_SIZE, 0, incremental)
            .map_err(|e| format!("buffer ring: {e}"))?;
        bufs.register(&uring.submitter())
            .map_err(|e| format!("IORING_REGISTER_PBUF_RING: {e}"))?;
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let client = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        let (server, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        client.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Self {
            uring,
            bufs: ManuallyDrop::new(bufs),
            server,
            client,
            armed: false,
        })
    }

    fn arm(&mut self) -> Result<(), String> {
        let entry = opcode::RecvMultiBundle::new(Fd(self.server.as_raw_fd()), 0)
            .build()
            .user_data(RECV);
        // SAFETY: the receive points to no memory but the registered buffer ring, which stays
        // mapped until the receive has ended (or is leaked, see `Drop`).
        unsafe { self.uring.submission().push(&entry) }.map_err(|_| "queue full".to_string())?;
        self.armed = true;
        Ok(())
    }

    /// Submits and waits up to `timeout` for completions; returns them.
    fn wait(&mut self, timeout: Duration) -> Result<Vec<cqueue::Entry>, String> {
        self.bufs.publish();
        let ts = Timespec::new()
            .sec(timeout.as_secs())
            .nsec(timeout.subsec_nanos());
        let args = SubmitArgs::new().timespec(&ts);
        match self.uring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
            Err(e) => return Err(format!("io_uring_enter: {e}")),
        }
        Ok(self.uring.completion().collect())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.armed {
            // End the receive (EOF, then reset), and wait for its last completion before the
            // buffer memory goes.
            let _ = self.client.shutdown(Shutdown::Both);
            let _ = self.server.shutdown(Shutdown::Both);
            let deadline = Instant::now() + Duration::from_secs(1);
            while self.armed && Instant::now() < deadline {
                let Ok(cqes) = self.wait(Duration::from_millis(20)) else {
                    break;
                };
                self.armed &= !cqes
                    .iter()
                    .any(|c| c.user_data() == RECV && !cqueue::more(c.flags()));
            }
        }
        // Still in flight: the kernel might write into the buffers; never free them.
        if !self.armed && self.uring.submitter().unregister_buf_ring(0).is_ok() {
            // SAFETY: `bufs` is not used after this, and the kernel no longer knows the ring.
            unsafe { ManuallyDrop::drop(&mut self.bufs) };
        }
    }
}

/// How the self-test reads completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accounting {
    /// As the reactors do.
    Bundles,
    /// With the buffers of a completion in the wrong order: must fail (tests only).
    #[cfg(test)]
    Reversed,
}

/// Sends [`CHUNKS`] one by one and checks that bundle receives deliver exactly those bytes.
fn self_test(incremental: bool, accounting: Accounting) -> Result<(), String> {
    let mut s = Scratch::new(incremental)?;
    s.arm()?;
    let deadline = Instant::now() + Duration::from_secs(2);
    let (mut sent, mut got) = (0usize, 0usize);
    let mut held: Vec<RecvItem> = Vec::new();
    let mut pieces = Vec::new();
    let mut bundled = false;
    for chunk in CHUNKS {
        let bytes: Vec<u8> = (sent..sent + chunk).map(pattern).collect();
        s.client
            .write_all(&bytes)
            .map_err(|e| format!("send: {e}"))?;
        sent += chunk;
        let mut idle_since = Instant::now();
        while got < sent {
            if Instant::now() > deadline {
                return Err(format!("stalled at {got} of {sent} bytes"));
            }
            if !s.armed {
                // The ring ran dry or the receive ended: hand everything back and re-arm.
                for item in held.drain(..) {
                    s.bufs.release(&item);
                }
                s.arm()?;
            }
            let cqes = s.wait(Duration::from_millis(50))?;
            if cqes.is_empty()
                && !held.is_empty()
                && idle_since.elapsed() > Duration::from_millis(100)
            {
                // Nothing moves while we hold buffers: the kernel may be waiting for some.
                for item in held.drain(..) {
                    s.bufs.release(&item);
                }
                idle_since = Instant::now();
            }
            for cqe in cqes.iter().filter(|c| c.user_data() == RECV) {
                let (res, flags) = (cqe.result(), cqe.flags());
                if !cqueue::more(flags) {
                    s.armed = false;
                }
                if res < 0 && res != -libc::ENOBUFS {
                    return Err(format!("receive failed: errno {}", -res));
                }
                if res <= 0 {
                    continue;
                }
                let bid = cqueue::buffer_select(flags).ok_or("a receive without a buffer")?;
                pieces.clear();
                s.bufs
                    .on_recv_bundle(bid, res as u32, cqueue::buffer_more(flags), &mut pieces)
                    .map_err(|e| e.to_string())?;
                bundled |= pieces.len() > 1;
                #[cfg(test)]
                if accounting == Accounting::Reversed {
                    pieces.reverse();
                }
                let _ = accounting;
                for item in &pieces {
                    // SAFETY: the piece was just delivered and is held until released below.
                    let data = unsafe { s.bufs.pool().slice(item) };
                    if data.iter().enumerate().any(|(k, &b)| b != pattern(got + k)) {
                        return Err(format!("wrong bytes at offset {got} (buffer {})", item.bid));
                    }
                    got += data.len();
                }
                if got > sent {
                    return Err(format!("{got} bytes received, {sent} sent"));
                }
                held.extend_from_slice(&pieces);
                idle_since = Instant::now();
            }
        }
        for item in held.drain(..) {
            s.bufs.release(&item);
        }
    }
    if !bundled {
        return Err("no completion carried more than one buffer".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundles_supported() -> bool {
        let ring = IoUring::new(4).expect("io_uring");
        let ok = ring.params().is_feature_recvsend_bundle();
        if !ok {
            eprintln!("SKIPPED: this kernel has no IORING_RECVSEND_BUNDLE (Linux 6.10)");
        }
        ok
    }

    #[test]
    fn bundles_deliver_every_byte_in_order() {
        if !bundles_supported() {
            return;
        }
        self_test(false, Accounting::Bundles).unwrap();
    }

    #[test]
    fn the_self_test_notices_misplaced_bytes() {
        if !bundles_supported() {
            return;
        }
        let e = self_test(false, Accounting::Reversed).unwrap_err();
        assert!(e.contains("wrong bytes"), "{e}");
    }

    #[test]
    fn incremental_bundles_pass_the_self_test_or_are_reported() {
        if !bundles_supported() {
            return;
        }
        match self_test(true, Accounting::Bundles) {
            Ok(()) => {}
            Err(e) if e.contains("IORING_REGISTER_PBUF_RING") => {
                eprintln!("SKIPPED: no incremental buffer rings here (Linux 6.12): {e}");
            }
            // A kernel that mishandles bundles into incremental rings: the reactors turn
            // bundles off there (with a warning), which is what this finding is for.
            Err(e) => eprintln!("NOTE: this kernel fails the incremental bundle self-test: {e}"),
        }
    }
}
