//! The home-core loops (`ownership = "home"`, the fallback layout; the default is
//! [`super::per_core`]), and what both layouts' loops share besides
//! [`super::plane::Plane`] (the drain rule, sleeping).
//!
//! Every served core runs one [`CoreIo`] on one pinned thread. Core 0 is the **home**
//! core: its loop also owns the sans-IO [`Control`] and the storage [`Committer`], so on
//! a one-core server a message is read, decoded, handled, written to RocksDB and — once
//! the syncer thread reports the fsync — acked and pushed, all on that one thread,
//! without a hand-off:
//!
//! ```text
//! home core, one iteration:
//!   io.wait ─▶ io.receive ─▶ Control::handle(now, event) ─▶ actions
//!        ▲                    ▲ Storage replies once durable   │ Send/Close: io (or a ring)
//!        │                    └── Committer::take_ready        │ Storage: this iteration's
//!        │                                                     ▼ group → Committer::commit
//!        └──────── io.transmit ◀───────────────────────────────┘ (apply now; fsync on the
//!                                                                  syncer thread, which
//!                                                                  wakes this core)
//! ```
//!
//! With more cores, the others run the same loop without a control plane: their events
//! travel to the home core on a bounded single-producer/single-consumer ring, and the
//! home core's sends and closes for their connections come back on another (crossbeam's
//! bounded array channel used one-to-one: lock-free, allocation-free once built, and
//! already a dependency). Each ring is woken once per iteration, not per message.
//!
//! Back-pressure: a core whose ring to home is full stops reading its sockets until it
//! drains (TCP then slows the clients); home stops taking input while a ring to another
//! core is full or while storage has [`MAX_IN_FLIGHT`] requests unreleased. Nothing
//! queues without a bound.
//!
//! With `ownership = "per-core"` (the default) every core owns the sessions of its own
//! connections instead: [`super::per_core`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use petrel_conn::{ConnId, TransportEvent};
use petrel_control::{Action, Control, Round, Timestamp};
use petrel_dataplane::{CoreIo, Wake};
use petrel_storage::{Committer, GroupEngine};

use super::config::PollMode;
use super::metrics::{Metrics, PUBLISH_INTERVAL, Published};
use super::plane::Plane;
use super::ring::{RING, RING_BATCH, RingOut};

/// Storage requests applied and not yet released past which home stops taking input.
pub const MAX_IN_FLIGHT: usize = 64 * 1024;
/// How long a graceful shutdown waits for in-flight storage writes to be acked, beyond
/// the control plane's `shutdown_grace`.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// Longest sleep of an idle core (it re-checks the stop flag).
pub(super) const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Sleep of a core whose ring to home is full (home is behind: give it the CPU).
const BACKLOG_SLEEP: Duration = Duration::from_micros(200);

/// Milliseconds since the Unix epoch, for the control plane's `now`.
pub fn now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Timestamp::from_millis(ms)
}

/// Milliseconds since this process first asked, on the monotonic clock: for deadlines
/// that a wall clock stepped back (or forward) must not move, such as requests waiting
/// for another cluster node ([`crate::cluster::inflight`]).
pub fn monotonic() -> Timestamp {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    Timestamp::from_millis(u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX))
}

/// A command from the home core to another core.
#[derive(Debug)]
enum Down {
    Send { conn: ConnId, bytes: Bytes },
    Close { conn: ConnId },
    NoteCongestion { conn: ConnId },
    Shutdown,
}

/// The home core's end of the rings to one other core.
struct Remote {
    down: RingOut<Down>,
    up: Receiver<TransportEvent>,
}

/// Another core's end of its rings to home.
struct HomeLink {
    up: Sender<TransportEvent>,
    down: Receiver<Down>,
    home: Arc<dyn Wake>,
}

/// What the home core's loop owns besides its transport.
pub struct HomeParts<E: GroupEngine + 'static> {
    /// The control plane, warmed up (revocation list loaded).
    pub control: Control,
    /// Storage group commit.
    pub committer: Committer<E, super::writers::Origin>,
    /// Raised by the signal handler; the home core's waker is woken with it.
    pub stop: Arc<AtomicBool>,
    /// Where metrics are published, if anywhere.
    pub metrics: Option<Arc<Metrics>>,
    /// Told when storage fails for lack of space (`disk_watch`).
    pub disk: Arc<super::disk_watch::DiskWatch>,
    /// Requests of the HTTP API, when it is enabled.
    pub api: Option<crate::api::bridge::ApiInbox>,
    /// Where offline-message events go, when webhooks are enabled.
    pub webhook: Option<crate::webhook::dispatch::WebhookSender>,
}

