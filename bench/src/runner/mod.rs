//! The runner: every workload against every server row of its family, interleaved
//! (A B C A B C …), server and load generator on CPUs of their own ([`cpus`]), results to
//! `bench/results/` (or `bench/results/<machine>/` on a machine other than the two-CPU
//! reference).
//!
//! The tables that decide what runs: [`rows::server_kinds`] (the rows) and
//! [`workloads::workloads`] (the row groups).

mod cpus;
mod drivers;
mod exec;
mod measure;
mod procfs;
mod record;
mod report;
mod rows;
mod syscalls;
mod workloads;
mod wrk;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::args::Args;
use cpus::Layout;
use exec::Proc;
use rows::{Paths, ServerKind};
use workloads::{Load, Workload};

pub(crate) use record::RunRecord;

/// Run settings.
#[derive(Debug)]
pub(crate) struct Config {
    quick: bool,
    reps: usize,
    /// Reps of the idle and syscall groups (slower, and less noisy).
    aux_reps: usize,
    warmup: f64,
    duration: f64,
    rate: u64,
    /// Before each run, wait up to this long for the CPUs to be quiet ...
    quiet_wait: f64,
    /// ... as long as all waits together stay under this.
    quiet_budget: f64,
    only: Option<Vec<String>>,
    servers: Option<Vec<String>>,
    out: Option<PathBuf>,
    examples: Option<PathBuf>,
}

pub(crate) fn main(argv: Vec<String>) -> Result<(), String> {
    let mut a = Args::parse(argv)?;
    let quick = a.flag("quick")?;
    let list = |s: Option<String>| s.map(|s| s.split(',').map(String::from).collect::<Vec<_>>());
    let cfg = Config {
        quick,
        reps: a.get("reps", if quick { 1 } else { 5 })?,
        aux_reps: a.get("aux-reps", if quick { 1 } else { 2 })?,
        warmup: a.get("warmup", if quick { 0.2 } else { 2.0 })?,
        duration: a.get("duration", if quick { 0.5 } else { 10.0 })?,
        rate: a.get("rate", 50_000)?,
        quiet_wait: a.get("quiet-wait", if quick { 0.5 } else { 15.0 })?,
        quiet_budget: a.get("quiet-budget", if quick { 10.0 } else { 900.0 })?,
        only: list(a.opt("only")?),
        servers: list(a.opt("servers")?),
        out: a.opt("out")?,
        examples: a.opt("examples")?,
    };
    a.finish()?;
    if cfg.reps == 0 || cfg.duration <= 0.0 {
        return Err("--reps and --duration must be > 0".into());
    }
    crate::proto::raise_nofile_limit();
    run(&cfg)
}

/// `bench/results` on the two-CPU reference machine, else `bench/results/<cpu>-<n>cpu`.
fn default_out(ncpu: usize, model: &str) -> PathBuf {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
    if ncpu == 2 {
        return base;
    }
    let slug: String = model
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let slug = slug
        .split('-')
        .filter(|p| !p.is_empty())
        .take(4)
        .collect::<Vec<_>>()
        .join("-");
    base.join(format!("{slug}-{ncpu}cpu"))
}

/// A row or workload that was not measured, and why.
type Skipped = Vec<(String, String)>;

/// The rows that can run here: filtered by `--servers`, missing binaries and failed start-ups
/// skipped loudly.
fn usable_rows(cfg: &Config, paths: &Paths, logs: &Path, skipped: &mut Skipped) -> Vec<ServerKind> {
    let mut servers = rows::server_kinds(paths);
    if let Some(only) = &cfg.servers {
        servers.retain(|s| only.contains(&s.name));
    }
    let mut probe_port = 19_900;
    servers.retain(|s| {
        probe_port += 1;
        let why = match s.missing() {
            Some(why) => Some(why),
            None => probe_server(s, probe_port, logs).err(),
        };
        match why {
            None => true,
            Some(e) => {
                let what = format!("{} ({:?} rows)", s.name, s.family);
                eprintln!("\n*** SKIPPING server {what}: {e}\n");
                skipped.push((what, e));
                false
            }
        }
    });
    servers
}

