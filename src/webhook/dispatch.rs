//! The `petrel-webhook` thread: takes events from the home core, queues them on disk,
//! and calls the receiver with them, retrying with back-off (see the module docs of
//! [`crate::webhook`]).

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::http::{Request, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use petrel_control::OfflineMessage;
use petrel_storage_rocks::outbox::Outbox;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::config::WebhookSettings;
use super::event;
use super::sign;
use super::stats::WebhookStats;

/// Events handed over by the home core and not yet taken by the webhook thread.
const CHANNEL: usize = 8 * 1024;
/// Most events written to the queue in one write.
const PERSIST_MAX: usize = 4 * 1024;
/// Largest answer body read from the receiver (the rest is not read).
const ANSWER_LIMIT: usize = 64 * 1024;
/// Most record bytes in one call (a call always carries at least one event).
const BODY_LIMIT: usize = 1 << 20;
/// Most recipients named in one event: a message to more offline users becomes several
/// events (a broadcast to a million followers must not be one giant record).
const RECIPIENTS_PER_EVENT: usize = 1_000;
/// Pause after the queue itself failed (a disk error), before trying again.
const QUEUE_ERROR_PAUSE: Duration = Duration::from_secs(1);

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The running webhook thread; [`Webhooks::sender`] is what the home core holds.
#[derive(Debug)]
pub struct Webhooks {
    sender: Option<WebhookSender>,
    thread: Option<JoinHandle<()>>,
}

/// The home core's end: hands events over without waiting.
#[derive(Debug, Clone)]
pub struct WebhookSender {
    tx: mpsc::Sender<Box<OfflineMessage>>,
    stats: Arc<WebhookStats>,
}

impl WebhookSender {
    /// Hands `message` to the webhook thread; when its channel is full the event is
    /// dropped and counted (the loop never waits for the webhook).
    pub fn offer(&self, message: Box<OfflineMessage>) {
        if self.tx.try_send(message).is_err() {
            let dropped = self
                .stats
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(
                    dropped_total = dropped,
                    "webhook: events arrive faster than the webhook thread queues them; \
                     dropping (petrel_webhook_events_total{{outcome=\"dropped\"}})"
                );
            }
        }
    }
}

impl Webhooks {
    /// Opens the queue in `data_dir/webhooks` and starts the thread.
    pub fn start(
        settings: WebhookSettings,
        data_dir: &Path,
        stats: Arc<WebhookStats>,
    ) -> anyhow::Result<Webhooks> {
        let path = data_dir.join("webhooks");
        let outbox = Outbox::open(&path)
            .with_context(|| format!("cannot open the webhook queue {}", path.display()))?;
        if !outbox.is_empty() || outbox.dead_len() > 0 {
            tracing::info!(
                queued = outbox.len(),
                dead_letters = outbox.dead_len(),
                url = %settings.target.url,
                "webhook: events from before the restart are still queued; sending them"
            );
        }
        let (tx, rx) = mpsc::channel(CHANNEL);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot build the webhook runtime")?;
        let thread_stats = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name("petrel-webhook".into())
            .spawn(move || {
                let dispatcher = Dispatcher::new(settings, outbox, thread_stats);
                runtime.block_on(dispatcher.run(rx));
            })
            .context("cannot start the webhook thread")?;
        Ok(Webhooks {
            sender: Some(WebhookSender { tx, stats }),
            thread: Some(thread),
        })
    }

    /// The handle the home core offers events through.
    pub fn sender(&self) -> Option<WebhookSender> {
        self.sender.clone()
    }

    /// Stops the thread once every event handed over is written to the queue (a call in
    /// flight finishes first, within the call timeout). Call after the core loops ended.
    pub fn stop(mut self) {
        // The thread stops when the last sender is gone: this one, and the home core's.
        self.sender = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the webhook thread panicked");
        }
    }
}

/// The thread's state.
struct Dispatcher {
    settings: WebhookSettings,
    outbox: Outbox,
    stats: Arc<WebhookStats>,
    client: HttpClient,
    /// Failed calls of the batch at the head of the queue.
    attempts: u32,
    /// When the head batch may be called again (`None`: now).
    retry_at: Option<Instant>,
}

impl Dispatcher {
    fn new(settings: WebhookSettings, outbox: Outbox, stats: Arc<WebhookStats>) -> Dispatcher {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let dispatcher = Dispatcher {
            settings,
            outbox,
            stats,
            client,
            attempts: 0,
            retry_at: None,
        };
        dispatcher.publish_depths();
        dispatcher
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Box<OfflineMessage>>) {
        let mut incoming = Vec::with_capacity(PERSIST_MAX);
        loop {
            let due = !self.outbox.is_empty() && self.retry_at.is_none_or(|t| t <= Instant::now());
            let open = if due {
                // Work to do: take what is waiting, without waiting for more.
                take_waiting(&mut rx, &mut incoming)
            } else {
                let retry_at = self.retry_at.filter(|_| !self.outbox.is_empty());
                tokio::select! {
                    got = rx.recv_many(&mut incoming, PERSIST_MAX) => {
                        got > 0 && take_waiting(&mut rx, &mut incoming)
                    }
                    () = sleep_until(retry_at) => true,
                }
            };
            self.persist(&mut incoming);
            if !open {
                // Stopping: everything handed over is on disk; calls resume after restart.
                return;
            }
            if !self.outbox.is_empty() && self.retry_at.is_none_or(|t| t <= Instant::now()) {
                self.send_head().await;
            }
        }
    }

