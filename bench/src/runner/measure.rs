//! One run: start the server (and a proxy's upstream), drive it, fill its record.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use super::cpus::Layout;
use super::exec::{self, Proc, Watch};
use super::record::{DISTURBED, RunRecord, Saturation};
use super::rows::{self, Family, ServerKind};
use super::workloads::{Load, Workload};
use super::{Config, drivers, syscalls};

/// A proxy's upstream port is the run's port minus this.
const UPSTREAM_OFFSET: u16 = 12_000;

/// What every run needs besides its server and workload.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    pub(crate) cfg: &'a Config,
    /// This binary (servers and load generator are its subcommands).
    pub(crate) exe: &'a Path,
    /// The C reference server (a proxy's upstream when it exists).
    pub(crate) c_server: Option<&'a Path>,
    pub(crate) logs: &'a Path,
    /// Clock ticks per second of /proc times.
    pub(crate) ticks: f64,
}

pub(crate) fn run_one(
    ctx: &Ctx<'_>,
    s: &ServerKind,
    w: &Workload,
    layout: &Layout,
    rep: usize,
    port: u16,
) -> RunRecord {
    let mut rec = RunRecord {
        workload: w.id.to_string(),
        server: s.name.clone(),
        rep,
        ..RunRecord::default()
    };
    if let Err(e) = measure(ctx, s, w, layout, port, &mut rec) {
        rec.error = Some(e);
    }
    rec
}

/// The proxy workloads' upstream: the C reference echo server when it was built (the cheapest
/// echo, so the load side has the most room), else the tokio echo peer.
fn start_upstream(ctx: &Ctx<'_>, w: &Workload, layout: &Layout, port: u16) -> Result<Proc, String> {
    let mut cmd = match ctx.c_server {
        Some(c) => vec![c.display().to_string()],
        None => vec![ctx.exe.display().to_string(), "tokio".to_string()],
    };
    cmd.extend(["--port", &port.to_string(), "--workload", "echo"].map(String::from));
    cmd.extend(["--buf-size".to_string(), w.buf_size.to_string()]);
    let log = exec::log_path(ctx.logs, &format!("{}-upstream", w.id));
    let mut p = Proc::spawn_pinned(&layout.upstream, &cmd, &[], Stdio::null(), &log)?;
    exec::wait_listening(&mut p, port, Duration::from_secs(5))
        .map_err(|e| format!("upstream: {e}"))?;
    Ok(p)
}

fn measure(
    ctx: &Ctx<'_>,
    s: &ServerKind,
    w: &Workload,
    layout: &Layout,
    port: u16,
    rec: &mut RunRecord,
) -> Result<(), String> {
    // Proxy rows: the upstream listens on port - 12000 (8000–19000: below the runner's server
    // ports 20000–31000 and its probe ports 19900–19999, and below the ephemeral range).
    let up_port = port - UPSTREAM_OFFSET;
    let upstream = if w.family == Family::Proxy {
        Some(start_upstream(ctx, w, layout, up_port)?)
    } else {
        None
    };
    let threads = if w.scaled { layout.server.len() } else { 1 };
    let cmd = rows::command(
        s,
        port,
        w.server,
        w.buf_size,
        upstream.as_ref().map(|_| up_port),
        threads,
    );
    let server_log = exec::log_path(ctx.logs, &format!("{}-{}", w.id, s.name));
    let load_log = exec::log_path(ctx.logs, &format!("{}-{}-load", w.id, s.name));
    let mut server = Proc::spawn_pinned(&layout.server, &cmd, &s.env, Stdio::null(), &server_log)?;
    exec::wait_listening(&mut server, port, Duration::from_secs(5))?;
    let watch = Watch {
        layout,
        server: server.pid(),
        upstream: upstream.as_ref().map(Proc::pid),
        ticks: ctx.ticks,
    };
    let run = Run {
        ctx,
        s,
        w,
        layout,
        port,
        watch: &watch,
        load_log: &load_log,
    };
    let window = drive(&run, rec)?;
    if let Some(status) = server.exited() {
        return Err(format!(
            "server died during the run ({status}); see {}",
            server_log.display()
        ));
    }
    if matches!(w.load, Load::Idle { .. }) {
        // Let the kernel tear down the 2 x 10,000 sockets before the next run is measured.
        server.kill();
        std::thread::sleep(Duration::from_secs(1));
    }
    if let Some(win) = window {
        fill(rec, w, &win)?;
        if win.errors > 0 && win.requests == 0 {
            return Err(format!("only errors; see {}", load_log.display()));
        }
    }
    Ok(())
}

/// One run's settings, for [`drive`].
struct Run<'a> {
    ctx: &'a Ctx<'a>,
    s: &'a ServerKind,
    w: &'a Workload,
    layout: &'a Layout,
    port: u16,
    watch: &'a Watch<'a>,
    load_log: &'a Path,
}

