//! The cluster's settings: the `[cluster]` table of the config file and
//! `--cluster-node`, resolved into [`ClusterSettings`] (every key and default is in
//! docs/CLUSTER.md, "Settings").

use std::time::Duration;

use anyhow::bail;
use serde::Deserialize;

/// Most nodes a cluster may have: every core of every node is one bit of the control
/// plane's presence masks ([`petrel_control::remote::MAX_CORES`]).
pub const MAX_NODES: u8 = 32;

/// Most copies JetStream keeps of a stream.
pub const MAX_REPLICAS: u8 = 5;

/// The `[cluster]` table of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    nats_url: Option<String>,
    name: Option<String>,
    node: Option<u8>,
    nodes: Option<u8>,
    heartbeat_ms: Option<u64>,
    node_timeout_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
    advertise: Option<Vec<String>>,
    replicas: Option<u8>,
    standby: Option<bool>,
}

/// Where this node stands in its cluster, and how it talks to the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// The NATS server(s), e.g. `nats://127.0.0.1:4222` (comma-separated for several).
    pub nats_url: String,
    /// The cluster's name: the first token of every subject it uses, so several
    /// clusters can share one NATS server. Also seeds the inbox-position epoch every
    /// node shares.
    pub name: String,
    /// This node's index, `0..nodes`.
    pub node: u8,
    /// How many nodes the cluster has. Fixed: partition `p` is owned by core
    /// `p mod (nodes × cores)`, so changing it (or the core count) moves ownership
    /// and needs the data moved with it (docs/CLUSTER.md, "Not done yet").
    pub nodes: u8,
    /// How often this node says it is alive.
    pub heartbeat: Duration,
    /// A node not heard from for this long is down: its users stop counting as
    /// online, and requests for its partitions fail fast with `SERVER_BUSY`.
    pub node_timeout: Duration,
    /// A request sent to another node and not answered within this is answered
    /// `SERVER_BUSY` (the client sends it again; the owner's dedup keeps it once).
    pub request_timeout: Duration,
    /// Where this node's clients reach it (`host:port`), which the other nodes name in
    /// the `Kick{SERVER_SHUTDOWN}` of their stopping clients. Empty: this node's listen
    /// addresses that name a host and a port.
    pub advertise: Vec<String>,
    /// Copies JetStream keeps of this node's replica log (every write of its database,
    /// `super::replica`); 0 (the default) replicates nothing. With 1 the log is on the
    /// NATS server's disk; with 3 (a three-server NATS cluster) it survives the loss of
    /// any one of them as well as this node's disk.
    pub replicas: u8,
    /// This process is the node's **standby** (`super::lease`): it follows the node's
    /// replica log into a database of its own and takes the node's place when the
    /// serving process hands it over (a drain), instead of serving at once. Needs
    /// `replicas ≥ 1`.
    pub standby: bool,
}

