//! The crate's one error type.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// Result alias with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in zerg.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is not usable; see [`ConfigError`].
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// A system call failed while setting the engine up or running it. `op` names what was
    /// being done (for example `"io_uring_setup for reactor 0"` or `"bind 0.0.0.0:8080"`);
    /// `source` carries the errno.
    ///
    /// A plain [`io::Error`] converted with `?` (the [`From`] impl below) becomes this variant
    /// with `op` = `"I/O"`, so handlers returning [`Result`](crate::Result) can use `?` on
    /// `std::io` calls; an [`io::Error`] that wraps a zerg [`Error`] (made by the
    /// `From<Error> for io::Error` impl, as the adapters do) converts back to that error.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// The operating-system error.
        #[source]
        source: io::Error,
    },

    /// The running kernel lacks a feature the configuration asked for.
    #[error("{feature} is not supported by this kernel (needs Linux {needs}): {source}")]
    Unsupported {
        /// The feature, e.g. `"incremental buffer consumption (IOU_PBUF_RING_INC)"`.
        feature: &'static str,
        /// The first kernel version that has it.
        needs: &'static str,
        /// The error the kernel returned.
        #[source]
        source: io::Error,
    },

    /// The connection is closed; the reason says by whom.
    #[error("connection closed: {0}")]
    Closed(CloseReason),

    /// [`Connection::write`](crate::Connection::write) would stage more than
    /// `ReactorConfig::max_write_buffer` bytes. Nothing was staged; flush and retry, or use
    /// [`Connection::write_all`](crate::Connection::write_all), which waits instead.
    #[error("write buffer full: {staged} bytes staged, {requested} more requested, limit {limit}")]
    WriteBufferFull {
        /// Bytes already staged.
        staged: usize,
        /// Bytes the call tried to add.
        requested: usize,
        /// The configured limit.
        limit: usize,
    },

    /// [`Connection::commit`](crate::Connection::commit) was asked to commit more bytes than
    /// the span handed out by [`Connection::span_mut`](crate::Connection::span_mut). Nothing was
    /// committed.
    #[error("commit({requested}) exceeds the {available} bytes of the span")]
    CommitOutOfRange {
        /// Bytes the call tried to commit.
        requested: usize,
        /// Bytes available in the span.
        available: usize,
    },

    /// A message grew past a bound before it was complete: a
    /// [`ConnectionReader`](crate::ConnectionReader) that examined every byte it holds without
    /// consuming any, at its message limit or at the connection's receive bound (where no more
    /// bytes can arrive until some are consumed). Its bytes were discarded; close the
    /// connection (or answer the peer, e.g. HTTP 413/431, then close).
    #[error(
        "message too large: {held} bytes held without a complete message; the bound is {limit} \
         bytes (raise {setting})"
    )]
    MessageTooLarge {
        /// Bytes the incomplete message had when the reader gave up.
        held: usize,
        /// The bound that was reached, in bytes.
        limit: usize,
        /// The setting that sets the bound.
        setting: &'static str,
    },

    /// A send made no progress within `ReactorConfig::write_timeout`; the connection was closed.
    #[error("send timed out")]
    TimedOut,

    /// The engine stopped (or failed) before the operation could complete.
    #[error("engine stopped")]
    EngineStopped,

    /// An outbound connection to `addr` failed: `source` carries the errno (`ECONNREFUSED` for a
    /// closed port, `ENETUNREACH`, ...) or says why the reactor refused it.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// The address connected to.
        addr: SocketAddr,
        /// The operating-system error.
        #[source]
        source: io::Error,
    },

    /// An outbound connection to `addr` was not established within `timeout`
    /// ([`connect_timeout`](crate::connect_timeout)); the attempt was cancelled.
    #[error("connect to {addr} timed out after {timeout:?}")]
    ConnectTimedOut {
        /// The address connected to.
        addr: SocketAddr,
        /// The timeout that expired.
        timeout: Duration,
    },

    /// [`connect`](crate::connect) or [`adopt`](crate::adopt) was polled on a thread that does
    /// not run a reactor.
    #[error(
        "zerg_uring::{what} needs a reactor thread: call it from a handler started by \
         Engine::serve or a task spawned on the reactor, or use Engine::{what}"
    )]
    NotOnReactor {
        /// The function called: `"connect"` or `"adopt"`.
        what: &'static str,
    },

    /// A reactor thread failed; the engine shut down. The string says what happened.
    #[error("reactor {reactor} failed: {reason}")]
    ReactorFailed {
        /// Index of the failed reactor.
        reactor: usize,
        /// What happened.
        reason: String,
    },
}

