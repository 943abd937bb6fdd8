//! Typed storage errors. Permission failures are distinct variants so the control
//! plane can map each to a protocol error code.

use crate::model::{ConversationKey, UserId};

/// Why a key or value read back from the database could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The byte string has the wrong length for its column family.
    #[error("{what}: expected {expected} bytes, got {got}")]
    Length {
        /// Which key or value kind was being decoded.
        what: &'static str,
        /// Expected length (or minimum length).
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// An enum tag byte has no meaning.
    #[error("{what}: unknown tag {tag:#04x}")]
    Tag {
        /// Which key or value kind was being decoded.
        what: &'static str,
        /// The offending byte.
        tag: u8,
    },
    /// A value carries a format version this build does not understand.
    #[error("{what}: unsupported format version {version}")]
    Version {
        /// Which value kind was being decoded.
        what: &'static str,
        /// The version byte found.
        version: u8,
    },
    /// A string field is not UTF-8.
    #[error("{what}: invalid UTF-8")]
    Utf8 {
        /// Which value kind was being decoded.
        what: &'static str,
    },
}

/// Everything a storage request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The user is not a participant of the conversation.
    #[error("user {user:?} is not a member of {conversation:?}")]
    NotAMember {
        /// The conversation.
        conversation: ConversationKey,
        /// The user.
        user: UserId,
    },
    /// Only the owner may do this (set roles, post to a public account).
    #[error("user {user:?} is not the owner of {conversation:?}")]
    NotOwner {
        /// The conversation.
        conversation: ConversationKey,
        /// The user.
        user: UserId,
    },
    /// Only the owner or an admin may do this (add or remove members).
    #[error("user {user:?} is not an admin of {conversation:?}")]
    NotAdmin {
        /// The conversation.
        conversation: ConversationKey,
        /// The user.
        user: UserId,
    },
    /// The target's role protects them: admins cannot remove the owner or other admins,
    /// and the owner cannot leave or be demoted without transferring ownership.
    #[error("user {target:?} in {conversation:?} is protected by their role")]
    Protected {
        /// The conversation.
        conversation: ConversationKey,
        /// The protected user.
        target: UserId,
    },
    /// The sender is muted in the group — itself, or the whole group while it is not
    /// the group's owner or an admin — until `until_ms`.
    #[error("user {user:?} is muted in {conversation:?} until {until_ms} ms since the epoch")]
    Muted {
        /// The group.
        conversation: ConversationKey,
        /// The muted sender.
        user: UserId,
        /// When the mute ends.
        until_ms: u64,
        /// How long it still lasts from the request's time.
        remaining_ms: u64,
    },
    /// No message `seq` in `conversation` (never stored, or deleted by retention).
    #[error("no message {seq} in {conversation:?}")]
    NoSuchMessage {
        /// The conversation.
        conversation: ConversationKey,
        /// The seq asked for.
        seq: u64,
    },
    /// A recall or an edit by the sender after its window (a group's owner or admins
    /// may still recall).
    #[error("message {seq} in {conversation:?} is older than the {window_ms} ms {action} window")]
    TooLate {
        /// The conversation.
        conversation: ConversationKey,
        /// The message.
        seq: u64,
        /// What was asked: "recall" or "edit".
        action: &'static str,
        /// The window.
        window_ms: u64,
    },
    /// The group or public account does not exist.
    #[error("{0:?} not found")]
    NotFound(ConversationKey),
    /// The request is malformed (e.g. a group op on a 1:1 chat).
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    /// A stored key or value is corrupt.
    #[error("corrupt data: {0}")]
    Corrupt(#[from] DecodeError),
    /// The RocksDB backend failed (message from RocksDB).
    #[error("backend: {0}")]
    Backend(String),
    /// A filesystem operation failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The commit queue has shut down; the request was not applied.
    #[error("commit queue closed")]
    Closed,
    /// A counter (seq, group id) would overflow u64.
    #[error("counter overflow")]
    Overflow,
    /// The cluster node that owns the conversation did not answer in time (it is down,
    /// restarting or cut off). The request may or may not have been applied there; a
    /// client sends it again with the same id, which the owner's dedup answers once.
    #[error("the node that owns the conversation did not answer")]
    Unavailable,
}

