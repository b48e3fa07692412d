//! The runner: every workload against every server, interleaved
//! (A B C A B C …), server on CPU 0 and load on CPU 1, results to
//! `bench/results/`.
//!
//! Two tables decide what runs: [`server_kinds`] (the rows)
//! and [`workloads`] (the row groups).

mod exec;
mod procfs;
mod report;
mod wrk;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::args::Args;
use exec::{Proc, SyscallTool};

/// One server row. The runner starts `cmd` followed by
/// `--port P --workload http|echo --buf-size N`, pinned to CPU 0, and stops it
/// with SIGKILL after the run. The server must listen on 127.0.0.1:P (or
/// 0.0.0.0:P) and do the work described in `crate::proto`.
#[derive(Clone, Debug)]
pub(crate) struct ServerKind {
    pub(crate) name: String,
    pub(crate) cmd: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
}

impl ServerKind {
    fn new(name: &str, cmd: &[&str]) -> Self {
        Self {
            name: name.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
        }
    }
}

/// The server rows, in table order; the first one is the baseline of the
/// "× tokio" ratios. `exe` is this binary. A new row only needs a command that
/// accepts the arguments above.
fn server_kinds(exe: &str) -> Vec<ServerKind> {
    vec![
        ServerKind::new("tokio", &[exe, "tokio"]),
        ServerKind::new("monoio", &[exe, "monoio"]),
        ServerKind::new("monoio-coop", &[exe, "monoio", "--coop-taskrun"]),
        // zerg, one row per mode: handlers on the reactor thread with per-reactor accept (the
        // thread-per-core setup), then one dimension changed at a time.
        ServerKind::new(
            "zerg",
            &[exe, "zerg", "--mode", "reactor", "--accept", "per-reactor"],
        ),
        ServerKind::new(
            "zerg-dedicated",
            &[exe, "zerg", "--mode", "reactor", "--accept", "dedicated"],
        ),
        ServerKind::new(
            "zerg-inc",
            &[
                exe,
                "zerg",
                "--mode",
                "reactor",
                "--accept",
                "per-reactor",
                "--incremental",
            ],
        ),
        ServerKind::new(
            "zerg-runtime",
            &[exe, "zerg", "--mode", "runtime", "--accept", "dedicated"],
        ),
    ]
}

/// How a workload drives the server.
#[derive(Clone, Debug)]
enum Load {
    /// wrk, one thread, keep-alive, `conns` connections.
    Wrk { conns: usize },
    /// Our load generator with these arguments (port and timing added).
    Gen { args: Vec<String> },
    /// `conns` idle connections: server RSS delta per connection.
    Idle { conns: usize },
    /// Server syscalls per request during a loadgen run.
    Syscalls {
        tool: SyscallTool,
        args: Vec<String>,
    },
}

/// One row group.
#[derive(Clone, Debug)]
struct Workload {
    id: &'static str,
    title: &'static str,
    /// Server `--workload`.
    server: &'static str,
    buf_size: usize,
    load: Load,
    /// The unit of one "request" in the table.
    unit: &'static str,
}

fn loadgen_args(s: &str) -> Load {
    Load::Gen {
        args: s.split_whitespace().map(String::from).collect(),
    }
}

fn syscalls(tool: SyscallTool) -> Load {
    Load::Syscalls {
        tool,
        // "Under load": as many connections as the keep-alive rows' larger group.
        args: "--mode http --conns 256 --depth 1"
            .split_whitespace()
            .map(String::from)
            .collect(),
    }
}

const KIB: usize = 1024;

/// A run is "disturbed" when other tasks used more than this share of the
/// server's or the load generator's core during its window (tick-sampled
/// /proc/stat, so a few percent of noise; clean runs stay well below).
const DISTURBED: f64 = 0.2;

