//! The acceptor thread ([`AcceptMode::Dedicated`](crate::AcceptMode::Dedicated)): a multishot
//! accept per listener in its own ring, and a round-robin hand-off of every connection straight
//! into a reactor's completion queue with `IORING_OP_MSG_RING` (no queue, no eventfd write).
//!
//! When every reactor uses direct descriptors, so does the acceptor: it accepts into its own
//! ring's file table and passes each connection into the reactor ring's table
//! (`IORING_MSG_SEND_FD`), freeing its own slot in the same submission; the process's
//! descriptor table never sees the connection.
//!
//! At the connection caps (the engine's, or every reactor's) the accept is cancelled: new
//! clients wait in the listen backlog. A reactor that frees a place wakes the acceptor once the
//! counts are back at the low watermark, and it accepts again.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use io_uring::cqueue;

use crate::admission::{AcceptGate, Admission, GateAction, Room};
use crate::config::AcceptorConfig;
use crate::error::{Error, Result};
use crate::lifecycle::{AcceptorShared, Lifecycle, ThreadGuard};
use crate::log_throttle::{Throttles, log_accept_error, warn_throttled};
use crate::ring::token::{ConnectionId, Kind, Token};
use crate::ring::{Ring, SockFd};
use crate::runtime::ReactorShared;
use crate::stats::AcceptorStats;
use crate::sys::{self, EventFd};

struct Target {
    shared: Arc<ReactorShared>,
    // A duplicate of the reactor's ring descriptor: keeps the ring file valid for MSG_RING even
    // if that reactor already exited.
    ring: OwnedFd,
}

struct Acceptor {
    shared: Arc<AcceptorShared>,
    engine: Arc<Lifecycle>,
    ring: Ring,
    /// The listeners; the accept on `listeners[i]` carries slot `i` in its token.
    listeners: Vec<RawFd>,
    targets: Vec<Target>,
    next: usize,
    batch: usize,
    /// Per listener: its accept is in flight.
    armed: Vec<bool>,
    inflight: u32,
    stats: AcceptorStats,
    /// Warnings that could repeat at the rate of traffic.
    logs: Throttles,
    stopping: bool,
    admission: Arc<Admission>,
    /// The accept against the connection caps.
    gate: AcceptGate,
    /// Connections accepted in the batch that reached the cap, waiting for a place.
    deferred: VecDeque<SockFd>,
    /// Accepting into the ring's file table and handing direct descriptors over.
    direct: bool,
}

/// Slots of the acceptor's file table (direct descriptors): connections between their accept
/// and their hand-off, and those waiting at the caps. A full table ends the accept with
/// `ENFILE`, retried after the back-off like `EMFILE`.
const ACCEPTOR_SLOTS: u32 = 4096;

/// Starts the acceptor thread; returns once its ring is set up and the accepts are armed.
pub(crate) fn spawn(
    config: AcceptorConfig,
    listeners: Vec<RawFd>,
    reactors: Vec<Arc<ReactorShared>>,
    engine: Arc<Lifecycle>,
    admission: Arc<Admission>,
    exit: ThreadGuard,
) -> Result<(Arc<AcceptorShared>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Arc<AcceptorShared>>>(1);
    let thread = std::thread::Builder::new()
        .name("zerg-acceptor".into())
        .spawn(move || {
            // Dropped last, when the thread is done (`Engine::stopped`).
            let _exit = exit;
            let _span = tracing::error_span!("acceptor").entered();
            let mut acceptor = match Acceptor::new(&config, listeners, reactors, engine, admission)
            {
                Ok(a) => a,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = tx.send(Ok(acceptor.shared.clone()));
            drop(tx);
            if let Err(e) = acceptor.run() {
                tracing::error!(error = %e, "acceptor failed; stopping the engine");
                acceptor.engine.fail(e);
            }
            acceptor.finish();
        })
        .map_err(|e| Error::io("spawn thread zerg-acceptor", e))?;
    match rx.recv() {
        Ok(Ok(shared)) => Ok((shared, thread)),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(Error::io(
                "start acceptor",
                std::io::Error::other("the acceptor thread exited during setup"),
            ))
        }
    }
}

/// The token of the accept on listener `i` (listener 0's is `Token::engine(Kind::Accept)`).
fn accept_token(i: usize) -> u64 {
    Token::conn(
        Kind::Accept,
        ConnectionId {
            slot: i as u32,
            generation: 0,
        },
    )
}

