//! What the directory knows and answers: which nodes are up, in which pool, reached
//! where; which users the app's backend put in which pool; and the backup domains.
//!
//! The nodes come from the cluster bridge (each node's heartbeat names its pool and its
//! client endpoints; a silent node is down), the assignments from the NATS key-value
//! bucket ([`super::pools`]). Both are kept here in memory, so an answer is a read lock
//! and a few string copies: no storage, no NATS round trip.

use std::collections::HashMap;
use std::sync::RwLock;

use serde::Serialize;

/// The pool of every user the backend put in no other, and of every node no pool names.
pub const GENERAL: &str = "general";

/// The answer to "where should user U connect?".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dispatch {
    /// Who asked (from the token).
    pub user_id: u64,
    /// The user's pool.
    pub pool: String,
    /// Whether no node of that pool is up: the list starts with the backup domains.
    pub pool_down: bool,
    /// Where to connect, in order: the pool's nodes that are up (a different first one
    /// for different users, so a pool's users spread over its nodes), then the backup
    /// domains.
    pub endpoints: Vec<String>,
}

/// A node that is up.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    pool: String,
    endpoints: Vec<String>,
}

#[derive(Debug, Default)]
struct State {
    /// By node index; `None` while down (or not heard from yet).
    nodes: Vec<Option<Node>>,
    /// User → pool, for the users not in the general pool.
    assignments: HashMap<u64, String>,
    /// Whether `assignments` holds the whole bucket (once read; a server without pools
    /// has nothing to read).
    loaded: bool,
}

/// The shared directory: written by the bridge and the pool watcher, read by the
/// dispatch endpoint and the API.
#[derive(Debug)]
pub struct Directory {
    backup: Vec<String>,
    state: RwLock<State>,
}

impl Directory {
    /// A directory of `nodes` nodes, all down, with these backup domains; `pooled`:
    /// its assignments are still to be read (from the NATS bucket), and until they are
    /// it answers nobody ([`Directory::answer`] is `None`).
    pub fn new(nodes: u8, backup: Vec<String>, pooled: bool) -> Directory {
        Directory {
            backup,
            state: RwLock::new(State {
                nodes: vec![None; usize::from(nodes)],
                assignments: HashMap::new(),
                loaded: !pooled,
            }),
        }
    }

    /// The backup domains.
    pub fn backups(&self) -> &[String] {
        &self.backup
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Node `node` is up, in `pool`, taking clients at `endpoints`; `None`: it is down.
    pub fn set_node(&self, node: u8, up: Option<(&str, &[String])>) {
        let mut state = self.write();
        if let Some(slot) = state.nodes.get_mut(usize::from(node)) {
            *slot = up.map(|(pool, endpoints)| Node {
                pool: pool.to_owned(),
                endpoints: endpoints.to_vec(),
            });
        }
    }

    /// `user` is in `pool` from now on (`None` or [`GENERAL`]: the general pool).
    pub fn assign(&self, user: u64, pool: Option<&str>) {
        apply_assignment(&mut self.write().assignments, user, pool);
    }

    /// Every assignment at once (the watcher read the whole bucket): from now on the
    /// directory answers.
    pub fn replace_assignments(&self, assignments: HashMap<u64, String>) {
        let mut state = self.write();
        state.assignments = assignments;
        state.loaded = true;
    }

    /// `user`'s pool; `None` until the assignments are read.
    pub fn pool_of(&self, user: u64) -> Option<String> {
        let state = self.read();
        state.loaded.then(|| {
            state
                .assignments
                .get(&user)
                .cloned()
                .unwrap_or_else(|| GENERAL.to_owned())
        })
    }

    /// Where `user` should connect; `None` until the assignments are read (answering
    /// "general" meanwhile would send a dedicated user to the wrong pool).
    pub fn answer(&self, user: u64) -> Option<Dispatch> {
        let state = self.read();
        if !state.loaded {
            return None;
        }
        let pool = state.assignments.get(&user).map_or(GENERAL, String::as_str);
        let members: Vec<&Node> = state
            .nodes
            .iter()
            .flatten()
            .filter(|n| n.pool == pool && !n.endpoints.is_empty())
            .collect();
        let mut endpoints: Vec<String> = Vec::new();
        if !members.is_empty() {
            // The same user starts at the same node while the pool stays as it is.
            let start = usize::try_from(user % members.len() as u64).unwrap_or(0);
            for node in members[start..].iter().chain(&members[..start]) {
                endpoints.extend(node.endpoints.iter().cloned());
            }
        }
        let pool_down = endpoints.is_empty();
        for backup in &self.backup {
            if !endpoints.contains(backup) {
                endpoints.push(backup.clone());
            }
        }
        Some(Dispatch {
            user_id: user,
            pool: pool.to_owned(),
            pool_down,
            endpoints,
        })
    }
}

/// Puts `user` in `pool` in `assignments`, which hold only the users outside the
/// general pool (`None` or [`GENERAL`]: no entry).
pub fn apply_assignment(assignments: &mut HashMap<u64, String>, user: u64, pool: Option<&str>) {
    match pool {
        Some(pool) if pool != GENERAL => {
            assignments.insert(user, pool.to_owned());
        }
        _ => {
            assignments.remove(&user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_user_gets_their_pools_nodes_then_the_backups_and_the_backups_first_when_it_is_down() {
        let d = Directory::new(3, eps(&["backup.example:7000"]), true);
        d.set_node(0, Some((GENERAL, &eps(&["a:1"]))));
        assert_eq!(d.answer(10), None, "not before the assignments are read");
        d.replace_assignments(HashMap::new());
        d.set_node(1, Some((GENERAL, &eps(&["b:1"]))));
        d.set_node(2, Some(("dedicated", &eps(&["c:1", "c:2"]))));
        let general = d.answer(10).expect("loaded");
        assert_eq!(general.pool, GENERAL);
        assert!(!general.pool_down);
        assert_eq!(
            general.endpoints,
            eps(&["a:1", "b:1", "backup.example:7000"])
        );
        assert_eq!(
            d.answer(11).expect("loaded").endpoints,
            eps(&["b:1", "a:1", "backup.example:7000"]),
            "users spread over the pool"
        );
        d.assign(11, Some("dedicated"));
        let vip = d.answer(11).expect("loaded");
        assert_eq!(
            (vip.pool.as_str(), vip.endpoints),
            ("dedicated", eps(&["c:1", "c:2", "backup.example:7000"]))
        );
        d.set_node(2, None);
        let vip = d.answer(11).expect("loaded");
        assert!(vip.pool_down);
        assert_eq!(vip.endpoints, eps(&["backup.example:7000"]));
        d.assign(11, Some(GENERAL));
        assert_eq!(d.pool_of(11).as_deref(), Some(GENERAL));
        d.assign(12, Some("no-such-pool"));
        assert!(
            d.answer(12).expect("loaded").pool_down,
            "a pool no node is in is down"
        );
    }
}
