//! The acceptor thread ([`AcceptMode::Dedicated`](crate::AcceptMode::Dedicated)): a multishot
//! accept in its own ring, and a round-robin hand-off of every connection straight into a
//! reactor's completion queue with `IORING_OP_MSG_RING` (no queue, no eventfd write).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use io_uring::cqueue;

use crate::config::AcceptorConfig;
use crate::error::{Error, Result};
use crate::lifecycle::{AcceptorShared, Lifecycle};
use crate::ring::Ring;
use crate::ring::token::{ConnectionId, Kind, Token};
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
    listener: RawFd,
    targets: Vec<Target>,
    next: usize,
    batch: usize,
    accept_armed: bool,
    inflight: u32,
    stats: AcceptorStats,
    stopping: bool,
}

/// Starts the acceptor thread; returns once its ring is set up and the accept is armed.
pub(crate) fn spawn(
    config: AcceptorConfig,
    listener: RawFd,
    reactors: Vec<Arc<ReactorShared>>,
    engine: Arc<Lifecycle>,
) -> Result<(Arc<AcceptorShared>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Arc<AcceptorShared>>>(1);
    let thread = std::thread::Builder::new()
        .name("zerg-acceptor".into())
        .spawn(move || {
            let mut acceptor = match Acceptor::new(&config, listener, reactors, engine) {
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

fn push_error(e: std::io::Error) -> Error {
    Error::io("acceptor submission queue push", e)
}

impl Acceptor {
    fn new(
        config: &AcceptorConfig,
        listener: RawFd,
        reactors: Vec<Arc<ReactorShared>>,
        engine: Arc<Lifecycle>,
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
        let wake = EventFd::new().map_err(|e| Error::io("eventfd for the acceptor", e))?;
        let mut a = Self {
            shared: Arc::new(AcceptorShared::new(wake)),
            engine,
            ring,
            listener,
            targets,
            next: 0,
            batch: config.batch_sqes as usize,
            accept_armed: false,
            inflight: 0,
            stats: AcceptorStats::default(),
            stopping: false,
        };
        a.arm_wake()?;
        a.arm_accept()?;
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

    fn arm_accept(&mut self) -> Result<()> {
        self.ring
            .accept_multi(self.listener, Token::engine(Kind::Accept))
            .map_err(push_error)?;
        self.accept_armed = true;
        self.inflight += 1;
        Ok(())
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
                let more = cqueue::more(flags);
                if !more {
                    self.inflight -= 1;
                    self.accept_armed = false;
                }
                // Stopping: the listener was shut down, which ends the accept with an error.
                let stopping = self.stopping || self.shared.stop_requested();
                if res >= 0 {
                    self.hand_off(res)?;
                } else if res != -libc::ECANCELED && !stopping {
                    self.stats.accept_errors += 1;
                    tracing::warn!(error = %std::io::Error::from_raw_os_error(-res), "accept failed");
                }
                if !more && !stopping {
                    if res == -libc::EMFILE || res == -libc::ENFILE {
                        // Out of descriptors: re-arming at once would spin; retry after a pause.
                        self.ring
                            .backoff_timer(Token::engine(Kind::AcceptBackoff))
                            .map_err(push_error)?;
                        self.inflight += 1;
                    } else {
                        self.stats.accept_rearms += 1;
                        self.arm_accept()?;
                    }
                }
            }
            Kind::AcceptBackoff => {
                self.inflight -= 1;
                if !self.stopping && !self.accept_armed {
                    self.stats.accept_rearms += 1;
                    self.arm_accept()?;
                }
            }
            Kind::HandOff => {
                // Only failures complete here (success skips the completion).
                let fd = token.id.slot as RawFd;
                self.stats.handoff_failures += 1;
                tracing::warn!(fd, error = %std::io::Error::from_raw_os_error(-res), "hand-off to a reactor failed; closing the connection");
                sys::close(fd);
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

    fn hand_off(&mut self, fd: RawFd) -> Result<()> {
        // Round-robin over reactors that still run.
        let n = self.targets.len();
        let mut chosen = None;
        for _ in 0..n {
            let i = self.next % n;
            self.next = self.next.wrapping_add(1);
            if !self.targets[i].shared.has_exited() {
                chosen = Some(i);
                break;
            }
        }
        let Some(i) = chosen else {
            sys::close(fd);
            return Ok(());
        };
        let ring = self.targets[i].ring.as_raw_fd();
        let failure = Token::conn(
            Kind::HandOff,
            ConnectionId {
                slot: fd as u32,
                generation: 0,
            },
        );
        self.ring
            .msg_ring(ring, fd, Token::engine(Kind::NewConn), failure)
            .map_err(push_error)?;
        self.stats.accepted += 1;
        Ok(())
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
        self.shared.stats.publish(&self.stats);
        self.engine.acceptor_done();
    }
}
