//! What runs on a reactor thread besides the event loop itself, and how other threads reach it:
//! the cross-thread inbox and wake-up line ([`ReactorShared`]), and the thread-local context
//! (same-thread requests, the local executor) that code running on the reactor thread uses.

pub(crate) mod handle;
pub(crate) mod local;
pub(crate) mod wake;

pub(crate) use handle::ReactorShared;
