//! What `petrel doctor` and `petrel tune` know about the host: one plain [`Host`] value,
//! read live by [`Host::read`] (files under /proc and /sys, `SIOCETHTOOL`) or built from
//! captured fixtures in tests. Nothing here decides anything; [`super::doctor`] does.

use std::path::Path;

use petrel_dataplane::sys::ethtool::{self, Channels, NtupleFeature, NtupleRuleInfo, Rings};

use super::interrupts::{self, IrqNaming, QueueIrq};
use super::netdev;
use super::procfs::{self, ProcLimits};

/// The sysctls doctor checks; `None` when the file could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sysctls {
    /// `fs.nr_open`: the most descriptors one process may have (caps RLIMIT_NOFILE).
    pub nr_open: Option<u64>,
    /// `fs.file-max`: the most open files system-wide.
    pub file_max: Option<u64>,
    /// `net.core.somaxconn`: the cap on every listen backlog (per network namespace).
    pub somaxconn: Option<u64>,
    /// `net.ipv4.tcp_max_syn_backlog`: half-open connections per listener (per namespace).
    pub syn_backlog: Option<u64>,
    /// `net.ipv4.ip_local_port_range` (per namespace).
    pub port_range: Option<(u32, u32)>,
}

/// How XDP support was determined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XdpSupport {
    /// Attaching the filter in native (driver) mode succeeded (`--probe-xdp`).
    ProbedNative,
    /// Native mode was refused (the reason), generic mode attached (`--probe-xdp`).
    ProbedGeneric(String),
    /// Probing failed altogether (the reason).
    ProbeFailed(String),
    /// Not probed; the driver is known to implement native XDP.
    DriverNative(String),
    /// Not probed; the driver is not known to implement native XDP (generic only).
    DriverGeneric(String),
    /// Nothing known (no driver name).
    Unknown,
}

/// Drivers with native XDP (`ndo_bpf`) in Linux 6.x, as far as this list knows; a driver
/// missing here is reported as generic-only "by driver name", and `--probe-xdp` settles
/// it. AF_XDP zero-copy is a subset (ixgbe, i40e, ice, igb, igc, mlx5_core, stmmac, ...).
pub const NATIVE_XDP_DRIVERS: &[&str] = &[
    "atlantic",
    "bnxt_en",
    "cpsw",
    "dpaa2-eth",
    "ena",
    "enetc",
    "fec",
    "funeth",
    "gve",
    "hv_netvsc",
    "i40e",
    "ice",
    "idpf",
    "igb",
    "igc",
    "ixgbe",
    "ixgbevf",
    "mana",
    "mlx4_en",
    "mlx5_core",
    "mvneta",
    "mvpp2",
    "netdevsim",
    "nfp",
    "nicvf",
    "octeontx2-nicpf",
    "qede",
    "sfc",
    "stmmac",
    "tun",
    "veth",
    "virtio_net",
    "vmxnet3",
    "xen-netfront",
];

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// Interface name.
    pub name: String,
    /// Driver name and bus address (`ethtool -i`), or why they could not be read.
    pub driver: Result<(String, String), String>,
    /// Ring sizes (`ethtool -g`), or why not (veth has none).
    pub rings: Result<Rings, String>,
    /// Channel counts (`ethtool -l`), or why not.
    pub channels: Result<Channels, String>,
    /// `rx-N` / `tx-N` directories under `/sys/class/net/IF/queues`.
    pub sysfs_queues: (usize, usize),
    /// The ntuple feature (`ethtool -k`), or why not.
    pub ntuple: Result<NtupleFeature, String>,
    /// Installed ntuple rules (`ethtool -n`), or why not.
    pub rules: Result<Vec<NtupleRuleInfo>, String>,
    /// The queue interrupts, each with its current affinity.
    pub irqs: Vec<(QueueIrq, Vec<usize>)>,
    /// Whether the IRQ naming of this driver is one doctor understands (false: no IRQs
    /// found although the interface has a device).
    pub has_device: bool,
    /// XDP support.
    pub xdp: XdpSupport,
}

