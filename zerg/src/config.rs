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
//! Receive memory is reserved per reactor, up front, as one provided-buffer ring:
//!
//! ```text
//! receive memory per reactor = buffer_ring_entries × recv_buffer_size
//! engine receive memory      = Σ over reactors
//! ```
//!
//! The defaults (4096 × 16 KiB) reserve **64 MiB of virtual memory per reactor**; pages become
//! resident only once the kernel has written into them. (The C# defaults, 16384 × 32 KiB, reserve
//! 512 MiB per reactor.) On top of that each ring costs `ring_entries × 64 B` of submission queue
//! and twice that count × 16 B of completion queue, and each connection a few hundred bytes plus
//! its write buffer while a response is staged.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::error::{ConfigError, Result};

mod limits;
mod listen;

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

/// Largest [`ReactorConfig::min_wait`]: a batching wait, not a timer.
const MAX_MIN_WAIT: Duration = Duration::from_secs(1);

/// Configuration of one reactor (C# zerg: `ReactorConfig`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ReactorConfig {
    /// `IORING_SETUP_SINGLE_ISSUER` (Linux 6.0): only the reactor thread submits, which lets the
    /// kernel skip locking. Matches the reactor model. Default: `true`.
    pub single_issuer: bool,
    /// `IORING_SETUP_DEFER_TASKRUN` (Linux 6.1, needs `single_issuer`): completion work runs only
    /// when the reactor enters the kernel to wait, in one batch, instead of interrupting it.
    /// Fewer context switches under load; cannot be combined with `sqpoll`. Default: `true`.
    pub defer_taskrun: bool,
    /// `IORING_SETUP_SQPOLL`: a kernel thread polls the submission queue, so submitting needs no
    /// syscall while it is awake. Costs a CPU core per reactor while busy. Default: `false`.
    pub sqpoll: bool,
    /// `IORING_SETUP_SQ_AFF`: pin the SQPOLL thread to this CPU (only with `sqpoll`). `None` lets
    /// the kernel place it. Default: `None`.
    pub sq_cpu: Option<u32>,
    /// How long the SQPOLL thread spins without work before it sleeps (only with `sqpoll`).
    /// Longer keeps latency low after pauses; shorter gives the core back sooner. Default: 100 ms.
    pub sq_thread_idle: Duration,
    /// Submission queue size (the completion queue gets at least twice this, and at least
    /// twice `buffer_ring_entries`). Bounds operations submitted per batch. Rounded up to a power
    /// of two by the kernel; at most 32768. Default: `4096`.
    pub ring_entries: u32,
    /// Size of each receive buffer in bytes. Bigger buffers mean fewer completions for large
    /// payloads; smaller ones waste less memory on small messages. Default: 16 KiB.
    pub recv_buffer_size: u32,
    /// Number of receive buffers in the provided-buffer ring (power of two, at most 32768).
    /// More buffers serve more concurrently-active connections before `-ENOBUFS` back-pressure;
    /// the ring costs `buffer_ring_entries × recv_buffer_size` bytes. Default: `4096`.
    pub buffer_ring_entries: u32,
    /// Most completions handled per loop iteration. Higher values batch more work per wake-up
    /// (throughput); lower values return to submitting sooner (latency). Default: `4096`.
    pub batch_cqes: u32,
    /// Most live connections on this reactor. At the cap, accepting pauses (connections wait in
    /// the listen backlog) and resumes at 90 % of it; see [`EngineOptions::max_connections`] for
    /// the engine-wide cap. With [`AcceptMode::PerReactor`] a reactor at its cap leaves the
    /// connections the kernel hashes to its listener waiting even if other reactors have room.
    /// Default: `8192`.
    pub max_connections_per_reactor: u32,
    /// Upper bound on one wait for completions. `None` (the default) waits until there is work:
    /// cross-thread requests wake the reactor at once through its eventfd, so an idle reactor
    /// does not wake at all. `Some(d)` also wakes it every `d` (only useful for diagnostics).
    pub cq_timeout: Option<Duration>,
    /// Batch completions under load (`min_wait_usec` of `IORING_ENTER_EXT_ARG`, Linux 6.12): a
    /// reactor with nothing to do waits up to this long for a batch of completions before it
    /// wakes for fewer (never longer than that once one has arrived; an idle reactor still
    /// sleeps until work comes). Fewer wake-ups and `io_uring_enter` calls per request, at up to
    /// this much added latency per wait. Older kernels ignore it (logged once). `None` (the
    /// default) wakes for the first completion. See docs/tuning.md.
    pub min_wait: Option<Duration>,
    /// `IOU_PBUF_RING_INC` (Linux 6.12): the kernel packs several receives into one buffer at
    /// successive offsets, so small messages do not each pin a whole buffer. A buffer goes back to
    /// the ring once the kernel has moved past it and every piece of it was returned.
    /// Default: `false`.
    pub incremental_buffer_consumption: bool,
    /// Most receive buffers (pieces, in incremental mode) one connection may hold before its
    /// receive pauses: received bytes not yet dropped by the handler, and bytes staged with
    /// [`write_snapshot`](crate::Connection::write_snapshot) until they are sent. A handler that
    /// stops reading then holds at most this much of the ring; TCP flow control pushes back on
    /// its peer until the handler returns buffers. `0` derives it from
    /// [`max_recv_bytes_per_connection`](Self::max_recv_bytes_per_connection). Default: `0`.
    pub max_buffers_per_connection: u32,
    /// The per-connection receive bound in bytes, used when `max_buffers_per_connection` is `0`:
    /// `⌈max_recv_bytes_per_connection / recv_buffer_size⌉` buffers (at least 4, so receiving
    /// overlaps sending even with large buffers; at most the ring). A connection's unread input is bounded like a production HTTP server's read buffer
    /// (hyper's is about 400 KiB), so a handful of peers that never read cannot take the ring:
    /// it takes about `buffer_ring_entries / bound` of them. Default: 256 KiB (16 buffers of
    /// 16 KiB: a 4096-buffer ring needs 240 such peers to run low).
    pub max_recv_bytes_per_connection: usize,
    /// Free buffers kept for light connections. When fewer are free, only connections holding
    /// fewer than a quarter of their bound keep receiving; the others pause until the ring has
    /// twice this many free again or they return buffers. `0` means `buffer_ring_entries / 16`
    /// (no reserve below 16 buffers). See docs/tuning.md for the guarantee. Default: `0`.
    pub recv_reserve_buffers: u32,
    /// Most bytes a connection may stage for writing before [`Connection::write`] refuses more
    /// (and [`Connection::write_all`] waits for a flush). Bounds memory per connection when a
    /// peer reads slowly. Default: 64 MiB.
    ///
    /// [`Connection::write`]: crate::Connection::write
    /// [`Connection::write_all`]: crate::Connection::write_all
    pub max_write_buffer: usize,
    /// A send that makes no progress for this long (the peer does not read) fails the flush
    /// with [`Error::TimedOut`](crate::Error::TimedOut) and closes the connection. `None` waits
    /// for the peer forever (a reset or engine stop still ends the flush). Default: `None`.
    ///
    /// All four connection timeouts (`read_timeout`, `idle_timeout`, `request_timeout`,
    /// `write_timeout`) share one timer entry per connection in the reactor's timer map, checked
    /// lazily: arming them costs no syscall and no allocation per read or send. A connection
    /// that times out ends its reads and writes with
    /// [`CloseReason::TimedOut`](crate::CloseReason::TimedOut) and its socket is shut down at
    /// once (the peer sees the close); the descriptor itself closes when the handle is dropped.
    /// They are off by default because what is "too slow" depends on the protocol (a proxy or a
    /// push stream legitimately idles for minutes); for HTTP, values like nginx's
    /// (`client_header_timeout` 60 s, `keepalive_timeout` 75 s, `send_timeout` 60 s) are a
    /// good start — see `docs/tuning.md`.
    pub write_timeout: Option<Duration>,
    /// A read that waits longer than this for bytes ends with
    /// [`CloseReason::TimedOut`](crate::CloseReason::TimedOut) and the connection closes. The
    /// clock starts when a read (or an adapter's `poll_read`) first returns `Pending` and stops
    /// when one returns data. Time the handler spends not reading does not count. Default:
    /// `None`.
    pub read_timeout: Option<Duration>,
    /// A connection with no byte received or sent for this long closes
    /// ([`CloseReason::TimedOut`](crate::CloseReason::TimedOut)), whatever its handler does:
    /// the keep-alive timeout of HTTP, and the bound on idle floods. Default: `None`.
    pub idle_timeout: Option<Duration>,
    /// Once a byte arrives after the handler's last flush (a request starts), the handler must
    /// flush again (respond) within this time or the connection closes
    /// ([`CloseReason::TimedOut`](crate::CloseReason::TimedOut)). This is the header timeout of
    /// request/response protocols: a slowloris client that trickles a request byte by byte keeps
    /// the read and idle timeouts happy but not this one. Do not use it where a request body can
    /// legitimately take longer to arrive than this (uploads). Default: `None`.
    pub request_timeout: Option<Duration>,
    /// Pin the reactor thread to this CPU. `None` leaves placement to the scheduler.
    /// Default: `None`.
    pub cpu: Option<usize>,
    /// Direct descriptors: connections live in a table registered with the reactor's ring
    /// instead of the process's descriptor table — accepted into it, handed from the acceptor
    /// to the reactor ring to ring, closed in the ring — so no operation looks the socket up
    /// and no descriptor is allocated or closed per connection. Asking for the descriptor
    /// ([`Connection::as_fd`](crate::Connection), `peer_addr`) installs one on demand (a
    /// synchronous round trip to the reactor the first time). Needs Linux 6.8 and a
    /// `RLIMIT_NOFILE` of at least `max_connections_per_reactor`; otherwise the reactor logs why
    /// and uses plain descriptors. See docs/tuning.md. Default: `false`.
    pub direct_descriptors: bool,
    /// Sends of at least this many bytes use zero-copy (`IORING_OP_SEND_ZC`, Linux 6.0): the
    /// kernel sends from the connection's buffer instead of copying it, and the flush completes
    /// once the kernel no longer reads it (for TCP, once the peer acknowledged the bytes). Pays
    /// off for large responses on real network interfaces; over loopback the kernel copies
    /// anyway ([`ReactorStats::zc_copied`](crate::ReactorStats::zc_copied)). `0` is off. See
    /// docs/tuning.md. Default: `0`.
    pub send_zerocopy_threshold: usize,
}

