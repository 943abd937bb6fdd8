#!/usr/bin/env bash
# The veth lab: a private two-host network on one machine for the AF_XDP dataplane.
#
#   host (root namespace)                      namespace "petrel-lab"
#   petrel-h  10.77.0.1/24  <──── veth ────>  petrel-n  10.77.0.2/24
#   (petrel serve --dataplane xdp binds here)  (kernel-TCP clients run here:
#   route 10.78.0.0/16 dev petrel-h             ip netns exec petrel-lab ...;
#                                               petrel bench --client-mode xdp owns
#                                               10.78.0.0/16 on petrel-n, which the
#                                               namespace's kernel does not have)
#
# Usage: scripts/veth-lab.sh up|down|status
#   up      create everything (idempotent: a half-built lab is torn down and rebuilt)
#   down    remove everything; safe to run any number of times, also after a failure
#   status  print what exists; exit 0 if the lab is fully up, 1 otherwise
#
# Names and addresses can be overridden with PETREL_LAB_NS, PETREL_LAB_HOST_IF,
# PETREL_LAB_PEER_IF, PETREL_LAB_HOST_ADDR, PETREL_LAB_PEER_ADDR (prefix length is /24)
# and PETREL_LAB_CLIENT_NET (the AF_XDP load generator's source network).
# PETREL_LAB_BARE_HOST=1 leaves the host end without an address, for a DPDK port
# (net_af_packet) that owns PETREL_LAB_HOST_ADDR itself: were the kernel to have it too,
# it would answer the same SYNs and reset Petrel's connections.
# Only these two addresses, on these two interfaces, and the one route to the client
# network through the lab's own veth are ever configured: the lab never touches another
# interface or route of the machine (deleting the veth removes the route).
#
# Both veth ends get two rx and two tx queues so per-queue AF_XDP sockets can be tried.
# (A veth created without numrxqueues has one rx queue; XDP on veth delivers on the rx
# queue matching the sender's tx queue.)
set -euo pipefail

NS=${PETREL_LAB_NS:-petrel-lab}
HOST_IF=${PETREL_LAB_HOST_IF:-petrel-h}
PEER_IF=${PETREL_LAB_PEER_IF:-petrel-n}
HOST_ADDR=${PETREL_LAB_HOST_ADDR:-10.77.0.1}
PEER_ADDR=${PETREL_LAB_PEER_ADDR:-10.77.0.2}
QUEUES=${PETREL_LAB_QUEUES:-2}
# Set but empty: no route (a lab with no AF_XDP load generator).
CLIENT_NET=${PETREL_LAB_CLIENT_NET-10.78.0.0/16}
BARE_HOST=${PETREL_LAB_BARE_HOST:-0}

die() { echo "veth-lab: $*" >&2; exit 1; }
have_ns() { ip netns list 2>/dev/null | grep -qw -- "$NS"; }
have_host_if() { ip link show dev "$HOST_IF" >/dev/null 2>&1; }

lab_down() {
  # A program left attached by a killed server would outlive nothing here (deleting the
  # veth drops it), but detach explicitly so a kept interface is clean too.
  if have_host_if; then
    ip link set dev "$HOST_IF" xdp off 2>/dev/null || true
    ip link set dev "$HOST_IF" xdpgeneric off 2>/dev/null || true
    # Deleting one end of a veth pair deletes both.
    ip link del dev "$HOST_IF" 2>/dev/null || true
  fi
  if have_ns; then
    ip netns del "$NS" 2>/dev/null || true
  fi
  ! have_host_if && ! have_ns || die "could not remove the lab completely"
}

