//! Prometheus metrics (feature `prometheus`): [`EngineCollector`] exports an engine's counters
//! through a [`prometheus_client`] registry, read at every scrape.
//!
//! ```no_run
//! use prometheus_client::registry::Registry;
//! use zerg_uring::prometheus::EngineCollector;
//! use zerg_uring::{Engine, EngineOptions};
//!
//! let engine = Engine::listen(EngineOptions::with_port(8080))?;
//! let mut registry = Registry::default();
//! registry.register_collector(Box::new(EngineCollector::new(&engine)));
//! // On each scrape (an HTTP handler for GET /metrics):
//! let mut body = String::new();
//! prometheus_client::encoding::text::encode(&mut body, &registry).expect("encodes");
//! assert!(body.contains("zerg_connections{reactor=\"0\"} 0"));
//! # Ok::<(), zerg_uring::Error>(())
//! ```
//!
//! # Why a collector
//!
//! The reactors already keep their counters in atomics they publish once per loop iteration
//! ([`Engine::stats`]). A [`Collector`] reads them when Prometheus scrapes, so exporting costs
//! nothing between scrapes: no thread, no timer, no global recorder, and a counter cannot be
//! stale or double-counted. (The `metrics` crate's model — values pushed into a global recorder
//! — would need a task copying the counters on a timer, and a counter is exported there as an
//! increment, not as the absolute value the engine has.)
//!
//! # What is exported
//!
//! Every [`ReactorStats`] counter, one series per reactor labelled `reactor="N"`, named
//! `zerg_<field>` with the field's documentation as HELP. Counters end in `_total` (the
//! encoder adds it), gauges do not. A few names follow Prometheus conventions instead of the
//! field name:
//!
//! | field | metric | type |
//! |---|---|---|
//! | `connections` | `zerg_connections` | gauge |
//! | `buffers_total`, `buffers_free`, `buffers_held` | `zerg_buffers`, `zerg_buffers_free`, `zerg_buffers_held` | gauge |
//! | `connections_total` | `zerg_connections_opened_total` | counter |
//! | `bytes_received`, `bytes_sent`, `recv_memory_released` | `zerg_received_bytes_total`, `zerg_sent_bytes_total`, `zerg_recv_memory_released_bytes_total` | counter (unit bytes) |
//! | `read_timeouts`, `idle_timeouts`, `request_timeouts`, `write_timeouts` | `zerg_timeouts_total{timeout="read"\|"idle"\|"request"\|"write"}` | counter |
//! | every other field, e.g. `flush_errors` | `zerg_flush_errors_total` | counter |
//!
//! With an acceptor thread ([`AcceptMode::Dedicated`](crate::AcceptMode::Dedicated)), every
//! [`AcceptorStats`] counter too, as `zerg_acceptor_<field>_total` without labels.
//!
//! Several engines in one registry: register each collector in a sub-registry with its own
//! label (`registry.sub_registry_with_label(("server".into(), "admin".into()))`), or the series
//! clash.

use std::borrow::Cow;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

use crate::engine::Engine;
use crate::stats::{AcceptorStats, ReactorStats, StatsHandle};

/// The prometheus-client crate this module is built against: register the collector in a
/// registry of this version.
pub use prometheus_client;

/// An engine's counters as Prometheus metrics, read from the engine at every scrape. Register
/// it with [`Registry::register_collector`](prometheus_client::registry::Registry::register_collector).
///
/// It holds a [`StatsHandle`], not the engine: it does not keep the engine running, and after
/// the engine stopped it reports the last values.
#[derive(Debug, Clone)]
pub struct EngineCollector {
    stats: StatsHandle,
}

impl EngineCollector {
    /// A collector of `engine`'s counters.
    pub fn new(engine: &Engine) -> Self {
        Self::from_handle(engine.stats_handle())
    }

