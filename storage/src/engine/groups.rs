//! Groups and public accounts: creation, membership and role rules.
//!
//! Rules (checked under the writer lock, atomically with the write):
//! - only the owner or an admin adds or removes members;
//! - an admin removes plain members only (never the owner or another admin);
//! - nobody removes the owner, and the owner cannot leave: ownership must be transferred
//!   first with `SetRole { role: Owner }` (the old owner becomes an admin);
//! - only the owner sets roles;
//! - anyone may follow a public account; its owner cannot unfollow.
//!
//! A member who joins a conversation that already has messages gets a news marker, so
//! every device pulls the timeline (new devices get it anyway: they read every
//! conversation from the start).

use std::sync::Arc;

use super::{Ids, MemberMap, PendingNews, Store, WriterState, member_list};
use crate::api::MembershipChange;
use crate::cf::Cf;
use crate::error::StorageError;
use crate::keys;
use crate::kv::{Batch, Direction, Kv};
use crate::model::{ConversationKey, Role, UserId};
use crate::values::{self, ConversationInfo, InboxEntry};

/// The role of `actor` in `conv` if it may manage members (owner or admin); otherwise
/// `NotAMember` or `NotAdmin`. One check for adding and removing members.
pub(super) fn manager_role(
    members: &MemberMap,
    conv: ConversationKey,
    actor: UserId,
) -> Result<Role, StorageError> {
    match members.get(&actor) {
        None => Err(StorageError::NotAMember {
            conversation: conv,
            user: actor,
        }),
        Some(Role::Member) => Err(StorageError::NotAdmin {
            conversation: conv,
            user: actor,
        }),
        Some(role) => Ok(*role),
    }
}

/// `NotAMember` or `NotOwner` unless `actor` owns `conv`: the check of setting roles
/// and dissolving.
fn require_owner(
    members: &MemberMap,
    conv: ConversationKey,
    actor: UserId,
) -> Result<(), StorageError> {
    match members.get(&actor) {
        Some(Role::Owner) => Ok(()),
        Some(_) => Err(StorageError::NotOwner {
            conversation: conv,
            user: actor,
        }),
        None => Err(StorageError::NotAMember {
            conversation: conv,
            user: actor,
        }),
    }
}

/// Whether a manager with `actor` role may act on a member with `target` role (remove
/// or mute them): the owner on anyone but the owner, an admin on plain members only.
pub(super) fn may_act_on(actor: Role, target: Role) -> bool {
    match actor {
        Role::Owner => target != Role::Owner,
        _ => target == Role::Member,
    }
}

impl<K: Kv> Store<K> {
    /// Allocate the next group or public-account id (persisted in the same batch).
    fn next_id(&self, ids: &mut Ids, group: bool) -> Result<u64, StorageError> {
        let (slot, meta_key) = if group {
            (&mut ids.last_group, keys::META_LAST_GROUP)
        } else {
            (&mut ids.last_public, keys::META_LAST_PUBLIC)
        };
        let last = match slot {
            Some(v) => *v,
            None => match self.kv.get(Cf::Meta, meta_key)? {
                Some(v) => keys::decode_u64("id counter", &v)?,
                None => 0,
            },
        };
        *slot = Some(last);
        let mut id = last.checked_add(1).ok_or(StorageError::Overflow)?;
        if let Some(owned) = &self.config.new_ids_in {
            // An empty set would never end: it allocates anywhere instead.
            if owned.iter().next().is_some() {
                while !owned.contains(self.partitions.of(ConversationKey::Group(id))) {
                    id = id.checked_add(1).ok_or(StorageError::Overflow)?;
                }
            }
        }
        Ok(id)
    }

    fn create(
        &self,
        sync: bool,
        group: bool,
        owner: UserId,
        name: &str,
        members: &[UserId],
        now_ms: u64,
    ) -> Result<ConversationKey, StorageError> {
        // The allocator first, then the new conversation's partition.
        let mut ids = Self::lock_plain(&self.ids)?;
        let id = self.next_id(&mut ids, group)?;
        let (conv, meta_key) = if group {
            (ConversationKey::Group(id), keys::META_LAST_GROUP)
        } else {
            (ConversationKey::PublicAccount(id), keys::META_LAST_PUBLIC)
        };
        let mut w = self.lock_for(conv)?;
        let mut map = MemberMap::new();
        map.insert(owner, Role::Owner);
        for m in members {
            map.entry(*m).or_insert(Role::Member);
        }
        let mut batch = self.kv.batch();
        batch.put(Cf::Meta, meta_key, &keys::u64_key(id));
        let info = ConversationInfo {
            owner,
            created_ms: now_ms,
            name: name.to_owned(),
        };
        batch.put(Cf::Conversations, &keys::conversation(conv), &info.encode());
        for (user, role) in &map {
            batch.put(
                Cf::Members,
                &keys::conversation_u64(conv, user.0),
                &values::encode_role(*role),
            );
            batch.put(
                Cf::UserConversations,
                &keys::user_conversation(*user, conv),
                &[],
            );
        }
        self.commit(batch, sync)?;
        if group {
            ids.last_group = Some(id);
        } else {
            ids.last_public = Some(id);
        }
        w.last_seq.put(conv, 0);
        w.members.put(conv, Arc::new(map));
        Ok(conv)
    }

