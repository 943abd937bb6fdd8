//! Engine configuration: diffusion mode, durability mode and their windows, with defaults.

/// How an append reaches recipients' devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiffusionMode {
    /// One copy per timeline; each recipient only gets a per-user "news" marker.
    Read,
    /// Every recipient's inbox gets an entry pointing at the message.
    Write,
    /// Write diffusion to active members of small conversations, read diffusion
    /// (news markers) for inactive members and for conversations above the threshold.
    #[default]
    Hybrid,
}

/// When a write is considered durable (acknowledged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// fsync the WAL on every write.
    Always,
    /// Group commit: writes applied together share one WAL fsync before any is acknowledged.
    #[default]
    Batch,
    /// Never fsync: acknowledged writes survive a process crash (they are in the OS page
    /// cache) but the last few seconds can be lost on power loss or kernel crash.
    None,
}

/// How long messages are kept, per conversation kind; `None` keeps them forever.
/// Chatrooms are never persisted, so they have no entry here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// 1:1 chats.
    pub single_ms: Option<u64>,
    /// Groups.
    pub group_ms: Option<u64>,
    /// Public accounts.
    pub public_ms: Option<u64>,
}

impl Retention {
    /// The retention of `c`'s kind.
    pub fn of(&self, c: crate::model::ConversationKey) -> Option<u64> {
        use crate::model::ConversationKey;
        match c {
            ConversationKey::Single { .. } => self.single_ms,
            ConversationKey::Group(_) => self.group_ms,
            ConversationKey::PublicAccount(_) => self.public_ms,
        }
    }
}

/// Engine configuration. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// Diffusion mode (default hybrid).
    pub diffusion: DiffusionMode,
    /// Durability mode (default batch).
    pub sync: SyncMode,
    /// How long a (sender, conversation, client_msg_id) dedup entry is honoured (default 24 h).
    pub dedup_window_ms: u64,
    /// A user active within this window counts as active for hybrid diffusion (default 7 days).
    pub active_window_ms: u64,
    /// Conversations with more recipients than this use read diffusion only (default 500).
    pub large_group_threshold: usize,
    /// Most messages one sync or history page may return, whatever the caller asks (default 1000).
    pub max_page: usize,
    /// Most client message ids the writer's recent-id filter holds over all senders
    /// (default 4,000,000, ≈ 16 bytes each): beyond it, least recently active senders are
    /// dropped and reloaded by one scan on their next append.
    pub dedup_filter_ids: usize,
    /// Most ids the filter holds per sender (default 1024): a sender with more appends
    /// inside the dedup window costs one dedup read per append.
    pub dedup_filter_per_sender: usize,
    /// Bound of each of the writer's per-conversation and per-user caches — last seq,
    /// inbox head, activity, pending news markers (default 1,000,000 entries each, tens of
    /// bytes per entry). Dropped entries are re-read from the database on next use.
    pub writer_cache_entries: usize,
    /// Bound of the writer's cache of group / public-account member maps (default 16,384
    /// conversations; a map costs ≈ 40 bytes per member).
    pub member_cache_conversations: usize,
    /// Message retention per conversation kind (default: forever). Older messages are
    /// trimmed by [`crate::Request::Trim`], except each conversation's newest.
    pub retention: Retention,
    /// Most inbox entries kept per user in each partition (default 10,000); older ones
    /// are trimmed. A device
    /// whose inbox cursor falls below what is kept gets a full resync from its
    /// per-conversation cursors instead of the inbox walk.
    pub inbox_max_entries: u64,
    /// Inbox entries older than this are trimmed (default 30 days; `None` = by count only).
    pub inbox_retention_ms: Option<u64>,
    /// Logical partitions of a database created with this configuration (default 16,
    /// clamped to 1..=1024; see [`crate::partition`]). Fixed at creation: an existing
    /// database keeps the count recorded in it, and one from before partitions has one.
    /// A server can spread a database's conversations over at most this many cores.
    pub partitions: u16,
    /// The partitions new group and public-account ids are allocated in (`None`: every
    /// one). A node of a cluster allocates only in the partitions it owns, so the
    /// conversations it creates are its own to write and no two nodes allocate one id
    /// (docs/CLUSTER.md). Ids of other partitions are skipped, never reused.
    pub new_ids_in: Option<crate::partition::PartitionSet>,
    /// The epoch inbox positions carry (`None`: the database's own, recorded when it was
    /// created). The nodes of a cluster share one, derived from the cluster's settings,
    /// because a device's position spans every node's partitions (docs/CLUSTER.md).
    pub epoch: Option<u64>,
    /// Most keys one [`crate::Request::Trim`] step examines (default 2,000), which bounds
    /// how long a step holds the writer.
    pub trim_step_keys: usize,
}

/// One hour in milliseconds.
pub const HOUR_MS: u64 = 60 * 60 * 1000;
/// One day in milliseconds.
pub const DAY_MS: u64 = 24 * HOUR_MS;

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            diffusion: DiffusionMode::Hybrid,
            sync: SyncMode::Batch,
            dedup_window_ms: DAY_MS,
            active_window_ms: 7 * DAY_MS,
            large_group_threshold: 500,
            max_page: 1000,
            dedup_filter_ids: 4_000_000,
            dedup_filter_per_sender: 1024,
            writer_cache_entries: 1_000_000,
            member_cache_conversations: 16_384,
            retention: Retention::default(),
            inbox_max_entries: 10_000,
            inbox_retention_ms: Some(30 * DAY_MS),
            trim_step_keys: 2_000,
            new_ids_in: None,
            epoch: None,
            partitions: crate::partition::DEFAULT_PARTITIONS,
        }
    }
}
