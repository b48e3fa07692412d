//! [`RecvRingConfig`]: how much of the receive ring circulates, how it grows and shrinks, and
//! whether receives take several buffers per completion. docs/tuning.md explains the choices.

use std::time::Duration;

use super::ReactorConfig;
use crate::error::{ConfigError, Result};

/// Receive memory a reactor starts with when [`RecvRingConfig::initial_buffers`] is `0`.
const INITIAL_BYTES: usize = 8 << 20;

/// How a reactor's receive ring is used ([`ReactorConfig::recv_ring`]).
///
/// The ring has room for [`buffer_ring_entries`](ReactorConfig::buffer_ring_entries) buffers,
/// but only some of them *circulate*: the kernel takes buffers in ring order, so whatever
/// circulates is the memory a workload touches (and keeps resident). A reactor starts with
/// `initial_buffers` in circulation, doubles them whenever fewer than a quarter (or fewer than
/// the reserve) are free, up to `buffer_ring_entries`, and after `shrink_after` with little in
/// use brings them back down, returning the pages of the buffers it takes out of circulation
/// to the system. [`ReactorStats`](crate::ReactorStats) counts the episodes (`ring_grows`,
/// `ring_shrinks`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RecvRingConfig {
    /// Buffers in circulation at start, and the least the ring shrinks back to. `0` derives it:
    /// 8 MiB worth of `recv_buffer_size` (512 buffers of 16 KiB), but at least twice the
    /// per-connection bound and at most `buffer_ring_entries`. Set it to `buffer_ring_entries`
    /// for a fixed ring. Default: `0`.
    pub initial_buffers: u32,
    /// How long the ring must stay lightly used (at most a quarter of what circulates held at
    /// once) before it shrinks: it then keeps twice the peak use of that time, at least
    /// `initial_buffers`, and gives back the pages of the buffers in the ring nobody holds (they
    /// read as zeros until the kernel writes into them again; only with `defer_taskrun`, where
    /// the kernel writes received data only while the reactor is inside `io_uring_enter`). A
    /// shrinking ring arms one timer per period while it is above `initial_buffers`; none once
    /// it is back. `None`: never shrink. Default: 5 s.
    pub shrink_after: Option<Duration>,
    /// Receive bundles (`IORING_RECVSEND_BUNDLE`, Linux 6.10): one completion carries as many
    /// buffers as the socket had data for, instead of one completion per buffer. Fewer
    /// completions on bulk transfers; nothing changes for messages smaller than a buffer. The
    /// kernel support is probed at start (and, with
    /// [`incremental_buffer_consumption`](ReactorConfig::incremental_buffer_consumption), a
    /// short self-test checks that the kernel delivers bundles into incrementally consumed
    /// buffers correctly); without it the reactor logs why and receives one buffer per
    /// completion. Default: `false`.
    pub bundle: bool,
}

impl RecvRingConfig {
    /// The default configuration, as a constant.
    pub const DEFAULT: Self = Self {
        initial_buffers: 0,
        shrink_after: Some(Duration::from_secs(5)),
        bundle: false,
    };
}

impl Default for RecvRingConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// `initial_buffers`, or what `0` derives.
pub(super) fn initial_buffers(rc: &ReactorConfig) -> u32 {
    let entries = rc.buffer_ring_entries.max(1);
    if rc.recv_ring.initial_buffers != 0 {
        return rc.recv_ring.initial_buffers.min(entries);
    }
    let by_bytes = INITIAL_BYTES / rc.recv_buffer_size.max(1) as usize;
    let by_bytes = u32::try_from(by_bytes).unwrap_or(u32::MAX);
    let floor = rc.effective_max_buffers_per_connection().saturating_mul(2);
    by_bytes.max(floor).clamp(1, entries)
}

/// Checks the receive-ring settings of one reactor.
pub(super) fn validate(rc: &ReactorConfig) -> Result<()> {
    let e = |field: &'static str, why: String| Err(ConfigError::new(field, why).into());
    let r = &rc.recv_ring;
    if r.initial_buffers > rc.buffer_ring_entries {
        return e(
            "recv_ring.initial_buffers",
            format!(
                "is {}, more than the {} buffers in the ring",
                r.initial_buffers, rc.buffer_ring_entries
            ),
        );
    }
    if r.shrink_after
        .is_some_and(|d| d < Duration::from_millis(10))
    {
        return e(
            "recv_ring.shrink_after",
            "must be at least 10 ms (use None to never shrink)".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[test]
    fn initial_circulation_is_8_mib_within_the_ring() {
        let rc = ReactorConfig::default();
        assert_eq!(rc.effective_initial_recv_buffers(), 512);
        let mut rc = ReactorConfig {
            recv_buffer_size: 1 << 20,
            buffer_ring_entries: 64,
            ..ReactorConfig::default()
        };
        // 8 MiB of 1 MiB buffers, and twice the 4-buffer bound.
        assert_eq!(rc.effective_initial_recv_buffers(), 8);
        rc.buffer_ring_entries = 4;
        assert_eq!(rc.effective_initial_recv_buffers(), 4, "at most the ring");
        rc.recv_ring.initial_buffers = 2;
        assert_eq!(rc.effective_initial_recv_buffers(), 2, "explicit wins");
        let rc = ReactorConfig {
            recv_buffer_size: 512,
            ..ReactorConfig::default()
        };
        assert_eq!(
            rc.effective_initial_recv_buffers(),
            4096,
            "whole small rings"
        );
    }

    #[test]
    fn recv_ring_settings_are_validated() {
        let field = |rc: &ReactorConfig| match rc.validate().unwrap_err() {
            Error::Config(c) => c.field().to_string(),
            other => panic!("{other:?}"),
        };
        let mut rc = ReactorConfig::default();
        rc.recv_ring.initial_buffers = 8192;
        assert_eq!(field(&rc), "recv_ring.initial_buffers");
        let mut rc = ReactorConfig::default();
        rc.recv_ring.shrink_after = Some(Duration::ZERO);
        assert_eq!(field(&rc), "recv_ring.shrink_after");
        rc.recv_ring.shrink_after = None;
        rc.validate().unwrap();
    }
}