fn workloads(rate: u64) -> Vec<Workload> {
    let w = |id, title, server, buf_size, load, unit| Workload {
        id,
        title,
        server,
        buf_size,
        load,
        unit,
    };
    let rate_args = format!("--mode http --conns 64 --depth 1 --rate {rate}");
    vec![
        w(
            "http-c16",
            "HTTP keep-alive, 16 conns (wrk)",
            "http",
            16 * KIB,
            Load::Wrk { conns: 16 },
            "req",
        ),
        w(
            "http-c256",
            "HTTP keep-alive, 256 conns (wrk)",
            "http",
            16 * KIB,
            Load::Wrk { conns: 256 },
            "req",
        ),
        w(
            "http-pipe16-c256",
            "HTTP pipelined x16, 256 conns",
            "http",
            16 * KIB,
            loadgen_args("--mode http --conns 256 --depth 16"),
            "req",
        ),
        w(
            "http-rate",
            "HTTP fixed rate, 64 conns",
            "http",
            16 * KIB,
            loadgen_args(&rate_args),
            "req",
        ),
        w(
            "echo-64B-c1",
            "echo 64 B, 1 conn",
            "echo",
            16 * KIB,
            loadgen_args("--mode echo --conns 1 --size 64"),
            "msg",
        ),
        w(
            "echo-64B-c64",
            "echo 64 B, 64 conns",
            "echo",
            16 * KIB,
            loadgen_args("--mode echo --conns 64 --size 64"),
            "msg",
        ),
        w(
            "echo-64B-c1024",
            "echo 64 B, 1,024 conns",
            "echo",
            16 * KIB,
            loadgen_args("--mode echo --conns 1024 --size 64"),
            "msg",
        ),
        w(
            "echo-16KiB-c16",
            "echo 16 KiB, 16 conns, 16 KiB buffers",
            "echo",
            16 * KIB,
            loadgen_args("--mode echo --conns 16 --size 16KiB"),
            "msg",
        ),
        w(
            "echo-1MiB-c4",
            "echo 1 MiB, 4 conns, 1 MiB buffers",
            "echo",
            1024 * KIB,
            loadgen_args("--mode echo --conns 4 --size 1MiB"),
            "msg",
        ),
        w(
            "churn-c16",
            "connect, 1 request, close (RST); 16 at a time",
            "http",
            16 * KIB,
            loadgen_args("--mode churn --conns 16"),
            "conn",
        ),
        w(
            "syscalls-perf",
            "syscalls/request, HTTP 256 conns (perf tracepoint)",
            "http",
            16 * KIB,
            syscalls(SyscallTool::Perf),
            "req",
        ),
        w(
            "syscalls-strace",
            "syscalls/request, HTTP 256 conns (strace -c)",
            "http",
            16 * KIB,
            syscalls(SyscallTool::Strace),
            "req",
        ),
        w(
            "idle-10k",
            "10,000 idle connections",
            "http",
            16 * KIB,
            Load::Idle { conns: 10_000 },
            "conn",
        ),
    ]
}