impl ReactorConfig {
    /// The default configuration, as a constant.
    pub const DEFAULT: Self = Self {
        single_issuer: true,
        defer_taskrun: true,
        sqpoll: false,
        sq_cpu: None,
        sq_thread_idle: Duration::from_millis(100),
        ring_entries: 4096,
        recv_buffer_size: 16 * 1024,
        buffer_ring_entries: 4096,
        batch_cqes: 4096,
        max_connections_per_reactor: 8192,
        cq_timeout: None,
        min_wait: None,
        incremental_buffer_consumption: false,
        max_buffers_per_connection: 0,
        max_recv_bytes_per_connection: 256 * 1024,
        recv_reserve_buffers: 0,
        max_write_buffer: 64 * 1024 * 1024,
        write_timeout: None,
        read_timeout: None,
        idle_timeout: None,
        request_timeout: None,
        cpu: None,
        direct_descriptors: false,
        send_zerocopy_threshold: 0,
    };

    /// Receive memory this reactor reserves: `buffer_ring_entries × recv_buffer_size`.
    pub fn receive_memory(&self) -> usize {
        self.buffer_ring_entries as usize * self.recv_buffer_size as usize
    }

    /// The per-connection buffer limit in effect (resolves `0` from
    /// `max_recv_bytes_per_connection`).
    pub fn effective_max_buffers_per_connection(&self) -> u32 {
        limits::max_buffers(self)
    }

