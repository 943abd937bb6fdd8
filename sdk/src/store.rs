//! The local store: conversations, messages, cursors and the outbox, in SQLite.
//!
//! Tables (ids are stored as SQLite integers; u64 values are kept bit-for-bit as i64):
//! - `conversations(kind, id, delivered_seq, last_seq, read_seq)` — `delivered_seq` is the
//!   cursor: every message up to it has been stored **and** handed to the app. It is what
//!   the SDK sends in `SyncRequest.cursors` after every (re)connect.
//! - `messages(kind, id, seq, sender, sender_device, client_msg_id, server_time_ms,
//!   content, own)` — one row per persisted message, primary key `(kind, id, seq)`, so a
//!   message that arrives twice (push and sync, or a resend's duplicate ack) is stored once.
//!   `own` marks messages this device sent (the app learns of those through acks).
//!   `reply_to`, `mentions` (user ids, 8 bytes big-endian each) and `mentions_me` keep a
//!   message's replies and mentions; `mentions_me` above the read position is the
//!   conversation's unread-mention count.
//! - `outbox(pos, client_msg_id, kind, id, content, reply_to, mentions)` — sends not yet
//!   acknowledged, in send order. A send leaves the outbox when its ack arrives, or when a sync shows the
//!   server already has it.
//! - `meta(key, value)` — the inbox cursor and position, and the login attempt counter.
//!
//! Delivery rule: after any insert the store "drains" a conversation — it hands out the
//! messages at `delivered_seq + 1, + 2, …` while they are present, and advances the
//! cursor. A message beyond a hole waits (and the caller syncs); so the app sees each
//! message once, in seq order. A hole that a complete sync cannot fill (e.g. a group
//! joined late, whose early messages this user may not read) is skipped by
//! [`Store::skip_unfillable_gaps`].
//!
//! Chatroom messages are online-only and never stored; a chatroom message pushed twice
//! (a resend after a lost ack) is shown once ([`crate::room_seen`]).

use std::path::Path;

use petrel_proto::pb;
use prost::Message as _;

use crate::room_seen::RoomSeen;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::error::SdkError;
use crate::event::{ConversationKey, Message, Recalled};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS conversations (
    kind INTEGER NOT NULL,
    id INTEGER NOT NULL,
    delivered_seq INTEGER NOT NULL DEFAULT 0,
    last_seq INTEGER NOT NULL DEFAULT 0,
    read_seq INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, id)
);
CREATE TABLE IF NOT EXISTS messages (
    kind INTEGER NOT NULL,
    id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    sender INTEGER NOT NULL,
    sender_device TEXT NOT NULL,
    client_msg_id INTEGER NOT NULL,
    server_time_ms INTEGER NOT NULL,
    content BLOB NOT NULL,
    own INTEGER NOT NULL,
    recalled_by INTEGER NOT NULL DEFAULT 0,
    recalled_at_ms INTEGER NOT NULL DEFAULT 0,
    edited_at_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, id, seq)
);
CREATE TABLE IF NOT EXISTS outbox (
    pos INTEGER PRIMARY KEY AUTOINCREMENT,
    client_msg_id INTEGER NOT NULL UNIQUE,
    kind INTEGER NOT NULL,
    id INTEGER NOT NULL,
    content BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
";

/// One queued send.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    /// The id the server dedups on.
    pub client_msg_id: u64,
    /// Where it goes.
    pub conversation: ConversationKey,
    /// What it says.
    pub content: pb::Content,
    /// What it replies to and whom it mentions.
    pub refs: Refs,
}

/// What a message replies to (a seq of the same conversation, 0: none) and whom it
/// mentions ([`crate::Client::send_with`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refs {
    /// The quoted message's seq (0: none).
    pub reply_to: u64,
    /// Mentioned users (at most 100; the server keeps the conversation's members).
    pub mentions: Vec<u64>,
}

/// Mentions as stored: 8 bytes big-endian per user.
fn mentions_blob(mentions: &[u64]) -> Vec<u8> {
    mentions.iter().flat_map(|m| m.to_be_bytes()).collect()
}

/// The users of a stored mentions blob (a torn tail is ignored).
fn mentions_of(blob: &[u8]) -> Vec<u64> {
    blob.chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
        .collect()
}

/// A conversation in the conversation list.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationSummary {
    /// Which conversation.
    pub conversation: ConversationKey,
    /// Highest seq known (stored locally or announced by the server).
    pub last_seq: u64,
    /// Highest seq this user has read.
    pub read_seq: u64,
    /// Messages from others above `read_seq` in the local store.
    pub unread: u64,
    /// Of those, the ones that mention this user.
    pub unread_mentions: u64,
    /// The newest stored message, for a preview.
    pub last_message: Option<Message>,
}

/// What applying server input changed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Applied {
    /// Messages now deliverable to the app, per conversation in seq order.
    pub deliver: Vec<Message>,
    /// Sends that left the outbox: (client message id, conversation, seq).
    pub acked: Vec<(u64, ConversationKey, u64)>,
    /// A message arrived beyond a hole: the caller should sync.
    pub gap: bool,
    /// Ranges `(conversation, from_seq, to_seq)` the server no longer stores (removed by
    /// its retention before this device got them): delivery skipped past them.
    pub gone: Vec<(ConversationKey, u64, u64)>,
    /// Messages stored that were not stored before.
    pub inserted: usize,
    /// Stored messages found recalled (a sync brought their recalled version).
    pub recalled: Vec<(ConversationKey, u64, Recalled)>,
    /// Stored messages whose newer edited version arrived (a push or a sync).
    pub edited: Vec<Message>,
    /// Conversations whose delivered position moved: every message up to the seq is
    /// stored and handed out (what a delivery receipt reports).
    pub advanced: Vec<(ConversationKey, u64)>,
}

