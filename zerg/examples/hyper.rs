//! hyper 1.x on zerg: a server answering every request with "Hello, World!", HTTP/1.1 with
//! keep-alive and pipelining, or HTTP/2 over cleartext (h2c, prior knowledge) when the client
//! opens with the HTTP/2 preface (hyper-util's `auto` builder). `ConnectionStream` is hyper's I/O
//! directly (it implements `hyper::rt::{Read, Write}`): no epoll and no `TokioIo` anywhere.
//!
//! ```text
//! cargo run --release --features tokio,hyper --example hyper    # listens on 0.0.0.0:8080
//! curl -i http://127.0.0.1:8080/
//! curl --http2-prior-knowledge http://127.0.0.1:8080/           # h2c
//! wrk -c256 -d10s http://127.0.0.1:8080/
//! h2load -c16 -m16 -n100000 http://127.0.0.1:8080/               # h2c, 16 streams per connection
//! cargo run --release --features tokio,hyper --example hyper -- --mode runtime --reactors 2
//! ```
//!
//! - `--mode reactor` (the default): handlers on the reactor threads with no tokio runtime;
//!   hyper's hooks are zerg's own: `zerg_uring::hyper::Executor` runs HTTP/2 streams as tasks on
//!   the connection's reactor, `zerg_uring::hyper::Timer` times the header timeout and the
//!   HTTP/2 keep-alive pings on the reactor's timers.
//! - `--mode runtime`: handlers on tokio, hyper on tokio's executor and timer.
//!
//! Bounded by hyper itself, the same in both modes: its HTTP/1 read buffer is capped at 8 KiB
//! (`max_buf_size`), so a longer request head is answered 431 and the connection closed; at most
//! 100 header fields (`max_headers`, 431); HTTP/2 header lists of at most 8 KiB; malformed
//! requests get hyper's 400. Request bodies (`Content-Length` or chunked) are read and dropped,
//! at most 1 MiB: a longer one is answered 413 and the connection closed. The header timeout
//! (`--header-timeout`, default 60 s) is hyper's `header_read_timeout` (from when hyper waits for
//! a request's head, the wait between keep-alive requests included, to the end of the head); the
//! first request of every connection, HTTP/1 or HTTP/2, must also arrive within it, and a
//! request's body within it of its head (else 408 and, on HTTP/1, a close). HTTP/2
//! connections are pinged after 20 s of silence and closed when a ping goes unanswered for 20 s;
//! at most 128 concurrent streams each.
//!
//! Flags (`--help`): --port, --reactors, --recv-buffer-size, --buffer-ring-entries,
//! --incremental, --mode reactor|runtime, --accept per-reactor|dedicated, --workers, --sqpoll,
//! --max-connections, --write-timeout (default 30 s), --header-timeout (60 s), --read-timeout
//! (off), --idle-timeout (75 s); 0 turns a timeout off. SIGINT/SIGTERM stop it.
//!
//! Metrics: `--metrics-port 9090` (built with `--features prometheus`) serves the engine's
//! counters as Prometheus text at `http://IP:9090/metrics` (IP: `--ip`, default all addresses):
//! `cargo run --release --example hyper --features tokio,hyper,prometheus -- --metrics-port 9090`.

mod common;
mod hyper_rt;

use std::convert::Infallible;
use std::time::Duration;

use common::http::{MAX_BODY, MAX_HEAD, MAX_HEADERS};
use common::{Args, Kind};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body as _;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONNECTION, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Version};
use hyper_rt::Protocols;
use zerg_uring::{Connection, ConnectionStream};

async fn hello(
    req: Request<Incoming>,
    limit: Option<Duration>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let h1 = req.version() < Version::HTTP_2;
    // A declared length over the limit is refused before any of the body is read.
    if req.body().size_hint().lower() > MAX_BODY as u64 {
        return Ok(refuse(h1, StatusCode::PAYLOAD_TOO_LARGE));
    }
    let read = drain(req.into_body());
    let read = match limit {
        Some(t) => hyper_rt::timeout(t, read)
            .await
            .unwrap_or(Err(StatusCode::REQUEST_TIMEOUT)),
        None => read.await,
    };
    if let Err(status) = read {
        return Ok(refuse(h1, status));
    }
    let mut response = Response::new(Full::new(Bytes::from_static(b"Hello, World!")));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(response)
}

/// Reads the body frame by frame and drops it, at most `MAX_BODY` bytes.
async fn drain(body: Incoming) -> Result<(), StatusCode> {
    let mut body = Limited::new(body, MAX_BODY);
    while let Some(frame) = body.frame().await {
        if let Err(e) = frame {
            return Err(if e.is::<LengthLimitError>() {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            });
        }
    }
    Ok(())
}

/// An empty `status` response. On HTTP/1 it closes the connection (the rest of the body is not
/// read); on HTTP/2 hyper resets the stream's unread body and the connection goes on.
fn refuse(h1: bool, status: StatusCode) -> Response<Full<Bytes>> {
    let why = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "request body over 1 MiB",
        StatusCode::REQUEST_TIMEOUT => "request body not received within the header timeout",
        _ => "malformed request body",
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    if h1 {
        tracing::info!(%status, "closing the connection: {why}");
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    } else {
        tracing::info!(%status, "refusing an HTTP/2 request: {why}");
    }
    response
}

async fn handle(conn: Connection, config: hyper_rt::Config) {
    let peer = conn.peer_addr().ok();
    let io = ConnectionStream::new(conn);
    let limit = config.header_timeout;
    let service = service_fn(move |req| hello(req, limit));
    let served = hyper_rt::serve_connection(io, service, Protocols::Auto, &config).await;
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
    common::run(&args, args.options(), move |conn| handle(conn, config));
}