fn run(cfg: &Config) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let (model, ncpu) = procfs::cpu_model();
    let out = cfg.out.clone().unwrap_or_else(|| default_out(ncpu, &model));
    let raw = out.join("raw");
    fs::create_dir_all(&raw).map_err(|e| format!("{}: {e}", raw.display()))?;
    let stamp = now_stamp();
    let logs = raw.join(format!("logs-{stamp}"));
    fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    let ticks = procfs::clock_ticks();
    if ncpu < 2 {
        eprintln!("WARNING: {ncpu} CPU(s): server and load share a core; numbers mean little");
    }
    let bin_dir = exe.parent().unwrap_or(Path::new(".")).to_path_buf();
    let paths = Paths {
        examples: cfg
            .examples
            .clone()
            .unwrap_or_else(|| bin_dir.join("examples")),
        c_server: bin_dir.join("c-reference/uring_server"),
        exe: exe.clone(),
    };
    let mut skipped: Skipped = Vec::new();
    if let Err(e) = rows::build_c_server(&paths.c_server, true) {
        let _ = fs::remove_file(&paths.c_server);
        eprintln!(
            "\n*** C REFERENCE SERVER NOT BUILT: {e}\n*** its row is skipped and proxy upstreams use the tokio echo peer\n"
        );
    }
    let c_server = paths.c_server.exists().then_some(paths.c_server.as_path());
    let servers = usable_rows(cfg, &paths, &logs, &mut skipped);
    if servers.is_empty() {
        return Err("no server row can start".into());
    }

    let single = Layout::single(ncpu);
    let scaled = Layout::scaled(ncpu);
    let wls = selected_workloads(cfg, ncpu, scaled.is_some(), &mut skipped);
    let plan: Vec<(&Workload, Vec<&ServerKind>)> = wls
        .iter()
        .map(|w| {
            let rows: Vec<&ServerKind> = servers
                .iter()
                .filter(|s| s.serves(w.family, w.server))
                .collect();
            (w, rows)
        })
        .filter(|(_, rows)| !rows.is_empty())
        .collect();
    if plan.is_empty() {
        return Err("nothing to run: no workload matches --only/--servers on this machine".into());
    }
    let total: usize = plan.iter().map(|(w, r)| reps_of(cfg, w) * r.len()).sum();
    eprintln!(
        "zerg-bench: {} workloads, {} server rows, {total} runs; warm-up {} s, measured {} s; \
         servers on CPU {}, load on CPU {}; results in {}",
        plan.len(),
        servers.len(),
        cfg.warmup,
        cfg.duration,
        cpus::list(&single.server),
        cpus::list(&single.load),
        out.display()
    );
    let raw_path = raw.join(format!("runs-{stamp}.jsonl"));
    let mut raw_file =
        fs::File::create(&raw_path).map_err(|e| format!("{}: {e}", raw_path.display()))?;
    let ctx = measure::Ctx {
        cfg,
        exe: &exe,
        c_server,
        logs: &logs,
        ticks,
    };
    let started = Instant::now();
    let records = run_plan(&ctx, &plan, (&single, scaled.as_ref()), &mut raw_file)?;

    let machine = report::Machine::collect(cfg, ncpu, &single, scaled.as_ref());
    let groups: Vec<report::Group> = plan
        .iter()
        .map(|(w, rows)| report::Group::of(w, rows.iter().map(|s| s.name.clone()).collect()))
        .collect();
    let files = report::write_all(&out, &machine, &groups, &records, &skipped, &raw_path)?;
    eprintln!(
        "\nzerg-bench: done in {:.0} s; wrote {}",
        started.elapsed().as_secs_f64(),
        files.join(", ")
    );
    Ok(())
}

/// The workloads of this run: `--only`, or the quick set, minus those whose tool is missing or
/// that this machine cannot run (said loudly, and listed in the results).
fn selected_workloads(
    cfg: &Config,
    ncpu: usize,
    can_scale: bool,
    skipped: &mut Skipped,
) -> Vec<Workload> {
    let mut wls = workloads::workloads(cfg.rate);
    match &cfg.only {
        Some(only) => wls.retain(|w| only.iter().any(|o| w.id.starts_with(o.as_str()))),
        None if cfg.quick => wls.retain(|w| w.quick),
        None => {}
    }
    let tools = Tools::check(&wls);
    wls.retain(|w| {
        let why = match (tools.missing_for(w), w.scaled && !can_scale) {
            (Some(tool), _) => format!("{tool} is not installed"),
            (None, true) => format!(
                "not measured: scaling rows need at least 4 CPUs (half for the servers, half \
                 for the load), this machine has {ncpu}"
            ),
            (None, false) => return true,
        };
        eprintln!("\n*** SKIPPING workload {}: {why}\n", w.id);
        skipped.push((w.id.to_string(), why));
        false
    });
    wls
}

