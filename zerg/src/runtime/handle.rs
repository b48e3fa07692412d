//! [`ReactorShared`]: the part of a reactor other threads (and connection handles) see — its
//! request inbox, its wake-up line, its receive pool and its published counters.
//!
//! Requests from the reactor's own thread go to the thread-local queues of
//! [`local`](super::local) (no atomics, no syscall); requests from other threads go to the
//! lock-free `remote` queue and wake the reactor through the [`Notifier`] only when it sleeps.

use std::cell::RefCell;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::Duration;

use async_task::Runnable;
use crossbeam_queue::ArrayQueue;

use super::relay::Relay;
use super::timers::{Clock, Timers};
use super::wake::Notifier;
use super::{executor, local};
use crate::buf_ring::BufPool;
use crate::config::ReactorConfig;
use crate::stats::ReactorStatsCell;
use crate::sys::EventFd;

/// The part of a reactor other threads see.
pub(crate) struct ReactorShared {
    pub(crate) index: usize,
    pub(crate) pool: Arc<BufPool>,
    /// The reactor ring's descriptor, for MSG_RING hand-offs.
    pub(crate) ring_fd: RawFd,
    /// The ring has a file table: hand-offs may pass direct descriptors into it.
    pub(crate) direct: bool,
    pub(crate) max_write_buffer: usize,
    /// Most pieces one connection may hold before its receive pauses, and the bytes per
    /// receive buffer: what a reader that never lets go can reach.
    pub(crate) max_held: u32,
    pub(crate) buf_size: u32,
    notifier: Notifier<EventFd>,
    /// Tokens of connections with requests, from other threads. Each connection is queued at most
    /// once at a time, so the capacity (max connections + slack) is never exceeded in practice;
    /// `overflow` catches the rest.
    remote: ArrayQueue<u64>,
    overflow: Mutex<Vec<u64>>,
    remote_runnables: Mutex<Vec<Runnable>>,
    stop: Mutex<Option<Duration>>,
    /// Something was put in `overflow`, `remote_runnables` or `stop`: spares the reactor three
    /// locks per loop iteration, and tells its pre-sleep check there is work.
    hint: AtomicBool,
    /// The reactor's clock and its application timers.
    pub(crate) clock: Clock,
    pub(crate) timers: Timers,
    /// A read timeout is configured: handles stamp when a read starts waiting.
    pub(crate) stamp_reads: bool,
    pub(crate) stats: Arc<ReactorStatsCell>,
    /// Wake-ups of tasks on other threads, handed over in batches.
    pub(crate) relay: Relay<Waker>,
    exited: AtomicBool,
}

thread_local! {
    /// Scratch space of [`ReactorShared::deliver_wakes`] on this thread.
    static RELAY_BUF: RefCell<Vec<Waker>> = const { RefCell::new(Vec::new()) };
}

impl ReactorShared {
    pub(crate) fn new(
        index: usize,
        pool: Arc<BufPool>,
        ring_fd: RawFd,
        direct: bool,
        wake: EventFd,
        config: &ReactorConfig,
    ) -> Self {
        Self {
            index,
            pool,
            ring_fd,
            direct,
            max_write_buffer: config.max_write_buffer,
            max_held: config.effective_max_buffers_per_connection(),
            buf_size: config.recv_buffer_size,
            notifier: Notifier::new(wake),
            remote: ArrayQueue::new(config.max_connections_per_reactor as usize + 64),
            overflow: Mutex::new(Vec::new()),
            remote_runnables: Mutex::new(Vec::new()),
            stop: Mutex::new(None),
            hint: AtomicBool::new(false),
            clock: Clock::new(),
            timers: Timers::default(),
            stamp_reads: config.read_timeout.is_some(),
            stats: Arc::default(),
            relay: Relay::new(),
            exited: AtomicBool::new(false),
        }
    }

    /// Queues a connection token for the reactor (same thread: no atomics, no syscall).
    pub(crate) fn enqueue(&self, token: u64) {
        if local::is_current(self) {
            local::push_token(token);
            return;
        }
        if self.exited.load(Ordering::Acquire) {
            return;
        }
        if let Err(t) = self.remote.push(token) {
            self.overflow
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(t);
            self.hint.store(true, Ordering::Relaxed);
        }
        self.notifier.notify();
    }

