//! Connection caps: the engine-wide cap and each reactor's, shared by whoever accepts (the
//! acceptor thread, or every reactor in per-reactor accept mode) and the reactors that free
//! connections.
//!
//! A place is taken before a connection is handed to a reactor (or adopted by it) and given back
//! when the reactor frees the connection. At a cap, whoever accepts stops accepting — new
//! clients wait in the listen backlog rather than being accepted and closed — and parks; the
//! release that brings the count back to the low watermark (90 % of the cap) wakes it, so
//! accepting does not flap at the cap. One mutex guards the counts: it is taken once per accepted
//! and once per freed connection, next to several system calls.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::config::EngineOptions;

/// A cap and its low watermark.
#[derive(Debug, Clone, Copy)]
struct Cap {
    max: usize,
    resume: usize,
}

impl Cap {
    fn new(max: usize) -> Self {
        let max = max.max(1);
        Cap {
            max,
            resume: max - (max / 10).max(1),
        }
    }
}

#[derive(Debug)]
struct State {
    total: usize,
    live: Vec<usize>,
    /// An accepter stopped at a cap and waits to be woken.
    parked: bool,
}

/// The connection counts of one engine against its caps.
#[derive(Debug)]
pub(crate) struct Admission {
    engine: Cap,
    reactors: Vec<Cap>,
    state: Mutex<State>,
    /// Per reactor (per-reactor accept mode): another reactor's accept crossed a watermark or a
    /// cap; re-check the own accept. A hint: a lost one only delays the re-check to the next
    /// accepted connection.
    recheck: Vec<AtomicBool>,
}

impl Admission {
    /// The caps of an engine started with `options`.
    pub(crate) fn for_engine(options: &EngineOptions) -> Self {
        let reactor_max: Vec<usize> = (0..options.reactor_count)
            .map(|i| options.reactor_config(i).max_connections_per_reactor as usize)
            .collect();
        Self::new(options.effective_max_connections(), &reactor_max)
    }

