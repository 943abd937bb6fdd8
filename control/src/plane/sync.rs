//! `SyncRequest` and `HistoryRequest`: translated to storage requests, and the pages
//! translated back into `SyncResponse` frames from the requesting user's side.
//!
//! A response must fit in one frame (64 KiB body). Storage pages are sized in
//! messages, not bytes, so a page whose encoding would not fit is cut: a sync page keeps
//! the request's inbox position and sets `has_more`, so the client's next request (with
//! its per-conversation cursors advanced past what it got) fetches the rest; a history
//! page keeps its newest messages and sets `has_more`.

use petrel_proto::{Frame, pb};
use petrel_storage::{InboxCursor, Reply, Request, StorageError, SyncRequest, UserId};

use super::Control;
use super::pending::{HistoryCtx, Pending, ReplyTo, SyncCtx};
use crate::convert::{self, Target};
use crate::time::Timestamp;
use petrel_conn::ConnId;

/// Bytes of repeated fields a response may fill: the 64 KiB body limit minus room for
/// the scalar fields.
pub(super) const RESPONSE_BUDGET: usize = 60 * 1024;

/// Encoded size of `m` as one element of a repeated message field.
pub(super) fn repeated_field_len(m: &impl prost::Message) -> usize {
    let len = m.encoded_len();
    1 + prost::length_delimiter_len(len) + len
}

/// An inbox position as the wire carries it: a one-partition database's as the plain
/// `inbox_cursor` number (what clients from before partitions understand), a
/// partitioned one's as 0 and the opaque `inbox_position` token.
fn wire_position(inbox: &InboxCursor) -> (u64, Vec<u8>) {
    match inbox.as_single() {
        Some(n) => (n, Vec::new()),
        None => (0, inbox.to_token()),
    }
}

impl Control {
    pub(super) fn on_sync(&mut self, now: Timestamp, conn: ConnId, rid: u32, req: pb::SyncRequest) {
        let Some(user) = self.session_user(conn) else {
            return;
        };
        let cursors = req
            .cursors
            .iter()
            .filter_map(|c| match convert::target(user, c.conversation.as_ref()) {
                Some(Target::Persisted(key)) => Some((key, c.after_seq)),
                _ => None,
            })
            .collect();
        let limit = match req.limit {
            0 => self.config.sync_page_limit,
            n => n.min(self.config.sync_page_limit),
        };
        let inbox = if req.inbox_position.is_empty() {
            InboxCursor::single(req.inbox_cursor)
        } else {
            match InboxCursor::from_token(&req.inbox_position) {
                Ok(inbox) => inbox,
                Err(why) => {
                    return self.send_error(
                        conn,
                        rid,
                        pb::ErrorCode::InvalidRequest,
                        &why.to_string(),
                        0,
                    );
                }
            }
        };
        self.storage(
            Request::Sync(SyncRequest {
                user: UserId(user),
                inbox: inbox.clone(),
                cursors,
                limit: limit as usize,
                now_ms: now.as_millis(),
            }),
            Pending::Sync(SyncCtx {
                to: ReplyTo { conn, rid, user },
                inbox,
            }),
        );
    }

    pub(super) fn on_history(&mut self, conn: ConnId, rid: u32, req: pb::HistoryRequest) {
        let Some(user) = self.session_user(conn) else {
            return;
        };
        let Some(Target::Persisted(key)) = convert::target(user, req.conversation.as_ref()) else {
            return self.send_error(
                conn,
                rid,
                pb::ErrorCode::InvalidRequest,
                "history exists only for persisted conversations",
                0,
            );
        };
        let limit = match req.limit {
            0 => self.config.history_page_limit,
            n => n.min(self.config.history_page_limit),
        } as usize;
        self.storage(
            Request::History {
                user: UserId(user),
                conversation: key,
                before_seq: if req.before_seq == 0 {
                    u64::MAX
                } else {
                    req.before_seq
                },
                limit,
            },
            Pending::History(HistoryCtx {
                to: ReplyTo { conn, rid, user },
                limit,
            }),
        );
    }

    /// The user of `conn`'s session, if it has one.
    pub(super) fn session_user(&self, conn: ConnId) -> Option<u64> {
        self.registry
            .get(conn)
            .and_then(|c| c.session.as_ref())
            .map(|s| s.user)
    }

