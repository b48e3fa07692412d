//! [`ConnFd`]: a connection's descriptor as its handle sees it, and who owns it.
//!
//! The handle may borrow the descriptor ([`AsFd`](std::os::fd::AsFd) on
//! [`Connection`](super::Connection)), so it must stay open as long as the handle lives:
//!
//! - the reactor closes it only when it frees a connection whose handle is gone;
//! - when the engine stops (or its reactor fails) while the handle lives, the reactor shuts the
//!   socket down (the peer sees the close, operations end) and hands the descriptor over
//!   ([`FdState::Handed`]): it closes with the connection's shared state, after the handle.
//!
//! A connection on a direct descriptor (a slot in the reactor ring's file table) has no
//! descriptor in the process's table until one is asked for; the first request installs one
//! (`IORING_OP_FIXED_FD_INSTALL`): inline on the reactor's own thread, otherwise by asking the
//! reactor and waiting for its answer (one round trip, microseconds). From then on the connection
//! has both, and the reactor closes both when it frees it.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Condvar, Mutex, MutexGuard};

/// Where a connection's descriptor is.
#[derive(Debug)]
enum FdState {
    /// In the process's descriptor table, owned by the reactor (closed when it frees the
    /// connection).
    Open(RawFd),
    /// Only in the reactor ring's file table, at slot `index`. `asked`: an install was requested
    /// from another thread and not answered yet; `error`: the last install failed (errno).
    Direct {
        index: u32,
        asked: bool,
        error: Option<i32>,
    },
    /// The reactor let go while the handle lived: the shared state owns the descriptor now.
    Handed(OwnedFd),
    /// No descriptor (errno why: freed, or none could be installed when the reactor let go).
    Gone(i32),
}

/// A connection's descriptor, shared by its handle and its reactor.
pub(crate) struct ConnFd {
    state: Mutex<FdState>,
    answered: Condvar,
}

impl std::fmt::Debug for ConnFd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.lock() {
            FdState::Open(fd) => write!(f, "{fd}"),
            FdState::Handed(fd) => write!(f, "{} (handed over)", fd.as_raw_fd()),
            FdState::Direct { index, .. } => write!(f, "direct slot {index}"),
            FdState::Gone(_) => write!(f, "closed"),
        }
    }
}

/// What the handle has to do to get a descriptor.
pub(crate) enum Lookup {
    /// Here it is.
    Ready(RawFd),
    /// Install slot `index`: on the reactor thread, inline ([`ConnFd::installed`] with the
    /// result); elsewhere, queue an install request ([`ConnFd::wait`] after).
    Install { index: u32, ask: bool },
}

impl ConnFd {
    /// A descriptor in the process's table.
    pub(crate) fn open(fd: RawFd) -> Self {
        Self::with(FdState::Open(fd))
    }

    /// A direct descriptor: slot `index` of the reactor ring's file table.
    pub(crate) fn direct(index: u32) -> Self {
        Self::with(FdState::Direct {
            index,
            asked: false,
            error: None,
        })
    }

