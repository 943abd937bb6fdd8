//! Opening this node's database, and deciding which process serves the node.
//!
//! - Without a cluster, or without a replica log: the database on this disk; a cluster
//!   node first checks that no other process runs as it (`cluster::alone`).
//! - With a replica log (`[cluster] replicas ≥ 1`), the serving process also takes the
//!   node's lease (`cluster::lease`) before it opens the database over the log, and
//!   releases it when it stops cleanly with every record in the log ([`HeldLease::
//!   hand_over`]).
//! - A **standby** (`[cluster] standby`) follows the node's replica log into its own
//!   database while another process serves, and when that process releases the lease,
//!   applies the log to the record it names, takes the lease and serves in its place
//!   (docs/CLUSTER.md, "Standby and handover").

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use petrel_storage::{StorageConfig, SyncMode};
use petrel_storage_rocks::standby::RocksStandby;
use petrel_storage_rocks::{RocksEngine, RocksEngineExt};
use signal_hook::iterator::Signals;

use crate::cluster::ClusterSettings;
use crate::cluster::lease::{Current, Lease, Leases};
use crate::cluster::replica::JetStreamLog;

/// How often a waiting standby reads the lease.
const LEASE_POLL: Duration = Duration::from_millis(20);

/// How often a waiting standby applies what its node's log gained.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

/// How often a waiting standby repeats the same warning.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The node's lease, held by this process while it serves.
pub struct HeldLease {
    leases: Leases,
    revision: u64,
    node: u8,
}