    /// A collector reading through `stats` ([`Engine::stats_handle`]).
    pub fn from_handle(stats: StatsHandle) -> Self {
        Self { stats }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Counter,
    Gauge,
}

/// One exported series per reactor: which counter, under which family, with which label.
#[derive(Debug)]
struct Series {
    /// The [`ReactorStats`] field.
    field: &'static str,
    /// The metric name without `zerg_`, the unit and (counters) `_total`.
    family: &'static str,
    kind: Type,
    bytes: bool,
    /// A label telling series of one family apart (besides `reactor`).
    label: Option<(&'static str, &'static str)>,
    /// The family's HELP when it is not the field's documentation.
    help: Option<&'static str>,
}

const fn counter(family: &'static str, field: &'static str) -> Series {
    Series {
        field,
        family,
        kind: Type::Counter,
        bytes: false,
        label: None,
        help: None,
    }
}

const fn gauge(family: &'static str, field: &'static str) -> Series {
    Series {
        kind: Type::Gauge,
        ..counter(family, field)
    }
}

const fn bytes(family: &'static str, field: &'static str) -> Series {
    Series {
        bytes: true,
        ..counter(family, field)
    }
}

const TIMEOUTS_HELP: &str = "Connections closed because a timeout expired, by timeout: read (a read waited longer than read_timeout), idle (nothing moved for idle_timeout), request (a request was not answered within request_timeout), write (a send made no progress for write_timeout).";

const fn timeout(field: &'static str, which: &'static str) -> Series {
    Series {
        label: Some(("timeout", which)),
        help: Some(TIMEOUTS_HELP),
        ..counter("timeouts", field)
    }
}

/// Every [`ReactorStats`] field, in the order exported; series of one family are adjacent.
const REACTOR: &[Series] = &[
    gauge("connections", "connections"),
    counter("connections_opened", "connections_total"),
    counter("connections_shed", "connections_shed"),
    gauge("buffers", "buffers_total"),
    gauge("buffers_free", "buffers_free"),
    gauge("buffers_held", "buffers_held"),
    counter("enobufs", "enobufs"),
    counter("recv_rearms", "recv_rearms"),
    counter("recv_pauses", "recv_pauses"),
    counter("ring_low", "ring_low"),
    counter("ring_grows", "ring_grows"),
    counter("ring_shrinks", "ring_shrinks"),
    counter("recv_bundles", "recv_bundles"),
    bytes("recv_memory_released", "recv_memory_released"),
    counter("paused_closes", "paused_closes"),
    counter("accept_pauses", "accept_pauses"),
    counter("accept_rearms", "accept_rearms"),
    counter("accept_errors", "accept_errors"),
    counter("stale_completions", "stale_completions"),
    counter("flush_errors", "flush_errors"),
    bytes("received", "bytes_received"),
    bytes("sent", "bytes_sent"),
    counter("wakeups", "wakeups"),
    counter("wakes_relayed", "wakes_relayed"),
    counter("relay_fallbacks", "relay_fallbacks"),
    counter("handler_panics", "handler_panics"),
    timeout("read_timeouts", "read"),
    timeout("idle_timeouts", "idle"),
    timeout("request_timeouts", "request"),
    timeout("write_timeouts", "write"),
    counter("timers_fired", "timers_fired"),
    counter("direct_connections", "direct_connections"),
    counter("fd_installs", "fd_installs"),
    counter("zc_sends", "zc_sends"),
    counter("zc_copied", "zc_copied"),
];

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.stats.stats();
        let reactors: Vec<String> = (0..stats.reactors.len()).map(|i| i.to_string()).collect();
        let mut rest = REACTOR;
        while let Some(first) = rest.first() {
            let n = rest.iter().take_while(|s| s.family == first.family).count();
            let (family, tail) = rest.split_at(n);
            rest = tail;
            let help = match first.help {
                Some(h) => Cow::Borrowed(h),
                None => Cow::Owned(help_text(doc_of(ReactorStats::FIELDS, first.field))),
            };
            let unit = first.bytes.then_some(Unit::Bytes);
            let name = format!("zerg_{}", first.family);
            let mut metric =
                encoder.encode_descriptor(&name, &help, unit.as_ref(), metric_type(first.kind))?;
            for series in family {
                for (r, s) in stats.reactors.iter().enumerate() {
                    let mut labels = vec![("reactor", reactors[r].as_str())];
                    labels.extend(series.label);
                    let value = s.get(series.field).unwrap_or(0);
                    encode_value(series.kind, value, metric.encode_family(&labels)?)?;
                }
            }
        }
        // A field added to ReactorStats without a place in REACTOR (a unit test catches it) is
        // still exported, as a counter.
        for &(field, doc) in ReactorStats::FIELDS {
            if REACTOR.iter().any(|s| s.field == field) {
                continue;
            }
            let name = format!("zerg_{field}");
            let mut metric =
                encoder.encode_descriptor(&name, &help_text(doc), None, MetricType::Counter)?;
            for (r, s) in stats.reactors.iter().enumerate() {
                let labels = [("reactor", reactors[r].as_str())];
                let value = s.get(field).unwrap_or(0);
                encode_value(Type::Counter, value, metric.encode_family(&labels)?)?;
            }
        }
        if self.stats.has_acceptor() {
            for &(field, doc) in AcceptorStats::FIELDS {
                let name = format!("zerg_acceptor_{field}");
                let metric =
                    encoder.encode_descriptor(&name, &help_text(doc), None, MetricType::Counter)?;
                let value = stats.acceptor.get(field).unwrap_or(0);
                encode_value(Type::Counter, value, metric)?;
            }
        }
        Ok(())
    }
}

