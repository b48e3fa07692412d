//! The RESP peer: a Redis-protocol server on tokio `current_thread` (tasks on a `LocalSet`, one
//! `HashMap` shared without locks), for `redis-benchmark`. Commands: `PING [msg]`, `SET key value`,
//! `GET key`, `DEL key [key ...]`; `CONFIG GET` answers an empty list (redis-benchmark asks at start);
//! anything else gets an error reply. Requests may be RESP arrays of bulk strings or inline
//! (space-separated words on one line). Pipelining: every complete command of one read is
//! answered, and the replies go out in one write.
//!
//! Bounded input: a bulk string above 1 MiB, more than 1,024 arguments, a command above 4 MiB,
//! an inline line above 64 KiB or a malformed request gets `-ERR` and the connection is closed.
//!
//! `zerg-bench tokio-resp --port P`

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::rc::Rc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::args::Args;
use crate::proto;

const MAX_BULK: usize = 1 << 20;
const MAX_ARGS: usize = 1024;
const MAX_INLINE: usize = 64 * 1024;
const READ_BUF: usize = 16 * 1024;
/// Largest incomplete command kept across reads.
const MAX_COMMAND: usize = 4 << 20;

type Store = Rc<RefCell<HashMap<Vec<u8>, Vec<u8>>>>;

pub(crate) fn main(argv: Vec<String>) -> Result<(), String> {
    let mut args = Args::parse(argv)?;
    let port: u16 = args.req("port")?;
    args.finish()?;
    proto::raise_nofile_limit();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, serve(port)).map_err(|e| e.to_string())
}

async fn serve(port: u16) -> io::Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind((std::net::Ipv4Addr::LOCALHOST, port).into())?;
    let listener = socket.listen(proto::BACKLOG)?;
    let store: Store = Rc::default();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                eprintln!("tokio resp: accept: {e}");
                tokio::time::sleep(super::ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::task::spawn_local(conn(stream, store.clone()));
    }
}

async fn conn(mut stream: TcpStream, store: Store) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_BUF);
    let mut out: Vec<u8> = Vec::with_capacity(READ_BUF);
    loop {
        if buf.capacity() - buf.len() < READ_BUF / 4 {
            buf.reserve(READ_BUF);
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        let mut used = 0;
        let mut failed = false;
        loop {
            match parse(&buf[used..]) {
                Ok(Some((args, n))) => {
                    used += n;
                    execute(&args, &store, &mut out);
                }
                Ok(None) => break,
                Err(e) => {
                    out.extend_from_slice(format!("-ERR {e}\r\n").as_bytes());
                    failed = true;
                    break;
                }
            }
        }
        buf.drain(..used);
        if !failed && buf.len() > MAX_COMMAND {
            out.extend_from_slice(b"-ERR command too long\r\n");
            failed = true;
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if failed {
            return Ok(());
        }
    }
}

/// One parsed command: its arguments and the bytes it used.
pub(crate) type Command<'a> = (Vec<&'a [u8]>, usize);

/// Parses one command at the start of `buf`: `Ok(None)` if incomplete, else its arguments and
/// the bytes it used.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<Command<'_>>, String> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != b'*' {
        // Inline command.
        let Some(end) = memchr::memchr(b'\n', buf) else {
            if buf.len() > MAX_INLINE {
                return Err("inline command too long".into());
            }
            return Ok(None);
        };
        let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
        let args: Vec<&[u8]> = line
            .split(|b| *b == b' ')
            .filter(|w| !w.is_empty())
            .collect();
        return Ok(Some((args, end + 1)));
    }
    let Some((count, mut pos)) = number_line(buf, 1)? else {
        return Ok(None);
    };
    if count > MAX_ARGS {
        return Err(format!("too many arguments ({count})"));
    }
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        if pos >= buf.len() {
            return Ok(None);
        }
        if buf[pos] != b'$' {
            return Err("expected a bulk string".into());
        }
        let Some((len, start)) = number_line(buf, pos + 1)? else {
            return Ok(None);
        };
        if len > MAX_BULK {
            return Err(format!("bulk string too long ({len} bytes)"));
        }
        let end = start + len;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err("bulk string not terminated by CRLF".into());
        }
        args.push(&buf[start..end]);
        pos = end + 2;
    }
    Ok(Some((args, pos)))
}

