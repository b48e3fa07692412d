//! [`AcceptorConfig`]: the acceptor thread's ring and accept policy.

use std::time::Duration;

use super::{IpVersion, RingFlags, validate_ring};
use crate::error::{ConfigError, Result};

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
