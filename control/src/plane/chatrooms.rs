//! Chatrooms as a connection's own core sees them: what its connections ask of a room
//! (join, leave, send, typing, member list) and how a room's pushes reach them.
//!
//! A room is held by its owner core ([`crate::chatroom::room_owner`]; the owner's side
//! is in `room_owner`). When this core owns the room, a request is handled there at
//! once, exactly as on a one-core server; otherwise it is checked here (the seat limit,
//! the seat itself) and sent to the owner as a [`CoreMessage`], whose answer comes back
//! encoded. Either way this core keeps its connections' [`crate::chatroom::Seats`] and
//! the [`crate::chatroom::Seated`] index it delivers a room's pushes through, skipping
//! congested members (owed a `Gap`, sent when they drain).

use std::sync::Arc;

use bytes::Bytes;
use petrel_proto::{Frame, FrameType, pb};

use super::Control;
use super::push::PushKind;
use crate::chatroom::room_owner;
use crate::convert;
use crate::event::Action;
use crate::remote::{CoreMessage, RoomPushKind, RoomRequest, RoomSend};
use crate::time::Timestamp;
use petrel_conn::ConnId;

impl Control {
    /// Whether this core owns `room` (always, on a one-core server).
    pub(super) fn owns_room(&self, room: u64) -> bool {
        room_owner(room, self.config.core_count) == self.config.core_index
    }

    /// Whether `conn` is one of this core's connections (always, on a one-core server).
    pub(super) fn is_local(&self, conn: ConnId) -> bool {
        self.config.core_count <= 1 || conn.core() == self.config.core_index
    }

    /// Whether `room`'s owner core cannot be reached (its cluster node is down): then
    /// request `rid` of `conn` is answered `SERVER_BUSY` now — nothing would answer it —
    /// and the client asks again shortly.
    fn owner_unreachable(&mut self, conn: ConnId, rid: u32, room: u64) -> bool {
        let owner = room_owner(room, self.config.core_count);
        if self.unreachable & 1u64.checked_shl(u32::from(owner)).unwrap_or(0) == 0 {
            return false;
        }
        self.send_error(
            conn,
            rid,
            pb::ErrorCode::ServerBusy,
            "the node that owns this chatroom cannot be reached; try again shortly",
            convert::UNAVAILABLE_RETRY_MS,
        );
        true
    }

    /// Sends `message`, which needs no answer, to the core that owns `room`.
    fn tell_owner(&mut self, room: u64, message: CoreMessage) {
        self.actions.push_back(Action::ToCore {
            core: room_owner(room, self.config.core_count),
            message,
        });
    }

    /// Sends `message`, request `rid` of `conn` about `room`, to the core that owns the
    /// room, which answers it; it waits for that answer in [`super::room_answers`]
    /// (`took_seat`: a join that took a seat, held meanwhile; false for the others).
    fn ask_owner(
        &mut self,
        now: Timestamp,
        (conn, rid): (ConnId, u32),
        room: u64,
        took_seat: bool,
        message: CoreMessage,
    ) {
        let owner = room_owner(room, self.config.core_count);
        let join = matches!(message, CoreMessage::RoomJoin(_)).then_some((room, took_seat));
        self.await_room_answer(now, (conn, rid), owner, join);
        self.actions.push_back(Action::ToCore {
            core: owner,
            message,
        });
    }

    /// `JoinChatroom`: answered by the owner with the members and the recent messages.
    pub(super) fn join_chatroom(&mut self, now: Timestamp, conn: ConnId, rid: u32, room: u64) {
        let Some(user) = self.session_user(conn) else {
            return;
        };
        if self.owns_room(room) {
            return self.join_owned(conn, rid, user, room);
        }
        if self.owner_unreachable(conn, rid, room) || !self.seat_available(conn, rid, room) {
            return;
        }
        // The seat is held while the owner answers, so the limit holds for joins in
        // flight; a send meanwhile reaches the owner after the join.
        let took_seat = self
            .registry
            .get_mut(conn)
            .is_some_and(|c| c.rooms.join(room));
        self.ask_owner(
            now,
            (conn, rid),
            room,
            took_seat,
            CoreMessage::RoomJoin(RoomRequest {
                room,
                conn,
                rid,
                user,
            }),
        );
    }

    /// Whether `conn` may take a seat in `room` (it has one already, or is under
    /// `max_rooms_per_conn`); if not, it is told so.
    pub(super) fn seat_available(&mut self, conn: ConnId, rid: u32, room: u64) -> bool {
        let Some(c) = self.registry.get(conn) else {
            return false;
        };
        if !c.rooms.contains(room) && c.rooms.len() >= self.config.max_rooms_per_conn {
            self.send_error(
                conn,
                rid,
                pb::ErrorCode::PermissionDenied,
                "in too many chatrooms; leave one first",
                0,
            );
            return false;
        }
        true
    }

