//! Fair use of the receive ring: the per-connection bound, and what happens when the ring runs
//! low.
//!
//! Every connection may hold up to `max_held` buffers (pieces, in incremental mode): unread
//! input plus input staged for a zero-copy send. Its receive is armed with a byte limit of what
//! it may still take, so the kernel stops it at the bound by itself. When fewer than `reserve`
//! buffers are free the ring is *low*: only connections holding fewer than `quota` buffers (a
//! quarter of the bound) receive, limited to the quota; armed receives of heavier connections are
//! cancelled, and they pause until the ring has twice the reserve free again or they hold less
//! than the quota. Receives starved by `-ENOBUFS` are re-armed in arrival order, skipping the
//! heavy ones while the ring is low. docs/tuning.md states the guarantee.

use super::Reactor;
use super::conn::RecvState;
use crate::config::ReactorConfig;
use crate::error::Result;
use crate::log_throttle::warn_throttled;
use crate::ring::token::ConnectionId;

/// The ring-low policy of one reactor.
pub(super) struct Pressure {
    /// Free buffers below which the ring is low (0: never).
    reserve: u32,
    /// While low, connections holding this many buffers or more do not receive.
    quota: u32,
    low: bool,
}

impl Pressure {
    pub(super) fn new(config: &ReactorConfig) -> Self {
        Self {
            reserve: config.effective_recv_reserve_buffers(),
            quota: (config.effective_max_buffers_per_connection() / 4).max(1),
            low: false,
        }
    }
}

impl Reactor {
    /// Most buffers a connection may hold right now: the bound, or the quota while the ring is
    /// low.
    pub(super) fn recv_cap(&self) -> u32 {
        if self.pressure.low {
            self.pressure.quota.min(self.max_held)
        } else {
            self.max_held
        }
    }

    /// Whether a paused receive holding `held` buffers may be armed again: below the quota while
    /// the ring is low, else at half the bound (so a slow reader is not re-armed per buffer).
    pub(super) fn may_resume(&self, held: u32) -> bool {
        if self.pressure.low {
            held < self.recv_cap()
        } else {
            held <= self.max_held / 2
        }
    }

    /// The receive of `id` is not armed because the connection holds enough: pause it and watch
    /// for the peer closing meanwhile.
    pub(super) fn pause_recv(&mut self, id: ConnectionId) -> Result<()> {
        let Some(conn) = self.conns.get_mut(id) else {
            return Ok(());
        };
        conn.recv = RecvState::Paused;
        self.stats.recv_pauses += 1;
        self.arm_watch(id)
    }

    /// Enters or leaves the low state; once per loop iteration.
    pub(super) fn check_pressure(&mut self) -> Result<()> {
        let reserve = self.pressure.reserve;
        if reserve == 0 {
            return Ok(());
        }
        let free = self.bufs.free();
        if !self.pressure.low && free < reserve {
            self.enter_low(free)
        } else if self.pressure.low && free >= (2 * reserve).min(self.bufs.total()) {
            self.leave_low(free)
        } else {
            Ok(())
        }
    }

    /// Heavy connections stop receiving: their armed receives are cancelled (they end and
    /// pause), so what is left of the ring goes to light connections.
    fn enter_low(&mut self, free: u32) -> Result<()> {
        self.pressure.low = true;
        self.stats.ring_low += 1;
        let quota = self.recv_cap();
        warn_throttled!(
            self.logs.ring_low,
            free,
            reserve = self.pressure.reserve,
            quota,
            "receive ring low: connections holding the quota or more pause (see buffer_ring_entries)"
        );
        for id in self.conns.ids() {
            let Some(conn) = self.conns.get_mut(id) else {
                continue;
            };
            if conn.recv_armed() && conn.held >= quota && !conn.is_closing() {
                self.cancel_recv(id)?;
            }
        }
        Ok(())
    }

    /// The ring recovered: connections paused for it receive again (those still holding more
    /// than half their bound wait for their handler, as usual).
    fn leave_low(&mut self, free: u32) -> Result<()> {
        self.pressure.low = false;
        if self.logs.ring_low.last_warned() {
            tracing::info!(free, "receive ring recovered");
        } else {
            tracing::debug!(free, "receive ring recovered");
        }
        for id in self.conns.ids() {
            let Some(conn) = self.conns.get_mut(id) else {
                continue;
            };
            let held = conn.held;
            if conn.recv == RecvState::Paused && conn.is_open() && self.may_resume(held) {
                self.stats.recv_rearms += 1;
                self.arm_recv(id)?;
            }
        }
        Ok(())
    }
}
