//! The Prometheus endpoint of `petrel serve` (`--metrics-addr ADDR:PORT`).
//!
//! **Publishing.** The control plane's [`Counters`] are plain `u64`s owned by the
//! control-plane thread; nothing on the hot path locks or touches an atomic for metrics.
//! Instead the driver copies them, with its per-core connection counts and queue depths,
//! into [`Metrics::publish`] every [`PUBLISH_INTERVAL`] — one short mutex hold per
//! interval. A scrape renders the last published copy (so counters lag by at most that
//! interval), plus two sources read at scrape time: the storage writer's latency
//! histogram ([`CommitStats`], relaxed atomics written by the syncer thread), a
//! [`StorageSource`] closure (the writer's bounded caches and dedup filter: one short hold
//! of the writer's lock per scrape) and, for the AF_XDP dataplane, a [`TransportSource`]
//! closure (filter and poller counters).
//!
//! **Format.** Rendered with `prometheus-client` (the Prometheus project's Rust client) as
//! OpenMetrics text, which Prometheus scrapes natively.
//!
//! **Serving.** A tiny HTTP/1.0 responder on its own thread (`petrel-metrics`) on a std
//! `TcpListener`: it answers `GET /metrics` and nothing else, one request per connection.
//! No HTTP server crate: a scrape every few seconds needs no keep-alive, TLS or routing,
//! and an async stack (hyper/axum) or another blocking server would add a dependency
//! tree bigger than the rest of the binary's direct dependencies for one URL. Put a
//! reverse proxy in front of it if the endpoint must leave the host.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use petrel_control::Counters;
use petrel_dataplane::xdp::filter::FilterCounters;
use petrel_dataplane::xdp::transport::{SocketDrops, SynStats, TcpDrops};
use petrel_dataplane::xdp::wire::{Malformed, RxCounters};
use petrel_storage::{
    CommitStats, CommitStatsSnapshot, LATENCY_BUCKETS_US, RecentIdsStats, WriterCacheStats,
};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// How often the driver publishes a snapshot.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(500);

/// What the driver publishes.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// The control plane's counters.
    pub counters: Counters,
    /// Logged-in sessions.
    pub sessions: u64,
    /// Open connections per dataplane core.
    pub connections: Vec<u64>,
    /// Commands (outbound frames, closes) queued for each core, not yet taken.
    pub outbound_queue: Vec<u64>,
    /// Transport events waiting for the control plane.
    pub inbound_queue: u64,
    /// Storage requests submitted and not yet completed.
    pub storage_in_flight: u64,
    /// Writes sent to the core that owns their conversation's partition (per-core
    /// ownership), since start.
    pub writes_sent_to_owner: u64,
    /// Writes applied for another core's control plane, since start.
    pub writes_applied_for_others: u64,
}

/// The AF_XDP dataplane's counters, read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct TransportSnapshot {
    /// The XDP filter program's verdicts (summed over CPUs), if it could be read.
    pub filter: Option<FilterCounters>,
    /// What the pollers classified, summed over queues.
    pub rx: Option<RxCounters>,
    /// What the userspace TCP dropped before smoltcp saw it.
    pub tcp: Option<TcpDrops>,
    /// The SYN handshake: cookies and half-open connections.
    pub syn: Option<SynStats>,
    /// What the kernel counted on the AF_XDP sockets.
    pub sockets: Option<SocketDrops>,
}

/// Reads the transport's counters; called on the metrics thread at each scrape, so it
/// must not block for long (reading a BPF map and a few atomics is fine).
pub type TransportSource = Box<dyn Fn() -> TransportSnapshot + Send + Sync>;

/// The storage writer's bounded caches and recent-id filter, read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct StorageSnapshot {
    /// Entries of each writer cache and the evictions the bounds made.
    pub caches: Option<WriterCacheStats>,
    /// The dedup filter's size and how its lookups were answered.
    pub dedup: Option<RecentIdsStats>,
    /// With a replica log: the last record written here and the last the log holds.
    pub replica: Option<(u64, u64)>,
}

impl Published {
    /// Adds another control plane's snapshot to this one (one per core with
    /// `ownership = "per-core"`): counts and gauges summed, per-core lists added index by
    /// index (each core fills its own entries).
    pub fn absorb(&mut self, other: &Published) {
        fn add(mine: &mut Vec<u64>, theirs: &[u64]) {
            if mine.len() < theirs.len() {
                mine.resize(theirs.len(), 0);
            }
            for (m, t) in mine.iter_mut().zip(theirs) {
                *m += t;
            }
        }
        self.counters.absorb(&other.counters);
        self.sessions += other.sessions;
        add(&mut self.connections, &other.connections);
        add(&mut self.outbound_queue, &other.outbound_queue);
        self.inbound_queue += other.inbound_queue;
        self.storage_in_flight += other.storage_in_flight;
        self.writes_sent_to_owner += other.writes_sent_to_owner;
        self.writes_applied_for_others += other.writes_applied_for_others;
    }
}

/// Reads [`StorageSnapshot`]; called on the metrics thread at each scrape.
pub type StorageSource = Box<dyn Fn() -> StorageSnapshot + Send + Sync>;

