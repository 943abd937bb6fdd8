//! Property test: arbitrary sequences of client operations, clock jumps, disconnects,
//! slow readers and decode errors never panic the control plane and keep its
//! bookkeeping consistent with what the transport was told.

mod harness;

use std::time::Duration;

use harness::{Sim, account, group, room, single, text_content};
use petrel_control::{Config, ConnId, Event, RateLimit};
use petrel_proto::{FrameError, pb};
use proptest::prelude::*;

use pb::conversation_op::Op;

#[derive(Debug, Clone)]
enum Step {
    Connect,
    Login {
        conn: usize,
        user: u64,
        device: u8,
        platform: u8,
    },
    BadLogin {
        conn: usize,
    },
    SendSingle {
        conn: usize,
        peer: u64,
        id: u64,
    },
    SendGroup {
        conn: usize,
        group: u64,
        id: u64,
    },
    SendRoom {
        conn: usize,
        room: u64,
        id: u64,
    },
    SendAccount {
        conn: usize,
        account: u64,
        id: u64,
    },
    CreateGroup {
        conn: usize,
        members: Vec<u64>,
    },
    CreateAccount {
        conn: usize,
    },
    Follow {
        conn: usize,
        account: u64,
    },
    RemoveMember {
        conn: usize,
        group: u64,
        user: u64,
    },
    JoinRoom {
        conn: usize,
        room: u64,
    },
    LeaveRoom {
        conn: usize,
        room: u64,
    },
    Sync {
        conn: usize,
        cursor: u64,
        limit: u32,
    },
    History {
        conn: usize,
        peer: u64,
        before: u64,
    },
    MarkRead {
        conn: usize,
        peer: u64,
        seq: u64,
    },
    Ping {
        conn: usize,
    },
    Renew {
        conn: usize,
    },
    Logout {
        conn: usize,
        revoke: bool,
    },
    Disconnect {
        conn: usize,
    },
    Slow {
        conn: usize,
        slow: bool,
    },
    DecodeError {
        conn: usize,
        fatal: bool,
    },
    Advance {
        ms: u64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let conn = 0usize..6;
    let user = 0u64..5;
    prop_oneof![
        Just(Step::Connect),
        (conn.clone(), user.clone(), 0u8..3, 0u8..3).prop_map(|(conn, user, device, platform)| {
            Step::Login {
                conn,
                user,
                device,
                platform,
            }
        }),
        conn.clone().prop_map(|conn| Step::BadLogin { conn }),
        (conn.clone(), user.clone(), 0u64..20).prop_map(|(conn, peer, id)| Step::SendSingle {
            conn,
            peer,
            id
        }),
        (conn.clone(), 0u64..3, 0u64..20).prop_map(|(conn, group, id)| Step::SendGroup {
            conn,
            group,
            id
        }),
        (conn.clone(), 0u64..3, 0u64..20).prop_map(|(conn, room, id)| Step::SendRoom {
            conn,
            room,
            id
        }),
        (conn.clone(), 0u64..3, 0u64..20).prop_map(|(conn, account, id)| Step::SendAccount {
            conn,
            account,
            id
        }),
        (conn.clone(), prop::collection::vec(user.clone(), 0..4))
            .prop_map(|(conn, members)| Step::CreateGroup { conn, members }),
        conn.clone().prop_map(|conn| Step::CreateAccount { conn }),
        (conn.clone(), 0u64..3).prop_map(|(conn, account)| Step::Follow { conn, account }),
        (conn.clone(), 0u64..3, user.clone()).prop_map(|(conn, group, user)| Step::RemoveMember {
            conn,
            group,
            user
        }),
        (conn.clone(), 0u64..3).prop_map(|(conn, room)| Step::JoinRoom { conn, room }),
        (conn.clone(), 0u64..3).prop_map(|(conn, room)| Step::LeaveRoom { conn, room }),
        (conn.clone(), 0u64..50, 0u32..5).prop_map(|(conn, cursor, limit)| Step::Sync {
            conn,
            cursor,
            limit
        }),
        (conn.clone(), user.clone(), 0u64..10).prop_map(|(conn, peer, before)| Step::History {
            conn,
            peer,
            before
        }),
        (conn.clone(), user.clone(), 0u64..10).prop_map(|(conn, peer, seq)| Step::MarkRead {
            conn,
            peer,
            seq
        }),
        conn.clone().prop_map(|conn| Step::Ping { conn }),
        conn.clone().prop_map(|conn| Step::Renew { conn }),
        (conn.clone(), any::<bool>()).prop_map(|(conn, revoke)| Step::Logout { conn, revoke }),
        conn.clone().prop_map(|conn| Step::Disconnect { conn }),
        (conn.clone(), any::<bool>()).prop_map(|(conn, slow)| Step::Slow { conn, slow }),
        (conn, any::<bool>()).prop_map(|(conn, fatal)| Step::DecodeError { conn, fatal }),
        (0u64..200_000).prop_map(|ms| Step::Advance { ms }),
    ]
}

fn platform(p: u8) -> pb::Platform {
    match p {
        0 => pb::Platform::Ios,
        1 => pb::Platform::Android,
        _ => pb::Platform::Desktop,
    }
}

fn run(steps: Vec<Step>) {
    let mut s = Sim::new(
        Config {
            rate_limit: RateLimit {
                burst: 20,
                per_second: 5,
            },
            ..Config::default()
        },
        1,
    );
    // A small transport limit, so slow readers become congested within a sequence.
    s.outbound_limit = 4_000;
    // Start with three logged-in users and one connection that has not logged in.
    let mut conns: Vec<ConnId> = (1..=3)
        .map(|user| s.login(user, "d0", pb::Platform::Ios))
        .collect();
    conns.push(s.connect());
    for step in steps {
        let pick = |i: usize| (!conns.is_empty()).then(|| conns[i % conns.len()]);
        match step {
            Step::Connect => conns.push(s.connect()),
            Step::Advance { ms } => s.advance(Duration::from_millis(ms)),
            other => {
                let conn_index = match &other {
                    Step::Login { conn, .. }
                    | Step::BadLogin { conn }
                    | Step::SendSingle { conn, .. }
                    | Step::SendGroup { conn, .. }
                    | Step::SendRoom { conn, .. }
                    | Step::SendAccount { conn, .. }
                    | Step::CreateGroup { conn, .. }
                    | Step::CreateAccount { conn }
                    | Step::Follow { conn, .. }
                    | Step::RemoveMember { conn, .. }
                    | Step::JoinRoom { conn, .. }
                    | Step::LeaveRoom { conn, .. }
                    | Step::Sync { conn, .. }
                    | Step::History { conn, .. }
                    | Step::MarkRead { conn, .. }
                    | Step::Ping { conn }
                    | Step::Renew { conn }
                    | Step::Logout { conn, .. }
                    | Step::Disconnect { conn }
                    | Step::Slow { conn, .. }
                    | Step::DecodeError { conn, .. } => *conn,
                    Step::Connect | Step::Advance { .. } => unreachable!(),
                };
                let Some(c) = pick(conn_index) else {
                    continue;
                };
                apply(&mut s, c, other);
            }
        }
        // The control plane's view matches what the transport was told.
        let open = s.clients.values().filter(|c| c.closed.is_none()).count();
        assert_eq!(s.control.connection_count(), open);
        assert!(s.control.session_count() as usize <= open);
    }
}

fn send_text(s: &mut Sim, conn: ConnId, conversation: pb::ConversationId, id: u64) {
    s.send(
        conn,
        pb::SendMessage {
            client_msg_id: id,
            conversation: Some(conversation),
            content: petrel_proto::wire::encode_content(&text_content("p")),
            ..Default::default()
        },
    );
}

fn op(s: &mut Sim, conn: ConnId, op: Op) {
    s.send(conn, pb::ConversationOp { op: Some(op) });
}

fn apply(s: &mut Sim, c: ConnId, step: Step) {
    match step {
        Step::Login {
            user,
            device,
            platform: p,
            ..
        } => {
            let device = format!("d{device}");
            let token = s.token(user, &device, platform(p), Duration::from_secs(3600));
            s.send(
                c,
                pb::Login {
                    token,
                    user_id: user,
                    device_id: device,
                    platform: platform(p) as i32,
                    client_version: String::new(),
                    attempt: 0,
                },
            );
        }
        Step::BadLogin { .. } => {
            s.send(
                c,
                pb::Login {
                    token: "AQIDBA".into(),
                    user_id: 1,
                    ..Default::default()
                },
            );
        }
        Step::SendSingle { peer, id, .. } => send_text(s, c, single(peer), id),
        Step::SendGroup { group: g, id, .. } => send_text(s, c, group(g), id),
        Step::SendRoom { room: r, id, .. } => send_text(s, c, room(r), id),
        Step::SendAccount { account: a, id, .. } => send_text(s, c, account(a), id),
        Step::CreateGroup { members, .. } => op(
            s,
            c,
            Op::CreateGroup(pb::CreateGroup {
                name: "g".into(),
                members,
            }),
        ),
        Step::CreateAccount { .. } => op(
            s,
            c,
            Op::CreatePublicAccount(pb::CreatePublicAccount { name: "a".into() }),
        ),
        Step::Follow { account: a, .. } => op(s, c, Op::Follow(pb::Follow { account_id: a })),
        Step::RemoveMember { group: g, user, .. } => op(
            s,
            c,
            Op::RemoveMembers(pb::RemoveMembers {
                group_id: g,
                users: vec![user],
            }),
        ),
        Step::JoinRoom { room: r, .. } => {
            op(s, c, Op::JoinChatroom(pb::JoinChatroom { room_id: r }))
        }
        Step::LeaveRoom { room: r, .. } => {
            op(s, c, Op::LeaveChatroom(pb::LeaveChatroom { room_id: r }))
        }
        Step::Sync { cursor, limit, .. } => {
            s.send(
                c,
                pb::SyncRequest {
                    inbox_cursor: cursor,
                    cursors: Vec::new(),
                    limit,
                    inbox_position: Vec::new(),
                },
            );
        }
        Step::History { peer, before, .. } => {
            s.send(
                c,
                pb::HistoryRequest {
                    conversation: Some(single(peer)),
                    before_seq: before,
                    limit: 3,
                },
            );
        }
        Step::MarkRead { peer, seq, .. } => op(
            s,
            c,
            Op::MarkRead(pb::MarkRead {
                conversation: Some(single(peer)),
                seq,
            }),
        ),
        Step::Ping { .. } => {
            s.send(c, pb::Ping { client_time_ms: 1 });
        }
        Step::Renew { .. } => {
            s.send(c, pb::RenewToken {});
        }
        Step::Logout { revoke, .. } => {
            s.send(
                c,
                pb::Logout {
                    revoke_token: revoke,
                },
            );
        }
        Step::Disconnect { .. } => {
            if s.client(c).closed.is_none() {
                s.disconnect(c);
            }
        }
        Step::Slow { slow, .. } => s.set_slow(c, slow),
        Step::DecodeError { fatal, .. } => {
            let error = if fatal {
                FrameError::UnsupportedVersion { found: 9 }
            } else {
                FrameError::UnknownType {
                    frame_type: 0x70,
                    request_id: 1,
                    body_len: 3,
                }
            };
            s.control
                .handle(s.now, Event::FrameError { conn: c, error });
            s.run();
        }
        Step::Connect | Step::Advance { .. } => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_operation_sequences_keep_state_consistent(
        steps in prop::collection::vec(step(), 1..80)
    ) {
        run(steps);
    }
}
