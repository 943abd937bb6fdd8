//! Exactly-once append with read, write or hybrid diffusion. The appends of one group
//! share one atomic batch (a [`Run`]), so a group of appends is one backend write.
//!
//! **Run.** [`Store::begin_run`] takes the writer locks of the partitions the group's
//! appends touch (in ascending order, so two runs cannot deadlock) and starts a batch; each
//! [`Store::append_in`] runs every check of its request first (dedup, permission,
//! recipients, seq and inbox counters, encoding) and only then adds its puts to the
//! batch and advances the writer's caches, so a refused request adds nothing, and the
//! next request of the run sees the writes of the previous ones (consecutive seqs,
//! inbox heads, an id retried inside the run is a duplicate). [`Store::finish_run`]
//! writes the batch; if that fails the caches are forgotten (refilled from the database
//! on next use) and every reply of the run becomes an error. The locks are held for the
//! whole run, so no other write to those partitions interleaves with a batch not yet
//! written.
//!
//! **Dedup.** `(sender, conversation, client_msg_id)`: a retried id is the same message
//! only in the same conversation (an id reused in another conversation is a new
//! message, never an ack carrying another conversation's seq). The writer's
//! [`RecentIds`](crate::recent_ids::RecentIds) filter answers "certainly new" from
//! memory — from its list of the sender's recent ids, or because the id is above every
//! id the sender ever stored (its *id ceiling*: senders whose ids increase never read);
//! the `dedup` column family is read only when it cannot.
//!
//! Performance-critical path: runs once per message under the writer lock. Keys are
//! stack arrays, the message is encoded into the run's scratch buffer, the inbox plan
//! into the run's scratch vector (both lent by the writer state, so they keep their
//! size from run to run), and the recipient list is inline up to two: a 1:1 append
//! makes no Rust allocation (`storage-rocks/tests/allocations.rs` counts them).

use std::collections::HashMap;
use std::sync::MutexGuard;
use std::sync::atomic::Ordering;

use smallvec::SmallVec;

use super::{PendingNews, Store, WriterState};
use crate::api::{AppendOutcome, AppendRequest, Recipients};
use crate::cf::Cf;
use crate::config::DiffusionMode;
use crate::error::StorageError;
use crate::keys::{self, DEDUP_KEY_LEN};
use crate::kv::{Batch, Direction, Kv};
use crate::model::{ConversationKey, Refs, Role, UserId};
use crate::partition::{Partition, PartitionSet};
use crate::recent_ids::{Answer, fingerprint};
use crate::values::{self, DedupEntry, InboxEntry};

/// Most conversations [`Store::dedup_id_ceiling`] visits (two seeks each) before it
/// gives up and leaves the sender's id ceiling unknown.
const MAX_CEILING_CONVERSATIONS: usize = 1024;

/// A run's scratch buffers, lent by the writer state for the run and given back
/// (cleared) when it is written: after the first runs they have grown and a run
/// allocates none of them.
#[derive(Debug, Default)]
pub(crate) struct RunScratch {
    written: HashMap<[u8; DEDUP_KEY_LEN], DedupEntry>,
    message: Vec<u8>,
    plan: Vec<(UserId, u64, bool)>,
}

/// The writer states a run holds, ascending by partition.
type Held<'a> = SmallVec<[(Partition, MutexGuard<'a, WriterState>); 4]>;

/// Appends applied into one batch under their partitions' writer locks; see the module
/// doc.
pub(crate) struct Run<'a, K: Kv + 'a> {
    states: Held<'a>,
    batch: K::Batch<'a>,
    /// Dedup entries this run wrote (read-your-writes before the batch reaches the store).
    written: HashMap<[u8; DEDUP_KEY_LEN], DedupEntry>,
    /// Messages stored by this run (duplicates excluded).
    appended: u64,
    /// Inbox entries this run wrote.
    inbox_entries: u64,
    /// Scratch: the encoded message.
    message: Vec<u8>,
    /// Scratch: `(recipient, inbox seq, is news marker)` of the append being planned.
    plan: Vec<(UserId, u64, bool)>,
}

/// The state of partition `p` among those a run holds.
fn state_of<'s>(
    states: &'s mut Held<'_>,
    p: Partition,
) -> Result<&'s mut WriterState, StorageError> {
    match states.binary_search_by_key(&p, |(q, _)| *q) {
        Ok(i) => Ok(&mut *states[i].1),
        Err(_) => Err(StorageError::Backend(
            "an append's partition was not locked by its run".into(),
        )),
    }
}

