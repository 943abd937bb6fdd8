//! A Petrel cluster over NATS (docs/CLUSTER.md): the shared-nothing cores of one server
//! (`server::per_core`), one level up.
//!
//! Every core of every node has one index in the cluster (node *n*'s core *i* is
//! `n × cores + i`), and everything the cores of one server tell each other — logins
//! and presence, pushes, chatroom work, writes for a partition's owner and their durable
//! replies — travels to a core of another node the same way, as mail: on a bounded ring
//! to this node's NATS bridge ([`bridge`]), which batches it per node onto the node's
//! subject, and from the other node's bridge onto the receiving core's inbound queue.
//! Partition *p* is owned by core `p mod (nodes × cores)`, so each conversation's seq
//! counter and log have one owner node, and its data lives on that node's disk.
//!
//! - [`config`]: the `[cluster]` table.
//! - [`alone`]: no other process runs as this node, checked before it serves.
//! - [`Layout`]: which core is whose, which partitions this node owns.
//! - [`wire`]: the envelope on the wire (postcard).
//! - [`bridge`]: the thread that talks to NATS, and tells the cores which nodes are up.
//! - [`inflight`]: requests waiting for another node, answered once.
//! - [`gather`]: reads that span every node's partitions (sync, conversation lists),
//!   asked of each node and merged.
//! - [`api_calls`]: the HTTP API's calls about sessions and chatrooms, asked of the
//!   nodes that hold them.
//! - [`stats`]: what the cluster layer counts, for the metrics endpoint.
//! - [`replica`]: this node's replica log on JetStream (`[cluster] replicas`), which
//!   holds every write of its database before it is acknowledged.
//! - [`lease`]: which process serves a node, its standby taking over on a drain.
//! - [`kv_bucket`]: opening a JetStream key-value bucket (pools, leases).

pub mod alone;
pub mod api_calls;
pub mod bridge;
pub mod config;
pub mod gather;
pub mod inflight;
pub mod kv_bucket;
pub mod lease;
pub mod replica;
pub mod stats;
pub mod wire;

use petrel_storage::partition::{Partition, PartitionSet, Partitions};

pub use config::{ClusterFile, ClusterSettings};

/// The inbox-position epoch every node of cluster `name` shares (docs/CLUSTER.md,
/// "Sync"): a device's position spans every node's partitions, so it cannot carry one
/// database's own epoch. Never 0 (0 marks a plain one-partition cursor).
pub fn epoch_of(name: &str) -> u64 {
    let seeded = name.bytes().fold(0x5045_5452_454c_u64, |h, b| {
        petrel_storage::partition::mix(h ^ u64::from(b))
    });
    seeded | 1
}

/// Where this node's cores sit among the cluster's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// This node's index.
    pub node: u8,
    /// How many nodes.
    pub nodes: u8,
    /// Cores per node (every node runs as many).
    pub cores: u8,
}

impl Layout {
    /// The layout of node `node` of `nodes`, `cores` cores each; an error when the
    /// cluster has more cores than the control plane's presence masks hold.
    pub fn new(node: u8, nodes: u8, cores: u8) -> anyhow::Result<Layout> {
        let total = u16::from(nodes) * u16::from(cores);
        anyhow::ensure!(
            cores > 0 && nodes > node && total <= u16::from(petrel_control::remote::MAX_CORES),
            "a cluster of {nodes} nodes × {cores} cores has {total} cores; at most {} \
             (fewer cores per node, or fewer nodes)",
            petrel_control::remote::MAX_CORES
        );
        Ok(Layout { node, nodes, cores })
    }

    /// The layout of a server that is no cluster: one node.
    pub fn single(cores: u8) -> Layout {
        Layout {
            node: 0,
            nodes: 1,
            cores: cores.max(1),
        }
    }

    /// This node's first core's cluster index.
    pub fn first_core(self) -> u8 {
        self.node * self.cores
    }

    /// Every core of the cluster.
    pub fn total_cores(self) -> u8 {
        self.nodes * self.cores
    }

    /// The node core `core` runs on.
    pub fn node_of(self, core: u8) -> u8 {
        core / self.cores.max(1)
    }

    /// Whether core `core` is one of this node's.
    pub fn is_local(self, core: u8) -> bool {
        self.node_of(core) == self.node
    }

    /// The cores of node `node`, as a bitmask.
    pub fn cores_of(self, node: u8) -> u64 {
        let width = u32::from(self.cores);
        let ones = 1u64.checked_shl(width).map_or(u64::MAX, |b| b - 1);
        ones.checked_shl(u32::from(node) * width).unwrap_or(0)
    }

    /// The cores of the nodes in `nodes` (bit = node), as a bitmask.
    pub fn cores_of_nodes(self, nodes: u64) -> u64 {
        (0..self.nodes)
            .filter(|&n| nodes & (1u64 << n) != 0)
            .fold(0, |all, n| all | self.cores_of(n))
    }

    /// Every other node's cores, as a bitmask.
    pub fn remote_cores(self) -> u64 {
        self.cores_of_nodes(!(1u64 << self.node))
    }

    /// The node that owns partition `p` (through its core `p mod total`).
    pub fn partition_node(self, p: Partition) -> u8 {
        let total = u16::from(self.total_cores().max(1));
        // Below `total`, which fits a u8.
        self.node_of(u8::try_from(p.0 % total).unwrap_or(0))
    }

    /// The partitions this node owns.
    pub fn owned_partitions(self, partitions: Partitions) -> PartitionSet {
        let mut set = PartitionSet::default();
        for p in partitions.all() {
            if self.partition_node(p) == self.node {
                set.insert(p);
            }
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_partition_has_one_owner_node_and_every_node_has_partitions() {
        let partitions = Partitions::new(16).expect("16");
        let layouts: Vec<Layout> = (0..3)
            .map(|n| Layout::new(n, 3, 2).expect("6 cores"))
            .collect();
        for p in partitions.all() {
            let owners: Vec<u8> = layouts
                .iter()
                .filter(|l| l.owned_partitions(partitions).contains(p))
                .map(|l| l.node)
                .collect();
            assert_eq!(owners.len(), 1, "partition {p:?}: {owners:?}");
            assert!(layouts.iter().all(|l| l.partition_node(p) == owners[0]));
        }
        for l in &layouts {
            assert!(l.owned_partitions(partitions).iter().next().is_some());
        }
        let l = layouts[1];
        assert_eq!((l.first_core(), l.total_cores()), (2, 6));
        assert_eq!(l.cores_of(1), 0b00_1100);
        assert_eq!(l.remote_cores(), 0b11_0011);
        assert!(l.is_local(3) && !l.is_local(4));
        assert!(Layout::new(0, 33, 2).is_err(), "66 cores");
        assert!(Layout::new(3, 3, 2).is_err(), "no node 3 of 3");
    }
}
