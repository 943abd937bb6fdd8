//! Shared-nothing cores (`ownership = "per-core"`): every core runs the whole loop for
//! its own connections, and no core is home.
//!
//! ```text
//! core i, one iteration (one pinned thread, no hand-off):
//!   io.wait ─▶ io.receive ─▶ Control_i::handle ─▶ actions ─┬─▶ Send/Close: io_i
//!                              ▲        ▲                  ├─▶ Storage: this iteration's
//!     rings from other cores ──┘        │                  │   group → Committer_i::commit
//!     (control messages; writes for     │                  │   (writes for core j's
//!      core i's partitions; replies)    │                  │    partitions: ring to j)
//!                                       │                  └─▶ ToCore: ring to core j
//!                  Committer_i::take_ready (replies once durable; every committer
//!                  shares one syncer thread, so one fsync covers every core's groups)
//! ```
//!
//! Each core's control plane owns the sessions of its own connections
//! (`Config::core_index`, `core_count`). What the cores tell each other — logins and
//! presence, forwarded pushes, revocations, chatroom work for the room's owner core — is
//! a [`CoreMessage`] on a bounded ring per ordered pair of cores ([`super::ring`]),
//! drained at most [`RING_BATCH`] per iteration and woken once per iteration.
//!
//! Storage: each conversation is written by the core that owns its storage partition
//! ([`super::writers`]): a write for another core's partition crosses on the ring as
//! [`Mail::Write`], is applied in that core's next group commit, and its durable reply
//! comes back as [`Mail::Written`]. Reads run here and wait only for the durable
//! watermark of what they show (other committers' unsynced groups included), so
//! nothing is shown before it is durable and no read queues behind an append.
//!
//! Back-pressure: a core whose ring to another is full keeps what did not fit, in order,
//! and stops reading its own sockets until it drains, as it does while its committer has
//! [`MAX_IN_FLIGHT`] requests unreleased. It keeps reading the rings from the other
//! cores, so two cores that wait on each other still drain both ways.
//!
//! Shutdown: the signal wakes core 0, which wakes the others. Each core drains its own
//! in-flight writes (its control plane answers `SHUTTING_DOWN` meanwhile), kicks its
//! sessions, closes its connections and shuts its committer down; the last committer
//! stops the syncer after the last fsync.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::Receiver;
use petrel_conn::TransportEvent;
use petrel_control::{Action, Control, CoreMessage, Timestamp};
use petrel_dataplane::{CoreIo, Wake};
use petrel_storage::partition::Partitions;
use petrel_storage::{Committer, GroupEngine, StorageError};

use super::config::PollMode;
use super::core_loop::{Drain, DrainStep, MAX_IN_FLIGHT, admit_after_round, now, sleep_for};
use super::disk_watch::DiskWatch;
use super::metrics::{Metrics, PUBLISH_INTERVAL, Published};
use super::plane::Plane;
use super::ring::{RING, RING_BATCH, RingOut};
use super::writers::{Mail, Origin, Writers};
use crate::api::bridge::ApiInbox;
use crate::cluster::Layout;
use crate::cluster::bridge::{CoreLinks, Inbound};
use crate::cluster::inflight::InFlight;
use crate::cluster::stats::ClusterStats;
use crate::webhook::dispatch::WebhookSender;

/// What one core owns besides its transport.
pub struct CoreParts<E: GroupEngine + 'static> {
    /// Its control plane (`core_index` = its index), warmed up.
    pub control: Control,
    /// Its storage committer (one of `Committer::start_many`).
    pub committer: Committer<E, Origin>,
    /// Its end of the HTTP API's bridge, when the API is enabled.
    pub api: Option<ApiInbox>,
}

