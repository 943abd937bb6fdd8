//! The [`Engine`] trait for [`Store`]: thin delegation to the per-topic modules
//! (`append`, `groups`, `sync`, `account`), plus the batch and durability methods that
//! the group-commit queue drives.
//!
//! Durability is an argument: a direct call fsyncs per the sync mode
//! (`Store::direct_sync`), a group applied by `apply_batch` leaves the fsync to
//! `make_durable` in `Batch` mode (`Store::group_sync`).

use super::{Store, member_list};
use crate::api::{
    AppendOutcome, AppendRequest, EditOutcome, Engine, HistoryPage, MembershipChange,
    RecallOutcome, Reply, Request, SyncPage, SyncRequest, TrimReport, dispatch, fail_not_durable,
};
use crate::config::SyncMode;
use crate::engine::append::Run;
use crate::error::StorageError;
use crate::kv::Kv;
use crate::model::{
    ConversationKey, ConversationState, Member, RevokedToken, Role, TokenId, UserId,
};
use crate::partition::PartitionSet;

impl<K: Kv> Engine for Store<K> {
    fn append(&self, req: AppendRequest) -> Result<AppendOutcome, StorageError> {
        self.shipped(self.do_append(req))
    }

    fn create_group(
        &self,
        owner: UserId,
        name: &str,
        members: &[UserId],
        now_ms: u64,
    ) -> Result<ConversationKey, StorageError> {
        self.shipped(self.do_create_group(self.direct_sync(), owner, name, members, now_ms))
    }

    fn add_members(
        &self,
        actor: UserId,
        group: u64,
        users: &[UserId],
        now_ms: u64,
    ) -> Result<MembershipChange, StorageError> {
        self.shipped(self.do_add(
            self.direct_sync(),
            actor,
            ConversationKey::Group(group),
            users,
            now_ms,
        ))
    }

    fn remove_members(
        &self,
        actor: UserId,
        group: u64,
        users: &[UserId],
    ) -> Result<MembershipChange, StorageError> {
        self.shipped(self.do_remove(self.direct_sync(), actor, group, users))
    }

    fn leave(&self, user: UserId, group: u64) -> Result<MembershipChange, StorageError> {
        self.shipped(self.do_leave(self.direct_sync(), user, ConversationKey::Group(group)))
    }

    fn set_role(
        &self,
        actor: UserId,
        group: u64,
        user: UserId,
        role: Role,
    ) -> Result<MembershipChange, StorageError> {
        self.shipped(self.do_set_role(self.direct_sync(), actor, group, user, role))
    }

    fn read_count(
        &self,
        user: UserId,
        conversation: ConversationKey,
        seq: u64,
    ) -> Result<(u64, u64), StorageError> {
        self.do_read_count(user, conversation, seq)
    }

    fn edit(
        &self,
        actor: UserId,
        conversation: ConversationKey,
        seq: u64,
        payload: bytes::Bytes,
        window_ms: u64,
        now_ms: u64,
    ) -> Result<EditOutcome, StorageError> {
        self.shipped(self.do_edit(
            self.direct_sync(),
            actor,
            conversation,
            seq,
            payload,
            window_ms,
            now_ms,
        ))
    }

    fn recall(
        &self,
        actor: UserId,
        conversation: ConversationKey,
        seq: u64,
        window_ms: u64,
        now_ms: u64,
    ) -> Result<RecallOutcome, StorageError> {
        self.shipped(self.do_recall(
            self.direct_sync(),
            actor,
            conversation,
            seq,
            window_ms,
            now_ms,
        ))
    }

    fn dissolve(&self, actor: UserId, group: u64) -> Result<MembershipChange, StorageError> {
        self.shipped(self.do_dissolve(self.direct_sync(), actor, group))
    }

    fn mute(
        &self,
        actor: UserId,
        group: u64,
        user: Option<UserId>,
        until_ms: u64,
        now_ms: u64,
    ) -> Result<MembershipChange, StorageError> {
        self.shipped(self.do_mute(self.direct_sync(), actor, group, user, until_ms, now_ms))
    }

