//! Chatrooms as their owner core holds them ([`crate::chatroom::room_owner`]): the
//! members across cores, the seq counter, the recent backlog and the closed flag, and
//! the requests that need them — joins, sends, typing notices, member lists and the
//! operator's operations — whether they come from this core's connections or, as
//! [`CoreMessage`]s, from another core's.
//!
//! An answer to another core's connection goes back encoded ([`CoreMessage::RoomReply`],
//! [`CoreMessage::RoomJoined`]); a message is encoded once, delivered to this core's
//! members and sent once to each other core with members ([`CoreMessage::RoomPush`]).

use std::collections::BTreeSet;

use petrel_proto::{Body, Frame, pb};

use super::Control;
use crate::api::{ApiChatroomOp, ApiReply};
use crate::convert;
use crate::event::Action;
use crate::remote::{CoreMessage, RoomPushKind, RoomRequest, RoomSend};
use petrel_conn::ConnId;

impl Control {
    /// Sends `frame` to `conn`: at once if it is this core's, else encoded to its core.
    fn answer(&mut self, conn: ConnId, frame: Frame) {
        if self.is_local(conn) {
            self.send_frame(conn, frame);
            return;
        }
        let frame_type = frame.body.frame_type();
        let rid = frame.request_id;
        if let Some(bytes) = self.encode(&frame) {
            self.actions.push_back(Action::ToCore {
                core: conn.core(),
                message: CoreMessage::RoomReply {
                    conn,
                    rid,
                    frame_type,
                    bytes,
                },
            });
        }
    }

    /// Sends `message` to every other core with a member of `room` but `except`.
    fn tell_member_cores(
        &mut self,
        room: u64,
        except: Option<ConnId>,
        message: impl Fn() -> CoreMessage,
    ) {
        if self.config.core_count <= 1 {
            return;
        }
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let me = self.config.core_index;
        let cores = (0..self.config.core_count)
            .filter(|&core| core != me && r.has_members_on(core, except))
            .fold(0u64, |all, core| all | (1 << core));
        for core in (0..self.config.core_count).filter(|c| cores & (1 << c) != 0) {
            self.counters.pushes_forwarded += 1;
            self.actions.push_back(Action::ToCore {
                core,
                message: message(),
            });
        }
    }

    /// The error refusing a join of a closed room.
    fn closed_room_error(rid: u32) -> Frame {
        super::error_frame(
            rid,
            pb::ErrorCode::NotFound,
            "this chatroom was closed by the operator",
            0,
        )
    }

    /// Joins this core's `conn` to a room this core owns.
    pub(super) fn join_owned(&mut self, conn: ConnId, rid: u32, user: u64, room: u64) {
        if self.rooms.is_closed(room) {
            self.send_frame(conn, Self::closed_room_error(rid));
            return;
        }
        if !self.seat_available(conn, rid, room) {
            return;
        }
        if self.rooms.join(room, conn, user)
            && let Some(c) = self.registry.get_mut(conn)
        {
            c.rooms.join(room);
            self.seated.insert(room, conn);
        }
        let result = self.join_result(rid, room);
        self.send_frame(conn, result);
    }

    /// Another core's connection asks to join a room this core owns.
    pub(super) fn on_room_join(&mut self, request: RoomRequest) {
        let RoomRequest {
            room,
            conn,
            rid,
            user,
        } = request;
        let seated = !self.rooms.is_closed(room);
        let frame = if seated {
            self.rooms.join(room, conn, user);
            self.join_result(rid, room)
        } else {
            Self::closed_room_error(rid)
        };
        if let Some(bytes) = self.encode(&frame) {
            self.actions.push_back(Action::ToCore {
                core: conn.core(),
                message: CoreMessage::RoomJoined {
                    room,
                    conn,
                    rid,
                    seated,
                    bytes,
                },
            });
        }
    }

    /// The answer to a join: the members, and the newest messages that fit in one frame
    /// (oldest first).
    fn join_result(&self, rid: u32, room: u64) -> Frame {
        let mut recent: Vec<pb::MessagePush> = Vec::new();
        if let Some(r) = self.rooms.get(room) {
            let mut budget = super::sync::RESPONSE_BUDGET;
            for m in r.recent().rev() {
                let len = super::sync::repeated_field_len(m);
                if len > budget {
                    break;
                }
                budget -= len;
                recent.push(m.clone());
            }
            recent.reverse();
        }
        Frame::response(
            rid,
            pb::ConversationOpResult {
                conversation: Some(convert::chatroom_id(room)),
                members: self.chatroom_members(room),
                recent,
                read_count: None,
            },
        )
    }

