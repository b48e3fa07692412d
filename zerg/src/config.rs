//! Engine configuration: [`EngineOptions`], [`ReactorConfig`], [`AcceptorConfig`], [`IpVersion`].
//!
//! Every knob of the C# zerg configuration tables is here under its Rust name, with typed units
//! (`Duration`, booleans and enums for ring flags) instead of nanosecond integers and raw masks.
//! Each field's documentation states its trade-off. [`EngineOptions::validate`] checks a whole
//! configuration and names the first field that is wrong; [`Engine::listen`](crate::Engine::listen)
//! calls it for you.
//!
//! # Memory
//!
//! Receive memory is address space reserved per reactor, up front, for one provided-buffer ring;
//! only the buffers in circulation take memory ([`RecvRingConfig`]):
//!
//! ```text
//! reserved per reactor  = buffer_ring_entries × recv_buffer_size      (address space)
//! circulating at start  = initial buffers × recv_buffer_size           (8 MiB by default)
//! ```
//!
//! The defaults (4096 × 16 KiB) reserve 64 MiB of address space per reactor and put 512 buffers
//! (8 MiB) in circulation; a reactor under load grows to the whole ring and shrinks back when
//! idle. Pages become resident only once the kernel has written into them. (The C# defaults,
//! 16384 × 32 KiB, committed 512 MiB per reactor.) On top of that each ring costs
//! `ring_entries × 64 B` of submission queue and twice that count × 16 B of completion queue,
//! and each connection a few hundred bytes plus its write buffer while a response is staged.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::error::{ConfigError, Result};

mod acceptor;
mod limits;
mod listen;
mod reactor;
mod recv_ring;

pub use acceptor::AcceptorConfig;
pub use reactor::ReactorConfig;
pub use recv_ring::RecvRingConfig;

/// Which addresses the listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum IpVersion {
    /// IPv4 only (`AF_INET`). The configured address must be an IPv4 address.
    Ipv4,
    /// IPv6 only (`AF_INET6` with `IPV6_V6ONLY`). The configured address must be an IPv6 address.
    Ipv6,
    /// One IPv6 socket that also accepts IPv4 (`IPV6_V6ONLY` off). An IPv4 address is bound as
    /// its IPv4-mapped IPv6 form (`127.0.0.1` → `::ffff:127.0.0.1`); `0.0.0.0` binds `::`.
    #[default]
    Ipv6DualStack,
}

/// How accepted connections reach the reactors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AcceptMode {
    /// One acceptor thread with its own ring runs a multishot accept and hands each connection to
    /// the next reactor in turn (round-robin), posting it straight into the reactor's completion
    /// queue with `IORING_OP_MSG_RING`. Balanced placement; one extra thread.
    #[default]
    Dedicated,
    /// Every reactor owns an `SO_REUSEPORT` listener and runs a multishot accept in its own ring;
    /// there is no acceptor thread and no hand-off. The kernel spreads connections by hashing the
    /// 4-tuple, which is lumpier than round-robin with few connections. The better choice when
    /// cores are few.
    PerReactor,
}

