//! The local executor of a reactor thread: connection handlers of thread-per-core mode and tasks
//! from [`spawn_local`](crate::spawn_local) run here, between the reactor's completion batches.
//!
//! Every task is owned by this thread's task table until it finishes, so the reactor can cancel
//! (and drop, on its own thread) whatever is left when it exits. A [`JoinHandle`] is a separate
//! small object that receives the task's output; dropping it detaches the task.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use async_task::{Runnable, Task};
use slab::Slab;

use super::ReactorShared;

thread_local! {
    static EXEC: RefCell<Executor> = RefCell::new(Executor::default());
}

#[derive(Default)]
struct Executor {
    runnables: VecDeque<Runnable>,
    /// Every live task, so the reactor can cancel what is left when it exits.
    tasks: Slab<Task<()>>,
    finished: Vec<usize>,
    panics: u64,
}

pub(super) fn reserve() {
    EXEC.with(|e| e.borrow_mut().runnables.reserve(1024));
}

pub(super) fn has_runnables() -> bool {
    EXEC.with(|e| !e.borrow().runnables.is_empty())
}

pub(crate) fn push_runnable(r: Runnable) {
    EXEC.with(|e| e.borrow_mut().runnables.push_back(r));
}

/// Runs up to `budget` ready tasks; returns how many ran.
pub(crate) fn run_tasks(budget: usize) -> usize {
    let mut ran = 0;
    while ran < budget {
        // Pop without holding the borrow while the task runs: it may spawn or push tokens.
        let Some(r) = EXEC.with(|e| e.borrow_mut().runnables.pop_front()) else {
            break;
        };
        r.run();
        ran += 1;
    }
    let finished: Vec<Task<()>> = EXEC.with(|e| {
        let mut e = e.borrow_mut();
        let mut done = Vec::new();
        while let Some(key) = e.finished.pop() {
            if e.tasks.contains(key) {
                done.push(e.tasks.remove(key));
            }
        }
        done
    });
    // The tasks completed; dropping their handles (outside the borrow) frees them.
    drop(finished);
    ran
}

/// Handler panics caught so far on this thread.
pub(crate) fn panics() -> u64 {
    EXEC.with(|e| e.borrow().panics)
}

/// Spawns `fut` on the current thread's reactor, detached (connection handlers).
pub(crate) fn spawn_detached<F>(shared: &Arc<ReactorShared>, fut: F)
where
    F: Future<Output = ()> + 'static,
{
    spawn_with(shared, fut, None);
}

/// Spawns `fut` on the current thread's reactor and returns a handle to its output.
pub(crate) fn spawn<F>(shared: &Arc<ReactorShared>, fut: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let join = Rc::new(RefCell::new(JoinState {
        result: None,
        waker: None,
    }));
    let key = spawn_with(shared, fut, Some(join.clone()));
    JoinHandle { key, join }
}

fn spawn_with<F>(
    shared: &Arc<ReactorShared>,
    fut: F,
    join: Option<Rc<RefCell<JoinState<F::Output>>>>,
) -> usize
where
    F: Future + 'static,
    F::Output: 'static,
{
    debug_assert!(super::local::is_current(shared));
    let key = EXEC.with(|e| e.borrow().tasks.vacant_key());
    let sched = shared.clone();
    let schedule = move |r: Runnable| sched.schedule(r);
    let fut = Guarded {
        fut,
        key,
        join,
        done: false,
    };
    let (runnable, task) = async_task::spawn_local(fut, schedule);
    EXEC.with(|e| {
        let inserted = e.borrow_mut().tasks.insert(task);
        debug_assert_eq!(inserted, key);
    });
    runnable.schedule();
    key
}

/// Cancels every task still alive (reactor exit) and runs what that schedules, so every future
/// is dropped on this thread.
pub(crate) fn cancel_all(shared: &ReactorShared) {
    let tasks: Vec<Task<()>> = EXEC.with(|e| e.borrow_mut().tasks.drain().collect());
    drop(tasks);
    for _ in 0..64 {
        shared.take_remote_runnables();
        if run_tasks(usize::MAX) == 0 && !has_runnables() {
            break;
        }
    }
    EXEC.with(|e| {
        let mut e = e.borrow_mut();
        e.runnables.clear();
        e.finished.clear();
    });
}