lab_up() {
  [[ $(id -u) -eq 0 ]] || die "must run as root (creates a network namespace and a veth pair)"
  command -v ip >/dev/null || die "'ip' (iproute2) not found"
  command -v ethtool >/dev/null || die "'ethtool' not found (scripts/setup.sh installs it)"
  if lab_status >/dev/null 2>&1; then
    echo "veth-lab: already up"
    return 0
  fi
  # Anything half-built from an earlier failure goes first.
  lab_down
  # From here on, a failing step leaves nothing behind.
  trap 'lab_down; die "up failed; lab removed"' ERR

  ip netns add "$NS"
  ip link add "$HOST_IF" numtxqueues "$QUEUES" numrxqueues "$QUEUES" type veth \
    peer name "$PEER_IF" numtxqueues "$QUEUES" numrxqueues "$QUEUES"
  ip link set dev "$PEER_IF" netns "$NS"

  if [[ $BARE_HOST != 1 ]]; then
    ip addr add "$HOST_ADDR/24" dev "$HOST_IF"
  fi
  ip link set dev "$HOST_IF" up
  # The AF_XDP load generator (petrel bench --client-mode xdp) sends from addresses of
  # this network; a kernel-mode server answers them through the lab's veth (and resolves
  # them with ARP, which the load generator answers).
  if [[ -n $CLIENT_NET ]]; then
    ip route add "$CLIENT_NET" dev "$HOST_IF" ||
      die "cannot route $CLIENT_NET to $HOST_IF (another lab up? set PETREL_LAB_CLIENT_NET)"
  fi
  ip netns exec "$NS" ip addr add "$PEER_ADDR/24" dev "$PEER_IF"
  ip netns exec "$NS" ip link set dev "$PEER_IF" up
  ip netns exec "$NS" ip link set dev lo up

  # Checksum offload off on the client side. A veth with tx offload on hands its peer
  # packets whose TCP checksum is only partial (CHECKSUM_PARTIAL: the kernel expects the
  # "NIC" to finish it, and the receiving kernel stack trusts the skb flag). AF_XDP copies
  # the raw bytes out of the skb, so the userspace TCP (smoltcp) would see a wrong checksum
  # on every segment and drop every SYN. With tx offload off the sender computes full
  # checksums in software, as a real NIC would deliver them.
  ip netns exec "$NS" ethtool -K "$PEER_IF" tx off >/dev/null
  # Same for replies the host kernel sends towards the namespace (ARP/ICMP are fine either
  # way; this keeps captures on the host side honest).
  ethtool -K "$HOST_IF" tx off >/dev/null

  # A veth delivers each packet on the rx queue matching the tx queue the sender picked,
  # and the sender's kernel re-picks a flow's tx queue after a retransmission timeout
  # (net.core.txrehash): the flow then lands on another AF_XDP queue, whose userspace TCP
  # does not know it and answers RST. A real NIC's RSS hashes the 4-tuple and keeps a
  # flow on one queue; pin the lab's clients to that behaviour (a per-namespace sysctl).
  ip netns exec "$NS" sysctl -qw net.core.txrehash=0

  trap - ERR
  echo "veth-lab: up ($HOST_IF $HOST_ADDR <-> $NS/$PEER_IF $PEER_ADDR, $QUEUES queues, client net $CLIENT_NET)"
}

lab_status() {
  local ok=0
  if have_ns; then echo "namespace $NS: present"; else echo "namespace $NS: absent"; ok=1; fi
  if have_host_if; then
    echo "host interface $HOST_IF: $(ip -br addr show dev "$HOST_IF" | tr -s ' ')"
    ip -d link show dev "$HOST_IF" | grep -Eo 'prog/xdp[a-z]* id [0-9]+' | sed 's/^/  xdp: /' || true
    if [[ $BARE_HOST != 1 ]]; then
      ip addr show dev "$HOST_IF" | grep -q "inet $HOST_ADDR/" || ok=1
    fi
  else
    echo "host interface $HOST_IF: absent"
    ok=1
  fi
  if have_ns && ip netns exec "$NS" ip link show dev "$PEER_IF" >/dev/null 2>&1; then
    echo "peer interface $NS/$PEER_IF: $(ip netns exec "$NS" ip -br addr show dev "$PEER_IF" | tr -s ' ')"
    ip netns exec "$NS" ip addr show dev "$PEER_IF" | grep -q "inet $PEER_ADDR/" || ok=1
  else
    echo "peer interface $NS/$PEER_IF: absent"
    ok=1
  fi
  return $ok
}

case "${1:-}" in
  up) lab_up ;;
  down) lab_down; echo "veth-lab: down" ;;
  status) lab_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