    /// The ring reserve in effect (resolves `0` to `buffer_ring_entries / 16`).
    pub fn effective_recv_reserve_buffers(&self) -> u32 {
        limits::reserve(self)
    }

    /// Checks this reactor configuration.
    ///
    /// # Errors
    ///
    /// [`Error::Config`](crate::Error::Config) naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        let e = |field: &'static str, why: String| Err(ConfigError::new(field, why).into());
        validate_ring(
            "",
            RingFlags {
                single_issuer: self.single_issuer,
                defer_taskrun: self.defer_taskrun,
                sqpoll: self.sqpoll,
                sq_cpu: self.sq_cpu,
                cq_timeout: self.cq_timeout,
            },
        )?;
        if self.sq_thread_idle > Duration::from_secs(3600) {
            return e("sq_thread_idle", "must be at most one hour".into());
        }
        if self.ring_entries == 0 || self.ring_entries > 32768 {
            return e(
                "ring_entries",
                format!("is {}, must be in 1..=32768", self.ring_entries),
            );
        }
        if self.recv_buffer_size == 0 {
            return e("recv_buffer_size", "must be at least 1 byte".into());
        }
        if self.recv_buffer_size > 1 << 30 {
            return e("recv_buffer_size", "must be at most 1 GiB".into());
        }
        if !self.buffer_ring_entries.is_power_of_two() || self.buffer_ring_entries > 32768 {
            return e(
                "buffer_ring_entries",
                format!(
                    "is {}, must be a power of two in 1..=32768",
                    self.buffer_ring_entries
                ),
            );
        }
        if (self.receive_memory() as u64) > (1u64 << 40) {
            return e(
                "recv_buffer_size",
                "buffer_ring_entries × recv_buffer_size exceeds 1 TiB".into(),
            );
        }
        if self.batch_cqes == 0 {
            return e("batch_cqes", "must be at least 1".into());
        }
        if self.max_connections_per_reactor == 0 {
            return e("max_connections_per_reactor", "must be at least 1".into());
        }
        limits::validate(self)?;
        if self.max_write_buffer == 0 {
            return e("max_write_buffer", "must be at least 1 byte".into());
        }
        if self
            .min_wait
            .is_some_and(|d| d < Duration::from_micros(1) || d > MAX_MIN_WAIT)
        {
            return e(
                "min_wait",
                "must be in 1 µs..=1 s (use None to wake for the first completion)".into(),
            );
        }
        for (field, value) in [
            ("write_timeout", self.write_timeout),
            ("read_timeout", self.read_timeout),
            ("idle_timeout", self.idle_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if value.is_some_and(|d| d.is_zero()) {
                return e(field, "must be non-zero (use None for no limit)".into());
            }
        }
        Ok(())
    }
}

