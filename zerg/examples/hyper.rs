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
//! Flags: --port, --reactors, --recv-buffer-size, --buffer-ring-entries, --incremental,
//! --mode runtime|reactor, --accept dedicated|per-reactor, --workers, --sqpoll. SIGINT/SIGTERM
//! stop it.

mod common;

use std::convert::Infallible;

use common::Args;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use zerg_uring::{Connection, ConnectionStream};

async fn hello(_: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"Hello, World!")));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(response)
}

async fn handle(conn: Connection) {
    let io = TokioIo::new(ConnectionStream::new(conn));
    // No timer is configured, so hyper sets no header-read timeout: the same code runs on the
    // reactor threads (--mode reactor), where there is no tokio runtime.
    let served = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service_fn(hello))
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

fn main() {
    let args = Args::parse();
    common::run(&args, args.options(), handle);
}
