//! The `resp` example: its decoder (`examples/resp_proto`) fed the same stream cut in every way,
//! at and past every limit, with a multi-MiB value; then the binary in both modes with real
//! sockets: pipelined commands split at every byte, errors, a 5 MiB value byte-exact, a
//! protocol error answered then closed, the shared keyspace of runtime mode, the flags' limits.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use crate::harness::{Example, read_to_close};
use crate::resp_proto::{Decoder, Limits, ProtocolError};

type Decoded = Result<Vec<Vec<u8>>, ProtocolError>;

/// Decodes a stream fed in `pieces`: every command (its arguments), up to and including the
/// first error. Checks that the carried bytes never exceed the command bound.
fn decode(pieces: &[&[u8]], limits: Limits) -> Vec<Decoded> {
    let mut decoder = Decoder::new(limits);
    let mut out = Vec::new();
    for piece in pieces {
        let mut rest = *piece;
        while let Some(cmd) = decoder.next(&mut rest) {
            match cmd {
                Ok(cmd) => out.push(Ok((0..cmd.len()).map(|i| cmd.arg(i).to_vec()).collect())),
                Err(e) => {
                    out.push(Err(e));
                    return out;
                }
            }
        }
        assert!(
            decoder.carried() <= limits.max_command(),
            "carried {} bytes",
            decoder.carried()
        );
    }
    out
}

fn args(words: &[&[u8]]) -> Decoded {
    Ok(words.iter().map(|w| w.to_vec()).collect())
}

/// Arrays and inline commands, empty ones (skipped by the server, decoded here), a value holding
/// CRLF, an empty argument.
const PIPELINE: &[u8] = b"*1\r\n$4\r\nPING\r\nPING\r\n\r\n*0\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\n0123\r\n6789\r\nECHO  a\tb \r\n*2\r\n$3\r\nGET\r\n$0\r\n\r\n*-1\r\n";

fn pipeline_decoded() -> Vec<Decoded> {
    vec![
        args(&[b"PING"]),
        args(&[b"PING"]),
        args(&[]),
        args(&[]),
        args(&[b"SET", b"k", b"0123\r\n6789"]),
        args(&[b"ECHO", b"a", b"b"]),
        args(&[b"GET", b""]),
        args(&[]),
    ]
}

#[test]
fn decoder_finds_the_same_commands_however_the_stream_is_cut() {
    let want = pipeline_decoded();
    let limits = Limits::default();
    assert_eq!(decode(&[PIPELINE], limits), want);
    for a in 0..=PIPELINE.len() {
        for b in a..=PIPELINE.len() {
            let got = decode(&[&PIPELINE[..a], &PIPELINE[a..b], &PIPELINE[b..]], limits);
            assert_eq!(got, want, "cut at {a}, {b}");
        }
    }
    // One byte at a time.
    let bytes: Vec<&[u8]> = PIPELINE.chunks(1).collect();
    assert_eq!(decode(&bytes, limits), want);
}

#[test]
fn decoder_refuses_malformed_input_however_it_is_cut() {
    let limits = Limits {
        max_bulk: 16,
        max_args: 4,
        max_inline: 32,
    };
    let ok = b"*1\r\n$4\r\nPING\r\n".to_vec();
    let cases: &[(&[u8], ProtocolError)] = &[
        (b"*x\r\n", ProtocolError::MultibulkLength),
        (b"*5\r\n", ProtocolError::MultibulkLength),
        (b"*1\r\n$17\r\n", ProtocolError::BulkLength),
        (b"*1\r\n$-1\r\n", ProtocolError::BulkLength),
        (
            b"*1\r\n$99999999999999999999999\r\n",
            ProtocolError::BulkLength,
        ),
        (b"*1\r\n:3\r\n", ProtocolError::ExpectedBulk(b':')),
        (b"*1\r\n$4\r\nPINGxx", ProtocolError::MissingCrlf),
        (b"*1\n", ProtocolError::MultibulkLength),
        (b"*1\r\n$4\nPING\r\n", ProtocolError::BulkLength),
        (
            b"*100000000000000000000000000000000",
            ProtocolError::MultibulkLength,
        ),
        (
            b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            ProtocolError::InlineTooLong,
        ),
        (b"a b c d e\r\n", ProtocolError::MultibulkLength),
    ];
    for (bad, error) in cases {
        let stream = [&ok[..], bad].concat();
        let want = vec![args(&[b"PING"]), Err(error.clone())];
        for cut in 0..=stream.len() {
            let got = decode(&[&stream[..cut], &stream[cut..]], limits);
            assert_eq!(got, want, "{:?} cut at {cut}", String::from_utf8_lossy(bad));
        }
    }
}