    pub(super) fn do_create_group(
        &self,
        sync: bool,
        owner: UserId,
        name: &str,
        members: &[UserId],
        now_ms: u64,
    ) -> Result<ConversationKey, StorageError> {
        self.create(sync, true, owner, name, members, now_ms)
    }

    pub(super) fn do_create_public(
        &self,
        sync: bool,
        owner: UserId,
        name: &str,
        now_ms: u64,
    ) -> Result<ConversationKey, StorageError> {
        self.create(sync, false, owner, name, &[], now_ms)
    }

    /// Add members to a group (actor must be owner/admin) or a follower to a public
    /// account (actor is the follower).
    pub(super) fn do_add(
        &self,
        sync: bool,
        actor: UserId,
        conv: ConversationKey,
        users: &[UserId],
        now_ms: u64,
    ) -> Result<MembershipChange, StorageError> {
        let mut w = self.lock_for(conv)?;
        let members = self.members_of(&mut w, conv)?;
        if let ConversationKey::Group(_) = conv {
            manager_role(&members, conv, actor)?;
        }
        let mut added: Vec<UserId> = users
            .iter()
            .copied()
            .filter(|u| !members.contains_key(u))
            .collect();
        added.sort_unstable();
        added.dedup();
        if added.is_empty() {
            return Ok(MembershipChange {
                conversation: conv,
                changed: added,
                members: member_list(&members),
            });
        }
        let last = self.last_seq(&mut w, conv)?;
        let partition = self.partitions.of(conv);
        let mut batch = self.kv.batch();
        let mut markers = Vec::new();
        for u in &added {
            batch.put(
                Cf::Members,
                &keys::conversation_u64(conv, u.0),
                &values::encode_role(Role::Member),
            );
            batch.put(
                Cf::UserConversations,
                &keys::user_conversation(*u, conv),
                &[],
            );
            if last > 0 {
                let head = self
                    .inbox_head(&mut w, *u, partition)?
                    .checked_add(1)
                    .ok_or(StorageError::Overflow)?;
                batch.put(
                    Cf::Inbox,
                    &self.partitions.inbox_key(*u, partition, head),
                    &InboxEntry::News(conv, last).encode(now_ms),
                );
                markers.push((*u, head));
            }
        }
        self.commit(batch, sync)?;
        let mut map = (*members).clone();
        for u in &added {
            map.insert(*u, Role::Member);
        }
        for (u, head) in markers {
            w.inbox_head.put((u, partition), head);
            w.pending_news
                .get_or_insert_mut(u, PendingNews::default)
                .insert(conv, head);
        }
        let list = member_list(&map);
        w.members.put(conv, Arc::new(map));
        w.mutes.pop(&conv);
        Ok(MembershipChange {
            conversation: conv,
            changed: added,
            members: list,
        })
    }

    pub(super) fn do_remove(
        &self,
        sync: bool,
        actor: UserId,
        group: u64,
        users: &[UserId],
    ) -> Result<MembershipChange, StorageError> {
        let conv = ConversationKey::Group(group);
        let mut w = self.lock_for(conv)?;
        let members = self.members_of(&mut w, conv)?;
        let actor_role = manager_role(&members, conv, actor)?;
        let mut removed = Vec::new();
        for u in users {
            let Some(role) = members.get(u) else { continue };
            if !may_act_on(actor_role, *role) {
                return Err(StorageError::Protected {
                    conversation: conv,
                    target: *u,
                });
            }
            removed.push(*u);
        }
        removed.sort_unstable();
        removed.dedup();
        self.write_removal(sync, &mut w, conv, &members, removed)
    }

    /// Leave a group or unfollow a public account (owners cannot).
    pub(super) fn do_leave(
        &self,
        sync: bool,
        user: UserId,
        conv: ConversationKey,
    ) -> Result<MembershipChange, StorageError> {
        let mut w = self.lock_for(conv)?;
        let members = self.members_of(&mut w, conv)?;
        match members.get(&user) {
            None => Err(StorageError::NotAMember {
                conversation: conv,
                user,
            }),
            Some(Role::Owner) => Err(StorageError::Protected {
                conversation: conv,
                target: user,
            }),
            Some(_) => self.write_removal(sync, &mut w, conv, &members, vec![user]),
        }
    }