fn push_error(e: std::io::Error) -> Error {
    Error::io("acceptor submission queue push", e)
}

impl Acceptor {
    fn new(
        config: &AcceptorConfig,
        listeners: Vec<RawFd>,
        reactors: Vec<Arc<ReactorShared>>,
        engine: Arc<Lifecycle>,
        admission: Arc<Admission>,
    ) -> Result<Self> {
        if let Some(cpu) = config.cpu {
            sys::pin_current_thread(cpu)
                .map_err(|e| Error::io(format!("pin acceptor to CPU {cpu}"), e))?;
        }
        let spec = sys::ring::RingSpec {
            entries: config.ring_entries,
            cq_entries: config.ring_entries * 2,
            single_issuer: config.single_issuer,
            defer_taskrun: config.defer_taskrun,
            sqpoll: config.sqpoll,
            sq_cpu: config.sq_cpu,
            sq_thread_idle: config.sq_thread_idle,
        };
        let uring = sys::ring::build(&spec, "the acceptor")?;
        let ring = Ring::new(uring, config.accept_backoff, config.cq_timeout);
        let mut targets = Vec::with_capacity(reactors.len());
        for r in reactors {
            let ring = sys::dup(r.ring_fd)
                .map_err(|e| Error::io(format!("dup ring of reactor {}", r.index), e))?;
            targets.push(Target { shared: r, ring });
        }
        let direct = targets.iter().all(|t| t.shared.direct) && setup_table(&ring);
        let wake = EventFd::new().map_err(|e| Error::io("eventfd for the acceptor", e))?;
        let mut a = Self {
            shared: Arc::new(AcceptorShared::new(wake)),
            engine,
            ring,
            armed: vec![false; listeners.len()],
            listeners,
            targets,
            next: 0,
            batch: config.batch_sqes as usize,
            inflight: 0,
            stats: AcceptorStats::default(),
            logs: Throttles::default(),
            stopping: false,
            admission,
            gate: AcceptGate::default(),
            deferred: VecDeque::new(),
            direct,
        };
        a.arm_wake()?;
        a.arm_accepts()?;
        a.ring
            .submit(false, None)
            .map_err(|e| Error::io("io_uring_enter for the acceptor", e))?;
        Ok(a)
    }

    fn arm_wake(&mut self) -> Result<()> {
        let fd = self.shared.wake_fd();
        self.ring
            .read_wake(fd, Token::engine(Kind::Wake))
            .map_err(push_error)?;
        self.inflight += 1;
        Ok(())
    }

    /// Arms the accept on listener `i`: multishot below the caps' low watermark, one connection
    /// at a time above.
    fn arm_accept(&mut self, i: usize) -> Result<()> {
        let token = accept_token(i);
        if self.gate.arming(self.room()) {
            self.ring
                .accept_multi(self.listeners[i], self.direct, token)
        } else {
            self.ring.accept_one(self.listeners[i], self.direct, token)
        }
        .map_err(push_error)?;
        self.armed[i] = true;
        self.inflight += 1;
        Ok(())
    }

    /// Arms the accept on every listener that has none in flight.
    fn arm_accepts(&mut self) -> Result<()> {
        for i in 0..self.listeners.len() {
            if !self.armed[i] {
                self.arm_accept(i)?;
            }
        }
        Ok(())
    }

    fn any_armed(&self) -> bool {
        self.armed.contains(&true)
    }

    fn run(&mut self) -> Result<()> {
        let mut cqes: Vec<cqueue::Entry> = Vec::with_capacity(self.batch.min(4096));
        loop {
            cqes.extend(self.ring.completion().take(self.batch));
            for cqe in cqes.drain(..) {
                self.dispatch(cqe.user_data(), cqe.result(), cqe.flags())?;
            }
            if self.shared.stop_requested() && !self.stopping {
                self.stopping = true;
                self.ring
                    .cancel_any(Token::engine(Kind::AcceptCancel))
                    .map_err(push_error)?;
                self.inflight += 1;
            }
            if self.stopping && self.inflight == 0 {
                return Ok(());
            }
            if !self.stopping {
                self.check_accept()?;
            }
            self.shared.stats.publish(&self.stats);
            let idle = self.ring.completion().is_empty();
            self.ring
                .submit(idle, None)
                .map_err(|e| Error::io("io_uring_enter for the acceptor", e))?;
            if idle {
                self.stats.wakeups += 1;
            }
        }
    }

