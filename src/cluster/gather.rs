//! Reads that span every node's partitions, asked of every node that is up and merged
//! into one reply.
//!
//! Each node's database holds only the partitions it owns — their conversations, their
//! user-conversation index entries and their share of every user's inbox — so a sync
//! or a conversation list is the union of what each node answers for the same request.
//! A sync's inbox position is one position per partition: the merged position takes
//! each partition's from the node that owns it (the others' answers keep it as it was),
//! and a node that is down keeps the device's old positions for its partitions, so
//! what it holds is synced once it is back, never skipped. A token revocation is
//! written on every node, so a node that restarts loads it with its own list.

use petrel_storage::partition::{InboxCursor, Partition, Partitions};
use petrel_storage::{Reply, Request, StorageError};

use super::Layout;

/// Whether `request` is asked of every node rather than one.
pub fn spans_nodes(request: &Request) -> bool {
    matches!(
        request,
        Request::Sync(_) | Request::ConversationsOf { .. } | Request::RevokeToken { .. }
    )
}

/// The share of `request` each of `parts` nodes answers: a sync page's limit is split
/// between them, so the merged page stays near what the device asked for.
pub fn share(request: &Request, parts: usize) -> Request {
    let mut part = request.clone();
    if let Request::Sync(sync) = &mut part {
        sync.limit = sync.limit.div_ceil(parts.max(1)).max(1);
    }
    part
}

/// The answers to one spanning request, until every node asked has answered.
#[derive(Debug)]
pub struct Gather {
    /// Nodes still to answer.
    waiting: u64,
    /// The device's inbox position, for partitions of nodes that were not asked.
    asked_inbox: Option<InboxCursor>,
    answers: Vec<(u8, Reply)>,
    error: Option<StorageError>,
}

impl Gather {
    /// Waits for `nodes` (bit = node) to answer `request`.
    pub fn new(request: &Request, nodes: u64) -> Gather {
        Gather {
            waiting: nodes,
            asked_inbox: match request {
                Request::Sync(sync) => Some(sync.inbox.clone()),
                _ => None,
            },
            answers: Vec::new(),
            error: None,
        }
    }

    /// Takes node `node`'s answer (the first error is the merged answer). Returns
    /// whether every node has answered.
    pub fn add(&mut self, node: u8, result: Result<Reply, StorageError>) -> bool {
        let bit = 1u64.checked_shl(u32::from(node)).unwrap_or(0);
        if self.waiting & bit == 0 {
            return self.waiting == 0;
        }
        self.waiting &= !bit;
        match result {
            Ok(reply) => self.answers.push((node, reply)),
            Err(e) => {
                if self.error.is_none() {
                    self.error = Some(e);
                }
            }
        }
        self.waiting == 0
    }

    /// The merged answer.
    pub fn finish(self, layout: Layout, partitions: Partitions) -> Result<Reply, StorageError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let mut answers = self.answers.into_iter();
        let Some((first_node, first)) = answers.next() else {
            return Err(StorageError::Unavailable);
        };
        match first {
            Reply::Synced(page) => {
                let mut pages = vec![(first_node, page)];
                for (node, reply) in answers {
                    match reply {
                        Reply::Synced(page) => pages.push((node, page)),
                        _ => return Err(StorageError::Invalid("mixed replies to one sync")),
                    }
                }
                Ok(Reply::Synced(merge_pages(
                    pages,
                    self.asked_inbox.unwrap_or_default(),
                    layout,
                    partitions,
                )))
            }
            Reply::Conversations(mut all) => {
                for (_, reply) in answers {
                    if let Reply::Conversations(more) = reply {
                        all.extend(more);
                    }
                }
                all.sort_unstable();
                all.dedup();
                Ok(Reply::Conversations(all))
            }
            other => Ok(other),
        }
    }
}

