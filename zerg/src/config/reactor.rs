//! [`ReactorConfig`]: the configuration of one reactor, its defaults and its checks.

use std::time::Duration;

use super::{RecvRingConfig, RingFlags, limits, recv_ring, validate_ring};
use crate::error::{ConfigError, Result};

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
    /// Room for receive buffers in the provided-buffer ring (power of two, at most 32768): the
    /// most that circulate once the ring has grown ([`RecvRingConfig`]). More buffers serve more
    /// concurrently-active connections before `-ENOBUFS` back-pressure; the ring reserves
    /// `buffer_ring_entries × recv_buffer_size` bytes of address space. Default: `4096`.
    pub buffer_ring_entries: u32,
    /// Most completions handled per loop iteration. Higher values batch more work per wake-up
    /// (throughput); lower values return to submitting sooner (latency). Default: `4096`.
    pub batch_cqes: u32,
    /// Most live connections on this reactor. At the cap, accepting pauses (connections wait in
    /// the listen backlog) and resumes at 90 % of it; see [`EngineOptions::max_connections`](crate::EngineOptions::max_connections) for
    /// the engine-wide cap. With [`AcceptMode::PerReactor`](crate::AcceptMode::PerReactor) a reactor at its cap leaves the
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
    /// How many buffers circulate, how the ring grows and shrinks, and receive bundles: see
    /// [`RecvRingConfig`]. Default: 8 MiB of buffers at start, shrinking back after 5 s of
    /// light use; bundles off.
    pub recv_ring: RecvRingConfig,
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
    /// Most bytes a connection may stage for writing before [`Connection::write`](crate::Connection::write) refuses more
    /// (and [`Connection::write_all`](crate::Connection::write_all) waits for a flush). Bounds memory per connection when a
    /// peer reads slowly. Default: 64 MiB.
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
        recv_ring: RecvRingConfig::DEFAULT,
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

    /// Receive memory this reactor reserves as address space (the most it circulates):
    /// `buffer_ring_entries × recv_buffer_size`.
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

    /// Buffers in circulation at start (resolves `recv_ring.initial_buffers = 0`).
    pub fn effective_initial_recv_buffers(&self) -> u32 {
        recv_ring::initial_buffers(self)
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
        recv_ring::validate(self)?;
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