impl Error {
    pub(crate) fn io(op: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            op: op.into(),
            source,
        }
    }
}

/// A plain `io::Error` becomes [`Error::Io`] with `op` = `"I/O"`; one that carries a zerg
/// [`Error`] (from `From<Error> for io::Error`, e.g. an error of
/// [`ConnectionStream`](crate::ConnectionStream)'s `AsyncRead`) gives that error back, so a round
/// trip through `io::Error` loses nothing.
///
/// ```
/// fn parse_config(path: &str) -> zerg_uring::Result<String> {
///     Ok(std::fs::read_to_string(path)?) // io::Error → Error::Io { op: "I/O", .. }
/// }
/// let err = parse_config("/nonexistent/zerg.toml").unwrap_err();
/// assert!(matches!(err, zerg_uring::Error::Io { ref op, .. } if op == "I/O"), "{err:?}");
///
/// let closed = zerg_uring::Error::Closed(zerg_uring::CloseReason::Reset);
/// let back = zerg_uring::Error::from(std::io::Error::from(closed));
/// assert!(matches!(back, zerg_uring::Error::Closed(zerg_uring::CloseReason::Reset)));
/// ```
impl From<io::Error> for Error {
    fn from(err: io::Error) -> Self {
        if !err.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            return Error::io("I/O", err);
        }
        let kind = err.kind();
        match err.into_inner().map(|inner| inner.downcast::<Error>()) {
            Some(Ok(zerg)) => *zerg,
            // Not reached (checked above); keep whatever is there rather than panic.
            Some(Err(other)) => Error::io("I/O", io::Error::new(kind, other)),
            None => Error::io("I/O", io::Error::from(kind)),
        }
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> Self {
        let kind = match &err {
            Error::Config(_) | Error::CommitOutOfRange { .. } => io::ErrorKind::InvalidInput,
            Error::MessageTooLarge { .. } => io::ErrorKind::InvalidData,
            Error::Io { source, .. } | Error::Unsupported { source, .. } => source.kind(),
            Error::Closed(reason) => reason.io_kind(),
            Error::WriteBufferFull { .. } => io::ErrorKind::WouldBlock,
            Error::TimedOut | Error::ConnectTimedOut { .. } => io::ErrorKind::TimedOut,
            Error::EngineStopped | Error::ReactorFailed { .. } => io::ErrorKind::NotConnected,
            Error::Connect { source, .. } => source.kind(),
            Error::NotOnReactor { .. } => io::ErrorKind::Unsupported,
        };
        io::Error::new(kind, err)
    }
}

/// A configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: `{field}` {reason}")]
pub struct ConfigError {
    field: String,
    reason: String,
}

impl ConfigError {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The offending field, e.g. `"buffer_ring_entries"` or `"acceptor.ring_entries"`.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// Why the value is not usable.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// Why a connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer closed its sending side (FIN). Everything it sent before was delivered first;
    /// the connection can still send.
    PeerClosed,
    /// The peer reset the connection (`ECONNRESET`/`EPIPE`).
    Reset,
    /// A send made no progress within the write timeout.
    TimedOut,
    /// Another socket error, by errno.
    Error(i32),
    /// The engine is stopping.
    EngineStopping,
    /// The application closed the connection (or shut its write side down, for writes).
    Local,
}

