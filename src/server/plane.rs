//! A control plane and its storage committer as one loop drives them: what the home loop
//! ([`super::core_loop`]) and each per-core loop ([`super::per_core`]) do alike between
//! reading their transport and transmitting — storage replies in, the HTTP API's calls
//! and due timers, the control plane's actions out (this iteration's storage requests
//! as one group), the API's answers. Where a send, close or message to another core
//! goes is the loop's own business: [`Plane::perform`] hands those to it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use petrel_control::{Action, Control, Event, Ticket, Timestamp};
use petrel_storage::{Committer, GroupEngine, Request};

use super::core_loop::{MAX_SLEEP, now};
use super::disk_watch::DiskWatch;
use super::metrics::PUBLISH_INTERVAL;
use crate::api::bridge::ApiInbox;
use crate::webhook::dispatch::WebhookSender;

/// One loop's control plane, committer and their side channels.
pub struct Plane<E: GroupEngine + 'static> {
    pub control: Control,
    pub committer: Committer<E, Ticket>,
    /// This iteration's storage requests (one group commit).
    batch: Vec<(Ticket, Request)>,
    /// Its end of the HTTP API's bridge, when the API is enabled.
    api: Option<ApiInbox>,
    /// Where offline-message events go, when webhooks are enabled.
    webhook: Option<WebhookSender>,
    /// Told when storage fails for lack of space.
    disk: Arc<DiskWatch>,
    storage_failure_logged: bool,
}

impl<E: GroupEngine + 'static> Plane<E> {
    pub fn new(
        control: Control,
        committer: Committer<E, Ticket>,
        api: Option<ApiInbox>,
        webhook: Option<WebhookSender>,
        disk: Arc<DiskWatch>,
    ) -> Self {
        Plane {
            control,
            committer,
            batch: Vec::with_capacity(1024),
            api,
            webhook,
            disk,
            storage_failure_logged: false,
        }
    }

    /// Whether something waits that the loop must not sleep on: replies ready, or API
    /// calls queued.
    pub fn has_work(&mut self) -> bool {
        self.committer.has_ready() || self.api.as_ref().is_some_and(ApiInbox::has_calls)
    }

    /// Hands the storage replies that may be told now to the control plane. Returns how
    /// many.
    pub fn take_storage(&mut self, now: Timestamp) -> usize {
        let control = &mut self.control;
        let n = self.committer.take_ready(|ticket, result| {
            control.handle(now, Event::Storage { ticket, result });
        });
        note_storage_failure(
            &self.committer,
            &mut self.storage_failure_logged,
            &self.disk,
        );
        n
    }

    /// Takes the API's queued calls (not while the loop takes no input: `blocked`) and
    /// runs the control plane's due timers. Returns whether any call was taken.
    pub fn take_calls_and_timers(&mut self, now: Timestamp, blocked: bool) -> bool {
        // One try_recv on an empty channel when the API is idle.
        let mut work = false;
        if !blocked && let Some(api) = &mut self.api {
            work = api.take(now, &mut self.control) > 0;
        }
        if self.control.poll_timeout().is_some_and(|t| t <= now) {
            self.control.handle(now, Event::Tick);
        }
        work
    }

    /// Performs the control plane's actions: storage requests as this iteration's group
    /// (and, where storage answers at once, its replies and their actions too), offline
    /// messages to the webhook, and everything else — sends, closes, congestion notes,
    /// messages to other cores — to `route`. Then sends the API's answers.
    pub fn perform(&mut self, now: Timestamp, mut route: impl FnMut(Action)) {
        loop {
            while let Some(action) = self.control.poll_action() {
                match action {
                    Action::Storage { ticket, request } => self.batch.push((ticket, request)),
                    Action::OfflineMessage(message) => {
                        if let Some(webhook) = &self.webhook {
                            webhook.offer(message);
                        }
                    }
                    other => route(other),
                }
            }
            self.committer.commit(&mut self.batch);
            if !self.committer.has_ready() {
                break;
            }
            self.take_storage(now);
        }
        if let Some(api) = &mut self.api {
            api.answer(&mut self.control);
        }
    }

    /// How long the loop may sleep before the control plane's next timer (capped: short
    /// while draining, at the metrics interval when it publishes, else [`MAX_SLEEP`]).
    pub fn next_timeout(&mut self, draining: bool, publishes: bool) -> Duration {
        let cap = if draining {
            Duration::from_millis(20)
        } else if publishes {
            PUBLISH_INTERVAL
        } else {
            MAX_SLEEP
        };
        match self.control.poll_timeout() {
            Some(t) => t.saturating_since(now()).min(cap),
            None => cap,
        }
    }

    /// Waits for the last fsync and hands every remaining reply to the control plane.
    pub fn shut_down_storage(mut self) {
        let control = &mut self.control;
        let now_ts = now();
        self.committer.shutdown(|ticket, result| {
            control.handle(now_ts, Event::Storage { ticket, result });
        });
    }
}

/// Logs the committer's failure once (and tells the disk watch when the disk is full).
fn note_storage_failure<E: GroupEngine + 'static>(
    committer: &Committer<E, Ticket>,
    logged: &mut bool,
    disk: &DiskWatch,
) {
    if *logged {
        return;
    }
    let Some(cause) = committer.failure() else {
        return;
    };
    *logged = true;
    tracing::error!(
        error = %cause,
        "storage: a WAL sync failed; every write is refused until the server is \
         restarted (reads and sessions keep working)"
    );
    if cause.is_no_space() {
        // The disk watch stops the server for a restart once space is back.
        disk.storage_full.store(true, Ordering::Relaxed);
        tracing::warn!(
            "storage: the disk is full; free space on it and the server stops by \
             itself (exit status 75) to be restarted with the database reopened"
        );
    }
}
