//! Requests from connection handles (returns, flushes, shutdowns, closes) and from other threads
//! (stop, tasks woken there), drained once or twice per loop iteration; and the pieces that
//! read snapshots hand back after their connection was freed.

use std::sync::Arc;

use super::Reactor;
use crate::conn::request;
use crate::error::Result;
use crate::ring::token::{ConnectionId, Kind, Token};
use crate::runtime::local;

impl Reactor {
    pub(super) fn drain_requests(&mut self) -> Result<()> {
        let mut tokens = std::mem::take(&mut self.tokens);
        local::take_tokens(&mut tokens);
        let hinted = self.shared.drain_remote(&mut tokens);
        for t in tokens.drain(..) {
            self.handle_token(t)?;
        }
        self.tokens = tokens;
        if hinted {
            self.shared.take_remote_runnables();
            if let Some(grace) = self.shared.take_stop() {
                self.begin_stop(grace)?;
            }
        }
        Ok(())
    }

    fn handle_token(&mut self, t: u64) -> Result<()> {
        let Some(token) = Token::decode(t) else {
            return Ok(());
        };
        let id = token.id;
        if token.kind == Kind::InstallRequest {
            self.on_install_request(id);
            return Ok(());
        }
        let Some(conn) = self.conns.get_mut(id) else {
            self.zombie_returns(id);
            return Ok(());
        };
        let mut items = std::mem::take(&mut self.items);
        let can_send = conn.can_send();
        let req = conn
            .shared
            .take_requests(&mut items, can_send.then_some(&mut conn.send));
        if let Some(seq) = req.send {
            conn.batch_seq = seq;
        }
        if req.has(request::FLUSH) {
            // The handler answered: the request timeout starts again with the next byte.
            conn.request_since = None;
        }
        let released = items.len() as u32;
        for item in items.drain(..) {
            self.bufs.release(&item);
        }
        self.items = items;
        if released > 0 {
            self.returned(id, released)?;
        }
        if req.send.is_some() {
            self.start_send(id)?;
        }
        if req.has(request::SHUTDOWN) {
            self.request_shutdown(id);
        }
        if req.has(request::CLOSE) {
            if let Some(conn) = self.conns.get_mut(id) {
                conn.handle_alive = false;
            }
            self.begin_close(id, None)?;
        }
        Ok(())
    }

    /// A request for a freed connection: release what a late snapshot handed back.
    fn zombie_returns(&mut self, id: ConnectionId) {
        let Some(i) = self.zombies.iter().position(|z| z.id == id) else {
            return;
        };
        // Read before draining: if nobody else holds it now, every return already happened and
        // the drain below sees it. (Read after, a snapshot could return and let go in between.)
        let last = Arc::strong_count(&self.zombies[i]) == 1;
        self.release_zombie(i);
        if last {
            self.zombies.swap_remove(i);
        }
    }

    /// Releases the pieces zombie `i` holds in `returned`.
    fn release_zombie(&mut self, i: usize) {
        let mut items = std::mem::take(&mut self.items);
        self.zombies[i].take_returned(&mut items);
        for item in &items {
            self.bufs.release(item);
        }
        items.clear();
        self.items = items;
    }

    /// Forgets the zombies nobody else holds any more, after releasing what they were handed
    /// (their last return may still be waiting for a token that was queued earlier).
    pub(super) fn prune_zombies(&mut self) {
        let mut i = 0;
        while i < self.zombies.len() {
            if Arc::strong_count(&self.zombies[i]) == 1 {
                self.release_zombie(i);
                self.zombies.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }
}
