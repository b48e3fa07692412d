//! [`Conn`]: a connection as its reactor sees it — the kernel-facing half (what is armed, what is
//! being sent, where it is in its life). The half the handle shares is [`ConnShared`].

use std::sync::Arc;

use super::connect::Connecting;
use crate::conn::ConnShared;
use crate::ring::{SendBuf, SockFd};

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Life {
    /// An outbound connect is in flight ([`Conn::connect`]); nothing else is armed and no handle
    /// exists yet (the future waiting for it is the "handle").
    Connecting,
    /// Receiving and sending.
    Open,
    /// Failed (reset, socket error, write timeout): no receive is armed again and the handle has
    /// been told; the connection closes when the handle lets go.
    Failed,
    /// No more I/O is started. The descriptor closes once no operation is in flight and the
    /// handle is gone (or the engine is stopping). `cancelled`: a cancellation of everything in
    /// flight on the descriptor was submitted.
    Closing { cancelled: bool },
}

/// The state of a connection's multishot receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RecvState {
    /// A multishot receive is in flight; `limited`: it carries a byte limit.
    Armed { limited: bool },
    /// A multishot receive is in flight and a cancellation of it too (a pause, or the
    /// connection stopped receiving).
    Cancelling,
    /// Not armed, to be armed by whoever set this state.
    Idle,
    /// Holding `max_buffers_per_connection` (or, while the ring is low, its quota); re-armed when
    /// buffers come back or the ring recovers.
    Paused,
    /// Ended with `-ENOBUFS`; re-armed when the ring has buffers again.
    Starved,
    /// End of stream, an error, or closing: never armed again.
    Ended,
}

/// A connection as the reactor sees it.
pub(super) struct Conn {
    /// The socket: a descriptor, or a slot in the ring's file table.
    pub(super) fd: SockFd,
    pub(super) shared: Arc<ConnShared>,
    pub(super) life: Life,
    pub(super) recv: RecvState,
    /// The application still holds the `Connection`.
    pub(super) handle_alive: bool,
    /// Pieces delivered and not yet returned.
    pub(super) held: u32,
    /// Operations in flight (receive, send, cancellations).
    pub(super) ops: u32,
    /// Bytes being sent.
    pub(super) send: SendBuf,
    /// Flush sequence completed when `send` is fully sent.
    pub(super) batch_seq: u64,
    /// The handle asked for a shutdown of the write side, to happen once `send` is empty.
    pub(super) shutdown_pending: bool,
    /// Deadline of this connection's entry in the reactor's timer map, if it has one.
    pub(super) timer_at: Option<u64>,
    /// Reactor time (ms) of the last byte received or sent: the idle timeout.
    pub(super) last_active: u64,
    /// Reactor time (ms) of the first byte received since the handler's last flush: the
    /// request timeout.
    pub(super) request_since: Option<u64>,
    /// Reactor time (ms) the send in flight started or last made progress: the write timeout.
    pub(super) send_since: u64,
    /// The outbound connect, while it or its linked timeout is in flight.
    pub(super) connect: Option<Box<Connecting>>,
    /// Accepted under the connection caps: its place goes back when it is freed (outbound
    /// connections take none).
    pub(super) admitted: bool,
    /// The close watch (a multishot poll for FIN, reset, error) is armed.
    pub(super) watch: bool,
    /// The watch saw the peer's FIN while bytes before it still waited in the socket: they are
    /// received (then end of file) once the receive is armed again.
    pub(super) peer_fin: bool,
}

impl Conn {
    pub(super) fn new(fd: SockFd, shared: Arc<ConnShared>) -> Self {
        Self {
            fd,
            shared,
            life: Life::Open,
            recv: RecvState::Idle,
            handle_alive: true,
            held: 0,
            ops: 0,
            send: SendBuf::default(),
            batch_seq: 0,
            shutdown_pending: false,
            timer_at: None,
            last_active: 0,
            request_since: None,
            send_since: 0,
            connect: None,
            admitted: false,
            watch: false,
            peer_fin: false,
        }
    }

    pub(super) fn is_open(&self) -> bool {
        self.life == Life::Open
    }

    pub(super) fn is_closing(&self) -> bool {
        matches!(self.life, Life::Closing { .. })
    }

    /// A send can start now: the connection is not closing and none is in flight.
    pub(super) fn can_send(&self) -> bool {
        !self.is_closing() && !self.send.is_inflight()
    }

    /// The multishot receive is armed and not being cancelled.
    pub(super) fn recv_armed(&self) -> bool {
        matches!(self.recv, RecvState::Armed { .. })
    }

    /// Ready to be freed: closing, nothing in flight, and nobody else needs the descriptor.
    pub(super) fn can_free(&self, stopping: bool) -> bool {
        self.is_closing() && self.ops == 0 && (!self.handle_alive || stopping)
    }
}
