//! Per-user small state: read cursors, activity timestamps, the token revocation list.

use super::Store;
use crate::cf::Cf;
use crate::error::StorageError;
use crate::keys;
use crate::kv::{Batch, Direction, Kv};
use crate::model::{ConversationKey, ConversationState, RevokedToken, TokenId, UserId};

impl<K: Kv> Store<K> {
    pub(super) fn do_mark_read(
        &self,
        sync: bool,
        user: UserId,
        c: ConversationKey,
        seq: u64,
    ) -> Result<ConversationState, StorageError> {
        self.require_participant(c, user)?;
        let mut w = self.lock_for(c)?;
        let last_seq = self.last_seq(&mut w, c)?;
        let old = self.read_cursor(user, c)?;
        let new = seq.min(last_seq);
        if new > old {
            let mut batch = self.kv.batch();
            batch.put(
                Cf::Cursors,
                &keys::user_conversation(user, c),
                &keys::u64_key(new),
            );
            // The mentions read past are no longer unread.
            self.forget_mentions(&mut batch, user, c, Some(new))?;
            self.commit(batch, sync)?;
        }
        let read_seq = new.max(old);
        let first_seq = self.stored_first_seq(c)?;
        Ok(ConversationState {
            key: c,
            last_seq,
            read_seq,
            first_seq,
            unread_mentions: self.unread_mentions(user, c, read_seq, first_seq)?,
        })
    }

    /// Add to `batch` the deletion of `user`'s mentions in `c` up to seq `up_to`
    /// (inclusive; `None`: all of them) — one range delete, and only when there is one to
    /// delete (a range tombstone per read would slow the counting scans).
    pub(super) fn forget_mentions<'a>(
        &'a self,
        batch: &mut K::Batch<'a>,
        user: UserId,
        c: ConversationKey,
        up_to: Option<u64>,
    ) -> Result<(), StorageError> {
        let start = keys::mention(user, c, 0);
        let end = match up_to {
            Some(seq) => keys::mention(user, c, seq.saturating_add(1)).to_vec(),
            None => keys::prefix_end(&keys::user_conversation(user, c)),
        };
        if self.kv.first_key(Cf::Mentions, &start, &end)?.is_some() {
            batch.delete_range(Cf::Mentions, &start, &end);
        }
        Ok(())
    }

    /// How many messages above `read_seq` (and still stored: from `first_seq` on)
    /// mention `user` in `c`, up to [`ConversationState::MENTIONS_COUNTED`].
    pub(super) fn unread_mentions(
        &self,
        user: UserId,
        c: ConversationKey,
        read_seq: u64,
        first_seq: u64,
    ) -> Result<u32, StorageError> {
        let start = keys::mention(user, c, read_seq.saturating_add(1).max(first_seq));
        let end = keys::prefix_end(&keys::user_conversation(user, c));
        let mut n = 0u32;
        self.kv.scan(
            Cf::Mentions,
            &start,
            &end,
            Direction::Forward,
            ConversationState::MENTIONS_COUNTED as usize,
            &mut |_, _| {
                n += 1;
                Ok(true)
            },
        )?;
        Ok(n)
    }

    pub(super) fn do_touch(
        &self,
        sync: bool,
        user: UserId,
        now_ms: u64,
    ) -> Result<(), StorageError> {
        self.observe_time(now_ms);
        // Activity only moves forward: read, compare and write one user at a time.
        let _touching = Self::lock_plain(&self.touches)?;
        let known = self.stored_activity(user)?.unwrap_or(0);
        if now_ms > known {
            let mut batch = self.kv.batch();
            batch.put(Cf::Activity, &keys::u64_key(user.0), &keys::u64_key(now_ms));
            self.commit(batch, sync)?;
        }
        // Every partition's writer that caches the user sees the new time (the others
        // read it from the database when they need it).
        let latest = now_ms.max(known);
        for p in self.partitions.all() {
            let mut w = self.lock(p)?;
            if let Some(t) = w.activity.peek_mut(&user) {
                *t = latest;
            }
        }
        Ok(())
    }

    pub(super) fn do_revoke(
        &self,
        sync: bool,
        token: TokenId,
        expires_at_ms: u64,
    ) -> Result<(), StorageError> {
        let mut batch = self.kv.batch();
        batch.put(Cf::Revoked, &token.0, &keys::u64_key(expires_at_ms));
        self.commit(batch, sync)
    }

    pub(super) fn do_load_revoked(&self, now_ms: u64) -> Result<Vec<RevokedToken>, StorageError> {
        self.observe_time(now_ms);
        let mut out = Vec::new();
        let end = [0xFFu8; 17];
        self.kv.scan(
            Cf::Revoked,
            &[],
            &end,
            Direction::Forward,
            usize::MAX,
            &mut |k, v| {
                let token = TokenId(keys::exact::<16>("revoked token id", k)?);
                let expires_at_ms = keys::decode_u64("revoked expiry", v)?;
                if expires_at_ms > now_ms {
                    out.push(RevokedToken {
                        token,
                        expires_at_ms,
                    });
                }
                Ok(true)
            },
        )?;
        Ok(out)
    }
}
