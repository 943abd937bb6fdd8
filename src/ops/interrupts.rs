//! Pure parser for `/proc/interrupts`, and the mapping from a NIC's queues to its IRQs.
//!
//! Drivers name their queue interrupts differently; the ones recognised here:
//! - `IF-TxRx-N`, `IF-rx-N`, `IF-tx-N` (ixgbe, i40e, ice, igb, bnxt, ena, ...);
//! - `virtioD-input.N` / `virtioD-output.N`, where `virtioD` is the interface's device
//!   (`/sys/class/net/IF/device`);
//! - `mlx5_compN@pci:BUS` (mlx5), matched by the interface's PCI bus address.
//!
//! Other names are not mapped, and doctor says so instead of guessing.

/// One numbered row of `/proc/interrupts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IrqLine {
    /// The IRQ number (`/proc/irq/N/`).
    pub irq: u32,
    /// Interrupts handled, per CPU column.
    pub per_cpu: Vec<u64>,
    /// The action names (usually one device or queue name).
    pub actions: Vec<String>,
}

/// Parses `/proc/interrupts`: the numbered rows only (NMI, LOC, ... are skipped).
pub fn parse_interrupts(text: &str) -> Vec<IrqLine> {
    let mut lines = text.lines();
    let cpus = lines.next().map_or(0, |h| h.split_whitespace().count());
    lines
        .filter_map(|line| {
            let (irq, rest) = line.trim_start().split_once(':')?;
            let irq: u32 = irq.parse().ok()?;
            let mut fields = rest.split_whitespace();
            let per_cpu: Vec<u64> = fields
                .by_ref()
                .take(cpus)
                .map(|f| f.parse().unwrap_or(0))
                .collect();
            // Then the chip name and the hardware IRQ with its trigger type, then the
            // actions, comma-separated.
            let rest: Vec<&str> = fields.skip(2).collect();
            let actions = rest
                .join(" ")
                .split(',')
                .map(|a| a.trim().to_owned())
                .filter(|a| !a.is_empty())
                .collect();
            Some(IrqLine {
                irq,
                per_cpu,
                actions,
            })
        })
        .collect()
}

/// Which way a queue interrupt serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    /// A combined rx+tx queue pair.
    Combined,
    /// Receive only.
    Rx,
    /// Transmit only.
    Tx,
}

/// One queue interrupt of a NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueIrq {
    /// The IRQ number.
    pub irq: u32,
    /// The action name it was recognised by.
    pub name: String,
    /// The queue index.
    pub queue: usize,
    /// What the queue carries.
    pub kind: QueueKind,
}

/// How a NIC's queue interrupts are named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IrqNaming {
    /// The interface name (`em1`).
    pub iface: String,
    /// The device name behind it for virtio (`virtio2`), if any.
    pub device: Option<String>,
    /// The PCI bus address (`0000:03:00.0`), if any.
    pub bus_info: Option<String>,
}

/// The queue interrupts of the NIC named by `naming`, sorted by queue then IRQ.
pub fn queue_irqs(lines: &[IrqLine], naming: &IrqNaming) -> Vec<QueueIrq> {
    let mut out = Vec::new();
    for line in lines {
        for name in &line.actions {
            if let Some((queue, kind)) = classify(name, naming) {
                out.push(QueueIrq {
                    irq: line.irq,
                    name: name.clone(),
                    queue,
                    kind,
                });
            }
        }
    }
    out.sort_by_key(|q| (q.queue, q.irq));
    out
}

fn trailing_number(s: &str) -> Option<usize> {
    let digits = s.len() - s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 {
        return None;
    }
    s[s.len() - digits..].parse().ok()
}

