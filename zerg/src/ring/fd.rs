//! [`SockFd`]: how an operation names its socket — a descriptor in the process's table, or a
//! slot in the ring's table of direct descriptors.

use std::os::fd::RawFd;

/// A socket as io_uring operations name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SockFd {
    /// A descriptor in the process's descriptor table.
    Raw(RawFd),
    /// A direct descriptor: slot `n` of the ring's registered file table (`IOSQE_FIXED_FILE`).
    /// It exists only in that ring; the process's table has no entry for it.
    Fixed(u32),
}

/// Builds an entry whose target is `$fd`: `$f` is bound to `types::Fd` or `types::Fixed` (the
/// io-uring crate sets `IOSQE_FIXED_FILE` for the latter).
macro_rules! on_fd {
    ($fd:expr, |$f:ident| $build:expr) => {
        match $fd {
            $crate::ring::SockFd::Raw(raw) => {
                let $f = io_uring::types::Fd(raw);
                $build
            }
            $crate::ring::SockFd::Fixed(index) => {
                let $f = io_uring::types::Fixed(index);
                $build
            }
        }
    };
}

pub(crate) use on_fd;

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::opcode;

    #[test]
    fn fixed_targets_set_the_fixed_file_flag() {
        let fixed = on_fd!(SockFd::Fixed(7), |f| opcode::Shutdown::new(f, 1).build());
        let raw = on_fd!(SockFd::Raw(7), |f| opcode::Shutdown::new(f, 1).build());
        let flags = |e: &io_uring::squeue::Entry| {
            // SAFETY: an entry is 64 bytes of plain integers; byte 1 is `flags`.
            unsafe { (*std::ptr::from_ref(e).cast::<[u8; 64]>())[1] }
        };
        assert_eq!(flags(&fixed) & 1, 1, "IOSQE_FIXED_FILE on a fixed target");
        assert_eq!(
            flags(&raw) & 1,
            0,
            "no IOSQE_FIXED_FILE on a raw descriptor"
        );
    }
}