    fn create_public_account(
        &self,
        owner: UserId,
        name: &str,
        now_ms: u64,
    ) -> Result<ConversationKey, StorageError> {
        self.shipped(self.do_create_public(self.direct_sync(), owner, name, now_ms))
    }

    fn follow(
        &self,
        user: UserId,
        account: u64,
        now_ms: u64,
    ) -> Result<MembershipChange, StorageError> {
        self.shipped(self.do_add(
            self.direct_sync(),
            user,
            ConversationKey::PublicAccount(account),
            &[user],
            now_ms,
        ))
    }

    fn unfollow(&self, user: UserId, account: u64) -> Result<MembershipChange, StorageError> {
        self.shipped(self.do_leave(
            self.direct_sync(),
            user,
            ConversationKey::PublicAccount(account),
        ))
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
    ) -> Result<HistoryPage, StorageError> {
        self.do_history(user, conversation, before_seq, limit)
    }

    fn mark_read(
        &self,
        user: UserId,
        conversation: ConversationKey,
        seq: u64,
    ) -> Result<ConversationState, StorageError> {
        self.shipped(self.do_mark_read(self.direct_sync(), user, conversation, seq))
    }

    fn touch_activity(&self, user: UserId, now_ms: u64) -> Result<(), StorageError> {
        self.shipped(self.do_touch(self.direct_sync(), user, now_ms))
    }

    fn last_active(&self, user: UserId) -> Result<Option<u64>, StorageError> {
        self.stored_activity(user)
    }

    fn revoke_token(&self, token: TokenId, expires_at_ms: u64) -> Result<(), StorageError> {
        self.shipped(self.do_revoke(self.direct_sync(), token, expires_at_ms))
    }

    fn load_revoked(&self, now_ms: u64) -> Result<Vec<RevokedToken>, StorageError> {
        self.do_load_revoked(now_ms)
    }

