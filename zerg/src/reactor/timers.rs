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

use std::cmp::Reverse;
use std::collections::BinaryHeap;
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

/// The connection entries of the timer map: a min-heap of `(deadline, slot, generation)`.
///
/// Entries are not removed from the middle: an entry whose deadline is not its connection's
/// current `timer_at` (the connection closed, or its entry moved) is stale and skipped when it
/// comes up. Each connection adds an entry only after its previous one came up (or when it
/// starts), so live entries are at most one per connection; stale ones (closed connections) are
/// swept out in place when they outnumber the live ones. Once the vector has grown to its
/// working size, arming and re-arming allocate nothing.
#[derive(Debug, Default)]
pub(super) struct ConnTimers {
    heap: BinaryHeap<Reverse<(u64, u32, u32)>>,
}

impl ConnTimers {
    pub(super) fn next_deadline(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse(e)| e.0)
    }

    /// The next entry due at `now`, stale or not.
    fn pop_due(&mut self, now: u64) -> Option<(u64, ConnectionId)> {
        let &Reverse((at, slot, generation)) = self.heap.peek()?;
        if at > now {
            return None;
        }
        self.heap.pop();
        Some((at, ConnectionId { slot, generation }))
    }

    fn push(&mut self, id: ConnectionId, at: u64) {
        self.heap.push(Reverse((at, id.slot, id.generation)));
    }

    fn len(&self) -> usize {
        self.heap.len()
    }

    /// Keeps only the entries `live` accepts (in place).
    fn retain(&mut self, mut live: impl FnMut(u64, ConnectionId) -> bool) {
        self.heap
            .retain(|&Reverse((at, slot, generation))| live(at, ConnectionId { slot, generation }));
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
        conn.timer_at = self.timeouts.next_check(conn, None, now);
        if let Some(at) = conn.timer_at {
            self.conn_timers.push(id, at);
        }
    }

    /// Forgets a connection's timer entry (it failed or is closing): it is skipped when it comes
    /// up.
    pub(super) fn disarm_conn_timer(&mut self, id: ConnectionId) {
        if let Some(conn) = self.conns.get_mut(id) {
            conn.timer_at = None;
        }
    }

    /// Fires what is due at `self.now`: connection timeouts and application timers.
    pub(super) fn fire_timers(&mut self) -> Result<()> {
        let now = self.now;
        while let Some((at, id)) = self.conn_timers.pop_due(now) {
            self.check_conn(id, at)?;
        }
        if self.conn_timers.len() > 2 * self.conns.len() + 64 {
            // Mostly entries of closed connections: sweep them out.
            let conns = &mut self.conns;
            self.conn_timers
                .retain(|at, id| conns.get_mut(id).is_some_and(|c| c.timer_at == Some(at)));
        }
        let mut wakers = std::mem::take(&mut self.wakers);
        self.stats.timers_fired += self.shared.timers.fire(now, &mut wakers) as u64;
        self.wakers = wakers;
        Ok(())
    }

    /// A connection's entry for `at` came due: fail it if a timeout expired, else move the entry.
    fn check_conn(&mut self, id: ConnectionId, at: u64) -> Result<()> {
        let now = self.now;
        let Some(conn) = self.conns.get_mut(id) else {
            return Ok(());
        };
        if conn.timer_at != Some(at) || !conn.is_open() {
            // Stale: the connection's entry moved or it stopped timing.
            return Ok(());
        }
        conn.timer_at = None;
        let read_since = if self.timeouts.read.is_some() {
            conn.shared.read_waiting_since()
        } else {
            None
        };
        let Some(expired) = self.timeouts.expired(conn, read_since, now) else {
            conn.timer_at = self.timeouts.next_check(conn, read_since, now);
            if let Some(at) = conn.timer_at {
                self.conn_timers.push(id, at);
            }
            return Ok(());
        };
        let counter = match expired {
            Expired::Read => &mut self.stats.read_timeouts,
            Expired::Idle => &mut self.stats.idle_timeouts,
            Expired::Request => &mut self.stats.request_timeouts,
            Expired::Write => &mut self.stats.write_timeouts,
        };
        *counter += 1;
        tracing::debug!(conn = %id, timeout = ?expired, "connection timed out; closing it");
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