fn metric_type(kind: Type) -> MetricType {
    match kind {
        Type::Counter => MetricType::Counter,
        Type::Gauge => MetricType::Gauge,
    }
}

fn encode_value(
    kind: Type,
    value: u64,
    encoder: prometheus_client::encoding::MetricEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    match kind {
        Type::Counter => ConstCounter::new(value).encode(encoder),
        Type::Gauge => ConstGauge::new(value).encode(encoder),
    }
}

fn doc_of(fields: &[(&'static str, &'static str)], field: &str) -> &'static str {
    fields
        .iter()
        .find(|(name, _)| *name == field)
        .map_or("", |(_, doc)| doc)
}

/// A field's rustdoc as HELP text: one line, intra-doc links reduced to their text, no
/// backticks, backslashes escaped.
fn help_text(doc: &str) -> String {
    let joined = doc.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = String::with_capacity(joined.len());
    let mut chars = joined.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '`' => {}
            // `[text](target)`: keep the text, drop the target. `[text]` alone: keep the text.
            '[' | ']' => {
                if c == ']' && chars.peek() == Some(&'(') {
                    for skipped in chars.by_ref() {
                        if skipped == ')' {
                            break;
                        }
                    }
                }
            }
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reactor_counter_has_one_place_and_a_conventional_name() {
        let fields: Vec<&str> = ReactorStats::FIELDS.iter().map(|(f, _)| *f).collect();
        for s in REACTOR {
            assert!(
                fields.contains(&s.field),
                "{} is not a ReactorStats field",
                s.field
            );
        }
        for f in &fields {
            let n = REACTOR.iter().filter(|s| s.field == *f).count();
            assert_eq!(
                n, 1,
                "ReactorStats::{f} is exported {n} times: give it exactly one place in REACTOR \
                 (a counter or a gauge?)"
            );
        }
        for (i, s) in REACTOR.iter().enumerate() {
            let valid = s
                .family
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            assert!(valid, "{}", s.family);
            // `_total` is the counter suffix the encoder adds: no family may end in it.
            assert!(!s.family.ends_with("_total"), "{}", s.family);
            // A family's series are adjacent, of one type, and told apart by a label.
            let later = REACTOR[i + 1..].iter().position(|t| t.family == s.family);
            if let Some(j) = later {
                assert_eq!(j, 0, "{}: series of a family must be adjacent", s.family);
                let t = &REACTOR[i + 1];
                assert_eq!((s.kind, s.bytes), (t.kind, t.bytes), "{}", s.family);
                assert!(s.label.is_some() && s.label != t.label, "{}", s.family);
            }
        }
        let gauges: Vec<&str> = REACTOR
            .iter()
            .filter(|s| s.kind == Type::Gauge)
            .map(|s| s.field)
            .collect();
        assert_eq!(
            gauges,
            [
                "connections",
                "buffers_total",
                "buffers_free",
                "buffers_held"
            ]
        );
    }

    #[test]
    fn help_is_the_field_documentation_on_one_line_without_markdown() {
        let doc = doc_of(ReactorStats::FIELDS, "connections_shed");
        let help = help_text(doc);
        assert!(
            help.starts_with(
                "Connections closed at once for want of room: the accept queue of Engine::accept was full."
            ),
            "{help}"
        );
        assert!(help.ends_with("(accept_pauses)."), "{help}");
        assert!(!help.contains(['`', '[', ']', '\n']), "{help}");
        assert_eq!(help_text("a [`x`] b\\c"), "a x b\\\\c");
        for (field, doc) in ReactorStats::FIELDS.iter().chain(AcceptorStats::FIELDS) {
            let help = help_text(doc);
            assert!(
                !help.is_empty() && !help.contains(['`', '\n']),
                "{field}: {help}"
            );
        }
    }
}
