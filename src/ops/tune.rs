//! `petrel tune`: applies what doctor recommends and prints each change (old → new);
//! `--dry-run` prints the same lines without changing anything.
//!
//! Changes come from doctor's checks ([`super::doctor::Check::changes`]), so the two never
//! disagree. Each belongs to a [`Scope`], and `--only` restricts a run to some scopes —
//! which matters because some settings are global to the machine and others are not:
//!
//! | scope | what | reach |
//! |-------|------|-------|
//! | `limits` | RLIMIT_NOFILE of a running server (`--pid`) | one process |
//! | `fs` | `fs.nr_open`, `fs.file-max` | the whole machine, even from a network namespace |
//! | `net` | `net.core.somaxconn`, `net.ipv4.tcp_max_syn_backlog`, `net.ipv4.ip_local_port_range` | the current network namespace |
//! | `nic` | ring sizes, channel (queue) count | one interface |
//! | `irq` | `/proc/irq/N/smp_affinity_list` of the interface's queues | the whole machine |
//!
//! Nothing is persisted: the runtime values are lost at reboot; `scripts/deploy/` has the
//! sysctl.d, limits.d and systemd files that keep them.

use std::fmt;

use clap::ValueEnum;
use petrel_dataplane::sys::ethtool;

use super::procfs::format_cpu_list;

/// Where a change reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Scope {
    /// RLIMIT_NOFILE of a running server (`--pid`).
    Limits,
    /// `fs.*` sysctls (machine-wide).
    Fs,
    /// `net.*` sysctls (per network namespace).
    Net,
    /// NIC rings and channels.
    Nic,
    /// IRQ affinity (machine-wide).
    Irq,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 5] = [Scope::Limits, Scope::Fs, Scope::Net, Scope::Nic, Scope::Irq];

    fn name(self) -> &'static str {
        match self {
            Scope::Limits => "limits",
            Scope::Fs => "fs",
            Scope::Net => "net",
            Scope::Nic => "nic",
            Scope::Irq => "irq",
        }
    }
}

/// What to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// Write `value` to `/proc/sys/...`.
    Sysctl {
        /// The file.
        path: String,
        /// The value to write.
        value: String,
    },
    /// Set ring sizes.
    Rings {
        /// Interface.
        iface: String,
        /// rx slots.
        rx: u32,
        /// tx slots.
        tx: u32,
    },
    /// Set the queue count.
    Channels {
        /// Interface.
        iface: String,
        /// Queues.
        queues: u32,
    },
    /// Pin an IRQ to one CPU.
    Irq {
        /// IRQ number.
        irq: u32,
        /// CPU.
        cpu: usize,
    },
    /// Raise RLIMIT_NOFILE (soft and hard) of a process.
    NoFile {
        /// The new limit.
        limit: u64,
    },
}

/// One change: its scope, what it sets, and the value before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Where it reaches.
    pub scope: Scope,
    /// What it does.
    pub what: What,
    /// The value now, as shown.
    pub old: String,
    /// The value after, as shown.
    pub new: String,
}

impl Change {
    /// Writes `new` to the sysctl file `path`.
    pub fn sysctl(scope: Scope, path: &str, old: Option<String>, new: String) -> Change {
        Change {
            scope,
            what: What::Sysctl {
                path: path.to_owned(),
                value: new.clone(),
            },
            old: old.unwrap_or_else(|| "?".into()),
            new,
        }
    }

    /// Sets the ring sizes of `iface`.
    pub fn rings(iface: &str, old: (u32, u32), new: (u32, u32)) -> Change {
        Change {
            scope: Scope::Nic,
            what: What::Rings {
                iface: iface.to_owned(),
                rx: new.0,
                tx: new.1,
            },
            old: format!("rx {} tx {}", old.0, old.1),
            new: format!("rx {} tx {}", new.0, new.1),
        }
    }

    /// Sets the queue count of `iface`.
    pub fn channels(iface: &str, old: u32, new: u32) -> Change {
        Change {
            scope: Scope::Nic,
            what: What::Channels {
                iface: iface.to_owned(),
                queues: new,
            },
            old: old.to_string(),
            new: new.to_string(),
        }
    }

    /// Pins `irq` to `cpu`.
    pub fn irq(irq: u32, old: &[usize], cpu: usize) -> Change {
        Change {
            scope: Scope::Irq,
            what: What::Irq { irq, cpu },
            old: format_cpu_list(old),
            new: cpu.to_string(),
        }
    }

