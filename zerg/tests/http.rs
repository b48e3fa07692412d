//! The C# zerg's HTTP tests, ported, on the raw API: a plaintext responder that finds request ends
//! (`\r\n\r\n`, possibly straddling receive buffers and reads) and answers each one, written
//! through `span_mut` + `advance`. Pipelining (100 requests in one write → 100 responses, also
//! with the requests cut at random points) and keep-alive (1000 sequential requests), in both
//! handler modes and both buffer modes.

mod util;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use util::{Mode, Rng, TestServer, assert_same, options};
use zerg_uring::Connection;

const REQUEST: &[u8] = b"GET /plaintext HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n";
const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nHello, World!";

/// Counts `\r\n\r\n` in a byte stream fed in pieces.
#[derive(Default)]
struct RequestEnds {
    matched: usize,
}

impl RequestEnds {
    fn feed(&mut self, bytes: &[u8]) -> usize {
        const END: &[u8] = b"\r\n\r\n";
        let mut n = 0;
        for &b in bytes {
            if b == END[self.matched] {
                self.matched += 1;
                if self.matched == END.len() {
                    n += 1;
                    self.matched = 0;
                }
            } else {
                self.matched = usize::from(b == b'\r');
            }
        }
        n
    }
}

async fn plaintext(mut conn: Connection) {
    let mut ends = RequestEnds::default();
    loop {
        let snap = conn.read().await;
        if snap.is_closed() {
            return;
        }
        let mut requests = 0;
        for b in snap.buffers() {
            requests += ends.feed(b);
        }
        drop(snap);
        for _ in 0..requests {
            let span = conn.span_mut(RESPONSE.len());
            span[..RESPONSE.len()].copy_from_slice(RESPONSE);
            if conn.commit(RESPONSE.len()).is_err() {
                return;
            }
        }
        if conn.flush().await.is_err() {
            return;
        }
    }
}

fn each_mode(test: impl Fn(Mode, bool)) {
    for mode in [Mode::Runtime, Mode::Reactor] {
        for incremental in [false, true] {
            test(mode, incremental);
        }
    }
}

#[test]
fn request_end_counter_handles_splits() {
    let mut e = RequestEnds::default();
    assert_eq!(e.feed(b"GET / HTTP/1.1\r\n\r"), 0);
    assert_eq!(e.feed(b"\n"), 1);
    assert_eq!(e.feed(b"\r\r\n\r\n\r\n\r\n"), 2);
}

#[test]
fn pipelined_requests_get_all_responses() {
    each_mode(|mode, inc| {
        let server = TestServer::start(mode, options(1, inc), plaintext);
        let want = RESPONSE.repeat(100);
        // 100 requests in one write.
        let mut c = server.connect();
        c.write_all(&REQUEST.repeat(100)).unwrap();
        let mut got = vec![0u8; want.len()];
        c.read_exact(&mut got).expect("100 responses");
        assert_same(&got, &want, "pipelined responses");
        // The same, cut at random points (request ends straddle reads and buffers).
        let mut rng = Rng::new(inc as u64 + 3);
        let all = REQUEST.repeat(100);
        let mut off = 0;
        while off < all.len() {
            let n = (1 + rng.below(97) as usize).min(all.len() - off);
            c.write_all(&all[off..off + n]).unwrap();
            off += n;
            if rng.below(8) == 0 {
                std::thread::sleep(Duration::from_micros(300));
            }
        }
        c.read_exact(&mut got).expect("100 more responses");
        assert_same(&got, &want, "pipelined responses, split requests");
        // Nothing extra.
        c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut extra = [0u8; 1];
        assert!(
            c.read(&mut extra).is_err(),
            "unexpected bytes after the responses"
        );
        drop(c);
        server.assert_quiescent();
        server.stop();
    });
}

#[test]
fn keep_alive_1000_sequential_requests() {
    each_mode(|mode, inc| {
        let server = TestServer::start(mode, options(1, inc), plaintext);
        let mut c = server.connect();
        let mut got = vec![0u8; RESPONSE.len()];
        let t0 = Instant::now();
        for i in 0..1000 {
            c.write_all(REQUEST).unwrap();
            c.read_exact(&mut got).unwrap();
            assert_same(&got, RESPONSE, &format!("response {i}"));
        }
        println!(
            "keep-alive ({mode:?}, incremental {inc}): 1000 requests in {:?} (debug build)",
            t0.elapsed()
        );
        drop(c);
        server.assert_quiescent();
        server.stop();
    });
}
