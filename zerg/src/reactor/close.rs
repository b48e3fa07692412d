//! Closing: one connection (cancel what is in flight, reap it, then close the descriptor and free
//! the slot; `fds.rs` does the descriptor part), the whole reactor (stop accepting, drain for the
//! grace period, close everything), and the teardown that leaves the ring drained before memory
//! shared with the kernel is freed.

use std::time::{Duration, Instant};

use super::conn::Life;
use super::{BGID, Phase, Reactor, fatal};
use crate::error::{CloseReason, Result};
use crate::ring::token::{ConnectionId, Kind, Token};
use crate::runtime::executor;

impl Reactor {
    /// Stops all I/O of a connection; it is freed once its operations completed and its handle
    /// is gone (or the engine stops). With `reason`, the handle's reads and writes end with it.
    pub(super) fn begin_close(
        &mut self,
        id: ConnectionId,
        reason: Option<CloseReason>,
    ) -> Result<()> {
        let Some(conn) = self.conns.get_mut(id) else {
            return Ok(());
        };
        let cancelled = matches!(conn.life, Life::Closing { cancelled: true });
        conn.life = Life::Closing { cancelled };
        self.disarm_conn_timer(id);
        let conn = self.conns.get_mut(id).expect("looked up above");
        conn.send.discard();
        if let Some(r) = reason {
            conn.shared.end_read(r);
            conn.shared.end_write(r);
        }
        if conn.ops > 0 && !cancelled {
            conn.life = Life::Closing { cancelled: true };
            conn.ops += 1;
            let fd = conn.fd;
            self.ring
                .cancel_fd(fd, Token::conn(Kind::Cancel, id))
                .map_err(|e| fatal(e, "cancel connection"))?;
        }
        // Received pieces that were to be sent in place go back to the ring.
        self.release_sent(id)?;
        self.maybe_finish_close(id);
        Ok(())
    }

    /// Fails a live connection (a timeout): its reads and writes end with `reason` and its socket
    /// is shut down both ways, which ends the receive and any send in flight at once and tells
    /// the peer. The descriptor closes when the handle lets go.
    pub(super) fn fail_conn(&mut self, id: ConnectionId, reason: CloseReason) {
        self.disarm_conn_timer(id);
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if !conn.is_open() {
            return;
        }
        conn.life = Life::Failed;
        conn.shared.end_read(reason);
        conn.shared.end_write(reason);
        if let Some(Err(e)) = self.shutdown_fd(id, libc::SHUT_RDWR) {
            tracing::debug!(conn = %id, error = %e, "shutdown of a failed connection");
        }
    }

    /// Frees a closing connection once nothing is in flight and nobody needs its descriptor
    /// (with the engine stopping, a live handle gets it: `fds.rs`).
    pub(super) fn maybe_finish_close(&mut self, id: ConnectionId) {
        let stopping = self.phase == Phase::Closing;
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if !conn.can_free(stopping) {
            return;
        }
        self.release_fds(id);
        let conn = self.conns.get_mut(id).expect("looked up above");
        let mut items = std::mem::take(&mut self.items);
        conn.send.discard();
        items.append(conn.send.done());
        conn.shared.close_fd(&mut items);
        for item in &items {
            self.bufs.release(item);
        }
        items.clear();
        self.items = items;
        if let Some(mut conn) = self.conns.remove(id) {
            tracing::trace!(conn = %id, "connection closed");
            self.bury_send(id, &mut conn);
            if conn.admitted {
                self.release_place();
            }
            // A snapshot that outlives its connection hands its pieces back later, with this
            // connection's token: keep the shared state reachable for `zombie_returns`. The
            // prune drops it at once if nothing else holds it, after releasing what a snapshot
            // returned since the drain above.
            self.zombies.push(conn.shared);
            self.prune_zombies();
        }
        if self.phase == Phase::Draining && self.conns.is_empty() {
            self.phase = Phase::Closing;
        }
    }

