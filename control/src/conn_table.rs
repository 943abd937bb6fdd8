//! Per-connection state indexed by the connection id's slab slot.
//!
//! The transports hand out [`ConnId`]s made by [`ConnId::from_slot`]: a core number, a
//! slab slot that is reused after the connection closes, and a generation that tells
//! the slot's successive connections apart. So finding a connection's state is an index
//! (`[core][slot]`) plus one comparison of the whole id — no hashing on the per-message
//! path. Ids that do not fit that shape (a slot beyond [`MAX_INDEXED_SLOT`], or a slot
//! still held by another generation, which a well-behaved driver never produces) go to
//! an overflow map, so every id still works.

use std::collections::HashMap;

use foldhash::fast::RandomState;
use petrel_conn::ConnId;

/// Largest slot kept in the index (a core's slab is dense from 0; past this, a driver is
/// not using slab ids and the overflow map serves it).
pub const MAX_INDEXED_SLOT: usize = (1 << 24) - 1;

/// State `V` for every open connection.
#[derive(Debug)]
pub struct ConnTable<V> {
    /// `cores[core][slot]`: the connection in that slot, with its full id.
    cores: Vec<Vec<Option<(ConnId, V)>>>,
    overflow: HashMap<ConnId, V, RandomState>,
    len: usize,
}

impl<V> Default for ConnTable<V> {
    fn default() -> Self {
        ConnTable {
            cores: Vec::new(),
            overflow: HashMap::default(),
            len: 0,
        }
    }
}

impl<V> ConnTable<V> {
    /// Adds `id`; returns false (and keeps the old state) if `id` is already present.
    pub fn insert(&mut self, id: ConnId, value: V) -> bool {
        if self.contains(id) {
            return false;
        }
        let (core, slot) = (usize::from(id.core()), id.slot());
        if slot <= MAX_INDEXED_SLOT {
            if self.cores.len() <= core {
                self.cores.resize_with(core + 1, Vec::new);
            }
            let slots = &mut self.cores[core];
            if slots.len() <= slot {
                slots.resize_with(slot + 1, || None);
            }
            if slots[slot].is_none() {
                slots[slot] = Some((id, value));
                self.len += 1;
                return true;
            }
        }
        self.overflow.insert(id, value);
        self.len += 1;
        true
    }

    fn contains(&self, id: ConnId) -> bool {
        self.get(id).is_some()
    }

    /// The state of `id`, if open.
    #[inline]
    pub fn get(&self, id: ConnId) -> Option<&V> {
        match self.slot(id) {
            Some(Some((held, v))) if *held == id => Some(v),
            _ if self.overflow.is_empty() => None,
            _ => self.overflow.get(&id),
        }
    }

    /// The state of `id`, if open.
    #[inline]
    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut V> {
        let (core, slot) = (usize::from(id.core()), id.slot());
        let indexed = self
            .cores
            .get_mut(core)
            .and_then(|s| s.get_mut(slot))
            .and_then(Option::as_mut)
            .filter(|(held, _)| *held == id);
        match indexed {
            Some((_, v)) => Some(v),
            None => self.overflow.get_mut(&id),
        }
    }

    /// Removes `id`, returning its state.
    pub fn remove(&mut self, id: ConnId) -> Option<V> {
        let (core, slot) = (usize::from(id.core()), id.slot());
        if let Some(entry) = self.cores.get_mut(core).and_then(|s| s.get_mut(slot))
            && entry.as_ref().is_some_and(|(held, _)| *held == id)
        {
            self.len -= 1;
            return entry.take().map(|(_, v)| v);
        }
        let v = self.overflow.remove(&id)?;
        self.len -= 1;
        Some(v)
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every open connection and its state (index order, then the overflow).
    pub fn iter(&self) -> impl Iterator<Item = (ConnId, &V)> + '_ {
        self.cores
            .iter()
            .flatten()
            .filter_map(|e| e.as_ref().map(|(id, v)| (*id, v)))
            .chain(self.overflow.iter().map(|(id, v)| (*id, v)))
    }

    fn slot(&self, id: ConnId) -> Option<&Option<(ConnId, V)>> {
        self.cores
            .get(usize::from(id.core()))
            .and_then(|s| s.get(id.slot()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_generations_cores_and_overflow_are_told_apart() {
        let mut t = ConnTable::default();
        let a = ConnId::from_slot(0, 3, 1);
        let a_next = ConnId::from_slot(0, 3, 2);
        let b = ConnId::from_slot(2, 3, 1);
        let far = ConnId::from_slot(1, u32::MAX, 0);
        assert!(t.insert(a, "a"));
        assert!(!t.insert(a, "again"), "an id is added once");
        assert!(t.insert(b, "b"));
        assert!(t.insert(far, "far"));
        // A newer generation of a held slot is a different connection.
        assert_eq!(t.get(a_next), None);
        assert!(t.insert(a_next, "a-next"));
        assert_eq!(
            (t.get(a), t.get(a_next), t.get(b), t.get(far)),
            (Some(&"a"), Some(&"a-next"), Some(&"b"), Some(&"far"))
        );
        assert_eq!(t.len(), 4);
        *t.get_mut(a_next).unwrap() = "changed";
        assert_eq!(t.remove(a), Some("a"));
        assert_eq!(t.remove(a), None);
        assert_eq!(t.get(a_next), Some(&"changed"));
        let mut ids: Vec<ConnId> = t.iter().map(|(id, _)| id).collect();
        ids.sort();
        let mut want = vec![a_next, b, far];
        want.sort();
        assert_eq!(ids, want);
        for id in want {
            assert!(t.remove(id).is_some());
        }
        assert!(t.is_empty());
    }
}
