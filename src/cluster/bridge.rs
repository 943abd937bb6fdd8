//! The thread that connects a node to NATS (`petrel-cluster`, a one-thread tokio
//! runtime, since the maintained client is async).
//!
//! Out: each local core has a bounded ring ([`crate::server::ring`]) to each core of
//! the other nodes, whose consumer is this thread; woken once per core iteration, it
//! drains every ring, groups the mail by receiving node and publishes one envelope per
//! node (split when it would pass NATS's payload limit) on `<name>.node.<n>`.
//!
//! In: the envelopes on this node's subject are decoded and each parcel goes to its
//! core's inbound queue (bounded; what a full queue cannot take waits here, in order,
//! for the next round — this thread never blocks on a core), and the core is woken once
//! per envelope.
//!
//! Liveness: every node publishes a [`Hello`] each `heartbeat` on `<name>.hello`; a
//! node is up from its first hello, and down after `node_timeout` of silence, after its
//! goodbye, or when a hello of another incarnation comes (it restarted: down, then up).
//! Mail only counts from the incarnation known to be up, and only if it names this
//! process as its receiver (mail sent before the sender heard of a restart names the
//! previous process's connections and requests, and is dropped). The cores are told
//! ([`Inbound::Down`], [`Inbound::Up`]): their control planes stop counting that node's
//! users as online and re-announce their sessions to it when it is back, and requests
//! waiting for it are answered `SERVER_BUSY`. A node that sees another come up sends it
//! [`Body::Resync`], which makes it see this node down and up too. A node whose hello
//! disagrees on the node, core or partition count is refused (logged) and stays down.
//! Publishing never stalls the cores: mail for a node that is down, or while NATS does
//! not take it within [`PUBLISH_WAIT`], is dropped (and answered by time-outs).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use futures_util::StreamExt;
use petrel_dataplane::Wake;
use tokio::sync::Notify;

use super::Layout;
use super::api_calls::ClusterApi;
use super::config::ClusterSettings;
use super::stats::ClusterStats;
use super::wire::{self, Body, Envelope, Hello, MAX_BATCH_BYTES, Parcel};
use crate::api::bridge::ApiBridge;
use crate::dispatch::{Directory, PoolBook};
use crate::server::ring::{RING, RingOut};
use crate::server::writers::Mail;

/// What the bridge hands a local core. Mail by value, as on the rings between local
/// cores (no allocation per mail; the notices are rare).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Inbound {
    /// Mail from core `from` of another node.
    Mail {
        /// The sending core (cluster index).
        from: u8,
        /// The mail.
        mail: Mail,
    },
    /// These nodes are down (bit = node).
    Down(u64),
    /// These nodes are up (bit = node): (re)started, with no sessions.
    Up(u64),
    /// The client addresses of the other nodes that are up: where the clients of this
    /// node reconnect when it stops.
    Endpoints(Vec<String>),
}

/// One local core's links to the other nodes.
pub struct CoreLinks {
    /// Its ring to each core of the other nodes: `(cluster index, ring)`.
    pub outs: Vec<(u8, RingOut<Mail>)>,
    /// What the other nodes sent it, and which nodes are up or down.
    pub inbound: Receiver<Inbound>,
}

/// The running bridge.
pub struct Bridge {
    stop: Arc<Notify>,
    thread: Option<JoinHandle<()>>,
}

impl Bridge {
    /// Says goodbye to the other nodes and stops (after the cores stopped).
    pub fn stop(mut self) {
        self.stop.notify_one();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the cluster bridge thread panicked");
        }
    }
}

/// The NATS payload limit below which a node warns (docs/CLUSTER.md, "Settings").
const MIN_MAX_PAYLOAD: usize = 4 * 1024 * 1024;

/// Longest a publish may wait for room in the NATS client's buffer.
const PUBLISH_WAIT: Duration = Duration::from_millis(500);