#[test]
fn decoder_limits_are_exact() {
    let limits = Limits {
        max_bulk: 16,
        max_args: 4,
        max_inline: 32,
    };
    let bulk = |n: usize| format!("*1\r\n${n}\r\n{}\r\n", "v".repeat(n)).into_bytes();
    assert_eq!(decode(&[&bulk(16)], limits), vec![args(&[&[b'v'; 16]])]);
    assert_eq!(
        decode(&[&bulk(17)], limits),
        vec![Err(ProtocolError::BulkLength)]
    );
    let array = |n: usize| {
        let mut s = format!("*{n}\r\n").into_bytes();
        for _ in 0..n {
            s.extend_from_slice(b"$1\r\na\r\n");
        }
        s
    };
    assert_eq!(
        decode(&[&array(4)], limits),
        vec![args(&[b"a".as_slice(); 4])]
    );
    assert_eq!(
        decode(&[&array(5)], limits),
        vec![Err(ProtocolError::MultibulkLength)]
    );
    let inline = |n: usize| [vec![b'x'; n], b"\n".to_vec()].concat();
    assert_eq!(decode(&[&inline(32)], limits), vec![args(&[&[b'x'; 32]])]);
    assert_eq!(
        decode(&[&inline(33)], limits),
        vec![Err(ProtocolError::InlineTooLong)]
    );
}

/// `SET big <value>` then `GET big`, as a client sends them.
fn set_get_big(value: &[u8]) -> Vec<u8> {
    let mut s = format!("*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${}\r\n", value.len()).into_bytes();
    s.extend_from_slice(value);
    s.extend_from_slice(b"\r\n*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n");
    s
}

