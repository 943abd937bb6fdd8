//! Pool assignments in a NATS JetStream key-value bucket, `<cluster>_pools`: key the
//! user id, value the pool's name, no key for a user in the general pool.
//!
//! Why there: an assignment must be readable on every node — the directory runs on any
//! of them, and must answer while the node that would own the user's data is down —
//! and JetStream is the cluster's proven replicated store (with a NATS cluster, the
//! bucket's replicas survive a NATS server's loss: `[dispatch] kv_replicas`). Petrel's
//! own storage keeps each conversation on one node only.
//!
//! Every node watches the whole bucket ([`keep_in_sync`], on the cluster bridge's
//! runtime) and keeps it in its [`Directory`]; the API writes through [`PoolBook::set`]
//! on any node, and every node's directory has it within a NATS round trip. NATS
//! without JetStream (`nats-server` without `-js`): no assignments, every user general,
//! and the API answers `503` to a write; the watcher keeps trying every few seconds.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use futures_util::StreamExt;

use super::directory::{Directory, GENERAL, apply_assignment};

/// How long to wait before asking NATS for the bucket again.
const RETRY: Duration = Duration::from_secs(3);

/// How long a write may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why an assignment was not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolError {
    /// No pool of that name is configured (the name, the configured ones).
    UnknownPool(String, String),
    /// The bucket is not reachable now (NATS down, or without JetStream).
    Unavailable(String),
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolError::UnknownPool(name, known) => write!(f, "no pool {name:?} (pools: {known})"),
            PoolError::Unavailable(why) => {
                write!(f, "the pool assignments are not reachable now: {why}")
            }
        }
    }
}

/// The assignments: the bucket (once opened) and the directory that mirrors it.
pub struct PoolBook {
    bucket: String,
    replicas: usize,
    /// Every pool name a user may be put in, [`GENERAL`] first.
    names: Vec<String>,
    store: OnceLock<kv::Store>,
    directory: Arc<Directory>,
}

impl PoolBook {
    /// The book of cluster `cluster`, whose pools are `names`, mirrored in `directory`.
    pub fn new(
        cluster: &str,
        replicas: usize,
        names: Vec<String>,
        directory: Arc<Directory>,
    ) -> PoolBook {
        PoolBook {
            bucket: format!("{cluster}_pools"),
            replicas: replicas.max(1),
            names,
            store: OnceLock::new(),
            directory,
        }
    }

    /// `user`'s pool, as this node's directory has it (`None` until it has read the
    /// bucket).
    pub fn pool_of(&self, user: u64) -> Option<String> {
        self.directory.pool_of(user)
    }

    /// Puts `user` in `pool` (in [`GENERAL`]: removes their assignment). Done when the
    /// bucket has it; every node's directory, this one's too, follows within a round
    /// trip, in the bucket's order (so two writes at once end the same everywhere).
    pub async fn set(&self, user: u64, pool: &str) -> Result<(), PoolError> {
        if !self.names.iter().any(|n| n == pool) {
            return Err(PoolError::UnknownPool(
                pool.to_owned(),
                self.names.join(", "),
            ));
        }
        let store = self.store.get().ok_or_else(|| {
            PoolError::Unavailable(format!(
                "the bucket {} is not open (NATS down, or started without JetStream: -js)",
                self.bucket
            ))
        })?;
        let key = user.to_string();
        let write = async {
            if pool == GENERAL {
                store
                    .delete(&key)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            } else {
                store
                    .put(&key, pool.to_owned().into())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(PoolError::Unavailable(e)),
            Err(_) => Err(PoolError::Unavailable("NATS did not answer in time".into())),
        }
    }
}

/// Opens (or creates) the bucket and mirrors it into the directory for as long as the
/// process runs, reopening after any failure.
pub async fn keep_in_sync(client: async_nats::Client, book: Arc<PoolBook>) {
    let jetstream = async_nats::jetstream::new(client);
    let mut warned = false;
    loop {
        let store = match open(&jetstream, &book).await {
            Ok(store) => store,
            Err(error) => {
                if !warned {
                    tracing::warn!(bucket = %book.bucket, %error,
                        "dispatch: cannot open the pool assignments (is nats-server running with -js?); \
                         every user counts as general until it can; retrying");
                    warned = true;
                }
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        if warned {
            tracing::info!(bucket = %book.bucket, "dispatch: pool assignments open");
            warned = false;
        }
        let _ = book.store.set(store.clone());
        if let Err(error) = watch(&store, &book.directory).await {
            tracing::warn!(bucket = %book.bucket, %error, "dispatch: the pool watch stopped; reopening");
        }
        tokio::time::sleep(RETRY).await;
    }
}

async fn open(
    jetstream: &async_nats::jetstream::Context,
    book: &PoolBook,
) -> Result<kv::Store, String> {
    crate::cluster::kv_bucket::open_or_create(
        jetstream,
        &book.bucket,
        "Petrel: user id -> dispatch pool",
        book.replicas,
    )
    .await
}

/// The user and pool (`None`: the general pool) an entry of the bucket sets; `None`
/// (logged) for an entry that names no user or no pool.
fn assignment(entry: &kv::Entry) -> Option<(u64, Option<String>)> {
    let Ok(user) = entry.key.parse::<u64>() else {
        tracing::warn!(key = %entry.key, "dispatch: a pool assignment whose key is no user id; ignored");
        return None;
    };
    let pool = match entry.operation {
        Operation::Put => match std::str::from_utf8(&entry.value) {
            Ok(pool) => Some(pool.to_owned()),
            Err(_) => {
                tracing::warn!(user, "dispatch: a pool name that is not UTF-8; ignored");
                return None;
            }
        },
        Operation::Delete | Operation::Purge => None,
    };
    Some((user, pool))
}

/// Reads every assignment, then follows the changes until the watch ends. The whole
/// bucket is read into a map of its own and put in the directory at once when the
/// watch has caught up, so the directory never answers from half of it (at start it
/// answers nobody until then; after a reopening it answers from the old map).
async fn watch(store: &kv::Store, directory: &Directory) -> Result<(), String> {
    let mut entries = store
        .watch_with_history(">")
        .await
        .map_err(|e| e.to_string())?;
    let empty = store.status().await.map_err(|e| e.to_string())?.values() == 0;
    let mut replay: Option<HashMap<u64, String>> = Some(HashMap::new());
    if empty {
        directory.replace_assignments(replay.take().unwrap_or_default());
    }
    while let Some(entry) = entries.next().await {
        let entry = entry.map_err(|e| e.to_string())?;
        if let Some((user, pool)) = assignment(&entry) {
            match &mut replay {
                Some(map) => apply_assignment(map, user, pool.as_deref()),
                None => directory.assign(user, pool.as_deref()),
            }
        }
        // The last entry of the replay ends it, even one that was ignored.
        if entry.delta == 0
            && let Some(map) = replay.take()
        {
            directory.replace_assignments(map);
        }
    }
    Err("the watch ended".into())
}
