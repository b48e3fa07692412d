//! Per-process counters from /proc.

use std::fs;
use std::process::Command;

/// Clock ticks per second of /proc/PID/stat times (`getconf CLK_TCK`,
/// 100 on every Linux this suite will meet).
pub(crate) fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// utime + stime of the whole process (every thread, live or exited), in
/// clock ticks. Also readable for a zombie that was not reaped yet.
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat)
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // Field 2 (comm) may contain spaces and parentheses: split after the
    // last ')'. The rest starts at field 3 (state); utime is field 14.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Busy time of one CPU (user, nice, system, irq, softirq; not idle,
/// iowait or steal) from /proc/stat, in clock ticks: everything that ran on
/// the server's core, including softirq work and kernel threads that the
/// server's own utime+stime may miss.
pub(crate) fn cpu_busy_ticks(cpu: usize) -> Option<u64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    parse_cpu_busy(&stat, cpu)
}

fn parse_cpu_busy(stat: &str, cpu: usize) -> Option<u64> {
    let label = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(label.as_str()))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    Some(f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)?)
}

/// VmRSS in KiB.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Number of open file descriptors.
pub(crate) fn fd_count(pid: u32) -> Option<usize> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// Kernel release (`uname -r`).
pub(crate) fn kernel() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// CPU model and the number of online CPUs from /proc/cpuinfo.
pub(crate) fn cpu_model() -> (String, usize) {
    let info = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let count = info.lines().filter(|l| l.starts_with("processor")).count();
    (model, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_comm() {
        let stat = "1234 (a) b) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
    }

    #[test]
    fn proc_stat_busy() {
        let stat =
            "cpu  1 1 1 1 1 1 1 1 0 0\ncpu0 10 1 5 100 7 2 3 9 0 0\ncpu1 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(parse_cpu_busy(stat, 0), Some(21));
        assert_eq!(parse_cpu_busy(stat, 1), Some(19));
        assert_eq!(parse_cpu_busy(stat, 2), None);
        assert!(cpu_busy_ticks(0).is_some());
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id();
        assert!(cpu_ticks(me).is_some());
        assert!(rss_kib(me).unwrap() > 0);
        assert!(fd_count(me).unwrap() >= 3);
    }
}