fn big_value(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn decoder_takes_a_multi_mib_value_in_receive_sized_pieces() {
    let value = big_value(5 << 20);
    let stream = set_get_big(&value);
    let want = vec![args(&[b"SET", b"big", &value]), args(&[b"GET", b"big"])];
    for piece in [4096, 16 * 1024, 65_536 + 7] {
        let pieces: Vec<&[u8]> = stream.chunks(piece).collect();
        assert!(
            decode(&pieces, Limits::default()) == want,
            "{piece}-byte pieces"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random cuts of the pipeline followed by a 100 KiB value: the same commands.
    #[test]
    fn decoder_result_does_not_depend_on_the_pieces(
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..16),
    ) {
        let value = big_value(100 * 1024);
        let stream = [PIPELINE, &set_get_big(&value)].concat();
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        at.sort_unstable();
        let mut pieces = Vec::new();
        let mut last = 0;
        for a in at.into_iter().chain([stream.len()]) {
            pieces.push(&stream[last..a]);
            last = a;
        }
        let mut want = pipeline_decoded();
        want.push(args(&[b"SET", b"big", &value]));
        want.push(args(&[b"GET", b"big"]));
        prop_assert!(decode(&pieces, Limits::default()) == want);
    }
}

// ---------------------------------------------------------------------------------------------
// The binary.

/// Reads exactly `want.len()` bytes (or fails after 20 s) and compares them with `want`.
fn expect(c: &mut TcpStream, want: &[u8], what: &str) {
    let mut got = vec![0u8; want.len()];
    let mut filled = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while filled < got.len() {
        assert!(
            Instant::now() < deadline,
            "{what}: timed out after {filled} bytes"
        );
        match c.read(&mut got[filled..]) {
            Ok(0) => panic!(
                "{what}: closed after {:?}",
                String::from_utf8_lossy(&got[..filled])
            ),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("{what}: {e}"),
        }
    }
    assert!(
        got == want,
        "{what}: got {:?}",
        String::from_utf8_lossy(&got[..got.len().min(200)])
    );
}

/// Commands, pipelined, and the replies they get.
const COMMANDS: &[u8] = b"PING\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*3\r\n$6\r\nEXISTS\r\n$1\r\nk\r\n$1\r\nx\r\n*2\r\n$4\r\nECHO\r\n$4\r\na\r\nb\r\n*3\r\n$3\r\nDEL\r\n$1\r\nk\r\n$1\r\nk\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
const REPLIES: &[u8] = b"+PONG\r\n+OK\r\n$5\r\nhello\r\n:1\r\n$4\r\na\r\nb\r\n:1\r\n$-1\r\n";

fn check_resp_example(flags: &[&str]) {
    let ex = Example::start("resp", flags);
    let what = format!("resp {flags:?}");
    // Pipelined, cut in two at every byte.
    for cut in 0..=COMMANDS.len() {
        let mut c = ex.connect();
        c.write_all(&COMMANDS[..cut]).unwrap();
        c.write_all(&COMMANDS[cut..]).unwrap();
        expect(&mut c, REPLIES, &format!("{what}, cut at {cut}"));
    }
    // Errors that keep the connection, then a 5 MiB value set and read back in one pipeline.
    let mut c = ex.connect();
    c.write_all(
        b"FLUSHALL now\r\n*1\r\n$3\r\nGET\r\n*4\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\nb\r\n$2\r\nEX\r\n",
    )
    .unwrap();
    expect(
        &mut c,
        b"-ERR unknown command 'FLUSHALL', with args beginning with: 'now'\r\n\
          -ERR wrong number of arguments for 'get' command\r\n-ERR syntax error\r\n",
        &what,
    );
    let value = big_value(5 << 20);
    let mut w = c.try_clone().unwrap();
    let request = set_get_big(&value);
    let writer = std::thread::spawn(move || w.write_all(&request).unwrap());
    let mut want = b"+OK\r\n".to_vec();
    want.extend_from_slice(format!("${}\r\n", value.len()).as_bytes());
    want.extend_from_slice(&value);
    want.extend_from_slice(b"\r\n");
    expect(&mut c, &want, &format!("{what}: 5 MiB value"));
    writer.join().unwrap();
    // QUIT: +OK, then the server closes.
    c.write_all(b"QUIT\r\n").unwrap();
    assert_eq!(read_to_close(&mut c), b"+OK\r\n", "{what}: QUIT");
    // A protocol error: answered, then the connection closed.
    let mut c = ex.connect();
    c.write_all(b"*1\r\n$99999999999\r\n").unwrap();
    assert_eq!(
        read_to_close(&mut c),
        b"-ERR Protocol error: invalid bulk length\r\n",
        "{what}: protocol error"
    );
    // Still serving.
    let mut c = ex.connect();
    c.write_all(b"ECHO still\r\n").unwrap();
    expect(&mut c, b"$5\r\nstill\r\n", &what);
    let log = ex.stop();
    assert!(
        log.iter()
            .any(|l| l.contains("closing the connection: invalid bulk length")),
        "{what}: no protocol error logged in {log:#?}"
    );
}

#[test]
fn resp_in_reactor_mode() {
    check_resp_example(&[]);
}

/// Runtime mode: one keyspace for every connection, whatever reactor it is on.
#[test]
fn resp_in_runtime_mode_shares_one_keyspace() {
    let flags = ["--mode", "runtime", "--reactors", "2"];
    check_resp_example(&flags);
    let ex = Example::start("resp", &flags);
    let mut clients: Vec<TcpStream> = (0..8).map(|_| ex.connect()).collect();
    clients[0].write_all(b"SET shared yes\r\n").unwrap();
    expect(&mut clients[0], b"+OK\r\n", "SET");
    for c in &mut clients {
        c.write_all(b"GET shared\r\n").unwrap();
        expect(c, b"$3\r\nyes\r\n", "GET from another connection");
    }
    ex.stop();
}

/// A value over `--max-bulk` is refused before it is read; past `--max-memory` a SET is answered
/// -OOM and changes nothing.
#[test]
fn resp_limits_from_flags() {
    let ex = Example::start("resp", &["--max-bulk", "1000", "--max-memory", "4000"]);
    let mut c = ex.connect();
    c.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1001\r\n")
        .unwrap();
    assert_eq!(
        read_to_close(&mut c),
        b"-ERR Protocol error: invalid bulk length\r\n"
    );
    let mut c = ex.connect();
    let set = |key: &str| {
        let mut s = format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n$1000\r\n", key.len()).into_bytes();
        s.extend_from_slice(&[b'v'; 1000]);
        s.extend_from_slice(b"\r\n");
        s
    };
    // Three entries of about 1 KiB fit in 4,000 bytes; a fourth does not; replacing one does.
    for key in ["a", "b", "c"] {
        c.write_all(&set(key)).unwrap();
        expect(&mut c, b"+OK\r\n", key);
    }
    c.write_all(&set("d")).unwrap();
    expect(
        &mut c,
        b"-OOM command not allowed when used memory > 'maxmemory'.\r\n",
        "d",
    );
    c.write_all(&set("a")).unwrap();
    expect(&mut c, b"+OK\r\n", "a again");
    c.write_all(b"DEL a b\r\nEXISTS a b c d\r\n").unwrap();
    expect(&mut c, b":2\r\n:1\r\n", "DEL, EXISTS");
    ex.stop();
}
