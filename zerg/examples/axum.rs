//! axum 0.8 on zerg: a Router with a JSON route, a streamed body and a 1 MiB upload, its
//! connections being zerg `ConnectionStream`s.
//!
//! ```text
//! cargo run --release --features axum --example axum            # http://0.0.0.0:8080
//! curl http://127.0.0.1:8080/json
//! curl -d '{"name":"zerg"}' -H 'content-type: application/json' http://127.0.0.1:8080/json
//! curl 'http://127.0.0.1:8080/stream?lines=5'
//! head -c 1048576 /dev/urandom | curl --data-binary @- http://127.0.0.1:8080/upload
//! curl --http2-prior-knowledge http://127.0.0.1:8080/json     # h2c
//! cargo run --release --features axum --example axum -- --mode reactor --reactors 2
//! ```
//!
//! Routes: GET `/` "Hello, World!"; GET `/json` `{"message":"Hello, World!"}`; POST `/json`
//! `{"name":N}` → `{"message":"Hello, N!"}`; GET `/stream?lines=N` N lines (at most 100,000) as a
//! chunked body; POST `/upload` (at most 1 MiB, else 413) → `{"bytes":…,"crc32":…}`.
//!
//! - `--mode runtime` (default): `axum::serve(zerg_uring::axum::Listener, app)` on tokio,
//!   HTTP/1.1 and h2c, graceful shutdown on SIGINT/SIGTERM (connections get 1 s, then the engine
//!   closes them). `axum::serve` sets no header-read timeout (axum 0.8).
//! - `--mode reactor`: every connection is served on its reactor thread by hyper-util with the
//!   Router as its service (`TowerToHyperService`), HTTP/1.1 and h2c, HTTP/1 header-read
//!   timeout 10 s, HTTP/2 keep-alive pings; hyper's HTTP/2 streams run inside the connection's
//!   handler future, its timers on a timer-only tokio runtime on one extra thread.
//!
//! Flags: the common ones (--port, --reactors, --recv-buffer-size, --buffer-ring-entries,
//! --incremental, --mode runtime|reactor, --accept dedicated|per-reactor, --workers, --sqpoll).

mod axum_app;
mod common;
mod hyper_rt;

use std::sync::Arc;
use std::time::Duration;

use common::{Args, Mode};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use zerg_uring::{Connection, ConnectionStream, Engine};

/// How long open connections get to finish after SIGINT/SIGTERM in runtime mode.
const GRACE: Duration = Duration::from_secs(1);

/// Reactor mode: one connection, served by hyper with the Router as its service.
async fn handle(app: axum::Router, conn: Connection) {
    let peer = conn.peer_addr().ok();
    let io = TokioIo::new(ConnectionStream::new(conn));
    let service = TowerToHyperService::new(app);
    let served = hyper_rt::serve_connection(io, service, hyper_rt::Protocols::Auto).await;
    if let Err(error) = served {
        tracing::debug!(?peer, %error, "connection ended with an error");
    }
}

/// Runtime mode: `axum::serve` on the zerg listener until SIGINT/SIGTERM.
fn run_axum_serve(args: &Args, app: axum::Router) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.max(1))
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&format!("tokio runtime: {e}")));
    // Bound before the engine starts: a taken port fails before anything runs.
    let metrics = common::metrics::Endpoint::bind(args);
    rt.block_on(async {
        let mut stop = common::Stop::new();
        let engine = match Engine::listen(args.options()) {
            Ok(e) => Arc::new(e),
            Err(e) => fail(&e.to_string()),
        };
        println!(
            "listening on {} ({} reactor(s), axum::serve on tokio, {:?} accept)",
            engine.local_addr(),
            args.reactors,
            args.accept
        );
        if let Some(m) = metrics {
            m.serve(&engine);
        }
        let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
        let listener = zerg_uring::axum::Listener::new(engine.clone());
        let mut server = tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .into_future(),
        );
        tokio::select! {
            _ = stop.recv() => {}
            _ = &mut server => fail("axum::serve ended on its own"),
        }
        let _ = stopping.send(());
        if tokio::time::timeout(GRACE, &mut server).await.is_err() {
            // Connections still open after the grace period: closing them ends axum::serve.
            engine.stop();
            if tokio::time::timeout(GRACE, &mut server).await.is_err() {
                server.abort();
            }
        }
        engine.stop();
        finish(engine).await;
    });
}

/// Joins the engine once axum dropped its handle on it.
async fn finish(mut engine: Arc<Engine>) {
    let deadline = tokio::time::Instant::now() + GRACE;
    let engine = loop {
        match Arc::try_unwrap(engine) {
            Ok(e) => break e,
            Err(e) if tokio::time::Instant::now() < deadline => {
                engine = e;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(_) => fail("the engine is still shared after axum::serve ended"),
        }
    };
    match engine.join() {
        Ok(()) => println!("stopped"),
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1)
}

fn main() {
    let args = Args::parse(common::Kind::Http);
    let app = axum_app::app();
    match args.mode {
        Mode::Runtime => run_axum_serve(&args, app),
        Mode::Reactor => {
            if let Err(e) = hyper_rt::start_timer_thread() {
                fail(&format!("starting the timer thread: {e}"));
            }
            common::run(&args, args.options(), move |conn| handle(app.clone(), conn));
        }
    }
}