/// Run settings.
#[derive(Debug)]
struct Config {
    quick: bool,
    reps: usize,
    /// Reps of the idle and syscall groups (slower, and less noisy).
    aux_reps: usize,
    warmup: f64,
    duration: f64,
    rate: u64,
    /// Before each run, wait up to this long for both CPUs to be quiet ...
    quiet_wait: f64,
    /// ... as long as all waits together stay under this.
    quiet_budget: f64,
    only: Option<Vec<String>>,
    servers: Option<Vec<String>>,
    out: PathBuf,
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
    /// Busy time of the server's whole core per request (server, softirq,
    /// kernel threads such as ksoftirqd; anything else pinned there).
    pub(crate) core_us_per_req: f64,
    pub(crate) server_cpu_util: f64,
    pub(crate) load_cpu_util: f64,
    /// The load generator used >= 95% of its core while the server used
    /// < 95% of its own: the throughput is the load generator's limit.
    pub(crate) load_bound: bool,
    /// Share of a core used by other tasks on the server's / the load CPU.
    pub(crate) foreign_server_core: f64,
    pub(crate) foreign_load_core: f64,
    /// Another task used more than [`DISTURBED`] of either core: the run
    /// is kept in the raw data but left out of the medians (when clean runs
    /// of the same cell exist).
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

pub(crate) fn main(argv: Vec<String>) -> Result<(), String> {
    let mut a = Args::parse(argv)?;
    let quick = a.flag("quick")?;
    let list = |s: Option<String>| s.map(|s| s.split(',').map(String::from).collect::<Vec<_>>());
    let cfg = Config {
        quick,
        reps: a.get("reps", if quick { 1 } else { 5 })?,
        aux_reps: a.get("aux-reps", if quick { 1 } else { 2 })?,
        warmup: a.get("warmup", if quick { 0.3 } else { 2.0 })?,
        duration: a.get("duration", if quick { 1.0 } else { 10.0 })?,
        rate: a.get("rate", 50_000)?,
        quiet_wait: a.get("quiet-wait", if quick { 1.0 } else { 15.0 })?,
        quiet_budget: a.get("quiet-budget", if quick { 15.0 } else { 900.0 })?,
        only: list(a.opt("only")?),
        servers: list(a.opt("servers")?),
        out: a
            .opt::<PathBuf>("out")?
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("results")),
    };
    a.finish()?;
    if cfg.reps == 0 || cfg.duration <= 0.0 {
        return Err("--reps and --duration must be > 0".into());
    }
    crate::proto::raise_nofile_limit();
    run(&cfg)
}

