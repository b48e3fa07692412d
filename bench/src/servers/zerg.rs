//! zerg, in each of its modes: handlers on the reactor thread (`Engine::serve`) or on a tokio
//! `current_thread` runtime (`Engine::listen` + `accept`), dedicated or per-reactor accept,
//! incremental buffers on or off, receive bundles on or off, a growing receive ring (the
//! default) or the whole ring circulating from the start. One reactor by default, so the whole
//! server works on the one core the runner gives it, like the peers.
//!
//! `zerg-bench zerg --port P --workload http|echo [--buf-size N]
//!                  [--mode reactor|runtime] [--accept dedicated|per-reactor] [--incremental]
//!                  [--bundle] [--fixed-ring] [--direct] [--zc-threshold BYTES] [--reactors N]
//!                  [--timeouts] [--min-wait USEC]`
//! (N > 1: the scaling rows; one reactor per server CPU. `--bundle`: receive bundles
//! (`recv_ring.bundle`). `--fixed-ring`: the whole receive ring circulating from the start.
//! `--direct`: direct descriptors. `--zc-threshold`: zero-copy sends of at least that many
//! bytes. `--timeouts`: every connection timeout armed — read, idle, request, write — to measure
//! what checking them costs. `--min-wait`: `ReactorConfig::min_wait`, batching completions in
//! each wait)

use zerg_uring::{AcceptMode, Connection, Engine, EngineOptions, ReactorConfig};

use crate::args::Args;
use crate::proto::{self, ServerOpts, Workload};

/// Receive memory per reactor, whatever the buffer size: 64 MiB.
const RING_BYTES: usize = 64 << 20;

pub(crate) fn main(argv: Vec<String>) -> Result<(), String> {
    let mut args = Args::parse(argv)?;
    let opts = ServerOpts::parse(&mut args)?;
    let mode: String = args.opt("mode")?.unwrap_or_else(|| "reactor".into());
    let accept: String = args.opt("accept")?.unwrap_or_else(|| "per-reactor".into());
    let incremental = args.flag("incremental")?;
    let bundle = args.flag("bundle")?;
    let fixed_ring = args.flag("fixed-ring")?;
    let direct = args.flag("direct")?;
    let zc_threshold = crate::args::size_opt(&mut args, "zc-threshold", 0)?;
    let ring_bytes = crate::args::size_opt(&mut args, "ring-bytes", RING_BYTES)?;
    let reactors: usize = args.get("reactors", 1)?;
    let timeouts = args.flag("timeouts")?;
    let min_wait: u64 = args.get("min-wait", 0)?;
    if reactors == 0 {
        return Err("--reactors must be > 0".into());
    }
    args.finish()?;
    proto::raise_nofile_limit();

    let buf_size = match opts.workload {
        Workload::Http => proto::HTTP_READ_BUF,
        Workload::Echo => opts.buf_size,
    };
    let mut rc = ReactorConfig::default();
    rc.recv_buffer_size = u32::try_from(buf_size).map_err(|_| "--buf-size too large")?;
    rc.buffer_ring_entries = (ring_bytes / buf_size).clamp(8, 4096).next_power_of_two() as u32;
    if rc.buffer_ring_entries > 8 && rc.buffer_ring_entries as usize * buf_size > ring_bytes {
        rc.buffer_ring_entries /= 2;
    }
    rc.incremental_buffer_consumption = incremental;
    rc.recv_ring.bundle = bundle;
    if fixed_ring {
        rc.recv_ring.initial_buffers = rc.buffer_ring_entries;
    }
    rc.max_connections_per_reactor = 65536;
    rc.direct_descriptors = direct;
    rc.send_zerocopy_threshold = zc_threshold;
    if direct {
        // The file table (the cap and some headroom) must fit under RLIMIT_NOFILE, raised
        // above to the hard limit, or the reactor falls back to plain descriptors.
        rc.max_connections_per_reactor = (proto::nofile_limit().clamp(1024, 65536) * 3 / 4) as u32;
    }
    if timeouts {
        // Long enough never to fire during a run: what is measured is the bookkeeping.
        let t = Some(std::time::Duration::from_secs(300));
        (
            rc.read_timeout,
            rc.idle_timeout,
            rc.request_timeout,
            rc.write_timeout,
        ) = (t, t, t, t);
    }
    rc.min_wait = (min_wait > 0).then(|| std::time::Duration::from_micros(min_wait));
    let mut eo = EngineOptions::with_port(opts.port);
    eo.ip = std::net::Ipv4Addr::LOCALHOST.into();
    eo.backlog = proto::BACKLOG;
    eo.reactor_count = reactors;
    eo.reactor_configs = vec![rc];
    eo.accept_mode = match accept.as_str() {
        "dedicated" => AcceptMode::Dedicated,
        "per-reactor" => AcceptMode::PerReactor,
        other => {
            return Err(format!(
                "--accept {other:?}: expected dedicated or per-reactor"
            ));
        }
    };
    let workload = opts.workload;
    let handler = move |conn: Connection| async move {
        match workload {
            Workload::Http => http(conn).await,
            Workload::Echo => echo(conn).await,
        }
    };
    match mode.as_str() {
        "reactor" => {
            let engine = Engine::serve(eo, handler).map_err(|e| e.to_string())?;
            // Runs until killed; join returns only if the engine fails.
            engine.join().map_err(|e| e.to_string())
        }
        "runtime" => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("tokio runtime: {e}"))?;
            rt.block_on(async move {
                let engine = Engine::listen(eo).map_err(|e| e.to_string())?;
                while let Some(conn) = engine.accept().await {
                    tokio::spawn(handler(conn));
                }
                engine.join().map_err(|e| e.to_string())
            })
        }
        other => Err(format!("--mode {other:?}: expected reactor or runtime")),
    }
}

