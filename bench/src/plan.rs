//! Who is who in a scenario: which connection is which user, who sends, to which
//! conversation, how many deliveries each message makes, and how the connections are
//! split over load-generating processes.
//!
//! Connection *i* of a run is user `first_user + i`. Connections are grouped in *units*
//! that must stay in one process because they set up or measure something together: a
//! pair (chat1v1), a group (group); single connections otherwise.

use anyhow::bail;

use super::config::Scenario;

/// The shape of a run, independent of any socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The scenario.
    pub scenario: Scenario,
    /// User id of connection 0.
    pub first_user: u64,
}

/// What a connection does in the measured phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Only holds and heartbeats.
    Idle,
    /// Sends to the peer user.
    SendSingle {
        /// The other user.
        peer: u64,
    },
    /// Sends to group number `index` (its id is known after setup).
    SendGroup {
        /// Which group of the run.
        index: u64,
    },
    /// Sends to the room.
    SendRoom,
    /// Broadcasts on the public account.
    SendAccount,
}

/// A contiguous range of connections run by one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    /// This process's number, from 0.
    pub index: u64,
    /// Number of processes.
    pub count: u64,
    /// First connection index (inclusive).
    pub start: u64,
    /// Last connection index (exclusive).
    pub end: u64,
}

impl Plan {
    /// Total connections.
    pub fn connections(&self) -> u64 {
        match self.scenario {
            Scenario::Connect { connections } => connections,
            Scenario::Chat1v1 { pairs } => pairs * 2,
            Scenario::Group { groups, members } => groups * members,
            Scenario::Chatroom { members, .. } => members,
            Scenario::Broadcast { followers } => followers + 1,
        }
    }

    /// User id of connection `i`.
    pub fn user(&self, i: u64) -> u64 {
        self.first_user + i
    }

    /// Connections that must share a process.
    pub fn unit_size(&self) -> u64 {
        match self.scenario {
            Scenario::Chat1v1 { .. } => 2,
            Scenario::Group { members, .. } => members,
            _ => 1,
        }
    }

    /// What connection `i` does.
    pub fn role(&self, i: u64) -> Role {
        match self.scenario {
            Scenario::Connect { .. } => Role::Idle,
            Scenario::Chat1v1 { .. } => Role::SendSingle {
                peer: self.user(i ^ 1),
            },
            Scenario::Group { members, .. } => Role::SendGroup { index: i / members },
            Scenario::Chatroom { .. } => Role::SendRoom,
            Scenario::Broadcast { .. } if i == 0 => Role::SendAccount,
            Scenario::Broadcast { .. } => Role::Idle,
        }
    }

    /// Deliveries (pushes to other connections of the run) per message sent.
    pub fn fanout(&self) -> u64 {
        match self.scenario {
            Scenario::Connect { .. } => 0,
            Scenario::Chat1v1 { .. } => 1,
            Scenario::Group { members, .. } | Scenario::Chatroom { members, .. } => members - 1,
            Scenario::Broadcast { followers } => followers,
        }
    }

    /// Number of connections that send.
    pub fn senders(&self) -> u64 {
        match self.scenario {
            Scenario::Connect { .. } => 0,
            Scenario::Broadcast { .. } => 1,
            _ => self.connections(),
        }
    }

    /// Whether every receiver of a shard's messages is in the same shard (then a shard
    /// knows how many deliveries to wait for).
    pub fn deliveries_stay_in_shard(&self, shards: u64) -> bool {
        shards == 1
            || matches!(
                self.scenario,
                Scenario::Chat1v1 { .. } | Scenario::Group { .. }
            )
    }

    /// Splits the run over as few processes as hold at most `per_process` connections
    /// each, never splitting a unit.
    pub fn shards(&self, per_process: u64) -> anyhow::Result<Vec<Shard>> {
        let unit = self.unit_size();
        if unit > per_process {
            bail!(
                "a unit of {unit} connections (one group) does not fit in one load-generating \
                 process of at most {per_process}; use smaller groups"
            );
        }
        let total = self.connections();
        let units = total / unit;
        let units_per_process = per_process / unit;
        let count = units.div_ceil(units_per_process).max(1);
        // Spread evenly: the first `extra` processes take one unit more.
        let base = units / count;
        let extra = units % count;
        let mut shards = Vec::new();
        let mut start = 0;
        for index in 0..count {
            let n = (base + u64::from(index < extra)) * unit;
            shards.push(Shard {
                index,
                count,
                start,
                end: start + n,
            });
            start += n;
        }
        debug_assert_eq!(start, total);
        Ok(shards)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(scenario: Scenario) -> Plan {
        Plan {
            scenario,
            first_user: 100,
        }
    }

    #[test]
    fn pairs_message_each_other() {
        let p = plan(Scenario::Chat1v1 { pairs: 2 });
        assert_eq!(p.connections(), 4);
        assert_eq!(p.role(0), Role::SendSingle { peer: 101 });
        assert_eq!(p.role(1), Role::SendSingle { peer: 100 });
        assert_eq!(p.role(3), Role::SendSingle { peer: 102 });
        assert_eq!(p.fanout(), 1);
    }

    #[test]
    fn groups_and_broadcast_roles() {
        let g = plan(Scenario::Group {
            groups: 3,
            members: 4,
        });
        assert_eq!(g.role(5), Role::SendGroup { index: 1 });
        assert_eq!(g.fanout(), 3);
        let b = plan(Scenario::Broadcast { followers: 10 });
        assert_eq!(b.role(0), Role::SendAccount);
        assert_eq!(b.role(1), Role::Idle);
        assert_eq!((b.connections(), b.senders(), b.fanout()), (11, 1, 10));
    }

    #[test]
    fn shards_cover_everything_without_splitting_units() {
        let p = plan(Scenario::Group {
            groups: 7,
            members: 1000,
        });
        let shards = p.shards(2500).unwrap();
        // 2 groups fit per process: 4 processes for 7 groups.
        assert_eq!(shards.len(), 4);
        assert_eq!(shards[0].start, 0);
        assert_eq!(shards.last().unwrap().end, 7000);
        for w in shards.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        for s in &shards {
            assert_eq!((s.end - s.start) % 1000, 0);
            assert!((s.end - s.start) <= 2500);
        }
        let one = plan(Scenario::Connect { connections: 50 })
            .shards(18_000)
            .unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!((one[0].start, one[0].end, one[0].count), (0, 50, 1));
        let many = plan(Scenario::Connect {
            connections: 100_000,
        })
        .shards(18_000)
        .unwrap();
        assert_eq!(many.len(), 6);
        assert!(many.iter().all(|s| (s.end - s.start) <= 18_000));
    }

    #[test]
    fn a_group_larger_than_a_process_is_an_error() {
        let p = plan(Scenario::Group {
            groups: 1,
            members: 20_000,
        });
        assert!(p.shards(18_000).is_err());
    }
}
