//! New connections: the accept of per-reactor accept mode (multishot below the connection
//! caps' low watermark, one at a time above it, paused at the cap), hand-offs from the acceptor
//! thread, and adopting a descriptor (or a direct descriptor, `fds.rs`) as a connection.

use std::collections::VecDeque;
use std::sync::Arc;

use io_uring::cqueue;

use super::conn::Conn;
use super::{Phase, Reactor, Sink, fatal};
use crate::admission::{AcceptGate, Admission, GateAction};
use crate::conn::Connection;
use crate::error::Result;
use crate::log_throttle::{log_accept_error, warn_throttled};
use crate::ring::SockFd;
use crate::ring::token::{Kind, Token};

/// A reactor's side of the connection caps.
pub(super) struct Accepting {
    /// The engine's places.
    pub(super) admission: Arc<Admission>,
    /// The accept against the caps (per-reactor accept mode).
    gate: AcceptGate,
    /// Connections accepted in the same batch as the one that reached the cap, waiting for a
    /// place (open: they are served once one frees up).
    deferred: VecDeque<SockFd>,
}

impl Accepting {
    pub(super) fn new(admission: Arc<Admission>) -> Self {
        Self {
            admission,
            gate: AcceptGate::default(),
            deferred: VecDeque::new(),
        }
    }
}

impl Reactor {
    /// Arms the accept: multishot below the caps' low watermark, one connection at a time above.
    pub(super) fn arm_accept(&mut self) -> Result<()> {
        if let Some(fd) = self.listener {
            let room = self.accepting.admission.room(Some(self.index), |_| true);
            let token = Token::engine(Kind::Accept);
            let direct = self.features.direct;
            if self.accepting.gate.arming(room) {
                self.ring.accept_multi(fd, direct, token)
            } else {
                self.ring.accept_one(fd, direct, token)
            }
            .map_err(|e| fatal(e, "arm accept"))?;
            self.accept_armed = true;
            self.misc_ops += 1;
        }
        Ok(())
    }

    pub(super) fn on_accept(&mut self, res: i32, flags: u32) -> Result<()> {
        let more = cqueue::more(flags);
        if !more {
            self.misc_ops -= 1;
            self.accept_armed = false;
            self.accepting.gate.ended();
        }
        if res >= 0 {
            let fd = if self.features.direct {
                SockFd::Fixed(res as u32)
            } else {
                SockFd::Raw(res)
            };
            self.accepted(fd)?;
        } else if res != -libc::ECANCELED && !self.engine.is_stopping() {
            self.stats.accept_errors += 1;
            log_accept_error(&mut self.logs.accept_errors, -res);
        }
        // Stopping: the listener was shut down, which ends the accept with an error. Paused: the
        // loop re-arms it once there is room.
        let running = self.phase == Phase::Running && !self.engine.is_stopping();
        if res == -libc::EINVAL && running {
            // The socket left the listening state under us (another holder of an inherited
            // listener shut it down): re-arming would fail at once, forever.
            tracing::error!(
                reactor = self.index,
                "listener is no longer listening; accepting on it stopped"
            );
        } else if !more && running && !self.accepting.gate.is_paused() {
            if res == -libc::EMFILE || res == -libc::ENFILE {
                // Out of descriptors (or of slots in the file table): retrying at once would
                // spin. Try again after a pause.
                self.ring
                    .backoff_timer(Token::engine(Kind::AcceptBackoff))
                    .map_err(|e| fatal(e, "arm the accept back-off"))?;
                self.misc_ops += 1;
            } else {
                self.stats.accept_rearms += 1;
                self.arm_accept()?;
            }
        }
        Ok(())
    }

    /// The accept back-off after `EMFILE`/`ENFILE` ended.
    pub(super) fn on_accept_backoff(&mut self) -> Result<()> {
        self.misc_ops -= 1;
        if self.phase == Phase::Running && !self.accept_armed && !self.accepting.gate.is_paused() {
            self.stats.accept_rearms += 1;
            self.arm_accept()?;
        }
        Ok(())
    }

    /// A connection this reactor accepted itself: adopted if the caps leave a place, else kept
    /// until one frees up. Near the cap the multishot accept ends (it is re-armed one connection
    /// at a time); at the cap accepting pauses.
    fn accepted(&mut self, fd: SockFd) -> Result<()> {
        if self.phase != Phase::Running {
            self.discard_fd(fd);
            return Ok(());
        }
        if self.accepting.deferred.is_empty()
            && self.accepting.admission.try_admit(self.index, false)
        {
            self.adopt(fd)?;
        } else {
            tracing::debug!(?fd, "accepted past the connection cap; waiting for a place");
            self.accepting.deferred.push_back(fd);
        }
        self.apply_gate()
    }