    /// The owner's answer to a join of one of this core's connections. Answers come in
    /// the order the owner took the requests, so the seat this core holds decides: a
    /// seated answer finding no seat (left or closed meanwhile) has the owner remove the
    /// member again, and a refusal drops the seat (the owner has no member left after
    /// a close). One race is accepted: join, leave and join again in quick succession
    /// can index the second seat when the first answer arrives, so pushes sent between
    /// the leave and the second join may reach the connection (each with its seq, also
    /// in the second answer's backlog).
    ///
    /// An answer that comes after the join was answered `SERVER_BUSY`
    /// ([`super::room_answers`]) only does the bookkeeping: the seat was given up then,
    /// so a seated answer has the owner remove the member again.
    pub(super) fn on_room_joined(
        &mut self,
        (room, conn, rid): (u64, ConnId, u32),
        seated: bool,
        bytes: Bytes,
    ) {
        let answer = self.room_answered(conn, rid);
        let holds_seat = self
            .registry
            .get(conn)
            .is_some_and(|c| c.rooms.contains(room));
        if seated {
            if holds_seat {
                self.seated.insert(room, conn);
            } else {
                // Left or closed since it asked: the owner's view follows ours.
                self.tell_owner(room, CoreMessage::RoomLeft { room, conn });
            }
            if answer {
                self.send_bytes(conn, bytes, FrameType::ConversationOpResult);
            }
        } else {
            if answer {
                if let Some(c) = self.registry.get_mut(conn) {
                    c.rooms.leave(room);
                }
                self.seated.remove(room, conn);
                self.send_bytes(conn, bytes, FrameType::Error);
            }
        }
    }

    /// `LeaveChatroom`: always answered at once (leaving a room one is not in is fine).
    pub(super) fn leave_chatroom(&mut self, conn: ConnId, rid: u32, room: u64) {
        self.leave_room(room, conn);
        self.send_frame(
            conn,
            Frame::response(
                rid,
                pb::ConversationOpResult {
                    conversation: Some(convert::chatroom_id(room)),
                    members: Vec::new(),
                    recent: Vec::new(),
                    read_count: None,
                },
            ),
        );
    }

    /// Takes `conn` (this core's, open or just closed) out of `room`: its seat, the
    /// index, and the owner's members.
    pub(super) fn leave_room(&mut self, room: u64, conn: ConnId) {
        let had_seat = self
            .registry
            .get_mut(conn)
            .is_some_and(|c| c.rooms.leave(room));
        self.left_room(room, conn, had_seat);
    }

    /// What is left to do once `conn`'s seat in `room` is gone (`had_seat`: it had one).
    pub(super) fn left_room(&mut self, room: u64, conn: ConnId, had_seat: bool) {
        self.seated.remove(room, conn);
        if self.owns_room(room) {
            self.rooms.leave(room, conn);
        } else if had_seat {
            self.tell_owner(room, CoreMessage::RoomLeft { room, conn });
        }
    }

