//! The hyper-based example binaries (`hyper`, `axum`) in both handler modes: HTTP/1.1 limits
//! and floods as for the other HTTP examples, h2c from a hyper client, and the header timeout —
//! on the reactor's own timers in reactor mode — closing silent, slow and HTTP/2-preface-only
//! clients while keep-alive clients are served.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::framing::GET;
use crate::harness::{Example, closed_within, read_hellos, read_to_close, statuses};
use crate::http_examples::{check_bad_requests, check_flood, check_get};

/// Three pipelined GETs cut in two at every byte: three answers.
fn check_get_splits(ex: &Example) {
    let pipeline = GET.repeat(3);
    for cut in 1..pipeline.len() {
        let mut c = ex.connect();
        c.write_all(&pipeline[..cut]).unwrap();
        c.write_all(&pipeline[cut..]).unwrap();
        let out = read_hellos(&mut c, 3);
        assert_eq!(statuses(&out), [200, 200, 200], "{} cut at {cut}", ex.name);
    }
}

/// One GET over h2c (HTTP/2 with prior knowledge) from a hyper client.
fn h2c_get(addr: SocketAddr) -> (StatusCode, Version, Bytes) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .expect("h2c handshake");
        tokio::spawn(conn);
        let req = Request::get("http://localhost/")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let res = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
            .await
            .expect("an h2c response within 10 s")
            .expect("an h2c response");
        let (parts, body) = res.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.version, body)
    })
}

/// `--header-timeout 1`: a silent connection, one that sent only the HTTP/2 preface and one
/// trickling an HTTP/1 head are closed after about a second, a request whose body stalls is
/// answered 408 and closed; a keep-alive client sending a request every 300 ms for 2 s is served
/// throughout.
fn check_header_timeout(ex: &Example, post_path: &str) {
    let mut stalled = ex.connect();
    stalled
        .write_all(
            format!("POST {post_path} HTTP/1.1\r\nContent-Length: 100\r\n\r\n0123456789")
                .as_bytes(),
        )
        .unwrap();
    let mut silent = ex.connect();
    let mut preface = ex.connect();
    preface
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .unwrap();
    let mut slow = ex.connect();
    slow.write_all(b"GET / HTTP/1.1\r\nX-Slow: a").unwrap();
    let mut good = ex.connect();
    for _ in 0..7 {
        good.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        assert_eq!(statuses(&read_hellos(&mut good, 1)), [200], "{}", ex.name);
        // A byte of the slow head every 300 ms: never idle for long.
        let _ = slow.write_all(b"a");
        std::thread::sleep(Duration::from_millis(300));
    }
    for (what, c) in [
        ("silent", &mut silent),
        ("preface only", &mut preface),
        ("slow head", &mut slow),
    ] {
        // Opened about 2.1 s ago: closed already, or within a few seconds at most.
        let closed = closed_within(c, Duration::from_secs(5));
        assert!(
            closed.is_some(),
            "{}: {what} connection still open",
            ex.name
        );
    }
    let out = read_to_close(&mut stalled);
    assert_eq!(
        statuses(&out),
        [408],
        "{}: stalled body answered {out:?}",
        ex.name
    );
}

/// `post_path`: where the example takes a POST with a body.
fn check_hyper_example(name: &'static str, mode: &str, post_path: &str) {
    let ex = Example::start(name, &["--mode", mode, "--header-timeout", "1"]);
    check_get(&ex);
    check_get_splits(&ex);
    check_bad_requests(&ex);
    check_flood(&ex);
    let (status, version, body) = h2c_get(ex.addr);
    assert_eq!(
        (status, version, &body[..]),
        (StatusCode::OK, Version::HTTP_2, &b"Hello, World!"[..]),
        "{name} {mode}: h2c"
    );
    check_header_timeout(&ex, post_path);
    check_get(&ex);
    ex.stop();
}

#[test]
fn hyper_in_both_modes() {
    for mode in ["reactor", "runtime"] {
        check_hyper_example("hyper", mode, "/");
    }
    // Chunked bodies are hyper's to decode: read and dropped, then answered.
    let ex = Example::start("hyper", &[]);
    let mut c = ex.connect();
    c.write_all(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .unwrap();
    assert_eq!(statuses(&read_hellos(&mut c, 1)), [200]);
    ex.stop();
}

#[cfg(feature = "axum")]
#[test]
fn axum_in_both_modes() {
    for mode in ["reactor", "runtime"] {
        check_hyper_example("axum", mode, "/upload");
    }
}
