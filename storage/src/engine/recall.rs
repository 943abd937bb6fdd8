//! Recalling a message (`Request::Recall`): the message's value is replaced, under the
//! writer lock, by a tombstone that keeps its header (sender, time, client id, device)
//! and says who recalled it and when; the content bytes are not written again.
//!
//! Rules: the sender within the recall window; a group's owner or admins, and a public
//! account's owner, at any time. A second recall answers the first one again (a retry
//! after a lost answer must not fail).
//!
//! **What "erased" means on disk.** The tombstone shadows the content at once for every
//! reader, and the key is queued ([`Store::take_erasures`]) for the backend's scrubber,
//! which purges the old bytes from its files (RocksDB: a flush and a compaction of that
//! key's range, off the writer): docs/STORAGE.md, "Recall and edit".

use super::{Store, WriterState};
use crate::api::RecallOutcome;
use crate::cf::Cf;
use crate::error::StorageError;
use crate::keys;
use crate::kv::{Batch, Kv};
use crate::model::{ConversationKey, Recall, Role, StoredMessage, UserId};
use crate::values;

impl<K: Kv> Store<K> {
    /// The participants of `conv` now, and `user`'s role among them; `NotAMember` if
    /// `user` is not one. (Recall, edit and read counts ask about one stored message.)
    pub(super) fn participant(
        &self,
        w: &mut WriterState,
        conv: ConversationKey,
        user: UserId,
    ) -> Result<(Vec<UserId>, Role), StorageError> {
        let (participants, role) = match conv {
            ConversationKey::Single { lo, hi } => {
                let role = (user == lo || user == hi).then_some(Role::Member);
                (if lo == hi { vec![lo] } else { vec![lo, hi] }, role)
            }
            _ => {
                let members = self.members_of(w, conv)?;
                let role = members.get(&user).copied();
                (members.keys().copied().collect(), role)
            }
        };
        match role {
            Some(role) => Ok((participants, role)),
            None => Err(StorageError::NotAMember {
                conversation: conv,
                user,
            }),
        }
    }

    /// Message `seq` of `conv` as stored; `NoSuchMessage` if there is none.
    pub(super) fn stored_message(
        &self,
        conv: ConversationKey,
        seq: u64,
    ) -> Result<StoredMessage, StorageError> {
        match self
            .kv
            .get(Cf::Messages, &keys::conversation_u64(conv, seq))?
        {
            Some(value) => Ok(values::decode_message(conv, seq, &value)?),
            None => Err(StorageError::NoSuchMessage {
                conversation: conv,
                seq,
            }),
        }
    }

    pub(super) fn do_recall(
        &self,
        sync: bool,
        actor: UserId,
        conv: ConversationKey,
        seq: u64,
        window_ms: u64,
        now_ms: u64,
    ) -> Result<RecallOutcome, StorageError> {
        self.observe_time(now_ms);
        let mut w = self.lock_for(conv)?;
        let (recipients, role) = self.participant(&mut w, conv, actor)?;
        let msg = self.stored_message(conv, seq)?;
        let outcome = |recall| RecallOutcome {
            conversation: conv,
            seq,
            sender: msg.sender,
            recall,
            recipients: recipients.clone(),
        };
        let moderator = !matches!(conv, ConversationKey::Single { .. })
            && matches!(role, Role::Owner | Role::Admin);
        if !moderator && msg.sender != actor {
            return Err(StorageError::NotAdmin {
                conversation: conv,
                user: actor,
            });
        }
        // A retry (the answer was lost) gets the first recall, even past the window.
        if let Some(earlier) = msg.recalled {
            return Ok(outcome(earlier));
        }
        if !moderator && now_ms.saturating_sub(msg.server_time_ms) > window_ms {
            return Err(StorageError::TooLate {
                conversation: conv,
                seq,
                action: "recall",
                window_ms,
            });
        }
        let recall = Recall {
            by: actor,
            at_ms: now_ms,
        };
        let key = keys::conversation_u64(conv, seq);
        let mut batch = self.kv.batch();
        batch.put(Cf::Messages, &key, &values::encode_recalled(&msg, recall)?);
        // A recall takes the mentions with the content: no longer counted as unread.
        for &m in &msg.refs.mentions {
            batch.delete(Cf::Mentions, &keys::mention(m, conv, seq));
        }
        self.commit(batch, sync)?;
        self.note_erasure(Cf::Messages, &key);
        Ok(outcome(recall))
    }
}
