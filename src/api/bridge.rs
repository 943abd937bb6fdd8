//! The way from an HTTP handler to the control plane(s) and back.
//!
//! A handler puts an [`ApiCall`] — the request and a oneshot for its answer — on a
//! bounded channel ([`QUEUE`] calls) to a core and wakes it. The core's loop polls the
//! channel once per iteration ([`ApiInbox::take`]), hands each request to
//! [`Control::handle_api`] under an id of its own, and after performing the actions
//! sends every answer [`Control::poll_api_reply`] has for it back over its oneshot
//! ([`ApiInbox::answer`]). A full channel is answered `503` with `Retry-After` at once;
//! nothing waits on a core loop for room.
//!
//! With one control plane (`ownership = "home"`) every call goes to core 0. With one per
//! core (`"per-core"`) a call about sessions — `Sessions`, `Kick`, `Presence`,
//! `RevokeToken`, `RevokeUser` — goes to every core, each answers for its own sessions,
//! and the answers are merged ([`merge`]); a chatroom call goes to the room's owner core
//! (`chatroom::room_owner`), which holds its members on every core; everything else
//! (tokens, sends, history, conversation operations: storage and pushes, which cross
//! cores by themselves) to core 0. In a cluster a call about sessions is also asked of
//! every other node that is up, and a chatroom call of the node that owns the room
//! ([`crate::cluster::api_calls`]).
//!
//! A loop's cost when the API is idle is one `try_recv` on an empty channel per
//! iteration; the map of outstanding oneshots is touched only by API traffic.

use std::collections::HashMap;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use petrel_control::api::{ApiError, ApiId, ApiReply, ApiRequest};
use petrel_control::{Control, Timestamp};
use petrel_dataplane::Wake;
use tokio::sync::oneshot;

use crate::cluster::api_calls::ClusterApi;

/// Calls waiting for one core, at most.
pub const QUEUE: usize = 1024;
/// Calls a core takes per iteration (the rest wait for the next one).
const BATCH: usize = 64;

/// The answer to one call.
pub type Answer = Result<ApiReply, ApiError>;

/// One request on its way to a core.
pub struct ApiCall {
    request: ApiRequest,
    reply: oneshot::Sender<Answer>,
}

/// Why a call got no answer from the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unanswered {
    /// The queue to a core is full.
    Busy,
    /// A core stopped (the server is shutting down).
    Stopped,
}

/// One core's end of the bridge.
#[derive(Clone)]
struct CoreLine {
    calls: Sender<ApiCall>,
    waker: Arc<dyn Wake>,
}

/// The HTTP side: cloned into every handler.
#[derive(Clone)]
pub struct ApiBridge {
    /// One per control plane, in core order.
    cores: Arc<[CoreLine]>,
    /// This node's cores among the cluster's, when it is a cluster node.
    cluster: Option<crate::cluster::Layout>,
    /// The other nodes' APIs, when it is a cluster node.
    remote: Option<Arc<ClusterApi>>,
}

/// Which control planes a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    One(usize),
    Every,
    /// A chatroom owned by a core of another cluster node, which only it can answer.
    Elsewhere {
        room: u64,
        node: u8,
    },
}

fn scope(request: &ApiRequest, cores: usize, cluster: Option<crate::cluster::Layout>) -> Scope {
    if let (Some(layout), ApiRequest::Chatroom { room, .. }) = (cluster, request) {
        let owner = petrel_control::chatroom::room_owner(*room, layout.total_cores());
        return if layout.is_local(owner) {
            Scope::One(usize::from(owner - layout.first_core()))
        } else {
            Scope::Elsewhere {
                room: *room,
                node: layout.node_of(owner),
            }
        };
    }
    if cores <= 1 {
        return Scope::One(0);
    }
    match request {
        ApiRequest::Sessions { .. }
        | ApiRequest::Kick { .. }
        | ApiRequest::Presence { .. }
        | ApiRequest::RevokeToken { .. }
        | ApiRequest::RevokeUser { .. } => Scope::Every,
        // The room's owner core holds its members on every core.
        ApiRequest::Chatroom { room, .. } => Scope::One(usize::from(
            petrel_control::chatroom::room_owner(*room, u8::try_from(cores).unwrap_or(u8::MAX)),
        )),
        _ => Scope::One(0),
    }
}