    fn write_removal(
        &self,
        sync: bool,
        w: &mut WriterState,
        conv: ConversationKey,
        members: &Arc<MemberMap>,
        removed: Vec<UserId>,
    ) -> Result<MembershipChange, StorageError> {
        if removed.is_empty() {
            return Ok(MembershipChange {
                conversation: conv,
                changed: removed,
                members: member_list(members),
            });
        }
        let mut batch = self.kv.batch();
        for u in &removed {
            batch.delete(Cf::Mutes, &keys::conversation_u64(conv, u.0));
            batch.delete(Cf::Members, &keys::conversation_u64(conv, u.0));
            batch.delete(Cf::UserConversations, &keys::user_conversation(*u, conv));
            batch.delete(Cf::Cursors, &keys::user_conversation(*u, conv));
            // With the read position gone, old mentions must not count again on rejoin.
            self.forget_mentions(&mut batch, *u, conv, None)?;
        }
        self.commit(batch, sync)?;
        let mut map = (**members).clone();
        for u in &removed {
            map.remove(u);
            if let Some(p) = w.pending_news.get_mut(u) {
                p.remove(&conv);
            }
        }
        let list = member_list(&map);
        w.members.put(conv, Arc::new(map));
        Ok(MembershipChange {
            conversation: conv,
            changed: removed,
            members: list,
        })
    }

    /// Dissolve a group (owner only; see `Request::Dissolve`).
    pub(super) fn do_dissolve(
        &self,
        sync: bool,
        actor: UserId,
        group: u64,
    ) -> Result<MembershipChange, StorageError> {
        let conv = ConversationKey::Group(group);
        let mut w = self.lock_for(conv)?;
        let members = self.members_of(&mut w, conv)?;
        require_owner(&members, conv, actor)?;
        let prefix = keys::conversation(conv);
        let end = keys::prefix_end(&prefix);
        let mut batch = self.kv.batch();
        for u in members.keys() {
            batch.delete(Cf::Members, &keys::conversation_u64(conv, u.0));
            batch.delete(Cf::UserConversations, &keys::user_conversation(*u, conv));
            batch.delete(Cf::Cursors, &keys::user_conversation(*u, conv));
            self.forget_mentions(&mut batch, *u, conv, None)?;
        }
        batch.delete_range(Cf::Mutes, &prefix, &end);
        batch.delete_range(Cf::Messages, &prefix, &end);
        batch.delete(Cf::Conversations, &prefix);
        self.commit(batch, sync)?;
        for u in members.keys() {
            if let Some(p) = w.pending_news.get_mut(u) {
                p.remove(&conv);
            }
        }
        w.members.pop(&conv);
        w.mutes.pop(&conv);
        w.last_seq.pop(&conv);
        Ok(MembershipChange {
            conversation: conv,
            changed: members.keys().copied().collect(),
            members: Vec::new(),
        })
    }

    pub(super) fn do_set_role(
        &self,
        sync: bool,
        actor: UserId,
        group: u64,
        user: UserId,
        role: Role,
    ) -> Result<MembershipChange, StorageError> {
        let conv = ConversationKey::Group(group);
        let mut w = self.lock_for(conv)?;
        let members = self.members_of(&mut w, conv)?;
        require_owner(&members, conv, actor)?;
        let Some(current) = members.get(&user).copied() else {
            return Err(StorageError::NotAMember {
                conversation: conv,
                user,
            });
        };
        let mut changes: Vec<(UserId, Role)> = Vec::new();
        if user == actor {
            if role != Role::Owner {
                return Err(StorageError::Protected {
                    conversation: conv,
                    target: user,
                });
            }
        } else if role == Role::Owner {
            changes.push((user, Role::Owner));
            changes.push((actor, Role::Admin));
        } else if current != role {
            changes.push((user, role));
        }
        let mut map = (*members).clone();
        if !changes.is_empty() {
            let mut batch = self.kv.batch();
            for (u, r) in &changes {
                batch.put(
                    Cf::Members,
                    &keys::conversation_u64(conv, u.0),
                    &values::encode_role(*r),
                );
            }
            self.commit(batch, sync)?;
            for (u, r) in &changes {
                map.insert(*u, *r);
            }
        }
        let list = member_list(&map);
        w.members.put(conv, Arc::new(map));
        Ok(MembershipChange {
            conversation: conv,
            changed: changes.into_iter().map(|(u, _)| u).collect(),
            members: list,
        })
    }

    pub(super) fn do_conversations_of(
        &self,
        user: UserId,
    ) -> Result<Vec<ConversationKey>, StorageError> {
        let prefix = keys::u64_key(user.0);
        let end = keys::prefix_end(&prefix);
        let mut out = Vec::new();
        self.kv.scan(
            Cf::UserConversations,
            &prefix,
            &end,
            Direction::Forward,
            usize::MAX,
            &mut |k, _| {
                out.push(keys::decode_user_conversation(k)?.1);
                Ok(true)
            },
        )?;
        Ok(out)
    }
}
