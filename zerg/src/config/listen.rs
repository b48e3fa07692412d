//! Where an engine listens: an address ([`EngineOptions::bind`], `From<SocketAddr>`, or the
//! `ip`/`port` fields), or listening sockets made elsewhere ([`EngineOptions::listener`]): a
//! systemd socket, a descriptor handed over by the previous process of a hot restart, or
//! several sockets bound by the application to listen on several addresses.

use std::fmt;
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, ToSocketAddrs};
use std::sync::Arc;

use super::{AcceptMode, EngineOptions, IpVersion};
use crate::error::{ConfigError, Error, Result};

/// A listening socket handed to the engine. Shared (`Arc`) so that [`EngineOptions`] stays
/// `Clone`; every engine started from the options accepts on the same socket.
#[derive(Clone)]
pub(crate) struct Inherited(pub(crate) Arc<TcpListener>);

impl fmt::Debug for Inherited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl EngineOptions {
    /// Options for a server on `addr` (resolved now; a host name blocks on DNS) with everything
    /// else at its default. When the name resolves to several addresses (`localhost` is often
    /// `::1` and `127.0.0.1`), the **first** one is used (std's [`TcpListener::bind`] tries
    /// each in turn instead); to listen on several addresses, bind a [`TcpListener`] for each
    /// and pass them to [`listeners`](Self::listeners).
    ///
    /// The address is bound when the engine starts, as the `From<SocketAddr>` conversion does:
    /// an IPv4 address on an IPv4 socket, an IPv6 one on a dual-stack socket.
    ///
    /// ```
    /// use zerg_uring::EngineOptions;
    ///
    /// let options = EngineOptions::bind("127.0.0.1:8080")?;
    /// assert_eq!(options.port, 8080);
    /// assert!(EngineOptions::bind("no port here").is_err());
    /// # Ok::<(), zerg_uring::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when `addr` cannot be resolved, or resolves to no address.
    pub fn bind(addr: impl ToSocketAddrs) -> Result<EngineOptions> {
        let op = "resolve the listen address";
        let first = addr
            .to_socket_addrs()
            .map_err(|e| Error::io(op, e))?
            .next()
            .ok_or_else(|| {
                Error::io(
                    op,
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "the address resolved to no address",
                    ),
                )
            })?;
        Ok(first.into())
    }

    /// Options for a server that accepts on `listener`, a socket already bound and listening,
    /// instead of binding one: a systemd socket (`ListenStream=`), the listener of the previous
    /// process in a hot restart, or one bound by the application with
    /// [`TcpListener::bind`]. Anything that converts into a [`TcpListener`] is taken, such as an
    /// [`OwnedFd`](std::os::fd::OwnedFd).
    ///
    /// With listeners given, `ip`, `port`, `backlog` and `acceptor.ip_version` are not used
    /// (the socket was bound and sized by whoever made it). [`Engine::listen`](crate::Engine::listen)
    /// checks each one — a TCP socket (IPv4 or IPv6) in the listening state — and fails with
    /// [`Error::Config`] naming `listeners[i]` otherwise. It then sets `TCP_NODELAY` (and
    /// `SO_KEEPALIVE` per [`tcp_keepalive`](Self::tcp_keepalive)) on the listening socket
    /// itself, so accepted sockets inherit them; other holders of the socket see that change.
    /// Blocking or non-blocking does not matter (io_uring's accept never blocks) and is left
    /// as it is.
    ///
    /// The engine never takes the socket out of the listening state: stopping cancels the
    /// engine's accepts and closes its handle; clients that connect meanwhile wait in the
    /// backlog for the socket's other holders (systemd, the next process). The socket itself
    /// closes when its last descriptor does — the engine's, if the options were its only owner.
    /// The same socket given twice (two descriptors of it) is refused.
    ///
    /// In a hot restart, start the new engine on the socket before stopping the old one. The
    /// instant the old engine stops can still cost a connection: one it had just accepted and
    /// not yet handed to a handler is closed (the client sees a reset), and one whose wake-up
    /// the kernel gave to the old engine's accept as it was being cancelled (the kernel wakes
    /// one accept per connection) waits in the backlog until the next connection wakes the new
    /// engine. Handing over under a steady sequential load, about one connection in 10,000
    /// failed this way.
    ///
    /// How the listeners are spread depends on [`accept_mode`](Self::accept_mode):
    /// [`AcceptMode::Dedicated`] runs one multishot accept per listener on the acceptor thread,
    /// any number of them, and hands connections to the reactors round-robin.
    /// [`AcceptMode::PerReactor`] takes exactly one listener per reactor (`reactor_count` of
    /// them, for example `SO_REUSEPORT` sockets of one address, or one address per reactor):
    /// reactor `i` accepts on listener `i`. It refuses one listener shared by several reactors,
    /// because the kernel would wake the same reactor's accept for nearly every connection (all
    /// 200 of 200 sequential connections landed on the first of two reactors when tried).
    ///
    /// ```no_run
    /// use std::net::TcpListener;
    /// use std::os::fd::{FromRawFd, OwnedFd};
    /// use zerg_uring::{Engine, EngineOptions};
    ///
    /// // systemd socket activation: the first passed descriptor is 3 (`LISTEN_FDS_START`).
    /// // SAFETY: systemd passed descriptor 3 to this process, which owns it from here on.
    /// let fd = unsafe { OwnedFd::from_raw_fd(3) };
    /// let engine = Engine::listen(EngineOptions::listener(fd))?;
    ///
    /// // Or a listener bound by the application (port 0: any free port).
    /// let engine2 = Engine::listen(EngineOptions::listener(TcpListener::bind("127.0.0.1:0")?))?;
    /// # drop((engine, engine2));
    /// # Ok::<(), zerg_uring::Error>(())
    /// ```
    pub fn listener(listener: impl Into<TcpListener>) -> EngineOptions {
        let mut options = EngineOptions::default();
        options.add_listener(listener);
        options
    }

    /// Options for a server that accepts on every one of `listeners` (several addresses, say);
    /// see [`listener`](Self::listener).
    ///
    /// ```no_run
    /// use std::net::TcpListener;
    /// use zerg_uring::{Engine, EngineOptions};
    ///
    /// // One engine on the loopback addresses of both families.
    /// let v4 = TcpListener::bind("127.0.0.1:8080")?;
    /// let v6 = TcpListener::bind("[::1]:8080")?;
    /// let engine = Engine::listen(EngineOptions::listeners([v4, v6]))?;
    /// assert_eq!(engine.local_addrs().len(), 2);
    /// # Ok::<(), zerg_uring::Error>(())
    /// ```
    pub fn listeners<L: Into<TcpListener>>(
        listeners: impl IntoIterator<Item = L>,
    ) -> EngineOptions {
        let mut options = EngineOptions::default();
        for l in listeners {
            options.add_listener(l);
        }
        options
    }

    /// Adds a listening socket to accept on (see [`listener`](Self::listener)); from the first
    /// one on, `ip` and `port` are not bound.
    pub fn add_listener(&mut self, listener: impl Into<TcpListener>) -> &mut EngineOptions {
        self.listeners.push(Inherited(Arc::new(listener.into())));
        self
    }

    /// How many listening sockets were given with [`listener`](Self::listener) and friends (`0`:
    /// the engine binds `ip:port`).
    pub fn listener_count(&self) -> usize {
        self.listeners.len()
    }

    /// The listening sockets given, in order.
    pub(crate) fn inherited(&self) -> impl Iterator<Item = &Arc<TcpListener>> {
        self.listeners.iter().map(|l| &l.0)
    }
}

