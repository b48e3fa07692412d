//! Plain blocking upstream servers on 127.0.0.1 for the outbound-connection tests: a thread per
//! connection, stopped (and joined) when dropped.
#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// A server running `handler` on a thread per connection.
pub struct Upstream {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    /// Handlers that returned `true` (did everything they expected to).
    pub finished: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    pub fn start(handler: fn(TcpStream) -> bool) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        let (s, a, f) = (stop.clone(), accepted.clone(), finished.clone());
        let thread = std::thread::Builder::new()
            .name("test-upstream".into())
            .spawn(move || {
                let mut workers = Vec::new();
                for conn in listener.incoming() {
                    if s.load(Ordering::Acquire) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    a.fetch_add(1, Ordering::AcqRel);
                    conn.set_read_timeout(Some(Duration::from_secs(30)))
                        .unwrap();
                    conn.set_write_timeout(Some(Duration::from_secs(30)))
                        .unwrap();
                    let f = f.clone();
                    workers.push(std::thread::spawn(move || {
                        if handler(conn) {
                            f.fetch_add(1, Ordering::AcqRel);
                        }
                    }));
                }
                for w in workers {
                    let _ = w.join();
                }
            })
            .unwrap();
        Upstream {
            addr,
            stop,
            accepted,
            finished,
            thread: Some(thread),
        }
    }

    pub fn finished(&self) -> usize {
        self.finished.load(Ordering::Acquire)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the blocking accept.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP echo server: writes back every byte; when the client half-closes, finishes sending,
/// then half-closes too (counted as finished).
pub struct Echo;

impl Echo {
    #[allow(clippy::new_ret_no_self)]
    pub fn start() -> Upstream {
        Upstream::start(echo_one)
    }
}

fn echo_one(mut conn: TcpStream) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return conn.shutdown(Shutdown::Write).is_ok(),
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
}

/// A listener whose accept queue is full: it never accepts, so a new connect to it hangs (the
/// kernel drops its SYNs) until it times out or is cancelled. Loopback only.
pub struct Blackhole {
    pub addr: SocketAddr,
    listener: socket2::Socket,
    filler: Option<TcpStream>,
}

impl Blackhole {
    pub fn start() -> Blackhole {
        let listener =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        listener
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        // Backlog 0: one completed connection fills the accept queue.
        listener.listen(0).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let filler = TcpStream::connect(addr).unwrap();
        Blackhole {
            addr,
            listener,
            filler: Some(filler),
        }
    }

    /// Accepts the connection that filled the queue: a connect whose SYN is retried from now on
    /// completes.
    pub fn make_room(&mut self) {
        let (accepted, _) = self.listener.accept().unwrap();
        drop(accepted);
        self.filler.take();
    }
}

/// An address nobody listens on (a port bound and released at once).
pub fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}
