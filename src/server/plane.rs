//! A control plane and its storage committer as one loop drives them: what the home loop
//! ([`super::core_loop`]) and each per-core loop ([`super::per_core`]) do alike between
//! reading their transport and transmitting — storage replies in, the HTTP API's calls
//! and due timers, the control plane's actions out (this iteration's storage requests
//! as one group), the API's answers. Where a send, close or message to another core
//! goes is the loop's own business: [`Plane::perform`] hands those to it.
//!
//! With one control plane per core, the plane also keeps each write in its partition's
//! owner core ([`super::writers`]): a write for another core's partition waits in
//! [`Plane::take_mail`]'s outbox as [`Mail::Write`], a write another core sent here is
//! committed with this core's group, and its reply goes back as [`Mail::Written`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use petrel_control::{Action, Control, CoreMessage, Event, Ticket, Timestamp};
use petrel_storage::{Committer, GroupEngine, Request, StorageError};

use super::core_loop::{MAX_SLEEP, now};
use super::disk_watch::DiskWatch;
use super::metrics::PUBLISH_INTERVAL;
use super::writers::{Mail, Origin, Writers};
use crate::api::bridge::ApiInbox;
use crate::cluster::bridge::Inbound;
use crate::cluster::gather;
use crate::cluster::inflight::InFlight;
use crate::cluster::stats::ClusterStats;
use crate::webhook::dispatch::WebhookSender;

