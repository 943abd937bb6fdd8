//! The IPv4 addresses the kernel has on an interface (getifaddrs(3)).
//!
//! `petrel serve --dataplane xdp` asks this whether the kernel owns the listen address
//! (then the kernel answers ARP for it and Petrel takes only the TCP port) and which
//! prefix length the on-link subnet has.

use std::ffi::CStr;
use std::io;
use std::net::Ipv4Addr;

use super::cvt;

/// An address and its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    /// The address.
    pub addr: Ipv4Addr,
    /// Its prefix length (0–32).
    pub prefix_len: u8,
}

/// The IPv4 addresses configured on interface `name`, in the kernel's order.
pub fn ipv4_addrs(name: &str) -> io::Result<Vec<Ipv4Net>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `head` (a live local) or fails with -1.
    cvt(unsafe { libc::getifaddrs(&mut head) })?;
    let mut found = Vec::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned, not freed before the
        // freeifaddrs below; its fields are valid for reading.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() || entry.ifa_name.is_null() {
            continue;
        }
        // SAFETY: `ifa_name` is a NUL-terminated string owned by the list.
        let entry_name = unsafe { CStr::from_ptr(entry.ifa_name) };
        if entry_name.to_bytes() != name.as_bytes() {
            continue;
        }
        // SAFETY: `ifa_addr` is non-null and points at a sockaddr of the list.
        if i32::from(unsafe { (*entry.ifa_addr).sa_family }) != libc::AF_INET {
            continue;
        }
        // SAFETY: the family is AF_INET, so the sockaddr is a sockaddr_in; the netmask of
        // an AF_INET entry is one too (checked for null).
        let addr = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in>() };
        let prefix_len = if entry.ifa_netmask.is_null() {
            32
        } else {
            // SAFETY: as above.
            let mask = unsafe { &*entry.ifa_netmask.cast::<libc::sockaddr_in>() };
            u32::from_be(mask.sin_addr.s_addr).count_ones() as u8
        };
        found.push(Ipv4Net {
            addr: Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
            prefix_len,
        });
    }
    // SAFETY: `head` came from getifaddrs and is freed once; no reference into the list
    // outlives this point (everything was copied into `found`).
    unsafe { libc::freeifaddrs(head) };
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_127_0_0_1_slash_8_and_unknown_interfaces_have_nothing() {
        let lo = ipv4_addrs("lo").unwrap();
        assert!(
            lo.contains(&Ipv4Net {
                addr: Ipv4Addr::LOCALHOST,
                prefix_len: 8
            }),
            "{lo:?}"
        );
        assert!(ipv4_addrs("petrel-no-such0").unwrap().is_empty());
    }
}