    fn dispatch(&mut self, user_data: u64, res: i32, flags: u32) -> Result<()> {
        let Some(token) = Token::decode(user_data) else {
            return Ok(());
        };
        match token.kind {
            Kind::Accept => {
                let i = token.id.slot as usize;
                let more = cqueue::more(flags);
                if !more {
                    self.inflight -= 1;
                    self.armed[i] = false;
                    self.gate.ended();
                }
                // Stopping: the listener was shut down, which ends the accept with an error.
                let stopping = self.stopping || self.shared.stop_requested();
                if res >= 0 {
                    let fd = if self.direct {
                        SockFd::Fixed(res as u32)
                    } else {
                        SockFd::Raw(res)
                    };
                    self.accepted(fd)?;
                } else if res != -libc::ECANCELED && !stopping {
                    self.stats.accept_errors += 1;
                    log_accept_error(&mut self.logs.accept_errors, -res);
                }
                if res == -libc::EINVAL && !stopping {
                    // The socket left the listening state under us (another holder of an
                    // inherited listener shut it down): re-arming would fail at once, forever.
                    tracing::error!(
                        listener = i,
                        "listener is no longer listening; accepting on it stopped"
                    );
                } else if !more && !stopping && !self.gate.is_paused() {
                    if res == -libc::EMFILE || res == -libc::ENFILE {
                        // Out of descriptors: re-arming at once would spin; retry after a pause.
                        self.ring
                            .backoff_timer(Token::engine(Kind::AcceptBackoff))
                            .map_err(push_error)?;
                        self.inflight += 1;
                    } else {
                        self.stats.accept_rearms += 1;
                        self.arm_accept(i)?;
                    }
                }
            }
            Kind::AcceptBackoff => {
                self.inflight -= 1;
                if !self.stopping && !self.gate.is_paused() {
                    self.stats.accept_rearms += 1;
                    self.arm_accepts()?;
                }
            }
            Kind::HandOff => {
                // Only failures complete here (success skips the completion).
                self.stats.handoff_failures += 1;
                self.admission.release(token.id.generation as usize);
                let error = std::io::Error::from_raw_os_error(-res);
                if self.direct {
                    // The linked close frees the slot whatever the outcome.
                    tracing::warn!(%error, "hand-off of a direct descriptor to a reactor failed; closing the connection");
                } else {
                    let fd = token.id.slot as RawFd;
                    tracing::warn!(fd, %error, "hand-off to a reactor failed; closing the connection");
                    sys::close(fd);
                }
            }
            Kind::HandOffClose | Kind::QuietClose => {
                tracing::warn!(error = %std::io::Error::from_raw_os_error(-res), "close of a direct descriptor in the acceptor failed");
            }
            Kind::Wake => {
                self.inflight -= 1;
                if !self.stopping {
                    self.arm_wake()?;
                }
            }
            Kind::AcceptCancel => self.inflight -= 1,
            _ => {}
        }
        Ok(())
    }

    /// A new connection: handed to the next reactor with a place (round-robin over reactors
    /// that still run), or kept until one frees up. Accepting pauses when no place is left.
    fn accepted(&mut self, fd: SockFd) -> Result<()> {
        if self.targets.iter().all(|t| t.shared.has_exited()) {
            self.discard(fd);
            return Ok(());
        }
        if !self.deferred.is_empty() || !self.try_hand_off(fd, false)? {
            tracing::debug!(?fd, "accepted past the connection cap; waiting for a place");
            self.deferred.push_back(fd);
        }
        let cancel = match self.gate.placed(self.any_armed(), self.room()) {
            GateAction::Nothing => false,
            GateAction::Cancel => true,
            GateAction::Pause { cancel } => {
                self.stats.accept_pauses += 1;
                warn_throttled!(
                    self.logs.accept_pauses,
                    "connection cap reached: accepting paused, new connections wait in the listen backlog"
                );
                cancel
            }
        };
        if cancel {
            for i in 0..self.listeners.len() {
                if self.armed[i] {
                    self.ring
                        .cancel(accept_token(i), Token::engine(Kind::AcceptCancel))
                        .map_err(push_error)?;
                    self.inflight += 1;
                }
            }
        }
        Ok(())
    }

    /// Room for connections on the reactors that still run.
    fn room(&self) -> Room {
        let targets = &self.targets;
        self.admission
            .room(None, |i| !targets[i].shared.has_exited())
    }

