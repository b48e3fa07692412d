//! The `prometheus` feature: the engine's counters scraped through a prometheus-client
//! registry, in both text formats, parsed back and checked against real traffic.

mod util;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::time::Duration;

use prometheus_client::encoding::{prometheus_text, text};
use prometheus_client::registry::Registry;
use util::{Mode, TestServer};
use zerg_uring::prometheus::EngineCollector;

const WAIT: Duration = Duration::from_secs(10);

/// One sample line: its name, labels and value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape parsed back: the TYPE and HELP of each family, and every sample.
#[derive(Debug, Default)]
struct Scrape {
    types: HashMap<String, String>,
    help: HashMap<String, String>,
    samples: Vec<Sample>,
    eof: bool,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut s = Scrape::default();
        for line in text.lines() {
            assert!(!s.eof, "a line after # EOF: {line:?}");
            if line == "# EOF" {
                s.eof = true;
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                let old = s.types.insert(name.into(), kind.into());
                assert!(old.is_none(), "family {name} described twice");
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name text");
                s.help.insert(name.into(), help.into());
            } else if line.starts_with("# UNIT ") {
            } else {
                s.samples.push(parse_sample(line));
            }
        }
        s
    }

    /// The samples named `name` (`_total` included for counters).
    fn named(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }

    /// The sum of `name` over every reactor.
    fn sum(&self, name: &str) -> f64 {
        let found = self.named(name);
        assert!(!found.is_empty(), "no {name} in the scrape");
        found.iter().map(|s| s.value).sum()
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let found: Vec<_> = self
            .named(name)
            .into_iter()
            .filter(|s| s.labels == want)
            .collect();
        assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
        found[0].value
    }
}

fn parse_sample(line: &str) -> Sample {
    let (series, value) = line.rsplit_once(' ').expect("series value");
    let value: f64 = value
        .parse()
        .unwrap_or_else(|_| panic!("value of {line:?}"));
    let (name, labels) = match series.split_once('{') {
        None => (series, BTreeMap::new()),
        Some((name, rest)) => {
            let body = rest.strip_suffix('}').expect("closing brace");
            let labels = body
                .split(',')
                .map(|kv| {
                    let (k, v) = kv.split_once('=').expect("label=value");
                    let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                    (k.to_string(), v.expect("quoted label value").to_string())
                })
                .collect();
            (name, labels)
        }
    };
    Sample {
        name: name.to_string(),
        labels,
        value,
    }
}

fn scrape(registry: &Registry) -> Scrape {
    let mut out = String::new();
    text::encode(&mut out, registry).expect("OpenMetrics text");
    let s = Scrape::parse(&out);
    assert!(s.eof, "OpenMetrics text ends with # EOF:\n{out}");
    s
}

const GAUGES: [&str; 4] = [
    "zerg_connections",
    "zerg_buffers",
    "zerg_buffers_free",
    "zerg_buffers_held",
];

