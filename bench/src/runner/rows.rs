//! The server rows: which servers exist, for which family of workloads, and how they are
//! started. Rows whose binary does not exist (a zerg example not built yet, redis-server or the
//! C reference server missing) are skipped loudly by the runner, never failed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Which workloads a row takes part in (each family has its own baseline: its first row).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    /// HTTP responder + echo with the suite's command line (`src/proto.rs`).
    Suite,
    /// TCP proxy in front of an echo upstream.
    Proxy,
    /// Redis protocol (redis-benchmark).
    Resp,
    /// hyper HTTP/1 hello world.
    Hyper,
    /// HTTPS/1.1 vs the same server in plain HTTP (h2load).
    Tls,
}

/// How the runner appends the port and the work to a row's command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ArgStyle {
    /// `--port P --workload http|echo --buf-size N` (and `--threads N` when scaled).
    Suite,
    /// `--port P` (proxies also `--upstream 127.0.0.1:Q`); scaled: `threads_flag N`.
    Port,
    /// redis-server's own syntax.
    Redis,
}

/// One server row.
#[derive(Clone, Debug)]
pub(crate) struct ServerKind {
    pub(crate) name: String,
    pub(crate) family: Family,
    pub(crate) cmd: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) style: ArgStyle,
    /// A file the row needs (an example binary, the C server); missing: skipped loudly.
    pub(crate) needs: Option<PathBuf>,
    /// Speaks TLS (the driver uses https).
    pub(crate) tls: bool,
    /// Does only the HTTP workload (not echo).
    pub(crate) http_only: bool,
    /// How to ask for N threads/reactors in scaling rows; `None`: the row does not scale.
    pub(crate) threads_flag: Option<&'static str>,
}

impl ServerKind {
    fn new(name: &str, family: Family, cmd: &[&str]) -> Self {
        Self {
            name: name.to_string(),
            family,
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            style: ArgStyle::Suite,
            needs: None,
            tls: false,
            http_only: false,
            threads_flag: None,
        }
    }

    fn port_style(mut self) -> Self {
        self.style = ArgStyle::Port;
        self
    }

    fn threads(mut self, flag: &'static str) -> Self {
        self.threads_flag = Some(flag);
        self
    }

    /// A zerg example: `examples/NAME` with the flags that give one reactor running the
    /// handlers on its own thread, like the peers.
    fn example(name: &str, family: Family, examples: &Path, bin: &str, extra: &[&str]) -> Self {
        let path = examples.join(bin);
        let mut cmd = vec![path.display().to_string()];
        cmd.extend(["--mode", "reactor", "--reactors", "1"].map(String::from));
        cmd.extend(extra.iter().map(|s| s.to_string()));
        Self {
            needs: Some(path),
            ..Self::new(name, family, &[])
        }
        .with_cmd(cmd)
        .port_style()
        .threads("--reactors")
    }

    fn with_cmd(mut self, cmd: Vec<String>) -> Self {
        self.cmd = cmd;
        self
    }

    /// Why the row cannot run here, if it cannot.
    pub(crate) fn missing(&self) -> Option<String> {
        let needs = self.needs.as_ref()?;
        if needs.exists() {
            return None;
        }
        Some(format!(
            "{} does not exist (build it first: see bench/README.md, \"zerg rows\")",
            needs.display()
        ))
    }

    /// Does this row take part in a workload of `family` whose server work is `server_work`?
    pub(crate) fn serves(&self, family: Family, server_work: &str) -> bool {
        self.family == family && !(self.http_only && server_work != "http")
    }
}

/// `ReactorConfig::min_wait` of the `-minwait` rows, in microseconds.
const MIN_WAIT_USEC: &str = "50";

/// Where things are: this binary, the zerg examples, the C reference server.
#[derive(Debug)]
pub(crate) struct Paths {
    pub(crate) exe: PathBuf,
    pub(crate) examples: PathBuf,
    pub(crate) c_server: PathBuf,
}

