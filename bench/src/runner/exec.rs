//! Starting, pinning, measuring and stopping the processes of one run.
//! Every process here is a child of the runner and is ended by its PID.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::cpus::Layout;
use super::procfs;
use crate::loadgen::{Event, LoadResult};

/// A child process that is killed (by PID) and reaped when dropped.
#[derive(Debug)]
pub(crate) struct Proc {
    child: Child,
}

impl Proc {
    /// Starts `cmd` pinned to `cpus` with `taskset` (which execs the command,
    /// so the PID is the command's own).
    pub(crate) fn spawn_pinned(
        cpus: &[usize],
        cmd: &[String],
        env: &[(String, String)],
        stdout: Stdio,
        log: &Path,
    ) -> Result<Self, String> {
        let log_file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new("taskset")
            .arg("-c")
            .arg(super::cpus::list(cpus))
            .args(cmd)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("spawn taskset {}: {e}", cmd.join(" ")))?;
        Ok(Self { child })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// `Some(status)` once the process has exited.
    pub(crate) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for a voluntary exit, then kills.
    pub(crate) fn wait_timeout(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return true;
            }
            thread::sleep(Duration::from_millis(5));
        }
        self.kill();
        false
    }

    pub(crate) fn kill(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    /// Sends SIGINT (tools such as strace and perf print their summary on it).
    pub(crate) fn interrupt(&self) {
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.pid().to_string())
            .status();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until something accepts on 127.0.0.1:`port` (the probe connection
/// is closed at once), or the server exits, or `timeout` passes.
pub(crate) fn wait_listening(
    server: &mut Proc,
    port: u16,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = server.exited() {
            return Err(format!("server exited during start-up ({status})"));
        }
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "server not listening on port {port} after {timeout:?}"
            ));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// What is measured in a run: the processes and the CPUs they are pinned to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Watch<'a> {
    pub(crate) layout: &'a Layout,
    pub(crate) server: u32,
    /// A proxy's upstream.
    pub(crate) upstream: Option<u32>,
    /// Clock ticks per second of /proc times.
    pub(crate) ticks: f64,
}

/// CPU counters of one instant: the processes (`/proc/PID/stat`) and the busy time of their
/// CPUs (`/proc/stat`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Snap {
    at: Instant,
    server: u64,
    load: u64,
    upstream: u64,
    server_core: u64,
    load_core: u64,
}

fn busy(cpus: &[usize]) -> u64 {
    cpus.iter()
        .map(|&c| procfs::cpu_busy_ticks(c).unwrap_or(0))
        .sum()
}

impl Snap {
    /// `load_pid` None: a load process that has not started yet (0 ticks).
    pub(crate) fn take(w: &Watch<'_>, load_pid: Option<u32>) -> Self {
        Self {
            at: Instant::now(),
            server: procfs::cpu_ticks(w.server).unwrap_or(0),
            load: load_pid.and_then(procfs::cpu_ticks).unwrap_or(0),
            upstream: w.upstream.and_then(procfs::cpu_ticks).unwrap_or(0),
            server_core: busy(&w.layout.server),
            load_core: busy(&w.layout.load),
        }
    }

    /// CPU used between `self` and `later`.
    pub(crate) fn until(&self, later: &Snap, w: &Watch<'_>) -> Usage {
        let d = |a: u64, b: u64| b.saturating_sub(a) as f64 / w.ticks;
        Usage {
            wall_s: later.at.duration_since(self.at).as_secs_f64(),
            server_s: d(self.server, later.server),
            load_s: d(self.load, later.load),
            upstream_s: w.upstream.map(|_| d(self.upstream, later.upstream)),
            upstream_on_load: w.layout.upstream_on_load(),
            server_cpus: w.layout.server.len(),
            load_cpus: w.layout.load.len(),
            server_core_s: d(self.server_core, later.server_core),
            load_core_s: d(self.load_core, later.load_core),
        }
    }
}

