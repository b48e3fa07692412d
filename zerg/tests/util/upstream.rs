//! Plain blocking upstream servers on 127.0.0.1 for the outbound-connection tests: a thread per
//! connection, stopped (and joined) when dropped.
#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// A TCP echo server: writes back every byte; when the client half-closes, finishes sending,
/// then half-closes too.
pub struct Echo {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    /// Connections whose client half-closed (EOF seen) and that echoed everything before it.
    pub finished: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    pub fn start() -> Echo {
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
                    let f = f.clone();
                    workers.push(std::thread::spawn(move || echo_one(conn, &f)));
                }
                for w in workers {
                    let _ = w.join();
                }
            })
            .unwrap();
        Echo {
            addr,
            stop,
            accepted,
            finished,
            thread: Some(thread),
        }
    }
}

fn echo_one(mut conn: TcpStream, finished: &AtomicUsize) {
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => {
                let _ = conn.shutdown(Shutdown::Write);
                finished.fetch_add(1, Ordering::AcqRel);
                return;
            }
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the blocking accept.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
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
