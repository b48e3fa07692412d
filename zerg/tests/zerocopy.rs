//! Zero-copy sends (`ReactorConfig::send_zerocopy_threshold`): large responses and in-place
//! echoes arrive intact, every buffer comes back once the kernel's notifications arrived (also
//! when the peer resets mid-transfer), and loopback reports that the kernel copied anyway.

mod util;

use std::io::{Read, Write};
use std::time::Duration;

use util::{Mode, TestServer, options};
use zerg_uring::{Connection, EngineOptions};

/// 4 MiB responses.
const BIG: usize = 4 << 20;

fn opts(threshold: usize) -> EngineOptions {
    let mut o = options(1, false);
    o.reactor_configs[0].send_zerocopy_threshold = threshold;
    o
}

/// Answers every byte received with a patterned response of `BIG` bytes (its seed is the byte).
async fn big_responses(mut conn: Connection) {
    loop {
        let snap = conn.read().await;
        if snap.is_closed() {
            return;
        }
        let seeds = snap.to_vec();
        drop(snap);
        for seed in seeds {
            if conn
                .write_all(&util::pattern(u64::from(seed), BIG))
                .await
                .is_err()
            {
                return;
            }
        }
        if conn.flush().await.is_err() {
            return;
        }
    }
}

/// Echo from the receive buffers, sent in place (`sendmsg`, zero-copy above the threshold).
async fn echo_in_place(mut conn: Connection) {
    loop {
        let snap = conn.read().await;
        if snap.is_closed() {
            return;
        }
        if conn.write_snapshot(snap).is_err() || conn.flush().await.is_err() {
            return;
        }
    }
}

fn big_responses_arrive_intact(mode: Mode) {
    let server = TestServer::start(mode, opts(64 << 10), big_responses);
    let mut c = server.connect();
    let mut got = vec![0u8; BIG];
    for seed in [1u8, 2, 3] {
        c.write_all(&[seed]).unwrap();
        c.read_exact(&mut got).unwrap();
        util::assert_same(
            &got,
            &util::pattern(u64::from(seed), BIG),
            "zero-copy response",
        );
    }
    drop(c);
    server.assert_quiescent();
    let t = server.engine().stats().total();
    println!(
        "{mode:?}: {} zero-copy sends, {} reported copied by the kernel",
        t.zc_sends, t.zc_copied
    );
    assert!(t.zc_sends >= 3, "{t:?}");
    // Over loopback the receiving socket cannot keep the sender's pages: the kernel copies and
    // says so in the notification.
    assert!(t.zc_copied >= 1, "{t:?}");
    server.stop();
}

#[test]
fn big_responses_arrive_intact_reactor() {
    big_responses_arrive_intact(Mode::Reactor);
}

#[test]
fn big_responses_arrive_intact_runtime() {
    big_responses_arrive_intact(Mode::Runtime);
}