/// Everything a scrape renders.
pub struct Metrics {
    dataplane: &'static str,
    /// The last snapshot of each publisher: the home core, or every core's own.
    published: Mutex<Vec<Published>>,
    /// Every committer's stats (one, or one per core).
    storage: Vec<Arc<CommitStats>>,
    storage_source: Mutex<Option<StorageSource>>,
    transport: Mutex<Option<TransportSource>>,
    api: Mutex<Option<Arc<crate::api::stats::ApiStats>>>,
    webhook: Mutex<Option<Arc<crate::webhook::WebhookStats>>>,
    tls: Mutex<Option<super::tls::TlsMetrics>>,
    /// PROXY header counters and the per-address limit.
    peers: Mutex<Option<petrel_dataplane::PeerPolicy>>,
    /// WebSocket counters, with a WebSocket listener.
    websocket: Mutex<Option<Arc<petrel_dataplane::WsStats>>>,
    /// The cluster layer's counters, on a cluster node.
    cluster: Mutex<Option<Arc<crate::cluster::stats::ClusterStats>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("dataplane", &self.dataplane)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics for a server on `dataplane` (`kernel` or `xdp`) whose storage committers
    /// record into `storage` (rendered summed).
    pub fn new(dataplane: &'static str, storage: Vec<Arc<CommitStats>>) -> Arc<Metrics> {
        Arc::new(Metrics {
            dataplane,
            published: Mutex::new(Vec::new()),
            storage,
            storage_source: Mutex::new(None),
            transport: Mutex::new(None),
            api: Mutex::new(None),
            webhook: Mutex::new(None),
            tls: Mutex::new(None),
            peers: Mutex::new(None),
            websocket: Mutex::new(None),
            cluster: Mutex::new(None),
        })
    }

    /// Exposes the cluster layer's counters (a cluster node).
    pub fn set_cluster(&self, stats: Arc<crate::cluster::stats::ClusterStats>) {
        *self.cluster.lock().unwrap_or_else(|e| e.into_inner()) = Some(stats);
    }

    /// Where the HTTP API's request counts come from (when the API is on).
    pub fn set_api_stats(&self, stats: Arc<crate::api::stats::ApiStats>) {
        *self.api.lock().unwrap_or_else(|e| e.into_inner()) = Some(stats);
    }

    /// Where the webhook's counters come from (when webhooks are on).
    pub fn set_webhook_stats(&self, stats: Arc<crate::webhook::WebhookStats>) {
        *self.webhook.lock().unwrap_or_else(|e| e.into_inner()) = Some(stats);
    }

    /// Where the TLS counters come from (when the listeners speak TLS).
    pub fn set_tls(&self, tls: super::tls::TlsMetrics) {
        *self.tls.lock().unwrap_or_else(|e| e.into_inner()) = Some(tls);
    }

    /// Exposes the WebSocket counters.
    pub fn set_websocket(&self, stats: Arc<petrel_dataplane::WsStats>) {
        *self.websocket.lock().unwrap_or_else(|e| e.into_inner()) = Some(stats);
    }

    /// Exposes the PROXY header counters and the per-address limit's refusals.
    pub fn set_peers(&self, peers: petrel_dataplane::PeerPolicy) {
        *self.peers.lock().unwrap_or_else(|e| e.into_inner()) = Some(peers);
    }

    /// Where the storage writer's cache and dedup-filter figures come from.
    pub fn set_storage_source(&self, source: StorageSource) {
        *self
            .storage_source
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(source);
    }

    /// Replaces the published snapshot (the driver, every [`PUBLISH_INTERVAL`]).
    pub fn publish(&self, snapshot: Published) {
        self.publish_from(0, snapshot);
    }

    /// Replaces the snapshot of publisher `core` (with `ownership = "per-core"` each core
    /// publishes its own; a scrape renders their sum).
    pub fn publish_from(&self, core: usize, snapshot: Published) {
        let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
        if published.len() <= core {
            published.resize_with(core + 1, Published::default);
        }
        published[core] = snapshot;
    }

    /// Sets where the XDP families come from (the AF_XDP transport). Without one they
    /// are not rendered.
    #[allow(dead_code)] // Connected when serve starts the AF_XDP transport.
    pub fn set_transport_source(&self, source: TransportSource) {
        *self.transport.lock().unwrap_or_else(|e| e.into_inner()) = Some(source);
    }

    /// The whole exposition, OpenMetrics text.
    pub fn render(self: &Arc<Self>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Arc::clone(self)));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels<'_>, u64)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        if labels.is_empty() {
            ConstCounter::new(*v).encode(m.encode_family(&Vec::<(&str, &str)>::new())?)?;
        } else {
            ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
        }
    }
    Ok(())
}

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels<'_>, i64)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// The cluster layer (docs/CLUSTER.md): the nodes seen, the mail between them and what
/// was dropped, and the requests other nodes left unanswered.
fn encode_cluster(
    e: &mut DescriptorEncoder,
    c: &crate::cluster::stats::ClusterStats,
) -> std::fmt::Result {
    use crate::cluster::stats::ClusterStats as C;
    gauge(
        e,
        "petrel_cluster_nodes_up",
        "Other nodes of the cluster that are up now (heard from within node_timeout_ms).",
        &[(
            vec![],
            i64::try_from(C::get(&c.nodes_up)).unwrap_or(i64::MAX),
        )],
    )?;
    counter(
        e,
        "petrel_cluster_node_changes",
        "Other nodes going down (silence, goodbye, restart) and coming up.",
        &[
            (vec![("change", "down")], C::get(&c.nodes_went_down)),
            (vec![("change", "up")], C::get(&c.nodes_came_up)),
        ],
    )?;
    counter(
        e,
        "petrel_cluster_mail",
        "Pieces of mail between this node's cores and other nodes' (requests, replies, pushes, notices).",
        &[
            (vec![("direction", "sent")], C::get(&c.parcels_sent)),
            (vec![("direction", "received")], C::get(&c.parcels_received)),
        ],
    )?;
    counter(
        e,
        "petrel_cluster_mail_dropped",
        "Mail dropped: for a node down or while NATS took nothing (unreachable), for a core of \
         this node far behind (core_behind), or meant for an earlier process of this node (stale).",
        &[
            (
                vec![("reason", "unreachable")],
                C::get(&c.dropped_unreachable),
            ),
            (
                vec![("reason", "core_behind")],
                C::get(&c.dropped_core_behind),
            ),
            (vec![("reason", "stale")], C::get(&c.dropped_stale)),
        ],
    )?;
    counter(
        e,
        "petrel_cluster_undecodable",
        "Messages on the cluster's subjects this node cannot read (another wire version, a foreign publisher).",
        &[(vec![], C::get(&c.undecodable))],
    )?;
    counter(
        e,
        "petrel_cluster_publish_stalls",
        "Publishes NATS did not take within 500 ms (mail is dropped for a second after each).",
        &[(vec![], C::get(&c.publish_stalls))],
    )?;
    counter(
        e,
        "petrel_cluster_requests_unanswered",
        "Requests to another node answered SERVER_BUSY: no answer within request_timeout_ms (timeout), or the node went down (node_down).",
        &[
            (vec![("reason", "timeout")], C::get(&c.requests_timed_out)),
            (vec![("reason", "node_down")], C::get(&c.requests_node_down)),
        ],
    )
}

