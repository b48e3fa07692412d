//! Syscalls per request of a server under load: `perf stat` on the raw_syscalls:sys_enter
//! tracepoint, or `strace -c`.

use std::path::Path;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use super::exec::{Proc, Watch, run_loadgen};
use super::procfs;

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
    w: &Watch<'_>,
    out_file: &Path,
    log: &Path,
) -> Result<SyscallMeasure, String> {
    let out = out_file.display().to_string();
    let pid = w.server.to_string();
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
    let tracer = Proc::spawn_pinned(&w.layout.load, &cmd, &[], Stdio::null(), log)?;
    settle(tracer.pid());
    let result = run_loadgen(exe, loadgen_args, w, Duration::from_secs(60), log);
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
