//! The handle an app holds: sends, conversation operations, history, the conversation
//! list, and control of the connection task.
//!
//! Sends never fail for lack of a connection: they go to the outbox in the local store
//! and the task sends them (again after every reconnect) until the server acks them.
//! Operations that need an answer (create a group, join a chatroom, …) need a live
//! session and fail with [`SdkError::NotConnected`] otherwise.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use petrel_proto::Body;
use petrel_proto::pb::{self, conversation_op::Op};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::ClientConfig;
use crate::content;
use crate::error::SdkError;
use crate::event::{ConnectionState, ConversationKey, Event, Message};
use crate::store::{ConversationSummary, Store};
use crate::task::{Command, Shared, Task};
use crate::token::TokenProvider;

/// The event stream of one client (see [`Event`]).
pub type Events = mpsc::UnboundedReceiver<Event>;

/// A running client. Cheap to clone; every clone drives the same connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    state: watch::Receiver<ConnectionState>,
    config: ClientConfig,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("user_id", &self.inner.config.user_id)
            .field("device_id", &self.inner.config.device_id)
            .field("state", &*self.inner.state.borrow())
            .finish()
    }
}

impl Client {
    /// Opens the local store and starts the connection task on the current tokio
    /// runtime (a [`SdkError::Config`] error outside one). Returns the handle and the
    /// event stream.
    pub fn start(
        config: ClientConfig,
        provider: impl TokenProvider,
    ) -> Result<(Client, Events), SdkError> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            SdkError::Config("Client::start must be called inside a tokio runtime".into())
        })?;
        let store = Store::open(
            config.store_path.as_deref(),
            config.user_id,
            &config.device_id,
        )?;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(ConnectionState::Connecting {
            endpoint: config.endpoints[0].clone(),
            attempt: 0,
        });
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            events: events_tx,
            rooms: Mutex::new(Default::default()),
        });
        let task = Task::new(
            config.clone(),
            Arc::new(provider),
            shared.clone(),
            state_tx,
            commands_rx,
        );
        let handle = runtime.spawn(task.run());
        Ok((
            Client {
                inner: Arc::new(Inner {
                    commands: commands_tx,
                    shared,
                    state: state_rx,
                    config,
                    task: Mutex::new(Some(handle)),
                }),
            },
            events_rx,
        ))
    }

    /// The configuration the client runs with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The current connection state.
    pub fn state(&self) -> ConnectionState {
        self.inner.state.borrow().clone()
    }

    /// Waits until the client is connected (logged in), at most `limit`.
    pub async fn wait_connected(&self, limit: Duration) -> Result<(), SdkError> {
        let mut state = self.inner.state.clone();
        let connected = state.wait_for(|s| matches!(s, ConnectionState::Connected { .. }));
        match tokio::time::timeout(limit, connected).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(SdkError::Closed),
            Err(_) => Err(SdkError::Timeout(limit)),
        }
    }

    /// The network changed (or the app wants to retry after `Stopped`): drop the current
    /// connection if any and reconnect now, without back-off.
    pub fn reconnect_now(&self) {
        let _ = self.inner.commands.send(Command::ReconnectNow);
    }

    /// Logs out (with `revoke_token`, the token can never log in again) and stops the
    /// task. Queued sends stay in the store for the next start.
    pub async fn shutdown(&self, revoke_token: bool) {
        let _ = self.inner.commands.send(Command::Shutdown { revoke_token });
        let handle = self
            .inner
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }

    fn command(&self, command: Command) -> Result<(), SdkError> {
        self.inner
            .commands
            .send(command)
            .map_err(|_| SdkError::Closed)
    }

    // ---- sending -------------------------------------------------------------------

    /// Tells the conversation's other online members that this user started (`true`) or
    /// stopped (`false`) typing; they get [`Event::Typing`]. Call it with `true` when
    /// typing starts and again at most every 3 s while it goes on, and with `false` when
    /// the user stops or sends. Best effort: never stored, never answered, dropped while
    /// disconnected and by a busy server (docs/PROTOCOL.md, "Typing indicators").
    pub fn set_typing(&self, conversation: ConversationKey, typing: bool) -> Result<(), SdkError> {
        self.command(Command::Typing {
            conversation,
            typing,
        })
    }

    /// Queues `content` for `conversation` and returns its client message id. The
    /// message is sent as soon as (and every time) a session is up, until acked; the
    /// ack arrives as [`Event::Acked`].
    pub fn send(
        &self,
        conversation: ConversationKey,
        content: pb::Content,
    ) -> Result<u64, SdkError> {
        let id = self
            .inner
            .shared
            .store()
            .outbox_push(conversation, &content)?;
        self.command(Command::Flush)?;
        Ok(id)
    }

    /// Queues `content` as a reply to message `refs.reply_to` of the same conversation
    /// (0: none) that mentions `refs.mentions` (at most 100: the server counts it as an
    /// unread mention for each member named, even in a muted group, and drops users who
    /// are not members). Otherwise like [`Client::send`].
    pub fn send_with(
        &self,
        conversation: ConversationKey,
        content: pb::Content,
        refs: &crate::Refs,
    ) -> Result<u64, SdkError> {
        if refs.mentions.len() > 100 {
            return Err(SdkError::Invalid("a message mentions at most 100 users"));
        }
        let id = self
            .inner
            .shared
            .store()
            .outbox_push_with(conversation, &content, refs)?;
        self.command(Command::Flush)?;
        Ok(id)
    }

    /// Sends a text message.
    pub fn send_text(&self, conversation: ConversationKey, text: &str) -> Result<u64, SdkError> {
        self.send(conversation, content::text(text))
    }

    /// Sends a text that replies to message `reply_to` (0: none) and mentions
    /// `mentions`, which the text's own mention list names too (for highlighting).
    pub fn send_text_with(
        &self,
        conversation: ConversationKey,
        text: &str,
        reply_to: u64,
        mentions: &[u64],
    ) -> Result<u64, SdkError> {
        let mut body = content::text(text);
        if let Some(pb::content::Body::Text(t)) = body.body.as_mut() {
            t.mentions = mentions.to_vec();
        }
        self.send_with(
            conversation,
            body,
            &crate::Refs {
                reply_to,
                mentions: mentions.to_vec(),
            },
        )
    }

    /// Sends an image already uploaded to `media.uri` (with an optional thumbnail).
    pub fn send_image(
        &self,
        conversation: ConversationKey,
        media: pb::Media,
        width: u32,
        height: u32,
    ) -> Result<u64, SdkError> {
        self.send(conversation, content::image(media, width, height))
    }

    /// Sends an emoji (`code`) or a sticker (`pack` + `code`).
    pub fn send_emoji(
        &self,
        conversation: ConversationKey,
        code: &str,
        pack: &str,
    ) -> Result<u64, SdkError> {
        self.send(conversation, content::emoji(code, pack))
    }

    /// Sends a voice message already uploaded to `media.uri`.
    pub fn send_voice(
        &self,
        conversation: ConversationKey,
        media: pb::Media,
        duration_ms: u32,
    ) -> Result<u64, SdkError> {
        self.send(conversation, content::voice(media, duration_ms))
    }

    /// Sends a video already uploaded to `media.uri` (with an optional thumbnail).
    pub fn send_video(
        &self,
        conversation: ConversationKey,
        media: pb::Media,
        width: u32,
        height: u32,
        duration_ms: u32,
    ) -> Result<u64, SdkError> {
        self.send(
            conversation,
            content::video(media, width, height, duration_ms),
        )
    }

    /// Sends an image uploaded with [`crate::MediaClient::upload`]: its URI, thumbnail
    /// and server-measured dimensions.
    pub fn send_image_ref(
        &self,
        conversation: ConversationKey,
        media: &crate::MediaRef,
    ) -> Result<u64, SdkError> {
        self.send(conversation, media.image_content())
    }

    /// Sends a voice message uploaded with [`crate::MediaClient::upload_with`] (its
    /// duration given there).
    pub fn send_voice_ref(
        &self,
        conversation: ConversationKey,
        media: &crate::MediaRef,
    ) -> Result<u64, SdkError> {
        self.send(conversation, media.voice_content())
    }

    /// Sends a video uploaded with [`crate::MediaClient::upload_with`]; the frame size
    /// is the client's to tell.
    pub fn send_video_ref(
        &self,
        conversation: ConversationKey,
        media: &crate::MediaRef,
        width: u32,
        height: u32,
    ) -> Result<u64, SdkError> {
        self.send(conversation, media.video_content(width, height))
    }

    /// Sends not yet acknowledged by the server.
    pub fn outbox_len(&self) -> Result<usize, SdkError> {
        self.inner.shared.store().outbox_len()
    }

    // ---- requests --------------------------------------------------------------------

    /// Sends any request over the live session and returns the server's answer (an
    /// `Error` frame becomes [`SdkError::Server`]).
    pub async fn request(&self, body: impl Into<Body>) -> Result<Body, SdkError> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Request {
            body: Box::new(body.into()),
            reply,
        })?;
        let limit = self.inner.config.request_timeout;
        match tokio::time::timeout(limit, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(SdkError::Closed),
            Err(_) => Err(SdkError::Timeout(limit)),
        }
    }

    /// Runs one conversation operation.
    pub async fn conversation_op(&self, op: Op) -> Result<pb::ConversationOpResult, SdkError> {
        match self.request(pb::ConversationOp { op: Some(op) }).await? {
            Body::ConversationOpResult(r) => Ok(r),
            other => Err(SdkError::UnexpectedAnswer(format!(
                "{:?}",
                other.frame_type()
            ))),
        }
    }

    /// Creates a group owned by this user with `members`; returns the group.
    pub async fn create_group(
        &self,
        name: &str,
        members: &[u64],
    ) -> Result<ConversationKey, SdkError> {
        let r = self
            .conversation_op(Op::CreateGroup(pb::CreateGroup {
                name: name.into(),
                members: members.to_vec(),
            }))
            .await?;
        created(r)
    }

    /// Adds members to a group (owner or admin).
    pub async fn add_members(&self, group: u64, users: &[u64]) -> Result<(), SdkError> {
        self.conversation_op(Op::AddMembers(pb::AddMembers {
            group_id: group,
            users: users.to_vec(),
        }))
        .await
        .map(drop)
    }

    /// Removes members from a group (owner or admin).
    pub async fn remove_members(&self, group: u64, users: &[u64]) -> Result<(), SdkError> {
        self.conversation_op(Op::RemoveMembers(pb::RemoveMembers {
            group_id: group,
            users: users.to_vec(),
        }))
        .await
        .map(drop)
    }

    /// Leaves a group.
    pub async fn leave_group(&self, group: u64) -> Result<(), SdkError> {
        self.conversation_op(Op::LeaveGroup(pb::LeaveGroup { group_id: group }))
            .await
            .map(drop)
    }

    /// Joins (or creates) a chatroom. The result lists who is online and the room's
    /// recent messages. The SDK rejoins it after every reconnect until
    /// [`Client::leave_chatroom`].
    pub async fn join_chatroom(&self, room: u64) -> Result<pb::ConversationOpResult, SdkError> {
        let result = self
            .conversation_op(Op::JoinChatroom(pb::JoinChatroom { room_id: room }))
            .await?;
        self.inner.shared.rooms().insert(room);
        Ok(result)
    }

    /// Leaves a chatroom.
    pub async fn leave_chatroom(&self, room: u64) -> Result<(), SdkError> {
        self.inner.shared.rooms().remove(&room);
        self.conversation_op(Op::LeaveChatroom(pb::LeaveChatroom { room_id: room }))
            .await
            .map(drop)
    }

    /// Members of a group, or users currently in a chatroom.
    pub async fn list_members(
        &self,
        conversation: ConversationKey,
    ) -> Result<Vec<pb::Member>, SdkError> {
        self.conversation_op(Op::ListMembers(pb::ListMembers {
            conversation: Some(conversation.to_wire()),
        }))
        .await
        .map(|r| r.members)
    }

    /// Creates a public account owned by this user; returns it.
    pub async fn create_public_account(&self, name: &str) -> Result<ConversationKey, SdkError> {
        let r = self
            .conversation_op(Op::CreatePublicAccount(pb::CreatePublicAccount {
                name: name.into(),
            }))
            .await?;
        created(r)
    }

    /// Follows a public account.
    pub async fn follow(&self, account: u64) -> Result<(), SdkError> {
        self.conversation_op(Op::Follow(pb::Follow {
            account_id: account,
        }))
        .await
        .map(drop)
    }

    /// Unfollows a public account.
    pub async fn unfollow(&self, account: u64) -> Result<(), SdkError> {
        self.conversation_op(Op::Unfollow(pb::Unfollow {
            account_id: account,
        }))
        .await
        .map(drop)
    }

    /// How many of the other participants have read message `seq` of `conversation`, and
    /// of how many: `(read, of)`, e.g. "read by 37 of 500" (asked of the server; groups
    /// up to 10,000 members).
    pub async fn read_count(
        &self,
        conversation: ConversationKey,
        seq: u64,
    ) -> Result<(u64, u64), SdkError> {
        let result = self
            .conversation_op(Op::ReadCount(pb::ReadCount {
                conversation: Some(conversation.to_wire()),
                seq,
            }))
            .await?;
        let counted = result.read_count.unwrap_or_default();
        Ok((counted.read, counted.of))
    }

    /// Recalls message `seq` of `conversation`: allowed for its sender within the
    /// server's recall window, and for a group's owner or admins at any time. Every
    /// participant's devices drop its content ([`crate::Event::Recalled`], or
    /// [`crate::Message::recalled`] at their next sync); so does this device's store.
    pub async fn recall(&self, conversation: ConversationKey, seq: u64) -> Result<(), SdkError> {
        self.conversation_op(Op::RecallMessage(pb::RecallMessage {
            conversation: Some(conversation.to_wire()),
            seq,
        }))
        .await?;
        let recall = crate::Recalled {
            by: self.inner.config.user_id,
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        self.inner
            .shared
            .store()
            .apply_recall(conversation, seq, recall)?;
        Ok(())
    }

    /// Replaces the content of this user's message `seq` of `conversation` (within the
    /// server's edit window). Every participant's devices get the new version
    /// ([`crate::Event::Edited`], or the latest content at their next sync), this one
    /// included.
    pub async fn edit(
        &self,
        conversation: ConversationKey,
        seq: u64,
        content: pb::Content,
    ) -> Result<(), SdkError> {
        // The server pushes the new version, with its edit time, to this connection too:
        // the store takes it from there (a device clock would not order edits).
        self.conversation_op(Op::EditMessage(pb::EditMessage {
            conversation: Some(conversation.to_wire()),
            seq,
            content: Some(content),
        }))
        .await
        .map(drop)
    }

    /// Marks `conversation` read up to `seq`, locally and on the server (so the user's
    /// other devices learn it too).
    pub async fn mark_read(&self, conversation: ConversationKey, seq: u64) -> Result<(), SdkError> {
        self.inner.shared.store().set_read(conversation, seq)?;
        self.conversation_op(Op::MarkRead(pb::MarkRead {
            conversation: Some(conversation.to_wire()),
            seq,
        }))
        .await
        .map(drop)
    }

    // ---- local reads -----------------------------------------------------------------

    /// The conversation list from the local store, most recently active first, with
    /// unread counts.
    pub fn conversations(&self) -> Result<Vec<ConversationSummary>, SdkError> {
        self.inner.shared.store().conversations()
    }

    /// Up to `limit` messages of `conversation` older than `before_seq` (0 = newest),
    /// newest first: from the local store, topped up with pages from the server (which
    /// are stored for next time) when the store has fewer. Offline, returns what the
    /// store has.
    pub async fn load_history(
        &self,
        conversation: ConversationKey,
        before_seq: u64,
        limit: usize,
    ) -> Result<Vec<Message>, SdkError> {
        let local = self
            .inner
            .shared
            .store()
            .history(conversation, before_seq, limit)?;
        let oldest = local.last().map_or(before_seq, |m| m.seq);
        if local.len() >= limit || !conversation.is_persisted() || oldest == 1 {
            return Ok(local);
        }
        let missing = u32::try_from(limit - local.len()).unwrap_or(u32::MAX);
        let answer = self
            .request(pb::HistoryRequest {
                conversation: Some(conversation.to_wire()),
                before_seq: oldest,
                limit: missing,
            })
            .await;
        let page = match answer {
            Ok(Body::SyncResponse(page)) => page,
            Ok(other) => {
                return Err(SdkError::UnexpectedAnswer(format!(
                    "{:?}",
                    other.frame_type()
                )));
            }
            Err(SdkError::NotConnected | SdkError::ConnectionLost | SdkError::Timeout(_)) => {
                return Ok(local);
            }
            Err(e) => return Err(e),
        };
        let mut store = self.inner.shared.store();
        let applied = store.store_history(&page)?;
        self.inner.shared.emit(applied);
        store.history(conversation, before_seq, limit)
    }
}

fn created(r: pb::ConversationOpResult) -> Result<ConversationKey, SdkError> {
    ConversationKey::from_wire(r.conversation.as_ref()).ok_or_else(|| {
        SdkError::UnexpectedAnswer("ConversationOpResult without a conversation".into())
    })
}
