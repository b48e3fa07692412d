//! `idle` mode: open every connection (blocking connects in a plain loop; the kernel completes
//! the handshake even before the server accepts), report, hold, exit.
//!
//! One source address has about 28,000 ephemeral ports towards one server port; beyond
//! [`PER_SOURCE`] connections each further block binds to the next loopback address
//! (127.0.0.2, 127.0.0.3, ...: all of 127/8 is loopback), so the count is bounded by the
//! descriptor limits only.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use super::{Event, Opts, emit};

/// Delay before a failed connect is retried.
const BACKOFF: Duration = Duration::from_millis(10);
/// Connections per source address.
const PER_SOURCE: usize = 20_000;

/// Connection `i` to `addr`: from the default source for the first `per_source`, then from
/// 127.0.0.2, 127.0.0.3, ... (IPv4 loopback servers only).
fn connect(addr: SocketAddr, i: usize, per_source: usize) -> std::io::Result<TcpStream> {
    let block = i / per_source;
    if block == 0 || !addr.ip().is_loopback() || !addr.is_ipv4() {
        return TcpStream::connect_timeout(&addr, Duration::from_secs(5));
    }
    let octet = u8::try_from(1 + block).map_err(|_| std::io::Error::other("too many blocks"))?;
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, octet)), 0);
    sock.bind(&src.into())?;
    sock.connect_timeout(&addr.into(), Duration::from_secs(5))?;
    Ok(sock.into())
}

pub(crate) fn run(opts: &Opts) -> Result<(), String> {
    let deadline = Instant::now() + opts.duration;
    let mut held = Vec::with_capacity(opts.conns);
    let mut errors = 0u64;
    let addr = opts.addr.into();
    while held.len() < opts.conns && Instant::now() < deadline {
        match connect(addr, held.len(), PER_SOURCE) {
            Ok(s) => held.push(s),
            Err(e) => {
                errors += 1;
                if errors == 1 {
                    eprintln!("loadgen idle: connect: {e}");
                }
                if errors > 100 {
                    return Err(format!("idle: {errors} connect errors, last: {e}"));
                }
                thread::sleep(BACKOFF);
            }
        }
    }
    emit(&Event::Ready {
        connected: held.len(),
        errors,
    });
    thread::sleep(deadline.saturating_duration_since(Instant::now()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_past_a_block_come_from_the_next_loopback_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let held: Vec<_> = (0..5).map(|i| connect(addr, i, 2).unwrap()).collect();
        let sources: Vec<IpAddr> = (0..5).map(|_| listener.accept().unwrap().1.ip()).collect();
        let want: Vec<IpAddr> = [
            "127.0.0.1",
            "127.0.0.1",
            "127.0.0.2",
            "127.0.0.2",
            "127.0.0.3",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        assert_eq!(sources, want);
        drop(held);
    }
}
