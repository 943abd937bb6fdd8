//! UMEM frame bookkeeping: who owns each frame, as pure logic tested without a NIC.
//!
//! A UMEM is one memory area cut into equal frames, shared by an AF_XDP socket and the
//! kernel. **Ownership rule:** a frame belongs to exactly one side at a time. It belongs to
//! the kernel from the moment its address is published on the fill ring (for the kernel to
//! receive into) or the tx ring (for the kernel to send) until the kernel hands it back on
//! the rx ring or the completion ring; otherwise it belongs to userspace. Touching a frame
//! the kernel owns corrupts packets silently, and publishing one twice loses it.
//!
//! [`FrameAllocator`] tracks that state for every frame and refuses every transition the
//! rule forbids, with a typed error instead of a panic — so a kernel (or bug) that hands
//! back an address we never gave out is counted and ignored, never trusted:
//!
//! ```text
//!            take_for_fill            received               release
//!   Free ───────────────────▶ Fill ─────────────▶ Rx ───────────────────▶ Free
//!     │                                           │ reuse_for_tx (reply in place)
//!     │ take_for_tx                               ▼
//!     └─────────────────────────────────────────▶ Tx ──── completed ────▶ Free
//! ```
//!
//! Performance-critical path: every operation is O(1), no allocation after construction.

/// Where a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameState {
    /// Userspace, unused: in the free list.
    Free,
    /// Kernel: published on the fill ring, waiting to receive a packet.
    Fill,
    /// Userspace: holds a received packet being processed.
    Rx,
    /// Kernel: published on the tx ring (or about to be), until the completion ring returns it.
    Tx,
}

/// Shape of a UMEM: `frame_count` frames of `frame_size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UmemLayout {
    frame_size: u32,
    frame_count: u32,
}

/// Errors of the bookkeeping. None of them is fatal: the frame in question is left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UmemError {
    /// Frame size not a power of two in 2048..=4096 (what the kernel's aligned mode accepts),
    /// no frames, or a total size beyond `u32` frames / `u64` bytes.
    #[error("bad UMEM layout: {frame_count} frames of {frame_size} bytes")]
    BadLayout {
        /// Requested frame size.
        frame_size: u32,
        /// Requested frame count.
        frame_count: u32,
    },
    /// An address beyond the UMEM.
    #[error("UMEM address {0:#x} is out of range")]
    OutOfRange(u64),
    /// A descriptor whose bytes run past the end of its frame.
    #[error("descriptor at {addr:#x} with length {len} crosses its frame's end")]
    Overrun {
        /// Descriptor address.
        addr: u64,
        /// Descriptor length.
        len: u32,
    },
    /// A transition the ownership rule forbids (e.g. the kernel completing a frame it was
    /// never given, or releasing a frame twice).
    #[error("frame {frame} is {found:?}, expected {expected:?}")]
    WrongState {
        /// Frame index.
        frame: u32,
        /// The state the transition needs.
        expected: FrameState,
        /// The frame's actual state.
        found: FrameState,
    },
}

impl UmemLayout {
    /// A layout, validated.
    pub fn new(frame_size: u32, frame_count: u32) -> Result<UmemLayout, UmemError> {
        let ok = frame_size.is_power_of_two()
            && (2048..=4096).contains(&frame_size)
            && frame_count > 0
            && u64::from(frame_size)
                .checked_mul(u64::from(frame_count))
                .is_some_and(|total| usize::try_from(total).is_ok());
        if ok {
            Ok(UmemLayout {
                frame_size,
                frame_count,
            })
        } else {
            Err(UmemError::BadLayout {
                frame_size,
                frame_count,
            })
        }
    }

    /// Bytes per frame.
    pub fn frame_size(&self) -> u32 {
        self.frame_size
    }

    /// Number of frames.
    pub fn frame_count(&self) -> u32 {
        self.frame_count
    }

    /// Size of the whole area in bytes.
    pub fn len(&self) -> usize {
        // Checked in `new`.
        (u64::from(self.frame_size) * u64::from(self.frame_count)) as usize
    }