impl ApiBridge {
    /// Sends `request` to the control plane(s) it concerns — in a cluster, on other
    /// nodes too ([`crate::cluster::api_calls`]) — and waits for the answer.
    pub async fn call(&self, request: ApiRequest) -> Result<Answer, Unanswered> {
        if let Some(api) = &self.remote {
            if let Scope::Elsewhere { node, .. } = scope(&request, self.cores.len(), self.cluster) {
                return Ok(api.ask(node, &request).await);
            }
            if ClusterApi::spans_nodes(&request) {
                let (local, others) =
                    tokio::join!(self.call_local(request.clone()), api.ask_others(&request));
                let mut answers = vec![local?];
                answers.extend(others);
                return Ok(merge(answers));
            }
        }
        self.call_local(request).await
    }

    /// Sends `request` to the control plane(s) of this node it concerns and waits for
    /// the answer: this node's part of a call that spans the cluster.
    pub async fn call_local(&self, request: ApiRequest) -> Result<Answer, Unanswered> {
        match scope(&request, self.cores.len(), self.cluster) {
            Scope::One(core) => self.call_one(core, request)?.await,
            Scope::Elsewhere { room, node } => Ok(Err(ApiError::new(
                petrel_proto::pb::ErrorCode::InvalidRequest,
                format!(
                    "chatroom {room} is held by cluster node {node}, which this node does not ask"
                ),
            ))),
            Scope::Every => {
                let mut pending = Vec::with_capacity(self.cores.len());
                for core in 0..self.cores.len() {
                    pending.push(self.call_one(core, request.clone())?);
                }
                let mut answers = Vec::with_capacity(pending.len());
                for answer in pending {
                    answers.push(answer.await?);
                }
                Ok(merge(answers))
            }
        }
    }