    /// Writes `incoming` to the queue (up to `queue_max` events waiting; the rest are
    /// dropped and counted).
    // The boxes are the control plane's actions, moved along as they are.
    #[allow(clippy::vec_box)]
    fn persist(&mut self, incoming: &mut Vec<Box<OfflineMessage>>) {
        if incoming.is_empty() {
            return;
        }
        // One event per RECIPIENTS_PER_EVENT recipients of each message.
        let events: Vec<(usize, std::ops::Range<usize>)> = incoming
            .iter()
            .enumerate()
            .flat_map(|(i, m)| {
                let n = m.recipients.len();
                (0..n.div_ceil(RECIPIENTS_PER_EVENT).max(1)).map(move |k| {
                    let start = k * RECIPIENTS_PER_EVENT;
                    (i, start..(start + RECIPIENTS_PER_EVENT).min(n))
                })
            })
            .collect();
        let room = self.settings.queue_max.saturating_sub(self.outbox.len());
        let take = events.len().min(room);
        if take < events.len() {
            let over = events.len() - take;
            WebhookStats::add(&self.stats.dropped, over);
            tracing::warn!(
                dropped = over,
                queue_max = self.settings.queue_max,
                "webhook: the queue is full (the receiver is down or slow); dropping new events"
            );
        }
        match self.outbox.push(take, |k, id| {
            let (i, range) = &events[k];
            event::render_offline(id, &incoming[*i], &incoming[*i].recipients[range.clone()])
        }) {
            Ok(_) => WebhookStats::add(&self.stats.queued, take),
            Err(error) => {
                WebhookStats::add(&self.stats.dropped, take);
                tracing::error!(%error, events = take, "webhook: cannot write the queue; events lost");
            }
        }
        incoming.clear();
        self.publish_depths();
    }

    /// Calls the receiver with the oldest batch; on success deletes it, on failure
    /// schedules the next call or, after `max_attempts`, buries the batch.
    async fn send_head(&mut self) {
        let batch = match self.outbox.peek(self.settings.batch_max) {
            Ok(batch) => batch,
            Err(error) => {
                tracing::error!(%error, "webhook: cannot read the queue");
                self.retry_at = Some(Instant::now() + QUEUE_ERROR_PAUSE);
                return;
            }
        };
        // At most BODY_LIMIT bytes of records per call (always at least one).
        let mut bytes = 0;
        let keep = batch
            .iter()
            .take_while(|(_, record)| {
                bytes += record.len();
                bytes <= BODY_LIMIT
            })
            .count()
            .max(1);
        let mut batch = batch;
        batch.truncate(keep);
        let (Some(&(first, _)), Some(&(last, _))) = (batch.first(), batch.last()) else {
            // The queue's length said otherwise: nothing to send after all.
            self.retry_at = Some(Instant::now() + QUEUE_ERROR_PAUSE);
            return;
        };
        let body = event::body(batch.iter().map(|(_, record)| record.as_slice()));
        match self.call(body).await {
            Ok(()) => {
                WebhookStats::add(&self.stats.calls_ok, 1);
                self.attempts = 0;
                let ids: Vec<u64> = batch.iter().map(|(id, _)| *id).collect();
                if let Err(error) = self.outbox.remove(&ids) {
                    // Not deleted: they would go out again. Wait before trying anything
                    // (a full disk refuses every write until space is back).
                    tracing::error!(%error, "webhook: cannot delete delivered events; they may be sent again");
                    self.retry_at = Some(Instant::now() + QUEUE_ERROR_PAUSE);
                    return;
                }
                WebhookStats::add(&self.stats.delivered, batch.len());
                tracing::debug!(first, last, events = batch.len(), "webhook: delivered");
                self.retry_at = None;
            }
            Err(why) => {
                WebhookStats::add(&self.stats.calls_failed, 1);
                self.attempts += 1;
                if self.attempts >= self.settings.max_attempts {
                    tracing::error!(
                        first, last, events = batch.len(), attempts = self.attempts, %why,
                        url = %self.settings.target.url,
                        "webhook: giving up on these events; they are kept as dead letters"
                    );
                    match self.outbox.bury(&batch) {
                        Ok(()) => {
                            WebhookStats::add(&self.stats.dead, batch.len());
                            self.attempts = 0;
                            self.retry_at = None;
                        }
                        Err(error) => {
                            // Still queued: try burying again after a pause, no new calls.
                            tracing::error!(%error, "webhook: cannot bury events");
                            self.attempts = self.settings.max_attempts.saturating_sub(1);
                            self.retry_at = Some(Instant::now() + QUEUE_ERROR_PAUSE);
                        }
                    }
                } else {
                    let delay = backoff(&self.settings, self.attempts, rand::random());
                    tracing::warn!(
                        first, last, attempt = self.attempts, %why, retry_in_ms = delay.as_millis() as u64,
                        url = %self.settings.target.url,
                        "webhook: call failed; retrying"
                    );
                    self.retry_at = Some(Instant::now() + delay);
                }
            }
        }
        self.publish_depths();
    }

