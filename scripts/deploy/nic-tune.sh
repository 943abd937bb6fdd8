#!/usr/bin/env bash
# NIC settings that sysctl.d cannot keep: ring sizes, queue count and IRQ affinity, as
# `petrel tune --apply --only nic,irq` sets them (the seed platform ran the same ethtool
# lines by hand). Run at boot after the interface is up, e.g. from a oneshot unit:
#   ExecStart=/usr/local/bin/petrel tune --apply --only nic,irq --config /etc/petrel/petrel.toml
# or, without petrel installed, edit and run this script. Stop irqbalance first, or it
# moves the IRQs back (systemctl disable --now irqbalance).
set -euo pipefail
IF="${1:-em1}"
QUEUES="${QUEUES:-16}"
ethtool -G "$IF" rx 4096 tx 4096 || echo "ring sizes: not supported by $IF's driver"
ethtool -L "$IF" combined "$QUEUES" || echo "queue count: not supported by $IF's driver"
# Queue N's IRQ on dataplane core N (adjust to the cores in petrel.toml).
n=0
for irq in $(grep -E "${IF}-(TxRx|rx|tx)-[0-9]+" /proc/interrupts | cut -d: -f1); do
    echo "$n" > "/proc/irq/$irq/smp_affinity_list"
    n=$((n + 1))
done
# The AF_XDP dataplane on one queue steers its port there (Flow Director); on several
# queues it serves every queue and needs no rule.
# ethtool --features "$IF" ntuple on
# ethtool --config-ntuple "$IF" flow-type tcp4 dst-port 9500 action 0 loc 1
