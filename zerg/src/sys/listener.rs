//! Listening sockets: the ones the engine binds (`ip:port`, one per reactor in per-reactor
//! accept mode) and the ones it is given ([`EngineOptions::listener`]), checked and prepared.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};

use crate::config::{AcceptMode, EngineOptions, IpVersion};
use crate::error::{ConfigError, Error, Result};

/// One socket the engine accepts on.
enum Listening {
    /// Bound by the engine: taken out of the listening state when the engine stops.
    Own(Socket),
    /// Given in the options: left listening for its other holders (systemd, the next process).
    Inherited(Arc<TcpListener>),
}

impl Listening {
    fn fd(&self) -> RawFd {
        match self {
            Listening::Own(s) => s.as_raw_fd(),
            Listening::Inherited(l) => l.as_raw_fd(),
        }
    }
}

/// The engine's listening sockets, kept open until its threads are joined.
#[derive(Default)]
pub(crate) struct Listeners {
    sockets: Vec<Listening>,
    /// The distinct local addresses, in order.
    addrs: Vec<SocketAddr>,
}

impl Listeners {
    /// Binds `ip:port` (once per reactor in per-reactor accept mode), or checks and prepares the
    /// listening sockets the options carry.
    pub(crate) fn open(options: &EngineOptions) -> Result<Listeners> {
        if options.listener_count() > 0 {
            return Self::inherit(options);
        }
        let version = options.acceptor.ip_version;
        let addr = bind_addr(options.ip, options.port, version);
        let per_reactor = options.accept_mode == AcceptMode::PerReactor;
        let first = listen(
            addr,
            version,
            options.backlog,
            per_reactor,
            options.tcp_keepalive,
        )?;
        let bound = first
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| {
                Error::io(
                    format!("getsockname for listener {addr}"),
                    std::io::Error::last_os_error(),
                )
            })?;
        let mut sockets = vec![Listening::Own(first)];
        if per_reactor {
            for _ in 1..options.reactor_count {
                let l = listen(bound, version, options.backlog, true, options.tcp_keepalive)?;
                sockets.push(Listening::Own(l));
            }
        }
        // An IPv4 address bound on a dual-stack socket is reported as the IPv4 address.
        let local = match (options.ip, bound) {
            (IpAddr::V4(v4), SocketAddr::V6(_)) if !v4.is_unspecified() => {
                SocketAddr::new(IpAddr::V4(v4), bound.port())
            }
            _ => bound,
        };
        Ok(Listeners {
            sockets,
            addrs: vec![local],
        })
    }

    fn inherit(options: &EngineOptions) -> Result<Listeners> {
        let mut out = Listeners::default();
        let mut sockets = Vec::new();
        for (i, listener) in options.inherited().enumerate() {
            let addr = prepare_inherited(listener, i, options.tcp_keepalive)?;
            // Two descriptors of one socket would be two accepts on it, which the kernel wakes
            // one at a time: pointless in the acceptor, lopsided across reactors.
            let inode = socket_inode(listener)
                .map_err(|e| Error::io(format!("fstat for listeners[{i}] ({addr})"), e))?;
            if let Some(j) = sockets.iter().position(|&s| s == inode) {
                return Err(ConfigError::new(
                    format!("listeners[{i}]"),
                    format!("is the same socket as listeners[{j}] (a duplicate descriptor)"),
                )
                .into());
            }
            sockets.push(inode);
            if !out.addrs.contains(&addr) {
                out.addrs.push(addr);
            }
            out.sockets.push(Listening::Inherited(listener.clone()));
        }
        Ok(out)
    }

    /// The distinct local addresses, in order (at least one once opened).
    pub(crate) fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Every listening descriptor, in order (the acceptor runs one accept on each).
    pub(crate) fn fds(&self) -> Vec<RawFd> {
        self.sockets.iter().map(Listening::fd).collect()
    }

    /// The listener reactor `index` accepts on in per-reactor accept mode (one per reactor).
    pub(crate) fn for_reactor(&self, index: usize) -> Option<RawFd> {
        self.sockets.get(index).map(Listening::fd)
    }

    /// Takes the engine's own listeners out of LISTEN (`shutdown(SHUT_RD)`): connections
    /// waiting in their backlog are reset and new ones refused, and an armed accept ends with an
    /// error. Listeners given in the options are left listening for their other holders (the
    /// accepts on them are cancelled by the stop).
    pub(crate) fn stop(&self) {
        for l in &self.sockets {
            if let Listening::Own(s) = l
                && let Err(e) = s.shutdown(std::net::Shutdown::Read)
            {
                tracing::debug!(error = %e, "shutdown of a listener");
            }
        }
    }
}

/// The inode of the socket behind `listener`: equal for every descriptor of one socket.
fn socket_inode(listener: &TcpListener) -> std::io::Result<u64> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    // fstat(2) through a duplicate, as a `File` (metadata only; closed right after).
    let dup = listener.as_fd().try_clone_to_owned()?;
    Ok(std::fs::File::from(dup).metadata()?.ino())
}

/// Checks that `listener` (the options' `listeners[index]`) is a listening TCP socket, and sets
/// what accepted sockets inherit: `TCP_NODELAY` and, with `keepalive_idle`, TCP keep-alive.
/// Returns its local address.
fn prepare_inherited(
    listener: &TcpListener,
    index: usize,
    keepalive_idle: Option<Duration>,
) -> Result<SocketAddr> {
    let field = format!("listeners[{index}]");
    let bad = |why: String| Error::from(ConfigError::new(field.clone(), why));
    let socket = SockRef::from(listener);
    let ty = socket
        .r#type()
        .map_err(|e| bad(format!("is not a socket ({e})")))?;
    let domain = socket
        .domain()
        .map_err(|e| bad(format!("has no readable address family ({e})")))?;
    if domain != Domain::IPV4 && domain != Domain::IPV6 {
        return Err(bad(format!(
            "is not an IPv4 or IPv6 socket ({domain:?}; a Unix-domain socket?): zerg serves TCP              only"
        )));
    }
    if ty != Type::STREAM {
        return Err(bad(format!(
            "is not a stream socket ({ty:?}; a UDP socket?): zerg serves TCP only"
        )));
    }
    match socket.protocol() {
        Ok(Some(p)) if p == Protocol::TCP || p == Protocol::MPTCP => {}
        Ok(p) => {
            return Err(bad(format!("is not a TCP socket (protocol {p:?})")));
        }
        Err(e) => return Err(bad(format!("has no readable protocol ({e})"))),
    }
    let listening = socket
        .is_listener()
        .map_err(|e| bad(format!("cannot be checked for SO_ACCEPTCONN ({e})")))?;
    if !listening {
        return Err(bad(
            "is not listening: call listen(2) on it first (std::net::TcpListener::bind does)"
                .into(),
        ));
    }
    let addr = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| bad("has no local IP address".into()))?;
    let what = |op: &str| format!("{op} for {field} ({addr})");
    // Accepted sockets inherit these from the listener (see `listen`).
    socket
        .set_tcp_nodelay(true)
        .map_err(|e| Error::io(what("TCP_NODELAY"), e))?;
    if let Some(idle) = keepalive_idle {
        socket
            .set_tcp_keepalive(&keepalive(idle))
            .map_err(|e| Error::io(what("SO_KEEPALIVE"), e))?;
    }
    Ok(addr)
}

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
fn listen(
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
