//! What runs on a reactor thread besides the event loop itself, and how other threads reach it:
//! the cross-thread inbox and wake-up line ([`ReactorShared`]), the thread-local context
//! (same-thread requests), the batched hand-off of wake-ups to other threads, the local executor, and the reactor's clock and application timers.

pub(crate) mod executor;
pub(crate) mod handle;
pub(crate) mod local;
pub(crate) mod relay;
pub(crate) mod timers;
pub(crate) mod wake;

pub(crate) use handle::ReactorShared;
