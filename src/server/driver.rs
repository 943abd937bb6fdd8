//! The control-plane thread: the runtime around the sans-IO [`Control`].
//!
//! In the style of quinn's endpoint driver, it is a thin loop: wait for a transport event,
//! a storage completion or the control plane's next timeout; feed it in with the current
//! time; then perform every action the control plane queued — frames and closes go to the
//! owning dataplane core through the [`Router`], storage requests to the group-commit
//! queue, whose completion comes back on a channel of its own.
//!
//! Performance-critical path: one iteration per event. It drains events in batches so a
//! busy server wakes each dataplane core once per batch, not once per frame.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, select};
use petrel_control::{Action, Control, Event, Timestamp};
use petrel_dataplane::Router;
use petrel_storage::CommitQueue;

use super::metrics::{Metrics, PUBLISH_INTERVAL, Published};

/// Events handled before actions are flushed and cores woken.
const BATCH: usize = 512;
/// How long a graceful shutdown waits for in-flight storage writes to be acked.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Milliseconds since the Unix epoch, for the control plane's `now`.
pub fn now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Timestamp::from_millis(ms)
}

/// Runs the control plane's start-up storage work (loading the token revocation list)
/// before any client can connect, so the first logins are not turned away as "server
/// busy".
pub fn warm_up(
    control: &mut Control,
    storage: &CommitQueue,
    storage_events_tx: &Sender<Event>,
    storage_events: &Receiver<Event>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !control.is_ready() {
        while let Some(action) = control.poll_action() {
            let Action::Storage { ticket, request } = action else {
                anyhow::bail!("control plane asked for network I/O before any connection existed");
            };
            let tx = storage_events_tx.clone();
            storage.submit(request, move |result| {
                let _ = tx.send(Event::Storage { ticket, result });
            })?;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match storage_events.recv_timeout(left) {
            Ok(event) => control.handle(now(), event),
            Err(_) => anyhow::bail!("storage did not answer the start-up requests within 30 s"),
        }
    }
    Ok(())
}

/// Everything the control-plane thread owns.
pub struct Driver {
    pub control: Control,
    pub router: Router,
    pub storage: CommitQueue,
    pub transport_events: Receiver<Event>,
    pub storage_events: Receiver<Event>,
    pub storage_events_tx: Sender<Event>,
    pub stop: Arc<AtomicBool>,
    pub stop_wakeup: Receiver<()>,
    /// Where metrics are published (`--metrics-addr`), if anywhere.
    pub metrics: Option<DriverMetrics>,
}

/// The driver's side of the metrics: per-core connection counts kept from the events it
/// handles anyway (plain integers on this thread), published every [`PUBLISH_INTERVAL`].
pub struct DriverMetrics {
    metrics: Arc<Metrics>,
    connections: Vec<u64>,
    next_publish: Instant,
}

impl DriverMetrics {
    /// Publishes into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> DriverMetrics {
        DriverMetrics {
            metrics,
            connections: Vec::new(),
            next_publish: Instant::now(),
        }
    }

    fn count(&mut self, event: &Event) {
        let (conn, opened) = match event {
            Event::Opened { conn } => (conn, true),
            Event::Closed { conn } => (conn, false),
            _ => return,
        };
        let core = usize::from(conn.core());
        if self.connections.len() <= core {
            self.connections.resize(core + 1, 0);
        }
        let n = &mut self.connections[core];
        *n = if opened { *n + 1 } else { n.saturating_sub(1) };
    }

    fn publish_if_due(&mut self, driver: &Driver, in_flight: u64, force: bool) {
        let now = Instant::now();
        if !force && now < self.next_publish {
            return;
        }
        self.next_publish = now + PUBLISH_INTERVAL;
        let mut connections = self.connections.clone();
        connections.resize(driver.router.cores().max(connections.len()), 0);
        self.metrics.publish(Published {
            counters: driver.control.counters().clone(),
            sessions: driver.control.session_count(),
            connections,
            outbound_queue: driver
                .router
                .queued()
                .into_iter()
                .map(|n| n as u64)
                .collect(),
            inbound_queue: driver.transport_events.len() as u64,
            storage_in_flight: in_flight,
        });
    }
}

impl Driver {
    /// Runs until `stop` is raised, then shuts down gracefully: in-flight storage writes
    /// are completed and acked, every client is kicked with `ServerShutdown`, the cores
    /// flush and close, and the storage queue finishes. Returns the storage queue's
    /// final result.
    pub fn run(mut self) -> Result<(), petrel_storage::StorageError> {
        let mut in_flight: u64 = 0;
        let mut draining_since: Option<Instant> = None;
        loop {
            if draining_since.is_none() && self.stop.load(Ordering::Relaxed) {
                tracing::info!(in_flight, "shutting down: finishing in-flight writes");
                draining_since = Some(Instant::now());
            }
            if let Some(since) = draining_since
                && (in_flight == 0 || since.elapsed() > DRAIN_LIMIT)
            {
                break;
            }

            let wait = self.wait_time(draining_since.is_some());
            let first = select! {
                recv(self.storage_events) -> e => e.ok(),
                recv(self.transport_events) -> e => e.ok(),
                recv(self.stop_wakeup) -> _ => None,
                default(wait) => Some(Event::Tick),
            };
            if let Some(event) = first {
                self.handle(event, &mut in_flight);
            }
            for _ in 0..BATCH {
                let next = self
                    .storage_events
                    .try_recv()
                    .or_else(|_| self.transport_events.try_recv());
                match next {
                    Ok(event) => self.handle(event, &mut in_flight),
                    Err(_) => break,
                }
            }
            if self.control.poll_timeout().is_some_and(|t| t <= now()) {
                self.control.handle(now(), Event::Tick);
            }
            self.perform_actions(&mut in_flight);
            self.publish_metrics(in_flight, false);
        }

        self.control.shutdown();
        self.perform_actions(&mut in_flight);
        self.router.shutdown_all();
        self.publish_metrics(in_flight, true);
        self.storage.shutdown()
    }

    fn publish_metrics(&mut self, in_flight: u64, force: bool) {
        if let Some(mut m) = self.metrics.take() {
            m.publish_if_due(self, in_flight, force);
            self.metrics = Some(m);
        }
    }

    fn wait_time(&mut self, draining: bool) -> Duration {
        let cap = if draining {
            Duration::from_millis(20)
        } else if self.metrics.is_some() {
            PUBLISH_INTERVAL
        } else {
            Duration::from_secs(1)
        };
        match self.control.poll_timeout() {
            Some(t) => t.saturating_since(now()).min(cap),
            None => cap,
        }
    }

    fn handle(&mut self, event: Event, in_flight: &mut u64) {
        if matches!(event, Event::Storage { .. }) {
            *in_flight = in_flight.saturating_sub(1);
        }
        if let Some(m) = &mut self.metrics {
            m.count(&event);
        }
        self.control.handle(now(), event);
    }

    fn perform_actions(&mut self, in_flight: &mut u64) {
        while let Some(action) = self.control.poll_action() {
            if let Some(Action::Storage { ticket, request }) = self.router.route(action) {
                *in_flight += 1;
                let tx = self.storage_events_tx.clone();
                let submitted = self.storage.submit(request, move |result| {
                    // The receiver is gone only when the server is stopping.
                    let _ = tx.send(Event::Storage { ticket, result });
                });
                if let Err(error) = submitted {
                    // The writer has stopped: the control plane answers the client with
                    // an error instead of waiting forever.
                    let _ = self.storage_events_tx.send(Event::Storage {
                        ticket,
                        result: Err(error),
                    });
                }
            }
        }
        self.router.wake_pending();
    }
}