/// CPU use over a measured window, in seconds.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Usage {
    pub(crate) wall_s: f64,
    /// Server process, all threads (precise runtime, 10 ms units).
    pub(crate) server_s: f64,
    /// Load generator process.
    pub(crate) load_s: f64,
    /// A proxy's upstream process.
    pub(crate) upstream_s: Option<f64>,
    pub(crate) upstream_on_load: bool,
    pub(crate) server_cpus: usize,
    pub(crate) load_cpus: usize,
    /// Everything that ran on the server's CPUs (tick-sampled at CONFIG_HZ).
    pub(crate) server_core_s: f64,
    /// Everything that ran on the load CPUs.
    pub(crate) load_core_s: f64,
}

impl Usage {
    fn per_cpu(&self, s: f64, cpus: usize) -> f64 {
        s / self.wall_s.max(1e-9) / cpus.max(1) as f64
    }

    /// Share of its CPUs the server used.
    pub(crate) fn server_util(&self) -> f64 {
        self.per_cpu(self.server_s, self.server_cpus)
    }

    /// CPU seconds of the load side: the load generator, plus the upstream when it shares the
    /// load CPUs.
    pub(crate) fn load_side_s(&self) -> f64 {
        self.load_s
            + if self.upstream_on_load {
                self.upstream_s.unwrap_or(0.0)
            } else {
                0.0
            }
    }

    /// Share of its CPUs the load side used.
    pub(crate) fn load_util(&self) -> f64 {
        self.per_cpu(self.load_side_s(), self.load_cpus)
    }

    /// Share of their CPUs that other tasks used on the server's and on the load CPUs:
    /// (server side, load side). Near 0 in a clean run (softirq and kernel threads serving the
    /// benchmark's own traffic); a build or another VM's work on the same CPUs shows up here.
    pub(crate) fn foreign(&self) -> (f64, f64) {
        (
            self.per_cpu(self.server_core_s - self.server_s, self.server_cpus)
                .max(0.0),
            self.per_cpu(self.load_core_s - self.load_side_s(), self.load_cpus)
                .max(0.0),
        )
    }
}

/// What one measured load window produced.
#[derive(Debug, Default)]
pub(crate) struct Window {
    pub(crate) requests: u64,
    pub(crate) throughput: f64,
    pub(crate) conns_completed: u64,
    pub(crate) p50_us: Option<f64>,
    pub(crate) p99_us: Option<f64>,
    pub(crate) p999_us: Option<f64>,
    pub(crate) errors: u64,
    pub(crate) usage: Usage,
    pub(crate) server_rss_kib: u64,
    /// The load generator's own CPU seconds (getrusage), our load generator only.
    pub(crate) load_self_s: Option<f64>,
}

/// Runs our load generator (pinned to the load CPUs), sampling every process's CPU time at the
/// `measure_start` and `result` events.
pub(crate) fn run_loadgen(
    exe: &Path,
    args: &[String],
    w: &Watch<'_>,
    budget: Duration,
    log: &Path,
) -> Result<(LoadResult, Window), String> {
    let mut cmd = vec![exe.display().to_string(), "loadgen".to_string()];
    cmd.extend(args.iter().cloned());
    let mut lg = Proc::spawn_pinned(&w.layout.load, &cmd, &[], Stdio::piped(), log)?;
    let events = event_lines(lg.stdout().ok_or("no loadgen stdout")?);
    let deadline = Instant::now() + budget;
    let mut start: Option<Snap> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match events.recv_timeout(left) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!("loadgen gave no result within {budget:?}"));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = lg.exited();
                return Err(format!(
                    "loadgen ended without a result ({status:?}); see {}",
                    log.display()
                ));
            }
        };
        let event: Event =
            serde_json::from_str(&line).map_err(|e| format!("loadgen output {line:?}: {e}"))?;
        match event {
            Event::MeasureStart => start = Some(Snap::take(w, Some(lg.pid()))),
            Event::Result(r) => {
                let end = Snap::take(w, Some(lg.pid()));
                let rss = procfs::rss_kib(w.server).unwrap_or(0);
                let usage = start.ok_or("result before measure_start")?.until(&end, w);
                lg.wait_timeout(Duration::from_secs(5));
                let win = Window {
                    requests: r.requests,
                    throughput: r.throughput,
                    conns_completed: r.conns_completed,
                    p50_us: Some(r.p50_us),
                    p99_us: Some(r.p99_us),
                    p999_us: Some(r.p999_us),
                    errors: r.errors,
                    usage,
                    server_rss_kib: rss,
                    load_self_s: Some(r.cpu_s),
                };
                return Ok((r, win));
            }
            Event::Ready { .. } => return Err("unexpected ready event".into()),
        }
    }
}