    fn with(state: FdState) -> Self {
        Self {
            state: Mutex::new(state),
            answered: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FdState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The descriptor for `AsFd` and friends, or what to do to get one. With `remote` (the
    /// caller is not on the reactor thread), an install request is marked as asked, so
    /// that only one is queued however many threads wait.
    pub(crate) fn lookup(&self, remote: bool) -> io::Result<Lookup> {
        let mut st = self.lock();
        match &mut *st {
            FdState::Open(fd) => Ok(Lookup::Ready(*fd)),
            FdState::Handed(fd) => Ok(Lookup::Ready(fd.as_raw_fd())),
            FdState::Gone(errno) => Err(io::Error::from_raw_os_error(*errno)),
            FdState::Direct {
                index,
                asked,
                error,
            } => {
                let ask = remote && !*asked;
                if ask {
                    *asked = true;
                    *error = None;
                }
                Ok(Lookup::Install { index: *index, ask })
            }
        }
    }

    /// Waits (another thread) until the reactor answered the install request.
    pub(crate) fn wait(&self) -> io::Result<RawFd> {
        let mut st = self.lock();
        loop {
            match &*st {
                FdState::Open(fd) => return Ok(*fd),
                FdState::Handed(fd) => return Ok(fd.as_raw_fd()),
                FdState::Gone(errno) => return Err(io::Error::from_raw_os_error(*errno)),
                FdState::Direct {
                    asked: false,
                    error: Some(errno),
                    ..
                } => return Err(io::Error::from_raw_os_error(*errno)),
                FdState::Direct { .. } => {
                    st = self.answered.wait(st).unwrap_or_else(|p| p.into_inner());
                }
            }
        }
    }

    /// The slot's install finished with `result` (a new descriptor, owned by the reactor from
    /// now on, or the error); wakes whoever waits. Returns the descriptor in effect.
    pub(crate) fn installed(&self, result: io::Result<RawFd>) -> io::Result<RawFd> {
        let mut st = self.lock();
        let out = match (&mut *st, result) {
            (FdState::Direct { .. }, Ok(fd)) => {
                *st = FdState::Open(fd);
                Ok(fd)
            }
            (FdState::Direct { asked, error, .. }, Err(e)) => {
                *asked = false;
                *error = e.raw_os_error().or(Some(libc::EIO));
                Err(e)
            }
            // Installed meanwhile by someone else: keep the first descriptor.
            (FdState::Open(fd), Ok(extra)) => {
                crate::sys::close(extra);
                Ok(*fd)
            }
            (FdState::Open(fd), Err(_)) => Ok(*fd),
            (FdState::Handed(fd), _) => Ok(fd.as_raw_fd()),
            (FdState::Gone(errno), Ok(extra)) => {
                crate::sys::close(extra);
                Err(io::Error::from_raw_os_error(*errno))
            }
            (FdState::Gone(errno), Err(_)) => Err(io::Error::from_raw_os_error(*errno)),
        };
        drop(st);
        self.answered.notify_all();
        out
    }

    /// The slot of a direct descriptor not installed yet (the reactor's view).
    pub(crate) fn uninstalled_slot(&self) -> Option<u32> {
        match *self.lock() {
            FdState::Direct { index, .. } => Some(index),
            _ => None,
        }
    }

    /// The descriptor in the process's table, if there is one (the reactor's view).
    pub(crate) fn raw(&self) -> Option<RawFd> {
        match &*self.lock() {
            FdState::Open(fd) => Some(*fd),
            FdState::Handed(fd) => Some(fd.as_raw_fd()),
            _ => None,
        }
    }

    /// The reactor frees the connection and its handle is gone: returns the descriptor in the
    /// process's table for the reactor to close, if there is one. Nobody can reach it any more.
    pub(crate) fn release(&self) -> Option<RawFd> {
        let mut st = self.lock();
        let fd = match &*st {
            FdState::Open(fd) => Some(*fd),
            _ => None,
        };
        if !matches!(*st, FdState::Handed(_)) {
            *st = FdState::Gone(libc::EBADF);
        }
        drop(st);
        self.answered.notify_all();
        fd
    }

    /// The reactor lets go of a connection whose handle may still live: from now on the
    /// descriptor in the process's table (if it has one) belongs to the shared state and closes
    /// with it; without one, lookups fail with `errno`. Wakes whoever waits.
    pub(crate) fn hand_over(&self, errno: i32) {
        let mut st = self.lock();
        match &*st {
            FdState::Open(fd) => {
                // SAFETY: the reactor owned this open descriptor and gives it up here, without
                // closing it; from now on only this `OwnedFd` closes it.
                *st = FdState::Handed(unsafe { std::os::fd::FromRawFd::from_raw_fd(*fd) });
            }
            FdState::Handed(_) | FdState::Gone(_) => {}
            FdState::Direct { .. } => *st = FdState::Gone(errno),
        }
        drop(st);
        self.answered.notify_all();
    }
}

impl ConnFd {
    /// The reactor failed and leaks the connection (its descriptor stays open, unowned): a
    /// direct descriptor that was never installed can no longer be; whoever waits learns
    /// `errno`.
    pub(crate) fn orphan(&self, errno: i32) {
        let mut st = self.lock();
        if let FdState::Direct { .. } = *st {
            *st = FdState::Gone(errno);
        }
        drop(st);
        self.answered.notify_all();
    }
}

/// Borrows the descriptor of `conn` for as long as the handle is borrowed.
pub(crate) fn borrow(conn: &super::Connection) -> io::Result<BorrowedFd<'_>> {
    let fd = conn.shared.descriptor()?;
    // SAFETY: `fd` is open, and stays open while `conn` is borrowed: a descriptor `ConnFd` gives
    // out for a live handle is closed by the reactor only after the handle was dropped, and
    // handed to the shared state (which the handle keeps alive) if the reactor lets go first;
    // `Handed` never goes back. See the module documentation.
    Ok(unsafe { BorrowedFd::borrow_raw(fd) })
}
