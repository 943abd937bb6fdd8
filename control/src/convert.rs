//! Translation between wire types (`petrel_proto::pb`) and storage types
//! (`petrel_storage`): conversation ids seen from a viewer's side, roles, stored
//! messages and storage errors.

use bytes::Bytes;
use petrel_proto::content::ContentView;
use petrel_proto::pb;
use petrel_storage::{ConversationKey, Role, StorageError, StoredMessage, UserId};

/// What a wire conversation id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A persisted conversation.
    Persisted(ConversationKey),
    /// An in-memory chatroom.
    Chatroom(u64),
}

/// Resolves a wire conversation id as sent by `viewer`. `None` for an unset kind or a
/// zero id.
pub fn target(viewer: u64, id: Option<&pb::ConversationId>) -> Option<Target> {
    let id = id?;
    if id.id == 0 {
        return None;
    }
    match pb::ConversationKind::try_from(id.kind).ok()? {
        pb::ConversationKind::Unspecified => None,
        pb::ConversationKind::Single => Some(Target::Persisted(ConversationKey::single(
            UserId(viewer),
            UserId(id.id),
        ))),
        pb::ConversationKind::Group => Some(Target::Persisted(ConversationKey::Group(id.id))),
        pb::ConversationKind::PublicAccount => {
            Some(Target::Persisted(ConversationKey::PublicAccount(id.id)))
        }
        pb::ConversationKind::Chatroom => Some(Target::Chatroom(id.id)),
    }
}

/// The persisted conversation `id` names (as `viewer` sees it), when `seq` names a
/// message in it (1 or more): what a recall, an edit and a read count act on.
pub fn message_key(
    viewer: u64,
    id: Option<&pb::ConversationId>,
    seq: u64,
) -> Option<ConversationKey> {
    match target(viewer, id)? {
        Target::Persisted(key) if seq != 0 => Some(key),
        _ => None,
    }
}

/// The wire id of `key` as `viewer` sees it (for a 1:1 chat, the other user; for a
/// chat with oneself, oneself).
pub fn wire_id(viewer: u64, key: ConversationKey) -> pb::ConversationId {
    match key {
        ConversationKey::Single { lo, hi } => {
            let peer = key
                .peer_of(UserId(viewer))
                .unwrap_or(if lo.0 == viewer { hi } else { lo });
            pb::ConversationId {
                kind: pb::ConversationKind::Single as i32,
                id: peer.0,
            }
        }
        ConversationKey::Group(id) => pb::ConversationId {
            kind: pb::ConversationKind::Group as i32,
            id,
        },
        ConversationKey::PublicAccount(id) => pb::ConversationId {
            kind: pb::ConversationKind::PublicAccount as i32,
            id,
        },
    }
}

/// The wire id of a chatroom.
pub fn chatroom_id(room: u64) -> pb::ConversationId {
    pb::ConversationId {
        kind: pb::ConversationKind::Chatroom as i32,
        id: room,
    }
}

/// Storage role → wire role.
pub fn role_to_wire(role: Role) -> pb::Role {
    match role {
        Role::Member => pb::Role::Member,
        Role::Admin => pb::Role::Admin,
        Role::Owner => pb::Role::Owner,
    }
}

/// Wire role → storage role (`None` for an unset or unknown value).
pub fn role_from_wire(role: i32) -> Option<Role> {
    match pb::Role::try_from(role).ok()? {
        pb::Role::Unspecified => None,
        pb::Role::Member => Some(Role::Member),
        pb::Role::Admin => Some(Role::Admin),
        pb::Role::Owner => Some(Role::Owner),
    }
}

/// The protocol error code for a failed storage request, and whether the failure is
/// the server's fault (counted as a storage error) rather than the request's.
pub fn storage_error_code(err: &StorageError) -> (pb::ErrorCode, bool) {
    if err.is_no_space() {
        return (pb::ErrorCode::StorageFull, true);
    }
    match err {
        StorageError::NotAMember { .. } => (pb::ErrorCode::NotAMember, false),
        StorageError::NotOwner { .. }
        | StorageError::NotAdmin { .. }
        | StorageError::Protected { .. } => (pb::ErrorCode::PermissionDenied, false),
        StorageError::NotFound(_) | StorageError::NoSuchMessage { .. } => {
            (pb::ErrorCode::NotFound, false)
        }
        StorageError::TooLate { .. } => (pb::ErrorCode::PermissionDenied, false),
        StorageError::Muted { .. } => (pb::ErrorCode::Muted, false),
        StorageError::Invalid(_) => (pb::ErrorCode::InvalidRequest, false),
        StorageError::Closed => (pb::ErrorCode::ShuttingDown, true),
        StorageError::Unavailable => (pb::ErrorCode::ServerBusy, true),
        StorageError::Corrupt(_)
        | StorageError::Backend(_)
        | StorageError::Io(_)
        | StorageError::Overflow => (pb::ErrorCode::Internal, true),
    }
}

