//! Timers driven by the reactor's own loop: [`sleep`], [`sleep_until`], [`timeout`] and
//! [`interval`], for handlers in thread-per-core mode ([`Engine::serve`](crate::Engine::serve))
//! and tasks from [`spawn_local`](crate::spawn_local).
//!
//! There is no timer thread and no syscall per timer: each reactor keeps its timers in one
//! ordered map, checks the earliest deadline once per loop iteration (one clock read), and lets
//! it bound its wait in the kernel when there is nothing else to do. An idle reactor wakes at
//! the next deadline and not before. Resolution is one millisecond: a timer never fires early,
//! and fires within about a millisecond of its deadline when the reactor is not busy.
//!
//! Dropping a [`Sleep`] (or a [`Timeout`], or an [`Interval`]) cancels its timer.
//!
//! # On other threads
//!
//! A timer belongs to the reactor of the thread that creates it. Creating one on a thread that
//! is not a reactor thread panics with a message naming the fix: use your runtime's timers there
//! (e.g. `tokio::time` in handlers that run on tokio), or run the code on a reactor. A [`Sleep`]
//! created on a reactor thread may be polled from another thread (it is `Send`); it still fires
//! on time. If its reactor stops, a pending sleep completes at once rather than never.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::runtime::timers::TimerKey;
use crate::runtime::{ReactorShared, local};

fn current_reactor(what: &str) -> Arc<ReactorShared> {
    local::current().unwrap_or_else(|| {
        panic!(
            "zerg_uring::time::{what} called outside a reactor thread: zerg timers run on the \
             reactor's loop. Use them in handlers started by Engine::serve or in tasks from \
             zerg_uring::spawn_local; on other runtimes use that runtime's timers (e.g. \
             tokio::time)"
        )
    })
}

/// Waits until `duration` has passed.
///
/// # Cancel safety
///
/// Cancel-safe: dropping the [`Sleep`] cancels its timer; nothing else is lost.
///
/// # Panics
///
/// Outside a reactor thread (see the [module docs](self)).
pub fn sleep(duration: Duration) -> Sleep {
    let reactor = current_reactor("sleep");
    Sleep::new(reactor, Instant::now() + duration)
}

/// Waits until `deadline`.
///
/// # Cancel safety
///
/// As for [`sleep`].
///
/// # Panics
///
/// Outside a reactor thread (see the [module docs](self)).
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep::new(current_reactor("sleep_until"), deadline)
}

/// Future of [`sleep`] and [`sleep_until`].
///
/// # Cancel safety
///
/// Dropping it cancels the timer; nothing else is lost.
#[must_use = "futures do nothing unless polled"]
pub struct Sleep {
    deadline: Instant,
    key: Option<TimerKey>,
    reactor: Arc<ReactorShared>,
}

impl Sleep {
    fn new(reactor: Arc<ReactorShared>, deadline: Instant) -> Self {
        Sleep {
            deadline,
            key: None,
            reactor,
        }
    }