    /// Caps: `engine_max` in total, `reactor_max[i]` on reactor `i`.
    pub(crate) fn new(engine_max: usize, reactor_max: &[usize]) -> Self {
        Self {
            engine: Cap::new(engine_max),
            reactors: reactor_max.iter().map(|&m| Cap::new(m)).collect(),
            recheck: reactor_max.iter().map(|_| AtomicBool::new(false)).collect(),
            state: Mutex::new(State {
                total: 0,
                live: vec![0; reactor_max.len()],
                parked: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Only counters behind it: a panic elsewhere leaves them consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn has_place(&self, st: &State, i: usize) -> bool {
        st.total < self.engine.max && st.live[i] < self.reactors[i].max
    }

    fn below_watermark(&self, st: &State, i: usize) -> bool {
        st.total <= self.engine.resume && st.live[i] <= self.reactors[i].resume
    }

    /// Takes a place on reactor `i` if both caps allow it. If not and `park`, parks the caller
    /// (checked and parked under one lock, so no release can slip in between).
    pub(crate) fn try_admit(&self, i: usize, park: bool) -> bool {
        let mut st = self.lock();
        if !self.has_place(&st, i) {
            st.parked |= park;
            return false;
        }
        st.total += 1;
        st.live[i] += 1;
        true
    }

    /// Takes a place on the first reactor with room, trying `start`, `start + 1`, ... (wrapping)
    /// among those `eligible` accepts. If none has room and `park`, parks the caller.
    pub(crate) fn admit_any(
        &self,
        start: usize,
        park: bool,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let mut st = self.lock();
        let n = self.reactors.len();
        let Some(i) = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| eligible(i) && self.has_place(&st, i))
        else {
            st.parked |= park;
            return None;
        };
        st.total += 1;
        st.live[i] += 1;
        Some(i)
    }

    /// Whether another connection could be placed now (`room`), and whether the counts are
    /// below the low watermark (`roomy`): on reactor `Some(i)`, or on any reactor `eligible`
    /// accepts.
    pub(crate) fn room(&self, reactor: Option<usize>, eligible: impl Fn(usize) -> bool) -> Room {
        let st = self.lock();
        let check = |f: &dyn Fn(usize) -> bool| match reactor {
            Some(i) => f(i),
            None => (0..self.reactors.len()).any(|i| eligible(i) && f(i)),
        };
        Room {
            room: check(&|i| self.has_place(&st, i)),
            roomy: check(&|i| {
                st.total < self.engine.resume && st.live[i] < self.reactors[i].resume
            }),
        }
    }

    /// Gives a place on reactor `i` back. Returns whether a parked accepter must be woken now
    /// (the counts reached the low watermark; the caller wakes it).
    pub(crate) fn release(&self, i: usize) -> bool {
        let mut st = self.lock();
        st.total = st.total.saturating_sub(1);
        st.live[i] = st.live[i].saturating_sub(1);
        if st.parked && self.below_watermark(&st, i) {
            st.parked = false;
            return true;
        }
        false
    }

    /// Whether a paused accepter may accept again: the engine and reactor `Some(i)` (or, with
    /// `None`, some reactor `eligible` accepts) are back at their low watermark. If not, parks
    /// the caller: the release that gets there says so.
    pub(crate) fn resume_or_park(
        &self,
        reactor: Option<usize>,
        eligible: impl Fn(usize) -> bool,
    ) -> bool {
        let mut st = self.lock();
        let ok = match reactor {
            Some(i) => self.below_watermark(&st, i),
            None => (0..self.reactors.len()).any(|i| eligible(i) && self.below_watermark(&st, i)),
        };
        if !ok {
            st.parked = true;
        }
        ok
    }

    /// Asks reactor `i` to re-check its accept; returns whether it must be woken (it was not
    /// asked already).
    pub(crate) fn ask_recheck(&self, i: usize) -> bool {
        !self.recheck[i].swap(true, Ordering::AcqRel)
    }

    /// Whether reactor `i` was asked to re-check its accept (clears the request).
    pub(crate) fn take_recheck(&self, i: usize) -> bool {
        self.recheck[i].load(Ordering::Relaxed) && self.recheck[i].swap(false, Ordering::AcqRel)
    }

    /// Live connections in the engine.
    #[cfg(test)]
    fn total(&self) -> usize {
        self.lock().total
    }
}

/// What [`Admission::room`] found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Room {
    /// Another connection can be placed.
    pub(crate) room: bool,
    /// The counts are below the low watermark: a burst is safe.
    pub(crate) roomy: bool,
}

/// How an accepter (the acceptor thread, or a reactor in per-reactor accept mode) runs its
/// accept against the caps: multishot while the counts are below the low watermark; one
/// connection at a time above it, because a multishot accept takes the whole backlog at once;
/// none at the cap. Connections a burst brought past the cap are kept (deferred), not closed.
#[derive(Debug, Default)]
pub(crate) struct AcceptGate {
    paused: bool,
    multishot: bool,
    cancelling: bool,
}

/// What an accepter does after placing (or deferring) a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GateAction {
    Nothing,
    /// Near the cap: end the multishot accept (it is re-armed one connection at a time).
    Cancel,
    /// At the cap: stop accepting; `cancel` the accept in flight.
    Pause {
        cancel: bool,
    },
}

impl AcceptGate {
    pub(crate) fn is_paused(&self) -> bool {
        self.paused
    }

    /// An accept is armed; returns whether it is multishot.
    pub(crate) fn arming(&mut self, room: Room) -> bool {
        self.multishot = room.roomy;
        self.cancelling = false;
        self.multishot
    }

    /// The accept's last completion arrived.
    pub(crate) fn ended(&mut self) {
        self.cancelling = false;
    }

    /// A connection was placed or deferred; `armed`: an accept is in flight.
    pub(crate) fn placed(&mut self, armed: bool, room: Room) -> GateAction {
        let cancel = armed && !self.cancelling;
        if !room.room {
            if self.paused {
                return GateAction::Nothing;
            }
            self.paused = true;
            self.cancelling |= cancel;
            return GateAction::Pause { cancel };
        }
        if cancel && self.multishot && !room.roomy {
            self.cancelling = true;
            return GateAction::Cancel;
        }
        GateAction::Nothing
    }