fn classify(name: &str, naming: &IrqNaming) -> Option<(usize, QueueKind)> {
    if let Some(rest) = name.strip_prefix(&format!("{}-", naming.iface)) {
        let lower = rest.to_ascii_lowercase();
        let kind = if lower.contains("txrx") || lower.contains("combined") {
            QueueKind::Combined
        } else if lower.starts_with("rx") {
            QueueKind::Rx
        } else if lower.starts_with("tx") {
            QueueKind::Tx
        } else {
            QueueKind::Combined
        };
        return Some((trailing_number(rest)?, kind));
    }
    if let Some(device) = &naming.device
        && let Some(rest) = name.strip_prefix(&format!("{device}-"))
    {
        if let Some(q) = rest.strip_prefix("input.") {
            return Some((q.parse().ok()?, QueueKind::Rx));
        }
        if let Some(q) = rest.strip_prefix("output.") {
            return Some((q.parse().ok()?, QueueKind::Tx));
        }
        return None;
    }
    if let Some(bus) = &naming.bus_info
        && !bus.is_empty()
        && let Some((head, at)) = name.split_once('@')
        && at.ends_with(bus.as_str())
        && head.contains("comp")
    {
        return Some((trailing_number(head)?, QueueKind::Combined));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_vms_virtio_queues_are_found_by_device_name() {
        let lines = parse_interrupts(include_str!(
            "../../tests/fixtures/ops/vm-2cpu/proc-interrupts"
        ));
        let ttys = lines.iter().find(|l| l.irq == 26).unwrap();
        assert_eq!(ttys.per_cpu, vec![0, 9]);
        assert_eq!(ttys.actions, vec!["ttyS0"]);
        let naming = IrqNaming {
            iface: "eth0".into(),
            device: Some("virtio2".into()),
            bus_info: Some("0000:00:03.0".into()),
        };
        let queues = queue_irqs(&lines, &naming);
        assert_eq!(
            queues,
            vec![
                QueueIrq {
                    irq: 38,
                    name: "virtio2-input.0".into(),
                    queue: 0,
                    kind: QueueKind::Rx
                },
                QueueIrq {
                    irq: 39,
                    name: "virtio2-output.0".into(),
                    queue: 0,
                    kind: QueueKind::Tx
                },
            ]
        );
    }

    #[test]
    fn ixgbe_txrx_queues_are_found_by_interface_name() {
        let lines = parse_interrupts(include_str!(
            "../../tests/fixtures/ops/ixgbe-8cpu/proc-interrupts"
        ));
        let naming = IrqNaming {
            iface: "em1".into(),
            ..IrqNaming::default()
        };
        let queues = queue_irqs(&lines, &naming);
        assert_eq!(queues.len(), 8, "{queues:?}");
        for (i, q) in queues.iter().enumerate() {
            assert_eq!(
                (q.irq, q.queue, q.kind),
                (120 + i as u32, i, QueueKind::Combined)
            );
        }
        // The link interrupt "em1" and other devices are not queues.
        assert!(queues.iter().all(|q| q.name.starts_with("em1-TxRx-")));
        assert_eq!(
            lines.iter().find(|l| l.irq == 127).unwrap().per_cpu[7],
            7_889_348
        );
    }

    #[test]
    fn mlx5_completion_queues_are_found_by_bus_address() {
        let text = "           CPU0       CPU1\n\
                    140:          5          0  IR-PCI-MSI-0000:3b:00.0    1-edge      mlx5_comp0@pci:0000:3b:00.0\n\
                    141:          0          7  IR-PCI-MSI-0000:3b:00.0    2-edge      mlx5_comp1@pci:0000:3b:00.0\n\
                    142:          0          7  IR-PCI-MSI-0000:3b:00.1    2-edge      mlx5_comp0@pci:0000:3b:00.1\n\
                    150:          1          0  IR-PCI-MSI    3-edge      ens2f0-rx-0, ens2f0-tx-0\n";
        let lines = parse_interrupts(text);
        let naming = IrqNaming {
            iface: "ens1f0np0".into(),
            device: None,
            bus_info: Some("0000:3b:00.0".into()),
        };
        let q: Vec<(u32, usize)> = queue_irqs(&lines, &naming)
            .iter()
            .map(|q| (q.irq, q.queue))
            .collect();
        assert_eq!(q, vec![(140, 0), (141, 1)]);
        let shared = queue_irqs(
            &lines,
            &IrqNaming {
                iface: "ens2f0".into(),
                ..IrqNaming::default()
            },
        );
        let kinds: Vec<QueueKind> = shared.iter().map(|q| q.kind).collect();
        assert_eq!(kinds, vec![QueueKind::Rx, QueueKind::Tx]);
    }
}