/// A [`StorageError`] as it travels between the nodes of a cluster (docs/CLUSTER.md):
/// every variant the control plane answers differently keeps its meaning and fields;
/// the backend's own failures, which all answer `INTERNAL`, travel as their text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WireError {
    /// [`StorageError::NotAMember`].
    NotAMember(ConversationKey, UserId),
    /// [`StorageError::NotOwner`].
    NotOwner(ConversationKey, UserId),
    /// [`StorageError::NotAdmin`].
    NotAdmin(ConversationKey, UserId),
    /// [`StorageError::Protected`].
    Protected(ConversationKey, UserId),
    /// [`StorageError::Muted`]: conversation, user, until, remaining.
    Muted(ConversationKey, UserId, u64, u64),
    /// [`StorageError::NoSuchMessage`].
    NoSuchMessage(ConversationKey, u64),
    /// [`StorageError::TooLate`]: conversation, seq, whether an edit, window.
    TooLate(ConversationKey, u64, bool, u64),
    /// [`StorageError::NotFound`].
    NotFound(ConversationKey),
    /// [`StorageError::Invalid`], with its text.
    Invalid(String),
    /// [`StorageError::Closed`].
    Closed,
    /// [`StorageError::Overflow`].
    Overflow,
    /// [`StorageError::Unavailable`].
    Unavailable,
    /// A full disk on the owner ([`StorageError::is_no_space`]), with its text.
    NoSpace(String),
    /// Any other failure of the owner's backend, with its text.
    Backend(String),
}

impl From<&StorageError> for WireError {
    fn from(e: &StorageError) -> WireError {
        if e.is_no_space() {
            return WireError::NoSpace(e.to_string());
        }
        match e {
            StorageError::NotAMember { conversation, user } => {
                WireError::NotAMember(*conversation, *user)
            }
            StorageError::NotOwner { conversation, user } => {
                WireError::NotOwner(*conversation, *user)
            }
            StorageError::NotAdmin { conversation, user } => {
                WireError::NotAdmin(*conversation, *user)
            }
            StorageError::Protected {
                conversation,
                target,
            } => WireError::Protected(*conversation, *target),
            StorageError::Muted {
                conversation,
                user,
                until_ms,
                remaining_ms,
            } => WireError::Muted(*conversation, *user, *until_ms, *remaining_ms),
            StorageError::NoSuchMessage { conversation, seq } => {
                WireError::NoSuchMessage(*conversation, *seq)
            }
            StorageError::TooLate {
                conversation,
                seq,
                action,
                window_ms,
            } => WireError::TooLate(*conversation, *seq, *action == "edit", *window_ms),
            StorageError::NotFound(key) => WireError::NotFound(*key),
            StorageError::Invalid(why) => WireError::Invalid((*why).to_owned()),
            StorageError::Closed => WireError::Closed,
            StorageError::Overflow => WireError::Overflow,
            StorageError::Unavailable => WireError::Unavailable,
            StorageError::Corrupt(_) | StorageError::Backend(_) | StorageError::Io(_) => {
                WireError::Backend(e.to_string())
            }
        }
    }
}

impl From<WireError> for StorageError {
    fn from(e: WireError) -> StorageError {
        match e {
            WireError::NotAMember(conversation, user) => {
                StorageError::NotAMember { conversation, user }
            }
            WireError::NotOwner(conversation, user) => {
                StorageError::NotOwner { conversation, user }
            }
            WireError::NotAdmin(conversation, user) => {
                StorageError::NotAdmin { conversation, user }
            }
            WireError::Protected(conversation, target) => StorageError::Protected {
                conversation,
                target,
            },
            WireError::Muted(conversation, user, until_ms, remaining_ms) => StorageError::Muted {
                conversation,
                user,
                until_ms,
                remaining_ms,
            },
            WireError::NoSuchMessage(conversation, seq) => {
                StorageError::NoSuchMessage { conversation, seq }
            }
            WireError::TooLate(conversation, seq, edit, window_ms) => StorageError::TooLate {
                conversation,
                seq,
                action: if edit { "edit" } else { "recall" },
                window_ms,
            },
            WireError::NotFound(key) => StorageError::NotFound(key),
            // The text stays in the owner's log; the code (INVALID_REQUEST) is the same.
            WireError::Invalid(_) => StorageError::Invalid("refused by the owner node"),
            WireError::Closed => StorageError::Closed,
            WireError::Overflow => StorageError::Overflow,
            WireError::Unavailable => StorageError::Unavailable,
            WireError::NoSpace(text) | WireError::Backend(text) => StorageError::Backend(text),
        }
    }
}

