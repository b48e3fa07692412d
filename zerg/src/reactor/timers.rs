//! Connection timeouts (read, idle, request, write) and the reactor's side of application
//! timers.
//!
//! Each connection has at most one entry in the reactor's timer map, checked lazily: reads,
//! receives and sends only store a millisecond stamp in the connection (no syscall, no map
//! operation, no allocation). When the entry comes due the reactor looks at the stamps: a
//! timeout that expired fails the connection; otherwise the entry moves to the next moment one
//! could expire. The entry is never later than the earliest deadline any timeout could have, so
//! a timeout that becomes active later (a read starts waiting, a request starts) needs no
//! change to the map: every connection's entry comes due at least once per shortest timeout.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Reactor;
use super::conn::Conn;
use crate::config::ReactorConfig;
use crate::error::{CloseReason, Result};
use crate::ring::token::ConnectionId;

/// The timeouts of a reactor's connections, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Timeouts {
    read: Option<u64>,
    idle: Option<u64>,
    request: Option<u64>,
    write: Option<u64>,
}

fn ms(d: Option<Duration>) -> Option<u64> {
    d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1))
}

impl Timeouts {
    pub(super) fn new(config: &ReactorConfig) -> Self {
        Self {
            read: ms(config.read_timeout),
            idle: ms(config.idle_timeout),
            request: ms(config.request_timeout),
            write: ms(config.write_timeout),
        }
    }

    pub(super) fn any(&self) -> bool {
        self.read.is_some() || self.idle.is_some() || self.request.is_some() || self.write.is_some()
    }
}

/// Which timeout expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    Read,
    Idle,
    Request,
    Write,
}

/// The connection entries of the timer map: `(deadline, slot)` → generation.
#[derive(Debug, Default)]
pub(super) struct ConnTimers {
    map: BTreeMap<(u64, u32), u32>,
}

impl ConnTimers {
    pub(super) fn next_deadline(&self) -> Option<u64> {
        self.map.first_key_value().map(|(k, _)| k.0)
    }

    fn pop_due(&mut self, now: u64) -> Option<ConnectionId> {
        let entry = self.map.first_entry()?;
        if entry.key().0 > now {
            return None;
        }
        let slot = entry.key().1;
        let generation = entry.remove();
        Some(ConnectionId { slot, generation })
    }

    fn set(&mut self, id: ConnectionId, old: Option<u64>, new: Option<u64>) {
        if old == new {
            return;
        }
        if let Some(at) = old {
            self.map.remove(&(at, id.slot));
        }
        if let Some(at) = new {
            self.map.insert((at, id.slot), id.generation);
        }
    }
}

impl Timeouts {
    /// The next moment a timeout of `conn` could expire, given when its read started waiting.
    fn next_check(&self, conn: &Conn, read_since: Option<u64>, now: u64) -> Option<u64> {
        let since = |active: Option<u64>, t: u64| active.unwrap_or(now).saturating_add(t);
        let send_since = conn.send.is_inflight().then_some(conn.send_since);
        [
            self.write.map(|t| since(send_since, t)),
            self.request.map(|t| since(conn.request_since, t)),
            self.read.map(|t| since(read_since, t)),
            self.idle.map(|t| conn.last_active.saturating_add(t)),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The timeout of `conn` that has expired at `now`, if any.
    fn expired(&self, conn: &Conn, read_since: Option<u64>, now: u64) -> Option<Expired> {
        let past = |since: Option<u64>, t: Option<u64>| matches!((since, t), (Some(s), Some(t)) if now.saturating_sub(s) >= t);
        let send_since = conn.send.is_inflight().then_some(conn.send_since);
        if past(send_since, self.write) {
            Some(Expired::Write)
        } else if past(conn.request_since, self.request) {
            Some(Expired::Request)
        } else if past(read_since, self.read) {
            Some(Expired::Read)
        } else if past(Some(conn.last_active), self.idle) {
            Some(Expired::Idle)
        } else {
            None
        }
    }
}

impl Reactor {
    /// Gives a new connection its timer entry (when any timeout is configured).
    pub(super) fn arm_conn_timer(&mut self, id: ConnectionId) {
        if !self.timeouts.any() {
            return;
        }
        let now = self.now;
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        conn.last_active = now;
        let next = self.timeouts.next_check(conn, None, now);
        self.conn_timers.set(id, conn.timer_at, next);
        conn.timer_at = next;
    }

    /// Removes a connection's timer entry (it failed or is closing).
    pub(super) fn disarm_conn_timer(&mut self, id: ConnectionId) {
        if let Some(conn) = self.conns.get_mut(id) {
            self.conn_timers.set(id, conn.timer_at.take(), None);
        }
    }

    /// Fires what is due at `self.now`: connection timeouts and application timers.
    pub(super) fn fire_timers(&mut self) -> Result<()> {
        let now = self.now;
        while let Some(id) = self.conn_timers.pop_due(now) {
            self.check_conn(id)?;
        }
        let mut wakers = std::mem::take(&mut self.wakers);
        self.stats.timers_fired += self.shared.timers.fire(now, &mut wakers) as u64;
        self.wakers = wakers;
        Ok(())
    }

    /// A connection's entry came due: fail it if a timeout expired, else move the entry.
    fn check_conn(&mut self, id: ConnectionId) -> Result<()> {
        let now = self.now;
        let Some(conn) = self.conns.get_mut(id) else {
            return Ok(());
        };
        conn.timer_at = None;
        if !conn.is_open() {
            return Ok(());
        }
        let read_since = if self.timeouts.read.is_some() {
            conn.shared.read_waiting_since()
        } else {
            None
        };
        let Some(expired) = self.timeouts.expired(conn, read_since, now) else {
            let next = self.timeouts.next_check(conn, read_since, now);
            self.conn_timers.set(id, None, next);
            conn.timer_at = next;
            return Ok(());
        };
        let counter = match expired {
            Expired::Read => &mut self.stats.read_timeouts,
            Expired::Idle => &mut self.stats.idle_timeouts,
            Expired::Request => &mut self.stats.request_timeouts,
            Expired::Write => &mut self.stats.write_timeouts,
        };
        *counter += 1;
        tracing::debug!(reactor = self.index, slot = id.slot, timeout = ?expired, "connection timed out");
        self.fail_conn(id, CloseReason::TimedOut);
        Ok(())
    }

    /// How long the reactor may wait in the kernel: until the earliest timer (connection or
    /// application), or without bound (`None`). `Some(ZERO)`: something is due already.
    pub(super) fn wait_bound(&mut self) -> Option<Duration> {
        let own = self.conn_timers.next_deadline().unwrap_or(u64::MAX);
        let until = self.shared.timers.prepare_wait(own);
        (until != u64::MAX).then(|| Duration::from_millis(until.saturating_sub(self.now)))
    }
}
