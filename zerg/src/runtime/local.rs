//! State of the reactor running on the current thread: which reactor it is, and the requests
//! raised by code running on the reactor thread itself (handlers in thread-per-core mode,
//! snapshots dropped there). Same-thread requests need no atomics, no queue shared with other
//! threads and no wake-up syscall: the reactor drains them before it next waits.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::task::Waker;

use super::ReactorShared;

thread_local! {
    /// Address of the `ReactorShared` of the reactor running on this thread (0 elsewhere): the
    /// cheap identity check on every request.
    static CURRENT: Cell<usize> = const { Cell::new(0) };
    /// The same reactor, for code that needs a handle to it (timers, spawning).
    static REACTOR: RefCell<Option<Arc<ReactorShared>>> = const { RefCell::new(None) };
    /// Connection tokens with pending requests.
    static TOKENS: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    /// Wakers of tasks on other threads that the reactor woke during this loop iteration: handed
    /// to their threads in one batch at its end ([`ReactorShared::relay_wakes`]).
    static DEFERRED: RefCell<Vec<Waker>> = const { RefCell::new(Vec::new()) };
}

fn id_of(shared: &ReactorShared) -> usize {
    std::ptr::from_ref(shared) as usize
}

/// Whether the calling thread is the one running `shared`'s reactor.
pub(crate) fn is_current(shared: &ReactorShared) -> bool {
    CURRENT.with(|c| c.get() == id_of(shared))
}

/// The reactor running on the calling thread, if it is a reactor thread.
pub(crate) fn current() -> Option<Arc<ReactorShared>> {
    REACTOR.with(|r| r.borrow().clone())
}

/// Marks the calling thread as running `shared`'s reactor (for the guard's lifetime).
pub(crate) fn enter(shared: &Arc<ReactorShared>) -> EnterGuard {
    CURRENT.with(|c| c.set(id_of(shared)));
    REACTOR.with(|r| *r.borrow_mut() = Some(shared.clone()));
    TOKENS.with(|t| t.borrow_mut().reserve(1024));
    DEFERRED.with(|d| d.borrow_mut().reserve(1024));
    super::executor::reserve();
    EnterGuard(())
}

#[derive(Debug)]
pub(crate) struct EnterGuard(());

impl Drop for EnterGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(0));
        REACTOR.with(|r| r.borrow_mut().take());
        TOKENS.with(|t| t.borrow_mut().clear());
        // Nothing deferred may be lost: whoever waits is told now.
        for w in DEFERRED.with(|d| std::mem::take(&mut *d.borrow_mut())) {
            w.wake();
        }
    }
}

/// Queues a connection token on this thread's reactor. Only valid when [`is_current`].
pub(crate) fn push_token(token: u64) {
    TOKENS.with(|t| t.borrow_mut().push(token));
}

/// Moves the queued tokens into `out` (which the caller has emptied).
pub(crate) fn take_tokens(out: &mut Vec<u64>) {
    TOKENS.with(|t| std::mem::swap(&mut *t.borrow_mut(), out));
}

/// Wakes `w`, a task on another thread: on a reactor thread, at the end of the loop iteration
/// together with the others woken meanwhile; elsewhere now.
pub(crate) fn defer_wake(w: Waker) {
    if CURRENT.with(Cell::get) == 0 {
        w.wake();
        return;
    }
    DEFERRED.with(|d| d.borrow_mut().push(w));
}

/// Moves the wakes deferred on this thread into `out` (which the caller has emptied).
pub(crate) fn take_deferred(out: &mut Vec<Waker>) {
    DEFERRED.with(|d| std::mem::swap(&mut *d.borrow_mut(), out));
}

/// Requests or tasks are waiting on this thread.
pub(crate) fn has_local_work() -> bool {
    TOKENS.with(|t| !t.borrow().is_empty()) || super::executor::has_runnables()
}