    /// One signed POST; `Ok` on a 2xx answer.
    async fn call(&self, body: Vec<u8>) -> Result<(), String> {
        let s = &self.settings;
        let unix_secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let request = Request::post(format!("http://{}{}", s.target.authority, s.target.path))
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("petrel/", env!("CARGO_PKG_VERSION")),
            )
            .header(sign::HEADER, sign::signature(&s.secret, unix_secs, &body))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let answer = match tokio::time::timeout(s.timeout, self.client.request(request)).await {
            Err(_) => return Err(format!("no answer within {} ms", s.timeout.as_millis())),
            Ok(Err(e)) => return Err(format!("{e}")),
            Ok(Ok(answer)) => answer,
        };
        let status = answer.status();
        // Read (a bounded part of) the answer so the connection can be reused.
        let _ = tokio::time::timeout(
            s.timeout,
            Limited::new(answer.into_body(), ANSWER_LIMIT).collect(),
        )
        .await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    }

    fn publish_depths(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.stats
            .queue_depth
            .store(self.outbox.len() as u64, Relaxed);
        self.stats
            .dead_depth
            .store(self.outbox.dead_len() as u64, Relaxed);
    }
}

/// Takes what waits in `rx` (up to [`PERSIST_MAX`] in `incoming`) without waiting;
/// false once the channel is closed and empty.
#[allow(clippy::vec_box)] // as for `persist`
fn take_waiting(
    rx: &mut mpsc::Receiver<Box<OfflineMessage>>,
    incoming: &mut Vec<Box<OfflineMessage>>,
) -> bool {
    while incoming.len() < PERSIST_MAX {
        match rx.try_recv() {
            Ok(message) => incoming.push(message),
            Err(mpsc::error::TryRecvError::Empty) => return true,
            Err(mpsc::error::TryRecvError::Disconnected) => return false,
        }
    }
    true
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The delay after the `attempt`-th failed call: `retry_base` doubled per further
/// failure, at most `retry_max`, then "equal jitter" — half of it fixed, half drawn from
/// `jitter` (uniform in 0..=1 as a fraction of `u32::MAX`), so receivers that come back
/// are not hit by every server at once.
fn backoff(s: &WebhookSettings, attempt: u32, jitter: u32) -> Duration {
    let doubled = s
        .retry_base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let delay = doubled.min(s.retry_max);
    let half = delay / 2;
    half + half.mul_f64(f64::from(jitter) / f64::from(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::config::Target;

    fn settings() -> WebhookSettings {
        WebhookSettings {
            target: Target::parse("http://127.0.0.1:1/").unwrap(),
            secret: b"0123456789abcdef".to_vec(),
            batch_max: 10,
            max_attempts: 8,
            retry_base: Duration::from_millis(1000),
            retry_max: Duration::from_millis(10_000),
            timeout: Duration::from_secs(1),
            queue_max: 100,
        }
    }

    #[test]
    fn a_message_to_many_offline_users_is_queued_as_events_of_at_most_a_thousand() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("webhooks")).unwrap();
        let mut d = Dispatcher::new(settings(), outbox, Arc::new(WebhookStats::default()));
        let message = |recipients: Vec<u64>| {
            Box::new(OfflineMessage {
                conversation: petrel_storage::ConversationKey::PublicAccount(3),
                seq: 1,
                sender: 9,
                sender_device: "api".into(),
                client_msg_id: 1,
                server_time_ms: 1,
                content: bytes::Bytes::new(),
                reply_to: 0,
                mentions: Vec::new(),
                recipients,
            })
        };
        let mut incoming = vec![message((1..=2_500).collect()), message(vec![7])];
        d.persist(&mut incoming);
        assert!(incoming.is_empty());
        let sizes: Vec<usize> = d
            .outbox
            .peek(10)
            .unwrap()
            .iter()
            .map(|(_, record)| {
                let event: serde_json::Value = serde_json::from_slice(record).unwrap();
                event["recipients"].as_array().unwrap().len()
            })
            .collect();
        assert_eq!(sizes, [1_000, 1_000, 500, 1]);
        assert_eq!(WebhookStats::get(&d.stats.queued), 4);
    }

    #[test]
    fn the_delay_doubles_up_to_the_maximum_with_half_of_it_jittered() {
        let s = settings();
        let ms = |attempt, jitter| backoff(&s, attempt, jitter).as_millis();
        assert_eq!(ms(1, 0), 500);
        assert_eq!(ms(1, u32::MAX), 1000);
        assert_eq!(ms(2, 0), 1000);
        assert_eq!(ms(3, u32::MAX), 4000);
        assert_eq!(ms(4, u32::MAX), 8000);
        assert_eq!(ms(5, u32::MAX), 10_000, "capped");
        assert_eq!(ms(60, 0), 5_000, "no overflow, still capped");
    }
}
