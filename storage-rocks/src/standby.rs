//! A standby's database: a RocksDB database that follows a node's replica log, written
//! by the node's primary, until it is promoted to serve in the primary's place
//! (docs/CLUSTER.md, "Standby and handover"). It holds no engine while it follows, so
//! nothing but the log's records reaches it; the engine, with its caches, is built from
//! the database at promotion.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use petrel_storage::replica::{CatchUp, ReplicaLog, Replicated};
use petrel_storage::{StorageConfig, StorageError, Store};

use crate::{RocksEngine, RocksKv};

/// A database following a replica log it does not write.
pub struct RocksStandby {
    kv: Replicated<RocksKv>,
    config: StorageConfig,
    clock: Arc<AtomicU64>,
}

impl RocksStandby {
    /// Opens (creating if needed) the database at `path` and brings it level with
    /// `log` by applying its records; a database that diverged from the log is
    /// rebuilt from it ([`Replicated::open_standby`]).
    pub fn open(
        path: &Path,
        config: StorageConfig,
        log: Arc<dyn ReplicaLog>,
    ) -> Result<(RocksStandby, CatchUp), StorageError> {
        let clock = Arc::new(AtomicU64::new(0));
        let kv = RocksKv::open(path, &config, &clock)?;
        let (kv, catch_up) = Replicated::open_standby(kv, log)?;
        Ok((RocksStandby { kv, config, clock }, catch_up))
    }

    /// Applies the records the log gained since the last call; returns how many.
    pub fn follow(&self) -> Result<u64, StorageError> {
        self.kv.follow()
    }

    /// The last record the database holds.
    pub fn through(&self) -> u64 {
        self.kv.replica_marks().map_or(0, |(written, _)| written)
    }

    /// The engine over the database: its next write follows the last record it holds.
    /// Call it once [`RocksStandby::follow`] has taken the log's last record and the
    /// primary writes the log no more (a second writer is fenced off by the log, not
    /// prevented). Asks the log nothing.
    pub fn promote(self) -> Result<RocksEngine, StorageError> {
        self.kv.promote();
        Store::with_kv_and_clock(self.kv, self.config, self.clock)
    }
}
