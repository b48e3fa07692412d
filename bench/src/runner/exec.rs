//! Starting, pinning, measuring and stopping the processes of one run.
//! Every process here is a child of the runner and is ended by its PID.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::procfs;
use crate::loadgen::{Event, LoadResult};

/// CPU the servers are pinned to.
pub(crate) const SERVER_CPU: usize = 0;
/// CPU the load generators are pinned to.
pub(crate) const LOAD_CPU: usize = 1;

/// A child process that is killed (by PID) and reaped when dropped.
#[derive(Debug)]
pub(crate) struct Proc {
    child: Child,
}

impl Proc {
    /// Starts `cmd` pinned to `cpu` with `taskset` (which execs the command,
    /// so the PID is the command's own).
    pub(crate) fn spawn_pinned(
        cpu: usize,
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
            .arg(cpu.to_string())
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

/// CPU counters of one instant: the server and load processes
/// (`/proc/PID/stat`) and the busy time of both CPUs (`/proc/stat`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Snap {
    at: Instant,
    server: u64,
    load: u64,
    server_core: u64,
    load_core: u64,
}

impl Snap {
    /// `load_pid` None: a load process that has not started yet (0 ticks).
    pub(crate) fn take(server_pid: u32, load_pid: Option<u32>) -> Self {
        Self {
            at: Instant::now(),
            server: procfs::cpu_ticks(server_pid).unwrap_or(0),
            load: load_pid.and_then(procfs::cpu_ticks).unwrap_or(0),
            server_core: procfs::cpu_busy_ticks(SERVER_CPU).unwrap_or(0),
            load_core: procfs::cpu_busy_ticks(LOAD_CPU).unwrap_or(0),
        }
    }

