//! A reactor's descriptors: the file table of direct descriptors (set up, probed, with a
//! fallback to plain descriptors), descriptors installed on demand, shutdowns and closes on
//! either kind, and what happens to a descriptor when the reactor lets go of a connection.
//!
//! Closing keeps docs/architecture.md, rule 11: a connection's descriptor — its slot in the
//! table, or its descriptor in the process's table — is closed only once every operation of the
//! connection completed. A slot's close is itself an operation (`IORING_OP_CLOSE`): the
//! connection is freed, and its place under the caps given back, when it completed, so a
//! hand-off into this ring always finds a free slot.
//!
//! When the reactor lets go of a connection whose handle still lives (the engine stops), the
//! socket is shut down and its descriptor handed to the handle's side ([`ConnFd`]), so a
//! descriptor the handle borrowed stays open; a direct descriptor is installed first.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Reactor;
use super::conn::Conn;
use crate::config::ReactorConfig;
use crate::conn::{ConnFd, ConnShared};
use crate::error::CloseReason;
use crate::ring::token::{ConnectionId, Kind, Token};
use crate::ring::{Ring, SendBuf, SockFd};
use crate::sys;

/// Slots beyond `max_connections_per_reactor` in a reactor's file table: connections accepted
/// past the caps wait there (per-reactor accept) until they get a place.
fn table_headroom(max_conns: u32) -> u32 {
    (max_conns / 8).max(64)
}

/// How long an exiting reactor waits for outstanding zero-copy notifications.
const GRAVE_WAIT: Duration = Duration::from_millis(100);

/// The kernel features a reactor's connections use, as set up and probed at its start.
#[derive(Debug, Default)]
pub(super) struct Features {
    /// The ring has a file table: accepted connections are direct descriptors.
    pub(super) direct: bool,
    /// Sends of at least this many bytes are zero-copy (0: never).
    pub(super) zc_threshold: usize,
    /// Send buffers of freed connections whose zero-copy notifications are outstanding: the
    /// kernel may still read them. A notification arrives with the freed connection's token.
    pub(super) graves: Vec<(ConnectionId, SendBuf)>,
}

impl Features {
    /// Registers the file table and probes zero-copy sends, as `config` asks; falls back (and
    /// says why) where the kernel or the limits do not allow it.
    pub(super) fn setup(ring: &Ring, config: &ReactorConfig) -> Self {
        let optional = sys::ring::optional(ring.uring());
        let mut features = Features::default();
        if config.direct_descriptors {
            features.direct = setup_table(ring, config, optional);
        }
        if config.send_zerocopy_threshold > 0 {
            if optional.send_zc {
                features.zc_threshold = config.send_zerocopy_threshold;
            } else {
                tracing::warn!(
                    "send_zerocopy_threshold: this kernel lacks IORING_OP_SEND_ZC / SENDMSG_ZC \
                     (Linux 6.0 / 6.1); sending with copies"
                );
            }
        }
        features
    }
}

/// Registers a file table that holds every connection the reactor may have; `false` (logged)
/// if the kernel lacks what direct descriptors need or refuses the table.
fn setup_table(ring: &Ring, config: &ReactorConfig, optional: sys::ring::Optional) -> bool {
    if !optional.fixed_fd_install || !optional.shutdown {
        tracing::warn!(
            "direct_descriptors: this kernel lacks IORING_OP_FIXED_FD_INSTALL (Linux 6.8); \
             using plain descriptors"
        );
        return false;
    }
    let max = config.max_connections_per_reactor;
    let mut last = None;
    // With headroom first; a table of exactly the cap still works (connections accepted past
    // the caps then wait in the backlog instead of the table).
    for slots in [max.saturating_add(table_headroom(max)), max] {
        match ring.register_file_table(slots) {
            Ok(()) => {
                tracing::debug!(slots, "direct descriptors: file table");
                return true;
            }
            Err(e) => last = Some(e),
        }
    }
    let e = last.expect("tried at least once");
    if e.raw_os_error() == Some(libc::EMFILE) {
        tracing::warn!(
            slots = max,
            "direct_descriptors: the kernel refuses a file table larger than RLIMIT_NOFILE; raise \
             it to at least max_connections_per_reactor or lower that; using plain descriptors"
        );
    } else {
        tracing::warn!(error = %e, "direct_descriptors: registering the file table failed; using plain descriptors");
    }
    false
}

impl Reactor {
    /// A completion of this file's operations.
    pub(super) fn on_fd_op(&mut self, token: Token, res: i32) -> crate::error::Result<()> {
        match token.kind {
            Kind::NewDirect if res >= 0 => return self.adopt(SockFd::Fixed(res as u32)),
            Kind::CloseSlot => self.on_close_slot(token.id, res),
            Kind::ShutdownWrite | Kind::ShutdownBoth => self.on_shutdown(token.kind, token.id, res),
            Kind::QuietClose => {
                tracing::warn!(error = %io::Error::from_raw_os_error(-res), "close of a direct descriptor failed");
            }
            _ => {}
        }
        Ok(())
    }

