//! hyper 1.x on zerg: an HTTP/1.1 server (keep-alive on) answering every request with
//! "Hello, World!", its connections being `ConnectionStream`s wrapped in hyper-util's `TokioIo`.
//! No epoll anywhere: hyper reads and writes through the io_uring reactors.
//!
//! ```text
//! cargo run --release --features tokio --example hyper      # listens on 0.0.0.0:8080
//! curl -i http://127.0.0.1:8080/
//! wrk -c256 -d10s http://127.0.0.1:8080/
//! cargo run --release --features tokio --example hyper -- --mode reactor --reactors 2
//! ```
//!
//! Bounded by hyper itself: its read buffer is capped at 8 KiB (`max_buf_size`), so a longer
//! request head is answered 431 and the connection closed; at most 100 header fields
//! (`max_headers`); malformed requests get hyper's 400. Request bodies (`Content-Length` or
//! chunked) are read and dropped, at most 1 MiB: a longer one is answered 413 and the connection
//! closed. The header timeout (default 60 s) is hyper's `header_read_timeout`, which needs a
//! tokio timer: it is enforced in runtime mode (the default) and reported as not enforced with
//! `--mode reactor`, where handlers run on the reactor threads without a tokio runtime.
//!
//! Flags (`--help`): --port, --reactors, --recv-buffer-size, --buffer-ring-entries,
//! --incremental, --mode runtime|reactor, --accept dedicated|per-reactor, --workers, --sqpoll,
//! --max-connections, --write-timeout (default 30 s), --header-timeout (60 s), --read-timeout
//! (60 s), --idle-timeout (75 s); 0 turns a timeout off. SIGINT/SIGTERM stop it.
//!
//! Metrics: `--metrics-port 9090` (built with `--features prometheus`) serves the engine's
//! counters as Prometheus text at `http://IP:9090/metrics` (IP: `--ip`, default all addresses):
//! `cargo run --release --example hyper --features tokio,hyper,prometheus -- --metrics-port 9090`.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use common::http::{MAX_BODY, MAX_HEAD, MAX_HEADERS};
use common::{Args, Kind};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body as _;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONNECTION, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use zerg_uring::{Connection, ConnectionStream};

async fn hello(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // A declared length over the limit is refused before any of the body is read.
    if req.body().size_hint().lower() > MAX_BODY as u64 {
        return Ok(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body over 1 MiB",
        ));
    }
    // Read the body frame by frame and drop it, at most MAX_BODY bytes.
    let mut body = Limited::new(req.into_body(), MAX_BODY);
    while let Some(frame) = body.frame().await {
        if let Err(e) = frame {
            return Ok(if e.is::<LengthLimitError>() {
                refuse(StatusCode::PAYLOAD_TOO_LARGE, "request body over 1 MiB")
            } else {
                refuse(StatusCode::BAD_REQUEST, "malformed request body")
            });
        }
    }
    let mut response = Response::new(Full::new(Bytes::from_static(b"Hello, World!")));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(response)
}

/// An empty `status` response that closes the connection (the rest of the body is not read).
fn refuse(status: StatusCode, why: &str) -> Response<Full<Bytes>> {
    tracing::info!(%status, "closing the connection: {why}");
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

async fn handle(conn: Connection, header_timeout: Option<Duration>) {
    let io = TokioIo::new(ConnectionStream::new(conn));
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        .max_buf_size(MAX_HEAD)
        .max_headers(MAX_HEADERS);
    // hyper's header timeout needs a timer: tokio's in runtime mode, the reactor's own timers
    // (zerg_uring::hyper::Timer) on the reactor thread.
    if let Some(t) = header_timeout {
        if zerg_uring::task::current_reactor().is_some() {
            builder.timer(zerg_uring::hyper::Timer);
        } else {
            builder.timer(TokioTimer::new());
        }
        builder.header_read_timeout(t);
    }
    if let Err(e) = builder.serve_connection(io, service_fn(hello)).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

fn main() {
    let mut args = Args::parse(Kind::Http);
    // hyper enforces the header timeout itself, in both modes.
    args.header_timeout_applied = true;
    let header_timeout = args.header_timeout;
    common::run(&args, args.options(), move |conn| {
        handle(conn, header_timeout)
    });
}
