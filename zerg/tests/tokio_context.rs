//! Crates that insist on tokio in thread-per-core handlers (`EngineOptions::tokio_context`):
//! `tokio::time`, `tokio::spawn` and `tokio::net` work with a runtime zerg owns or one the
//! application gives; without the option a tokio call fails loudly (the handler's panic closes
//! its connection only, and is counted), never hangs.

mod util;

use std::io::{Read, Write};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use util::{TestServer, options, wait_until};
use zerg_uring::{Connection, Engine, EngineOptions, TokioContext};

/// Uses tokio timers, a tokio task and a tokio socket, then answers what it saw.
async fn uses_tokio(mut conn: Connection, upstream: std::net::SocketAddr) {
    let snap = conn.read().await;
    if snap.is_closed() {
        return;
    }
    drop(snap);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let slept = start.elapsed() >= Duration::from_millis(30);
    let timed_out = tokio::time::timeout(Duration::from_millis(10), std::future::pending::<()>())
        .await
        .is_err();
    let spawned = tokio::spawn(async { 6 * 7 }).await.unwrap_or(0);
    let mut upstream = tokio::net::TcpStream::connect(upstream).await.unwrap();
    use tokio::io::AsyncReadExt;
    let mut greeting = String::new();
    upstream.read_to_string(&mut greeting).await.unwrap();
    let line = format!("{slept} {timed_out} {spawned} {greeting}\n");
    if conn.write(line.as_bytes()).is_ok() {
        let _ = conn.flush().await;
    }
}

/// The tests that count `zerg-tokio` threads run one at a time: the harness runs tests as
/// threads of one process, and one test's owned runtime is another's unexpected thread.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn greeter() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(8) {
            let _ = s.and_then(|mut s| s.write_all(b"hello"));
        }
    });
    addr
}

fn ask(server: &TestServer) -> String {
    let mut c = server.connect();
    c.write_all(b"go").unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap_or_default();
    out
}

fn serve(ctx: Option<TokioContext>) -> TestServer {
    let upstream = greeter();
    let mut opts: EngineOptions = options(1, false);
    opts.tokio_context = ctx;
    let engine = Engine::serve(opts, move |conn| uses_tokio(conn, upstream)).expect("starts");
    TestServer::from_engine(engine)
}

#[test]
fn tokio_works_in_reactor_handlers_with_an_owned_runtime() {
    let _serial = serial();
    let server = serve(Some(TokioContext::Owned));
    assert_eq!(ask(&server), "true true 42 hello\n");
    assert_eq!(util::threads_named("zerg-tokio"), 1);
    server.stop();
    assert!(wait_until(Duration::from_secs(5), || util::threads_named(
        "zerg-tokio"
    ) == 0));
}

#[test]
fn tokio_works_in_reactor_handlers_with_the_applications_runtime() {
    let _serial = serial();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = serve(Some(TokioContext::Handle(rt.handle().clone())));
    assert_eq!(ask(&server), "true true 42 hello\n");
    assert_eq!(util::threads_named("zerg-tokio"), 0);
    server.stop();
}

#[test]
fn without_the_option_a_tokio_call_fails_loudly_and_only_its_connection_closes() {
    let server = serve(None);
    // The handler panics inside tokio::time::sleep: its connection closes (no answer, EOF), the
    // panic is counted, and the server keeps serving.
    for _ in 0..2 {
        assert_eq!(ask(&server), "");
    }
    server.wait_stats(Duration::from_secs(5), "panics counted", |s| {
        s.total().handler_panics == 2
    });
    server.assert_quiescent();
    server.stop();
}

#[test]
fn join_async_stops_the_owned_runtime_without_blocking() {
    let _serial = serial();
    let upstream = greeter();
    let mut opts: EngineOptions = options(1, false);
    opts.tokio_context = Some(TokioContext::Owned);
    let engine = Engine::serve(opts, move |conn| uses_tokio(conn, upstream)).expect("starts");
    let server = TestServer::from_engine(engine);
    assert_eq!(ask(&server), "true true 42 hello\n");
    let mut server = server;
    let engine = std::sync::Arc::into_inner(server.engine.take().unwrap()).expect("one handle");
    assert_eq!(util::threads_named("zerg-tokio"), 1);
    engine.stop();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), engine.join_async())
            .await
            .expect("join_async finishes")
            .expect("no failure");
    });
    // join_async joined the owned runtime's thread too (other tests' reactors may run meanwhile,
    // so only this thread is counted).
    assert_eq!(util::threads_named("zerg-tokio"), 0);
}
