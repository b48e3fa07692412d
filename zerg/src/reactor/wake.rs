//! Waking a reactor from other threads without polling (DESIGN §3 rule 9).
//!
//! Producers push their work onto a queue, then call [`Notifier::notify`]. Only the producer that
//! flips `pending` from `false` to `true` writes the eventfd, so a burst of requests costs one
//! `write(2)`. The reactor keeps a read armed on the eventfd; when it completes, the reactor calls
//! [`Notifier::reset`] *before* draining the queues. Every push is then either seen by that drain,
//! or followed by a `notify` that finds `pending == false` and writes the eventfd again.

#[cfg(zerg_loom)]
use loom::sync::atomic::{AtomicBool, Ordering};
#[cfg(not(zerg_loom))]
use std::sync::atomic::{AtomicBool, Ordering};

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
    pending: AtomicBool,
    signal: S,
}

impl<S: Signal> Notifier<S> {
    pub(crate) fn new(signal: S) -> Self {
        Self {
            pending: AtomicBool::new(false),
            signal,
        }
    }

    /// Call after pushing work. `AcqRel`: the swap publishes the push to the reactor's `reset`.
    pub(crate) fn notify(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            self.signal.signal();
        }
    }

    /// Call when the wake-up arrived, before draining. `AcqRel`: reading the last producer's
    /// `true` makes its push visible to the drain that follows.
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

    /// No request is left in the queue once the reactor has consumed every wake-up.
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
            // The reactor: handle wake-ups as they come (the eventfd read completing).
            let mut seen = 0;
            let mut drained = Vec::new();
            let mut step = |seen: &mut usize, drained: &mut Vec<u32>| {
                let signalled = notifier.signal_source().0.load(Ordering::Acquire);
                if signalled > *seen {
                    *seen = signalled;
                    notifier.reset();
                    drained.extend(queue.lock().unwrap().drain(..));
                }
            };
            step(&mut seen, &mut drained);
            for p in producers {
                p.join().unwrap();
            }
            // Keep consuming wake-ups until none is outstanding, as the reactor loop would.
            loop {
                let before = seen;
                step(&mut seen, &mut drained);
                if seen == before {
                    break;
                }
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
