//! Group mutes: who may not send to a group until when (`Request::Mute`).
//!
//! Stored in [`Cf::Mutes`] as `conversation | user → until_ms`, user 0 standing for the
//! whole group; cached per group in the writer (bounded like the member maps) and checked
//! by every group append under the writer lock, so a send never slips past a mute that
//! was applied before it. A mute whose time has passed simply stops applying; it is
//! deleted when muted again, unmuted, or when its member is removed.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Store, WriterState, groups, member_list};
use crate::api::MembershipChange;
use crate::cf::Cf;
use crate::error::StorageError;
use crate::keys;
use crate::kv::{Batch, Kv};
use crate::model::{ConversationKey, Role, UserId};

/// One group's mutes: user (0 = the whole group) → muted until (ms since the epoch).
pub(crate) type MuteMap = BTreeMap<u64, u64>;

/// The key of the whole-group mute.
const WHOLE_GROUP: u64 = 0;

impl<K: Kv> Store<K> {
    fn stored_mutes(&self, conv: ConversationKey) -> Result<MuteMap, StorageError> {
        let mut map = MuteMap::new();
        self.scan_conversation(Cf::Mutes, conv, |user, v| {
            map.insert(user, keys::decode_u64("mute", v)?);
            Ok(())
        })?;
        Ok(map)
    }

    fn mutes_of(
        &self,
        w: &mut WriterState,
        conv: ConversationKey,
    ) -> Result<Arc<MuteMap>, StorageError> {
        if let Some(m) = w.mutes.get(&conv) {
            return Ok(Arc::clone(m));
        }
        let m = Arc::new(self.stored_mutes(conv)?);
        w.mutes.put(conv, Arc::clone(&m));
        Ok(m)
    }

    /// `Muted` if `sender` (with `role` in `conv`) may not send at `now_ms`.
    pub(super) fn check_not_muted(
        &self,
        w: &mut WriterState,
        conv: ConversationKey,
        sender: UserId,
        role: Role,
        now_ms: u64,
    ) -> Result<(), StorageError> {
        let mutes = self.mutes_of(w, conv)?;
        if mutes.is_empty() {
            return Ok(());
        }
        let own = mutes.get(&sender.0).copied().unwrap_or(0);
        let whole = if role == Role::Member {
            mutes.get(&WHOLE_GROUP).copied().unwrap_or(0)
        } else {
            0
        };
        let until = own.max(whole);
        if until > now_ms {
            return Err(StorageError::Muted {
                conversation: conv,
                user: sender,
                until_ms: until,
                remaining_ms: until - now_ms,
            });
        }
        Ok(())
    }

    pub(super) fn do_mute(
        &self,
        sync: bool,
        actor: UserId,
        group: u64,
        user: Option<UserId>,
        until_ms: u64,
        now_ms: u64,
    ) -> Result<MembershipChange, StorageError> {
        self.observe_time(now_ms);
        let conv = ConversationKey::Group(group);
        let mut w = self.lock_for(conv)?;
        let members = self.members_of(&mut w, conv)?;
        let actor_role = groups::manager_role(&members, conv, actor)?;
        let slot = match user {
            None => WHOLE_GROUP,
            Some(target) => {
                let Some(role) = members.get(&target) else {
                    return Err(StorageError::NotAMember {
                        conversation: conv,
                        user: target,
                    });
                };
                // The removal rules.
                if !groups::may_act_on(actor_role, *role) {
                    return Err(StorageError::Protected {
                        conversation: conv,
                        target,
                    });
                }
                target.0
            }
        };
        let mutes = self.mutes_of(&mut w, conv)?;
        let key = keys::conversation_u64(conv, slot);
        let mut batch = self.kv.batch();
        let mut map = (*mutes).clone();
        if until_ms > now_ms {
            batch.put(Cf::Mutes, &key, &until_ms.to_be_bytes());
            map.insert(slot, until_ms);
        } else {
            batch.delete(Cf::Mutes, &key);
            map.remove(&slot);
        }
        self.commit(batch, sync)?;
        w.mutes.put(conv, Arc::new(map));
        Ok(MembershipChange {
            conversation: conv,
            changed: user.into_iter().collect(),
            members: member_list(&members),
        })
    }
}
