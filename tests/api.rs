//! End-to-end tests of the server HTTP API (`petrel serve --api-addr`, docs/API.md)
//! against the real binary, with the SDK or the raw protocol client on the other side:
//!
//! - a token minted over the API logs in with the SDK, and the session is listed;
//! - a system message sent over the API reaches an SDK client live, exactly once even
//!   when the backend retries it with the same `client_msg_id`;
//! - a device kicked over the API sees `Kicked{ADMIN}`; revoking a user's tokens kicks
//!   with `TOKEN_REVOKED` and the token no longer logs in;
//! - a group created over the API gets messages sent over the API pushed to its members;
//! - bad input gets a 4xx with a JSON error naming the field, never a 5xx; a missing or
//!   wrong API key gets 401.
//!
//! The tests with a client run on both dataplanes (`NAME::kernel`, `NAME::xdp`); the API
//! itself always listens on loopback in the root namespace.

#[macro_use]
mod common;

use std::time::Duration;

use common::server::block_on;
use common::{Dataplane, TestClient, TestServer};
use petrel_proto::{Body, pb};
use petrel_sdk::{Client, ClientConfig, ConnectionState, ConversationKey, Event, Token, token_fn};
use serde_json::{Value, json};
use tokio::task::block_in_place;
use tokio::time::{Instant, timeout};

const KEY: &str = "api-test-key-0123456789abcdef";
const SYSTEM: u64 = 900_000;
const WAIT: Duration = Duration::from_secs(20);

/// A server with the API on, its key in a file of its own.
struct ApiServer {
    server: TestServer,
    _dir: tempfile::TempDir,
}

impl ApiServer {
    fn start(dp: Dataplane) -> ApiServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = dir.path().join("api.key");
        std::fs::write(&key_file, format!("{KEY}\n")).expect("key file");
        let config = format!(
            "api_addr = \"127.0.0.1:0\"\napi_key_file = {:?}\napi_system_user = {SYSTEM}\n",
            key_file.display().to_string()
        );
        ApiServer {
            server: TestServer::start_on(dp, &config),
            _dir: dir,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> common::http::Response {
        self.server
            .api_request(method, path, Some(KEY), body.as_ref())
    }

    /// `call`, expecting `status`; returns the JSON body.
    fn expect(&self, status: u16, method: &str, path: &str, body: Option<Value>) -> Value {
        let r = self.call(method, path, body);
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        r.json()
    }

    fn token(&self, user: u64, device: &str) -> (String, u64) {
        let body = self.expect(
            201,
            "POST",
            "/v1/tokens",
            Some(
                json!({"user_id": user, "device": device, "platform": "desktop", "ttl_secs": 3600}),
            ),
        );
        (
            body["token"].as_str().expect("token").to_owned(),
            body["expires_at_ms"].as_u64().expect("expiry"),
        )
    }
}

/// An SDK client of `user` on `device` whose token comes from the API.
fn sdk_client(api: &ApiServer, user: u64, device: &str) -> (Client, petrel_sdk::Events) {
    let (token, expires_at_ms) = block_in_place(|| api.token(user, device));
    let mut config = ClientConfig::new(user, device, vec![api.server.addr.to_string()]);
    config.connect_timeout = Duration::from_secs(2);
    config.jitter_seed = Some(user);
    let provider = token_fn(move || {
        Ok(Token {
            token: token.clone(),
            expires_at_ms,
        })
    });
    Client::start(config, provider).expect("start client")
}

async fn next_matching(
    events: &mut petrel_sdk::Events,
    what: &str,
    mut pred: impl FnMut(&Event) -> bool,
) -> Event {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, events.recv()).await {
            Ok(Some(e)) if pred(&e) => return e,
            Ok(Some(_)) => {}
            Ok(None) => panic!("event stream closed before {what}"),
            Err(_) => panic!("no {what} within {WAIT:?}"),
        }
    }
}

