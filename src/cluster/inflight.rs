//! One core's storage requests waiting for another node: each is answered exactly once —
//! by the node, or `Unavailable` when the node is down or does not answer within the
//! request timeout (a late answer after that is dropped) — and spanning reads
//! ([`super::gather`]) are merged before the control plane sees them. Deadlines are on
//! the monotonic clock the caller passes (`server::core_loop::monotonic`), not the wall
//! clock: a clock stepped back must not hold a request past its timeout.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use petrel_control::{Ticket, Timestamp};
use petrel_storage::partition::Partitions;
use petrel_storage::{Reply, Request, StorageError};

use super::Layout;
use super::gather::Gather;

/// An answer the control plane may take now.
pub type Answer = (Ticket, Result<Reply, StorageError>);

/// One core's requests in flight to other nodes.
#[derive(Debug)]
pub struct InFlight {
    layout: Layout,
    partitions: Partitions,
    timeout: Duration,
    /// Nodes known to be down (bit = node).
    down: u64,
    /// Per (ticket, node asked): when to give up.
    waiting: HashMap<(Ticket, u8), Timestamp>,
    /// The same, in the order they were sent (deadlines ascend).
    order: VecDeque<(Timestamp, Ticket, u8)>,
    gathers: HashMap<Ticket, Gather>,
}

impl InFlight {
    /// Nothing in flight yet; every other node down until heard from.
    pub fn new(layout: Layout, partitions: Partitions, timeout: Duration) -> InFlight {
        let others = (0..layout.nodes)
            .filter(|&n| n != layout.node)
            .fold(0u64, |all, n| all | (1 << n));
        InFlight {
            layout,
            partitions,
            timeout,
            down: others,
            waiting: HashMap::new(),
            order: VecDeque::new(),
            gathers: HashMap::new(),
        }
    }

    /// The cluster's layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Whether node `node` is down.
    pub fn is_down(&self, node: u8) -> bool {
        self.down & (1u64 << node) != 0
    }

    /// The nodes up, this one included (bit = node).
    pub fn up_nodes(&self) -> u64 {
        let all = 1u64
            .checked_shl(u32::from(self.layout.nodes))
            .map_or(u64::MAX, |b| b - 1);
        all & !self.down
    }

    /// Requests waiting for another node.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// `ticket` was sent to node `node` at `now`.
    pub fn expect(&mut self, now: Timestamp, ticket: Ticket, node: u8) {
        let deadline = now.saturating_add(self.timeout);
        self.waiting.insert((ticket, node), deadline);
        self.order.push_back((deadline, ticket, node));
    }

    /// `request` (with `ticket`) is asked of every node in `nodes`: their answers are
    /// merged before the control plane gets one.
    pub fn gather(&mut self, ticket: Ticket, request: &Request, nodes: u64) {
        self.gathers.insert(ticket, Gather::new(request, nodes));
    }

    /// Node `node` answered `ticket` (this node: its own committer). Returns what the
    /// control plane gets now, if anything; `None` for a late answer (already given up
    /// on) or a part of a spanning read that waits for others. `remote` says whether the
    /// answer came from another node (only those are tracked for time-outs).
    pub fn answer(
        &mut self,
        node: u8,
        ticket: Ticket,
        result: Result<Reply, StorageError>,
        remote: bool,
    ) -> Option<Answer> {
        if remote && self.waiting.remove(&(ticket, node)).is_none() {
            return None;
        }
        // Another node shutting down is this node's client's "try again", not this
        // node's shutdown (SHUTTING_DOWN would tell the client to reconnect).
        let result = match result {
            Err(StorageError::Closed) if remote => Err(StorageError::Unavailable),
            other => other,
        };
        self.settle(node, ticket, result)
    }

    fn settle(
        &mut self,
        node: u8,
        ticket: Ticket,
        result: Result<Reply, StorageError>,
    ) -> Option<Answer> {
        let Some(gather) = self.gathers.get_mut(&ticket) else {
            return Some((ticket, result));
        };
        if !gather.add(node, result) {
            return None;
        }
        let gather = self.gathers.remove(&ticket)?;
        Some((ticket, gather.finish(self.layout, self.partitions)))
    }

    /// Whether a request to another node has passed its deadline at `now` (cheap: the
    /// oldest one only).
    pub fn has_expired(&self, now: Timestamp) -> bool {
        self.order
            .front()
            .is_some_and(|(deadline, ..)| *deadline <= now)
    }

