//! `SIOCETHTOOL`: what `ethtool` does by hand, without shelling out to it.
//!
//! **ntuple (Flow Director) rules**: steer one TCP port to one rx queue, so the AF_XDP
//! socket on that queue (and the core that polls it) owns the port's traffic — what
//! `ethtool --config-ntuple IF flow-type tcp4 dst-port 9500 action 0` does.
//! [`steer_tcp_port`] inserts the rule with `ETHTOOL_SRXCLSRLINS` (location chosen by the
//! driver); the returned [`NtupleRule`] deletes it with `ETHTOOL_SRXCLSRLDEL` when dropped.
//! NICs without ntuple support (veth, virtio, loopback) answer `EOPNOTSUPP`
//! ([`is_unsupported`]); the dataplane then says so once and relies on RSS with one socket
//! per queue. [`ntuple_rules`] lists the installed rules (`ethtool -n`).
//!
//! **Host tuning** (`petrel doctor` / `petrel tune`): driver info ([`driver_info`],
//! `ethtool -i`), ring sizes ([`rings`] / [`set_rings`], `ethtool -g` / `-G`), channel
//! counts ([`channels`] / [`set_channels`], `ethtool -l` / `-L`) and whether the NIC can
//! do ntuple filtering at all ([`ntuple_feature`], the `rx-ntuple-filter` bit of
//! `ethtool -k`).
//!
//! Every request is a `#[repr(C)]` copy of its `linux/ethtool.h` struct whose layout the
//! tests pin, or (for the variable-length string and feature sets) a buffer sized from the
//! counts the kernel reported first. Verified on this machine on veth (channels read and
//! set, rings and ntuple refused) and virtio_net (everything read, ntuple `[fixed]` off);
//! the ntuple insert path follows the uapi layout byte for byte.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::cvt;

const ETHTOOL_GDRVINFO: u32 = 0x03;
const ETHTOOL_GRINGPARAM: u32 = 0x10;
const ETHTOOL_SRINGPARAM: u32 = 0x11;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GRXCLSRLCNT: u32 = 0x2e;
const ETHTOOL_GRXCLSRULE: u32 = 0x2f;
const ETHTOOL_GRXCLSRLALL: u32 = 0x30;
const ETHTOOL_SRXCLSRLDEL: u32 = 0x31;
const ETHTOOL_SRXCLSRLINS: u32 = 0x32;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETHTOOL_GCHANNELS: u32 = 0x3c;
const ETHTOOL_SCHANNELS: u32 = 0x3d;
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;
const TCP_V4_FLOW: u32 = 0x01;
const FLOW_EXT_AND_MAC: u32 = 0x8000_0000 | 0x4000_0000;
const RX_CLS_LOC_ANY: u32 = 0xffff_ffff;
/// Byte offset of `rule_locs` in `struct ethtool_rxnfc` (right after `rule_cnt`).
const RULE_LOCS: usize = 188;
/// Most rules [`ntuple_rules`] lists (NICs hold a few thousand at most).
const MAX_RULES: u32 = 16 * 1024;
const SIOCETHTOOL: libc::c_ulong = 0x8946;

/// `struct ethtool_rx_flow_spec` (linux/ethtool.h). The unions are kept as bytes; only
/// `tcp_ip4_spec` (ip4src, ip4dst, psrc, pdst, tos) is written.
#[repr(C)]
#[derive(Clone, Copy)]
struct FlowSpec {
    flow_type: u32,
    h_u: [u8; 52],
    h_ext: [u8; 20],
    m_u: [u8; 52],
    m_ext: [u8; 20],
    ring_cookie: u64,
    location: u32,
}

/// `struct ethtool_rxnfc` without the trailing flexible array.
#[repr(C)]
#[derive(Clone, Copy)]
struct RxNfc {
    cmd: u32,
    flow_type: u32,
    data: u64,
    fs: FlowSpec,
    rule_cnt: u32,
}

impl RxNfc {
    fn zeroed() -> RxNfc {
        RxNfc {
            cmd: 0,
            flow_type: 0,
            data: 0,
            fs: FlowSpec {
                flow_type: 0,
                h_u: [0; 52],
                h_ext: [0; 20],
                m_u: [0; 52],
                m_ext: [0; 20],
                ring_cookie: 0,
                location: 0,
            },
            rule_cnt: 0,
        }
    }
}