fn run(cfg: &Config) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let exe_s = exe.display().to_string();
    let raw = cfg.out.join("raw");
    fs::create_dir_all(&raw).map_err(|e| format!("{}: {e}", raw.display()))?;
    let stamp = now_stamp();
    let logs = raw.join(format!("logs-{stamp}"));
    fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    let ticks = procfs::clock_ticks();
    let ncpu = procfs::cpu_model().1;
    if ncpu < 2 {
        eprintln!("WARNING: {ncpu} CPU(s): server and load share a core; numbers mean little");
    }

    // Servers: filter, then a start-up probe so a broken row is skipped
    // loudly instead of failing every run.
    let mut servers = server_kinds(&exe_s);
    if let Some(only) = &cfg.servers {
        servers.retain(|s| only.contains(&s.name));
    }
    let mut skipped: Vec<(String, String)> = Vec::new();
    let mut probe_port = 19_900;
    servers.retain(|s| {
        probe_port += 1;
        match probe_server(s, probe_port, &logs) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("\n*** SKIPPING server {}: {e}\n", s.name);
                skipped.push((s.name.clone(), e));
                false
            }
        }
    });
    if servers.is_empty() {
        return Err("no server row can start".into());
    }

    let mut wls = workloads(cfg.rate);
    if let Some(only) = &cfg.only {
        wls.retain(|w| only.iter().any(|o| w.id.starts_with(o.as_str())));
    }
    let tools = Tools::check(&wls);
    wls.retain(|w| match tools.missing_for(w) {
        None => true,
        Some(tool) => {
            eprintln!(
                "\n*** SKIPPING workload {}: {tool} is not installed\n",
                w.id
            );
            skipped.push((w.id.to_string(), format!("{tool} is not installed")));
            false
        }
    });

    let total: usize = wls.iter().map(|w| reps_of(cfg, w) * servers.len()).sum();
    eprintln!(
        "zerg-bench: {} workloads x {} servers ({}), {} runs; warm-up {} s, measured {} s; \
         servers on CPU {}, load on CPU {}; results in {}",
        wls.len(),
        servers.len(),
        servers
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        total,
        cfg.warmup,
        cfg.duration,
        exec::SERVER_CPU,
        exec::LOAD_CPU,
        cfg.out.display()
    );
    let raw_path = raw.join(format!("runs-{stamp}.jsonl"));
    let mut raw_file =
        fs::File::create(&raw_path).map_err(|e| format!("{}: {e}", raw_path.display()))?;
    let ctx = Ctx {
        cfg,
        exe: &exe,
        logs: &logs,
        ticks,
    };
    let started = Instant::now();
    let mut records = Vec::new();
    let mut done = 0;
    let mut port = 20_000u16;
    let mut waited = 0.0;
    for w in &wls {
        let reps = reps_of(cfg, w);
        for rep in 0..reps {
            for s in &servers {
                done += 1;
                // A fresh port per run: no TIME_WAIT or half-dead listener
                // from the previous run can interfere (below the ephemeral
                // range, which starts at 32768).
                port = if port >= 31_000 { 20_000 } else { port + 1 };
                let budget_left = cfg.quiet_budget - waited;
                waited += wait_quiet(cfg.quiet_wait.min(budget_left), ticks);
                let rec = run_one(&ctx, s, w, rep, port);
                eprintln!(
                    "[{done:>3}/{total}] {:<17} rep {}/{} {:<12} {}   (elapsed {:.0} s)",
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

    let machine = report::Machine::collect(cfg.quick, cfg.reps, cfg.warmup, cfg.duration, ncpu);
    let groups: Vec<report::Group> = wls
        .iter()
        .map(|w| report::Group {
            id: w.id.to_string(),
            title: w.title.to_string(),
            unit: w.unit.to_string(),
            kind: match w.load {
                Load::Wrk { .. } | Load::Gen { .. } => report::GroupKind::Throughput,
                Load::Idle { .. } => report::GroupKind::Idle,
                Load::Syscalls { tool, .. } => report::GroupKind::Syscalls(tool.name()),
            },
        })
        .collect();
    let server_names: Vec<String> = servers.iter().map(|s| s.name.clone()).collect();
    let files = report::write_all(
        &cfg.out,
        &machine,
        &groups,
        &server_names,
        &records,
        &skipped,
        &raw_path,
    )?;
    eprintln!(
        "\nzerg-bench: done in {:.0} s; wrote {}",
        started.elapsed().as_secs_f64(),
        files.join(", ")
    );
    Ok(())
}

fn reps_of(cfg: &Config, w: &Workload) -> usize {
    match w.load {
        Load::Idle { .. } | Load::Syscalls { .. } => cfg.aux_reps.max(1),
        _ => cfg.reps,
    }
}

/// Waits (at most `max_s` seconds) until neither benchmark CPU is more than
/// [`QUIET`] busy over 0.5 s: nothing of ours runs between two runs, so
/// whatever is busy then (a build, say) would disturb the next one.
/// Returns the seconds spent.
fn wait_quiet(max_s: f64, ticks: f64) -> f64 {
    let start = Instant::now();
    if max_s <= 0.0 {
        return 0.0;
    }
    let deadline = Instant::now() + Duration::from_secs_f64(max_s);
    let mut said = false;
    loop {
        let busy = |cpu| procfs::cpu_busy_ticks(cpu).unwrap_or(0);
        let (a0, a1, t0) = (busy(exec::SERVER_CPU), busy(exec::LOAD_CPU), Instant::now());
        std::thread::sleep(Duration::from_millis(500));
        let wall = t0.elapsed().as_secs_f64();
        let share = |a: u64, b: u64| b.saturating_sub(a) as f64 / ticks / wall;
        let (b0, b1) = (busy(exec::SERVER_CPU), busy(exec::LOAD_CPU));
        let (s0, s1) = (share(a0, b0), share(a1, b1));
        if s0 <= QUIET && s1 <= QUIET {
            return start.elapsed().as_secs_f64();
        }
        if Instant::now() >= deadline {
            eprintln!(
                "        still busy after {max_s} s (cpu{} {:.0}%, cpu{} {:.0}%): running anyway",
                exec::SERVER_CPU,
                s0 * 100.0,
                exec::LOAD_CPU,
                s1 * 100.0
            );
            return start.elapsed().as_secs_f64();
        }
        if !said {
            eprintln!(
                "        waiting for quiet CPUs (cpu{} {:.0}%, cpu{} {:.0}% busy with other work)",
                exec::SERVER_CPU,
                s0 * 100.0,
                exec::LOAD_CPU,
                s1 * 100.0
            );
            said = true;
        }
    }
}

/// CPU share above which a benchmark core counts as busy before a run.
const QUIET: f64 = 0.1;

/// Starts a server row once (HTTP workload) to see that it can run here.
/// (Each row probes its own port: an io_uring server's port can stay bound
/// for a moment after it is killed.)
fn probe_server(s: &ServerKind, port: u16, logs: &Path) -> Result<(), String> {
    let mut cmd = s.cmd.clone();
    cmd.extend(["--port", &port.to_string(), "--workload", "http"].map(String::from));
    let log = exec::log_path(logs, &format!("probe-{}", s.name));
    let mut p = Proc::spawn_pinned(exec::SERVER_CPU, &cmd, &s.env, Stdio::null(), &log)?;
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
        }
    }

    fn missing_for(&self, w: &Workload) -> Option<&'static str> {
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
            _ => None,
        }
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What every run needs besides its server and workload.
#[derive(Debug)]
struct Ctx<'a> {
    cfg: &'a Config,
    /// This binary (servers and load generator are its subcommands).
    exe: &'a Path,
    logs: &'a Path,
    /// Clock ticks per second of /proc/PID/stat.
    ticks: f64,
}

