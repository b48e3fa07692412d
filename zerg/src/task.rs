//! Tasks on the reactor thread: [`spawn_local`] and its [`JoinHandle`].
//!
//! In thread-per-core mode ([`Engine::serve`](crate::Engine::serve)) every connection handler is
//! a task on its reactor's local executor; `spawn_local` adds more (a helper per connection, a
//! background refresh of a per-reactor cache). They run on the same thread, between the
//! reactor's completion batches, so they need not be `Send` and share `Rc`/`RefCell` state
//! freely. A task that panics ends alone; the reactor and every other task keep running.

use std::future::Future;

pub use crate::runtime::executor::{JoinError, JoinHandle};
use crate::runtime::{executor, local};

/// Spawns `future` on the current thread's reactor and returns a handle to its output.
///
/// Dropping the handle lets the task run on (detached); [`JoinHandle::abort`] cancels it. Tasks
/// still running when the engine stops are cancelled (their futures dropped on the reactor
/// thread).
///
/// # Panics
///
/// On a thread that is not a reactor thread: spawn from a handler started by
/// [`Engine::serve`](crate::Engine::serve) or from another local task; on other runtimes use
/// their own spawn (e.g. `tokio::spawn`).
pub fn spawn_local<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let reactor = local::current().unwrap_or_else(|| {
        panic!(
            "zerg_uring::spawn_local called outside a reactor thread: spawn from a handler \
             started by Engine::serve or from another task on the reactor; on other runtimes \
             use their own spawn (e.g. tokio::spawn)"
        )
    });
    executor::spawn(&reactor, future)
}

/// The index of the reactor running on the calling thread, or `None` off the reactor threads.
/// Code shared by both handler modes can use it to pick the reactor's own timers or spawn on
/// the reactor thread, and the runtime's otherwise.
pub fn current_reactor() -> Option<usize> {
    local::current().map(|r| r.index)
}
