//! Listening sockets.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use std::time::Duration;

use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};

use crate::config::IpVersion;
use crate::error::{Error, Result};

/// The address actually bound for `ip:port` under `version` (dual stack binds IPv4 addresses in
/// their IPv4-mapped IPv6 form, and `0.0.0.0` as `::`).
pub(crate) fn bind_addr(ip: IpAddr, port: u16, version: IpVersion) -> SocketAddr {
    match (version, ip) {
        (IpVersion::Ipv6DualStack, IpAddr::V4(v4)) if v4.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)
        }
        (IpVersion::Ipv6DualStack, IpAddr::V4(v4)) => {
            SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), port)
        }
        _ => SocketAddr::new(ip, port),
    }
}

/// TCP keep-alive for probes after `idle`: every third of it (1 s to 75 s), 3 probes.
fn keepalive(idle: Duration) -> TcpKeepalive {
    TcpKeepalive::new()
        .with_time(idle)
        .with_interval((idle / 3).clamp(Duration::from_secs(1), Duration::from_secs(75)))
        .with_retries(3)
}

/// Creates a bound, listening TCP socket. `reuse_port` is set only for per-reactor listeners, so
/// that a second server on the same port otherwise fails with `EADDRINUSE`. With
/// `keepalive_idle`, accepted sockets inherit TCP keep-alive (as they inherit `TCP_NODELAY`).
pub(crate) fn listen(
    addr: SocketAddr,
    version: IpVersion,
    backlog: u32,
    reuse_port: bool,
    keepalive_idle: Option<Duration>,
) -> Result<Socket> {
    let what = |op: &str| format!("{op} for listener {addr}");
    let domain = Domain::for_address(addr);
    let socket = Socket::new(domain, Type::STREAM.cloexec(), Some(Protocol::TCP))
        .map_err(|e| Error::io(what("socket"), e))?;
    socket
        .set_reuse_address(true)
        .map_err(|e| Error::io(what("SO_REUSEADDR"), e))?;
    if reuse_port {
        socket
            .set_reuse_port(true)
            .map_err(|e| Error::io(what("SO_REUSEPORT"), e))?;
    }
    if domain == Domain::IPV6 {
        socket
            .set_only_v6(version == IpVersion::Ipv6)
            .map_err(|e| Error::io(what("IPV6_V6ONLY"), e))?;
    }
    // Linux copies TCP_NODELAY from the listener to every accepted socket: one setsockopt here
    // instead of one per connection.
    socket
        .set_tcp_nodelay(true)
        .map_err(|e| Error::io(what("TCP_NODELAY"), e))?;
    if let Some(idle) = keepalive_idle {
        socket
            .set_tcp_keepalive(&keepalive(idle))
            .map_err(|e| Error::io(what("SO_KEEPALIVE"), e))?;
    }
    socket
        .bind(&addr.into())
        .map_err(|e| Error::io(format!("bind {addr}"), e))?;
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    socket
        .listen(backlog)
        .map_err(|e| Error::io(format!("listen on {addr}"), e))?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn dual_stack_maps_ipv4_in_network_order() {
        let a = bind_addr(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
            80,
            IpVersion::Ipv6DualStack,
        );
        assert_eq!(a.to_string(), "[::ffff:127.0.0.1]:80");
        let a = bind_addr(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            80,
            IpVersion::Ipv6DualStack,
        );
        assert_eq!(a.to_string(), "[::]:80");
        let a = bind_addr(IpAddr::V4(Ipv4Addr::LOCALHOST), 80, IpVersion::Ipv4);
        assert_eq!(a.to_string(), "127.0.0.1:80");
    }

    #[test]
    fn second_bind_without_reuse_port_fails() {
        let addr = bind_addr(IpAddr::V4(Ipv4Addr::LOCALHOST), 0, IpVersion::Ipv4);
        let first = listen(addr, IpVersion::Ipv4, 16, false, None).unwrap();
        let bound = first.local_addr().unwrap().as_socket().unwrap();
        let err = listen(bound, IpVersion::Ipv4, 16, false, None).unwrap_err();
        match err {
            Error::Io { source, op } => {
                assert_eq!(source.raw_os_error(), Some(libc::EADDRINUSE));
                assert!(op.starts_with("bind"), "{op}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[cfg(test)]
mod nodelay_tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn accepted_sockets_inherit_nodelay_and_keepalive() {
        let addr = bind_addr(IpAddr::V4(Ipv4Addr::LOCALHOST), 0, IpVersion::Ipv4);
        let l = listen(
            addr,
            IpVersion::Ipv4,
            16,
            false,
            Some(Duration::from_secs(42)),
        )
        .unwrap();
        let bound = l.local_addr().unwrap().as_socket().unwrap();
        let _c = std::net::TcpStream::connect(bound).unwrap();
        let (a, _) = l.accept().unwrap();
        assert!(
            a.tcp_nodelay().unwrap(),
            "TCP_NODELAY not inherited from the listener"
        );
        assert!(a.keepalive().unwrap(), "SO_KEEPALIVE not inherited");
        assert_eq!(a.tcp_keepalive_time().unwrap(), Duration::from_secs(42));
        assert_eq!(a.tcp_keepalive_interval().unwrap(), Duration::from_secs(14));
    }
}
