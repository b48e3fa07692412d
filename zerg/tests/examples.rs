//! The examples as a client sees them. Their request framing (`examples/common/http.rs`) is
//! tested here directly; then each example binary (built by `cargo test` alongside this test) is
//! started on 127.0.0.1 port 0 and attacked: requests split at every byte, pipelined requests
//! with bodies, malformed and oversized requests (400 / 431 / 413 / 501, then a close), a
//! 256 MiB header flood (cut off early, server memory bounded, the next client served), and a
//! clean exit on SIGINT.

#[path = "../examples/common/http.rs"]
mod http;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use http::{Batch, Framer, Head, MAX_BODY, MAX_HEAD, Reject, Then};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// The framing logic.

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

fn head(s: &[u8]) -> Result<Head, Reject> {
    http::parse_head(s)
}

#[test]
fn parse_head_accepts_and_refuses() {
    let ok = |body, close| Ok(Head { body, close });
    assert_eq!(head(GET), ok(0, false));
    assert_eq!(head(b"GET / HTTP/1.0\r\n\r\n"), ok(0, true));
    assert_eq!(
        head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"),
        ok(0, false)
    );
    assert_eq!(
        head(b"GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n"),
        ok(0, true)
    );
    assert_eq!(
        head(b"POST / HTTP/1.1\r\ncontent-length: 12\r\nContent-Length: 12\r\n\r\n"),
        ok(12, false)
    );
    let limit = format!("POST / HTTP/1.1\r\nContent-Length: {MAX_BODY}\r\n\r\n");
    assert_eq!(head(limit.as_bytes()), ok(MAX_BODY, false));

    let bad = Err(Reject::BadRequest);
    assert_eq!(head(b"GET / HTTP/1.1\r\nBad\x01Name: x\r\n\r\n"), bad);
    assert_eq!(head(b"\x16\x03\x01\x02\x00\r\n\r\n"), bad);
    assert_eq!(head(b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n"), bad);
    assert_eq!(head(b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\n"), bad);
    assert_eq!(
        head(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
        bad
    );
    // Ends on bare LFs before the "\r\n\r\n"; only empty lines.
    assert_eq!(head(b"GET / HTTP/1.1\n\nX: y\r\n\r\n"), bad);
    assert_eq!(head(b"\r\n\r\n"), bad);

    let over = format!(
        "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        MAX_BODY + 1
    );
    assert_eq!(head(over.as_bytes()), Err(Reject::ContentTooLarge));
    assert_eq!(
        head(b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n"),
        Err(Reject::ContentTooLarge)
    );
    assert_eq!(
        head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
        Err(Reject::NotImplemented)
    );
    let mut many = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..=http::MAX_HEADERS {
        many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(head(&many), Err(Reject::HeaderTooLarge));
}

#[test]
fn prebuilt_responses_are_well_formed() {
    let mut all = vec![http::RESPONSE, http::RESPONSE_CLOSE];
    for r in [
        Reject::BadRequest,
        Reject::ContentTooLarge,
        Reject::HeaderTooLarge,
        Reject::NotImplemented,
    ] {
        assert!(
            r.response()
                .starts_with(format!("HTTP/1.1 {} ", r.status()).as_bytes())
        );
        all.push(r.response());
    }
    for bytes in all {
        let mut fields = [httparse::EMPTY_HEADER; 8];
        let mut res = httparse::Response::new(&mut fields);
        let httparse::Status::Complete(n) = res.parse(bytes).unwrap() else {
            panic!("incomplete response {bytes:?}");
        };
        let length = res
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| {
                std::str::from_utf8(h.value)
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            });
        assert_eq!(length, Some(bytes.len() - n), "Content-Length of {bytes:?}");
    }
}

fn frame(pieces: &[&[u8]]) -> Batch {
    let mut framer = Framer::default();
    let mut batch = Batch::default();
    for p in pieces {
        framer.feed(p, &mut batch);
    }
    batch
}

/// Three requests, one with a body holding "\r\n\r\n".
const PIPELINE: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n01\r\n\r\n6789GET /y HTTP/1.1\r\n\r\n";

#[test]
fn framer_counts_pipelined_requests_split_anywhere() {
    let want = Batch {
        requests: 3,
        then: Then::Continue,
    };
    assert_eq!(frame(&[PIPELINE]), want);
    for a in 0..=PIPELINE.len() {
        for b in a..=PIPELINE.len() {
            let got = frame(&[&PIPELINE[..a], &PIPELINE[a..b], &PIPELINE[b..]]);
            assert_eq!(got, want, "split at {a}, {b}");
        }
    }
    // A close ends the batch: later requests are not answered.
    let mut closing = GET.to_vec();
    closing.extend_from_slice(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    closing.extend_from_slice(GET);
    assert_eq!(
        frame(&[&closing]),
        Batch {
            requests: 2,
            then: Then::Close
        }
    );
}

/// A head of exactly `MAX_HEAD` bytes is served; one byte more is refused.
#[test]
fn framer_head_limit_is_exact() {
    let sized = |len: usize| {
        let mut h = b"GET / HTTP/1.1\r\nX: ".to_vec();
        h.resize(len - 4, b'a');
        h.extend_from_slice(b"\r\n\r\n");
        h
    };
    for len in [MAX_HEAD, MAX_HEAD + 1] {
        let h = sized(len);
        let want = if len == MAX_HEAD {
            Batch {
                requests: 1,
                then: Then::Continue,
            }
        } else {
            Batch {
                requests: 0,
                then: Then::Reject(Reject::HeaderTooLarge),
            }
        };
        assert_eq!(frame(&[&h]), want, "{len} bytes in one piece");
        for cut in [1, 100, MAX_HEAD - 3, MAX_HEAD - 1, MAX_HEAD] {
            assert_eq!(
                frame(&[&h[..cut], &h[cut..]]),
                want,
                "{len} bytes cut at {cut}"
            );
        }
    }
}

fn request() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(GET.to_vec()),
        Just(b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n".to_vec()),
        (0usize..300).prop_map(|n| {
            let mut r = format!("POST / HTTP/1.1\r\nContent-Length: {n}\r\n\r\n").into_bytes();
            r.extend(std::iter::repeat_n(b'\r', n / 2));
            r.extend(std::iter::repeat_n(b'\n', n - n / 2));
            r
        }),
        (1usize..MAX_HEAD - 40).prop_map(|n| {
            let mut r = b"GET / HTTP/1.1\r\nX: ".to_vec();
            r.resize(r.len() + n, b'v');
            r.extend_from_slice(b"\r\n\r\n");
            r
        }),
    ]
}

/// A final item that is refused (or, last, a close).
fn ending() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        Just(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec()),
        Just(b"GET / HTTP/1.1\r\nBad\x01: x\r\n\r\n".to_vec()),
        Just(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec()),
        Just([b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; MAX_HEAD + 50]].concat()),
        Just(
            [
                b"GET / HTTP/1.1\r\nX\x01: ".as_slice(),
                &[b'a'; MAX_HEAD + 50]
            ]
            .concat()
        ),
        Just(b"POST / HTTP/1.1\r\nContent-Length: 2000000\r\n\r\nabc".to_vec()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// However the stream is cut into pieces, the framer finds the same requests and the same
    /// ending as when it sees the stream whole.
    #[test]
    fn framer_result_does_not_depend_on_the_pieces(
        requests in proptest::collection::vec(request(), 0..6),
        end in ending(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let stream: Vec<u8> = requests.iter().flatten().chain(&end).copied().collect();
        let whole = frame(&[&stream]);
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        at.sort_unstable();
        let mut pieces = Vec::new();
        let mut last = 0;
        for a in at.into_iter().chain([stream.len()]) {
            pieces.push(&stream[last..a]);
            last = a;
        }
        prop_assert_eq!(frame(&pieces), whole);
        let complete = requests.len() + usize::from(end.starts_with(b"GET / HTTP/1.1\r\nConnection"));
        prop_assert_eq!(whole.requests, complete);
    }
}

// ---------------------------------------------------------------------------------------------
// The example binaries.

/// Where cargo put the example binaries: next to this test's directory (`target/<profile>`).
fn example_path(name: &str) -> PathBuf {
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
             filter (`--test examples`) build them first with `cargo build --examples` \
             (`--features tokio` for stream, hyper, codec)",
            path.display()
        );
    };
    // A binary older than the code it is built from tests old code: refuse it.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let sources = [
        root.join("examples").join(format!("{name}.rs")),
        root.join("examples/common/mod.rs"),
        root.join("examples/common/http.rs"),
    ];
    for source in sources.iter().filter(|p| p.exists()) {
        let changed = std::fs::metadata(source)
            .and_then(|m| m.modified())
            .unwrap();
        assert!(
            changed <= built,
            "example binary {} is older than {}: rebuild it (`cargo test` does; with \
             `--test examples` run `cargo build --examples` first)",
            path.display(),
            source.display()
        );
    }
    path
}

/// A running example, stopped with SIGINT (and checked to exit 0) by `stop`, killed on drop.
struct Example {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
    stderr: mpsc::Receiver<String>,
}

impl Example {
    /// Starts `name` on 127.0.0.1, any free port, small buffers, with `extra` flags.
    fn start(name: &'static str, extra: &[&str]) -> Example {
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

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    /// Resident memory of the server: (now, peak), in KiB.
    fn rss_kib(&self) -> (u64, u64) {
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
    fn stop(mut self) -> Vec<String> {
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
fn statuses(bytes: &[u8]) -> Vec<u16> {
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
fn read_hellos(s: &mut TcpStream, want: usize) -> Vec<u8> {
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
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
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

/// GET answered with the body, then the connection stays usable.
fn check_get(ex: &Example) {
    let mut c = ex.connect();
    for _ in 0..3 {
        c.write_all(GET).unwrap();
        let out = read_hellos(&mut c, 1);
        assert_eq!(statuses(&out), [200], "{}: {out:?}", ex.name);
    }
}

/// Three pipelined requests (one with a body) cut in two at every byte: three answers.
fn check_splits(ex: &Example) {
    for cut in 1..PIPELINE.len() {
        let mut c = ex.connect();
        c.write_all(&PIPELINE[..cut]).unwrap();
        c.write_all(&PIPELINE[cut..]).unwrap();
        let out = read_hellos(&mut c, 3);
        assert_eq!(statuses(&out), [200, 200, 200], "{} cut at {cut}", ex.name);
    }
}

/// `request` is answered with `status`, then the connection is closed.
fn check_refused(ex: &Example, request: &[u8], status: u16) {
    let mut c = ex.connect();
    c.write_all(request).unwrap();
    let out = read_to_close(&mut c);
    assert_eq!(
        statuses(&out),
        [status],
        "{}: {:?} answered {out:?}",
        ex.name,
        String::from_utf8_lossy(&request[..request.len().min(60)])
    );
}

fn check_bad_requests(ex: &Example) {
    check_refused(ex, b"GET / HTTP/1.1\r\nBad\x01Header: x\r\n\r\n", 400);
    let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
    long.resize(16 * 1024, b'a');
    long.extend_from_slice(b"\r\n\r\n");
    check_refused(ex, &long, 431);
    check_refused(
        ex,
        b"POST / HTTP/1.1\r\nContent-Length: 2000000\r\n\r\nabc",
        413,
    );
}

/// 256 MiB of one endless header: the server answers 431 and closes long before the end,
/// holds no more than a few MiB meanwhile, and serves the next client.
fn check_flood(ex: &Example) {
    const FLOOD: usize = 256 << 20;
    let (_, peak_before) = ex.rss_kib();
    let mut c = ex.connect();
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut chunk = vec![b'a'; 64 * 1024];
        chunk[..19].copy_from_slice(b"GET / HTTP/1.1\r\nX: ");
        let mut sent = 0;
        while sent < FLOOD {
            match w.write(&chunk) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
            chunk[..19].fill(b'a');
        }
        sent
    });
    let started = Instant::now();
    let out = read_to_close(&mut c);
    let _ = c.shutdown(Shutdown::Both);
    let sent = writer.join().unwrap();
    assert_eq!(statuses(&out), [431], "{}: flood answered {out:?}", ex.name);
    assert!(
        sent < FLOOD / 4,
        "{}: {sent} bytes of the flood were taken before the close",
        ex.name
    );
    let (_, peak_after) = ex.rss_kib();
    assert!(
        peak_after < peak_before + 32 * 1024,
        "{}: peak memory grew from {peak_before} KiB to {peak_after} KiB",
        ex.name
    );
    eprintln!(
        "{}: flood cut after {} KiB in {:?}; peak RSS {peak_before} -> {peak_after} KiB",
        ex.name,
        sent / 1024,
        started.elapsed()
    );
    check_get(ex);
}

fn check_http_example(name: &'static str, extra: &[&str]) {
    let ex = Example::start(name, extra);
    check_get(&ex);
    check_splits(&ex);
    check_bad_requests(&ex);
    check_refused(
        &ex,
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        501,
    );
    if name != "codec" {
        // A TLS handshake on the plaintext port: refused at once, without waiting for more.
        // (The codec example takes a first line without "\n" for an unfinished echo line.)
        check_refused(&ex, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", 400);
    }
    check_flood(&ex);
    let log = ex.stop();
    assert!(
        log.iter().any(|l| l.contains("status=431")),
        "{name}: no rejection logged in {log:#?}"
    );
}

#[test]
fn raw() {
    check_http_example("raw", &[]);
}

#[test]
fn raw_on_reactor_threads_incremental() {
    check_http_example("raw", &["--mode", "reactor", "--incremental"]);
}

#[test]
fn sequence() {
    check_http_example("sequence", &[]);
}

#[test]
fn sequence_on_reactor_threads_incremental() {
    check_http_example("sequence", &["--mode", "reactor", "--incremental"]);
}

#[test]
fn pipereader() {
    check_http_example("pipereader", &[]);
}

#[test]
fn pipereader_on_reactor_threads_incremental() {
    check_http_example("pipereader", &["--mode", "reactor", "--incremental"]);
}

#[test]
fn sqpoll() {
    check_http_example("sqpoll", &["--sq-cpu", "0"]);
}

/// A head dribbled one byte per packet would pin one receive buffer per byte in the reader:
/// past 64 buffers the pipereader example answers 431 and closes.
#[test]
fn pipereader_bounds_buffers_held_by_a_dribbled_head() {
    let ex = Example::start("pipereader", &[]);
    let mut c = ex.connect();
    c.write_all(b"GET / HTTP/1.1\r\nX: ").unwrap();
    let mut answered = Vec::new();
    c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    for _ in 0..2000 {
        if c.write_all(b"a").is_err() {
            break;
        }
        let mut buf = [0u8; 512];
        match c.read(&mut buf) {
            Ok(n) => {
                answered.extend_from_slice(&buf[..n]);
                if n == 0 || statuses(&answered) == [431] {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(statuses(&answered), [431], "got {answered:?}");
    ex.stop();
}

#[cfg(feature = "tokio")]
#[test]
fn stream() {
    check_http_example("stream", &[]);
}

#[cfg(feature = "tokio")]
#[test]
fn codec() {
    check_http_example("codec", &[]);
    // The line echo, with a line over the 64 KiB limit closing the connection.
    let ex = Example::start("codec", &[]);
    let mut c = ex.connect();
    c.write_all(b"hello\r\nzerg\n").unwrap();
    let mut out = [0u8; 11];
    c.read_exact(&mut out).unwrap();
    assert_eq!(&out, b"hello\nzerg\n");
    c.write_all(&vec![b'x'; 70 * 1024]).unwrap();
    assert!(read_to_close(&mut c).is_empty());
    ex.stop();
}

#[cfg(feature = "tokio")]
#[test]
fn hyper() {
    let ex = Example::start("hyper", &[]);
    check_get(&ex);
    check_splits(&ex);
    check_bad_requests(&ex);
    check_flood(&ex);
    // Chunked bodies are hyper's to decode: read and dropped, then answered.
    let mut c = ex.connect();
    c.write_all(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .unwrap();
    assert_eq!(statuses(&read_hellos(&mut c, 1)), [200]);
    ex.stop();
}

#[test]
fn echo_round_trip_and_flags() {
    let ex = Example::start("echo", &["--write-timeout", "5", "--max-connections", "64"]);
    let mut c = ex.connect();
    let msg: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7) as u8).collect();
    let mut w = c.try_clone().unwrap();
    let data = msg.clone();
    let writer = std::thread::spawn(move || w.write_all(&data).unwrap());
    let mut got = vec![0; msg.len()];
    c.read_exact(&mut got).unwrap();
    writer.join().unwrap();
    assert!(got == msg, "echo differs");
    ex.stop();
}

/// Whether the server closed `c` within `limit` (reading and discarding meanwhile).
fn closed_within(c: &mut TcpStream, limit: Duration) -> Option<Duration> {
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

/// The timeout flags reach the library: an idle keep-alive connection is closed by
/// `--idle-timeout`, a client trickling a request head by `--header-timeout`, in both modes.
#[test]
fn idle_and_header_timeouts_close_connections() {
    for mode in ["runtime", "reactor"] {
        let ex = Example::start(
            "raw",
            &[
                "--mode",
                mode,
                "--idle-timeout",
                "1",
                "--header-timeout",
                "2",
            ],
        );
        check_get(&ex);
        // Idle after a request: closed after about a second.
        let mut idle = ex.connect();
        idle.write_all(GET).unwrap();
        let _ = read_hellos(&mut idle, 1);
        let closed = closed_within(&mut idle, Duration::from_secs(5));
        assert!(
            closed.is_some_and(|t| t >= Duration::from_millis(900)),
            "{mode}: idle connection closed after {closed:?}"
        );
        // A head trickled a byte every 300 ms: never idle, closed by the header timeout.
        let mut slow = ex.connect();
        let start = std::time::Instant::now();
        let mut closed = None;
        for byte in b"GET / HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa"
            .iter()
            .cycle()
            .take(40)
        {
            if slow.write_all(&[*byte]).is_err() {
                closed = Some(start.elapsed());
                break;
            }
            if closed_within(&mut slow, Duration::from_millis(300)).is_some() {
                closed = Some(start.elapsed());
                break;
            }
        }
        assert!(
            closed.is_some_and(|t| t >= Duration::from_millis(1800) && t < Duration::from_secs(5)),
            "{mode}: slow head closed after {closed:?}"
        );
        check_get(&ex);
        ex.stop();
    }
}

#[test]
fn bad_flags_exit_2_with_usage() {
    for (name, args) in [
        ("raw", &["--no-such-flag"][..]),
        ("raw", &["--port", "eighty"]),
        ("raw", &["--max-connections", "0"]),
        ("echo", &["--header-timeout", "5"]),
    ] {
        let out = Command::new(example_path(name))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{name} {args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("error:") && err.contains("--port N"), "{err}");
    }
    let out = Command::new(example_path("raw"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let usage = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--idle-timeout",
        "--read-timeout",
        "--header-timeout",
        "--write-timeout",
        "--max-connections",
    ] {
        assert!(usage.contains(flag), "{flag} missing from {usage}");
    }
}
