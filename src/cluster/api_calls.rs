//! The HTTP API's calls that concern the whole cluster, asked of every node.
//!
//! A node's API reaches its own cores ([`crate::api::bridge`]); what a user's sessions
//! are, or a chatroom's members, is held by the cores where they are — on any node. So
//! a call about sessions (`Sessions`, `Kick`, `Presence`, `RevokeToken`, `RevokeUser`)
//! is answered by this node's cores and, at the same time, asked of every other node
//! that is up, and the answers are merged as the cores' are; a chatroom call for a room
//! another node owns is asked of that node. The backend can call any node's API and
//! get the cluster's answer.
//!
//! Between nodes a call is a NATS request on `<name>.api.<node>` (core NATS
//! request/reply, postcard after the wire's magic byte and version, [`super::wire`]):
//! every node subscribes to its own subject ([`serve`]) and answers from its cores,
//! never asking further. A node that is down is not asked (what it held is gone, or
//! unreachable anyway), and one that answers that it is stopping (its sessions are
//! ending) is left out the same way; one that is up and does not answer within the
//! cluster's `request_timeout_ms`, or that nothing answers for (it stopped or lost NATS
//! a moment ago: its sessions may still be there), makes the whole call `SERVER_BUSY`
//! (HTTP 503) naming it — every one of these calls can be made again (a kick or a
//! revocation twice ends nothing twice).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use petrel_control::api::{ApiChatroomOp, ApiError, ApiReply, ApiRequest, Presence, SessionInfo};
use petrel_proto::pb;
use serde::{Deserialize, Serialize};

use super::{Layout, wire};
use crate::api::bridge::{Answer, ApiBridge, Unanswered};

/// This node's way to the other nodes' APIs. Shared by the HTTP side (which asks) and
/// the cluster bridge (which connects it and keeps it told which nodes are up).
#[derive(Debug)]
pub struct ClusterApi {
    name: String,
    layout: Layout,
    timeout: Duration,
    client: OnceLock<async_nats::Client>,
    /// The other nodes that are up (bit = node).
    up: AtomicU64,
}

impl ClusterApi {
    /// The calls of node `layout.node` of cluster `name`, each node given `timeout` to
    /// answer. Every other node counts as down until the bridge says otherwise.
    pub fn new(name: &str, layout: Layout, timeout: Duration) -> Arc<ClusterApi> {
        Arc::new(ClusterApi {
            name: name.to_owned(),
            layout,
            timeout,
            client: OnceLock::new(),
            up: AtomicU64::new(0),
        })
    }

    /// NATS is connected (the bridge's client).
    pub fn connected(&self, client: async_nats::Client) {
        let _ = self.client.set(client);
    }

    /// The other nodes that are up from now on (bit = node).
    pub fn set_up(&self, nodes: u64) {
        self.up.store(nodes, Ordering::Relaxed);
    }

    /// Whether `request` is answered by every node's cores together.
    pub fn spans_nodes(request: &ApiRequest) -> bool {
        matches!(
            request,
            ApiRequest::Sessions { .. }
                | ApiRequest::Kick { .. }
                | ApiRequest::Presence { .. }
                | ApiRequest::RevokeToken { .. }
                | ApiRequest::RevokeUser { .. }
        )
    }

    /// The answers of every other node that is up to `request`, in node order. A node
    /// that says it is stopping (its sessions are ending) is left out, as a node known
    /// to be down is.
    pub async fn ask_others(&self, request: &ApiRequest) -> Vec<Answer> {
        let up = self.up.load(Ordering::Relaxed);
        let asked = (0..self.layout.nodes)
            .filter(|&n| n != self.layout.node && up & (1u64 << n) != 0)
            .map(|node| self.request(node, request));
        futures_util::future::join_all(asked)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Node `node`'s answer to `request`: `SERVER_BUSY` when it is down or gone, does
    /// not answer in time, or answers what this node cannot read.
    pub async fn ask(&self, node: u8, request: &ApiRequest) -> Answer {
        self.request(node, request)
            .await
            .unwrap_or_else(|| busy(node, "is down or stopping"))
    }

    /// Node `node`'s answer to `request`, `None` if it is down or stopping.
    async fn request(&self, node: u8, request: &ApiRequest) -> Option<Answer> {
        if self.up.load(Ordering::Relaxed) & (1u64 << node) == 0 {
            return None;
        }
        self.request_up(node, request).await
    }

    /// Asks node `node`, which was up; `None` if it says it is stopping.
    async fn request_up(&self, node: u8, request: &ApiRequest) -> Option<Answer> {
        let busy = |why: &str| Some(busy(node, why));
        let Some(client) = self.client.get() else {
            return busy("cannot be reached: NATS is not connected");
        };
        let Some(call) = Call::of(request) else {
            return Some(Err(ApiError::new(
                pb::ErrorCode::Internal,
                format!("{request:?} is not asked of other nodes"),
            )));
        };
        let bytes = match wire::encode(&call) {
            Ok(bytes) => bytes,
            Err(e) => return busy(&format!("could not be asked ({e})")),
        };
        let subject = wire::api_subject(&self.name, node);
        let asked = client.request(subject, bytes.into());
        match tokio::time::timeout(self.timeout, asked).await {
            Ok(Ok(message)) => match wire::decode::<Reply>(&message.payload) {
                Ok(Reply::Gone) => None,
                Ok(reply) => Some(reply.into_answer()),
                Err(e) => busy(&format!("answered what this node cannot read ({e})")),
            },
            // Nothing takes its calls, yet it was heard from: it stopped (or lost NATS)
            // a moment ago, or cannot subscribe. Its sessions may still be there.
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                busy("takes no calls (it stopped or lost NATS a moment ago)")
            }
            Ok(Err(e)) => busy(&format!("did not answer ({e})")),
            Err(_) => busy(&format!("did not answer within {:?}", self.timeout)),
        }
    }
}

