//! Read and delivery receipts: when a member moves their read position (`MarkRead`,
//! stored) or reports what their device has stored (`MarkDelivered`, never stored) in a
//! 1:1 chat or a group of at most `read_receipt_max_group` members, the other members'
//! online devices get a `ConversationEvent` of kind `READ_RECEIPT` or `DELIVERY_RECEIPT`
//! (actor = the member, seq = the position). A reader's own other devices get `READ` as
//! before (conversation.rs); delivery concerns nobody else of the same user.
//!
//! A 1:1 chat needs no storage: the peer is in the conversation id. A group's member
//! list is a storage read, skipped (no receipt, counted) while the control plane has many
//! storage requests outstanding: receipts are a courtesy, messages come first. The list
//! also proves the reporter a member (a delivery report is not checked by storage).
//! Public accounts have no receipts (followers' reading is the follower's business);
//! chatrooms have no positions.

use petrel_proto::pb;
use petrel_storage::{ConversationKey, Reply, Request, StorageError, UserId};

use super::Control;
use super::pending::{COURTESY_SHED_PENDING, Pending, ReceiptCtx, ReplyTo};
use crate::convert;

/// Which position a receipt reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Receipt {
    /// Read up to (`MarkRead`, stored).
    Read,
    /// Stored on a device up to (`MarkDelivered`, live only).
    Delivered,
}

impl Receipt {
    fn event_kind(self) -> pb::ConversationEventKind {
        match self {
            Receipt::Read => pb::ConversationEventKind::ReadReceipt,
            Receipt::Delivered => pb::ConversationEventKind::DeliveryReceipt,
        }
    }
}

impl Control {
    /// `to.user` read (or has stored) `key` up to `seq`: tell the other members.
    pub(super) fn send_receipts(
        &mut self,
        to: ReplyTo,
        key: ConversationKey,
        seq: u64,
        receipt: Receipt,
    ) {
        match key {
            ConversationKey::Single { .. } => {
                if let Some(peer) = key.peer_of(UserId(to.user)).filter(|p| p.0 != to.user) {
                    self.deliver_receipt(to, key, seq, receipt, [peer.0]);
                }
            }
            ConversationKey::Group(_) if self.config.read_receipt_max_group > 0 => {
                if self.pending.len() >= COURTESY_SHED_PENDING {
                    self.counters.read_receipts_skipped += 1;
                    return;
                }
                self.storage(
                    Request::Members { conversation: key },
                    Pending::Receipt(ReceiptCtx {
                        to,
                        key,
                        seq,
                        receipt,
                    }),
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
        if members.len() > self.config.read_receipt_max_group
            || !members.iter().any(|m| m.user.0 == ctx.to.user)
        {
            // Too large for receipts, or a report from someone who is not a member.
            return;
        }
        let others = members
            .iter()
            .map(|m| m.user.0)
            .filter(|&u| u != ctx.to.user)
            .collect::<Vec<_>>();
        self.deliver_receipt(ctx.to, ctx.key, ctx.seq, ctx.receipt, others);
    }

    fn deliver_receipt(
        &mut self,
        to: ReplyTo,
        key: ConversationKey,
        seq: u64,
        receipt: Receipt,
        audience: impl IntoIterator<Item = u64>,
    ) {
        let mut audience = audience.into_iter().peekable();
        let Some(&viewer) = audience.peek() else {
            return;
        };
        // A group's id is the same for every member; a 1:1 chat has one member to tell.
        let event = pb::ConversationEvent {
            conversation: Some(convert::wire_id(viewer, key)),
            kind: receipt.event_kind() as i32,
            actor: to.user,
            users: vec![to.user],
            role: 0,
            seq,
            until_ms: 0,
        };
        let sent = self.notify(to, audience, event);
        match receipt {
            Receipt::Read => self.counters.read_receipts += sent,
            Receipt::Delivered => self.counters.delivery_receipts += sent,
        }
    }
}