/// An installed ntuple rule; deleted when dropped.
#[derive(Debug)]
pub struct NtupleRule {
    iface: String,
    location: u32,
}

impl NtupleRule {
    /// Where the driver put the rule.
    pub fn location(&self) -> u32 {
        self.location
    }
}

impl Drop for NtupleRule {
    fn drop(&mut self) {
        let mut request = RxNfc::zeroed();
        request.cmd = ETHTOOL_SRXCLSRLDEL;
        request.fs.location = self.location;
        if let Err(error) = ethtool(&self.iface, &mut request) {
            tracing::warn!(iface = %self.iface, location = self.location, %error, "could not delete ntuple rule");
        }
    }
}

/// Whether `error` means the interface has no ntuple filters.
pub fn is_unsupported(error: &io::Error) -> bool {
    error.raw_os_error() == Some(libc::EOPNOTSUPP)
}

/// Steers TCP to `port` (and to `dst`, if given) arriving on `iface` to rx queue `queue`.
/// Needs `CAP_NET_ADMIN`.
pub fn steer_tcp_port(
    iface: &str,
    dst: Option<Ipv4Addr>,
    port: u16,
    queue: u32,
) -> io::Result<NtupleRule> {
    let mut request = RxNfc::zeroed();
    request.cmd = ETHTOOL_SRXCLSRLINS;
    request.fs.flow_type = TCP_V4_FLOW;
    // tcp_ip4_spec: ip4src 0..4, ip4dst 4..8, psrc 8..10, pdst 10..12, tos 12.
    // A mask bit of 1 means "match this bit".
    if let Some(dst) = dst {
        request.fs.h_u[4..8].copy_from_slice(&dst.octets());
        request.fs.m_u[4..8].copy_from_slice(&[0xff; 4]);
    }
    request.fs.h_u[10..12].copy_from_slice(&port.to_be_bytes());
    request.fs.m_u[10..12].copy_from_slice(&[0xff; 2]);
    request.fs.ring_cookie = u64::from(queue);
    request.fs.location = RX_CLS_LOC_ANY;
    ethtool(iface, &mut request)?;
    Ok(NtupleRule {
        iface: iface.to_owned(),
        location: request.fs.location,
    })
}

/// Sends one `SIOCETHTOOL` request for `iface`; the kernel may write results back into
/// `request`.
fn ethtool(iface: &str, request: &mut RxNfc) -> io::Result<()> {
    // SAFETY: `request` is a live RxNfc laid out as the kernel's struct ethtool_rxnfc
    // (pinned by the tests); for the rule commands sent with it (insert, delete, get one,
    // count) the kernel reads and writes at most size_of::<RxNfc>() bytes.
    unsafe { ethtool_ioctl(iface, (request as *mut RxNfc).cast()) }
}

/// Sends one `SIOCETHTOOL` request whose argument is the `#[repr(C)]` value `request`.
///
/// # Safety
/// `request` must be laid out as the kernel struct of the command in its first field,
/// and the kernel must read and write no more than `size_of::<T>()` bytes for it.
unsafe fn ethtool_value<T: Copy>(iface: &str, request: &mut T) -> io::Result<()> {
    // SAFETY: forwarded from the caller: `request` is live for the call, laid out as the
    // command's struct and big enough for everything the kernel writes.
    unsafe { ethtool_ioctl(iface, (request as *mut T).cast()) }
}

/// Sends one `SIOCETHTOOL` request with argument `data`.
///
/// # Safety
/// `data` must point to a live, writable buffer laid out as the kernel struct of the
/// command it starts with, large enough for everything the kernel writes for it.
unsafe fn ethtool_ioctl(iface: &str, data: *mut libc::c_void) -> io::Result<()> {
    let name = iface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {iface:?}"),
        ));
    }
    // SAFETY: socket() takes plain values and returns a new descriptor or -1.
    let raw =
        cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `raw` was just created and is owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data (a name and a union of integers and pointers); all-zero
    // is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = data.cast();
    // SAFETY: `ifr` is a live ifreq whose name is NUL-terminated (zeroed, shorter than
    // IFNAMSIZ) and whose data pointer is `data`, which the caller guarantees is a live
    // buffer laid out and sized for the command it carries.
    cvt(unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL as _, &mut ifr) })?;
    Ok(())
}

