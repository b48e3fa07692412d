//! Direct descriptors: the ring's table of registered files and the operations on its slots.
//!
//! With [`ReactorConfig::direct_descriptors`](crate::ReactorConfig::direct_descriptors) a
//! connection never enters the process's descriptor table: the accept puts it into a free slot
//! of the ring's table (`IORING_FILE_INDEX_ALLOC`), the acceptor passes it to a reactor's table
//! with `IORING_OP_MSG_RING` (`IORING_MSG_SEND_FD`), operations name the slot
//! (`IOSQE_FIXED_FILE`, no `fget`/`fput` per operation) and `IORING_OP_CLOSE` frees it. A real
//! descriptor is installed only when someone asks for one (`IORING_OP_FIXED_FD_INSTALL`).
//!
//! The install must answer at once (`AsFd` is synchronous): [`Ring::install_now`] submits it and
//! takes completions out of the queue until its own arrives, keeping the others, in order, for
//! the next reap. Code on a reactor thread reaches that reactor's ring through [`enter`]'s
//! thread-local.

use std::cell::RefCell;
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;

use io_uring::types::{self, Fd};
use io_uring::{opcode, squeue};

use super::token::{Kind, Token};
use super::{Ring, SockFd, on_fd};

/// `user_data` of an install answered inline (no other operation uses it).
const INSTALL: u64 = Token::engine(Kind::Install);

/// Submit-and-wait rounds [`Ring::install_now`] gives its answer to arrive. The kernel posts it
/// during the submit that issues it (or, with SQPOLL, as soon as its thread gets to it).
const INSTALL_ROUNDS: usize = 64;

impl Ring {
    /// Registers an empty table of `slots` direct descriptors (`IORING_REGISTER_FILES2`, sparse:
    /// Linux 5.19). The kernel refuses more slots than `RLIMIT_NOFILE` (`EMFILE`).
    pub(crate) fn register_file_table(&self, slots: u32) -> io::Result<()> {
        self.uring.submitter().register_files_sparse(slots)
    }

    /// Passes slot `src` of this ring's table into a free slot of `target_ring`'s table
    /// (`IORING_MSG_SEND_FD`, Linux 6.0); the target gets a completion with `target_user_data`
    /// and the new slot as its result. Then, hard-linked so it runs whatever the outcome, frees
    /// `src` here. Only failures complete in this ring: the hand-off's with `user_data`, the
    /// close's with `close_user_data`.
    pub(crate) fn msg_ring_fd(
        &self,
        target_ring: RawFd,
        src: u32,
        target_user_data: u64,
        user_data: u64,
        close_user_data: u64,
    ) -> io::Result<()> {
        let send = opcode::MsgRingSendFd::new(
            Fd(target_ring),
            types::Fixed(src),
            types::DestinationSlot::auto_target(),
            target_user_data,
        )
        .build()
        .flags(squeue::Flags::IO_HARDLINK | squeue::Flags::SKIP_SUCCESS)
        .user_data(user_data);
        let close = opcode::Close::new(types::Fixed(src))
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(close_user_data);
        self.push_linked(&send, &close)
    }

    /// Frees slot `index` of the table (`IORING_OP_CLOSE` on a direct descriptor, Linux 5.15):
    /// the socket closes unless an installed descriptor still refers to it. With `quiet` only a
    /// failure completes.
    pub(crate) fn close_fixed(&self, index: u32, quiet: bool, user_data: u64) -> io::Result<()> {
        let mut entry = opcode::Close::new(types::Fixed(index)).build();
        if quiet {
            entry = entry.flags(squeue::Flags::SKIP_SUCCESS);
        }
        self.push(&entry.user_data(user_data))
    }

    /// `shutdown(2)` as an operation (`IORING_OP_SHUTDOWN`, Linux 5.11), which also works on
    /// direct descriptors; `how` is `SHUT_WR` or `SHUT_RDWR`.
    pub(crate) fn shutdown(&self, fd: SockFd, how: i32, user_data: u64) -> io::Result<()> {
        let entry = on_fd!(fd, |f| opcode::Shutdown::new(f, how).build());
        self.push(&entry.user_data(user_data))
    }

    /// Installs slot `index` in the process's descriptor table (close-on-exec) and returns the
    /// new descriptor (`IORING_OP_FIXED_FD_INSTALL`, Linux 6.8). Submits what is queued and
    /// waits for the answer; completions that come before it are kept, in order, and handed out
    /// first by [`completion`](Self::completion). Call it only on the ring's thread, never while
    /// a [`Completions`](super::Completions) iterator is alive.
    pub(crate) fn install_now(&self, index: u32) -> io::Result<RawFd> {
        self.installs.set(self.installs.get() + 1);
        let entry = opcode::FixedFdInstall::new(types::Fixed(index), 0)
            .build()
            .user_data(INSTALL);
        self.push(&entry)?;
        for _ in 0..INSTALL_ROUNDS {
            if let Some(res) = self.take_until(INSTALL) {
                return if res >= 0 {
                    Ok(res)
                } else {
                    Err(io::Error::from_raw_os_error(-res))
                };
            }
            match self.uring.submitter().submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(
            "IORING_OP_FIXED_FD_INSTALL was not answered",
        ))
    }

    /// Descriptors installed with [`install_now`](Self::install_now) (attempts).
    pub(crate) fn installs(&self) -> u64 {
        self.installs.get()
    }

    /// Moves completions into the stash until the one with `user_data` (returned, not
    /// stashed); `None` once the queue is empty without it.
    fn take_until(&self, user_data: u64) -> Option<i32> {
        // SAFETY: no other completion queue view exists: `install_now`'s contract.
        let mut cq = unsafe { self.uring.completion_shared() };
        let mut stash = self.stash.borrow_mut();
        for e in &mut cq {
            if e.user_data() == user_data {
                return Some(e.result());
            }
            stash.push_back(e);
        }
        None
    }
}

thread_local! {
    /// The ring of the reactor running on this thread.
    static CURRENT: RefCell<Option<Rc<Ring>>> = const { RefCell::new(None) };
}

/// Makes `ring` this thread's (the reactor thread, for the guard's lifetime).
pub(crate) fn enter(ring: &Rc<Ring>) -> EnterGuard {
    CURRENT.with(|c| *c.borrow_mut() = Some(ring.clone()));
    EnterGuard(())
}

#[derive(Debug)]
pub(crate) struct EnterGuard(());

impl Drop for EnterGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.borrow_mut().take());
    }
}

/// Installs slot `index` of this thread's reactor ring as a descriptor ([`Ring::install_now`]).
/// `None` off a reactor thread (or after its ring is gone).
pub(crate) fn install_here(index: u32) -> Option<io::Result<RawFd>> {
    let ring = CURRENT.with(|c| c.borrow().clone())?;
    Some(ring.install_now(index))
}
