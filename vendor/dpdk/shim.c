/* Petrel's DPDK shim: see shim.h. Built by dataplane/build.rs (cargo feature `dpdk`) with
 * the raw `pkg-config --cflags libdpdk` flags (they carry `-include rte_config.h` and
 * `-march=...`, without which rte_memcpy.h does not inline). No logic of Petrel's lives
 * here: each function is one DPDK call (or the fixed port setup sequence) with its error
 * turned into -1/errno. */
#define _GNU_SOURCE
#include "shim.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>

#include <rte_bus.h>
#include <rte_dev.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_flow.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

/* A DPDK call's negative errno return as -1 with errno, libc style. */
static int fail(int negative)
{
	errno = negative < 0 ? -negative : EIO;
	return -1;
}

/* A DPDK call that reports through rte_errno, as -1 with errno. */
static int fail_rte(void)
{
	errno = rte_errno ? rte_errno : EIO;
	return -1;
}

uint32_t petrel_dpdk_stats_size(void)
{
	return sizeof(struct petrel_dpdk_stats);
}

int petrel_dpdk_eal_init(int argc, char **argv)
{
	cpu_set_t saved;
	int have = pthread_getaffinity_np(pthread_self(), sizeof(saved), &saved) == 0;
	int ret = rte_eal_init(argc, argv);
	if (ret < 0)
		return fail_rte();
	if (have)
		pthread_setaffinity_np(pthread_self(), sizeof(saved), &saved);
	return ret;
}

int petrel_dpdk_dev_probe(const char *devargs)
{
	int ret = rte_dev_probe(devargs);
	return ret < 0 ? fail(ret) : 0;
}

int petrel_dpdk_dev_remove(const char *bus, const char *name)
{
	int ret = rte_eal_hotplug_remove(bus, name);
	return ret < 0 ? fail(ret) : 0;
}

int petrel_dpdk_port_by_name(const char *name, uint16_t *port)
{
	int ret = rte_eth_dev_get_port_by_name(name, port);
	return ret < 0 ? fail(ret) : 0;
}

int petrel_dpdk_port_count(void)
{
	return rte_eth_dev_count_avail();
}

int petrel_dpdk_port_socket(uint16_t port)
{
	return rte_eth_dev_socket_id(port);
}

int petrel_dpdk_port_mac(uint16_t port, uint8_t mac[6])
{
	struct rte_ether_addr addr;
	int ret = rte_eth_macaddr_get(port, &addr);
	if (ret < 0)
		return fail(ret);
	memcpy(mac, addr.addr_bytes, 6);
	return 0;
}

int petrel_dpdk_port_max_queues(uint16_t port, uint16_t *rx, uint16_t *tx)
{
	struct rte_eth_dev_info info;
	int ret = rte_eth_dev_info_get(port, &info);
	if (ret < 0)
		return fail(ret);
	*rx = info.max_rx_queues;
	*tx = info.max_tx_queues;
	return 0;
}

struct rte_mempool *petrel_dpdk_pool_create(const char *name, uint32_t mbufs, uint32_t cache,
					    int socket)
{
	struct rte_mempool *pool = rte_pktmbuf_pool_create(name, mbufs, cache, 0,
							   RTE_MBUF_DEFAULT_BUF_SIZE, socket);
	if (pool == NULL)
		fail_rte();
	return pool;
}

uint32_t petrel_dpdk_pool_available(const struct rte_mempool *pool)
{
	return rte_mempool_avail_count(pool);
}

int petrel_dpdk_port_configure(uint16_t port, uint16_t queues, uint16_t rx_desc,
			       uint16_t tx_desc, struct rte_mempool *const *pools)
{
	struct rte_eth_dev_info info;
	struct rte_eth_conf conf;
	int socket = rte_eth_dev_socket_id(port);
	int ret = rte_eth_dev_info_get(port, &info);
	if (ret < 0)
		return fail(ret);
	memset(&conf, 0, sizeof(conf));
	if (queues > 1) {
		conf.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
		conf.rx_adv_conf.rss_conf.rss_hf =
			(RTE_ETH_RSS_NONFRAG_IPV4_TCP | RTE_ETH_RSS_IPV4) &
			info.flow_type_rss_offloads;
	}
	ret = rte_eth_dev_configure(port, queues, queues, &conf);
	if (ret < 0)
		return fail(ret);
	ret = rte_eth_dev_adjust_nb_rx_tx_desc(port, &rx_desc, &tx_desc);
	if (ret < 0)
		return fail(ret);
	for (uint16_t q = 0; q < queues; q++) {
		ret = rte_eth_rx_queue_setup(port, q, rx_desc, socket, NULL, pools[q]);
		if (ret < 0)
			return fail(ret);
		ret = rte_eth_tx_queue_setup(port, q, tx_desc, socket, NULL);
		if (ret < 0)
			return fail(ret);
	}
	return 0;
}

