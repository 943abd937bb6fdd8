//! Editing a message (`Request::Edit`): the sender replaces its content, under the
//! writer lock, within the edit window; the value keeps the original header (seq, time,
//! client id, device) and records when it was edited. History and sync return the latest
//! version; a recalled message cannot be edited.

use bytes::Bytes;

use super::Store;
use crate::api::EditOutcome;
use crate::cf::Cf;
use crate::error::StorageError;
use crate::keys;
use crate::kv::{Batch, Kv};
use crate::model::{ConversationKey, UserId};
use crate::values;

impl<K: Kv> Store<K> {
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
        let mut w = self.lock()?;
        let (recipients, role) = self.participants(&mut w, conv, actor)?;
        if role.is_none() {
            return Err(StorageError::NotAMember {
                conversation: conv,
                user: actor,
            });
        }
        let key = keys::conversation_u64(conv, seq);
        let stored = self.kv.get(Cf::Messages, &key)?;
        let msg = match stored {
            Some(v) => values::decode_message(conv, seq, &v)?,
            None => {
                return Err(StorageError::NoSuchMessage {
                    conversation: conv,
                    seq,
                });
            }
        };
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
        let mut batch = self.kv.batch();
        batch.put(
            Cf::Messages,
            &key,
            &values::encode_edited(&msg, &payload, now_ms)?,
        );
        self.commit(batch, sync)?;
        let mut message = msg;
        message.payload = payload;
        message.edited_at_ms = Some(now_ms);
        Ok(EditOutcome {
            message,
            recipients,
        })
    }
}