/// The storage writer's bounded caches and dedup filter (docs/CONFIGURATION.md, "Storage
/// memory bounds").
fn encode_storage_caches(e: &mut DescriptorEncoder, s: &StorageSnapshot) -> std::fmt::Result {
    if let Some(c) = &s.caches {
        let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        gauge(
            e,
            "petrel_storage_cache_entries",
            "Entries in each of the storage writer's bounded caches.",
            &[
                (vec![("cache", "last_seq")], to_i64(c.last_seqs)),
                (vec![("cache", "inbox_head")], to_i64(c.inbox_heads)),
                (vec![("cache", "member_map")], to_i64(c.member_maps)),
                (vec![("cache", "activity")], to_i64(c.activities)),
                (
                    vec![("cache", "pending_news")],
                    to_i64(c.pending_news_users),
                ),
            ],
        )?;
        counter(
            e,
            "petrel_storage_cache_evictions",
            "Entries the storage writer's cache bounds dropped (re-read from disk on next use).",
            &[(vec![], c.evictions)],
        )?;
    }
    if let Some(d) = &s.dedup {
        gauge(
            e,
            "petrel_storage_dedup_filter_ids",
            "Client message ids held by the in-memory dedup filter.",
            &[(vec![], i64::try_from(d.ids).unwrap_or(i64::MAX))],
        )?;
        counter(
            e,
            "petrel_storage_dedup_lookups",
            "Dedup checks of appends, by who answered: the in-memory filter or a store read.",
            &[
                (vec![("answered_by", "memory")], d.answered),
                (vec![("answered_by", "store")], d.asked_store),
            ],
        )?;
        counter(
            e,
            "petrel_storage_dedup_filter_evictions",
            "Senders the dedup filter dropped to stay within its bound (reloaded by one scan).",
            &[(vec![], d.evictions)],
        )?;
    }
    if let Some((written, acked)) = s.replica {
        counter(
            e,
            "petrel_replica_records",
            "Records of this node's writes: written to its database, and held by its replica log.",
            &[
                (vec![("where", "written")], written),
                (vec![("where", "log")], acked),
            ],
        )?;
        gauge(
            e,
            "petrel_replica_unshipped_records",
            "Records written here that the replica log does not hold yet (their writes wait).",
            &[(
                vec![],
                i64::try_from(written.saturating_sub(acked)).unwrap_or(i64::MAX),
            )],
        )?;
    }
    Ok(())
}

/// A histogram over [`LATENCY_BUCKETS_US`] (then +Inf): `buckets` per bucket, not
/// cumulative; the count is their sum.
fn latency_histogram(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    buckets: &[u64],
    sum_us: u64,
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    let rows: Vec<(f64, u64)> = LATENCY_BUCKETS_US
        .iter()
        .map(|&us| us as f64 / 1e6)
        .chain(std::iter::once(f64::INFINITY))
        .zip(buckets.iter().copied())
        .collect();
    m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        sum_us as f64 / 1e6,
        buckets.iter().sum(),
        &rows,
        None,
    )
}

/// Names of [`Malformed`] reasons, in index order.
pub fn malformed_name(reason: Malformed) -> &'static str {
    match reason {
        Malformed::TruncatedEthernet => "truncated_ethernet",
        Malformed::BadArp => "bad_arp",
        Malformed::TruncatedIp => "truncated_ip",
        Malformed::BadIpLength => "bad_ip_length",
        Malformed::BadIpChecksum => "bad_ip_checksum",
        Malformed::IpFragment => "ip_fragment",
        Malformed::TruncatedTcp => "truncated_tcp",
        Malformed::BadTcpChecksum => "bad_tcp_checksum",
        Malformed::BadTcpHeader => "bad_tcp_header",
        Malformed::BadSourceAddress => "bad_source_address",
    }
}

const MALFORMED: [Malformed; Malformed::COUNT] = [
    Malformed::TruncatedEthernet,
    Malformed::BadArp,
    Malformed::TruncatedIp,
    Malformed::BadIpLength,
    Malformed::BadIpChecksum,
    Malformed::IpFragment,
    Malformed::TruncatedTcp,
    Malformed::BadTcpChecksum,
    Malformed::BadTcpHeader,
    Malformed::BadSourceAddress,
];

impl Collector for Metrics {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let p = {
            let published = self.published.lock().unwrap_or_else(|e| e.into_inner());
            let mut sum = Published::default();
            for one in published.iter() {
                sum.absorb(one);
            }
            sum
        };
        let c = &p.counters;
        let dp = self.dataplane;
        let cores: Vec<String> = (0..p.connections.len().max(p.outbound_queue.len()))
            .map(|i| i.to_string())
            .collect();