/// A running DAMON monitor thread (`kdamond.N`): the kernel's data-access monitor, set
/// up by some hosts for proactive reclaim. It runs for milliseconds at a time on the
/// CPUs it may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kdamond {
    /// `N` of `/sys/kernel/mm/damon/admin/kdamonds/N`.
    pub index: u32,
    /// Its thread, if the kernel reports one.
    pub pid: Option<u32>,
    /// The CPUs it may run on (`Cpus_allowed_list`), if readable.
    pub cpus: Option<Vec<usize>>,
}

/// DAMON's admin directory in sysfs.
pub const DAMON_ADMIN: &str = "/sys/kernel/mm/damon/admin/kdamonds";

/// The running kdamonds under `admin` (a `kdamonds` directory), with their CPUs from
/// `/proc/PID/status`. None where DAMON is not built in or nothing runs.
pub fn read_kdamonds(admin: &Path) -> Vec<Kdamond> {
    let Ok(entries) = std::fs::read_dir(admin) else {
        return Vec::new();
    };
    let mut out: Vec<Kdamond> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let index: u32 = e.file_name().to_str()?.parse().ok()?;
            let state = read(e.path().join("state"))?;
            if state.trim() != "on" {
                return None;
            }
            let pid = read(e.path().join("pid")).and_then(|t| t.trim().parse::<u32>().ok());
            let cpus = pid
                .and_then(|p| read(format!("/proc/{p}/status")))
                .and_then(|t| procfs::parse_cpus_allowed(&t));
            Some(Kdamond { index, pid, cpus })
        })
        .collect();
    out.sort_by_key(|k| k.index);
    out
}

/// Everything doctor looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Whose limits [`Host::limits`] are (`this shell` or `pid N`).
    pub limits_of: String,
    /// RLIMIT_NOFILE and RLIMIT_NPROC.
    pub limits: Option<ProcLimits>,
    /// Sysctls.
    pub sysctls: Sysctls,
    /// Online CPUs.
    pub cpus: Vec<usize>,
    /// The interface checked, if any.
    pub nic: Option<Nic>,
    /// Why no interface is checked, when [`Host::nic`] is `None`.
    pub no_nic: Option<String>,
    /// Running DAMON monitor threads.
    pub kdamonds: Vec<Kdamond>,
}

