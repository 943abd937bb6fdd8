//! `petrel doctor`'s DPDK readiness lines (shown with `dataplane = "dpdk"`): whether this
//! binary has DPDK, hugepages, the IOMMU and vfio-pci a real NIC needs, and the EAL
//! arguments serve would use. [`DpdkHost::read`] reads /sys only (no EAL is started);
//! [`checks`] is pure and unit-tested.

use std::path::Path;

use super::doctor::{Check, Status};

/// What the host offers DPDK.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DpdkHost {
    /// This `petrel` was built with the cargo feature `dpdk`.
    pub built_with_dpdk: bool,
    /// Hugepage pools: (page size in kB, pages reserved, pages free).
    pub hugepages: Vec<(u64, u64, u64)>,
    /// IOMMU groups (`/sys/kernel/iommu_groups`); 0 when the IOMMU is off.
    pub iommu_groups: usize,
    /// The vfio-pci driver is loaded (`/sys/bus/pci/drivers/vfio-pci`).
    pub vfio_pci: bool,
    /// PCI devices bound to vfio-pci.
    pub vfio_devices: Vec<String>,
    /// vfio's unsafe no-IOMMU mode is on.
    pub noiommu: bool,
}

fn count_dir(path: &Path) -> usize {
    std::fs::read_dir(path).map_or(0, |d| d.count())
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl DpdkHost {
    /// Reads the host from /sys.
    pub fn read() -> DpdkHost {
        let mut hugepages = Vec::new();
        if let Ok(dir) = std::fs::read_dir("/sys/kernel/mm/hugepages") {
            for entry in dir.flatten() {
                let name = entry.file_name();
                let Some(kb) = name
                    .to_str()
                    .and_then(|n| n.strip_prefix("hugepages-"))
                    .and_then(|n| n.strip_suffix("kB"))
                    .and_then(|n| n.parse().ok())
                else {
                    continue;
                };
                let total = read_u64(&entry.path().join("nr_hugepages")).unwrap_or(0);
                let free = read_u64(&entry.path().join("free_hugepages")).unwrap_or(0);
                hugepages.push((kb, total, free));
            }
        }
        hugepages.sort_unstable();
        let vfio = Path::new("/sys/bus/pci/drivers/vfio-pci");
        let mut vfio_devices: Vec<String> = std::fs::read_dir(vfio)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.contains(':') && n.contains('.'))
                    .collect()
            })
            .unwrap_or_default();
        vfio_devices.sort();
        DpdkHost {
            built_with_dpdk: cfg!(feature = "dpdk"),
            hugepages,
            iommu_groups: count_dir(Path::new("/sys/kernel/iommu_groups")),
            vfio_pci: vfio.exists(),
            vfio_devices,
            noiommu: std::fs::read_to_string(
                "/sys/module/vfio/parameters/enable_unsafe_noiommu_mode",
            )
            .is_ok_and(|v| v.trim() == "Y"),
        }
    }
}