        gauge(
            &mut e,
            "petrel_connections",
            "Open client connections, by dataplane and core.",
            &p.connections
                .iter()
                .zip(&cores)
                .map(|(n, core)| (vec![("dataplane", dp), ("core", core.as_str())], *n as i64))
                .collect::<Vec<_>>(),
        )?;
        gauge(
            &mut e,
            "petrel_sessions",
            "Logged-in sessions.",
            &[(vec![], p.sessions as i64)],
        )?;
        counter(
            &mut e,
            "petrel_connections_opened",
            "Connections accepted.",
            &[(vec![], c.connections_opened)],
        )?;
        counter(
            &mut e,
            "petrel_connections_closed",
            "Connections gone (closed by either side).",
            &[(vec![], c.connections_closed)],
        )?;
        counter(
            &mut e,
            "petrel_logins",
            "Successful logins.",
            &[(vec![], c.logins_ok)],
        )?;
        let f = &c.logins_failed;
        counter(
            &mut e,
            "petrel_login_failures",
            "Failed logins, by reason (deadline: no login within login_deadline_secs; \
             overloaded and login_rate: refused by admission control with a retry-after).",
            &[
                (vec![("reason", "malformed")], f.malformed),
                (vec![("reason", "bad_signature")], f.bad_signature),
                (vec![("reason", "expired")], f.expired),
                (vec![("reason", "unknown_key")], f.unknown_key),
                (vec![("reason", "revoked")], f.revoked),
                (vec![("reason", "mismatch")], f.mismatch),
                (vec![("reason", "not_ready")], f.not_ready),
                (vec![("reason", "overloaded")], f.overloaded),
                (vec![("reason", "login_rate")], f.login_rate),
                (vec![("reason", "already_logged_in")], f.already_logged_in),
                (vec![("reason", "stale")], f.stale),
                (vec![("reason", "deadline")], c.login_timeouts),
            ],
        )?;
        counter(
            &mut e,
            "petrel_sessions_expired",
            "Sessions closed because their token expired without renewal.",
            &[(vec![], c.sessions_expired)],
        )?;
        let frames = |counts: &petrel_control::counters::FrameCounts| {
            counts
                .iter()
                .map(|(t, n)| {
                    let name = t.message_name();
                    (
                        vec![("type", name.strip_prefix("petrel.v1.").unwrap_or(name))],
                        n,
                    )
                })
                .collect::<Vec<_>>()
        };
        counter(
            &mut e,
            "petrel_frames_in",
            "Frames received, by type.",
            &frames(&c.frames_in),
        )?;
        counter(
            &mut e,
            "petrel_frames_out",
            "Frames sent, by type (a fan-out push counts once per receiver).",
            &frames(&c.frames_out),
        )?;
        counter(
            &mut e,
            "petrel_frame_errors",
            "Frames that failed to decode.",
            &[(vec![], c.frame_errors)],
        )?;
        let scenarios = |s: &petrel_control::counters::ByScenario| {
            vec![
                (vec![("scenario", "single")], s.single),
                (vec![("scenario", "group")], s.group),
                (vec![("scenario", "chatroom")], s.chatroom),
                (vec![("scenario", "public_account")], s.public_account),
            ]
        };
        counter(
            &mut e,
            "petrel_messages_persisted",
            "Messages stored, by scenario (retries of stored messages not counted).",
            &scenarios(&c.messages_persisted),
        )?;
        counter(
            &mut e,
            "petrel_messages_delivered",
            "Pushes handed to the transport (one per receiving connection), by scenario.",
            &scenarios(&c.messages_delivered),
        )?;
        counter(
            &mut e,
            "petrel_messages_dropped",
            "Pushes not delivered to lagging members (chatrooms; reported to them in Gap frames), by scenario.",
            &scenarios(&c.messages_dropped),
        )?;
        counter(
            &mut e,
            "petrel_messages_duplicate",
            "Retried sends answered with the stored original's seq.",
            &[(vec![], c.messages_duplicate)],
        )?;
        counter(
            &mut e,
            "petrel_messages_rejected",
            "Sends refused (not a member, unknown conversation, ...).",
            &[(vec![], c.messages_rejected)],
        )?;
        counter(
            &mut e,
            "petrel_chatroom_gaps",
            "Gap notices sent to chatroom members that fell behind (one per run of skipped pushes).",
            &[(vec![], c.chatroom_gaps)],
        )?;
        counter(
            &mut e,
            "petrel_chatroom_owner_answers_missed",
            "Chatroom requests to a room owned on another node: missing (its node went down or did not answer in time; answered SERVER_BUSY), late (its answer came after that; dropped).",
            &[
                (vec![("result", "missing")], c.room_answers_lost),
                (vec![("result", "late")], c.room_answers_late),
            ],
        )?;
        counter(
            &mut e,
            "petrel_typing_notices",
            "TypingNotice frames sent (one per receiving connection).",
            &[(vec![], c.typing_notices)],
        )?;
        counter(
            &mut e,
            "petrel_typing_dropped",
            "Typing indicators dropped: over the sender's typing limit, not a member, audience too large, server busy, or a congested receiver.",
            &[(vec![], c.typing_dropped)],
        )?;
        counter(
            &mut e,
            "petrel_read_receipts",
            "Read receipts sent to other members (one per receiving connection).",
            &[(vec![], c.read_receipts)],
        )?;
        counter(
            &mut e,
            "petrel_delivery_receipts",
            "Delivery receipts sent to other members (one per receiving connection).",
            &[(vec![], c.delivery_receipts)],
        )?;
        counter(
            &mut e,
            "petrel_read_receipts_skipped",
            "Group read and delivery receipts not sent: the member list could not be read or the server was busy.",
            &[(vec![], c.read_receipts_skipped)],
        )?;
        counter(
            &mut e,
            "petrel_messages_recalled",
            "Messages recalled (by their sender, or a group owner or admin).",
            &[(vec![], c.messages_recalled)],
        )?;
        counter(
            &mut e,
            "petrel_messages_edited",
            "Message edits stored.",
            &[(vec![], c.messages_edited)],
        )?;
        counter(
            &mut e,
            "petrel_offline_notices",
            "Stored messages with recipients that had no online session, handed to the webhook.",
            &[(vec![], c.offline_notices)],
        )?;
        counter(
            &mut e,
            "petrel_connections_congested",
            "Times a connection's queued output stayed over max_outbound_bytes after a write (not read, not pushed to, until it drains).",
            &[(vec![], c.congested)],
        )?;
        counter(
            &mut e,
            "petrel_frames_misdirected",
            "Client frames refused for their direction (a server-to-client type) or flags (RESPONSE).",
            &[(vec![], c.frames_misdirected)],
        )?;
        counter(
            &mut e,
            "petrel_refused_shutting_down",
            "Requests answered SHUTTING_DOWN during a graceful shutdown.",
            &[(vec![], c.refused_shutting_down)],
        )?;
        counter(
            &mut e,
            "petrel_sessions_revoked",
            "Sessions ended by an operator revocation (Kick TOKEN_REVOKED).",
            &[(vec![], c.sessions_revoked)],
        )?;
        counter(
            &mut e,
            "petrel_rate_limited",
            "Requests refused by the per-connection rate limit.",
            &[(vec![], c.rate_limited)],
        )?;
        let k = &c.kicks;
        counter(
            &mut e,
            "petrel_kicks",
            "Kicks sent, by reason.",
            &[
                (vec![("reason", "replaced")], k.replaced),
                (vec![("reason", "idle")], k.idle),
                (vec![("reason", "slow_consumer")], k.slow_consumer),
                (vec![("reason", "token_revoked")], k.token_revoked),
                (vec![("reason", "admin")], k.admin),
            ],
        )?;
        counter(
            &mut e,
            "petrel_storage_errors",
            "Storage requests that failed with an internal error.",
            &[(vec![], c.storage_errors)],
        )?;
        counter(
            &mut e,
            "petrel_storage_trimmed",
            "Entries deleted by retention (messages past their kind's retention, inbox \
             entries past the per-user cap or inbox retention).",
            &[
                (vec![("what", "messages")], c.trimmed_messages),
                (vec![("what", "inbox_entries")], c.trimmed_inbox_entries),
            ],
        )?;
        counter(
            &mut e,
            "petrel_storage_trim_passes",
            "Retention passes completed over every timeline and inbox.",
            &[(vec![], c.trim_passes)],
        )?;
        gauge(
            &mut e,
            "petrel_storage_in_flight",
            "Storage requests submitted and not yet completed.",
            &[(vec![], p.storage_in_flight as i64)],
        )?;
        counter(
            &mut e,
            "petrel_storage_routed_writes",
            "Writes that crossed cores to their conversation's partition owner \
             (ownership = \"per-core\"): sent by the asking core, applied by the owner.",
            &[
                (vec![("side", "sent")], p.writes_sent_to_owner),
                (vec![("side", "applied")], p.writes_applied_for_others),
            ],
        )?;
        gauge(
            &mut e,
            "petrel_outbound_queue_depth",
            "Commands (outbound frames, closes) queued for a dataplane core and not yet taken.",
            &p.outbound_queue
                .iter()
                .zip(&cores)
                .map(|(n, core)| (vec![("dataplane", dp), ("core", core.as_str())], *n as i64))
                .collect::<Vec<_>>(),
        )?;
        gauge(
            &mut e,
            "petrel_inbound_queue_depth",
            "Transport events waiting for the control plane (bounded; full means back-pressure).",
            &[(vec![], p.inbound_queue as i64)],
        )?;

