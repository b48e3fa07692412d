//! axum 0.8 on zerg: a Router with a JSON route, a streamed body and a 1 MiB upload, served by
//! hyper-util (`TowerToHyperService`) on zerg `ConnectionStream`s, HTTP/1.1 and h2c, in both
//! handler modes.
//!
//! ```text
//! cargo run --release --features axum,hyper --example axum       # http://0.0.0.0:8080
//! curl http://127.0.0.1:8080/json
//! curl -d '{"name":"zerg"}' -H 'content-type: application/json' http://127.0.0.1:8080/json
//! curl 'http://127.0.0.1:8080/stream?lines=5'
//! head -c 1048576 /dev/urandom | curl --data-binary @- http://127.0.0.1:8080/upload
//! curl --http2-prior-knowledge http://127.0.0.1:8080/json     # h2c
//! wrk -c256 -d10s http://127.0.0.1:8080/
//! cargo run --release --features axum,hyper --example axum -- --mode runtime --reactors 2
//! ```
//!
//! Routes: GET `/` "Hello, World!"; GET `/json` `{"message":"Hello, World!"}`; POST `/json`
//! `{"name":N}` → `{"message":"Hello, N!"}`; GET `/stream?lines=N` N lines (at most 100,000) as a
//! chunked body; POST `/upload` (at most 1 MiB, else 413) → `{"bytes":…,"crc32":…}`.
//!
//! - `--mode reactor` (the default): every connection is served on its reactor thread, with no
//!   tokio runtime there: hyper's HTTP/2 streams are tasks on the reactor
//!   (`zerg_uring::hyper::Executor`), its timers the reactor's (`zerg_uring::hyper::Timer`).
//! - `--mode runtime`: the same hyper-util server on tokio, its executor and timer tokio's.
//!
//! Limits, the same as the `hyper` example's in both modes: request heads of at most 8 KiB and
//! 100 fields (431), malformed requests 400, bodies over 1 MiB 413 (a declared length at once);
//! the header timeout (`--header-timeout`, default 60 s) is hyper's `header_read_timeout`, every
//! connection must send its first request within it, and a request's body must arrive and its
//! handler answer within it (else 408); HTTP/2 keep-alive pings every 20 s, 128 streams per
//! connection. (`zerg_uring::axum::Listener` also runs `axum::serve` on zerg, but `axum::serve`
//! sets none of these limits.)
//!
//! Flags (`--help`): --port, --reactors, --recv-buffer-size, --buffer-ring-entries,
//! --incremental, --mode reactor|runtime, --accept per-reactor|dedicated, --workers, --sqpoll,
//! --max-connections, --write-timeout (default 30 s), --header-timeout (60 s), --read-timeout
//! (off), --idle-timeout (75 s); 0 turns a timeout off. SIGINT/SIGTERM stop it.

mod axum_app;
mod common;
mod hyper_rt;

use common::http::{MAX_HEAD, MAX_HEADERS};
use common::{Args, Kind};
use hyper_util::service::TowerToHyperService;
use zerg_uring::{Connection, ConnectionStream};

/// One connection, served by hyper with the Router as its service.
async fn handle(app: axum::Router, conn: Connection, config: hyper_rt::Config) {
    let peer = conn.peer_addr().ok();
    let io = ConnectionStream::new(conn);
    let service = TowerToHyperService::new(app);
    let served = hyper_rt::serve_connection(io, service, hyper_rt::Protocols::Auto, &config).await;
    if let Err(error) = served {
        tracing::debug!(?peer, %error, "connection ended with an error");
    }
}

fn main() {
    let mut args = Args::parse(Kind::Http);
    // hyper enforces the header timeout itself, in both modes.
    args.request_timeout_applied = true;
    let config = hyper_rt::Config {
        header_timeout: args.request_timeout,
        max_head: MAX_HEAD,
        max_headers: MAX_HEADERS,
    };
    let app = axum_app::app(args.request_timeout);
    common::run(&args, args.options(), move |conn| {
        handle(app.clone(), conn, config)
    });
}
