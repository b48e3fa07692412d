//! The HTTP request framing of the plaintext examples (`examples/common/http.rs`).

use proptest::prelude::*;

use crate::http::{self, Batch, Framer, Head, MAX_BODY, MAX_HEAD, Reject, Then};

pub(crate) const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

fn head(s: &[u8]) -> Result<Head, Reject> {
    http::parse_head(s)
}

#[test]
fn parse_head_accepts_and_refuses() {
    let ok = |body, close| Ok(Head { body, close });
    assert_eq!(head(GET), ok(0, false));
    assert_eq!(head(b"GET / HTTP/1.0\r\n\r\n"), ok(0, true));
    assert_eq!(
        head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"),
        ok(0, false)
    );
    assert_eq!(
        head(b"GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n"),
        ok(0, true)
    );
    assert_eq!(
        head(b"POST / HTTP/1.1\r\ncontent-length: 12\r\nContent-Length: 12\r\n\r\n"),
        ok(12, false)
    );
    let limit = format!("POST / HTTP/1.1\r\nContent-Length: {MAX_BODY}\r\n\r\n");
    assert_eq!(head(limit.as_bytes()), ok(MAX_BODY, false));

    let bad = Err(Reject::BadRequest);
    assert_eq!(head(b"GET / HTTP/1.1\r\nBad\x01Name: x\r\n\r\n"), bad);
    assert_eq!(head(b"\x16\x03\x01\x02\x00\r\n\r\n"), bad);
    assert_eq!(head(b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n"), bad);
    assert_eq!(head(b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\n"), bad);
    assert_eq!(
        head(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
        bad
    );
    // Ends on bare LFs before the "\r\n\r\n"; only empty lines.
    assert_eq!(head(b"GET / HTTP/1.1\n\nX: y\r\n\r\n"), bad);
    assert_eq!(head(b"\r\n\r\n"), bad);

    let over = format!(
        "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        MAX_BODY + 1
    );
    assert_eq!(head(over.as_bytes()), Err(Reject::ContentTooLarge));
    assert_eq!(
        head(b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n"),
        Err(Reject::ContentTooLarge)
    );
    assert_eq!(
        head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
        Err(Reject::NotImplemented)
    );
    let mut many = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..=http::MAX_HEADERS {
        many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(head(&many), Err(Reject::HeaderTooLarge));
}

#[test]
fn prebuilt_responses_are_well_formed() {
    let mut all = vec![http::RESPONSE, http::RESPONSE_CLOSE];
    for r in [
        Reject::BadRequest,
        Reject::ContentTooLarge,
        Reject::HeaderTooLarge,
        Reject::NotImplemented,
    ] {
        assert!(
            r.response()
                .starts_with(format!("HTTP/1.1 {} ", r.status()).as_bytes())
        );
        all.push(r.response());
    }
    for bytes in all {
        let mut fields = [httparse::EMPTY_HEADER; 8];
        let mut res = httparse::Response::new(&mut fields);
        let httparse::Status::Complete(n) = res.parse(bytes).unwrap() else {
            panic!("incomplete response {bytes:?}");
        };
        let length = res
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| {
                std::str::from_utf8(h.value)
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            });
        assert_eq!(length, Some(bytes.len() - n), "Content-Length of {bytes:?}");
    }
}

fn frame(pieces: &[&[u8]]) -> Batch {
    let mut framer = Framer::default();
    let mut batch = Batch::default();
    for p in pieces {
        framer.feed(p, &mut batch);
    }
    batch
}

/// Three requests, one with a body holding "\r\n\r\n".
pub(crate) const PIPELINE: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n01\r\n\r\n6789GET /y HTTP/1.1\r\n\r\n";

#[test]
fn framer_counts_pipelined_requests_split_anywhere() {
    let want = Batch {
        requests: 3,
        then: Then::Continue,
    };
    assert_eq!(frame(&[PIPELINE]), want);
    for a in 0..=PIPELINE.len() {
        for b in a..=PIPELINE.len() {
            let got = frame(&[&PIPELINE[..a], &PIPELINE[a..b], &PIPELINE[b..]]);
            assert_eq!(got, want, "split at {a}, {b}");
        }
    }
    // A close ends the batch: later requests are not answered.
    let mut closing = GET.to_vec();
    closing.extend_from_slice(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    closing.extend_from_slice(GET);
    assert_eq!(
        frame(&[&closing]),
        Batch {
            requests: 2,
            then: Then::Close
        }
    );
}

/// A head of exactly `MAX_HEAD` bytes is served; one byte more is refused.
#[test]
fn framer_head_limit_is_exact() {
    let sized = |len: usize| {
        let mut h = b"GET / HTTP/1.1\r\nX: ".to_vec();
        h.resize(len - 4, b'a');
        h.extend_from_slice(b"\r\n\r\n");
        h
    };
    for len in [MAX_HEAD, MAX_HEAD + 1] {
        let h = sized(len);
        let want = if len == MAX_HEAD {
            Batch {
                requests: 1,
                then: Then::Continue,
            }
        } else {
            Batch {
                requests: 0,
                then: Then::Reject(Reject::HeaderTooLarge),
            }
        };
        assert_eq!(frame(&[&h]), want, "{len} bytes in one piece");
        for cut in [1, 100, MAX_HEAD - 3, MAX_HEAD - 1, MAX_HEAD] {
            assert_eq!(
                frame(&[&h[..cut], &h[cut..]]),
                want,
                "{len} bytes cut at {cut}"
            );
        }
    }
}

fn request() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(GET.to_vec()),
        Just(b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n".to_vec()),
        (0usize..300).prop_map(|n| {
            let mut r = format!("POST / HTTP/1.1\r\nContent-Length: {n}\r\n\r\n").into_bytes();
            r.extend(std::iter::repeat_n(b'\r', n / 2));
            r.extend(std::iter::repeat_n(b'\n', n - n / 2));
            r
        }),
        (1usize..MAX_HEAD - 40).prop_map(|n| {
            let mut r = b"GET / HTTP/1.1\r\nX: ".to_vec();
            r.resize(r.len() + n, b'v');
            r.extend_from_slice(b"\r\n\r\n");
            r
        }),
    ]
}

/// A final item that is refused (or, last, a close).
fn ending() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        Just(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec()),
        Just(b"GET / HTTP/1.1\r\nBad\x01: x\r\n\r\n".to_vec()),
        Just(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec()),
        Just([b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; MAX_HEAD + 50]].concat()),
        Just(
            [
                b"GET / HTTP/1.1\r\nX\x01: ".as_slice(),
                &[b'a'; MAX_HEAD + 50]
            ]
            .concat()
        ),
        Just(b"POST / HTTP/1.1\r\nContent-Length: 2000000\r\n\r\nabc".to_vec()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// However the stream is cut into pieces, the framer finds the same requests and the same
    /// ending as when it sees the stream whole.
    #[test]
    fn framer_result_does_not_depend_on_the_pieces(
        requests in proptest::collection::vec(request(), 0..6),
        end in ending(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let stream: Vec<u8> = requests.iter().flatten().chain(&end).copied().collect();
        let whole = frame(&[&stream]);
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        at.sort_unstable();
        let mut pieces = Vec::new();
        let mut last = 0;
        for a in at.into_iter().chain([stream.len()]) {
            pieces.push(&stream[last..a]);
            last = a;
        }
        prop_assert_eq!(frame(&pieces), whole);
        let complete = requests.len() + usize::from(end.starts_with(b"GET / HTTP/1.1\r\nConnection"));
        prop_assert_eq!(whole.requests, complete);
    }
}

// ---------------------------------------------------------------------------------------------
// The one-pass path for common heads (`parse_simple`) against httparse.

/// Every head `parse_simple` takes at the start of `bytes` ends at the first `"\r\n\r\n"` and is
/// one httparse takes with the same outcome.
fn check_simple_agrees(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Some((head, len)) = http::parse_simple(bytes) {
        let end = http::head_end(bytes, 0);
        prop_assert_eq!(end, Some(len), "{:?}", String::from_utf8_lossy(bytes));
        prop_assert_eq!(
            http::parse_head_httparse(&bytes[..len]),
            Ok(head),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    Ok(())
}

#[test]
fn parse_simple_takes_common_heads_and_agrees_with_httparse() {
    let taken: &[&[u8]] = &[
        GET,
        b"GET /plaintext HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"POST /a?b=c HTTP/1.1\r\nContent-Length: 5\r\ncontent-length:5 \r\n\r\nhello",
        b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\nX:\t y \r\n\r\n",
        b"DELETE * HTTP/1.1\r\nConnection: foo, close\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    ];
    for bytes in taken {
        assert!(
            http::parse_simple(bytes).is_some(),
            "{:?} not taken",
            String::from_utf8_lossy(bytes)
        );
        check_simple_agrees(bytes).unwrap();
    }
    // Left to httparse: other bytes and shapes, refusals, incomplete heads.
    let left: &[&[u8]] = &[
        b"get / HTTP/1.1\r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n",
        b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b"GET / HTTP/1.1\n\n",
        b"\r\nGET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"GET / HTTP/1.1\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: \x7f\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n",
    ];
    for bytes in left {
        assert!(
            http::parse_simple(bytes).is_none(),
            "{:?} taken",
            String::from_utf8_lossy(bytes)
        );
    }
    let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
    long.resize(MAX_HEAD - 3, b'a');
    long.extend_from_slice(b"\r\n\r\n");
    assert!(http::parse_simple(&long).is_none(), "a head over MAX_HEAD");
    long.truncate(MAX_HEAD - 5);
    long.extend_from_slice(b"\r\n\r\n");
    assert!(http::parse_simple(&long).is_some(), "a head of MAX_HEAD");
}

/// A byte from the places where the one-pass path and httparse could disagree.
fn edge_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => prop::sample::select(b"aZ0/?:;,=-_.~\"(){} \t\r\n".to_vec()),
        1 => any::<u8>(),
    ]
}

fn head_part() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(vec![
            b"GET".to_vec(),
            b"POST".to_vec(),
            b"get".to_vec(),
            b" ".to_vec(),
            b"/".to_vec(),
            b" HTTP/1.1\r\n".to_vec(),
            b" HTTP/1.0\r\n".to_vec(),
            b"\r\n".to_vec(),
            b"Content-Length: ".to_vec(),
            b"Transfer-Encoding: chunked".to_vec(),
            b"Connection: ".to_vec(),
            b"close".to_vec(),
            b"keep-alive".to_vec(),
            b"Host: x".to_vec(),
            b"12".to_vec(),
            b": ".to_vec(),
        ]),
        proptest::collection::vec(edge_byte(), 1..4),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, failure_persistence: None, ..ProptestConfig::default() })]

    /// Heads near the common shape, with stray bytes anywhere.
    #[test]
    fn parse_simple_agrees_with_httparse(
        parts in proptest::collection::vec(head_part(), 0..24),
    ) {
        let mut bytes = b"GET / HTTP/1.1\r\n".to_vec();
        for p in &parts {
            bytes.extend_from_slice(p);
        }
        bytes.extend_from_slice(b"\r\n\r\n");
        check_simple_agrees(&bytes)?;
        // The same parts as the whole head, request line included.
        let whole: Vec<u8> = parts.concat();
        check_simple_agrees(&whole)?;
    }
}
