//! Chatrooms: online-only rooms kept entirely in memory.
//!
//! A room exists while at least one connection is in it; joining a room that does not
//! exist creates it. Membership is per connection (a user's phone may be in a room its
//! desktop is not). Each room numbers its messages with its own seq counter and keeps
//! the last N for late joiners. Nothing here is persisted; a restart empties every
//! room.
//!
//! Members are kept in ordered maps so fan-out order is deterministic (the simulator
//! relies on it) and join/leave are O(log n).
//!
//! # Ownership across cores
//!
//! With several cores ([`crate::Config::core_count`] > 1) each room is owned by exactly
//! one core, [`room_owner`] (`room_id % core_count`); with one core it owns them all.
//! The owner keeps the [`Room`] in its [`Rooms`]: the seq counter, the recent backlog,
//! the closed flag, and every member across cores (a [`ConnId`] names its core) with its
//! user. Every core keeps, for its own connections only, their [`Seats`] (which rooms,
//! gaps owed) and a [`Seated`] index room → its own members, through which it delivers a
//! room's pushes. A join, leave, send, typing notice or member list on a connection of
//! another core crosses to the owner and back as [`crate::remote::CoreMessage`]s; the
//! owner assigns each message's seq and encodes its push once, delivers it to its own
//! members and sends it once to each other core with members, which delivers it to its
//! own (congestion is known only there).
//!
//! # Slow members
//!
//! A room never waits for its slowest member. A member whose connection is congested
//! (its transport's outbound queue stayed over the limit after a write,
//! [`crate::Event::Congested`]) is skipped, and the skipped seqs are remembered per room
//! as one range in its [`Seats`] (on the member's own core). When the connection drains
//! it is sent one `Gap` frame per room for the range before anything newer of that room,
//! so a client can show "some messages were skipped" instead of guessing from a seq jump.
//! Nothing is counted per push: the transport's one limit and its congested/drained edge
//! decide.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use petrel_proto::pb;

use petrel_conn::ConnId;

/// The core that owns `room` among `core_count` cores (0 when there is one, or none).
pub fn room_owner(room: u64, core_count: u8) -> u8 {
    // The remainder is below `core_count`, so it fits.
    u8::try_from(room % u64::from(core_count.max(1))).unwrap_or(0)
}

/// One room, as its owner core keeps it.
#[derive(Debug, Default)]
pub struct Room {
    /// Every member connection, on any core, with its user.
    members: BTreeMap<ConnId, u64>,
    seq: u64,
    recent: VecDeque<pb::MessagePush>,
}

impl Room {
    /// Connections in the room (ordered by core, then connection).
    pub fn members(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.members.keys().copied()
    }