        let mut s = CommitStatsSnapshot::default();
        for stats in &self.storage {
            s.absorb(&stats.snapshot());
        }
        latency_histogram(
            &mut e,
            "petrel_storage_commit_latency_seconds",
            "Storage requests from submit to durable completion (group commit included).",
            &s.buckets,
            s.sum_us,
        )?;
        latency_histogram(
            &mut e,
            "petrel_storage_wal_sync_seconds",
            "How long each durability round's WAL sync (fdatasync) took, on the syncer thread.",
            &s.sync_buckets,
            s.sync_sum_us,
        )?;
        latency_histogram(
            &mut e,
            "petrel_storage_apply_seconds",
            "How long each storage group took to apply on its loop's thread (write batch and \
             WAL write, before the fsync); the loop serves nothing else meanwhile.",
            &s.apply_buckets,
            s.apply_sum_us,
        )?;
        counter(
            &mut e,
            "petrel_storage_commit_rounds",
            "Durability rounds of the storage writer (one WAL fsync each with sync = batch).",
            &[(vec![], s.groups)],
        )?;
        let source = self
            .storage_source
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(source) = source.as_ref() {
            encode_storage_caches(&mut e, &source())?;
        }
        drop(source);

        let api = self.api.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(api) = api {
            let rows = api.snapshot();
            let statuses: Vec<String> = rows.iter().map(|r| r.2.to_string()).collect();
            counter(
                &mut e,
                "petrel_api_requests",
                "HTTP API requests, by method, route template and response status.",
                &rows
                    .iter()
                    .zip(&statuses)
                    .map(|((method, route, _, n), status)| {
                        (
                            vec![
                                ("method", method.as_str()),
                                ("route", route.as_str()),
                                ("status", status.as_str()),
                            ],
                            *n,
                        )
                    })
                    .collect::<Vec<_>>(),
            )?;
        }

