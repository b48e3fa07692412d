//! Waking a reactor from other threads without polling (docs/architecture.md, rule 9).
//!
//! Producers push their work onto a queue, then call [`Notifier::notify`]. The eventfd is
//! written only when the reactor sleeps (or is about to) and no write is already on its way:
//!
//! - `sleeping`: set by the reactor before it blocks in `io_uring_enter`, after which it checks
//!   its queues once more ([`Notifier::prepare_sleep`]); cleared when it wakes. A producer pushes,
//!   then reads `sleeping`; the reactor sets `sleeping`, then reads the queues. A `SeqCst` fence
//!   on each side guarantees that at least one of them sees the other's write: either the
//!   reactor finds the work and does not sleep, or the producer signals.
//! - `pending`: a signal is on its way. Only the producer that flips it from `false` to `true`
//!   writes the eventfd, so a burst of requests costs one `write(2)`. The reactor keeps a read
//!   armed on the eventfd; when it completes, the reactor calls [`Notifier::reset`] *before*
//!   draining, so every push is either seen by that drain or followed by a fresh signal.
//!
//! Under load the reactor is awake most of the time and producers skip the syscall entirely.

#[cfg(zerg_loom)]
use loom::sync::atomic::{AtomicBool, Ordering, fence};
#[cfg(not(zerg_loom))]
use std::sync::atomic::{AtomicBool, Ordering, fence};

/// Something that ends the reactor's wait (an eventfd in production, a counter in the model).
pub(crate) trait Signal {
    fn signal(&self);
}

impl Signal for crate::sys::EventFd {
    fn signal(&self) {
        self.write();
    }
}

#[derive(Debug)]
pub(crate) struct Notifier<S> {
    sleeping: AtomicBool,
    pending: AtomicBool,
    signal: S,
}

impl<S: Signal> Notifier<S> {
    pub(crate) fn new(signal: S) -> Self {
        Self {
            sleeping: AtomicBool::new(false),
            pending: AtomicBool::new(false),
            signal,
        }
    }

    /// Call after pushing work.
    pub(crate) fn notify(&self) {
        // Orders the push before the load of `sleeping`; pairs with `prepare_sleep`'s fence.
        fence(Ordering::SeqCst);
        // `AcqRel` swap: publishes the push to the reactor's `reset`.
        if self.sleeping.load(Ordering::Relaxed) && !self.pending.swap(true, Ordering::AcqRel) {
            self.signal.signal();
        }
    }

    /// The reactor is about to block: call, then check every queue once more and call
    /// [`woke`](Self::woke) instead of blocking if anything is there.
    pub(crate) fn prepare_sleep(&self) {
        self.sleeping.store(true, Ordering::Relaxed);
        // Orders the store before the queue checks; pairs with `notify`'s fence.
        fence(Ordering::SeqCst);
    }

    /// The reactor is awake (it returned from its wait, or decided not to block).
    pub(crate) fn woke(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
    }

    /// The signal arrived; call before draining. `AcqRel`: reading the last producer's `true`
    /// makes its push visible to the drain that follows.
    pub(crate) fn reset(&self) {
        self.pending.swap(false, Ordering::AcqRel);
    }

    #[cfg(zerg_loom)]
    pub(crate) fn signal_source(&self) -> &S {
        &self.signal
    }
}

#[cfg(all(test, zerg_loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicUsize;
    use loom::sync::{Arc, Mutex};

    struct Counter(AtomicUsize);
    impl Signal for Counter {
        fn signal(&self) {
            self.0.fetch_add(1, Ordering::Release);
        }
    }

    fn signals(n: &Notifier<Counter>) -> usize {
        n.signal_source().0.load(Ordering::Acquire)
    }

    /// Two producers push and notify while the reactor runs its loop: checks the queue, goes to
    /// sleep, is woken only by a signal. No request is ever left in the queue while the reactor
    /// sleeps with no signal on its way.
    #[test]
    fn no_lost_wakeups() {
        loom::model(|| {
            let notifier = Arc::new(Notifier::new(Counter(AtomicUsize::new(0))));
            let queue = Arc::new(Mutex::new(Vec::<u32>::new()));
            let producers: Vec<_> = (0..2)
                .map(|i| {
                    let (n, q) = (notifier.clone(), queue.clone());
                    loom::thread::spawn(move || {
                        q.lock().unwrap().push(i);
                        n.notify();
                    })
                })
                .collect();
            let (n, q) = (notifier.clone(), queue.clone());
            let reactor = loom::thread::spawn(move || {
                let drain = |out: &mut Vec<u32>| out.extend(q.lock().unwrap().drain(..));
                let mut drained = Vec::new();
                let mut consumed = 0;
                // Three rounds suffice: two pushes can keep it awake at most twice.
                for _ in 0..3 {
                    n.prepare_sleep();
                    if !q.lock().unwrap().is_empty() {
                        n.woke();
                        drain(&mut drained);
                        continue;
                    }
                    // Blocked in the kernel: only an unconsumed signal ends the wait.
                    let s = signals(&n);
                    if s > consumed {
                        consumed = s;
                        n.woke();
                        n.reset();
                        drain(&mut drained);
                        continue;
                    }
                    return (true, consumed, drained);
                }
                n.woke();
                (false, consumed, drained)
            });
            for p in producers {
                p.join().unwrap();
            }
            let (asleep, consumed, mut drained) = reactor.join().unwrap();
            if asleep {
                // Still blocked: it wakes only if a signal is outstanding.
                if signals(&notifier) > consumed {
                    notifier.reset();
                    drained.extend(queue.lock().unwrap().drain(..));
                }
            } else {
                // Awake: it drains on its next iteration.
                drained.extend(queue.lock().unwrap().drain(..));
            }
            drained.sort_unstable();
            assert_eq!(
                drained,
                vec![0, 1],
                "a request was pushed but never drained"
            );
        });
    }
}