/// `struct ethtool_drvinfo`.
#[repr(C)]
#[derive(Clone, Copy)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// What `ethtool -i IF` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverInfo {
    /// Driver name, e.g. `ixgbe`, `mlx5_core`, `virtio_net`, `veth`.
    pub driver: String,
    /// Driver version.
    pub version: String,
    /// Firmware version (empty when the driver has none).
    pub firmware: String,
    /// Bus address, e.g. `0000:00:03.0` (empty for virtual devices).
    pub bus_info: String,
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The interface's driver (`ETHTOOL_GDRVINFO`).
pub fn driver_info(iface: &str) -> io::Result<DriverInfo> {
    let mut request = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        version: [0; 32],
        fw_version: [0; 32],
        bus_info: [0; 32],
        erom_version: [0; 32],
        reserved2: [0; 12],
        n_priv_flags: 0,
        n_stats: 0,
        testinfo_len: 0,
        eedump_len: 0,
        regdump_len: 0,
    };
    // SAFETY: DrvInfo is struct ethtool_drvinfo (pinned by the tests), which is all the
    // kernel writes for ETHTOOL_GDRVINFO.
    unsafe { ethtool_value(iface, &mut request)? };
    Ok(DriverInfo {
        driver: c_string(&request.driver),
        version: c_string(&request.version),
        firmware: c_string(&request.fw_version),
        bus_info: c_string(&request.bus_info),
    })
}

/// `struct ethtool_ringparam`: what `ethtool -g IF` shows and `ethtool -G IF` sets.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rings {
    cmd: u32,
    /// Largest rx ring the NIC supports.
    pub rx_max: u32,
    /// Largest rx mini ring.
    pub rx_mini_max: u32,
    /// Largest rx jumbo ring.
    pub rx_jumbo_max: u32,
    /// Largest tx ring.
    pub tx_max: u32,
    /// Current rx ring size.
    pub rx: u32,
    /// Current rx mini ring size.
    pub rx_mini: u32,
    /// Current rx jumbo ring size.
    pub rx_jumbo: u32,
    /// Current tx ring size.
    pub tx: u32,
}

impl Rings {
    /// Ring sizes from their maxima and current values (as parsed from `ethtool -g`).
    pub fn new(rx_max: u32, tx_max: u32, rx: u32, tx: u32) -> Rings {
        Rings {
            rx_max,
            tx_max,
            rx,
            tx,
            ..Rings::default()
        }
    }
}

/// The interface's ring sizes (`ETHTOOL_GRINGPARAM`). `EOPNOTSUPP` from drivers without
/// configurable rings (veth).
pub fn rings(iface: &str) -> io::Result<Rings> {
    let mut request = Rings {
        cmd: ETHTOOL_GRINGPARAM,
        ..Rings::default()
    };
    // SAFETY: Rings is struct ethtool_ringparam (pinned by the tests), all the kernel
    // writes for ETHTOOL_GRINGPARAM.
    unsafe { ethtool_value(iface, &mut request)? };
    Ok(request)
}

/// Sets the current rx and tx ring sizes (`ETHTOOL_SRINGPARAM`; `ethtool -G IF rx N tx
/// N`), keeping the mini and jumbo rings as they are. Needs `CAP_NET_ADMIN`; most drivers
/// reset the interface to apply it (a short link flap).
pub fn set_rings(iface: &str, rx: u32, tx: u32) -> io::Result<()> {
    let mut request = rings(iface)?;
    request.cmd = ETHTOOL_SRINGPARAM;
    request.rx = rx;
    request.tx = tx;
    // SAFETY: as in `rings`; for ETHTOOL_SRINGPARAM the kernel only reads the struct.
    unsafe { ethtool_value(iface, &mut request) }
}

/// `struct ethtool_channels`: what `ethtool -l IF` shows and `ethtool -L IF` sets.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Channels {
    cmd: u32,
    /// Most rx-only channels.
    pub max_rx: u32,
    /// Most tx-only channels.
    pub max_tx: u32,
    /// Most other channels (link interrupts, ...).
    pub max_other: u32,
    /// Most combined (rx + tx) channels.
    pub max_combined: u32,
    /// Current rx-only channels.
    pub rx: u32,
    /// Current tx-only channels.
    pub tx: u32,
    /// Current other channels.
    pub other: u32,
    /// Current combined channels.
    pub combined: u32,
}