/// A decimal number from `buf[from..]` up to CRLF: `(number, offset after the CRLF)`.
fn number_line(buf: &[u8], from: usize) -> Result<Option<(usize, usize)>, String> {
    let Some(nl) = memchr::memchr(b'\n', &buf[from..]) else {
        if buf.len() - from > 32 {
            return Err("length line too long".into());
        }
        return Ok(None);
    };
    let line = &buf[from..from + nl];
    let digits = line
        .strip_suffix(b"\r")
        .ok_or("length line not terminated by CRLF")?;
    let text = std::str::from_utf8(digits).map_err(|_| "bad length")?;
    let n: usize = text.parse().map_err(|_| format!("bad length {text:?}"))?;
    Ok(Some((n, from + nl + 1)))
}

fn bulk(out: &mut Vec<u8>, v: &[u8]) {
    out.push(b'$');
    out.extend_from_slice(v.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(v);
    out.extend_from_slice(b"\r\n");
}

pub(crate) fn execute(args: &[&[u8]], store: &Store, out: &mut Vec<u8>) {
    let Some(cmd) = args.first() else {
        return; // empty inline line
    };
    let is = |name: &str| cmd.eq_ignore_ascii_case(name.as_bytes());
    let wrong = |out: &mut Vec<u8>| out.extend_from_slice(b"-ERR wrong number of arguments\r\n");
    if is("PING") {
        match args.len() {
            1 => out.extend_from_slice(b"+PONG\r\n"),
            2 => bulk(out, args[1]),
            _ => wrong(out),
        }
    } else if is("SET") {
        if args.len() != 3 {
            return wrong(out);
        }
        store
            .borrow_mut()
            .insert(args[1].to_vec(), args[2].to_vec());
        out.extend_from_slice(b"+OK\r\n");
    } else if is("GET") {
        if args.len() != 2 {
            return wrong(out);
        }
        match store.borrow().get(args[1]) {
            Some(v) => bulk(out, v),
            None => out.extend_from_slice(b"$-1\r\n"),
        }
    } else if is("DEL") {
        if args.len() < 2 {
            return wrong(out);
        }
        let mut s = store.borrow_mut();
        let n = args[1..].iter().filter(|k| s.remove(**k).is_some()).count();
        out.extend_from_slice(format!(":{n}\r\n").as_bytes());
    } else if is("CONFIG") {
        out.extend_from_slice(b"*0\r\n");
    } else {
        out.extend_from_slice(b"-ERR unknown command\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8], store: &Store) -> Vec<u8> {
        let mut out = Vec::new();
        let mut used = 0;
        while let Some((args, n)) = parse(&input[used..]).unwrap() {
            used += n;
            execute(&args, store, &mut out);
        }
        assert_eq!(used, input.len(), "a command was left unparsed");
        out
    }

    #[test]
    fn commands_and_pipelining() {
        let store = Store::default();
        let input = b"*1\r\n$4\r\nPING\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nvv\r\n\
*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*2\r\n$3\r\ndel\r\n$1\r\nk\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n\
PING\r\n";
        let out = run(input, &store);
        assert_eq!(
            out,
            b"+PONG\r\n+OK\r\n$2\r\nvv\r\n:1\r\n$-1\r\n+PONG\r\n".to_vec()
        );
    }

    #[test]
    fn incomplete_waits_and_bad_input_fails() {
        let full = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n";
        for cut in 0..full.len() {
            assert!(parse(&full[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        assert!(parse(b"*1\r\n$99999999\r\n").is_err());
        assert!(parse(b"*99999\r\n").is_err());
        assert!(parse(b"*1\r\n$3\r\nGETxx").is_err());
        assert!(parse(b"*1\r\n:3\r\n").is_err());
        assert!(parse(&vec![b'a'; MAX_INLINE + 1]).is_err());
    }
}