/// Publishes `envelope` on a task of its own, so the bridge goes on draining the cores'
/// rings while NATS does not take it (a heartbeat must be sent even while mail is
/// paused, and may wait up to [`PUBLISH_WAIT`] for room).
fn publish_detached(client: &async_nats::Client, subject: &str, envelope: &Envelope) {
    let bytes = match wire::encode(envelope) {
        Ok(bytes) => Bytes::from(bytes),
        Err(e) => {
            tracing::error!(error = %e, "cluster: cannot encode");
            return;
        }
    };
    let (client, subject) = (client.clone(), subject.to_owned());
    tokio::spawn(async move {
        match tokio::time::timeout(PUBLISH_WAIT, client.publish(subject.clone(), bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(subject, error = %e, "cluster: publish failed"),
            Err(_) => tracing::debug!(subject, "cluster: NATS did not take a heartbeat in time"),
        }
    });
}

/// Warns when the NATS server's payload limit is below [`MIN_MAX_PAYLOAD`].
fn warn_if_small_payload(client: &async_nats::Client) {
    let max_payload = client.server_info().max_payload;
    if max_payload < MIN_MAX_PAYLOAD {
        tracing::warn!(
            max_payload,
            wanted = MIN_MAX_PAYLOAD,
            "cluster: NATS's max_payload is small: a large answer between nodes (a big group's \
             member list, a long conversation list) is refused and its request times out every \
             time; set max_payload: 8MB in the NATS config"
        );
    }
}

/// Most pieces of mail from other nodes that wait here for one core's full inbound
/// queue (beyond the queue's own [`RING`]); past it, what can be dropped is
/// ([`droppable`]).
const MAX_PENDING: usize = 4 * RING;

/// Whether `inbound` may be dropped for a core far behind: everything but the notices
/// nobody would send again — logins and their acknowledgements, last logouts,
/// replacements, revocations, room departures and removals, nodes going and coming.
/// What is dropped is answered elsewhere: a request or its reply by the asker's
/// time-out (`SERVER_BUSY`, the client sends again), a push by the next sync.
fn droppable(inbound: &Inbound) -> bool {
    use petrel_control::CoreMessage as M;
    match inbound {
        Inbound::Mail {
            mail: Mail::Control(message),
            ..
        } => !matches!(
            message,
            M::LoggedIn(_)
                | M::LoginSeen { .. }
                | M::Offline { .. }
                | M::Replace { .. }
                | M::Revoked { .. }
                | M::RoomLeft { .. }
                | M::RoomRemoved { .. }
        ),
        Inbound::Mail { .. } => true,
        Inbound::Down(_) | Inbound::Up(_) | Inbound::Endpoints(_) => false,
    }
}

/// Wakes the bridge's task from a core (`RingOut`'s waker).
struct NotifyWake(Arc<Notify>);

impl Wake for NotifyWake {
    fn wake(&self) -> std::io::Result<()> {
        self.0.notify_one();
        Ok(())
    }
}

/// What the bridge keeps the dispatch directory told of.
pub struct DispatchLink {
    /// Told which nodes are up, in which pool, reached where.
    pub directory: Arc<Directory>,
    /// Mirrored from the NATS key-value bucket, on the bridge's runtime.
    pub pools: Arc<PoolBook>,
    /// This node's pool, which its heartbeat names.
    pub pool: String,
    /// The other nodes' APIs (connected and told which nodes are up here), and this
    /// node's cores, which answer the other nodes' calls.
    pub api: (Arc<ClusterApi>, ApiBridge),
    /// Where the bridge counts its traffic, for the metrics.
    pub stats: Arc<ClusterStats>,
    /// Stops this node: another process serving as it was heard, and this one yields.
    pub yield_node: Box<dyn Fn() + Send + Sync>,
}

/// Starts the bridge for this node (`layout`), whose cores `wakers` wake and whose
/// database has `partitions`, with clients at `endpoints`. Returns it and each local
/// core's links. Connecting is retried in the background: until NATS answers, every
/// other node is down.
pub fn start(
    settings: &ClusterSettings,
    layout: Layout,
    partitions: u16,
    endpoints: Vec<String>,
    dispatch: DispatchLink,
    wakers: Vec<Arc<dyn Wake>>,
) -> anyhow::Result<(Bridge, Vec<CoreLinks>)> {
    anyhow::ensure!(
        wakers.len() == usize::from(layout.cores),
        "{} core wakers for {} cores",
        wakers.len(),
        layout.cores
    );
    let kick = Arc::new(Notify::new());
    let stop = Arc::new(Notify::new());
    let mut links = Vec::new();
    let mut outbound = Vec::new();
    let mut inbound = Vec::new();
    for local in 0..layout.cores {
        let from = layout.first_core() + local;
        let mut outs = Vec::new();
        for to in 0..layout.total_cores() {
            if layout.is_local(to) {
                continue;
            }
            let (tx, rx) = crossbeam_channel::bounded(RING);
            let waker: Arc<dyn Wake> = Arc::new(NotifyWake(kick.clone()));
            outs.push((to, RingOut::new(tx, waker)));
            outbound.push((from, to, rx));
        }
        let (tx, rx) = crossbeam_channel::bounded(RING);
        inbound.push(tx);
        links.push(CoreLinks { outs, inbound: rx });
    }
    let task = Task {
        settings: settings.clone(),
        layout,
        hello: Hello {
            nodes: layout.nodes,
            cores: layout.cores,
            partitions,
            endpoints,
            pool: dispatch.pool,
        },
        directory: dispatch.directory,
        pools: dispatch.pools,
        api: dispatch.api,
        stats: dispatch.stats,
        yield_node: dispatch.yield_node,
        yielded: false,
        incarnation: rand::random::<u64>() | 1,
        outbound,
        inbound,
        wakers,
        peers: vec![None; usize::from(layout.nodes)],
        refused: vec![None; usize::from(layout.nodes)],
        left: vec![None; usize::from(layout.nodes)],
        pending: (0..layout.cores).map(|_| Default::default()).collect(),
        stalled_until: None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the cluster bridge's runtime")?;
    let (kick_task, stop_task) = (kick.clone(), stop.clone());
    let thread = std::thread::Builder::new()
        .name("petrel-cluster".into())
        .spawn(move || runtime.block_on(task.run(kick_task, stop_task)))
        .context("cannot start the cluster bridge thread")?;
    Ok((
        Bridge {
            stop,
            thread: Some(thread),
        },
        links,
    ))
}

/// What the bridge knows of another node.
#[derive(Debug, Clone)]
struct Peer {
    incarnation: u64,
    last_heard: Instant,
    /// Where its clients reach it (from its last hello).
    endpoints: Vec<String>,
    /// Its dispatch pool (from its last hello).
    pool: String,
}

struct Task {
    settings: ClusterSettings,
    layout: Layout,
    hello: Hello,
    /// The dispatch directory, told which nodes are up with [`Inbound::Endpoints`].
    directory: Arc<Directory>,
    pools: Arc<PoolBook>,
    api: (Arc<ClusterApi>, ApiBridge),
    stats: Arc<ClusterStats>,
    /// Stops this node (see [`DispatchLink::yield_node`]).
    yield_node: Box<dyn Fn() + Send + Sync>,
    /// Whether this node yielded to another process serving as it.
    yielded: bool,
    incarnation: u64,
    /// (from, to, ring) for every local core and every remote core.
    outbound: Vec<(u8, u8, Receiver<Mail>)>,
    /// Each local core's inbound queue, by local index.
    inbound: Vec<Sender<Inbound>>,
    wakers: Vec<Arc<dyn Wake>>,
    peers: Vec<Option<Peer>>,
    /// Per node, the incarnation refused for disagreeing (logged once).
    refused: Vec<Option<u64>>,
    /// Per node, the incarnation that said goodbye.
    left: Vec<Option<u64>>,
    /// Per local core, what waits for room in its inbound queue, in order.
    pending: Vec<std::collections::VecDeque<Inbound>>,
    /// Publishing pauses until then after a publish that NATS did not take in time.
    stalled_until: Option<Instant>,
}

impl Task {
    async fn run(mut self, kick: Arc<Notify>, stop: Arc<Notify>) {
        let options = async_nats::ConnectOptions::new()
            .name(format!(
                "petrel-{}-node-{}",
                self.settings.name, self.layout.node
            ))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2));
        let client = match options.connect(self.settings.nats_url.as_str()).await {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(url = %self.settings.nats_url, error = %e,
                    "cluster: cannot connect to NATS; this node serves alone, every other node down");
                stop.notified().await;
                return;
            }
        };
        let name = self.settings.name.clone();
        let mine = wire::node_subject(&name, self.layout.node);
        let hello_subject = wire::hello_subject(&name);
        let (mut mail_in, mut hello_in) = match (
            client.subscribe(mine.clone()).await,
            client.subscribe(hello_subject.clone()).await,
        ) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cluster: cannot subscribe; this node serves alone");
                stop.notified().await;
                return;
            }
        };
        tracing::info!(node = self.layout.node, nodes = self.layout.nodes, subject = %mine,
            "cluster: connected to NATS");
        tokio::spawn(crate::dispatch::pools::keep_in_sync(
            client.clone(),
            self.pools.clone(),
        ));
        self.api.0.connected(client.clone());
        tokio::spawn(super::api_calls::serve(
            client.clone(),
            wire::api_subject(&name, self.layout.node),
            self.api.1.clone(),
        ));
        let mut beat = tokio::time::interval(self.settings.heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Checked once connected: the client connects in the background, and knows
        // the server's limit only then.
        let mut payload_checked = false;
        let mut batches: Vec<Vec<Parcel>> = (0..self.layout.nodes).map(|_| Vec::new()).collect();
        loop {
            // Unbiased: under load the cores kick all the time, and the inbound
            // subscriptions must still get their turn.
            tokio::select! {
                () = kick.notified() => self.flush(&client, &mut batches).await,
                Some(message) = mail_in.next() => self.take(&client, &message.payload).await,
                Some(message) = hello_in.next() => self.take(&client, &message.payload).await,
                _ = beat.tick() => {
                    self.retry_pending();
                    // Not queued while NATS is unreachable (the client's buffer would
                    // fill and stall this thread): the others see silence, as they
                    // should. But sent while mail is paused after a slow publish: a
                    // node that still hears the others must not look dead to them.
                    if client.connection_state() == async_nats::connection::State::Connected {
                        if !payload_checked {
                            payload_checked = true;
                            warn_if_small_payload(&client);
                        }
                        let hello = self.envelope(Body::Hello(self.hello.clone()));
                        publish_detached(&client, &hello_subject, &hello);
                    }
                    self.check_silence();
                }
                () = stop.notified() => {
                    // The last replies of the cores' shutdown first, then the goodbye.
                    self.flush(&client, &mut batches).await;
                    let bye = self.envelope(Body::Bye);
                    self.publish(&client, &hello_subject, &bye).await;
                    let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
                    tracing::info!("cluster: left");
                    return;
                }
            }
        }
    }

    fn envelope(&self, body: Body) -> Envelope {
        Envelope {
            node: self.layout.node,
            incarnation: self.incarnation,
            body,
        }
    }

    /// Whether publishing can go ahead: NATS is connected and no publish timed out in
    /// the last second.
    fn can_publish(&self, client: &async_nats::Client) -> bool {
        client.connection_state() == async_nats::connection::State::Connected
            && self
                .stalled_until
                .is_none_or(|until| Instant::now() >= until)
    }

    /// Drains every ring to other nodes and publishes the mail, whatever happens, so a
    /// core never waits on NATS: mail for a node that is down, or while NATS is
    /// unreachable, is dropped (its requests are answered SERVER_BUSY; a push is found by
    /// the next sync).
    async fn flush(&mut self, client: &async_nats::Client, batches: &mut [Vec<Parcel>]) {
        self.retry_pending();
        self.drain_outbound(batches);
        for (node, parcels) in batches.iter_mut().enumerate() {
            if parcels.is_empty() {
                continue;
            }
            let parcels = std::mem::take(parcels);
            if !self.can_publish(client) || self.peers[node].is_none() {
                let dropped =
                    ClusterStats::add(&self.stats.dropped_unreachable, parcels.len() as u64);
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        node,
                        dropped,
                        "cluster: mail for a node that is down or unreachable dropped"
                    );
                }
                continue;
            }
            let to = self.peers[node].as_ref().map_or(0, |p| p.incarnation);
            let node = u8::try_from(node).unwrap_or(u8::MAX);
            let subject = wire::node_subject(&self.settings.name, node);
            self.publish_mail(client, &subject, to, parcels).await;
        }
    }

    /// Takes every ring's mail, grouped by receiving node, in each ring's order.
    fn drain_outbound(&mut self, batches: &mut [Vec<Parcel>]) {
        for (from, to, rx) in &self.outbound {
            let node = usize::from(self.layout.node_of(*to));
            while let Ok(mail) = rx.try_recv() {
                if let Some(batch) = batches.get_mut(node) {
                    batch.push(Parcel {
                        from: *from,
                        to: *to,
                        mail: mail.into(),
                    });
                }
            }
        }
    }

    /// Publishes `parcels` for the process `to` of a node on `subject`, split into
    /// envelopes under the payload limit.
    async fn publish_mail(
        &mut self,
        client: &async_nats::Client,
        subject: &str,
        to: u64,
        parcels: Vec<Parcel>,
    ) {
        let mut pending = vec![parcels];
        while let Some(mut parcels) = pending.pop() {
            if !self.can_publish(client) {
                ClusterStats::add(&self.stats.dropped_unreachable, parcels.len() as u64);
                continue;
            }
            let count = parcels.len() as u64;
            let envelope = self.envelope(Body::Mail { to, parcels });
            let bytes = match wire::encode(&envelope) {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::error!(error = %e, "cluster: cannot encode mail; dropped (its requests time out)");
                    continue;
                }
            };
            if bytes.len() > MAX_BATCH_BYTES {
                let Body::Mail { parcels: all, .. } = envelope.body else {
                    continue;
                };
                parcels = all;
                if parcels.len() > 1 {
                    let second = parcels.split_off(parcels.len() / 2);
                    // Later parcels are published after earlier ones: push them first.
                    pending.push(second);
                    pending.push(parcels);
                    continue;
                }
                // One parcel alone over the limit: try anyway (NATS's limit may be
                // higher than ours); if the server refuses it, its request times out.
            }
            ClusterStats::add(&self.stats.parcels_sent, count);
            self.publish_bytes(client, subject, bytes).await;
        }
    }

    async fn publish(&mut self, client: &async_nats::Client, subject: &str, envelope: &Envelope) {
        match wire::encode(envelope) {
            Ok(bytes) => self.publish_bytes(client, subject, bytes).await,
            Err(e) => tracing::error!(error = %e, "cluster: cannot encode"),
        }
    }

    /// Publishes, waiting at most [`PUBLISH_WAIT`] for room in the client's buffer (a
    /// connection that looks up but does not move): past it the message is dropped and
    /// publishing pauses for a second, so this thread keeps draining the cores' rings.
    async fn publish_bytes(&mut self, client: &async_nats::Client, subject: &str, bytes: Vec<u8>) {
        let publish = client.publish(subject.to_owned(), Bytes::from(bytes));
        match tokio::time::timeout(PUBLISH_WAIT, publish).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(subject, error = %e, "cluster: publish failed; dropped"),
            Err(_) => {
                tracing::warn!(
                    subject,
                    "cluster: NATS does not take our messages; dropping for a second"
                );
                self.stalled_until = Some(Instant::now() + Duration::from_secs(1));
                ClusterStats::add(&self.stats.publish_stalls, 1);
            }
        }
    }

    /// One envelope from NATS.
    async fn take(&mut self, client: &async_nats::Client, payload: &[u8]) {
        self.retry_pending();
        let envelope = match wire::decode::<Envelope>(payload) {
            Ok(envelope) => envelope,
            Err(e) => {
                let undecodable = ClusterStats::add(&self.stats.undecodable, 1);
                if undecodable.is_power_of_two() {
                    match e {
                        wire::DecodeError::Version(_) => tracing::error!(error = %e,
                            count = undecodable,
                            "cluster: nodes of two versions cannot share a cluster; each \
                             counts the other as down (upgrade with a full restart)"),
                        _ => tracing::warn!(error = %e, count = undecodable,
                            "cluster: an undecodable message on our subjects"),
                    }
                }
                return;
            }
        };
        let node = envelope.node;
        if node >= self.layout.nodes {
            return;
        }
        if node == self.layout.node {
            if envelope.incarnation != self.incarnation && matches!(envelope.body, Body::Hello(_)) {
                // Both serve (the start-up check did not catch it: NATS was cut off from
                // one of them then). Two owners of one node's conversations must not
                // go on: the one with the higher random id stops, the other logs.
                let yields = self.incarnation > envelope.incarnation;
                tracing::error!(
                    node,
                    yields,
                    "cluster: another process runs as this node; check --cluster-node. \
                     Of the two, the one with the higher random id stops"
                );
                if yields && !self.yielded {
                    self.yielded = true;
                    (self.yield_node)();
                }
            }
            return;
        }
        let slot = usize::from(node);
        // A process that said goodbye stays gone, whatever of it arrives late.
        if self.left[slot] == Some(envelope.incarnation) {
            return;
        }
        let current = self.peers[slot].as_ref().map(|p| p.incarnation);
        match envelope.body {
            Body::Bye => {
                if current == Some(envelope.incarnation) {
                    self.peers[slot] = None;
                    ClusterStats::add(&self.stats.nodes_went_down, 1);
                    tracing::info!(node, "cluster: node left");
                    self.tell_all(|| Inbound::Down(1 << node));
                    self.tell_endpoints();
                }
                self.left[slot] = Some(envelope.incarnation);
            }
            // Only a hello makes a node (or a new process of it) up.
            Body::Hello(hello) => {
                if !hello.agrees_with(&self.hello) {
                    if self.refused[slot] != Some(envelope.incarnation) {
                        self.refused[slot] = Some(envelope.incarnation);
                        tracing::error!(node, theirs = ?hello, ours = ?self.hello,
                            "cluster: node refused: every node must have the same node count, cores and partitions");
                    }
                    return;
                }
                if self.heard(node, envelope.incarnation) {
                    // New to us: it may not have heard of our sessions either (it may
                    // never have seen us go): ask it to tell us its own again.
                    // Before any mail the cores now send it (their announcements): a
                    // resync after them would make it drop them again.
                    if self.can_publish(client) {
                        let resync = self.envelope(Body::Resync);
                        self.publish(
                            client,
                            &wire::node_subject(&self.settings.name, node),
                            &resync,
                        )
                        .await;
                    }
                }
                if let Some(peer) = &mut self.peers[slot]
                    && (peer.endpoints != hello.endpoints || peer.pool != hello.pool)
                {
                    peer.endpoints = hello.endpoints;
                    peer.pool = hello.pool;
                    self.tell_endpoints();
                }
            }
            // Mail and resyncs only from the process we know.
            _ if current != Some(envelope.incarnation) => {}
            Body::Resync => {
                // The sender saw this node go (its side dropped what it had of it:
                // presence, room seats): do the same here, then announce again.
                self.heard(node, envelope.incarnation);
                self.tell_down_and_up(node);
            }
            Body::Mail { to, parcels } => {
                self.heard(node, envelope.incarnation);
                // Sent before the sender heard this process start: its connection ids
                // and requests are the previous process's.
                if to != self.incarnation {
                    ClusterStats::add(&self.stats.dropped_stale, parcels.len() as u64);
                    return;
                }
                ClusterStats::add(&self.stats.parcels_received, parcels.len() as u64);
                let mut woken = 0u64;
                for parcel in parcels {
                    if !self.layout.is_local(parcel.to) || self.layout.node_of(parcel.from) != node
                    {
                        continue;
                    }
                    let local = usize::from(parcel.to - self.layout.first_core());
                    let inbound = Inbound::Mail {
                        from: parcel.from,
                        mail: parcel.mail.into(),
                    };
                    if self.deliver(local, inbound) {
                        woken |= 1 << local;
                    }
                }
                for (local, waker) in self.wakers.iter().enumerate() {
                    if woken & (1 << local) != 0 {
                        let _ = waker.wake();
                    }
                }
            }
        }
    }

    /// Puts `inbound` on local core `local`'s queue, after what waits for it already;
    /// when the queue is full it waits here, in order, and goes at the next round
    /// ([`Task::retry_pending`]) — this thread never blocks, so heartbeats and NATS keep
    /// going while a core catches up. False if the core has stopped, or the mail was
    /// dropped (more than [`MAX_PENDING`] wait for the core).
    fn deliver(&mut self, local: usize, inbound: Inbound) -> bool {
        let Some(tx) = self.inbound.get(local) else {
            return false;
        };
        let waiting = &mut self.pending[local];
        let inbound = if waiting.is_empty() {
            match tx.try_send(inbound) {
                Ok(()) => return true,
                Err(crossbeam_channel::TrySendError::Full(inbound)) => inbound,
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => return false,
            }
        } else {
            inbound
        };
        // A core that stays behind: the bulk of the mail past the limit is dropped (as
        // NATS may drop it: a request or its reply times out, a push is found by the next
        // sync), so memory stays bounded. Notices are kept, since nothing would send them
        // again ([`droppable`]).
        if waiting.len() >= MAX_PENDING && droppable(&inbound) {
            let dropped = ClusterStats::add(&self.stats.dropped_core_behind, 1);
            if dropped.is_power_of_two() {
                tracing::warn!(
                    core = local,
                    dropped,
                    "cluster: a core is far behind on mail from other nodes; dropping some"
                );
            }
            return false;
        }
        waiting.push_back(inbound);
        true
    }

    /// Moves what waits for full core queues into them, as far as there is room, and
    /// wakes those cores.
    fn retry_pending(&mut self) {
        for (local, waiting) in self.pending.iter_mut().enumerate() {
            if waiting.is_empty() {
                continue;
            }
            let Some(tx) = self.inbound.get(local) else {
                waiting.clear();
                continue;
            };
            while let Some(inbound) = waiting.pop_front() {
                match tx.try_send(inbound) {
                    Ok(()) => {}
                    Err(crossbeam_channel::TrySendError::Full(inbound)) => {
                        waiting.push_front(inbound);
                        break;
                    }
                    Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                        waiting.clear();
                        break;
                    }
                }
            }
            if let Some(waker) = self.wakers.get(local) {
                let _ = waker.wake();
            }
        }
    }

    /// Node `node` (incarnation `incarnation`) is alive. Returns whether it was not up
    /// before (first heard, or a new process of it).
    fn heard(&mut self, node: u8, incarnation: u64) -> bool {
        let now = Instant::now();
        let slot = &mut self.peers[usize::from(node)];
        match slot {
            Some(peer) if peer.incarnation == incarnation => {
                peer.last_heard = now;
                false
            }
            Some(peer) => {
                tracing::warn!(node, "cluster: node restarted");
                let endpoints = std::mem::take(&mut peer.endpoints);
                let pool = std::mem::take(&mut peer.pool);
                *slot = Some(Peer {
                    incarnation,
                    last_heard: now,
                    endpoints,
                    pool,
                });
                self.tell_down_and_up(node);
                ClusterStats::add(&self.stats.nodes_went_down, 1);
                ClusterStats::add(&self.stats.nodes_came_up, 1);
                true
            }
            None => {
                tracing::info!(node, "cluster: node up");
                *slot = Some(Peer {
                    incarnation,
                    last_heard: now,
                    endpoints: Vec::new(),
                    pool: String::new(),
                });
                self.tell_all(|| Inbound::Up(1 << node));
                ClusterStats::add(&self.stats.nodes_came_up, 1);
                self.note_up_nodes();
                true
            }
        }
    }

    /// Tells the API calls and the metrics which other nodes are up now.
    fn note_up_nodes(&self) {
        let up = self.up_nodes();
        self.api.0.set_up(up);
        self.stats.nodes_up.store(
            u64::from(up.count_ones()),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// The other nodes that are up (bit = node).
    fn up_nodes(&self) -> u64 {
        self.peers
            .iter()
            .enumerate()
            .filter(|(_, peer)| peer.is_some())
            .fold(0u64, |all, (node, _)| all | (1 << node))
    }

    /// Nodes silent for `node_timeout` are down.
    fn check_silence(&mut self) {
        let timeout = self.settings.node_timeout;
        let mut down = 0u64;
        for (node, slot) in self.peers.iter_mut().enumerate() {
            if slot
                .as_ref()
                .is_some_and(|p| p.last_heard.elapsed() > timeout)
            {
                *slot = None;
                tracing::warn!(
                    node,
                    timeout_ms = timeout.as_millis() as u64,
                    "cluster: node silent; down"
                );
                down |= 1 << node;
            }
        }
        if down != 0 {
            ClusterStats::add(&self.stats.nodes_went_down, u64::from(down.count_ones()));
            self.tell_all(|| Inbound::Down(down));
            self.tell_endpoints();
        }
    }

    /// Tells the cores where the other nodes of this node's pool that are up take
    /// clients (the backup domains if none), starting with the node after this one (so
    /// the clients of a stopping node spread out), and the dispatch directory which
    /// nodes are up, in which pool.
    fn tell_endpoints(&mut self) {
        let n = usize::from(self.layout.nodes);
        let me = usize::from(self.layout.node);
        self.note_up_nodes();
        for (node, peer) in self.peers.iter().enumerate() {
            if node != me {
                let node = u8::try_from(node).unwrap_or(u8::MAX);
                let up = peer.as_ref().map(|p| (p.pool.as_str(), &p.endpoints[..]));
                self.directory.set_node(node, up);
            }
        }
        // The clients of a stopping node stay in its pool: the pool's other nodes that
        // are up, else the backup domains, as the directory would answer them.
        let mut endpoints: Vec<String> = (1..n)
            .filter_map(|i| self.peers[(me + i) % n].as_ref())
            .filter(|p| p.pool == self.hello.pool)
            .flat_map(|p| p.endpoints.iter().cloned())
            .collect();
        if endpoints.is_empty() {
            endpoints = self.directory.backups().to_vec();
        }
        self.tell_all(|| Inbound::Endpoints(endpoints.clone()));
    }

    /// The cores forget what they had of node `node` and meet it afresh.
    fn tell_down_and_up(&mut self, node: u8) {
        self.tell_all(|| Inbound::Down(1 << node));
        self.tell_all(|| Inbound::Up(1 << node));
    }

    fn tell_all(&mut self, notice: impl Fn() -> Inbound) {
        for local in 0..self.wakers.len() {
            if self.deliver(local, notice()) {
                let _ = self.wakers[local].wake();
            }
        }
    }
}
