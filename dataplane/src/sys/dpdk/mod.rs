//! DPDK (cargo feature `dpdk`): the Environment Abstraction Layer, ports and their
//! queues, mbuf pools and mbufs, as safe types over the C shim in `vendor/dpdk/shim.c`
//! (declared by hand in [`ffi`]; why not bindgen is said there).
//!
//! - [`Eal`]: initialised once per process (DPDK cannot initialise it twice, even after
//!   `rte_eal_cleanup`), behind a process-wide cell; vdevs can be added and removed at run
//!   time ([`Eal::probe`], [`Eal::remove`]).
//! - [`mbuf::Mempool`] and [`mbuf::Mbuf`]: **mbuf ownership**, stated once: an [`Mbuf`]
//!   value owns exactly one packet buffer, and a buffer leaves Rust's hands exactly once —
//!   either dropped (`rte_pktmbuf_free` in `Drop`) or moved into the driver by
//!   [`port::PortQueue::tx_burst`], which forgets the ones the driver took and leaves the
//!   others in the caller's vector. Mbufs are not `Clone`; pools live as long as the
//!   process (DPDK cannot free a pool while its mbufs are out, and they may be anywhere),
//!   so an mbuf can never outlive its pool.
//! - [`port::Port`] and [`port::PortQueue`]: a configured, started port (stopped and
//!   closed when its last handle goes) and one rx/tx queue pair of it, owned by one core
//!   (a queue is not thread-safe in DPDK: a port is started by one `Port` at a time,
//!   `PortQueue` is not `Clone`, each queue is handed out once, and its bursts take
//!   `&mut self`); [`port::FlowRule`]: an
//!   `rte_flow` steering rule, destroyed on drop.

pub(crate) mod ffi;
pub mod mbuf;
pub mod port;

use std::ffi::{CString, c_char};
use std::io;
use std::sync::{Mutex, OnceLock};

pub use mbuf::{Mbuf, Mempool};
pub use port::{FlowRule, Port, PortQueue, PortStats};

use crate::sys::cvt;

/// The process's EAL, initialised once by [`Eal::init`].
#[derive(Debug)]
pub struct Eal {
    args: Vec<String>,
    /// Serialises probe/remove (EAL's hotplug is not meant for concurrent callers).
    hotplug: Mutex<()>,
}

static EAL: OnceLock<Result<Eal, (Option<i32>, String)>> = OnceLock::new();

/// `s` as a C string, or `InvalidInput` naming `what`.
pub(crate) fn c_string(s: &str, what: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} contains a NUL byte"),
        )
    })
}

impl Eal {
    /// Initialises the EAL with `args` (without the program name) the first time it is
    /// called in this process; later calls return the same EAL if `args` are the same
    /// and an error otherwise (or the first call's error: DPDK cannot retry). The calling
    /// thread keeps its CPU affinity (EAL would pin it to the main lcore).
    pub fn init(args: &[String]) -> io::Result<&'static Eal> {
        let result = EAL.get_or_init(|| Eal::init_once(args));
        match result {
            Ok(eal) if eal.args == args => Ok(eal),
            Ok(eal) => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "dpdk: the EAL already runs in this process with {:?} (it initialises once)",
                    eal.args
                ),
            )),
            Err((code, message)) => Err(match code {
                Some(code) => io::Error::from_raw_os_error(*code),
                None => io::Error::other(message.clone()),
            }),
        }
    }

    /// The EAL if [`Eal::init`] succeeded in this process.
    pub fn get() -> Option<&'static Eal> {
        EAL.get().and_then(|r| r.as_ref().ok())
    }

    fn init_once(args: &[String]) -> Result<Eal, (Option<i32>, String)> {
        let mut owned = Vec::with_capacity(args.len() + 1);
        for arg in std::iter::once("petrel").chain(args.iter().map(String::as_str)) {
            owned.push(c_string(arg, "an EAL argument").map_err(|e| (None, e.to_string()))?);
        }
        // EAL may keep and reorder argv's pointers: the strings are leaked with it (once
        // per process).
        let mut argv: Vec<*mut c_char> = owned.into_iter().map(CString::into_raw).collect();
        let argc =
            i32::try_from(argv.len()).map_err(|_| (None, "too many EAL arguments".into()))?;
        let argv_ptr = argv.as_mut_ptr();
        std::mem::forget(argv);
        // SAFETY: argv holds `argc` valid NUL-terminated strings, leaked above so that they
        // and the array outlive the EAL, which may keep pointers into them.
        cvt(unsafe { ffi::petrel_dpdk_eal_init(argc, argv_ptr) })
            .map_err(|e| (e.raw_os_error(), e.to_string()))?;
        Ok(Eal {
            args: args.to_vec(),
            hotplug: Mutex::new(()),
        })
    }

    /// The arguments the EAL was initialised with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Adds a device at run time (`rte_dev_probe`), e.g. `net_null0` or
    /// `net_af_packet0,iface=veth1`.
    pub fn probe(&self, devargs: &str) -> io::Result<()> {
        let devargs = c_string(devargs, "device arguments")?;
        let _guard = self.hotplug.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: a valid C string that outlives the call; the EAL is initialised.
        cvt(unsafe { ffi::petrel_dpdk_dev_probe(devargs.as_ptr()) }).map(drop)
    }

    /// Removes a device added by [`Eal::probe`] (`rte_eal_hotplug_remove`, bus `vdev`).
    /// Its port must be closed (its [`Port`] and queues dropped).
    pub fn remove_vdev(&self, name: &str) -> io::Result<()> {
        let name = c_string(name, "device name")?;
        let _guard = self.hotplug.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: valid C strings that outlive the call; the EAL is initialised.
        cvt(unsafe { ffi::petrel_dpdk_dev_remove(c"vdev".as_ptr(), name.as_ptr()) }).map(drop)
    }

    /// The port id of device `name` (a vdev's name, or a PCI address such as
    /// `0000:03:00.0`).
    pub fn port_by_name(&self, name: &str) -> io::Result<u16> {
        let c_name = c_string(name, "device name")?;
        let mut port = 0u16;
        // SAFETY: a valid C string and a live u16 for the result.
        cvt(unsafe { ffi::petrel_dpdk_port_by_name(c_name.as_ptr(), &mut port) })
            .map_err(|e| io::Error::new(e.kind(), format!("dpdk: no port named {name:?}: {e}")))?;
        Ok(port)
    }

    /// How many ports the EAL found (`rte_eth_dev_count_avail`).
    pub fn port_count(&self) -> usize {
        // SAFETY: no arguments; the EAL is initialised.
        usize::try_from(unsafe { ffi::petrel_dpdk_port_count() }).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_stats_struct_matches_the_shim() {
        // SAFETY: a constant; needs no EAL.
        let c = unsafe { super::ffi::petrel_dpdk_stats_size() } as usize;
        assert_eq!(c, size_of::<super::ffi::PortStatsC>());
    }
}
