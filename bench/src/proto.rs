//! What every server and the load generator agree on: the HTTP request and the
//! one fixed response, the request scanner all servers share (so they do the
//! same work), and the server command line.

use crate::args::{self, Args};

/// The only response any HTTP server in the suite sends.
pub(crate) const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nHello, World!";

/// The request the load generator sends (wrk sends a similar one).
pub(crate) const REQUEST: &[u8] = b"GET /plaintext HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// Per-connection read buffer of the HTTP servers.
pub(crate) const HTTP_READ_BUF: usize = 16 * 1024;

/// Default echo read buffer (`--buf-size`).
pub(crate) const DEFAULT_ECHO_BUF: usize = 16 * 1024;

/// Listen backlog of every peer server (the kernel caps it at `somaxconn`).
pub(crate) const BACKLOG: u32 = 4096;

/// Appends one [`RESPONSE`] to `out` for every complete request (ending in
/// `\r\n\r\n`) in `buf` and returns how many bytes of `buf` those requests
/// used; the rest is an incomplete request to keep for the next read.
pub(crate) fn answer_requests(buf: &[u8], out: &mut Vec<u8>) -> usize {
    let mut consumed = 0;
    for end in memchr::memmem::find_iter(buf, b"\r\n\r\n") {
        // find_iter yields non-overlapping matches from the start, so `end`
        // is never inside a request already answered.
        out.extend_from_slice(RESPONSE);
        consumed = end + 4;
    }
    consumed
}

/// The server-side work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Workload {
    /// HTTP/1.1 keep-alive + pipelining, fixed [`RESPONSE`].
    Http,
    /// Echo every byte, reading into a buffer of `buf_size` bytes.
    Echo,
}

/// The command line every suite server row accepts:
/// `--port P --workload http|echo [--buf-size N] [--threads N]` (zerg: `--reactors N`).
#[derive(Debug, Clone)]
pub(crate) struct ServerOpts {
    pub(crate) port: u16,
    pub(crate) workload: Workload,
    pub(crate) buf_size: usize,
    /// Threads, each with its own runtime and its own SO_REUSEPORT listener (scaling rows).
    pub(crate) threads: usize,
}

impl ServerOpts {
    pub(crate) fn parse(args: &mut Args) -> Result<Self, String> {
        let port = args.req("port")?;
        let workload = match args.req::<String>("workload")?.as_str() {
            "http" => Workload::Http,
            "echo" => Workload::Echo,
            w => return Err(format!("--workload {w:?}: expected http or echo")),
        };
        let buf_size = args::size_opt(args, "buf-size", DEFAULT_ECHO_BUF)?;
        if buf_size == 0 {
            return Err("--buf-size must be > 0".into());
        }
        let threads = args.get("threads", 1)?;
        if threads == 0 {
            return Err("--threads must be > 0".into());
        }
        Ok(Self {
            port,
            workload,
            buf_size,
            threads,
        })
    }

    pub(crate) fn addr(&self) -> std::net::SocketAddr {
        (std::net::Ipv4Addr::LOCALHOST, self.port).into()
    }
}

/// Runs `serve` on `opts.threads` threads (one when 1: on this thread) and returns the first
/// error. Each thread builds its own runtime and listener (thread per core).
pub(crate) fn per_thread(
    opts: &ServerOpts,
    serve: impl Fn(ServerOpts) -> Result<(), String> + Send + Sync,
) -> Result<(), String> {
    if opts.threads == 1 {
        return serve(opts.clone());
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..opts.threads)
            .map(|_| s.spawn(|| serve(opts.clone())))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a server thread panicked".into()))
            })
            .find(Result::is_err)
            .unwrap_or(Ok(()))
    })
}

/// Raises the soft open-file limit to the hard limit (10,000 idle
/// connections need it); failure is not fatal, only reported.
pub(crate) fn raise_nofile_limit() {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("warning: cannot raise RLIMIT_NOFILE: {e}");
    }
}

/// The soft `RLIMIT_NOFILE` (after [`raise_nofile_limit`], the hard one).
pub(crate) fn nofile_limit() -> u64 {
    rlimit::Resource::NOFILE
        .get()
        .map_or(1024, |(soft, _)| soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_is_the_fixed_one() {
        assert_eq!(RESPONSE.len(), 78);
        assert!(RESPONSE.ends_with(b"\r\n\r\nHello, World!"));
    }

    #[test]
    fn answers_pipelined_and_keeps_partial() {
        let mut buf = Vec::new();
        buf.extend_from_slice(REQUEST);
        buf.extend_from_slice(REQUEST);
        buf.extend_from_slice(&REQUEST[..10]);
        let mut out = Vec::new();
        let used = answer_requests(&buf, &mut out);
        assert_eq!(used, 2 * REQUEST.len());
        assert_eq!(out.len(), 2 * RESPONSE.len());
        // The rest of the split request completes it.
        let mut rest = buf[used..].to_vec();
        rest.extend_from_slice(&REQUEST[10..]);
        out.clear();
        assert_eq!(answer_requests(&rest, &mut out), REQUEST.len());
        assert_eq!(out, RESPONSE);
    }

    #[test]
    fn no_request_no_answer() {
        let mut out = Vec::new();
        assert_eq!(answer_requests(b"GET / HTTP/1.1\r\n", &mut out), 0);
        assert!(out.is_empty());
    }
}
