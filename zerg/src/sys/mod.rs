//! Raw system calls, listener sockets and ring construction. All platform code lives here.
#![allow(unsafe_code)]

pub(crate) mod listener;
pub(crate) mod ring;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Calls a libc function and turns `-1` into the thread's `errno` as [`io::Error`].
macro_rules! syscall {
    ($fn: ident ( $($arg: expr),* $(,)* ) ) => {{
        // SAFETY: every use passes arguments that satisfy the called function's contract; the
        // call site states them.
        let res = unsafe { libc::$fn($($arg, )*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

/// An eventfd: the wake-up line into a reactor or the acceptor. Writers add 1; the owner keeps a
/// read armed in its ring, so a write completes that read and ends the owner's wait.
#[derive(Debug)]
pub(crate) struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    pub(crate) fn new() -> io::Result<Self> {
        // eventfd(2) with plain integer flags; no pointers involved.
        let fd = syscall!(eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK))?;
        // SAFETY: `fd` was just returned by eventfd(2) and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// Adds one to the counter, waking whoever has a read armed on it.
    pub(crate) fn write(&self) {
        let one: u64 = 1;
        // write(2) of 8 bytes from a live stack value to our own descriptor.
        let res = syscall!(write(
            self.fd.as_raw_fd(),
            (&raw const one).cast(),
            std::mem::size_of::<u64>()
        ));
        if let Err(e) = res {
            // EAGAIN means the counter is saturated: a wake-up is pending anyway.
            if e.raw_os_error() != Some(libc::EAGAIN) {
                tracing::error!(error = %e, "eventfd write failed");
            }
        }
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Closes a descriptor the caller owns and no in-flight operation uses any more.
pub(crate) fn close(fd: RawFd) {
    // close(2) on a descriptor whose ownership the caller gives up here.
    if let Err(e) = syscall!(close(fd)) {
        tracing::warn!(fd, error = %e, "close failed");
    }
}

/// `shutdown(fd, SHUT_WR)`: sends FIN after the bytes already queued.
pub(crate) fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // shutdown(2) with integer arguments only.
    syscall!(shutdown(fd, libc::SHUT_WR)).map(drop)
}

/// `shutdown(fd, SHUT_RDWR)`: ends both directions; operations waiting on the socket complete.
pub(crate) fn shutdown_both(fd: RawFd) -> io::Result<()> {
    // shutdown(2) with integer arguments only.
    syscall!(shutdown(fd, libc::SHUT_RDWR)).map(drop)
}

/// Bytes received by the kernel and not yet read from socket `fd` (`SIOCINQ`).
pub(crate) fn pending_input(fd: RawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // ioctl(2) FIONREAD (SIOCINQ for TCP) writes one int through a pointer to a live local.
    syscall!(ioctl(fd, libc::FIONREAD, &raw mut n))?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Takes the pending error of socket `fd` (`SO_ERROR`; reading it clears it).
pub(crate) fn take_socket_error(fd: RawFd) -> io::Result<Option<i32>> {
    // SAFETY: the caller guarantees `fd` is an open socket for the duration of this call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    Ok(socket2::SockRef::from(&fd)
        .take_error()?
        .and_then(|e| e.raw_os_error()))
}

/// The peer address of a connected socket.
pub(crate) fn peer_addr(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<std::net::SocketAddr> {
    socket2::SockRef::from(&fd)
        .peer_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "peer is not an IP socket"))
}

/// The local address of a socket.
pub(crate) fn local_addr(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<std::net::SocketAddr> {
    socket2::SockRef::from(&fd)
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "socket is not an IP socket"))
}

/// A close-on-exec duplicate of `fd`.
pub(crate) fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // fcntl(2) F_DUPFD_CLOEXEC with integer arguments only.
    let new = syscall!(fcntl(fd, libc::F_DUPFD_CLOEXEC, 0))?;
    // SAFETY: `new` was just created by fcntl and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Pins the calling thread to one CPU.
pub(crate) fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above), so the bit lies inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // sched_setaffinity(2) for the calling thread (pid 0) reads one cpu_set_t.
    syscall!(sched_setaffinity(
        0,
        std::mem::size_of::<libc::cpu_set_t>(),
        &set
    ))
    .map(drop)
}
