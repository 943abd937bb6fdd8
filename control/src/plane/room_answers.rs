//! Chatroom requests waiting for the owner core's answer: each is answered exactly once.
//!
//! A join, send or member list of a room another core owns is sent to that core
//! ([`super::chatrooms`]) and answered by it. Between cores of one server that answer
//! always comes; between cluster nodes it may not — the owner's node can go down with
//! the request in flight, or NATS (at most once) can lose the request or the answer.
//! So every such request waits here, and is answered `SERVER_BUSY` (the client asks
//! again shortly) when its owner's node goes down or when no answer came within
//! [`crate::Config::room_answer_timeout`]. An answer that comes after that is dropped:
//! the client has had its answer. (A join answered late still has its seat bookkeeping
//! done, [`Control::on_room_joined`].) Requests are told apart by connection and
//! request id, as the client tells their answers apart.
//!
//! No timer per request: the requests in flight are few (an owner answers within a
//! round trip), so one sweep timer, armed while any request waits, finds the overdue
//! ones.

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
    /// For a join: the room, and whether the join took the seat (held meanwhile).
    join: Option<(u64, bool)>,
    /// When it is answered `SERVER_BUSY` if the owner has not answered.
    deadline: Timestamp,
}

/// The requests waiting for an answer, by (connection, request id).
#[derive(Debug, Default)]
pub(super) struct RoomAnswers {
    waiting: HashMap<(ConnId, u32), Waiting, foldhash::fast::RandomState>,
    /// Whether a [`TimerKind::RoomAnswers`] sweep is armed.
    sweep_armed: bool,
}

impl Control {
    /// Request `rid` of `conn` went to `owner` core, which will answer it (`join`: a
    /// join of that room, and whether it took the seat); it is answered `SERVER_BUSY`
    /// if that answer does not come in time. (A request id already waiting keeps its
    /// first entry: the client cannot tell the two answers apart anyway.)
    pub(super) fn await_room_answer(
        &mut self,
        now: Timestamp,
        (conn, rid): (ConnId, u32),
        owner: u8,
        join: Option<(u64, bool)>,
    ) {
        let deadline = now.saturating_add(self.config.room_answer_timeout);
        self.room_answers
            .waiting
            .entry((conn, rid))
            .or_insert(Waiting {
                owner,
                join,
                deadline,
            });
        if !self.room_answers.sweep_armed {
            self.room_answers.sweep_armed = true;
            self.timers.arm(deadline, TimerKind::RoomAnswers);
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

    /// The sweep: the requests whose owner did not answer in time are answered now;
    /// the sweep is armed again for the next deadline if any request still waits.
    pub(super) fn sweep_room_answers(&mut self, now: Timestamp) {
        self.room_answers.sweep_armed = false;
        self.lose_room_answers(|w| w.deadline <= now);
        if let Some(next) = self.room_answers.waiting.values().map(|w| w.deadline).min() {
            self.room_answers.sweep_armed = true;
            self.timers.arm(next, TimerKind::RoomAnswers);
        }
    }

    /// `cores` cannot be reached: the requests waiting for them will not be answered.
    pub(super) fn room_answers_unreachable(&mut self, cores: u64) {
        self.lose_room_answers(|w| cores & 1u64.checked_shl(u32::from(w.owner)).unwrap_or(0) != 0);
    }

    /// Answers every waiting request that `lost` picks `SERVER_BUSY`, in a fixed order
    /// (the control plane is deterministic, whatever the map's order).
    fn lose_room_answers(&mut self, lost: impl Fn(&Waiting) -> bool) {
        if self.room_answers.waiting.is_empty() {
            return;
        }
        let mut gone: Vec<((ConnId, u32), Waiting)> = Vec::new();
        self.room_answers.waiting.retain(|&key, &mut w| {
            let is_lost = lost(&w);
            if is_lost {
                gone.push((key, w));
            }
            !is_lost
        });
        gone.sort_unstable_by_key(|&(key, _)| key);
        for ((conn, rid), waiting) in gone {
            self.room_answer_lost(conn, rid, waiting);
        }
    }

    /// Answers request `rid` of `conn` `SERVER_BUSY`. A join gives up the seat it took
    /// (and takes the connection out of the owner's members, in case only the answer
    /// was lost) unless another join of the same room still waits, whose answer the
    /// seat is for now. Nothing is sent to, or counted for, a connection that has
    /// closed meanwhile.
    fn room_answer_lost(&mut self, conn: ConnId, rid: u32, waiting: Waiting) {
        if self.registry.get(conn).is_none() {
            return;
        }
        self.counters.room_answers_lost += 1;
        if let Some((room, true)) = waiting.join {
            // The seat passes to the join of the room still waiting, if any (the one
            // sent first: a fixed choice), which gives it up in turn if it is lost too.
            let next = self
                .room_answers
                .waiting
                .iter_mut()
                .filter(|(key, w)| key.0 == conn && w.join.is_some_and(|(r, _)| r == room))
                .min_by_key(|(key, w)| (w.deadline, key.1));
            match next {
                Some((_, w)) => w.join = Some((room, true)),
                None => self.leave_room(room, conn),
            }
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