fn a_token_minted_over_the_api_logs_in_with_the_sdk(dp: Dataplane) {
    let api = ApiServer::start(dp);
    block_on(dp, async {
        let (client, mut events) = sdk_client(&api, 11, "laptop-11");
        next_matching(&mut events, "a connection", |e| {
            matches!(e, Event::State(ConnectionState::Connected { .. }))
        })
        .await;
        let sessions = block_in_place(|| api.expect(200, "GET", "/v1/users/11/sessions", None));
        let list = sessions["sessions"].as_array().expect("sessions");
        assert_eq!(list.len(), 1, "{sessions}");
        assert_eq!(list[0]["device"], "laptop-11");
        assert_eq!(list[0]["platform"], "desktop");
        let presence = block_in_place(|| {
            api.expect(
                200,
                "POST",
                "/v1/presence",
                Some(json!({"user_ids": [11, 12]})),
            )
        });
        assert_eq!(presence["users"][0]["online"], true, "{presence}");
        assert_eq!(presence["users"][1]["online"], false, "{presence}");
        assert!(
            presence["users"][0]["last_active_ms"].as_u64().is_some(),
            "{presence}"
        );
        client.shutdown(false).await;
    });
}

fn a_system_message_over_the_api_reaches_an_sdk_client_live_once(dp: Dataplane) {
    let api = ApiServer::start(dp);
    block_on(dp, async {
        let (client, mut events) = sdk_client(&api, 21, "phone-21");
        client.wait_connected(WAIT).await.expect("connected");
        let send = json!({
            "system": true,
            "conversation": {"kind": "single", "id": 21},
            "client_msg_id": 4242,
            "content": {"type": "text", "text": "your order shipped"}
        });
        let first = block_in_place(|| api.expect(200, "POST", "/v1/messages", Some(send.clone())));
        assert_eq!(first["duplicate"], false);
        assert_eq!(first["sender"], SYSTEM);
        let Event::Message(m) = next_matching(&mut events, "the system message", |e| {
            matches!(e, Event::Message(_))
        })
        .await
        else {
            unreachable!()
        };
        assert_eq!(m.sender, SYSTEM);
        assert_eq!(m.text(), Some("your order shipped"));
        assert_eq!(m.conversation, ConversationKey::single(SYSTEM));
        assert_eq!(m.seq, first["seq"].as_u64().unwrap());
        // The backend retries (say, after a timeout): stored and pushed once.
        let again = block_in_place(|| api.expect(200, "POST", "/v1/messages", Some(send)));
        assert_eq!(again["duplicate"], true);
        assert_eq!(again["seq"], first["seq"]);
        let more = timeout(Duration::from_millis(700), async {
            loop {
                if let Some(Event::Message(m)) = events.recv().await {
                    return m;
                }
            }
        })
        .await;
        assert!(more.is_err(), "a retried send was pushed again: {more:?}");
        // History shows it once, from the user's side.
        let page = block_in_place(|| {
            api.expect(
                200,
                "GET",
                &format!("/v1/conversations/single/{SYSTEM}/messages?user=21"),
                None,
            )
        });
        assert_eq!(page["messages"].as_array().unwrap().len(), 1, "{page}");
        assert_eq!(page["messages"][0]["content"]["text"], "your order shipped");
        client.shutdown(false).await;
    });
}

fn a_device_kicked_over_the_api_sees_kicked(dp: Dataplane) {
    let api = ApiServer::start(dp);
    block_on(dp, async {
        let (client, mut events) = sdk_client(&api, 31, "tablet-31");
        client.wait_connected(WAIT).await.expect("connected");
        let ended = block_in_place(|| {
            api.expect(
                200,
                "POST",
                "/v1/users/31/kick",
                Some(json!({"device": "tablet-31", "message": "account suspended"})),
            )
        });
        assert_eq!(ended["sessions_ended"], 1);
        let kicked =
            next_matching(&mut events, "Kicked", |e| matches!(e, Event::Kicked { .. })).await;
        let Event::Kicked { reason, message } = kicked else {
            unreachable!()
        };
        assert_eq!(reason, pb::KickReason::Admin);
        assert_eq!(message, "account suspended");
        // Another device of nobody: nothing to end.
        let none = block_in_place(|| {
            api.expect(
                200,
                "POST",
                "/v1/users/31/kick",
                Some(json!({"device": "other"})),
            )
        });
        assert_eq!(none["sessions_ended"], 0);
        client.shutdown(false).await;
    });
}