/// Options for a server on `addr`, with everything else at its default, like
/// [`std::net::TcpListener::bind`]: an IPv4 address is bound on an IPv4-only socket
/// ([`IpVersion::Ipv4`]), so connections report IPv4 peers; an IPv6 address on a dual-stack
/// socket ([`IpVersion::Ipv6DualStack`]; `[::]` then accepts IPv4 clients too).
///
/// [`Engine::listen`](crate::Engine::listen) and [`Engine::serve`](crate::Engine::serve) take
/// anything that converts into options, so an address can be passed directly:
///
/// ```no_run
/// use std::net::SocketAddr;
/// use zerg_uring::{Engine, EngineOptions};
///
/// let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
/// let engine = Engine::listen(addr)?;
/// let engine2 = Engine::listen(([127, 0, 0, 1], 8081))?;
/// # drop((engine, engine2));
/// # Ok::<(), zerg_uring::Error>(())
/// ```
impl From<SocketAddr> for EngineOptions {
    fn from(addr: SocketAddr) -> Self {
        let mut options = EngineOptions::with_port(addr.port());
        options.ip = addr.ip();
        options.acceptor.ip_version = match addr {
            SocketAddr::V4(_) => IpVersion::Ipv4,
            SocketAddr::V6(_) => IpVersion::Ipv6DualStack,
        };
        options
    }
}

