//! Fair use of the receive ring: the per-connection bound, and what happens when the ring runs
//! low.
//!
//! Every connection may hold up to `max_held` buffers (pieces, in incremental mode): unread
//! input plus input staged for a zero-copy send. Its receive is armed with a byte limit of what
//! it may still take, so the kernel stops it at the bound by itself. When fewer than `reserve`
//! buffers are free and the ring has grown to its capacity, the ring is *low*: only connections
//! holding fewer than `quota` buffers (a quarter of the bound) receive, limited to the quota;
//! armed receives of heavier connections are cancelled, and they pause until the ring has twice
//! the reserve free again or they hold less than the quota. Receives starved by `-ENOBUFS` are
//! re-armed in arrival order, skipping the heavy ones while the ring is low. docs/tuning.md
//! states the guarantee.
//!
//! Before any of that the ring grows: only part of it circulates at first, and whenever fewer
//! than a quarter of the circulating buffers (or fewer than the reserve) are free, the
//! circulation doubles, up to the whole ring. After a period (`recv_ring.shrink_after`) in which
//! at most a quarter was held at once, it shrinks to twice that peak (at least the initial
//! size): buffers coming back leave the ring, their pages go back to the system, and so do the
//! pages of idle buffers still in the ring.

use super::Reactor;
use super::conn::RecvState;
use crate::config::ReactorConfig;
use crate::error::Result;
use crate::log_throttle::warn_throttled;
use crate::ring::token::ConnectionId;

/// The ring-low policy of one reactor, and how much of the ring circulates.
pub(super) struct Pressure {
    /// Free buffers below which the ring is low (0: never).
    reserve: u32,
    /// While low, connections holding this many buffers or more do not receive.
    quota: u32,
    low: bool,
    /// Circulation at start, and the least the ring shrinks to.
    initial: u32,
    /// How long (ms) light use lasts before the ring shrinks; `None`: never.
    shrink_after: Option<u64>,
    /// Most buffers held at once in the current period.
    peak: u32,
    /// End of the current period (reactor ms), while the ring circulates more than `initial`.
    period_end: Option<u64>,
}

impl Pressure {
    pub(super) fn new(config: &ReactorConfig) -> Self {
        Self {
            reserve: config.effective_recv_reserve_buffers(),
            quota: (config.effective_max_buffers_per_connection() / 4).max(1),
            low: false,
            initial: config.effective_initial_recv_buffers(),
            shrink_after: config
                .recv_ring
                .shrink_after
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            peak: 0,
            period_end: None,
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

    /// Grows or shrinks the circulation, then enters or leaves the low state; once per loop
    /// iteration.
    pub(super) fn check_pressure(&mut self) -> Result<()> {
        self.check_circulation();
        let reserve = self.pressure.reserve;
        if reserve == 0 {
            return Ok(());
        }
        let free = self.bufs.free();
        // A ring that can still grow does (above) rather than run low.
        let full_size = self.bufs.target() >= self.bufs.capacity();
        if !self.pressure.low && free < reserve && full_size {
            self.enter_low(free)
        } else if self.pressure.low && free >= (2 * reserve).min(self.bufs.total()) {
            self.leave_low(free)
        } else {
            Ok(())
        }
    }

    /// When the circulation must next be looked at (reactor ms): the end of the current period
    /// of a grown ring. The reactor's wait is bounded by it.
    pub(super) fn circulation_deadline(&self) -> Option<u64> {
        self.pressure.period_end
    }

    /// Doubles the circulation when it runs short; shrinks it after a period of light use.
    fn check_circulation(&mut self) {
        let released = self.bufs.discard_retired();
        self.stats.recv_memory_released += released as u64;
        let (free, active) = (self.bufs.free(), self.bufs.total());
        let held = active.saturating_sub(free);
        let p = &mut self.pressure;
        p.peak = p.peak.max(held);
        if self.bufs.target() < self.bufs.capacity() && free < (active / 4).max(p.reserve) {
            let added = self.bufs.grow();
            self.stats.ring_grows += 1;
            p.peak = held;
            p.period_end = p.shrink_after.map(|d| self.now.saturating_add(d));
            tracing::debug!(
                reactor = self.index,
                free,
                added,
                circulating = self.bufs.total(),
                "receive ring grew"
            );
            return;
        }
        let (Some(end), Some(after)) = (p.period_end, p.shrink_after) else {
            return;
        };
        if self.now < end {
            return;
        }
        let target = self.bufs.target();
        let want = p
            .peak
            .saturating_mul(2)
            .next_power_of_two()
            .max(p.initial)
            .min(target);
        if p.peak.saturating_mul(4) <= active && want < target {
            self.bufs.shrink_to(want);
            self.stats.ring_shrinks += 1;
            // Only with every completion reaped: a buffer the kernel filled for a completion
            // still waiting in the queue looks idle (in the ring, no piece held).
            let released = if self.ring.drained() {
                self.bufs.discard_idle()
            } else {
                0
            };
            self.stats.recv_memory_released += released as u64;
            tracing::debug!(
                reactor = self.index,
                peak = p.peak,
                from = target,
                to = want,
                released,
                "receive ring shrinks"
            );
        }
        p.peak = held;
        p.period_end = (self.bufs.target() > p.initial).then(|| self.now.saturating_add(after));
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
