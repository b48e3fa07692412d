//! Test harness: real engines on 127.0.0.1:0, handlers in either mode, blocking std clients.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zerg::{Connection, Engine, EngineOptions, ReactorConfig};

/// Where handlers run in a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// On a tokio runtime (`Engine::listen` + `accept`).
    Runtime,
    /// On the reactor threads (`Engine::serve`).
    Reactor,
}

/// Options for a loopback engine with small buffers.
pub fn options(reactors: usize, incremental: bool) -> EngineOptions {
    let mut rc = ReactorConfig::default();
    rc.buffer_ring_entries = 256;
    rc.recv_buffer_size = 4096;
    rc.ring_entries = 256;
    rc.incremental_buffer_consumption = incremental;
    let mut o = EngineOptions::with_port(0);
    o.ip = "127.0.0.1".parse().unwrap();
    o.reactor_count = reactors;
    o.reactor_configs = vec![rc];
    o
}

/// A running engine plus, in runtime mode, the tokio runtime driving its handlers.
pub struct TestServer {
    pub engine: Option<Arc<Engine>>,
    pub addr: SocketAddr,
    rt: Option<tokio::runtime::Runtime>,
}

impl TestServer {
    /// Starts `opts` with `handler` run for every connection in `mode`.
    pub fn start<H, F>(mode: Mode, opts: EngineOptions, handler: H) -> TestServer
    where
        H: Fn(Connection) -> F + Send + Sync + Clone + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        match mode {
            Mode::Runtime => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                let engine = Arc::new(Engine::listen(opts).expect("engine starts"));
                let addr = engine.local_addr();
                let e = engine.clone();
                rt.spawn(async move {
                    while let Some(conn) = e.accept().await {
                        tokio::spawn(handler(conn));
                    }
                });
                TestServer {
                    engine: Some(engine),
                    addr,
                    rt: Some(rt),
                }
            }
            Mode::Reactor => {
                let engine = Arc::new(Engine::serve(opts, handler).expect("engine starts"));
                let addr = engine.local_addr();
                TestServer {
                    engine: Some(engine),
                    addr,
                    rt: None,
                }
            }
        }
    }

    pub fn engine(&self) -> &Engine {
        self.engine.as_ref().unwrap()
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    /// Waits until `pred` holds for the engine's stats, or panics after `timeout`.
    pub fn wait_stats(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&zerg::EngineStats) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.engine().stats();
            if pred(&s) {
                return;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; stats: {s:#?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until no connection is live and every buffer is back in the ring.
    pub fn assert_quiescent(&self) {
        self.wait_stats(
            Duration::from_secs(5),
            "no connections and all buffers free",
            |s| {
                let t = s.total();
                t.connections == 0 && t.buffers_free == t.buffers_total
            },
        );
    }

    /// Stops the engine and joins its threads; panics if it failed.
    pub fn stop(mut self) {
        let engine = self.engine.take().unwrap();
        engine.stop();
        let engine = wait_unique(engine);
        engine.join().expect("engine ran without failure");
        drop(self.rt.take());
    }
}

fn wait_unique(mut engine: Arc<Engine>) -> Engine {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Arc::try_unwrap(engine) {
            Ok(e) => return e,
            Err(e) => {
                assert!(Instant::now() < deadline, "engine still shared after stop");
                engine = e;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(e) = self.engine.take() {
            e.stop();
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// Echo handler: writes back every byte it reads.
pub async fn echo(mut conn: Connection) {
    loop {
        let snap = conn.read().await;
        if snap.is_closed() {
            return;
        }
        for b in snap.buffers() {
            if conn.write(b).is_err() {
                return;
            }
        }
        drop(snap);
        if conn.flush().await.is_err() {
            return;
        }
    }
}

/// Writes `data` and reads back exactly as many bytes.
pub fn roundtrip(s: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    s.write_all(data).unwrap();
    let mut out = vec![0; data.len()];
    s.read_exact(&mut out).unwrap();
    out
}

/// Deterministic pseudo-random bytes, different per `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
