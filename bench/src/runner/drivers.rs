//! External load tools: wrk, redis-benchmark, h2load. Each is pinned to the load CPUs and
//! measured over its whole lifetime (an unmeasured warm-up run comes first).

use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use super::exec::{Proc, Snap, Watch, Window};
use super::procfs;

/// Runs `cmd` on the load CPUs to its end; returns its stdout and the window's CPU use.
fn run_measured(
    cmd: &[String],
    w: &Watch<'_>,
    timeout: Duration,
    log: &Path,
) -> Result<(String, Window), String> {
    let start = Snap::take(w, None);
    let mut p = Proc::spawn_pinned(&w.layout.load, cmd, &[], Stdio::piped(), log)?;
    let mut stdout = p.stdout().ok_or("no stdout")?;
    // The tool ends by itself; its stdout closes when it exits.
    let reader = thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let deadline = Instant::now() + timeout;
    while !reader.is_finished() {
        if Instant::now() >= deadline {
            p.kill();
            return Err(format!("{} did not finish within {timeout:?}", cmd[0]));
        }
        thread::sleep(Duration::from_millis(2));
    }
    // stdout is closed: the tool has exited and is a zombie until reaped, its CPU times still
    // readable.
    let end = Snap::take(w, Some(p.pid()));
    let rss = procfs::rss_kib(w.server).unwrap_or(0);
    p.wait_timeout(Duration::from_secs(5));
    let out = reader.join().map_err(|_| "reader panicked")?;
    let win = Window {
        usage: start.until(&end, w),
        server_rss_kib: rss,
        ..Window::default()
    };
    Ok((out, win))
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// wrk, keep-alive, `--latency`, one thread per load CPU: a warm-up run, then the measured one.
pub(crate) fn run_wrk(
    port: u16,
    conns: usize,
    warmup_s: u64,
    duration_s: u64,
    w: &Watch<'_>,
    log: &Path,
) -> Result<Window, String> {
    let url = format!("http://127.0.0.1:{port}/plaintext");
    let threads = format!("-t{}", w.layout.load.len());
    let cmd = |secs: u64| {
        strings(&[
            "wrk",
            &threads,
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--latency",
            &url,
        ])
    };
    if warmup_s > 0 {
        run_measured(&cmd(warmup_s), w, Duration::from_secs(warmup_s + 30), log)?;
    }
    let (out, mut win) = run_measured(
        &cmd(duration_s),
        w,
        Duration::from_secs(duration_s + 30),
        log,
    )?;
    let parsed = super::wrk::parse(&out).map_err(|e| format!("{e}; wrk said:\n{out}"))?;
    win.requests = parsed.requests;
    win.throughput = parsed.requests_per_s;
    win.p50_us = parsed.p50_us;
    win.p99_us = parsed.p99_us;
    win.errors = parsed.errors;
    Ok(win)
}

/// redis-benchmark SET and GET (random keys out of 100,000, 3-byte values): a warm-up run sizes
/// the measured one to last about `duration_s`.
pub(crate) fn run_redis(
    port: u16,
    conns: usize,
    pipeline: usize,
    duration_s: f64,
    w: &Watch<'_>,
    log: &Path,
) -> Result<Window, String> {
    let threads = w.layout.load.len();
    let cmd = |n: u64| {
        let mut c = strings(&[
            "redis-benchmark",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-c",
            &conns.to_string(),
            "-P",
            &pipeline.to_string(),
            "-n",
            &n.to_string(),
            "-r",
            "100000",
            "-t",
            "set,get",
            "--csv",
        ]);
        if threads > 1 {
            c.extend(strings(&["--threads", &threads.to_string()]));
        }
        c
    };
    let warm_n = 100_000;
    let (out, _) = run_measured(&cmd(warm_n), w, Duration::from_secs(60), log)?;
    let warm = parse_redis_csv(&out)?;
    let rate = warm.iter().map(|t| t.rps).fold(f64::INFINITY, f64::min);
    // Two tests (SET, GET), each about half the window.
    let n = ((rate * duration_s / 2.0) as u64).max(10_000);
    let (out, mut win) = run_measured(
        &cmd(n),
        w,
        Duration::from_secs_f64(duration_s * 4.0 + 60.0),
        log,
    )?;
    let tests = parse_redis_csv(&out).map_err(|e| format!("{e}; redis-benchmark said:\n{out}"))?;
    win.requests = n * tests.len() as u64;
    win.throughput = win.requests as f64 / win.usage.wall_s;
    win.p50_us = tests.iter().map(|t| t.p50_ms * 1e3).reduce(f64::max);
    win.p99_us = tests.iter().map(|t| t.p99_ms * 1e3).reduce(f64::max);
    Ok(win)
}

/// One line of `redis-benchmark --csv`.
#[derive(Debug, PartialEq)]
pub(crate) struct RedisTest {
    pub(crate) name: String,
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

/// `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",
/// "p99_latency_ms","max_latency_ms"` and one line per test.
pub(crate) fn parse_redis_csv(out: &str) -> Result<Vec<RedisTest>, String> {
    let mut tests = Vec::new();
    for line in out.lines() {
        let f: Vec<&str> = line
            .split(',')
            .map(|x| x.trim().trim_matches('"'))
            .collect();
        if f.len() < 7 || f[0] == "test" {
            continue;
        }
        let num = |i: usize| {
            f[i].parse::<f64>()
                .map_err(|_| format!("bad number in {line:?}"))
        };
        tests.push(RedisTest {
            name: f[0].to_string(),
            rps: num(1)?,
            p50_ms: num(4)?,
            p99_ms: num(6)?,
        });
    }
    if tests.is_empty() {
        return Err(format!("no result lines in redis-benchmark output:\n{out}"));
    }
    Ok(tests)
}

/// h2load over HTTP/1.1 (`--h1`), `-m depth` pipelined requests per connection, http or https,
/// one thread per load CPU: a warm-up run, then the measured one.
pub(crate) fn run_h2load(
    port: u16,
    (conns, depth): (usize, usize),
    tls: bool,
    (warmup_s, duration_s): (f64, f64),
    w: &Watch<'_>,
    log: &Path,
) -> Result<Window, String> {
    let url = format!(
        "{}://127.0.0.1:{port}/plaintext",
        if tls { "https" } else { "http" }
    );
    let cmd = |secs: f64| {
        strings(&[
            "h2load",
            "--h1",
            "-c",
            &conns.to_string(),
            "-m",
            &depth.to_string(),
            "-t",
            &w.layout.load.len().to_string(),
            "-D",
            &format!("{}", secs.ceil().max(1.0) as u64),
            &url,
        ])
    };
    if warmup_s > 0.0 {
        run_measured(
            &cmd(warmup_s),
            w,
            Duration::from_secs_f64(warmup_s + 60.0),
            log,
        )?;
    }
    let (out, mut win) = run_measured(
        &cmd(duration_s),
        w,
        Duration::from_secs_f64(duration_s + 60.0),
        log,
    )?;
    let h = parse_h2load(&out).map_err(|e| format!("{e}; h2load said:\n{out}"))?;
    win.requests = h.succeeded;
    win.throughput = h.rps;
    win.errors = h.errors;
    Ok(win)
}

#[derive(Debug, PartialEq)]
pub(crate) struct H2loadOutput {
    pub(crate) rps: f64,
    pub(crate) succeeded: u64,
    pub(crate) errors: u64,
}

/// `finished in 1.01s, 346368.00 req/s, 37.99MB/s` and `requests: N total, N started, N done,
/// N succeeded, N failed, N errored, N timeout`.
pub(crate) fn parse_h2load(out: &str) -> Result<H2loadOutput, String> {
    let mut rps = None;
    let mut succeeded = None;
    let mut errors = 0;
    for line in out.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("finished in ") {
            rps = rest
                .split(", ")
                .find_map(|p| p.strip_suffix(" req/s"))
                .and_then(|v| v.parse::<f64>().ok());
        } else if let Some(rest) = l.strip_prefix("requests: ") {
            for part in rest.split(", ") {
                let mut it = part.split_whitespace();
                let (Some(n), Some(what)) = (it.next(), it.next()) else {
                    continue;
                };
                let n: u64 = n.parse().unwrap_or(0);
                match what {
                    "succeeded" => succeeded = Some(n),
                    "failed" | "errored" | "timeout" => errors += n,
                    _ => {}
                }
            }
        }
    }
    Ok(H2loadOutput {
        rps: rps.ok_or("no 'finished in' line")?,
        succeeded: succeeded.ok_or("no 'requests:' line")?,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_csv() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\
\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
\"SET\",\"393700.78\",\"1.307\",\"0.100\",\"0.671\",\"2.000\",\"3.500\",\"9.000\"\n\
\"GET\",\"438596.50\",\"1.157\",\"0.100\",\"0.655\",\"1.900\",\"3.100\",\"8.000\"\n";
        let t = parse_redis_csv(out).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].name, "GET");
        assert_eq!(
            (t[0].rps, t[0].p50_ms, t[0].p99_ms),
            (393700.78, 0.671, 3.5)
        );
        assert!(parse_redis_csv("nothing").is_err());
    }

    #[test]
    fn h2load_summary() {
        let out = "finished in 1.01s, 346368.00 req/s, 37.99MB/s\n\
requests: 346368 total, 346624 started, 346368 done, 346300 succeeded, 60 failed, 8 errored, 0 timeout\n";
        assert_eq!(
            parse_h2load(out).unwrap(),
            H2loadOutput {
                rps: 346368.0,
                succeeded: 346300,
                errors: 68
            }
        );
        assert!(parse_h2load("").is_err());
    }
}
