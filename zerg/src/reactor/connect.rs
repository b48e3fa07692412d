//! Outbound connections: requests taken from the [`Outbound`] inbox become connections in the
//! same slab as accepted ones (slot + generation), either at once (an adopted socket) or when
//! their `IORING_OP_CONNECT` completes (with an optional linked timeout).
//!
//! A connect in flight is a connection in [`Life::Connecting`]: it counts its operations in
//! `Conn::ops` like any other, so closing it (the future was dropped, the engine stops) cancels
//! the connect, reaps both completions and only then closes the socket and frees the memory the
//! kernel read.

use std::io;
use std::os::fd::IntoRawFd;
use std::sync::Arc;

use super::conn::{Conn, Life};
use super::outbound::{OutboundRequest, Resolver, Target};
use super::{Phase, Reactor, fatal};
use crate::conn::{ConnShared, Connection};
use crate::error::{Error, Result};
use crate::ring::token::{ConnectionId, Kind, Token};
use crate::ring::{ConnectOp, SockFd};

/// The reactor's state of a connect in flight (boxed in [`Conn::connect`]).
#[derive(Debug)]
pub(super) struct Connecting {
    op: ConnectOp,
    target: Target,
    /// Taken when the outcome is known.
    resolver: Option<Resolver>,
    /// The linked timeout fired.
    timer_fired: bool,
}

impl Connecting {
    /// The kernel is done with it and the future has its answer: it can go.
    fn finished(&self) -> bool {
        self.op.is_idle() && self.resolver.is_none()
    }
}

impl Reactor {
    /// Takes the outbound requests queued since the last call.
    pub(super) fn drain_outbound(&mut self) -> Result<()> {
        if !self.outbound.has_work() {
            return Ok(());
        }
        let mut reqs = std::mem::take(&mut self.outbound_reqs);
        self.outbound.take(&mut reqs);
        let mut result = Ok(());
        for req in reqs.drain(..) {
            if result.is_ok() {
                result = self.start_outbound(req);
            }
            // After a failure the rest are dropped: their futures learn `EngineStopped`.
        }
        self.outbound_reqs = reqs;
        result
    }

    fn start_outbound(&mut self, req: OutboundRequest) -> Result<()> {
        let OutboundRequest {
            fd,
            target,
            resolver,
        } = req;
        if self.phase == Phase::Closing {
            // Dropping the socket closes it; dropping the resolver answers `EngineStopped`.
            return Ok(());
        }
        if self.conns.len() >= self.max_conns {
            let why = format!(
                "reactor {} has max_connections_per_reactor ({}) connections",
                self.index, self.max_conns
            );
            resolver.resolve(Err(target.error(io::Error::other(why))));
            return Ok(());
        }
        let id = self.conns.next_id();
        let fd = SockFd::Raw(fd.into_raw_fd());
        let shared = self.conn_shared(id, fd);
        if !resolver.started(&shared) {
            // Nobody waits for it any more.
            self.discard_fd(fd);
            return Ok(());
        }
        let inserted = self.conns.insert(Conn::new(fd, shared.clone()));
        debug_assert_eq!(inserted, id);
        match target {
            Target::Adopt { .. } => {
                self.opened(id, shared, resolver)?;
            }
            Target::Connect { addr, timeout } => {
                let conn = self.conns.get_mut(id).expect("inserted above");
                conn.life = Life::Connecting;
                let mut connecting = Box::new(Connecting {
                    op: ConnectOp::new(addr, timeout),
                    target,
                    resolver: Some(resolver),
                    timer_fired: false,
                });
                let linked = self
                    .ring
                    .connect(
                        fd,
                        &mut connecting.op,
                        Token::conn(Kind::Connect, id),
                        Token::conn(Kind::ConnectTimeout, id),
                    )
                    .map_err(|e| fatal(e, "submit connect"))?;
                conn.ops += if linked { 2 } else { 1 };
                conn.connect = Some(connecting);
            }
        }
        Ok(())
    }

    /// `id` is connected: it receives from now on and its handle goes to the future.
    fn opened(
        &mut self,
        id: ConnectionId,
        shared: Arc<ConnShared>,
        resolver: Resolver,
    ) -> Result<()> {
        self.stats.connections_total += 1;
        self.arm_recv(id)?;
        self.arm_conn_timer(id);
        resolver.resolve(Ok(Connection::new(shared, self.shared.max_write_buffer)));
        Ok(())
    }

    pub(super) fn on_connect(&mut self, id: ConnectionId, res: i32) -> Result<()> {
        let Some(conn) = self.conns.get_mut(id) else {
            self.stats.stale_completions += 1;
            return Ok(());
        };
        conn.ops -= 1;
        let closing = conn.is_closing();
        let Some(c) = conn.connect.as_mut() else {
            tracing::warn!(
                conn = %id,
                "connect completion for a connection that is not connecting"
            );
            return Ok(());
        };
        c.op.completed();
        let resolver = c.resolver.take();
        let outcome = if closing {
            // Cancelled: its future was dropped, or the engine is stopping.
            Err(Error::EngineStopped)
        } else if res >= 0 {
            Ok(())
        } else {
            Err(match c.target {
                Target::Connect {
                    addr,
                    timeout: Some(timeout),
                } if c.timer_fired || res == -libc::ECANCELED || res == -libc::EINTR => {
                    Error::ConnectTimedOut { addr, timeout }
                }
                t => t.error(io::Error::from_raw_os_error(-res)),
            })
        };
        if c.finished() {
            conn.connect = None;
        }
        match outcome {
            Ok(()) => {
                conn.life = Life::Open;
                let shared = conn.shared.clone();
                match resolver {
                    Some(r) => self.opened(id, shared, r),
                    None => Ok(()),
                }
            }
            Err(e) => {
                conn.handle_alive = false;
                if let Some(r) = resolver {
                    r.resolve(Err(e));
                }
                if closing {
                    self.maybe_finish_close(id);
                    Ok(())
                } else {
                    self.begin_close(id, None)
                }
            }
        }
    }

    /// The timeout linked to a connect completed (`-ETIME`: it fired and cancelled the connect).
    pub(super) fn on_connect_timeout(&mut self, id: ConnectionId, res: i32) {
        let Some(conn) = self.conns.get_mut(id) else {
            self.stats.stale_completions += 1;
            return;
        };
        conn.ops -= 1;
        if let Some(c) = conn.connect.as_mut() {
            c.op.completed();
            c.timer_fired |= res == -libc::ETIME;
            if c.finished() {
                conn.connect = None;
            }
        }
        self.maybe_finish_close(id);
    }

    /// The reactor exits: every connect still waiting for its outcome learns `EngineStopped`,
    /// and so does every request still queued (their sockets close). The memory of connects the
    /// kernel may still read stays with their connections (freed after the ring is drained, or
    /// leaked after a failure).
    pub(super) fn fail_outbound(&mut self) {
        for id in self.conns.ids() {
            if let Some(c) = self.conns.get_mut(id).and_then(|c| c.connect.as_mut()) {
                drop(c.resolver.take());
            }
        }
        drop(self.outbound.close());
    }
}