    /// The shared state of a new connection on `fd`.
    pub(super) fn conn_shared(&self, id: ConnectionId, fd: SockFd) -> Arc<ConnShared> {
        let fd = match fd {
            SockFd::Raw(fd) => ConnFd::open(fd),
            SockFd::Fixed(index) => ConnFd::direct(index),
        };
        Arc::new(ConnShared::new(id, fd, self.shared.clone()))
    }

    /// Closes a descriptor no connection was made of (accepted past the caps, or shed).
    pub(super) fn discard_fd(&self, fd: SockFd) {
        match fd {
            SockFd::Raw(fd) => sys::close(fd),
            SockFd::Fixed(index) => {
                if let Err(e) = self
                    .ring
                    .close_fixed(index, true, Token::engine(Kind::QuietClose))
                {
                    tracing::warn!(error = %e, "close of a direct descriptor");
                }
            }
        }
    }

    /// A descriptor of `id` in the process's table, installed now if the connection has only a
    /// direct descriptor (for the system calls that need one: `SIOCINQ`, `SO_ERROR`).
    pub(super) fn real_fd(&mut self, id: ConnectionId) -> io::Result<RawFd> {
        let conn = self
            .conns
            .get_mut(id)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
        if let SockFd::Raw(fd) = conn.fd {
            return Ok(fd);
        }
        if let Some(fd) = conn.shared.fd.raw() {
            return Ok(fd);
        }
        let SockFd::Fixed(index) = conn.fd else {
            unreachable!("matched above")
        };
        conn.shared.fd.installed(self.ring.install_now(index))
    }

    /// A handle on another thread asks for `id`'s descriptor: install it and answer.
    pub(super) fn on_install_request(&mut self, id: ConnectionId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let result = match conn.shared.fd.uninstalled_slot() {
            Some(index) => self.ring.install_now(index),
            // Installed meanwhile (or not a direct descriptor): just answer.
            None => Err(io::Error::from_raw_os_error(libc::EALREADY)),
        };
        if let Err(e) = conn.shared.fd.installed(result) {
            tracing::debug!(conn = %id, error = %e, "installing a direct descriptor failed");
        }
    }

    /// Shuts `id`'s socket down (`how`: `SHUT_WR` or `SHUT_RDWR`). A plain descriptor at once
    /// (returns the result); a direct one as an operation counted in the connection's
    /// operations, answered in [`on_shutdown`](Self::on_shutdown) (returns `None`).
    pub(super) fn shutdown_fd(
        &mut self,
        id: ConnectionId,
        how: i32,
    ) -> Option<Result<(), CloseReason>> {
        let conn = self.conns.get_mut(id)?;
        let reason = |e: io::Error| CloseReason::from_errno(e.raw_os_error().unwrap_or(libc::EIO));
        match conn.fd {
            SockFd::Raw(fd) => Some(if how == libc::SHUT_WR {
                sys::shutdown_write(fd).map_err(reason)
            } else {
                sys::shutdown_both(fd).map_err(reason)
            }),
            fd @ SockFd::Fixed(_) => {
                let kind = if how == libc::SHUT_WR {
                    Kind::ShutdownWrite
                } else {
                    Kind::ShutdownBoth
                };
                match self.ring.shutdown(fd, how, Token::conn(kind, id)) {
                    Ok(()) => {
                        conn.ops += 1;
                        None
                    }
                    Err(e) => Some(Err(reason(e))),
                }
            }
        }
    }

    /// A shutdown of a direct descriptor completed.
    pub(super) fn on_shutdown(&mut self, kind: Kind, id: ConnectionId, res: i32) {
        let Some(conn) = self.conns.get_mut(id) else {
            self.stats.stale_completions += 1;
            return;
        };
        conn.ops -= 1;
        if kind == Kind::ShutdownWrite {
            let result = if res < 0 && !conn.is_closing() {
                Err(CloseReason::from_errno(-res))
            } else {
                Ok(())
            };
            conn.shared.shut_down(result);
        } else if res < 0 && res != -libc::ENOTCONN {
            tracing::debug!(conn = %id, error = %io::Error::from_raw_os_error(-res), "shutdown of a failed connection");
        }
        self.maybe_finish_close(id);
    }

