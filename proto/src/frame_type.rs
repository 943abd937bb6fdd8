//! Frame types, and the one table that ties each type byte to its protobuf body.
//!
//! Type bytes below 0x80 travel client → server; bytes with the high bit set travel
//! server → client. A receiver that gets a type it does not know, or one meant for the
//! other direction ("unknown or not valid in this direction"), answers with an
//! `ERROR_CODE_UNKNOWN_FRAME_TYPE` error; because the header carries the body length, the
//! stream stays in sync. The decoder itself accepts every defined type in either
//! direction; [`FrameType::is_client_to_server`] is what a server checks.
//!
//! [`frame_table!`] expands the table into [`FrameType`] and [`crate::Body`], so adding a
//! frame type is one line here and cannot leave the two out of step.

use crate::pb;

macro_rules! frame_table {
    ($( $(#[$doc:meta])* $variant:ident = $byte:literal => $message:ty, )+) => {
        /// The frame type byte of the header.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum FrameType {
            $( $(#[$doc])* $variant = $byte, )+
        }

        impl FrameType {
            /// Every frame type, in type-byte order.
            pub const ALL: &'static [FrameType] = &[ $( FrameType::$variant, )+ ];

            /// The frame type for a type byte, or `None` if this version does not define it.
            pub const fn from_u8(byte: u8) -> Option<FrameType> {
                match byte {
                    $( $byte => Some(FrameType::$variant), )+
                    _ => None,
                }
            }

            /// The protobuf message name of this type's body, e.g. `"petrel.v1.Login"`.
            pub const fn message_name(self) -> &'static str {
                match self {
                    $( FrameType::$variant => concat!("petrel.v1.", stringify!($variant)), )+
                }
            }
        }

        /// A decoded frame body: one variant per frame type, holding its protobuf message.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Body {
            $( $(#[$doc])* $variant($message), )+
        }

        impl Body {
            /// The frame type that carries this body.
            pub const fn frame_type(&self) -> FrameType {
                match self {
                    $( Body::$variant(_) => FrameType::$variant, )+
                }
            }

            /// Decodes a body of the given type from its protobuf bytes.
            pub fn decode(
                frame_type: FrameType,
                bytes: impl bytes::Buf,
            ) -> Result<Body, prost::DecodeError> {
                use prost::Message as _;
                match frame_type {
                    $( FrameType::$variant => Ok(Body::$variant(<$message>::decode(bytes)?)), )+
                }
            }

            /// Length of the body's protobuf encoding.
            pub fn encoded_len(&self) -> usize {
                use prost::Message as _;
                match self {
                    $( Body::$variant(m) => m.encoded_len(), )+
                }
            }

            /// Appends the body's protobuf encoding to `buf`, which must have room for
            /// [`Body::encoded_len`] bytes (a `BytesMut` grows itself).
            pub fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
                use prost::Message as _;
                match self {
                    $( Body::$variant(m) => m.encode_raw(buf), )+
                }
            }
        }

        $(
            impl From<$message> for Body {
                fn from(message: $message) -> Body {
                    Body::$variant(message)
                }
            }
        )+
    };
}

frame_table! {
    // ---- client -> server ----
    /// First frame of a connection: authenticate with a token.
    Login = 0x01 => pb::Login,
    /// Ask for a fresh token on the live connection.
    RenewToken = 0x02 => pb::RenewToken,
    /// End the session, optionally revoking the token.
    Logout = 0x03 => pb::Logout,
    /// Heartbeat.
    Ping = 0x04 => pb::Ping,
    /// Send a message to a conversation.
    SendMessage = 0x10 => pb::SendMessage,
    /// Fetch what was missed since the given cursors.
    SyncRequest = 0x11 => pb::SyncRequest,
    /// Page backwards through one conversation.
    HistoryRequest = 0x12 => pb::HistoryRequest,
    /// Group, chatroom, public-account and read-position operations.
    ConversationOp = 0x13 => pb::ConversationOp,
    /// Started or stopped typing (fire and forget, never answered).
    Typing = 0x14 => pb::Typing,
    // ---- server -> client ----
    /// Answer to Login.
    LoginResult = 0x81 => pb::LoginResult,
    /// Answer to RenewToken.
    RenewResult = 0x82 => pb::RenewResult,
    /// Answer to Ping.
    Pong = 0x84 => pb::Pong,
    /// A request failed, or the connection is about to be closed for a protocol error.
    Error = 0x85 => pb::Error,
    /// The server is closing this session on purpose, with a reason.
    Kick = 0x86 => pb::Kick,
    /// A sent message is stored (or, in a chatroom, fanned out).
    Ack = 0x90 => pb::Ack,
    /// A new message in one of the user's conversations.
    MessagePush = 0x91 => pb::MessagePush,
    /// Answer to SyncRequest and HistoryRequest.
    SyncResponse = 0x92 => pb::SyncResponse,
    /// Answer to ConversationOp.
    ConversationOpResult = 0x93 => pb::ConversationOpResult,
    /// Membership, role or read-position change in one of the user's conversations.
    ConversationEvent = 0x94 => pb::ConversationEvent,
    /// Chatroom pushes skipped for this connection (it fell behind the room).
    Gap = 0x95 => pb::Gap,
    /// Another member started or stopped typing.
    TypingNotice = 0x96 => pb::TypingNotice,
}

impl FrameType {
    /// Whether clients send this type (type byte below 0x80).
    pub const fn is_client_to_server(self) -> bool {
        (self as u8) < 0x80
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_bytes_round_trip_and_direction_bit_is_consistent() {
        for &t in FrameType::ALL {
            assert_eq!(FrameType::from_u8(t as u8), Some(t));
            assert_eq!(t.is_client_to_server(), (t as u8) & 0x80 == 0);
        }
        let defined: Vec<u8> = FrameType::ALL.iter().map(|&t| t as u8).collect();
        for byte in 0..=u8::MAX {
            assert_eq!(FrameType::from_u8(byte).is_some(), defined.contains(&byte));
        }
    }

    #[test]
    fn message_names_match_type_names() {
        assert_eq!(FrameType::Login.message_name(), "petrel.v1.Login");
        assert_eq!(
            FrameType::SyncResponse.message_name(),
            "petrel.v1.SyncResponse"
        );
    }
}
