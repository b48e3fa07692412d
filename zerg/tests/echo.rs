//! The C# zerg's echo suite, ported, on a real engine, in every combination of handler mode and
//! buffer mode.

mod util;

use std::io::{Read, Write};
use std::time::Duration;

use util::{Mode, TestServer, echo, options, pattern, roundtrip};

fn each_mode(test: impl Fn(Mode, bool)) {
    for mode in [Mode::Runtime, Mode::Reactor] {
        for incremental in [false, true] {
            test(mode, incremental);
        }
    }
}

#[test]
fn echo_single_message() {
    each_mode(|mode, inc| {
        let server = TestServer::start(mode, options(1, inc), echo);
        let mut c = server.connect();
        assert_eq!(roundtrip(&mut c, b"hello zerg"), b"hello zerg");
        drop(c);
        server.assert_quiescent();
        server.stop();
    });
}

#[test]
fn many_messages_on_one_connection() {
    each_mode(|mode, inc| {
        let server = TestServer::start(mode, options(1, inc), echo);
        let mut c = server.connect();
        for i in 0..1000u64 {
            let msg = pattern(i, 1 + (i as usize * 37) % 300);
            assert_eq!(roundtrip(&mut c, &msg), msg, "message {i}");
        }
        drop(c);
        server.assert_quiescent();
        server.stop();
    });
}

#[test]
fn concurrent_connections() {
    each_mode(|mode, inc| {
        let server = TestServer::start(mode, options(2, inc), echo);
        let addr = server.addr;
        let clients: Vec<_> = (0..32u64)
            .map(|id| {
                std::thread::spawn(move || {
                    let mut c = std::net::TcpStream::connect(addr).unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    for j in 0..50u64 {
                        let msg = pattern(id * 1000 + j, 64 + (j as usize % 200));
                        assert_eq!(roundtrip(&mut c, &msg), msg);
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        server.assert_quiescent();
        server.stop();
    });
}

#[test]
fn large_payload_64k() {
    each_mode(|mode, inc| {
        let server = TestServer::start(mode, options(1, inc), echo);
        let mut c = server.connect();
        let msg = pattern(7, 64 * 1024);
        let mut w = c.try_clone().unwrap();
        let m2 = msg.clone();
        let writer = std::thread::spawn(move || w.write_all(&m2).unwrap());
        let mut out = vec![0; msg.len()];
        c.read_exact(&mut out).unwrap();
        writer.join().unwrap();
        assert!(out == msg, "64 KiB payload corrupted");
        drop(c);
        server.assert_quiescent();
        server.stop();
    });
}

#[test]
fn client_disconnect_frees_everything() {
    each_mode(|mode, inc| {
        let server = TestServer::start(mode, options(1, inc), echo);
        for i in 0..20 {
            let mut c = server.connect();
            c.write_all(&pattern(i, 1000)).unwrap();
            drop(c);
        }
        server.assert_quiescent();
        let mut c = server.connect();
        assert_eq!(roundtrip(&mut c, b"still alive"), b"still alive");
        drop(c);
        server.stop();
    });
}

/// Echo without copying: each snapshot's receive buffers are sent as they are
/// (`write_snapshot`), between bytes staged with `write`.
async fn zero_copy_echo(mut conn: zerg_uring::Connection) {
    loop {
        let snap = conn.read().await;
        if snap.is_closed() {
            return;
        }
        if conn.write_snapshot(snap).is_err() {
            return;
        }
        if conn.flush().await.is_err() {
            return;
        }
    }
}

/// Framed echo: "<" + the bytes (in place) + ">" per read, to check ordering of staged bytes
/// and in-place pieces.
async fn framed_zero_copy_echo(mut conn: zerg_uring::Connection) {
    loop {
        let snap = conn.read().await;
        if snap.is_closed() {
            return;
        }
        let n = snap.len();
        conn.write(format!("<{n}:").as_bytes()).unwrap();
        conn.write_snapshot(snap).unwrap();
        conn.write(b">").unwrap();
        if conn.flush().await.is_err() {
            return;
        }
    }
}

#[test]
fn zero_copy_echo_is_byte_exact() {
    each_mode(|mode, inc| {
        let server = TestServer::start(mode, options(2, inc), zero_copy_echo);
        let addr = server.addr;
        let clients: Vec<_> = (0..8u64)
            .map(|id| {
                std::thread::spawn(move || {
                    let mut c = std::net::TcpStream::connect(addr).unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    // Large enough to need partial sends and many buffers per snapshot.
                    let msg = pattern(id, 512 * 1024);
                    let mut w = c.try_clone().unwrap();
                    let m2 = msg.clone();
                    let writer = std::thread::spawn(move || w.write_all(&m2).unwrap());
                    let mut out = vec![0; msg.len()];
                    c.read_exact(&mut out).unwrap();
                    writer.join().unwrap();
                    assert!(out == msg, "client {id}: zero-copy echo corrupted");
                    for j in 0..50u64 {
                        let m = pattern(id * 100 + j, 1 + j as usize * 31);
                        assert_eq!(roundtrip(&mut c, &m), m);
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        server.assert_quiescent();
        server.stop();
    });
}

#[test]
fn zero_copy_pieces_keep_order_with_staged_bytes() {
    each_mode(|mode, inc| {
        let server = TestServer::start(mode, options(1, inc), framed_zero_copy_echo);
        let mut c = server.connect();
        for i in 0..200u64 {
            let msg = pattern(i, 1 + (i as usize * 53) % 2000);
            c.write_all(&msg).unwrap();
            // Read frames until the whole message came back (a message may arrive in parts).
            let mut got = Vec::new();
            while got.len() < msg.len() {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                loop {
                    c.read_exact(&mut b).unwrap();
                    if b[0] == b':' {
                        break;
                    }
                    head.push(b[0]);
                }
                assert_eq!(head[0], b'<');
                let n: usize = std::str::from_utf8(&head[1..]).unwrap().parse().unwrap();
                let mut body = vec![0; n + 1];
                c.read_exact(&mut body).unwrap();
                assert_eq!(body[n], b'>');
                got.extend_from_slice(&body[..n]);
            }
            assert!(got == msg, "message {i} reordered or corrupted");
        }
        drop(c);
        server.assert_quiescent();
        server.stop();
    });
}

/// Pieces staged for sending but never flushed, or flushed to a peer that went away, still go
/// back to the ring.
#[test]
fn unsent_pieces_return_to_the_ring() {
    for mode in [Mode::Runtime, Mode::Reactor] {
        let server = TestServer::start(
            mode,
            options(1, false),
            |mut conn: zerg_uring::Connection| async move {
                let snap = conn.read().await;
                if snap.is_closed() {
                    return;
                }
                // Staged, never flushed: dropped with the connection.
                conn.write_snapshot(snap).unwrap();
                let snap = conn.read().await;
                if !snap.is_closed() {
                    conn.write_snapshot(snap).unwrap();
                }
            },
        );
        for i in 0..20 {
            let mut c = server.connect();
            c.write_all(&pattern(i, 9000)).unwrap();
            std::thread::sleep(Duration::from_millis(2));
            c.write_all(&pattern(i, 9000)).unwrap();
            drop(c);
        }
        server.assert_quiescent();
        server.stop();
    }
}