    /// Always false: a layout has at least one frame.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The UMEM address of the start of frame `frame`.
    pub fn addr_of(&self, frame: u32) -> u64 {
        u64::from(frame) * u64::from(self.frame_size)
    }

    /// The frame containing `addr` (descriptors may point past a frame's start: headroom).
    pub fn frame_of(&self, addr: u64) -> Result<u32, UmemError> {
        let frame = addr / u64::from(self.frame_size);
        u32::try_from(frame)
            .ok()
            .filter(|f| *f < self.frame_count)
            .ok_or(UmemError::OutOfRange(addr))
    }

    /// Checks that `len` bytes at `addr` stay inside one frame; returns the frame.
    pub fn check_desc(&self, addr: u64, len: u32) -> Result<u32, UmemError> {
        let frame = self.frame_of(addr)?;
        let end = self.addr_of(frame) + u64::from(self.frame_size);
        if addr + u64::from(len) > end {
            return Err(UmemError::Overrun { addr, len });
        }
        Ok(frame)
    }
}

/// The owner of every frame of one UMEM (see the module doc for the rule and the states).
#[derive(Debug)]
pub struct FrameAllocator {
    layout: UmemLayout,
    state: Vec<FrameState>,
    /// Indexes of `Free` frames (LIFO: the most recently freed frame is still warm in cache).
    free: Vec<u32>,
    /// Number of frames in each state, indexed like `FrameState as usize`.
    counts: [u32; 4],
}

impl FrameAllocator {
    /// All frames of `layout`, free.
    pub fn new(layout: UmemLayout) -> FrameAllocator {
        let n = layout.frame_count;
        FrameAllocator {
            layout,
            state: vec![FrameState::Free; n as usize],
            free: (0..n).rev().collect(),
            counts: [n, 0, 0, 0],
        }
    }

    /// The layout.
    pub fn layout(&self) -> UmemLayout {
        self.layout
    }

    /// How many frames are in `state`.
    pub fn count(&self, state: FrameState) -> u32 {
        self.counts[state as usize]
    }

    /// The state of `frame`, if it exists.
    pub fn state(&self, frame: u32) -> Option<FrameState> {
        self.state.get(frame as usize).copied()
    }

    fn set(&mut self, frame: u32, from: FrameState, to: FrameState) -> Result<(), UmemError> {
        let slot = self
            .state
            .get_mut(frame as usize)
            .ok_or(UmemError::OutOfRange(u64::from(frame)))?;
        if *slot != from {
            return Err(UmemError::WrongState {
                frame,
                expected: from,
                found: *slot,
            });
        }
        *slot = to;
        self.counts[from as usize] -= 1;
        self.counts[to as usize] += 1;
        Ok(())
    }

    fn take_free(&mut self, to: FrameState) -> Option<u64> {
        let frame = self.free.pop()?;
        // A frame in the free list is Free by construction; `set` re-checks anyway.
        self.set(frame, FrameState::Free, to).ok()?;
        Some(self.layout.addr_of(frame))
    }

    /// A free frame to publish on the fill ring (its address), or `None` when none is free.
    pub fn take_for_fill(&mut self) -> Option<u64> {
        self.take_free(FrameState::Fill)
    }

    /// A free frame to build an outgoing packet in (its address), or `None`.
    pub fn take_for_tx(&mut self) -> Option<u64> {
        self.take_free(FrameState::Tx)
    }

    /// A frame the caller took with `take_for_fill` or `take_for_tx` but could not publish
    /// (the ring was full): back to the free list.
    pub fn unpublished(&mut self, addr: u64) -> Result<(), UmemError> {
        let frame = self.layout.frame_of(addr)?;
        let from = match self.state(frame) {
            Some(s @ (FrameState::Fill | FrameState::Tx)) => s,
            Some(found) => {
                return Err(UmemError::WrongState {
                    frame,
                    expected: FrameState::Fill,
                    found,
                });
            }
            None => return Err(UmemError::OutOfRange(addr)),
        };
        self.set(frame, from, FrameState::Free)?;
        self.free.push(frame);
        Ok(())
    }