int petrel_dpdk_port_start(uint16_t port)
{
	int ret = rte_eth_dev_start(port);
	return ret < 0 ? fail(ret) : 0;
}

int petrel_dpdk_port_stop(uint16_t port)
{
	int ret = rte_eth_dev_stop(port);
	return ret < 0 ? fail(ret) : 0;
}

int petrel_dpdk_port_close(uint16_t port)
{
	int ret = rte_eth_dev_close(port);
	return ret < 0 ? fail(ret) : 0;
}

int petrel_dpdk_port_stats(uint16_t port, struct petrel_dpdk_stats *out)
{
	struct rte_eth_stats stats;
	int ret = rte_eth_stats_get(port, &stats);
	if (ret < 0)
		return fail(ret);
	out->ipackets = stats.ipackets;
	out->opackets = stats.opackets;
	out->imissed = stats.imissed;
	out->ierrors = stats.ierrors;
	out->oerrors = stats.oerrors;
	out->rx_nombuf = stats.rx_nombuf;
	return 0;
}

struct rte_flow *petrel_dpdk_flow_steer(uint16_t port, uint32_t addr_be, uint16_t tcp_port_be,
					uint16_t queue)
{
	struct rte_flow_attr attr = { .ingress = 1 };
	struct rte_flow_item_ipv4 ip_spec = { .hdr.dst_addr = addr_be };
	struct rte_flow_item_ipv4 ip_mask = { .hdr.dst_addr = 0xffffffff };
	struct rte_flow_item_tcp tcp_spec = { .hdr.dst_port = tcp_port_be };
	struct rte_flow_item_tcp tcp_mask = { .hdr.dst_port = 0xffff };
	struct rte_flow_item pattern[] = {
		{ .type = RTE_FLOW_ITEM_TYPE_ETH },
		{ .type = RTE_FLOW_ITEM_TYPE_IPV4, .spec = &ip_spec, .mask = &ip_mask },
		{ .type = RTE_FLOW_ITEM_TYPE_TCP, .spec = &tcp_spec, .mask = &tcp_mask },
		{ .type = RTE_FLOW_ITEM_TYPE_END },
	};
	struct rte_flow_action_queue to_queue = { .index = queue };
	struct rte_flow_action actions[] = {
		{ .type = RTE_FLOW_ACTION_TYPE_QUEUE, .conf = &to_queue },
		{ .type = RTE_FLOW_ACTION_TYPE_END },
	};
	struct rte_flow_error error;
	int ret = rte_flow_validate(port, &attr, pattern, actions, &error);
	if (ret < 0) {
		fail(ret);
		return NULL;
	}
	struct rte_flow *flow = rte_flow_create(port, &attr, pattern, actions, &error);
	if (flow == NULL)
		fail_rte();
	return flow;
}

int petrel_dpdk_flow_destroy(uint16_t port, struct rte_flow *flow)
{
	struct rte_flow_error error;
	int ret = rte_flow_destroy(port, flow, &error);
	return ret < 0 ? fail(ret) : 0;
}

uint16_t petrel_dpdk_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **mbufs,
			      uint16_t n)
{
	return rte_eth_rx_burst(port, queue, mbufs, n);
}

uint16_t petrel_dpdk_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **mbufs,
			      uint16_t n)
{
	return rte_eth_tx_burst(port, queue, mbufs, n);
}

struct rte_mbuf *petrel_dpdk_mbuf_alloc(struct rte_mempool *pool)
{
	return rte_pktmbuf_alloc(pool);
}

void petrel_dpdk_mbuf_free(struct rte_mbuf *mbuf)
{
	rte_pktmbuf_free(mbuf);
}

uint8_t *petrel_dpdk_mbuf_data(struct rte_mbuf *mbuf, uint16_t *len)
{
	*len = mbuf->data_len;
	return rte_pktmbuf_mtod(mbuf, uint8_t *);
}

uint8_t *petrel_dpdk_mbuf_room(struct rte_mbuf *mbuf, uint16_t *room)
{
	*room = mbuf->data_len + rte_pktmbuf_tailroom(mbuf);
	return rte_pktmbuf_mtod(mbuf, uint8_t *);
}

void petrel_dpdk_mbuf_set_len(struct rte_mbuf *mbuf, uint16_t len)
{
	mbuf->data_len = len;
	mbuf->pkt_len = len;
}

int petrel_dpdk_mbuf_is_contiguous(const struct rte_mbuf *mbuf)
{
	return mbuf->nb_segs == 1;
}