/// The SQLite-backed local store of one user on one device.
pub struct Store {
    conn: Connection,
    user_id: u64,
    device_id: String,
    /// Chatroom messages shown lately (they are not stored, so not deduplicated by seq).
    rooms_seen: RoomSeen,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

fn i(v: u64) -> i64 {
    v as i64
}

fn u(v: i64) -> u64 {
    v as u64
}

fn kind_of(v: i64) -> Result<pb::ConversationKind, SdkError> {
    i32::try_from(v)
        .ok()
        .and_then(|k| pb::ConversationKind::try_from(k).ok())
        .ok_or_else(|| SdkError::CorruptRow(format!("conversation kind {v}")))
}

fn decode_content(blob: &[u8]) -> Result<pb::Content, SdkError> {
    pb::Content::decode(blob).map_err(|e| SdkError::CorruptRow(format!("message content: {e}")))
}

const MESSAGE_COLUMNS: &str = "kind, id, seq, sender, sender_device, client_msg_id, \
     server_time_ms, content, recalled_by, recalled_at_ms, edited_at_ms, reply_to, mentions";

/// The columns of [`MESSAGE_COLUMNS`], in order.
struct MessageRow(
    i64,
    i64,
    i64,
    i64,
    String,
    i64,
    i64,
    Vec<u8>,
    i64,
    i64,
    i64,
    i64,
    Vec<u8>,
);

fn read_message_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<MessageRow> {
    Ok(MessageRow(
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
        row.get(8)?,
        row.get(9)?,
        row.get(10)?,
        row.get(11)?,
        row.get(12)?,
    ))
}

fn message_from_row(r: MessageRow) -> Result<Message, SdkError> {
    Ok(Message {
        conversation: ConversationKey {
            kind: kind_of(r.0)?,
            id: u(r.1),
        },
        seq: u(r.2),
        sender: u(r.3),
        sender_device: r.4,
        client_msg_id: u(r.5),
        server_time_ms: u(r.6),
        content: decode_content(&r.7)?,
        recalled: (r.8 != 0).then_some(Recalled {
            by: u(r.8),
            at_ms: u(r.9),
        }),
        edited_at_ms: (r.10 != 0).then_some(u(r.10)),
        reply_to: (r.11 != 0).then_some(u(r.11)),
        mentions: mentions_of(&r.12),
    })
}

/// Stores made before recalls, edits, replies and mentions existed get their columns
/// (SQLite adds them with their defaults: not recalled, never edited, no reply, no
/// mention).
fn add_later_columns(conn: &Connection) -> Result<(), SdkError> {
    const COLUMNS: [(&str, &str, &str); 8] = [
        ("messages", "recalled_by", "INTEGER NOT NULL DEFAULT 0"),
        ("messages", "recalled_at_ms", "INTEGER NOT NULL DEFAULT 0"),
        ("messages", "edited_at_ms", "INTEGER NOT NULL DEFAULT 0"),
        ("messages", "reply_to", "INTEGER NOT NULL DEFAULT 0"),
        ("messages", "mentions", "BLOB NOT NULL DEFAULT x''"),
        ("messages", "mentions_me", "INTEGER NOT NULL DEFAULT 0"),
        ("outbox", "reply_to", "INTEGER NOT NULL DEFAULT 0"),
        ("outbox", "mentions", "BLOB NOT NULL DEFAULT x''"),
    ];
    for (table, column, kind) in COLUMNS {
        let has: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?
            .exists([table, column])?;
        if !has {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind};"))?;
        }
    }
    Ok(())
}

impl Store {
    /// Opens (or creates) the store at `path`, or an in-memory store with `None`.
    pub fn open(path: Option<&Path>, user_id: u64, device_id: &str) -> Result<Store, SdkError> {
        let conn = match path {
            Some(p) => {
                let c = Connection::open(p)?;
                c.pragma_update(None, "journal_mode", "WAL")?;
                c.pragma_update(None, "synchronous", "NORMAL")?;
                c
            }
            None => Connection::open_in_memory()?,
        };
        conn.execute_batch(SCHEMA)?;
        add_later_columns(&conn)?;
        Ok(Store {
            conn,
            user_id,
            device_id: device_id.to_owned(),
            rooms_seen: RoomSeen::default(),
        })
    }

    /// Queues a send and returns its new client message id.
    pub fn outbox_push(
        &mut self,
        conversation: ConversationKey,
        content: &pb::Content,
    ) -> Result<u64, SdkError> {
        self.outbox_push_with(conversation, content, &Refs::default())
    }

    /// Queues a send that replies or mentions and returns its new client message id.
    pub fn outbox_push_with(
        &mut self,
        conversation: ConversationKey,
        content: &pb::Content,
        refs: &Refs,
    ) -> Result<u64, SdkError> {
        let blob = content.encode_to_vec();
        loop {
            let id = rand::random::<u64>().max(1);
            if self.outbox_insert_with(id, conversation, &blob, refs)? {
                return Ok(id);
            }
            // A 64-bit collision: draw again.
        }
    }

