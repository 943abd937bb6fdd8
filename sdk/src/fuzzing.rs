//! A harness for fuzzing the SDK's handling of what a server sends (cargo feature
//! `fuzzing`, for `sdk/fuzz` only; not part of the SDK's API).
//!
//! It runs the connection task's synchronous core — the same `Task::begin` and
//! `Task::on_frame` a live session runs, on a [`FramedIo`] with no socket — over an
//! in-memory store holding a known outbox. [`Harness::receive`] takes server bytes, cuts
//! them into frames and handles each; when the task says the session ends (a kick, a
//! fatal framing error), the harness "reconnects" as the task would: a fresh session on
//! the same store, which begins again with rejoins, a sync and the outbox.
//!
//! Deterministic: request ids count up from 1, the outbox ids are [`OUTBOX`], and no
//! timer runs (heartbeat, renewal and retry timers live in the async loop, not here).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use petrel_proto::{Frame, FrameDecoder, pb};
use tokio::sync::{mpsc, watch};

use crate::config::ClientConfig;
use crate::conn::{ConnError, FramedIo};
use crate::event::{ConnectionState, ConversationKey, Event};
use crate::store::Store;
use crate::task::{Live, Shared, Task};
use crate::token::{Token, token_fn};

/// The harness's user.
pub const USER: u64 = 101;
/// The chatroom the app is in (rejoined at the start of every session).
pub const ROOM: u64 = 5;
/// The outbox at the start: (client_msg_id, conversation), oldest first.
pub const OUTBOX: [(u64, ConversationKey); 4] = [
    (1001, ConversationKey::single(202)),
    (1002, ConversationKey::group(9)),
    (1003, ConversationKey::chatroom(ROOM)),
    (1004, ConversationKey::public_account(77)),
];
/// Most sends in flight (the config's `send_window`).
pub const SEND_WINDOW: usize = 3;

/// The SDK's frame handling without a socket. See the module docs.
pub struct Harness {
    task: Task,
    live: Live,
    events: mpsc::UnboundedReceiver<Event>,
    /// Keeps the task's command channel open.
    _commands: mpsc::UnboundedSender<crate::task::Command>,
    /// Keeps the task's state channel open.
    _state: watch::Receiver<ConnectionState>,
    sent: FrameDecoder,
    sessions: u64,
}

impl Harness {
    /// A logged-in session with [`OUTBOX`] queued and [`ROOM`] joined; what the session
    /// sends first (rejoin, sync, sends) is already queued (see [`Harness::take_sent`]).
    pub fn new() -> Harness {
        let mut config = ClientConfig::new(USER, "fuzz", vec!["127.0.0.1:9".into()]);
        config.send_window = SEND_WINDOW;
        config.sync_page_limit = 4;
        config.jitter_seed = Some(1);
        let mut store = Store::open(None, USER, "fuzz").expect("an in-memory store opens");
        let content = pb::Content {
            body: Some(pb::content::Body::Text(pb::Text {
                text: "queued".into(),
                mentions: Vec::new(),
            })),
        };
        let blob = prost::Message::encode_to_vec(&content);
        for (id, key) in OUTBOX {
            assert!(store.outbox_insert(id, key, &blob).expect("outbox insert"));
        }
        let (events_tx, events) = mpsc::unbounded_channel();
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(ConnectionState::Connecting {
            endpoint: String::new(),
            attempt: 0,
        });
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            events: events_tx,
            rooms: Mutex::new([ROOM].into_iter().collect()),
        });
        let provider = token_fn(|| {
            Ok(Token {
                token: "fuzz".into(),
                expires_at_ms: 0,
            })
        });
        let task = Task::new(config, Arc::new(provider), shared, state_tx, commands_rx);
        let mut harness = Harness {
            task,
            live: Live::new(FramedIo::new(), Duration::from_secs(30), None),
            events,
            _commands: commands,
            _state: state,
            sent: FrameDecoder::default(),
            sessions: 0,
        };
        harness.start_session();
        harness
    }

    fn start_session(&mut self) {
        self.sessions += 1;
        self.live = Live::new(FramedIo::new(), Duration::from_secs(30), None);
        self.sent = FrameDecoder::default();
        self.task
            .begin(&mut self.live)
            .expect("a new session's first frames encode");
    }

    /// Takes bytes from the server and handles every whole frame among them. A frame that
    /// ends the session (a kick) starts a new session (what the task does after its
    /// back-off), and the bytes after it go to the new one; a fatal framing error starts
    /// a new session too, dropping what was buffered (that stream is lost), and is
    /// returned.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        self.live.io.received(bytes);
        loop {
            let frame = match self.live.io.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.start_session();
                    return Err(e);
                }
            };
            match self.task.on_frame(&mut self.live, frame) {
                Ok(None) => {}
                Ok(Some(_ended)) => {
                    // The bytes after the frame that ended the session are the next
                    // session's first (its own stream starts at a frame boundary too).
                    let rest = self.live.io.take_unread();
                    self.start_session();
                    self.live.io.received(&rest);
                }
                Err(e) => {
                    self.start_session();
                    return Err(e);
                }
            }
        }
    }

    /// Frames the SDK queued for the server since the last call (decoded from the
    /// current session's write buffer; they must decode).
    pub fn take_sent(&mut self) -> Vec<Frame> {
        let mut out = self.live.io.take_output();
        let mut frames = Vec::new();
        while let Some(frame) = self
            .sent
            .decode(&mut out)
            .expect("the SDK sends valid frames")
        {
            frames.push(frame);
        }
        assert!(out.is_empty(), "the SDK queued a partial frame");
        frames
    }

    /// Events the app would have received since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            out.push(event);
        }
        out
    }

    /// Requests of the current session waiting for an answer.
    pub fn pending(&self) -> usize {
        self.live.pending()
    }

    /// Sends of the current session waiting for an ack.
    pub fn in_flight(&self) -> usize {
        self.live.in_flight()
    }

    /// Sessions so far (1 + reconnects).
    pub fn sessions(&self) -> u64 {
        self.sessions
    }

    /// Queued sends still in the outbox.
    pub fn outbox_len(&self) -> usize {
        self.task.store_outbox_len()
    }
}

impl Default for Harness {
    fn default() -> Self {
        Harness::new()
    }
}