fn revoking_a_users_tokens_kicks_and_the_token_no_longer_logs_in(dp: Dataplane) {
    let api = ApiServer::start(dp);
    let (token, _) = api.token(41, "desk-41");
    let mut client = TestClient::login(api.server.addr, &token, 41, "desk-41");
    let ended = api.expect(200, "POST", "/v1/users/41/tokens/revoke", None);
    assert_eq!(ended["sessions_ended"], 1);
    let frames = client.recv_until_closed(WAIT);
    assert!(
        frames.iter().any(
            |f| matches!(&f.body, Body::Kick(k) if k.reason == pb::KickReason::TokenRevoked as i32)
        ),
        "{frames:?}"
    );
    let mut again = TestClient::connect(api.server.addr);
    let reply = again.request(pb::Login {
        token: token.clone(),
        user_id: 41,
        device_id: "desk-41".into(),
        platform: pb::Platform::Desktop as i32,
        client_version: "test".into(),
        attempt: 0,
    });
    assert!(
        matches!(&reply.body, Body::Error(e) if e.code == pb::ErrorCode::TokenRevoked as i32),
        "{reply:?}"
    );
    // Revoking one token by its text works whether or not it is in use.
    let (other, _) = api.token(41, "desk-41");
    let ended = api.expect(
        200,
        "POST",
        "/v1/tokens/revoke",
        Some(json!({"token": other})),
    );
    assert_eq!(ended["sessions_ended"], 0);
}

fn a_group_made_over_the_api_gets_api_messages_pushed_to_members(dp: Dataplane) {
    let api = ApiServer::start(dp);
    let (token, _) = api.token(52, "phone-52");
    let mut member = TestClient::login(api.server.addr, &token, 52, "phone-52");
    let group = api.expect(
        201,
        "POST",
        "/v1/groups",
        Some(json!({"owner": 51, "name": "orders", "members": [52]})),
    );
    let id = group["id"].as_u64().expect("group id");
    assert_eq!(group["members"].as_array().unwrap().len(), 2, "{group}");
    // The member hears about the group like a protocol client would.
    member.recv_matching(|f| matches!(&f.body, Body::ConversationEvent(_)));
    let sent = api.expect(
        200,
        "POST",
        "/v1/messages",
        Some(json!({
            "sender": 51,
            "conversation": {"kind": "group", "id": id},
            "client_msg_id": 1,
            "content": {"type": "text", "text": "welcome"}
        })),
    );
    assert_eq!(sent["seq"], 1);
    let push = member.push();
    assert_eq!(common::client::text_of(&push), "welcome");
    assert_eq!(push.sender, 51);
    // Someone outside the group cannot post to it.
    let refused = api.call(
        "POST",
        "/v1/messages",
        Some(json!({
            "sender": 99,
            "conversation": {"kind": "group", "id": id},
            "client_msg_id": 1,
            "content": {"type": "text", "text": "spam"}
        })),
    );
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_eq!(refused.json()["error"]["code"], "not_a_member");
    // Roles are the protocol's: a plain member cannot add members.
    let denied = api.call(
        "POST",
        &format!("/v1/groups/{id}/members"),
        Some(json!({"actor": 52, "user_ids": [53]})),
    );
    assert_eq!(denied.status, 403, "{}", denied.text());
    let added = api.expect(
        200,
        "POST",
        &format!("/v1/groups/{id}/members"),
        Some(json!({"actor": 51, "user_ids": [53]})),
    );
    assert_eq!(added["changed"], json!([53]));
}

