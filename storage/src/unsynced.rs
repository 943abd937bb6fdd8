//! What the [`crate::Committer`] has applied but not yet made durable, per conversation,
//! so a read waits only for the fsync of the writes it actually shows.
//!
//! A sync page or a history page may be answered before earlier appends are durable, as
//! long as it shows none of them: every message and every conversation state in the
//! reply is checked against the conversations with unsynced appends. A reply that shows
//! an unsynced append (its seq, or a `last_seq` that counts it) waits for the group that
//! wrote it; one that shows nothing unsynced is released at once, however many appends
//! to other conversations are waiting for their fsync.
//!
//! Writes this module does not model per conversation (membership, groups, accounts)
//! are rare; while one is unsynced every page read waits for it, as do the reads of
//! other kinds (members, roles, conversation lists, activity, revocations), which wait
//! for every write applied before them.

use std::collections::HashMap;

use crate::api::{Reply, Request};
use crate::model::{ConversationKey, ConversationState, StoredMessage};

/// A conversation's unsynced appends and read marks.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Lowest seq appended by a group not yet durable (`u64::MAX` if none).
    first_seq: u64,
    /// Highest group that appended to the conversation.
    append_group: Option<u64>,
    /// Highest group that moved a read position in the conversation.
    mark_group: Option<u64>,
}

/// Unsynced writes by conversation, pruned as groups become durable.
#[derive(Debug, Default)]
pub struct Unsynced {
    conversations: HashMap<ConversationKey, Pending>,
    /// Highest group with any write at all.
    last_write: Option<u64>,
    /// Highest group with a write not modelled per conversation.
    last_other_write: Option<u64>,
}

impl Unsynced {
    /// Records what `request`, applied in `group`, wrote (`reply` is its outcome).
    pub fn record(&mut self, group: u64, request_kind: WriteKind, reply: &Reply) {
        self.last_write = Some(group);
        match (request_kind, reply) {
            (WriteKind::Append, Reply::Appended(outcome)) => {
                if outcome.duplicate {
                    return;
                }
                let p = self.entry(outcome.conversation);
                p.first_seq = p.first_seq.min(outcome.seq);
                p.append_group = Some(group);
            }
            (WriteKind::MarkRead, Reply::State(state)) => {
                self.entry(state.key).mark_group = Some(group);
            }
            (WriteKind::Activity | WriteKind::Trim, _) => {}
            _ => self.last_other_write = Some(group),
        }
    }

    fn entry(&mut self, key: ConversationKey) -> &mut Pending {
        self.conversations.entry(key).or_insert(Pending {
            first_seq: u64::MAX,
            append_group: None,
            mark_group: None,
        })
    }

    /// Forgets every write of a group below `durable_below` (they are durable now).
    pub fn durable(&mut self, durable_below: u64) {
        let synced = |g: Option<u64>| g.is_none_or(|g| g < durable_below);
        if synced(self.last_write) {
            self.conversations.clear();
            self.last_write = None;
            self.last_other_write = None;
            return;
        }
        if synced(self.last_other_write) {
            self.last_other_write = None;
        }
        self.conversations.retain(|_, p| {
            if synced(p.append_group) {
                p.append_group = None;
                p.first_seq = u64::MAX;
            }
            if synced(p.mark_group) {
                p.mark_group = None;
            }
            p.append_group.is_some() || p.mark_group.is_some()
        });
    }

    /// The group that must be durable before `reply` (to a read) may be released, or
    /// `None` if it shows nothing unsynced.
    pub fn needed_by(&self, reply: &Reply, kind: ReadKind) -> Option<u64> {
        match kind {
            ReadKind::Other => return self.last_write,
            ReadKind::Page => {}
        }
        let mut need = self.last_other_write;
        if self.conversations.is_empty() {
            return need;
        }
        let (messages, states): (&[StoredMessage], &[ConversationState]) = match reply {
            Reply::Synced(page) => (&page.messages, &page.conversations),
            Reply::History(page) => (&page.messages, &[]),
            _ => return self.last_write,
        };
        for m in messages {
            if let Some(p) = self.conversations.get(&m.conversation)
                && m.seq >= p.first_seq
            {
                need = need.max(p.append_group);
            }
        }
        for s in states {
            if let Some(p) = self.conversations.get(&s.key) {
                if s.last_seq >= p.first_seq {
                    need = need.max(p.append_group);
                }
                need = need.max(p.mark_group);
            }
        }
        need
    }

    /// Conversations with unsynced writes (for tests and metrics).
    pub fn len(&self) -> usize {
        self.conversations.len()
    }

    /// Whether nothing is unsynced.
    pub fn is_empty(&self) -> bool {
        self.last_write.is_none()
    }
}

/// How a write request is tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// `Append`: per conversation and seq.
    Append,
    /// `MarkRead`: per conversation.
    MarkRead,
    /// `TouchActivity`: only `LastActive` shows it, and that read waits for everything.
    Activity,
    /// `Trim`: only deletes what retention expired. A page read before the deletes are
    /// durable shows less than a crash would leave (the next pass deletes it again), never
    /// data that could be lost, so no page waits for it.
    Trim,
    /// Anything else: every page read waits for it.
    Other,
}

