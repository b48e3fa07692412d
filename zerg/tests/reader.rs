//! `ConnectionReader` (the C# zerg's PipeReader suite, ported): echo, many messages, concurrent
//! connections, large payloads, client disconnects, partial consumption across buffer boundaries,
//! the consumed/examined rules, and a property test reassembling random messages from random client
//! write splits. Every test runs in normal and incremental buffer mode and ends with every buffer
//! back in the ring.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use util::{Mode, TestServer, options, pattern, roundtrip};
use zerg_uring::{Connection, ConnectionReader, EngineOptions};

fn each_mode(test: impl Fn(Mode, bool)) {
    for mode in [Mode::Runtime, Mode::Reactor] {
        for incremental in [false, true] {
            test(mode, incremental);
        }
    }
}

/// Echo, zero-copy: writes every view straight from the receive buffers, consumes it all.
async fn reader_echo(conn: Connection) {
    let mut reader = ConnectionReader::new(conn);
    loop {
        let mut result = reader.read().await;
        if result.is_completed() {
            return;
        }
        let buffer = result.buffer();
        for segment in buffer.segments() {
            if result.connection().write_all(segment).await.is_err() {
                return;
            }
        }
        if result.connection().flush().await.is_err() {
            return;
        }
        let len = buffer.len();
        reader.advance(len, len);
    }
}

/// Frames: a 4-byte big-endian length, then that many bytes.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

/// Echoes complete frames only; an incomplete frame is left unconsumed (examined) until the rest
/// of it arrives. Parses in place, across buffer boundaries.
async fn frame_echo(conn: Connection) {
    let mut reader = ConnectionReader::new(conn);
    loop {
        let mut result = reader.read().await;
        if result.is_completed() {
            return;
        }
        let buffer = result.buffer();
        let mut consumed = 0;
        loop {
            let rest = buffer.slice(consumed, buffer.len() - consumed);
            if rest.len() < 4 {
                break;
            }
            let mut head = [0u8; 4];
            bytes::Buf::copy_to_slice(&mut rest.slice(0, 4), &mut head);
            let len = u32::from_be_bytes(head) as usize;
            if rest.len() < 4 + len {
                break;
            }
            for segment in rest.slice(0, 4 + len).segments() {
                if result.connection().write_all(segment).await.is_err() {
                    return;
                }
            }
            consumed += 4 + len;
        }
        if result.connection().flush().await.is_err() {
            return;
        }
        let examined = buffer.len();
        reader.advance(consumed, examined);
    }
}

#[test]
fn echo_single_message() {
    each_mode(|mode, inc| {
        let server = TestServer::start(mode, options(1, inc), reader_echo);
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
        let server = TestServer::start(mode, options(1, inc), reader_echo);
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

/// Sends `msg` from a second thread while reading the echo; returns what came back.
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
        let server = TestServer::start(mode, options(1, inc), reader_echo);
        let msg = pattern(7, 256 * 1024);
        assert!(
            echo_large(&server, &msg) == msg,
            "256 KiB payload corrupted"
        );
        // One frame of 128 KiB: 32+ receive buffers held unconsumed until the frame is complete.
        let server2 = TestServer::start(mode, options(1, inc), frame_echo);
        let msg = frame(&pattern(8, 128 * 1024));
        assert!(echo_large(&server2, &msg) == msg, "128 KiB frame corrupted");
        server.assert_quiescent();
        server2.assert_quiescent();
        server.stop();
        server2.stop();
    });
}

