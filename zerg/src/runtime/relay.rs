//! Handing the wake-ups of tasks on other threads over in batches (docs/architecture.md,
//! "Requests and wake-ups").
//!
//! A handler on another runtime (tokio, in [`Engine::listen`](crate::Engine::listen) mode) waits
//! for its connection's read or flush; when the reactor completes them it must wake the task,
//! and a wake from a foreign thread costs the runtime a syscall (tokio writes its driver's
//! eventfd for every such wake). So the reactor collects those wakers during a loop iteration
//! and, at its end, wakes only one — the *leader* — and leaves the rest here. Any handle call on
//! this reactor's connections ([`Relay::drain`], one atomic load when there is nothing) wakes
//! them from the thread it runs on, where a wake is a push onto the local run queue. The leader's
//! task is the first such call: it was woken because its read or flush can complete, which it
//! finds out by polling it.
//!
//! A leader that never polls its connection again (its future was dropped, a `select!` took
//! another branch) must not strand the others: the reactor bounds its wait while a batch waits
//! here and wakes the batch itself once it has waited [`RELAY_GRACE`] ([`Relay::waiting_since`]).
//!
//! Ordering: the batch and the `pending` flag are written under the lock before the leader is
//! woken; the runtime's wake → poll hand-off orders that before the leader's `drain`, which
//! therefore sees them. A `drain` elsewhere that reads a stale `false` misses nothing for good:
//! the leader or the reactor takes the batch.

use std::time::{Duration, Instant};

#[cfg(zerg_loom)]
use loom::sync::Mutex;
#[cfg(zerg_loom)]
use loom::sync::atomic::{AtomicBool, Ordering};
#[cfg(not(zerg_loom))]
use std::sync::Mutex;
#[cfg(not(zerg_loom))]
use std::sync::atomic::{AtomicBool, Ordering};

/// How long a batch may wait for its leader before the reactor wakes it itself.
pub(crate) const RELAY_GRACE: Duration = Duration::from_millis(1);

/// Something that can be woken (a `Waker` in production, a counter in the model).
pub(crate) trait Wake {
    fn wake(self);
}

impl Wake for std::task::Waker {
    fn wake(self) {
        std::task::Waker::wake(self);
    }
}

/// The wake-ups waiting for a thread to deliver them.
#[derive(Debug)]
pub(crate) struct Relay<W> {
    /// The batch is not empty: spares `drain` the lock when there is nothing.
    pending: AtomicBool,
    state: Mutex<Batch<W>>,
}

#[derive(Debug)]
struct Batch<W> {
    items: Vec<W>,
    /// When the batch's leader was woken.
    since: Option<Instant>,
}

impl<W: Wake> Relay<W> {
    pub(crate) fn new() -> Self {
        Self {
            pending: AtomicBool::new(false),
            state: Mutex::new(Batch {
                items: Vec::new(),
                since: None,
            }),
        }
    }

    fn lock(&self) -> impl std::ops::DerefMut<Target = Batch<W>> + '_ {
        // A panic while holding this lock leaves only plain data behind; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reactor side: hands `batch` over (it is left empty, with its capacity) and returns the
    /// leader the caller must wake now — none when an earlier batch still waits for its leader,
    /// which then takes these too.
    pub(crate) fn hand_off(&self, batch: &mut Vec<W>, now: Instant) -> Option<W> {
        let mut st = self.lock();
        let leader = if st.items.is_empty() {
            let leader = batch.pop();
            if !batch.is_empty() {
                st.since = Some(now);
            }
            leader
        } else {
            None
        };
        st.items.append(batch);
        if !st.items.is_empty() {
            self.pending.store(true, Ordering::Release);
        }
        leader
    }

    /// A batch waits (a hint: `drain` looks again under the lock).
    #[inline]
    pub(crate) fn is_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Any thread: wakes every task waiting here. `buf` is the caller's scratch vector (kept
    /// empty, with its capacity, so a drain allocates nothing).
    pub(crate) fn drain(&self, buf: &mut Vec<W>) {
        if !self.pending.load(Ordering::Acquire) {
            return;
        }
        {
            let mut st = self.lock();
            self.pending.store(false, Ordering::Relaxed);
            buf.append(&mut st.items);
            st.since = None;
        }
        // Outside the lock: a wake may run arbitrary code of the runtime.
        for w in buf.drain(..) {
            w.wake();
        }
    }

    /// Reactor side: since when the waiting batch waits for its leader (`None`: nothing waits).
    pub(crate) fn waiting_since(&self) -> Option<Instant> {
        if !self.pending.load(Ordering::Acquire) {
            return None;
        }
        self.lock().since
    }
}

#[cfg(all(test, not(zerg_loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    struct Count(Arc<AtomicUsize>);
    impl Wake for Count {
        fn wake(self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn one_leader_per_batch_and_a_drain_wakes_the_rest() {
        let woken = Arc::new(AtomicUsize::new(0));
        let relay = Relay::new();
        let now = Instant::now();
        let mut batch: Vec<Count> = (0..3).map(|_| Count(woken.clone())).collect();
        let leader = relay.hand_off(&mut batch, now).expect("a leader");
        assert!(batch.is_empty());
        assert_eq!(relay.waiting_since(), Some(now));
        // A second batch before the first was drained: no new leader, it joins the first.
        let mut more = vec![Count(woken.clone())];
        assert!(relay.hand_off(&mut more, now).is_none());
        leader.wake();
        assert_eq!(woken.load(Ordering::Relaxed), 1);
        let mut buf = Vec::new();
        relay.drain(&mut buf);
        assert_eq!(woken.load(Ordering::Relaxed), 4);
        assert_eq!(relay.waiting_since(), None);
        // A lone wake is its own leader and leaves nothing behind.
        let mut one = vec![Count(woken.clone())];
        assert!(relay.hand_off(&mut one, now).is_some());
        assert_eq!(relay.waiting_since(), None);
    }
}

#[cfg(all(test, zerg_loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicUsize;

    /// Wakes of this model: which task was woken, counted.
    struct Task(Arc<AtomicUsize>);
    impl Wake for Task {
        fn wake(self) {
            self.0.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The reactor hands two batches over while the leader of the first, on its own thread,
    /// drains, and a third thread (another handler) drains too. Afterwards the reactor's
    /// fallback (what it does once the grace ran out) drains whatever is left. Every task is
    /// woken exactly once.
    #[test]
    fn every_deferred_wake_is_delivered_once() {
        loom::model(|| {
            let counts: Vec<Arc<AtomicUsize>> =
                (0..3).map(|_| Arc::new(AtomicUsize::new(0))).collect();
            let relay = Arc::new(Relay::new());
            let now = Instant::now();
            let mut first: Vec<Task> = vec![Task(counts[0].clone()), Task(counts[1].clone())];
            let leader = relay.hand_off(&mut first, now).expect("a leader");
            let r = relay.clone();
            let leader_thread = loom::thread::spawn(move || {
                leader.wake();
                r.drain(&mut Vec::new());
            });
            let r = relay.clone();
            let other = loom::thread::spawn(move || r.drain(&mut Vec::new()));
            let mut second = vec![Task(counts[2].clone())];
            if let Some(l) = relay.hand_off(&mut second, now) {
                l.wake();
            }
            leader_thread.join().unwrap();
            other.join().unwrap();
            // The reactor's fallback.
            if relay.waiting_since().is_some() {
                relay.drain(&mut Vec::new());
            }
            for (i, c) in counts.iter().enumerate() {
                assert_eq!(c.load(Ordering::Acquire), 1, "task {i}");
            }
        });
    }
}
