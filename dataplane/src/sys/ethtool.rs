//! ntuple (Flow Director) rules through the `SIOCETHTOOL` ioctl: steer one TCP port to
//! one rx queue, so the AF_XDP socket on that queue (and the core that polls it) owns the
//! port's traffic — what `ethtool --config-ntuple IF flow-type tcp4 dst-port 9500 action 0`
//! does by hand.
//!
//! [`steer_tcp_port`] inserts the rule with `ETHTOOL_SRXCLSRLINS` (location chosen by the
//! driver); the returned [`NtupleRule`] deletes it with `ETHTOOL_SRXCLSRLDEL` when dropped.
//! NICs without ntuple support (veth, virtio, loopback) answer `EOPNOTSUPP`
//! ([`is_unsupported`]); the dataplane then says so once and relies on RSS with one socket
//! per queue.
//!
//! Verified on this machine only on the refusal path (veth and loopback have no ntuple
//! filters); the success path follows the uapi layout, which the tests pin byte for byte.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::cvt;

const ETHTOOL_SRXCLSRLDEL: u32 = 0x31;
const ETHTOOL_SRXCLSRLINS: u32 = 0x32;
const TCP_V4_FLOW: u32 = 0x01;
const RX_CLS_LOC_ANY: u32 = 0xffff_ffff;
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
    ifr.ifr_ifru.ifru_data = (request as *mut RxNfc).cast();
    // SAFETY: `ifr` is a live ifreq whose name is NUL-terminated (zeroed, shorter than
    // IFNAMSIZ) and whose data pointer points to `request`, a live RxNfc laid out as the
    // kernel's struct ethtool_rxnfc (pinned by the tests) that outlives the call. The
    // kernel reads and writes at most size_of::<RxNfc>() bytes of it for these commands.
    cvt(unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL as _, &mut ifr) })?;
    Ok(())
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