#[test]
fn the_engine_counters_scrape_as_typed_labelled_metrics_that_follow_traffic() {
    let server = TestServer::start(Mode::Runtime, util::options(2, false), util::echo);
    let mut registry = Registry::default();
    registry.register_collector(Box::new(EngineCollector::new(server.engine())));

    let before = scrape(&registry);
    // Types: the four gauges, every other family a counter whose samples end in `_total`.
    for g in GAUGES {
        assert_eq!(
            before.types.get(g).map(String::as_str),
            Some("gauge"),
            "{g}"
        );
    }
    for (family, kind) in &before.types {
        assert!(family.starts_with("zerg_"), "{family}");
        if GAUGES.contains(&family.as_str()) {
            continue;
        }
        assert_eq!(kind, "counter", "{family}");
        let samples = before
            .samples
            .iter()
            .filter(|s| s.name.strip_suffix("_total") == Some(family))
            .count();
        assert!(samples > 0, "counter {family} has no {family}_total sample");
    }
    // Every sample belongs to a described family; reactor series carry reactor="0" and "1".
    for s in &before.samples {
        let family = s.name.strip_suffix("_total").unwrap_or(&s.name);
        assert!(before.types.contains_key(family), "{} undescribed", s.name);
    }
    for reactor in ["0", "1"] {
        assert_eq!(
            before.value("zerg_buffers", &[("reactor", reactor)]),
            256.0,
            "the ring size of the test options"
        );
        for t in ["read", "idle", "request", "write"] {
            before.value(
                "zerg_timeouts_total",
                &[("reactor", reactor), ("timeout", t)],
            );
        }
    }
    assert_eq!(
        before.help["zerg_connections"],
        "Live connections (accepted and not yet fully closed)."
    );
    assert_eq!(before.types["zerg_received_bytes"], "counter");
    assert_eq!(before.types["zerg_acceptor_accepted"], "counter");
    assert_eq!(before.sum("zerg_connections"), 0.0);

    // Traffic: three connections, 1000 bytes echoed on each.
    let payload = vec![b'x'; 1000];
    let mut clients: Vec<_> = (0..3).map(|_| server.connect()).collect();
    for c in &mut clients {
        c.write_all(&payload).unwrap();
        let mut back = vec![0; payload.len()];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, payload);
    }
    let mut after = Scrape::default();
    let moved = util::wait_until(WAIT, || {
        after = scrape(&registry);
        after.sum("zerg_connections") == 3.0
            && after.sum("zerg_received_bytes_total")
                >= before.sum("zerg_received_bytes_total") + 3000.0
            && after.sum("zerg_sent_bytes_total") >= before.sum("zerg_sent_bytes_total") + 3000.0
    });
    assert!(moved, "the scrape did not follow the traffic: {after:?}");
    assert_eq!(
        after.sum("zerg_connections_opened_total") - before.sum("zerg_connections_opened_total"),
        3.0
    );
    assert_eq!(after.value("zerg_acceptor_accepted_total", &[]), 3.0);
    // Round-robin: both reactors served one.
    for reactor in ["0", "1"] {
        assert!(after.value("zerg_connections", &[("reactor", reactor)]) >= 1.0);
    }

    // The other text format (Prometheus 0.0.4) says the same.
    let mut old = String::new();
    prometheus_text::encode(&mut old, &registry).expect("Prometheus text");
    let old = Scrape::parse(&old);
    assert_eq!(old.types["zerg_received_bytes_total"], "counter");
    assert_eq!(old.types["zerg_connections"], "gauge");
    assert_eq!(old.sum("zerg_connections"), 3.0);
    assert!(old.sum("zerg_received_bytes_total") >= 3000.0);

    // Closing them brings the gauge back to zero; counters never go down.
    drop(clients);
    let mut closed = Scrape::default();
    assert!(
        util::wait_until(WAIT, || {
            closed = scrape(&registry);
            closed.sum("zerg_connections") == 0.0
        }),
        "connections gauge stayed up: {closed:?}"
    );
    for s in after.samples.iter().filter(|s| s.name.ends_with("_total")) {
        let now = closed.value(
            &s.name,
            &s.labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect::<Vec<_>>(),
        );
        assert!(now >= s.value, "{} went down: {} -> {now}", s.name, s.value);
    }
    server.stop();
}

#[test]
fn a_collector_outlives_its_engine_and_reports_the_last_values() {
    let mut opts = util::options(1, false);
    opts.accept_mode = zerg_uring::AcceptMode::PerReactor;
    let server = TestServer::start(Mode::Reactor, opts, util::echo);
    let mut registry = Registry::default();
    registry.register_collector(Box::new(EngineCollector::new(server.engine())));
    let mut c = server.connect();
    c.write_all(b"ping").unwrap();
    let mut back = [0; 4];
    c.read_exact(&mut back).unwrap();
    drop(c);
    assert!(util::wait_until(WAIT, || {
        scrape(&registry).sum("zerg_connections_opened_total") == 1.0
    }));
    server.stop();
    let last = scrape(&registry);
    assert_eq!(last.sum("zerg_connections_opened_total"), 1.0);
    assert!(last.sum("zerg_received_bytes_total") >= 4.0);
    // Per-reactor accept: no acceptor thread, so no acceptor families.
    assert!(!last.types.keys().any(|k| k.starts_with("zerg_acceptor_")));
}
