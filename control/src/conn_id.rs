//! Connection ids that say which core owns the socket.
//!
//! A transport may run one event loop per core. The control plane answers with actions
//! addressed to a [`ConnId`]; the owning core is encoded in the top 8 bits so the
//! transport can route an action to the right loop without a lookup table. The lower
//! 56 bits are a per-core counter chosen by that core's transport; ids are never reused
//! within one process lifetime.

use std::fmt;

/// Identifies one transport connection (one TCP stream) for its whole life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(u64);

impl ConnId {
    /// Bits of the id that hold the core index.
    pub const CORE_BITS: u32 = 8;
    /// Bits of the id that hold the per-core sequence number.
    pub const LOCAL_BITS: u32 = 64 - Self::CORE_BITS;
    /// Largest per-core sequence number.
    pub const MAX_LOCAL: u64 = (1 << Self::LOCAL_BITS) - 1;

    /// The id of the `local`-th connection of core `core`. Bits of `local` above
    /// [`ConnId::LOCAL_BITS`] are discarded.
    pub const fn new(core: u8, local: u64) -> ConnId {
        ConnId(((core as u64) << Self::LOCAL_BITS) | (local & Self::MAX_LOCAL))
    }

    /// Rebuilds an id from its raw `u64` form (see [`ConnId::as_u64`]).
    pub const fn from_u64(raw: u64) -> ConnId {
        ConnId(raw)
    }

    /// The raw `u64` form.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The core that owns the connection's socket.
    pub const fn core(self) -> u8 {
        (self.0 >> Self::LOCAL_BITS) as u8
    }

    /// The per-core part of the id.
    pub const fn local(self) -> u64 {
        self.0 & Self::MAX_LOCAL
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}/{}", self.core(), self.local())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_and_local_round_trip() {
        let id = ConnId::new(0xAB, 12345);
        assert_eq!(id.core(), 0xAB);
        assert_eq!(id.local(), 12345);
        assert_eq!(ConnId::from_u64(id.as_u64()), id);
        let max = ConnId::new(u8::MAX, ConnId::MAX_LOCAL);
        assert_eq!(max.core(), u8::MAX);
        assert_eq!(max.local(), ConnId::MAX_LOCAL);
        // Overflowing local bits never leak into the core.
        assert_eq!(ConnId::new(3, u64::MAX).core(), 3);
        assert_eq!(id.to_string(), "c171/12345");
    }
}