/// As `From<SocketAddr>`.
impl From<SocketAddrV4> for EngineOptions {
    fn from(addr: SocketAddrV4) -> Self {
        SocketAddr::V4(addr).into()
    }
}

/// As `From<SocketAddr>`.
impl From<SocketAddrV6> for EngineOptions {
    fn from(addr: SocketAddrV6) -> Self {
        SocketAddr::V6(addr).into()
    }
}

/// As `From<SocketAddr>`, for `(ip, port)` pairs such as `([127, 0, 0, 1], 8080)` or
/// `(Ipv6Addr::UNSPECIFIED, 8080)`.
impl<I: Into<IpAddr>> From<(I, u16)> for EngineOptions {
    fn from((ip, port): (I, u16)) -> Self {
        SocketAddr::new(ip.into(), port).into()
    }
}

/// As [`EngineOptions::listener`].
impl From<TcpListener> for EngineOptions {
    fn from(listener: TcpListener) -> Self {
        EngineOptions::listener(listener)
    }
}

/// Checks the listeners against the accept mode.
pub(super) fn validate(o: &EngineOptions) -> Result<()> {
    let n = o.listeners.len();
    if o.accept_mode == AcceptMode::PerReactor && n > 0 && n != o.reactor_count {
        return Err(ConfigError::new(
            "listeners",
            format!(
                "has {n} sockets for {} reactors in per-reactor accept mode, which takes one \
                 listener per reactor (a listener shared by several reactors would put nearly \
                 every connection on one of them): use AcceptMode::Dedicated to accept on any \
                 number of listeners",
                o.reactor_count
            ),
        )
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn addresses_convert_like_std_bind() {
        let o = EngineOptions::from("127.0.0.1:81".parse::<SocketAddr>().unwrap());
        assert_eq!((o.ip, o.port), (IpAddr::V4(Ipv4Addr::LOCALHOST), 81));
        assert_eq!(o.acceptor.ip_version, IpVersion::Ipv4);
        o.validate().unwrap();
        let o = EngineOptions::from((Ipv6Addr::UNSPECIFIED, 82));
        assert_eq!(o.acceptor.ip_version, IpVersion::Ipv6DualStack);
        o.validate().unwrap();
        let o = EngineOptions::from(([10, 0, 0, 1], 83));
        assert_eq!(o.ip, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(o.listener_count(), 0);
    }

    #[test]
    fn bind_resolves_and_takes_the_first_address() {
        let o = EngineOptions::bind(("127.0.0.1", 9000)).unwrap();
        assert_eq!((o.ip, o.port), (IpAddr::V4(Ipv4Addr::LOCALHOST), 9000));
        let empty: &[SocketAddr] = &[];
        let err = EngineOptions::bind(empty).unwrap_err();
        assert!(err.to_string().contains("resolved to no address"), "{err}");
        match EngineOptions::bind("not an address").unwrap_err() {
            Error::Io { op, .. } => assert_eq!(op, "resolve the listen address"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn per_reactor_takes_one_listener_per_reactor() {
        let l = || TcpListener::bind("127.0.0.1:0").unwrap();
        let mut o = EngineOptions::listeners([l(), l()]);
        o.reactor_count = 3;
        o.validate().unwrap();
        o.accept_mode = AcceptMode::PerReactor;
        let err = o.validate().unwrap_err();
        assert!(
            matches!(&err, Error::Config(c) if c.field() == "listeners"),
            "{err:?}"
        );
        o.add_listener(l());
        o.validate().unwrap();
        let mut o = EngineOptions {
            accept_mode: AcceptMode::PerReactor,
            reactor_count: 2,
            ..EngineOptions::listener(l())
        };
        assert!(o.validate().is_err(), "one listener shared by two reactors");
        o.reactor_count = 1;
        o.validate().unwrap();
        assert!(format!("{o:?}").contains("TcpListener"), "{o:?}");
    }
}
