//! The bounds a hostile or careless peer runs into: how much of the receive ring one connection
//! may hold, the reserve kept for light connections, and the connection caps. Derived values and
//! their validation live here; docs/tuning.md explains the choices.

use super::{EngineOptions, ReactorConfig};
use crate::error::{ConfigError, Result};

/// Fewest buffers the derived bound allows: with buffers as large as the byte bound, one buffer
/// would make a connection receive only while nothing it received is being sent (a receive often
/// fills a buffer only partly), so an echo or a proxy would alternate instead of overlapping.
const MIN_DERIVED_BUFFERS: u32 = 4;

/// `max_buffers_per_connection`, or `⌈max_recv_bytes_per_connection / recv_buffer_size⌉` but at
/// least [`MIN_DERIVED_BUFFERS`], within `1..=buffer_ring_entries`.
pub(super) fn max_buffers(rc: &ReactorConfig) -> u32 {
    if rc.max_buffers_per_connection != 0 {
        return rc.max_buffers_per_connection;
    }
    let size = rc.recv_buffer_size.max(1) as usize;
    let buffers = rc.max_recv_bytes_per_connection.div_ceil(size);
    u32::try_from(buffers)
        .unwrap_or(u32::MAX)
        .max(MIN_DERIVED_BUFFERS)
        .clamp(1, rc.buffer_ring_entries.max(1))
}

/// `recv_reserve_buffers`, or `buffer_ring_entries / 16`.
pub(super) fn reserve(rc: &ReactorConfig) -> u32 {
    if rc.recv_reserve_buffers != 0 {
        rc.recv_reserve_buffers
    } else {
        rc.buffer_ring_entries / 16
    }
}

/// `max_connections`, or the sum of the per-reactor caps.
pub(super) fn max_connections(o: &EngineOptions) -> usize {
    if o.max_connections != 0 {
        return o.max_connections as usize;
    }
    (0..o.reactor_count)
        .map(|i| o.reactor_config(i).max_connections_per_reactor as usize)
        .sum::<usize>()
        .max(1)
}

/// Checks the per-connection bound and the reserve of one reactor.
pub(super) fn validate(rc: &ReactorConfig) -> Result<()> {
    let e = |field: &'static str, why: String| Err(ConfigError::new(field, why).into());
    if rc.max_buffers_per_connection > rc.buffer_ring_entries {
        return e(
            "max_buffers_per_connection",
            format!(
                "is {}, more than the {} buffers in the ring",
                rc.max_buffers_per_connection, rc.buffer_ring_entries
            ),
        );
    }
    if rc.max_recv_bytes_per_connection == 0 {
        return e("max_recv_bytes_per_connection", "must be at least 1".into());
    }
    if rc.recv_reserve_buffers > rc.buffer_ring_entries / 2 {
        return e(
            "recv_reserve_buffers",
            format!(
                "is {}, more than half of the {} buffers in the ring",
                rc.recv_reserve_buffers, rc.buffer_ring_entries
            ),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    fn field_of(err: Error) -> String {
        match err {
            Error::Config(c) => c.field().to_string(),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn per_connection_limit_resolves_from_bytes() {
        let rc = ReactorConfig::default();
        // 256 KiB of 16 KiB buffers.
        assert_eq!(rc.effective_max_buffers_per_connection(), 16);
        assert_eq!(rc.effective_recv_reserve_buffers(), 256);
        let rc = ReactorConfig {
            recv_buffer_size: 5000,
            ..ReactorConfig::default()
        };
        assert_eq!(rc.effective_max_buffers_per_connection(), 53, "rounded up");
        let rc = ReactorConfig {
            recv_buffer_size: 1 << 20,
            buffer_ring_entries: 64,
            ..ReactorConfig::default()
        };
        assert_eq!(
            rc.effective_max_buffers_per_connection(),
            4,
            "at least 4 buffers, even when one holds more than the byte bound"
        );
        let rc = ReactorConfig {
            recv_buffer_size: 4096,
            buffer_ring_entries: 2,
            ..ReactorConfig::default()
        };
        assert_eq!(
            rc.effective_max_buffers_per_connection(),
            2,
            "never more than the ring"
        );
        assert_eq!(
            rc.effective_recv_reserve_buffers(),
            0,
            "no reserve in tiny rings"
        );
        let rc = ReactorConfig {
            max_buffers_per_connection: 3,
            ..ReactorConfig::default()
        };
        assert_eq!(
            rc.effective_max_buffers_per_connection(),
            3,
            "explicit wins"
        );
    }

    #[test]
    fn per_connection_limits_are_validated() {
        let rc = ReactorConfig {
            max_buffers_per_connection: 9999,
            ..ReactorConfig::default()
        };
        assert_eq!(
            field_of(rc.validate().unwrap_err()),
            "max_buffers_per_connection"
        );
        let rc = ReactorConfig {
            max_recv_bytes_per_connection: 0,
            ..ReactorConfig::default()
        };
        assert_eq!(
            field_of(rc.validate().unwrap_err()),
            "max_recv_bytes_per_connection"
        );
        let rc = ReactorConfig {
            recv_reserve_buffers: 4096,
            ..ReactorConfig::default()
        };
        assert_eq!(field_of(rc.validate().unwrap_err()), "recv_reserve_buffers");
    }

    #[test]
    fn engine_cap_defaults_to_the_sum_of_reactor_caps() {
        let mut o = EngineOptions {
            reactor_count: 3,
            ..EngineOptions::default()
        };
        assert_eq!(o.effective_max_connections(), 3 * 8192);
        o.max_connections = 100;
        assert_eq!(o.effective_max_connections(), 100);
    }
}
