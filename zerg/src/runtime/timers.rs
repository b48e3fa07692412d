//! The reactor's clock and its application timers ([`crate::time`]'s sleeps).
//!
//! Times are whole milliseconds since the reactor started ([`Clock`]). Application timers live in
//! one ordered map per reactor, keyed by `(deadline, sequence)`: inserting and cancelling cost
//! O(log n) and never a syscall; the reactor looks at the earliest deadline once per loop
//! iteration, fires what is due, and lets the next deadline bound its wait in the kernel. The map
//! sits behind a mutex so a sleep created on a reactor thread stays correct if it is polled on
//! another thread (a `Send` future may move); on the reactor thread the lock is uncontended.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::task::Waker;
use std::time::Instant;

/// Milliseconds since a reactor started.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    epoch: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }

    /// Now, rounded down to the millisecond.
    pub(crate) fn now_ms(&self) -> u64 {
        self.floor_ms(Instant::now())
    }

    /// `t` rounded down (an instant before the epoch is 0).
    pub(crate) fn floor_ms(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// `t` rounded up: a timer keyed by it fires no earlier than `t`.
    pub(crate) fn ceil_ms(&self, t: Instant) -> u64 {
        let d = t.saturating_duration_since(self.epoch);
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if d.subsec_nanos().is_multiple_of(1_000_000) {
            ms
        } else {
            ms.saturating_add(1)
        }
    }
}

/// Identifies one registered timer: its deadline in milliseconds and a sequence number.
pub(crate) type TimerKey = (u64, u64);

/// Application timers of one reactor.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    map: BTreeMap<TimerKey, Waker>,
    next_seq: u64,
    /// When the reactor's current wait ends (0: it is not waiting). A timer registered from
    /// another thread with an earlier deadline must wake it.
    wait_until: u64,
}

/// What [`Timers::register`] did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Registered {
    pub(crate) key: TimerKey,
    /// The deadline is earlier than the end of the reactor's current wait: a caller on another
    /// thread must wake the reactor.
    pub(crate) wakes: bool,
}

impl Timers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `waker` for `deadline_ms`, or refreshes the waker of the timer `key` if it is
    /// still registered.
    pub(crate) fn register(
        &self,
        key: Option<TimerKey>,
        deadline_ms: u64,
        waker: &Waker,
    ) -> Registered {
        let mut inner = self.lock();
        if let Some(key) = key
            && let Some(w) = inner.map.get_mut(&key)
        {
            if !w.will_wake(waker) {
                w.clone_from(waker);
            }
            return Registered { key, wakes: false };
        }
        let key = (deadline_ms, inner.next_seq);
        inner.next_seq += 1;
        inner.map.insert(key, waker.clone());
        Registered {
            key,
            wakes: deadline_ms < inner.wait_until,
        }
    }

    /// Forgets a timer (a dropped sleep). Nothing happens if it already fired.
    pub(crate) fn cancel(&self, key: TimerKey) {
        self.lock().map.remove(&key);
    }

    /// The earliest deadline, if any timer is registered.
    #[cfg(test)]
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.lock().map.first_key_value().map(|(k, _)| k.0)
    }

    /// The reactor is about to wait until `until` at the latest (`u64::MAX`: no bound from its
    /// own timers): returns the earliest application deadline, `min`'d into the wait, and
    /// records the wait's end so that an earlier timer registered from another thread wakes it.
    pub(crate) fn prepare_wait(&self, until: u64) -> u64 {
        let mut inner = self.lock();
        let first = inner.map.first_key_value().map_or(u64::MAX, |(k, _)| k.0);
        inner.wait_until = until.min(first);
        inner.wait_until
    }

    /// Removes every timer due at `now_ms` and wakes it; returns how many fired.
    pub(crate) fn fire(&self, now_ms: u64, wakers: &mut Vec<Waker>) -> usize {
        {
            let mut inner = self.lock();
            while let Some(entry) = inner.map.first_entry() {
                if entry.key().0 > now_ms {
                    break;
                }
                wakers.push(entry.remove());
            }
        }
        let n = wakers.len();
        for w in wakers.drain(..) {
            w.wake();
        }
        n
    }

    /// Registered timers.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;
    use std::time::Duration;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn waker() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    #[test]
    fn fires_due_timers_in_deadline_order_and_only_those() {
        let t = Timers::default();
        let (c, w) = waker();
        let late = t.register(None, 30, &w).key;
        let early = t.register(None, 10, &w).key;
        let mid = t.register(None, 20, &w).key;
        assert_eq!(t.next_deadline(), Some(10));
        let mut buf = Vec::new();
        assert_eq!(t.fire(9, &mut buf), 0);
        assert_eq!(t.fire(20, &mut buf), 2);
        assert_eq!(c.0.load(Ordering::Relaxed), 2);
        assert_eq!(t.next_deadline(), Some(30));
        // Refreshing a fired timer registers it again; refreshing a live one keeps its key.
        assert_eq!(t.register(Some(late), 30, &w).key, late);
        assert_ne!(t.register(Some(early), 10, &w).key, early);
        t.cancel(late);
        let _ = mid;
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn cancelled_timers_never_fire() {
        let t = Timers::default();
        let (c, w) = waker();
        let k = t.register(None, 5, &w).key;
        t.cancel(k);
        assert_eq!(t.next_deadline(), None);
        assert_eq!(t.fire(100, &mut Vec::new()), 0);
        assert_eq!(c.0.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_timer_earlier_than_the_reactors_wait_asks_for_a_wake_up() {
        let t = Timers::default();
        let (_, w) = waker();
        // Not waiting: nothing to wake.
        assert!(!t.register(None, 50, &w).wakes);
        assert_eq!(t.prepare_wait(u64::MAX), 50);
        assert!(!t.register(None, 60, &w).wakes);
        assert!(t.register(None, 40, &w).wakes);
        // The reactor's own connection timers bound the wait too.
        assert_eq!(t.prepare_wait(30), 30);
        assert!(!t.register(None, 35, &w).wakes);
    }

    #[test]
    fn ceil_never_fires_early_and_floor_never_reports_late() {
        let clock = Clock::new();
        for us in [0u64, 1, 999, 1000, 1001, 123_456] {
            let t = clock.epoch + Duration::from_micros(us);
            let ceil = clock.ceil_ms(t);
            assert!(clock.epoch + Duration::from_millis(ceil) >= t, "{us}");
            assert!(clock.floor_ms(t) <= ceil);
        }
    }
}