impl Channels {
    /// Channel counts from their maxima and current values (as parsed from
    /// `ethtool -l`); `[rx, tx, other, combined]` each.
    pub fn new(max: [u32; 4], current: [u32; 4]) -> Channels {
        Channels {
            cmd: 0,
            max_rx: max[0],
            max_tx: max[1],
            max_other: max[2],
            max_combined: max[3],
            rx: current[0],
            tx: current[1],
            other: current[2],
            combined: current[3],
        }
    }

    /// Rx queues these channels give (combined plus rx-only).
    pub fn rx_queues(&self) -> u32 {
        self.combined + self.rx
    }

    /// Most rx queues the NIC can give.
    pub fn max_rx_queues(&self) -> u32 {
        self.max_combined.max(self.max_rx)
    }
}

/// The interface's channel counts (`ETHTOOL_GCHANNELS`).
pub fn channels(iface: &str) -> io::Result<Channels> {
    let mut request = Channels {
        cmd: ETHTOOL_GCHANNELS,
        ..Channels::default()
    };
    // SAFETY: Channels is struct ethtool_channels (pinned by the tests), all the kernel
    // writes for ETHTOOL_GCHANNELS.
    unsafe { ethtool_value(iface, &mut request)? };
    Ok(request)
}

/// Sets the channel counts (`ETHTOOL_SCHANNELS`; `ethtool -L IF combined N`). `queues`
/// goes to the combined count when the NIC has combined channels, else to rx and tx.
/// Needs `CAP_NET_ADMIN`.
pub fn set_channels(iface: &str, queues: u32) -> io::Result<()> {
    let mut request = channels(iface)?;
    request.cmd = ETHTOOL_SCHANNELS;
    if request.max_combined > 0 {
        request.combined = queues;
        // Keep rx-only/tx-only channels only where the NIC has nothing else.
        request.rx = 0;
        request.tx = 0;
    } else {
        request.rx = queues;
        request.tx = queues;
    }
    // SAFETY: as in `channels`; for ETHTOOL_SCHANNELS the kernel only reads the struct.
    unsafe { ethtool_value(iface, &mut request) }
}

/// Whether the NIC can filter by ntuple (`rx-ntuple-filter` in `ethtool -k IF`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NtupleFeature {
    /// The driver can switch ntuple filtering on (`ethtool -K IF ntuple on`); false shows
    /// as `[fixed]`.
    pub available: bool,
    /// It is on now.
    pub active: bool,
}

/// `struct ethtool_sset_info` with room for one set's count.
#[repr(C)]
#[derive(Clone, Copy)]
struct SsetInfo {
    cmd: u32,
    reserved: u32,
    sset_mask: u64,
    data: [u32; 1],
}

/// The `rx-ntuple-filter` feature bit, looked up by name in the kernel's feature string
/// set (its index differs between kernel versions).
pub fn ntuple_feature(iface: &str) -> io::Result<NtupleFeature> {
    let mut info = SsetInfo {
        cmd: ETHTOOL_GSSET_INFO,
        reserved: 0,
        sset_mask: 1 << ETH_SS_FEATURES,
        data: [0],
    };
    // SAFETY: SsetInfo is struct ethtool_sset_info with one data slot; with one bit set in
    // sset_mask the kernel writes the mask and at most one u32 of data.
    unsafe { ethtool_value(iface, &mut info)? };
    if info.sset_mask & (1 << ETH_SS_FEATURES) == 0 {
        return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
    }
    let count = info.data[0] as usize;
    if count == 0 || count > 4096 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{count} feature names"),
        ));
    }
    // struct ethtool_gstrings: cmd, string_set, len, then len * ETH_GSTRING_LEN bytes.
    let mut strings = vec![0u8; 12 + count * ETH_GSTRING_LEN];
    strings[0..4].copy_from_slice(&ETHTOOL_GSTRINGS.to_ne_bytes());
    strings[4..8].copy_from_slice(&ETH_SS_FEATURES.to_ne_bytes());
    strings[8..12].copy_from_slice(&(count as u32).to_ne_bytes());
    // SAFETY: `strings` is a live buffer holding struct ethtool_gstrings for `count`
    // strings, exactly the header plus len * ETH_GSTRING_LEN bytes the kernel writes
    // (it writes no more than the count it reported, and never more than `len`).
    unsafe { ethtool_ioctl(iface, strings.as_mut_ptr().cast())? };
    let bit = strings[12..]
        .chunks_exact(ETH_GSTRING_LEN)
        .position(|name| c_string(name) == "rx-ntuple-filter")
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no rx-ntuple-filter feature"))?;

    // struct ethtool_gfeatures: cmd, size, then size blocks of
    // {available, requested, active, never_changed}.
    let blocks = count.div_ceil(32);
    let mut features = vec![0u32; 2 + blocks * 4];
    features[0] = ETHTOOL_GFEATURES;
    features[1] = blocks as u32;
    // SAFETY: `features` is a live u32 buffer holding struct ethtool_gfeatures with
    // `blocks` blocks, the most the kernel writes when size is `blocks`.
    unsafe { ethtool_ioctl(iface, features.as_mut_ptr().cast())? };
    let block = &features[2 + (bit / 32) * 4..2 + (bit / 32) * 4 + 4];
    let mask = 1u32 << (bit % 32);
    Ok(NtupleFeature {
        available: block[0] & mask != 0,
        active: block[2] & mask != 0,
    })
}