    /// Adjusts the accept to the counts: one at a time near the cap, paused at it. Other reactors
    /// accepting on their own listeners learn of a crossing at once, so a multishot accept of
    /// theirs does not take a whole backlog past the engine-wide cap.
    fn apply_gate(&mut self) -> Result<()> {
        let room = self.accepting.admission.room(Some(self.index), |_| true);
        let action = self.accepting.gate.placed(self.accept_armed, room);
        if action != GateAction::Nothing && self.engine.reactors().len() > 1 {
            for r in self.engine.reactors() {
                if r.index != self.index && self.accepting.admission.ask_recheck(r.index) {
                    r.wake();
                }
            }
        }
        let cancel = match action {
            GateAction::Nothing => false,
            GateAction::Cancel => true,
            GateAction::Pause { cancel } => {
                self.stats.accept_pauses += 1;
                warn_throttled!(
                    self.logs.accept_pauses,
                    connections = self.conns.len(),
                    "connection cap reached: accepting paused, new connections wait in the listen backlog"
                );
                cancel
            }
        };
        if cancel {
            self.ring
                .cancel(
                    Token::engine(Kind::Accept),
                    Token::engine(Kind::AcceptCancel),
                )
                .map_err(|e| fatal(e, "cancel accept"))?;
            self.misc_ops += 1;
        }
        Ok(())
    }

    /// Once per loop iteration while accepting is paused: adopts the connections kept waiting
    /// while places are free, and accepts again once the counts are back at the watermark.
    /// Whatever cannot go on parks this reactor in the admission counts, so the release that
    /// makes room wakes it.
    pub(super) fn check_accept(&mut self) -> Result<()> {
        if self.phase != Phase::Running || self.engine.is_stopping() {
            return Ok(());
        }
        if self.accepting.admission.take_recheck(self.index) && self.accept_armed {
            // Another reactor's connections brought the engine near its cap.
            self.apply_gate()?;
        }
        if !self.accepting.gate.is_paused() {
            return Ok(());
        }
        while let Some(&fd) = self.accepting.deferred.front() {
            if !self.accepting.admission.try_admit(self.index, true) {
                return Ok(());
            }
            self.accepting.deferred.pop_front();
            self.adopt(fd)?;
        }
        // The paused accept's last completion must have arrived before it is armed again.
        if self.accept_armed
            || !self
                .accepting
                .admission
                .resume_or_park(Some(self.index), |_| true)
        {
            return Ok(());
        }
        self.accepting.gate.resume();
        if self.logs.accept_pauses.last_warned() {
            tracing::info!(
                connections = self.conns.len(),
                "below the connection cap again: accepting"
            );
        } else {
            tracing::debug!(
                connections = self.conns.len(),
                "below the connection cap again: accepting"
            );
        }
        self.stats.accept_rearms += 1;
        self.arm_accept()
    }

    /// A connection of this reactor was freed: its place goes back, and whoever stopped
    /// accepting at a cap is woken if the counts reached the watermark.
    pub(super) fn release_place(&mut self) {
        if !self.accepting.admission.release(self.index) {
            return;
        }
        if let Some(acceptor) = self.engine.acceptor() {
            acceptor.wake();
        } else {
            for r in self.engine.reactors() {
                if r.index != self.index {
                    r.wake();
                }
            }
        }
    }

    /// Closes the connections kept waiting for a place (the engine stops).
    pub(super) fn close_deferred(&mut self) {
        while let Some(fd) = self.accepting.deferred.pop_front() {
            self.discard_fd(fd);
        }
    }

    /// Takes ownership of an accepted descriptor whose place is taken.
    pub(super) fn adopt(&mut self, fd: SockFd) -> Result<()> {
        if self.phase != Phase::Running || self.conns.len() >= self.max_conns {
            // Stopping (or, defensively, a place counted wrong): nobody will serve it.
            if self.phase == Phase::Running {
                self.stats.connections_shed += 1;
                warn_throttled!(
                    self.logs.shed,
                    ?fd,
                    connections = self.conns.len(),
                    "no room for a new connection on this reactor: closed it (shed)"
                );
            }
            self.discard_fd(fd);
            self.release_place();
            return Ok(());
        }
        let id = self.conns.next_id();
        let shared = self.conn_shared(id, fd);
        let mut conn = Conn::new(fd, shared.clone());
        conn.admitted = true;
        let inserted = self.conns.insert(conn);
        debug_assert_eq!(inserted, id);
        self.stats.connections_total += 1;
        if let SockFd::Fixed(_) = fd {
            self.stats.direct_connections += 1;
        }
        tracing::trace!(conn = %id, ?fd, "connection opened");
        self.arm_recv(id)?;
        self.arm_conn_timer(id);
        let conn = Connection::new(shared, self.shared.max_write_buffer);
        match &mut self.sink {
            Sink::Runtime(tx) => {
                if let Err(e) = tx.try_send(conn) {
                    // Nobody accepts (engine stopping) or the backlog of unaccepted connections
                    // is full: shed it. Dropping the handle queues its close.
                    if e.is_full() {
                        self.stats.connections_shed += 1;
                        warn_throttled!(
                            self.logs.shed,
                            conn = %id,
                            "the queue of connections for Engine::accept is full: closed a new \
                             connection (shed); accept faster or raise the connection caps"
                        );
                    }
                    drop(e.into_inner());
                }
            }
            Sink::Serve(handler) => handler(conn),
        }
        Ok(())
    }
}
