//! The futures zerg's async methods return, named for when they must be stored or named in a
//! type (a hand-written future, a struct field). Most code just `.await`s the methods.
//!
//! # Cancel safety
//!
//! What is lost when a future is dropped before it completes (in a `select!` branch that lost,
//! under a timeout, or because its task was aborted). Each method's documentation says more.
//!
//! | future | dropped before completion |
//! |---|---|
//! | [`Connection::read`](crate::Connection::read) ([`Read`]) | nothing: bytes are taken only when it resolves |
//! | [`ConnectionReader::read`](crate::ConnectionReader::read) ([`ReaderRead`]) | nothing: bytes stay in the reader |
//! | [`Connection::flush`](crate::Connection::flush) ([`Flush`]) | nothing: bytes handed to the reactor are still sent, only the outcome goes unreported |
//! | [`Connection::write_all`](crate::Connection::write_all) ([`WriteAll`]) | **not cancel-safe**: an unknown prefix of the data was staged or sent |
//! | [`Connection::shutdown`](crate::Connection::shutdown) ([`Shutdown`]) | no bytes; the FIN is sent only if the flush had completed |
//! | [`Engine::accept`](crate::Engine::accept) | nothing: a connection not yet taken stays queued |
//! | [`Engine::connect`](crate::Engine::connect), [`connect`](crate::connect), `connect_timeout` ([`Connect`]) | the attempt: the connect is cancelled, the socket (or a connection made meanwhile) closed |
//! | [`Engine::adopt`](crate::Engine::adopt), [`adopt`](crate::adopt) ([`Connect`]) | the stream, which is closed |
//! | [`Engine::stopped`](crate::Engine::stopped) | nothing |
//! | [`Engine::join_async`](crate::Engine::join_async) | the engine: it is dropped, which stops it and joins its threads (blocking) |
//! | [`JoinHandle`](crate::JoinHandle) | nothing: the task runs on, detached |
//! | [`time::sleep`](crate::time::sleep), [`time::interval`](crate::time::Interval::tick) | nothing: the timer is cancelled, a tick is consumed only when returned |
//! | [`time::timeout`](crate::time::timeout) | what the wrapped future loses |
//!
//! The I/O traits of `ConnectionStream` (features `tokio`, `futures-io`) and
//! [`ConnectionReader`](crate::ConnectionReader) follow the same rules: a read that did not
//! complete took nothing, and a flush that did not complete still sends what it was handed.
//! `std::io::Write::flush` on a [`Connection`](crate::Connection) is synchronous and sends
//! nothing: it fails with `WouldBlock` while bytes are staged (see the
//! [`std::io::Write` impl](crate::Connection#impl-Write-for-Connection)).

pub use crate::conn::{Flush, Read, Shutdown, WriteAll};
pub use crate::io::ReaderRead;
pub use crate::net::Connect;
