//! Dispatch (docs/CLUSTER.md, "Dispatch"): the directory a client asks at start, and
//! after repeated failures, where to connect — an ordered list of endpoints: the nodes
//! of the pool this user is in (a `dedicated` pool for latency-sensitive users, set by
//! the app's backend through the API; the general pool otherwise), then the backup
//! domains.
//!
//! - [`DispatchSettings`]: the `[dispatch]` table.
//! - [`directory`]: what the directory knows (nodes up, their pools and endpoints; the
//!   assignments) and how it answers.
//! - [`pools`]: the assignments in a NATS key-value bucket, mirrored on every node.
//! - [`http`]: `GET /v1/dispatch` on its own listener, for clients (their own token).

pub mod directory;
pub mod http;
pub mod pools;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::bail;
use serde::Deserialize;

pub use directory::{Directory, GENERAL};

use crate::http_serve::Limits;
pub use pools::PoolBook;

/// The `[dispatch]` table of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchFile {
    addr: Option<SocketAddr>,
    backup: Option<Vec<String>>,
    pools: Option<BTreeMap<String, Vec<u8>>>,
    kv_replicas: Option<usize>,
    tls: Option<bool>,
    max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
}

/// The resolved `[dispatch]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchSettings {
    /// Where the directory listens (HTTP); `None`: no directory on this node.
    pub addr: Option<SocketAddr>,
    /// The backup domains (`host:port`), after the pool's nodes in every answer.
    pub backup: Vec<String>,
    /// Each node's pool, by node index ([`GENERAL`] for the nodes no pool names).
    pub node_pools: Vec<String>,
    /// Every pool a user may be put in: [`GENERAL`], then the configured ones.
    pub pools: Vec<String>,
    /// Replicas of the assignments' bucket (with a NATS cluster of as many servers).
    pub kv_replicas: usize,
    /// Whether the directory speaks HTTPS, with the server's `[tls]` certificate.
    pub tls: bool,
    /// The directory's connection limits ([`Limits::DISPATCH`] unless set).
    pub limits: Limits,
}

