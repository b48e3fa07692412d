//! One connection of the load generator: its state, and how its operations are named in the
//! ring's `user_data`.

use std::collections::VecDeque;
use std::time::Instant;

use socket2::Socket;

use super::check::{Checker, Expect};

// The operation kinds in the low byte of `user_data`; above them the connection's generation
// (24 bits) and index (32 bits).
pub(crate) const OP_CONNECT: u64 = 1;
pub(crate) const OP_SEND: u64 = 2;
pub(crate) const OP_RECV: u64 = 3;
pub(crate) const OP_CANCEL: u64 = 4;

/// The `user_data` of operation `op` of connection `idx` in its generation `generation`.
pub(crate) fn user_data(idx: usize, generation: u32, op: u64) -> u64 {
    ((idx as u64) << 32) | ((u64::from(generation) & 0xff_ffff) << 8) | op
}

/// `user_data` back to (connection index, generation, operation).
pub(crate) fn split(ud: u64) -> (usize, u32, u64) {
    (
        (ud >> 32) as usize,
        ((ud >> 8) & 0xff_ffff) as u32,
        ud & 0xff,
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Waiting for a reconnect timer.
    Closed,
    Connecting,
    Open,
}

/// One connection's state machine.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) sock: Option<Socket>,
    /// Bumped at every close: completions of an earlier socket carry an older value.
    pub(crate) generation: u32,
    pub(crate) state: State,
    /// The message repeated; what is sent is always a slice of it.
    pub(crate) batch: &'static [u8],
    pub(crate) msg_len: usize,
    pub(crate) expect: Expect,
    /// Offset inside the message of the next byte to send.
    pub(crate) phase: usize,
    /// Bytes queued and not yet handed to a send.
    pub(crate) unsent: usize,
    /// Bytes in the send in flight (0: none).
    pub(crate) sending: usize,
    pub(crate) recv_armed: bool,
    /// (send time, requests) of the requests in flight, oldest first.
    pub(crate) inflight: VecDeque<(Instant, u32)>,
    pub(crate) inflight_n: usize,
    pub(crate) checker: Checker,
    /// Requests queued on this TCP connection (for `--reqs-per-conn`).
    pub(crate) queued_on_conn: u64,
    pub(crate) done_on_conn: u64,
    pub(crate) timer_armed: bool,
}

impl Conn {
    /// A closed connection that sends `batch` (its message of `msg_len` bytes, repeated) and
    /// expects `expect`; `qcap` requests at most in one send.
    pub(crate) fn new(batch: &'static [u8], msg_len: usize, expect: Expect, qcap: usize) -> Self {
        Self {
            sock: None,
            generation: 0,
            state: State::Closed,
            batch,
            msg_len,
            expect,
            phase: 0,
            unsent: 0,
            sending: 0,
            recv_armed: false,
            inflight: VecDeque::with_capacity(qcap),
            inflight_n: 0,
            checker: Checker::default(),
            queued_on_conn: 0,
            done_on_conn: 0,
            timer_armed: false,
        }
    }
}

/// Connection `id`'s echo message: a byte pattern whose phase depends on the connection, so
/// bytes echoed to the wrong connection fail verification.
pub(crate) fn echo_pattern(id: usize, size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| ((i + id * 37) as u8).wrapping_mul(131) ^ ((id >> 8) as u8))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips() {
        let ud = user_data(4095, 0x1234_5678, OP_RECV);
        assert_eq!(split(ud), (4095, 0x34_5678, OP_RECV));
    }

    #[test]
    fn patterns_differ_between_connections() {
        assert_ne!(echo_pattern(0, 64), echo_pattern(1, 64));
        assert_ne!(echo_pattern(0, 64), echo_pattern(256, 64));
    }
}
