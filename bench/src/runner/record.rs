//! One run's record, its saturation verdict and its progress line.

use serde::{Deserialize, Serialize};

use super::report::{fmt_us, si};

/// A run is "server-bound" when the server used at least this share of its CPUs ...
pub(crate) const SERVER_SATURATED: f64 = 0.95;
/// ... while the load side used less than this share of its own.
pub(crate) const LOAD_SATURATED: f64 = 0.90;
/// A run is "disturbed" when other tasks used more than this share of the server's or the load
/// generator's CPUs during its window (tick-sampled /proc/stat, so a few percent of noise; clean
/// runs stay well below).
pub(crate) const DISTURBED: f64 = 0.2;

/// Which side limited a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Saturation {
    /// Server ≥ 95 % of its CPUs, load side < 90 %: the throughput is the server's.
    ServerBound,
    /// Load side ≥ 90 %: the throughput is (or may be) the load generator's limit.
    ClientBound,
    /// Neither side saturated (latency-bound: few connections, ping-pong).
    #[default]
    Unsaturated,
    /// Fixed-rate load: throughput is set by the load; CPU per request is the metric.
    Paced,
}

impl Saturation {
    pub(crate) fn judge(paced: bool, server_util: f64, load_util: f64) -> Self {
        if paced {
            Saturation::Paced
        } else if load_util >= LOAD_SATURATED {
            Saturation::ClientBound
        } else if server_util < SERVER_SATURATED {
            Saturation::Unsaturated
        } else {
            Saturation::ServerBound
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Saturation::ServerBound => "server-bound",
            Saturation::ClientBound => "client-bound",
            Saturation::Unsaturated => "unsaturated",
            Saturation::Paced => "paced",
        }
    }
}

/// One run, as stored in `raw/runs-*.jsonl`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct RunRecord {
    pub(crate) workload: String,
    pub(crate) server: String,
    pub(crate) rep: usize,
    pub(crate) error: Option<String>,
    pub(crate) requests: u64,
    pub(crate) throughput: f64,
    pub(crate) cpu_us_per_req: f64,
    /// Load side (load generator, plus the upstream when it shares the load CPUs) per request.
    pub(crate) load_us_per_req: f64,
    /// Busy time of the server's whole CPUs per request (server, softirq, kernel threads such as
    /// ksoftirqd; anything else pinned there).
    pub(crate) core_us_per_req: f64,
    /// Share of its CPUs the server used (1.0 = all of them, all the time).
    pub(crate) server_cpu_util: f64,
    /// Share of its CPUs the load side used.
    pub(crate) load_cpu_util: f64,
    /// The load generator's own CPU time over the window (getrusage), as a share of its CPUs;
    /// cross-checks `load_cpu_util` (our load generator only).
    pub(crate) load_self_util: Option<f64>,
    /// A proxy's upstream, share of one CPU.
    pub(crate) upstream_cpu_util: Option<f64>,
    pub(crate) saturation: Saturation,
    /// Connections completed in the window (`--reqs-per-conn` loads) and server CPU per one.
    pub(crate) conns_completed: u64,
    pub(crate) cpu_us_per_conn: Option<f64>,
    /// Share of a CPU used by other tasks on the server's / the load CPUs.
    pub(crate) foreign_server_core: f64,
    pub(crate) foreign_load_core: f64,
    /// Another task used more than [`DISTURBED`] of either side: the run is kept in the raw
    /// data but left out of the medians (when clean runs of the same cell exist).
    pub(crate) disturbed: bool,
    pub(crate) p50_us: Option<f64>,
    pub(crate) p99_us: Option<f64>,
    pub(crate) p999_us: Option<f64>,
    pub(crate) errors: u64,
    pub(crate) rss_kib: u64,
    pub(crate) idle_conns: usize,
    pub(crate) rss_before_kib: u64,
    pub(crate) bytes_per_conn: f64,
    pub(crate) syscalls: u64,
    pub(crate) syscalls_per_req: f64,
    pub(crate) top_syscalls: String,
}

/// What the progress line shows for a throughput-type run.
pub(crate) fn throughput_line(r: &RunRecord, unit: &str) -> String {
    let mut s = format!(
        "{:>7}/s  {:>6.2} us/{unit} (load {:.2})  p99 {:>7}  srv cpu {:>3.0}%  load cpu {:>3.0}%  [{}]",
        si(r.throughput),
        r.cpu_us_per_req,
        r.load_us_per_req,
        r.p99_us.map_or("-".into(), fmt_us),
        r.server_cpu_util * 100.0,
        r.load_cpu_util * 100.0,
        r.saturation.label(),
    );
    if let Some(own) = r.load_self_util {
        s.push_str(&format!("  (loadgen getrusage {:.0}%)", own * 100.0));
    }
    if let Some(up) = r.upstream_cpu_util {
        s.push_str(&format!("  upstream cpu {:.0}%", up * 100.0));
    }
    if let Some(c) = r.cpu_us_per_conn {
        s.push_str(&format!("  {:.1} us/conn", c));
    }
    if r.disturbed {
        s.push_str(&format!(
            "  [disturbed: others used {:.0}% of the server CPUs, {:.0}% of the load CPUs]",
            r.foreign_server_core * 100.0,
            r.foreign_load_core * 100.0
        ));
    }
    if r.errors > 0 {
        s.push_str(&format!("  errors {}", r.errors));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturation_rule() {
        assert_eq!(
            Saturation::judge(false, 0.99, 0.80),
            Saturation::ServerBound
        );
        assert_eq!(
            Saturation::judge(false, 0.99, 0.90),
            Saturation::ClientBound
        );
        assert_eq!(
            Saturation::judge(false, 0.80, 0.95),
            Saturation::ClientBound
        );
        assert_eq!(
            Saturation::judge(false, 0.94, 0.50),
            Saturation::Unsaturated
        );
        assert_eq!(Saturation::judge(true, 0.99, 0.10), Saturation::Paced);
    }
}
