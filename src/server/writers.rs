//! Which core writes a conversation (`ownership = "per-core"`), and the mail the cores
//! exchange on their rings.
//!
//! Every conversation belongs to one logical storage partition
//! ([`petrel_storage::partition::Partitions::of`]), and partition *p* is written by core
//! *p* mod *cores* only: its seq counter, member map, dedup entries and the inbox heads
//! it allocates are touched by one thread, so no two cores ever wait for one
//! partition's writer state. A core whose control plane asks for a write in a partition
//! it does not own sends the request to the owner as [`Mail::Write`]; the owner applies
//! it in its own next group commit (the one fsync shared by every core covers it) and
//! sends the durable reply back as [`Mail::Written`], which the asking core hands to its
//! control plane as if its own committer had answered. Reads — sync, history, member
//! lists — run on the session's own core, waiting only for the durable watermark of what
//! they show (`petrel_storage::Committer`), so they never queue behind another core's
//! appends. Writes that belong to no conversation (activity, token revocations,
//! retention) and the creation of a conversation (its id is allocated under one
//! allocator lock) run where they are asked for.

use petrel_control::{CoreMessage, Ticket};
use petrel_storage::partition::Partitions;
use petrel_storage::{Reply, Request, StorageError};

use crate::cluster::Layout;

/// Whose storage request a committer's reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// This core's control plane.
    Here(Ticket),
    /// Nobody: a write this core makes for another node's notice (a revocation it
    /// announced), whose reply no one waits for; a failure is logged.
    Nobody,
    /// Another core's control plane, which sent the request here.
    Core {
        /// The asking core.
        core: u8,
        /// Its control plane's ticket.
        ticket: Ticket,
    },
}

/// What one core sends another on their ring.
#[derive(Debug)]
pub enum Mail {
    /// From one control plane to the other (`control::remote`).
    Control(CoreMessage),
    /// A write for a partition the receiving core owns.
    Write {
        /// The sending control plane's ticket, returned with the reply.
        ticket: Ticket,
        /// The write.
        request: Request,
    },
    /// The reply to a [`Mail::Write`], once durable (or failed).
    Written {
        /// The ticket the write came with.
        ticket: Ticket,
        /// The reply.
        result: Result<Reply, StorageError>,
    },
}

/// The partition → core map, as one core sees it.
#[derive(Debug, Clone, Copy)]
pub struct Writers {
    me: u8,
    cores: u8,
    partitions: Partitions,
    /// The cluster's layout (one node when this server is no cluster).
    layout: Layout,
}

impl Writers {
    /// The map for core `me` of `cores`, over a database with `partitions`.
    pub fn new(me: u8, cores: u8, partitions: Partitions) -> Writers {
        Writers {
            me,
            cores: cores.max(1),
            partitions,
            layout: Layout::single(cores),
        }
    }

    /// The map for core `me` (a cluster index) of a cluster laid out as `layout`: a
    /// partition is written by core `p mod (nodes × cores)`, and its data lives on that
    /// core's node only, so reads of one conversation go there too (docs/CLUSTER.md).
    pub fn in_cluster(me: u8, layout: Layout, partitions: Partitions) -> Writers {
        Writers {
            me,
            cores: layout.total_cores().max(1),
            partitions,
            layout,
        }
    }

    /// The core that must apply `request`, when that is not this one.
    pub fn elsewhere(&self, request: &Request) -> Option<u8> {
        if let Some(conversation) = request.partition_conversation() {
            let owner = owner_of(self.partitions.of(conversation).0, self.cores);
            return (owner != self.me).then_some(owner);
        }
        // A read of one conversation whose partition another node holds.
        let conversation = request.conversation_read()?;
        let owner = owner_of(self.partitions.of(conversation).0, self.cores);
        (!self.layout.is_local(owner)).then_some(owner)
    }

    /// Whether `request` must be asked of every node and the answers merged
    /// ([`crate::cluster::gather`]): never on one node.
    pub fn spans_nodes(&self, request: &Request) -> bool {
        self.layout.nodes > 1 && crate::cluster::gather::spans_nodes(request)
    }

