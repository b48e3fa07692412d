//! hyper's runtime hooks (an executor and a timer) that work in both handler modes, and one
//! function serving a connection with them. Shared by the `tls` and `axum` examples.
//!
//! - Runtime mode (handlers on tokio): [`Exec`] spawns on tokio, [`Timer`] is tokio's timer.
//! - Reactor mode (`Engine::serve`, handlers on the reactor thread, no tokio runtime there):
//!   [`Exec`] runs the tasks hyper spawns (one per HTTP/2 stream) inside the connection's own
//!   handler future, on the reactor thread; [`Timer`] registers its sleeps with a timer-only
//!   tokio runtime on another thread ([`start_timer_thread`]), whose wake-ups reach the reactor
//!   through its eventfd like any other cross-thread wake.
#![allow(dead_code, unreachable_pub)]

use std::error::Error as StdError;
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::runtime::Handle;

/// How long a client may take to send a request's headers (HTTP/1) before the connection is
/// closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
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

static TIMER_RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// Starts the timer thread used by handlers that run outside tokio (reactor mode). Call it once
/// at start-up, before the engine, so a failure is reported there.
pub fn start_timer_thread() -> std::io::Result<()> {
    if TIMER_RUNTIME.get().is_none() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("timer")
            .enable_time()
            .build()?;
        let _ = TIMER_RUNTIME.set(rt);
    }
    Ok(())
}

/// The tokio runtime whose timer serves this thread: the current one in runtime mode, the timer
/// thread's otherwise.
///
/// # Panics
///
/// Outside a tokio runtime when [`start_timer_thread`] was not called.
pub fn timer_handle() -> Handle {
    Handle::try_current().unwrap_or_else(|_| {
        TIMER_RUNTIME
            .get()
            .expect("start_timer_thread() is called at start-up in reactor mode")
            .handle()
            .clone()
    })
}

/// `tokio::time::timeout` from any thread: the timer is registered with [`timer_handle`]'s
/// runtime (polling it needs no runtime).
pub fn timeout<F: Future>(limit: Duration, future: F) -> tokio::time::Timeout<F> {
    let _in = timer_handle().enter();
    tokio::time::timeout(limit, future)
}

/// hyper's timer (header-read timeout, HTTP/2 keep-alive) on [`timer_handle`]'s runtime.
#[derive(Clone)]
pub struct Timer(Handle);

impl Timer {
    pub fn new() -> Timer {
        Timer(timer_handle())
    }
}

impl fmt::Debug for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Timer")
    }
}

impl hyper::rt::Timer for Timer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let _in = self.0.enter();
        TokioTimer::new().sleep(duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let _in = self.0.enter();
        TokioTimer::new().sleep_until(deadline)
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        let _in = self.0.enter();
        TokioTimer::new().reset(sleep, new_deadline)
    }
}

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// hyper's executor: tokio's in runtime mode; in reactor mode, the connection's own task set.
#[derive(Clone)]
pub enum Exec {
    /// `tokio::spawn`.
    Tokio(TokioExecutor),
    /// Tasks queued here run inside [`Exec::run`], in the connection's handler future.
    Local(LocalTasks),
}

impl Exec {
    /// Tokio's executor inside a tokio runtime, a per-connection task set elsewhere.
    pub fn for_this_thread() -> Exec {
        if Handle::try_current().is_ok() {
            Exec::Tokio(TokioExecutor::new())
        } else {
            Exec::Local(LocalTasks::default())
        }
    }

    /// Runs `future` (the connection) together with the tasks spawned on this executor; returns
    /// when `future` does. Tasks still running then are dropped: they belong to the connection.
    pub async fn run<F: Future>(&self, future: F) -> F::Output {
        match self {
            Exec::Tokio(_) => future.await,
            Exec::Local(tasks) => tasks.run(future).await,
        }
    }
}

impl fmt::Debug for Exec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Exec::Tokio(_) => "Exec::Tokio",
            Exec::Local(_) => "Exec::Local",
        })
    }
}

impl<F> hyper::rt::Executor<F> for Exec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        match self {
            Exec::Tokio(tokio) => tokio.execute(future),
            Exec::Local(tasks) => tasks.push(Box::pin(future)),
        }
    }
}

/// Tasks of one connection, run by [`LocalTasks::run`] on whatever thread polls it.
#[derive(Clone, Default)]
pub struct LocalTasks(Arc<Mutex<Queue>>);

#[derive(Default)]
struct Queue {
    /// Spawned, not yet picked up by `run`.
    new: Vec<Task>,
    /// `run`'s waker, woken when a task is spawned.
    waker: Option<Waker>,
    /// `run` returned: tasks spawned from now on are dropped.
    done: bool,
}

impl LocalTasks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, task: Task) {
        let mut q = self.lock();
        if q.done {
            return;
        }
        q.new.push(task);
        if let Some(w) = q.waker.take() {
            w.wake();
        }
    }

    async fn run<F: Future>(&self, future: F) -> F::Output {
        let mut future = pin!(future);
        let mut running = FuturesUnordered::<Task>::new();
        let out = poll_fn(|cx| {
            if let Poll::Ready(out) = future.as_mut().poll(cx) {
                return Poll::Ready(out);
            }
            loop {
                {
                    let mut q = self.lock();
                    running.extend(q.new.drain(..));
                    q.waker = Some(cx.waker().clone());
                }
                // Until every task is waiting (or done); a task that makes the connection
                // ready wakes this same future.
                while let Poll::Ready(Some(())) = running.poll_next_unpin(cx) {}
                if self.lock().new.is_empty() {
                    return Poll::Pending;
                }
            }
        })
        .await;
        let mut q = self.lock();
        q.done = true;
        q.new.clear();
        q.waker = None;
        out
    }
}

/// Serves one connection with hyper: HTTP/1.1 with keep-alive and a header-read timeout,
/// HTTP/2 with keep-alive pings and a stream limit, per `protocols`. Runs in either handler
/// mode (see the module docs).
pub async fn serve_connection<I, S, B>(
    io: I,
    service: S,
    protocols: Protocols,
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
    let exec = Exec::for_this_thread();
    let timer = Timer::new();
    let mut builder = auto::Builder::new(exec.clone());
    builder
        .http1()
        .timer(timer.clone())
        .keep_alive(true)
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(timer)
        .keep_alive_interval(H2_KEEP_ALIVE)
        .keep_alive_timeout(H2_KEEP_ALIVE)
        .max_concurrent_streams(H2_MAX_STREAMS);
    let builder = match protocols {
        Protocols::Auto => builder,
        Protocols::Http1 => builder.http1_only(),
        Protocols::Http2 => builder.http2_only(),
    };
    exec.run(builder.serve_connection(io, service)).await
}
