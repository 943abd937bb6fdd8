//! The [`Engine`] trait for [`Store`]: thin delegation to the per-topic modules
//! (`append`, `groups`, `sync`, `account`), plus the batch and durability methods that
//! the group-commit queue drives.

use super::{DeferGuard, Store, member_list};
use crate::api::{
    AppendOutcome, AppendRequest, Engine, MembershipChange, Reply, Request, SyncPage, SyncRequest,
    dispatch, fail_not_durable,
};
use crate::config::SyncMode;
use crate::error::StorageError;
use crate::kv::Kv;
use crate::model::{
    ConversationKey, ConversationState, Member, RevokedToken, Role, StoredMessage, TokenId, UserId,
};

impl<K: Kv> Engine for Store<K> {
    fn append(&self, req: AppendRequest) -> Result<AppendOutcome, StorageError> {
        self.do_append(req)
    }

    fn create_group(
        &self,
        owner: UserId,
        name: &str,
        members: &[UserId],
        now_ms: u64,
    ) -> Result<ConversationKey, StorageError> {
        self.do_create_group(owner, name, members, now_ms)
    }

    fn add_members(
        &self,
        actor: UserId,
        group: u64,
        users: &[UserId],
        now_ms: u64,
    ) -> Result<MembershipChange, StorageError> {
        self.do_add(actor, ConversationKey::Group(group), users, now_ms)
    }

    fn remove_members(
        &self,
        actor: UserId,
        group: u64,
        users: &[UserId],
    ) -> Result<MembershipChange, StorageError> {
        self.do_remove(actor, group, users)
    }

    fn leave(&self, user: UserId, group: u64) -> Result<MembershipChange, StorageError> {
        self.do_leave(user, ConversationKey::Group(group))
    }

    fn set_role(
        &self,
        actor: UserId,
        group: u64,
        user: UserId,
        role: Role,
    ) -> Result<MembershipChange, StorageError> {
        self.do_set_role(actor, group, user, role)
    }

    fn create_public_account(
        &self,
        owner: UserId,
        name: &str,
        now_ms: u64,
    ) -> Result<ConversationKey, StorageError> {
        self.do_create_public(owner, name, now_ms)
    }

    fn follow(
        &self,
        user: UserId,
        account: u64,
        now_ms: u64,
    ) -> Result<MembershipChange, StorageError> {
        self.do_add(
            user,
            ConversationKey::PublicAccount(account),
            &[user],
            now_ms,
        )
    }

    fn unfollow(&self, user: UserId, account: u64) -> Result<MembershipChange, StorageError> {
        self.do_leave(user, ConversationKey::PublicAccount(account))
    }

    fn members(&self, conversation: ConversationKey) -> Result<Vec<Member>, StorageError> {
        match conversation {
            ConversationKey::Single { lo, hi } => {
                let mut v = vec![Member {
                    user: lo,
                    role: Role::Member,
                }];
                if hi != lo {
                    v.push(Member {
                        user: hi,
                        role: Role::Member,
                    });
                }
                Ok(v)
            }
            c => Ok(member_list(&self.stored_members(c)?)),
        }
    }

    fn role_of(
        &self,
        conversation: ConversationKey,
        user: UserId,
    ) -> Result<Option<Role>, StorageError> {
        self.stored_role(conversation, user)
    }

    fn conversations_of(&self, user: UserId) -> Result<Vec<ConversationKey>, StorageError> {
        self.do_conversations_of(user)
    }

    fn sync(&self, req: &SyncRequest) -> Result<SyncPage, StorageError> {
        self.do_sync(req)
    }

    fn history(
        &self,
        user: UserId,
        conversation: ConversationKey,
        before_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StorageError> {
        self.do_history(user, conversation, before_seq, limit)
    }

    fn mark_read(
        &self,
        user: UserId,
        conversation: ConversationKey,
        seq: u64,
    ) -> Result<ConversationState, StorageError> {
        self.do_mark_read(user, conversation, seq)
    }

    fn touch_activity(&self, user: UserId, now_ms: u64) -> Result<(), StorageError> {
        self.do_touch(user, now_ms)
    }

    fn last_active(&self, user: UserId) -> Result<Option<u64>, StorageError> {
        self.stored_activity(user)
    }

    fn revoke_token(&self, token: TokenId, expires_at_ms: u64) -> Result<(), StorageError> {
        self.do_revoke(token, expires_at_ms)
    }

    fn load_revoked(&self, now_ms: u64) -> Result<Vec<RevokedToken>, StorageError> {
        self.do_load_revoked(now_ms)
    }

    fn execute_batch(&self, requests: Vec<Request>) -> Vec<Result<Reply, StorageError>> {
        let writes: Vec<bool> = requests.iter().map(Request::is_write).collect();
        let mut out = self.apply_batch(requests);
        let wrote = writes.iter().zip(&out).any(|(w, r)| *w && r.is_ok());
        if wrote && let Err(e) = self.make_durable() {
            fail_not_durable(&writes, &mut out, &e);
        }
        out
    }

    fn apply_batch(&self, requests: Vec<Request>) -> Vec<Result<Reply, StorageError>> {
        let _guard = (self.config.sync == SyncMode::Batch).then(DeferGuard::set);
        requests.into_iter().map(|r| dispatch(self, r)).collect()
    }

    fn make_durable(&self) -> Result<(), StorageError> {
        match self.config.sync {
            SyncMode::Batch => self.kv.sync_wal(),
            SyncMode::Always | SyncMode::None => Ok(()),
        }
    }
}
