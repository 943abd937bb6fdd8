//! JSON shapes shared by several routes: conversation references, message content (the
//! protocol's `Content`, field for field) and stored messages.

use petrel_proto::pb;
use petrel_storage::{ConversationKey, Member, Role, StoredMessage, UserId};
use prost::Message as _;
use serde::{Deserialize, Serialize};

use super::error::HttpError;

/// A conversation kind, as in the protocol's `ConversationKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// 1:1; the id is the other user, from the acting user's side.
    Single,
    /// A group.
    Group,
    /// A public account.
    PublicAccount,
    /// A chatroom (in memory only).
    Chatroom,
}

/// `{"kind": "single", "id": 7}`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConversationRef {
    /// The kind.
    pub kind: Kind,
    /// Group, account or room id; for `single`, the other user.
    pub id: u64,
}

impl ConversationRef {
    /// The persisted conversation this names as `viewer` sees it; `field` is where the
    /// reference sits in the request, for the error.
    pub fn key(&self, viewer: u64, field: &str) -> Result<ConversationKey, HttpError> {
        if self.id == 0 {
            return Err(HttpError::invalid(
                &format!("{field}.id"),
                "id must not be 0",
            ));
        }
        Ok(match self.kind {
            Kind::Single => ConversationKey::single(UserId(viewer), UserId(self.id)),
            Kind::Group => ConversationKey::Group(self.id),
            Kind::PublicAccount => ConversationKey::PublicAccount(self.id),
            Kind::Chatroom => {
                return Err(HttpError::invalid(
                    &format!("{field}.kind"),
                    "chatrooms are not stored (no history) and the API cannot send into \
                     them yet: use single, group or public_account",
                ));
            }
        })
    }

    /// How `viewer` names `key`.
    pub fn of(viewer: u64, key: ConversationKey) -> ConversationRef {
        match key {
            ConversationKey::Single { .. } => ConversationRef {
                kind: Kind::Single,
                id: key.peer_of(UserId(viewer)).map_or(viewer, |u| u.0),
            },
            ConversationKey::Group(id) => ConversationRef {
                kind: Kind::Group,
                id,
            },
            ConversationKey::PublicAccount(id) => ConversationRef {
                kind: Kind::PublicAccount,
                id,
            },
        }
    }
}

/// Uploaded media, as in the protocol's `Media`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Media {
    /// Where it can be downloaded.
    pub uri: String,
    /// Bytes at `uri`.
    #[serde(default)]
    pub size: u64,
    /// MIME type.
    #[serde(default)]
    pub mime_type: String,
    /// Optional preview, standard base64.
    #[serde(default)]
    pub thumbnail_base64: String,
    /// MIME type of the preview.
    #[serde(default)]
    pub thumbnail_mime_type: String,
}

/// Message content, tagged by `type`, as in the protocol's `Content`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Content {
    /// Text, with users mentioned.
    Text {
        /// The text (not empty).
        text: String,
        /// Users mentioned with @.
        #[serde(default)]
        mentions: Vec<u64>,
    },
    /// An image.
    Image {
        /// The image.
        media: Media,
        /// Pixels.
        #[serde(default)]
        width: u32,
        /// Pixels.
        #[serde(default)]
        height: u32,
    },
    /// An emoji or sticker.
    Emoji {
        /// Unicode text or sticker code.
        code: String,
        /// Sticker pack.
        #[serde(default)]
        pack: String,
        /// Sticker image.
        #[serde(default)]
        media: Option<Media>,
    },
    /// A voice message.
    Voice {
        /// The recording.
        media: Media,
        /// Length.
        #[serde(default)]
        duration_ms: u32,
    },
    /// A video.
    Video {
        /// The video.
        media: Media,
        /// Pixels.
        #[serde(default)]
        width: u32,
        /// Pixels.
        #[serde(default)]
        height: u32,
        /// Length.
        #[serde(default)]
        duration_ms: u32,
    },
    /// Content this server stores but the API cannot show (a newer content type).
    Unknown,
}

fn media_in(m: Media) -> pb::Media {
    pb::Media {
        uri: m.uri,
        size: m.size,
        mime_type: m.mime_type,
        thumbnail_base64: m.thumbnail_base64,
        thumbnail_mime_type: m.thumbnail_mime_type,
    }
}

fn media_out(m: pb::Media) -> Media {
    Media {
        uri: m.uri,
        size: m.size,
        mime_type: m.mime_type,
        thumbnail_base64: m.thumbnail_base64,
        thumbnail_mime_type: m.thumbnail_mime_type,
    }
}

