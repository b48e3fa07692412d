//! `user_data` encoding: what a completion belongs to.
//!
//! ```text
//!  63      56 55            32 31                 0
//! +----------+----------------+--------------------+
//! |   kind   |   generation   |        slot        |
//! +----------+----------------+--------------------+
//! ```
//!
//! Connection operations carry the connection's slot and generation; a completion whose
//! generation no longer matches its slot is stale and is dropped (docs/architecture.md, rule 1). Engine-level
//! operations use slot and generation 0.

/// Identity of a connection within its reactor: slab slot plus generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId {
    pub(crate) slot: u32,
    pub(crate) generation: u32,
}

impl ConnectionId {
    /// Generations wrap at 24 bits.
    pub(crate) const GEN_MASK: u32 = (1 << 24) - 1;

    /// The slot index in the reactor's connection table.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// How many connections used this slot before this one (modulo 2^24).
    pub fn generation(&self) -> u32 {
        self.generation
    }
}

/// `slot/generation`, as the `conn` field of the library's log events shows it (unique within a
/// reactor among live connections; with the reactor index, within the engine).
impl std::fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.slot, self.generation)
    }
}

/// Operation kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// The eventfd read that wakes the reactor.
    Wake = 1,
    /// A connection handed over by the acceptor via MSG_RING (`res` is the fd).
    NewConn = 2,
    /// Multishot accept (per-reactor accept mode, and the acceptor).
    Accept = 3,
    /// Timer before re-arming accept after EMFILE/ENFILE.
    AcceptBackoff = 4,
    /// Shutdown grace period ended.
    Grace = 5,
    /// Cancellation of the accept.
    AcceptCancel = 6,
    /// A direct descriptor installed in the process's table, answered inline
    /// (`Ring::install_now`); never seen by a reap.
    Install = 7,
    /// A connection handed over by the acceptor as a direct descriptor (`res` is its slot in
    /// the reactor ring's file table).
    NewDirect = 8,
    /// A close nobody waits for (a direct descriptor accepted past the caps when the engine
    /// stops): only a failure completes.
    QuietClose = 9,
    /// Multishot recv of a connection.
    Recv = 16,
    /// Send of a connection.
    Send = 17,
    /// Cancellation issued for a connection (its own completion).
    Cancel = 19,
    /// Outbound connect of a connection.
    Connect = 20,
    /// Linked timeout on an outbound connect.
    ConnectTimeout = 21,
    /// Poll for FIN, reset or error while a connection's receive is not armed.
    Watch = 22,
    /// The close of a connection's direct descriptor (its slot in the file table).
    CloseSlot = 23,
    /// Shutdown of a connection's write side the handle asked for (result to the handle).
    ShutdownWrite = 24,
    /// Shutdown of both directions of a connection that failed (a timeout).
    ShutdownBoth = 25,
    /// Not an operation: a handle asks its reactor (through the request queue) to install the
    /// connection's direct descriptor in the process's table.
    InstallRequest = 26,
    /// Acceptor: a hand-off that failed (slot holds the fd, or the slot in the acceptor's
    /// file table).
    HandOff = 32,
    /// Acceptor: the close of its file-table slot after a hand-off failed.
    HandOffClose = 33,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Wake,
            2 => Kind::NewConn,
            3 => Kind::Accept,
            4 => Kind::AcceptBackoff,
            5 => Kind::Grace,
            6 => Kind::AcceptCancel,
            7 => Kind::Install,
            8 => Kind::NewDirect,
            9 => Kind::QuietClose,
            16 => Kind::Recv,
            17 => Kind::Send,
            19 => Kind::Cancel,
            20 => Kind::Connect,
            21 => Kind::ConnectTimeout,
            22 => Kind::Watch,
            23 => Kind::CloseSlot,
            24 => Kind::ShutdownWrite,
            25 => Kind::ShutdownBoth,
            26 => Kind::InstallRequest,
            32 => Kind::HandOff,
            33 => Kind::HandOffClose,
            _ => return None,
        })
    }
}

/// A decoded `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) kind: Kind,
    pub(crate) id: ConnectionId,
}

impl Token {
    pub(crate) const fn engine(kind: Kind) -> u64 {
        (kind as u64) << 56
    }

    pub(crate) fn conn(kind: Kind, id: ConnectionId) -> u64 {
        ((kind as u64) << 56)
            | (u64::from(id.generation & ConnectionId::GEN_MASK) << 32)
            | u64::from(id.slot)
    }

    pub(crate) fn decode(user_data: u64) -> Option<Token> {
        let kind = Kind::from_u8((user_data >> 56) as u8)?;
        Some(Token {
            kind,
            id: ConnectionId {
                slot: user_data as u32,
                generation: ((user_data >> 32) as u32) & ConnectionId::GEN_MASK,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let id = ConnectionId {
            slot: 0xdead_beef,
            generation: 0x00ab_cdef,
        };
        for kind in [
            Kind::Recv,
            Kind::Send,
            Kind::Cancel,
            Kind::Connect,
            Kind::ConnectTimeout,
            Kind::Watch,
            Kind::CloseSlot,
            Kind::ShutdownWrite,
            Kind::ShutdownBoth,
            Kind::InstallRequest,
            Kind::HandOff,
            Kind::HandOffClose,
        ] {
            let t = Token::decode(Token::conn(kind, id)).unwrap();
            assert_eq!(t, Token { kind, id });
        }
        for kind in [
            Kind::Wake,
            Kind::NewConn,
            Kind::Accept,
            Kind::AcceptBackoff,
            Kind::Grace,
            Kind::AcceptCancel,
            Kind::Install,
            Kind::NewDirect,
            Kind::QuietClose,
        ] {
            assert_eq!(Token::decode(Token::engine(kind)).unwrap().kind, kind);
        }
        assert_eq!(Token::decode(0), None);
    }

    #[test]
    fn generation_wraps_at_24_bits() {
        let id = ConnectionId {
            slot: 7,
            generation: ConnectionId::GEN_MASK,
        };
        let t = Token::decode(Token::conn(Kind::Recv, id)).unwrap();
        assert_eq!(t.id.generation, ConnectionId::GEN_MASK);
    }

    #[test]
    fn displays_as_slot_slash_generation() {
        let id = ConnectionId {
            slot: 12,
            generation: 3,
        };
        assert_eq!(id.to_string(), "12/3");
    }
}