        let webhook = self
            .webhook
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(w) = webhook {
            use crate::webhook::WebhookStats as W;
            counter(
                &mut e,
                "petrel_webhook_events",
                "Webhook events (messages to offline recipients), by outcome: queued on \
                 disk, delivered (acknowledged 2xx), dead (given up after max_attempts), \
                 dropped (hand-over channel or queue full, or the queue failed).",
                &[
                    (vec![("outcome", "queued")], W::get(&w.queued)),
                    (vec![("outcome", "delivered")], W::get(&w.delivered)),
                    (vec![("outcome", "dead")], W::get(&w.dead)),
                    (vec![("outcome", "dropped")], W::get(&w.dropped)),
                ],
            )?;
            counter(
                &mut e,
                "petrel_webhook_calls",
                "Webhook HTTP calls, by result (failed: no connection, timeout or non-2xx).",
                &[
                    (vec![("result", "ok")], W::get(&w.calls_ok)),
                    (vec![("result", "failed")], W::get(&w.calls_failed)),
                ],
            )?;
            gauge(
                &mut e,
                "petrel_webhook_queue_depth",
                "Webhook events waiting on disk.",
                &[(vec![], W::get(&w.queue_depth) as i64)],
            )?;
            gauge(
                &mut e,
                "petrel_webhook_dead_letters",
                "Webhook events given up on, kept on disk.",
                &[(vec![], W::get(&w.dead_depth) as i64)],
            )?;
        }

        let cluster = self
            .cluster
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(c) = cluster {
            encode_cluster(&mut e, &c)?;
        }

        let tls = self.tls.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(tls) = tls {
            counter(
                &mut e,
                "petrel_tls_handshakes",
                "TLS handshakes completed, by kind (resumed: a ticket or cached session).",
                &[
                    (
                        vec![("kind", "full")],
                        // Two separate loads: a resumption between them must not
                        // underflow.
                        tls.stats.handshakes().saturating_sub(tls.stats.resumed()),
                    ),
                    (vec![("kind", "resumed")], tls.stats.resumed()),
                ],
            )?;
            counter(
                &mut e,
                "petrel_tls_failures",
                "TLS connections closed by the server, by reason: not_tls (the first bytes \
                 were no TLS record, e.g. a plaintext client), handshake (refused or broken \
                 handshake), bad_record (a record after the handshake did not decrypt).",
                &petrel_dataplane::TlsFailure::ALL
                    .iter()
                    .map(|r| (vec![("reason", r.as_str())], tls.stats.failures(*r)))
                    .collect::<Vec<_>>(),
            )?;
            counter(
                &mut e,
                "petrel_tls_reloads",
                "Certificate reloads (SIGHUP), by result (failed: the old certificate stays).",
                &[
                    (vec![("result", "ok")], tls.cert.reloads(true)),
                    (vec![("result", "failed")], tls.cert.reloads(false)),
                ],
            )?;
        }

        let websocket = self
            .websocket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(ws) = websocket {
            counter(
                &mut e,
                "petrel_websocket_upgrades",
                "WebSocket upgrades completed.",
                &[(vec![], ws.upgrades())],
            )?;
            counter(
                &mut e,
                "petrel_websocket_pings",
                "WebSocket pings from clients (each answered, each a heartbeat).",
                &[(vec![], ws.pings())],
            )?;
            counter(
                &mut e,
                "petrel_websocket_failures",
                "WebSocket connections closed by the server, by reason: handshake (no or a \
                 bad upgrade request: 400), origin (not on websocket_origins: 403), too_large \
                 (a message over one largest frame: close 1009), protocol (a text message or \
                 a protocol violation: close 1003 or 1002).",
                &petrel_dataplane::WsFailure::ALL
                    .iter()
                    .map(|r| (vec![("reason", r.as_str())], ws.failures(*r)))
                    .collect::<Vec<_>>(),
            )?;
        }

        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(peers) = peers {
            let stats = &peers.proxy_stats;
            counter(
                &mut e,
                "petrel_proxy_headers",
                "PROXY protocol headers read, by result: v1 or v2 (named a client), \
                 forwarded (a WebSocket upgrade's X-Forwarded-For named it, behind an HTTP \
                 proxy), local (no client address: the balancer's own check).",
                &[
                    (vec![("result", "v1")], stats.proxied(1)),
                    (vec![("result", "v2")], stats.proxied(2)),
                    (vec![("result", "forwarded")], stats.forwarded()),
                    (vec![("result", "local")], stats.local()),
                ],
            )?;
            counter(
                &mut e,
                "petrel_proxy_failures",
                "Connections closed over their PROXY header, by reason: missing (a PROXY \
                 listener's connection did not start with one), malformed, too_long, \
                 unexpected (a header on a listener that expects none: a forged address).",
                &petrel_dataplane::ProxyFailure::ALL
                    .iter()
                    .map(|r| (vec![("reason", r.as_str())], stats.failures(*r)))
                    .collect::<Vec<_>>(),
            )?;
            if let Some(limiter) = &peers.per_address {
                counter(
                    &mut e,
                    "petrel_connections_refused_per_address",
                    "Connections refused because their client address already had \
                     max_connections_per_address.",
                    &[(vec![], limiter.refused())],
                )?;
                gauge(
                    &mut e,
                    "petrel_client_addresses",
                    "Client addresses with at least one connection.",
                    &[(vec![], limiter.addresses() as i64)],
                )?;
            }
        }