    fn storage_failed(&mut self, to: ReplyTo, result: Result<Reply, StorageError>) {
        let (code, message, retry) = match result {
            Err(err) => {
                let (code, internal) = convert::storage_error_code(&err);
                if internal {
                    self.counters.storage_errors += 1;
                }
                (code, err.to_string(), convert::storage_retry_after_ms(&err))
            }
            Ok(_) => {
                self.counters.storage_errors += 1;
                (
                    pb::ErrorCode::Internal,
                    "storage answered with the wrong reply".to_owned(),
                    0,
                )
            }
        };
        self.send_error(to.conn, to.rid, code, &message, retry);
    }

    pub(super) fn on_synced(&mut self, ctx: SyncCtx, result: Result<Reply, StorageError>) {
        let to = ctx.to;
        let page = match result {
            Ok(Reply::Synced(page)) => page,
            other => return self.storage_failed(to, other),
        };
        if self.registry.get(to.conn).is_none() {
            return;
        }
        // The position goes in too, either the page's or (if cut) the request's: leave
        // room for the longer (a partitioned token is about 3 bytes per partition).
        let token_room = 16
            + ctx
                .inbox
                .positions()
                .len()
                .max(page.inbox.positions().len())
                * 10;
        let mut budget = RESPONSE_BUDGET.saturating_sub(token_room);
        let mut cut = false;
        let mut conversations = Vec::with_capacity(page.conversations.len());
        for state in &page.conversations {
            let s = pb::ConversationState {
                conversation: Some(convert::wire_id(to.user, state.key)),
                last_seq: state.last_seq,
                read_seq: state.read_seq,
                first_seq: state.first_seq,
                unread_mentions: state.unread_mentions,
            };
            let len = repeated_field_len(&s);
            if len > budget / 4 {
                cut = true;
                break;
            }
            budget -= len;
            conversations.push(s);
        }
        let mut messages = Vec::with_capacity(page.messages.len());
        for stored in &page.messages {
            let (push, ok) = convert::push_from_stored(to.user, stored);
            if !ok {
                self.counters.storage_errors += 1;
            }
            let len = repeated_field_len(&push);
            if len > budget {
                cut = true;
                break;
            }
            budget -= len;
            messages.push(push);
        }
        // A cut page keeps the request's inbox position: the next request re-examines
        // what was cut.
        let (has_more, inbox) = if cut {
            (true, &ctx.inbox)
        } else {
            (page.has_more, &page.inbox)
        };
        let (inbox_cursor, inbox_position) = wire_position(inbox);
        let response = pb::SyncResponse {
            messages,
            has_more,
            inbox_cursor,
            conversations,
            first_seq: 0,
            inbox_position,
        };
        self.send_frame(to.conn, Frame::response(to.rid, response));
    }

    pub(super) fn on_history_done(&mut self, ctx: HistoryCtx, result: Result<Reply, StorageError>) {
        let page = match result {
            Ok(Reply::History(page)) => page,
            other => return self.storage_failed(ctx.to, other),
        };
        if self.registry.get(ctx.to.conn).is_none() {
            return;
        }
        let messages = page.messages;
        // Storage returns ascending seq; the wire wants newest first. Older messages exist
        // only down to the first seq retention left.
        let mut has_more = (page.cut || messages.len() >= ctx.limit)
            && messages
                .first()
                .is_some_and(|m| m.seq > page.first_seq.max(1));
        let mut budget = RESPONSE_BUDGET;
        let mut out = Vec::with_capacity(messages.len());
        for stored in messages.iter().rev() {
            let (push, ok) = convert::push_from_stored(ctx.to.user, stored);
            if !ok {
                self.counters.storage_errors += 1;
            }
            let len = repeated_field_len(&push);
            if len > budget {
                has_more = true;
                break;
            }
            budget -= len;
            out.push(push);
        }
        self.send_frame(
            ctx.to.conn,
            Frame::response(
                ctx.to.rid,
                pb::SyncResponse {
                    messages: out,
                    has_more,
                    inbox_cursor: 0,
                    conversations: Vec::new(),
                    first_seq: page.first_seq,
                    inbox_position: Vec::new(),
                },
            ),
        );
    }
}