    /// Queues a send (encoded `Content`) under `client_msg_id`; false if that id is
    /// queued already. [`Store::outbox_push`] draws the id; the fuzzing harness picks it.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn outbox_insert(
        &mut self,
        client_msg_id: u64,
        conversation: ConversationKey,
        blob: &[u8],
    ) -> Result<bool, SdkError> {
        self.outbox_insert_with(client_msg_id, conversation, blob, &Refs::default())
    }

    /// [`Store::outbox_insert`] of a send that replies or mentions (one row: a crash
    /// never leaves the send without its refs).
    fn outbox_insert_with(
        &mut self,
        client_msg_id: u64,
        conversation: ConversationKey,
        blob: &[u8],
        refs: &Refs,
    ) -> Result<bool, SdkError> {
        let result = self.conn.execute(
            "INSERT INTO outbox (client_msg_id, kind, id, content, reply_to, mentions)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                i(client_msg_id),
                conversation.kind as i64,
                i(conversation.id),
                blob,
                i(refs.reply_to),
                mentions_blob(&refs.mentions)
            ],
        );
        match result {
            Ok(_) => Ok(true),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Queued sends, oldest first, skipping the first `skip` (already in flight).
    pub fn outbox(&self, skip: usize, limit: usize) -> Result<Vec<OutboxEntry>, SdkError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT client_msg_id, kind, id, content, reply_to, mentions FROM outbox
             ORDER BY pos LIMIT ?1 OFFSET ?2",
        )?;
        type Row = (i64, i64, i64, Vec<u8>, i64, Vec<u8>);
        let rows = stmt
            .query_map(params![limit as i64, skip as i64], |r| Row::try_from(r))?
            .collect::<Result<Vec<Row>, _>>()?;
        rows.into_iter()
            .map(|(cmid, kind, id, blob, reply_to, mentions)| {
                Ok(OutboxEntry {
                    client_msg_id: u(cmid),
                    conversation: ConversationKey {
                        kind: kind_of(kind)?,
                        id: u(id),
                    },
                    content: decode_content(&blob)?,
                    refs: Refs {
                        reply_to: u(reply_to),
                        mentions: mentions_of(&mentions),
                    },
                })
            })
            .collect()
    }

    /// Number of queued sends.
    pub fn outbox_len(&self) -> Result<usize, SdkError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
        Ok(n as usize)
    }

    /// Drops a queued send the server refused for good. Returns whether it was queued.
    pub fn outbox_remove(&mut self, client_msg_id: u64) -> Result<bool, SdkError> {
        Ok(self.conn.execute(
            "DELETE FROM outbox WHERE client_msg_id = ?1",
            params![i(client_msg_id)],
        )? > 0)
    }

    /// The server stored one of this device's sends.
    pub fn apply_ack(&mut self, ack: &pb::Ack) -> Result<Applied, SdkError> {
        let mut applied = Applied::default();
        let Some(key) = ConversationKey::from_wire(ack.conversation.as_ref()) else {
            return Ok(applied);
        };
        let tx = self.conn.transaction()?;
        let queued: Option<(Vec<u8>, i64, Vec<u8>)> = tx
            .query_row(
                "SELECT content, reply_to, mentions FROM outbox WHERE client_msg_id = ?1",
                params![i(ack.client_msg_id)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((content, reply_to, mentions)) = queued else {
            // Acked before (a duplicate ack of a resend) or seen in a sync already.
            return Ok(applied);
        };
        tx.execute(
            "DELETE FROM outbox WHERE client_msg_id = ?1",
            params![i(ack.client_msg_id)],
        )?;
        applied.acked.push((ack.client_msg_id, key, ack.seq));
        if key.is_persisted() {
            let push = pb::MessagePush {
                conversation: ack.conversation,
                seq: ack.seq,
                sender: self.user_id,
                server_time_ms: ack.server_time_ms,
                client_msg_id: ack.client_msg_id,
                content: bytes::Bytes::from(content),
                sender_device: self.device_id.clone(),
                recalled_by: 0,
                recalled_at_ms: 0,
                edited_at_ms: 0,
                reply_to: u(reply_to),
                mentions: mentions_of(&mentions),
            };
            insert(&tx, self.user_id, &self.device_id, key, &push, &mut applied)?;
            drain(&tx, key, &mut applied)?;
        }
        tx.commit()?;
        Ok(applied)
    }

    /// A pushed message. Chatroom messages are handed straight back (never stored).
    pub fn apply_push(&mut self, push: &pb::MessagePush) -> Result<Applied, SdkError> {
        let mut applied = Applied::default();
        let Some(key) = ConversationKey::from_wire(push.conversation.as_ref()) else {
            return Ok(applied);
        };
        if !key.is_persisted() {
            // A resend after a lost ack is pushed again: show it once.
            if self
                .rooms_seen
                .first_time(key.id, push.sender, push.client_msg_id)
            {
                applied.deliver.push(to_message(key, push));
            }
            return Ok(applied);
        }
        let tx = self.conn.transaction()?;
        insert(&tx, self.user_id, &self.device_id, key, push, &mut applied)?;
        let delivered = delivered_seq(&tx, key)?;
        if push.seq > delivered + 1 {
            applied.gap = true;
        }
        drain(&tx, key, &mut applied)?;
        tx.commit()?;
        Ok(applied)
    }

    /// One `SyncResponse` page (from a `SyncRequest`).
    pub fn apply_sync_page(&mut self, page: &pb::SyncResponse) -> Result<Applied, SdkError> {
        let mut applied = Applied::default();
        let tx = self.conn.transaction()?;
        let mut touched = Vec::new();
        for push in &page.messages {
            let Some(key) = ConversationKey::from_wire(push.conversation.as_ref()) else {
                continue;
            };
            if key.is_persisted() {
                insert(&tx, self.user_id, &self.device_id, key, push, &mut applied)?;
                if !touched.contains(&key) {
                    touched.push(key);
                }
            }
        }
        let mut starts = Vec::new();
        for state in &page.conversations {
            let Some(key) = ConversationKey::from_wire(state.conversation.as_ref()) else {
                continue;
            };
            ensure_conversation(&tx, key)?;
            tx.execute(
                "UPDATE conversations SET last_seq = MAX(last_seq, ?3), read_seq = MAX(read_seq, ?4)
                 WHERE kind = ?1 AND id = ?2",
                params![key.kind as i64, i(key.id), i(state.last_seq), i(state.read_seq)],
            )?;
            if state.first_seq > 1 {
                starts.push((key, state.first_seq));
            }
        }
        for key in touched {
            drain(&tx, key, &mut applied)?;
        }
        // What the server's retention removed will never come: deliver what is stored
        // below it, then skip the rest of the hole.
        for (key, first_seq) in starts {
            loop {
                let delivered = delivered_seq(&tx, key)?;
                if delivered + 1 >= first_seq {
                    break;
                }
                // Up to the next message stored here (one that arrived before the
                // trim), or to where the server's timeline starts now.
                let next: Option<i64> = tx.query_row(
                    "SELECT MIN(seq) FROM messages WHERE kind = ?1 AND id = ?2 AND seq > ?3",
                    params![key.kind as i64, i(key.id), i(delivered)],
                    |r| r.get(0),
                )?;
                let resume = next.map_or(first_seq, u).min(first_seq);
                applied.gone.push((key, delivered + 1, resume - 1));
                tx.execute(
                    "UPDATE conversations SET delivered_seq = ?3 WHERE kind = ?1 AND id = ?2",
                    params![key.kind as i64, i(key.id), i(resume - 1)],
                )?;
                drain(&tx, key, &mut applied)?;
            }
        }
        // The inbox position is the number of a one-partition server or the opaque
        // token of a partitioned one; both are kept, and sent back as they came. (The
        // token is a BLOB in `meta`'s INTEGER column: SQLite keeps a BLOB as it is.)
        if page.inbox_cursor != 0 || !page.inbox_position.is_empty() {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('inbox_cursor', ?1), ('inbox_position', ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![i(page.inbox_cursor), page.inbox_position],
            )?;
        }
        tx.commit()?;
        Ok(applied)
    }

    /// After a sync that ended with `has_more = false`: any hole still open cannot be
    /// filled from the server, so delivery skips past it.
    pub fn skip_unfillable_gaps(&mut self) -> Result<Applied, SdkError> {
        let mut applied = Applied::default();
        let tx = self.conn.transaction()?;
        let stuck: Vec<(i64, i64, i64)> = {
            let mut stmt = tx.prepare(
                "SELECT c.kind, c.id, MIN(m.seq) FROM conversations c
                 JOIN messages m ON m.kind = c.kind AND m.id = c.id AND m.seq > c.delivered_seq
                 GROUP BY c.kind, c.id
                 HAVING MIN(m.seq) > c.delivered_seq + 1",
            )?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?
        };
        for (kind, id, first) in stuck {
            let key = ConversationKey {
                kind: kind_of(kind)?,
                id: u(id),
            };
            tracing::debug!(?key, first, "skipping a hole the server cannot fill");
            tx.execute(
                "UPDATE conversations SET delivered_seq = ?3 WHERE kind = ?1 AND id = ?2",
                params![kind, id, first - 1],
            )?;
            drain(&tx, key, &mut applied)?;
        }
        tx.commit()?;
        Ok(applied)
    }

    /// The number of this device's next login attempt (1, 2, …; kept across restarts), sent
    /// as `Login.attempt` so the server can refuse an older attempt that reaches it after
    /// a newer one instead of letting it replace the live session.
    pub fn next_login_attempt(&mut self) -> Result<u64, SdkError> {
        let next: i64 = self.conn.query_row(
            "INSERT INTO meta (key, value) VALUES ('login_attempt', 1)
             ON CONFLICT(key) DO UPDATE SET value = value + 1
             RETURNING value",
            [],
            |r| r.get(0),
        )?;
        Ok(u(next))
    }

    /// The `SyncRequest` to send after (re)connecting: the stored inbox position and one
    /// cursor per persisted conversation.
    pub fn sync_request(&self, limit: u32) -> Result<pb::SyncRequest, SdkError> {
        let inbox_cursor: i64 = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'inbox_cursor'",
                [],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0);
        let inbox_position: Vec<u8> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'inbox_position'",
                [],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or_default();
        let mut stmt = self
            .conn
            .prepare_cached("SELECT kind, id, delivered_seq FROM conversations")?;
        let cursors = stmt
            .query_map([], |r| {
                Ok(pb::Cursor {
                    conversation: Some(pb::ConversationId {
                        kind: r.get::<_, i64>(0)? as i32,
                        id: u(r.get(1)?),
                    }),
                    after_seq: u(r.get(2)?),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(pb::SyncRequest {
            inbox_cursor: u(inbox_cursor),
            cursors,
            limit,
            inbox_position,
        })
    }

    /// Stores messages fetched with a `HistoryRequest` (older pages). They do not move
    /// cursors; ones above the cursor are delivered by the next drain like any other.
    pub fn store_history(&mut self, page: &pb::SyncResponse) -> Result<Applied, SdkError> {
        // The same rules as a sync page; history pages carry no inbox cursor.
        self.apply_sync_page(&pb::SyncResponse {
            messages: page.messages.clone(),
            has_more: page.has_more,
            inbox_cursor: 0,
            conversations: Vec::new(),
            first_seq: page.first_seq,
            inbox_position: Vec::new(),
        })
    }

    /// Up to `limit` stored messages of `conversation` with seq below `before_seq` (0 =
    /// from the newest), newest first.
    pub fn history(
        &self,
        conversation: ConversationKey,
        before_seq: u64,
        limit: usize,
    ) -> Result<Vec<Message>, SdkError> {
        let before = if before_seq == 0 {
            u64::MAX >> 1
        } else {
            before_seq
        };
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE kind = ?1 AND id = ?2 AND seq < ?3
             ORDER BY seq DESC LIMIT ?4"
        ))?;
        let rows = stmt
            .query_map(
                params![
                    conversation.kind as i64,
                    i(conversation.id),
                    i(before),
                    limit as i64
                ],
                read_message_row,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(message_from_row).collect()
    }

    /// Records that the user read `conversation` up to `seq`.
    pub fn set_read(&mut self, conversation: ConversationKey, seq: u64) -> Result<(), SdkError> {
        ensure_conversation(&self.conn, conversation)?;
        self.conn.execute(
            "UPDATE conversations SET read_seq = MAX(read_seq, ?3) WHERE kind = ?1 AND id = ?2",
            params![conversation.kind as i64, i(conversation.id), i(seq)],
        )?;
        Ok(())
    }

    /// The conversation list, most recently active first, with unread counts.
    pub fn conversations(&self) -> Result<Vec<ConversationSummary>, SdkError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT c.kind, c.id, MAX(c.last_seq, IFNULL((SELECT MAX(seq) FROM messages m
                    WHERE m.kind = c.kind AND m.id = c.id), 0)) AS top, c.read_seq,
                    (SELECT COUNT(*) FROM messages m WHERE m.kind = c.kind AND m.id = c.id
                     AND m.seq > c.read_seq AND m.own = 0 AND m.sender != ?1),
                    (SELECT COUNT(*) FROM messages m WHERE m.kind = c.kind AND m.id = c.id
                     AND m.seq > c.read_seq AND m.mentions_me = 1)
             FROM conversations c ORDER BY top DESC",
        )?;
        type Row = (i64, i64, i64, i64, i64, i64);
        let rows: Vec<Row> = stmt
            .query_map(params![i(self.user_id)], |r| Row::try_from(r))?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(kind, id, top, read, unread, mentions)| {
                let conversation = ConversationKey {
                    kind: kind_of(kind)?,
                    id: u(id),
                };
                Ok(ConversationSummary {
                    conversation,
                    last_seq: u(top),
                    read_seq: u(read),
                    unread: u(unread),
                    unread_mentions: u(mentions),
                    last_message: self.history(conversation, 0, 1)?.into_iter().next(),
                })
            })
            .collect()
    }

    /// Message `seq` of `conversation` was recalled: its content is dropped and the
    /// recall kept. Returns whether a stored message changed (not stored yet: the
    /// recalled version comes with the next sync).
    pub fn apply_recall(
        &mut self,
        conversation: ConversationKey,
        seq: u64,
        recall: Recalled,
    ) -> Result<bool, SdkError> {
        mark_recalled(&self.conn, conversation, seq, recall)
    }

    /// The delivery cursor of `conversation` (0 if unknown).
    pub fn delivered_seq(&self, conversation: ConversationKey) -> Result<u64, SdkError> {
        delivered_seq(&self.conn, conversation)
    }
}

