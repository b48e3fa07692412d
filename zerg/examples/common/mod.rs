//! Shared by the examples: command-line flags, the run loop for both handler modes, signals.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::time::Duration;

use zerg_uring::{AcceptMode, Connection, Engine, EngineOptions, ReactorConfig};

/// The fixed response of the HTTP examples.
pub const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nHello, World!";

/// Where handlers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// On a tokio runtime, connections taken with `Engine::accept`.
    Runtime,
    /// On the reactor thread that owns the connection (`Engine::serve`).
    Reactor,
}

/// Flags every example takes.
#[derive(Debug, Clone)]
pub struct Args {
    pub port: u16,
    pub reactors: usize,
    pub recv_buffer_size: u32,
    pub buffer_ring_entries: u32,
    pub incremental: bool,
    pub mode: Mode,
    pub accept: AcceptMode,
    pub workers: usize,
    pub sqpoll: bool,
}

const USAGE: &str = "flags:
  --port N                  TCP port (default 8080)
  --reactors N              reactor threads (default 1)
  --recv-buffer-size N      bytes per receive buffer (default 16384)
  --buffer-ring-entries N   receive buffers per reactor, a power of two (default 4096)
  --incremental             incremental buffer consumption (Linux 6.12+)
  --mode runtime|reactor    handlers on a tokio runtime, or on the reactor thread (default runtime)
  --accept dedicated|per-reactor
                            acceptor thread, or SO_REUSEPORT accept in every reactor (default dedicated)
  --workers N               tokio worker threads in runtime mode (default: number of CPUs)
  --sqpoll                  IORING_SETUP_SQPOLL for the reactors";

impl Args {
    pub fn parse() -> Args {
        Self::parse_from(std::env::args())
    }

    /// Parses `args` (the first item is the program name).
    pub fn parse_from(args: impl IntoIterator<Item = String>) -> Args {
        let mut a = Args {
            port: 8080,
            reactors: 1,
            recv_buffer_size: 16 * 1024,
            buffer_ring_entries: 4096,
            incremental: false,
            mode: Mode::Runtime,
            accept: AcceptMode::Dedicated,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            sqpoll: false,
        };
        let mut it = args.into_iter().skip(1);
        while let Some(flag) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .unwrap_or_else(|| fail(&format!("{name} needs a value")))
            };
            match flag.as_str() {
                "--port" => a.port = num(&value("--port")),
                "--reactors" => a.reactors = num(&value("--reactors")),
                "--recv-buffer-size" => a.recv_buffer_size = num(&value("--recv-buffer-size")),
                "--buffer-ring-entries" => {
                    a.buffer_ring_entries = num(&value("--buffer-ring-entries"))
                }
                "--incremental" => a.incremental = true,
                "--sqpoll" => a.sqpoll = true,
                "--workers" => a.workers = num(&value("--workers")),
                "--mode" => {
                    a.mode = match value("--mode").as_str() {
                        "runtime" => Mode::Runtime,
                        "reactor" => Mode::Reactor,
                        other => fail(&format!("unknown mode {other:?}")),
                    }
                }
                "--accept" => {
                    a.accept = match value("--accept").as_str() {
                        "dedicated" => AcceptMode::Dedicated,
                        "per-reactor" => AcceptMode::PerReactor,
                        other => fail(&format!("unknown accept mode {other:?}")),
                    }
                }
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => fail(&format!("unknown flag {other:?}")),
            }
        }
        a
    }

    /// Engine options for these flags.
    pub fn options(&self) -> EngineOptions {
        let mut reactor = ReactorConfig::default();
        reactor.recv_buffer_size = self.recv_buffer_size;
        reactor.buffer_ring_entries = self.buffer_ring_entries;
        reactor.incremental_buffer_consumption = self.incremental;
        if self.sqpoll {
            reactor.sqpoll = true;
            reactor.defer_taskrun = false;
        }
        let mut opts = EngineOptions::with_port(self.port);
        opts.reactor_count = self.reactors;
        opts.accept_mode = self.accept;
        opts.reactor_configs = vec![reactor];
        opts
    }
}

fn num<T: std::str::FromStr>(s: &str) -> T {
    s.parse()
        .unwrap_or_else(|_| fail(&format!("{s:?} is not a number")))
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}\n{USAGE}");
    std::process::exit(2)
}

/// Runs `handler` for every connection until SIGINT or SIGTERM, then stops the engine (giving
/// connections half a second) and returns.
pub fn run<H, F>(args: &Args, options: EngineOptions, handler: H)
where
    H: Fn(Connection) -> F + Send + Sync + Clone + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    match args.mode {
        Mode::Runtime => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(args.workers.max(1))
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                // Listen for signals before the server starts, so none is missed.
                let mut stop = Stop::new();
                let engine = start(Engine::listen(options), args);
                loop {
                    tokio::select! {
                        conn = engine.accept() => match conn {
                            Some(conn) => { tokio::spawn(handler(conn)); }
                            None => break,
                        },
                        _ = stop.recv() => break,
                    }
                }
                finish(engine);
            });
        }
        Mode::Reactor => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            let mut stop = {
                let _in_runtime = rt.enter();
                Stop::new()
            };
            let engine = start(Engine::serve(options, handler), args);
            rt.block_on(stop.recv());
            finish(engine);
        }
    }
}

fn start(engine: zerg_uring::Result<Engine>, args: &Args) -> Engine {
    match engine {
        Ok(e) => {
            println!(
                "listening on {} ({} reactor(s), handlers on {}, {:?} accept{})",
                e.local_addr(),
                args.reactors,
                match args.mode {
                    Mode::Runtime => "tokio",
                    Mode::Reactor => "the reactor threads",
                },
                args.accept,
                if args.incremental {
                    ", incremental buffers"
                } else {
                    ""
                },
            );
            e
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

fn finish(engine: Engine) {
    engine.shutdown(Duration::from_millis(500));
    match engine.join() {
        Ok(()) => println!("stopped"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

/// SIGINT and SIGTERM, listened for from the moment it is created (inside a tokio runtime).
pub struct Stop {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Stop {
    pub fn new() -> Stop {
        use tokio::signal::unix::{SignalKind, signal};
        Stop {
            term: signal(SignalKind::terminate()).expect("SIGTERM handler"),
            int: signal(SignalKind::interrupt()).expect("SIGINT handler"),
        }
    }

    /// Resolves on the next SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Counts complete HTTP/1.1 requests (each ends with an empty line) in a byte stream fed in
/// arbitrary pieces; a request split across buffers or reads is counted once it is complete.
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestCounter {
    // How much of "\r\n\r\n" the bytes seen so far end with.
    matched: u8,
}

impl RequestCounter {
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        const END: &[u8; 4] = b"\r\n\r\n";
        let mut count = 0;
        let mut m = self.matched as usize;
        for &b in bytes {
            if b == END[m] {
                m += 1;
                if m == 4 {
                    count += 1;
                    m = 0;
                }
            } else {
                m = usize::from(b == b'\r');
            }
        }
        self.matched = m as u8;
        count
    }
}
