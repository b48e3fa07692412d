//! The send path: one send (or `sendmsg`) in flight per connection, partial sends resubmitted,
//! flushes completed with their outcome, the write side shut down once everything is sent.

use super::conn::Conn;
use super::{RETAIN_SEND_CAPACITY, Reactor, fatal};
use crate::error::{CloseReason, Result};
use crate::log_throttle::warn_throttled;
use crate::ring::SendProgress;
use crate::ring::token::{ConnectionId, Kind, Token};
use crate::sys;

impl Reactor {
    pub(super) fn start_send(&mut self, id: ConnectionId) -> Result<()> {
        let Some(conn) = self.conns.get_mut(id) else {
            return Ok(());
        };
        let entry = conn.send.next_send(&self.shared.pool, conn.fd);
        self.ring
            .send(entry, Token::conn(Kind::Send, id))
            .map_err(|e| fatal(e, "submit send"))?;
        conn.ops += 1;
        conn.send_since = self.now;
        Ok(())
    }

    pub(super) fn on_send(&mut self, id: ConnectionId, res: i32) -> Result<()> {
        let Some(conn) = self.conns.get_mut(id) else {
            self.stats.stale_completions += 1;
            return Ok(());
        };
        conn.ops -= 1;
        let progress = conn.send.complete(res, RETAIN_SEND_CAPACITY);
        if res > 0 {
            self.stats.bytes_sent += res as u64;
            conn.last_active = self.now;
        }
        // Received pieces sent in place go back to the ring (and may resume the receive).
        self.release_sent(id)?;
        let Some(conn) = self.conns.get_mut(id) else {
            return Ok(());
        };
        match progress {
            SendProgress::Partial if conn.is_closing() => {
                conn.send.discard();
                self.release_sent(id)?;
            }
            // The rest goes out next.
            SendProgress::Partial => return self.start_send(id),
            SendProgress::Done => {
                let open = !conn.is_closing();
                let next = conn
                    .shared
                    .send_done(conn.batch_seq, open.then_some(&mut conn.send));
                if let Some(seq) = next {
                    conn.batch_seq = seq;
                    return self.start_send(id);
                }
                if conn.shutdown_pending {
                    conn.shutdown_pending = false;
                    shutdown_now(conn);
                }
            }
            SendProgress::Failed(res) => self.send_failed(id, res)?,
        }
        self.maybe_finish_close(id);
        Ok(())
    }

    /// A send failed with `res`: the flush learns why.
    fn send_failed(&mut self, id: ConnectionId, res: i32) -> Result<()> {
        let Some(conn) = self.conns.get_mut(id) else {
            return Ok(());
        };
        if conn.is_closing() {
            return Ok(());
        }
        let reason = if res == 0 {
            CloseReason::Error(libc::EPIPE)
        } else {
            CloseReason::from_errno(-res)
        };
        self.stats.flush_errors += 1;
        match reason {
            // The peer's or the network's doing: routine on the internet.
            CloseReason::Reset
            | CloseReason::TimedOut
            | CloseReason::Error(
                libc::ECONNABORTED
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::ENETDOWN
                | libc::EHOSTDOWN,
            ) => tracing::debug!(conn = %id, %reason, "send failed; the flush fails"),
            _ => warn_throttled!(
                self.logs.send_errors,
                conn = %id,
                %reason,
                "send failed; the flush fails"
            ),
        }
        // A connection that failed already (a timeout) keeps the reason it was given.
        conn.shared.end_write(reason);
        Ok(())
    }

    /// Hands back to the ring the received pieces a send no longer needs.
    pub(super) fn release_sent(&mut self, id: ConnectionId) -> Result<()> {
        let Some(conn) = self.conns.get_mut(id) else {
            return Ok(());
        };
        let done = conn.send.done();
        if done.is_empty() {
            return Ok(());
        }
        let n = done.len() as u32;
        for item in done.drain(..) {
            self.bufs.release(&item);
        }
        self.returned(id, n)
    }

    /// The handle asked to shut the write side down: now if nothing is being sent, else once the
    /// send buffer is empty.
    pub(super) fn request_shutdown(&mut self, id: ConnectionId) {
        if let Some(conn) = self.conns.get_mut(id) {
            if conn.send.is_inflight() || !conn.send.is_empty() {
                conn.shutdown_pending = true;
            } else {
                shutdown_now(conn);
            }
        }
    }
}

/// Sends FIN now (everything staged was sent) and tells the waiting `shutdown`.
fn shutdown_now(conn: &mut Conn) {
    let res = if conn.is_closing() {
        Ok(())
    } else {
        sys::shutdown_write(conn.fd)
            .map_err(|e| CloseReason::from_errno(e.raw_os_error().unwrap_or(libc::EIO)))
    };
    conn.shared.shut_down(res);
}