/// The DPDK lines for serve's `eal_args` (empty: not configured) and dataplane `cores`.
pub fn checks(host: &DpdkHost, eal_args: &[String], cores: &[usize]) -> Vec<Check> {
    let mut out = Vec::new();
    out.push(if host.built_with_dpdk {
        Check::new("DPDK: in this binary", Status::Ok, "built with the dpdk feature")
    } else {
        Check::new(
            "DPDK: in this binary",
            Status::Fail,
            "built without the dpdk feature: --dataplane dpdk refuses to start",
        )
        .fix("apt-get install dpdk-dev libdpdk-dev pkg-config && cargo build --release --features dpdk")
    });

    let reserved: Vec<String> = host
        .hugepages
        .iter()
        .filter(|(_, total, _)| *total > 0)
        .map(|(kb, total, free)| format!("{total} × {kb} kB ({free} free)"))
        .collect();
    out.push(if reserved.is_empty() {
        Check::new("DPDK: hugepages", Status::Warn, "none reserved")
            .recommend("1 GiB or more of 2 MB pages")
            .note("without hugepages the EAL only runs with --no-huge -m MB, for vdevs and tests: a real NIC needs pinned hugepage memory for DMA")
            .fix("echo 512 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages (or vm.nr_hugepages in /etc/sysctl.d; hugepagesz=1G hugepages=N on the kernel command line for 1 GB pages)")
    } else {
        Check::new("DPDK: hugepages", Status::Ok, reserved.join(", "))
    });

    out.push(if host.iommu_groups > 0 {
        Check::new(
            "DPDK: IOMMU",
            Status::Ok,
            format!("on ({} groups)", host.iommu_groups),
        )
    } else if host.noiommu {
        Check::new(
            "DPDK: IOMMU",
            Status::Warn,
            "off; vfio's unsafe no-IOMMU mode is on (no DMA isolation)",
        )
    } else {
        Check::new("DPDK: IOMMU", Status::Warn, "off (no IOMMU groups)")
            .note("vfio-pci, the driver a DPDK NIC is bound to, needs the IOMMU (or its unsafe no-IOMMU mode)")
            .fix("intel_iommu=on iommu=pt (or amd_iommu=on) on the kernel command line, then reboot")
    });

    out.push(if !host.vfio_devices.is_empty() {
        Check::new(
            "DPDK: NICs bound to vfio-pci",
            Status::Ok,
            host.vfio_devices.join(", "),
        )
    } else {
        Check::new(
            "DPDK: NICs bound to vfio-pci",
            Status::Warn,
            if host.vfio_pci {
                "none (vfio-pci loaded)"
            } else {
                "none (vfio-pci not loaded)"
            },
        )
        .note("a NIC bound to vfio-pci leaves the kernel (no SSH on it): keep a management NIC; vdevs (net_af_packet, net_af_xdp) need no binding")
        .fix("modprobe vfio-pci && dpdk-devbind.py --bind=vfio-pci 0000:03:00.0 (dpdk-devbind.py --status lists the NICs)")
    });

    let lcore = cores.first().copied().unwrap_or(0);
    let (current, note) = if eal_args.is_empty() {
        let suggestion = match (host.vfio_devices.first(), reserved.is_empty()) {
            (Some(pci), false) => format!("-l {lcore} --in-memory -a {pci}"),
            _ => format!("-l {lcore} --no-huge -m 512 --no-pci --vdev=net_af_packet0,iface=IF"),
        };
        (
            "none configured (dpdk_args / --dpdk-args)".to_owned(),
            format!("would suit this host: --dpdk-args \"{suggestion}\""),
        )
    } else {
        (
            eal_args.join(" "),
            "serve initialises the EAL with these once at start".to_owned(),
        )
    };
    out.push(Check::new("DPDK: EAL arguments", Status::Info, current).note(note));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(checks: &'a [Check], name: &str) -> &'a Check {
        checks.iter().find(|c| c.name == name).expect(name)
    }

    #[test]
    fn a_bare_vm_is_told_what_a_real_nic_needs_and_offered_vdev_arguments() {
        let host = DpdkHost {
            built_with_dpdk: true,
            hugepages: vec![(2048, 0, 0)],
            ..DpdkHost::default()
        };
        let checks = checks(&host, &[], &[1]);
        assert_eq!(find(&checks, "DPDK: in this binary").status, Status::Ok);
        assert_eq!(find(&checks, "DPDK: hugepages").status, Status::Warn);
        assert_eq!(find(&checks, "DPDK: IOMMU").status, Status::Warn);
        assert_eq!(
            find(&checks, "DPDK: NICs bound to vfio-pci").status,
            Status::Warn
        );
        let eal = find(&checks, "DPDK: EAL arguments");
        assert!(
            eal.note.as_deref().unwrap().contains("-l 1 --no-huge"),
            "{eal:?}"
        );
    }

    #[test]
    fn a_ready_host_is_ok_and_gets_pci_arguments() {
        let host = DpdkHost {
            built_with_dpdk: true,
            hugepages: vec![(2048, 512, 500)],
            iommu_groups: 40,
            vfio_pci: true,
            vfio_devices: vec!["0000:03:00.0".into()],
            noiommu: false,
        };
        let checks = checks(&host, &[], &[2, 3]);
        assert!(
            checks[..4].iter().all(|c| c.status == Status::Ok),
            "{checks:#?}"
        );
        let eal = find(&checks, "DPDK: EAL arguments");
        assert!(
            eal.note
                .as_deref()
                .unwrap()
                .contains("-l 2 --in-memory -a 0000:03:00.0"),
            "{eal:?}"
        );
        let configured = checks_for_args(&host);
        assert_eq!(configured.current, "-l 2 -a 0000:03:00.0");
    }

    fn checks_for_args(host: &DpdkHost) -> Check {
        let args: Vec<String> = ["-l", "2", "-a", "0000:03:00.0"].map(String::from).to_vec();
        checks(host, &args, &[2])
            .into_iter()
            .find(|c| c.name == "DPDK: EAL arguments")
            .unwrap()
    }

    #[test]
    fn a_binary_without_the_feature_fails_with_the_rebuild_command() {
        let checks = checks(&DpdkHost::default(), &[], &[0]);
        let c = find(&checks, "DPDK: in this binary");
        assert_eq!(c.status, Status::Fail);
        assert!(c.fix[0].contains("--features dpdk"));
    }
}
