//! The outputs: `results.md` (tables), `cpu_per_request.svg` and
//! `throughput.svg` (small multiples, one panel per workload, drawn by hand),
//! `machine.md`.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;

use super::RunRecord;
use super::procfs;

/// Facts about the machine and the run, printed above the tables.
#[derive(Debug)]
pub(crate) struct Machine {
    lines: Vec<(String, String)>,
}

impl Machine {
    pub(crate) fn collect(
        quick: bool,
        reps: usize,
        warmup: f64,
        duration: f64,
        ncpu: usize,
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
        let lines = vec![
            (
                "date".into(),
                first_line("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]),
            ),
            ("kernel (uname -r)".into(), procfs::kernel()),
            ("CPU".into(), format!("{model}, {ncpu} CPUs online")),
            ("rustc".into(), first_line("rustc", &["--version"])),
            ("crates".into(), crate_versions()),
            ("wrk".into(), first_line("wrk", &["-v"])),
            (
                "mode".into(),
                format!(
                    "{}: {reps} interleaved repetitions, warm-up {warmup} s, measured window {duration} s",
                    if quick { "quick" } else { "full" }
                ),
            ),
            (
                "pinning".into(),
                format!(
                    "server on CPU {}, load generator on CPU {} (taskset)",
                    super::exec::SERVER_CPU,
                    super::exec::LOAD_CPU
                ),
            ),
            (
                "command".into(),
                format!("`{}`", std::env::args().collect::<Vec<_>>().join(" ")),
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
            && ["tokio", "monoio", "mio", "io-uring"].contains(&name)
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

/// A workload as the report sees it.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) id: String,
    pub(crate) title: String,
    pub(crate) unit: String,
    pub(crate) kind: GroupKind,
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

/// Aggregates of one (workload, server) cell: the successful runs, minus the
/// disturbed ones when at least one clean run exists.
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

fn show(s: Option<Spread>, f: impl Fn(f64) -> String) -> String {
    s.map_or("–".into(), |s| s.show(f))
}

/// Writes every output file; returns their paths.
pub(crate) fn write_all(
    out: &Path,
    machine: &Machine,
    groups: &[Group],
    servers: &[String],
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
    let md = markdown(machine, groups, servers, records, skipped, raw);
    put("results.md", md)?;
    put("machine.md", format!("# Machine\n\n{}", machine.markdown()))?;
    let tp: Vec<&Group> = groups
        .iter()
        .filter(|g| g.kind == GroupKind::Throughput)
        .collect();
    let cpu_panels = panels(
        &tp,
        servers,
        records,
        |r| r.cpu_us_per_req,
        |g| format!("µs/{}", g.unit),
    );
    put(
        "cpu_per_request.svg",
        svg(
            "Server CPU time per request (µs, median; whiskers: min–max; lower is better)",
            servers,
            &cpu_panels,
        ),
    )?;
    let tp_panels = panels(
        &tp,
        servers,
        records,
        |r| r.throughput,
        |g| format!("{}/s", g.unit),
    );
    put(
        "throughput.svg",
        svg(
            "Throughput (median; whiskers: min–max; higher is better)",
            servers,
            &tp_panels,
        ),
    )?;
    Ok(written)
}

fn markdown(
    machine: &Machine,
    groups: &[Group],
    servers: &[String],
    records: &[RunRecord],
    skipped: &[(String, String)],
    raw: &Path,
) -> String {
    let base = servers.first().map(String::as_str).unwrap_or("");
    let mut s = String::from("# zerg benchmark results\n\n");
    s.push_str(&machine.markdown());
    let _ = writeln!(
        s,
        "\nRatios (×) are against `{base}`, median to median. \"CPU\" is the server's utime+stime \
         (all threads, /proc/PID/stat) over the measured window divided by what it served. \
         \"disturbed\" runs (other tasks used > 20% of the server's or the load generator's \
         core, from /proc/stat) are left out of the medians when the cell has clean runs, and \
         counted in \"runs\". \"load-bound\" counts runs where the load generator used ≥ 95% of its core while the \
         server used < 95% of its own: there the throughput is the load generator's limit and \
         only CPU per request compares the servers. Raw runs: `{}`.\n",
        raw.file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default()
    );

    s.push_str("## Throughput and server CPU per request\n\n");
    s.push_str(
        "| workload | server | runs | throughput /s | × | server CPU µs/unit | × | server CPU | load CPU | p99 | RSS MiB | load-bound |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for g in groups.iter().filter(|g| g.kind == GroupKind::Throughput) {
        let base_cell = Cell::new(records, &g.id, base);
        let base_tp = base_cell.spread(|r| r.throughput);
        let base_cpu = base_cell.spread(|r| r.cpu_us_per_req);
        for srv in servers {
            let c = Cell::new(records, &g.id, srv);
            let tp = c.spread(|r| r.throughput);
            let cpu = c.spread(|r| r.cpu_us_per_req);
            let _ = writeln!(
                s,
                "| {} | {srv} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} |",
                g.id,
                c.runs(),
                show(tp, si),
                ratio(tp, base_tp),
                show(cpu, num),
                ratio(cpu, base_cpu),
                show(c.spread(|r| r.server_cpu_util * 100.0), |x| format!(
                    "{x:.0}%"
                )),
                show(c.spread(|r| r.load_cpu_util * 100.0), |x| format!(
                    "{x:.0}%"
                )),
                c.spread_opt(|r| r.p99_us)
                    .map_or("–".into(), |x| fmt_us(x.median)),
                c.spread(|r| r.rss_kib as f64 / 1024.0)
                    .map_or("–".into(), |x| format!("{:.1}", x.median)),
                c.ok.iter().filter(|r| r.load_bound).count(),
                c.ok.len(),
            );
        }
    }
    s.push_str("\nWorkloads:\n\n");
    for g in groups {
        let _ = writeln!(s, "- `{}`: {} (unit: {})", g.id, g.title, g.unit);
    }

    let idle: Vec<&Group> = groups
        .iter()
        .filter(|g| g.kind == GroupKind::Idle)
        .collect();
    if !idle.is_empty() {
        s.push_str(
            "\n## Memory per idle connection\n\n\
             Server VmRSS after all connections are accepted minus before, divided by the \
             connections (no request sent). Kernel socket memory is not in RSS.\n\n\
             | workload | server | runs | conns | RSS before MiB | RSS after MiB | bytes/conn | × |\n\
             |---|---|---|---|---|---|---|---|\n",
        );
        for g in idle {
            let base_b = Cell::new(records, &g.id, base).spread(|r| r.bytes_per_conn);
            for srv in servers {
                let c = Cell::new(records, &g.id, srv);
                let b = c.spread(|r| r.bytes_per_conn);
                let _ = writeln!(
                    s,
                    "| {} | {srv} | {} | {} | {} | {} | {} | {} |",
                    g.id,
                    c.runs(),
                    show(c.spread(|r| r.idle_conns as f64), |x| format!("{x:.0}")),
                    show(c.spread(|r| r.rss_before_kib as f64 / 1024.0), |x| format!(
                        "{x:.1}"
                    )),
                    show(c.spread(|r| r.rss_kib as f64 / 1024.0), |x| format!(
                        "{x:.1}"
                    )),
                    show(b, |x| format!("{x:.0}")),
                    ratio(b, base_b),
                );
            }
        }
    }

    let sys: Vec<&Group> = groups
        .iter()
        .filter(|g| matches!(g.kind, GroupKind::Syscalls(_)))
        .collect();
    if !sys.is_empty() {
        s.push_str(
            "\n## Syscalls per request\n\n\
             Server syscalls (all threads) during a loadgen run of HTTP keep-alive, 256 \
             connections, depth 1, divided by the responses. `perf` counts the \
             raw_syscalls:sys_enter tracepoint (the server runs at nearly full speed); \
             `strace -c -f` stops the server on every call (it runs several times slower, \
             which may change how much each call batches) but names the calls. An \
             io_uring_enter counts once however many operations it submits or reaps.\n\n\
             | workload | server | runs | syscalls/req | × | req/s under the tool | most frequent (strace) |\n\
             |---|---|---|---|---|---|---|\n",
        );
        for g in sys {
            let base_v = Cell::new(records, &g.id, base).spread(|r| r.syscalls_per_req);
            for srv in servers {
                let c = Cell::new(records, &g.id, srv);
                let v = c.spread(|r| r.syscalls_per_req);
                let top =
                    c.ok.first()
                        .map(|r| r.top_syscalls.clone())
                        .unwrap_or_default();
                let _ = writeln!(
                    s,
                    "| {} | {srv} | {} | {} | {} | {} | {} |",
                    g.id,
                    c.runs(),
                    show(v, |x| format!("{x:.3}")),
                    ratio(v, base_v),
                    show(c.spread(|r| r.throughput), si),
                    if top.is_empty() { "–".into() } else { top },
                );
            }
        }
    }

    let failures: Vec<&RunRecord> = records.iter().filter(|r| r.error.is_some()).collect();
    if !skipped.is_empty() || !failures.is_empty() {
        s.push_str("\n## Skipped and failed\n\n");
        for (what, why) in skipped {
            let _ = writeln!(s, "- skipped `{what}`: {why}");
        }
        for r in failures {
            let _ = writeln!(
                s,
                "- failed `{}` / `{}` rep {}: {}",
                r.workload,
                r.server,
                r.rep + 1,
                r.error.as_deref().unwrap_or("")
            );
        }
    }
    s
}

/// One chart panel: a title, a unit and a bar (median, min, max) per server.
struct Panel {
    title: String,
    unit: String,
    bars: Vec<Option<Spread>>,
}

fn panels(
    groups: &[&Group],
    servers: &[String],
    records: &[RunRecord],
    value: impl Fn(&RunRecord) -> f64 + Copy,
    unit: impl Fn(&Group) -> String,
) -> Vec<Panel> {
    groups
        .iter()
        .map(|g| Panel {
            title: g.id.clone(),
            unit: unit(g),
            bars: servers
                .iter()
                .map(|srv| Cell::new(records, &g.id, srv).spread(value))
                .collect(),
        })
        .collect()
}

const COLORS: [&str; 8] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Small multiples: each panel has its own y scale (workloads differ by
/// orders of magnitude), bars in server order with the median printed.
fn svg(title: &str, servers: &[String], panels: &[Panel]) -> String {
    let cols = 4usize;
    let (pw, ph) = (250.0, 210.0);
    let top = 70.0;
    let rows = panels.len().div_ceil(cols).max(1);
    let width = pw * cols as f64 + 20.0;
    let height = top + ph * rows as f64 + 10.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="22" font-size="15" font-weight="bold">{}</text>"#,
        esc(title)
    );
    // Legend.
    let mut lx = 10.0;
    for (i, name) in servers.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="36" width="12" height="12" fill="{color}"/>"#
        );
        let _ = writeln!(s, r#"<text x="{}" y="46">{}</text>"#, lx + 16.0, esc(name));
        lx += 30.0 + 7.0 * name.len() as f64;
    }
    for (pi, p) in panels.iter().enumerate() {
        let x0 = 10.0 + pw * (pi % cols) as f64;
        let y0 = top + ph * (pi / cols) as f64;
        let (plot_top, plot_h) = (y0 + 22.0, ph - 60.0);
        let base_y = plot_top + plot_h;
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" font-weight="bold">{} <tspan font-weight="normal" fill="#555">({})</tspan></text>"##,
            x0 + 5.0,
            y0 + 12.0,
            esc(&p.title),
            esc(&p.unit)
        );
        let max = p
            .bars
            .iter()
            .flatten()
            .map(|b| b.max)
            .fold(0.0f64, f64::max);
        let scale = if max > 0.0 {
            plot_h / (max * 1.12)
        } else {
            0.0
        };
        let _ = writeln!(
            s,
            r##"<line x1="{}" y1="{base_y}" x2="{}" y2="{base_y}" stroke="#333"/>"##,
            x0 + 5.0,
            x0 + pw - 15.0
        );
        let n = p.bars.len().max(1) as f64;
        let slot = (pw - 30.0) / n;
        let bw = r1((slot * 0.7).min(40.0));
        for (i, b) in p.bars.iter().enumerate() {
            let cx = r1(x0 + 10.0 + slot * (i as f64 + 0.5));
            let color = COLORS[i % COLORS.len()];
            let Some(b) = b else {
                let _ = writeln!(
                    s,
                    r#"<text x="{cx}" y="{}" text-anchor="middle">n/a</text>"#,
                    base_y - 4.0
                );
                continue;
            };
            let h = r1(b.median * scale);
            let _ = writeln!(
                s,
                r#"<rect x="{}" y="{}" width="{bw}" height="{h}" fill="{color}"><title>{}: {}</title></rect>"#,
                r1(cx - bw / 2.0),
                r1(base_y - h),
                esc(&servers[i]),
                b.median
            );
            if b.max > b.min {
                let (ya, yb) = (r1(base_y - b.min * scale), r1(base_y - b.max * scale));
                let _ = writeln!(
                    s,
                    r##"<path d="M{cx} {ya} V{yb} M{} {ya} H{} M{} {yb} H{}" stroke="#222" fill="none"/>"##,
                    cx - 4.0,
                    cx + 4.0,
                    cx - 4.0,
                    cx + 4.0
                );
            }
            let label = if b.median >= 1000.0 {
                si(b.median)
            } else {
                num(b.median)
            };
            let _ = writeln!(
                s,
                r#"<text x="{cx}" y="{}" text-anchor="middle">{label}</text>"#,
                r1(base_y - b.max.max(b.median) * scale - 4.0)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// Rounds an SVG coordinate to 0.1 px (shorter files, same picture).
fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
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
    fn svg_is_well_formed_enough() {
        let servers = vec!["a".to_string(), "b<".to_string()];
        let panels = vec![Panel {
            title: "w".into(),
            unit: "µs".into(),
            bars: vec![Spread::of(vec![1.0, 2.0]), None],
        }];
        let s = svg("t", &servers, &panels);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert!(s.contains("b&lt;"));
    }
}
