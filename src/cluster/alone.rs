//! Before a node serves: no other process already runs as it.
//!
//! Two processes with one node index (a replacement started before the old process
//! exited, a copied config with the wrong `--cluster-node`) would both own that node's
//! partitions: both would take writes for the same conversations, on two disks, and the
//! other nodes would take their heartbeats for restarts, one after the other. So a node
//! listens to the cluster's heartbeats for three heartbeat intervals (at least half a
//! second) before it opens a listener or says anything: a running process of its index says hello in that time,
//! and the new one refuses to start, naming it. A process that stopped (drained,
//! SIGTERM, killed) says nothing more, and the new one goes ahead.
//!
//! What this does not catch: a process cut off from NATS while the new one starts
//! (silence looks like a stopped node), or NATS down then. Two processes that hear each
//! other once both serve settle it there (`super::bridge`): the one with the higher
//! random id stops, with an error.

use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::StreamExt;

use super::config::ClusterSettings;
use super::wire::{self, Body, Envelope};

/// How long connecting to NATS for the check may take; past it the node starts
/// unchecked (and keeps trying to connect, as it always does).
const CONNECT_WAIT: Duration = Duration::from_secs(2);

/// The shortest time the check listens, whatever the heartbeat.
const LISTEN_AT_LEAST: Duration = Duration::from_millis(500);

/// Refuses (an error naming why) when another process says hello as node
/// `settings.node` within three heartbeats; starts unchecked, with a warning, when NATS
/// cannot be reached.
pub fn check(settings: &ClusterSettings) -> anyhow::Result<()> {
    check_for(settings, (settings.heartbeat * 3).max(LISTEN_AT_LEAST))
}

/// [`check`], listening for `listening` (a node whose lease names another process as
/// serving it listens for `node_timeout`: that process may have just taken over).
pub fn check_for(settings: &ClusterSettings, listening: Duration) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(listen(settings, listening))
}

async fn listen(settings: &ClusterSettings, listening: Duration) -> anyhow::Result<()> {
    let node = settings.node;
    let connect = async_nats::ConnectOptions::new()
        .name(format!("petrel-{}-node-{node}-check", settings.name))
        .connection_timeout(CONNECT_WAIT)
        .connect(settings.nats_url.as_str());
    let client = match tokio::time::timeout(CONNECT_WAIT, connect).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => {
            tracing::warn!(url = %settings.nats_url, error = %e,
                "cluster: NATS unreachable; starting without checking that no other process runs as this node");
            return Ok(());
        }
        Err(_) => {
            tracing::warn!(url = %settings.nats_url,
                "cluster: NATS did not answer; starting without checking that no other process runs as this node");
            return Ok(());
        }
    };
    let mut hellos = client
        .subscribe(wire::hello_subject(&settings.name))
        .await?;
    // Listening from when the server has the subscription, for a few heartbeats (a
    // busy machine delays some).
    client.flush().await?;
    let until = Instant::now() + listening;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let message = match tokio::time::timeout(left, hellos.next()).await {
            Ok(Some(message)) => message,
            Ok(None) | Err(_) => return Ok(()),
        };
        let ours = match wire::decode::<Envelope>(&message.payload) {
            Ok(envelope) => envelope.node == node && matches!(envelope.body, Body::Hello(_)),
            // Another wire version (an upgrade, where the old process may still run):
            // every version puts the node's index right after the magic byte and the
            // version, and a process that stopped says nothing more.
            Err(wire::DecodeError::Version(_)) => message.payload.get(2) == Some(&node),
            Err(_) => false,
        };
        if ours {
            bail!(
                "another process runs as node {node} of cluster {:?}: it says hello on NATS \
                 ({}). Stop it first (`petrel admin drain`), or check --cluster-node",
                settings.name,
                settings.nats_url
            );
        }
    }
}