        let transport = self.transport.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(source) = transport.as_ref() {
            let t = source();
            if let Some(f) = t.filter {
                counter(
                    &mut e,
                    "petrel_xdp_packets",
                    "XDP filter verdicts: redirected to AF_XDP, passed to the kernel, dropped.",
                    &[
                        (vec![("verdict", "redirected")], f.redirected),
                        (vec![("verdict", "passed")], f.passed),
                        (vec![("verdict", "passed_no_socket")], f.no_socket),
                        (vec![("verdict", "dropped_malformed")], f.malformed),
                        (vec![("verdict", "dropped_fragment")], f.fragments),
                    ],
                )?;
            }
            if let Some(rx) = t.rx {
                counter(
                    &mut e,
                    "petrel_xdp_rx_frames",
                    "Frames the AF_XDP pollers classified, by class.",
                    &[
                        (vec![("class", "tcp")], rx.tcp),
                        (vec![("class", "arp")], rx.arp),
                        (vec![("class", "not_ours")], rx.not_ours),
                        (vec![("class", "malformed")], rx.malformed_total()),
                    ],
                )?;
                counter(
                    &mut e,
                    "petrel_xdp_rx_malformed",
                    "Frames the AF_XDP pollers dropped, by reason.",
                    &MALFORMED
                        .iter()
                        .map(|&r| (vec![("reason", malformed_name(r))], rx.malformed(r)))
                        .collect::<Vec<_>>(),
                )?;
            }
            if let Some(k) = t.sockets {
                counter(
                    &mut e,
                    "petrel_xdp_socket_drops",
                    "What the kernel counted on the AF_XDP sockets (XDP_STATISTICS, read once a \
                     second): frames dropped, rx ring full (a poller behind), fill ring empty, \
                     invalid descriptors.",
                    &[
                        (vec![("reason", "rx_dropped")], k.rx_dropped),
                        (vec![("reason", "rx_ring_full")], k.rx_ring_full),
                        (vec![("reason", "fill_ring_empty")], k.fill_ring_empty),
                        (vec![("reason", "invalid_descs")], k.invalid_descs),
                    ],
                )?;
            }
            if let Some(tcp) = t.tcp {
                counter(
                    &mut e,
                    "petrel_xdp_tcp_dropped",
                    "Segments the userspace TCP dropped before smoltcp: SYNs for a full shard \
                     (the shard's connection limit: back-pressure), SYNs while the core was \
                     over its CPU budget (admission control), segments for a full shard \
                     queue, SYNs while the core held its share of max_connections.",
                    &[
                        (vec![("reason", "shard_full_syn")], tcp.refused_syns),
                        (vec![("reason", "overloaded_syn")], tcp.shed_syns),
                        (vec![("reason", "queue_full")], tcp.queue_full),
                        (vec![("reason", "max_connections_syn")], tcp.capacity_syns),
                    ],
                )?;
            }
            if let Some(syn) = t.syn {
                let c = syn.cookies;
                counter(
                    &mut e,
                    "petrel_xdp_syn_cookies",
                    "The userspace TCP's SYN cookies (past the half-open backlog, \
                     xdp_syn_backlog): SYNs answered with one, connections an ACK's valid \
                     cookie opened, ACKs whose cookie was expired or forged (reset), SYNs \
                     dropped past the backlog with cookies off.",
                    &[
                        (vec![("outcome", "sent")], c.sent),
                        (vec![("outcome", "opened")], c.opened),
                        (vec![("outcome", "rejected")], c.rejected),
                        (vec![("outcome", "backlog_full")], c.backlog_full),
                    ],
                )?;
                gauge(
                    &mut e,
                    "petrel_xdp_half_open_connections",
                    "Connections of the userspace TCP in SYN-RECEIVED (at most \
                     xdp_syn_backlog per core).",
                    &[(vec![], i64::try_from(syn.half_open).unwrap_or(i64::MAX))],
                )?;
            }
        }
        Ok(())
    }
}

/// A running endpoint.
#[derive(Debug)]
pub struct Endpoint {
    /// Where it listens.
    pub addr: SocketAddr,
}