/// How long a client should wait before sending again a write refused with `err`
/// (`retry_after_ms` of the `Error`); 0 when there is nothing to wait for.
pub fn storage_retry_after_ms(err: &StorageError) -> u32 {
    if err.is_no_space() {
        // Space comes back when an operator frees it: minutes rather than milliseconds.
        return STORAGE_FULL_RETRY_MS;
    }
    match err {
        // Until the mute ends (at most u32::MAX ms, 49 days, for a longer one).
        StorageError::Muted { remaining_ms, .. } => {
            u32::try_from(*remaining_ms).unwrap_or(u32::MAX)
        }
        // The owner node is restarting or cut off: a restart takes seconds.
        StorageError::Unavailable => UNAVAILABLE_RETRY_MS,
        _ => 0,
    }
}

/// `retry_after_ms` of the `SERVER_BUSY` that answers a write whose owner node did not
/// answer ([`StorageError::Unavailable`]).
pub const UNAVAILABLE_RETRY_MS: u32 = 500;

/// `retry_after_ms` of `Error STORAGE_FULL`.
pub const STORAGE_FULL_RETRY_MS: u32 = 5_000;

/// A stored message as `viewer` receives it: the stored content bytes as they are, and
/// whether they still pass the content check they passed when written (if not, the push
/// carries no content and the caller counts a storage error). A recalled message carries
/// who recalled it and when, and no content.
pub fn push_from_stored(viewer: u64, msg: &StoredMessage) -> (pb::MessagePush, bool) {
    let ok = msg.recalled.is_some() || ContentView::new_checked(&msg.payload).is_ok();
    (
        pb::MessagePush {
            conversation: Some(wire_id(viewer, msg.conversation)),
            seq: msg.seq,
            sender: msg.sender.0,
            server_time_ms: msg.server_time_ms,
            client_msg_id: msg.client_msg_id,
            content: if ok {
                msg.payload.clone()
            } else {
                Bytes::new()
            },
            sender_device: msg.sender_device.clone(),
            recalled_by: msg.recalled.map_or(0, |r| r.by.0),
            recalled_at_ms: msg.recalled.map_or(0, |r| r.at_ms),
            edited_at_ms: msg.edited_at_ms.unwrap_or(0),
            reply_to: msg.refs.reply_to,
            mentions: user_ids(&msg.refs.mentions),
        },
        ok,
    )
}

/// User ids as the wire carries them (a mention list: no allocation when empty).
pub fn user_ids(users: &[UserId]) -> Vec<u64> {
    users.iter().map(|u| u.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_answered_storage_full_with_a_retry_delay() {
        let full = StorageError::Backend(
            "WAL sync failed, write not durable: backend: IO error: No space left on device".into(),
        );
        let (code, internal) = storage_error_code(&full);
        assert_eq!((code, internal), (pb::ErrorCode::StorageFull, true));
        assert_eq!(storage_retry_after_ms(&full), STORAGE_FULL_RETRY_MS);
        let broken = StorageError::Backend("IO error: Input/output error".into());
        assert_eq!(storage_error_code(&broken).0, pb::ErrorCode::Internal);
        assert_eq!(storage_retry_after_ms(&broken), 0);
        let muted = StorageError::Muted {
            conversation: petrel_storage::ConversationKey::Group(1),
            user: petrel_storage::UserId(2),
            until_ms: 10_000,
            remaining_ms: 4_000,
        };
        assert_eq!(storage_error_code(&muted), (pb::ErrorCode::Muted, false));
        assert_eq!(storage_retry_after_ms(&muted), 4_000);
    }

    fn id(kind: pb::ConversationKind, id: u64) -> pb::ConversationId {
        pb::ConversationId {
            kind: kind as i32,
            id,
        }
    }

    #[test]
    fn single_ids_are_the_peer_from_each_side() {
        let alice = 1;
        let bob = 2;
        let Some(Target::Persisted(key)) =
            target(alice, Some(&id(pb::ConversationKind::Single, bob)))
        else {
            panic!("single chat must resolve");
        };
        assert_eq!(
            target(bob, Some(&id(pb::ConversationKind::Single, alice))),
            Some(Target::Persisted(key))
        );
        assert_eq!(wire_id(alice, key), id(pb::ConversationKind::Single, bob));
        assert_eq!(wire_id(bob, key), id(pb::ConversationKind::Single, alice));
        let me = ConversationKey::single(UserId(5), UserId(5));
        assert_eq!(wire_id(5, me), id(pb::ConversationKind::Single, 5));
    }

    #[test]
    fn unset_or_unknown_ids_are_rejected() {
        assert_eq!(target(1, None), None);
        assert_eq!(target(1, Some(&id(pb::ConversationKind::Group, 0))), None);
        assert_eq!(
            target(1, Some(&id(pb::ConversationKind::Unspecified, 3))),
            None
        );
        let bogus = pb::ConversationId { kind: 99, id: 3 };
        assert_eq!(target(1, Some(&bogus)), None);
        assert_eq!(
            target(1, Some(&id(pb::ConversationKind::Chatroom, 3))),
            Some(Target::Chatroom(3))
        );
    }

    #[test]
    fn roles_round_trip() {
        for r in [Role::Member, Role::Admin, Role::Owner] {
            assert_eq!(role_from_wire(role_to_wire(r) as i32), Some(r));
        }
        assert_eq!(role_from_wire(0), None);
        assert_eq!(role_from_wire(77), None);
    }
}