/// What every core shares.
#[derive(Clone)]
pub struct SharedParts {
    /// Raised by the signal handler, which wakes core 0.
    pub stop: Arc<AtomicBool>,
    /// Told when storage fails for lack of space.
    pub disk: Arc<DiskWatch>,
    /// Where offline-message events go, when webhooks are enabled.
    pub webhook: Option<WebhookSender>,
    /// Where each core publishes its counters (summed at a scrape), if anywhere.
    pub metrics: Option<Arc<Metrics>>,
    /// The database's partitions: partition p is written by core p mod cores.
    pub partitions: Partitions,
    /// This node's place in its cluster, how long a request to another node may go
    /// unanswered, and where the cluster layer counts (`None`: no cluster).
    pub cluster: Option<(Layout, Duration, Arc<ClusterStats>)>,
}

/// Runs one loop per core, each pinned to `cpus[i]`, core `i` with `parts[i]`, until
/// `stop` is raised and every core has shut down. Blocks the calling thread. In a
/// cluster, `links[i]` are core `i`'s rings to the other nodes' cores and its queue
/// from them ([`crate::cluster::bridge`]); the cores' indices are cluster indices.
pub fn run<I, E>(
    cores: Vec<I>,
    cpus: Vec<Option<usize>>,
    poll: PollMode,
    parts: Vec<CoreParts<E>>,
    shared: SharedParts,
    links: Vec<CoreLinks>,
) -> anyhow::Result<()>
where
    I: CoreIo + 'static,
    E: GroupEngine + 'static,
{
    let n = cores.len();
    anyhow::ensure!(
        n == parts.len(),
        "{n} cores but {} control planes",
        parts.len()
    );
    let wakers: Vec<Arc<dyn Wake>> = cores.iter().map(CoreIo::waker).collect();
    let core_count = u8::try_from(n).context("more than 255 cores")?;
    let layout = shared
        .cluster
        .as_ref()
        .map_or(Layout::single(core_count), |(layout, _, _)| *layout);
    anyhow::ensure!(
        layout.cores == core_count,
        "the cluster layout has {} cores per node, this node runs {n}",
        layout.cores
    );
    let first = usize::from(layout.first_core());
    let total = usize::from(layout.total_cores());
    // outs[i][j]: local core i's end of its ring to core j (a cluster index: another
    // local core's ring, or the bridge's for another node's core); ins[j]: (i, receiver)
    // for every other local core i.
    let mut outs: Vec<Vec<Option<RingOut<Mail>>>> =
        (0..n).map(|_| (0..total).map(|_| None).collect()).collect();
    let mut ins: Vec<Vec<(u8, Receiver<Mail>)>> = (0..n).map(|_| Vec::new()).collect();
    for (i, row) in outs.iter_mut().enumerate() {
        for j in 0..n {
            if i == j {
                continue;
            }
            let (tx, rx) = crossbeam_channel::bounded(RING);
            row[first + j] = Some(RingOut::new(tx, wakers[j].clone()));
            ins[j].push((u8::try_from(first + i).context("more than 255 cores")?, rx));
        }
    }
    let mut inbound: Vec<Option<Receiver<Inbound>>> = (0..n).map(|_| None).collect();
    for (i, link) in links.into_iter().enumerate().take(n) {
        for (to, ring) in link.outs {
            if let Some(slot) = outs[i].get_mut(usize::from(to)) {
                *slot = Some(ring);
            }
        }
        inbound[i] = Some(link.inbound);
    }
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    let others: Vec<Arc<dyn Wake>> = wakers.iter().skip(1).cloned().collect();
    for ((((io, part), (outs, ins)), cpu), cluster_in) in cores
        .into_iter()
        .zip(parts)
        .zip(outs.into_iter().zip(ins))
        .zip(cpus.into_iter().chain(std::iter::repeat(None)))
        .zip(inbound)
    {
        let index = io.index();
        let local = usize::from(index).saturating_sub(first);
        let shared = shared.clone();
        let others = if local == 0 {
            others.clone()
        } else {
            Vec::new()
        };
        threads.push(
            std::thread::Builder::new()
                .name(format!("petrel-core-{index}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        petrel_dataplane::pin::pin_current_thread(cpu);
                    }
                    let plane = Plane::new(
                        part.control,
                        part.committer,
                        part.api,
                        shared.webhook.clone(),
                        shared.disk.clone(),
                    );
                    let plane = match &shared.cluster {
                        Some((layout, timeout, stats)) => plane
                            .with_writers(Writers::in_cluster(index, *layout, shared.partitions))
                            .with_cluster(
                                InFlight::new(*layout, shared.partitions, *timeout),
                                stats.clone(),
                            ),
                        None => {
                            plane.with_writers(Writers::new(index, core_count, shared.partitions))
                        }
                    };
                    OwnerLoop {
                        io,
                        plane,
                        local,
                        outs,
                        ins,
                        cluster_in,
                        others,
                        poll,
                        shared,
                        events: Vec::with_capacity(1024),
                        next_publish: Instant::now(),
                    }
                    .run();
                })
                .context("cannot start a core thread")?,
        );
    }
    let mut panicked = false;
    for thread in threads {
        panicked |= thread.join().is_err();
    }
    if panicked {
        anyhow::bail!("a core thread panicked");
    }
    Ok(())
}