/// Top-level engine configuration (C# zerg: `EngineOptions`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EngineOptions {
    /// Number of reactor threads. Each owns an io_uring, a buffer ring and its connections.
    /// More reactors scale across cores; each one reserves its own receive memory.
    /// Default: `1`.
    pub reactor_count: usize,
    /// Address to bind. Default: `0.0.0.0` (all interfaces; `::` in dual-stack mode). Not used
    /// when listening sockets were given ([`EngineOptions::listener`]).
    pub ip: IpAddr,
    /// TCP port. `0` asks the kernel for a free port; read it back with
    /// [`Engine::local_addr`](crate::Engine::local_addr). Default: `8080`. Not used when
    /// listening sockets were given.
    pub port: u16,
    /// Listen backlog (the kernel caps it at `net.core.somaxconn`). A deep backlog absorbs
    /// connection bursts; a shallow one refuses them sooner. Default: `65535`. Not used when
    /// listening sockets were given (their maker chose it).
    pub backlog: u32,
    /// Where accepts run. Default: [`AcceptMode::Dedicated`].
    pub accept_mode: AcceptMode,
    /// The acceptor thread (used in [`AcceptMode::Dedicated`]; its `ip_version` applies to
    /// both modes).
    pub acceptor: AcceptorConfig,
    /// TCP keep-alive on every accepted connection (`SO_KEEPALIVE`): after this long without
    /// traffic the kernel probes the peer (every third of it, 1 s to 75 s, 3 probes) and resets
    /// the connection if the peer is gone — so a peer that vanished (power loss, a NAT that
    /// forgot the flow) is noticed even by a connection nobody writes to. Set once on the
    /// listener; accepted sockets inherit it. `None` leaves the system default (off).
    /// Default: `None`.
    pub tcp_keepalive: Option<Duration>,
    /// Run thread-per-core handlers ([`Engine::serve`](crate::Engine::serve)) inside a tokio
    /// runtime context, so crates that insist on tokio work there: `tokio::time`, `tokio::spawn`,
    /// `tokio::net`, and anything built on them. See [`TokioContext`] for what runs where and
    /// what it costs. Handlers on the reactor thread can always use zerg's own timers
    /// ([`crate::time`]) and [`spawn_local`](crate::spawn_local), which need none of this.
    /// Default: `None` (a tokio call in a reactor-mode handler panics, as tokio does outside a
    /// runtime; the panic closes that connection only and is logged with a hint naming this
    /// setting).
    #[cfg(feature = "tokio-context")]
    pub tokio_context: Option<TokioContext>,
    /// Per-reactor configuration. Empty: every reactor uses [`ReactorConfig::default`]. One entry:
    /// every reactor uses it. Otherwise there must be exactly `reactor_count` entries, one per
    /// reactor in order. Default: empty.
    pub reactor_configs: Vec<ReactorConfig>,
    /// Most live connections in the whole engine. At the cap (or when every reactor is at its
    /// own [`max_connections_per_reactor`](ReactorConfig::max_connections_per_reactor)) the
    /// engine stops accepting: new clients wait in the listen backlog, nobody is accepted and
    /// closed. Accepting resumes once the count is back at 90 % of the cap. Both caps apply; `0`
    /// means the sum of the per-reactor caps. Default: `0`.
    pub max_connections: u32,
    /// Listening sockets to accept on instead of binding `ip:port` (see
    /// [`EngineOptions::listener`]).
    pub(crate) listeners: Vec<listen::Inherited>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            reactor_count: 1,
            ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 8080,
            backlog: 65535,
            accept_mode: AcceptMode::Dedicated,
            acceptor: AcceptorConfig::default(),
            tcp_keepalive: None,
            #[cfg(feature = "tokio-context")]
            tokio_context: None,
            reactor_configs: Vec::new(),
            max_connections: 0,
            listeners: Vec::new(),
        }
    }
}

impl EngineOptions {
    /// Options for a server on `port` with everything else at its default.
    pub fn with_port(port: u16) -> Self {
        Self {
            port,
            ..Self::default()
        }
    }

    /// The engine-wide connection cap in effect (resolves `0` to the sum of the per-reactor
    /// caps).
    pub fn effective_max_connections(&self) -> usize {
        limits::max_connections(self)
    }

    /// The configuration reactor `index` runs with.
    pub fn reactor_config(&self, index: usize) -> &ReactorConfig {
        match self.reactor_configs.len() {
            0 => &DEFAULT_REACTOR,
            1 => &self.reactor_configs[0],
            _ => &self.reactor_configs[index],
        }
    }

