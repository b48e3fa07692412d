//! What the documentation promises about dropped futures ("Cancel safety" sections), and
//! `std::io::Write::flush` on a connection, which cannot send.

mod util;

use std::io::{ErrorKind, Read, Write};

use futures::FutureExt;
use util::{Mode, TestServer, assert_same, options, pattern};
use zerg_uring::{Connection, ConnectionReader};

const BIG: usize = 1 << 20;

/// A read dropped before data arrived took nothing: the next read gets every byte.
async fn dropped_read(mut conn: Connection) {
    assert!(
        conn.read().now_or_never().is_none(),
        "nothing was sent yet: the read must wait"
    );
    conn.write(b"ready").unwrap();
    conn.flush().await.unwrap();
    let mut got = Vec::new();
    while got.len() < 7 {
        let snap = conn.read().await;
        assert!(!snap.is_closed(), "closed after {got:?}");
        got.extend(snap.to_vec());
    }
    conn.write(&got).unwrap();
    conn.flush().await.unwrap();
}

/// The same through a `ConnectionReader`.
async fn dropped_reader_read(conn: Connection) {
    let mut reader = ConnectionReader::new(conn);
    assert!(reader.read().now_or_never().is_none());
    reader.get_mut().write(b"ready").unwrap();
    reader.get_mut().flush().await.unwrap();
    loop {
        let mut result = reader.read().await;
        assert!(!result.is_completed(), "closed early");
        let got = result.buffer().to_vec();
        if got.len() < 7 {
            continue; // examined everything: the next read waits for more
        }
        result.connection().write(&got).unwrap();
        result.connection().flush().await.unwrap();
        return;
    }
}

fn ready_then_echo(mode: Mode, handler: fn(Connection) -> futures::future::BoxFuture<'static, ()>) {
    let server = TestServer::start(mode, options(1, false), handler);
    let mut s = server.connect();
    let mut ready = [0u8; 5];
    s.read_exact(&mut ready).unwrap();
    assert_eq!(&ready, b"ready");
    s.write_all(b"payload").unwrap();
    let mut back = [0u8; 7];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"payload");
    drop(s);
    server.assert_quiescent();
    server.stop();
}

#[test]
fn a_dropped_read_loses_nothing() {
    for mode in [Mode::Runtime, Mode::Reactor] {
        ready_then_echo(mode, |c| dropped_read(c).boxed());
    }
}

#[test]
fn a_dropped_reader_read_loses_nothing() {
    for mode in [Mode::Runtime, Mode::Reactor] {
        ready_then_echo(mode, |c| dropped_reader_read(c).boxed());
    }
}

/// A flush dropped after its first poll still sends what it was handed.
async fn dropped_flush(mut conn: Connection) {
    let snap = conn.read().await;
    drop(snap);
    conn.write(&pattern(7, BIG)).unwrap();
    let polled = conn.flush().now_or_never();
    if polled.is_none() {
        assert_eq!(conn.staged(), 0, "the dropped flush handed its bytes over");
    }
    conn.write(b"END").unwrap();
    conn.flush().await.unwrap();
}

#[test]
fn a_dropped_flush_still_sends_its_bytes() {
    for mode in [Mode::Runtime, Mode::Reactor] {
        let server = TestServer::start(mode, options(1, false), |c| dropped_flush(c).boxed());
        let mut s = server.connect();
        s.write_all(b"go").unwrap();
        let mut got = vec![0u8; BIG + 3];
        s.read_exact(&mut got).unwrap();
        assert_same(&got[..BIG], &pattern(7, BIG), "the dropped flush's bytes");
        assert_eq!(&got[BIG..], b"END");
        drop(s);
        server.assert_quiescent();
        server.stop();
    }
}

/// `std::io::Write::flush` fails while bytes are staged (it cannot send) and loses nothing.
async fn std_flush(mut conn: Connection) {
    let snap = conn.read().await;
    drop(snap);
    std::io::Write::flush(&mut conn).expect("nothing staged: Ok");
    let n = 42;
    write!(conn, "std-{n}").unwrap();
    let err = std::io::Write::flush(&mut conn).expect_err("bytes are staged");
    assert_eq!(err.kind(), ErrorKind::WouldBlock);
    assert!(
        err.to_string().contains("Connection::flush().await"),
        "the error names the fix: {err}"
    );
    assert_eq!(conn.staged(), 6, "the failed flush kept the bytes");
    conn.flush().await.unwrap();
    std::io::Write::flush(&mut conn).expect("everything sent: Ok");
}

#[test]
fn std_io_flush_refuses_while_bytes_are_staged() {
    for mode in [Mode::Runtime, Mode::Reactor] {
        let server = TestServer::start(mode, options(1, false), |c| std_flush(c).boxed());
        let mut s = server.connect();
        s.write_all(b"go").unwrap();
        let mut got = [0u8; 6];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"std-42");
        drop(s);
        server.stop();
    }
}