/// The rows, in table order per family; the first row of a family is its baseline.
pub(crate) fn server_kinds(p: &Paths) -> Vec<ServerKind> {
    use Family::*;
    let exe = p.exe.display().to_string();
    let exe = exe.as_str();
    let ex = p.examples.as_path();
    let zerg = |name: &str, extra: &[&str]| {
        let mut cmd = vec![exe, "zerg"];
        cmd.extend_from_slice(extra);
        ServerKind::new(name, Suite, &cmd).threads("--reactors")
    };
    let redis = which("redis-server");
    vec![
        ServerKind::new("tokio", Suite, &[exe, "tokio"]).threads("--threads"),
        ServerKind::new("monoio", Suite, &[exe, "monoio"]).threads("--threads"),
        ServerKind::new("monoio-coop", Suite, &[exe, "monoio", "--coop-taskrun"])
            .threads("--threads"),
        // zerg, one row per mode: handlers on the reactor thread with per-reactor accept (the
        // thread-per-core setup), then one dimension changed at a time.
        zerg("zerg", &["--mode", "reactor", "--accept", "per-reactor"]),
        zerg(
            "zerg-dedicated",
            &["--mode", "reactor", "--accept", "dedicated"],
        ),
        zerg(
            "zerg-inc",
            &[
                "--mode",
                "reactor",
                "--accept",
                "per-reactor",
                "--incremental",
            ],
        ),
        zerg(
            "zerg-runtime",
            &["--mode", "runtime", "--accept", "dedicated"],
        ),
        // Receive bundles on (ReactorConfig::recv_ring.bundle), and the whole receive ring
        // circulating from the start instead of growing from 8 MiB.
        zerg(
            "zerg-bundle",
            &["--mode", "reactor", "--accept", "per-reactor", "--bundle"],
        ),
        zerg(
            "zerg-fixed",
            &[
                "--mode",
                "reactor",
                "--accept",
                "per-reactor",
                "--fixed-ring",
            ],
        ),
        zerg(
            "zerg-timeouts",
            &["--mode", "reactor", "--accept", "per-reactor", "--timeouts"],
        ),
        // ReactorConfig::min_wait on (batching waits), in each handler mode.
        zerg(
            "zerg-minwait",
            &[
                "--mode",
                "reactor",
                "--accept",
                "per-reactor",
                "--min-wait",
                MIN_WAIT_USEC,
            ],
        ),
        zerg(
            "zerg-runtime-minwait",
            &[
                "--mode",
                "runtime",
                "--accept",
                "dedicated",
                "--min-wait",
                MIN_WAIT_USEC,
            ],
        ),
        // The kernel-feature switches, each on top of the `zerg` row: direct descriptors
        // (`ReactorConfig::direct_descriptors`), also with the acceptor thread (ring-to-ring
        // hand-off of direct descriptors), and zero-copy sends of 64 KiB and more
        // (`send_zerocopy_threshold`; over loopback the kernel copies anyway).
        zerg(
            "zerg-direct",
            &["--mode", "reactor", "--accept", "per-reactor", "--direct"],
        ),
        zerg(
            "zerg-direct-dedicated",
            &["--mode", "reactor", "--accept", "dedicated", "--direct"],
        ),
        zerg(
            "zerg-zc",
            &[
                "--mode",
                "reactor",
                "--accept",
                "per-reactor",
                "--zc-threshold",
                "64KiB",
            ],
        ),
        ServerKind {
            needs: Some(p.c_server.clone()),
            ..ServerKind::new("c-uring", Suite, &[&p.c_server.display().to_string()])
        }
        .threads("--threads"),
        ServerKind {
            http_only: true,
            ..ServerKind::example("zerg-raw", Suite, ex, "raw", &["--accept", "per-reactor"])
        },
        // Proxy: the runner adds --upstream 127.0.0.1:Q.
        ServerKind::new("tokio-proxy", Proxy, &[exe, "tokio-proxy"]).port_style(),
        ServerKind::example("zerg-proxy", Proxy, ex, "proxy", &[]),
        // RESP.
        ServerKind::new("tokio-resp", Resp, &[exe, "tokio-resp"]).port_style(),
        ServerKind {
            style: ArgStyle::Redis,
            needs: Some(redis.clone().unwrap_or_else(|| "redis-server".into())),
            ..ServerKind::new(
                "redis",
                Resp,
                &[&redis.unwrap_or_default().display().to_string()],
            )
        },
        ServerKind::example("zerg-resp", Resp, ex, "resp", &[]),
        // hyper.
        ServerKind::new("tokio-hyper", Hyper, &[exe, "tokio-hyper"]).port_style(),
        ServerKind::example("zerg-hyper", Hyper, ex, "hyper", &[]),
        // TLS vs plain, the same servers.
        ServerKind::new("tokio-hyper", Tls, &[exe, "tokio-hyper"]).port_style(),
        ServerKind {
            tls: true,
            ..ServerKind::new("tokio-hyper-tls", Tls, &[exe, "tokio-hyper", "--tls"]).port_style()
        },
        ServerKind::example("zerg-hyper", Tls, ex, "hyper", &[]),
        ServerKind {
            tls: true,
            ..ServerKind::example("zerg-tls", Tls, ex, "tls", &[])
        },
    ]
}