/// Keep-alive + pipelining: one flush with every response of a read batch. Requests are found
/// in place, in the receive buffers (a request split across buffers or reads is counted once
/// complete).
async fn http(mut conn: Connection) {
    let mut scan = Scanner::default();
    loop {
        let snapshot = conn.read().await;
        if snapshot.is_closed() {
            return;
        }
        let requests: usize = snapshot.buffers().map(|b| scan.feed(b)).sum();
        drop(snapshot);
        for _ in 0..requests {
            if conn.write(proto::RESPONSE).is_err() {
                return;
            }
        }
        if conn.flush().await.is_err() {
            return;
        }
    }
}

/// Echo every byte: each read's receive buffers are sent as they are (no copy), one flush per
/// read.
async fn echo(mut conn: Connection) {
    loop {
        let snapshot = conn.read().await;
        if snapshot.is_closed() {
            return;
        }
        if conn.write_snapshot(snapshot).is_err() {
            return;
        }
        if conn.flush().await.is_err() {
            return;
        }
    }
}

/// Counts `\r\n\r\n` in a stream fed in pieces (memmem inside a piece, a carried prefix across
/// pieces).
#[derive(Default)]
struct Scanner {
    /// How many bytes of the needle the previous piece ended with (after its last match).
    carry: usize,
}

impl Scanner {
    const END: &'static [u8] = b"\r\n\r\n";

    fn feed(&mut self, piece: &[u8]) -> usize {
        let mut count = 0;
        let mut start = 0;
        if self.carry > 0 {
            let rest = &Self::END[self.carry..];
            if piece.starts_with(rest) {
                count += 1;
                start = rest.len();
            } else if rest.starts_with(piece) {
                // The piece is shorter than what is missing and matches so far.
                self.carry += piece.len();
                return 0;
            }
        }
        let mut last_end = start;
        for i in memchr::memmem::find_iter(&piece[start..], Self::END) {
            count += 1;
            last_end = start + i + Self::END.len();
        }
        let tail = &piece[last_end..];
        self.carry = (1..=3.min(tail.len()))
            .rev()
            .find(|&k| tail.ends_with(&Self::END[..k]))
            .unwrap_or(0);
        count
    }
}

#[cfg(test)]
mod tests {
    use super::Scanner;

    #[test]
    fn counts_requests_split_anywhere() {
        let stream = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(5);
        for a in 0..stream.len() {
            for b in a..stream.len() {
                let mut s = Scanner::default();
                let n = s.feed(&stream[..a]) + s.feed(&stream[a..b]) + s.feed(&stream[b..]);
                assert_eq!(n, 5, "split at {a}, {b}");
            }
        }
    }
}