/// One installed ntuple rule, as `ethtool -n IF rule LOC` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NtupleRuleInfo {
    /// Location in the NIC's rule table.
    pub location: u32,
    /// `flow_type` without the FLOW_EXT/FLOW_MAC_EXT flags (1 = tcp4).
    pub flow_type: u32,
    /// Destination port matched, when the rule matches one (tcp4/udp4 rules).
    pub dst_port: Option<u16>,
    /// Destination address matched, when the rule matches one.
    pub dst_ip: Option<Ipv4Addr>,
    /// The action: the rx queue, or `u64::MAX` (RX_CLS_FLOW_DISC) for drop.
    pub action: u64,
}

/// The installed ntuple rules (`ETHTOOL_GRXCLSRLCNT`, `GRXCLSRLALL`, `GRXCLSRULE`).
/// `EOPNOTSUPP` from NICs without ntuple filters.
pub fn ntuple_rules(iface: &str) -> io::Result<Vec<NtupleRuleInfo>> {
    let mut count = RxNfc::zeroed();
    count.cmd = ETHTOOL_GRXCLSRLCNT;
    ethtool(iface, &mut count)?;
    let n = count.rule_cnt.min(MAX_RULES);
    if n == 0 {
        return Ok(Vec::new());
    }
    // struct ethtool_rxnfc with rule_locs[rule_cnt] from byte RULE_LOCS on (inside the
    // struct's tail padding, as C lays out a flexible array); a u64 buffer keeps the
    // struct's alignment.
    let bytes = RULE_LOCS + 4 * n as usize;
    let mut all = vec![0u64; bytes.div_ceil(8).max(std::mem::size_of::<RxNfc>() / 8)];
    let mut head = RxNfc::zeroed();
    head.cmd = ETHTOOL_GRXCLSRLALL;
    head.rule_cnt = n;
    head.data = count.data;
    // SAFETY: `all` is 8-aligned and at least size_of::<RxNfc>() bytes long, so an RxNfc
    // (plain integers and byte arrays) may be written over its start.
    unsafe { std::ptr::write(all.as_mut_ptr().cast::<RxNfc>(), head) };
    // SAFETY: `all` is a live buffer holding struct ethtool_rxnfc with rule_cnt = n and
    // room for n u32 locations from RULE_LOCS on: the most the kernel writes for
    // ETHTOOL_GRXCLSRLALL (it refuses with EMSGSIZE when more rules exist).
    unsafe { ethtool_ioctl(iface, all.as_mut_ptr().cast())? };
    let raw: Vec<u8> = all.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let got = u32::from_ne_bytes(raw[184..188].try_into().expect("4 bytes")).min(n) as usize;
    let locations: Vec<u32> = raw[RULE_LOCS..RULE_LOCS + 4 * got]
        .chunks_exact(4)
        .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
        .collect();
    let mut rules = Vec::with_capacity(locations.len());
    for location in locations {
        let mut one = RxNfc::zeroed();
        one.cmd = ETHTOOL_GRXCLSRULE;
        one.fs.location = location;
        ethtool(iface, &mut one)?;
        rules.push(rule_info(&one.fs));
    }
    Ok(rules)
}