impl Content {
    /// The protocol's `Content`; `Unknown` cannot be sent.
    pub fn into_wire(self) -> Result<pb::Content, HttpError> {
        use pb::content::Body;
        let body = match self {
            Content::Text { text, mentions } => {
                if text.is_empty() {
                    return Err(HttpError::invalid("content.text", "text is empty"));
                }
                Body::Text(pb::Text { text, mentions })
            }
            Content::Image {
                media,
                width,
                height,
            } => Body::Image(pb::Image {
                media: Some(media_in(media)),
                width,
                height,
            }),
            Content::Emoji { code, pack, media } => Body::Emoji(pb::Emoji {
                code,
                pack,
                media: media.map(media_in),
            }),
            Content::Voice { media, duration_ms } => Body::Voice(pb::Voice {
                media: Some(media_in(media)),
                duration_ms,
            }),
            Content::Video {
                media,
                width,
                height,
                duration_ms,
            } => Body::Video(pb::Video {
                media: Some(media_in(media)),
                width,
                height,
                duration_ms,
            }),
            Content::Unknown => {
                return Err(HttpError::invalid(
                    "content.type",
                    "`unknown` content cannot be sent",
                ));
            }
        };
        Ok(pb::Content { body: Some(body) })
    }

    /// The API's view of stored content bytes.
    pub fn from_stored(payload: &[u8]) -> Content {
        use pb::content::Body;
        let Ok(content) = pb::Content::decode(payload) else {
            return Content::Unknown;
        };
        match content.body {
            Some(Body::Text(t)) => Content::Text {
                text: t.text,
                mentions: t.mentions,
            },
            Some(Body::Image(i)) => Content::Image {
                media: i.media.map(media_out).unwrap_or_default(),
                width: i.width,
                height: i.height,
            },
            Some(Body::Emoji(e)) => Content::Emoji {
                code: e.code,
                pack: e.pack,
                media: e.media.map(media_out),
            },
            Some(Body::Voice(v)) => Content::Voice {
                media: v.media.map(media_out).unwrap_or_default(),
                duration_ms: v.duration_ms,
            },
            Some(Body::Video(v)) => Content::Video {
                media: v.media.map(media_out).unwrap_or_default(),
                width: v.width,
                height: v.height,
                duration_ms: v.duration_ms,
            },
            None => Content::Unknown,
        }
    }
}

/// A stored message as the API shows it.
#[derive(Debug, Serialize)]
pub struct MessageOut {
    /// Seq in the conversation.
    pub seq: u64,
    /// Sender.
    pub sender: u64,
    /// Sending device.
    pub sender_device: String,
    /// The sender's idempotency id.
    pub client_msg_id: u64,
    /// Server time of the append.
    pub server_time_ms: u64,
    /// What it says; `null` once recalled.
    pub content: Option<Content>,
    /// Who recalled it and when; `null` if it was not.
    pub recalled: Option<RecalledOut>,
    /// When its sender last edited it; `null` if never (`content` is the latest).
    pub edited_at_ms: Option<u64>,
}

/// `{"by": 5, "at_ms": …}`: a recall.
#[derive(Debug, Serialize)]
pub struct RecalledOut {
    /// The sender, or a group owner or admin.
    pub by: u64,
    /// When (ms since the epoch).
    pub at_ms: u64,
}

impl From<&StoredMessage> for MessageOut {
    fn from(m: &StoredMessage) -> MessageOut {
        MessageOut {
            seq: m.seq,
            sender: m.sender.0,
            sender_device: m.sender_device.clone(),
            client_msg_id: m.client_msg_id,
            server_time_ms: m.server_time_ms,
            content: m
                .recalled
                .is_none()
                .then(|| Content::from_stored(&m.payload)),
            recalled: m.recalled.map(|r| RecalledOut {
                by: r.by.0,
                at_ms: r.at_ms,
            }),
            edited_at_ms: m.edited_at_ms,
        }
    }
}

/// A role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleName {
    /// Plain member (or follower).
    Member,
    /// Admin.
    Admin,
    /// Owner (publisher).
    Owner,
}

impl From<RoleName> for Role {
    fn from(r: RoleName) -> Role {
        match r {
            RoleName::Member => Role::Member,
            RoleName::Admin => Role::Admin,
            RoleName::Owner => Role::Owner,
        }
    }
}

impl From<Role> for RoleName {
    fn from(r: Role) -> RoleName {
        match r {
            Role::Member => RoleName::Member,
            Role::Admin => RoleName::Admin,
            Role::Owner => RoleName::Owner,
        }
    }
}

/// `{"user_id": 1, "role": "owner"}`.
#[derive(Debug, Serialize)]
pub struct MemberOut {
    /// The member.
    pub user_id: u64,
    /// Their role.
    pub role: RoleName,
}

/// Members as the API shows them.
pub fn members(list: &[Member]) -> Vec<MemberOut> {
    list.iter()
        .map(|m| MemberOut {
            user_id: m.user.0,
            role: m.role.into(),
        })
        .collect()
}