    /// The users in a room this core owns, ascending.
    fn chatroom_members(&self, room: u64) -> Vec<pb::Member> {
        let Some(room) = self.rooms.get(room) else {
            return Vec::new();
        };
        room.users()
            .into_iter()
            .map(|user_id| pb::Member {
                user_id,
                role: pb::Role::Member as i32,
            })
            .collect()
    }

    /// Answers `conn`'s `ListMembers` of a room this core owns.
    pub(super) fn list_owned(&mut self, conn: ConnId, rid: u32, room: u64) {
        let members = self.chatroom_members(room);
        self.answer(
            conn,
            Frame::response(
                rid,
                pb::ConversationOpResult {
                    conversation: Some(convert::chatroom_id(room)),
                    members,
                    recent: Vec::new(),
                    read_count: None,
                },
            ),
        );
    }

    /// A message to a room this core owns, from any core's connection: sequenced,
    /// acknowledged, remembered for late joiners and delivered to every other member.
    pub(super) fn send_owned(&mut self, send: RoomSend) {
        let RoomRequest {
            room: room_id,
            conn,
            rid,
            user,
        } = send.request;
        let Some(room) = self
            .rooms
            .get_mut(room_id)
            .filter(|room| room.contains(conn))
        else {
            if self.is_local(conn) {
                return self.reject_not_a_member(conn, rid);
            }
            self.counters.messages_rejected += 1;
            return self.answer(
                conn,
                super::error_frame(
                    rid,
                    pb::ErrorCode::NotAMember,
                    "join the chatroom before sending to it",
                    0,
                ),
            );
        };
        let seq = room.next_seq();
        let conversation = convert::chatroom_id(room_id);
        let frame = Frame::new(
            0,
            pb::MessagePush {
                conversation: Some(conversation),
                seq,
                sender: user,
                server_time_ms: send.server_time_ms,
                client_msg_id: send.client_msg_id,
                content: send.content,
                sender_device: send.device.to_string(),
                recalled_by: 0,
                recalled_at_ms: 0,
                edited_at_ms: 0,
                // Unchecked in a room (nothing is stored): passed on as they came.
                reply_to: send.reply_to,
                mentions: send.mentions,
            },
        );
        let encoded = self.encode(&frame);
        self.answer(
            conn,
            Frame::response(
                rid,
                pb::Ack {
                    client_msg_id: send.client_msg_id,
                    conversation: Some(conversation),
                    seq,
                    server_time_ms: send.server_time_ms,
                    duplicate: false,
                },
            ),
        );
        if let Some(bytes) = encoded {
            self.deliver_room_message(room_id, seq, Some(conn), &bytes);
            self.tell_member_cores(room_id, Some(conn), || CoreMessage::RoomPush {
                room: room_id,
                kind: RoomPushKind::Message { seq },
                except: Some(conn),
                bytes: bytes.clone(),
            });
        }
        let keep = self.config.chatroom_recent;
        if let (Some(room), Body::MessagePush(push)) = (self.rooms.get_mut(room_id), frame.body) {
            room.remember(push, keep);
        }
    }

    /// A typing notice of any core's `conn` to a room this core owns: to the other
    /// members, unless the sender is not one or the room is too large.
    pub(super) fn typing_owned(&mut self, room_id: u64, conn: ConnId, user: u64, typing: bool) {
        let Some(room) = self.rooms.get(room_id).filter(|r| r.contains(conn)) else {
            self.counters.typing_dropped += 1;
            return;
        };
        if room.len() > self.config.typing_max_audience {
            self.counters.typing_dropped += 1;
            return;
        }
        let notice = pb::TypingNotice {
            conversation: Some(convert::chatroom_id(room_id)),
            user,
            typing,
            expires_ms: super::TYPING_EXPIRES_MS,
        };
        let Some(bytes) = self.encode(&Frame::new(0, notice)) else {
            return;
        };
        self.deliver_room_typing(room_id, Some(conn), &bytes);
        self.tell_member_cores(room_id, Some(conn), || CoreMessage::RoomPush {
            room: room_id,
            kind: RoomPushKind::Typing,
            except: Some(conn),
            bytes: bytes.clone(),
        });
    }

