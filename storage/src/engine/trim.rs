//! Retention: old messages and inbox entries are deleted in bounded steps.
//!
//! Each [`Request::Trim`](crate::Request::Trim) runs one step under the writer lock:
//! it walks the message timelines, then the users' inboxes, examining at most
//! `trim_step_keys` keys, and remembers where it stopped so the next step resumes
//! there. A pass over everything takes as many steps as the data needs; the control
//! plane issues them on a timer (`Control`'s trim schedule), and RocksDB's compaction
//! then drops the range tombstones and the space.
//!
//! Two rules keep every invariant intact:
//! - **The newest entry stays.** Each conversation keeps its newest message and each
//!   user their newest inbox entry in each partition (an inbox is one sequence per
//!   partition, and `inbox_max_entries` applies to each), because the last seq and the inbox head are
//!   recovered from the last stored key: deleting it would let a seq be reused.
//! - **Only a prefix goes.** Deletion is always a range from the first stored key, so a
//!   conversation's stored messages are exactly `first_seq..=last_seq` (reported to
//!   clients as "history before `first_seq` is gone"), and a user's inbox is one
//!   contiguous range too: a device whose cursor is below it gets a full resync.

use std::collections::HashMap;

use std::sync::MutexGuard;

use super::{Store, WriterState};
use crate::api::TrimReport;
use crate::cf::Cf;
use crate::error::StorageError;
use crate::keys;
use crate::kv::{Batch, Direction, Kv};
use crate::model::{ConversationKey, UserId};
use crate::values::{self, InboxEntry};

/// Where the current retention pass stands.
#[derive(Debug, Default)]
pub(crate) struct TrimCursor {
    /// Next message key to look at (`None`: the message walk starts over).
    messages: Option<Vec<u8>>,
    /// Whether this pass finished the message walk and is in the inbox walk.
    in_inboxes: bool,
    /// Next inbox key to look at.
    inboxes: Option<Vec<u8>>,
}

/// A key above every message and inbox key (both are at most 25 bytes).
const END: [u8; 32] = [0xff; 32];

/// What one walk did with its share of the budget.
enum Walk {
    /// Reached the end of the column family.
    Finished,
    /// Ran out of budget; resume at this key.
    Paused(Vec<u8>),
}

impl<K: Kv> Store<K> {
    pub(super) fn do_trim(&self, sync: bool, now_ms: u64) -> Result<TrimReport, StorageError> {
        self.observe_time(now_ms);
        // The cursor, then every partition (a step walks conversations and inboxes of
        // all of them; it is bounded by `trim_step_keys`).
        let mut cursor = Self::lock_plain(&self.trim)?;
        let mut ws = self.lock_all()?;
        let mut budget = self.config.trim_step_keys.max(2);
        let mut report = TrimReport::default();
        let mut batch = self.kv.batch();
        if !cursor.in_inboxes {
            let from = cursor.messages.take().unwrap_or_default();
            match self.trim_messages(&mut ws, &mut batch, from, now_ms, &mut budget, &mut report)? {
                Walk::Finished => cursor.in_inboxes = true,
                Walk::Paused(at) => cursor.messages = Some(at),
            }
        }
        if cursor.in_inboxes && budget > 0 {
            let from = cursor.inboxes.take().unwrap_or_default();
            match self.trim_inboxes(&mut ws, &mut batch, from, now_ms, &mut budget, &mut report)? {
                Walk::Finished => {
                    cursor.in_inboxes = false;
                    report.pass_complete = true;
                }
                Walk::Paused(at) => cursor.inboxes = Some(at),
            }
        }
        if report.messages > 0 || report.inbox_entries > 0 {
            self.commit(batch, sync)?;
        }
        Ok(report)
    }

