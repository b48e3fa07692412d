//! Warnings that can repeat at the rate of traffic — accept errors, shed connections, the
//! receive ring running low, accepting paused at a cap, unexpected send errors — are logged at
//! `warn` at most once per [`INTERVAL`]; the repeats in between are logged at `debug`, and the
//! next warning says how many there were (`suppressed`). Their counters in
//! [`ReactorStats`](crate::ReactorStats) count every one.

use std::time::{Duration, Instant};

/// Shortest time between two warnings of one kind, per thread.
pub(crate) const INTERVAL: Duration = Duration::from_secs(10);

/// One kind of warning of one thread.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
    warned: bool,
}

impl Throttle {
    /// Another occurrence: `Some(suppressed)` if it is to be logged at `warn` (with the number
    /// of occurrences logged at `debug` since the last warning), `None` for `debug`.
    pub(crate) fn occurred(&mut self) -> Option<u64> {
        self.occurred_at(Instant::now())
    }

    fn occurred_at(&mut self, now: Instant) -> Option<u64> {
        let due = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= INTERVAL);
        self.warned = due;
        if due {
            self.last = Some(now);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }

    /// Whether the last occurrence was logged at `warn`: its end (accepting again, the ring
    /// recovered) is then worth an `info`, else a `debug`.
    pub(crate) fn last_warned(&self) -> bool {
        self.warned
    }
}

/// Logs an occurrence of `throttle`'s kind: `warn!` with a `suppressed` count when due, else
/// `debug!`. The arguments are those of a tracing event (fields, then the message).
macro_rules! warn_throttled {
    ($throttle:expr, $($arg:tt)+) => {
        match $throttle.occurred() {
            Some(suppressed) => ::tracing::warn!(suppressed, $($arg)+),
            None => ::tracing::debug!($($arg)+),
        }
    };
}
pub(crate) use warn_throttled;

/// The throttled warnings of a reactor or the acceptor thread.
#[derive(Debug, Default)]
pub(crate) struct Throttles {
    pub(crate) accept_errors: Throttle,
    pub(crate) accept_pauses: Throttle,
    pub(crate) shed: Throttle,
    pub(crate) ring_low: Throttle,
    pub(crate) send_errors: Throttle,
}

/// Logs a failed accept: at `debug` when the client went away before it was accepted, else a
/// throttled warning (out of descriptors or memory: the server's problem).
pub(crate) fn log_accept_error(throttle: &mut Throttle, errno: i32) {
    let error = std::io::Error::from_raw_os_error(errno);
    if matches!(errno, libc::ECONNABORTED | libc::EPROTO | libc::EPERM) {
        tracing::debug!(%error, "accept failed: the client went away");
    } else {
        warn_throttled!(throttle, %error, "accept failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_interval_counting_the_ones_in_between() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        assert_eq!(t.occurred_at(t0), Some(0), "the first is a warning");
        assert!(t.last_warned());
        assert_eq!(t.occurred_at(t0 + Duration::from_millis(1)), None);
        assert!(!t.last_warned());
        assert_eq!(
            t.occurred_at(t0 + INTERVAL - Duration::from_millis(1)),
            None
        );
        assert_eq!(t.occurred_at(t0 + INTERVAL), Some(2), "two were suppressed");
        assert!(t.last_warned());
        assert_eq!(t.occurred_at(t0 + INTERVAL), None);
        assert_eq!(t.occurred_at(t0 + 3 * INTERVAL), Some(1));
        // A clock that goes backwards (it cannot, but) suppresses rather than floods.
        assert_eq!(t.occurred_at(t0), None);
    }
}
