//! [`Listener`]: zerg connections for `axum::serve`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use super::ConnectionStream;
use crate::{Engine, EngineOptions, Result};

/// An [`Engine`] as an `axum::serve::Listener`: `axum::serve(listener, router)` serves every
/// connection the engine accepts, each a [`ConnectionStream`] on the tokio runtime axum runs on
/// (runtime mode; an engine started with [`Engine::serve`] accepts nothing here).
///
/// Once the engine stops, `accept` never resolves (axum's listeners cannot report an end): stop
/// axum with `with_graceful_shutdown`, then the engine.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// use axum::{Router, routing::get};
/// use zerg_uring::{Engine, EngineOptions};
///
/// #[tokio::main]
/// async fn main() -> zerg_uring::Result<()> {
///     let engine = Arc::new(Engine::listen(EngineOptions::with_port(8080))?);
///     let app = Router::new().route("/", get(|| async { "Hello, World!" }));
///     axum::serve(zerg_uring::axum::Listener::new(engine.clone()), app)
///         .with_graceful_shutdown(async { tokio::signal::ctrl_c().await.unwrap_or(()) })
///         .await
///         .expect("axum::serve does not fail");
///     // axum dropped the listener: this is the last handle on the engine.
///     engine.shutdown(Duration::from_secs(1));
///     match Arc::into_inner(engine) {
///         Some(engine) => engine.join_async().await,
///         None => Ok(()),
///     }
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Listener {
    engine: Arc<Engine>,
}

impl Listener {
    /// A listener taking its connections from `engine` (started with [`Engine::listen`]).
    pub fn new(engine: Arc<Engine>) -> Listener {
        Listener { engine }
    }

    /// Starts an engine with [`Engine::listen`] and wraps it; `options` is anything
    /// [`Engine::listen`] takes (an [`EngineOptions`], an address, a `TcpListener`).
    ///
    /// # Errors
    ///
    /// As for [`Engine::listen`].
    pub fn bind(options: impl Into<EngineOptions>) -> Result<Listener> {
        Ok(Listener::new(Arc::new(Engine::listen(options)?)))
    }

    /// The engine, to read its stats or stop it.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }
}

impl ::axum::serve::Listener for Listener {
    type Io = ConnectionStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (ConnectionStream, SocketAddr) {
        loop {
            let Some(conn) = self.engine.accept().await else {
                tracing::debug!("engine stopped: the axum listener accepts nothing more");
                std::future::pending::<()>().await;
                continue;
            };
            match conn.peer_addr() {
                Ok(addr) => return (ConnectionStream::new(conn), addr),
                // The peer left before it was served (`getpeername` fails once it reset).
                Err(e) => tracing::debug!(error = %e, "accepted connection already gone"),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.engine.local_addr())
    }
}