    /// Hands `fd` to the next reactor with a place; `false` if none has one (then, with `park`,
    /// the next release that makes room wakes the acceptor).
    fn try_hand_off(&mut self, fd: SockFd, park: bool) -> Result<bool> {
        let targets = &self.targets;
        let Some(i) = self
            .admission
            .admit_any(self.next, park, |i| !targets[i].shared.has_exited())
        else {
            return Ok(false);
        };
        self.next = i + 1;
        let ring = self.targets[i].ring.as_raw_fd();
        // A failure names the fd (to close it) and the reactor (to give its place back).
        let failure = |slot: u32| {
            Token::conn(
                Kind::HandOff,
                ConnectionId {
                    slot,
                    generation: i as u32,
                },
            )
        };
        match fd {
            SockFd::Raw(fd) => {
                self.ring
                    .msg_ring(ring, fd, Token::engine(Kind::NewConn), failure(fd as u32))
            }
            SockFd::Fixed(slot) => self.ring.msg_ring_fd(
                ring,
                slot,
                Token::engine(Kind::NewDirect),
                failure(slot),
                Token::engine(Kind::HandOffClose),
            ),
        }
        .map_err(push_error)?;
        self.stats.accepted += 1;
        Ok(true)
    }

    /// While paused: hands over the connections kept waiting while places are free, and accepts
    /// again once the counts are back at the watermark.
    fn check_accept(&mut self) -> Result<()> {
        if !self.gate.is_paused() {
            return Ok(());
        }
        while let Some(&fd) = self.deferred.front() {
            if !self.try_hand_off(fd, true)? {
                return Ok(());
            }
            self.deferred.pop_front();
        }
        let targets = &self.targets;
        // The paused accepts' last completions must have arrived before they are armed again.
        if self.any_armed()
            || !self
                .admission
                .resume_or_park(None, |i| !targets[i].shared.has_exited())
        {
            return Ok(());
        }
        self.gate.resume();
        if self.logs.accept_pauses.last_warned() {
            tracing::info!("below the connection cap again: accepting");
        } else {
            tracing::debug!("below the connection cap again: accepting");
        }
        self.stats.accept_rearms += 1;
        self.arm_accepts()
    }

    /// Closes a connection nobody will serve (the engine stops).
    fn discard(&self, fd: SockFd) {
        match fd {
            SockFd::Raw(fd) => sys::close(fd),
            SockFd::Fixed(slot) => {
                // The ring's file table goes with the ring anyway.
                let _ = self
                    .ring
                    .close_fixed(slot, true, Token::engine(Kind::QuietClose));
            }
        }
    }

    /// Drains the ring, then tells the reactors no more hand-offs will come.
    fn finish(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        if !self.stopping {
            let _ = self.ring.cancel_any(Token::engine(Kind::AcceptCancel));
            self.inflight += 1;
            self.stopping = true;
        }
        while self.inflight > 0 && std::time::Instant::now() < deadline {
            let _ = self.ring.submit_wait_for(Duration::from_millis(50));
            let cqes: Vec<_> = self.ring.completion().collect();
            for cqe in cqes {
                let _ = self.dispatch(cqe.user_data(), cqe.result(), cqe.flags());
            }
        }
        // Hand-offs already posted are in the reactors' queues; submitted MSG_RINGs completed
        // before their target could exit, since reactors wait for this flag.
        let _ = self.ring.submit(false, None);
        if self.inflight > 0 {
            tracing::error!(
                inflight = self.inflight,
                "acceptor operations still in flight; leaking its buffers"
            );
            self.ring.leak_buffers();
        }
        while let Some(fd) = self.deferred.pop_front() {
            self.discard(fd);
        }
        let _ = self.ring.submit(false, None);
        self.shared.stats.publish(&self.stats);
        self.engine.acceptor_done();
    }
}

/// Registers the acceptor's file table for direct descriptors; `false` (logged) if the kernel
/// refuses it: the acceptor then accepts plain descriptors, which the reactors take as well.
fn setup_table(ring: &Ring) -> bool {
    let mut last = None;
    for slots in [ACCEPTOR_SLOTS, 256] {
        match ring.register_file_table(slots) {
            Ok(()) => return true,
            Err(e) => last = Some(e),
        }
    }
    if let Some(e) = last {
        tracing::warn!(error = %e, "direct descriptors: registering the acceptor's file table failed; the acceptor hands over plain descriptors");
    }
    false
}