    /// Queues `request` for `core`; the future resolves with its answer.
    fn call_one(
        &self,
        core: usize,
        request: ApiRequest,
    ) -> Result<impl Future<Output = Result<Answer, Unanswered>> + use<>, Unanswered> {
        let line = self.cores.get(core).ok_or(Unanswered::Stopped)?;
        let (tx, rx) = oneshot::channel();
        match line.calls.try_send(ApiCall { request, reply: tx }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(Unanswered::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(Unanswered::Stopped),
        }
        if let Err(error) = line.waker.wake() {
            tracing::warn!(%error, core, "api: cannot wake a core");
        }
        Ok(async move { rx.await.map_err(|_| Unanswered::Stopped) })
    }
}

/// One answer from the answers of every core (of every node, in a cluster) to a
/// request about sessions: the first error if any refused it (cores refuse alike: the
/// checks need no session; a node that did not answer is `SERVER_BUSY`), else
/// the sessions ended summed, the session lists joined (by session id), the presence
/// counts added user by user (every core answers in the order asked) with the latest
/// last activity (each node reads its own storage's).
fn merge(answers: Vec<Answer>) -> Answer {
    let mut merged: Option<ApiReply> = None;
    for answer in answers {
        let reply = answer?;
        merged = Some(match (merged, reply) {
            (None, reply) => reply,
            (Some(ApiReply::Ended { sessions: a }), ApiReply::Ended { sessions: b }) => {
                ApiReply::Ended { sessions: a + b }
            }
            (Some(ApiReply::Sessions(mut a)), ApiReply::Sessions(b)) => {
                a.extend(b);
                a.sort_by_key(|s| s.session_id);
                ApiReply::Sessions(a)
            }
            (Some(ApiReply::Presence(mut a)), ApiReply::Presence(b)) => {
                for (mine, theirs) in a.iter_mut().zip(b) {
                    mine.devices += theirs.devices;
                    mine.last_active_ms = mine.last_active_ms.max(theirs.last_active_ms);
                }
                ApiReply::Presence(a)
            }
            (Some(first), other) => {
                return Err(ApiError::new(
                    petrel_proto::pb::ErrorCode::Internal,
                    format!("cores answered unlike: {first:?} and {other:?}"),
                ));
            }
        });
    }
    merged.ok_or_else(|| {
        ApiError::new(
            petrel_proto::pb::ErrorCode::Internal,
            "no core answered".to_string(),
        )
    })
}

/// A bridge and one inbox per core; `wakers[i]` is woken whenever a call is queued for
/// core `i`.
impl ApiBridge {
    /// Routes chatroom calls by the cluster's layout (this node's cores are part of
    /// it): a room another node holds is asked of that node through `remote`, as are
    /// the calls about sessions of every other node.
    pub fn in_cluster(
        mut self,
        layout: crate::cluster::Layout,
        remote: Arc<ClusterApi>,
    ) -> ApiBridge {
        self.cluster = Some(layout);
        self.remote = Some(remote);
        self
    }
}

pub fn channel(wakers: Vec<Arc<dyn Wake>>) -> (ApiBridge, Vec<ApiInbox>) {
    let mut lines = Vec::with_capacity(wakers.len());
    let mut inboxes = Vec::with_capacity(wakers.len());
    for waker in wakers {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        lines.push(CoreLine { calls: tx, waker });
        inboxes.push(ApiInbox {
            calls: rx,
            waiting: HashMap::new(),
            next_id: 0,
        });
    }
    (
        ApiBridge {
            cores: lines.into(),
            cluster: None,
            remote: None,
        },
        inboxes,
    )
}

impl Drop for ApiInbox {
    fn drop(&mut self) {
        self.refuse_all();
    }
}

/// A core's side.
pub struct ApiInbox {
    calls: Receiver<ApiCall>,
    waiting: HashMap<ApiId, oneshot::Sender<Answer>>,
    next_id: u64,
}

impl ApiInbox {
    /// Hands up to one batch of queued calls to the control plane. Returns how many.
    pub fn take(&mut self, now: Timestamp, control: &mut Control) -> usize {
        let mut n = 0;
        while n < BATCH {
            let Ok(call) = self.calls.try_recv() else {
                break;
            };
            n += 1;
            // The HTTP side may have given up (client gone); the control plane still
            // runs the request, as it would a frame whose connection closed.
            self.next_id += 1;
            let id = ApiId(self.next_id);
            self.waiting.insert(id, call.reply);
            control.handle_api(now, id, call.request);
        }
        n
    }

    /// Sends every answer the control plane has ready.
    pub fn answer(&mut self, control: &mut Control) {
        while let Some((id, answer)) = control.poll_api_reply() {
            if let Some(reply) = self.waiting.remove(&id) {
                // The HTTP request may be gone; nothing to do then.
                let _ = reply.send(answer);
            }
        }
    }

    /// Whether calls are queued (the loop must not sleep on them).
    pub fn has_calls(&self) -> bool {
        !self.calls.is_empty()
    }

    /// Answers every queued call `ShuttingDown` without running it: the core is
    /// stopping (its sessions are being ended), and a call must not wait for ever.
    /// (Dropping the inbox does the same for the calls still queued then; later ones
    /// find the channel closed.)
    pub fn refuse_all(&mut self) {
        while let Ok(call) = self.calls.try_recv() {
            let _ = call.reply.send(Err(ApiError::new(
                petrel_proto::pb::ErrorCode::ShuttingDown,
                "this server is shutting down",
            )));
        }
    }
}
