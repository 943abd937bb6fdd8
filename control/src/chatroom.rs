//! Chatrooms: online-only rooms kept entirely in memory.
//!
//! A room exists while at least one connection is in it; joining a room that does not
//! exist creates it. Membership is per connection (a user's phone may be in a room its
//! desktop is not). Each room numbers its messages with its own seq counter and keeps
//! the last N for late joiners. Nothing here is persisted; a restart empties every
//! room.
//!
//! Members are kept in a `BTreeSet` so fan-out order is deterministic (the simulator
//! relies on it) and join/leave are O(log n).

use std::collections::{BTreeSet, HashMap, VecDeque};

use petrel_proto::pb;

use petrel_conn::ConnId;

/// One room.
#[derive(Debug, Default)]
pub struct Room {
    members: BTreeSet<ConnId>,
    seq: u64,
    recent: VecDeque<pb::MessagePush>,
}

impl Room {
    /// Connections in the room.
    pub fn members(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.members.iter().copied()
    }

    /// Whether `conn` is in the room.
    pub fn contains(&self, conn: ConnId) -> bool {
        self.members.contains(&conn)
    }

    /// Number of connections in the room.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the room is empty.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The most recent messages, oldest first.
    pub fn recent(&self) -> impl DoubleEndedIterator<Item = &pb::MessagePush> {
        self.recent.iter()
    }

    /// Assigns the next seq.
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Remembers `push` for late joiners, keeping at most `keep` messages.
    pub fn remember(&mut self, push: pb::MessagePush, keep: usize) {
        if keep == 0 {
            return;
        }
        while self.recent.len() >= keep {
            self.recent.pop_front();
        }
        self.recent.push_back(push);
    }
}

/// Every live room.
#[derive(Debug, Default)]
pub struct Rooms {
    rooms: HashMap<u64, Room>,
}

impl Rooms {
    /// Adds `conn` to `room` (creating it). Returns false if it was already in.
    pub fn join(&mut self, room: u64, conn: ConnId) -> bool {
        self.rooms.entry(room).or_default().members.insert(conn)
    }

    /// Removes `conn` from `room`, dropping the room when it empties. Returns false if
    /// it was not in.
    pub fn leave(&mut self, room: u64, conn: ConnId) -> bool {
        let Some(r) = self.rooms.get_mut(&room) else {
            return false;
        };
        let was_in = r.members.remove(&conn);
        if r.members.is_empty() {
            self.rooms.remove(&room);
        }
        was_in
    }

    /// The room, if it exists.
    pub fn get(&self, room: u64) -> Option<&Room> {
        self.rooms.get(&room)
    }

    /// The room, if it exists.
    pub fn get_mut(&mut self, room: u64) -> Option<&mut Room> {
        self.rooms.get_mut(&room)
    }

    /// Number of live rooms.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    /// Whether no room is live.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_live_while_someone_is_in_them() {
        let mut rooms = Rooms::default();
        let (a, b) = (ConnId::new(0, 1), ConnId::new(0, 2));
        assert!(rooms.join(9, a));
        assert!(!rooms.join(9, a));
        assert!(rooms.join(9, b));
        assert_eq!(rooms.get(9).unwrap().len(), 2);
        assert!(rooms.leave(9, a));
        assert!(!rooms.leave(9, a));
        assert!(rooms.leave(9, b));
        assert!(rooms.get(9).is_none());
        assert!(rooms.is_empty());
    }

    #[test]
    fn recent_ring_is_bounded() {
        let mut room = Room::default();
        for _ in 0..5 {
            let seq = room.next_seq();
            room.remember(
                pb::MessagePush {
                    seq,
                    ..Default::default()
                },
                3,
            );
        }
        let seqs: Vec<u64> = room.recent().map(|m| m.seq).collect();
        assert_eq!(seqs, [3, 4, 5]);
    }
}