impl CloseReason {
    pub(crate) fn from_errno(errno: i32) -> Self {
        match errno {
            libc::ECONNRESET | libc::EPIPE => CloseReason::Reset,
            libc::ETIMEDOUT | libc::ECANCELED => CloseReason::TimedOut,
            e => CloseReason::Error(e),
        }
    }

    fn io_kind(self) -> io::ErrorKind {
        match self {
            CloseReason::PeerClosed => io::ErrorKind::UnexpectedEof,
            CloseReason::Reset => io::ErrorKind::ConnectionReset,
            CloseReason::TimedOut => io::ErrorKind::TimedOut,
            CloseReason::Error(e) => io::Error::from_raw_os_error(e).kind(),
            CloseReason::EngineStopping => io::ErrorKind::NotConnected,
            CloseReason::Local => io::ErrorKind::BrokenPipe,
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::PeerClosed => f.write_str("peer closed"),
            CloseReason::Reset => f.write_str("connection reset by peer"),
            CloseReason::TimedOut => f.write_str("send timed out"),
            CloseReason::Error(e) => write!(f, "{}", io::Error::from_raw_os_error(*e)),
            CloseReason::EngineStopping => f.write_str("engine stopping"),
            CloseReason::Local => f.write_str("closed locally"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_convert_to_io_with_matching_kinds() {
        let e: io::Error = Error::Closed(CloseReason::Reset).into();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
        let e: io::Error = Error::TimedOut.into();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let e: io::Error = Error::io("bind", io::Error::from_raw_os_error(libc::EADDRINUSE)).into();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert!(e.to_string().starts_with("bind: "), "{e}");
    }

    #[test]
    fn io_errors_convert_into_zerg_errors_and_back() {
        let e = Error::from(io::Error::from_raw_os_error(libc::ECONNREFUSED));
        match &e {
            Error::Io { op, source } => {
                assert_eq!(op, "I/O");
                assert_eq!(source.raw_os_error(), Some(libc::ECONNREFUSED));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(e.to_string().starts_with("I/O: "), "{e}");
        // A zerg error that went through io::Error comes back as itself.
        let full = Error::WriteBufferFull {
            staged: 1,
            requested: 2,
            limit: 3,
        };
        let back = Error::from(io::Error::from(full));
        assert!(
            matches!(
                back,
                Error::WriteBufferFull {
                    staged: 1,
                    requested: 2,
                    limit: 3
                }
            ),
            "{back:?}"
        );
        // Another custom payload keeps its kind and message.
        let e = Error::from(io::Error::new(io::ErrorKind::InvalidData, "bad frame"));
        match e {
            Error::Io { source, .. } => {
                assert_eq!(source.kind(), io::ErrorKind::InvalidData);
                assert_eq!(source.to_string(), "bad frame");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn connect_errors_name_the_address_and_keep_the_errno() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let e = Error::Connect {
            addr,
            source: io::Error::from_raw_os_error(libc::ECONNREFUSED),
        };
        assert!(e.to_string().starts_with("connect to 127.0.0.1:9: "), "{e}");
        let e: io::Error = e.into();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        let e = Error::ConnectTimedOut {
            addr,
            timeout: Duration::from_millis(250),
        };
        assert_eq!(
            e.to_string(),
            "connect to 127.0.0.1:9 timed out after 250ms"
        );
        assert_eq!(io::Error::from(e).kind(), io::ErrorKind::TimedOut);
        let e = Error::NotOnReactor { what: "connect" };
        assert!(e.to_string().contains("Engine::connect"), "{e}");
    }

    #[test]
    fn close_reasons_from_errno() {
        assert_eq!(
            CloseReason::from_errno(libc::ECONNRESET),
            CloseReason::Reset
        );
        assert_eq!(CloseReason::from_errno(libc::EPIPE), CloseReason::Reset);
        assert_eq!(
            CloseReason::from_errno(libc::EHOSTUNREACH),
            CloseReason::Error(libc::EHOSTUNREACH)
        );
    }
}