fn rule_info(fs: &FlowSpec) -> NtupleRuleInfo {
    let flow_type = fs.flow_type & !FLOW_EXT_AND_MAC;
    // tcp_ip4_spec / udp_ip4_spec: ip4src 0..4, ip4dst 4..8, psrc 8..10, pdst 10..12.
    let ip4 = matches!(flow_type, 0x01..=0x03);
    let dst_port =
        (ip4 && fs.m_u[10..12] != [0, 0]).then(|| u16::from_be_bytes([fs.h_u[10], fs.h_u[11]]));
    let dst_ip = (ip4 && fs.m_u[4..8] != [0; 4])
        .then(|| Ipv4Addr::new(fs.h_u[4], fs.h_u[5], fs.h_u[6], fs.h_u[7]));
    NtupleRuleInfo {
        location: fs.location,
        flow_type,
        dst_port,
        dst_ip,
        action: fs.ring_cookie,
    }
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn layout_matches_linux_ethtool_h() {
        assert_eq!(size_of::<FlowSpec>(), 168);
        assert_eq!(offset_of!(FlowSpec, h_u), 4);
        assert_eq!(offset_of!(FlowSpec, h_ext), 56);
        assert_eq!(offset_of!(FlowSpec, m_u), 76);
        assert_eq!(offset_of!(FlowSpec, m_ext), 128);
        assert_eq!(offset_of!(FlowSpec, ring_cookie), 152);
        assert_eq!(offset_of!(FlowSpec, location), 160);
        assert_eq!(size_of::<RxNfc>(), 192);
        assert_eq!(offset_of!(RxNfc, fs), 16);
        assert_eq!(offset_of!(RxNfc, rule_cnt), 184);
        assert_eq!(RULE_LOCS, offset_of!(RxNfc, rule_cnt) + 4);
    }

    #[test]
    fn tuning_structs_match_linux_ethtool_h() {
        assert_eq!(size_of::<DrvInfo>(), 196);
        assert_eq!(offset_of!(DrvInfo, bus_info), 100);
        assert_eq!(offset_of!(DrvInfo, n_priv_flags), 176);
        assert_eq!(size_of::<Rings>(), 36);
        assert_eq!(offset_of!(Rings, rx), 20);
        assert_eq!(offset_of!(Rings, tx), 32);
        assert_eq!(size_of::<Channels>(), 36);
        assert_eq!(offset_of!(Channels, max_combined), 16);
        assert_eq!(offset_of!(Channels, combined), 32);
        assert_eq!(offset_of!(SsetInfo, sset_mask), 8);
        assert_eq!(offset_of!(SsetInfo, data), 16);
    }

    #[test]
    fn rule_info_reads_the_tcp4_port_and_queue_written_by_steer() {
        let mut fs = RxNfc::zeroed().fs;
        fs.flow_type = TCP_V4_FLOW;
        fs.h_u[10..12].copy_from_slice(&9501u16.to_be_bytes());
        fs.m_u[10..12].copy_from_slice(&[0xff; 2]);
        fs.ring_cookie = 1;
        fs.location = 2;
        let info = rule_info(&fs);
        assert_eq!(
            info,
            NtupleRuleInfo {
                location: 2,
                flow_type: TCP_V4_FLOW,
                dst_port: Some(9501),
                dst_ip: None,
                action: 1
            }
        );
    }

    #[test]
    fn loopback_reports_its_driver_and_refuses_rings_and_rules() {
        // Loopback has no drvinfo op either on some kernels; both answers are fine, but
        // never a panic or a bogus success for rings/rules.
        let _ = driver_info("lo");
        assert!(rings("lo").is_err());
        assert!(ntuple_rules("lo").is_err());
    }

    #[test]
    fn loopback_has_no_ntuple_filters() {
        // EOPNOTSUPP as root, EPERM otherwise: never a rule.
        let error = steer_tcp_port("lo", None, 9500, 0).unwrap_err();
        assert!(
            is_unsupported(&error) || error.raw_os_error() == Some(libc::EPERM),
            "{error}"
        );
    }

    #[test]
    fn bad_names_are_refused_before_any_syscall() {
        for name in ["", "a-name-far-too-long", "a\0b"] {
            assert_eq!(
                steer_tcp_port(name, None, 9500, 0).unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
        }
    }
}