/// Runs one loop per core, `cores[0]` as home, each pinned to `cpus[i]`, until `stop`
/// is raised and the graceful shutdown has finished. Blocks the calling thread.
pub fn run<I, E>(
    cores: Vec<I>,
    cpus: Vec<Option<usize>>,
    poll: PollMode,
    home: HomeParts<E>,
) -> anyhow::Result<()>
where
    I: CoreIo + 'static,
    E: GroupEngine + 'static,
{
    let mut cores = cores.into_iter();
    let home_io = cores.next().context("no dataplane core to run")?;
    let home_waker = home_io.waker();
    let mut remotes = Vec::new();
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    for (io, cpu) in cores.zip(cpus.iter().skip(1).copied()) {
        let (up_tx, up_rx) = crossbeam_channel::bounded(RING);
        let (down_tx, down_rx) = crossbeam_channel::bounded(RING);
        remotes.push(Remote {
            down: RingOut::new(down_tx, io.waker()),
            up: up_rx,
        });
        let link = HomeLink {
            up: up_tx,
            down: down_rx,
            home: home_waker.clone(),
        };
        let index = io.index();
        threads.push(
            std::thread::Builder::new()
                .name(format!("petrel-core-{index}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        petrel_dataplane::pin::pin_current_thread(cpu);
                    }
                    RemoteLoop::new(io, link, poll).run();
                })
                .context("cannot start a core thread")?,
        );
    }
    let home_cpu = cpus.first().copied().flatten();
    let home_thread = std::thread::Builder::new()
        .name(format!("petrel-core-{}", home_io.index()))
        .spawn(move || {
            if let Some(cpu) = home_cpu {
                petrel_dataplane::pin::pin_current_thread(cpu);
            }
            HomeLoop::new(home_io, remotes, poll, home).run();
        })
        .context("cannot start the home core thread")?;
    let mut panicked = home_thread.join().is_err();
    for thread in threads {
        panicked |= thread.join().is_err();
    }
    if panicked {
        anyhow::bail!("a core thread panicked");
    }
    Ok(())
}

/// A loop's graceful shutdown: begun when the stop flag is raised (the control plane then
/// answers new requests `SHUTTING_DOWN`), over when nothing is in flight and the
/// control plane's grace has passed — or after [`DRAIN_LIMIT`] beyond the grace.
pub(super) struct Drain {
    since: Option<Instant>,
    limit: Duration,
}

/// What a loop does next during a shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DrainStep {
    /// Keep serving (and draining, if begun).
    Serve,
    /// The stop flag was just seen: the drain began this iteration.
    Began,
    /// Drained (or out of time): kick, close and stop.
    Done,
}

impl Drain {
    pub(super) fn new(control: &Control) -> Drain {
        Drain {
            since: None,
            limit: DRAIN_LIMIT + control.config().shutdown_grace,
        }
    }

    /// Whether the drain has begun.
    pub(super) fn is_draining(&self) -> bool {
        self.since.is_some()
    }

    /// Begins the drain once `stop` is raised, and says whether it is over.
    pub(super) fn step<E: GroupEngine + 'static>(
        &mut self,
        stop: &AtomicBool,
        plane: &mut Plane<E>,
    ) -> DrainStep {
        let in_flight = plane.in_flight();
        let control = &mut plane.control;
        let Some(since) = self.since else {
            if !stop.load(Ordering::Relaxed) {
                return DrainStep::Serve;
            }
            tracing::info!(
                in_flight,
                "shutting down: refusing new requests, finishing in-flight writes"
            );
            control.begin_shutdown(now());
            self.since = Some(Instant::now());
            return DrainStep::Began;
        };
        if in_flight == 0 && control.is_drained(now()) {
            return DrainStep::Done;
        }
        if since.elapsed() > self.limit {
            tracing::warn!(
                in_flight,
                "shutting down: drain limit reached with storage requests unanswered"
            );
            return DrainStep::Done;
        }
        DrainStep::Serve
    }
}