/// How a read request is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadKind {
    /// `Sync` and `History`: waits only for the unsynced writes its reply shows.
    Page,
    /// Every other read: waits for every write applied before it.
    Other,
}

/// Whether `request` writes, and how each kind is tracked.
pub fn classify(request: &Request) -> Result<WriteKind, ReadKind> {
    match request {
        Request::Sync(_) | Request::History { .. } => Err(ReadKind::Page),
        r if !r.is_write() => Err(ReadKind::Other),
        Request::Append(_) => Ok(WriteKind::Append),
        Request::MarkRead { .. } => Ok(WriteKind::MarkRead),
        Request::TouchActivity { .. } => Ok(WriteKind::Activity),
        Request::Trim { .. } => Ok(WriteKind::Trim),
        _ => Ok(WriteKind::Other),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::api::{AppendOutcome, HistoryPage, SyncPage};
    use crate::model::UserId;

    fn conv(a: u64, b: u64) -> ConversationKey {
        ConversationKey::single(UserId(a), UserId(b))
    }

    fn appended(c: ConversationKey, seq: u64) -> Reply {
        Reply::Appended(AppendOutcome {
            conversation: c,
            seq,
            server_time_ms: 1,
            duplicate: false,
            recipients: Default::default(),
            refs: Default::default(),
        })
    }

    fn history(messages: Vec<StoredMessage>) -> HistoryPage {
        HistoryPage {
            first_seq: messages.first().map_or(0, |m| m.seq),
            messages,
            cut: false,
        }
    }

    fn message(c: ConversationKey, seq: u64) -> StoredMessage {
        StoredMessage {
            conversation: c,
            seq,
            sender: UserId(1),
            sender_device: "d".into(),
            client_msg_id: seq,
            server_time_ms: 1,
            payload: Bytes::from_static(b"x"),
            recalled: None,
            edited_at_ms: None,
            refs: Default::default(),
        }
    }

    #[test]
    fn a_page_waits_only_for_the_appends_it_shows() {
        let mut u = Unsynced::default();
        let (a, b) = (conv(1, 2), conv(3, 4));
        u.record(5, WriteKind::Append, &appended(a, 10));
        u.record(6, WriteKind::Append, &appended(a, 11));
        // Older history of the same conversation and any page of another one: at once.
        let old = Reply::History(history(vec![message(a, 8), message(a, 9)]));
        assert_eq!(u.needed_by(&old, ReadKind::Page), None);
        let other = Reply::History(history(vec![message(b, 1)]));
        assert_eq!(u.needed_by(&other, ReadKind::Page), None);
        // A page showing seq 10 waits for the last group that appended there.
        let new = Reply::History(history(vec![message(a, 9), message(a, 10)]));
        assert_eq!(u.needed_by(&new, ReadKind::Page), Some(6));
        // A sync page whose state counts the unsynced append waits too.
        let page = Reply::Synced(SyncPage {
            messages: Vec::new(),
            inbox: Default::default(),
            has_more: false,
            conversations: vec![ConversationState {
                key: a,
                last_seq: 11,
                read_seq: 0,
                first_seq: 1,
                unread_mentions: 0,
            }],
        });
        assert_eq!(u.needed_by(&page, ReadKind::Page), Some(6));
        // Other reads wait for every write.
        assert_eq!(u.needed_by(&Reply::Done, ReadKind::Other), Some(6));
        u.durable(7);
        assert!(u.is_empty());
        assert_eq!(u.needed_by(&new, ReadKind::Page), None);
    }

    #[test]
    fn pruning_keeps_what_is_still_unsynced() {
        let mut u = Unsynced::default();
        let (a, b) = (conv(1, 2), conv(3, 4));
        u.record(1, WriteKind::Append, &appended(a, 1));
        u.record(2, WriteKind::Append, &appended(b, 1));
        u.durable(2);
        assert_eq!(u.len(), 1);
        assert_eq!(
            u.needed_by(
                &Reply::History(history(vec![message(a, 1)])),
                ReadKind::Page
            ),
            None
        );
        assert_eq!(
            u.needed_by(
                &Reply::History(history(vec![message(b, 1)])),
                ReadKind::Page
            ),
            Some(2)
        );
    }

    #[test]
    fn an_unsynced_membership_change_holds_every_page() {
        let mut u = Unsynced::default();
        u.record(3, WriteKind::Other, &Reply::Done);
        let page = Reply::History(history(vec![message(conv(1, 2), 1)]));
        assert_eq!(u.needed_by(&page, ReadKind::Page), Some(3));
        u.durable(4);
        assert_eq!(u.needed_by(&page, ReadKind::Page), None);
    }

    #[test]
    fn duplicates_write_nothing_and_activity_holds_no_page() {
        let mut u = Unsynced::default();
        let dup = Reply::Appended(AppendOutcome {
            conversation: conv(1, 2),
            seq: 4,
            server_time_ms: 1,
            duplicate: true,
            recipients: Default::default(),
            refs: Default::default(),
        });
        u.record(1, WriteKind::Append, &dup);
        u.record(1, WriteKind::Activity, &Reply::Done);
        let page = Reply::History(history(vec![message(conv(1, 2), 4)]));
        assert_eq!(u.needed_by(&page, ReadKind::Page), None);
        assert_eq!(u.needed_by(&Reply::Done, ReadKind::Other), Some(1));
    }
}
