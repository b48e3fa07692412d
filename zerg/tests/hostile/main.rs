//! Hostile clients: peers that send and never read, peers that vanish while their connection is
//! paused, floods past the connection caps. Loopback only, bounded in count and time, every wait
//! a condition with a deadline.
//!
//! - `ring`: the per-connection receive bound and the ring-low policy keep a well-behaved client
//!   served while hogs hold what they may (docs/tuning.md states the guarantee).
//! - `close`: FIN, reset and half-close noticed while a receive is paused or starved, for the
//!   raw API and both adapters; descriptors and buffers come back.
//! - `caps`: at a connection cap accepting pauses (clients wait in the backlog, none is accepted
//!   and closed) and resumes at the low watermark, in both accept modes.

#[path = "../util/mod.rs"]
mod util;

mod caps;
mod close;
mod ring;

use std::sync::{Mutex, MutexGuard};

/// Tests here count the process's descriptors and buffers: run them one at a time even under
/// `cargo test`'s threads.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}
