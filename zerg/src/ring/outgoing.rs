//! What a connection sends next: staged bytes, possibly interleaved with received pieces sent in
//! place (zero-copy echo and forwarding, [`Connection::write_snapshot`](super::Connection)).

use crate::buf_ring::RecvItem;

/// One part of an [`Outgoing`] in segment form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seg {
    /// `len` bytes of [`Outgoing::bytes`] from `start`.
    Bytes { start: u32, len: u32 },
    /// A received piece, sent from its receive buffer.
    Piece(RecvItem),
}

impl Seg {
    pub(crate) fn len(&self) -> usize {
        match *self {
            Seg::Bytes { len, .. } => len as usize,
            Seg::Piece(item) => item.len as usize,
        }
    }
}

/// Bytes to send, in order.
///
/// In the common case `segs` is empty and everything is in `bytes`. Once a piece is added,
/// `segs` lists the order of everything: ranges of `bytes` and pieces; `covered` bytes of
/// `bytes` are listed so far.
#[derive(Debug, Default)]
pub(crate) struct Outgoing {
    pub(crate) bytes: Vec<u8>,
    pub(crate) segs: Vec<Seg>,
    covered: usize,
}

impl Outgoing {
    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.segs.is_empty()
    }

    /// Total bytes to send.
    #[cfg(test)]
    pub(crate) fn total(&self) -> usize {
        if self.segs.is_empty() {
            self.bytes.len()
        } else {
            self.segs.iter().map(Seg::len).sum::<usize>() + (self.bytes.len() - self.covered)
        }
    }

    /// Lists the bytes added since the last segment (segment form only).
    pub(crate) fn seal(&mut self) {
        if !self.segs.is_empty() && self.bytes.len() > self.covered {
            self.segs.push(Seg::Bytes {
                start: self.covered as u32,
                len: (self.bytes.len() - self.covered) as u32,
            });
            self.covered = self.bytes.len();
        }
    }

    /// Appends a received piece after everything so far.
    pub(crate) fn push_piece(&mut self, item: RecvItem) {
        if self.segs.is_empty() && !self.bytes.is_empty() {
            self.segs.push(Seg::Bytes {
                start: 0,
                len: self.bytes.len() as u32,
            });
            self.covered = self.bytes.len();
        } else {
            self.seal();
        }
        self.segs.push(Seg::Piece(item));
    }

    /// Moves everything of `other` after everything of `self`; `other` is left empty (with its
    /// capacity). Swaps instead of copying when `self` is empty.
    pub(crate) fn append(&mut self, other: &mut Outgoing) {
        if self.is_empty() {
            std::mem::swap(self, other);
            other.clear();
            return;
        }
        other.seal();
        if !other.segs.is_empty() || !self.segs.is_empty() {
            // Segment form for the result: list what `self` has so far.
            if self.segs.is_empty() {
                self.segs.push(Seg::Bytes {
                    start: 0,
                    len: self.bytes.len() as u32,
                });
                self.covered = self.bytes.len();
            } else {
                self.seal();
            }
            let base = self.bytes.len() as u32;
            if other.segs.is_empty() {
                if !other.bytes.is_empty() {
                    self.segs.push(Seg::Bytes {
                        start: base,
                        len: other.bytes.len() as u32,
                    });
                }
            } else {
                self.segs.extend(other.segs.iter().map(|s| match *s {
                    Seg::Bytes { start, len } => Seg::Bytes {
                        start: start + base,
                        len,
                    },
                    piece => piece,
                }));
            }
            self.bytes.extend_from_slice(&other.bytes);
            self.covered = self.bytes.len();
        } else {
            self.bytes.extend_from_slice(&other.bytes);
        }
        other.clear();
    }

    /// Moves every piece out (into `out`), for handing back to the kernel unsent.
    pub(crate) fn take_pieces(&mut self, out: &mut Vec<RecvItem>) {
        out.extend(self.segs.iter().filter_map(|s| match *s {
            Seg::Piece(item) => Some(item),
            Seg::Bytes { .. } => None,
        }));
        self.segs.retain(|s| matches!(s, Seg::Bytes { .. }));
        if self.segs.len() <= 1 && self.covered == self.bytes.len() {
            // What is left is the bytes alone: back to the plain form.
            self.segs.clear();
            self.covered = 0;
        }
    }

    /// Empties it, keeping the capacity.
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.segs.clear();
        self.covered = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(bid: u16, len: u32) -> RecvItem {
        RecvItem { bid, off: 0, len }
    }

    #[test]
    fn bytes_only_stays_plain() {
        let mut a = Outgoing::default();
        a.bytes.extend_from_slice(b"abc");
        let mut b = Outgoing::default();
        b.bytes.extend_from_slice(b"de");
        a.append(&mut b);
        assert_eq!(a.bytes, b"abcde");
        assert!(a.segs.is_empty());
        assert!(b.is_empty());
        assert_eq!(a.total(), 5);
    }

    #[test]
    fn pieces_keep_their_order_across_appends() {
        let mut a = Outgoing::default();
        a.bytes.extend_from_slice(b"hd:");
        a.push_piece(piece(1, 10));
        a.bytes.extend_from_slice(b"mid");
        a.push_piece(piece(2, 20));
        a.bytes.extend_from_slice(b"end");
        let mut b = Outgoing::default();
        b.bytes.extend_from_slice(b"xy");
        b.push_piece(piece(3, 5));
        a.append(&mut b);
        a.seal();
        assert_eq!(
            a.segs,
            vec![
                Seg::Bytes { start: 0, len: 3 },
                Seg::Piece(piece(1, 10)),
                Seg::Bytes { start: 3, len: 3 },
                Seg::Piece(piece(2, 20)),
                Seg::Bytes { start: 6, len: 3 },
                Seg::Bytes { start: 9, len: 2 },
                Seg::Piece(piece(3, 5)),
            ]
        );
        assert_eq!(a.bytes, b"hd:midendxy");
        assert_eq!(a.total(), 11 + 35);
        let mut out = Vec::new();
        a.take_pieces(&mut out);
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn appending_into_empty_swaps() {
        let mut a = Outgoing::default();
        let mut b = Outgoing::default();
        b.push_piece(piece(7, 3));
        a.append(&mut b);
        assert_eq!(a.segs, vec![Seg::Piece(piece(7, 3))]);
        assert!(b.is_empty());
    }
}
