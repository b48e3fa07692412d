//! [`ConnectOp`]: the memory an `IORING_OP_CONNECT` (and its linked timeout) points to, owned so
//! that it stays where it is until the kernel has answered.

use std::net::SocketAddr;
use std::time::Duration;

use io_uring::types::Timespec;
use socket2::SockAddr;

use crate::sys;

/// The peer address of a connect in flight, and the spec of its linked timeout.
///
/// Both are boxed (stable addresses) and never changed after the submission. The kernel may read
/// them until the connect's completion (older kernels copy the address when they issue the
/// request, not when it is submitted), so a `ConnectOp` dropped while an operation is still in
/// flight leaks them rather than free them.
#[derive(Debug)]
pub(crate) struct ConnectOp {
    addr: Box<SockAddr>,
    timeout: Option<Box<Timespec>>,
    /// Completions still to come: the connect's, and its linked timeout's.
    inflight: u8,
}

impl ConnectOp {
    pub(crate) fn new(addr: SocketAddr, timeout: Option<Duration>) -> Self {
        Self {
            addr: Box::new(SockAddr::from(addr)),
            timeout: timeout.map(|d| Box::new(sys::ring::timespec(d))),
            inflight: 0,
        }
    }

    pub(super) fn addr(&self) -> &SockAddr {
        &self.addr
    }

    pub(super) fn timeout(&self) -> Option<&Timespec> {
        self.timeout.as_deref()
    }

    /// Submitted: `n` completions will come.
    pub(super) fn submitted(&mut self, n: u8) {
        self.inflight = n;
    }

    /// One of its completions arrived.
    pub(crate) fn completed(&mut self) {
        self.inflight = self.inflight.saturating_sub(1);
    }

    /// No completion is still to come: the kernel no longer reads this memory.
    pub(crate) fn is_idle(&self) -> bool {
        self.inflight == 0
    }
}

impl Drop for ConnectOp {
    fn drop(&mut self) {
        if self.inflight > 0 {
            // The kernel may still read the address or the timespec: never free them.
            let addr = std::mem::replace(&mut self.addr, Box::new(SockAddr::from(unspecified())));
            std::mem::forget(addr);
            std::mem::forget(self.timeout.take());
        }
    }
}

fn unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}