/// Forwards the lines of a child's stdout to a channel (a reader thread
/// makes timeouts possible).
pub(crate) fn event_lines(out: std::process::ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Server memory for `conns` idle connections.
#[derive(Debug)]
pub(crate) struct IdleMeasure {
    pub(crate) connected: usize,
    pub(crate) rss_before_kib: u64,
    pub(crate) rss_after_kib: u64,
}

/// Descriptors the server and the load generator keep for themselves besides one per
/// connection (listeners, rings, eventfds, logs).
const FD_MARGIN: u64 = 128;

/// As many connections as the descriptor limit allows both sides: the runner raised its soft
/// limit to the hard one, and the children inherit it (the servers raise theirs the same way).
fn max_idle_conns() -> Result<usize, String> {
    let (soft, _) =
        rlimit::getrlimit(rlimit::Resource::NOFILE).map_err(|e| format!("RLIMIT_NOFILE: {e}"))?;
    let n = soft.saturating_sub(FD_MARGIN);
    if n < 1000 {
        return Err(format!("RLIMIT_NOFILE is {soft}: too low for idle-max"));
    }
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// Opens `conns` idle connections (loadgen `idle`; `0`: as many as the descriptor limit allows),
/// waits until the server
/// holds them all (its fd count), and samples its RSS before and after.
pub(crate) fn run_idle(
    exe: &Path,
    port: u16,
    conns: usize,
    server_pid: u32,
    load_cpus: &[usize],
    log: &Path,
) -> Result<IdleMeasure, String> {
    let conns = if conns == 0 { max_idle_conns()? } else { conns };
    thread::sleep(Duration::from_millis(300));
    let rss_before_kib = procfs::rss_kib(server_pid).ok_or("no server RSS")?;
    let fds_before = procfs::fd_count(server_pid).ok_or("no server fds")?;
    // The loadgen holds the connections for at most `hold`; it is killed as
    // soon as the sample is taken.
    let hold = 120;
    let cmd: Vec<String> = [
        exe.display().to_string(),
        "loadgen".into(),
        "--port".into(),
        port.to_string(),
        "--mode".into(),
        "idle".into(),
        "--conns".into(),
        conns.to_string(),
        "--duration".into(),
        hold.to_string(),
    ]
    .into();
    let mut lg = Proc::spawn_pinned(load_cpus, &cmd, &[], Stdio::piped(), log)?;
    let events = event_lines(lg.stdout().ok_or("no loadgen stdout")?);
    let line = events
        .recv_timeout(Duration::from_secs(hold))
        .map_err(|_| "idle loadgen gave no ready event".to_string())?;
    let connected = match serde_json::from_str::<Event>(&line) {
        Ok(Event::Ready { connected, .. }) => connected,
        other => {
            return Err(format!(
                "unexpected idle loadgen output {line:?} ({other:?})"
            ));
        }
    };
    // The kernel completes handshakes before the server accepts: wait for
    // the server to hold every connection.
    let deadline = Instant::now() + Duration::from_secs(20);
    while procfs::fd_count(server_pid).unwrap_or(0) < fds_before + connected {
        if Instant::now() >= deadline {
            return Err(format!(
                "server holds {} fds, expected {}",
                procfs::fd_count(server_pid).unwrap_or(0),
                fds_before + connected
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(500));
    let rss_after_kib = procfs::rss_kib(server_pid).ok_or("no server RSS")?;
    lg.kill();
    Ok(IdleMeasure {
        connected,
        rss_before_kib,
        rss_after_kib,
    })
}

/// A log file path for one process of one run.
pub(crate) fn log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.log"))
}