/// `SERVER_BUSY` from node `node`, saying `why`.
fn busy(node: u8, why: &str) -> Answer {
    let mut error = ApiError::new(
        pb::ErrorCode::ServerBusy,
        format!("cluster node {node} {why}; try again"),
    );
    error.retry_after_ms = 1_000;
    Err(error)
}

/// Answers the other nodes' calls on `subject` from this node's cores (`local`), until
/// the subscription ends. Each call is answered on a task of its own, so a slow one
/// holds up no other.
pub async fn serve(client: async_nats::Client, subject: String, local: ApiBridge) {
    let mut calls = loop {
        match client.subscribe(subject.clone()).await {
            Ok(calls) => break calls,
            Err(e) => {
                tracing::error!(%subject, error = %e,
                    "cluster: cannot take the other nodes' API calls yet (theirs about sessions answer 503 meanwhile); trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    while let Some(message) = calls.next().await {
        let Some(reply_to) = message.reply else {
            continue;
        };
        let (client, local) = (client.clone(), local.clone());
        tokio::spawn(async move {
            let reply = match wire::decode::<Call>(&message.payload) {
                Ok(call) => match local.call_local(call.into_request()).await {
                    Ok(Err(e)) if e.code == pb::ErrorCode::ShuttingDown => Reply::Gone,
                    Ok(answer) => Reply::of(&answer),
                    // The cores have stopped: the node is on its way out.
                    Err(Unanswered::Stopped) => Reply::Gone,
                    Err(Unanswered::Busy) => Reply::Error {
                        code: pb::ErrorCode::ServerBusy as i32,
                        message: "the node's cores have too many API calls queued".to_owned(),
                        retry_after_ms: 1_000,
                    },
                },
                // Two versions of Petrel that disagree on the calls: a server's
                // problem, not the caller's.
                Err(e) => Reply::Error {
                    code: pb::ErrorCode::Internal as i32,
                    message: format!("an API call this node cannot read: {e}"),
                    retry_after_ms: 0,
                },
            };
            match wire::encode(&reply) {
                Ok(bytes) => {
                    if let Err(e) = client.publish(reply_to, bytes.into()).await {
                        tracing::debug!(error = %e, "cluster: an API answer was not sent");
                    }
                }
                Err(e) => tracing::error!(error = %e, "cluster: cannot encode an API answer"),
            }
        });
    }
}

/// A call one node asks of another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Call {
    Sessions {
        user: u64,
    },
    Kick {
        user: u64,
        device: Option<String>,
        message: String,
    },
    Presence {
        users: Vec<u64>,
    },
    RevokeToken {
        token: String,
    },
    RevokeUser {
        user: u64,
    },
    Chatroom {
        room: u64,
        op: ApiChatroomOp,
    },
}

impl Call {
    /// The call for `request`, if it is one that other nodes answer.
    fn of(request: &ApiRequest) -> Option<Call> {
        Some(match request {
            ApiRequest::Sessions { user } => Call::Sessions { user: *user },
            ApiRequest::Kick {
                user,
                device,
                message,
            } => Call::Kick {
                user: *user,
                device: device.clone(),
                message: message.clone(),
            },
            ApiRequest::Presence { users } => Call::Presence {
                users: users.clone(),
            },
            ApiRequest::RevokeToken { token } => Call::RevokeToken {
                token: token.clone(),
            },
            ApiRequest::RevokeUser { user } => Call::RevokeUser { user: *user },
            ApiRequest::Chatroom { room, op } => Call::Chatroom {
                room: *room,
                op: *op,
            },
            _ => return None,
        })
    }

    fn into_request(self) -> ApiRequest {
        match self {
            Call::Sessions { user } => ApiRequest::Sessions { user },
            Call::Kick {
                user,
                device,
                message,
            } => ApiRequest::Kick {
                user,
                device,
                message,
            },
            Call::Presence { users } => ApiRequest::Presence { users },
            Call::RevokeToken { token } => ApiRequest::RevokeToken { token },
            Call::RevokeUser { user } => ApiRequest::RevokeUser { user },
            Call::Chatroom { room, op } => ApiRequest::Chatroom { room, op },
        }
    }
}

/// A node's answer to a [`Call`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Reply {
    Ended {
        sessions: u64,
    },
    Sessions(Vec<SessionInfo>),
    /// Per user asked, in order.
    Presence(Vec<Presence>),
    Chatroom {
        users: Vec<u64>,
        closed: bool,
    },
    Error {
        code: i32,
        message: String,
        retry_after_ms: u32,
    },
    /// A reply of a kind no call gets (a bug on the answering node).
    Unexpected(String),
    /// The node is stopping: its sessions are ending, leave it out.
    Gone,
}

impl Reply {
    fn of(answer: &Answer) -> Reply {
        match answer {
            Err(e) => Reply::Error {
                code: e.code as i32,
                message: e.message.clone(),
                retry_after_ms: e.retry_after_ms,
            },
            Ok(ApiReply::Ended { sessions }) => Reply::Ended {
                sessions: *sessions as u64,
            },
            Ok(ApiReply::Sessions(list)) => Reply::Sessions(list.clone()),
            Ok(ApiReply::Presence(list)) => Reply::Presence(list.clone()),
            Ok(ApiReply::Chatroom { users, closed }) => Reply::Chatroom {
                users: users.clone(),
                closed: *closed,
            },
            Ok(other) => Reply::Unexpected(format!("{other:?}")),
        }
    }

    fn into_answer(self) -> Answer {
        Ok(match self {
            Reply::Ended { sessions } => ApiReply::Ended {
                sessions: usize::try_from(sessions).unwrap_or(usize::MAX),
            },
            Reply::Sessions(list) => ApiReply::Sessions(list),
            Reply::Presence(list) => ApiReply::Presence(list),
            Reply::Chatroom { users, closed } => ApiReply::Chatroom { users, closed },
            Reply::Error {
                code,
                message,
                retry_after_ms,
            } => {
                return Err(ApiError {
                    code: pb::ErrorCode::try_from(code).unwrap_or(pb::ErrorCode::Internal),
                    message,
                    retry_after_ms,
                });
            }
            Reply::Gone => {
                return Err(ApiError::new(
                    pb::ErrorCode::ShuttingDown,
                    "the node is shutting down",
                ));
            }
            Reply::Unexpected(what) => {
                return Err(ApiError::new(
                    pb::ErrorCode::Internal,
                    format!("another node answered with the wrong reply kind: {what}"),
                ));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_control::Timestamp;

    #[test]
    fn calls_and_answers_cross_the_wire_unchanged() {
        let requests = [
            ApiRequest::Sessions { user: 7 },
            ApiRequest::Kick {
                user: 7,
                device: Some("phone".into()),
                message: "bye".into(),
            },
            ApiRequest::Presence { users: vec![1, 2] },
            ApiRequest::RevokeToken {
                token: "t0k3n".into(),
            },
            ApiRequest::RevokeUser { user: 9 },
            ApiRequest::Chatroom {
                room: 5,
                op: ApiChatroomOp::Kick { user: 3 },
            },
        ];
        for request in &requests {
            let call = Call::of(request).expect("asked of other nodes");
            let back: Call = wire::decode(&wire::encode(&call).unwrap()).unwrap();
            assert_eq!(back, call);
            assert_eq!(format!("{:?}", back.into_request()), format!("{request:?}"));
        }
        assert!(
            Call::of(&ApiRequest::Members {
                conversation: petrel_storage::ConversationKey::Group(1)
            })
            .is_none()
        );

        let session = SessionInfo {
            session_id: 11,
            device: "phone".into(),
            platform: 2,
            connected_at: Timestamp::from_millis(1_000),
            last_activity: Timestamp::from_millis(2_000),
            expires_at: Timestamp::from_millis(3_000),
        };
        let presence = Presence {
            user: 4,
            devices: 2,
            last_active_ms: Some(5),
        };
        let mut busy = ApiError::new(pb::ErrorCode::ServerBusy, "later");
        busy.retry_after_ms = 250;
        let answers: [Answer; 5] = [
            Ok(ApiReply::Ended { sessions: 3 }),
            Ok(ApiReply::Sessions(vec![session])),
            Ok(ApiReply::Presence(vec![presence])),
            Ok(ApiReply::Chatroom {
                users: vec![1],
                closed: true,
            }),
            Err(busy),
        ];
        for answer in &answers {
            let reply = Reply::of(answer);
            let back: Reply = wire::decode(&wire::encode(&reply).unwrap()).unwrap();
            assert_eq!(format!("{:?}", back.into_answer()), format!("{answer:?}"));
        }
    }
}