    /// The kernel returned an rx descriptor: the frame must be one we put on the fill ring,
    /// and the packet must fit in it. Returns the frame index.
    pub fn received(&mut self, addr: u64, len: u32) -> Result<u32, UmemError> {
        let frame = self.layout.check_desc(addr, len)?;
        self.set(frame, FrameState::Fill, FrameState::Rx)?;
        Ok(frame)
    }

    /// Userspace is done with a received frame.
    pub fn release(&mut self, frame: u32) -> Result<(), UmemError> {
        self.set(frame, FrameState::Rx, FrameState::Free)?;
        self.free.push(frame);
        Ok(())
    }

    /// A received frame is rewritten in place as a reply (e.g. an ARP reply) and goes to tx.
    pub fn reuse_for_tx(&mut self, frame: u32) -> Result<u64, UmemError> {
        self.set(frame, FrameState::Rx, FrameState::Tx)?;
        Ok(self.layout.addr_of(frame))
    }

    /// The kernel returned a frame on the completion ring: it must be one we sent.
    pub fn completed(&mut self, addr: u64) -> Result<(), UmemError> {
        let frame = self.layout.frame_of(addr)?;
        self.set(frame, FrameState::Tx, FrameState::Free)?;
        self.free.push(frame);
        Ok(())
    }