    /// Accepting resumes.
    pub(crate) fn resume(&mut self) {
        self.paused = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_watermarks() {
        let a = Admission::new(10, &[8, 8]);
        for _ in 0..8 {
            assert!(a.try_admit(0, false));
        }
        assert!(!a.try_admit(0, false), "reactor 0 is at its cap");
        assert!(a.try_admit(1, false) && a.try_admit(1, false));
        assert!(!a.try_admit(1, false), "the engine is at its cap");
        assert_eq!(a.admit_any(0, false, |_| true), None);
        assert!(!a.room(None, |_| true).room);
        assert_eq!(a.total(), 10);
        // Engine watermark 9, reactor watermark 7.
        assert!(!a.resume_or_park(None, |_| true), "parks at the cap");
        assert!(
            a.release(1),
            "the engine is back at its watermark of 9: wake"
        );
        assert!(!a.release(0), "woken once");
        assert!(a.resume_or_park(None, |_| true));
    }

    #[test]
    fn a_release_at_the_watermark_wakes_the_parked_accepter_once() {
        let a = Admission::new(100, &[10]);
        for _ in 0..10 {
            assert!(a.try_admit(0, false));
        }
        assert!(!a.resume_or_park(Some(0), |_| true));
        // The reactor's watermark is 10 - 1 = 9.
        assert!(a.release(0), "back at the watermark: wake");
        let room = a.room(Some(0), |_| true);
        assert!(
            room.room && !room.roomy,
            "9 of 10: room, but not below the watermark"
        );
        assert!(!a.release(0), "woken once");
        assert!(a.resume_or_park(Some(0), |_| true));
        assert!(a.room(Some(0), |_| true).roomy);
    }

    #[test]
    fn a_failed_admission_can_park() {
        let a = Admission::new(10, &[1]);
        assert!(a.try_admit(0, false));
        assert!(!a.try_admit(0, false));
        assert!(!a.release(0), "not parked: nobody to wake");
        assert!(a.try_admit(0, false));
        assert!(!a.try_admit(0, true));
        assert!(a.release(0), "parked by the failed admission: wake");
    }

    #[test]
    fn the_gate_goes_single_near_the_cap_and_pauses_at_it() {
        let mut g = AcceptGate::default();
        let roomy = Room {
            room: true,
            roomy: true,
        };
        let near = Room {
            room: true,
            roomy: false,
        };
        let full = Room {
            room: false,
            roomy: false,
        };
        assert!(g.arming(roomy), "multishot below the watermark");
        assert_eq!(g.placed(true, roomy), GateAction::Nothing);
        assert_eq!(g.placed(true, near), GateAction::Cancel);
        assert_eq!(g.placed(true, near), GateAction::Nothing, "cancelled once");
        g.ended();
        assert!(!g.arming(near), "one at a time near the cap");
        assert_eq!(g.placed(false, near), GateAction::Nothing);
        assert_eq!(g.placed(false, full), GateAction::Pause { cancel: false });
        assert!(g.is_paused());
        assert_eq!(g.placed(false, full), GateAction::Nothing, "paused once");
        g.resume();
        assert!(g.arming(roomy));
        assert_eq!(g.placed(true, full), GateAction::Pause { cancel: true });
    }

    #[test]
    fn admit_any_skips_full_and_ineligible_reactors() {
        let a = Admission::new(100, &[1, 1, 1]);
        assert_eq!(a.admit_any(1, false, |_| true), Some(1));
        assert_eq!(a.admit_any(1, false, |i| i != 2), Some(0));
        assert_eq!(a.admit_any(0, false, |i| i != 2), None);
        assert_eq!(a.admit_any(0, false, |_| true), Some(2));
        a.release(0);
        assert_eq!(a.admit_any(2, false, |_| true), Some(0));
    }
}