fn to_message(key: ConversationKey, push: &pb::MessagePush) -> Message {
    Message {
        conversation: key,
        seq: push.seq,
        sender: push.sender,
        sender_device: push.sender_device.clone(),
        client_msg_id: push.client_msg_id,
        server_time_ms: push.server_time_ms,
        // The server checks every content it stores; one that still does not decode
        // here shows as empty content rather than losing the message's place.
        content: push.decode_content().unwrap_or_default(),
        recalled: Recalled::of(push),
        edited_at_ms: (push.edited_at_ms != 0).then_some(push.edited_at_ms),
        reply_to: (push.reply_to != 0).then_some(push.reply_to),
        mentions: push.mentions.clone(),
    }
}

fn ensure_conversation(conn: &Connection, key: ConversationKey) -> Result<(), SdkError> {
    conn.execute(
        "INSERT OR IGNORE INTO conversations (kind, id) VALUES (?1, ?2)",
        params![key.kind as i64, i(key.id)],
    )?;
    Ok(())
}

fn delivered_seq(conn: &Connection, key: ConversationKey) -> Result<u64, SdkError> {
    Ok(conn
        .query_row(
            "SELECT delivered_seq FROM conversations WHERE kind = ?1 AND id = ?2",
            params![key.kind as i64, i(key.id)],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .map_or(0, u))
}

/// Drops the content of stored message `seq` of `key` and keeps `recall`, unless it is
/// recalled already. Returns whether a stored message changed.
fn mark_recalled(
    conn: &Connection,
    key: ConversationKey,
    seq: u64,
    recall: Recalled,
) -> Result<bool, SdkError> {
    Ok(conn.execute(
        "UPDATE messages SET content = x'', recalled_by = ?4, recalled_at_ms = ?5,
         reply_to = 0, mentions = x'', mentions_me = 0
         WHERE kind = ?1 AND id = ?2 AND seq = ?3 AND recalled_by = 0",
        params![
            key.kind as i64,
            i(key.id),
            i(seq),
            i(recall.by),
            i(recall.at_ms)
        ],
    )? > 0)
}

/// Stores one message (once). A message this device sent that is still in the outbox
/// (its ack was lost) leaves the outbox here and is reported as acked.
fn insert(
    tx: &Transaction<'_>,
    user_id: u64,
    device_id: &str,
    key: ConversationKey,
    push: &pb::MessagePush,
    applied: &mut Applied,
) -> Result<(), SdkError> {
    if push.seq == 0 {
        return Ok(());
    }
    ensure_conversation(tx, key)?;
    let own = push.sender == user_id && push.sender_device == device_id;
    // Stored as the server sent it (the encoded `Content`), unless it does not decode.
    let content = match push.decode_content() {
        Ok(_) => push.content.to_vec(),
        Err(_) => Vec::new(),
    };
    let recall = Recalled::of(push);
    if let Some(recall) = recall {
        // Already stored before it was recalled: drop the content now.
        if mark_recalled(tx, key, push.seq, recall)? {
            applied.recalled.push((key, push.seq, recall));
        }
    }
    if push.edited_at_ms != 0
        && recall.is_none()
        && tx.execute(
            "UPDATE messages SET content = ?4, edited_at_ms = ?5
             WHERE kind = ?1 AND id = ?2 AND seq = ?3 AND recalled_by = 0 AND edited_at_ms < ?5",
            params![
                key.kind as i64,
                i(key.id),
                i(push.seq),
                content,
                i(push.edited_at_ms)
            ],
        )? > 0
    {
        // Already stored: the newer version replaces it.
        applied.edited.push(to_message(key, push));
    }
    applied.inserted += tx
        .prepare_cached(
            "INSERT OR IGNORE INTO messages
         (kind, id, seq, sender, sender_device, client_msg_id, server_time_ms, content, own,
          recalled_by, recalled_at_ms, edited_at_ms, reply_to, mentions, mentions_me)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        )?
        .execute(params![
            key.kind as i64,
            i(key.id),
            i(push.seq),
            i(push.sender),
            push.sender_device,
            i(push.client_msg_id),
            i(push.server_time_ms),
            content,
            own,
            i(recall.map_or(0, |r| r.by)),
            i(recall.map_or(0, |r| r.at_ms)),
            i(push.edited_at_ms),
            i(push.reply_to),
            mentions_blob(&push.mentions),
            // One's own message never counts as mentioning oneself.
            push.sender != user_id && push.mentions.contains(&user_id),
        ])?;
    if own
        && tx.execute(
            "DELETE FROM outbox WHERE client_msg_id = ?1",
            params![i(push.client_msg_id)],
        )? > 0
    {
        applied.acked.push((push.client_msg_id, key, push.seq));
    }
    Ok(())
}

/// Hands out stored messages contiguous with the cursor and advances it.
fn drain(
    tx: &Transaction<'_>,
    key: ConversationKey,
    applied: &mut Applied,
) -> Result<(), SdkError> {
    let mut cursor = delivered_seq(tx, key)?;
    let start = cursor;
    let rows: Vec<(MessageRow, bool)> = {
        let mut stmt = tx.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS}, own FROM messages WHERE kind = ?1 AND id = ?2 AND seq > ?3
             ORDER BY seq"
        ))?;
        stmt.query_map(params![key.kind as i64, i(key.id), i(cursor)], |r| {
            Ok((read_message_row(r)?, r.get::<_, bool>(13)?))
        })?
        .collect::<Result<_, _>>()?
    };
    for (row, own) in rows {
        if u(row.2) != cursor + 1 {
            break;
        }
        cursor += 1;
        if !own {
            applied.deliver.push(message_from_row(row)?);
        }
    }
    if cursor != start {
        tx.execute(
            "UPDATE conversations SET delivered_seq = ?3 WHERE kind = ?1 AND id = ?2",
            params![key.kind as i64, i(key.id), i(cursor)],
        )?;
        applied.advanced.push((key, cursor));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: u64 = 1;
    const PEER: u64 = 2;

    fn text(t: &str) -> pb::Content {
        pb::Content {
            body: Some(pb::content::Body::Text(pb::Text {
                text: t.into(),
                mentions: vec![],
            })),
        }
    }

    fn push(seq: u64, sender: u64, device: &str, cmid: u64) -> pb::MessagePush {
        pb::MessagePush {
            conversation: Some(ConversationKey::single(PEER).to_wire()),
            seq,
            sender,
            server_time_ms: 1000 + seq,
            client_msg_id: cmid,
            content: petrel_proto::wire::encode_content(&text(&format!("m{seq}"))),
            sender_device: device.into(),
            recalled_by: 0,
            recalled_at_ms: 0,
            edited_at_ms: 0,
            ..Default::default()
        }
    }

    fn seqs(a: &Applied) -> Vec<u64> {
        a.deliver.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn login_attempts_count_up_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attempts.db");
        let mut s = Store::open(Some(&path), ME, "dev").unwrap();
        assert_eq!(s.next_login_attempt().unwrap(), 1);
        assert_eq!(s.next_login_attempt().unwrap(), 2);
        drop(s);
        // An app restart goes on counting: its logins are newer than the last process's.
        let mut s = Store::open(Some(&path), ME, "dev").unwrap();
        assert_eq!(s.next_login_attempt().unwrap(), 3);
    }

    #[test]
    fn a_recall_drops_the_content_live_or_from_a_sync_and_old_stores_gain_the_columns() {
        // A store written before recalls existed: no recall columns.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(&SCHEMA.replace(
                "    recalled_by INTEGER NOT NULL DEFAULT 0,\n    recalled_at_ms INTEGER NOT NULL DEFAULT 0,\n",
                "",
            ))
            .unwrap();
        let mut s = Store::open(Some(&path), ME, "dev").unwrap();
        let key = ConversationKey::single(PEER);
        s.apply_push(&push(1, PEER, "p", 11)).unwrap();
        s.apply_push(&push(2, PEER, "p", 12)).unwrap();
        let by_peer = Recalled { by: PEER, at_ms: 5 };
        assert!(s.apply_recall(key, 1, by_peer).unwrap());
        assert!(!s.apply_recall(key, 1, by_peer).unwrap(), "once");
        // A sync that brings seq 2 recalled: dropped too, and reported.
        let mut recalled = push(2, PEER, "p", 12);
        recalled.content = bytes::Bytes::new();
        recalled.recalled_by = PEER;
        recalled.recalled_at_ms = 6;
        let applied = s.apply_push(&recalled).unwrap();
        assert_eq!(
            applied.recalled,
            [(key, 2, Recalled { by: PEER, at_ms: 6 })]
        );
        let shown: Vec<_> = s
            .history(key, 0, 10)
            .unwrap()
            .iter()
            .map(|m| (m.seq, m.recalled, m.text().map(str::to_owned)))
            .collect();
        assert_eq!(
            shown,
            [
                (2, Some(Recalled { by: PEER, at_ms: 6 }), None),
                (1, Some(by_peer), None)
            ]
        );
    }

    #[test]
    fn what_retention_removed_is_reported_once_and_skipped() {
        let mut s = Store::open(None, ME, "dev").unwrap();
        assert_eq!(seqs(&s.apply_push(&push(1, PEER, "p", 11)).unwrap()), [1]);
        // Seq 3 arrived live; the server has since trimmed everything below 5.
        assert!(s.apply_push(&push(3, PEER, "p", 13)).unwrap().gap);
        let key = ConversationKey::single(PEER);
        let page = pb::SyncResponse {
            messages: vec![push(5, PEER, "p", 15), push(6, PEER, "p", 16)],
            has_more: false,
            inbox_cursor: 9,
            conversations: vec![pb::ConversationState {
                conversation: Some(key.to_wire()),
                last_seq: 6,
                read_seq: 0,
                first_seq: 5,
                ..Default::default()
            }],
            first_seq: 0,
            inbox_position: Vec::new(),
        };
        let a = s.apply_sync_page(&page).unwrap();
        assert_eq!(
            seqs(&a),
            [3, 5, 6],
            "what is stored here is still delivered"
        );
        assert_eq!(a.gone, [(key, 2, 2), (key, 4, 4)]);
        assert_eq!(s.delivered_seq(key).unwrap(), 6);
        // The same page again changes nothing and reports nothing.
        let again = s.apply_sync_page(&page).unwrap();
        assert!(again.deliver.is_empty() && again.gone.is_empty());
    }

    #[test]
    fn out_of_order_and_duplicate_messages_are_delivered_once_in_seq_order() {
        let mut s = Store::open(None, ME, "dev").unwrap();
        assert_eq!(seqs(&s.apply_push(&push(1, PEER, "p", 11)).unwrap()), [1]);
        let a = s.apply_push(&push(3, PEER, "p", 13)).unwrap();
        assert!(a.gap);
        assert!(a.deliver.is_empty());
        assert!(
            s.apply_push(&push(1, PEER, "p", 11))
                .unwrap()
                .deliver
                .is_empty()
        );
        let page = pb::SyncResponse {
            messages: vec![push(2, PEER, "p", 12), push(3, PEER, "p", 13)],
            has_more: false,
            inbox_cursor: 77,
            conversations: vec![],
            first_seq: 0,
            inbox_position: Vec::new(),
        };
        assert_eq!(seqs(&s.apply_sync_page(&page).unwrap()), [2, 3]);
        assert_eq!(s.delivered_seq(ConversationKey::single(PEER)).unwrap(), 3);
        let req = s.sync_request(0).unwrap();
        assert_eq!(req.inbox_cursor, 77);
        assert_eq!(req.cursors.len(), 1);
        assert_eq!(req.cursors[0].after_seq, 3);
    }

    #[test]
    fn a_partitioned_servers_inbox_position_is_kept_and_sent_back_as_it_came() {
        let mut s = Store::open(None, ME, "dev").unwrap();
        let page = |cursor: u64, position: &[u8]| pb::SyncResponse {
            inbox_cursor: cursor,
            inbox_position: position.to_vec(),
            ..Default::default()
        };
        s.apply_sync_page(&page(0, &[1, 2, 0, 9])).unwrap();
        let req = s.sync_request(0).unwrap();
        assert_eq!(
            (req.inbox_cursor, req.inbox_position),
            (0, vec![1, 2, 0, 9])
        );
        // A page that carries no position (cut, or history) keeps the stored one.
        s.apply_sync_page(&page(0, &[])).unwrap();
        assert_eq!(s.sync_request(0).unwrap().inbox_position, [1, 2, 0, 9]);
        // A one-partition server's number replaces the token, and the other way round.
        s.apply_sync_page(&page(12, &[])).unwrap();
        let req = s.sync_request(0).unwrap();
        assert_eq!((req.inbox_cursor, req.inbox_position), (12, vec![]));
        s.apply_sync_page(&page(0, &[1, 1, 5])).unwrap();
        let req = s.sync_request(0).unwrap();
        assert_eq!((req.inbox_cursor, req.inbox_position), (0, vec![1, 1, 5]));
    }

    #[test]
    fn the_outbox_keeps_order_and_an_ack_or_a_synced_echo_removes_exactly_once() {
        let mut s = Store::open(None, ME, "dev").unwrap();
        let conv = ConversationKey::single(PEER);
        let a = s.outbox_push(conv, &text("one")).unwrap();
        let b = s.outbox_push(conv, &text("two")).unwrap();
        let queued: Vec<u64> = s
            .outbox(0, 10)
            .unwrap()
            .iter()
            .map(|e| e.client_msg_id)
            .collect();
        assert_eq!(queued, [a, b]);
        assert_eq!(s.outbox(1, 10).unwrap()[0].client_msg_id, b);
        let ack = pb::Ack {
            client_msg_id: a,
            conversation: Some(conv.to_wire()),
            seq: 1,
            server_time_ms: 5,
            duplicate: false,
        };
        let applied = s.apply_ack(&ack).unwrap();
        assert_eq!(applied.acked, vec![(a, conv, 1)]);
        assert!(applied.deliver.is_empty(), "own messages are not echoed");
        assert_eq!(
            s.apply_ack(&ack).unwrap(),
            Applied::default(),
            "duplicate ack"
        );
        // The ack of `b` was lost; a sync shows the server has it.
        let page = pb::SyncResponse {
            messages: vec![push(2, ME, "dev", b)],
            ..Default::default()
        };
        let applied = s.apply_sync_page(&page).unwrap();
        assert_eq!(applied.acked, vec![(b, conv, 2)]);
        assert_eq!(s.outbox_len().unwrap(), 0);
        assert_eq!(s.delivered_seq(conv).unwrap(), 2);
        let history: Vec<u64> = s
            .history(conv, 0, 10)
            .unwrap()
            .iter()
            .map(|m| m.seq)
            .collect();
        assert_eq!(history, [2, 1]);
        assert_eq!(s.history(conv, 2, 10).unwrap()[0].text(), Some("one"));
    }

    #[test]
    fn unread_counts_only_others_messages_above_the_read_position() {
        let mut s = Store::open(None, ME, "dev").unwrap();
        let conv = ConversationKey::single(PEER);
        for seq in 1..=4 {
            s.apply_push(&push(seq, PEER, "p", seq)).unwrap();
        }
        s.apply_push(&push(5, ME, "other-device", 99)).unwrap();
        let list = s.conversations().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!((list[0].last_seq, list[0].unread), (5, 4));
        assert_eq!(list[0].last_message.as_ref().map(|m| m.seq), Some(5));
        s.set_read(conv, 3).unwrap();
        assert_eq!(s.conversations().unwrap()[0].unread, 1);
    }

    #[test]
    fn mentions_of_me_by_others_count_until_read_or_recalled_and_refs_stay_queued() {
        let mut s = Store::open(None, ME, "dev").unwrap();
        let conv = ConversationKey::single(PEER);
        let mut mention = push(1, PEER, "p", 1);
        (mention.reply_to, mention.mentions) = (0, vec![ME]);
        s.apply_push(&mention).unwrap();
        let mut reply = push(2, PEER, "p", 2);
        reply.reply_to = 1;
        s.apply_push(&reply).unwrap();
        // My own message naming me (from my other device) is no mention.
        let mut own = push(3, ME, "other-device", 3);
        own.mentions = vec![ME];
        s.apply_push(&own).unwrap();
        let summary = &s.conversations().unwrap()[0];
        assert_eq!((summary.unread, summary.unread_mentions), (2, 1));
        let stored = s.history(conv, 0, 10).unwrap();
        let refs: Vec<(u64, Option<u64>, Vec<u64>)> = stored
            .iter()
            .map(|m| (m.seq, m.reply_to, m.mentions.clone()))
            .collect();
        assert_eq!(
            refs,
            [
                (3, None, vec![ME]),
                (2, Some(1), vec![]),
                (1, None, vec![ME])
            ]
        );
        // A recall takes the mention away; so does reading past it.
        mark_recalled(&s.conn, conv, 1, Recalled { by: PEER, at_ms: 5 }).unwrap();
        assert_eq!(s.conversations().unwrap()[0].unread_mentions, 0);

        let queued = Refs {
            reply_to: 2,
            mentions: vec![PEER, 7],
        };
        let id = s.outbox_push_with(conv, &text("re"), &queued).unwrap();
        let entry = s.outbox(0, 10).unwrap().remove(0);
        assert_eq!((entry.client_msg_id, entry.refs), (id, queued));
    }

    #[test]
    fn a_hole_a_complete_sync_cannot_fill_is_skipped() {
        let mut s = Store::open(None, ME, "dev").unwrap();
        let group = ConversationKey::group(40);
        let mut late = push(50, PEER, "p", 1);
        late.conversation = Some(group.to_wire());
        assert!(s.apply_push(&late).unwrap().gap);
        assert_eq!(seqs(&s.skip_unfillable_gaps().unwrap()), [50]);
        assert_eq!(s.delivered_seq(group).unwrap(), 50);
    }

    #[test]
    fn chatroom_messages_pass_through_unstored() {
        let mut s = Store::open(None, ME, "dev").unwrap();
        let mut m = push(3, PEER, "p", 1);
        m.conversation = Some(ConversationKey::chatroom(9).to_wire());
        assert_eq!(seqs(&s.apply_push(&m).unwrap()), [3]);
        assert!(s.conversations().unwrap().is_empty());
        // The same message pushed again (its sender resent it; the room gave it seq 4).
        m.seq = 4;
        assert!(seqs(&s.apply_push(&m).unwrap()).is_empty(), "shown twice");
    }

    #[test]
    fn the_store_survives_reopening_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.sqlite");
        let conv = ConversationKey::single(PEER);
        let id = {
            let mut s = Store::open(Some(&path), ME, "dev").unwrap();
            s.apply_push(&push(1, PEER, "p", 1)).unwrap();
            s.outbox_push(conv, &text("queued")).unwrap()
        };
        let s = Store::open(Some(&path), ME, "dev").unwrap();
        assert_eq!(s.delivered_seq(conv).unwrap(), 1);
        assert_eq!(s.outbox(0, 10).unwrap()[0].client_msg_id, id);
    }
}
