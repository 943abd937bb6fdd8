//! Which process serves a node: a **lease** in the JetStream key-value bucket
//! `<name>_leases`, key `node-<n>` (docs/CLUSTER.md, "Standby and handover").
//!
//! With a replica log (`[cluster] replicas ≥ 1`) a node may run as two processes: the
//! one serving it, and a **standby** that follows its replica log into a database of
//! its own. The lease names the serving one: `serving <holder>`. A serving process that
//! stops cleanly (a drain, SIGTERM), once its log holds every record it wrote, writes
//! `released <holder> <through>`; the standby, once its database holds record
//! `through`, takes the lease (`serving <its id>`) and serves as the node. Every write
//! of the lease names the revision it replaces, so of two processes taking it at once
//! one wins and the other hears it lost.
//!
//! The lease decides who takes over; it does not stop a process that still serves
//! (one cut off from NATS while another took its place). The replica log keeps the
//! node's writes one line: each record is taken only right after the last one its
//! writer knows of, so of two processes the first to write after the other stops the
//! other from acknowledging anything more (`super::replica`). Their reads may differ
//! until then. A starting process takes a lease that names another serving process
//! only after hearing nothing from it for `node_timeout` while the lease did not move,
//! and a serving process writes its lease again once it has said hello on NATS, so one
//! that took longer than that to start finds its lease taken and stops before serving
//! (`crate::server` start-up).

use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, kv};

use super::config::ClusterSettings;

/// A state of a node's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// Process `holder` serves the node.
    Serving {
        /// The serving process's id.
        holder: u64,
    },
    /// Process `holder` stopped serving the node and handed it over: the replica log
    /// holds every record it wrote, the last being `through`.
    Released {
        /// The process that stopped.
        holder: u64,
        /// Its last record.
        through: u64,
    },
}

impl Lease {
    fn encode(self) -> String {
        match self {
            Lease::Serving { holder } => format!("serving {holder:016x}"),
            Lease::Released { holder, through } => format!("released {holder:016x} {through}"),
        }
    }

    fn parse(value: &[u8]) -> anyhow::Result<Lease> {
        let text = std::str::from_utf8(value).context("a lease that is not UTF-8")?;
        let words: Vec<&str> = text.split(' ').collect();
        let holder = |w: &str| u64::from_str_radix(w, 16).context("a lease's holder");
        match words.as_slice() {
            ["serving", h] => Ok(Lease::Serving { holder: holder(h)? }),
            ["released", h, through] => Ok(Lease::Released {
                holder: holder(h)?,
                through: through.parse().context("a lease's last record")?,
            }),
            _ => bail!("a lease reading {text:?}"),
        }
    }
}

/// A node's lease as the bucket has it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Current {
    /// What it says; `None` when no process ever held it, or it was deleted.
    pub lease: Option<Lease>,
    /// The revision a new lease replaces; `None` when the key was never written.
    pub revision: Option<u64>,
}

/// This process's handle on its node's lease.
pub struct Leases {
    runtime: tokio::runtime::Runtime,
    store: kv::Store,
    key: String,
    /// This process, in the leases it writes.
    holder: u64,
    timeout: Duration,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("key", &self.key)
            .field("holder", &self.holder)
            .finish()
    }
}

impl Leases {
    /// Connects to NATS and opens (or creates) the cluster's lease bucket, with as many
    /// copies as the replica logs. An error when NATS or JetStream cannot be reached.
    pub fn connect(settings: &ClusterSettings) -> anyhow::Result<Leases> {
        // A worker of its own, so the connection answers the server's pings while the
        // node serves for hours between a take and a release.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("petrel-lease")
            .enable_all()
            .build()?;
        let bucket = format!("{}_leases", settings.name);
        let store = runtime.block_on(async {
            let client = async_nats::ConnectOptions::new()
                .name(format!(
                    "petrel-{}-node-{}-lease",
                    settings.name, settings.node
                ))
                .connection_timeout(settings.request_timeout)
                .connect(settings.nats_url.as_str())
                .await
                .with_context(|| {
                    format!(
                        "cannot reach NATS at {} for node {}'s lease",
                        settings.nats_url, settings.node
                    )
                })?;
            let mut js = jetstream::new(client);
            js.set_timeout(settings.request_timeout);
            super::kv_bucket::open_or_create(
                &js,
                &bucket,
                "Petrel: which process serves each node",
                usize::from(settings.replicas.max(1)),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e} (is JetStream enabled on the NATS server?)"))
        })?;
        Ok(Leases {
            runtime,
            store,
            key: format!("node-{}", settings.node),
            holder: rand::random(),
            timeout: settings.request_timeout,
        })
    }