    /// How many frames to publish on the fill ring to bring it to `target` frames,
    /// limited by what is free while keeping `tx_reserve` free frames for sending.
    pub fn fill_deficit(&self, target: u32, tx_reserve: u32) -> u32 {
        let wanted = target.saturating_sub(self.count(FrameState::Fill));
        let spare = self.count(FrameState::Free).saturating_sub(tx_reserve);
        wanted.min(spare)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(frames: u32) -> FrameAllocator {
        FrameAllocator::new(UmemLayout::new(2048, frames).unwrap())
    }

    fn assert_counts_sum(a: &FrameAllocator) {
        let sum: u32 = [
            FrameState::Free,
            FrameState::Fill,
            FrameState::Rx,
            FrameState::Tx,
        ]
        .iter()
        .map(|s| a.count(*s))
        .sum();
        assert_eq!(sum, a.layout().frame_count());
        assert_eq!(a.free.len() as u32, a.count(FrameState::Free));
    }

    #[test]
    fn layout_rejects_sizes_the_kernel_refuses() {
        assert!(UmemLayout::new(2048, 1).is_ok());
        assert!(UmemLayout::new(4096, 4096).is_ok());
        for (size, count) in [(1024, 4), (3000, 4), (8192, 4), (2048, 0)] {
            assert_eq!(
                UmemLayout::new(size, count),
                Err(UmemError::BadLayout {
                    frame_size: size,
                    frame_count: count
                })
            );
        }
        assert_eq!(UmemLayout::new(4096, 4).unwrap().len(), 16384);
    }

    #[test]
    fn descriptors_must_stay_inside_one_frame() {
        let l = UmemLayout::new(2048, 4).unwrap();
        assert_eq!(l.check_desc(2048 + 256, 1792), Ok(1));
        assert_eq!(
            l.check_desc(2048 + 256, 1793),
            Err(UmemError::Overrun {
                addr: 2048 + 256,
                len: 1793
            })
        );
        assert_eq!(l.check_desc(8192, 1), Err(UmemError::OutOfRange(8192)));
        assert_eq!(
            l.check_desc(u64::MAX, 0),
            Err(UmemError::OutOfRange(u64::MAX))
        );
    }

    #[test]
    fn fill_receive_release_cycle() {
        let mut a = alloc(4);
        let addr = a.take_for_fill().unwrap();
        assert_eq!(a.count(FrameState::Fill), 1);
        // The kernel wrote a packet at a headroom offset inside the frame.
        let frame = a.received(addr + 64, 60).unwrap();
        assert_eq!(a.state(frame), Some(FrameState::Rx));
        a.release(frame).unwrap();
        assert_eq!(a.count(FrameState::Free), 4);
        assert_counts_sum(&a);
    }

    #[test]
    fn rx_for_a_frame_never_filled_is_refused() {
        let mut a = alloc(4);
        assert_eq!(
            a.received(0, 60),
            Err(UmemError::WrongState {
                frame: 0,
                expected: FrameState::Fill,
                found: FrameState::Free
            })
        );
        assert_counts_sum(&a);
    }

    #[test]
    fn double_release_and_double_completion_are_refused() {
        let mut a = alloc(2);
        let addr = a.take_for_fill().unwrap();
        let frame = a.received(addr, 60).unwrap();
        a.release(frame).unwrap();
        assert!(matches!(
            a.release(frame),
            Err(UmemError::WrongState { .. })
        ));

        let tx = a.take_for_tx().unwrap();
        a.completed(tx).unwrap();
        assert!(matches!(a.completed(tx), Err(UmemError::WrongState { .. })));
        assert_eq!(a.count(FrameState::Free), 2);
        assert_counts_sum(&a);
    }

    #[test]
    fn reply_in_place_goes_rx_to_tx_to_free() {
        let mut a = alloc(2);
        let addr = a.take_for_fill().unwrap();
        let frame = a.received(addr, 42).unwrap();
        let tx_addr = a.reuse_for_tx(frame).unwrap();
        assert_eq!(tx_addr, addr);
        assert_eq!(a.count(FrameState::Tx), 1);
        a.completed(tx_addr).unwrap();
        assert_eq!(a.count(FrameState::Free), 2);
        assert_counts_sum(&a);
    }

    #[test]
    fn exhaustion_returns_none_and_unpublished_frames_come_back() {
        let mut a = alloc(3);
        let taken: Vec<u64> = std::iter::from_fn(|| a.take_for_fill()).collect();
        assert_eq!(taken.len(), 3);
        assert_eq!(a.take_for_tx(), None);
        // The fill ring only had room for one: the other two are handed back.
        a.unpublished(taken[1]).unwrap();
        a.unpublished(taken[2]).unwrap();
        assert!(matches!(
            a.unpublished(taken[2]),
            Err(UmemError::WrongState { .. })
        ));
        assert_eq!(a.count(FrameState::Free), 2);
        assert_counts_sum(&a);
    }

    #[test]
    fn fill_deficit_keeps_a_tx_reserve() {
        let mut a = alloc(8);
        assert_eq!(a.fill_deficit(6, 4), 4);
        for _ in 0..4 {
            a.take_for_fill().unwrap();
        }
        assert_eq!(a.fill_deficit(6, 4), 0);
        assert_eq!(a.fill_deficit(5, 2), 1);
        assert_eq!(a.fill_deficit(2, 0), 0);
    }

    #[test]
    fn random_kernel_answers_never_break_the_invariants() {
        // A kernel (or bug) returning arbitrary addresses: every refusal leaves the counts
        // consistent and no frame is ever handed out twice.
        let mut a = alloc(16);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut outstanding = Vec::new();
        for _ in 0..10_000 {
            match next() % 6 {
                0 => outstanding.extend(a.take_for_fill()),
                1 => outstanding.extend(a.take_for_tx()),
                2 => {
                    let _ = a.received(next() % (16 * 2048 + 100), (next() % 3000) as u32);
                }
                3 => {
                    let _ = a.completed(next() % (16 * 2048 + 100));
                }
                4 => {
                    let _ = a.release((next() % 20) as u32);
                }
                _ => {
                    if let Some(addr) = outstanding.pop() {
                        let _ = a.unpublished(addr);
                    }
                }
            }
            assert_counts_sum(&a);
        }
        let mut seen = a.free.clone();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(
            seen.len(),
            a.free.len(),
            "a frame is in the free list twice"
        );
    }
}
