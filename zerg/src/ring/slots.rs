//! The connection table: a slab indexed by slot, guarded by per-slot generations, never by fd.

use slab::Slab;

use super::token::ConnectionId;

/// Slab of `T` whose keys carry a generation, so a key from a freed slot never reaches the
/// slot's next occupant.
#[derive(Debug)]
pub(crate) struct Slots<T> {
    slab: Slab<(u32, T)>,
    // Generation the next occupant of each slot gets.
    next_gen: Vec<u32>,
}

impl<T> Slots<T> {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            slab: Slab::with_capacity(n),
            next_gen: Vec::with_capacity(n),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.slab.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// The id the next `insert` will return.
    pub(crate) fn next_id(&self) -> ConnectionId {
        let slot = self.slab.vacant_key();
        ConnectionId {
            slot: slot as u32,
            generation: self.next_gen.get(slot).copied().unwrap_or(0),
        }
    }

    pub(crate) fn insert(&mut self, value: T) -> ConnectionId {
        let id = self.next_id();
        let slot = self.slab.insert((id.generation, value));
        debug_assert_eq!(slot as u32, id.slot);
        if self.next_gen.len() <= slot {
            self.next_gen.resize(slot + 1, 0);
        }
        id
    }

    pub(crate) fn get_mut(&mut self, id: ConnectionId) -> Option<&mut T> {
        match self.slab.get_mut(id.slot as usize) {
            Some((generation, value)) if *generation == id.generation => Some(value),
            _ => None,
        }
    }

    pub(crate) fn remove(&mut self, id: ConnectionId) -> Option<T> {
        match self.slab.get(id.slot as usize) {
            Some((generation, _)) if *generation == id.generation => {
                let (_, value) = self.slab.remove(id.slot as usize);
                let g = &mut self.next_gen[id.slot as usize];
                *g = (*g + 1) & ConnectionId::GEN_MASK;
                Some(value)
            }
            _ => None,
        }
    }

    pub(crate) fn ids(&self) -> Vec<ConnectionId> {
        self.slab
            .iter()
            .map(|(slot, (generation, _))| ConnectionId {
                slot: slot as u32,
                generation: *generation,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_id_reaches_nobody() {
        let mut slots = Slots::with_capacity(4);
        let a = slots.insert("a");
        assert_eq!(slots.remove(a), Some("a"));
        // The next connection reuses the slot (like a reused fd) with a new generation.
        let b = slots.insert("b");
        assert_eq!(a.slot, b.slot);
        assert_ne!(a.generation, b.generation);
        assert_eq!(
            slots.get_mut(a),
            None,
            "stale completion must not reach the new occupant"
        );
        assert_eq!(slots.remove(a), None);
        assert_eq!(slots.get_mut(b), Some(&mut "b"));
    }

    #[test]
    fn next_id_predicts_insert() {
        let mut slots = Slots::with_capacity(1);
        for i in 0..10 {
            let predicted = slots.next_id();
            let id = slots.insert(i);
            assert_eq!(predicted, id);
            if i % 2 == 0 {
                slots.remove(id);
            }
        }
        assert_eq!(slots.len(), 5);
    }
}
