/* Petrel's DPDK shim: DPDK 22.11's inline and macro-only calls (rx/tx burst, mbuf
 * alloc/free/data, ...) as plain functions Rust can link against, plus the port setup
 * sequence, over types Rust can name without DPDK's headers (opaque pointers, integers,
 * one plain struct of counters).
 *
 * Error convention: a function returning int returns -1 with errno set (from rte_errno or
 * the negative return of the DPDK call) on failure, like libc, so the Rust side turns it
 * into an io::Error through the same helper as every libc call (sys::cvt). Pointer
 * returning functions return NULL with errno set.
 *
 * The Rust declarations are hand-written in dataplane/src/sys/dpdk/ffi.rs; keep both in
 * step (a size check guards the one struct). */
#ifndef PETREL_DPDK_SHIM_H
#define PETREL_DPDK_SHIM_H

#include <stdint.h>

struct rte_mbuf;
struct rte_mempool;
struct rte_flow;

/* Port counters (a subset of struct rte_eth_stats). */
struct petrel_dpdk_stats {
	uint64_t ipackets;
	uint64_t opackets;
	uint64_t imissed;
	uint64_t ierrors;
	uint64_t oerrors;
	uint64_t rx_nombuf;
};

uint32_t petrel_dpdk_stats_size(void);

/* rte_eal_init, keeping the calling thread's CPU affinity (EAL pins it to the main
 * lcore; threads the caller spawns afterwards would inherit that). */
int petrel_dpdk_eal_init(int argc, char **argv);
int petrel_dpdk_dev_probe(const char *devargs);
int petrel_dpdk_dev_remove(const char *bus, const char *name);
int petrel_dpdk_port_by_name(const char *name, uint16_t *port);
int petrel_dpdk_port_count(void);
int petrel_dpdk_port_socket(uint16_t port);
int petrel_dpdk_port_mac(uint16_t port, uint8_t mac[6]);
int petrel_dpdk_port_max_queues(uint16_t port, uint16_t *rx, uint16_t *tx);

struct rte_mempool *petrel_dpdk_pool_create(const char *name, uint32_t mbufs,
					    uint32_t cache, int socket);
/* Free mbufs in the pool, caches included (rte_mempool_avail_count). */
uint32_t petrel_dpdk_pool_available(const struct rte_mempool *pool);

/* rte_eth_dev_configure (RSS over TCP/IPv4 when queues > 1), one rx queue per pool and as
 * many tx queues, all with `rx_desc`/`tx_desc` descriptors. */
int petrel_dpdk_port_configure(uint16_t port, uint16_t queues, uint16_t rx_desc,
			       uint16_t tx_desc, struct rte_mempool *const *pools);
int petrel_dpdk_port_start(uint16_t port);
int petrel_dpdk_port_stop(uint16_t port);
int petrel_dpdk_port_close(uint16_t port);
int petrel_dpdk_port_stats(uint16_t port, struct petrel_dpdk_stats *out);

/* An rte_flow rule: IPv4 TCP to `addr`:`tcp_port` (network order) goes to rx queue
 * `queue`. NULL with errno (ENOTSUP/ENOSYS on devices without rte_flow). */
struct rte_flow *petrel_dpdk_flow_steer(uint16_t port, uint32_t addr_be, uint16_t tcp_port_be,
					uint16_t queue);
int petrel_dpdk_flow_destroy(uint16_t port, struct rte_flow *flow);

uint16_t petrel_dpdk_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **mbufs,
			      uint16_t n);
uint16_t petrel_dpdk_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **mbufs,
			      uint16_t n);

struct rte_mbuf *petrel_dpdk_mbuf_alloc(struct rte_mempool *pool);
void petrel_dpdk_mbuf_free(struct rte_mbuf *mbuf);
/* The first segment's data and its length. */
uint8_t *petrel_dpdk_mbuf_data(struct rte_mbuf *mbuf, uint16_t *len);
/* The first segment's data start and how many bytes fit from there (data + tailroom). */
uint8_t *petrel_dpdk_mbuf_room(struct rte_mbuf *mbuf, uint16_t *room);
/* Sets a single-segment mbuf's data and packet length (len <= room). */
void petrel_dpdk_mbuf_set_len(struct rte_mbuf *mbuf, uint16_t len);
/* Whether the packet is in one segment (multi-segment packets are dropped). */
int petrel_dpdk_mbuf_is_contiguous(const struct rte_mbuf *mbuf);

#endif
