//! The chatroom messages this client showed recently, to show each only once.
//!
//! Chatrooms are not stored: the server keeps no dedup entry that outlives it. A member
//! whose send was pushed to the room but whose ack was lost — the server crashed, or the
//! connection dropped — sends it again (same `client_msg_id`) after the reconnect, and
//! the server pushes it to the room a second time. Stored conversations are deduplicated
//! by seq in the SQLite store; chatroom messages are by `(room, sender, client_msg_id)`
//! here, among the last [`RoomSeen::CAPACITY`] shown (in memory: a restarted app has
//! left its rooms anyway).

use std::collections::{HashSet, VecDeque};

/// A bounded set of recently shown chatroom messages; the oldest is forgotten first.
#[derive(Debug, Default)]
pub struct RoomSeen {
    order: VecDeque<(u64, u64, u64)>,
    seen: HashSet<(u64, u64, u64)>,
}

impl RoomSeen {
    /// How many messages are remembered: far more than a resend can lag behind.
    pub const CAPACITY: usize = 4096;

    /// Records message `client_msg_id` of `sender` in `room`; false if it was shown
    /// already (a resend).
    pub fn first_time(&mut self, room: u64, sender: u64, client_msg_id: u64) -> bool {
        let key = (room, sender, client_msg_id);
        if !self.seen.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > Self::CAPACITY
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resend_is_recognised_and_the_oldest_is_forgotten_past_capacity() {
        let mut r = RoomSeen::default();
        assert!(r.first_time(9, 1, 100));
        assert!(!r.first_time(9, 1, 100), "the resend");
        assert!(r.first_time(9, 2, 100), "another sender's id");
        assert!(r.first_time(8, 1, 100), "another room");
        for id in 0..RoomSeen::CAPACITY as u64 {
            assert!(r.first_time(7, 5, id));
        }
        assert_eq!(r.seen.len(), RoomSeen::CAPACITY);
        assert!(
            r.first_time(9, 1, 100),
            "forgotten after CAPACITY newer ones"
        );
    }
}
