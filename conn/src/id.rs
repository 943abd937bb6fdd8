//! Connection ids that say which core owns the socket.
//!
//! A server runs one loop per core. The control plane answers with actions addressed to
//! a [`ConnId`]; the owning core is encoded in the top 8 bits so the loop can route an
//! action to the right core without a lookup table. The lower 56 bits are chosen by that
//! core's transport. Transports use [`ConnId::from_slot`]: the low 32 bits are the
//! connection's slot in the transport's slab, so finding a connection by id is an index
//! and one comparison (no hash), and the 24 bits above them are a per-core counter that
//! tells a slot's successive connections apart. An id comes back only after 2^24
//! connections went through the same slot — long after any event of its predecessor
//! was handled.

use std::fmt;

/// Identifies one transport connection (one TCP stream) for its whole life.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
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

    /// Bits of [`ConnId::from_slot`]'s generation.
    pub const GENERATION_BITS: u32 = Self::LOCAL_BITS - 32;

    /// The id of the connection in slab slot `slot` of core `core`; `generation` (its
    /// low [`ConnId::GENERATION_BITS`] bits) tells successive connections of one slot
    /// apart.
    pub const fn from_slot(core: u8, slot: u32, generation: u64) -> ConnId {
        let generation = generation & ((1 << Self::GENERATION_BITS) - 1);
        ConnId::new(core, (generation << 32) | slot as u64)
    }

    /// The slab slot of an id made by [`ConnId::from_slot`].
    pub const fn slot(self) -> usize {
        (self.0 & 0xFFFF_FFFF) as usize
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

    #[test]
    fn a_slot_id_keeps_core_slot_and_generation_apart() {
        let id = ConnId::from_slot(3, 0xFFFF_FFFF, 7);
        assert_eq!(id.core(), 3);
        assert_eq!(id.slot(), 0xFFFF_FFFF);
        assert_ne!(id, ConnId::from_slot(3, 0xFFFF_FFFF, 8));
        // The generation wraps inside its bits and never reaches the core.
        let wrapped = ConnId::from_slot(3, 5, 1 << ConnId::GENERATION_BITS);
        assert_eq!(wrapped, ConnId::from_slot(3, 5, 0));
        assert_eq!(wrapped.core(), 3);
    }
}