    /// Schedules a local task woken from any thread.
    pub(crate) fn schedule(&self, runnable: Runnable) {
        if local::is_current(self) {
            executor::push_runnable(runnable);
            return;
        }
        let mut q = self
            .remote_runnables
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if self.exited.load(Ordering::Acquire) {
            // The reactor is gone; the task was cancelled when it exited. Running or dropping the
            // runnable here would touch a future that belongs to that thread.
            std::mem::forget(runnable);
            return;
        }
        q.push(runnable);
        drop(q);
        self.hint.store(true, Ordering::Relaxed);
        self.notifier.notify();
    }

    /// Moves the tasks woken from other threads to this thread's run queue (reactor thread only).
    pub(crate) fn take_remote_runnables(&self) {
        let taken = std::mem::take(
            &mut *self
                .remote_runnables
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for r in taken {
            executor::push_runnable(r);
        }
    }

    /// Asks the reactor to stop: connections get `grace` to finish, then are closed.
    pub(crate) fn request_stop(&self, grace: Duration) {
        {
            let mut s = self.stop.lock().unwrap_or_else(|p| p.into_inner());
            *s = Some(match *s {
                Some(g) => g.min(grace),
                None => grace,
            });
        }
        self.hint.store(true, Ordering::Relaxed);
        self.notifier.notify();
    }

    /// Wakes the reactor so it re-checks engine-wide state.
    pub(crate) fn wake(&self) {
        self.hint.store(true, Ordering::Relaxed);
        self.notifier.notify();
    }

    pub(crate) fn has_exited(&self) -> bool {
        self.exited.load(Ordering::Acquire)
    }

    /// Wakes the tasks whose wake-ups the reactor handed over in a batch, from the calling thread
    /// (a handle call: one atomic load when there are none).
    #[inline]
    pub(crate) fn deliver_wakes(&self) {
        if self.relay.is_pending() {
            self.deliver_wakes_now();
        }
    }

    #[inline(never)]
    fn deliver_wakes_now(&self) {
        RELAY_BUF.with(|b| {
            // Taken out, so a wake that ends up here again finds an empty scratch vector.
            let mut buf = std::mem::take(&mut *b.borrow_mut());
            self.relay.drain(&mut buf);
            *b.borrow_mut() = buf;
        });
    }
}

/// The reactor thread's side of the inbox.
impl ReactorShared {
    /// Moves the connection tokens queued by other threads into `out`. Returns whether a producer
    /// raised the hint (then [`take_stop`](Self::take_stop) and
    /// [`take_remote_runnables`](Self::take_remote_runnables) have something to look at).
    pub(crate) fn drain_remote(&self, out: &mut Vec<u64>) -> bool {
        while let Some(t) = self.remote.pop() {
            out.push(t);
        }
        // The mutex-protected inboxes are looked at only when a producer flagged them.
        let hinted = self.hint.swap(false, Ordering::Acquire);
        if hinted {
            out.append(&mut self.overflow.lock().unwrap_or_else(|p| p.into_inner()));
        }
        hinted
    }

    /// The stop request, if one arrived since the last call.
    pub(crate) fn take_stop(&self) -> Option<Duration> {
        self.stop.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Work from other threads is waiting (checked after [`prepare_sleep`](Self::prepare_sleep)).
    pub(crate) fn has_remote_work(&self) -> bool {
        !self.remote.is_empty() || self.hint.load(Ordering::Relaxed)
    }

    /// The reactor is about to block: from here on producers signal the eventfd. Check
    /// [`has_remote_work`](Self::has_remote_work) once more afterwards.
    pub(crate) fn prepare_sleep(&self) {
        self.notifier.prepare_sleep();
    }

    /// The reactor is awake again (or decided not to block).
    pub(crate) fn woke(&self) {
        self.notifier.woke();
    }

    /// The eventfd read completed: call before draining.
    pub(crate) fn wake_consumed(&self) {
        self.notifier.reset();
    }

    /// The reactor exited: requests from now on are dropped (their connections are gone).
    pub(crate) fn mark_exited(&self) {
        self.exited.store(true, Ordering::Release);
    }
}
