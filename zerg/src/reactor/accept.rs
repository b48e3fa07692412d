//! New connections: the multishot accept of per-reactor accept mode, hand-offs from the acceptor
//! thread, and adopting a descriptor as a connection.

use std::os::fd::RawFd;
use std::sync::Arc;

use io_uring::cqueue;

use super::conn::Conn;
use super::{Phase, Reactor, Sink, fatal};
use crate::conn::{ConnShared, Connection};
use crate::error::Result;
use crate::ring::token::{Kind, Token};
use crate::sys;

impl Reactor {
    pub(super) fn arm_accept(&mut self) -> Result<()> {
        if let Some(fd) = self.listener {
            self.ring
                .accept_multi(fd, Token::engine(Kind::Accept))
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
        }
        if res >= 0 {
            self.adopt(res)?;
        } else if res != -libc::ECANCELED && !self.engine.is_stopping() {
            self.stats.accept_errors += 1;
            tracing::warn!(reactor = self.index, error = %std::io::Error::from_raw_os_error(-res), "accept failed");
        }
        // Stopping: the listener was shut down, which ends the accept with an error.
        if !more && self.phase == Phase::Running && !self.engine.is_stopping() {
            if res == -libc::EMFILE || res == -libc::ENFILE {
                // Out of descriptors: retrying at once would spin. Try again after a pause.
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
        if self.phase == Phase::Running && !self.accept_armed {
            self.stats.accept_rearms += 1;
            self.arm_accept()?;
        }
        Ok(())
    }

    /// Takes ownership of an accepted descriptor.
    pub(super) fn adopt(&mut self, fd: RawFd) -> Result<()> {
        if self.phase != Phase::Running {
            sys::close(fd);
            return Ok(());
        }
        if self.conns.len() >= self.max_conns {
            self.stats.connections_shed += 1;
            sys::close(fd);
            return Ok(());
        }
        let id = self.conns.next_id();
        let shared = Arc::new(ConnShared::new(id, fd, self.shared.clone()));
        let inserted = self.conns.insert(Conn::new(fd, shared.clone()));
        debug_assert_eq!(inserted, id);
        self.stats.connections_total += 1;
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
                    }
                    drop(e.into_inner());
                }
            }
            Sink::Serve(handler) => handler(conn),
        }
        Ok(())
    }
}
