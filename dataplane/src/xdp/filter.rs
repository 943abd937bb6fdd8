//! The XDP filter program: loading, configuring, attaching, and reading its counters.
//!
//! The program (`vendor/xdp/petrel_filter.bpf.c`, compiled by `dataplane/build.rs` and
//! embedded in the binary) redirects to the rx queue's AF_XDP socket only Petrel's frames —
//! IPv4 TCP to the configured address and ports, and ARP for that address when Petrel owns
//! it (then every TCP port of the address is Petrel's, so closed ports get a RST from the
//! userspace TCP) — and passes everything else to the kernel, so SSH and other services keep working.
//!
//! Loading and attaching use [aya](https://docs.rs/aya) (pure Rust; no libbpf/libxdp, no
//! bpffs). aya attaches through a BPF link when the kernel has them, so the program is
//! detached when the [`XdpFilter`] is dropped *or the process dies* (the link's file
//! descriptor closes); on older kernels it falls back to a netlink attach that
//! [`XdpFilter`]'s drop detaches.
//!
//! The map layouts here mirror the C file; change both together.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;

use aya::Ebpf;
use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray, XskMap};
use aya::programs::{ProgramError, Xdp, XdpMode};

/// The compiled filter program (an eBPF ELF object).
pub const PROGRAM_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/petrel_filter.bpf.o"));

const PROGRAM: &str = "petrel_filter";
const MAP_CONFIG: &str = "PETREL_CONFIG";
const MAP_PORTS: &str = "PETREL_PORTS";
const MAP_XSKS: &str = "PETREL_XSKS";
const MAP_COUNTERS: &str = "PETREL_COUNTERS";
/// `max_entries` of the port map in the C file.
pub const MAX_PORTS: usize = 64;
/// `max_entries` of the socket map: the highest rx queue index served is one less.
pub const MAX_QUEUES: u32 = 64;
const CONFIG_FLAG_ARP: u32 = 1;

/// The value of the one-entry config map: C `struct petrel_config`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigValue {
    /// IPv4 address in network byte order, as the program reads it from the packet.
    addr: u32,
    /// Bit 0: redirect ARP for `addr`.
    flags: u32,
    /// Netmask of the prefix `addr` starts, as packet bytes (all ones: one address).
    mask: u32,
}

/// What the filter redirects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterConfig {
    /// Petrel's IPv4 address on the interface (the first address of the prefix).
    pub addr: Ipv4Addr,
    /// Prefix length: 32 for a server's one address; a load generator's client owns a
    /// whole source network (e.g. 16) and matches every address in it.
    pub prefix_len: u8,
    /// TCP ports Petrel serves on `addr` (at most [`MAX_PORTS`]).
    pub ports: Vec<u16>,
    /// Redirect ARP requests for `addr` to Petrel. Only when Petrel owns an address the
    /// kernel does not have; otherwise the kernel answers ARP itself.
    pub own_arp: bool,
}

impl FilterConfig {
    fn value(&self) -> ConfigValue {
        let prefix = u32::from(self.prefix_len.min(32));
        let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
        let mask = mask.to_be_bytes();
        let addr = self.addr.octets();
        let masked: [u8; 4] = std::array::from_fn(|i| addr[i] & mask[i]);
        ConfigValue {
            addr: u32::from_ne_bytes(masked),
            flags: if self.own_arp { CONFIG_FLAG_ARP } else { 0 },
            mask: u32::from_ne_bytes(mask),
        }
    }
}

/// How the program runs on the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// Try native (driver) mode, fall back to generic (SKB) mode.
    Auto,
    /// Native mode only: the driver runs the program before allocating an skb.
    Driver,
    /// Generic mode only: the kernel runs the program on the skb (works on any interface,
    /// slower; AF_XDP sockets then need copy mode).
    Generic,
}

/// Why the filter's program decided what it did; the index into its counter map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Counter {
    /// Handed to the queue's AF_XDP socket.
    Redirected = 0,
    /// Not Petrel's: passed to the kernel.
    Passed = 1,
    /// Addressed to Petrel but with impossible headers: dropped.
    Malformed = 2,
    /// An IPv4 fragment addressed to Petrel (never reassembled): dropped.
    Fragment = 3,
    /// Petrel's, but no socket registered for the rx queue: passed to the kernel.
    NoSocket = 4,
}

impl Counter {
    /// Every counter, in map order.
    pub const ALL: [Counter; 5] = [
        Counter::Redirected,
        Counter::Passed,
        Counter::Malformed,
        Counter::Fragment,
        Counter::NoSocket,
    ];
}

