//! The seed's echo suite, on a real engine, in every combination of handler mode and buffer mode.

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
