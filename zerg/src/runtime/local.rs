//! State of the reactor running on the current thread: requests raised by code running on the
//! reactor thread itself (handlers in thread-per-core mode, snapshots dropped there) and the local
//! executor's run queue. Same-thread requests need no atomics, no queue shared with other threads
//! and no wake-up syscall: the reactor drains them before it next waits.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_task::{Runnable, Task};
use slab::Slab;

use super::ReactorShared;

thread_local! {
    /// Address of the `ReactorShared` of the reactor running on this thread (0 elsewhere).
    static CURRENT: Cell<usize> = const { Cell::new(0) };
    static LOCAL: RefCell<Local> = RefCell::new(Local::default());
}

#[derive(Default)]
struct Local {
    /// Connection tokens with pending requests.
    tokens: Vec<u64>,
    runnables: VecDeque<Runnable>,
    /// Handler tasks, so the reactor can cancel what is left when it exits.
    tasks: Slab<Task<()>>,
    finished: Vec<usize>,
    panics: u64,
}

fn id_of(shared: &ReactorShared) -> usize {
    std::ptr::from_ref(shared) as usize
}

/// Whether the calling thread is the one running `shared`'s reactor.
pub(crate) fn is_current(shared: &ReactorShared) -> bool {
    CURRENT.with(|c| c.get() == id_of(shared))
}

/// Marks the calling thread as running `shared`'s reactor (for the guard's lifetime).
pub(crate) fn enter(shared: &ReactorShared) -> EnterGuard {
    CURRENT.with(|c| c.set(id_of(shared)));
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        l.tokens.reserve(1024);
        l.runnables.reserve(1024);
    });
    EnterGuard(())
}

#[derive(Debug)]
pub(crate) struct EnterGuard(());

impl Drop for EnterGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(0));
    }
}

/// Queues a connection token on this thread's reactor. Only valid when [`is_current`].
pub(crate) fn push_token(token: u64) {
    LOCAL.with(|l| l.borrow_mut().tokens.push(token));
}

/// Moves the queued tokens into `out` (which the caller has emptied).
pub(crate) fn take_tokens(out: &mut Vec<u64>) {
    LOCAL.with(|l| std::mem::swap(&mut l.borrow_mut().tokens, out));
}

pub(crate) fn has_local_work() -> bool {
    LOCAL.with(|l| {
        let l = l.borrow();
        !l.tokens.is_empty() || !l.runnables.is_empty()
    })
}

pub(crate) fn push_runnable(r: Runnable) {
    LOCAL.with(|l| l.borrow_mut().runnables.push_back(r));
}

/// Runs up to `budget` ready tasks; returns how many ran.
pub(crate) fn run_tasks(budget: usize) -> usize {
    let mut ran = 0;
    while ran < budget {
        // Pop without holding the borrow while the task runs: it may spawn or push tokens.
        let Some(r) = LOCAL.with(|l| l.borrow_mut().runnables.pop_front()) else {
            break;
        };
        r.run();
        ran += 1;
    }
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        while let Some(key) = l.finished.pop() {
            if l.tasks.contains(key) {
                // The task completed; dropping its handle frees it.
                drop(l.tasks.remove(key));
            }
        }
    });
    ran
}

/// Handler panics caught so far on this thread.
pub(crate) fn panics() -> u64 {
    LOCAL.with(|l| l.borrow().panics)
}

/// Spawns `fut` on the current thread's reactor. Must be called on a reactor thread.
pub(crate) fn spawn<F>(shared: &Arc<ReactorShared>, fut: F)
where
    F: Future<Output = ()> + 'static,
{
    debug_assert!(is_current(shared));
    let key = LOCAL.with(|l| l.borrow_mut().tasks.vacant_key());
    let sched = shared.clone();
    let schedule = move |r: Runnable| sched.schedule(r);
    let fut = Guarded { fut, key };
    let (runnable, task) = async_task::spawn_local(fut, schedule);
    LOCAL.with(|l| {
        let inserted = l.borrow_mut().tasks.insert(task);
        debug_assert_eq!(inserted, key);
    });
    runnable.schedule();
}

/// Cancels every task still alive (reactor exit) and runs what that schedules, so every handler
/// future is dropped on this thread.
pub(crate) fn cancel_all(shared: &ReactorShared) {
    let tasks: Vec<Task<()>> = LOCAL.with(|l| l.borrow_mut().tasks.drain().collect());
    drop(tasks);
    for _ in 0..64 {
        shared.take_remote_runnables();
        if run_tasks(usize::MAX) == 0 && !has_local_work() {
            break;
        }
    }
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        l.tokens.clear();
        l.runnables.clear();
        l.finished.clear();
    });
}

pin_project_lite::pin_project! {
    /// A handler future that records its completion and contains its panics: a panicking
    /// handler ends its own connection (its `Connection` is dropped) and nothing else.
    struct Guarded<F> {
        #[pin]
        fut: F,
        key: usize,
    }
}

impl<F: Future<Output = ()>> Future for Guarded<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let fut = this.fut;
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(())) => {}
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".into());
                tracing::error!(panic = %msg, "connection handler panicked; its connection is closed");
                LOCAL.with(|l| l.borrow_mut().panics += 1);
            }
        }
        let key = *this.key;
        LOCAL.with(|l| l.borrow_mut().finished.push(key));
        Poll::Ready(())
    }
}
