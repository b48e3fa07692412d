//! The receive path: one multishot receive per connection from the provided-buffer ring, paused
//! at the per-connection bound (`pressure.rs` decides how much a connection may hold), re-armed
//! after `-ENOBUFS` once buffers come back; a watch notices closes meanwhile (`watch.rs`). With
//! bundles on, one completion may carry several buffers.

use io_uring::cqueue;

use super::conn::{Life, RecvState};
use super::{BGID, Reactor, fatal};
use crate::buf_ring::{BidError, RecvItem, probe};
use crate::config::ReactorConfig;
use crate::error::{CloseReason, Error, Result};
use crate::ring::token::{ConnectionId, Kind, Token};

/// How receives are armed, and the pieces of the completion being handled.
pub(super) struct Receiving {
    /// Arm bundle receives (`IORING_RECVSEND_BUNDLE`).
    bundle: bool,
    /// The pieces of one completion (one, or several with a bundle), reused.
    items: Vec<RecvItem>,
}

impl Receiving {
    /// Bundles if configured and the kernel handles them (see [`probe::bundles`]); the reason
    /// is logged otherwise.
    pub(super) fn new(config: &ReactorConfig, uring: &io_uring::IoUring, index: usize) -> Self {
        let bundle = config.recv_ring.bundle
            && match probe::bundles(uring, config.incremental_buffer_consumption) {
                Ok(()) => true,
                Err(why) => {
                    tracing::warn!(
                        reactor = index,
                        %why,
                        "receive bundles off: receiving one buffer per completion"
                    );
                    false
                }
            };
        Self {
            bundle,
            items: Vec::with_capacity(if bundle { 64 } else { 1 }),
        }
    }
}

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
            .recv_multi(
                fd,
                BGID,
                limit,
                self.receiving.bundle,
                Token::conn(Kind::Recv, id),
            )
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

    /// Records the buffers a receive completion carries in `self.receiving.items`.
    fn take_buffers(&mut self, res: i32, flags: u32) -> Result<()> {
        let items = &mut self.receiving.items;
        items.clear();
        let Some(bid) = cqueue::buffer_select(flags) else {
            return Ok(());
        };
        let buf_more = cqueue::buffer_more(flags);
        let taken = if res > 0 && self.receiving.bundle {
            self.bufs.on_recv_bundle(bid, res as u32, buf_more, items)
        } else if res > 0 {
            self.bufs
                .on_recv(bid, res as u32, buf_more)
                .map(|item| items.push(item))
        } else if res == 0 && !self.incremental && !self.receiving.bundle {
            // The kernel consumed a buffer without writing into it: give it straight back. (A
            // bundle takes no buffer for an empty completion, and an incremental buffer stays
            // the kernel's.)
            self.bufs
                .on_recv(bid, 0, false)
                .map(|item| self.bufs.release(&item))
        } else {
            Ok(())
        };
        taken.map_err(|e| self.bid_error(e))
    }

    pub(super) fn on_recv(&mut self, id: ConnectionId, res: i32, flags: u32) -> Result<()> {
        let more = cqueue::more(flags);
        self.take_buffers(res, flags)?;
        let cap = self.recv_cap();
        let Some(conn) = self.conns.get_mut(id) else {
            self.stats.stale_completions += 1;
            for item in &self.receiving.items {
                self.bufs.release(item);
            }
            return Ok(());
        };
        let limited = matches!(conn.recv, RecvState::Armed { limited: true });
        let mut pause = false;
        if !self.receiving.items.is_empty() {
            self.recv_limit_works |= limited;
            conn.last_active = self.now;
            conn.request_since.get_or_insert(self.now);
            let n = self.receiving.items.len() as u32;
            conn.held += n;
            self.stats.bytes_received += res as u64;
            self.stats.recv_bundles += u64::from(n > 1);
            for &item in &self.receiving.items {
                conn.shared.deliver(item);
            }
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
