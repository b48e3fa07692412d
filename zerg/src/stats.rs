//! Counters: what each reactor and the acceptor did, for tests, dashboards and leak checks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! stats_struct {
    ($(#[$meta:meta])* pub struct $name:ident / $cell:ident { $($(#[doc = $doc:literal])* $field:ident,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct $name {
            $($(#[doc = $doc])* pub $field: u64,)*
        }

        impl $name {
            /// Every field's name and documentation (one line per doc line), in declaration
            /// order: what exporters describe the counters with.
            #[allow(dead_code)]
            pub(crate) const FIELDS: &'static [(&'static str, &'static str)] =
                &[$((stringify!($field), concat!($($doc, "\n",)*)),)*];

            /// The value of the field named `field`.
            #[allow(dead_code)]
            pub(crate) fn get(&self, field: &str) -> Option<u64> {
                match field {
                    $(stringify!($field) => Some(self.$field),)*
                    _ => None,
                }
            }

            #[allow(dead_code)]
            fn add(&mut self, other: &Self) {
                $(self.$field += other.$field;)*
            }
        }

        /// Atomic mirror, written by the owning thread once per loop iteration.
        #[derive(Debug, Default)]
        pub(crate) struct $cell {
            $($field: AtomicU64,)*
        }

        impl $cell {
            pub(crate) fn publish(&self, s: &$name) {
                $(self.$field.store(s.$field, Ordering::Relaxed);)*
            }

            pub(crate) fn load(&self) -> $name {
                $name { $($field: self.$field.load(Ordering::Relaxed),)* }
            }
        }
    };
}

stats_struct! {
    /// Counters of one reactor. Snapshot values, refreshed by the reactor every loop iteration.
    pub struct ReactorStats / ReactorStatsCell {
        /// Live connections (accepted and not yet fully closed).
        connections,
        /// Connections opened since start: accepted, taken over with
        /// [`Engine::adopt`](crate::Engine::adopt), or connected outbound.
        connections_total,
        /// Connections closed at once for want of room: the accept queue of
        /// [`Engine::accept`](crate::Engine::accept) was full. Caps do not shed: they pause
        /// accepting instead (`accept_pauses`).
        connections_shed,
        /// Buffers in circulation (in the ring or held): the initial share of the ring at start,
        /// more after the ring grew, fewer again after it shrank.
        buffers_total,
        /// Buffers in the kernel's hands (free to receive into).
        buffers_free,
        /// Buffers delivered to connections and not yet returned.
        buffers_held,
        /// Times a receive ended with `-ENOBUFS` (ring empty); the connection was kept and its
        /// receive re-armed when buffers came back.
        enobufs,
        /// Times a multishot receive was re-armed after it ended (ENOBUFS recovery, pauses, the
        /// kernel ending it).
        recv_rearms,
        /// Times a connection's receive paused because it held `max_buffers_per_connection`, or,
        /// while the ring was low, a quarter of it.
        recv_pauses,
        /// Times the ring ran low: fewer free buffers than the reserve
        /// (`recv_reserve_buffers`). Until it recovers, only light connections receive.
        ring_low,
        /// Times the circulation of the receive ring doubled because few buffers were free
        /// ([`RecvRingConfig`](crate::RecvRingConfig)).
        ring_grows,
        /// Times the receive ring shrank after a period of light use.
        ring_shrinks,
        /// Receive completions that carried more than one buffer (receive bundles,
        /// [`RecvRingConfig::bundle`](crate::RecvRingConfig::bundle)).
        recv_bundles,
        /// Bytes of receive memory given back to the system (pages of buffers taken out of
        /// circulation, and of idle buffers when the ring shrank).
        recv_memory_released,
        /// FINs, resets and socket errors noticed while a connection's receive was paused or
        /// starved (a poll watches such connections); resets and errors end its reads and
        /// writes at once, a FIN ends its reads once every byte before it was delivered.
        paused_closes,
        /// Times this reactor stopped accepting at a connection cap (per-reactor accept mode);
        /// new connections waited in the listen backlog until it resumed.
        accept_pauses,
        /// Times the multishot accept was re-armed (per-reactor accept mode).
        accept_rearms,
        /// Accept errors (per-reactor accept mode), e.g. `EMFILE`.
        accept_errors,
        /// Completions that named a connection that no longer exists; dropped.
        stale_completions,
        /// Flushes that ended in an error (reset, timeout, ...).
        flush_errors,
        /// Bytes received.
        bytes_received,
        /// Bytes sent.
        bytes_sent,
        /// Times the reactor woke from a blocking wait.
        wakeups,
        /// Wake-ups of tasks on other threads handed over in a batch: the reactor woke one task
        /// of each batch, the others were woken from that task's thread.
        wakes_relayed,
        /// Batches the reactor woke itself because no thread took them within a millisecond
        /// (their first task did not poll its connection again).
        relay_fallbacks,
        /// Handler panics caught (thread-per-core mode).
        handler_panics,
        /// Connections closed because a read waited longer than `read_timeout`.
        read_timeouts,
        /// Connections closed because nothing moved for `idle_timeout`.
        idle_timeouts,
        /// Connections closed because a request was not answered within `request_timeout`.
        request_timeouts,
        /// Connections closed because a send made no progress for `write_timeout`.
        write_timeouts,
        /// Application timers ([`crate::time`]) that fired.
        timers_fired,
        /// Connections on direct descriptors (a slot in the ring's file table) since start
        /// ([`ReactorConfig::direct_descriptors`](crate::ReactorConfig::direct_descriptors)).
        direct_connections,
        /// Descriptors installed in the process's table for connections on direct descriptors
        /// (asked for by `AsFd`, `peer_addr`, a close noticed while paused, the engine's stop).
        fd_installs,
        /// Sends submitted zero-copy
        /// ([`ReactorConfig::send_zerocopy_threshold`](crate::ReactorConfig::send_zerocopy_threshold)).
        zc_sends,
        /// Zero-copy sends whose notification said the kernel copied the bytes after all (every
        /// one over loopback).
        zc_copied,
    }
}

stats_struct! {
    /// Counters of the acceptor thread.
    pub struct AcceptorStats / AcceptorStatsCell {
        /// Connections accepted and handed to a reactor.
        accepted,
        /// Accept errors, e.g. `EMFILE`.
        accept_errors,
        /// Times the multishot accept was re-armed after it ended.
        accept_rearms,
        /// Hand-offs to a reactor that failed (the connection was closed).
        handoff_failures,
        /// Times the acceptor stopped accepting at a connection cap; new connections waited in
        /// the listen backlog until it resumed.
        accept_pauses,
        /// Times the acceptor woke from a blocking wait.
        wakeups,
    }
}

/// Counters of a whole engine: [`Engine::stats`](crate::Engine::stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineStats {
    /// One entry per reactor, in index order.
    pub reactors: Vec<ReactorStats>,
    /// The acceptor thread (all zero in per-reactor accept mode).
    pub acceptor: AcceptorStats,
}