struct OwnerLoop<I: CoreIo, E: GroupEngine + 'static> {
    io: I,
    plane: Plane<E>,
    /// This core's index among this node's cores (its cluster index is `io.index()`).
    local: usize,
    /// Indexed by core (cluster index); `None` for this one.
    outs: Vec<Option<RingOut<Mail>>>,
    ins: Vec<(u8, Receiver<Mail>)>,
    /// What the cluster bridge hands this core (`None`: no cluster).
    cluster_in: Option<Receiver<Inbound>>,
    /// The other cores' wakers (core 0 only: it passes the stop signal on).
    others: Vec<Arc<dyn Wake>>,
    poll: PollMode,
    shared: SharedParts,
    events: Vec<TransportEvent>,
    next_publish: Instant,
}

impl<I: CoreIo, E: GroupEngine + 'static> OwnerLoop<I, E> {
    fn run(mut self) {
        let mut idle_since = Instant::now();
        let mut last_round_end = idle_since;
        let mut drain = Drain::new(&self.plane.control);
        loop {
            match drain.step(&self.shared.stop, &mut self.plane) {
                DrainStep::Done => break,
                // Core 0 passes the stop signal on to the others.
                DrainStep::Began => {
                    for waker in &self.others {
                        let _ = waker.wake();
                    }
                }
                DrainStep::Serve => {}
            }
            let next = self
                .plane
                .next_timeout(drain.is_draining(), self.shared.metrics.is_some());
            let waiting = !self.events.is_empty() || self.plane.has_work() || self.backed_up();
            let sleep = sleep_for(self.poll, waiting, idle_since, next);
            if let Err(e) = self.io.wait(Some(sleep)) {
                tracing::error!(core = self.io.index(), error = %e, "waiting for I/O failed; stopping");
                self.shared.stop.store(true, Ordering::Relaxed);
            }
            let started = Instant::now();
            let worked = self.iterate(now());
            admit_after_round(
                &mut self.io,
                &mut self.plane.control,
                &mut last_round_end,
                started,
                worked,
            );
            if worked {
                idle_since = Instant::now();
            }
            self.publish_metrics(false);
        }
        self.shut_down();
    }

    /// Publishes this core's share of the metrics every [`PUBLISH_INTERVAL`] (or now,
    /// with `force`).
    fn publish_metrics(&mut self, force: bool) {
        let Some(metrics) = &self.shared.metrics else {
            return;
        };
        let at = Instant::now();
        if !force && at < self.next_publish {
            return;
        }
        self.next_publish = at + PUBLISH_INTERVAL;
        let me = self.local;
        let mut connections = vec![0; me + 1];
        connections[me] = self.io.connections() as u64;
        // What waits in this core's rings to the others, as the home loop reports its
        // rings to the other cores.
        let mut outbound_queue = vec![0; self.outs.len().max(me + 1)];
        for (core, out) in self.outs.iter().enumerate() {
            if let Some(out) = out {
                outbound_queue[core] = out.queued() as u64;
            }
        }
        metrics.publish_from(
            me,
            Published {
                counters: self.plane.control.counters().clone(),
                sessions: self.plane.control.session_count(),
                connections,
                outbound_queue,
                inbound_queue: self.ins.iter().map(|(_, rx)| rx.len() as u64).sum(),
                storage_in_flight: self.plane.committer.in_flight() as u64,
                writes_sent_to_owner: self.plane.writes_sent,
                writes_applied_for_others: self.plane.writes_applied_for_others,
            },
        );
    }

    fn backed_up(&self) -> bool {
        self.outs.iter().flatten().any(RingOut::is_backed_up)
    }

    /// One iteration after the wait. Returns whether anything happened.
    fn iterate(&mut self, now: Timestamp) -> bool {
        let mut work = !self.events.is_empty();
        for out in self.outs.iter_mut().flatten() {
            out.flush_overflow();
        }
        let blocked = self.plane.committer.in_flight() >= MAX_IN_FLIGHT || self.backed_up();
        if !blocked {
            self.io.receive(&mut self.events);
            work |= !self.events.is_empty();
        }
        // The rings after the sockets are read and before what was read is handled: what
        // another core said before its client could see an effect of it — a login's
        // presence goes on the ring before its LoginResult is transmitted — is taken in
        // before anything that client's peers send in reaction (a typing notice or a
        // message to the new session is then pushed to it). Always, even when blocked:
        // the other core may be waiting on this one.
        work |= self.take_rings(now);
        let mut events = std::mem::take(&mut self.events);
        for event in events.drain(..) {
            self.plane.control.handle(now, event.into());
        }
        self.events = events;
        work |= self.plane.take_storage(now) > 0;
        work |= self.plane.take_calls_and_timers(now, blocked);
        self.perform(now);
        self.io.transmit(&mut self.events);
        for out in self.outs.iter_mut().flatten() {
            out.wake_if_needed();
        }
        work
    }

    /// Hands what the other cores sent to the plane (control-plane messages, writes
    /// for this core's partitions, replies to this core's writes), at most
    /// [`RING_BATCH`] per ring.
    fn take_rings(&mut self, now: Timestamp) -> bool {
        let mut any = false;
        for (core, rx) in &self.ins {
            for _ in 0..RING_BATCH {
                let Ok(message) = rx.try_recv() else {
                    break;
                };
                any = true;
                self.plane.take_mail(now, *core, message);
            }
        }
        if let Some(rx) = &self.cluster_in {
            for _ in 0..RING_BATCH {
                let Ok(inbound) = rx.try_recv() else {
                    break;
                };
                any = true;
                self.plane.take_inbound(now, inbound);
            }
        }
        any
    }

    /// Performs the control plane's actions ([`Plane::perform`]): sends and closes on
    /// this core's transport, messages on the rings.
    fn perform(&mut self, now: Timestamp) {
        let (io, outs) = (&mut self.io, &mut self.outs);
        self.plane.perform(now, |action| match action {
            Action::Send { conn, bytes } => {
                debug_assert_eq!(conn.core(), io.index(), "{conn} is not ours");
                io.send(conn, bytes);
            }
            Action::Close { conn, .. } => io.close(conn),
            Action::NoteCongestion { conn } => io.note_congestion(conn),
            Action::ToCore { core, message } => post(outs, core, Mail::Control(message)),
            // The plane keeps storage requests and offline messages.
            Action::Storage { .. } | Action::OfflineMessage(_) => {}
        });
        self.plane
            .drain_outbox(|core, mail| post(&mut self.outs, core, mail));
    }

    /// Kicks this core's clients with `ServerShutdown`, flushes and closes its
    /// connections, then waits for its last fsync.
    fn shut_down(mut self) {
        self.plane.control.shutdown();
        self.perform(now());
        self.io.begin_shutdown();
        loop {
            for out in self.outs.iter_mut().flatten() {
                out.flush_overflow();
                out.wake_if_needed();
            }
            // What the other cores still send no longer matters, but a full ring would
            // hold them back. A write for this core's partitions is answered with an
            // error (its client was never told it was stored, and sends it again after
            // the restart); a reply to one of this core's writes still reaches the
            // control plane, which tells its client nothing more now.
            // Mail from other nodes' cores the same way; their notices no longer matter.
            // API calls (this node's, or another node's asking about this one) are
            // refused at once: this core's sessions are ending.
            self.plane.refuse_api_calls();
            let now_ts = now();
            for (core, rx) in &self.ins {
                while let Ok(mail) = rx.try_recv() {
                    take_mail_stopping(&mut self.plane, &mut self.outs, now_ts, *core, mail);
                }
            }
            if let Some(rx) = &self.cluster_in {
                while let Ok(inbound) = rx.try_recv() {
                    if let Inbound::Mail { from, mail } = inbound {
                        take_mail_stopping(&mut self.plane, &mut self.outs, now_ts, from, mail);
                    }
                }
            }
            self.io.receive(&mut self.events);
            self.io.transmit(&mut self.events);
            let done = self.io.shutdown_done(&mut self.events);
            let mut events = std::mem::take(&mut self.events);
            for event in events.drain(..) {
                self.plane.control.handle(now_ts, event.into());
            }
            self.events = events;
            self.plane.take_storage(now_ts);
            let outs = &mut self.outs;
            self.plane.drain_outbox(|core, mail| post(outs, core, mail));
            // Closing connections produce no new work worth doing; drop what is queued.
            while self.plane.control.poll_action().is_some() {}
            if done {
                break;
            }
            if let Err(e) = self.io.wait(Some(Duration::from_millis(10))) {
                tracing::warn!(error = %e, "waiting during shutdown failed");
                break;
            }
        }
        self.publish_metrics(true);
        let outs = &mut self.outs;
        self.plane
            .shut_down_storage(|core, mail| post(outs, core, mail));
        for out in outs.iter_mut().flatten() {
            out.flush_overflow();
            out.wake_if_needed();
        }
    }
}

