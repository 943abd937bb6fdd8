//! Column-family names, in one place. Every persisted byte lives in exactly one of these;
//! `docs/STORAGE.md` gives each one's key and value layout (encoded by `keys`/`values`).

/// A column family. The in-memory engine keeps one ordered map per variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cf {
    /// Conversation timelines: `conversation | seq` → message.
    Messages,
    /// Per-user inboxes: `user | inbox_seq` → pointer or news marker.
    Inbox,
    /// Exactly-once index: `sender | client_msg_id` → where it was stored.
    Dedup,
    /// Memberships: `conversation | user` → role.
    Members,
    /// Reverse membership: `user | conversation` → empty.
    UserConversations,
    /// Read cursors: `user | conversation` → read seq.
    Cursors,
    /// Last activity: `user` → ms.
    Activity,
    /// Revocation list: `token id` → expiry ms.
    Revoked,
    /// Group / public-account metadata: `conversation` → info.
    Conversations,
    /// Id allocation counters: fixed ASCII names → u64.
    Meta,
    /// Group mutes: `conversation | user` → muted until (ms); user 0 = the whole group.
    Mutes,
    /// Unread mentions: `user | conversation | seq` → empty, until the user reads past
    /// `seq`.
    Mentions,
    /// Writes not yet confirmed by the replica log: `record number` → record
    /// ([`crate::replica`]); empty without replication.
    ReplicaLog,
}

impl Cf {
    /// Every column family, in a fixed order (the in-memory engine indexes by position).
    pub const ALL: [Cf; 13] = [
        Cf::Messages,
        Cf::Inbox,
        Cf::Dedup,
        Cf::Members,
        Cf::UserConversations,
        Cf::Cursors,
        Cf::Activity,
        Cf::Revoked,
        Cf::Conversations,
        Cf::Meta,
        Cf::Mutes,
        Cf::Mentions,
        Cf::ReplicaLog,
    ];

    /// The RocksDB column-family name.
    pub const fn name(self) -> &'static str {
        match self {
            Cf::Messages => "messages",
            Cf::Inbox => "inbox",
            Cf::Dedup => "dedup",
            Cf::Members => "members",
            Cf::UserConversations => "user_conversations",
            Cf::Cursors => "cursors",
            Cf::Activity => "activity",
            Cf::Revoked => "revoked",
            Cf::Conversations => "conversations",
            Cf::Meta => "meta",
            Cf::Mutes => "mutes",
            Cf::Mentions => "mentions",
            Cf::ReplicaLog => "replica_log",
        }
    }

    /// Position in [`Cf::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_matches_position_and_names_are_unique() {
        for (i, cf) in Cf::ALL.iter().enumerate() {
            assert_eq!(cf.index(), i);
        }
        let mut names: Vec<_> = Cf::ALL.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Cf::ALL.len());
    }
}
