//! Sync and history: what a device reads.
//!
//! Messages always come from conversation timelines; the inbox only says *which*
//! conversations changed and up to where. A pointer `(c, s)` means "deliver `c` up to
//! `s`" (usually one point read); a news marker means "deliver `c` to its end". Either
//! way the device gets every message after its own cursor for `c`, so the result is
//! the same under read, write and hybrid diffusion.
//!
//! A device with no inbox position (new) reads every conversation the user belongs to.
//! Otherwise only inbox entries after its position are examined, partition by partition
//! (each has its own inbox sequence, see [`crate::partition`]): O(conversations changed)
//! plus one seek per partition.
//!
//! News-marker bookkeeping: before a marker's timeline is read, the writer's "pending"
//! flag for (user, conversation) is cleared under the writer lock, so any append that
//! commits after the read starts writes a fresh marker (none can slip between).
//!
//! Performance-critical path: one inbox range scan per partition plus one timeline read
//! per conversation changed; no writer lock except to clear pending markers.

use std::collections::{BTreeSet, HashMap};

use super::Store;
use crate::api::{HistoryPage, SyncPage, SyncRequest};
use crate::cf::Cf;
use crate::error::StorageError;
use crate::keys;
use crate::kv::{Direction, Kv};
use crate::model::{ConversationKey, ConversationState, StoredMessage, UserId};
use crate::partition::{InboxCursor, Partitions};
use crate::values::{self, InboxEntry};

/// How a walk of the inbox ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walked {
    /// The page is filled from the inbox.
    Done,
    /// Retention removed entries the device has not seen (or its position does not fit
    /// the database): it must be synced like a new device.
    TrimmedPast,
}

impl<K: Kv> Store<K> {
    /// Append messages of `c` with `after < seq <= upto` to `out`, at most `max` of them.
    /// Returns true if more remained in that range (the page was cut short).
    fn read_timeline(
        &self,
        c: ConversationKey,
        after: u64,
        upto: u64,
        max: usize,
        out: &mut Vec<StoredMessage>,
    ) -> Result<bool, StorageError> {
        let Some(first) = after.checked_add(1) else {
            return Ok(false);
        };
        if first > upto {
            return Ok(false);
        }
        if first == upto {
            if let Some(v) = self
                .kv
                .get(Cf::Messages, &keys::conversation_u64(c, first))?
            {
                if max == 0 {
                    return Ok(true);
                }
                out.push(values::decode_message(c, first, &v)?);
            }
            return Ok(false);
        }
        let start = keys::conversation_u64(c, first);
        let end = match upto.checked_add(1) {
            Some(e) => keys::conversation_u64(c, e).to_vec(),
            None => keys::prefix_end(&keys::conversation(c)),
        };
        let mut seen = 0usize;
        let mut more = false;
        self.kv.scan(
            Cf::Messages,
            &start,
            &end,
            Direction::Forward,
            max.saturating_add(1),
            &mut |k, v| {
                if seen == max {
                    more = true;
                    return Ok(false);
                }
                let (_, seq) = keys::decode_conversation_u64(k)?;
                out.push(values::decode_message(c, seq, v)?);
                seen += 1;
                Ok(true)
            },
        )?;
        Ok(more)
    }

    /// Clear the pending news flag for (user, c) if it is this marker or an older one.
    fn consume_news(
        &self,
        user: UserId,
        c: ConversationKey,
        inbox_seq: u64,
    ) -> Result<(), StorageError> {
        let mut w = self.lock_for(c)?;
        if let Some(p) = w.pending_news.get_mut(&user)
            && p.get(&c).is_some_and(|marked| *marked <= inbox_seq)
        {
            p.remove(&c);
        }
        Ok(())
    }

