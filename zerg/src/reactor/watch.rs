//! Close detection while a connection does not receive.
//!
//! A paused receive (the connection holds its share of the ring) or a starved one (`-ENOBUFS`)
//! is not armed, so it would learn of a FIN, a reset or a socket error only when it is armed
//! again — never, if its handler waits for more bytes. The first time a connection's receive
//! stops, a multishot poll for `POLLRDHUP | POLLERR | POLLHUP` starts watching the socket. It
//! stays armed until the connection closes (cheaper than a cancel and a re-arm per pause; it
//! completes only on wake-ups carrying those events, not on data), and what it reports counts
//! only while the receive is not armed — an armed receive reports closes itself:
//!
//! - reset or error: reads and writes end with the reason at once (a handler waiting on either
//!   learns it); the connection's buffers come back when the handler drops them.
//! - FIN with nothing left unread in the socket: every byte before it was delivered, so reads
//!   end with [`CloseReason::PeerClosed`] after them. Writing goes on (half-close).
//! - FIN with bytes still in the socket: nothing changes for the handler; those bytes, then end
//!   of file, are received once the receive is armed again. A reset still ends it at once.
//!
//! `SO_ERROR` and `SIOCINQ` are system calls on a descriptor: a connection on a direct
//! descriptor gets one installed first (`fds.rs`; this path is rare).

use io_uring::cqueue;

use super::Reactor;
use super::conn::{Life, RecvState};
use crate::error::{CloseReason, Result};
use crate::ring::token::{ConnectionId, Kind, Token};
use crate::sys;

const RDHUP: u32 = libc::POLLRDHUP as u32;
const HUP: u32 = libc::POLLHUP as u32;
const ERR: u32 = libc::POLLERR as u32;

impl Reactor {
    /// Starts watching `id` if its receive is paused or starved (no-op if already watched).
    pub(super) fn arm_watch(&mut self, id: ConnectionId) -> Result<()> {
        let Some(conn) = self.conns.get_mut(id) else {
            return Ok(());
        };
        let idle = matches!(conn.recv, RecvState::Paused | RecvState::Starved);
        if conn.watch || !idle || !conn.is_open() {
            return Ok(());
        }
        conn.watch = true;
        conn.ops += 1;
        let fd = conn.fd;
        self.ring
            .poll_multi(fd, RDHUP | HUP | ERR, Token::conn(Kind::Watch, id))
            .map_err(|e| super::fatal(e, "arm the close watch"))
    }

    pub(super) fn on_watch(&mut self, id: ConnectionId, res: i32, flags: u32) -> Result<()> {
        let Some(conn) = self.conns.get_mut(id) else {
            self.stats.stale_completions += 1;
            return Ok(());
        };
        let more = cqueue::more(flags);
        if !more {
            conn.ops -= 1;
            conn.watch = false;
        }
        if res < 0 || !conn.is_open() {
            // Cancelled (closing), or the connection failed meanwhile.
            self.maybe_finish_close(id);
            return Ok(());
        }
        if matches!(conn.recv, RecvState::Paused | RecvState::Starved) {
            self.watched(id, res as u32);
        }
        // The kernel ended the poll (it should not while the socket lives): watch again.
        if more { Ok(()) } else { self.arm_watch(id) }
    }

    /// `events` happened on `id` while its receive was paused or starved.
    fn watched(&mut self, id: ConnectionId, events: u32) {
        let fd = self.real_fd(id);
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if events & ERR != 0 {
            let errno = fd
                .and_then(sys::take_socket_error)
                .ok()
                .flatten()
                .filter(|&e| e != 0)
                .unwrap_or(libc::ECONNRESET);
            let reason = CloseReason::from_errno(errno);
            self.stats.paused_closes += 1;
            tracing::debug!(conn = %id, %reason, "connection failed while its receive was paused");
            conn.recv = RecvState::Ended;
            conn.life = Life::Failed;
            conn.shared.end_read(reason);
            conn.shared.end_write(reason);
        } else if events & (RDHUP | HUP) != 0 && !conn.peer_fin {
            self.stats.paused_closes += 1;
            if matches!(fd.and_then(sys::pending_input), Ok(0)) {
                // Everything before the FIN was delivered.
                conn.recv = RecvState::Ended;
                conn.shared.end_read(CloseReason::PeerClosed);
            } else {
                conn.peer_fin = true;
            }
        }
    }
}