    /// Raises RLIMIT_NOFILE (soft/hard, now `old`) of the server process to `limit`.
    pub fn limits(old: &super::procfs::Limit, limit: u64) -> Change {
        let show = |v: Option<u64>| v.map_or("unlimited".to_owned(), |v| v.to_string());
        Change {
            scope: Scope::Limits,
            what: What::NoFile { limit },
            old: format!("{}/{}", show(old.soft), show(old.hard)),
            new: format!("{limit}/{limit}"),
        }
    }

    fn target(&self) -> String {
        match &self.what {
            What::Sysctl { path, .. } => path
                .strip_prefix("/proc/sys/")
                .unwrap_or(path)
                .replace('/', "."),
            What::Rings { iface, .. } => format!("{iface} ring sizes"),
            What::Channels { iface, .. } => format!("{iface} queues"),
            What::Irq { irq, .. } => format!("/proc/irq/{irq}/smp_affinity_list"),
            What::NoFile { .. } => "RLIMIT_NOFILE soft/hard".into(),
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] {}: {} → {}",
            self.scope.name(),
            self.target(),
            self.old,
            self.new
        )
    }
}

/// How one change went.
#[derive(Debug)]
pub enum Outcome {
    /// Done.
    Applied,
    /// `--dry-run`.
    WouldApply,
    /// Scope not selected.
    Skipped,
    /// Failed, with why and what to do instead.
    Failed(String),
}

/// Applies `change` (or not, for `dry_run`). `pid` is the server whose RLIMIT_NOFILE a
/// [`What::NoFile`] change raises.
pub fn apply(change: &Change, dry_run: bool, pid: Option<u32>) -> Outcome {
    if dry_run {
        return Outcome::WouldApply;
    }
    let result = match &change.what {
        What::Sysctl { path, value } => std::fs::write(path, format!("{value}\n"))
            .map_err(|e| format!("{e} (needs root; in a container /proc/sys may be read-only)")),
        What::Rings { iface, rx, tx } => {
            ethtool::set_rings(iface, *rx, *tx).map_err(|e| e.to_string())
        }
        What::Channels { iface, queues } => {
            ethtool::set_channels(iface, *queues).map_err(|e| e.to_string())
        }
        What::Irq { irq, cpu } => std::fs::write(
            format!("/proc/irq/{irq}/smp_affinity_list"),
            format!("{cpu}\n"),
        )
        .map_err(|e| e.to_string()),
        What::NoFile { limit } => raise_nofile(pid, *limit),
    };
    match result {
        Ok(()) => Outcome::Applied,
        Err(e) => Outcome::Failed(e),
    }
}

fn raise_nofile(pid: Option<u32>, limit: u64) -> Result<(), String> {
    let Some(pid) = pid else {
        return Err(
            "no --pid: limits belong to the process that serves, set where it starts \
             (LimitNOFILE= in scripts/deploy/petrel.service, or limits.d for login shells)"
                .into(),
        );
    };
    let pid = i32::try_from(pid).map_err(|_| format!("bad pid {pid}"))?;
    rlimit::prlimit(pid, rlimit::Resource::NOFILE, Some((limit, limit)), None).map_err(|e| {
        if e.raw_os_error() == Some(1) {
            format!(
                "{e}: raising a hard limit needs CAP_SYS_RESOURCE, which this process lacks \
                 (see /proc/self/status CapEff); start the server with LimitNOFILE={limit} \
                 instead"
            )
        } else {
            e.to_string()
        }
    })
}

/// Runs every change in `scopes`; prints one line each. Returns how many failed.
pub fn run(
    changes: &[Change],
    scopes: &[Scope],
    dry_run: bool,
    pid: Option<u32>,
) -> (String, usize) {
    let mut out = String::new();
    let mut failed = 0;
    if changes.is_empty() {
        out.push_str("petrel tune: nothing to change\n");
    }
    for change in changes {
        let outcome = if scopes.contains(&change.scope) {
            apply(change, dry_run, pid)
        } else {
            Outcome::Skipped
        };
        let line = match outcome {
            Outcome::Applied => format!("{change}  (applied)"),
            Outcome::WouldApply => format!("{change}  (dry run: not changed)"),
            Outcome::Skipped => format!("{change}  (skipped: not in --only)"),
            Outcome::Failed(why) => {
                failed += 1;
                format!("{change}  (FAILED: {why})")
            }
        };
        out.push_str(&line);
        out.push('\n');
    }
    (out, failed)
}