    /// Gives up on the requests past their deadline at `now`: each is answered
    /// `Unavailable` through `deliver`. Returns how many were given up.
    pub fn expire(&mut self, now: Timestamp, mut deliver: impl FnMut(Answer)) -> usize {
        let mut given_up = 0;
        while let Some(&(deadline, ticket, node)) = self.order.front() {
            if deadline > now {
                break;
            }
            self.order.pop_front();
            // Answered already, or answered and asked again: only a live, due entry.
            if self.waiting.get(&(ticket, node)) != Some(&deadline) {
                continue;
            }
            self.waiting.remove(&(ticket, node));
            given_up += 1;
            if let Some(answer) = self.settle(node, ticket, Err(StorageError::Unavailable)) {
                deliver(answer);
            }
        }
        given_up
    }

    /// Nodes `nodes` (bit = node) went down: what waits for them is answered
    /// `Unavailable` now. Returns how many.
    pub fn nodes_down(&mut self, nodes: u64, mut deliver: impl FnMut(Answer)) -> usize {
        self.down |= nodes & !(1u64 << self.layout.node);
        let lost: Vec<(Ticket, u8)> = self
            .waiting
            .keys()
            .filter(|(_, node)| nodes & (1u64 << node) != 0)
            .copied()
            .collect();
        for &(ticket, node) in &lost {
            self.waiting.remove(&(ticket, node));
            if let Some(answer) = self.settle(node, ticket, Err(StorageError::Unavailable)) {
                deliver(answer);
            }
        }
        lost.len()
    }

    /// Nodes `nodes` (bit = node) are up again.
    pub fn nodes_up(&mut self, nodes: u64) {
        self.down &= !nodes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_storage::UserId;

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn every_request_is_answered_once_by_its_node_its_deadline_or_the_node_going_down() {
        let layout = Layout::new(0, 3, 1).expect("layout");
        let mut inflight = InFlight::new(
            layout,
            Partitions::new(3).expect("3"),
            Duration::from_secs(1),
        );
        assert_eq!(inflight.up_nodes(), 0b001, "others down until heard from");
        inflight.nodes_up(0b110);
        inflight.expect(t(0), Ticket(1), 1);
        inflight.expect(t(0), Ticket(2), 2);
        inflight.expect(t(500), Ticket(3), 1);
        // Node 1 answers ticket 1: passed on.
        let got = inflight.answer(1, Ticket(1), Ok(Reply::Done), true);
        assert!(matches!(got, Some((Ticket(1), Ok(Reply::Done)))));
        // Ticket 2 times out at 1 s; ticket 3 not yet.
        let mut given_up = Vec::new();
        assert!(inflight.has_expired(t(1000)));
        inflight.expire(t(1000), |(ticket, r)| given_up.push((ticket, r.is_err())));
        assert_eq!(given_up, [(Ticket(2), true)]);
        // Its late answer is dropped.
        assert!(
            inflight
                .answer(2, Ticket(2), Ok(Reply::Done), true)
                .is_none()
        );
        // Node 1 goes down: ticket 3 is answered now.
        let mut lost = Vec::new();
        inflight.nodes_down(0b010, |(ticket, _)| lost.push(ticket));
        assert_eq!(lost, [Ticket(3)]);
        assert!(inflight.is_down(1));
        assert_eq!(inflight.len(), 0);
        inflight.expire(t(10_000), |_| panic!("nothing left"));
    }

    #[test]
    fn a_spanning_read_is_answered_once_all_its_nodes_have() {
        let layout = Layout::new(0, 3, 1).expect("layout");
        let mut inflight = InFlight::new(
            layout,
            Partitions::new(3).expect("3"),
            Duration::from_secs(1),
        );
        inflight.nodes_up(0b110);
        let request = Request::ConversationsOf { user: UserId(1) };
        inflight.gather(Ticket(9), &request, 0b111);
        inflight.expect(t(0), Ticket(9), 1);
        inflight.expect(t(0), Ticket(9), 2);
        assert!(
            inflight
                .answer(0, Ticket(9), Ok(Reply::Conversations(Vec::new())), false)
                .is_none()
        );
        assert!(
            inflight
                .answer(1, Ticket(9), Ok(Reply::Conversations(Vec::new())), true)
                .is_none()
        );
        // Node 2 never answers: the whole read fails at the deadline, once.
        let mut answers = Vec::new();
        inflight.expire(t(1000), |(ticket, r)| answers.push((ticket, r.is_err())));
        assert_eq!(answers, [(Ticket(9), true)]);
    }
}