/// The program's counters summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FilterCounters {
    /// Frames handed to an AF_XDP socket.
    pub redirected: u64,
    /// Frames passed to the kernel (not Petrel's).
    pub passed: u64,
    /// Frames for Petrel dropped as malformed.
    pub malformed: u64,
    /// IPv4 fragments for Petrel dropped.
    pub fragments: u64,
    /// Frames for Petrel passed because no socket served their queue.
    pub no_socket: u64,
}

/// Errors of the filter.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The embedded object could not be parsed or its maps created.
    #[error("loading the XDP object: {0}")]
    Object(#[from] aya::EbpfError),
    /// Loading (verifier) or attaching the program failed.
    #[error("XDP program: {0}")]
    Program(#[from] ProgramError),
    /// A map operation failed.
    #[error("XDP map: {0}")]
    Map(#[from] MapError),
    /// The object lacks a program or map this code expects (C and Rust out of step).
    #[error("the XDP object has no {0:?} (vendor/xdp and xdp/filter.rs disagree)")]
    Missing(&'static str),
    /// More ports than the program's map holds.
    #[error("{0} ports configured; the XDP filter holds at most {MAX_PORTS}")]
    TooManyPorts(usize),
    /// The interface does not exist.
    #[error("{0}")]
    Interface(std::io::Error),
    /// Neither native nor generic mode could attach. A program left by a killed process
    /// that attached through netlink blocks a new one: `ip link set dev IF xdp off` (and
    /// `xdpgeneric off`) clears it.
    #[error(
        "attaching XDP to {iface}: native: {native}; generic: {generic} \
         (a stale program? `ip link set dev {iface} xdp off` and `xdpgeneric off`)"
    )]
    Attach {
        /// The interface.
        iface: String,
        /// Why native mode failed (or "not tried").
        native: String,
        /// Why generic mode failed (or "not tried").
        generic: String,
    },
}

/// The loaded filter program and its maps. Dropping it detaches the program.
pub struct XdpFilter {
    ebpf: Ebpf,
    attached: Option<(String, AttachMode)>,
}

impl std::fmt::Debug for XdpFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpFilter")
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

impl XdpFilter {
    /// Parses the embedded object, creates its maps and loads the program into the kernel
    /// (the verifier runs here). Needs `CAP_BPF` and `CAP_NET_ADMIN` (root).
    pub fn load() -> Result<XdpFilter, FilterError> {
        let mut ebpf = Ebpf::load(PROGRAM_OBJECT)?;
        program(&mut ebpf)?.load()?;
        Ok(XdpFilter {
            ebpf,
            attached: None,
        })
    }

    /// Writes the address, flags and ports the program filters on. Ports not in `config`
    /// that an earlier call added are removed.
    pub fn configure(&mut self, config: &FilterConfig) -> Result<(), FilterError> {
        if config.ports.len() > MAX_PORTS {
            return Err(FilterError::TooManyPorts(config.ports.len()));
        }
        let mut ports: HashMap<&mut MapData, u16, u8> = HashMap::try_from(
            self.ebpf
                .map_mut(MAP_PORTS)
                .ok_or(FilterError::Missing(MAP_PORTS))?,
        )?;
        let stale: Vec<u16> = ports
            .keys()
            .filter_map(Result::ok)
            .filter(|key| !config.ports.iter().any(|p| p.to_be() == *key))
            .collect();
        for key in stale {
            ports.remove(&key)?;
        }
        for port in &config.ports {
            // The program compares the raw 16 bits of the packet's port field.
            ports.insert(port.to_be(), 1, 0)?;
        }
        let mut map: Array<&mut MapData, ConfigValue> = Array::try_from(
            self.ebpf
                .map_mut(MAP_CONFIG)
                .ok_or(FilterError::Missing(MAP_CONFIG))?,
        )?;
        map.set(0, config.value(), 0)?;
        Ok(())
    }

    /// Attaches the program to `iface`; returns the mode it runs in.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<AttachMode, FilterError> {
        let index = crate::sys::if_index(iface).map_err(FilterError::Interface)?;
        let program = program(&mut self.ebpf)?;
        let mut native = String::from("not tried");
        if matches!(mode, AttachMode::Auto | AttachMode::Driver) {
            match program.attach_to_if_index(index, XdpMode::Driver) {
                Ok(_) => return Ok(self.record(iface, AttachMode::Driver)),
                Err(e) => native = e.to_string(),
            }
        }
        let mut generic = String::from("not tried");
        if matches!(mode, AttachMode::Auto | AttachMode::Generic) {
            match program.attach_to_if_index(index, XdpMode::Skb) {
                Ok(_) => {
                    if mode == AttachMode::Auto {
                        tracing::warn!(iface, error = %native, "native XDP refused; running the filter in generic (SKB) mode");
                    }
                    return Ok(self.record(iface, AttachMode::Generic));
                }
                Err(e) => generic = e.to_string(),
            }
        }
        Err(FilterError::Attach {
            iface: iface.to_owned(),
            native,
            generic,
        })
    }

    fn record(&mut self, iface: &str, mode: AttachMode) -> AttachMode {
        self.attached = Some((iface.to_owned(), mode));
        mode
    }

    /// Where the program is attached, if it is.
    pub fn attached(&self) -> Option<(&str, AttachMode)> {
        self.attached.as_ref().map(|(i, m)| (i.as_str(), *m))
    }

    /// Sends rx queue `queue`'s Petrel frames to the AF_XDP socket `socket` (which must be
    /// bound to that queue of the attached interface).
    pub fn register_socket(&mut self, queue: u32, socket: &impl AsFd) -> Result<(), FilterError> {
        let mut xsks: XskMap<&mut MapData> = XskMap::try_from(
            self.ebpf
                .map_mut(MAP_XSKS)
                .ok_or(FilterError::Missing(MAP_XSKS))?,
        )?;
        xsks.set(queue, socket.as_fd(), 0)?;
        Ok(())
    }

    /// Stops redirecting queue `queue` (its frames are then passed and counted as
    /// [`Counter::NoSocket`]).
    pub fn unregister_socket(&mut self, queue: u32) -> Result<(), FilterError> {
        let mut xsks: XskMap<&mut MapData> = XskMap::try_from(
            self.ebpf
                .map_mut(MAP_XSKS)
                .ok_or(FilterError::Missing(MAP_XSKS))?,
        )?;
        xsks.unset(queue)?;
        Ok(())
    }

    /// The program's counters, summed over CPUs.
    pub fn counters(&self) -> Result<FilterCounters, FilterError> {
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(MAP_COUNTERS)
                .ok_or(FilterError::Missing(MAP_COUNTERS))?,
        )?;
        let mut counters = FilterCounters::default();
        for counter in Counter::ALL {
            let total = map
                .get(&(counter as u32), 0)?
                .iter()
                .fold(0u64, |sum, v| sum.wrapping_add(*v));
            let slot = match counter {
                Counter::Redirected => &mut counters.redirected,
                Counter::Passed => &mut counters.passed,
                Counter::Malformed => &mut counters.malformed,
                Counter::Fragment => &mut counters.fragments,
                Counter::NoSocket => &mut counters.no_socket,
            };
            *slot = total;
        }
        Ok(counters)
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp, FilterError> {
    Ok(ebpf
        .program_mut(PROGRAM)
        .ok_or(FilterError::Missing(PROGRAM))?
        .try_into()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_value_matches_the_c_struct_layout() {
        // struct petrel_config { __u32 addr; __u32 flags; __u32 mask; }
        assert_eq!(std::mem::size_of::<ConfigValue>(), 12);
        assert_eq!(std::mem::align_of::<ConfigValue>(), 4);
        let value = FilterConfig {
            addr: Ipv4Addr::new(10, 77, 0, 1),
            prefix_len: 32,
            ports: vec![9500],
            own_arp: true,
        }
        .value();
        // The program compares against the packet's bytes 10.77.0.1 read as a u32.
        assert_eq!(value.addr.to_ne_bytes(), [10, 77, 0, 1]);
        assert_eq!(value.mask.to_ne_bytes(), [255; 4]);
        assert_eq!(value.flags, CONFIG_FLAG_ARP);
    }

    #[test]
    fn a_prefix_is_stored_masked_with_its_netmask_in_packet_byte_order() {
        let value = FilterConfig {
            addr: Ipv4Addr::new(10, 78, 3, 9),
            prefix_len: 16,
            ports: vec![],
            own_arp: true,
        }
        .value();
        assert_eq!(value.addr.to_ne_bytes(), [10, 78, 0, 0]);
        assert_eq!(value.mask.to_ne_bytes(), [255, 255, 0, 0]);
    }

    #[test]
    fn embedded_object_has_the_program_and_maps_this_code_uses() {
        // Parses the ELF without touching the kernel.
        let object = strings_in(PROGRAM_OBJECT);
        for name in [PROGRAM, MAP_CONFIG, MAP_PORTS, MAP_XSKS, MAP_COUNTERS] {
            assert!(
                object.iter().any(|n| n == name),
                "{name} missing from {object:?}"
            );
        }
    }

    /// The NUL-separated strings of the object: its string tables hold every symbol name
    /// (programs and BTF-defined maps are global symbols).
    fn strings_in(object: &[u8]) -> Vec<String> {
        // Section/symbol names appear NUL-terminated in the string table.
        object
            .split(|b| *b == 0)
            .filter_map(|s| std::str::from_utf8(s).ok())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}