    pub(super) fn do_sync(&self, req: &SyncRequest) -> Result<SyncPage, StorageError> {
        self.observe_time(req.now_ms);
        let budget = req.limit.clamp(1, self.config.max_page.max(1));
        let device_cursors = || {
            let mut cursors: HashMap<ConversationKey, u64> =
                HashMap::with_capacity(req.cursors.len());
            for (c, s) in &req.cursors {
                let e = cursors.entry(*c).or_insert(0);
                *e = (*e).max(*s);
            }
            cursors
        };
        let mut cursors = device_cursors();
        let mut page = SyncPage::default();
        let mut touched = BTreeSet::new();
        let positions = req.inbox.positions();
        // A position of another partition count or another database (this one was
        // recreated) is as good as none. A plain one-partition cursor carries no epoch.
        let fits = positions.len() == usize::from(self.partitions.count())
            && (self.partitions == Partitions::ONE || req.inbox.epoch() == self.epoch);
        let walked = if fits {
            self.sync_inbox(
                req.user,
                positions,
                budget,
                &mut cursors,
                &mut page,
                &mut touched,
            )?
        } else {
            Walked::TrimmedPast
        };
        if walked == Walked::TrimmedPast {
            // Start over, from the device's own cursors only.
            cursors = device_cursors();
            page = SyncPage::default();
            touched.clear();
            self.sync_everything(req.user, budget, &mut cursors, &mut page, &mut touched)?;
        }
        page.conversations.reserve(touched.len());
        for c in touched {
            // A dissolved group (its inbox entries outlive it) has no state to report.
            if matches!(c, ConversationKey::Group(_))
                && self
                    .kv
                    .get(Cf::Conversations, &keys::conversation(c))?
                    .is_none()
            {
                continue;
            }
            let read_seq = self.read_cursor(req.user, c)?;
            let first_seq = self.stored_first_seq(c)?;
            page.conversations.push(ConversationState {
                key: c,
                last_seq: self.stored_last_seq(c)?,
                read_seq,
                first_seq,
                unread_mentions: self.unread_mentions(req.user, c, read_seq, first_seq)?,
            });
        }
        Ok(page)
    }

    /// New device: every conversation from the device's cursor (0 if unknown).
    fn sync_everything(
        &self,
        user: UserId,
        budget: usize,
        cursors: &mut HashMap<ConversationKey, u64>,
        page: &mut SyncPage,
        touched: &mut BTreeSet<ConversationKey>,
    ) -> Result<(), StorageError> {
        // Per partition, read the inbox head and clear pending markers atomically w.r.t.
        // appends: any append after this point writes a fresh marker above `head`, and
        // any append before it is visible to the timeline reads below.
        let mut heads = Vec::with_capacity(usize::from(self.partitions.count()));
        for p in self.partitions.all() {
            let mut w = self.lock(p)?;
            heads.push(self.inbox_head(&mut w, user, p)?);
            w.pending_news.pop(&user);
        }
        for c in self.do_conversations_of(user)? {
            touched.insert(c);
            let from = cursors.get(&c).copied().unwrap_or(0);
            let remaining = budget - page.messages.len();
            if self.read_timeline(c, from, u64::MAX, remaining, &mut page.messages)? {
                page.has_more = true;
                break;
            }
        }
        page.inbox = if page.has_more {
            InboxCursor::new_device()
        } else {
            InboxCursor::from_positions(self.epoch, heads)
        };
        Ok(())
    }

