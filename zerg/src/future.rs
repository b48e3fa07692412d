//! The futures zerg's async methods return, named for when they must be stored or named in a
//! type (a hand-written future, a struct field). Most code just `.await`s the methods.

pub use crate::conn::{Flush, Read, Shutdown, WriteAll};
pub use crate::io::ReaderRead;
pub use crate::net::Connect;