    /// The node's lease as the bucket has it.
    pub fn read(&self) -> anyhow::Result<Current> {
        self.runtime.block_on(async {
            let entry = tokio::time::timeout(self.timeout, self.store.entry(self.key.as_str()))
                .await
                .context("NATS did not answer in time")?
                .map_err(|e| anyhow::anyhow!("cannot read lease {}: {e}", self.key))?;
            Ok(match entry {
                None => Current::default(),
                Some(entry) => Current {
                    // A deleted key (`nats kv del`) holds no lease, but its marker's
                    // revision is the one to replace.
                    lease: match entry.operation {
                        kv::Operation::Put => Some(Lease::parse(&entry.value)?),
                        kv::Operation::Delete | kv::Operation::Purge => None,
                    },
                    revision: Some(entry.revision),
                },
            })
        })
    }

    /// Writes `lease` in place of revision `revision` (`None`: never written); returns
    /// the new revision, or `None` when another process wrote the lease first.
    fn replace(&self, lease: Lease, revision: Option<u64>) -> anyhow::Result<Option<u64>> {
        let written = self.runtime.block_on(async {
            tokio::time::timeout(
                self.timeout,
                self.store.update(
                    self.key.as_str(),
                    lease.encode().into(),
                    revision.unwrap_or(0),
                ),
            )
            .await
        });
        let failure = match written {
            Ok(Ok(revision)) => return Ok(Some(revision)),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "NATS did not answer in time".to_owned(),
        };
        // Refused, or the answer was lost: the bucket says which. This process's own
        // write (the lease names this process, as written) landed; another's, if the
        // revision moved otherwise.
        let now = self.read()?;
        if now.lease == Some(lease) {
            return Ok(now.revision);
        }
        if now.revision != revision {
            return Ok(None);
        }
        bail!("cannot write lease {}: {failure}", self.key)
    }

    /// This process's id in the leases it writes.
    pub fn holder(&self) -> u64 {
        self.holder
    }

    /// Takes the node for this process, replacing the lease at `revision`; returns the
    /// new revision, or `None` when another process took it first.
    pub fn take(&self, revision: Option<u64>) -> anyhow::Result<Option<u64>> {
        self.replace(
            Lease::Serving {
                holder: self.holder,
            },
            revision,
        )
    }

    /// Hands the node over: this process, holding the lease at `revision`, wrote
    /// everything through record `through` to the replica log and serves no more.
    /// `false` when the lease is no longer this process's.
    pub fn release(&self, revision: u64, through: u64) -> anyhow::Result<bool> {
        let released = Lease::Released {
            holder: self.holder,
            through,
        };
        Ok(self.replace(released, Some(revision))?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_round_trip_and_bad_ones_are_errors() {
        for lease in [
            Lease::Serving { holder: 7 },
            Lease::Released {
                holder: u64::MAX,
                through: 12_345,
            },
        ] {
            assert_eq!(
                Lease::parse(lease.encode().as_bytes()).expect("parse"),
                lease
            );
        }
        for bad in [
            &b"serving"[..],
            b"serving zz",
            b"released 01",
            b"released 01 x",
            b"held 01",
            b"\xff",
        ] {
            assert!(Lease::parse(bad).is_err(), "{bad:?}");
        }
    }
}