impl DispatchSettings {
    /// The settings from the `[dispatch]` table of a server of `nodes` nodes (`None`:
    /// no cluster) that has a `[tls]` certificate or not (`has_cert`), on every client
    /// listener or beside plaintext ones (`all_tls`). Pools need a cluster: they are
    /// sets of its nodes. The directory speaks HTTPS by default when every client
    /// listener does (its clients speak TLS); `tls` in the table decides otherwise.
    pub fn resolve(
        file: Option<&DispatchFile>,
        nodes: Option<u8>,
        has_cert: bool,
        all_tls: bool,
    ) -> anyhow::Result<Self> {
        let file = file.cloned().unwrap_or_default();
        let tls = file.tls.unwrap_or(has_cert && all_tls);
        if tls && !has_cert {
            bail!(
                "[dispatch] tls = true needs the server's certificate: a [tls] table or --tls-cert"
            );
        }
        let count = nodes.unwrap_or(1);
        let mut node_pools = vec![GENERAL.to_owned(); usize::from(count)];
        let mut pools = vec![GENERAL.to_owned()];
        let configured = file.pools.unwrap_or_default();
        if !configured.is_empty() && nodes.is_none() {
            bail!("[dispatch] pools are sets of cluster nodes: they need a [cluster] table");
        }
        for (name, members) in configured {
            let valid = !name.is_empty()
                && name.len() <= 32
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
            if !valid {
                bail!("[dispatch] pool name {name:?}: 1 to 32 of a-z, 0-9, '-', '_'");
            }
            for node in members {
                let Some(slot) = node_pools.get_mut(usize::from(node)) else {
                    bail!("[dispatch] pool {name:?} names node {node}; the cluster has {count}");
                };
                if slot != GENERAL && *slot != name {
                    bail!("[dispatch] node {node} is in two pools: {slot:?} and {name:?}");
                }
                *slot = name.clone();
            }
            if name != GENERAL {
                pools.push(name);
            }
        }
        let backup = file.backup.unwrap_or_default();
        for b in &backup {
            let port_ok = b
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                bail!("[dispatch] backup {b:?} is not host:port");
            }
        }
        Ok(DispatchSettings {
            addr: file.addr,
            backup,
            node_pools,
            pools,
            kv_replicas: file.kv_replicas.unwrap_or(1).max(1),
            tls,
            limits: Limits::DISPATCH.configured(
                "dispatch",
                file.max_connections,
                file.max_connections_per_address,
            )?,
        })
    }

    /// Node `node`'s pool.
    pub fn pool_of_node(&self, node: u8) -> &str {
        self.node_pools
            .get(usize::from(node))
            .map_or(GENERAL, String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> DispatchFile {
        toml::from_str(text).expect("toml")
    }

    #[test]
    fn pools_name_nodes_of_the_cluster_and_the_rest_are_general() {
        let f = file("backup = [\"b.example:7000\"]\n[pools]\ndedicated = [2]\n");
        let s = DispatchSettings::resolve(Some(&f), Some(3), false, false).expect("valid");
        assert_eq!(s.node_pools, vec!["general", "general", "dedicated"]);
        assert_eq!(s.pools, vec!["general", "dedicated"]);
        assert_eq!(s.pool_of_node(2), "dedicated");
        assert!(
            DispatchSettings::resolve(Some(&f), None, false, false).is_err(),
            "no cluster"
        );
        assert!(
            DispatchSettings::resolve(Some(&f), Some(2), false, false).is_err(),
            "no node 2"
        );
        let two = file("[pools]\na = [0]\nb = [0]\n");
        assert!(
            DispatchSettings::resolve(Some(&two), Some(2), false, false).is_err(),
            "two pools"
        );
        let bad = file("[pools]\n\"Big Pool\" = [0]\n");
        assert!(DispatchSettings::resolve(Some(&bad), Some(2), false, false).is_err());
        let port = file("backup = [\"b.example\"]\n");
        assert!(
            DispatchSettings::resolve(Some(&port), None, false, false).is_err(),
            "no port"
        );
        let none = DispatchSettings::resolve(None, None, false, false).expect("default");
        assert_eq!((none.addr, none.pools.len()), (None, 1));
        assert!(!none.tls, "no certificate, no https");
        let with_cert = DispatchSettings::resolve(None, None, true, true).expect("default");
        assert!(with_cert.tls, "https with the server's certificate");
        let plain = file("tls = false\n");
        assert!(
            !DispatchSettings::resolve(Some(&plain), None, true, true)
                .unwrap()
                .tls
        );
        let https = file("tls = true\n");
        assert!(
            DispatchSettings::resolve(Some(&https), None, false, false).is_err(),
            "https without a certificate"
        );
        let mixed = DispatchSettings::resolve(None, None, true, false).expect("default");
        assert!(
            !mixed.tls,
            "plaintext listeners beside TLS ones: a plain directory"
        );
        let mixed_https = DispatchSettings::resolve(Some(&https), None, true, false);
        assert!(mixed_https.expect("explicit https").tls);
        assert!(
            toml::from_str::<DispatchFile>("adr = \"x\"").is_err(),
            "typo refused"
        );
    }

    #[test]
    fn connection_limits_default_to_the_directorys_and_can_be_set() {
        let none = DispatchSettings::resolve(None, None, false, false).expect("default");
        assert_eq!(none.limits, Limits::DISPATCH);
        let proxied = file("max_connections = 4096\nmax_connections_per_address = 0\n");
        let s = DispatchSettings::resolve(Some(&proxied), None, false, false).expect("valid");
        assert_eq!(
            (s.limits.max_connections, s.limits.max_per_address),
            (4096, 0)
        );
        assert_eq!(s.limits.header_timeout, Limits::DISPATCH.header_timeout);
        for bad in ["max_connections = 0\n", "max_connections = 1000000\n"] {
            let error = DispatchSettings::resolve(Some(&file(bad)), None, false, false)
                .expect_err(bad)
                .to_string();
            assert!(error.contains("[dispatch] max_connections"), "{error}");
        }
    }
}