    /// Connections in the room with their users.
    pub fn members_with_users(&self) -> impl Iterator<Item = (ConnId, u64)> + '_ {
        self.members.iter().map(|(&c, &u)| (c, u))
    }

    /// The distinct users in the room, ascending.
    pub fn users(&self) -> BTreeSet<u64> {
        self.members.values().copied().collect()
    }

    /// Whether `conn` is in the room.
    pub fn contains(&self, conn: ConnId) -> bool {
        self.members.contains_key(&conn)
    }

    /// Number of connections in the room.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the room is empty.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether a connection of `core` other than `except` is in the room.
    pub fn has_members_on(&self, core: u8, except: Option<ConnId>) -> bool {
        let from = ConnId::new(core, 0);
        self.members
            .range(from..)
            .take_while(|(c, _)| c.core() == core)
            .any(|(&c, _)| Some(c) != except)
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

/// Every live room this core owns, and the rooms an operator closed.
#[derive(Debug, Default)]
pub struct Rooms {
    rooms: HashMap<u64, Room, foldhash::fast::RandomState>,
    /// Closed over the server API: joins are refused until it is opened again. In
    /// memory like the rooms themselves (a restart opens every room).
    closed: std::collections::HashSet<u64, foldhash::fast::RandomState>,
}

impl Rooms {
    /// Takes every member on cores `cores` (bit = core index) out of every room: their
    /// cluster node went down, and its connections with it. Returns how many seats.
    pub fn drop_cores(&mut self, cores: u64) -> usize {
        let mut gone = Vec::new();
        for (&room, r) in &self.rooms {
            gone.extend(
                r.members()
                    .filter(|c| cores & 1u64.checked_shl(u32::from(c.core())).unwrap_or(0) != 0)
                    .map(|c| (room, c)),
            );
        }
        for &(room, conn) in &gone {
            self.leave(room, conn);
        }
        gone.len()
    }

    /// Whether `room` was closed by an operator.
    pub fn is_closed(&self, room: u64) -> bool {
        self.closed.contains(&room)
    }

    /// Closes `room`: empties it (returns the connections that were in it with their
    /// users, in order) and refuses joins until [`Rooms::open`].
    pub fn close(&mut self, room: u64) -> Vec<(ConnId, u64)> {
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

    /// Adds `conn` (a session of `user`) to `room`, creating it. Returns false if it
    /// was already in.
    pub fn join(&mut self, room: u64, conn: ConnId, user: u64) -> bool {
        let members = &mut self.rooms.entry(room).or_default().members;
        members.insert(conn, user).is_none()
    }

    /// Removes `conn` from `room`, dropping the room when it empties. Returns false if
    /// it was not in.
    pub fn leave(&mut self, room: u64, conn: ConnId) -> bool {
        let Some(r) = self.rooms.get_mut(&room) else {
            return false;
        };
        let was_in = r.members.remove(&conn).is_some();
        if r.members.is_empty() {
            self.rooms.remove(&room);
        }
        was_in
    }

    /// Removes every connection of `user` from `room` (on any core), dropping the room
    /// when it empties. Returns the connections removed, in order.
    pub fn remove_user(&mut self, room: u64, user: u64) -> Vec<ConnId> {
        let Some(r) = self.rooms.get_mut(&room) else {
            return Vec::new();
        };
        let removed: Vec<ConnId> = r
            .members
            .iter()
            .filter(|&(_, &u)| u == user)
            .map(|(&c, _)| c)
            .collect();
        for conn in &removed {
            r.members.remove(conn);
        }
        if r.members.is_empty() {
            self.rooms.remove(&room);
        }
        removed
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

/// For one core: which of its own connections sit in each room (whoever owns it), the
/// index a room's pushes are delivered through.
#[derive(Debug, Default)]
pub struct Seated {
    rooms: HashMap<u64, BTreeSet<ConnId>, foldhash::fast::RandomState>,
}

impl Seated {
    /// Records that `conn` sits in `room`. False if it already did.
    pub fn insert(&mut self, room: u64, conn: ConnId) -> bool {
        self.rooms.entry(room).or_default().insert(conn)
    }

    /// Forgets that `conn` sits in `room`. False if it did not.
    pub fn remove(&mut self, room: u64, conn: ConnId) -> bool {
        let Some(members) = self.rooms.get_mut(&room) else {
            return false;
        };
        let was_in = members.remove(&conn);
        if members.is_empty() {
            self.rooms.remove(&room);
        }
        was_in
    }

    /// This core's connections in `room`, in order.
    pub fn members(&self, room: u64) -> impl Iterator<Item = ConnId> + '_ {
        self.rooms.get(&room).into_iter().flatten().copied()
    }

    /// Whether `conn` sits in `room`.
    pub fn contains(&self, room: u64, conn: ConnId) -> bool {
        self.rooms.get(&room).is_some_and(|m| m.contains(&conn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_live_while_someone_is_in_them() {
        let mut rooms = Rooms::default();
        let (a, b) = (ConnId::new(0, 1), ConnId::new(0, 2));
        assert!(rooms.join(9, a, 1));
        assert!(!rooms.join(9, a, 1));
        assert!(rooms.join(9, b, 2));
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

    #[test]
    fn each_room_has_one_owner_and_one_core_owns_them_all() {
        assert_eq!(room_owner(0, 1), 0);
        assert_eq!(room_owner(u64::MAX, 1), 0);
        assert_eq!(room_owner(7, 0), 0, "no cores is taken as one");
        assert_eq!(room_owner(4, 2), 0);
        assert_eq!(room_owner(5, 2), 1);
        assert_eq!(room_owner(u64::MAX, 2), 1);
        assert_eq!(room_owner(130, 64), 2);
        assert_eq!(room_owner(u64::MAX, 255), (u64::MAX % 255) as u8);
        for room in 0..1000 {
            assert!(room_owner(room, 3) < 3);
        }
    }

    #[test]
    fn members_are_found_per_core_and_kicked_per_user() {
        let mut rooms = Rooms::default();
        let (a0, b0, a1) = (ConnId::new(0, 1), ConnId::new(0, 2), ConnId::new(1, 1));
        rooms.join(3, a0, 10);
        rooms.join(3, b0, 20);
        rooms.join(3, a1, 10);
        let room = rooms.get(3).unwrap();
        assert!(room.has_members_on(0, None));
        assert!(room.has_members_on(0, Some(a0)));
        assert!(room.has_members_on(1, None));
        assert!(!room.has_members_on(1, Some(a1)), "only the sender there");
        assert!(!room.has_members_on(2, None));
        assert_eq!(room.users().into_iter().collect::<Vec<_>>(), [10, 20]);
        assert_eq!(rooms.remove_user(3, 10), [a0, a1]);
        assert_eq!(rooms.close(3), [(b0, 20)]);
        assert!(rooms.is_closed(3) && rooms.is_empty());

        let mut seated = Seated::default();
        assert!(seated.insert(3, b0));
        assert!(!seated.insert(3, b0));
        assert!(seated.contains(3, b0));
        assert_eq!(seated.members(3).collect::<Vec<_>>(), [b0]);
        assert!(seated.remove(3, b0));
        assert!(!seated.remove(3, b0));
        assert_eq!(seated.members(3).count(), 0);
    }
}