impl Default for ReactorConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Configuration of the acceptor thread (C# zerg: `AcceptorConfig`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AcceptorConfig {
    /// `IORING_SETUP_SINGLE_ISSUER` for the acceptor ring. Default: `true`.
    pub single_issuer: bool,
    /// `IORING_SETUP_DEFER_TASKRUN` for the acceptor ring (needs `single_issuer`, excludes
    /// `sqpoll`). Default: `true`.
    pub defer_taskrun: bool,
    /// `IORING_SETUP_SQPOLL` for the acceptor ring. Rarely worth a core for accepts.
    /// Default: `false`.
    pub sqpoll: bool,
    /// `IORING_SETUP_SQ_AFF`: CPU of the acceptor's SQPOLL thread. Default: `None`.
    pub sq_cpu: Option<u32>,
    /// SQPOLL idle time before the kernel thread sleeps. Default: 100 ms.
    pub sq_thread_idle: Duration,
    /// Acceptor submission queue size (each accepted connection costs one hand-off entry).
    /// Default: `1024`.
    pub ring_entries: u32,
    /// Most accepts handled per loop iteration before hand-offs are submitted. Higher batches
    /// more under connection storms; lower hands connections over sooner. Default: `4096`.
    pub batch_sqes: u32,
    /// Upper bound on one wait. `None` (the default) waits until a connection or a stop request
    /// arrives.
    pub cq_timeout: Option<Duration>,
    /// IPv4, IPv6 or dual stack. Default: [`IpVersion::Ipv6DualStack`].
    pub ip_version: IpVersion,
    /// Delay before accepting again after the process ran out of file descriptors
    /// (`EMFILE`/`ENFILE`). Longer wastes less CPU while exhausted; shorter resumes sooner.
    /// Default: 100 ms.
    pub accept_backoff: Duration,
    /// Pin the acceptor thread to this CPU. Default: `None`.
    pub cpu: Option<usize>,
}

impl Default for AcceptorConfig {
    fn default() -> Self {
        Self {
            single_issuer: true,
            defer_taskrun: true,
            sqpoll: false,
            sq_cpu: None,
            sq_thread_idle: Duration::from_millis(100),
            ring_entries: 1024,
            batch_sqes: 4096,
            cq_timeout: None,
            ip_version: IpVersion::Ipv6DualStack,
            accept_backoff: Duration::from_millis(100),
            cpu: None,
        }
    }
}

impl AcceptorConfig {
    /// Checks this acceptor configuration.
    ///
    /// # Errors
    ///
    /// [`Error::Config`](crate::Error::Config) naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        let e = |field: &'static str, why: &str| {
            Err(ConfigError::new(format!("acceptor.{field}"), why.to_string()).into())
        };
        validate_ring(
            "acceptor.",
            RingFlags {
                single_issuer: self.single_issuer,
                defer_taskrun: self.defer_taskrun,
                sqpoll: self.sqpoll,
                sq_cpu: self.sq_cpu,
                cq_timeout: self.cq_timeout,
            },
        )?;
        if self.ring_entries < 2 || self.ring_entries > 32768 {
            return e("ring_entries", "must be in 2..=32768");
        }
        if self.batch_sqes == 0 {
            return e("batch_sqes", "must be at least 1");
        }
        if self.accept_backoff.is_zero() {
            return e("accept_backoff", "must be non-zero");
        }
        Ok(())
    }
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