/// Runs the plan: for each workload, its rows in turn, `reps` times; each record goes to the
/// raw file as it is made.
fn run_plan(
    ctx: &measure::Ctx<'_>,
    plan: &[(&Workload, Vec<&ServerKind>)],
    (single, scaled): (&Layout, Option<&Layout>),
    raw_file: &mut fs::File,
) -> Result<Vec<RunRecord>, String> {
    let cfg = ctx.cfg;
    let total: usize = plan.iter().map(|(w, r)| reps_of(cfg, w) * r.len()).sum();
    let started = Instant::now();
    let mut records = Vec::new();
    let mut done = 0;
    let mut port = 20_000u16;
    let mut waited = 0.0;
    for (w, rows) in plan {
        let layout = if w.scaled {
            scaled.unwrap_or(single)
        } else {
            single
        };
        let reps = reps_of(cfg, w);
        for rep in 0..reps {
            for s in rows {
                done += 1;
                // A fresh port per run: no TIME_WAIT or half-dead listener from the previous
                // run can interfere (below the ephemeral range, which starts at 32768).
                port = if port >= 31_000 { 20_000 } else { port + 1 };
                let budget_left = cfg.quiet_budget - waited;
                waited += wait_quiet(cfg.quiet_wait.min(budget_left), ctx.ticks, layout);
                let rec = measure::run_one(ctx, s, w, layout, rep, port);
                eprintln!(
                    "[{done:>3}/{total}] {:<20} rep {}/{} {:<16} {}   (elapsed {:.0} s)",
                    w.id,
                    rep + 1,
                    reps,
                    s.name,
                    progress_line(w, &rec),
                    started.elapsed().as_secs_f64()
                );
                let line = serde_json::to_string(&rec).map_err(|e| e.to_string())?;
                let _ = writeln!(raw_file, "{line}");
                records.push(rec);
            }
        }
    }
    Ok(records)
}

fn reps_of(cfg: &Config, w: &Workload) -> usize {
    match w.load {
        Load::Idle { .. } | Load::Syscalls { .. } => cfg.aux_reps.max(1),
        _ => cfg.reps,
    }
}

/// CPU share above which a benchmark CPU counts as busy before a run.
const QUIET: f64 = 0.1;