/// One loop's control plane, committer and their side channels.
pub struct Plane<E: GroupEngine + 'static> {
    pub control: Control,
    pub committer: Committer<E, Origin>,
    /// This iteration's storage requests (one group commit).
    batch: Vec<(Origin, Request)>,
    /// Which core writes each partition (`None`: this plane writes everything).
    writers: Option<Writers>,
    /// Writes and replies for other cores, until the loop puts them on the rings.
    outbox: Vec<(u8, Mail)>,
    /// Writes sent to their partition's owner and not yet answered.
    sent_away: usize,
    /// Requests waiting for another node of the cluster (`None`: no cluster).
    cluster: Option<InFlight>,
    /// Where the requests another node left unanswered are counted.
    cluster_stats: Option<Arc<ClusterStats>>,
    /// Writes sent to their partition's owner core, since start.
    pub writes_sent: u64,
    /// Writes applied here for another core, since start.
    pub writes_applied_for_others: u64,
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
        committer: Committer<E, Origin>,
        api: Option<ApiInbox>,
        webhook: Option<WebhookSender>,
        disk: Arc<DiskWatch>,
    ) -> Self {
        Plane {
            control,
            committer,
            batch: Vec::with_capacity(1024),
            writers: None,
            outbox: Vec::new(),
            sent_away: 0,
            cluster: None,
            cluster_stats: None,
            writes_sent: 0,
            writes_applied_for_others: 0,
            api,
            webhook,
            disk,
            storage_failure_logged: false,
        }
    }

    /// Sends each write to its partition's owner core ([`super::writers`]).
    pub fn with_writers(mut self, writers: Writers) -> Self {
        self.writers = Some(writers);
        self
    }

    /// Sends requests for other nodes' partitions there, and asks every node that is up
    /// for reads that span them ([`crate::cluster`]).
    pub fn with_cluster(mut self, inflight: InFlight, stats: Arc<ClusterStats>) -> Self {
        self.cluster = Some(inflight);
        self.cluster_stats = Some(stats);
        self
    }

    /// Storage requests not yet answered: this committer's, and this core's writes
    /// waiting for their owner core's (or node's) reply.
    pub fn in_flight(&self) -> usize {
        self.committer.in_flight() + self.sent_away + self.cluster.as_ref().map_or(0, InFlight::len)
    }

    /// Takes what the cluster bridge hands this core: mail from another node's core,
    /// or nodes going down (what waits for them is answered `SERVER_BUSY`, and their
    /// users stop counting as online) or coming up (they are told every session here).
    pub fn take_inbound(&mut self, now: Timestamp, inbound: Inbound) {
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        let layout = cluster.layout();
        match inbound {
            Inbound::Mail { from, mail } => self.take_mail(now, from, mail),
            Inbound::Down(nodes) => {
                let control = &mut self.control;
                let n = cluster.nodes_down(nodes, |(ticket, result)| {
                    control.handle(now, Event::Storage { ticket, result });
                });
                if let Some(stats) = &self.cluster_stats {
                    ClusterStats::add(&stats.requests_node_down, n as u64);
                }
                control.handle(
                    now,
                    Event::CoresDown {
                        cores: layout.cores_of_nodes(nodes),
                    },
                );
            }
            Inbound::Up(nodes) => {
                cluster.nodes_up(nodes);
                self.control.handle(
                    now,
                    Event::CoresUp {
                        cores: layout.cores_of_nodes(nodes),
                    },
                );
            }
            Inbound::Endpoints(endpoints) => self.control.set_reconnect_to(endpoints),
        }
    }

    /// A revocation another node announces, new to this node, is written here too (by
    /// the node's first core): the media service and the directory check tokens against
    /// this node's database, and a node that was down when the token was revoked hears
    /// of it only when the others announce their lists to it again.
    fn keep_remote_revocation(&mut self, from: u8, message: &CoreMessage) {
        let CoreMessage::Revoked {
            token_id,
            expires_at_ms,
        } = message
        else {
            return;
        };
        let (Some(cluster), Some(writers)) = (&self.cluster, self.writers) else {
            return;
        };
        if cluster.layout().is_local(from)
            || !writers.first_of_node()
            || self.control.knows_revoked(*token_id)
        {
            return;
        }
        self.batch.push((
            Origin::Nobody,
            Request::RevokeToken {
                token: petrel_storage::TokenId(*token_id),
                expires_at_ms: *expires_at_ms,
            },
        ));
    }

    /// Answers `SERVER_BUSY` for the requests another node left unanswered past the
    /// request timeout. Returns whether any.
    pub fn expire_remote(&mut self, now: Timestamp) -> bool {
        let Some(cluster) = &mut self.cluster else {
            return false;
        };
        // Deadlines on the monotonic clock: a wall clock stepped back must not hold
        // requests to another node past their timeout.
        let mono = super::core_loop::monotonic();
        if !cluster.has_expired(mono) {
            return false;
        }
        let control = &mut self.control;
        let n = cluster.expire(mono, |(ticket, result)| {
            control.handle(now, Event::Storage { ticket, result });
        });
        if n > 0 {
            tracing::debug!(requests = n, "cluster: requests to another node timed out");
            if let Some(stats) = &self.cluster_stats {
                ClusterStats::add(&stats.requests_timed_out, n as u64);
            }
        }
        true
    }

    /// Where the control plane's storage request goes: this iteration's group, another
    /// core's ring, or (a read spanning nodes) every node that is up.
    fn route_storage(&mut self, now: Timestamp, ticket: Ticket, request: Request) {
        let Some(writers) = self.writers else {
            self.batch.push((Origin::Here(ticket), request));
            return;
        };
        if let Some(cluster) = &mut self.cluster
            && writers.spans_nodes(&request)
        {
            let layout = writers.layout();
            let up = cluster.up_nodes();
            let parts = up.count_ones() as usize;
            cluster.gather(ticket, &request, up);
            for node in (0..layout.nodes).filter(|&n| n != layout.node && up & (1u64 << n) != 0) {
                cluster.expect(super::core_loop::monotonic(), ticket, node);
                self.outbox.push((
                    writers.core_on(node),
                    Mail::Write {
                        ticket,
                        request: gather::share(&request, parts),
                    },
                ));
            }
            self.batch
                .push((Origin::Here(ticket), gather::share(&request, parts)));
            return;
        }
        let Some(core) = writers.elsewhere(&request) else {
            self.batch.push((Origin::Here(ticket), request));
            return;
        };
        match &mut self.cluster {
            // Another node's core: its reply is awaited with a deadline.
            Some(cluster) if !cluster.layout().is_local(core) => {
                let node = cluster.layout().node_of(core);
                if cluster.is_down(node) {
                    // Its owner is down: answered now rather than after the timeout.
                    self.control.handle(
                        now,
                        Event::Storage {
                            ticket,
                            result: Err(StorageError::Unavailable),
                        },
                    );
                    return;
                }
                cluster.expect(super::core_loop::monotonic(), ticket, node);
            }
            _ => self.sent_away += 1,
        }
        self.writes_sent += 1;
        self.outbox.push((core, Mail::Write { ticket, request }));
    }

    /// Takes a message another core sent: control-plane messages go to the control
    /// plane, writes join this iteration's group, replies go to the control plane as
    /// storage replies.
    pub fn take_mail(&mut self, now: Timestamp, from: u8, mail: Mail) {
        match mail {
            Mail::Control(message) => {
                self.keep_remote_revocation(from, &message);
                self.control.handle(
                    now,
                    Event::FromCore {
                        core: from,
                        message,
                    },
                );
            }
            Mail::Write { ticket, request } => {
                // A write from another node for a partition this core does not own (the
                // nodes disagree on the layout) is refused, never applied twice over.
                if let (Some(cluster), Some(writers)) = (&self.cluster, self.writers)
                    && !cluster.layout().is_local(from)
                    && request.partition_conversation().is_some()
                    && writers.elsewhere(&request).is_some()
                {
                    tracing::error!(
                        from,
                        "cluster: a write for a partition this core does not own; refused"
                    );
                    self.outbox.push((
                        from,
                        Mail::Written {
                            ticket,
                            result: Err(StorageError::Invalid("not the owner of this partition")),
                        },
                    ));
                    return;
                }
                self.writes_applied_for_others += 1;
                self.batch
                    .push((Origin::Core { core: from, ticket }, request));
            }
            Mail::Written { ticket, result } => {
                if let Some(cluster) = &mut self.cluster {
                    let layout = cluster.layout();
                    if !layout.is_local(from) {
                        // Once, unless it came after the request was given up on.
                        if let Some((ticket, result)) =
                            cluster.answer(layout.node_of(from), ticket, result, true)
                        {
                            self.control.handle(now, Event::Storage { ticket, result });
                        }
                        return;
                    }
                }
                self.sent_away = self.sent_away.saturating_sub(1);
                self.control.handle(now, Event::Storage { ticket, result });
            }
        }
    }

    /// Hands the writes and replies for other cores to `send`, in the order they were
    /// made.
    pub fn drain_outbox(&mut self, mut send: impl FnMut(u8, Mail)) {
        for (core, mail) in self.outbox.drain(..) {
            send(core, mail);
        }
    }

    /// Answers the queued API calls `ShuttingDown` (this core is stopping).
    pub fn refuse_api_calls(&mut self) {
        if let Some(api) = &mut self.api {
            api.refuse_all();
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
        let (control, outbox, cluster) = (&mut self.control, &mut self.outbox, &mut self.cluster);
        let n = self.committer.take_ready(|origin, result| match origin {
            Origin::Here(ticket) => answer_here(control, cluster, now, ticket, result),
            Origin::Core { core, ticket } => outbox.push((core, Mail::Written { ticket, result })),
            Origin::Nobody => unwaited(result),
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
        work |= self.expire_remote(now);
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
                    Action::Storage { ticket, request } => {
                        self.route_storage(now, ticket, request);
                    }
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
        // Requests waiting for another node time out on this loop's clock: look often
        // enough that a timeout is answered within a tenth of a second of its deadline.
        let cap = if self.cluster.as_ref().is_some_and(|c| c.len() > 0) {
            cap.min(Duration::from_millis(100))
        } else {
            cap
        };
        match self.control.poll_timeout() {
            Some(t) => t.saturating_since(now()).min(cap),
            None => cap,
        }
    }

    /// Waits for the last fsync and hands every remaining reply to the control plane,
    /// and those for other cores to `send`.
    pub fn shut_down_storage(mut self, mut send: impl FnMut(u8, Mail)) {
        let (control, cluster) = (&mut self.control, &mut self.cluster);
        let now_ts = now();
        self.committer.shutdown(|origin, result| match origin {
            Origin::Here(ticket) => answer_here(control, cluster, now_ts, ticket, result),
            Origin::Core { core, ticket } => send(core, Mail::Written { ticket, result }),
            Origin::Nobody => unwaited(result),
        });
    }
}

/// The reply to a write nobody waits for: a failure is logged.
fn unwaited(result: Result<petrel_storage::Reply, StorageError>) {
    if let Err(error) = result {
        tracing::warn!(%error, "a revocation announced by another node was not stored here");
    }
}

/// This committer's reply to this core's control plane — in a cluster through the
/// requests in flight, since this node's share of a read that spans nodes waits for
/// the others' ([`InFlight::answer`]).
fn answer_here(
    control: &mut Control,
    cluster: &mut Option<InFlight>,
    now: Timestamp,
    ticket: Ticket,
    result: Result<petrel_storage::Reply, StorageError>,
) {
    let answer = match cluster {
        Some(cluster) => {
            let node = cluster.layout().node;
            cluster.answer(node, ticket, result, false)
        }
        None => Some((ticket, result)),
    };
    if let Some((ticket, result)) = answer {
        control.handle(now, Event::Storage { ticket, result });
    }
}

/// Logs the committer's failure once (and tells the disk watch when the disk is full).
fn note_storage_failure<E: GroupEngine + 'static>(
    committer: &Committer<E, Origin>,
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