    /// Lets go of `id`'s descriptors before its slot is freed (every operation completed).
    /// A direct descriptor's slot is freed with a quiet `IORING_OP_CLOSE` (only a failure
    /// completes, [`on_close_slot`](Self::on_close_slot)): the close needs no answer, and a
    /// completion per connection would wake the reactor once more per connection. The table slot
    /// stays taken until the close ran, so no accept can reuse it before.
    pub(super) fn release_fds(&mut self, id: ConnectionId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        match conn.fd {
            SockFd::Fixed(index) => {
                if conn.handle_alive {
                    // The handle may ask for the descriptor later: install it while the slot
                    // is still there.
                    self.hand_over(id, true);
                }
                let conn = self.conns.get_mut(id).expect("looked up above");
                if let Err(e) = self
                    .ring
                    .close_fixed(index, true, Token::conn(Kind::CloseSlot, id))
                {
                    // Only a broken ring refuses an entry; the slot dies with the ring.
                    tracing::error!(error = %e, "close of a direct descriptor");
                }
                if !conn.handle_alive
                    && let Some(fd) = conn.shared.fd.release()
                {
                    sys::close(fd);
                }
            }
            SockFd::Raw(_) => {
                if conn.handle_alive {
                    self.hand_over(id, false);
                } else if let Some(fd) = conn.shared.fd.release() {
                    sys::close(fd);
                }
            }
        }
    }

    /// The close of a freed connection's direct descriptor failed (a success does not
    /// complete).
    pub(super) fn on_close_slot(&mut self, id: ConnectionId, res: i32) {
        if res < 0 {
            tracing::warn!(conn = %id, error = %io::Error::from_raw_os_error(-res), "close of a direct descriptor failed");
        }
    }

    /// The reactor lets go of `id` while its handle may live: shuts the socket down (the peer
    /// sees the close) and hands its descriptor to the handle's side, installing a direct one
    /// first when `install` (a failed reactor does not: its ring may not answer).
    pub(super) fn hand_over(&mut self, id: ConnectionId, install: bool) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let fd = match conn.fd {
            SockFd::Raw(fd) => Ok(fd),
            SockFd::Fixed(index) => match conn.shared.fd.raw() {
                Some(fd) => Ok(fd),
                None if install => conn.shared.fd.installed(self.ring.install_now(index)),
                None => Err(io::Error::from_raw_os_error(libc::ENOTCONN)),
            },
        };
        match fd {
            Ok(fd) => {
                if let Err(e) = sys::shutdown_both(fd)
                    && e.raw_os_error() != Some(libc::ENOTCONN)
                {
                    tracing::debug!(error = %e, "shutdown of a connection handed over");
                }
                conn.shared.fd.hand_over(libc::ENOTCONN);
            }
            Err(e) => {
                tracing::debug!(conn = %id, error = %e, "no descriptor to hand over");
                conn.shared
                    .fd
                    .hand_over(e.raw_os_error().unwrap_or(libc::ENOTCONN));
            }
        }
    }

    /// Keeps the send buffer of a freed connection whose zero-copy notifications are
    /// outstanding, until they arrived.
    pub(super) fn bury_send(&mut self, id: ConnectionId, conn: &mut Conn) {
        if conn.send.notifications() > 0 {
            self.features
                .graves
                .push((id, std::mem::take(&mut conn.send)));
        }
    }

    /// A zero-copy notification for a freed connection: once its buffer's last one arrived,
    /// its received pieces go back to the ring and the memory is freed. `false` if no buried
    /// buffer waits for it (a stale completion).
    pub(super) fn grave_notified(&mut self, id: ConnectionId, copied: bool) -> bool {
        let Some(i) = self.features.graves.iter().position(|(g, _)| *g == id) else {
            return false;
        };
        self.stats.zc_copied += u64::from(copied);
        let send = &mut self.features.graves[i].1;
        send.discard();
        send.notified(0);
        if send.notifications() == 0 {
            let (_, mut send) = self.features.graves.swap_remove(i);
            for item in send.done().drain(..) {
                self.bufs.release(&item);
            }
        }
        true
    }

    /// Before the ring goes (the reactor exits): waits briefly for the zero-copy notifications
    /// of buried send buffers, then leaks what is left rather than free memory the kernel may
    /// still read. (A notification comes once the peer acknowledged the bytes: one that stopped
    /// reading may never send it, and a stop must not wait for it.)
    pub(super) fn wait_for_graves(&mut self) {
        let deadline = Instant::now() + GRAVE_WAIT;
        while !self.features.graves.is_empty() && Instant::now() < deadline {
            let _ = self.ring.submit_wait_for(Duration::from_millis(50));
            let pending: Vec<_> = self.ring.completion().collect();
            for cqe in pending {
                let _ = self.dispatch(cqe.user_data(), cqe.result(), cqe.flags());
            }
        }
        if !self.features.graves.is_empty() {
            tracing::debug!(
                buffers = self.features.graves.len(),
                "zero-copy notifications still outstanding at exit; leaking their send buffers"
            );
            // `SendBuf`'s drop leaks the memory of a buffer the kernel may still read.
            self.features.graves.clear();
        }
    }
}
