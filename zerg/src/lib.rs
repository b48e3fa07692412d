//! # zerg
//!
//! TCP servers directly on Linux io_uring: one acceptor thread (multishot accept) and N reactor
//! threads, each owning an io_uring, a provided-buffer ring and its connections. Received bytes
//! are read in place from kernel-filled buffers; writes are staged and flushed with one send.
//!
//! ```text
//!   clients ──► acceptor (multishot accept) ──MSG_RING──► reactor 0 … reactor N-1
//!                                                        (multishot recv, buffer ring, send)
//!                                                                │
//!                      Engine::accept() ◄── Connection ──────────┘  (or Engine::serve: handler
//!                      handlers on any runtime                        on the reactor thread)
//! ```
//!
//! Linux 6.1 or newer (6.12 for incremental buffer consumption).
//!
//! ## Quick start
//!
//! An HTTP/1.1 "200 OK" responder with keep-alive and pipelining, handlers on tokio:
//!
//! ```no_run
//! use zerg_uring::{Engine, EngineOptions};
//!
//! const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK";
//!
//! #[tokio::main]
//! async fn main() -> zerg_uring::Result<()> {
//!     let engine = Engine::listen(EngineOptions::with_port(8080))?;
//!     while let Some(mut conn) = engine.accept().await {
//!         tokio::spawn(async move {
//!             loop {
//!                 let snapshot = conn.read().await;
//!                 if snapshot.is_closed() {
//!                     break;
//!                 }
//!                 // Count complete requests; the buffers go back to the kernel on drop.
//!                 let requests = snapshot.sequence().to_vec().windows(4)
//!                     .filter(|w| w == b"\r\n\r\n").count();
//!                 drop(snapshot);
//!                 for _ in 0..requests {
//!                     conn.write(RESPONSE).expect("fits the write buffer");
//!                 }
//!                 if conn.flush().await.is_err() {
//!                     break;
//!                 }
//!             }
//!         });
//!     }
//!     engine.join_async().await // never the blocking `join` in async code
//! }
//! ```
//!
//! ## Where things are
//!
//! - [`Engine`]: start ([`Engine::listen`], [`Engine::serve`] — with [`EngineOptions`], an
//!   address, or a listening `std::net::TcpListener`), [`Engine::accept`], stop
//!   ([`shutdown`](Engine::shutdown), [`stop`](Engine::stop)), wait ([`join`](Engine::join)
//!   from plain threads, [`join_async`](Engine::join_async) / [`stopped`](Engine::stopped) from
//!   async code), [`Engine::stats`].
//! - [`Connection`]: [`read`](Connection::read) → [`ReadSnapshot`] (byte slices, a
//!   [`Sequence`], or [`RecvBuffer`]s one by one); [`write`](Connection::write) /
//!   [`span_mut`](Connection::span_mut) + [`commit`](Connection::commit) /
//!   [`std::io::Write`] / [`bytes::BufMut`], then [`flush`](Connection::flush).
//! - Adapters: [`ConnectionReader`] (zero-copy reads with partial consumption) and
//!   `ConnectionStream` (`tokio::io` / `futures_io` `AsyncRead` + `AsyncWrite`, for hyper and
//!   tokio-util codecs; features `tokio` / `futures-io`).
//! - axum: `axum::Listener` (feature `axum`) for `axum::serve` on zerg connections.
//! - Outbound connections: [`connect`] / [`connect_timeout`] / [`adopt`] on the calling task's
//!   reactor (thread-per-core handlers), [`Engine::connect`] / [`Engine::adopt`] from anywhere;
//!   the result is a [`Connection`] like an accepted one.
//! - Listening: an address ([`EngineOptions::bind`], `From<SocketAddr>`), or sockets made
//!   elsewhere ([`EngineOptions::listener`]: systemd socket activation, hot restarts, several
//!   addresses).
//! - Observability: [`Engine::stats`] / [`StatsHandle`] (counters per reactor),
//!   `prometheus::EngineCollector` (feature `prometheus`), and [`tracing`] events inside a
//!   `reactor` span per reactor thread and an `acceptor` span.
//! - Configuration: [`EngineOptions`], [`ReactorConfig`], [`AcceptorConfig`], [`IpVersion`],
//!   [`AcceptMode`].
//! - Errors: one [`Error`] type; `?` converts `std::io::Error` into it and back.
//! - Futures: every async method says what is lost if its future is dropped early ("Cancel
//!   safety"); [`future`] has the summary.
//!
//! TCP only: Unix-domain sockets are not supported (see the README's Limitations). The library
//! never prints; it logs through [`tracing`].
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unsafe_code)]
#![warn(missing_docs)]
#![cfg(target_os = "linux")]

mod acceptor;
mod admission;
mod buf_ring;
mod config;
mod conn;
mod engine;
mod error;
pub mod future;
#[cfg(feature = "hyper")]
pub mod hyper;
mod io;
mod lifecycle;
mod log_throttle;
mod net;
#[cfg(feature = "prometheus")]
pub mod prometheus;
mod reactor;
mod ring;
mod runtime;
mod stats;
mod sys;
pub mod task;
pub mod time;
#[cfg(feature = "tokio-context")]
mod tokio_context;

#[cfg(feature = "tokio-context")]
pub use config::TokioContext;
pub use config::{AcceptMode, AcceptorConfig, EngineOptions, IpVersion, ReactorConfig};
pub use conn::{
    Connection, FlushState, ReadSnapshot, RecvBuffer, Segments, Sequence, ShutdownState,
};
pub use engine::Engine;
pub use error::{CloseReason, ConfigError, Error, Result};
#[cfg(any(feature = "tokio", feature = "futures-io", feature = "hyper"))]
pub use io::ConnectionStream;
pub use io::{ConnectionReader, ReaderResult};
pub use net::{adopt, connect, connect_timeout};
pub use ring::token::ConnectionId;

/// axum on zerg (feature `axum`): [`Listener`](axum::Listener) makes an [`Engine`] an
/// `axum::serve::Listener`.
#[cfg(feature = "axum")]
pub mod axum {
    pub use crate::io::axum::Listener;
}
pub use stats::{AcceptorStats, EngineStats, ReactorStats, StatsHandle};
pub use task::{JoinError, JoinHandle, spawn_local};

/// The README's code samples, compiled as doctests. `zerg/README.md` is a symlink to the
/// repository's README; in the published package it is the README itself, at the package root.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