/// Reports a round to the control plane's admission control
/// ([`petrel_control::admission`]): the time since `last_end` (then moved to now), the
/// time since `started` if the round `worked` or the transport did work that produced
/// no event (ACKs, timers, dropped SYNs), and whether the transport left input behind;
/// and passes the verdict on new connections to the transport. With `ownership = "home"`
/// only core 0 runs it: the other cores' transports keep accepting, and the home core's
/// budgets decide every login (its logins-per-second budget is then the whole server's).
pub(super) fn admit_after_round<I: CoreIo>(
    io: &mut I,
    control: &mut Control,
    last_end: &mut Instant,
    started: Instant,
    worked: bool,
) {
    let end = Instant::now();
    let load = io.round_load();
    let busy = if worked || load.worked {
        end.saturating_duration_since(started)
    } else {
        Duration::ZERO
    };
    control.record_round(Round {
        cycle: end.saturating_duration_since(*last_end),
        busy,
        backlogged: load.backlogged,
    });
    *last_end = end;
    io.admit_connections(control.admits_connections());
}

/// How long to sleep: not at all while there is work or while spinning, else until the
/// next timer (capped).
pub(super) fn sleep_for(
    poll: PollMode,
    work_waiting: bool,
    idle_since: Instant,
    next: Duration,
) -> Duration {
    if work_waiting {
        return Duration::ZERO;
    }
    match poll {
        PollMode::Busy => Duration::ZERO,
        PollMode::Adaptive { spin } if idle_since.elapsed() < spin => Duration::ZERO,
        PollMode::Adaptive { .. } | PollMode::Interrupt => next,
    }
}

struct HomeLoop<I: CoreIo, E: GroupEngine + 'static> {
    io: I,
    remotes: Vec<Remote>,
    poll: PollMode,
    plane: Plane<E>,
    stop: Arc<AtomicBool>,
    events: Vec<TransportEvent>,
    metrics: Option<LoopMetrics>,
}

/// The home loop's side of the metrics: connection counts kept from the events it
/// handles anyway, published every [`PUBLISH_INTERVAL`].
struct LoopMetrics {
    metrics: Arc<Metrics>,
    connections: Vec<u64>,
    next_publish: Instant,
}

impl LoopMetrics {
    fn count(&mut self, event: &TransportEvent) {
        let (conn, opened) = match event {
            TransportEvent::Opened { conn } => (conn, true),
            TransportEvent::Closed { conn } => (conn, false),
            _ => return,
        };
        let core = usize::from(conn.core());
        if self.connections.len() <= core {
            self.connections.resize(core + 1, 0);
        }
        let n = &mut self.connections[core];
        *n = if opened { *n + 1 } else { n.saturating_sub(1) };
    }
}