#[test]
fn client_disconnect_frees_everything() {
    each_mode(|mode, inc| {
        let server = TestServer::start(mode, options(1, inc), frame_echo);
        for i in 0..20 {
            let mut c = server.connect();
            // A frame announcing more than is sent: the reader holds an incomplete frame.
            let mut msg = frame(&pattern(i, 9000));
            msg.truncate(5000);
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

/// Many frames in one write, the stream cut at every offset modulo a prime: frames straddle
/// receive buffers and reads; each is echoed exactly once and only when complete.
#[test]
fn partial_consumption_across_buffers() {
    each_mode(|mode, inc| {
        let server = TestServer::start(mode, options(1, inc), frame_echo);
        let mut all = Vec::new();
        for i in 0..200u64 {
            all.extend_from_slice(&frame(&pattern(i, (i as usize * 97) % 3000)));
        }
        let mut c = server.connect();
        let mut w = c.try_clone().unwrap();
        let data = all.clone();
        let writer = std::thread::spawn(move || {
            for (k, chunk) in data.chunks(4093).enumerate() {
                w.write_all(chunk).unwrap();
                if k % 8 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        let mut out = vec![0; all.len()];
        c.read_exact(&mut out).unwrap();
        writer.join().unwrap();
        assert!(out == all, "frames reassembled wrongly");
        drop(c);
        server.assert_quiescent();
        server.stop();
    });
}

/// `examined` = end: the next read waits for new bytes instead of returning the same view (no
/// busy loop); `examined` < end: it returns at once.
#[test]
fn examined_to_end_waits_for_new_bytes() {
    each_mode(|mode, inc| {
        let reads = Arc::new(AtomicUsize::new(0));
        let r = reads.clone();
        let handler = move |conn: Connection| {
            let reads = r.clone();
            async move {
                let mut reader = ConnectionReader::new(conn);
                let mut once = true;
                loop {
                    let result = reader.read().await;
                    reads.fetch_add(1, Ordering::SeqCst);
                    if result.is_completed() {
                        return;
                    }
                    let buffer = result.buffer();
                    let len = buffer.len();
                    if buffer.position_of(b"\n").is_some() {
                        let mut result = result;
                        let _ = result.connection().write(b"line\n");
                        let _ = result.connection().flush().await;
                        reader.advance(len, len);
                    } else if len == 3 && once {
                        // Examined only part: the same view comes back at once.
                        once = false;
                        reader.advance(0, 1);
                    } else {
                        reader.advance(0, len);
                    }
                }
            }
        };
        let server = TestServer::start(mode, options(1, inc), handler);
        let mut c = server.connect();
        c.write_all(b"ab").unwrap();
        std::thread::sleep(Duration::from_millis(150));
        let after_first = reads.load(Ordering::SeqCst);
        assert!(
            after_first <= 2,
            "{after_first} reads for one partial message"
        );
        c.write_all(b"c").unwrap();
        std::thread::sleep(Duration::from_millis(150));
        let after_second = reads.load(Ordering::SeqCst);
        // "abc": read once, advanced with examined 1 of 3 → returned again at once, then waits.
        assert!(
            (after_first + 2..=after_first + 3).contains(&after_second),
            "{after_first} then {after_second} reads"
        );
        c.write_all(b"\n").unwrap();
        let mut line = [0u8; 5];
        c.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"line\n");
        drop(c);
        server.assert_quiescent();
        server.stop();
    });
}

/// Buffers wholly before `consumed` go back to the kernel at once, while the reader keeps the
/// rest.
#[test]
fn consumed_buffers_return_at_once() {
    each_mode(|mode, inc| {
        let stage = Arc::new(AtomicUsize::new(0));
        let s = stage.clone();
        let handler = move |conn: Connection| {
            let stage = s.clone();
            async move {
                let mut reader = ConnectionReader::new(conn);
                // Gather 40 KiB without consuming anything.
                loop {
                    let result = reader.read().await;
                    let len = result.buffer().len();
                    if result.is_completed() {
                        return;
                    }
                    if len >= 40 * 1024 {
                        break;
                    }
                    reader.advance(0, len);
                }
                stage.store(1, Ordering::SeqCst);
                // Consume all but the last 10 bytes.
                let len = reader.read().await.buffer().len();
                reader.advance(len - 10, len);
                stage.store(2, Ordering::SeqCst);
                let mut result = reader.read().await;
                let rest = result.buffer().to_vec();
                let _ = result.connection().write(&rest);
                let _ = result.connection().flush().await;
                let n = rest.len();
                reader.advance(n, n);
                let _ = reader.read().await;
            }
        };
        let mut opts = options(1, inc);
        opts.reactor_configs[0].max_buffers_per_connection = 128;
        let server = TestServer::start(mode, opts, handler);
        let mut c = server.connect();
        let msg = pattern(3, 40 * 1024);
        c.write_all(&msg).unwrap();
        wait_stage(&stage, 1);
        // The reactor publishes its counters once per loop iteration, possibly after the handler
        // reported its stage.
        server.wait_stats(Duration::from_secs(5), "40 KiB held in 10+ buffers", |s| {
            s.total().buffers_held >= 10
        });
        // The handler examined everything, so its next read waits for a new byte.
        c.write_all(b"!").unwrap();
        wait_stage(&stage, 2);
        server.wait_stats(Duration::from_secs(5), "consumed buffers returned", |s| {
            s.total().buffers_held <= 3
        });
        c.write_all(b"?").unwrap();
        let mut tail = [0u8; 11];
        c.read_exact(&mut tail).unwrap();
        assert_eq!(&tail[..9], &msg[msg.len() - 9..]);
        assert_eq!(&tail[9..], b"!?");
        drop(c);
        server.assert_quiescent();
        server.stop();
    });
}

fn wait_stage(stage: &AtomicUsize, want: usize) {
    for _ in 0..1000 {
        if stage.load(Ordering::SeqCst) >= want {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("handler never reached stage {want}");
}

/// `complete` hands every held buffer back and returns a connection that still writes.
#[test]
fn complete_returns_buffers_and_connection() {
    each_mode(|mode, inc| {
        let handler = |conn: Connection| async move {
            let mut reader = ConnectionReader::new(conn);
            let len = reader.read().await.buffer().len();
            reader.advance(0, len);
            let mut conn = reader.into_inner();
            let _ = conn.write(b"done");
            let _ = conn.flush().await;
            // Keep the connection until the peer closes.
            while !conn.read().await.is_closed() {}
        };
        let server = TestServer::start(mode, options(1, inc), handler);
        let mut c = server.connect();
        c.write_all(&pattern(1, 9000)).unwrap();
        let mut done = [0u8; 4];
        c.read_exact(&mut done).unwrap();
        assert_eq!(&done, b"done");
        server.wait_stats(Duration::from_secs(5), "buffers returned", |s| {
            s.total().buffers_held == 0
        });
        drop(c);
        server.assert_quiescent();
        server.stop();
    });
}

#[cfg(feature = "tokio")]
#[test]
fn async_buf_read_lines() {
    use tokio::io::AsyncBufReadExt;
    each_mode(|mode, inc| {
        let handler = |conn: Connection| async move {
            let mut reader = ConnectionReader::new(conn);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let conn = reader.get_mut();
                let _ = conn.write_all(line.to_uppercase().as_bytes()).await;
                let _ = conn.flush().await;
            }
        };
        let server = TestServer::start(mode, options(1, inc), handler);
        let mut c = server.connect();
        let text = "first line\nsecond, longer line\nthird\n";
        for piece in text.as_bytes().chunks(7) {
            c.write_all(piece).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut out = vec![0; text.len()];
        c.read_exact(&mut out).unwrap();
        assert_eq!(out, text.to_uppercase().as_bytes());
        drop(c);
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

/// Random messages (sizes 0..6000), sent as frames cut at random points with random pauses, come
/// back byte-exact, and every buffer is back in the ring afterwards.
#[test]
fn prop_random_messages_and_splits_reassemble() {
    let messages = prop::collection::vec(0usize..6000, 1..12);
    let cuts = prop::collection::vec((1usize..5000, any::<bool>()), 1..24);
    for incremental in [false, true] {
        let server = TestServer::start(Mode::Runtime, prop_options(incremental), frame_echo);
        let mut runner = TestRunner::new(Config {
            cases: 24,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&(messages.clone(), cuts.clone()), |(sizes, cuts)| {
                let mut stream = Vec::new();
                for (i, size) in sizes.iter().enumerate() {
                    stream.extend_from_slice(&frame(&pattern(i as u64 * 7 + *size as u64, *size)));
                }
                let out = send_in_pieces(&server, &stream, &cuts);
                prop_assert!(out == stream, "echo differs from what was sent");
                server.assert_quiescent();
                let held = server.engine().stats().total().buffers_held;
                prop_assert_eq!(held, 0);
                Ok::<(), TestCaseError>(())
            })
            .unwrap();
        server.stop();
    }
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

/// Waits for a line that never ends; reports how the reader ended and closes with a message.
async fn line_reader(conn: Connection, max_message: Option<usize>) {
    let mut reader = ConnectionReader::new(conn);
    if let Some(m) = max_message {
        reader = reader.with_max_message(m);
    }
    loop {
        let result = reader.read().await;
        if let Some(e) = result.error() {
            let line = format!("error: {e}\n");
            let mut conn = reader.into_inner();
            // Answer, send FIN, and drain what the peer still sends (a lingering close: closing
            // with unread bytes would reset the connection and could destroy the answer).
            if conn.write(line.as_bytes()).is_ok() && conn.shutdown().await.is_ok() {
                while !conn.read().await.is_closed() {}
            }
            return;
        }
        if result.is_completed() {
            return;
        }
        let len = result.buffer().len();
        // No newline expected: examine everything, consume nothing.
        if result.buffer().position_of(b"\n").is_some() {
            return;
        }
        reader.advance(0, len);
    }
}

/// Sends `total` bytes without a newline (stopping if the server closes) and returns what the
/// server answered.
fn flood_without_newline(server: &TestServer, total: usize) -> String {
    let mut c = server.connect();
    let chunk = vec![b'a'; 16 * 1024];
    let mut sent = 0;
    while sent < total {
        if c.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    let _ = c.shutdown(std::net::Shutdown::Write);
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out
}

#[test]
fn a_message_past_the_receive_bound_ends_with_message_too_large_not_a_stall() {
    each_mode(|mode, incremental| {
        let server = TestServer::start(mode, options(1, incremental), |c| line_reader(c, None));
        let answer = flood_without_newline(&server, 4 << 20);
        assert!(
            answer.starts_with("error: message too large")
                && answer.contains("max_buffers_per_connection"),
            "{mode:?} incremental {incremental}: {answer:?}"
        );
        server.assert_quiescent();
        server.stop();
    });
}

#[test]
fn a_message_past_the_readers_limit_ends_with_message_too_large() {
    each_mode(|mode, incremental| {
        let server = TestServer::start(mode, options(1, incremental), |c| {
            line_reader(c, Some(10_000))
        });
        let answer = flood_without_newline(&server, 64 * 1024);
        assert!(
            answer.starts_with("error: message too large")
                && answer.contains("with_max_message")
                && answer.contains("10000"),
            "{mode:?} incremental {incremental}: {answer:?}"
        );
        server.assert_quiescent();
        server.stop();
    });
}