    /// CPU seconds used between `self` and `later`.
    pub(crate) fn until(&self, later: &Snap, ticks_per_s: f64) -> Usage {
        let d = |a: u64, b: u64| b.saturating_sub(a) as f64 / ticks_per_s;
        Usage {
            wall_s: later.at.duration_since(self.at).as_secs_f64(),
            server_s: d(self.server, later.server),
            load_s: d(self.load, later.load),
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
    /// Everything that ran on the server's CPU (tick-sampled at CONFIG_HZ).
    pub(crate) server_core_s: f64,
    /// Everything that ran on the load CPU.
    pub(crate) load_core_s: f64,
}

impl Usage {
    /// Share of a core that other tasks used on the server's CPU and on the
    /// load CPU: (server core, load core). Near 0 in a clean run (softirq
    /// and kernel threads serving the benchmark's own traffic); a build or
    /// another VM's work on the same core shows up here.
    pub(crate) fn foreign(&self) -> (f64, f64) {
        let w = self.wall_s.max(1e-9);
        (
            ((self.server_core_s - self.server_s) / w).max(0.0),
            ((self.load_core_s - self.load_s) / w).max(0.0),
        )
    }
}

/// What one measured load window produced.
#[derive(Debug)]
pub(crate) struct Window {
    pub(crate) requests: u64,
    pub(crate) throughput: f64,
    pub(crate) p50_us: Option<f64>,
    pub(crate) p99_us: Option<f64>,
    pub(crate) p999_us: Option<f64>,
    pub(crate) errors: u64,
    pub(crate) usage: Usage,
    pub(crate) server_rss_kib: u64,
}

/// Runs our load generator against `server_pid`, sampling both processes'
/// CPU time at the `measure_start` and `result` events.
pub(crate) fn run_loadgen(
    exe: &Path,
    args: &[String],
    server_pid: u32,
    budget: Duration,
    log: &Path,
    ticks_per_s: f64,
) -> Result<(LoadResult, Window), String> {
    let mut cmd = vec![exe.display().to_string(), "loadgen".to_string()];
    cmd.extend(args.iter().cloned());
    let mut lg = Proc::spawn_pinned(LOAD_CPU, &cmd, &[], Stdio::piped(), log)?;
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
            Event::MeasureStart => start = Some(Snap::take(server_pid, Some(lg.pid()))),
            Event::Result(r) => {
                let end = Snap::take(server_pid, Some(lg.pid()));
                let rss = procfs::rss_kib(server_pid).unwrap_or(0);
                let usage = start
                    .ok_or("result before measure_start")?
                    .until(&end, ticks_per_s);
                lg.wait_timeout(Duration::from_secs(5));
                let w = Window {
                    requests: r.requests,
                    throughput: r.throughput,
                    p50_us: Some(r.p50_us),
                    p99_us: Some(r.p99_us),
                    p999_us: Some(r.p999_us),
                    errors: r.errors,
                    usage,
                    server_rss_kib: rss,
                };
                return Ok((r, w));
            }
            Event::Ready { .. } => return Err("unexpected ready event".into()),
        }
    }
}

/// Forwards the lines of a child's stdout to a channel (a reader thread
/// makes timeouts possible).
fn event_lines(out: std::process::ChildStdout) -> mpsc::Receiver<String> {
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

/// Runs wrk (`-t1`, keep-alive, `--latency`) pinned to the load CPU: an
/// unmeasured warm-up run, then the measured one.
pub(crate) fn run_wrk(
    port: u16,
    conns: usize,
    warmup_s: u64,
    duration_s: u64,
    server_pid: u32,
    log: &Path,
    ticks_per_s: f64,
) -> Result<Window, String> {
    let url = format!("http://127.0.0.1:{port}/plaintext");
    let cmd = |secs: u64| -> Vec<String> {
        [
            "wrk",
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--latency",
            &url,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    if warmup_s > 0 {
        let mut w = Proc::spawn_pinned(LOAD_CPU, &cmd(warmup_s), &[], Stdio::null(), log)?;
        if !w.wait_timeout(Duration::from_secs(warmup_s + 30)) {
            return Err("wrk warm-up did not finish".into());
        }
    }
    let start = Snap::take(server_pid, None);
    let mut wrk = Proc::spawn_pinned(LOAD_CPU, &cmd(duration_s), &[], Stdio::piped(), log)?;
    let mut out = String::new();
    let mut stdout = wrk.stdout().ok_or("no wrk stdout")?;
    // wrk ends by itself after `duration_s`; its stdout closes when it exits.
    let reader = thread::spawn(move || {
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let deadline = Instant::now() + Duration::from_secs(duration_s + 30);
    while !reader.is_finished() {
        if Instant::now() >= deadline {
            wrk.kill();
            return Err("wrk did not finish".into());
        }
        thread::sleep(Duration::from_millis(2));
    }
    // stdout is closed: wrk has exited and is a zombie until reaped, its
    // CPU times still readable.
    let end = Snap::take(server_pid, Some(wrk.pid()));
    let rss = procfs::rss_kib(server_pid).unwrap_or(0);
    wrk.wait_timeout(Duration::from_secs(5));
    let out = reader.join().map_err(|_| "wrk reader panicked")?;
    let parsed = super::wrk::parse(&out).map_err(|e| format!("{e}; wrk said:\n{out}"))?;
    Ok(Window {
        requests: parsed.requests,
        throughput: parsed.requests_per_s,
        p50_us: parsed.p50_us,
        p99_us: parsed.p99_us,
        p999_us: None,
        errors: parsed.errors,
        usage: start.until(&end, ticks_per_s),
        server_rss_kib: rss,
    })
}

/// Server memory for `conns` idle connections.
#[derive(Debug)]
pub(crate) struct IdleMeasure {
    pub(crate) connected: usize,
    pub(crate) rss_before_kib: u64,
    pub(crate) rss_after_kib: u64,
}

/// Opens `conns` idle connections (loadgen `idle`), waits until the server
/// holds them all (its fd count), and samples its RSS before and after.
pub(crate) fn run_idle(
    exe: &Path,
    port: u16,
    conns: usize,
    server_pid: u32,
    log: &Path,
) -> Result<IdleMeasure, String> {
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
    let mut lg = Proc::spawn_pinned(LOAD_CPU, &cmd, &[], Stdio::piped(), log)?;
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

/// How syscalls are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SyscallTool {
    /// `perf stat -e raw_syscalls:sys_enter -p PID`: a tracepoint counter,
    /// cheap enough that the server runs at nearly full speed.
    Perf,
    /// `strace -c -f -p PID`: ptrace stops on every call (the server runs
    /// several times slower, which can change its batching) but names them.
    Strace,
}

impl SyscallTool {
    pub(crate) fn name(self) -> &'static str {
        match self {
            SyscallTool::Perf => "perf",
            SyscallTool::Strace => "strace",
        }
    }
}

/// Syscalls of the server during one loadgen run (no warm-up).
#[derive(Debug)]
pub(crate) struct SyscallMeasure {
    pub(crate) calls: u64,
    pub(crate) requests: u64,
    pub(crate) throughput: f64,
    /// The most frequent calls, strace only: "name calls, ...".
    pub(crate) top: String,
}

pub(crate) fn run_syscalls(
    tool: SyscallTool,
    exe: &Path,
    loadgen_args: &[String],
    server_pid: u32,
    out_file: &Path,
    log: &Path,
    ticks_per_s: f64,
) -> Result<SyscallMeasure, String> {
    let out = out_file.display().to_string();
    let pid = server_pid.to_string();
    let cmd: Vec<String> = match tool {
        SyscallTool::Perf => vec![
            "perf".into(),
            "stat".into(),
            "-x,".into(),
            "-e".into(),
            "raw_syscalls:sys_enter".into(),
            "-p".into(),
            pid,
            "-o".into(),
            out,
        ],
        SyscallTool::Strace => vec![
            "strace".into(),
            "-c".into(),
            "-f".into(),
            "-p".into(),
            pid,
            "-o".into(),
            out,
        ],
    };
    // The tool shares the load CPU; it mostly sleeps (perf) or is the
    // price of tracing (strace).
    let tracer = Proc::spawn_pinned(LOAD_CPU, &cmd, &[], Stdio::null(), log)?;
    settle(tracer.pid());
    let result = run_loadgen(
        exe,
        loadgen_args,
        server_pid,
        Duration::from_secs(60),
        log,
        ticks_per_s,
    );
    tracer.interrupt();
    let mut tracer = tracer;
    tracer.wait_timeout(Duration::from_secs(10));
    let (r, _) = result?;
    let text =
        std::fs::read_to_string(out_file).map_err(|e| format!("{}: {e}", out_file.display()))?;
    let (calls, top) = match tool {
        SyscallTool::Perf => (parse_perf(&text)?, String::new()),
        SyscallTool::Strace => parse_strace(&text)?,
    };
    if r.requests == 0 {
        return Err("no requests completed under the tracer".into());
    }
    Ok(SyscallMeasure {
        calls,
        requests: r.requests,
        throughput: r.throughput,
        top,
    })
}

/// Waits until a freshly started tool has attached: its CPU time stops
/// growing for 300 ms (perf spends a while parsing tracepoint formats, and
/// must not compete with the load generator on its CPU). At most 10 s.
fn settle(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    thread::sleep(Duration::from_millis(200));
    let mut last = procfs::cpu_ticks(pid);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        let now = procfs::cpu_ticks(pid);
        if now != last {
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_millis(300) {
            return;
        }
        last = now;
    }
}

/// `perf stat -x,` output: `12345,,raw_syscalls:sys_enter,...`.
fn parse_perf(text: &str) -> Result<u64, String> {
    text.lines()
        .find(|l| l.contains("raw_syscalls:sys_enter"))
        .and_then(|l| l.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| format!("no syscall count in perf output:\n{text}"))
}

/// `strace -c` table: total calls and the three most frequent syscalls.
fn parse_strace(text: &str) -> Result<(u64, String), String> {
    let mut rows: Vec<(String, u64)> = Vec::new();
    let mut total = None;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || f[0].parse::<f64>().is_err() {
            continue;
        }
        let Ok(calls) = f[3].parse::<u64>() else {
            continue;
        };
        let name = f[f.len() - 1].to_string();
        if name == "total" {
            total = Some(calls);
        } else {
            rows.push((name, calls));
        }
    }
    let total = total.ok_or_else(|| format!("no total in strace output:\n{text}"))?;
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    let top = rows
        .iter()
        .take(3)
        .map(|(n, c)| format!("{n} {c}"))
        .collect::<Vec<_>>()
        .join(", ");
    Ok((total, top))
}

/// A log file path for one process of one run.
pub(crate) fn log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strace_summary() {
        let text = "% time     seconds  usecs/call     calls    errors syscall\n\
------ ----------- ----------- --------- --------- ----------------\n\
 60.00    0.006000           3      2000           write\n\
 39.00    0.003900           1      3000      1000 read\n\
  1.00    0.000100           5        20           epoll_wait\n\
------ ----------- ----------- --------- --------- ----------------\n\
100.00    0.010000           2      5020      1000 total\n";
        let (total, top) = parse_strace(text).unwrap();
        assert_eq!(total, 5020);
        assert_eq!(top, "read 3000, write 2000, epoll_wait 20");
    }

    #[test]
    fn perf_csv() {
        let text = "# started on x\n\n123456,,raw_syscalls:sys_enter,1000,100.00,,\n";
        assert_eq!(parse_perf(text).unwrap(), 123456);
    }
}