    /// Known device: only conversations named by inbox entries after its position,
    /// partition by partition; at most 4 × `budget` entries are examined in all.
    ///
    /// [`Walked::TrimmedPast`] if retention removed entries the device has not seen — in
    /// some partition the first entry after its position is not the next seq (a
    /// partition's entries are contiguous, and its newest always stays, so this is the
    /// only way to find out, and it costs no seek of its own). Such a device cannot learn
    /// from the inbox which conversations changed: the caller syncs it like a new one,
    /// from its per-conversation cursors (slower, never lossy).
    fn sync_inbox(
        &self,
        user: UserId,
        positions: &[u64],
        budget: usize,
        cursors: &mut HashMap<ConversationKey, u64>,
        page: &mut SyncPage,
        touched: &mut BTreeSet<ConversationKey>,
    ) -> Result<Walked, StorageError> {
        let mut scan_left = budget.saturating_mul(4).max(64);
        let mut reached = positions.to_vec();
        let mut participant: HashMap<ConversationKey, bool> = HashMap::new();
        let mut entries: Vec<(u64, InboxEntry)> = Vec::new();
        for (p, processed) in self.partitions.all().zip(reached.iter_mut()) {
            let Some(first) = processed.checked_add(1) else {
                continue;
            };
            entries.clear();
            let start = self.partitions.inbox_key(user, p, first);
            let end = keys::prefix_end(&self.partitions.inbox_prefix(user, p));
            self.kv.scan(
                Cf::Inbox,
                &start,
                &end,
                Direction::Forward,
                scan_left,
                &mut |k, v| {
                    entries.push((self.partitions.decode_inbox(k)?.2, InboxEntry::decode(v)?));
                    Ok(true)
                },
            )?;
            if entries.first().is_some_and(|&(seq, _)| seq > first) {
                return Ok(Walked::TrimmedPast);
            }
            for &(inbox_seq, entry) in &entries {
                let c = entry.conversation();
                touched.insert(c);
                let mut from = cursors.get(&c).copied().unwrap_or(0);
                let upto = match entry {
                    InboxEntry::News(..) => {
                        self.consume_news(user, c, inbox_seq)?;
                        if !self.cached_participant(&mut participant, c, user)? {
                            *processed = inbox_seq;
                            continue;
                        }
                        u64::MAX
                    }
                    InboxEntry::Pointer(_, s) => {
                        if s <= from {
                            *processed = inbox_seq;
                            continue;
                        }
                        // A gap before `s` is only filled for a current participant.
                        if s > from + 1 && !self.cached_participant(&mut participant, c, user)? {
                            from = s - 1;
                        }
                        s
                    }
                };
                let before = page.messages.len();
                let remaining = budget - before;
                let more = self.read_timeline(c, from, upto, remaining, &mut page.messages)?;
                if let Some(last) = page.messages[before..].last() {
                    cursors.insert(c, last.seq);
                }
                if more {
                    page.has_more = true;
                    break;
                }
                *processed = inbox_seq;
            }
            scan_left -= entries.len();
            if page.has_more || scan_left == 0 {
                page.has_more = true;
                break;
            }
        }
        page.inbox = InboxCursor::from_positions(self.epoch, reached);
        Ok(Walked::Done)
    }

    fn cached_participant(
        &self,
        cache: &mut HashMap<ConversationKey, bool>,
        c: ConversationKey,
        user: UserId,
    ) -> Result<bool, StorageError> {
        if let Some(p) = cache.get(&c) {
            return Ok(*p);
        }
        let p = self.stored_role(c, user)?.is_some();
        cache.insert(c, p);
        Ok(p)
    }

    pub(super) fn do_history(
        &self,
        user: UserId,
        c: ConversationKey,
        before_seq: u64,
        limit: usize,
    ) -> Result<HistoryPage, StorageError> {
        self.require_participant(c, user)?;
        let limit = limit.clamp(1, self.config.max_page.max(1));
        let mut out = Vec::new();
        if before_seq <= 1 {
            return Ok(HistoryPage {
                messages: out,
                first_seq: self.stored_first_seq(c)?,
                cut: false,
            });
        }
        let start = keys::conversation_u64(c, 1);
        let end = keys::conversation_u64(c, before_seq);
        self.kv.scan(
            Cf::Messages,
            &start,
            &end,
            Direction::Reverse,
            limit,
            &mut |k, v| {
                let (_, seq) = keys::decode_conversation_u64(k)?;
                out.push(values::decode_message(c, seq, v)?);
                Ok(true)
            },
        )?;
        out.reverse();
        // Stored messages are one contiguous range, so a short page that starts above 1
        // ends at the first stored seq; only a full page needs the seek.
        let first_seq = match out.first() {
            Some(m) if out.len() < limit => m.seq,
            _ => self.stored_first_seq(c)?,
        };
        Ok(HistoryPage {
            messages: out,
            first_seq,
            cut: false,
        })
    }
}
