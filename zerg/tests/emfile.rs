//! docs/architecture.md, rule 4: accept survives running out of file descriptors (EMFILE).
//!
//! C# never re-armed its multishot accept: one EMFILE and the server stopped accepting forever.
//! The server runs in a child process (this test binary, re-executed) with a low
//! `RLIMIT_NOFILE`, so exhausting descriptors cannot disturb other tests. The parent opens clients
//! until the child's accepts fail, holds them, closes them, and then a new client must be served.
//!
//! The child is driven over its stdin/stdout: it prints `PORT <n>`, answers `STATS` with its
//! counters and exits on `EXIT` or end of input. It is always killed and reaped by PID.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use zerg_uring::{AcceptMode, Engine};

const CHILD_ENV: &str = "ZERG_EMFILE_CHILD";
/// Descriptors the child may open beyond those it has before the engine starts.
const HEADROOM: u64 = 24;

// ---------------------------------------------------------------------------------------------
// The child: an echo server under a low descriptor limit.

fn run_child(accept: AcceptMode) -> ! {
    let baseline = util::open_fds() as u64;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = baseline + HEADROOM;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    let mut opts = util::options(1, false);
    opts.accept_mode = accept;
    let engine = Engine::serve(opts, util::echo).expect("child engine starts");
    let out = std::io::stdout();
    writeln!(
        out.lock(),
        "PORT {} baseline_fds={baseline} limit={} engine_fds={}",
        engine.local_addr().port(),
        lim.rlim_cur,
        util::open_fds() as u64 - baseline
    )
    .unwrap();
    out.lock().flush().unwrap();
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        match line.trim() {
            "STATS" => {
                let s = engine.stats();
                let t = s.total();
                writeln!(
                    out.lock(),
                    "STATS accepted={} accept_errors={} accept_rearms={} connections={}",
                    t.connections_total,
                    s.acceptor.accept_errors + t.accept_errors,
                    s.acceptor.accept_rearms + t.accept_rearms,
                    t.connections,
                )
                .unwrap();
                out.lock().flush().unwrap();
            }
            _ => break,
        }
    }
    engine.stop();
    engine.join().expect("child engine ran without failure");
    std::process::exit(0);
}

// ---------------------------------------------------------------------------------------------
// The parent.

/// The child process; killed (SIGKILL, by PID) and reaped when dropped, whatever happened.
struct ChildGuard {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The child's stdout, line by line (a reader thread), so every read can time out.
    lines: mpsc::Receiver<String>,
}

impl ChildGuard {
    fn spawn(test_name: &str) -> ChildGuard {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the child server");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        // Ends when the child's stdout closes (the child exited or was killed).
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ChildGuard {
            child,
            stdin,
            lines,
        }
    }

    /// The next line containing `prefix`, from `prefix` on (the harness prints its own text,
    /// sometimes on the same line).
    fn line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(i) = line.find(prefix) {
                        return line[i..].trim().to_string();
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("no {prefix} line from the child within 10 s")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("the child exited before printing {prefix}")
                }
            }
        }
    }

    fn stats(&mut self) -> Vec<(String, u64)> {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(b"STATS\n").unwrap();
        stdin.flush().unwrap();
        self.line("STATS")
            .split_whitespace()
            .skip(1)
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.parse().unwrap())
            })
            .collect()
    }

    fn stat(&mut self, name: &str) -> u64 {
        self.stats()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .unwrap()
    }

    /// Asks the child to exit and waits up to 5 s for it (Drop kills it otherwise).
    fn finish(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the child did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGKILL to this child's PID only.
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn echo_once(port: u16, timeout: Duration) -> std::io::Result<Vec<u8>> {
    let mut c = TcpStream::connect(("127.0.0.1", port))?;
    c.set_read_timeout(Some(timeout))?;
    c.write_all(b"still accepting")?;
    let mut buf = vec![0u8; 15];
    c.read_exact(&mut buf)?;
    Ok(buf)
}

fn accept_survives_emfile(accept: AcceptMode, test_name: &str) {
    if std::env::var_os(CHILD_ENV).is_some() {
        run_child(accept);
    }
    let mut child = ChildGuard::spawn(test_name);
    let hello = child.line("PORT");
    let port: u16 = hello.split_whitespace().nth(1).unwrap().parse().unwrap();
    println!("child ({accept:?} accept): {hello}");
    assert_eq!(
        echo_once(port, Duration::from_secs(5)).unwrap(),
        b"still accepting"
    );

    // Open clients until the child's accepts fail. Connects still succeed (the kernel queues
    // them in the backlog); the child's accept is what runs out of descriptors.
    let mut clients = Vec::new();
    let t0 = Instant::now();
    while child.stat("accept_errors") == 0 {
        assert!(
            clients.len() < 200 && t0.elapsed() < Duration::from_secs(5),
            "{} clients open and the child never failed an accept",
            clients.len()
        );
        for _ in 0..8 {
            clients.push(TcpStream::connect(("127.0.0.1", port)).unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let at_exhaustion = child.stats();
    // Hold them: the acceptor backs off and retries meanwhile (every 100 ms by default).
    std::thread::sleep(Duration::from_secs(1));
    let after_hold = child.stats();
    drop(clients);
    let closed = Instant::now();

    // Service resumes: the back-off timer re-arms the accept once descriptors are free.
    let mut served = None;
    while closed.elapsed() < Duration::from_millis(1500) {
        if let Ok(b) = echo_once(port, Duration::from_millis(300)) {
            served = Some((b, closed.elapsed()));
            break;
        }
    }
    let end = child.stats();
    println!(
        "EMFILE ({accept:?} accept): at exhaustion {at_exhaustion:?}; after holding 1 s \
         {after_hold:?}; after closing: served after {:?}; {end:?}",
        served.as_ref().map(|s| s.1)
    );
    let (echo, _) = served.expect("a new client is served within 1.5 s after descriptors free up");
    assert_eq!(echo, b"still accepting");
    let rearms = end.iter().find(|(k, _)| k == "accept_rearms").unwrap().1;
    assert!(rearms >= 1, "the accept was never re-armed: {end:?}");
    let status = child.finish();
    assert!(status.success(), "child exited with {status}");
}

#[test]
fn accept_survives_emfile_dedicated() {
    accept_survives_emfile(AcceptMode::Dedicated, "accept_survives_emfile_dedicated");
}

#[test]
fn accept_survives_emfile_per_reactor() {
    accept_survives_emfile(AcceptMode::PerReactor, "accept_survives_emfile_per_reactor");
}
