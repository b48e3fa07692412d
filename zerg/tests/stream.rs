//! `ConnectionStream` (the C# zerg's Stream suite, ported) through `tokio::io` and `futures_io`:
//! echo, many messages, concurrent connections, large payloads, client disconnects, partial reads,
//! half close, dropping mid-operation, a property test with random sizes, splits and read buffer
//! sizes, and tokio-util's `Framed` + `LinesCodec` with lines split at random points. Every test
//! runs in normal and incremental buffer mode and ends with every buffer back in the ring.

mod util;

use std::future::Future;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::{Framed, LinesCodec};
use util::{Mode, TestServer, options, pattern, roundtrip};
use zerg_uring::{Connection, ConnectionStream, EngineOptions};

fn each_mode(test: impl Fn(Mode, bool)) {
    for mode in [Mode::Runtime, Mode::Reactor] {
        for incremental in [false, true] {
            test(mode, incremental);
        }
    }
}

/// Echo through `tokio::io`, reading into a buffer of `N` bytes.
async fn tokio_echo<const N: usize>(conn: Connection) {
    let mut stream = ConnectionStream::new(conn);
    let mut buf = vec![0u8; N];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stream.write_all(&buf[..n]).await.is_err() || stream.flush().await.is_err() {
            return;
        }
    }
}

