// SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only
//
// petrel_filter: the XDP program Petrel attaches to each interface it serves.
//
// It sends to the rx queue's AF_XDP socket ONLY Petrel's own frames:
//   - IPv4 TCP whose destination is the configured address and one of the configured
//     ports (any port when Petrel, not the kernel, owns the address);
//   - ARP whose target protocol address is the configured address, when the config says
//     Petrel (not the kernel) owns that address;
// where "the configured address" is a prefix: a server matches its one address (/32); the
// load generator's userspace-TCP client (petrel bench --client-mode xdp) owns a whole
// source network (e.g. a /16) that the kernel does not have, and matches all of it;
// and returns XDP_PASS for everything else, so SSH and every other service on the host keep
// working while Petrel runs. Frames addressed to Petrel that it cannot handle (truncated
// or impossible headers, IP fragments) are dropped here. Every decision bumps one per-CPU
// counter; userspace sums them over CPUs.
//
// Built by dataplane/build.rs:
//   clang -O2 -g -target bpf -D__TARGET_ARCH_x86 -I/usr/include/<multiarch> \
//         -c vendor/xdp/petrel_filter.bpf.c -o $OUT_DIR/petrel_filter.bpf.o
// (headers: linux-libc-dev for linux/*.h, libbpf-dev for bpf/bpf_helpers.h).
//
// The layout of the maps below is mirrored in dataplane/src/xdp/filter.rs; change both.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

// Counter indices (dataplane/src/xdp/filter.rs: `Counter`).
enum petrel_counter {
	COUNTER_REDIRECTED = 0,   // handed to the queue's AF_XDP socket
	COUNTER_PASSED = 1,       // not Petrel's: left to the kernel
	COUNTER_MALFORMED = 2,    // addressed to Petrel but unparseable: dropped
	COUNTER_FRAGMENT = 3,     // an IPv4 fragment addressed to Petrel: dropped
	COUNTER_NO_SOCKET = 4,    // Petrel's, but no socket on this queue: passed
	COUNTER_COUNT = 5,
};

// One entry, key 0. `addr` is the IPv4 address (or network) exactly as it appears in the
// packet (network byte order) and `mask` the prefix's netmask, also as packet bytes
// (0xffffffff for one address); `addr` is stored already masked. `flags` bit 0: redirect
// ARP for the prefix (Petrel owns it; the kernel does not have it).
struct petrel_config {
	__u32 addr;
	__u32 flags;
	__u32 mask;
};
#define CONFIG_FLAG_ARP 1u

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct petrel_config);
} PETREL_CONFIG SEC(".maps");

// Keys are TCP destination ports in network byte order (as read from the packet); the
// value is unused (1).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u16);
	__type(value, __u8);
} PETREL_PORTS SEC(".maps");

// rx queue index -> AF_XDP socket.
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} PETREL_XSKS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} PETREL_COUNTERS SEC(".maps");

// ARP for Ethernet/IPv4, the only kind Petrel answers.
struct arp_ipv4 {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 oper;
	__u8 sha[ETH_ALEN];
	__be32 spa;
	__u8 tha[ETH_ALEN];
	__be32 tpa;
} __attribute__((packed));

static __always_inline int count(__u32 index, int action)
{
	__u64 *value = bpf_map_lookup_elem(&PETREL_COUNTERS, &index);
	if (value)
		*value += 1; // per-CPU slot: no other CPU writes it
	return action;
}

static __always_inline int to_socket(struct xdp_md *ctx)
{
	__u32 queue = ctx->rx_queue_index;
	if (!bpf_map_lookup_elem(&PETREL_XSKS, &queue))
		return count(COUNTER_NO_SOCKET, XDP_PASS);
	// The lookup above already proved a socket is there; XDP_PASS is the fallback if it
	// went away in between.
	int action = bpf_redirect_map(&PETREL_XSKS, queue, XDP_PASS);
	return count(action == XDP_REDIRECT ? COUNTER_REDIRECTED : COUNTER_NO_SOCKET, action);
}

SEC("xdp")
int petrel_filter(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;

	struct petrel_config *config = bpf_map_lookup_elem(&PETREL_CONFIG, &zero);
	if (!config || config->addr == 0)
		return count(COUNTER_PASSED, XDP_PASS);

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return count(COUNTER_PASSED, XDP_PASS); // not even Ethernet: the kernel's problem

	if (eth->h_proto == bpf_htons(ETH_P_ARP)) {
		if (!(config->flags & CONFIG_FLAG_ARP))
			return count(COUNTER_PASSED, XDP_PASS);
		struct arp_ipv4 *arp = (void *)(eth + 1);
		if ((void *)(arp + 1) > data_end)
			return count(COUNTER_PASSED, XDP_PASS);
		if (arp->ptype != bpf_htons(ETH_P_IP) || arp->plen != 4 ||
		    (arp->tpa & config->mask) != config->addr)
			return count(COUNTER_PASSED, XDP_PASS);
		return to_socket(ctx);
	}

	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return count(COUNTER_PASSED, XDP_PASS);

	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return count(COUNTER_PASSED, XDP_PASS);
	if ((ip->daddr & config->mask) != config->addr || ip->protocol != IPPROTO_TCP)
		return count(COUNTER_PASSED, XDP_PASS);

	// From here on the frame is addressed to Petrel's address and protocol.
	if (ip->version != 4 || ip->ihl < 5)
		return count(COUNTER_MALFORMED, XDP_DROP);
	// More-fragments flag or a non-zero offset: Petrel does not reassemble, and a later
	// fragment has no ports to filter on.
	if (ip->frag_off & bpf_htons(0x3fff))
		return count(COUNTER_FRAGMENT, XDP_DROP);

	struct tcphdr *tcp = (void *)ip + ip->ihl * 4;
	if ((void *)(tcp + 1) > data_end)
		return count(COUNTER_MALFORMED, XDP_DROP);

	__u16 port = tcp->dest;
	// When the kernel has the address too, other ports are its services. When Petrel owns
	// the address alone, every TCP segment to it is Petrel's: the userspace TCP answers a
	// closed port with RST, as a host would (the kernel would drop it silently).
	if (!(config->flags & CONFIG_FLAG_ARP) && !bpf_map_lookup_elem(&PETREL_PORTS, &port))
		return count(COUNTER_PASSED, XDP_PASS); // another service on our address

	return to_socket(ctx);
}

// The kernel only knows GPL-compatible license strings; this file is dual-licensed
// (Apache-2.0 like the rest of Petrel, or GPL-2.0).
char LICENSE[] SEC("license") = "GPL";
