//! Editing a message (`Request::Edit`): the sender replaces its content, under the
//! writer lock, within the edit window; the value keeps the original header (seq, time,
//! client id, device) and records when it was edited. History and sync return the latest
//! version; a recalled message cannot be edited.
//!
//! Also the per-message read count (`Request::ReadCount`), the other question a client
//! asks about one stored message.

use bytes::Bytes;

use super::Store;
use crate::api::{EditOutcome, READ_COUNT_MAX_MEMBERS};
use crate::cf::Cf;
use crate::error::StorageError;
use crate::keys;
use crate::kv::{Batch, Kv};
use crate::model::{ConversationKey, UserId};
use crate::values;

impl<K: Kv> Store<K> {
    /// How many participants other than the sender of `seq` have read it, of how many
    /// (`Request::ReadCount`). The member list is taken under the writer lock; the
    /// cursors are read after it, one point read each.
    pub(super) fn do_read_count(
        &self,
        user: UserId,
        conv: ConversationKey,
        seq: u64,
    ) -> Result<(u64, u64), StorageError> {
        let (participants, _) = {
            let mut w = self.lock_for(conv)?;
            self.participant(&mut w, conv, user)?
        };
        if participants.len() > READ_COUNT_MAX_MEMBERS {
            return Err(StorageError::Invalid(
                "read counts are kept for conversations of at most 10,000 members",
            ));
        }
        let sender = self.stored_message(conv, seq)?.sender;
        let (mut read, mut of) = (0, 0);
        for member in participants.into_iter().filter(|&m| m != sender) {
            of += 1;
            if self.read_cursor(member, conv)? >= seq {
                read += 1;
            }
        }
        Ok((read, of))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn do_edit(
        &self,
        sync: bool,
        actor: UserId,
        conv: ConversationKey,
        seq: u64,
        payload: Bytes,
        window_ms: u64,
        now_ms: u64,
    ) -> Result<EditOutcome, StorageError> {
        self.observe_time(now_ms);
        let mut w = self.lock_for(conv)?;
        let (recipients, role) = self.participant(&mut w, conv, actor)?;
        // A muted member may not get around the mute by editing.
        if matches!(conv, ConversationKey::Group(_)) {
            self.check_not_muted(&mut w, conv, actor, role, now_ms)?;
        }
        let msg = self.stored_message(conv, seq)?;
        if msg.recalled.is_some() {
            return Err(StorageError::NoSuchMessage {
                conversation: conv,
                seq,
            });
        }
        if msg.sender != actor {
            return Err(StorageError::NotAdmin {
                conversation: conv,
                user: actor,
            });
        }
        if now_ms.saturating_sub(msg.server_time_ms) > window_ms {
            return Err(StorageError::TooLate {
                conversation: conv,
                seq,
                action: "edit",
                window_ms,
            });
        }
        let key = keys::conversation_u64(conv, seq);
        let mut batch = self.kv.batch();
        batch.put(
            Cf::Messages,
            &key,
            &values::encode_edited(&msg, &payload, now_ms)?,
        );
        self.commit(batch, sync)?;
        // The previous version is not kept: purged from the files like a recall's.
        self.note_erasure(Cf::Messages, &key);
        let mut message = msg;
        message.payload = payload;
        message.edited_at_ms = Some(now_ms);
        Ok(EditOutcome {
            message,
            recipients,
        })
    }
}