fn read(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn err(e: std::io::Error) -> String {
    if ethtool::is_unsupported(&e) {
        "not supported by the driver".into()
    } else {
        e.to_string()
    }
}

impl Host {
    /// Reads the live host. `pid` selects whose limits to read (default: this process);
    /// `iface` the interface (default: the one of the IPv4 default route); `probe_xdp`
    /// attaches and detaches the XDP filter to find out native vs generic (root).
    pub fn read(pid: Option<u32>, iface: Option<&str>, probe_xdp: bool) -> Host {
        let (limits_of, limits_path) = match pid {
            Some(p) => (format!("pid {p}"), format!("/proc/{p}/limits")),
            None => ("this shell".to_owned(), "/proc/self/limits".to_owned()),
        };
        let sysctl = |name: &str| read(format!("/proc/sys/{name}"));
        let sysctls = Sysctls {
            nr_open: sysctl("fs/nr_open").and_then(|t| procfs::parse_sysctl_u64(&t)),
            file_max: sysctl("fs/file-max").and_then(|t| procfs::parse_sysctl_u64(&t)),
            somaxconn: sysctl("net/core/somaxconn").and_then(|t| procfs::parse_sysctl_u64(&t)),
            syn_backlog: sysctl("net/ipv4/tcp_max_syn_backlog")
                .and_then(|t| procfs::parse_sysctl_u64(&t)),
            port_range: sysctl("net/ipv4/ip_local_port_range")
                .and_then(|t| procfs::parse_port_range(&t)),
        };
        let cpus = read("/sys/devices/system/cpu/online")
            .and_then(|t| procfs::parse_cpu_list(&t))
            .unwrap_or_else(petrel_dataplane::pin::available_cpus);
        let iface = iface
            .map(str::to_owned)
            .or_else(|| read("/proc/net/route").and_then(|t| procfs::parse_default_route(&t)));
        let (nic, no_nic) = match iface {
            Some(name) if Path::new(&format!("/sys/class/net/{name}")).exists() => {
                (Some(read_nic(&name, probe_xdp)), None)
            }
            Some(name) => (None, Some(format!("no interface {name:?} here"))),
            None => (
                None,
                Some("no IPv4 default route; name one with --iface".to_owned()),
            ),
        };
        Host {
            limits_of,
            limits: read(limits_path).and_then(|t| procfs::parse_limits(&t)),
            sysctls,
            cpus,
            nic,
            no_nic,
            kdamonds: read_kdamonds(Path::new(DAMON_ADMIN)),
        }
    }
}

fn read_nic(name: &str, probe_xdp: bool) -> Nic {
    let driver = ethtool::driver_info(name)
        .map(|d| (d.driver, d.bus_info))
        .map_err(err);
    let dir = format!("/sys/class/net/{name}");
    let sysfs_queues = std::fs::read_dir(format!("{dir}/queues"))
        .map(|entries| {
            let names: Vec<String> = entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect();
            netdev::count_queues(names.iter().map(String::as_str))
        })
        .unwrap_or((0, 0));
    let device = std::fs::read_link(format!("{dir}/device"))
        .ok()
        .and_then(|p| p.file_name()?.to_str().map(str::to_owned));
    let naming = IrqNaming {
        iface: name.to_owned(),
        device: device.clone(),
        bus_info: driver.as_ref().ok().map(|(_, bus)| bus.clone()),
    };
    let lines = read("/proc/interrupts")
        .map(|t| interrupts::parse_interrupts(&t))
        .unwrap_or_default();
    let irqs = interrupts::queue_irqs(&lines, &naming)
        .into_iter()
        .map(|q| {
            let affinity = read(format!("/proc/irq/{}/smp_affinity_list", q.irq))
                .and_then(|t| procfs::parse_cpu_list(&t))
                .unwrap_or_default();
            (q, affinity)
        })
        .collect();
    let driver_name = driver.as_ref().ok().map(|(d, _)| d.clone());
    let xdp = if probe_xdp {
        probe(name)
    } else {
        match driver_name {
            Some(d) if NATIVE_XDP_DRIVERS.contains(&d.as_str()) => XdpSupport::DriverNative(d),
            Some(d) => XdpSupport::DriverGeneric(d),
            None => XdpSupport::Unknown,
        }
    };
    Nic {
        name: name.to_owned(),
        driver,
        rings: ethtool::rings(name).map_err(err),
        channels: ethtool::channels(name).map_err(err),
        sysfs_queues,
        ntuple: ethtool::ntuple_feature(name).map_err(err),
        rules: ethtool::ntuple_rules(name).map_err(err),
        irqs,
        has_device: device.is_some(),
        xdp,
    }
}

/// Loads Petrel's XDP filter, attaches it in native mode and, if refused, in generic
/// mode; detaches it again at once (dropping the filter). With no ports configured the
/// program passes every packet, so traffic is not affected (some drivers briefly reset
/// their rings when a program is attached).
fn probe(iface: &str) -> XdpSupport {
    use petrel_dataplane::xdp::filter::{AttachMode, XdpFilter};
    let mut filter = match XdpFilter::load() {
        Ok(f) => f,
        Err(e) => return XdpSupport::ProbeFailed(format!("loading the filter: {e}")),
    };
    use petrel_dataplane::xdp::filter::FilterError;
    match filter.attach(iface, AttachMode::Driver) {
        Ok(_) => XdpSupport::ProbedNative,
        Err(error) => {
            let native = match error {
                FilterError::Attach { native, .. } => native,
                other => other.to_string(),
            };
            match filter.attach(iface, AttachMode::Generic) {
                Ok(_) => XdpSupport::ProbedGeneric(native),
                Err(e) => XdpSupport::ProbeFailed(e.to_string()),
            }
        }
    }
}

/// Builds a [`Host`] from a directory of captured files (`tests/fixtures/ops/NAME/`):
/// `proc-self-limits`, `sysctl` (`name = value` lines), `proc-interrupts`, `irq-affinity`
/// (`IRQ LIST` lines) and `ethtool-{i,g,l,k}-IF` text.
#[cfg(test)]
pub fn from_fixture(name: &str, iface: &str, cpus: Vec<usize>, device: Option<&str>) -> Host {
    let dir = format!("{}/tests/fixtures/ops/{name}", env!("CARGO_MANIFEST_DIR"));
    let file = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).ok();
    let sysctl_text = file("sysctl").unwrap_or_default();
    let sysctl = |key: &str| {
        sysctl_text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim_start().strip_prefix('='))
            .map(str::trim)
            .map(str::to_owned)
    };
    let sysctls = Sysctls {
        nr_open: sysctl("fs.nr_open").and_then(|v| procfs::parse_sysctl_u64(&v)),
        file_max: sysctl("fs.file-max").and_then(|v| procfs::parse_sysctl_u64(&v)),
        somaxconn: sysctl("net.core.somaxconn").and_then(|v| procfs::parse_sysctl_u64(&v)),
        syn_backlog: sysctl("net.ipv4.tcp_max_syn_backlog")
            .and_then(|v| procfs::parse_sysctl_u64(&v)),
        port_range: sysctl("net.ipv4.ip_local_port_range")
            .and_then(|v| procfs::parse_port_range(&v)),
    };
    let missing = || "no fixture".to_owned();
    let driver = file(&format!("ethtool-i-{iface}"))
        .and_then(|t| netdev::parse_ethtool_driver(&t))
        .ok_or_else(missing);
    let affinity_text = file("irq-affinity").unwrap_or_default();
    let affinity = |irq: u32| {
        affinity_text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (n, list) = l.split_once(' ')?;
                (n.parse::<u32>().ok()? == irq).then(|| procfs::parse_cpu_list(list))?
            })
            .unwrap_or_default()
    };
    let naming = IrqNaming {
        iface: iface.to_owned(),
        device: device.map(str::to_owned),
        bus_info: driver.as_ref().ok().map(|(_, b)| b.clone()),
    };
    let lines = interrupts::parse_interrupts(&file("proc-interrupts").unwrap_or_default());
    let irqs = interrupts::queue_irqs(&lines, &naming)
        .into_iter()
        .map(|q| {
            let a = affinity(q.irq);
            (q, a)
        })
        .collect();
    let channels = file(&format!("ethtool-l-{iface}"))
        .and_then(|t| netdev::parse_ethtool_channels(&t))
        .ok_or_else(missing);
    let rx = channels.as_ref().map_or(1, |c| c.rx_queues() as usize);
    let xdp = match driver.as_ref().ok() {
        Some((d, _)) if NATIVE_XDP_DRIVERS.contains(&d.as_str()) => {
            XdpSupport::DriverNative(d.clone())
        }
        Some((d, _)) => XdpSupport::DriverGeneric(d.clone()),
        None => XdpSupport::Unknown,
    };
    let ntuple = file(&format!("ethtool-k-{iface}"))
        .and_then(|t| netdev::parse_ethtool_ntuple(&t))
        .ok_or_else(missing);
    let rules = match &ntuple {
        Ok(f) if f.active => Ok(Vec::new()),
        _ => Err("not supported by the driver".to_owned()),
    };
    Host {
        limits_of: "this shell".into(),
        limits: file("proc-self-limits").and_then(|t| procfs::parse_limits(&t)),
        sysctls,
        cpus,
        nic: Some(Nic {
            name: iface.to_owned(),
            driver,
            rings: file(&format!("ethtool-g-{iface}"))
                .and_then(|t| netdev::parse_ethtool_rings(&t))
                .ok_or_else(missing),
            channels,
            sysfs_queues: (rx, rx),
            ntuple,
            rules,
            irqs,
            has_device: true,
            xdp,
        }),
        no_nic: None,
        // `kdamonds`: one line per running monitor, `INDEX PID CPULIST`.
        kdamonds: file("kdamonds")
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some(Kdamond {
                    index: f.next()?.parse().ok()?,
                    pid: f.next()?.parse().ok(),
                    cpus: f.next().and_then(procfs::parse_cpu_list),
                })
            })
            .collect(),
    }
}