    /// A chatroom message: sequenced and fanned out in memory by the room's owner, and
    /// acknowledged at once by it. Chatrooms keep no dedup state, so a retried
    /// `client_msg_id` is delivered again.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_to_chatroom(
        &mut self,
        now: Timestamp,
        conn: ConnId,
        rid: u32,
        user: u64,
        device: &Arc<str>,
        client_msg_id: u64,
        room: u64,
        content: Bytes,
        (reply_to, mentions): (u64, Vec<u64>),
    ) {
        let send = RoomSend {
            request: RoomRequest {
                room,
                conn,
                rid,
                user,
            },
            device: Arc::clone(device),
            client_msg_id,
            content,
            reply_to,
            mentions,
            server_time_ms: now.as_millis(),
        };
        if self.owns_room(room) {
            return self.send_owned(send);
        }
        if !self
            .registry
            .get(conn)
            .is_some_and(|c| c.rooms.contains(room))
        {
            return self.reject_not_a_member(conn, rid);
        }
        if self.owner_unreachable(conn, rid, room) {
            return;
        }
        self.ask_owner(now, (conn, rid), room, false, CoreMessage::RoomSend(send));
    }

    /// Refuses a send to a room its connection is not in.
    pub(super) fn reject_not_a_member(&mut self, conn: ConnId, rid: u32) {
        self.reject_send(
            conn,
            rid,
            pb::ErrorCode::NotAMember,
            "join the chatroom before sending to it",
        );
    }

    /// A `Typing` notice to a chatroom: the owner passes it to the other members.
    pub(super) fn typing_in_chatroom(
        &mut self,
        conn: ConnId,
        user: u64,
        room: u64,
        typing: pb::Typing,
    ) {
        if self.owns_room(room) {
            return self.typing_owned(room, conn, user, typing.typing);
        }
        if !self
            .registry
            .get(conn)
            .is_some_and(|c| c.rooms.contains(room))
        {
            self.counters.typing_dropped += 1;
            return;
        }
        self.tell_owner(
            room,
            CoreMessage::RoomTyping {
                room,
                conn,
                user,
                typing: typing.typing,
            },
        );
    }

    /// `ListMembers` of a chatroom: answered by the owner.
    pub(super) fn list_chatroom(&mut self, now: Timestamp, conn: ConnId, rid: u32, room: u64) {
        if self.owns_room(room) {
            return self.list_owned(conn, rid, room);
        }
        let Some(user) = self.session_user(conn) else {
            return;
        };
        if self.owner_unreachable(conn, rid, room) {
            return;
        }
        self.ask_owner(
            now,
            (conn, rid),
            room,
            false,
            CoreMessage::RoomList(RoomRequest {
                room,
                conn,
                rid,
                user,
            }),
        );
    }

    /// A room push from its owner (another core): this core's members of the room get it.
    pub(super) fn on_room_push(
        &mut self,
        room: u64,
        kind: RoomPushKind,
        except: Option<ConnId>,
        bytes: &Bytes,
    ) {
        match kind {
            RoomPushKind::Message { seq } => self.deliver_room_message(room, seq, except, bytes),
            RoomPushKind::Typing => self.deliver_room_typing(room, except, bytes),
        }
    }

    /// Sends message `seq` of `room` to this core's members of it but `except`. A
    /// congested member skips it and is owed a `Gap` (sent when it drains); one owed a
    /// gap already gets it first.
    pub(super) fn deliver_room_message(
        &mut self,
        room: u64,
        seq: u64,
        except: Option<ConnId>,
        bytes: &Bytes,
    ) {
        let mut targets = std::mem::take(&mut self.scratch_conns);
        targets.clear();
        targets.extend(self.seated.members(room).filter(|&c| Some(c) != except));
        for &target in &targets {
            let Some(c) = self.registry.get_mut(target) else {
                continue;
            };
            // A congested receiver loses this message (and is told so with a Gap when
            // it drains); the room does not wait for it.
            if c.congested {
                c.rooms.skipped(room, seq);
                self.counters.messages_dropped.chatroom += 1;
                continue;
            }
            // A gap owed (rare: it drained with no room to report it) goes out first.
            if let Some((from, to)) = c.rooms.take_gap(room) {
                self.send_gap(target, room, from, to);
            }
            if self.send_bytes(target, bytes.clone(), FrameType::MessagePush) {
                self.counters.messages_delivered.chatroom += 1;
            }
        }
        self.scratch_conns = targets;
    }

    /// Sends a typing notice of `room` to this core's members of it but `except`
    /// (congested ones miss it).
    pub(super) fn deliver_room_typing(&mut self, room: u64, except: Option<ConnId>, bytes: &Bytes) {
        let mut targets = std::mem::take(&mut self.scratch_conns);
        targets.clear();
        targets.extend(self.seated.members(room).filter(|&c| Some(c) != except));
        for &target in &targets {
            self.deliver_to(target, PushKind::Typing, bytes);
        }
        self.scratch_conns = targets;
    }

    /// The owner took `conns` of this core out of `room` (operator close or kick):
    /// each that still holds its seat drops it and is told with an event of `kind`.
    pub(super) fn on_room_removed(
        &mut self,
        room: u64,
        conns: &[ConnId],
        kind: pb::ConversationEventKind,
    ) {
        for &conn in conns {
            self.removed_from_room(room, conn, kind);
        }
    }

    /// `conn` (this core's) was taken out of `room` by the owner: it drops its seat and
    /// gets a `ConversationEvent` of `kind` naming its user. Returns the user if it was
    /// told.
    pub(super) fn removed_from_room(
        &mut self,
        room: u64,
        conn: ConnId,
        kind: pb::ConversationEventKind,
    ) -> Option<u64> {
        self.seated.remove(room, conn);
        let c = self.registry.get_mut(conn)?;
        if !c.rooms.leave(room) {
            return None;
        }
        let user = c.session.as_ref()?.user;
        let event = pb::ConversationEvent {
            conversation: Some(convert::chatroom_id(room)),
            kind: kind as i32,
            actor: 0,
            users: vec![user],
            role: 0,
            seq: 0,
            until_ms: 0,
        };
        self.send_frame(conn, Frame::new(0, event));
        Some(user)
    }
}
