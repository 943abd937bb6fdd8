//! Operating Petrel on a dedicated host: `petrel doctor` checks the host against the
//! configured scale, `petrel tune` applies the fixes, `petrel admin backup` checkpoints
//! the database. docs/OPERATIONS.md is the guide; this is the code.
//!
//! Layers, in reading order:
//! - [`procfs`], [`interrupts`], [`netdev`] — pure parsers of /proc, /sys and ethtool text,
//!   tested on captured fixtures (`tests/fixtures/ops/`);
//! - [`host`] — one plain [`host::Host`] value read live from /proc, /sys and
//!   `SIOCETHTOOL` (petrel-dataplane's `sys::ethtool`, the only place with `unsafe`);
//! - [`doctor`] — the checks: host + scale → checklist, each line with its fix;
//! - [`dpdk`] — doctor's DPDK readiness lines (hugepages, IOMMU, vfio-pci, EAL arguments);
//! - [`tune`] — the changes those checks carry, applied or printed, by scope;
//! - [`backup`] — `petrel admin backup DIR`, through a running server's admin socket or
//!   straight on the database;
//! - [`drain`] — `petrel admin drain`, a graceful stop for rolling restarts.

pub mod backup;
pub mod doctor;
pub mod dpdk;
pub mod drain;
pub mod host;
pub mod interrupts;
pub mod netdev;
pub mod procfs;
pub mod tune;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use self::doctor::{Scale, Status};
use self::host::Host;
use self::tune::Scope;
use crate::server::config::{DataplaneKind, ServeArgs, ServeConfig};

/// What the host is checked for and which parts of it are read.
#[derive(Debug, Clone, Args)]
pub struct HostArgs {
    /// serve's TOML configuration: its `max_connections`, `cores` and `dataplane` set the
    /// scale checked.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Concurrent connections to check for [default: serve's max_connections, 1000000].
    #[arg(long, value_name = "N")]
    pub connections: Option<usize>,
    /// Dataplane cores, e.g. `2,3,4,5` [default: serve's cores, else every CPU].
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub cores: Vec<usize>,
    /// Dataplane serve will run [default: serve's dataplane, kernel].
    #[arg(long, value_enum)]
    pub dataplane: Option<DataplaneKind>,
    /// Network interface clients arrive on [default: the IPv4 default route's].
    #[arg(long, value_name = "IF")]
    pub iface: Option<String>,
    /// Read the limits of this process (a running `petrel serve`) instead of this shell's.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Find out native vs generic XDP by attaching Petrel's filter for a moment (root;
    /// some drivers reset their rings when a program is attached). Without it, by driver
    /// name.
    #[arg(long)]
    pub probe_xdp: bool,
}

impl HostArgs {
    fn scale(&self, host: &Host) -> anyhow::Result<Scale> {
        let config = ServeConfig::resolve(&ServeArgs {
            config: self.config.clone(),
            cores: self.cores.clone(),
            max_connections: self.connections,
            dataplane: self.dataplane,
            ..ServeArgs::default()
        })?;
        let cores = if config.cores.is_empty() {
            host.cpus.clone()
        } else {
            config.cores.clone()
        };
        Ok(Scale {
            connections: config.max_connections as u64,
            cores,
            dataplane: config.dataplane,
        })
    }

    /// serve's DPDK EAL arguments.
    fn eal_args(&self) -> anyhow::Result<Vec<String>> {
        let config = ServeConfig::resolve(&ServeArgs {
            config: self.config.clone(),
            ..ServeArgs::default()
        })?;
        Ok(config.dpdk.args)
    }

    fn read(&self) -> anyhow::Result<(Host, Scale)> {
        let host = Host::read(self.pid, self.iface.as_deref(), self.probe_xdp);
        let scale = self.scale(&host)?;
        Ok((host, scale))
    }
}

/// `petrel doctor`.
#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    host: HostArgs,
}

/// `petrel tune`.
#[derive(Debug, Clone, Args)]
pub struct TuneArgs {
    #[command(flatten)]
    host: HostArgs,
    /// Apply the changes (root).
    #[arg(long, conflicts_with = "dry_run", required_unless_present = "dry_run")]
    apply: bool,
    /// Print the changes without making them.
    #[arg(long)]
    dry_run: bool,
    /// Only these scopes, e.g. `net,nic` (`fs` and `irq` are machine-wide even inside a
    /// network namespace) [default: all].
    #[arg(long, value_enum, value_delimiter = ',', value_name = "SCOPES")]
    only: Vec<Scope>,
}

/// Exit status 1 when something blocks the configured scale, 0 otherwise.
pub fn doctor(args: &DoctorArgs) -> anyhow::Result<ExitCode> {
    let (host, scale) = args.host.read()?;
    let mut checks = doctor::evaluate(&host, &scale);
    if scale.dataplane == DataplaneKind::Dpdk {
        let eal_args = args.host.eal_args()?;
        checks.extend(dpdk::checks(
            &dpdk::DpdkHost::read(),
            &eal_args,
            &scale.cores,
        ));
    }
    print!("{}", doctor::render(&checks, &scale, &host));
    Ok(if checks.iter().any(|c| c.status == Status::Fail) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Exit status 1 when a selected change failed.
pub fn tune(args: &TuneArgs) -> anyhow::Result<ExitCode> {
    let (host, scale) = args.host.read()?;
    let checks = doctor::evaluate(&host, &scale);
    let changes: Vec<_> = checks.iter().flat_map(|c| c.changes.clone()).collect();
    let scopes = if args.only.is_empty() {
        Scope::ALL.to_vec()
    } else {
        args.only.clone()
    };
    println!(
        "petrel tune{}: {} connections, cores {}{}",
        if args.dry_run {
            " --dry-run"
        } else {
            " --apply"
        },
        doctor::thousands(scale.connections),
        procfs::format_cpu_list(&scale.cores),
        host.nic
            .as_ref()
            .map(|n| format!(", interface {}", n.name))
            .unwrap_or_default()
    );
    let (text, failed) = tune::run(&changes, &scopes, args.dry_run, args.host.pid);
    print!("{text}");
    if !args.dry_run
        && changes
            .iter()
            .any(|c| c.scope != Scope::Limits && scopes.contains(&c.scope))
    {
        println!(
            "runtime values only: install scripts/deploy/sysctl.d/90-petrel.conf in /etc/sysctl.d/ \
             (and the ethtool/IRQ lines of docs/OPERATIONS.md in a boot unit) to keep them"
        );
    }
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