/// The `strerror` text of ENOSPC, which RocksDB's messages carry (its errors reach us as
/// strings only).
const NO_SPACE_TEXT: &str = "No space left on device";

impl StorageError {
    /// Whether the failure is a full disk (ENOSPC) rather than a broken request or
    /// database: a write may succeed once space is freed. Also true for the errors that
    /// wrap such a failure (a refused group write, a failed WAL sync).
    pub fn is_no_space(&self) -> bool {
        match self {
            StorageError::Io(e) => e.kind() == std::io::ErrorKind::StorageFull,
            StorageError::Backend(msg) => msg.contains(NO_SPACE_TEXT),
            _ => false,
        }
    }

    /// The error every write of a group gets when the group failed with `self`:
    /// [`StorageError::Unavailable`] stays itself (the replica log did not take the
    /// group, or refused it before it was applied: sent again, a write is stored once),
    /// anything else becomes a [`StorageError::Backend`] error saying `what`.
    pub fn for_group_writes(&self, what: &str) -> StorageError {
        match self {
            StorageError::Unavailable => StorageError::Unavailable,
            other => StorageError::Backend(format!("{what}: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_crossing_nodes_keeps_what_the_control_plane_answers_by() {
        let conversation = ConversationKey::Group(7);
        let user = UserId(3);
        let errors = [
            StorageError::NotAMember { conversation, user },
            StorageError::NotOwner { conversation, user },
            StorageError::NotAdmin { conversation, user },
            StorageError::Protected {
                conversation,
                target: user,
            },
            StorageError::Muted {
                conversation,
                user,
                until_ms: 9,
                remaining_ms: 4,
            },
            StorageError::NoSuchMessage {
                conversation,
                seq: 5,
            },
            StorageError::TooLate {
                conversation,
                seq: 5,
                action: "edit",
                window_ms: 60,
            },
            StorageError::NotFound(conversation),
            StorageError::Closed,
            StorageError::Overflow,
            StorageError::Unavailable,
        ];
        for e in errors {
            let back = StorageError::from(WireError::from(&e));
            assert_eq!(format!("{back:?}"), format!("{e:?}"));
        }
        // The backend's own failures arrive as their text, a full disk still one.
        let full = StorageError::Io(std::io::Error::from_raw_os_error(28));
        assert!(StorageError::from(WireError::from(&full)).is_no_space());
        let broken = StorageError::Io(std::io::Error::from_raw_os_error(5));
        let back = StorageError::from(WireError::from(&broken));
        assert!(matches!(&back, StorageError::Backend(t) if t.contains("os error 5")));
        assert!(matches!(
            StorageError::from(WireError::from(&StorageError::Invalid("x"))),
            StorageError::Invalid(_)
        ));
    }

    #[test]
    fn a_full_disk_is_told_apart_from_other_failures() {
        let rocks = "IO error: No space left on device: While appending to file: \
                     /var/lib/petrel/db/000004.log: No space left on device";
        assert!(StorageError::Backend(rocks.into()).is_no_space());
        assert!(
            StorageError::Backend(format!(
                "WAL sync failed, write not durable: backend: {rocks}"
            ))
            .is_no_space()
        );
        assert!(StorageError::Io(std::io::Error::from_raw_os_error(28)).is_no_space());
        assert!(!StorageError::Backend("IO error: Input/output error".into()).is_no_space());
        assert!(!StorageError::Io(std::io::Error::from_raw_os_error(5)).is_no_space());
        assert!(!StorageError::Closed.is_no_space());
    }
}