    /// When the sleep ends.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether the deadline has passed.
    pub fn is_elapsed(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// Moves the deadline (the timer is registered again on the next poll).
    pub fn reset(&mut self, deadline: Instant) {
        self.cancel();
        self.deadline = deadline;
    }

    fn cancel(&mut self) {
        if let Some(key) = self.key.take() {
            self.reactor.timers.cancel(key);
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if Instant::now() >= this.deadline || this.reactor.has_exited() {
            this.cancel();
            return Poll::Ready(());
        }
        let ms = this.reactor.clock.ceil_ms(this.deadline);
        let reg = this.reactor.timers.register(this.key, ms, cx.waker());
        this.key = Some(reg.key);
        if reg.wakes && !local::is_current(&this.reactor) {
            // The reactor sleeps past this deadline: make it look again.
            this.reactor.wake();
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.cancel();
    }
}

impl fmt::Debug for Sleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sleep")
            .field("deadline", &self.deadline)
            .field("reactor", &self.reactor.index)
            .finish()
    }
}

/// Runs `future` with a time limit: its output, or [`Elapsed`] if `duration` passed first (the
/// future is then dropped).
///
/// # Cancel safety
///
/// As cancel-safe as `future`: dropping the [`Timeout`] — or its expiry — drops `future`
/// mid-way, with that future's own consequences (none for [`Connection::read`]; an unknown
/// prefix staged for [`Connection::write_all`]).
///
/// [`Connection::read`]: crate::Connection::read
/// [`Connection::write_all`]: crate::Connection::write_all
///
/// # Panics
///
/// Outside a reactor thread (see the [module docs](self)).
pub fn timeout<F: Future>(duration: Duration, future: F) -> Timeout<F> {
    Timeout {
        future,
        sleep: Sleep::new(current_reactor("timeout"), Instant::now() + duration),
    }
}

/// Like [`timeout`], with a deadline.
///
/// # Cancel safety
///
/// As for [`timeout`].
///
/// # Panics
///
/// Outside a reactor thread (see the [module docs](self)).
pub fn timeout_at<F: Future>(deadline: Instant, future: F) -> Timeout<F> {
    Timeout {
        future,
        sleep: Sleep::new(current_reactor("timeout_at"), deadline),
    }
}

pin_project_lite::pin_project! {
    /// Future of [`timeout`].
    ///
    /// # Cancel safety
    ///
    /// As cancel-safe as the future it wraps.
    #[must_use = "futures do nothing unless polled"]
    #[derive(Debug)]
    pub struct Timeout<F> {
        #[pin]
        future: F,
        sleep: Sleep,
    }
}

impl<F> Timeout<F> {
    /// The wrapped future.
    pub fn into_inner(self) -> F {
        self.future
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.future.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        match Pin::new(this.sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed(()))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The time limit of a [`timeout`] passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed(());

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl std::error::Error for Elapsed {}

impl From<Elapsed> for std::io::Error {
    fn from(e: Elapsed) -> Self {
        std::io::Error::new(std::io::ErrorKind::TimedOut, e)
    }
}

/// Ticks every `period`, the first tick at once.
///
/// A tick that comes late (the reactor was busy) is not made up for: the next one is due one
/// `period` after the late one, so ticks never come in a burst.
///
/// # Panics
///
/// If `period` is zero, or outside a reactor thread (see the [module docs](self)).
pub fn interval(period: Duration) -> Interval {
    interval_at(Instant::now(), period)
}

/// Like [`interval`], the first tick at `start`.
///
/// # Panics
///
/// If `period` is zero, or outside a reactor thread (see the [module docs](self)).
pub fn interval_at(start: Instant, period: Duration) -> Interval {
    assert!(
        !period.is_zero(),
        "zerg_uring::time::interval: period must be non-zero"
    );
    Interval {
        sleep: Sleep::new(current_reactor("interval"), start),
        period,
    }
}

/// Ticks of [`interval`].
///
/// # Cancel safety
///
/// [`tick`](Self::tick) is cancel-safe: a tick is consumed only when it is returned. Dropping
/// the `Interval` cancels its timer.
#[derive(Debug)]
pub struct Interval {
    sleep: Sleep,
    period: Duration,
}

impl Interval {
    /// Waits for the next tick; returns when it was due.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a tick is consumed only when this returns it.
    pub async fn tick(&mut self) -> Instant {
        std::future::poll_fn(|cx| self.poll_tick(cx)).await
    }

    /// Poll-style [`tick`](Self::tick).
    pub fn poll_tick(&mut self, cx: &mut Context<'_>) -> Poll<Instant> {
        match Pin::new(&mut self.sleep).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                let due = self.sleep.deadline();
                let now = Instant::now();
                let next = due + self.period;
                self.sleep
                    .reset(if next > now { next } else { now + self.period });
                Poll::Ready(due)
            }
        }
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }
}