    pub(super) fn begin_stop(&mut self, grace: Duration) -> Result<()> {
        if self.phase == Phase::Closing {
            return Ok(());
        }
        self.close_deferred();
        if self.phase == Phase::Running && self.accept_armed {
            self.ring
                .cancel(
                    Token::engine(Kind::Accept),
                    Token::engine(Kind::AcceptCancel),
                )
                .map_err(|e| fatal(e, "cancel accept"))?;
            self.misc_ops += 1;
        }
        if grace.is_zero() || self.conns.is_empty() {
            return self.begin_closing();
        }
        if self.phase == Phase::Running {
            self.phase = Phase::Draining;
            self.ring
                .grace_timer(grace, Token::engine(Kind::Grace))
                .map_err(|e| fatal(e, "arm the grace timer"))?;
            self.misc_ops += 1;
        }
        Ok(())
    }

    /// The grace period ended.
    pub(super) fn on_grace(&mut self) -> Result<()> {
        self.misc_ops -= 1;
        if self.phase == Phase::Draining {
            self.begin_closing()?;
        }
        Ok(())
    }

    pub(super) fn begin_closing(&mut self) -> Result<()> {
        self.phase = Phase::Closing;
        for id in self.conns.ids() {
            self.begin_close(id, Some(CloseReason::EngineStopping))?;
        }
        Ok(())
    }

    fn inflight(&mut self) -> u32 {
        let ids = self.conns.ids();
        let conn_ops: u32 = ids
            .iter()
            .filter_map(|&id| self.conns.get_mut(id).map(|c| c.ops))
            .sum();
        conn_ops + self.misc_ops
    }

    /// Leaves the ring drained and frees what the kernel shared, or leaks it if the kernel might
    /// still write into it (only after a failure).
    pub(super) fn teardown(&mut self, failed: bool) {
        if failed {
            self.drain_after_failure();
        }
        for id in self.conns.ids() {
            // A live handle keeps its descriptor (shut down); the others close. Direct
            // descriptors close with the ring.
            let alive = self.conns.get_mut(id).is_some_and(|c| c.handle_alive);
            if alive {
                self.hand_over(id, !failed);
            } else if let Some(conn) = self.conns.get_mut(id)
                && let Some(fd) = conn.shared.fd.release()
            {
                crate::sys::close(fd);
            }
            if let Some(mut conn) = self.conns.remove(id) {
                self.bury_send(id, &mut conn);
            }
        }
        self.close_deferred();
        self.wait_for_graves();
        self.shared.mark_exited();
        executor::cancel_all(&self.shared);
        if let Err(e) = self.ring.uring().submitter().unregister_buf_ring(BGID) {
            tracing::debug!(error = %e, "unregister buffer ring");
        }
        self.publish_stats();
    }

    /// After a failure: wakes every handler with an error, cancels whatever is in flight and
    /// reaps it for up to two seconds; leaks the memory the kernel might still use.
    fn drain_after_failure(&mut self) {
        for id in self.conns.ids() {
            if let Some(conn) = self.conns.get_mut(id) {
                conn.shared.end_read(CloseReason::EngineStopping);
                conn.shared.end_write(CloseReason::EngineStopping);
            }
        }
        self.phase = Phase::Closing;
        // Its own completion uses an ignored token: it is not counted in `misc_ops`.
        let _ = self.ring.cancel_any(Token::engine(Kind::HandOff));
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.inflight() > 0 && Instant::now() < deadline {
            let _ = self.ring.submit_wait_for(Duration::from_millis(50));
            let pending: Vec<_> = self.ring.completion().collect();
            for cqe in pending {
                let _ = self.dispatch(cqe.user_data(), cqe.result(), cqe.flags());
            }
        }
        let left = self.inflight();
        if left > 0 {
            tracing::error!(
                operations = left,
                "operations still in flight after a failure; leaking their memory"
            );
            std::mem::forget(self.bufs.pool().clone());
            self.ring.leak_buffers();
            for id in self.conns.ids() {
                if let Some(conn) = self.conns.remove(id) {
                    // Its descriptor stays open (leaked with it): a handle that borrowed it
                    // keeps a valid one. One that waits for an install learns there is none.
                    conn.shared.fd.orphan(libc::ENOTCONN);
                    std::mem::forget(conn);
                }
            }
        }
    }
}