/// Every send zero-copy, received pieces sent in place (`SENDMSG_ZC`): the echo is exact and the
/// pieces go back to the ring only after the notifications.
#[test]
fn in_place_echo_with_every_send_zero_copy() {
    let server = TestServer::start(Mode::Reactor, opts(1), echo_in_place);
    let clients: Vec<_> = (0..4u64)
        .map(|i| {
            let mut c = server.connect();
            std::thread::spawn(move || {
                let mut rng = util::Rng::new(i);
                for round in 0..50 {
                    let len = 1 + rng.below(100_000) as usize;
                    let msg = util::tagged(i * 100 + round, len);
                    let w = c.try_clone().unwrap();
                    let sender = std::thread::spawn(move || {
                        let mut w = w;
                        w.write_all(&msg).unwrap();
                        msg
                    });
                    let mut got = vec![0u8; len];
                    c.read_exact(&mut got).unwrap();
                    let msg = sender.join().unwrap();
                    util::assert_same(&got, &msg, "in-place zero-copy echo");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    server.assert_quiescent();
    let t = server.engine().stats().total();
    assert!(t.zc_sends > 0 && t.zc_copied > 0, "{t:?}");
    server.stop();
}

/// A peer that resets in the middle of zero-copy transfers: the flush fails, the connection is
/// freed (its buffer kept until the kernel's notifications arrived), every receive buffer comes
/// back and the engine serves on.
#[test]
fn reset_mid_transfer_returns_everything() {
    for handler in [0, 1] {
        let server = if handler == 0 {
            TestServer::start(Mode::Reactor, opts(4096), big_responses)
        } else {
            TestServer::start(Mode::Reactor, opts(1), echo_in_place)
        };
        for _ in 0..8 {
            let mut c = util::connect_small_rcvbuf(server.addr, 4096);
            if handler == 0 {
                c.write_all(&[9]).unwrap();
            } else {
                // More than the socket buffers hold: the echo stalls with sends in flight.
                let _ = c.set_write_timeout(Some(Duration::from_millis(200)));
                let _ = c.write_all(&vec![7u8; 4 << 20]);
            }
            let mut some = [0u8; 1000];
            let _ = c.read(&mut some);
            util::reset(c);
        }
        server.assert_quiescent();
        let mut c = server.connect();
        c.write_all(b"\x05").unwrap();
        if handler == 0 {
            let mut got = vec![0u8; BIG];
            c.read_exact(&mut got).unwrap();
            util::assert_same(&got, &util::pattern(5, BIG), "after the resets");
        } else {
            let mut got = [0u8; 1];
            c.read_exact(&mut got).unwrap();
            assert_eq!(got, [5]);
        }
        drop(c);
        server.assert_quiescent();
        server.stop();
    }
}

/// Below the threshold nothing is zero-copy.
#[test]
fn small_sends_stay_plain() {
    let server = TestServer::start(Mode::Runtime, opts(64 << 10), util::echo);
    let mut c = server.connect();
    for i in 0..100u64 {
        let msg = util::tagged(i, 1000);
        assert_eq!(util::roundtrip(&mut c, &msg), msg);
    }
    drop(c);
    server.assert_quiescent();
    assert_eq!(server.engine().stats().total().zc_sends, 0);
    server.stop();
}

/// A handler gives up on a flush to a peer that stopped reading and drops its connection while
/// zero-copy bytes are queued in the socket: the connection is freed at once, but the received
/// pieces it was sending stay out of the ring until the kernel lets go of them — here when the
/// peer resets — and then come back.
#[test]
fn dropped_mid_flush_keeps_its_pieces_until_the_kernel_lets_go() {
    let server = TestServer::start(Mode::Reactor, opts(1), |mut conn: Connection| async move {
        loop {
            let snap = conn.read().await;
            if snap.is_closed() || conn.write_snapshot(snap).is_err() {
                return;
            }
            let flushed = zerg_uring::time::timeout(Duration::from_millis(300), conn.flush()).await;
            if !matches!(flushed, Ok(Ok(()))) {
                return;
            }
        }
    });
    let mut c = util::connect_small_rcvbuf(server.addr, 4096);
    // Less than the connection may hold, so the server reads it all (its socket's receive queue
    // is empty: closing it does not reset the connection), more than the client's receive
    // buffer: the echo stalls with bytes queued in the server's socket.
    c.write_all(&vec![3u8; 160 << 10]).unwrap();
    server.wait_stats(Duration::from_secs(10), "the stuck connection freed", |s| {
        s.total().connections_total == 1 && s.total().connections == 0
    });
    let t = server.engine().stats().total();
    assert!(
        t.buffers_free < t.buffers_total,
        "pieces the kernel may still read are not back in the ring: {t:?}"
    );
    let mut some = [0u8; 100];
    let _ = c.read(&mut some);
    util::reset(c);
    server.assert_quiescent();
    server.stop();
}
