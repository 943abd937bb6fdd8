//! The way from an HTTP handler to the control plane on the home core and back.
//!
//! A handler puts an [`ApiCall`] — the request and a oneshot for its answer — on a
//! bounded channel ([`QUEUE`] calls) and wakes the home core. The home core's loop polls
//! the channel once per iteration ([`ApiInbox::take`]), hands each request to
//! [`Control::handle_api`] under an id of its own, and after performing the actions
//! sends every answer [`Control::poll_api_reply`] has for it back over its oneshot
//! ([`ApiInbox::answer`]). A full channel is answered `503` with `Retry-After` at once;
//! nothing waits on the core loop for room.
//!
//! The loop's cost when the API is idle is one `try_recv` on an empty channel per
//! iteration; the map of outstanding oneshots is touched only by API traffic.

use std::collections::HashMap;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use petrel_control::api::{ApiError, ApiId, ApiReply, ApiRequest};
use petrel_control::{Control, Timestamp};
use petrel_dataplane::Wake;
use tokio::sync::oneshot;

/// Calls waiting for the home core, at most.
pub const QUEUE: usize = 1024;
/// Calls the home core takes per iteration (the rest wait for the next one).
const BATCH: usize = 64;

/// The answer to one call.
pub type Answer = Result<ApiReply, ApiError>;

/// One request on its way to the home core.
pub struct ApiCall {
    request: ApiRequest,
    reply: oneshot::Sender<Answer>,
}

/// Why a call got no answer from the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unanswered {
    /// The queue to the home core is full.
    Busy,
    /// The home core stopped (the server is shutting down).
    Stopped,
}

/// The HTTP side: cloned into every handler.
#[derive(Clone)]
pub struct ApiBridge {
    calls: Sender<ApiCall>,
    home: Arc<dyn Wake>,
}

impl ApiBridge {
    /// Sends `request` to the control plane and waits for its answer.
    pub async fn call(&self, request: ApiRequest) -> Result<Answer, Unanswered> {
        let (tx, rx) = oneshot::channel();
        match self.calls.try_send(ApiCall { request, reply: tx }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(Unanswered::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(Unanswered::Stopped),
        }
        if let Err(error) = self.home.wake() {
            tracing::warn!(%error, "api: cannot wake the home core");
        }
        rx.await.map_err(|_| Unanswered::Stopped)
    }
}

/// The home core's side.
pub struct ApiInbox {
    calls: Receiver<ApiCall>,
    waiting: HashMap<ApiId, oneshot::Sender<Answer>>,
    next_id: u64,
}

/// A bridge and its inbox; `home` is woken whenever a call is queued.
pub fn channel(home: Arc<dyn Wake>) -> (ApiBridge, ApiInbox) {
    let (tx, rx) = crossbeam_channel::bounded(QUEUE);
    (
        ApiBridge { calls: tx, home },
        ApiInbox {
            calls: rx,
            waiting: HashMap::new(),
            next_id: 0,
        },
    )
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
}
