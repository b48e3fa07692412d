//! The `proxy` example's copy loop: bytes copied both ways between two connections with
//! half-close and back-pressure (shared with the proxy tests).
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use zerg_uring::{CloseReason, Connection, Error, FlushState, ReadSnapshot, ShutdownState};

/// How a proxied pair ended.
#[derive(Debug)]
pub enum Outcome {
    /// Both directions ended with a FIN that was passed on; bytes copied client → upstream and
    /// upstream → client.
    Done { up: u64, down: u64 },
    /// The upstream connection could not be opened; the client was closed.
    ConnectFailed(Error),
    /// A side failed (reset, write timeout, engine stopping); both were closed.
    Failed(Error),
}

/// Proxies `client` to the connection `upstream` resolves to, until both directions ended.
pub async fn proxy<F>(client: Connection, upstream: F) -> Outcome
where
    F: Future<Output = zerg_uring::Result<Connection>>,
{
    let upstream = match upstream.await {
        Ok(c) => c,
        // Dropping the client closes it: it learns the upstream is not there.
        Err(e) => return Outcome::ConnectFailed(e),
    };
    match (Splice {
        client,
        upstream,
        up: Pump::default(),
        down: Pump::default(),
    })
    .await
    {
        Ok((up, down)) => Outcome::Done { up, down },
        Err(e) => Outcome::Failed(e),
    }
}

/// Copies both ways between two connections (one future, so it runs on any executor, including a
/// reactor's, without spawning). Dropping it drops — closes — both connections.
struct Splice {
    client: Connection,
    upstream: Connection,
    up: Pump,
    down: Pump,
}

impl Future for Splice {
    type Output = zerg_uring::Result<(u64, u64)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let up = this.up.poll(&mut this.client, &mut this.upstream, cx)?;
        let down = this.down.poll(&mut this.upstream, &mut this.client, cx)?;
        if up.is_ready() && down.is_ready() {
            Poll::Ready(Ok((this.up.bytes, this.down.bytes)))
        } else {
            Poll::Pending
        }
    }
}

/// One direction: read from one connection, stage a copy in the other, flush, repeat; on FIN,
/// shut the other's write half down.
#[derive(Default)]
struct Pump {
    state: PumpState,
    bytes: u64,
}

#[derive(Default)]
enum PumpState {
    #[default]
    Reading,
    /// `snapshot[offset..]` is still to be staged (it did not fit the write buffer at once).
    Copying {
        snapshot: ReadSnapshot,
        offset: usize,
    },
    /// Sending what was staged; then the rest of `rest`, or the next read.
    Flushing {
        flush: FlushState,
        rest: Option<(ReadSnapshot, usize)>,
    },
    ShuttingDown(ShutdownState),
    Done,
}

impl Pump {
    fn poll(
        &mut self,
        from: &mut Connection,
        to: &mut Connection,
        cx: &mut Context<'_>,
    ) -> Poll<zerg_uring::Result<()>> {
        loop {
            match std::mem::replace(&mut self.state, PumpState::Done) {
                PumpState::Reading => match from.poll_read(cx) {
                    Poll::Pending => {
                        self.state = PumpState::Reading;
                        return Poll::Pending;
                    }
                    Poll::Ready(snapshot) => match snapshot.close_reason() {
                        None => {
                            self.state = PumpState::Copying {
                                snapshot,
                                offset: 0,
                            };
                        }
                        Some(CloseReason::PeerClosed) => {
                            self.state = PumpState::ShuttingDown(ShutdownState::default());
                        }
                        Some(reason) => return Poll::Ready(Err(Error::Closed(reason))),
                    },
                },
                PumpState::Copying { snapshot, offset } => {
                    let end = offset + (snapshot.len() - offset).min(to.write_capacity());
                    for segment in snapshot.sequence().slice(offset, end - offset).segments() {
                        to.write(segment)?;
                    }
                    self.bytes += (end - offset) as u64;
                    // A snapshot copied in full goes back to the kernel before the flush.
                    let rest = (end < snapshot.len()).then_some((snapshot, end));
                    self.state = PumpState::Flushing {
                        flush: FlushState::default(),
                        rest,
                    };
                }
                PumpState::Flushing { mut flush, rest } => match to.poll_flush(&mut flush, cx) {
                    Poll::Pending => {
                        self.state = PumpState::Flushing { flush, rest };
                        return Poll::Pending;
                    }
                    Poll::Ready(res) => {
                        res?;
                        self.state = match rest {
                            Some((snapshot, offset)) => PumpState::Copying { snapshot, offset },
                            None => PumpState::Reading,
                        };
                    }
                },
                PumpState::ShuttingDown(mut st) => match to.poll_shutdown(&mut st, cx) {
                    Poll::Pending => {
                        self.state = PumpState::ShuttingDown(st);
                        return Poll::Pending;
                    }
                    Poll::Ready(res) => {
                        res?;
                        return Poll::Ready(Ok(()));
                    }
                },
                PumpState::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}
