//! Chatroom requests waiting for the owner core's answer: each is answered exactly once.
//!
//! A join, send or member list of a room another core owns is sent to that core
//! ([`super::chatrooms`]) and answered by it. Between cores of one server that answer
//! always comes; between cluster nodes it may not — the owner's node can go down with
//! the request in flight, or NATS (at most once) can lose the request or the answer.
//! So every such request waits here, and is answered `SERVER_BUSY` (the client asks
//! again shortly) when its owner's node goes down or when no answer came within
//! [`crate::remote::ROOM_ANSWER_LIMIT`]. An answer that comes after that is dropped:
//! the client has had its answer. (A join answered late still has its seat bookkeeping
//! done, [`Control::on_room_joined`].)

use std::collections::HashMap;

use petrel_conn::ConnId;
use petrel_proto::pb;

use super::Control;
use crate::convert;
use crate::time::Timestamp;
use crate::timers::TimerKind;

/// A request of this core's connection waiting for a room owner on another core.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    /// The owner core.
    owner: u8,
    /// For a join, the room (its seat is held meanwhile).
    joining: Option<u64>,
}

/// The requests waiting for an answer, by (connection, request id).
#[derive(Debug, Default)]
pub(super) struct RoomAnswers {
    waiting: HashMap<(ConnId, u32), Waiting, foldhash::fast::RandomState>,
}

impl RoomAnswers {
    /// Whether request `rid` of `conn` still waits.
    pub(super) fn is_waiting(&self, conn: ConnId, rid: u32) -> bool {
        !self.waiting.is_empty() && self.waiting.contains_key(&(conn, rid))
    }
}

impl Control {
    /// Request `rid` of `conn` went to `owner` core, which will answer it (`joining`:
    /// it asks to join that room); it is answered `SERVER_BUSY` if that answer does not
    /// come in time. (A request id already waiting keeps its first deadline: the client
    /// cannot tell the two answers apart anyway.)
    pub(super) fn await_room_answer(
        &mut self,
        now: Timestamp,
        (conn, rid): (ConnId, u32),
        owner: u8,
        joining: Option<u64>,
    ) {
        if self
            .room_answers
            .waiting
            .insert((conn, rid), Waiting { owner, joining })
            .is_none()
        {
            self.timers.arm(
                now.saturating_add(crate::remote::ROOM_ANSWER_LIMIT),
                TimerKind::RoomAnswer(conn, rid),
            );
        }
    }

    /// The owner answered request `rid` of `conn`: whether the answer goes to the
    /// client (false: it was answered already, the answer is late).
    pub(super) fn room_answered(&mut self, conn: ConnId, rid: u32) -> bool {
        let answered = self.room_answers.waiting.remove(&(conn, rid)).is_some();
        if !answered {
            self.counters.room_answers_late += 1;
        }
        answered
    }

    /// Request `rid` of `conn` had no answer within the limit.
    pub(super) fn room_answer_overdue(&mut self, conn: ConnId, rid: u32) {
        if let Some(w) = self.room_answers.waiting.remove(&(conn, rid)) {
            self.room_answer_lost(conn, rid, w);
        }
    }

    /// `cores` cannot be reached: the requests waiting for them will not be answered.
    pub(super) fn room_answers_unreachable(&mut self, cores: u64) {
        if self.room_answers.waiting.is_empty() {
            return;
        }
        let mut lost: Vec<((ConnId, u32), Waiting)> = Vec::new();
        self.room_answers.waiting.retain(|&key, &mut w| {
            let gone = cores & 1u64.checked_shl(u32::from(w.owner)).unwrap_or(0) != 0;
            if gone {
                lost.push((key, w));
            }
            !gone
        });
        // In a fixed order, whatever the map's: the control plane is deterministic.
        lost.sort_unstable_by_key(|&(key, _)| key);
        for ((conn, rid), w) in lost {
            self.room_answer_lost(conn, rid, w);
        }
    }

    /// Answers request `rid` of `conn` `SERVER_BUSY`; a join gives up its seat (and
    /// takes the connection out of the owner's members, in case only the answer was
    /// lost).
    fn room_answer_lost(&mut self, conn: ConnId, rid: u32, waiting: Waiting) {
        self.counters.room_answers_lost += 1;
        if let Some(room) = waiting.joining {
            self.leave_room(room, conn);
        }
        self.send_error(
            conn,
            rid,
            pb::ErrorCode::ServerBusy,
            "the node that owns this chatroom did not answer; try again shortly",
            convert::UNAVAILABLE_RETRY_MS,
        );
    }
}
