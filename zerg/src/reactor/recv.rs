//! The receive path: one multishot receive per connection from the provided-buffer ring, paused
//! at the per-connection bound (`pressure.rs` decides how much a connection may hold), re-armed
//! after `-ENOBUFS` once buffers come back; a watch notices closes meanwhile (`watch.rs`).

use io_uring::cqueue;

use super::conn::{Life, RecvState};
use super::{BGID, Reactor, fatal};
use crate::buf_ring::BidError;
use crate::error::{CloseReason, Error, Result};
use crate::ring::token::{ConnectionId, Kind, Token};

impl Reactor {
    pub(super) fn arm_recv(&mut self, id: ConnectionId) -> Result<()> {
        let cap = self.recv_cap();
        let Some(conn) = self.conns.get_mut(id) else {
            return Ok(());
        };
        conn.ops += 1;
        let fd = conn.fd;
        // At most the buffers this connection may still take (at least one, so it progresses):
        // its bound, or its quota while the ring is low.
        let limit = if self.recv_limit {
            cap.saturating_sub(conn.held)
                .max(1)
                .saturating_mul(self.buf_size)
        } else {
            0
        };
        conn.recv = RecvState::Armed { limited: limit > 0 };
        self.ring
            .recv_multi(fd, BGID, limit, Token::conn(Kind::Recv, id))
            .map_err(|e| fatal(e, "arm recv"))
    }

    /// Cancels the armed receive of `id` (its completion ends the multishot receive).
    pub(super) fn cancel_recv(&mut self, id: ConnectionId) -> Result<()> {
        let Some(conn) = self.conns.get_mut(id) else {
            return Ok(());
        };
        conn.recv = RecvState::Cancelling;
        conn.ops += 1;
        self.ring
            .cancel(Token::conn(Kind::Recv, id), Token::conn(Kind::Cancel, id))
            .map_err(|e| fatal(e, "cancel recv"))
    }

    fn bid_error(&self, e: BidError) -> Error {
        Error::ReactorFailed {
            reactor: self.index,
            reason: e.to_string(),
        }
    }

    pub(super) fn on_recv(&mut self, id: ConnectionId, res: i32, flags: u32) -> Result<()> {
        let more = cqueue::more(flags);
        let item = match cqueue::buffer_select(flags) {
            Some(bid) if res > 0 => Some(
                self.bufs
                    .on_recv(bid, res as u32, cqueue::buffer_more(flags))
                    .map_err(|e| self.bid_error(e))?,
            ),
            Some(bid) if res == 0 && !self.incremental => {
                // The kernel consumed a buffer without writing into it: give it straight back.
                let item = self
                    .bufs
                    .on_recv(bid, 0, false)
                    .map_err(|e| self.bid_error(e))?;
                self.bufs.release(&item);
                None
            }
            _ => None,
        };
        let cap = self.recv_cap();
        let Some(conn) = self.conns.get_mut(id) else {
            self.stats.stale_completions += 1;
            if let Some(item) = item {
                self.bufs.release(&item);
            }
            return Ok(());
        };
        let limited = matches!(conn.recv, RecvState::Armed { limited: true });
        let mut pause = false;
        if let Some(item) = item {
            self.recv_limit_works |= limited;
            conn.last_active = self.now;
            conn.request_since.get_or_insert(self.now);
            conn.held += 1;
            self.stats.bytes_received += u64::from(item.len);
            conn.shared.deliver(item);
            pause = more && conn.held >= cap && conn.recv_armed() && !conn.is_closing();
        }
        if pause {
            // Counted in `recv_pauses` once the receive has ended (`recv_ended`).
            self.cancel_recv(id)?;
        }
        if more {
            return Ok(());
        }
        // The multishot receive ended.
        let conn = self.conns.get_mut(id).expect("looked up above");
        conn.ops -= 1;
        conn.recv = RecvState::Idle;
        if !conn.is_open() {
            conn.recv = RecvState::Ended;
            self.maybe_finish_close(id);
            return Ok(());
        }
        match res {
            r if r > 0 || r == -libc::ECANCELED => self.recv_ended(id),
            0 => {
                conn.recv = RecvState::Ended;
                conn.shared.end_read(CloseReason::PeerClosed);
                Ok(())
            }
            r if r == -libc::ENOBUFS => {
                self.stats.enobufs += 1;
                conn.recv = RecvState::Starved;
                self.starved.push_back(id);
                self.arm_watch(id)
            }
            r if r == -libc::EINVAL && limited && !self.recv_limit_works => {
                // The kernel predates IORING_RECV_MSHOT_LIM: receive without the limit.
                if self.recv_limit {
                    tracing::debug!(
                        "multishot receive limit unsupported (Linux < 6.17); pausing by cancellation only"
                    );
                    self.recv_limit = false;
                }
                self.recv_ended(id)
            }
            r => {
                conn.recv = RecvState::Ended;
                conn.life = Life::Failed;
                let reason = CloseReason::from_errno(-r);
                tracing::debug!(conn = %id, %reason, "receive failed; the connection ends");
                conn.shared.end_read(reason);
                conn.shared.end_write(reason);
                Ok(())
            }
        }
    }

    /// The receive of a live connection ended without EOF or error: pause or re-arm.
    fn recv_ended(&mut self, id: ConnectionId) -> Result<()> {
        let cap = self.recv_cap();
        let Some(conn) = self.conns.get_mut(id) else {
            return Ok(());
        };
        if conn.held >= cap {
            self.pause_recv(id)
        } else {
            self.stats.recv_rearms += 1;
            self.arm_recv(id)
        }
    }

    /// Re-arms receives that ended with `-ENOBUFS`, as many as the ring has free buffers, in
    /// arrival order; connections holding their cap (their quota, while the ring is low) pause
    /// instead.
    pub(super) fn rearm_starved(&mut self) -> Result<()> {
        let mut budget = self.bufs.free();
        while budget > 0 {
            let Some(id) = self.starved.pop_front() else {
                break;
            };
            let cap = self.recv_cap();
            let Some(conn) = self.conns.get_mut(id) else {
                continue;
            };
            if conn.recv != RecvState::Starved || !conn.is_open() {
                continue;
            }
            if conn.held >= cap {
                self.pause_recv(id)?;
                continue;
            }
            budget -= 1;
            self.stats.recv_rearms += 1;
            self.arm_recv(id)?;
        }
        Ok(())
    }

    /// `n` pieces of `id` came back to the ring: re-arms a paused receive once the connection
    /// holds few enough buffers.
    pub(super) fn returned(&mut self, id: ConnectionId, n: u32) -> Result<()> {
        let Some(conn) = self.conns.get_mut(id) else {
            return Ok(());
        };
        conn.held = conn.held.saturating_sub(n);
        let (held, paused) = (conn.held, conn.recv == RecvState::Paused && conn.is_open());
        if paused && self.may_resume(held) {
            self.stats.recv_rearms += 1;
            self.arm_recv(id)?;
        }
        Ok(())
    }
}
