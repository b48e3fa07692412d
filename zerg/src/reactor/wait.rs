//! The end of a loop iteration: wake-ups handed to other threads, then one `io_uring_enter` that
//! submits what was queued and, when nothing is left to do, waits.

use std::time::{Duration, Instant};

use super::Reactor;
use crate::error::Result;
use crate::runtime::local;
use crate::runtime::relay::RELAY_GRACE;

impl Reactor {
    /// Hands the wake-ups of tasks on other threads deferred during this iteration over in one
    /// batch, waking its leader (`runtime/relay.rs`).
    pub(super) fn hand_off_wakes(&mut self) {
        local::take_deferred(&mut self.deferred);
        if self.deferred.is_empty() {
            return;
        }
        let n = self.deferred.len() as u64;
        let leader = self
            .shared
            .relay
            .hand_off(&mut self.deferred, Instant::now());
        self.stats.wakes_relayed += n - u64::from(leader.is_some());
        if let Some(leader) = leader {
            leader.wake();
        }
    }

    /// How long the waiting batch of wake-ups may still wait for its leader: `None` when none
    /// waits; after [`RELAY_GRACE`] the reactor wakes the batch itself (and returns `None`).
    fn relay_bound(&mut self) -> Option<Duration> {
        let since = self.shared.relay.waiting_since()?;
        let waited = since.elapsed();
        if waited < RELAY_GRACE {
            return Some(RELAY_GRACE - waited);
        }
        self.stats.relay_fallbacks += 1;
        self.shared.deliver_wakes();
        self.publish_stats();
        None
    }

    /// Submits what is queued; blocks until a completion when there is nothing else to do, at
    /// most until the earliest timer (or a waiting batch of wake-ups' grace) runs out.
    pub(super) fn submit_and_wait(&mut self) -> Result<()> {
        let relay = self.relay_bound();
        let mut idle = !local::has_local_work() && self.ring.completion().is_empty();
        let mut bound = None;
        if idle {
            // The earliest timer bounds the wait; one that is due already means no wait.
            bound = match (self.wait_bound(), relay) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            idle = bound != Some(Duration::ZERO);
        }
        if idle {
            // From here on other threads signal the eventfd; a last look catches what they
            // queued before they could see that.
            self.shared.prepare_sleep();
            if self.shared.has_remote_work() || self.outbound.has_work() {
                self.shared.woke();
                idle = false;
            }
        }
        self.submit(idle, bound)?;
        if idle {
            self.shared.woke();
            self.stats.wakeups += 1;
        }
        Ok(())
    }
}