/// The full command of a row for one run.
pub(crate) fn command(
    s: &ServerKind,
    port: u16,
    server_work: &str,
    buf_size: usize,
    upstream: Option<u16>,
    threads: usize,
) -> Vec<String> {
    let mut cmd = s.cmd.clone();
    let port = port.to_string();
    match s.style {
        ArgStyle::Suite => {
            cmd.extend(["--port", &port, "--workload", server_work].map(String::from));
            cmd.extend(["--buf-size".to_string(), buf_size.to_string()]);
        }
        ArgStyle::Port => {
            cmd.extend(["--port".to_string(), port]);
            if let Some(up) = upstream {
                cmd.extend(["--upstream".to_string(), format!("127.0.0.1:{up}")]);
            }
        }
        ArgStyle::Redis => {
            // No persistence, no protected mode, loopback only, one I/O thread, log to stderr.
            let args = [
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--io-threads",
                "1",
                "--logfile",
                "",
            ];
            cmd.extend(args.map(String::from));
        }
    }
    if threads > 1
        && let Some(flag) = s.threads_flag
    {
        cmd.extend([flag.to_string(), threads.to_string()]);
    }
    cmd
}

/// The path of a program on PATH.
pub(crate) fn which(program: &str) -> Option<PathBuf> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .ok()?;
    let p = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !p.is_empty()).then(|| PathBuf::from(p))
}

/// Builds the C reference server (`c-reference/uring_server.c`) into `out` with gcc against
/// liburing (Debian: liburing-dev). With `install`, installs liburing-dev with apt-get if the
/// header is missing.
pub(crate) fn build_c_server(out: &Path, install: bool) -> Result<(), String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("c-reference/uring_server.c");
    if which("gcc").is_none() {
        return Err("gcc is not installed".into());
    }
    if install && !Path::new("/usr/include/liburing.h").exists() {
        eprintln!("zerg-bench: liburing.h is missing; trying apt-get install -y liburing-dev");
        let _ = Command::new("sh")
            .arg("-c")
            .arg("apt-get update -qq && apt-get install -y -qq liburing-dev")
            .status();
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let o = Command::new("gcc")
        .args(["-O2", "-Wall", "-Wextra", "-std=gnu11", "-o"])
        .arg(out)
        .arg(&src)
        .args(["-luring", "-lpthread"])
        .output()
        .map_err(|e| format!("gcc: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "gcc {} failed: {}",
            src.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> Paths {
        Paths {
            exe: "/x/zerg-bench".into(),
            examples: "/nonexistent/examples".into(),
            c_server: "/nonexistent/uring_server".into(),
        }
    }

    #[test]
    fn names_are_unique_per_family_and_commands_follow_the_style() {
        let rows = server_kinds(&paths());
        for (i, a) in rows.iter().enumerate() {
            for b in &rows[i + 1..] {
                assert!(
                    a.family != b.family || a.name != b.name,
                    "duplicate {}",
                    a.name
                );
            }
        }
        let tokio = &rows[0];
        assert_eq!(
            command(tokio, 7, "echo", 64, None, 1).join(" "),
            "/x/zerg-bench tokio --port 7 --workload echo --buf-size 64"
        );
        let proxy = rows.iter().find(|r| r.name == "tokio-proxy").unwrap();
        assert_eq!(
            command(proxy, 7, "echo", 64, Some(9), 1).join(" "),
            "/x/zerg-bench tokio-proxy --port 7 --upstream 127.0.0.1:9"
        );
        let zerg = rows.iter().find(|r| r.name == "zerg").unwrap();
        assert!(
            command(zerg, 7, "http", 64, None, 4).ends_with(&["--reactors".into(), "4".into()])
        );
    }

    #[test]
    fn missing_example_rows_say_so() {
        let rows = server_kinds(&paths());
        let raw = rows.iter().find(|r| r.name == "zerg-raw").unwrap();
        assert!(raw.missing().unwrap().contains("/nonexistent/examples/raw"));
        assert!(raw.serves(Family::Suite, "http") && !raw.serves(Family::Suite, "echo"));
        assert!(rows[0].missing().is_none());
    }
}
