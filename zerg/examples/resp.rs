//! A small Redis-protocol (RESP2) server: PING, ECHO, SET, GET, DEL, EXISTS and QUIT, pipelined,
//! with values of several MiB, for `redis-cli` and `redis-benchmark`.
//!
//! ```text
//! cargo run --release --example resp                # listens on 0.0.0.0:8080
//! redis-cli -p 8080 SET greeting hello
//! redis-cli -p 8080 GET greeting
//! head -c 5000000 /dev/urandom > /tmp/v; redis-cli -p 8080 -x SET big < /tmp/v
//! redis-cli -p 8080 --no-raw GET big | head -c 40
//! redis-benchmark -p 8080 -P 16 -t set,get,ping -d 4096 -q
//! cargo run --release --example resp -- --mode runtime --reactors 2   # one shared keyspace
//! ```
//!
//! Requests are arrays of bulk strings or inline commands (`PING\r\n`, words separated by
//! spaces, no quoting); every complete command of a read is answered and the replies go out in
//! one send. Commands are decoded by `resp_proto` in place in the receive buffers; one that
//! straddles buffers or reads is gathered aside, and a large value is copied once, not rescanned.
//! Anything else is answered `-ERR unknown command '...'`, a wrong number of arguments
//! `-ERR wrong number of arguments`; `CONFIG GET` answers an empty list (nothing is
//! configurable; `redis-benchmark` asks at start-up).
//!
//! # Keyspace: one per reactor
//!
//! - `--mode reactor` (the default): thread-per-core. Each reactor owns its own keyspace
//!   (`Engine::serve_with_state`: a `HashMap` in a `RefCell`, no lock, no atomics), so **keys are
//!   per reactor**: with `--reactors N`, a client sees only the keys set through connections of
//!   its own reactor. Run with `--reactors 1` (the default) for one consistent keyspace, or use
//!   runtime mode. Keys are not sharded across reactors: a command for another reactor's shard
//!   would cost a cross-thread message and a wake-up there and back, and keeping pipelined
//!   replies in order across shards, more than the whole command costs locally.
//! - `--mode runtime`: handlers on tokio sharing one keyspace behind a `Mutex`, consistent with
//!   any number of reactors.
//!
//! # Limits
//!
//! Bulk strings of at most `--max-bulk` bytes (default 16 MiB), at most 1,024 arguments per
//! command, inline commands of at most 64 KiB: past these, or on malformed input, the reply is
//! `-ERR Protocol error: ...` and the connection closes. The keyspace holds at most
//! `--max-memory` bytes of keys and values (default 1 GiB, split over the reactors in reactor
//! mode); a SET past it is answered `-OOM ...` and changes nothing. A command must be answered
//! within `--command-timeout` (default 60 s) of its first byte — a slow client uploading a large
//! value included — and an idle connection closes after `--idle-timeout` (75 s).
//!
//! Flags (`--help`): --max-bulk BYTES, --max-memory BYTES, --command-timeout SECS, and the common
//! ones: --port, --reactors, --recv-buffer-size, --buffer-ring-entries, --incremental,
//! --mode reactor|runtime, --accept per-reactor|dedicated, --workers, --sqpoll,
//! --max-connections, --write-timeout (default 30 s), --read-timeout (off), --idle-timeout
//! (75 s); 0 turns a timeout off. SIGINT/SIGTERM stop it.

mod common;
mod resp_proto;

use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{Args, Kind, Mode};
use resp_proto::{Command, Decoder, Limits, ProtocolError, printable};
use zerg_uring::{Connection, Engine};

/// Default `--max-memory`: 1 GiB.
const MAX_MEMORY: usize = 1 << 30;
/// What an entry costs beyond its key and value bytes, for the memory bound.
const ENTRY_OVERHEAD: usize = 64;

/// Keys and their values, with the bytes they use.
#[derive(Debug)]
struct Keyspace {
    map: HashMap<Vec<u8>, Bytes>,
    used: usize,
    limit: usize,
}

/// A SET that would take the keyspace past its memory limit.
struct OutOfMemory;

impl Keyspace {
    fn new(limit: usize) -> Keyspace {
        Keyspace {
            map: HashMap::new(),
            used: 0,
            limit,
        }
    }

    fn cost(key: &[u8], value: &[u8]) -> usize {
        key.len() + value.len() + ENTRY_OVERHEAD
    }

    fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.map.get(key).cloned()
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), OutOfMemory> {
        let old = self.map.get(key).map_or(0, |v| Self::cost(key, v));
        let used = self.used - old + Self::cost(key, value);
        if used > self.limit {
            return Err(OutOfMemory);
        }
        self.used = used;
        let value = Bytes::copy_from_slice(value);
        match self.map.get_mut(key) {
            Some(v) => *v = value,
            None => {
                self.map.insert(key.to_vec(), value);
            }
        }
        Ok(())
    }

    fn del(&mut self, key: &[u8]) -> bool {
        match self.map.remove(key) {
            Some(v) => {
                self.used -= Self::cost(key, &v);
                true
            }
            None => false,
        }
    }

    fn exists(&self, key: &[u8]) -> bool {
        self.map.contains_key(key)
    }
}