impl HeldLease {
    /// Once the node says hello on NATS: writes the lease again, so a process starting
    /// as this node meanwhile sees it move and refuses (it waits `node_timeout` for a
    /// sign of life). `false` when another process took the lease first: this one must
    /// not serve.
    pub fn confirm(&mut self) -> anyhow::Result<bool> {
        match self.leases.take(Some(self.revision))? {
            Some(revision) => {
                self.revision = revision;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// After the node stopped serving (its cores and bridge are stopped): ships what
    /// the replica log lacks and, when it holds everything, releases the lease naming
    /// the last record, so the node's standby takes over. Logged either way.
    pub fn hand_over(self, engine: &RocksEngine) {
        use petrel_storage::kv::Kv as _;
        let node = self.node;
        if let Err(error) = engine.kv().replicate() {
            tracing::warn!(node, %error,
                "not handed over: the replica log does not hold every write of this process; \
                 start it again (not as a standby) to ship them");
            return;
        }
        let Some((written, acked)) = engine.kv().replica_marks() else {
            return;
        };
        if written != acked {
            tracing::warn!(
                node,
                written,
                acked,
                "not handed over: records written while stopping are not in the replica log"
            );
            return;
        }
        match self.leases.release(self.revision, acked) {
            Ok(true) => tracing::info!(
                node,
                through = acked,
                "handed over: the lease is released; the node's standby serves it once it holds record {acked}"
            ),
            Ok(false) => tracing::warn!(
                node,
                "not handed over: another process holds this node's lease"
            ),
            Err(error) => tracing::warn!(
                node,
                error = format!("{error:#}"),
                "not handed over: the lease could not be released; the node is served again when it restarts"
            ),
        }
    }
}

/// What [`open`] found: the database to serve, and the lease held for it; `None` when a
/// standby was stopped (a signal) before it took over.
pub type Opened = Option<(RocksEngine, Option<HeldLease>)>;

/// Opens the node's database at `db_path` (module docs). A standby returns only once
/// it serves, or `None` when `signals` stops it first.
pub fn open(
    db_path: &Path,
    storage: StorageConfig,
    cluster: Option<&ClusterSettings>,
    signals: &mut Signals,
) -> anyhow::Result<Opened> {
    let Some(cluster) = cluster else {
        return Ok(Some((open_database(db_path, storage, None)?, None)));
    };
    if cluster.replicas > 0 {
        // The group commit's fsync round is what ships a group's records before its
        // acks.
        anyhow::ensure!(
            storage.sync == SyncMode::Batch,
            "[cluster] replicas = {} needs sync = \"batch\" (the default): a group's writes \
             are shipped to the replica log by its fsync round, which the other modes do \
             not have",
            cluster.replicas
        );
    }
    if cluster.standby {
        return wait_and_take_over(db_path, storage, cluster, signals);
    }
    if cluster.replicas == 0 {
        // Before anything of this node is served: no other process runs as it.
        crate::cluster::alone::check(cluster)?;
        return Ok(Some((
            open_database(db_path, storage, Some(cluster))?,
            None,
        )));
    }
    let leases = Leases::connect(cluster)?;
    let before = leases.read()?;
    // No other process runs as this node. One the lease names as serving may have just
    // taken over (a standby, before its first heartbeat): it is given `node_timeout` to
    // say so, and the lease must not move meanwhile.
    match before.lease {
        Some(Lease::Serving { holder }) => {
            crate::cluster::alone::check_for(cluster, cluster.node_timeout)?;
            anyhow::ensure!(
                leases.read()?.revision == before.revision,
                "another process took node {}'s lease while this one started (its \
                 standby?): it serves the node now",
                cluster.node
            );
            tracing::warn!(
                node = cluster.node,
                holder = format!("{holder:016x}"),
                "lease: the process named as serving this node said nothing on NATS for \
                 node_timeout (it stopped without handing over); taking its place"
            );
        }
        _ => crate::cluster::alone::check(cluster)?,
    }
    let Some(revision) = leases.take(before.revision)? else {
        anyhow::bail!(
            "another process took node {}'s lease while this one started (its standby?): \
             it serves the node now",
            cluster.node
        );
    };
    let engine = open_database(db_path, storage, Some(cluster))?;
    Ok(Some((
        engine,
        Some(HeldLease {
            leases,
            revision,
            node: cluster.node,
        }),
    )))
}

/// Opens the node's database; with `[cluster] replicas`, over its replica log, after
/// levelling the two (a database that lost writes, or its disk, gets them back).
fn open_database(
    db_path: &Path,
    storage: StorageConfig,
    cluster: Option<&ClusterSettings>,
) -> anyhow::Result<RocksEngine> {
    let opening = || format!("cannot open database {}", db_path.display());
    let Some(cluster) = cluster.filter(|c| c.replicas > 0) else {
        return RocksEngine::open(db_path, storage).with_context(opening);
    };
    let log = JetStreamLog::connect(cluster)?;
    let stream = log.stream().to_owned();
    let started = Instant::now();
    let (engine, level) = RocksEngine::open_replicated(db_path, storage, Arc::new(log))
        .with_context(|| {
            format!(
                "{} with its replica log (JetStream stream {stream})",
                opening()
            )
        })?;
    tracing::info!(
        stream = %stream,
        replicas = cluster.replicas,
        applied = level.applied,
        shipped = level.shipped,
        seeded = level.seeded,
        through = level.through,
        took_ms = started.elapsed().as_millis() as u64,
        "replica log: database and log level; every write is shipped before it is acknowledged"
    );
    Ok(engine)
}

/// A standby: follows the node's replica log until the serving process releases the
/// lease, then takes it over (module docs).
fn wait_and_take_over(
    db_path: &Path,
    storage: StorageConfig,
    cluster: &ClusterSettings,
    signals: &mut Signals,
) -> anyhow::Result<Opened> {
    let node = cluster.node;
    let log = JetStreamLog::connect(cluster)?;
    let stream = log.stream().to_owned();
    let leases = Leases::connect(cluster)?;
    let (standby, level) =
        RocksStandby::open(db_path, storage, Arc::new(log)).with_context(|| {
            format!(
                "cannot open the standby's database {} over its replica log (JetStream \
                 stream {stream})",
                db_path.display()
            )
        })?;
    if let Some(why) = level.rebuilt {
        tracing::warn!(node, stream = %stream, why,
            "standby: the database had diverged from the replica log; emptied and rebuilt from it");
    }
    tracing::info!(node, stream = %stream, applied = level.applied, through = level.through,
        "standby: following node {node}'s replica log; serving once the node is handed over");
    println!("petrel: standby of node {node}, following {stream}");
    let mut followed = Instant::now();
    // Each warning at most once per WARN_EVERY.
    let mut warned: Vec<(&str, Instant)> = Vec::new();
    let mut warn = |what: &'static str, error: String| {
        match warned.iter_mut().find(|(w, _)| *w == what) {
            Some((_, at)) if at.elapsed() < WARN_EVERY => return,
            Some((_, at)) => *at = Instant::now(),
            None => warned.push((what, Instant::now())),
        }
        tracing::warn!(node, error, "standby: {what}; trying again");
    };
    loop {
        let stop = signals.pending().any(|s| s != signal_hook::consts::SIGHUP);
        if stop {
            tracing::info!(
                node,
                through = standby.through(),
                "standby: stopped before taking over"
            );
            return Ok(None);
        }
        let current = match leases.read() {
            Ok(current) => current,
            Err(error) => {
                warn("cannot read the lease", format!("{error:#}"));
                Current::default()
            }
        };
        // This process's own take landed though its answer was lost: it holds the node.
        if let (Some(Lease::Serving { holder }), Some(revision)) = (current.lease, current.revision)
            && holder == leases.holder()
        {
            match standby.follow() {
                Ok(_) => return promote(standby, leases, revision, node, holder, Instant::now()),
                Err(error) => warn("cannot read the replica log", error.to_string()),
            }
        }
        if let (Some(Lease::Released { holder, through }), Some(revision)) =
            (current.lease, current.revision)
        {
            // The released process's records are all in the log: the standby takes
            // them, then the lease, then serves.
            let waited = Instant::now();
            if let Err(error) = standby.follow() {
                warn("cannot read the replica log", error.to_string());
            } else if standby.through() < through {
                warn(
                    "the replica log ends before the record the released lease names (is \
                     this the node's stream? check --cluster-node and the cluster name)",
                    format!("holds {} of {through}", standby.through()),
                );
            } else {
                match leases.take(Some(revision)) {
                    Ok(Some(revision)) => {
                        return promote(standby, leases, revision, node, holder, waited);
                    }
                    // Another process took it first: this one follows on.
                    Ok(None) => {}
                    Err(error) => warn("cannot take the lease", format!("{error:#}")),
                }
            }
        }
        if followed.elapsed() >= FOLLOW_EVERY {
            followed = Instant::now();
            if let Err(error) = standby.follow() {
                warn("cannot read the replica log", error.to_string());
            }
        }
        std::thread::sleep(LEASE_POLL);
    }
}

/// The standby holds the lease (at `revision`) and every record of the log: its engine
/// is built and it serves. When that fails the lease is released again, naming the
/// same last record, so another standby (or this one, restarted) can take over.
fn promote(
    standby: RocksStandby,
    leases: Leases,
    revision: u64,
    node: u8,
    from: u64,
    waited: Instant,
) -> anyhow::Result<Opened> {
    let through = standby.through();
    match standby.promote() {
        Ok(engine) => {
            tracing::info!(
                node,
                from = format!("{from:016x}"),
                through,
                took_ms = waited.elapsed().as_millis() as u64,
                "standby: took the node over; serving it"
            );
            Ok(Some((
                engine,
                Some(HeldLease {
                    leases,
                    revision,
                    node,
                }),
            )))
        }
        Err(error) => {
            if let Err(e) = leases.release(revision, through) {
                tracing::warn!(
                    node,
                    error = format!("{e:#}"),
                    "standby: cannot release the lease again after a failed promotion"
                );
            }
            Err(anyhow::Error::new(error).context("cannot promote the standby"))
        }
    }
}