impl EngineStats {
    /// The reactors' counters summed.
    pub fn total(&self) -> ReactorStats {
        let mut t = ReactorStats::default();
        for r in &self.reactors {
            t.add(r);
        }
        t
    }
}

/// A cheap, cloneable handle that reads an engine's counters from any thread:
/// [`Engine::stats_handle`](crate::Engine::stats_handle). It keeps only the counters alive, not
/// the engine: after the engine stopped it reads the last values its threads published. Metrics
/// exporters hold one (the `prometheus` feature's collector does).
#[derive(Debug, Clone)]
pub struct StatsHandle {
    reactors: Vec<Arc<ReactorStatsCell>>,
    acceptor: Option<Arc<AcceptorStatsCell>>,
}

impl StatsHandle {
    pub(crate) fn new(
        reactors: Vec<Arc<ReactorStatsCell>>,
        acceptor: Option<Arc<AcceptorStatsCell>>,
    ) -> Self {
        Self { reactors, acceptor }
    }

    /// The counters now, as [`Engine::stats`](crate::Engine::stats) returns them.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            reactors: self.reactors.iter().map(|r| r.load()).collect(),
            acceptor: self.acceptor.as_ref().map(|a| a.load()).unwrap_or_default(),
        }
    }

    /// Whether the engine has an acceptor thread ([`AcceptMode::Dedicated`](crate::AcceptMode)).
    pub fn has_acceptor(&self) -> bool {
        self.acceptor.is_some()
    }

    /// Number of reactors.
    pub fn reactor_count(&self) -> usize {
        self.reactors.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_name_every_counter_with_its_documentation() {
        let s = ReactorStats {
            bytes_sent: 7,
            connections: 3,
            ..ReactorStats::default()
        };
        assert_eq!(s.get("bytes_sent"), Some(7));
        assert_eq!(s.get("connections"), Some(3));
        assert_eq!(s.get("no_such_counter"), None);
        let (name, doc) = ReactorStats::FIELDS[0];
        assert_eq!(name, "connections");
        assert_eq!(
            doc.trim(),
            "Live connections (accepted and not yet fully closed)."
        );
        // Every field is listed, readable by name and documented.
        for (name, doc) in ReactorStats::FIELDS {
            assert!(s.get(name).is_some(), "{name}");
            assert!(!doc.trim().is_empty(), "{name} has no documentation");
        }
        for (name, doc) in AcceptorStats::FIELDS {
            assert!(AcceptorStats::default().get(name).is_some(), "{name}");
            assert!(!doc.trim().is_empty(), "{name} has no documentation");
        }
        // Multi-line docs keep their line breaks (exporters join them).
        let (_, enobufs) = ReactorStats::FIELDS
            .iter()
            .find(|(n, _)| *n == "enobufs")
            .unwrap();
        assert_eq!(enobufs.lines().count(), 2, "{enobufs:?}");
    }
}