/// Mail from core `from` while this core shuts down: a write for its partitions is
/// refused (`Closed`), a reply to one of its own writes still reaches its control plane,
/// a login elsewhere is acknowledged at once (its `LoginResult` waits for every core's
/// `LoginSeen`, and the clients this core kicked log in elsewhere now; this core will
/// push to no one), other control-plane messages are dropped.
fn take_mail_stopping<E: GroupEngine + 'static>(
    plane: &mut Plane<E>,
    outs: &mut [Option<RingOut<Mail>>],
    now: Timestamp,
    from: u8,
    mail: Mail,
) {
    match mail {
        Mail::Write { ticket, .. } => post(
            outs,
            from,
            Mail::Written {
                ticket,
                result: Err(StorageError::Closed),
            },
        ),
        Mail::Written { .. } => plane.take_mail(now, from, mail),
        Mail::Control(CoreMessage::LoggedIn(login)) => post(
            outs,
            from,
            Mail::Control(CoreMessage::LoginSeen { conn: login.conn }),
        ),
        Mail::Control(_) => {}
    }
}

/// Puts `mail` on this core's ring to `core`.
fn post(outs: &mut [Option<RingOut<Mail>>], core: u8, mail: Mail) {
    if let Some(Some(out)) = outs.get_mut(usize::from(core)) {
        out.push(mail);
    }
}
