//! `--metrics-port` of the examples as a scraper sees it: the `raw` example binary (built by
//! `cargo test` alongside this test) started on 127.0.0.1 with a metrics port, some requests,
//! then `GET /metrics` — Prometheus text whose counters follow the traffic, in both handler
//! modes; 404 and 405 for anything else; a clean exit on SIGINT. Without the `prometheus`
//! feature the flag is refused.

use std::path::PathBuf;

/// The example binary `name`, built for this test's profile and features.
fn example_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable in target/<profile>/deps")
        .join("examples")
        .join(name);
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "example binary {} not found: `cargo test` builds the examples; with a target \
                 filter build them first with `cargo build --examples --features prometheus`",
                path.display()
            )
        });
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for source in ["raw.rs", "common/mod.rs", "common/metrics.rs"] {
        let changed = std::fs::metadata(root.join(source))
            .and_then(|m| m.modified())
            .unwrap();
        assert!(
            changed <= built,
            "{} is older than examples/{source}: rebuild it",
            path.display()
        );
    }
    path
}

#[cfg(feature = "prometheus")]
mod scrape {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use super::example_path;

    /// A running example, killed on drop unless [`stop`](Self::stop)ped.
    struct Running(Child);

    impl Running {
        /// SIGINT; the process must exit 0 within 10 s.
        fn stop(mut self) {
            let pid = self.0.id().to_string();
            assert!(
                Command::new("kill")
                    .args(["-INT", &pid])
                    .status()
                    .unwrap()
                    .success()
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(status) = self.0.try_wait().unwrap() {
                    assert!(status.success(), "raw exited with {status}");
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "raw still running 10 s after SIGINT"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            if self.0.try_wait().ok().flatten().is_none() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }

    /// Starts `raw` on 127.0.0.1 with `--metrics-port 0` and `extra`; returns it with the server's
    /// port and the metrics port, read from the lines it prints.
    fn start_raw(extra: &[&str]) -> (Running, u16, u16) {
        let mut child = Command::new(example_path("raw"))
            .args(["--ip", "127.0.0.1", "--port", "0", "--metrics-port", "0"])
            .args(["--workers", "2", "--buffer-ring-entries", "256"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("raw starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let running = Running(child);
        let mut line = || lines.next().expect("a line").expect("UTF-8");
        let port = |line: &str, after: &str| -> u16 {
            let rest = line
                .strip_prefix(after)
                .unwrap_or_else(|| panic!("{line:?}"));
            let addr = rest.split([' ', '/']).next().unwrap();
            addr.parse::<std::net::SocketAddr>()
                .unwrap_or_else(|_| panic!("{line:?}"))
                .port()
        };
        let server = port(&line(), "listening on ");
        let metrics = port(&line(), "metrics on http://");
        // Keep reading: the example prints more (`stopped`) and must not hit a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        (running, server, metrics)
    }

    /// `method path` on `port` with `Accept: accept` and `Connection: close`: the whole answer.
    fn ask(port: u16, method: &str, path: &str, accept: &str) -> String {
        let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: m\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
        );
        c.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out)
            .expect("the answer, then a close");
        out
    }

    /// The sum over reactors of the samples of `name`.
    fn sum(text: &str, name: &str) -> u64 {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    }

    #[test]
    fn raw_serves_its_counters_on_the_metrics_port() {
        const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        const HELLO: &[u8] = b"Hello, World!";
        for mode in ["runtime", "reactor"] {
            let (raw, port, metrics) = start_raw(&["--mode", mode]);
            // Ten pipelined requests on one connection, all answered.
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.write_all(&GET.repeat(10)).unwrap();
            let mut got = Vec::new();
            let mut buf = [0; 4096];
            while got.windows(HELLO.len()).filter(|w| *w == HELLO).count() < 10 {
                let n = c.read(&mut buf).expect("responses");
                assert!(n > 0, "closed after {got:?}");
                got.extend_from_slice(&buf[..n]);
            }
            // The reactor publishes its counters once per loop iteration: poll until they show.
            let deadline = Instant::now() + Duration::from_secs(10);
            let text = loop {
                let text = ask(metrics, "GET", "/metrics", "*/*");
                if sum(&text, "zerg_sent_bytes_total") >= got.len() as u64
                    || Instant::now() > deadline
                {
                    break text;
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
            assert!(
                text.contains("content-type: text/plain; version=0.0.4"),
                "{text}"
            );
            assert!(text.contains("# TYPE zerg_connections gauge\n"), "{text}");
            assert!(
                text.contains("# TYPE zerg_sent_bytes_total counter\n"),
                "{text}"
            );
            assert_eq!(
                sum(&text, "zerg_sent_bytes_total"),
                got.len() as u64,
                "{text}"
            );
            assert_eq!(
                sum(&text, "zerg_received_bytes_total"),
                10 * GET.len() as u64
            );
            assert_eq!(sum(&text, "zerg_connections"), 1, "{text}");
            assert_eq!(sum(&text, "zerg_connections_opened_total"), 1, "{text}");

            let open = ask(metrics, "GET", "/metrics", "application/openmetrics-text");
            assert!(open.contains("application/openmetrics-text"), "{open}");
            assert!(open.ends_with("# EOF\n"), "{open}");
            let head = ask(metrics, "HEAD", "/metrics", "*/*");
            assert!(
                head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
                "{head}"
            );
            assert!(ask(metrics, "GET", "/", "*/*").starts_with("HTTP/1.1 404"));
            let post = ask(metrics, "POST", "/metrics", "*/*");
            assert!(
                post.starts_with("HTTP/1.1 405") && post.contains("allow: GET, HEAD"),
                "{post}"
            );
            drop(c);
            raw.stop();
        }
    }
}

#[cfg(not(feature = "prometheus"))]
#[test]
fn metrics_port_needs_the_prometheus_feature() {
    let out = std::process::Command::new(example_path("raw"))
        .args(["--metrics-port", "9090"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--features prometheus"), "{err}");
}