impl<I: CoreIo, E: GroupEngine + 'static> HomeLoop<I, E> {
    fn new(io: I, remotes: Vec<Remote>, poll: PollMode, parts: HomeParts<E>) -> Self {
        HomeLoop {
            io,
            remotes,
            poll,
            plane: Plane::new(
                parts.control,
                parts.committer,
                parts.api,
                parts.webhook,
                parts.disk,
            ),
            stop: parts.stop,
            events: Vec::with_capacity(1024),
            metrics: parts.metrics.map(|metrics| LoopMetrics {
                metrics,
                connections: Vec::new(),
                next_publish: Instant::now(),
            }),
        }
    }

    /// Serves until the stop flag is raised, then drains: the control plane answers new
    /// requests `Error(ShuttingDown)` while the storage requests already in flight
    /// complete and are acked — transport events keep being handled all along — and
    /// once nothing is left (or after the drain limit) everyone is kicked and closed.
    fn run(mut self) {
        let mut idle_since = Instant::now();
        let mut last_round_end = idle_since;
        let mut drain = Drain::new(&self.plane.control);
        loop {
            if drain.step(&self.stop, &mut self.plane) == DrainStep::Done {
                break;
            }
            let next = self
                .plane
                .next_timeout(drain.is_draining(), self.metrics.is_some());
            // Events left by the last transmit, replies ready or API calls, or commands
            // that did not fit in a full ring to another core (it does not wake us when
            // it drains).
            let waiting = !self.events.is_empty()
                || self.plane.has_work()
                || self.remotes.iter().any(|r| r.down.is_backed_up());
            let sleep = sleep_for(self.poll, waiting, idle_since, next);
            if let Err(e) = self.io.wait(Some(sleep)) {
                tracing::error!(error = %e, "home core: waiting for I/O failed; stopping");
                self.stop.store(true, Ordering::Relaxed);
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

    /// One iteration after the wait. Returns whether anything happened.
    fn iterate(&mut self, now: Timestamp) -> bool {
        let mut work = !self.events.is_empty();
        for remote in &mut self.remotes {
            remote.down.flush_overflow();
        }
        let blocked = self.plane.committer.in_flight() >= MAX_IN_FLIGHT
            || self.remotes.iter().any(|r| r.down.is_backed_up());
        if !blocked {
            self.io.receive(&mut self.events);
            work |= !self.events.is_empty();
        }
        self.handle_events(now);
        if !blocked {
            for i in 0..self.remotes.len() {
                for _ in 0..RING_BATCH {
                    match self.remotes[i].up.try_recv() {
                        Ok(event) => {
                            work = true;
                            self.handle_transport(now, event);
                        }
                        Err(_) => break,
                    }
                }
            }
        }
        work |= self.plane.take_storage(now) > 0;
        work |= self.plane.take_calls_and_timers(now, blocked);
        self.perform(now);
        self.io.transmit(&mut self.events);
        for remote in &mut self.remotes {
            remote.down.wake_if_needed();
        }
        work
    }

    fn handle_events(&mut self, now: Timestamp) {
        let mut events = std::mem::take(&mut self.events);
        for event in events.drain(..) {
            self.handle_transport(now, event);
        }
        self.events = events;
    }

    fn handle_transport(&mut self, now: Timestamp, event: TransportEvent) {
        if let Some(m) = &mut self.metrics {
            m.count(&event);
        }
        self.plane.control.handle(now, event.into());
    }

    /// Performs the control plane's actions ([`Plane::perform`]): sends and closes to
    /// their connections' cores.
    fn perform(&mut self, now: Timestamp) {
        let (io, remotes) = (&mut self.io, &mut self.remotes);
        self.plane.perform(now, |action| {
            let (conn, command) = match action {
                Action::Send { conn, bytes } => (conn, Down::Send { conn, bytes }),
                Action::Close { conn, .. } => (conn, Down::Close { conn }),
                Action::NoteCongestion { conn } => (conn, Down::NoteCongestion { conn }),
                // In the home layout the one control plane has core_count 1: it has no
                // other core to tell anything. (Storage and offline messages never
                // reach here.)
                _ => return,
            };
            route(io, remotes, conn, command);
        });
    }

    fn publish_metrics(&mut self, force: bool) {
        let Some(m) = &mut self.metrics else {
            return;
        };
        let at = Instant::now();
        if !force && at < m.next_publish {
            return;
        }
        m.next_publish = at + PUBLISH_INTERVAL;
        let cores = self.remotes.len() + 1;
        let mut connections = m.connections.clone();
        connections.resize(cores.max(connections.len()), 0);
        let mut outbound_queue = vec![0];
        outbound_queue.extend(self.remotes.iter().map(|r| r.down.queued() as u64));
        m.metrics.publish(Published {
            counters: self.plane.control.counters().clone(),
            sessions: self.plane.control.session_count(),
            connections,
            outbound_queue,
            inbound_queue: self.remotes.iter().map(|r| r.up.len() as u64).sum(),
            storage_in_flight: self.plane.committer.in_flight() as u64,
            writes_sent_to_owner: self.plane.writes_sent,
            writes_applied_for_others: self.plane.writes_applied_for_others,
        });
    }

    /// Kicks every client with `ServerShutdown`, lets every core flush and close, then
    /// waits for the last fsync.
    fn shut_down(mut self) {
        let now_ts = now();
        self.plane.control.shutdown();
        self.perform(now_ts);
        for remote in &mut self.remotes {
            remote.down.push(Down::Shutdown);
        }
        self.io.begin_shutdown();
        loop {
            for remote in &mut self.remotes {
                remote.down.flush_overflow();
                remote.down.wake_if_needed();
                // Their events no longer matter, but a full ring would stall them.
                while remote.up.try_recv().is_ok() {}
            }
            self.io.receive(&mut self.events);
            self.io.transmit(&mut self.events);
            let done = self.io.shutdown_done(&mut self.events);
            let now_ts = now();
            self.handle_events(now_ts);
            self.plane.take_storage(now_ts);
            // Closing connections produce no new work worth doing; drop what is queued.
            while self.plane.control.poll_action().is_some() {}
            let remotes_done = self.remotes.iter().all(|r| !r.down.is_backed_up());
            if done && remotes_done {
                break;
            }
            if let Err(e) = self.io.wait(Some(Duration::from_millis(10))) {
                tracing::warn!(error = %e, "waiting during shutdown failed");
                break;
            }
        }
        self.publish_metrics(true);
        // The home loop sends no write to another core, so no reply is for one.
        self.plane.shut_down_storage(|_, _| {});
        // Drop the rings: a remote still running sees its command ring close and stops.
    }
}

/// Hands `command` for `conn` to this core's transport, or to the ring of the core the
/// connection is on.
fn route<I: CoreIo>(io: &mut I, remotes: &mut [Remote], conn: ConnId, command: Down) {
    let core = usize::from(conn.core());
    if core == usize::from(io.index()) {
        match command {
            Down::Send { conn, bytes } => io.send(conn, bytes),
            Down::Close { conn } => io.close(conn),
            Down::NoteCongestion { conn } => io.note_congestion(conn),
            Down::Shutdown => {}
        }
    } else if let Some(remote) = core.checked_sub(1).and_then(|i| remotes.get_mut(i)) {
        remote.down.push(command);
    }
}

struct RemoteLoop<I: CoreIo> {
    io: I,
    link: HomeLink,
    poll: PollMode,
    events: Vec<TransportEvent>,
    /// Events that did not fit in the ring to home, in order.
    backlog: VecDeque<TransportEvent>,
    stopping: bool,
}

impl<I: CoreIo> RemoteLoop<I> {
    fn new(io: I, link: HomeLink, poll: PollMode) -> Self {
        RemoteLoop {
            io,
            link,
            poll,
            events: Vec::with_capacity(1024),
            backlog: VecDeque::new(),
            stopping: false,
        }
    }

    fn run(mut self) {
        let mut idle_since = Instant::now();
        loop {
            if self.backlog.is_empty() {
                let sleep = sleep_for(self.poll, false, idle_since, MAX_SLEEP);
                if let Err(e) = self.io.wait(Some(sleep)) {
                    tracing::error!(core = self.io.index(), error = %e, "waiting for I/O failed");
                    self.begin_shutdown();
                }
            } else {
                // Home is behind: read nothing new, give it the CPU, then retry the ring.
                std::thread::sleep(BACKLOG_SLEEP);
            }
            let mut work = false;
            if self.backlog.is_empty() {
                self.io.receive(&mut self.events);
            }
            loop {
                match self.link.down.try_recv() {
                    Ok(Down::Send { conn, bytes }) => self.io.send(conn, bytes),
                    Ok(Down::Close { conn }) => self.io.close(conn),
                    Ok(Down::NoteCongestion { conn }) => self.io.note_congestion(conn),
                    Ok(Down::Shutdown) | Err(TryRecvError::Disconnected) => {
                        self.begin_shutdown();
                        break;
                    }
                    Err(TryRecvError::Empty) => break,
                }
                work = true;
            }
            self.io.transmit(&mut self.events);
            let done = self.stopping && self.io.shutdown_done(&mut self.events);
            work |= self.push_up();
            if done {
                return;
            }
            if work {
                idle_since = Instant::now();
            }
        }
    }

    fn begin_shutdown(&mut self) {
        if !self.stopping {
            self.stopping = true;
            self.io.begin_shutdown();
        }
    }

    /// Sends the backlog, then this iteration's events, to home; wakes it once.
    fn push_up(&mut self) -> bool {
        let mut sent = false;
        while let Some(event) = self.backlog.pop_front() {
            match self.link.up.try_send(event) {
                Ok(()) => sent = true,
                Err(TrySendError::Full(e)) => {
                    self.backlog.push_front(e);
                    break;
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.backlog.clear();
                    break;
                }
            }
        }
        for event in self.events.drain(..) {
            if !self.backlog.is_empty() {
                self.backlog.push_back(event);
                continue;
            }
            match self.link.up.try_send(event) {
                Ok(()) => sent = true,
                Err(TrySendError::Full(e)) => self.backlog.push_back(e),
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
        if sent && let Err(e) = self.link.home.wake() {
            tracing::warn!(error = %e, "cannot wake the home core");
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_never_sleeps_adaptive_spins_then_sleeps_interrupt_sleeps() {
        let next = Duration::from_millis(7);
        let just_now = Instant::now();
        let long_ago = just_now - Duration::from_secs(1);
        assert_eq!(
            sleep_for(PollMode::Busy, false, long_ago, next),
            Duration::ZERO
        );
        let adaptive = PollMode::Adaptive {
            spin: Duration::from_millis(100),
        };
        assert_eq!(sleep_for(adaptive, false, just_now, next), Duration::ZERO);
        assert_eq!(sleep_for(adaptive, false, long_ago, next), next);
        assert_eq!(sleep_for(PollMode::Interrupt, false, just_now, next), next);
        // Work waiting is never slept on, whatever the mode.
        assert_eq!(
            sleep_for(PollMode::Interrupt, true, long_ago, next),
            Duration::ZERO
        );
    }
}
