//! The only module of Petrel where `unsafe` code may live.
//!
//! Everything that talks to the kernel below what safe crates offer goes through here, and
//! every `unsafe` block carries a `// SAFETY:` comment saying why it is sound. libc calls go
//! through [`cvt`], which turns the C convention (-1 and `errno`) into [`io::Error`], so no
//! caller ever reads `errno` itself (the pattern of mio's `syscall!`).
//!
//! Contents:
//! - [`cvt`]: the libc return-value helper;
//! - [`if_index`]: interface name → index;
//! - [`xsk`]: the AF_XDP socket — UMEM and the four mmap'ed rings (receive, transmit; its doc
//!   states the UMEM frame-ownership rule and how it is enforced);
//! - [`event`]: the eventfd that wakes an AF_XDP poller, and poll(2) over it and a socket;
//! - [`ethtool`]: ntuple rules steering a TCP port to an rx queue (`SIOCETHTOOL`);
//! - [`ifaddrs`]: the IPv4 addresses the kernel has on an interface;
//! - [`netns`]: moving a thread into another network namespace (the tests' veth lab);
//! - `dpdk` (cargo feature `dpdk`): the EAL, ports, queues, mbuf pools and mbufs over the
//!   C shim in `vendor/dpdk` (its doc states the mbuf ownership rule);
//! - [`sched`]: `SCHED_FIFO` for the storage syncer, so it runs as soon as its fsync ends;
//! - the `aya::Pod` marker for the XDP filter's config value, which aya copies into a BPF
//!   map byte for byte.

use std::ffi::CString;
use std::io;

use crate::xdp::filter::ConfigValue;

#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod ethtool;
pub mod event;
pub mod ifaddrs;
pub mod netns;
pub mod sched;
pub mod xsk;

/// Turns a libc return value into a `Result`: -1 becomes the thread's `errno` as an
/// [`io::Error`], anything else is returned unchanged.
pub fn cvt<T: IsMinusOne>(ret: T) -> io::Result<T> {
    if ret.is_minus_one() {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Integer types libc returns, where -1 signals an error.
pub trait IsMinusOne: Copy {
    /// Whether this is the error value -1.
    fn is_minus_one(self) -> bool;
}

macro_rules! impl_is_minus_one {
    ($($t:ty)*) => {$(
        impl IsMinusOne for $t {
            fn is_minus_one(self) -> bool {
                self == -1
            }
        }
    )*};
}
impl_is_minus_one! { i32 i64 isize }

/// The index of network interface `name`, or `NotFound`.
pub fn if_index(name: &str) -> io::Result<u32> {
    let c_name = CString::new(name).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name contains a NUL byte",
        )
    })?;
    // SAFETY: `c_name` is a valid NUL-terminated string that outlives the call;
    // if_nametoindex only reads it.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        // if_nametoindex reports failure as 0 with errno set (ENODEV for a missing name).
        let error = io::Error::last_os_error();
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("network interface {name:?}: {error}"),
        ));
    }
    Ok(index)
}

// SAFETY: `ConfigValue` is `#[repr(C)]`, `Copy`, made of two `u32`s with no padding, so every
// bit pattern is a valid value and its bytes are exactly the C `struct petrel_config`
// (checked by a size test in `xdp::filter`). aya copies it to and from the map as plain
// bytes, which is what `Pod` promises is sound.
unsafe impl aya::Pod for ConfigValue {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cvt_maps_minus_one_to_errno_and_passes_other_values() {
        assert_eq!(cvt(5i32).unwrap(), 5);
        assert_eq!(cvt(0isize).unwrap(), 0);
        // close(-1) fails with EBADF and returns -1.
        // SAFETY: closing an invalid descriptor touches no memory and no open file.
        let error = cvt(unsafe { libc::close(-1) }).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EBADF));
    }

    #[test]
    fn if_index_finds_loopback_and_rejects_unknown_names() {
        assert!(if_index("lo").unwrap() > 0);
        assert_eq!(
            if_index("petrel-no-such0").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            if_index("a\0b").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
