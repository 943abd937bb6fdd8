//! The declarations of `vendor/dpdk/shim.h`, hand-written.
//!
//! Why not bindgen: the shim's header is ~25 functions over opaque pointers, integers and
//! one struct of six `u64`s, written for this purpose, so a hand-written block is as
//! exact as generated code, is reviewable in one screen, and keeps libclang out of the
//! feature's build (bindgen over DPDK's own headers would also need
//! `--opaque-type 'rte_arp_.*'` and still could not call the inline functions).
//! [`petrel_dpdk_stats_size`] lets a test check the one struct against C.
//!
//! Errors: `int` returns are -1 with `errno` set (see the shim), read through
//! [`crate::sys::cvt`]; pointer returns are null with `errno` set.

use std::ffi::{c_char, c_int};

/// `struct rte_mbuf`, never looked into from Rust.
#[repr(C)]
pub struct RteMbuf {
    _opaque: [u8; 0],
}

/// `struct rte_mempool`, never looked into from Rust.
#[repr(C)]
pub struct RteMempool {
    _opaque: [u8; 0],
}

/// `struct rte_flow`, never looked into from Rust.
#[repr(C)]
pub struct RteFlow {
    _opaque: [u8; 0],
}

/// `struct petrel_dpdk_stats`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct PortStatsC {
    pub ipackets: u64,
    pub opackets: u64,
    pub imissed: u64,
    pub ierrors: u64,
    pub oerrors: u64,
    pub rx_nombuf: u64,
}

unsafe extern "C" {
    #[cfg(test)]
    pub fn petrel_dpdk_stats_size() -> u32;
    pub fn petrel_dpdk_eal_init(argc: c_int, argv: *mut *mut c_char) -> c_int;
    pub fn petrel_dpdk_dev_probe(devargs: *const c_char) -> c_int;
    pub fn petrel_dpdk_dev_remove(bus: *const c_char, name: *const c_char) -> c_int;
    pub fn petrel_dpdk_port_by_name(name: *const c_char, port: *mut u16) -> c_int;
    pub fn petrel_dpdk_port_count() -> c_int;
    pub fn petrel_dpdk_port_socket(port: u16) -> c_int;
    pub fn petrel_dpdk_port_mac(port: u16, mac: *mut u8) -> c_int;
    pub fn petrel_dpdk_port_max_queues(port: u16, rx: *mut u16, tx: *mut u16) -> c_int;
    pub fn petrel_dpdk_pool_create(
        name: *const c_char,
        mbufs: u32,
        cache: u32,
        socket: c_int,
    ) -> *mut RteMempool;
    pub fn petrel_dpdk_pool_available(pool: *const RteMempool) -> u32;
    pub fn petrel_dpdk_port_configure(
        port: u16,
        queues: u16,
        rx_desc: u16,
        tx_desc: u16,
        pools: *const *mut RteMempool,
    ) -> c_int;
    pub fn petrel_dpdk_port_start(port: u16) -> c_int;
    pub fn petrel_dpdk_port_stop(port: u16) -> c_int;
    pub fn petrel_dpdk_port_close(port: u16) -> c_int;
    pub fn petrel_dpdk_port_stats(port: u16, out: *mut PortStatsC) -> c_int;
    pub fn petrel_dpdk_flow_steer(
        port: u16,
        addr_be: u32,
        tcp_port_be: u16,
        queue: u16,
    ) -> *mut RteFlow;
    pub fn petrel_dpdk_flow_destroy(port: u16, flow: *mut RteFlow) -> c_int;
    pub fn petrel_dpdk_rx_burst(port: u16, queue: u16, mbufs: *mut *mut RteMbuf, n: u16) -> u16;
    pub fn petrel_dpdk_tx_burst(port: u16, queue: u16, mbufs: *mut *mut RteMbuf, n: u16) -> u16;
    pub fn petrel_dpdk_mbuf_alloc(pool: *mut RteMempool) -> *mut RteMbuf;
    pub fn petrel_dpdk_mbuf_free(mbuf: *mut RteMbuf);
    pub fn petrel_dpdk_mbuf_data(mbuf: *mut RteMbuf, len: *mut u16) -> *mut u8;
    pub fn petrel_dpdk_mbuf_room(mbuf: *mut RteMbuf, room: *mut u16) -> *mut u8;
    pub fn petrel_dpdk_mbuf_set_len(mbuf: *mut RteMbuf, len: u16);
    pub fn petrel_dpdk_mbuf_is_contiguous(mbuf: *const RteMbuf) -> c_int;
}