    /// Delete each conversation's messages older than its kind's retention.
    fn trim_messages(
        &self,
        ws: &mut [MutexGuard<'_, WriterState>],
        batch: &mut K::Batch<'_>,
        mut from: Vec<u8>,
        now_ms: u64,
        budget: &mut usize,
        report: &mut TrimReport,
    ) -> Result<Walk, StorageError> {
        let retention = self.config.retention;
        if retention == Default::default() {
            return Ok(Walk::Finished);
        }
        while *budget > 0 {
            let Some(key) = self.kv.first_key(Cf::Messages, &from, &END)? else {
                return Ok(Walk::Finished);
            };
            *budget -= 1;
            let (c, first) = keys::decode_conversation_u64(&key)?;
            let next_conversation = keys::prefix_end(&keys::conversation(c));
            let Some(keep_ms) = retention.of(c) else {
                from = next_conversation;
                continue;
            };
            let cutoff = now_ms.saturating_sub(keep_ms);
            // Peek, not get: a pass over every conversation must not push the hot
            // entries out of the writer's cache.
            let w = &ws[usize::from(self.partitions.of(c).0)];
            let last = match w.last_seq.peek(&c) {
                Some(s) => *s,
                None => self.stored_last_seq(c)?,
            };
            // Scan [first, last): the newest message always stays.
            let mut cut = first;
            let mut young = false;
            self.kv.scan(
                Cf::Messages,
                &key,
                &keys::conversation_u64(c, last),
                Direction::Forward,
                *budget,
                &mut |k, v| {
                    if values::message_time_ms(v)? >= cutoff {
                        young = true;
                        return Ok(false);
                    }
                    cut = keys::decode_conversation_u64(k)?.1 + 1;
                    Ok(true)
                },
            )?;
            *budget = budget.saturating_sub((cut - first) as usize + usize::from(young));
            if cut > first {
                batch.delete_range(Cf::Messages, &key, &keys::conversation_u64(c, cut));
                report.messages += cut - first;
            }
            let done_here = young || cut >= last;
            from = if done_here {
                next_conversation
            } else {
                keys::conversation_u64(c, cut).to_vec()
            };
        }
        Ok(Walk::Paused(from))
    }

    /// Delete each user's inbox entries beyond the cap or older than the retention, one
    /// (user, partition) sequence at a time.
    fn trim_inboxes(
        &self,
        ws: &mut [MutexGuard<'_, WriterState>],
        batch: &mut K::Batch<'_>,
        mut from: Vec<u8>,
        now_ms: u64,
        budget: &mut usize,
        report: &mut TrimReport,
    ) -> Result<Walk, StorageError> {
        let cap = self.config.inbox_max_entries.max(1);
        let cutoff = self
            .config
            .inbox_retention_ms
            .map(|keep| now_ms.saturating_sub(keep));
        while *budget > 0 {
            let Some(key) = self.kv.first_key(Cf::Inbox, &from, &END)? else {
                return Ok(Walk::Finished);
            };
            *budget -= 1;
            let parts = self.partitions;
            let (user, p, first) = parts.decode_inbox(&key)?;
            let w = &mut *ws[usize::from(p.0)];
            let next_range = keys::prefix_end(&parts.inbox_prefix(user, p));
            let head = match w.inbox_head.peek(&(user, p)) {
                Some(h) => *h,
                None => self.stored_inbox_head(user, p)?,
            };
            // Entries above head - cap stay by count; the newest (head) always stays.
            let mut cut = first.max(head.saturating_sub(cap) + 1).min(head);
            let mut young = false;
            if let Some(cutoff) = cutoff {
                self.kv.scan(
                    Cf::Inbox,
                    &parts.inbox_key(user, p, cut),
                    &parts.inbox_key(user, p, head),
                    Direction::Forward,
                    *budget,
                    &mut |k, v| {
                        // An entry from before entries carried a time counts as old.
                        if InboxEntry::written_ms(v)?.is_some_and(|t| t >= cutoff) {
                            young = true;
                            return Ok(false);
                        }
                        cut = parts.decode_inbox(k)?.2 + 1;
                        Ok(true)
                    },
                )?;
            }
            *budget = budget.saturating_sub(usize::from(young));
            if cut > first {
                batch.delete_range(Cf::Inbox, &key, &parts.inbox_key(user, p, cut));
                report.inbox_entries += cut - first;
                *budget = budget.saturating_sub(((cut - first) as usize).min(*budget));
                forget_trimmed_markers(w, user, |c| parts.of(c) == p, cut);
            }
            let done_here = young || cut >= head || cutoff.is_none();
            from = if done_here {
                next_range
            } else {
                parts.inbox_key(user, p, cut).to_vec()
            };
        }
        Ok(Walk::Paused(from))
    }
}

/// A pending news marker that was trimmed (below `cut` in the partition whose
/// conversations `in_partition` selects) no longer stops the next append from writing a
/// fresh one.
fn forget_trimmed_markers(
    w: &mut WriterState,
    user: UserId,
    in_partition: impl Fn(ConversationKey) -> bool,
    cut: u64,
) {
    if let Some(markers) = w.pending_news.get_mut(&user) {
        markers.retain(|&c, inbox_seq| *inbox_seq >= cut || !in_partition(c));
    }
    let empty = w.pending_news.peek(&user).is_some_and(HashMap::is_empty);
    if empty {
        w.pending_news.pop(&user);
    }
}
