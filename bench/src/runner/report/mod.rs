//! The outputs: `results.md` ([`tables`]), `cpu_per_request.svg` and `throughput.svg`
//! ([`svg`]), `machine.md`.

mod svg;
mod tables;

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;

use super::Config;
use super::cpus::{self, Layout};
use super::procfs;
use super::record::{RunRecord, Saturation};
use super::workloads::{Load, Workload};

/// Facts about the machine and the run, printed above the tables.
#[derive(Debug)]
pub(crate) struct Machine {
    lines: Vec<(String, String)>,
}

impl Machine {
    pub(crate) fn collect(
        cfg: &Config,
        ncpu: usize,
        single: &Layout,
        scaled: Option<&Layout>,
    ) -> Self {
        let (model, _) = procfs::cpu_model();
        let first_line = |cmd: &str, args: &[&str]| {
            Command::new(cmd)
                .args(args)
                .output()
                .ok()
                .map(|o| {
                    let mut s = String::from_utf8_lossy(&o.stdout).to_string();
                    s.push_str(&String::from_utf8_lossy(&o.stderr));
                    s.lines().next().unwrap_or("").trim().to_string()
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "unknown".into())
        };
        let pinning = format!(
            "server on CPU {}, load generator on CPU {}, proxy upstream on CPU {}{} (taskset); \
             scaling rows: {}",
            cpus::list(&single.server),
            cpus::list(&single.load),
            cpus::list(&single.upstream),
            if single.upstream_on_load() {
                " (shares the load CPU: the load side is judged on both)"
            } else {
                ""
            },
            match scaled {
                Some(l) => format!(
                    "server threads on CPUs {}, load threads on CPUs {}",
                    cpus::list(&l.server),
                    cpus::list(&l.load)
                ),
                None => format!("not measured ({ncpu} CPUs; they need at least 4)"),
            }
        );
        let lines = vec![
            (
                "date".into(),
                first_line("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]),
            ),
            ("kernel (uname -r)".into(), procfs::kernel()),
            ("CPU".into(), format!("{model}, {ncpu} CPUs online")),
            (
                "load at start (/proc/loadavg)".into(),
                fs::read_to_string("/proc/loadavg")
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            ),
            ("rustc".into(), first_line("rustc", &["--version"])),
            ("crates".into(), crate_versions()),
            ("wrk".into(), first_line("wrk", &["-v"])),
            ("h2load".into(), first_line("h2load", &["--version"])),
            ("redis".into(), first_line("redis-server", &["--version"])),
            (
                "mode".into(),
                format!(
                    "{}: {} interleaved repetitions, warm-up {} s, measured window {} s",
                    if cfg.quick { "quick" } else { "full" },
                    cfg.reps,
                    cfg.warmup,
                    cfg.duration
                ),
            ),
            ("pinning".into(), pinning),
            (
                "command".into(),
                // The program by its name, not its path: results must not record where the
                // repository was checked out.
                format!(
                    "`{}`",
                    std::env::args()
                        .enumerate()
                        .map(|(i, a)| if i == 0 {
                            std::path::Path::new(&a)
                                .file_name()
                                .map_or(a.clone(), |n| n.to_string_lossy().into_owned())
                        } else {
                            a
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            ),
        ];
        Self { lines }
    }

    fn markdown(&self) -> String {
        let mut s = String::from("| fact | value |\n|---|---|\n");
        for (k, v) in &self.lines {
            let _ = writeln!(s, "| {k} | {v} |");
        }
        s
    }
}

/// Versions of the peer crates, from the workspace's Cargo.lock.
fn crate_versions() -> String {
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    let text = fs::read_to_string(lock).unwrap_or_default();
    let mut found = Vec::new();
    let mut name = "";
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = n.trim_matches('"');
        } else if let Some(v) = line.strip_prefix("version = ")
            && ["tokio", "monoio", "io-uring", "hyper", "rustls"].contains(&name)
        {
            found.push(format!("{name} {}", v.trim_matches('"')));
        }
    }
    if found.is_empty() {
        "unknown".into()
    } else {
        found.join(", ")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GroupKind {
    Throughput,
    Idle,
    Syscalls(&'static str),
}

/// A workload as the report sees it, with the rows that ran it (the first is the baseline).
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) id: String,
    pub(crate) title: String,
    pub(crate) unit: String,
    pub(crate) kind: GroupKind,
    pub(crate) servers: Vec<String>,
    pub(crate) per_conn: bool,
    pub(crate) latency: bool,
}

impl Group {
    pub(crate) fn of(w: &Workload, servers: Vec<String>) -> Self {
        Self {
            id: w.id.to_string(),
            title: w.title.to_string(),
            unit: w.unit.to_string(),
            kind: match w.load {
                Load::Idle { .. } => GroupKind::Idle,
                Load::Syscalls { tool, .. } => GroupKind::Syscalls(tool.name()),
                _ => GroupKind::Throughput,
            },
            servers,
            per_conn: w.per_conn,
            latency: w.latency,
        }
    }
}

/// Median, min and max of a sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Spread {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

impl Spread {
    pub(crate) fn of(mut v: Vec<f64>) -> Option<Self> {
        v.retain(|x| x.is_finite());
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    fn show(&self, f: impl Fn(f64) -> String) -> String {
        if self.min == self.max {
            f(self.median)
        } else {
            format!("{} ({}–{})", f(self.median), f(self.min), f(self.max))
        }
    }
}

/// 123456.0 -> "123.5k".
pub(crate) fn si(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// Microseconds, with the unit.
pub(crate) fn fmt_us(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else if us >= 100.0 {
        format!("{us:.0} µs")
    } else {
        format!("{us:.1} µs")
    }
}

fn num(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn ratio(x: Option<Spread>, base: Option<Spread>) -> String {
    match (x, base) {
        (Some(x), Some(b)) if b.median > 0.0 => format!("{:.2}", x.median / b.median),
        _ => "–".into(),
    }
}

fn show(s: Option<Spread>, f: impl Fn(f64) -> String) -> String {
    s.map_or("–".into(), |s| s.show(f))
}

/// Aggregates of one (workload, server) cell: the successful runs, minus the disturbed ones
/// when at least one clean run exists.
struct Cell<'a> {
    ok: Vec<&'a RunRecord>,
    failed: usize,
    disturbed_left_out: usize,
}

impl<'a> Cell<'a> {
    fn new(records: &'a [RunRecord], group: &str, server: &str) -> Self {
        let all: Vec<&RunRecord> = records
            .iter()
            .filter(|r| r.workload == group && r.server == server)
            .collect();
        let failed = all.iter().filter(|r| r.error.is_some()).count();
        let ok: Vec<&RunRecord> = all.into_iter().filter(|r| r.error.is_none()).collect();
        let clean: Vec<&RunRecord> = ok.iter().copied().filter(|r| !r.disturbed).collect();
        if clean.is_empty() {
            Self {
                ok,
                failed,
                disturbed_left_out: 0,
            }
        } else {
            Self {
                disturbed_left_out: ok.len() - clean.len(),
                ok: clean,
                failed,
            }
        }
    }

    fn spread(&self, f: impl Fn(&RunRecord) -> f64) -> Option<Spread> {
        Spread::of(self.ok.iter().map(|r| f(r)).collect())
    }

    fn spread_opt(&self, f: impl Fn(&RunRecord) -> Option<f64>) -> Option<Spread> {
        Spread::of(self.ok.iter().filter_map(|r| f(r)).collect())
    }

    /// Throughput of the server-bound runs only: the others measured the load generator (or
    /// nothing saturated).
    fn throughput(&self) -> Option<Spread> {
        Spread::of(
            self.ok
                .iter()
                .filter(|r| r.saturation == Saturation::ServerBound)
                .map(|r| r.throughput)
                .collect(),
        )
    }

    /// "3 server-bound, 2 client-bound" and the like.
    fn saturation(&self) -> String {
        let mut parts = Vec::new();
        for s in [
            Saturation::ServerBound,
            Saturation::ClientBound,
            Saturation::Unsaturated,
            Saturation::Paced,
        ] {
            let n = self.ok.iter().filter(|r| r.saturation == s).count();
            if n > 0 {
                parts.push(format!("{n} {}", s.label()));
            }
        }
        if parts.is_empty() {
            "–".into()
        } else {
            parts.join(", ")
        }
    }

    fn runs(&self) -> String {
        let mut s = self.ok.len().to_string();
        let disturbed_kept = self.ok.iter().filter(|r| r.disturbed).count();
        if disturbed_kept > 0 {
            let _ = write!(s, " (all {disturbed_kept} disturbed)");
        }
        if self.disturbed_left_out > 0 {
            let _ = write!(s, " (+{} disturbed)", self.disturbed_left_out);
        }
        if self.failed > 0 {
            let _ = write!(s, " (+{} failed)", self.failed);
        }
        s
    }
}

/// Writes every output file; returns their paths.
pub(crate) fn write_all(
    out: &Path,
    machine: &Machine,
    groups: &[Group],
    records: &[RunRecord],
    skipped: &[(String, String)],
    raw: &Path,
) -> Result<Vec<String>, String> {
    let mut written = Vec::new();
    let mut put = |name: &str, text: String| -> Result<(), String> {
        let p = out.join(name);
        fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
        written.push(p.display().to_string());
        Ok(())
    };
    let md = tables::markdown(machine, groups, records, skipped, raw);
    put("results.md", md)?;
    put("machine.md", format!("# Machine\n\n{}", machine.markdown()))?;
    let tp: Vec<&Group> = groups
        .iter()
        .filter(|g| g.kind == GroupKind::Throughput)
        .collect();
    let cpu_panels = svg::panels(
        &tp,
        records,
        |c| c.spread(|r| r.cpu_us_per_req),
        |g| format!("µs/{}", g.unit),
    );
    put(
        "cpu_per_request.svg",
        svg::svg(
            "Server CPU time per request (µs, median; whiskers: min–max; lower is better)",
            &cpu_panels,
        ),
    )?;
    let tp_panels = svg::panels(
        &tp,
        records,
        |c| c.throughput(),
        |g| format!("{}/s", g.unit),
    );
    put(
        "throughput.svg",
        svg::svg(
            "Throughput, server-bound runs only (median; whiskers: min–max; higher is better; \
             n/a: no server-bound run)",
            &tp_panels,
        ),
    )?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_median_min_max() {
        let s = Spread::of(vec![3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!(
            s,
            Spread {
                median: 2.5,
                min: 1.0,
                max: 10.0
            }
        );
        assert!(Spread::of(vec![]).is_none());
    }

    #[test]
    fn throughput_counts_server_bound_runs_only() {
        let rec = |tp: f64, sat| RunRecord {
            workload: "w".into(),
            server: "s".into(),
            throughput: tp,
            saturation: sat,
            ..RunRecord::default()
        };
        let records = vec![
            rec(100.0, Saturation::ServerBound),
            rec(500.0, Saturation::ClientBound),
            rec(300.0, Saturation::ServerBound),
        ];
        let c = Cell::new(&records, "w", "s");
        assert_eq!(c.throughput().unwrap().median, 200.0);
        assert_eq!(c.saturation(), "2 server-bound, 1 client-bound");
    }
}
