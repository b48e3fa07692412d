//! hyper's runtime traits implemented by zerg (feature `hyper`), so hyper serves HTTP/1 and
//! HTTP/2 entirely on the reactor threads with no tokio runtime in the process.
//!
//! - [`Executor`]: `hyper::rt::Executor`, spawning on the current reactor
//!   ([`spawn_local`](crate::spawn_local)) — what HTTP/2 needs for its streams.
//! - [`Timer`]: `hyper::rt::Timer` on the reactor's timers ([`crate::time`]) — what
//!   `header_read_timeout` and HTTP/2 keep-alive need.
//! - [`ConnectionStream`](crate::ConnectionStream) implements `hyper::rt::{Read, Write}`
//!   directly: no `TokioIo` wrapper.
//!
//! Both work only on reactor threads, that is in handlers started by
//! [`Engine::serve`](crate::Engine::serve) (they panic elsewhere, naming the fix).
//!
//! ```no_run
//! use std::convert::Infallible;
//! use std::time::Duration;
//!
//! use http_body_util::Full;
//! use hyper::body::{Bytes, Incoming};
//! use hyper::{Request, Response};
//! use zerg_uring::{ConnectionStream, Engine, EngineOptions};
//!
//! async fn hello(_: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
//!     Ok(Response::new(Full::new(Bytes::from_static(b"Hello, World!"))))
//! }
//!
//! let engine = Engine::serve(EngineOptions::with_port(8080), |conn| async move {
//!     let served = hyper::server::conn::http1::Builder::new()
//!         .timer(zerg_uring::hyper::Timer)
//!         .header_read_timeout(Duration::from_secs(10))
//!         .serve_connection(ConnectionStream::new(conn), hyper::service::service_fn(hello))
//!         .await;
//!     if let Err(e) = served {
//!         tracing::debug!(error = %e, "connection ended");
//!     }
//! })?;
//! # engine.stop();
//! # Ok::<(), zerg_uring::Error>(())
//! ```

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use crate::time::{self, Sleep};

/// `hyper::rt::Executor` spawning on the current reactor thread's local executor.
///
/// The futures need not be `Send`. Use it for hyper's HTTP/2 server
/// (`http2::Builder::new(zerg_uring::hyper::Executor)`) or hyper-util's `auto` builder in
/// thread-per-core handlers.
///
/// # Panics
///
/// `execute` panics outside a reactor thread (see [`spawn_local`](crate::spawn_local)).
#[derive(Debug, Clone, Copy, Default)]
pub struct Executor;

impl<F> hyper::rt::Executor<F> for Executor
where
    F: Future + 'static,
    F::Output: 'static,
{
    fn execute(&self, fut: F) {
        drop(crate::spawn_local(fut));
    }
}

/// `hyper::rt::Timer` on the current reactor's timers: no timer thread, no syscall per timer.
///
/// # Panics
///
/// `sleep` and `sleep_until` panic outside a reactor thread (see [`crate::time`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Timer;

impl hyper::rt::Timer for Timer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(time::sleep(duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(time::sleep_until(deadline))
    }
}

impl hyper::rt::Sleep for Sleep {}