fn run_one(ctx: &Ctx<'_>, s: &ServerKind, w: &Workload, rep: usize, port: u16) -> RunRecord {
    let mut rec = RunRecord {
        workload: w.id.to_string(),
        server: s.name.clone(),
        rep,
        ..RunRecord::default()
    };
    if let Err(e) = measure(ctx, s, w, port, &mut rec) {
        rec.error = Some(e);
    }
    rec
}

fn measure(
    ctx: &Ctx<'_>,
    s: &ServerKind,
    w: &Workload,
    port: u16,
    rec: &mut RunRecord,
) -> Result<(), String> {
    let Ctx {
        cfg,
        exe,
        logs,
        ticks,
    } = *ctx;
    let mut cmd = s.cmd.clone();
    cmd.extend([
        "--port".to_string(),
        port.to_string(),
        "--workload".to_string(),
        w.server.to_string(),
        "--buf-size".to_string(),
        w.buf_size.to_string(),
    ]);
    let server_log = exec::log_path(logs, &format!("{}-{}", w.id, s.name));
    let load_log = exec::log_path(logs, &format!("{}-{}-load", w.id, s.name));
    let mut server =
        Proc::spawn_pinned(exec::SERVER_CPU, &cmd, &s.env, Stdio::null(), &server_log)?;
    exec::wait_listening(&mut server, port, Duration::from_secs(5))?;
    let pid = server.pid();
    let timing = |args: &[String], warmup: f64, duration: f64| -> Vec<String> {
        let mut v = vec!["--port".to_string(), port.to_string()];
        v.extend(args.iter().cloned());
        v.extend([
            "--warmup".to_string(),
            warmup.to_string(),
            "--duration".to_string(),
            duration.to_string(),
        ]);
        v
    };
    let window = match &w.load {
        Load::Wrk { conns } => {
            let warm = cfg.warmup.ceil() as u64;
            let dur = (cfg.duration.round() as u64).max(1);
            Some(exec::run_wrk(
                port, *conns, warm, dur, pid, &load_log, ticks,
            )?)
        }
        Load::Gen { args } => {
            let args = timing(args, cfg.warmup, cfg.duration);
            let budget = Duration::from_secs_f64(cfg.warmup + cfg.duration + 60.0);
            Some(exec::run_loadgen(exe, &args, pid, budget, &load_log, ticks)?.1)
        }
        Load::Idle { conns } => {
            let m = exec::run_idle(exe, port, *conns, pid, &load_log)?;
            rec.idle_conns = m.connected;
            rec.rss_before_kib = m.rss_before_kib;
            rec.rss_kib = m.rss_after_kib;
            rec.requests = m.connected as u64;
            rec.bytes_per_conn = (m.rss_after_kib as f64 - m.rss_before_kib as f64) * 1024.0
                / m.connected.max(1) as f64;
            None
        }
        Load::Syscalls { tool, args } => {
            let args = timing(args, 0.0, cfg.duration.clamp(1.0, 3.0));
            let out = logs.join(format!("{}-{}-{}.txt", w.id, s.name, rec.rep));
            let m = exec::run_syscalls(*tool, exe, &args, pid, &out, &load_log, ticks)?;
            rec.syscalls = m.calls;
            rec.requests = m.requests;
            rec.throughput = m.throughput;
            rec.syscalls_per_req = m.calls as f64 / m.requests as f64;
            rec.top_syscalls = m.top;
            None
        }
    };
    if let Some(status) = server.exited() {
        return Err(format!(
            "server died during the run ({status}); see {}",
            server_log.display()
        ));
    }
    if matches!(w.load, Load::Idle { .. }) {
        // Let the kernel tear down the 2 x 10,000 sockets before the next
        // run is measured.
        server.kill();
        std::thread::sleep(Duration::from_secs(1));
    }
    if let Some(win) = window {
        if win.requests == 0 {
            return Err(format!("no requests completed; see {}", load_log.display()));
        }
        rec.requests = win.requests;
        rec.throughput = win.throughput;
        let u = win.usage;
        rec.cpu_us_per_req = u.server_s * 1e6 / win.requests as f64;
        rec.core_us_per_req = u.server_core_s * 1e6 / win.requests as f64;
        rec.server_cpu_util = u.server_s / u.wall_s;
        rec.load_cpu_util = u.load_s / u.wall_s;
        (rec.foreign_server_core, rec.foreign_load_core) = u.foreign();
        rec.disturbed = rec.foreign_server_core > DISTURBED || rec.foreign_load_core > DISTURBED;
        rec.load_bound = rec.load_cpu_util >= 0.95 && rec.server_cpu_util < 0.95;
        rec.p50_us = win.p50_us;
        rec.p99_us = win.p99_us;
        rec.p999_us = win.p999_us;
        rec.errors = win.errors;
        rec.rss_kib = win.server_rss_kib;
    }
    Ok(())
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
        _ => format!(
            "{:>7}/s  {:>6.2} us/{}  p99 {:>7}  srv cpu {:>3.0}%  load cpu {:>3.0}%{}{}{}",
            report::si(r.throughput),
            r.cpu_us_per_req,
            w.unit,
            r.p99_us.map_or("-".into(), report::fmt_us),
            r.server_cpu_util * 100.0,
            r.load_cpu_util * 100.0,
            if r.load_bound { "  [load-bound]" } else { "" },
            if r.disturbed {
                format!(
                    "  [disturbed: others used {:.0}% of cpu{}, {:.0}% of cpu{}]",
                    r.foreign_server_core * 100.0,
                    exec::SERVER_CPU,
                    r.foreign_load_core * 100.0,
                    exec::LOAD_CPU
                )
            } else {
                String::new()
            },
            if r.errors > 0 {
                format!("  errors {}", r.errors)
            } else {
                String::new()
            }
        ),
    }
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
        let s = ServerKind::new("broken", &["sh", "-c", "echo no ring here >&2; exit 1"]);
        let e = probe_server(&s, 19_899, &std::env::temp_dir()).unwrap_err();
        assert!(e.contains("exited") && e.contains("no ring here"), "{e}");
    }

    #[test]
    fn workload_ids_are_unique() {
        let w = workloads(1000);
        let mut ids: Vec<&str> = w.iter().map(|w| w.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), w.len());
    }
}
