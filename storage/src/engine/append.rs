//! Exactly-once append with read, write or hybrid diffusion — one atomic batch.
//!
//! Performance-critical path: runs once per message under the writer lock. It allocates
//! the encoded message and the recipient list, nothing per recipient besides the cache
//! updates; keys are stack arrays.

use std::sync::atomic::Ordering;

use super::{Store, WriterState};
use crate::api::{AppendOutcome, AppendRequest};
use crate::cf::Cf;
use crate::config::DiffusionMode;
use crate::error::StorageError;
use crate::keys;
use crate::kv::{Batch, Kv};
use crate::model::{ConversationKey, Role, UserId};
use crate::values::{self, DedupEntry, InboxEntry};

impl<K: Kv> Store<K> {
    pub(super) fn do_append(&self, req: AppendRequest) -> Result<AppendOutcome, StorageError> {
        self.observe_time(req.now_ms);
        let mut w = self.lock()?;
        let dedup_key = keys::u64_u64(req.sender.0, req.client_msg_id);
        if let Some(v) = self.kv.get(Cf::Dedup, &dedup_key)? {
            let d = DedupEntry::decode(&v)?;
            let expires = d.server_time_ms.saturating_add(self.config.dedup_window_ms);
            if req.now_ms < expires {
                return Ok(AppendOutcome {
                    conversation: d.conversation,
                    seq: d.seq,
                    server_time_ms: d.server_time_ms,
                    duplicate: true,
                    recipients: Vec::new(),
                });
            }
        }
        let conv = req.conversation;
        let recipients = self.recipients_for_send(&mut w, conv, req.sender)?;
        let seq = self
            .last_seq(&mut w, conv)?
            .checked_add(1)
            .ok_or(StorageError::Overflow)?;

        let mut batch = self.kv.batch();
        let message = values::encode_message(
            req.sender,
            req.client_msg_id,
            req.now_ms,
            &req.sender_device,
            &req.payload,
        )?;
        batch.put(Cf::Messages, &keys::conversation_u64(conv, seq), &message);
        let dedup = DedupEntry {
            conversation: conv,
            seq,
            server_time_ms: req.now_ms,
        };
        batch.put(Cf::Dedup, &dedup_key, &dedup.encode());
        if seq == 1
            && let ConversationKey::Single { lo, hi } = conv
        {
            batch.put(
                Cf::UserConversations,
                &keys::user_conversation(lo, conv),
                &[],
            );
            batch.put(
                Cf::UserConversations,
                &keys::user_conversation(hi, conv),
                &[],
            );
        }

        let large = recipients.len() > self.config.large_group_threshold;
        // (user, inbox seq, is_news): cache updates applied only after the write succeeds.
        let mut entries: Vec<(UserId, u64, bool)> = Vec::with_capacity(recipients.len());
        for &r in &recipients {
            let pointer = match self.config.diffusion {
                DiffusionMode::Write => true,
                DiffusionMode::Read => false,
                DiffusionMode::Hybrid => !large && self.is_active(&mut w, r, req.now_ms)?,
            };
            if !pointer
                && w.pending_news
                    .get(&r)
                    .is_some_and(|pending| pending.contains_key(&conv))
            {
                continue;
            }
            let head = self
                .inbox_head(&mut w, r)?
                .checked_add(1)
                .ok_or(StorageError::Overflow)?;
            let entry = if pointer {
                InboxEntry::Pointer(conv, seq)
            } else {
                InboxEntry::News(conv, seq)
            };
            batch.put(Cf::Inbox, &keys::u64_u64(r.0, head), &entry.encode());
            entries.push((r, head, !pointer));
        }
        let bytes = batch.payload_bytes() as u64;
        self.commit(batch)?;

        w.last_seq.insert(conv, seq);
        for &(r, head, news) in &entries {
            w.inbox_head.insert(r, head);
            if news {
                w.pending_news.entry(r).or_default().insert(conv, head);
            }
        }
        drop(w);
        self.appends.fetch_add(1, Ordering::Relaxed);
        self.append_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.inbox_entries
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        Ok(AppendOutcome {
            conversation: conv,
            seq,
            server_time_ms: req.now_ms,
            duplicate: false,
            recipients,
        })
    }

    /// Check the sender may post to `conv` and list who receives it (sender included).
    fn recipients_for_send(
        &self,
        w: &mut WriterState,
        conv: ConversationKey,
        sender: UserId,
    ) -> Result<Vec<UserId>, StorageError> {
        match conv {
            ConversationKey::Single { lo, hi } => {
                if sender != lo && sender != hi {
                    return Err(StorageError::NotAMember {
                        conversation: conv,
                        user: sender,
                    });
                }
                Ok(if lo == hi { vec![lo] } else { vec![lo, hi] })
            }
            ConversationKey::Group(_) => {
                let members = self.members_of(w, conv)?;
                if !members.contains_key(&sender) {
                    return Err(StorageError::NotAMember {
                        conversation: conv,
                        user: sender,
                    });
                }
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
