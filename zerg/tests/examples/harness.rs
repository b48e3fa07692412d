//! Running an example binary as a client sees it: started on 127.0.0.1 port 0, its responses
//! read, stopped with SIGINT (and checked to exit 0).

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Where cargo put the example binaries: next to this test's directory (`target/<profile>`).
pub(crate) fn example_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable in target/<profile>/deps");
    let path = profile_dir.join("examples").join(name);
    let built = std::fs::metadata(&path).and_then(|m| m.modified());
    let Ok(built) = built else {
        panic!(
            "example binary {} not found: `cargo test` builds the examples; with a target \
             filter (`--test examples`) build them first with `cargo build --examples \
             --all-features` (some examples need features: see zerg/Cargo.toml)",
            path.display()
        );
    };
    // A binary older than the code it is built from tests old code: refuse it. Its sources in
    // the examples directory are listed in cargo's dep-info file next to it.
    let examples_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut sources = vec![examples_dir.join(format!("{name}.rs"))];
    if let Ok(deps) = std::fs::read_to_string(path.with_extension("d")) {
        let listed = deps.split_once(": ").map_or("", |(_, deps)| deps);
        // Paths are separated by spaces; a space inside a path is escaped ("\ ").
        let listed = listed.trim().replace("\\ ", "\0");
        sources.extend(
            listed
                .split(' ')
                .map(|p| std::path::PathBuf::from(p.replace('\0', " ")))
                .filter(|p| p.starts_with(&examples_dir)),
        );
    }
    for source in sources.iter().filter(|p| p.exists()) {
        let changed = std::fs::metadata(source)
            .and_then(|m| m.modified())
            .unwrap();
        assert!(
            changed <= built,
            "example binary {} is older than {}: rebuild it (`cargo test` does; with \
             `--test examples` run `cargo build --examples --all-features` first)",
            path.display(),
            source.display()
        );
    }
    path
}

/// A running example, stopped with SIGINT (and checked to exit 0) by `stop`, killed on drop.
pub(crate) struct Example {
    pub(crate) name: &'static str,
    child: Child,
    pub(crate) addr: SocketAddr,
    stderr: mpsc::Receiver<String>,
}

impl Example {
    /// Starts `name` on 127.0.0.1, any free port, small buffers, with `extra` flags.
    pub(crate) fn start(name: &'static str, extra: &[&str]) -> Example {
        let mut child = Command::new(example_path(name))
            .args([
                "--ip",
                "127.0.0.1",
                "--port",
                "0",
                "--workers",
                "2",
                "--recv-buffer-size",
                "4096",
                "--buffer-ring-entries",
                "256",
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("example starts");
        let (tx, stderr) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (tx, stdout) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = stdout
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("{name} printed no `listening on` line"));
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("{name}: unexpected first line {line:?}"));
        Example {
            name,
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], addr.port())),
            stderr,
        }
    }

    pub(crate) fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    /// Resident memory of the server: (now, peak), in KiB.
    pub(crate) fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("server process status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{name} in /proc/PID/status"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// SIGINT, then the process must exit 0 within 10 s. Returns everything it logged.
    pub(crate) fn stop(mut self) -> Vec<String> {
        let sent = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("kill(1)");
        assert!(sent.success(), "kill -INT {}", self.child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{} exited with {status}", self.name);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} still running 10 s after SIGINT",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // The process is gone: its stderr ends once the reader thread has forwarded all of it.
        let mut log = Vec::new();
        loop {
            match self.stderr.recv_timeout(Duration::from_secs(5)) {
                Ok(line) => log.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => return log,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("{}: stderr still open", self.name),
            }
        }
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The status codes of the responses in `bytes`.
pub(crate) fn statuses(bytes: &[u8]) -> Vec<u16> {
    memchr::memmem::find_iter(bytes, b"HTTP/1.1 ")
        .filter_map(|i| {
            std::str::from_utf8(bytes.get(i + 9..i + 12)?)
                .ok()?
                .parse()
                .ok()
        })
        .collect()
}

/// Reads until `want` responses with a body "Hello, World!" arrived (or 10 s passed).
pub(crate) fn read_hellos(s: &mut TcpStream, want: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(10);
    while memchr::memmem::find_iter(&out, b"Hello, World!").count() < want {
        assert!(Instant::now() < deadline, "timed out: got {out:?}");
        match s.read(&mut buf) {
            Ok(0) => panic!("closed early after {out:?}"),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("{e} after {out:?}"),
        }
    }
    out
}

/// Reads to the end of the stream (a reset after the response counts as the end too).
pub(crate) fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("waiting for the close: {e} after {out:?}"),
        }
    }
}

/// Whether the server closed `c` within `limit` (reading and discarding meanwhile).
pub(crate) fn closed_within(c: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    while start.elapsed() < limit {
        c.set_read_timeout(Some(
            limit - start.elapsed().min(limit) + Duration::from_millis(1),
        ))
        .unwrap();
        match c.read(&mut buf) {
            Ok(0) | Err(_) if start.elapsed() < limit => return Some(start.elapsed()),
            _ => {}
        }
    }
    None
}