impl ClusterSettings {
    /// The settings from the `[cluster]` table, `--cluster-node` (which wins over the
    /// table's `node`, so one file serves every node) and `--standby`. `None` without a
    /// table.
    pub fn resolve(
        file: Option<&ClusterFile>,
        node_flag: Option<u8>,
        standby_flag: bool,
    ) -> anyhow::Result<Option<ClusterSettings>> {
        let Some(file) = file else {
            if node_flag.is_some() || standby_flag {
                bail!("--cluster-node and --standby need a [cluster] table in the config file");
            }
            return Ok(None);
        };
        let Some(nats_url) = file.nats_url.clone() else {
            bail!("[cluster] needs nats_url (e.g. \"nats://127.0.0.1:4222\")");
        };
        let Some(nodes) = file.nodes else {
            bail!("[cluster] needs nodes (how many nodes the cluster has)");
        };
        let Some(node) = node_flag.or(file.node) else {
            bail!("[cluster] needs node (this node's index), or --cluster-node");
        };
        if nodes == 0 || nodes > MAX_NODES {
            bail!("[cluster] nodes must be 1 to {MAX_NODES}, got {nodes}");
        }
        if node >= nodes {
            bail!("[cluster] node {node} is not below nodes = {nodes}");
        }
        let name = file.name.clone().unwrap_or_else(|| "petrel".to_owned());
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!(
                "[cluster] name {name:?} must be letters, digits, '-' or '_' (a NATS subject token)"
            );
        }
        let heartbeat = Duration::from_millis(file.heartbeat_ms.unwrap_or(250));
        let node_timeout = Duration::from_millis(file.node_timeout_ms.unwrap_or(2_000));
        let request_timeout = Duration::from_millis(file.request_timeout_ms.unwrap_or(3_000));
        if heartbeat.is_zero() || node_timeout < heartbeat * 2 {
            bail!(
                "[cluster] node_timeout_ms ({} ms) must be at least twice heartbeat_ms ({} ms), \
                 and heartbeat_ms above 0",
                node_timeout.as_millis(),
                heartbeat.as_millis()
            );
        }
        if request_timeout.is_zero() {
            bail!("[cluster] request_timeout_ms must be above 0");
        }
        let replicas = file.replicas.unwrap_or(0);
        if replicas > MAX_REPLICAS {
            bail!(
                "[cluster] replicas must be 0 (no replica log) to {MAX_REPLICAS} (JetStream's most), got {replicas}"
            );
        }
        let standby = standby_flag || file.standby.unwrap_or(false);
        if standby && replicas == 0 {
            bail!(
                "[cluster] standby needs replicas ≥ 1: a standby follows the node's replica log, \
                 which only a node with replicas keeps"
            );
        }
        Ok(Some(ClusterSettings {
            nats_url,
            name,
            node,
            nodes,
            heartbeat,
            node_timeout,
            request_timeout,
            advertise: file.advertise.clone().unwrap_or_default(),
            replicas,
            standby,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> ClusterFile {
        toml::from_str(text).expect("toml")
    }

    #[test]
    fn the_flag_names_the_node_and_bad_tables_are_refused() {
        let f = file("nats_url = \"nats://127.0.0.1:4222\"\nnodes = 3\n");
        let s = ClusterSettings::resolve(Some(&f), Some(2), false)
            .expect("valid")
            .expect("a cluster");
        assert_eq!((s.node, s.nodes, s.name.as_str()), (2, 3, "petrel"));
        assert!(
            ClusterSettings::resolve(Some(&f), None, false).is_err(),
            "no node"
        );
        assert!(
            ClusterSettings::resolve(Some(&f), Some(3), false).is_err(),
            "node ≥ nodes"
        );
        assert!(
            ClusterSettings::resolve(None, Some(0), false).is_err(),
            "flag without table"
        );
        assert_eq!(
            ClusterSettings::resolve(None, None, false).expect("ok"),
            None
        );
        let bad_name = file("nats_url = \"n\"\nnodes = 2\nnode = 0\nname = \"a.b\"\n");
        assert!(ClusterSettings::resolve(Some(&bad_name), None, false).is_err());
        let fast = file(
            "nats_url = \"n\"\nnodes = 2\nnode = 0\nheartbeat_ms = 500\nnode_timeout_ms = 600\n",
        );
        assert!(ClusterSettings::resolve(Some(&fast), None, false).is_err());
        assert_eq!(s.replicas, 0, "no replica log unless asked");
        let replicated = file("nats_url = \"n\"\nnodes = 2\nnode = 0\nreplicas = 3\n");
        let r = ClusterSettings::resolve(Some(&replicated), None, false).expect("valid");
        assert_eq!(r.map(|r| r.replicas), Some(3));
        let too_many = file("nats_url = \"n\"\nnodes = 2\nnode = 0\nreplicas = 6\n");
        assert!(ClusterSettings::resolve(Some(&too_many), None, false).is_err());
        assert!(
            ClusterSettings::resolve(Some(&f), Some(1), true).is_err(),
            "a standby without a replica log"
        );
        let standby = ClusterSettings::resolve(Some(&replicated), None, true).expect("valid");
        assert_eq!(standby.map(|s| s.standby), Some(true));
        let in_table =
            file("nats_url = \"n\"\nnodes = 2\nnode = 0\nreplicas = 1\nstandby = true\n");
        let t = ClusterSettings::resolve(Some(&in_table), None, false).expect("valid");
        assert_eq!(t.map(|s| s.standby), Some(true));
        assert!(
            toml::from_str::<ClusterFile>("nodez = 3").is_err(),
            "typo refused"
        );
    }
}
