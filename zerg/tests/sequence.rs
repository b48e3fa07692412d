//! `Sequence::position_of` against a naive search over the concatenated bytes, on real
//! connections whose receive buffers are 1 to 16 bytes long: needles straddle two, three or a
//! dozen segments (and several reads). Every sub-view (`slice`) of each haystack is searched too.

mod util;

use std::io::{Read, Write};
use std::net::Shutdown;

use bytes::Buf;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use util::{Mode, TestServer, options};
use zerg_uring::{Connection, ConnectionReader, EngineOptions};

/// Most haystack bytes a case sends (the needle and its length byte come on top).
const MAX_HAY: usize = 160;

/// Answers `[m][needle: m bytes][haystack]` (sent, then the write side shut) with one
/// little-endian `u32` per start offset `k` in `0..=haystack.len()`: the position of `needle` in
/// the sub-view `haystack[k..]`, or `u32::MAX`.
async fn searcher(conn: Connection) {
    let mut reader = ConnectionReader::new(conn);
    // Gather everything: examined to the end, nothing consumed, until the peer shut its side.
    loop {
        let result = reader.read().await;
        let len = result.buffer().len();
        if result.is_completed() {
            break;
        }
        reader.advance(0, len);
    }
    let mut result = reader.read().await;
    let mut view = result.buffer();
    if view.is_empty() {
        return;
    }
    let m = usize::from(view.get_u8());
    let mut needle = vec![0; m];
    view.copy_to_slice(&mut needle);
    let mut answer = Vec::with_capacity(4 * (view.len() + 1));
    for k in 0..=view.len() {
        let sub = view.slice(k, view.len() - k);
        let at = sub.position_of(&needle).map_or(u32::MAX, |i| i as u32);
        answer.extend_from_slice(&at.to_le_bytes());
    }
    let conn = result.connection();
    if conn.write_all(&answer).await.is_ok() {
        let _ = conn.shutdown().await;
    }
}

fn naive(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn tiny_buffers(size: u32, incremental: bool) -> EngineOptions {
    let mut o = options(1, incremental);
    let rc = &mut o.reactor_configs[0];
    rc.recv_buffer_size = size;
    rc.buffer_ring_entries = 1024;
    // A whole case stays in the reader's view: let one connection hold every buffer it needs.
    rc.max_buffers_per_connection = 1024;
    o
}

fn ask(server: &TestServer, hay: &[u8], needle: &[u8]) -> Vec<Option<usize>> {
    let mut c = server.connect();
    let mut msg = vec![needle.len() as u8];
    msg.extend_from_slice(needle);
    msg.extend_from_slice(hay);
    c.write_all(&msg).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).unwrap();
    out.chunks(4)
        .map(|b| {
            let v = u32::from_le_bytes(b.try_into().unwrap());
            (v != u32::MAX).then_some(v as usize)
        })
        .collect()
}

fn check(server: &TestServer, hay: &[u8], needle: &[u8]) -> Result<(), TestCaseError> {
    let got = ask(server, hay, needle);
    prop_assert_eq!(got.len(), hay.len() + 1, "one answer per start offset");
    for (k, got) in got.into_iter().enumerate() {
        prop_assert_eq!(
            got,
            naive(&hay[k..], needle),
            "needle {:?} in haystack[{}..] of {:?}",
            needle,
            k,
            hay
        );
    }
    Ok(())
}

/// Haystacks over a two-letter alphabet (so needles recur and partly match often), needles
/// either taken from the haystack or made up.
fn case() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let hay = proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b')], 0..MAX_HAY);
    let made_up = proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b')], 0..24);
    (
        hay,
        made_up,
        any::<prop::sample::Index>(),
        0usize..24,
        any::<bool>(),
    )
        .prop_map(|(hay, made_up, at, len, from_hay)| {
            let needle = if from_hay && !hay.is_empty() {
                let start = at.index(hay.len());
                hay[start..(start + len).min(hay.len())].to_vec()
            } else {
                made_up
            };
            (hay, needle)
        })
}

#[test]
fn position_of_matches_naive_search_across_segments() {
    let servers: Vec<TestServer> = [(1, false), (2, false), (3, true), (5, false), (16, true)]
        .into_iter()
        .map(|(size, inc)| TestServer::start(Mode::Reactor, tiny_buffers(size, inc), searcher))
        .collect();
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&(0..servers.len(), case()), |(server, (hay, needle))| {
            check(&servers[server], &hay, &needle)
        })
        .unwrap();
    for server in servers {
        server.assert_quiescent();
        server.stop();
    }
}

/// Fixed cases: a needle straddling many one-byte segments, at the very end, absent by one byte,
/// and the HTTP end-of-head marker after a false start split across buffers.
#[test]
fn position_of_fixed_cases() {
    let server = TestServer::start(Mode::Runtime, tiny_buffers(1, false), searcher);
    let long_needle: Vec<u8> = (0..40u8).collect();
    let mut hay = vec![b'x'; 30];
    hay.extend_from_slice(&long_needle);
    check(&server, &hay, &long_needle).unwrap();
    check(&server, &hay[..hay.len() - 1], &long_needle).unwrap();
    check(
        &server,
        b"GET / HTTP/1.1\r\n\r\r\nHost: a\r\n\r\n",
        b"\r\n\r\n",
    )
    .unwrap();
    check(&server, b"\r\n\r", b"\r\n\r\n").unwrap();
    check(&server, b"", b"").unwrap();
    drop(server);

    let server = TestServer::start(Mode::Runtime, tiny_buffers(7, true), searcher);
    check(&server, &hay, &long_needle).unwrap();
    check(&server, b"abababababababababc", b"ababc").unwrap();
    server.assert_quiescent();
    server.stop();
}
