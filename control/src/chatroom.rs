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
//!
//! # Slow members
//!
//! A room never waits for its slowest member. A member whose connection is congested
//! (its transport's outbound queue stayed over the limit after a write,
//! [`crate::Event::Congested`]) is skipped, and the skipped seqs are remembered per room
//! as one range in its [`Seats`]. When the connection drains it is sent one `Gap` frame
//! per room for the range before anything newer of that room, so a client can show "some
//! messages were skipped" instead of guessing from a seq jump. Nothing is counted per
//! push: the transport's one limit and its congested/drained edge decide.

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

/// A connection's place in one room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seat {
    /// The room id.
    pub room: u64,
    /// Seqs of this room skipped for the connection and not yet reported, inclusive.
    pub gap: Option<(u64, u64)>,
}

/// The chatrooms one connection is in, and the gaps it is owed.
#[derive(Debug, Clone, Default)]
pub struct Seats {
    seats: Vec<Seat>,
    /// Whether some seat has a gap to report.
    owed: bool,
}

impl Seats {
    /// The rooms, in join order.
    pub fn rooms(&self) -> impl Iterator<Item = u64> + '_ {
        self.seats.iter().map(|s| s.room)
    }

    /// Number of rooms.
    pub fn len(&self) -> usize {
        self.seats.len()
    }

    /// Whether the connection is in no room.
    pub fn is_empty(&self) -> bool {
        self.seats.is_empty()
    }

    /// Whether the connection is in `room`.
    pub fn contains(&self, room: u64) -> bool {
        self.seats.iter().any(|s| s.room == room)
    }

    /// Takes a seat in `room`. False if it already had one.
    pub fn join(&mut self, room: u64) -> bool {
        if self.contains(room) {
            return false;
        }
        self.seats.push(Seat { room, gap: None });
        true
    }

    /// Gives up the seat in `room` (and any gap owed for it). False if it had none.
    pub fn leave(&mut self, room: u64) -> bool {
        let before = self.seats.len();
        self.seats.retain(|s| s.room != room);
        self.owed = self.seats.iter().any(|s| s.gap.is_some());
        self.seats.len() != before
    }

    /// Records that the push with `seq` of `room` was skipped.
    pub fn skipped(&mut self, room: u64, seq: u64) {
        if let Some(seat) = self.seats.iter_mut().find(|s| s.room == room) {
            seat.gap = Some(match seat.gap {
                Some((from, to)) => (from.min(seq), to.max(seq)),
                None => (seq, seq),
            });
            self.owed = true;
        }
    }

    /// Whether a gap is waiting to be reported.
    pub fn owes_gaps(&self) -> bool {
        self.owed
    }

    /// Takes the gap owed for `room`, if any.
    pub fn take_gap(&mut self, room: u64) -> Option<(u64, u64)> {
        if !self.owed {
            return None;
        }
        let gap = self.seats.iter_mut().find(|s| s.room == room)?.gap.take();
        self.owed = self.seats.iter().any(|s| s.gap.is_some());
        gap
    }

    /// Takes any owed gap: `(room, from_seq, to_seq)`.
    pub fn take_any_gap(&mut self) -> Option<(u64, u64, u64)> {
        if !self.owed {
            return None;
        }
        let found = self
            .seats
            .iter_mut()
            .find_map(|s| s.gap.take().map(|(from, to)| (s.room, from, to)));
        self.owed = self.seats.iter().any(|s| s.gap.is_some());
        found
    }
}

/// Every live room, and the rooms an operator closed.
#[derive(Debug, Default)]
pub struct Rooms {
    rooms: HashMap<u64, Room, foldhash::fast::RandomState>,
    /// Closed over the server API: joins are refused until it is opened again. In
    /// memory like the rooms themselves (a restart opens every room).
    closed: std::collections::HashSet<u64, foldhash::fast::RandomState>,
}

impl Rooms {
    /// Whether `room` was closed by an operator.
    pub fn is_closed(&self, room: u64) -> bool {
        self.closed.contains(&room)
    }

    /// Closes `room`: empties it (returns the connections that were in it, in order) and
    /// refuses joins until [`Rooms::open`].
    pub fn close(&mut self, room: u64) -> Vec<ConnId> {
        self.closed.insert(room);
        self.rooms
            .remove(&room)
            .map(|r| r.members.into_iter().collect())
            .unwrap_or_default()
    }

    /// Lets `room` be joined again. Returns whether it was closed.
    pub fn open(&mut self, room: u64) -> bool {
        self.closed.remove(&room)
    }

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
    fn skipped_seqs_become_one_gap_per_room() {
        let mut seats = Seats::default();
        seats.join(5);
        seats.join(6);
        assert!(!seats.owes_gaps());
        for seq in 10..=14 {
            seats.skipped(5, seq);
        }
        seats.skipped(6, 3);
        seats.skipped(7, 1); // not in room 7: ignored
        assert!(seats.owes_gaps());
        assert_eq!(seats.take_gap(5), Some((10, 14)));
        assert_eq!(seats.take_gap(5), None);
        assert_eq!(seats.take_any_gap(), Some((6, 3, 3)));
        assert!(!seats.owes_gaps());
        seats.skipped(6, 4);
        assert!(seats.leave(6));
        assert!(!seats.owes_gaps(), "leaving forgets the gap");
        assert_eq!(seats.rooms().collect::<Vec<_>>(), [5]);
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