/// Where a handler finds the keyspace: its reactor's (`RefCell`) or the shared one (`Mutex`).
trait Store {
    fn with<R>(&self, f: impl FnOnce(&mut Keyspace) -> R) -> R;
}

impl Store for RefCell<Keyspace> {
    fn with<R>(&self, f: impl FnOnce(&mut Keyspace) -> R) -> R {
        f(&mut self.borrow_mut())
    }
}

impl Store for Mutex<Keyspace> {
    fn with<R>(&self, f: impl FnOnce(&mut Keyspace) -> R) -> R {
        f(&mut self.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The answer to one command.
enum Reply<'a> {
    /// A complete reply line.
    Static(&'static [u8]),
    Integer(i64),
    /// A bulk string from the keyspace (shared, not copied).
    Value(Bytes),
    /// A bulk string from the command itself (ECHO, PING with a message).
    Echo(&'a [u8]),
    /// An error line, without the `-` and the CRLF.
    Error(String),
    /// The reply, then close (QUIT).
    Quit,
}

const OK: &[u8] = b"+OK\r\n";
const PONG: &[u8] = b"+PONG\r\n";
const NIL: &[u8] = b"$-1\r\n";
const EMPTY_LIST: &[u8] = b"*0\r\n";
const OOM: &[u8] = b"-OOM command not allowed when used memory > 'maxmemory'.\r\n";

fn wrong_arity(name: &[u8]) -> Reply<'static> {
    Reply::Error(format!(
        "ERR wrong number of arguments for '{}' command",
        printable(name).to_ascii_lowercase()
    ))
}

fn unknown(cmd: &Command<'_>) -> Reply<'static> {
    let mut msg = format!(
        "ERR unknown command '{}', with args beginning with:",
        printable(cmd.arg(0))
    );
    for arg in cmd.args().take(3) {
        msg.push_str(&format!(" '{}'", printable(arg)));
    }
    Reply::Error(msg)
}

/// Runs one command (not empty) against the keyspace.
fn execute<'a>(cmd: &Command<'a>, store: &impl Store) -> Reply<'a> {
    let name = cmd.arg(0);
    let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
    let n = cmd.len();
    if is("GET") {
        if n != 2 {
            return wrong_arity(name);
        }
        match store.with(|ks| ks.get(cmd.arg(1))) {
            Some(v) => Reply::Value(v),
            None => Reply::Static(NIL),
        }
    } else if is("SET") {
        match n {
            3 => match store.with(|ks| ks.set(cmd.arg(1), cmd.arg(2))) {
                Ok(()) => Reply::Static(OK),
                Err(OutOfMemory) => Reply::Static(OOM),
            },
            // Options (EX, NX, ...) are not implemented.
            4.. => Reply::Error("ERR syntax error".to_string()),
            _ => wrong_arity(name),
        }
    } else if is("PING") {
        match n {
            1 => Reply::Static(PONG),
            2 => Reply::Echo(cmd.arg(1)),
            _ => wrong_arity(name),
        }
    } else if is("DEL") || is("EXISTS") {
        if n < 2 {
            return wrong_arity(name);
        }
        let del = is("DEL");
        let count = store.with(|ks| {
            cmd.args()
                .filter(|k| if del { ks.del(k) } else { ks.exists(k) })
                .count()
        });
        Reply::Integer(count as i64)
    } else if is("ECHO") {
        if n != 2 {
            return wrong_arity(name);
        }
        Reply::Echo(cmd.arg(1))
    } else if is("CONFIG") {
        match cmd.args().next() {
            Some(sub) if sub.eq_ignore_ascii_case(b"GET") && n == 3 => Reply::Static(EMPTY_LIST),
            Some(sub) if sub.eq_ignore_ascii_case(b"GET") => wrong_arity(b"config|get"),
            _ => Reply::Error("ERR only CONFIG GET is supported".to_string()),
        }
    } else if is("QUIT") {
        Reply::Quit
    } else {
        unknown(cmd)
    }
}

/// Stages `bytes`; when they do not fit the write buffer, sends what is staged first (and
/// streams a reply larger than the buffer). `false` when the connection failed.
async fn put(conn: &mut Connection, bytes: &[u8]) -> bool {
    conn.write(bytes).is_ok() || conn.write_all(bytes).await.is_ok()
}

/// Stages a bulk string reply: `$<len>\r\n<bytes>\r\n`.
async fn put_bulk(conn: &mut Connection, scratch: &mut Vec<u8>, bytes: &[u8]) -> bool {
    scratch.clear();
    resp_proto::bulk_header(bytes.len(), scratch);
    if bytes.len() <= 512 {
        // Small: one copy, one call.
        scratch.extend_from_slice(bytes);
        scratch.extend_from_slice(b"\r\n");
        return put(conn, scratch).await;
    }
    put(conn, scratch).await && put(conn, bytes).await && put(conn, b"\r\n").await
}

/// Stages the reply; `false` when the connection is to close (failed, or QUIT).
async fn answer(conn: &mut Connection, scratch: &mut Vec<u8>, reply: Reply<'_>) -> bool {
    match reply {
        Reply::Static(line) => conn.write(line).is_ok() || put(conn, line).await,
        Reply::Integer(n) => {
            scratch.clear();
            resp_proto::integer(n, scratch);
            put(conn, scratch).await
        }
        Reply::Value(v) => put_bulk(conn, scratch, &v).await,
        Reply::Echo(b) => put_bulk(conn, scratch, b).await,
        Reply::Error(msg) => {
            scratch.clear();
            scratch.push(b'-');
            scratch.extend_from_slice(msg.as_bytes());
            scratch.extend_from_slice(b"\r\n");
            put(conn, scratch).await
        }
        Reply::Quit => {
            put(conn, OK).await;
            false
        }
    }
}

/// What follows a read's commands.
enum Then {
    Continue,
    /// Close after sending the replies (QUIT, a failed connection).
    Close,
    /// Reply with the protocol error, then close.
    Refuse(ProtocolError),
}

async fn handle<S: Store>(mut conn: Connection, store: impl Deref<Target = S>, limits: Limits) {
    let mut decoder = Decoder::new(limits);
    let mut scratch = Vec::with_capacity(64);
    loop {
        let snapshot = conn.read().await;
        if snapshot.is_closed() {
            return;
        }
        let mut then = Then::Continue;
        'read: for piece in snapshot.buffers() {
            let mut rest = piece;
            while let Some(cmd) = decoder.next(&mut rest) {
                match cmd {
                    Ok(cmd) if cmd.is_empty() => {}
                    Ok(cmd) => {
                        let reply = execute(&cmd, &*store);
                        if !answer(&mut conn, &mut scratch, reply).await {
                            then = Then::Close;
                            break 'read;
                        }
                    }
                    Err(e) => {
                        then = Then::Refuse(e);
                        break 'read;
                    }
                }
            }
        }
        // Every receive buffer goes back to the kernel here.
        drop(snapshot);
        match then {
            Then::Continue => {
                if conn.flush().await.is_err() {
                    return;
                }
            }
            Then::Close => {
                let _ = conn.flush().await;
                return;
            }
            Then::Refuse(e) => {
                tracing::info!(peer = ?conn.peer_addr().ok(), "closing the connection: {e}");
                let line = format!("-ERR Protocol error: {e}\r\n");
                if put(&mut conn, line.as_bytes()).await {
                    common::close_gracefully(&mut conn).await;
                }
                return;
            }
        }
    }
}

fn main() {
    let mut limits = Limits::default();
    let mut max_memory = MAX_MEMORY;
    let args = Args::parse_with(
        Kind::Resp,
        "RESP limits:
  --max-bulk BYTES          largest key or value (default 16777216)
  --max-memory BYTES        bytes of keys and values held (default 1073741824; per reactor:
                            this divided by --reactors in reactor mode)",
        |flag, p| {
            let slot = match flag {
                "max-bulk" => &mut limits.max_bulk,
                "max-memory" => &mut max_memory,
                _ => return Ok(false),
            };
            match lexopt::ValueExt::parse(&p.value()?)? {
                0 => return Err(format!("--{flag} must be at least 1").into()),
                n => *slot = n,
            }
            Ok(true)
        },
    );
    let options = args.options();
    match args.mode {
        Mode::Reactor => {
            if args.reactors > 1 {
                tracing::warn!(
                    reactors = args.reactors,
                    "keys are per reactor: a client sees only the keys set through its own \
                     reactor (use --reactors 1 or --mode runtime for one keyspace)"
                );
            }
            let per_reactor = max_memory / args.reactors.max(1);
            common::run_reactor(&args, || {
                Engine::serve_with_state(
                    options,
                    move |_reactor| RefCell::new(Keyspace::new(per_reactor)),
                    move |conn, keyspace| handle(conn, keyspace, limits),
                )
            });
        }
        Mode::Runtime => {
            let keyspace = Arc::new(Mutex::new(Keyspace::new(max_memory)));
            common::run(&args, options, move |conn| {
                handle(conn, keyspace.clone(), limits)
            });
        }
    }
}
