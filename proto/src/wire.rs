//! The frame bodies that carry message content, with the content kept as its encoded
//! bytes.
//!
//! In `proto/schema/petrel/v1/message.proto`, `SendMessage.content` and
//! `MessagePush.content` are `petrel.v1.Content` messages, and that is what a client in
//! another language sees. In Rust they are [`Bytes`] holding the encoded `Content`: a
//! protobuf embedded message and a `bytes` field are the same on the wire (field tag,
//! length, the message's encoding), so these types read and write exactly the frames the
//! schema describes — the golden vectors in `proto/tests/vectors/` hold them to it.
//!
//! Why: a server never needs the content's fields. It checks the bytes once with
//! [`crate::content::ContentView`] (no allocation), stores them as they arrived, and
//! copies them into every push and sync page — where decoding into [`pb::Content`] and
//! encoding again would allocate every string of every message twice. A client decodes
//! the content when it shows it: [`SendMessage::new`] encodes, [`MessagePush::content`]
//! decodes.
//!
//! `prost-build` maps the schema's three messages to these types (`extern_path` in
//! `proto/build.rs`), and [`crate::pb`] re-exports them, so `pb::SendMessage` is this
//! module's type.

use bytes::Bytes;
use prost::Message as _;

use crate::pb;

/// Client → server: a message to a conversation. See `message.proto`.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct SendMessage {
    /// Chosen by the sending client, non-zero and unique per sender and conversation.
    #[prost(uint64, tag = "1")]
    pub client_msg_id: u64,
    /// Where it goes.
    #[prost(message, optional, tag = "2")]
    pub conversation: Option<pb::ConversationId>,
    /// An encoded `petrel.v1.Content` (empty if the frame carried none).
    #[prost(bytes = "bytes", tag = "3")]
    pub content: Bytes,
    /// The seq of the message in the same conversation this one replies to (0: none).
    #[prost(uint64, tag = "4")]
    pub reply_to: u64,
    /// Users this message mentions (at most 100; ones not in the conversation are
    /// dropped by the server).
    #[prost(uint64, repeated, packed = "true", tag = "5")]
    pub mentions: Vec<u64>,
}

impl SendMessage {
    /// A send of `content` (encoded here) to `conversation`.
    pub fn new(
        client_msg_id: u64,
        conversation: pb::ConversationId,
        content: &pb::Content,
    ) -> SendMessage {
        SendMessage {
            client_msg_id,
            conversation: Some(conversation),
            content: encode_content(content),
            reply_to: 0,
            mentions: Vec::new(),
        }
    }

    /// The content, decoded.
    pub fn decode_content(&self) -> Result<pb::Content, prost::DecodeError> {
        pb::Content::decode(self.content.clone())
    }
}

/// Server → client: a message in one of the user's conversations, pushed live or inside
/// a `SyncResponse`. See `message.proto`.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct MessagePush {
    /// The conversation as this receiver names it.
    #[prost(message, optional, tag = "1")]
    pub conversation: Option<pb::ConversationId>,
    /// The message's position in the conversation.
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    /// Who sent it.
    #[prost(uint64, tag = "3")]
    pub sender: u64,
    /// When the server stored (or, in a chatroom, sequenced) it.
    #[prost(uint64, tag = "4")]
    pub server_time_ms: u64,
    /// The sender's client message id.
    #[prost(uint64, tag = "5")]
    pub client_msg_id: u64,
    /// An encoded `petrel.v1.Content`, exactly as the sender sent it.
    #[prost(bytes = "bytes", tag = "6")]
    pub content: Bytes,
    /// The sending device.
    #[prost(string, tag = "7")]
    pub sender_device: String,
    /// Who recalled it (0: not recalled; the content is then empty).
    #[prost(uint64, tag = "8")]
    pub recalled_by: u64,
    /// When it was recalled (ms since the epoch).
    #[prost(uint64, tag = "9")]
    pub recalled_at_ms: u64,
    /// When its sender last edited it (0: never; `content` is then the latest version).
    #[prost(uint64, tag = "10")]
    pub edited_at_ms: u64,
    /// The seq of the message it replies to (0: none).
    #[prost(uint64, tag = "11")]
    pub reply_to: u64,
    /// The users it mentions (members of the conversation only).
    #[prost(uint64, repeated, packed = "true", tag = "12")]
    pub mentions: Vec<u64>,
}

impl MessagePush {
    /// The content, decoded.
    pub fn decode_content(&self) -> Result<pb::Content, prost::DecodeError> {
        pb::Content::decode(self.content.clone())
    }
}

/// Server → client: the answer to `SyncRequest` and `HistoryRequest`. See
/// `message.proto`.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct SyncResponse {
    /// Ascending seq per conversation for a sync; descending for history.
    #[prost(message, repeated, tag = "1")]
    pub messages: Vec<MessagePush>,
    /// More pages are waiting.
    #[prost(bool, tag = "2")]
    pub has_more: bool,
    /// Inbox position to send in the next `SyncRequest`.
    #[prost(uint64, tag = "3")]
    pub inbox_cursor: u64,
    /// Conversations that changed since the request's inbox cursor.
    #[prost(message, repeated, tag = "4")]
    pub conversations: Vec<pb::ConversationState>,
    /// History only: the lowest seq the conversation still stores.
    #[prost(uint64, tag = "5")]
    pub first_seq: u64,
    /// Inbox position of a partitioned database (opaque to clients).
    #[prost(bytes = "vec", tag = "6")]
    pub inbox_position: Vec<u8>,
}

/// `content` encoded, as [`SendMessage::content`] and [`MessagePush::content`] carry it.
pub fn encode_content(content: &pb::Content) -> Bytes {
    Bytes::from(content.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same message with `Content content = 3`, as the schema declares it.
    #[derive(Clone, PartialEq, prost::Message)]
    struct TypedSend {
        #[prost(uint64, tag = "1")]
        client_msg_id: u64,
        #[prost(message, optional, tag = "2")]
        conversation: Option<pb::ConversationId>,
        #[prost(message, optional, tag = "3")]
        content: Option<pb::Content>,
    }

    fn text(s: &str) -> pb::Content {
        pb::Content {
            body: Some(pb::content::Body::Text(pb::Text {
                text: s.into(),
                mentions: vec![7, 8],
            })),
        }
    }

    #[test]
    fn bytes_content_and_message_content_are_the_same_wire() {
        let conversation = pb::ConversationId {
            kind: pb::ConversationKind::Group as i32,
            id: 9,
        };
        let typed = TypedSend {
            client_msg_id: 5,
            conversation: Some(conversation),
            content: Some(text("hello")),
        };
        let opaque = SendMessage::new(5, conversation, &text("hello"));
        assert_eq!(typed.encode_to_vec(), opaque.encode_to_vec());
        let back = SendMessage::decode(&typed.encode_to_vec()[..]).unwrap();
        assert_eq!(back, opaque);
        assert_eq!(back.decode_content().unwrap(), text("hello"));
        let typed_back = TypedSend::decode(&opaque.encode_to_vec()[..]).unwrap();
        assert_eq!(typed_back, typed);
    }
}
