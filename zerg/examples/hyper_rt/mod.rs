//! hyper in both handler modes: one function serving a connection with hyper-util's `auto`
//! builder (HTTP/1.1 with keep-alive, or HTTP/2 when the client opens with its preface), with
//! the runtime hooks of the thread it runs on. Shared by the `hyper`, `axum` and `tls` examples.
//!
//! - Reactor mode (`Engine::serve`, handlers on the reactor thread, no tokio runtime there):
//!   zerg's own `zerg_uring::hyper::Executor` (hyper's HTTP/2 stream tasks are spawned on the
//!   connection's reactor) and `zerg_uring::hyper::Timer` (the reactor's timers).
//! - Runtime mode (handlers on tokio): tokio's executor and timer.
//!
//! [`timeout`] picks the same way, for what hyper does not time itself (a TLS handshake).
#![allow(dead_code, unreachable_pub)]

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;

/// HTTP/2 pings: sent after this much silence; the connection is closed when one is not
/// answered within the same time.
pub const H2_KEEP_ALIVE: Duration = Duration::from_secs(20);
/// Concurrent HTTP/2 streams per connection.
pub const H2_MAX_STREAMS: u32 = 128;

/// Which HTTP versions a connection may speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocols {
    /// HTTP/1.1, or HTTP/2 when the client opens with its preface (h2c prior knowledge).
    Auto,
    /// HTTP/1.1 only (TLS ALPN `http/1.1`, or no ALPN).
    Http1,
    /// HTTP/2 only (TLS ALPN `h2`).
    Http2,
}

/// How connections are served: the limits and the header timeout.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// HTTP/1: a connection must send a request's head within this time of hyper starting to
    /// wait for it (the wait for the next request on a keep-alive connection included); every
    /// connection must send its first request (HTTP/1 or HTTP/2) within it. `None`: no limit.
    pub header_timeout: Option<Duration>,
    /// Largest request head: hyper's HTTP/1 read buffer (a longer head is answered 431), and the
    /// HTTP/2 header list size.
    pub max_head: usize,
    /// Most header fields in an HTTP/1 request (more: 431).
    pub max_headers: usize,
}

/// Whether the calling thread is a zerg reactor thread (reactor mode).
pub fn on_reactor() -> bool {
    zerg_uring::task::current_reactor().is_some()
}

/// hyper's executor for the calling thread: zerg's on a reactor thread, tokio's otherwise.
#[derive(Debug, Clone)]
pub enum Exec {
    /// `zerg_uring::spawn_local` on the reactor.
    Reactor(zerg_uring::hyper::Executor),
    /// `tokio::spawn`.
    Tokio(TokioExecutor),
}

impl Exec {
    pub fn current() -> Exec {
        if on_reactor() {
            Exec::Reactor(zerg_uring::hyper::Executor)
        } else {
            Exec::Tokio(TokioExecutor::new())
        }
    }
}

impl<F> hyper::rt::Executor<F> for Exec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        match self {
            Exec::Reactor(zerg) => zerg.execute(future),
            Exec::Tokio(tokio) => tokio.execute(future),
        }
    }
}

/// The time limit of a [`timeout`] passed.
#[derive(Debug)]
pub struct Elapsed;

/// Runs `future` with a time limit, on the reactor's timers on a reactor thread and on tokio's
/// otherwise.
pub async fn timeout<F: Future>(limit: Duration, future: F) -> Result<F::Output, Elapsed> {
    if on_reactor() {
        zerg_uring::time::timeout(limit, future)
            .await
            .map_err(|_| Elapsed)
    } else {
        tokio::time::timeout(limit, future)
            .await
            .map_err(|_| Elapsed)
    }
}

/// Serves one connection with hyper: HTTP/1.1 with keep-alive, the head limits and the header
/// timeout of `config`; HTTP/2 with keep-alive pings, a stream limit and the header list limit;
/// per `protocols`. Runs in either handler mode (see the module docs).
pub async fn serve_connection<I, S, B>(
    io: I,
    service: S,
    protocols: Protocols,
    config: &Config,
) -> Result<(), Box<dyn StdError + Send + Sync>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let exec = Exec::current();
    let reactor = matches!(exec, Exec::Reactor(_));
    let mut builder = auto::Builder::new(exec);
    builder
        .http1()
        .keep_alive(true)
        .max_buf_size(config.max_head)
        .max_headers(config.max_headers)
        .header_read_timeout(config.header_timeout);
    builder
        .http2()
        .keep_alive_interval(H2_KEEP_ALIVE)
        .keep_alive_timeout(H2_KEEP_ALIVE)
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(u32::try_from(config.max_head).unwrap_or(u32::MAX));
    if reactor {
        builder.http1().timer(zerg_uring::hyper::Timer);
        builder.http2().timer(zerg_uring::hyper::Timer);
    } else {
        builder.http1().timer(TokioTimer::new());
        builder.http2().timer(TokioTimer::new());
    }
    let builder = match protocols {
        Protocols::Auto => builder,
        Protocols::Http1 => builder.http1_only(),
        Protocols::Http2 => builder.http2_only(),
    };
    let Some(limit) = config.header_timeout else {
        return builder.serve_connection(io, service).await;
    };
    // hyper times HTTP/1 heads itself, but not the wait for the first bytes that tell HTTP/1
    // from HTTP/2, nor an HTTP/2 connection that never asks anything: the first request must
    // come within the header timeout.
    let asked = Arc::new(AtomicBool::new(false));
    let service = FirstRequest {
        inner: service,
        asked: asked.clone(),
    };
    let serving = builder.serve_connection(io, service);
    let mut serving = std::pin::pin!(serving);
    match timeout(
        limit,
        FirstRequestDone {
            serving: serving.as_mut(),
            asked: &asked,
        },
    )
    .await
    {
        Ok(Some(result)) => result,
        // The first request came in time: serve the connection to its end.
        Ok(None) => serving.await,
        Err(Elapsed) => Err("no request within the header timeout".into()),
    }
}

/// A service that notes that a request arrived.
#[derive(Clone)]
struct FirstRequest<S> {
    inner: S,
    asked: Arc<AtomicBool>,
}

impl<S, R> Service<R> for FirstRequest<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, req: R) -> Self::Future {
        self.asked.store(true, Ordering::Relaxed);
        self.inner.call(req)
    }
}

/// Polls a connection until it ends (`Some`) or its first request arrived (`None`).
struct FirstRequestDone<'a, F> {
    serving: Pin<&'a mut F>,
    asked: &'a AtomicBool,
}

impl<F: Future> Future for FirstRequestDone<'_, F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(out) = self.serving.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        if self.asked.load(Ordering::Relaxed) {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}
