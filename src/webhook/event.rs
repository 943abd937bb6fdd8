//! What a webhook call carries: each queued event is one JSON object (rendered once,
//! when it is queued, with the id the queue gave it), and a call's body is
//! `{"events":[…]}` of up to `batch_max` of them, oldest first (docs/API.md, "Webhooks").

use petrel_control::OfflineMessage;
use serde::Serialize;

use crate::api::json::{Content, ConversationRef};

/// `message.offline`: a stored message reached recipients with no online session.
#[derive(Serialize)]
struct OfflineEvent<'a> {
    /// The queue's id of this event: a receiver that sees an id twice (possible only
    /// after the server's machine crashed) has seen the event before.
    id: u64,
    #[serde(rename = "type")]
    kind: &'static str,
    /// Who to push to.
    recipients: &'a [u64],
    /// The conversation as the recipients see it (for a 1:1 chat: the sender).
    conversation: ConversationRef,
    seq: u64,
    sender: u64,
    sender_device: &'a str,
    client_msg_id: u64,
    server_time_ms: u64,
    /// The message's content, as the API's history shows it.
    content: Content,
    /// The seq it replies to (0: none).
    reply_to: u64,
    /// The members it mentions: a push service notifies them even where the user
    /// silenced the conversation.
    mentions: &'a [u64],
}

/// The JSON of one `message.offline` event with queue id `id`, naming `recipients` (all
/// or a share of the message's offline recipients).
pub fn render_offline(id: u64, message: &OfflineMessage, recipients: &[u64]) -> Vec<u8> {
    let viewer = recipients.first().copied().unwrap_or(message.sender);
    let event = OfflineEvent {
        id,
        kind: "message.offline",
        recipients,
        conversation: ConversationRef::of(viewer, message.conversation),
        seq: message.seq,
        sender: message.sender,
        sender_device: &message.sender_device,
        client_msg_id: message.client_msg_id,
        server_time_ms: message.server_time_ms,
        content: Content::from_stored(&message.content),
        reply_to: message.reply_to,
        mentions: &message.mentions,
    };
    // A struct of plain fields always serializes.
    serde_json::to_vec(&event).unwrap_or_default()
}

/// The body of one call: `{"events":[record, …]}`; records are already JSON objects.
pub fn body<'a>(records: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = b"{\"events\":[".to_vec();
    for (i, record) in records.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(record);
    }
    out.extend_from_slice(b"]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_proto::pb;
    use petrel_storage::{ConversationKey, UserId};

    #[test]
    fn an_offline_1to1_message_names_the_sender_as_the_conversation() {
        let content = petrel_proto::wire::encode_content(&pb::Content {
            body: Some(pb::content::Body::Text(pb::Text {
                text: "hi".into(),
                mentions: vec![],
            })),
        });
        let message = OfflineMessage {
            conversation: ConversationKey::single(UserId(5), UserId(7)),
            seq: 3,
            sender: 5,
            sender_device: "phone".into(),
            client_msg_id: 99,
            server_time_ms: 1_700_000_000_000,
            content,
            reply_to: 2,
            mentions: vec![7],
            recipients: vec![7],
        };
        let one = render_offline(12, &message, &message.recipients);
        let value: serde_json::Value = serde_json::from_slice(&one).unwrap();
        assert_eq!(value["id"], 12);
        assert_eq!(value["type"], "message.offline");
        assert_eq!(value["recipients"], serde_json::json!([7]));
        assert_eq!(
            value["conversation"],
            serde_json::json!({"kind": "single", "id": 5})
        );
        assert_eq!(value["content"]["type"], "text");
        assert_eq!(value["content"]["text"], "hi");
        assert_eq!(
            (value["reply_to"].clone(), value["mentions"].clone()),
            (serde_json::json!(2), serde_json::json!([7]))
        );
        let two = body([one.as_slice(), one.as_slice()].into_iter());
        let value: serde_json::Value = serde_json::from_slice(&two).unwrap();
        assert_eq!(value["events"].as_array().unwrap().len(), 2);
    }
}