/// Echo through `futures_io`.
async fn futures_echo(conn: Connection) {
    use futures::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = ConnectionStream::new(conn);
    let mut buf = vec![0u8; 1000];
    loop {
        let n = match AsyncReadExt::read(&mut stream, &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if AsyncWriteExt::write_all(&mut stream, &buf[..n])
            .await
            .is_err()
            || AsyncWriteExt::flush(&mut stream).await.is_err()
        {
            return;
        }
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

/// Frame echo with exact reads: a 4-byte length, then the payload; partial reads of the held
/// buffers keep the rest for the next read.
async fn frame_echo(conn: Connection) {
    let mut stream = ConnectionStream::new(conn);
    loop {
        let len = match stream.read_u32().await {
            Ok(n) => n as usize,
            Err(_) => return,
        };
        let mut payload = vec![0u8; len];
        if stream.read_exact(&mut payload).await.is_err() {
            return;
        }
        if stream.write_u32(len as u32).await.is_err()
            || stream.write_all(&payload).await.is_err()
            || stream.flush().await.is_err()
        {
            return;
        }
    }
}

#[test]
fn echo_single_message() {
    each_mode(|mode, inc| {
        for server in [
            TestServer::start(mode, options(1, inc), tokio_echo::<4096>),
            TestServer::start(mode, options(1, inc), futures_echo),
        ] {
            let mut c = server.connect();
            assert_eq!(roundtrip(&mut c, b"hello zerg"), b"hello zerg");
            drop(c);
            server.assert_quiescent();
            server.stop();
        }
    });
}

#[test]
fn many_messages_on_one_connection() {
    each_mode(|mode, inc| {
        let server = TestServer::start(mode, options(1, inc), tokio_echo::<4096>);
        let mut c = server.connect();
        for i in 0..500u64 {
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
        let server = TestServer::start(mode, options(2, inc), frame_echo);
        let addr = server.addr;
        let clients: Vec<_> = (0..32u64)
            .map(|id| {
                std::thread::spawn(move || {
                    let mut c = TcpStream::connect(addr).unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    for j in 0..30u64 {
                        let msg = frame(&pattern(id * 1000 + j, 64 + (j as usize * 131) % 5000));
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

fn echo_large(server: &TestServer, msg: &[u8]) -> Vec<u8> {
    let mut c = server.connect();
    let mut w = c.try_clone().unwrap();
    let m2 = msg.to_vec();
    let writer = std::thread::spawn(move || w.write_all(&m2).unwrap());
    let mut out = vec![0; msg.len()];
    c.read_exact(&mut out).unwrap();
    writer.join().unwrap();
    out
}

#[test]
fn large_payload() {
    each_mode(|mode, inc| {
        // A read buffer smaller than a receive buffer: every receive buffer is read in pieces.
        let server = TestServer::start(mode, options(1, inc), tokio_echo::<1000>);
        let msg = pattern(7, 256 * 1024);
        assert!(
            echo_large(&server, &msg) == msg,
            "256 KiB payload corrupted"
        );
        server.assert_quiescent();
        server.stop();
        // One 128 KiB frame read with read_exact, echoed with a staging buffer of 16 KiB: the
        // write side flushes whenever it fills (back-pressure).
        let mut opts = options(1, inc);
        opts.reactor_configs[0].max_write_buffer = 16 * 1024;
        let server = TestServer::start(mode, opts, frame_echo);
        let msg = frame(&pattern(8, 128 * 1024));
        assert!(echo_large(&server, &msg) == msg, "128 KiB frame corrupted");
        server.assert_quiescent();
        server.stop();
    });
}

#[test]
fn client_disconnect_frees_everything() {
    each_mode(|mode, inc| {
        let server = TestServer::start(mode, options(1, inc), frame_echo);
        for i in 0..20 {
            let mut c = server.connect();
            let mut msg = frame(&pattern(i, 9000));
            msg.truncate(5000); // the handler waits in read_exact
            c.write_all(&msg).unwrap();
            drop(c);
        }
        server.assert_quiescent();
        let mut c = server.connect();
        let msg = frame(b"still alive");
        assert_eq!(roundtrip(&mut c, &msg), msg);
        drop(c);
        server.stop();
    });
}

/// Reads of 1..=13 bytes at a time: each takes a part of a receive buffer, the rest is kept
/// (uncopied) for the next read, and buffers go back as they are read to the end.
#[test]
fn partial_reads_keep_the_rest() {
    each_mode(|mode, inc| {
        let handler = |conn: Connection| async move {
            let mut stream = ConnectionStream::new(conn);
            let mut got = Vec::new();
            let mut k = 0;
            while got.len() < 20_000 {
                let mut buf = vec![0u8; 1 + k % 13];
                k += 1;
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ = stream.write_all(&got).await;
            let _ = stream.flush().await;
            let _ = stream.read(&mut [0u8; 1]).await;
        };
        let server = TestServer::start(mode, options(1, inc), handler);
        let msg = pattern(11, 20_000);
        assert!(echo_large(&server, &msg) == msg, "partial reads lost bytes");
        server.assert_quiescent();
        server.stop();
    });
}

/// `poll_shutdown` sends everything staged, then FIN; the read side keeps working.
#[test]
fn shutdown_half_closes() {
    each_mode(|mode, inc| {
        let after = Arc::new(AtomicUsize::new(0));
        let a = after.clone();
        let handler = move |conn: Connection| {
            let after = a.clone();
            async move {
                let mut stream = ConnectionStream::new(conn);
                let mut buf = [0u8; 4];
                if stream.read_exact(&mut buf).await.is_err() {
                    return;
                }
                let _ = stream.write_all(b"pong, then bye").await;
                if stream.shutdown().await.is_err() {
                    return;
                }
                assert!(
                    stream.write_all(b"x").await.is_err(),
                    "write after shutdown"
                );
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
                after.store(rest.len(), Ordering::SeqCst);
            }
        };
        let server = TestServer::start(mode, options(1, inc), handler);
        let mut c = server.connect();
        c.write_all(b"ping").unwrap();
        let mut reply = Vec::new();
        c.read_to_end(&mut reply).unwrap(); // ends at the FIN
        assert_eq!(reply, b"pong, then bye");
        c.write_all(&[7u8; 5000]).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        server.wait_stats(Duration::from_secs(5), "connection closed", |s| {
            s.total().connections == 0
        });
        assert_eq!(after.load(Ordering::SeqCst), 5000);
        server.assert_quiescent();
        server.stop();
    });
}

/// Polls `fut` once, then drops it.
async fn poll_once<F: Future>(fut: F) {
    let mut fut = pin!(fut);
    std::future::poll_fn(|cx| {
        let _ = fut.as_mut().poll(cx);
        Poll::Ready(())
    })
    .await;
}

/// Dropping the stream with unread bytes held, or with a flush pending against a peer that does
/// not read, leaks nothing and closes the connection.
#[test]
fn drop_mid_operation_leaks_nothing() {
    each_mode(|mode, inc| {
        let handler = |conn: Connection| async move {
            let mut stream = ConnectionStream::new(conn);
            let mut first = [0u8; 1];
            if stream.read_exact(&mut first).await.is_err() {
                return;
            }
            if first[0] == b'r' {
                // Mid-read: the client's other bytes are held unread.
                let _ = stream.fill_buf().await;
                poll_once(stream.read_exact(&mut vec![0u8; 1 << 20])).await;
            } else {
                // Mid-write: 8 MiB against a peer that does not read; the write waits on a
                // flush (back-pressure), and is dropped there.
                let big = vec![b'x'; 8 << 20];
                for _ in 0..3 {
                    poll_once(stream.write_all(&big)).await;
                }
            }
            drop(stream);
        };
        let mut opts = options(1, inc);
        opts.reactor_configs[0].max_write_buffer = 256 * 1024;
        let server = TestServer::start(mode, opts, handler);
        let mut reading = server.connect();
        let mut msg = pattern(5, 30_000);
        msg[0] = b'r';
        reading.write_all(&msg).unwrap();
        let mut writing = server.connect();
        writing.write_all(b"w").unwrap();
        for c in [&mut reading, &mut writing] {
            // The server closes: a read ends (EOF or reset) instead of timing out.
            let mut sink = Vec::new();
            let _ = c.read_to_end(&mut sink);
        }
        drop((reading, writing));
        server.assert_quiescent();
        server.stop();
    });
}

// ---- property test ------------------------------------------------------------------------

fn prop_options(incremental: bool) -> EngineOptions {
    let mut o = options(1, incremental);
    o.reactor_configs[0].buffer_ring_entries = 1024;
    o.reactor_configs[0].max_buffers_per_connection = 512;
    o
}

/// Writes `data` cut at the (cycled) `cuts`, pausing where asked, while reading back as many
/// bytes.
fn send_in_pieces(server: &TestServer, data: &[u8], cuts: &[(usize, bool)]) -> Vec<u8> {
    let mut c = server.connect();
    let mut w = c.try_clone().unwrap();
    let data2 = data.to_vec();
    let cuts = cuts.to_vec();
    let writer = std::thread::spawn(move || {
        let mut at = 0;
        for (len, pause) in cuts.iter().cycle() {
            if at == data2.len() {
                break;
            }
            let end = (at + len).min(data2.len());
            w.write_all(&data2[at..end]).unwrap();
            at = end;
            if *pause {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    let mut out = vec![0; data.len()];
    c.read_exact(&mut out).unwrap();
    writer.join().unwrap();
    out
}

/// Random frames, cut at random points, read with `read_exact` through the stream, come back
/// byte-exact; every buffer is back in the ring afterwards.
#[test]
fn prop_random_frames_and_splits_roundtrip() {
    let sizes = prop::collection::vec(0usize..6000, 1..12);
    let cuts = prop::collection::vec((1usize..5000, any::<bool>()), 1..24);
    for incremental in [false, true] {
        let server = TestServer::start(Mode::Runtime, prop_options(incremental), frame_echo);
        let mut runner = TestRunner::new(Config {
            cases: 24,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&(sizes.clone(), cuts.clone()), |(sizes, cuts)| {
                let mut data = Vec::new();
                for (i, size) in sizes.iter().enumerate() {
                    data.extend_from_slice(&frame(&pattern(i as u64 * 13 + *size as u64, *size)));
                }
                let out = send_in_pieces(&server, &data, &cuts);
                prop_assert!(out == data, "echo differs from what was sent");
                server.assert_quiescent();
                prop_assert_eq!(server.engine().stats().total().buffers_held, 0);
                Ok::<(), TestCaseError>(())
            })
            .unwrap();
        server.stop();
    }
}

// ---- tokio-util codec ---------------------------------------------------------------------

/// Line echo with `Framed<ConnectionStream, LinesCodec>`.
async fn lines_echo(conn: Connection) {
    let mut framed = Framed::new(ConnectionStream::new(conn), LinesCodec::new());
    while let Some(Ok(line)) = framed.next().await {
        if framed.send(line).await.is_err() {
            return;
        }
    }
}

/// Lines of random length and content (no newline), sent cut at random points, come back
/// line by line, exact.
#[test]
fn prop_framed_lines_roundtrip() {
    let lines = prop::collection::vec("[ -~]{0,300}", 1..40);
    let cuts = prop::collection::vec((1usize..700, any::<bool>()), 1..16);
    for (mode, incremental) in [(Mode::Runtime, false), (Mode::Reactor, true)] {
        let server = TestServer::start(mode, prop_options(incremental), lines_echo);
        let mut runner = TestRunner::new(Config {
            cases: 16,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&(lines.clone(), cuts.clone()), |(lines, cuts)| {
                let mut data = String::new();
                for (i, line) in lines.iter().enumerate() {
                    data.push_str(line);
                    // Both line endings; LinesCodec strips the '\r'.
                    data.push_str(if i % 3 == 0 { "\r\n" } else { "\n" });
                }
                let mut expected = lines.join("\n");
                expected.push('\n');
                let mut c = server.connect();
                let mut w = c.try_clone().unwrap();
                let bytes = data.into_bytes();
                let writer = std::thread::spawn(move || {
                    let mut at = 0;
                    for (len, pause) in cuts.iter().cycle() {
                        if at == bytes.len() {
                            break;
                        }
                        let end = (at + len).min(bytes.len());
                        w.write_all(&bytes[at..end]).unwrap();
                        at = end;
                        if *pause {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                });
                let mut out = vec![0; expected.len()];
                c.read_exact(&mut out).unwrap();
                writer.join().unwrap();
                prop_assert_eq!(String::from_utf8(out).unwrap(), expected);
                drop(c);
                server.assert_quiescent();
                Ok::<(), TestCaseError>(())
            })
            .unwrap();
        server.stop();
    }
}