    fn trim(&self, now_ms: u64) -> Result<TrimReport, StorageError> {
        self.shipped(self.do_trim(self.direct_sync(), now_ms))
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

    /// Consecutive appends share one `Run` (one backend write); any other request
    /// first writes the run so far, so it sees every earlier write of the group.
    fn apply_batch(&self, mut requests: Vec<Request>) -> Vec<Result<Reply, StorageError>> {
        let mut out = Vec::with_capacity(requests.len());
        self.apply_batch_into(&mut requests, &mut out);
        out
    }

    fn apply_batch_into(
        &self,
        requests: &mut Vec<Request>,
        out: &mut Vec<Result<Reply, StorageError>>,
    ) {
        let sync = self.group_sync();
        // Every run of the group locks the partitions of all the group's appends (in
        // ascending order): for a core that owns them, its own.
        let mut parts = PartitionSet::default();
        for request in requests.iter() {
            if let Request::Append(req) = request {
                parts.insert(self.partitions.of(req.conversation));
            }
        }
        // The open run and the index of its first reply in `out`.
        let mut run: Option<(Run<'_, K>, usize)> = None;
        for request in requests.drain(..) {
            match request {
                Request::Append(req) => {
                    if run.is_none() {
                        match self.begin_run(&parts) {
                            Ok(r) => run = Some((r, out.len())),
                            Err(e) => {
                                out.push(Err(e));
                                continue;
                            }
                        }
                    }
                    if let Some((r, _)) = run.as_mut() {
                        out.push(self.append_in(r, req).map(Reply::Appended));
                    }
                }
                other => {
                    if let Some((r, first)) = run.take() {
                        self.end_run(r, sync, &mut out[first..]);
                    }
                    out.push(self.apply_one(other, sync));
                }
            }
        }
        if let Some((r, first)) = run.take() {
            self.end_run(r, sync, &mut out[first..]);
        }
    }

    fn make_durable(&self) -> Result<(), StorageError> {
        match self.config.sync {
            SyncMode::Batch => self.kv.sync_wal(),
            // Each write fsynced itself (or nothing is fsynced), but a replicated
            // backend still ships the group before it is acknowledged.
            SyncMode::Always | SyncMode::None => self.kv.replicate(),
        }
    }
}

impl<K: Kv> Store<K> {
    /// A direct call's result, once a replicated backend's log holds its write: a
    /// direct call is a group of one, durable when it returns. A log that did not take
    /// it makes the call `Unavailable` (the write is stored here, and shipped first by
    /// the next round).
    fn shipped<T>(&self, result: Result<T, StorageError>) -> Result<T, StorageError> {
        let value = result?;
        if self.direct_sync() {
            self.kv.replicate()?;
        }
        Ok(value)
    }

    /// Write a run; if that fails, every reply it produced becomes the error (a
    /// duplicate answered inside the run may point at a write that never happened).
    fn end_run(&self, run: Run<'_, K>, sync: bool, replies: &mut [Result<Reply, StorageError>]) {
        if let Err(e) = self.finish_run(run, sync) {
            for r in replies.iter_mut().filter(|r| r.is_ok()) {
                *r = Err(e.for_group_writes("group write failed, nothing of it was stored"));
            }
        }
    }

    /// One request that is not an append, inside a group: writes fsync only if `sync`.
    fn apply_one(&self, request: Request, sync: bool) -> Result<Reply, StorageError> {
        Ok(match request {
            Request::CreateGroup {
                owner,
                name,
                members,
                now_ms,
            } => Reply::Created(self.do_create_group(sync, owner, &name, &members, now_ms)?),
            Request::AddMembers {
                actor,
                group,
                users,
                now_ms,
            } => Reply::Membership(self.do_add(
                sync,
                actor,
                ConversationKey::Group(group),
                &users,
                now_ms,
            )?),
            Request::RemoveMembers {
                actor,
                group,
                users,
            } => Reply::Membership(self.do_remove(sync, actor, group, &users)?),
            Request::Leave { user, group } => {
                Reply::Membership(self.do_leave(sync, user, ConversationKey::Group(group))?)
            }
            Request::SetRole {
                actor,
                group,
                user,
                role,
            } => Reply::Membership(self.do_set_role(sync, actor, group, user, role)?),
            Request::ReadCount {
                user,
                conversation,
                seq,
            } => {
                let (read, of) = self.do_read_count(user, conversation, seq)?;
                Reply::ReadCount(read, of)
            }
            Request::Edit {
                actor,
                conversation,
                seq,
                payload,
                window_ms,
                now_ms,
            } => Reply::Edited(self.do_edit(
                sync,
                actor,
                conversation,
                seq,
                payload,
                window_ms,
                now_ms,
            )?),
            Request::Recall {
                actor,
                conversation,
                seq,
                window_ms,
                now_ms,
            } => Reply::Recalled(self.do_recall(
                sync,
                actor,
                conversation,
                seq,
                window_ms,
                now_ms,
            )?),
            Request::Dissolve { actor, group } => {
                Reply::Membership(self.do_dissolve(sync, actor, group)?)
            }
            Request::Mute {
                actor,
                group,
                user,
                until_ms,
                now_ms,
            } => Reply::Membership(self.do_mute(sync, actor, group, user, until_ms, now_ms)?),
            Request::CreatePublicAccount {
                owner,
                name,
                now_ms,
            } => Reply::Created(self.do_create_public(sync, owner, &name, now_ms)?),
            Request::Follow {
                user,
                account,
                now_ms,
            } => Reply::Membership(self.do_add(
                sync,
                user,
                ConversationKey::PublicAccount(account),
                &[user],
                now_ms,
            )?),
            Request::Unfollow { user, account } => Reply::Membership(self.do_leave(
                sync,
                user,
                ConversationKey::PublicAccount(account),
            )?),
            Request::MarkRead {
                user,
                conversation,
                seq,
            } => Reply::State(self.do_mark_read(sync, user, conversation, seq)?),
            Request::TouchActivity { user, now_ms } => {
                self.do_touch(sync, user, now_ms)?;
                Reply::Done
            }
            Request::RevokeToken {
                token,
                expires_at_ms,
            } => {
                self.do_revoke(sync, token, expires_at_ms)?;
                Reply::Done
            }
            Request::Trim { now_ms } => Reply::Trimmed(self.do_trim(sync, now_ms)?),
            read => dispatch(self, read)?,
        })
    }
}