/// An API error's `error.code`.
fn api_code(r: &common::http::Response) -> String {
    r.json()["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Sends `text` as `sender` into group `id` over the API.
fn api_group_send(
    api: &ApiServer,
    sender: u64,
    id: u64,
    cmid: u64,
    text: &str,
) -> common::http::Response {
    api.call(
        "POST",
        "/v1/messages",
        Some(json!({
            "sender": sender,
            "conversation": {"kind": "group", "id": id},
            "client_msg_id": cmid,
            "content": {"type": "text", "text": text}
        })),
    )
}

fn a_muted_member_is_refused_with_muted_until_the_mute_is_lifted(dp: Dataplane) {
    let api = ApiServer::start(dp);
    let (owner, muted, other) = (61, 62, 63);
    let (token, _) = api.token(muted, "phone-62");
    let mut member = TestClient::login(api.server.addr, &token, muted, "phone-62");
    let group = api.expect(
        201,
        "POST",
        "/v1/groups",
        Some(json!({"owner": owner, "name": "quiet please", "members": [muted, other]})),
    );
    let id = group["id"].as_u64().expect("group id");
    let conversation = pb::ConversationId {
        kind: pb::ConversationKind::Group as i32,
        id,
    };
    member.recv_matching(|f| matches!(&f.body, Body::ConversationEvent(_)));
    member.send_text(conversation, 1, "before");
    // Plain members mute nobody; the owner mutes member 62 for an hour.
    let denied = api.call(
        "POST",
        &format!("/v1/groups/{id}/mute"),
        Some(json!({"actor": other, "user_id": muted, "seconds": 3600})),
    );
    assert_eq!(
        (denied.status, api_code(&denied)),
        (403, "permission_denied".into())
    );
    let before = common::server::now().as_millis();
    let changed = api.expect(
        200,
        "POST",
        &format!("/v1/groups/{id}/mute"),
        Some(json!({"actor": owner, "user_id": muted, "seconds": 3600})),
    );
    assert_eq!(changed["changed"], json!([muted]));
    // The member is told, with the end of the mute.
    let event = member.recv_matching(|f| {
        matches!(&f.body, Body::ConversationEvent(e) if e.kind == pb::ConversationEventKind::Muted as i32)
    });
    let Body::ConversationEvent(event) = event.body else {
        unreachable!()
    };
    assert_eq!((event.actor, event.users.as_slice()), (owner, &[muted][..]));
    assert!(
        (before + 3_600_000..before + 3_660_000).contains(&event.until_ms),
        "until {} (now {before})",
        event.until_ms
    );
    // Its sends are refused with MUTED and how long it still lasts; not stored.
    let answer = member.request(pb::SendMessage {
        client_msg_id: 2,
        conversation: Some(conversation),
        content: petrel_proto::wire::encode_content(&common::client::text_content("let me talk")),
        ..Default::default()
    });
    let Body::Error(error) = answer.body else {
        panic!("a muted member's send was not refused: {answer:?}")
    };
    assert_eq!(error.code, pb::ErrorCode::Muted as i32, "{error:?}");
    assert!(error.message.contains("muted"), "{error:?}");
    assert!(
        (3_500_000..=3_600_000).contains(&error.retry_after_ms),
        "{error:?}"
    );
    // Over the API too: 403 `muted` with Retry-After; the others still speak.
    let refused = api_group_send(&api, muted, id, 3, "via the api");
    assert_eq!((refused.status, api_code(&refused)), (403, "muted".into()));
    let retry: u64 = refused
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((3_500..=3_600).contains(&retry), "{retry}");
    assert_eq!(api_group_send(&api, other, id, 1, "I can").status, 200);

    // The whole group: plain member 63 is refused too, the owner is not.
    api.expect(
        200,
        "POST",
        &format!("/v1/groups/{id}/mute"),
        Some(json!({"actor": owner, "seconds": 60})),
    );
    let refused = api_group_send(&api, other, id, 2, "me too?");
    assert_eq!((refused.status, api_code(&refused)), (403, "muted".into()));
    assert_eq!(
        api_group_send(&api, owner, id, 1, "announcement").status,
        200
    );

    // Lifted: everyone speaks again, and history holds only what was accepted.
    for body in [
        json!({"actor": owner, "seconds": 0}),
        json!({"actor": owner, "user_id": muted, "seconds": 0}),
    ] {
        api.expect(200, "POST", &format!("/v1/groups/{id}/mute"), Some(body));
    }
    let ack = member.send_text(conversation, 4, "thanks");
    assert_eq!(ack.seq, 4, "before, I can, announcement, thanks");
    assert_eq!(
        api_group_send(&api, other, id, 3, "welcome back").status,
        200
    );
}

fn a_dissolved_group_tells_its_members_and_is_gone_for_every_request(dp: Dataplane) {
    let api = ApiServer::start(dp);
    let (owner, online, offline) = (71, 72, 73);
    let (token, _) = api.token(online, "phone-72");
    let mut member = TestClient::login(api.server.addr, &token, online, "phone-72");
    let group = api.expect(
        201,
        "POST",
        "/v1/groups",
        Some(json!({"owner": owner, "name": "short-lived", "members": [online, offline]})),
    );
    let id = group["id"].as_u64().expect("group id");
    let conversation = pb::ConversationId {
        kind: pb::ConversationKind::Group as i32,
        id,
    };
    member.recv_matching(|f| matches!(&f.body, Body::ConversationEvent(_)));
    member.send_text(conversation, 1, "hello");
    assert_eq!(api_group_send(&api, owner, id, 1, "hi").status, 200);
    member.push();

    let denied = api.call(
        "POST",
        &format!("/v1/groups/{id}/dissolve"),
        Some(json!({"actor": online})),
    );
    assert_eq!(
        (denied.status, api_code(&denied)),
        (403, "permission_denied".into())
    );
    let dissolved = api.expect(
        200,
        "POST",
        &format!("/v1/groups/{id}/dissolve"),
        Some(json!({"actor": owner})),
    );
    assert_eq!(dissolved["changed"], json!([owner, online, offline]));
    assert_eq!(dissolved["members"], json!([]));
    let event = member.recv_matching(|f| {
        matches!(&f.body, Body::ConversationEvent(e) if e.kind == pb::ConversationEventKind::Dissolved as i32)
    });
    let Body::ConversationEvent(event) = event.body else {
        unreachable!()
    };
    assert_eq!(event.conversation, Some(conversation));
    assert_eq!(event.actor, owner);

    // Gone for every request: sends (protocol and API), history, members, a second dissolve.
    let answer = member.request(pb::SendMessage {
        client_msg_id: 2,
        conversation: Some(conversation),
        content: petrel_proto::wire::encode_content(&common::client::text_content("anyone?")),
        ..Default::default()
    });
    assert!(
        matches!(&answer.body, Body::Error(e) if e.code == pb::ErrorCode::NotFound as i32),
        "{answer:?}"
    );
    let refused = api_group_send(&api, owner, id, 2, "echo");
    assert_eq!(
        (refused.status, api_code(&refused)),
        (404, "not_found".into())
    );
    for (method, path, body) in [
        ("GET", format!("/v1/groups/{id}/members"), None),
        (
            "GET",
            format!("/v1/conversations/group/{id}/messages?user={owner}"),
            None,
        ),
        (
            "POST",
            format!("/v1/groups/{id}/dissolve"),
            Some(json!({"actor": owner})),
        ),
    ] {
        let r = api.call(method, &path, body);
        assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
    }
    // A new group never reuses the id.
    let again = api.expect(
        201,
        "POST",
        "/v1/groups",
        Some(json!({"owner": owner, "name": "next", "members": [online]})),
    );
    assert_ne!(again["id"].as_u64(), Some(id));
}

fn messages_recalled_and_edited_over_the_api_change_history_and_their_members_are_told(
    dp: Dataplane,
) {
    let api = ApiServer::start(dp);
    let (owner, member) = (81, 82);
    let (token, _) = api.token(member, "phone-82");
    let mut client = TestClient::login(api.server.addr, &token, member, "phone-82");
    let group = api.expect(
        201,
        "POST",
        "/v1/groups",
        Some(json!({"owner": owner, "name": "announcements", "members": [member]})),
    );
    let id = group["id"].as_u64().expect("group id");
    client.recv_matching(|f| matches!(&f.body, Body::ConversationEvent(_)));
    assert_eq!(
        api_group_send(&api, owner, id, 1, "wrong price").status,
        200
    );
    assert_eq!(
        api_group_send(&api, owner, id, 2, "right price").status,
        200
    );
    client.push();
    client.push();
    let conversation = json!({"kind": "group", "id": id});
    // The member may not recall the owner's message; the owner may.
    let denied = api.call(
        "POST",
        "/v1/messages/recall",
        Some(json!({"actor": member, "conversation": conversation, "seq": 1})),
    );
    assert_eq!(
        (denied.status, api_code(&denied)),
        (403, "permission_denied".into())
    );
    let missing = api.call(
        "POST",
        "/v1/messages/recall",
        Some(json!({"actor": owner, "conversation": conversation, "seq": 99})),
    );
    assert_eq!(
        (missing.status, api_code(&missing)),
        (404, "not_found".into())
    );
    let recalled = api.expect(
        200,
        "POST",
        "/v1/messages/recall",
        Some(json!({"actor": owner, "conversation": conversation, "seq": 1})),
    );
    assert_eq!(recalled["seq"], 1);
    assert_eq!(recalled["recalled"]["by"], owner);
    let event = client.recv_matching(|f| {
        matches!(&f.body, Body::ConversationEvent(e) if e.kind == pb::ConversationEventKind::Recalled as i32)
    });
    let Body::ConversationEvent(event) = event.body else {
        unreachable!()
    };
    assert_eq!((event.actor, event.seq), (owner, 1));
    // History: seq 1 in its place, recalled, without content; seq 2 as it was.
    let history = api.expect(
        200,
        "GET",
        &format!("/v1/conversations/group/{id}/messages?user={member}"),
        None,
    );
    let messages = history["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 2, "{history}");
    assert_eq!(messages[0]["seq"], 1);
    assert_eq!(messages[0]["content"], Value::Null);
    assert_eq!(messages[0]["recalled"]["by"], owner);
    assert_eq!(messages[1]["content"]["text"], "right price");
    assert_eq!(messages[1]["recalled"], Value::Null);
    assert_eq!(messages[1]["edited_at_ms"], Value::Null);

    // Edits: only the sender; the member sees the new version pushed and in history.
    let edit = |actor: u64, text: &str| {
        api.call(
            "POST",
            "/v1/messages/edit",
            Some(
                json!({"actor": actor, "conversation": conversation, "seq": 2,
                        "content": {"type": "text", "text": text}}),
            ),
        )
    };
    let denied = edit(member, "free!");
    assert_eq!(
        (denied.status, api_code(&denied)),
        (403, "permission_denied".into())
    );
    let edited = edit(owner, "right price: 10");
    assert_eq!(edited.status, 200, "{}", edited.text());
    let at = edited.json()["edited_at_ms"]
        .as_u64()
        .expect("edited_at_ms");
    let push = client.push();
    assert_eq!((push.seq, push.edited_at_ms), (2, at));
    assert_eq!(common::client::text_of(&push), "right price: 10");
    let history = api.expect(
        200,
        "GET",
        &format!("/v1/conversations/group/{id}/messages?user={member}"),
        None,
    );
    assert_eq!(history["messages"][1]["content"]["text"], "right price: 10");
    assert_eq!(history["messages"][1]["edited_at_ms"], at);

    // Read counts: the member has not read seq 2; then it has.
    let reads = format!("/v1/conversations/group/{id}/messages/2/reads?user={owner}");
    assert_eq!(
        api.expect(200, "GET", &reads, None),
        json!({"seq": 2, "read": 0, "of": 1})
    );
    let marked = client.request(pb::ConversationOp {
        op: Some(pb::conversation_op::Op::MarkRead(pb::MarkRead {
            conversation: Some(pb::ConversationId {
                kind: pb::ConversationKind::Group as i32,
                id,
            }),
            seq: 2,
        })),
    });
    assert!(
        matches!(marked.body, Body::ConversationOpResult(_)),
        "{marked:?}"
    );
    assert_eq!(
        api.expect(200, "GET", &reads, None),
        json!({"seq": 2, "read": 1, "of": 1})
    );
    let outsider = api.call(
        "GET",
        &format!("/v1/conversations/group/{id}/messages/2/reads?user=99"),
        None,
    );
    assert_eq!(
        (outsider.status, api_code(&outsider)),
        (403, "not_a_member".into())
    );
}

fn join_room(client: &mut TestClient, room: u64) -> petrel_proto::Frame {
    client.request(pb::ConversationOp {
        op: Some(pb::conversation_op::Op::JoinChatroom(pb::JoinChatroom {
            room_id: room,
        })),
    })
}

fn an_operator_kicks_a_user_out_of_a_chatroom_then_closes_and_reopens_it(dp: Dataplane) {
    let api = ApiServer::start(dp);
    let (stays, kicked, room) = (91, 92, 77);
    let mut clients = [stays, kicked].map(|user| {
        let device = format!("phone-{user}");
        let (token, _) = api.token(user, &device);
        let mut c = TestClient::login(api.server.addr, &token, user, &device);
        let joined = join_room(&mut c, room);
        assert!(
            matches!(joined.body, Body::ConversationOpResult(_)),
            "{joined:?}"
        );
        c
    });
    let path = |what: &str| format!("/v1/chatrooms/{room}/{what}");
    let listed = api.expect(200, "GET", &path("members"), None);
    assert_eq!(
        listed,
        json!({"room_id": room, "closed": false, "users": [stays, kicked]})
    );

    let out = api.expect(200, "POST", &path("kick"), Some(json!({"user_id": kicked})));
    assert_eq!(out["users"], json!([kicked]));
    let removed = |kind: pb::ConversationEventKind| {
        move |f: &petrel_proto::Frame| {
            matches!(&f.body, Body::ConversationEvent(e)
                if e.kind == kind as i32
                    && e.conversation.is_some_and(|c| c.kind == pb::ConversationKind::Chatroom as i32 && c.id == room))
        }
    };
    clients[1].recv_matching(removed(pb::ConversationEventKind::MembersRemoved));
    assert_eq!(
        api.expect(200, "GET", &path("members"), None)["users"],
        json!([stays])
    );

    // Closed: everyone out, joins refused until it is opened again.
    let out = api.expect(200, "POST", &path("close"), None);
    assert_eq!(
        (out["users"].clone(), out["closed"].clone()),
        (json!([stays]), json!(true))
    );
    clients[0].recv_matching(removed(pb::ConversationEventKind::Dissolved));
    let refused = join_room(&mut clients[1], room);
    assert!(
        matches!(&refused.body, Body::Error(e) if e.code == pb::ErrorCode::NotFound as i32),
        "{refused:?}"
    );
    let opened = api.expect(200, "POST", "/v1/chatrooms", Some(json!({"room_id": room})));
    assert_eq!(opened["closed"], false);
    let joined = join_room(&mut clients[1], room);
    assert!(
        matches!(joined.body, Body::ConversationOpResult(_)),
        "{joined:?}"
    );
    assert_eq!(
        api.expect(200, "GET", &path("members"), None)["users"],
        json!([kicked])
    );
}

dataplane_tests!(
    an_operator_kicks_a_user_out_of_a_chatroom_then_closes_and_reopens_it,
    messages_recalled_and_edited_over_the_api_change_history_and_their_members_are_told,
    a_dissolved_group_tells_its_members_and_is_gone_for_every_request,
    a_muted_member_is_refused_with_muted_until_the_mute_is_lifted,
    a_token_minted_over_the_api_logs_in_with_the_sdk,
    a_system_message_over_the_api_reaches_an_sdk_client_live_once,
    a_device_kicked_over_the_api_sees_kicked,
    revoking_a_users_tokens_kicks_and_the_token_no_longer_logs_in,
    a_group_made_over_the_api_gets_api_messages_pushed_to_members,
);

/// (method, path, body, expected status, expected `error.field`)
type Case = (
    &'static str,
    String,
    Option<Value>,
    u16,
    Option<&'static str>,
);

#[test]
fn bad_input_gets_a_4xx_json_error_naming_the_field_never_a_5xx() {
    let api = ApiServer::start(Dataplane::Kernel);
    let text = |t: &str| json!({"type": "text", "text": t});
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/v1/tokens".into(),
            Some(json!({"user_id": "seven", "device": "d"})),
            400,
            Some("user_id"),
        ),
        (
            "POST",
            "/v1/tokens".into(),
            Some(json!({"user_id": 7, "device": "d", "admin": true})),
            400,
            Some("admin"),
        ),
        (
            "POST",
            "/v1/tokens".into(),
            Some(json!({"device": "d"})),
            400,
            Some("user_id"),
        ),
        (
            "POST",
            "/v1/tokens".into(),
            Some(json!({"user_id": 7, "device": "d", "platform": "fridge"})),
            400,
            Some("platform"),
        ),
        (
            "POST",
            "/v1/tokens".into(),
            Some(json!({"user_id": 7, "device": "d", "ttl_secs": 0})),
            400,
            Some("ttl_secs"),
        ),
        (
            "POST",
            "/v1/tokens".into(),
            Some(json!({"user_id": 0, "device": "d"})),
            400,
            Some("user_id"),
        ),
        (
            "POST",
            "/v1/tokens/revoke".into(),
            Some(json!({"token": "garbage"})),
            400,
            Some("token"),
        ),
        (
            "GET",
            "/v1/users/abc/sessions".into(),
            None,
            400,
            Some("user_id"),
        ),
        (
            "POST",
            "/v1/presence".into(),
            Some(json!({"user_ids": []})),
            400,
            Some("user_ids"),
        ),
        (
            "POST",
            "/v1/messages".into(),
            Some(
                json!({"sender": 1, "conversation": {"kind": "single", "id": 2}, "client_msg_id": 1, "content": {"type": "text", "text": ""}}),
            ),
            400,
            Some("content.text"),
        ),
        (
            "POST",
            "/v1/messages".into(),
            Some(
                json!({"sender": 1, "conversation": {"kind": "single", "id": 2}, "client_msg_id": 1, "content": {"type": "text", "text": "x", "colour": "red"}}),
            ),
            400,
            Some("content.colour"),
        ),
        (
            "POST",
            "/v1/messages".into(),
            Some(
                json!({"sender": 1, "conversation": {"kind": "planet", "id": 2}, "client_msg_id": 1, "content": text("x")}),
            ),
            400,
            Some("conversation.kind"),
        ),
        (
            "POST",
            "/v1/messages".into(),
            Some(
                json!({"sender": 1, "conversation": {"kind": "single", "id": 2}, "client_msg_id": 0, "content": text("x")}),
            ),
            400,
            Some("client_msg_id"),
        ),
        (
            "POST",
            "/v1/messages".into(),
            Some(
                json!({"conversation": {"kind": "single", "id": 2}, "client_msg_id": 1, "content": text("x")}),
            ),
            400,
            Some("sender"),
        ),
        (
            "POST",
            "/v1/messages".into(),
            Some(
                json!({"sender": 1, "system": true, "conversation": {"kind": "single", "id": 2}, "client_msg_id": 1, "content": text("x")}),
            ),
            400,
            Some("system"),
        ),
        (
            "POST",
            "/v1/messages".into(),
            Some(
                json!({"sender": 1, "conversation": {"kind": "group", "id": 987654}, "client_msg_id": 1, "content": text("x")}),
            ),
            404,
            None,
        ),
        (
            "GET",
            "/v1/conversations/single/2/messages?user=1&limit=1000".into(),
            None,
            400,
            Some("limit"),
        ),
        (
            "GET",
            "/v1/conversations/single/2/messages?user=1&page=3".into(),
            None,
            400,
            Some("page"),
        ),
        (
            "GET",
            "/v1/conversations/single/2/messages".into(),
            None,
            400,
            Some("user"),
        ),
        (
            "POST",
            "/v1/groups/987654/members".into(),
            Some(json!({"actor": 1, "user_ids": [2]})),
            404,
            None,
        ),
        (
            "POST",
            "/v1/groups/987654/dissolve".into(),
            Some(json!({"actor": 1})),
            404,
            None,
        ),
        (
            "POST",
            "/v1/groups/987654/mute".into(),
            Some(json!({"actor": 1, "seconds": 315_360_001u64})),
            400,
            Some("seconds"),
        ),
        (
            "POST",
            "/v1/chatrooms".into(),
            Some(json!({"room_id": 0})),
            400,
            Some("room_id"),
        ),
        (
            "POST",
            "/v1/chatrooms/5/kick".into(),
            Some(json!({"user_id": "seven"})),
            400,
            Some("user_id"),
        ),
        (
            "POST",
            "/v1/messages/recall".into(),
            Some(json!({"actor": 1, "conversation": {"kind": "group", "id": 1}, "seq": 0})),
            400,
            Some("seq"),
        ),
    ];
    for (method, path, body, status, field) in cases {
        let r = api.call(method, &path, body.clone());
        assert_eq!(r.status, status, "{method} {path} {body:?}: {}", r.text());
        assert!(
            r.json()["error"]["code"].is_string(),
            "{method} {path}: {}",
            r.text()
        );
        assert_eq!(
            r.json()["error"]["field"].as_str(),
            field,
            "{method} {path} {body:?}: {}",
            r.text()
        );
    }
    // Syntax errors, a body that is not JSON, a huge body.
    let addr = api.server.api.unwrap();
    let r = common::http::request(
        addr,
        "POST",
        "/v1/presence",
        Some(KEY),
        Some("application/json"),
        b"{\"user_ids\": [1,",
    );
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (400, Some("invalid_json")),
        "{}",
        r.text()
    );
    let r = common::http::request(
        addr,
        "POST",
        "/v1/presence",
        Some(KEY),
        Some("text/plain"),
        b"user_ids=1",
    );
    assert_eq!(r.status, 415, "{}", r.text());
    let huge = format!("{{\"user_ids\": [{}1]}}", "1,".repeat(200_000));
    let r = common::http::request(
        addr,
        "POST",
        "/v1/presence",
        Some(KEY),
        Some("application/json"),
        huge.as_bytes(),
    );
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{}",
        r.text()
    );
    let r = api.call("GET", "/v1/no-such-thing", None);
    assert_eq!(r.status, 404);
    let r = api.call("DELETE", "/v1/tokens", None);
    assert_eq!(r.status, 405);
}

#[test]
fn a_missing_or_wrong_api_key_is_401_and_the_openapi_document_is_public() {
    let api = ApiServer::start(Dataplane::Kernel);
    let body = json!({"user_id": 1, "device": "d"});
    for key in [None, Some("wrong-key-0123456789abcdef"), Some("")] {
        let r = api
            .server
            .api_request("POST", "/v1/tokens", key, Some(&body));
        assert_eq!(r.status, 401, "{key:?}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "unauthorized");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    let r = api
        .server
        .api_request("GET", "/v1/openapi.json", None, None);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["openapi"].as_str().map(|v| &v[..2]),
        Some("3."),
        "{}",
        r.text()
    );
    assert!(r.json()["paths"]["/v1/messages"].is_object());
}