impl<K: Kv> Store<K> {
    /// One append on its own: a run of one, durable per the sync mode on return.
    pub(super) fn do_append(&self, req: AppendRequest) -> Result<AppendOutcome, StorageError> {
        let mut parts = PartitionSet::default();
        parts.insert(self.partitions.of(req.conversation));
        let mut run = self.begin_run(&parts)?;
        let outcome = self.append_in(&mut run, req)?;
        self.finish_run(run, self.direct_sync())?;
        Ok(outcome)
    }

    /// Take the writer locks of `parts`, in ascending order, and start an empty batch.
    pub(crate) fn begin_run(&self, parts: &PartitionSet) -> Result<Run<'_, K>, StorageError> {
        let mut states = Held::new();
        for p in parts.iter() {
            states.push((p, self.lock(p)?));
        }
        let RunScratch {
            written,
            message,
            plan,
        } = states
            .first_mut()
            .map(|(_, w)| std::mem::take(&mut w.run_scratch))
            .unwrap_or_default();
        Ok(Run {
            states,
            batch: self.kv.batch(),
            written,
            appended: 0,
            inbox_entries: 0,
            message,
            plan,
        })
    }

    /// Write the run's batch (fsynced if `sync`). On failure nothing of the run may be
    /// acknowledged, and the writer's counters are forgotten.
    pub(crate) fn finish_run(&self, run: Run<'_, K>, sync: bool) -> Result<(), StorageError> {
        let Run {
            mut states,
            batch,
            mut written,
            appended,
            inbox_entries,
            mut message,
            mut plan,
        } = run;
        written.clear();
        message.clear();
        plan.clear();
        if let Some((_, w)) = states.first_mut() {
            w.run_scratch = RunScratch {
                written,
                message,
                plan,
            };
        }
        if appended == 0 {
            return Ok(());
        }
        let bytes = batch.payload_bytes() as u64;
        if let Err(e) = self.commit(batch, sync) {
            for (_, w) in &mut states {
                w.forget_counters();
            }
            return Err(e);
        }
        drop(states);
        self.appends.fetch_add(appended, Ordering::Relaxed);
        self.append_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.inbox_entries
            .fetch_add(inbox_entries, Ordering::Relaxed);
        Ok(())
    }

    /// Check and plan one append, then add it to the run (see the module doc).
    pub(crate) fn append_in(
        &self,
        run: &mut Run<'_, K>,
        req: AppendRequest,
    ) -> Result<AppendOutcome, StorageError> {
        self.observe_time(req.now_ms);
        let conv = req.conversation;
        let partition = self.partitions.of(conv);
        let dedup_key = keys::dedup(req.sender, conv, req.client_msg_id);
        let fp = fingerprint(conv, req.client_msg_id);
        if let Some(d) = self.find_duplicate(run, partition, &dedup_key, fp, &req)? {
            return Ok(AppendOutcome {
                conversation: conv,
                seq: d.seq,
                server_time_ms: d.server_time_ms,
                duplicate: true,
                recipients: Recipients::new(),
                refs: Refs::default(),
            });
        }

        // Every check and every read before the first put.
        let w = state_of(&mut run.states, partition)?;
        let recipients = self.recipients_for_send(w, conv, req.sender, req.now_ms)?;
        let seq = self
            .last_seq(w, conv)?
            .checked_add(1)
            .ok_or(StorageError::Overflow)?;
        let refs = stored_refs(&req, seq, &recipients)?;
        values::encode_message_into(
            &mut run.message,
            req.sender,
            req.client_msg_id,
            req.now_ms,
            &req.sender_device,
            &refs,
            &req.payload,
        )?;
        let large = recipients.len() > self.config.large_group_threshold;
        // Every inbox entry of this append goes to its conversation's partition.
        run.plan.clear();
        for &r in &recipients {
            let pointer = match self.config.diffusion {
                DiffusionMode::Write => true,
                DiffusionMode::Read => false,
                DiffusionMode::Hybrid => !large && self.is_active(w, r, req.now_ms)?,
            };
            if !pointer
                && w.pending_news
                    .peek(&r)
                    .is_some_and(|pending| pending.contains_key(&conv))
            {
                continue;
            }
            let head = self
                .inbox_head(w, r, partition)?
                .checked_add(1)
                .ok_or(StorageError::Overflow)?;
            run.plan.push((r, head, !pointer));
        }

        // Checks passed: add the writes and advance the caches.
        let dedup = DedupEntry {
            seq,
            server_time_ms: req.now_ms,
        };
        let batch = &mut run.batch;
        batch.put(
            Cf::Messages,
            &keys::conversation_u64(conv, seq),
            &run.message,
        );
        batch.put(Cf::Dedup, &dedup_key, &dedup.encode());
        if seq == 1
            && let ConversationKey::Single { lo, hi } = conv
        {
            for u in [lo, hi] {
                batch.put(
                    Cf::UserConversations,
                    &keys::user_conversation(u, conv),
                    &[],
                );
            }
        }
        for &m in &refs.mentions {
            batch.put(Cf::Mentions, &keys::mention(m, conv, seq), &[]);
        }
        for &(r, head, news) in &run.plan {
            let entry = if news {
                InboxEntry::News(conv, seq)
            } else {
                InboxEntry::Pointer(conv, seq)
            };
            batch.put(
                Cf::Inbox,
                &self.partitions.inbox_key(r, partition, head),
                &entry.encode(req.now_ms),
            );
            w.inbox_head.put((r, partition), head);
            if news {
                w.pending_news
                    .get_or_insert_mut(r, PendingNews::default)
                    .insert(conv, head);
            }
        }
        w.last_seq.put(conv, seq);
        w.recent_ids
            .record(req.sender, fp, req.client_msg_id, req.now_ms);
        run.written.insert(dedup_key, dedup);
        run.appended += 1;
        run.inbox_entries += run.plan.len() as u64;
        Ok(AppendOutcome {
            conversation: conv,
            seq,
            server_time_ms: req.now_ms,
            duplicate: false,
            recipients,
            refs,
        })
    }

    /// Where this request's id was stored, if it is a retry inside the dedup window:
    /// this run's own writes first, then the recent-id filter, then (only if the filter
    /// cannot answer) the `dedup` column family.
    fn find_duplicate(
        &self,
        run: &mut Run<'_, K>,
        partition: Partition,
        dedup_key: &[u8; DEDUP_KEY_LEN],
        fp: u64,
        req: &AppendRequest,
    ) -> Result<Option<DedupEntry>, StorageError> {
        let window = self.config.dedup_window_ms;
        let live = |d: &DedupEntry| req.now_ms < d.server_time_ms.saturating_add(window);
        if let Some(d) = run.written.get(dedup_key) {
            return Ok(live(d).then_some(*d));
        }
        // Decided when a fresh database is opened (none), else at the first append (cached
        // after). Asked only when the filter cannot answer, a database whose senders' ids
        // all stay above their ceilings would decide it late, with entries present.
        let w = state_of(&mut run.states, partition)?;
        let before = self.legacy_dedup_before(w, req.now_ms)?;
        if !w.recent_ids.is_loaded(req.sender) {
            self.load_recent_ids(w, partition, &run.written, req.sender, req.now_ms)?;
        }
        if w.recent_ids
            .check(req.sender, fp, req.client_msg_id, req.now_ms)
            == Some(Answer::New)
        {
            return Ok(None);
        }
        let legacy = before > 0 && req.now_ms < before.saturating_add(window);
        Ok(self
            .stored_dedup(
                dedup_key,
                legacy,
                req.sender,
                req.conversation,
                req.client_msg_id,
            )?
            .filter(live))
    }

    /// The server time before which legacy dedup keys may have been written (0: never).
    ///
    /// Decided once per database, at its first append by this version, and kept in `meta`:
    /// a database whose `dedup` column family is empty then never held a legacy key (this
    /// version writes none), so the answer is 0; otherwise legacy keys may exist, all
    /// written before `now_ms`, and they leave the dedup window a window after it. The decision
    /// is written at once, in a write of its own (not synced: if a crash loses it, it is
    /// decided again, later, which only costs reads). Without it every dedup read that misses would read the
    /// legacy key too: for a sender past the recent-id filter's bound, two point reads
    /// per append instead of one.
    fn legacy_dedup_before(&self, w: &mut WriterState, now_ms: u64) -> Result<u64, StorageError> {
        if let Some(t) = w.legacy_dedup_before {
            return Ok(t);
        }
        let t = match self.kv.get(Cf::Meta, keys::META_LEGACY_DEDUP_BEFORE)? {
            Some(v) => keys::decode_u64("legacy dedup horizon", &v)?,
            None => {
                let empty = self
                    .kv
                    .first_key(Cf::Dedup, &[], &keys::prefix_end(&[]))?
                    .is_none();
                let t = if empty { 0 } else { now_ms };
                // A write of its own, not the run's: a run dropped for a refused append
                // must not take the decision with it.
                let mut batch = self.kv.batch();
                batch.put(Cf::Meta, keys::META_LEGACY_DEDUP_BEFORE, &keys::u64_key(t));
                self.kv.write(batch, false)?;
                t
            }
        };
        w.legacy_dedup_before = Some(t);
        Ok(t)
    }

    /// The stored dedup entry for `(sender, c, client_msg_id)`; with `legacy`, also under
    /// the legacy `sender | client_msg_id` key when that one was stored in the same
    /// conversation.
    fn stored_dedup(
        &self,
        dedup_key: &[u8],
        legacy: bool,
        sender: UserId,
        c: ConversationKey,
        client_msg_id: u64,
    ) -> Result<Option<DedupEntry>, StorageError> {
        if let Some(v) = self.kv.get(Cf::Dedup, dedup_key)? {
            return Ok(Some(DedupEntry::decode(&v)?));
        }
        if !legacy {
            return Ok(None);
        }
        match self
            .kv
            .get(Cf::Dedup, &keys::u64_u64(sender.0, client_msg_id))?
        {
            Some(v) => {
                let (stored_in, d) = DedupEntry::decode_legacy(&v)?;
                Ok((stored_in == c).then_some(d))
            }
            None => Ok(None),
        }
    }

    /// Load a sender's stored ids into the recent-id filter: one range scan of its dedup
    /// prefix, at most a few times the per-sender bound (beyond that, or on an entry it
    /// cannot decode, the sender is loaded as incomplete and asks the store for every id
    /// not above its id ceiling). The ceiling is the largest id the scan saw when it saw
    /// them all, else [`Self::dedup_id_ceiling`]'s.
    ///
    /// `written` is the open run's entries, not in the store yet: a sender dropped from
    /// the filter and reloaded inside the run that stored some of its ids gets those
    /// too, in its list and under its ceiling.
    ///
    /// `w` is the writer of `partition`, whose filter is asked only about conversations
    /// of that partition (a retry lands where the original did): only their ids are
    /// listed, so each partition's share of the filter's budget holds its own. The
    /// ceiling counts every conversation's ids — higher than needed, never wrong.
    fn load_recent_ids(
        &self,
        w: &mut WriterState,
        partition: Partition,
        written: &HashMap<[u8; DEDUP_KEY_LEN], DedupEntry>,
        sender: UserId,
        now_ms: u64,
    ) -> Result<(), StorageError> {
        let prefix = keys::u64_key(sender.0);
        let end = keys::prefix_end(&prefix);
        let limit = self
            .config
            .dedup_filter_per_sender
            .saturating_mul(4)
            .max(16);
        let mut entries = Vec::new();
        let mut decodable = true;
        let mut seen = 0usize;
        let mut ceiling = 0u64;
        self.kv.scan(
            Cf::Dedup,
            &prefix,
            &end,
            Direction::Forward,
            limit,
            &mut |k, v| {
                seen += 1;
                let entry = if k.len() == DEDUP_KEY_LEN {
                    keys::decode_dedup(k)
                        .and_then(|(_, c, id)| Ok((c, fingerprint(c, id), DedupEntry::decode(v)?)))
                } else {
                    keys::decode_u64_u64(k).and_then(|(_, id)| {
                        let (c, d) = DedupEntry::decode_legacy(v)?;
                        Ok((c, fingerprint(c, id), d))
                    })
                };
                match entry {
                    Ok((c, fp, d)) if self.partitions.of(c) == partition => {
                        entries.push((fp, d.server_time_ms));
                    }
                    Ok(_) => {}
                    Err(_) => decodable = false,
                }
                // Both key forms end with the id (`sender | conversation | id`, legacy
                // `sender | id`).
                if k.len() >= 16 {
                    ceiling = ceiling.max(keys::be_u64(&k[k.len() - 8..]));
                }
                Ok(true)
            },
        )?;
        let complete = decodable && seen < limit;
        let mut ceiling = if complete {
            Some(ceiling)
        } else {
            self.dedup_id_ceiling(sender)?
        };
        for (k, d) in written {
            if k[..8] == prefix {
                let (_, c, id) = keys::decode_dedup(k)?;
                if self.partitions.of(c) == partition {
                    entries.push((fingerprint(c, id), d.server_time_ms));
                }
                if let Some(ceiling) = &mut ceiling {
                    *ceiling = (*ceiling).max(id);
                }
            }
        }
        w.recent_ids
            .load(sender, entries, complete, ceiling, now_ms);
        Ok(())
    }

    /// The largest client message id `sender` has in the `dedup` column family, found
    /// without reading every entry: keys are `sender | conversation | id`, so each
    /// conversation's largest is its range's last key — two seeks per conversation. `None`
    /// (unknown) past [`MAX_CEILING_CONVERSATIONS`] conversations or on a key of the
    /// legacy `sender | id` form.
    fn dedup_id_ceiling(&self, sender: UserId) -> Result<Option<u64>, StorageError> {
        let prefix = keys::u64_key(sender.0);
        let end = keys::prefix_end(&prefix);
        let mut from = prefix.to_vec();
        let mut ceiling = 0u64;
        for _ in 0..MAX_CEILING_CONVERSATIONS {
            let Some(first) = self.kv.first_key(Cf::Dedup, &from, &end)? else {
                return Ok(Some(ceiling));
            };
            if first.len() != DEDUP_KEY_LEN {
                return Ok(None);
            }
            let conv = &first[..DEDUP_KEY_LEN - 8];
            let conv_end = keys::prefix_end(conv);
            let mut last = None;
            self.kv.scan(
                Cf::Dedup,
                conv,
                &conv_end,
                Direction::Reverse,
                1,
                &mut |k, _| {
                    last =
                        (k.len() == DEDUP_KEY_LEN).then(|| keys::be_u64(&k[DEDUP_KEY_LEN - 8..]));
                    Ok(false)
                },
            )?;
            let Some(last) = last else {
                return Ok(None);
            };
            ceiling = ceiling.max(last);
            from = conv_end;
        }
        Ok(None)
    }

    /// Check the sender may post to `conv` (a member, not muted at `now_ms`) and list
    /// who receives it (sender included).
    fn recipients_for_send(
        &self,
        w: &mut WriterState,
        conv: ConversationKey,
        sender: UserId,
        now_ms: u64,
    ) -> Result<Recipients, StorageError> {
        match conv {
            ConversationKey::Single { lo, hi } => {
                if sender != lo && sender != hi {
                    return Err(StorageError::NotAMember {
                        conversation: conv,
                        user: sender,
                    });
                }
                Ok(if lo == hi {
                    smallvec::smallvec![lo]
                } else {
                    smallvec::smallvec![lo, hi]
                })
            }
            ConversationKey::Group(_) => {
                let members = self.members_of(w, conv)?;
                let Some(role) = members.get(&sender) else {
                    return Err(StorageError::NotAMember {
                        conversation: conv,
                        user: sender,
                    });
                };
                self.check_not_muted(w, conv, sender, *role, now_ms)?;
                Ok(members.keys().copied().collect())
            }
            ConversationKey::PublicAccount(_) => {
                let members = self.members_of(w, conv)?;
                if members.get(&sender) != Some(&Role::Owner) {
                    return Err(StorageError::NotOwner {
                        conversation: conv,
                        user: sender,
                    });
                }
                Ok(members.keys().copied().collect())
            }
        }
    }
}

/// The refs stored with an append of `seq` that `recipients` receive: the reply must
/// name an earlier message; mentions keep only recipients other than the sender, sorted
/// and once each (`recipients` is sorted: a 1:1 pair in order, or a member map's keys).
fn stored_refs(req: &AppendRequest, seq: u64, recipients: &[UserId]) -> Result<Refs, StorageError> {
    if req.refs.reply_to >= seq {
        return Err(StorageError::Invalid(
            "reply_to must be the seq of an earlier message of the conversation",
        ));
    }
    if req.refs.mentions.len() > Refs::MAX_MENTIONS {
        return Err(StorageError::Invalid("more than 100 mentions"));
    }
    let mut mentions: Vec<UserId> = req
        .refs
        .mentions
        .iter()
        .copied()
        .filter(|&m| m != req.sender && recipients.binary_search(&m).is_ok())
        .collect();
    mentions.sort_unstable();
    mentions.dedup();
    Ok(Refs {
        reply_to: req.refs.reply_to,
        mentions,
    })
}
