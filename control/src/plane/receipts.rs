//! Read receipts: when a member moves their read position in a 1:1 chat or a group of at
//! most `read_receipt_max_group` members, the other members' online devices get a
//! `ConversationEvent` of kind `READ_RECEIPT` (actor = the reader, seq = the new read
//! position). The reader's own other devices get `READ` as before (conversation.rs).
//!
//! A 1:1 chat needs no storage: the peer is in the conversation id. A group's member
//! list is a storage read, skipped (no receipt, counted) while the control plane has many
//! storage requests outstanding: receipts are a courtesy, messages come first. Public
//! accounts have no receipts (followers' reading is the follower's business); chatrooms
//! have no read positions.

use petrel_proto::pb;
use petrel_storage::{ConversationKey, Reply, Request, StorageError, UserId};

use super::Control;
use super::pending::{COURTESY_SHED_PENDING, Pending, ReceiptCtx, ReplyTo};
use crate::convert;

impl Control {
    /// `to.user` read `key` up to `seq` (stored): tell the other members.
    pub(super) fn send_read_receipts(&mut self, to: ReplyTo, key: ConversationKey, seq: u64) {
        match key {
            ConversationKey::Single { .. } => {
                if let Some(peer) = key.peer_of(UserId(to.user)).filter(|p| p.0 != to.user) {
                    self.deliver_receipt(to, key, seq, [peer.0]);
                }
            }
            ConversationKey::Group(_) if self.config.read_receipt_max_group > 0 => {
                if self.pending.len() >= COURTESY_SHED_PENDING {
                    self.counters.read_receipts_skipped += 1;
                    return;
                }
                self.storage(
                    Request::Members { conversation: key },
                    Pending::Receipt(ReceiptCtx { to, key, seq }),
                );
            }
            ConversationKey::Group(_) | ConversationKey::PublicAccount(_) => {}
        }
    }

    /// A group's member list arrived for a receipt.
    pub(super) fn on_receipt_members(
        &mut self,
        ctx: ReceiptCtx,
        result: Result<Reply, StorageError>,
    ) {
        let Ok(Reply::Members(members)) = result else {
            self.counters.read_receipts_skipped += 1;
            return;
        };
        if members.len() > self.config.read_receipt_max_group {
            return;
        }
        let others = members
            .iter()
            .map(|m| m.user.0)
            .filter(|&u| u != ctx.to.user)
            .collect::<Vec<_>>();
        self.deliver_receipt(ctx.to, ctx.key, ctx.seq, others);
    }

    fn deliver_receipt(
        &mut self,
        to: ReplyTo,
        key: ConversationKey,
        seq: u64,
        audience: impl IntoIterator<Item = u64>,
    ) {
        let mut audience = audience.into_iter().peekable();
        let Some(&viewer) = audience.peek() else {
            return;
        };
        // A group's id is the same for every member; a 1:1 chat has one member to tell.
        let event = pb::ConversationEvent {
            conversation: Some(convert::wire_id(viewer, key)),
            kind: pb::ConversationEventKind::ReadReceipt as i32,
            actor: to.user,
            users: vec![to.user],
            role: 0,
            seq,
            until_ms: 0,
        };
        self.counters.read_receipts += self.notify(to, audience, event);
    }
}