    /// The core of node `node` that answers this core's share of a spanning read (the
    /// one with this core's local index, so the cores of a node share the work).
    pub fn core_on(&self, node: u8) -> u8 {
        let local = self.me % self.layout.cores.max(1);
        node * self.layout.cores + local
    }

    /// The cluster's layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Whether this is its node's first core (the one that writes what the node keeps
    /// once, such as another node's revocations).
    pub fn first_of_node(&self) -> bool {
        self.me == self.layout.first_core()
    }
}

/// The core that writes partition `partition` of a server with `cores` cores.
fn owner_of(partition: u16, cores: u8) -> u8 {
    // Below `cores`, so it fits.
    u8::try_from(partition % u16::from(cores.max(1))).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use petrel_storage::{AppendRequest, ConversationKey, Refs, UserId};

    fn append(conversation: ConversationKey) -> Request {
        Request::Append(AppendRequest {
            conversation,
            sender: UserId(1),
            sender_device: "d".into(),
            client_msg_id: 1,
            payload: Bytes::from_static(b"x"),
            now_ms: 1,
            refs: Refs::default(),
        })
    }

    #[test]
    fn each_partition_is_written_by_one_core_and_reads_stay_home() {
        let partitions = Partitions::new(16).unwrap();
        let cores = [
            Writers::new(0, 2, partitions),
            Writers::new(1, 2, partitions),
        ];
        for g in 0..64 {
            let conversation = ConversationKey::Group(g);
            let owner = u8::try_from(partitions.of(conversation).0 % 2).unwrap();
            let write = append(conversation);
            // Exactly one core applies it; the other sends it there.
            assert_eq!(cores[usize::from(owner)].elsewhere(&write), None);
            assert_eq!(cores[usize::from(1 - owner)].elsewhere(&write), Some(owner));
            let leave = Request::Leave {
                user: UserId(1),
                group: g,
            };
            assert_eq!(cores[usize::from(1 - owner)].elsewhere(&leave), Some(owner));
            // A read of the same conversation runs where it is asked for.
            let read = Request::History {
                user: UserId(1),
                conversation,
                before_seq: u64::MAX,
                limit: 10,
            };
            assert!(cores.iter().all(|c| c.elsewhere(&read).is_none()));
        }
        // Writes of no conversation stay where they are asked for.
        let touch = Request::TouchActivity {
            user: UserId(1),
            now_ms: 1,
        };
        assert!(cores.iter().all(|c| c.elsewhere(&touch).is_none()));
    }

    #[test]
    fn mail_stays_small_enough_for_rings_allocated_up_front() {
        // Each ring holds `RING` slots of `Mail`, allocated when the server starts: one
        // ring per ordered pair of cores, 16 Ki slots × 256 bytes at most = 4 MiB per
        // ring (8 cores: 56 rings, 224 MiB). Boxing the large variants would cost an
        // allocation per routed write instead.
        let size = std::mem::size_of::<Mail>();
        assert!(
            size <= 256,
            "Mail is {size} bytes (control {}, request {}, reply {})",
            std::mem::size_of::<CoreMessage>(),
            std::mem::size_of::<Request>(),
            std::mem::size_of::<Result<Reply, StorageError>>()
        );
    }

    #[test]
    fn one_core_writes_everything_itself() {
        let only = Writers::new(0, 1, Partitions::new(16).unwrap());
        for g in 0..64 {
            assert_eq!(only.elsewhere(&append(ConversationKey::Group(g))), None);
        }
    }

    #[test]
    fn more_cores_than_partitions_leave_the_extra_cores_without_writes() {
        let partitions = Partitions::new(2).unwrap();
        for core in 0..4u8 {
            let writers = Writers::new(core, 4, partitions);
            for g in 0..32 {
                let write = append(ConversationKey::Group(g));
                let owner = writers.elsewhere(&write).unwrap_or(core);
                assert!(owner < 2, "partition {owner} of 2");
            }
        }
    }
}