/// Waits (at most `max_s` seconds) until no server or load CPU is more than [`QUIET`] busy
/// over 0.5 s: nothing of ours runs between two runs, so whatever is busy then (a build, say)
/// would disturb the next one. Returns the seconds spent.
fn wait_quiet(max_s: f64, ticks: f64, layout: &Layout) -> f64 {
    let start = Instant::now();
    if max_s <= 0.0 {
        return 0.0;
    }
    let cpus: Vec<usize> = layout.server.iter().chain(&layout.load).copied().collect();
    let deadline = Instant::now() + Duration::from_secs_f64(max_s);
    let mut said = false;
    loop {
        let busy = |c: &usize| procfs::cpu_busy_ticks(*c).unwrap_or(0);
        let (a, t0): (Vec<u64>, _) = (cpus.iter().map(busy).collect(), Instant::now());
        std::thread::sleep(Duration::from_millis(500));
        let wall = t0.elapsed().as_secs_f64();
        let shares: Vec<f64> = cpus
            .iter()
            .zip(&a)
            .map(|(c, a)| busy(c).saturating_sub(*a) as f64 / ticks / wall)
            .collect();
        let show = || {
            cpus.iter()
                .zip(&shares)
                .map(|(c, s)| format!("cpu{c} {:.0}%", s * 100.0))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if shares.iter().all(|s| *s <= QUIET) {
            return start.elapsed().as_secs_f64();
        }
        if Instant::now() >= deadline {
            eprintln!(
                "        still busy after {max_s:.1} s ({}): running anyway",
                show()
            );
            return start.elapsed().as_secs_f64();
        }
        if !said {
            eprintln!(
                "        waiting for quiet CPUs ({} busy with other work)",
                show()
            );
            said = true;
        }
    }
}

/// Starts a row once (HTTP or its own protocol) to see that it can run here. (Each row probes
/// its own port: an io_uring server's port can stay bound for a moment after it is killed.)
fn probe_server(s: &ServerKind, port: u16, logs: &Path) -> Result<(), String> {
    // A proxy's upstream need not exist to accept connections.
    let upstream = (s.family == rows::Family::Proxy).then_some(1);
    let cmd = rows::command(s, port, "http", 16 * 1024, upstream, 1);
    let log = exec::log_path(logs, &format!("probe-{}", s.name));
    let mut p = Proc::spawn_pinned(&[0], &cmd, &s.env, Stdio::null(), &log)?;
    let r = exec::wait_listening(&mut p, port, Duration::from_secs(5));
    p.kill();
    r.map_err(|e| {
        let tail = fs::read_to_string(&log).unwrap_or_default();
        format!("{e}; its stderr: {}", tail.trim())
    })
}

/// External tools that some workloads need.
struct Tools {
    wrk: bool,
    perf: bool,
    strace: bool,
    redis_benchmark: bool,
    h2load: bool,
}

impl Tools {
    fn check(wls: &[Workload]) -> Self {
        let needs_wrk = wls.iter().any(|w| matches!(w.load, Load::Wrk { .. }));
        let mut wrk = have("wrk");
        if needs_wrk && !wrk {
            eprintln!("zerg-bench: wrk is missing; trying apt-get install -y wrk");
            let _ = Command::new("sh")
                .arg("-c")
                .arg("apt-get update -qq && apt-get install -y -qq wrk")
                .status();
            wrk = have("wrk");
        }
        Self {
            wrk,
            perf: have("perf"),
            strace: have("strace"),
            redis_benchmark: have("redis-benchmark"),
            h2load: have("h2load"),
        }
    }

    fn missing_for(&self, w: &Workload) -> Option<&'static str> {
        use syscalls::SyscallTool;
        match w.load {
            Load::Wrk { .. } if !self.wrk => Some("wrk"),
            Load::Syscalls {
                tool: SyscallTool::Perf,
                ..
            } if !self.perf => Some("perf"),
            Load::Syscalls {
                tool: SyscallTool::Strace,
                ..
            } if !self.strace => Some("strace"),
            Load::Redis { .. } if !self.redis_benchmark => Some("redis-benchmark (redis-tools)"),
            Load::H2load { .. } if !self.h2load => Some("h2load (nghttp2-client)"),
            _ => None,
        }
    }
}

fn have(tool: &str) -> bool {
    rows::which(tool).is_some()
}

fn progress_line(w: &Workload, r: &RunRecord) -> String {
    if let Some(e) = &r.error {
        return format!("FAILED: {e}");
    }
    match w.load {
        Load::Idle { .. } => format!(
            "{} conns, RSS {:.1} -> {:.1} MiB, {:.0} B/conn",
            r.idle_conns,
            r.rss_before_kib as f64 / 1024.0,
            r.rss_kib as f64 / 1024.0,
            r.bytes_per_conn
        ),
        Load::Syscalls { .. } => format!(
            "{:.2} syscalls/{} ({} calls, {} {}s at {}/s) {}",
            r.syscalls_per_req,
            w.unit,
            r.syscalls,
            r.requests,
            w.unit,
            report::si(r.throughput),
            r.top_syscalls
        ),
        _ => record::throughput_line(r, w.unit),
    }
}

/// Builds the C reference server to `out` (for the peers' tests; installs nothing).
#[cfg(test)]
pub(crate) fn build_c_server_for_tests(out: &Path) -> Result<(), String> {
    rows::build_c_server(out, false)
}

/// `YYYYmmdd-HHMMSS` (UTC) for file names.
fn now_stamp() -> String {
    Command::new("date")
        .args(["-u", "+%Y%m%d-%H%M%S"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("pid{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_that_cannot_start_is_reported_with_its_stderr() {
        let s = ServerKind {
            cmd: ["sh", "-c", "echo no ring here >&2; exit 1", "sh"]
                .map(String::from)
                .into(),
            style: rows::ArgStyle::Port,
            ..rows::server_kinds(&Paths {
                exe: "x".into(),
                examples: "x".into(),
                c_server: "x".into(),
            })[0]
                .clone()
        };
        let e = probe_server(&s, 19_899, &std::env::temp_dir()).unwrap_err();
        assert!(e.contains("exited") && e.contains("no ring here"), "{e}");
    }

    #[test]
    fn results_of_other_machines_go_to_their_own_directory() {
        assert!(default_out(2, "AMD EPYC").ends_with("results"));
        assert!(
            default_out(16, "AMD EPYC 7B13 64-Core Processor")
                .ends_with("results/amd-epyc-7b13-64-16cpu")
        );
    }
}