/// Cancels the task in slot `key` (it is still running: its output was not delivered).
fn abort(key: usize) {
    let task = EXEC.with(|e| e.borrow_mut().tasks.try_remove(key));
    // Dropping the task cancels it; its future is dropped when the executor runs it once more.
    drop(task);
}

struct JoinState<T> {
    result: Option<Result<T, JoinError>>,
    waker: Option<Waker>,
}

impl<T> JoinState<T> {
    fn complete(&mut self, result: Result<T, JoinError>) {
        self.result = Some(result);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

pin_project_lite::pin_project! {
    /// A task's future: records its completion, contains its panics (a panicking handler ends
    /// its own connection and nothing else) and hands its output to the join handle.
    struct Guarded<F: Future> {
        #[pin]
        fut: F,
        key: usize,
        join: Option<Rc<RefCell<JoinState<F::Output>>>>,
        done: bool,
    }

    impl<F: Future> PinnedDrop for Guarded<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !*this.done
                && let Some(join) = this.join
            {
                join.borrow_mut().complete(Err(JoinError::Cancelled));
            }
        }
    }
}

impl<F: Future> Future for Guarded<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let fut = this.fut;
        let result = match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(out)) => Ok(out),
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".into());
                if msg.contains("Tokio") {
                    tracing::error!(
                        panic = %msg,
                        "task on the reactor thread panicked: it called tokio, which needs a tokio \
                         runtime context; use zerg_uring::time / spawn_local / connect, or set \
                         EngineOptions::tokio_context (feature tokio-context)"
                    );
                } else {
                    tracing::error!(panic = %msg, "task on the reactor thread panicked");
                }
                EXEC.with(|e| e.borrow_mut().panics += 1);
                Err(JoinError::Panicked(msg))
            }
        };
        *this.done = true;
        if let Some(join) = this.join {
            join.borrow_mut().complete(result);
        }
        let key = *this.key;
        EXEC.with(|e| e.borrow_mut().finished.push(key));
        Poll::Ready(())
    }
}

/// Why a task spawned with [`spawn_local`](crate::spawn_local) produced no output.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JoinError {
    /// The task was aborted ([`JoinHandle::abort`]) or its reactor stopped first.
    Cancelled,
    /// The task panicked; the panic message (the panic is contained: the reactor and every
    /// other task keep running).
    Panicked(String),
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::Cancelled => f.write_str("task was cancelled"),
            JoinError::Panicked(msg) => write!(f, "task panicked: {msg}"),
        }
    }
}

impl std::error::Error for JoinError {}

/// Handle to a task spawned with [`spawn_local`](crate::spawn_local): await it for the task's
/// output, [`abort`](Self::abort) it, or drop it to let the task run on, detached.
///
/// Like the task, the handle belongs to its reactor thread (it is not `Send`).
///
/// # Cancel safety
///
/// Cancel-safe: dropping the handle (or a wait on it, in a `select!`) does not cancel the task,
/// which runs on, detached; a later poll of the same handle still gets the output. Only
/// [`abort`](Self::abort) cancels the task.
pub struct JoinHandle<T> {
    key: usize,
    join: Rc<RefCell<JoinState<T>>>,
}

impl<T> JoinHandle<T> {
    /// Cancels the task: its future is dropped (on the reactor thread, before the reactor next
    /// waits) and awaiting this handle yields [`JoinError::Cancelled`]. Does nothing if the task
    /// already finished.
    pub fn abort(&self) {
        if self.join.borrow().result.is_none() {
            abort(self.key);
        }
    }

    /// Whether the task finished (completed, panicked or was cancelled).
    pub fn is_finished(&self) -> bool {
        self.join.borrow().result.is_some()
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the wait leaves the task running; a later poll of the same handle
    /// still gets the output.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut join = self.join.borrow_mut();
        match join.result.take() {
            Some(result) => Poll::Ready(result),
            None => {
                match &mut join.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    slot => *slot = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}