    /// Another core's connection left a room this core owns (or closed).
    pub(super) fn on_room_left(&mut self, room: u64, conn: ConnId) {
        self.rooms.leave(room, conn);
    }

    /// An operator's chatroom operation (`ApiRequest::Chatroom`). The room's owner core
    /// answers it (the driver routes it to [`crate::chatroom::room_owner`]); members on
    /// other cores taken out of the room are told through their cores.
    pub(super) fn api_chatroom(&mut self, room: u64, op: ApiChatroomOp) -> ApiReply {
        let (removed, kind): (Vec<(ConnId, u64)>, _) = match op {
            ApiChatroomOp::Members => {
                let users = self
                    .rooms
                    .get(room)
                    .map(|r| r.users().into_iter().collect())
                    .unwrap_or_default();
                return ApiReply::Chatroom {
                    users,
                    closed: self.rooms.is_closed(room),
                };
            }
            ApiChatroomOp::Open => {
                self.rooms.open(room);
                return ApiReply::Chatroom {
                    users: Vec::new(),
                    closed: false,
                };
            }
            ApiChatroomOp::Close => (self.rooms.close(room), pb::ConversationEventKind::Dissolved),
            ApiChatroomOp::Kick { user } => (
                self.rooms
                    .remove_user(room, user)
                    .into_iter()
                    .map(|c| (c, user))
                    .collect(),
                pb::ConversationEventKind::MembersRemoved,
            ),
        };
        let mut users = BTreeSet::new();
        // In connection order, so one core's connections are consecutive.
        let mut remote: Vec<ConnId> = Vec::new();
        for &(conn, user) in &removed {
            users.insert(user);
            if self.is_local(conn) {
                self.removed_from_room(room, conn, kind);
                continue;
            }
            if remote.last().is_some_and(|last| last.core() != conn.core()) {
                self.tell_removed(room, std::mem::take(&mut remote), kind);
            }
            remote.push(conn);
        }
        if !remote.is_empty() {
            self.tell_removed(room, remote, kind);
        }
        ApiReply::Chatroom {
            users: users.into_iter().collect(),
            closed: self.rooms.is_closed(room),
        }
    }

    /// Tells the core of `conns` (all one core's) that they were taken out of `room`.
    fn tell_removed(&mut self, room: u64, conns: Vec<ConnId>, kind: pb::ConversationEventKind) {
        let Some(core) = conns.first().map(|c| c.core()) else {
            return;
        };
        self.actions.push_back(Action::ToCore {
            core,
            message: CoreMessage::RoomRemoved { room, conns, kind },
        });
    }

    /// What another core said about a room: its connections' requests to this core as
    /// owner, or the owner's answers and pushes for this core's connections.
    pub(super) fn handle_room_message(&mut self, message: CoreMessage) {
        match message {
            CoreMessage::RoomJoin(request) => self.on_room_join(request),
            CoreMessage::RoomJoined {
                room,
                conn,
                rid,
                seated,
                bytes,
            } => self.on_room_joined((room, conn, rid), seated, bytes),
            CoreMessage::RoomLeft { room, conn } => self.on_room_left(room, conn),
            CoreMessage::RoomSend(send) => self.send_owned(send),
            CoreMessage::RoomTyping {
                room,
                conn,
                user,
                typing,
            } => self.typing_owned(room, conn, user, typing),
            CoreMessage::RoomList(request) => {
                self.list_owned(request.conn, request.rid, request.room);
            }
            CoreMessage::RoomReply {
                conn,
                rid,
                frame_type,
                bytes,
            } => {
                if self.room_answered(conn, rid) {
                    self.send_bytes(conn, bytes, frame_type);
                }
            }
            CoreMessage::RoomPush {
                room,
                kind,
                except,
                bytes,
            } => self.on_room_push(room, kind, except, &bytes),
            CoreMessage::RoomRemoved { room, conns, kind } => {
                self.on_room_removed(room, &conns, kind);
            }
            CoreMessage::LoggedIn(_)
            | CoreMessage::LoginSeen { .. }
            | CoreMessage::Offline { .. }
            | CoreMessage::Replace { .. }
            | CoreMessage::Revoked { .. }
            | CoreMessage::Push(_) => {}
        }
    }
}