/// Drives the running server with the workload's load; throughput-type loads return their
/// window, idle and syscall loads fill `rec` themselves.
fn drive(r: &Run<'_>, rec: &mut RunRecord) -> Result<Option<exec::Window>, String> {
    let Run {
        ctx,
        s,
        w,
        layout,
        port,
        watch,
        load_log,
    } = *r;
    let cfg = ctx.cfg;
    let watch = *watch;
    let gen_args = |args: &[String], warmup: f64, duration: f64| -> Vec<String> {
        let mut v = vec!["--port".to_string(), port.to_string()];
        v.extend(args.iter().cloned());
        v.extend(
            [
                "--warmup",
                &warmup.to_string(),
                "--duration",
                &duration.to_string(),
            ]
            .map(String::from),
        );
        if layout.load.len() > 1 {
            v.extend(["--threads".to_string(), layout.load.len().to_string()]);
        }
        v
    };
    let window = match &w.load {
        Load::Wrk { conns } => {
            let warm = cfg.warmup.ceil() as u64;
            let dur = (cfg.duration.round() as u64).max(1);
            Some(drivers::run_wrk(port, *conns, warm, dur, &watch, load_log)?)
        }
        Load::Gen { args } => {
            let mut args = args.clone();
            if w.scaled {
                // The connection count is per server CPU.
                scale_conns(&mut args, layout.server.len());
            }
            let args = gen_args(&args, cfg.warmup, cfg.duration);
            let budget = Duration::from_secs_f64(cfg.warmup + cfg.duration + 60.0);
            Some(exec::run_loadgen(ctx.exe, &args, &watch, budget, load_log)?.1)
        }
        Load::Redis { conns, pipeline } => Some(drivers::run_redis(
            port,
            *conns,
            *pipeline,
            cfg.duration,
            &watch,
            load_log,
        )?),
        Load::H2load { conns, depth } => Some(drivers::run_h2load(
            port,
            (*conns, *depth),
            s.tls,
            (cfg.warmup, cfg.duration),
            &watch,
            load_log,
        )?),
        Load::Idle { conns } => {
            let m = exec::run_idle(ctx.exe, port, *conns, watch.server, &layout.load, load_log)?;
            rec.idle_conns = m.connected;
            rec.rss_before_kib = m.rss_before_kib;
            rec.rss_kib = m.rss_after_kib;
            rec.requests = m.connected as u64;
            rec.bytes_per_conn = (m.rss_after_kib as f64 - m.rss_before_kib as f64) * 1024.0
                / m.connected.max(1) as f64;
            None
        }
        Load::Syscalls { tool, args } => {
            let args = gen_args(args, 0.0, cfg.duration.clamp(1.0, 3.0));
            let out = ctx
                .logs
                .join(format!("{}-{}-{}.txt", w.id, s.name, rec.rep));
            let m = syscalls::run_syscalls(*tool, ctx.exe, &args, &watch, &out, load_log)?;
            rec.syscalls = m.calls;
            rec.requests = m.requests;
            rec.throughput = m.throughput;
            rec.syscalls_per_req = m.calls as f64 / m.requests as f64;
            rec.top_syscalls = m.top;
            None
        }
    };
    Ok(window)
}

/// The record of a throughput-type run from its window.
fn fill(rec: &mut RunRecord, w: &Workload, win: &exec::Window) -> Result<(), String> {
    if win.requests == 0 {
        return Err("no requests completed".into());
    }
    let u = win.usage;
    let n = win.requests as f64;
    rec.requests = win.requests;
    rec.throughput = win.throughput;
    rec.cpu_us_per_req = u.server_s * 1e6 / n;
    rec.load_us_per_req = u.load_side_s() * 1e6 / n;
    rec.core_us_per_req = u.server_core_s * 1e6 / n;
    rec.server_cpu_util = u.server_util();
    rec.load_cpu_util = u.load_util();
    rec.load_self_util = win
        .load_self_s
        .map(|s| s / u.wall_s.max(1e-9) / u.load_cpus.max(1) as f64);
    rec.upstream_cpu_util = u.upstream_s.map(|s| s / u.wall_s.max(1e-9));
    rec.saturation = Saturation::judge(w.paced, rec.server_cpu_util, rec.load_cpu_util);
    (rec.foreign_server_core, rec.foreign_load_core) = u.foreign();
    rec.disturbed = rec.foreign_server_core > DISTURBED || rec.foreign_load_core > DISTURBED;
    rec.conns_completed = win.conns_completed;
    if w.per_conn && win.conns_completed > 0 {
        rec.cpu_us_per_conn = Some(u.server_s * 1e6 / win.conns_completed as f64);
    }
    rec.p50_us = win.p50_us;
    rec.p99_us = win.p99_us;
    rec.p999_us = win.p999_us;
    rec.errors = win.errors;
    rec.rss_kib = win.server_rss_kib;
    Ok(())
}

/// Multiplies the `--conns` argument by `k`.
fn scale_conns(args: &mut [String], k: usize) {
    if let Some(i) = args.iter().position(|a| a == "--conns")
        && let Some(n) = args.get(i + 1).and_then(|v| v.parse::<usize>().ok())
    {
        args[i + 1] = (n * k).to_string();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn scaled_connection_counts() {
        let mut a: Vec<String> = ["--mode", "http", "--conns", "256"]
            .map(String::from)
            .into();
        super::scale_conns(&mut a, 4);
        assert_eq!(a[3], "1024");
    }
}
