//! The HTTP (and echo) example binaries.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::framing::{GET, PIPELINE};
use crate::harness::{Example, closed_within, example_path, read_hellos, read_to_close, statuses};

/// GET answered with the body, then the connection stays usable.
pub(crate) fn check_get(ex: &Example) {
    let mut c = ex.connect();
    for _ in 0..3 {
        c.write_all(GET).unwrap();
        let out = read_hellos(&mut c, 1);
        assert_eq!(statuses(&out), [200], "{}: {out:?}", ex.name);
    }
}

/// Three pipelined requests (one with a body) cut in two at every byte: three answers.
pub(crate) fn check_splits(ex: &Example) {
    for cut in 1..PIPELINE.len() {
        let mut c = ex.connect();
        c.write_all(&PIPELINE[..cut]).unwrap();
        c.write_all(&PIPELINE[cut..]).unwrap();
        let out = read_hellos(&mut c, 3);
        assert_eq!(statuses(&out), [200, 200, 200], "{} cut at {cut}", ex.name);
    }
}

/// `request` is answered with `status`, then the connection is closed.
pub(crate) fn check_refused(ex: &Example, request: &[u8], status: u16) {
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

pub(crate) fn check_bad_requests(ex: &Example) {
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
pub(crate) fn check_flood(ex: &Example) {
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

/// Handlers on tokio, an acceptor thread and incremental buffers: everything the defaults
/// (handlers on the reactor threads, per-reactor accept) are not.
const RUNTIME_INCREMENTAL: [&str; 5] = [
    "--mode",
    "runtime",
    "--accept",
    "dedicated",
    "--incremental",
];

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
fn raw_in_runtime_mode_incremental() {
    check_http_example("raw", &RUNTIME_INCREMENTAL);
}

#[test]
fn sequence() {
    check_http_example("sequence", &[]);
}

#[test]
fn sequence_in_runtime_mode_incremental() {
    check_http_example("sequence", &RUNTIME_INCREMENTAL);
}

#[test]
fn pipereader() {
    check_http_example("pipereader", &[]);
}

#[test]
fn pipereader_in_runtime_mode_incremental() {
    check_http_example("pipereader", &RUNTIME_INCREMENTAL);
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
        ("resp", &["--max-bulk", "0"]),
        ("proxy", &[]),
        (
            "proxy",
            &["--upstream", "127.0.0.1:1", "--connect-timeout", "-1"],
        ),
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
