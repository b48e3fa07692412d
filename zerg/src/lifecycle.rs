//! [`Lifecycle`]: the engine-wide state every thread of an engine shares — whether it is
//! stopping, the first failure, and how to tell each thread to stop. Threads get this narrow
//! handle rather than the engine itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::error::Error;
use crate::runtime::ReactorShared;
use crate::stats::AcceptorStatsCell;
use crate::sys::EventFd;

/// Engine-wide state shared by its threads.
pub(crate) struct Lifecycle {
    failure: Mutex<Option<Error>>,
    stopping: AtomicBool,
    acceptor_done: AtomicBool,
    reactors: OnceLock<Vec<Arc<ReactorShared>>>,
    acceptor: OnceLock<Arc<AcceptorShared>>,
    /// Runs once on stop (the engine closes its accept queue there).
    on_stop: Box<dyn Fn() + Send + Sync>,
}

impl Lifecycle {
    /// `acceptor_done` starts true when there is no acceptor thread (per-reactor accept).
    pub(crate) fn new(acceptor_done: bool, on_stop: Box<dyn Fn() + Send + Sync>) -> Self {
        Self {
            failure: Mutex::new(None),
            stopping: AtomicBool::new(false),
            acceptor_done: AtomicBool::new(acceptor_done),
            reactors: OnceLock::new(),
            acceptor: OnceLock::new(),
            on_stop,
        }
    }

    /// Records the reactors once they all run (or the ones started before a failure).
    pub(crate) fn set_reactors(&self, reactors: Vec<Arc<ReactorShared>>) {
        let _ = self.reactors.set(reactors);
    }

    pub(crate) fn reactors(&self) -> &[Arc<ReactorShared>] {
        self.reactors.get().map_or(&[], Vec::as_slice)
    }

    pub(crate) fn set_acceptor(&self, acceptor: Arc<AcceptorShared>) {
        let _ = self.acceptor.set(acceptor);
    }

    pub(crate) fn acceptor(&self) -> Option<&Arc<AcceptorShared>> {
        self.acceptor.get()
    }

    /// Records the first failure and stops the engine.
    pub(crate) fn fail(&self, err: Error) {
        {
            let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
            if f.is_none() {
                *f = Some(err);
            }
        }
        self.stop(Duration::ZERO);
    }

    /// The failure that stopped the engine, if any (taken once).
    pub(crate) fn take_failure(&self) -> Option<Error> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Stops every thread; connections get `grace` to finish.
    pub(crate) fn stop(&self, grace: Duration) {
        self.stopping.store(true, Ordering::Release);
        if let Some(a) = self.acceptor.get() {
            a.request_stop();
        } else {
            self.acceptor_done.store(true, Ordering::Release);
        }
        for r in self.reactors() {
            r.request_stop(grace);
        }
        (self.on_stop)();
    }

    /// The acceptor will not hand over any more connections.
    pub(crate) fn acceptor_done(&self) {
        self.acceptor_done.store(true, Ordering::Release);
        for r in self.reactors() {
            r.wake();
        }
    }

    /// The engine is stopping (or failed): accept errors are expected, not worth a retry.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    pub(crate) fn is_acceptor_done(&self) -> bool {
        self.acceptor_done.load(Ordering::Acquire)
    }
}

/// The part of the acceptor other threads see.
#[derive(Debug)]
pub(crate) struct AcceptorShared {
    wake: EventFd,
    stop: AtomicBool,
    pub(crate) stats: Arc<AcceptorStatsCell>,
}

impl AcceptorShared {
    pub(crate) fn new(wake: EventFd) -> Self {
        Self {
            wake,
            stop: AtomicBool::new(false),
            stats: Arc::default(),
        }
    }

    pub(crate) fn request_stop(&self) {
        if !self.stop.swap(true, Ordering::AcqRel) {
            self.wake.write();
        }
    }

    /// Wakes the acceptor so it re-checks the connection caps.
    pub(crate) fn wake(&self) {
        self.wake.write();
    }

    pub(crate) fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// The eventfd the acceptor keeps a read armed on.
    pub(crate) fn wake_fd(&self) -> std::os::fd::RawFd {
        self.wake.raw()
    }
}

/// Held by each engine thread (the acceptor, every reactor) for its whole life. When the last
/// one is dropped the paired receiver closes, which is what
/// [`Engine::stopped`](crate::Engine::stopped) waits for: an event, no polling.
#[derive(Debug, Clone)]
pub(crate) struct ThreadGuard {
    _sender: async_channel::Sender<()>,
}

impl ThreadGuard {
    /// A guard to clone into each thread, and the receiver that closes once all are gone.
    pub(crate) fn new() -> (ThreadGuard, async_channel::Receiver<()>) {
        let (tx, rx) = async_channel::bounded(1);
        (ThreadGuard { _sender: tx }, rx)
    }
}