/// Binds `addr` and serves `GET /metrics` from `metrics` on a thread of its own.
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<Endpoint> {
    let listener = TcpListener::bind(addr)?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new()
        .name("petrel-metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(error) = answer(stream, &metrics) {
                            tracing::debug!(%error, "metrics request failed");
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "metrics accept failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    Ok(Endpoint { addr })
}

fn answer(mut stream: TcpStream, metrics: &Arc<Metrics>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 16 * 1024 {
            break;
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, kind, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "petrel serves only /metrics here\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET /metrics\n".to_owned(),
        ),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn published_counters_and_a_fake_xdp_source_are_rendered() {
        let stats = Arc::new(CommitStats::default());
        let metrics = Metrics::new("xdp", vec![stats]);
        let mut counters = Counters {
            logins_ok: 3,
            ..Counters::default()
        };
        counters.logins_failed.expired = 2;
        counters.messages_persisted.single = 5;
        counters.frames_in.add(petrel_proto::FrameType::SendMessage);
        counters.chatroom_gaps = 4;
        counters.refused_shutting_down = 6;
        metrics.publish(Published {
            counters,
            sessions: 3,
            connections: vec![2, 1],
            outbound_queue: vec![0, 7],
            inbound_queue: 4,
            storage_in_flight: 1,
            writes_sent_to_owner: 8,
            writes_applied_for_others: 9,
        });
        let text = metrics.render();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(value(&text, "petrel_logins_total"), Some(3.0));
        assert_eq!(
            value(&text, "petrel_storage_routed_writes_total{side=\"sent\"}"),
            Some(8.0)
        );
        assert_eq!(
            value(
                &text,
                "petrel_storage_routed_writes_total{side=\"applied\"}"
            ),
            Some(9.0)
        );
        assert_eq!(
            value(&text, "petrel_login_failures_total{reason=\"expired\"}"),
            Some(2.0)
        );
        assert_eq!(
            value(&text, "petrel_connections{dataplane=\"xdp\",core=\"1\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                "petrel_outbound_queue_depth{dataplane=\"xdp\",core=\"1\"}"
            ),
            Some(7.0)
        );
        assert_eq!(
            value(
                &text,
                "petrel_messages_persisted_total{scenario=\"single\"}"
            ),
            Some(5.0)
        );
        assert_eq!(
            value(&text, "petrel_frames_in_total{type=\"SendMessage\"}"),
            Some(1.0)
        );
        assert_eq!(value(&text, "petrel_chatroom_gaps_total"), Some(4.0));
        assert_eq!(
            value(&text, "petrel_refused_shutting_down_total"),
            Some(6.0)
        );
        assert_eq!(
            value(&text, "petrel_frames_out_total{type=\"Gap\"}"),
            Some(0.0)
        );
        assert_eq!(
            value(&text, "petrel_storage_commit_latency_seconds_count"),
            Some(0.0)
        );
        assert_eq!(
            value(&text, "petrel_storage_wal_sync_seconds_count"),
            Some(0.0)
        );
        // No transport source yet: no XDP families; no storage source: no cache families.
        assert!(!text.contains("petrel_xdp"), "{text}");
        assert!(!text.contains("petrel_storage_cache"), "{text}");

        metrics.set_storage_source(Box::new(|| StorageSnapshot {
            caches: Some(WriterCacheStats {
                last_seqs: 12,
                evictions: 3,
                ..WriterCacheStats::default()
            }),
            dedup: Some(RecentIdsStats {
                ids: 40,
                answered: 30,
                asked_store: 2,
                ..RecentIdsStats::default()
            }),
            replica: Some((10, 7)),
        }));
        let text = metrics.render();
        assert_eq!(
            value(&text, "petrel_replica_records_total{where=\"log\"}"),
            Some(7.0)
        );
        assert_eq!(value(&text, "petrel_replica_unshipped_records"), Some(3.0));
        assert_eq!(
            value(&text, "petrel_storage_cache_entries{cache=\"last_seq\"}"),
            Some(12.0)
        );
        assert_eq!(
            value(&text, "petrel_storage_cache_evictions_total"),
            Some(3.0)
        );
        assert_eq!(value(&text, "petrel_storage_dedup_filter_ids"), Some(40.0));
        assert_eq!(
            value(
                &text,
                "petrel_storage_dedup_lookups_total{answered_by=\"store\"}"
            ),
            Some(2.0)
        );

        metrics.set_transport_source(Box::new(|| {
            let mut rx = RxCounters {
                tcp: 40,
                ..RxCounters::default()
            };
            rx.malformed[Malformed::BadTcpChecksum as usize] = 2;
            TransportSnapshot {
                filter: Some(FilterCounters {
                    redirected: 42,
                    passed: 9,
                    malformed: 1,
                    fragments: 0,
                    no_socket: 3,
                }),
                rx: Some(rx),
                tcp: Some(TcpDrops {
                    refused_syns: 5,
                    shed_syns: 2,
                    queue_full: 0,
                    capacity_syns: 6,
                }),
                syn: Some(SynStats {
                    cookies: petrel_dataplane::xdp::shards::CookieStats {
                        sent: 7,
                        opened: 1,
                        rejected: 3,
                        backlog_full: 0,
                    },
                    half_open: 11,
                }),
                sockets: Some(SocketDrops {
                    rx_ring_full: 4,
                    ..SocketDrops::default()
                }),
            }
        }));
        let text = metrics.render();
        assert_eq!(
            value(&text, "petrel_xdp_packets_total{verdict=\"redirected\"}"),
            Some(42.0)
        );
        assert_eq!(
            value(
                &text,
                "petrel_xdp_packets_total{verdict=\"passed_no_socket\"}"
            ),
            Some(3.0)
        );
        assert_eq!(
            value(&text, "petrel_xdp_rx_frames_total{class=\"malformed\"}"),
            Some(2.0)
        );
        assert_eq!(
            value(
                &text,
                "petrel_xdp_rx_malformed_total{reason=\"bad_tcp_checksum\"}"
            ),
            Some(2.0)
        );
        assert_eq!(
            value(
                &text,
                "petrel_xdp_tcp_dropped_total{reason=\"shard_full_syn\"}"
            ),
            Some(5.0)
        );
        assert_eq!(
            value(
                &text,
                "petrel_xdp_tcp_dropped_total{reason=\"overloaded_syn\"}"
            ),
            Some(2.0)
        );
        assert_eq!(
            value(
                &text,
                "petrel_xdp_socket_drops_total{reason=\"rx_ring_full\"}"
            ),
            Some(4.0)
        );
        assert_eq!(
            value(&text, "petrel_xdp_syn_cookies_total{outcome=\"sent\"}"),
            Some(7.0)
        );
        assert_eq!(
            value(&text, "petrel_xdp_syn_cookies_total{outcome=\"rejected\"}"),
            Some(3.0)
        );
        assert_eq!(value(&text, "petrel_xdp_half_open_connections"), Some(11.0));
    }

    #[test]
    fn the_endpoint_answers_get_metrics_and_refuses_the_rest() {
        let metrics = Metrics::new("kernel", vec![Arc::new(CommitStats::default())]);
        let endpoint = serve("127.0.0.1:0".parse().unwrap(), metrics).unwrap();
        let get = |request: &str| {
            let mut s = TcpStream::connect(endpoint.addr).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let ok = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("petrel_connections_opened_total 0"), "{ok}");
        assert!(get("GET / HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get("POST /metrics HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 405"));
    }
}
