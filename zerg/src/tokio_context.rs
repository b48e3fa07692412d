//! The tokio runtime context of thread-per-core handlers ([`TokioContext`]): resolving the
//! option into a runtime handle every reactor thread enters, and the runtime zerg owns for
//! [`TokioContext::Owned`].

use std::thread::JoinHandle;

use tokio::runtime::{Handle, RuntimeFlavor};

use crate::config::TokioContext;
use crate::error::{Error, Result};
use crate::lifecycle::ThreadGuard;

/// A current-thread runtime on a thread of its own, driven until [`stop`](Self::stop).
pub(crate) struct OwnedRuntime {
    stop: std::sync::Arc<tokio::sync::Notify>,
    thread: Option<JoinHandle<()>>,
    /// Closes when the runtime's thread is done (it holds the guard).
    exited: async_channel::Receiver<()>,
}

impl OwnedRuntime {
    fn start() -> Result<(Handle, OwnedRuntime)> {
        let stop = std::sync::Arc::new(tokio::sync::Notify::new());
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let notified = stop.clone();
        let (guard, exited) = ThreadGuard::new();
        let thread = std::thread::Builder::new()
            .name("zerg-tokio".into())
            .spawn(move || {
                let _guard = guard;
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(Ok(rt.handle().clone()));
                rt.block_on(notified.notified());
            })
            .map_err(|e| Error::io("spawn thread zerg-tokio", e))?;
        let handle = match rx.recv() {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(Error::io("build the tokio runtime for tokio_context", e));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(Error::io(
                    "start zerg-tokio",
                    std::io::Error::other("the tokio runtime thread exited during setup"),
                ));
            }
        };
        Ok((
            handle,
            OwnedRuntime {
                stop,
                thread: Some(thread),
                exited,
            },
        ))
    }

    /// Stops the runtime (its remaining tasks are dropped) and joins its thread.
    pub(crate) fn stop(&mut self) {
        self.stop.notify_one();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the zerg-tokio runtime thread panicked");
        }
    }
}

impl OwnedRuntime {
    /// [`stop`](Self::stop) without blocking: waits for the thread to finish, then joins it.
    pub(crate) async fn stop_async(mut self) {
        self.stop.notify_one();
        let _ = self.exited.recv().await;
        self.stop();
    }
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The handle reactors enter, and the runtime zerg started for it, if any.
pub(crate) fn resolve(ctx: &TokioContext) -> Result<(Handle, Option<OwnedRuntime>)> {
    match ctx {
        TokioContext::Owned => {
            let (handle, owned) = OwnedRuntime::start()?;
            Ok((handle, Some(owned)))
        }
        TokioContext::Handle(handle) => {
            if handle.runtime_flavor() == RuntimeFlavor::CurrentThread {
                tracing::warn!(
                    "tokio_context: a current-thread runtime runs its timers and sockets only \
                     while its block_on runs; if nothing drives it, tokio timers and sockets in \
                     reactor-mode handlers wait forever (use a multi-thread runtime's handle or \
                     TokioContext::Owned)"
                );
            }
            Ok((handle.clone(), None))
        }
    }
}