    /// Checks the whole configuration.
    ///
    /// # Errors
    ///
    /// [`Error::Config`](crate::Error::Config) naming the first field whose value is not usable,
    /// and why.
    pub fn validate(&self) -> Result<()> {
        if self.reactor_count == 0 {
            return Err(ConfigError::new("reactor_count", "must be at least 1").into());
        }
        if self.reactor_count > 1024 {
            return Err(ConfigError::new("reactor_count", "must be at most 1024").into());
        }
        if self.backlog == 0 {
            return Err(ConfigError::new("backlog", "must be at least 1").into());
        }
        if self
            .tcp_keepalive
            .is_some_and(|d| d < Duration::from_secs(1))
        {
            return Err(ConfigError::new("tcp_keepalive", "must be at least one second").into());
        }
        let n = self.reactor_configs.len();
        if n > 1 && n != self.reactor_count {
            return Err(ConfigError::new(
                "reactor_configs",
                format!(
                    "has {n} entries for {} reactors (give 0, 1 or reactor_count entries)",
                    self.reactor_count
                ),
            )
            .into());
        }
        match (self.acceptor.ip_version, self.ip) {
            // Given listening sockets: `ip` is not bound.
            _ if !self.listeners.is_empty() => {}
            (IpVersion::Ipv4, IpAddr::V6(_)) => {
                return Err(ConfigError::new(
                    "ip",
                    format!("{} is IPv6 but acceptor.ip_version is Ipv4", self.ip),
                )
                .into());
            }
            (IpVersion::Ipv6, IpAddr::V4(_)) => {
                return Err(ConfigError::new(
                    "ip",
                    format!("{} is IPv4 but acceptor.ip_version is Ipv6", self.ip),
                )
                .into());
            }
            _ => {}
        }
        listen::validate(self)?;
        self.acceptor.validate()?;
        for i in 0..self.reactor_count {
            self.reactor_config(i).validate()?;
        }
        Ok(())
    }
}

static DEFAULT_REACTOR: ReactorConfig = ReactorConfig::DEFAULT;

/// Which tokio runtime thread-per-core handlers run in the context of
/// ([`EngineOptions::tokio_context`], feature `tokio-context`).
///
/// Each reactor thread enters the runtime's context for its whole life. What then runs where:
///
/// - the handlers themselves, and their `zerg_uring::spawn_local` tasks, stay on the reactor
///   thread, polled by its local executor as without this option;
/// - `tokio::time` timers and `tokio::net` sockets are registered with the runtime's drivers,
///   which run on the runtime's thread: each timer that fires and each socket event costs one
///   cross-thread wake of the reactor (an `eventfd` write when it sleeps) — zerg's own timers
///   and `zerg_uring::connect` cost none;
/// - `tokio::spawn` runs the (`Send`) future on the runtime's thread, not on the reactor;
/// - `tokio::task::spawn_local` needs a `LocalSet` and panics: use `zerg_uring::spawn_local`.
#[cfg(feature = "tokio-context")]
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TokioContext {
    /// zerg starts a tokio current-thread runtime of its own (I/O and time drivers on) on a
    /// thread named `zerg-tokio`, for the engine's lifetime; it stops after the reactors.
    Owned,
    /// The runtime of this handle. It must be driven while the engine runs: a multi-thread
    /// runtime is; a current-thread runtime only while its `block_on` runs (zerg logs a warning
    /// for that flavor, since a runtime nobody drives would leave tokio timers waiting forever).
    Handle(tokio::runtime::Handle),
}

/// The ring-setup fields the reactor and acceptor configurations share.
struct RingFlags {
    single_issuer: bool,
    defer_taskrun: bool,
    sqpoll: bool,
    sq_cpu: Option<u32>,
    cq_timeout: Option<Duration>,
}

/// Checks ring flags the kernel would reject together; `prefix` goes before field names.
fn validate_ring(prefix: &str, f: RingFlags) -> Result<()> {
    let e = |field: &str, why: &str| Err(ConfigError::new(format!("{prefix}{field}"), why).into());
    if f.defer_taskrun && !f.single_issuer {
        return e(
            "defer_taskrun",
            "requires single_issuer (the kernel rejects DEFER_TASKRUN without SINGLE_ISSUER)",
        );
    }
    if f.sqpoll && f.defer_taskrun {
        return e(
            "sqpoll",
            "cannot be combined with defer_taskrun (set defer_taskrun = false)",
        );
    }
    if f.sq_cpu.is_some() && !f.sqpoll {
        return e("sq_cpu", "only applies with sqpoll = true");
    }
    if f.cq_timeout.is_some_and(|d| d.is_zero()) {
        return e("cq_timeout", "must be non-zero (use None to wait for work)");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