/// One sync page from every node's pages.
fn merge_pages(
    pages: Vec<(u8, petrel_storage::SyncPage)>,
    asked: InboxCursor,
    layout: Layout,
    partitions: Partitions,
) -> petrel_storage::SyncPage {
    let count = usize::from(partitions.count());
    let restart = pages
        .iter()
        .any(|(_, p)| p.inbox.is_new_device() && p.has_more);
    let epoch = pages
        .iter()
        .map(|(_, p)| p.inbox.epoch())
        .find(|&e| e != 0)
        .unwrap_or(asked.epoch());
    // Partitions of nodes that did not answer keep the device's position, if it is one
    // of this epoch; else 0: from the start of that partition's inbox, a full walk of it
    // next time (slower, never a skipped entry).
    let mut positions: Vec<u64> = if asked.positions().len() == count && asked.epoch() == epoch {
        asked.positions().to_vec()
    } else {
        vec![0; count]
    };
    let mut merged = petrel_storage::SyncPage::default();
    for (node, page) in pages {
        let theirs = page.inbox.positions();
        for (i, slot) in positions.iter_mut().enumerate() {
            let p = Partition(u16::try_from(i).unwrap_or(u16::MAX));
            if layout.partition_node(p) == node {
                // A node that answered with no position at all (a new device's page)
                // starts its partitions over.
                *slot = if theirs.len() == count { theirs[i] } else { 0 };
            }
        }
        merged.messages.extend(page.messages);
        merged.conversations.extend(page.conversations);
        merged.has_more |= page.has_more;
    }
    merged.inbox = if restart {
        // A node could not finish a new device's walk: the device starts over from its
        // per-conversation positions, which this page advanced (slower, never lossy).
        InboxCursor::new_device()
    } else {
        InboxCursor::from_positions(epoch, positions)
    };
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_storage::{ConversationKey, SyncPage, SyncRequest, UserId};

    fn sync(inbox: InboxCursor) -> Request {
        Request::Sync(SyncRequest {
            user: UserId(1),
            inbox,
            cursors: Vec::new(),
            limit: 90,
            now_ms: 1,
        })
    }

    #[test]
    fn each_partitions_position_comes_from_its_owner_and_a_silent_node_keeps_the_old_one() {
        let partitions = Partitions::new(4).expect("4");
        // Three nodes of one core: partition p belongs to node p mod 3 (3 to node 0).
        let layout = Layout::new(0, 3, 1).expect("layout");
        let asked = InboxCursor::from_positions(5, vec![10, 20, 30, 40]);
        let request = sync(asked.clone());
        assert!(matches!(share(&request, 3), Request::Sync(s) if s.limit == 30));
        // Nodes 0 and 1 answer; node 2 was down and not asked.
        let mut gather = Gather::new(&request, 0b011);
        let page = |positions: Vec<u64>, key: u64| SyncPage {
            inbox: InboxCursor::from_positions(5, positions),
            conversations: Vec::new(),
            messages: Vec::new(),
            has_more: key == 1,
        };
        assert!(!gather.add(0, Ok(Reply::Synced(page(vec![11, 20, 30, 44], 0)))));
        assert!(gather.add(1, Ok(Reply::Synced(page(vec![10, 23, 30, 40], 1)))));
        let Ok(Reply::Synced(merged)) = gather.finish(layout, partitions) else {
            panic!("not a page");
        };
        assert_eq!(merged.inbox.positions(), [11, 23, 30, 44]);
        assert_eq!(merged.inbox.epoch(), 5);
        assert!(merged.has_more);
    }

    #[test]
    fn a_position_of_another_epoch_starts_the_silent_nodes_partitions_over() {
        let partitions = Partitions::new(4).expect("4");
        let layout = Layout::new(0, 3, 1).expect("layout");
        // The device's position is of epoch 4; the cluster's is 5 now.
        let request = sync(InboxCursor::from_positions(4, vec![10, 20, 30, 40]));
        let mut gather = Gather::new(&request, 0b011);
        let page = SyncPage {
            inbox: InboxCursor::from_positions(5, vec![1, 2, 3, 4]),
            ..SyncPage::default()
        };
        gather.add(0, Ok(Reply::Synced(page.clone())));
        gather.add(1, Ok(Reply::Synced(page)));
        let Ok(Reply::Synced(merged)) = gather.finish(layout, partitions) else {
            panic!("not a page");
        };
        // Node 2 (partition 2) was not asked: from the start, not from 30.
        assert_eq!(merged.inbox.positions(), [1, 2, 0, 4]);
    }

    #[test]
    fn conversation_lists_are_joined_and_an_error_anywhere_fails_the_whole() {
        let layout = Layout::new(0, 2, 1).expect("layout");
        let partitions = Partitions::new(2).expect("2");
        let request = Request::ConversationsOf { user: UserId(1) };
        let mut gather = Gather::new(&request, 0b11);
        gather.add(1, Ok(Reply::Conversations(vec![ConversationKey::Group(3)])));
        gather.add(0, Ok(Reply::Conversations(vec![ConversationKey::Group(2)])));
        let Ok(Reply::Conversations(all)) = gather.finish(layout, partitions) else {
            panic!("not a list");
        };
        assert_eq!(all, [ConversationKey::Group(2), ConversationKey::Group(3)]);
        let mut failing = Gather::new(&request, 0b11);
        failing.add(0, Ok(Reply::Conversations(Vec::new())));
        failing.add(1, Err(StorageError::Unavailable));
        assert!(matches!(
            failing.finish(layout, partitions),
            Err(StorageError::Unavailable)
        ));
    }
}
