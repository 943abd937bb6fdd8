//! An AF_XDP socket with its own UMEM and four mmap'ed rings.
//!
//! ## UMEM frame ownership
//! A frame belongs to the kernel from the moment its address is published on the fill (or
//! tx) ring until the kernel hands it back on the rx (or completion) ring; otherwise it
//! belongs to us. This type enforces the rule at run time: every frame's state lives in a
//! [`FrameAllocator`], and the only ways to see a frame's bytes are [`Xsk::receive`], which
//! lends a frame the allocator has just moved from `Fill` to `Rx` (so the kernel has
//! returned it and will not write it again until we publish it, which needs `&mut self`),
//! and [`Xsk::send`], which lends a frame just moved from `Free` to `Tx` before publishing it.
//! An rx descriptor the allocator refuses (an address we never published, a length
//! crossing the frame) is counted and skipped, never read.
//!
//! ## Ring protocol
//! For a ring we produce (fill, tx): write slots between our producer index and the
//! consumer index the kernel published (read with Acquire), then publish the new producer
//! index with Release. For a ring we consume (rx, completion): read the producer index with
//! Acquire, read the slots, then publish the new consumer index with Release. Index math:
//! [`crate::xdp::ring`].
//!
//! Transmit: [`Xsk::send`] builds a frame in a free UMEM frame (moved to `Tx`, so the
//! kernel cannot have it) and queues it on the tx ring; [`Xsk::flush_tx`] kicks the kernel
//! (copy mode transmits in the `sendto` call); the completion ring hands frames back.
//!
//! Not written yet: batched transmit, replying in place in a received frame, shared UMEM
//! between sockets, zero-copy binding (veth refuses it with EOPNOTSUPP anyway).

use std::ffi::c_void;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use super::cvt;
use crate::xdp::ring;
use crate::xdp::umem::{FrameAllocator, FrameState, UmemLayout};

/// How to bind the socket to its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    /// Copy mode: works on every driver (the kernel copies each frame into the UMEM).
    Copy,
    /// Zero-copy: the NIC DMAs into the UMEM. Refused (EOPNOTSUPP) by drivers without
    /// support, veth included.
    ZeroCopy,
}

/// Settings of one socket.
#[derive(Debug, Clone, Copy)]
pub struct XskConfig {
    /// UMEM frame size (2048 or 4096).
    pub frame_size: u32,
    /// UMEM frames.
    pub frame_count: u32,
    /// Slots in each of the four rings (a power of two).
    pub ring_size: u32,
    /// Copy or zero-copy.
    pub bind: BindMode,
    /// Frames kept free for transmitting (not published on the fill ring).
    pub tx_reserve: u32,
}

impl XskConfig {
    /// The fewest frames this config works with: a full fill ring, a full tx ring *and*
    /// the reserve. With fewer, a transmit backlog (a slow peer leaves the tx ring full)
    /// holds the frames the fill ring needs, the kernel finds the fill ring empty and drops
    /// every frame it receives — the collapse a million-connection storm on the veth lab
    /// showed (receive rounds slowed, the tx ring filled, then ~4 million rx drops).
    pub fn min_frames(&self) -> u32 {
        self.ring_size
            .saturating_mul(2)
            .saturating_add(self.tx_reserve)
    }
}

impl Default for XskConfig {
    fn default() -> Self {
        XskConfig {
            frame_size: 2048,
            // min_frames() is 5,120: room for a full fill ring, a full tx ring and the
            // reserve (16 MiB of UMEM per queue).
            frame_count: 8192,
            ring_size: 2048,
            bind: BindMode::Copy,
            tx_reserve: 1024,
        }
    }
}

/// Counters of one socket (kernel statistics are read separately with [`Xsk::statistics`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XskCounters {
    /// Frames received and handed to the caller.
    pub received: u64,
    /// Frames queued for transmission.
    pub sent: u64,
    /// rx or completion descriptors refused by the frame bookkeeping.
    pub bad_descriptors: u64,
    /// Times a ring's indexes were found corrupt (nothing was read from it).
    pub corrupt_rings: u64,
}

/// The kernel's own counters for the socket (`XDP_STATISTICS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XskStatistics {
    /// Frames dropped for other reasons than an invalid descriptor.
    pub rx_dropped: u64,
    /// Invalid rx descriptors.
    pub rx_invalid_descs: u64,
    /// Invalid tx descriptors.
    pub tx_invalid_descs: u64,
    /// Frames dropped because the rx ring was full.
    pub rx_ring_full: u64,
    /// Times the fill ring was empty when a frame arrived.
    pub rx_fill_ring_empty_descs: u64,
    /// Times the tx ring was empty when the kernel looked.
    pub tx_ring_empty_descs: u64,
}

/// An anonymous or file mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<c_void>,
    len: usize,
}

impl Mapping {
    fn new(len: usize, prot: i32, flags: i32, fd: i32, offset: i64) -> io::Result<Mapping> {
        // SAFETY: mmap with a null hint creates a new mapping and touches no existing memory;
        // every argument is a plain value. Failure is MAP_FAILED, checked below.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, offset) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(ptr)
            .map(|ptr| Mapping { ptr, len })
            .ok_or_else(|| io::Error::other("mmap returned null"))
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned and nothing borrows the mapping
        // any more (its owner is being dropped).
        unsafe { libc::munmap(self.ptr.as_ptr(), self.len) };
    }
}

/// One mmap'ed ring: producer, consumer and flags words, then `size` slots of `T`.
struct Ring<T> {
    _map: Mapping,
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    slots: NonNull<T>,
    size: u32,
}

impl<T: Copy> Ring<T> {
    fn map(
        fd: BorrowedFd<'_>,
        offsets: &libc::xdp_ring_offset,
        size: u32,
        pgoff: u64,
    ) -> io::Result<Ring<T>> {
        let len = usize::try_from(offsets.desc)
            .ok()
            .and_then(|desc| desc.checked_add(size as usize * size_of::<T>()))
            .ok_or_else(|| io::Error::other("ring too large"))?;
        let map = Mapping::new(
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd.as_raw_fd(),
            pgoff as i64,
        )?;
        let at = |offset: u64| -> io::Result<NonNull<u8>> {
            let offset = usize::try_from(offset).ok().filter(|o| *o < len);
            let offset =
                offset.ok_or_else(|| io::Error::other("ring offset outside the mapping"))?;
            // SAFETY: `offset < len`, so the result stays inside the mapping just created.
            Ok(unsafe { NonNull::new_unchecked(map.ptr.as_ptr().cast::<u8>().add(offset)) })
        };
        let word = |offset: u64| -> io::Result<NonNull<AtomicU32>> {
            let p = at(offset)?.cast::<AtomicU32>();
            if p.as_ptr().is_aligned() && offset as usize + 4 <= len {
                Ok(p)
            } else {
                Err(io::Error::other("misaligned ring index from the kernel"))
            }
        };
        let producer = word(offsets.producer)?;
        let consumer = word(offsets.consumer)?;
        let flags = word(offsets.flags)?;
        let slots = at(offsets.desc)?.cast::<T>();
        if !slots.as_ptr().is_aligned() {
            return Err(io::Error::other("misaligned ring slots from the kernel"));
        }
        Ok(Ring {
            _map: map,
            producer,
            consumer,
            flags,
            slots,
            size,
        })
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: checked in `map` to be an aligned u32 inside the mapping, which lives as
        // long as `self`; the kernel only accesses it atomically, so an atomic view is sound.
        unsafe { self.producer.as_ref() }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { self.consumer.as_ref() }
    }

    fn needs_wakeup(&self) -> bool {
        // SAFETY: as for `producer`.
        let flags = unsafe { self.flags.as_ref() };
        flags.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    fn read(&self, index: u32) -> T {
        // SAFETY: `slot` < size and the mapping holds `size` slots from `slots`; the caller
        // only reads indexes between consumer and the producer it loaded with Acquire, which
        // the kernel has finished writing and will not rewrite until we advance consumer.
        unsafe { self.slots.as_ptr().add(ring::slot(index, self.size)).read() }
    }

    fn write(&self, index: u32, value: T) {
        // SAFETY: `slot` < size, inside the mapping; the caller only writes indexes between
        // producer and consumer + size, which the kernel has released and does not read
        // until we publish the producer index with Release.
        unsafe {
            self.slots
                .as_ptr()
                .add(ring::slot(index, self.size))
                .write(value)
        }
    }
}

/// An AF_XDP socket bound to one queue of one interface, with its own UMEM.
pub struct Xsk {
    // Field order is drop order: the rings and UMEM are unmapped before the socket closes.
    fill: Ring<u64>,
    completion: Ring<u64>,
    rx: Ring<libc::xdp_desc>,
    tx: Ring<libc::xdp_desc>,
    umem: Mapping,
    frames: FrameAllocator,
    config: XskConfig,
    counters: XskCounters,
    fd: OwnedFd,
}

// SAFETY: the raw pointers all point into mappings this value owns exclusively; nothing is
// shared with other threads except with the kernel, through atomics. Moving the whole
// socket to another thread is therefore sound (it is not `Sync`: one thread drives it).
unsafe impl Send for Xsk {}

impl std::fmt::Debug for Xsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Xsk")
            .field("fd", &self.fd)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

fn setsockopt<T>(fd: BorrowedFd<'_>, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live, initialised T and the length passed is its size; the kernel
    // only reads it.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

impl Xsk {
    /// Creates the socket and its UMEM, maps the rings, and binds to `queue` of the
    /// interface with index `if_index`. The fill ring starts full (minus the tx reserve).
    /// Needs `CAP_NET_RAW` (root).
    pub fn bind(if_index: u32, queue: u32, config: XskConfig) -> io::Result<Xsk> {
        let layout = UmemLayout::new(config.frame_size, config.frame_count)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        ring::check_size(config.ring_size)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        if config.frame_count < config.min_frames() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} UMEM frames are too few for rings of {} and a tx reserve of {}: at \
                     least {} (a full fill ring, a full tx ring and the reserve)",
                    config.frame_count,
                    config.ring_size,
                    config.tx_reserve,
                    config.min_frames()
                ),
            ));
        }

        // SAFETY: socket() takes plain values and returns a new descriptor or -1.
        let raw =
            cvt(unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })?;
        // SAFETY: `raw` is a descriptor we just created and own; nothing else will close it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        let umem = Mapping::new(
            layout.len(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )?;
        // SAFETY: xdp_umem_reg is plain integers; all-zero is a valid value.
        let mut reg: libc::xdp_umem_reg = unsafe { std::mem::zeroed() };
        reg.addr = umem.ptr.as_ptr() as u64;
        reg.len = layout.len() as u64;
        reg.chunk_size = layout.frame_size();
        setsockopt(fd.as_fd(), libc::XDP_UMEM_REG, &reg)?;
        for name in [
            libc::XDP_UMEM_FILL_RING,
            libc::XDP_UMEM_COMPLETION_RING,
            libc::XDP_RX_RING,
            libc::XDP_TX_RING,
        ] {
            setsockopt(fd.as_fd(), name, &config.ring_size)?;
        }

        // SAFETY: plain integers; zero is valid. getsockopt writes at most `len` bytes.
        let mut offsets: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
        // SAFETY: `offsets` and `len` are live locals of the sizes given.
        cvt(unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                (&mut offsets as *mut libc::xdp_mmap_offsets).cast(),
                &mut len,
            )
        })?;
        if len as usize != size_of::<libc::xdp_mmap_offsets>() {
            return Err(io::Error::other(
                "kernel too old: no ring flags in XDP_MMAP_OFFSETS",
            ));
        }
        let size = config.ring_size;
        let fill = Ring::map(
            fd.as_fd(),
            &offsets.fr,
            size,
            libc::XDP_UMEM_PGOFF_FILL_RING,
        )?;
        let completion = Ring::map(
            fd.as_fd(),
            &offsets.cr,
            size,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING,
        )?;
        let rx = Ring::map(
            fd.as_fd(),
            &offsets.rx,
            size,
            libc::XDP_PGOFF_RX_RING as u64,
        )?;
        let tx = Ring::map(
            fd.as_fd(),
            &offsets.tx,
            size,
            libc::XDP_PGOFF_TX_RING as u64,
        )?;

        let mut xsk = Xsk {
            fill,
            completion,
            rx,
            tx,
            umem,
            frames: FrameAllocator::new(layout),
            config,
            counters: XskCounters::default(),
            fd,
        };
        // Publish receive frames before binding so the first packet has somewhere to go.
        xsk.refill();

        let mode = match config.bind {
            BindMode::Copy => libc::XDP_COPY,
            BindMode::ZeroCopy => libc::XDP_ZEROCOPY,
        };
        // SAFETY: plain integers; zero is valid.
        let mut addr: libc::sockaddr_xdp = unsafe { std::mem::zeroed() };
        addr.sxdp_family = libc::AF_XDP as u16;
        addr.sxdp_flags = mode | libc::XDP_USE_NEED_WAKEUP;
        addr.sxdp_ifindex = if_index;
        addr.sxdp_queue_id = queue;
        // SAFETY: `addr` is a live sockaddr_xdp and the length is its size.
        cvt(unsafe {
            libc::bind(
                xsk.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_xdp).cast(),
                size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        })?;
        Ok(xsk)
    }

    /// Publishes free frames on the fill ring until it holds `ring_size` frames or only the
    /// tx reserve is left. Returns how many were published.
    pub fn refill(&mut self) -> u32 {
        let prod = self.fill.producer().load(Ordering::Relaxed);
        let cons = self.fill.consumer().load(Ordering::Acquire);
        let room = match ring::free(prod, cons, self.fill.size) {
            Ok(room) => room,
            Err(_) => {
                self.counters.corrupt_rings += 1;
                return 0;
            }
        };
        let n = room.min(
            self.frames
                .fill_deficit(self.config.ring_size, self.config.tx_reserve),
        );
        let mut published = 0;
        while published < n {
            let Some(addr) = self.frames.take_for_fill() else {
                break;
            };
            self.fill.write(prod.wrapping_add(published), addr);
            published += 1;
        }
        self.fill
            .producer()
            .store(prod.wrapping_add(published), Ordering::Release);
        published
    }

    /// Hands up to `max` received frames to `handle`, one at a time, then returns their
    /// frames to the free list and refills the fill ring. Returns how many were handed over.
    pub fn receive(&mut self, max: u32, mut handle: impl FnMut(&[u8])) -> u32 {
        let cons = self.rx.consumer().load(Ordering::Relaxed);
        let prod = self.rx.producer().load(Ordering::Acquire);
        let ready = match ring::filled(prod, cons, self.rx.size) {
            Ok(ready) => ready.min(max),
            Err(_) => {
                self.counters.corrupt_rings += 1;
                return 0;
            }
        };
        let mut handed = 0;
        for i in 0..ready {
            let desc = self.rx.read(cons.wrapping_add(i));
            let Ok(frame) = self.frames.received(desc.addr, desc.len) else {
                self.counters.bad_descriptors += 1;
                continue;
            };
            // SAFETY: `received` checked that [addr, addr+len) lies inside one frame of the
            // UMEM mapping and moved that frame from Fill to Rx: the kernel has handed it
            // back and cannot write it until we publish it again, which cannot happen while
            // this shared borrow lives (publishing needs `&mut self`, held here).
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    self.umem.ptr.as_ptr().cast::<u8>().add(desc.addr as usize),
                    desc.len as usize,
                )
            };
            handle(bytes);
            handed += 1;
            // Cannot fail: the frame is in Rx, put there just above.
            let _ = self.frames.release(frame);
        }
        self.rx
            .consumer()
            .store(cons.wrapping_add(ready), Ordering::Release);
        self.counters.received += u64::from(handed);
        self.drain_completions();
        self.refill();
        handed
    }

    /// Builds one outgoing frame with `build` in a free UMEM frame and queues it on the tx
    /// ring. `build` gets the whole frame buffer and returns the frame's length, or `None`
    /// to send nothing. Returns false when nothing was queued (no free frame, tx ring full,
    /// `build` declined or returned a length beyond the frame). Call [`Xsk::flush_tx`] after
    /// a batch.
    pub fn send(&mut self, build: impl FnOnce(&mut [u8]) -> Option<usize>) -> bool {
        self.drain_completions();
        let prod = self.tx.producer().load(Ordering::Relaxed);
        let mut cons = self.tx.consumer().load(Ordering::Acquire);
        if ring::free(prod, cons, self.tx.size) == Ok(0) || self.frames.count(FrameState::Free) == 0
        {
            // Ring or frames used up: let the kernel transmit (and complete) what is
            // queued before giving up on this packet.
            let _ = self.kick_tx();
            self.drain_completions();
            cons = self.tx.consumer().load(Ordering::Acquire);
        }
        match ring::free(prod, cons, self.tx.size) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(_) => {
                self.counters.corrupt_rings += 1;
                return false;
            }
        }
        let Some(addr) = self.frames.take_for_tx() else {
            return false;
        };
        let frame_size = self.frames.layout().frame_size() as usize;
        // SAFETY: `take_for_tx` returned the start of a whole frame inside the UMEM mapping
        // and moved it from Free to Tx: the kernel does not own it (it is on no ring yet) and
        // no other borrow of it exists (frames are only lent while `&mut self` is held).
        let buf = unsafe {
            std::slice::from_raw_parts_mut(
                self.umem.ptr.as_ptr().cast::<u8>().add(addr as usize),
                frame_size,
            )
        };
        let len = match build(buf) {
            Some(len) if len > 0 && len <= frame_size => len,
            _ => {
                // Cannot fail: the frame is in Tx, put there just above.
                let _ = self.frames.unpublished(addr);
                return false;
            }
        };
        self.tx.write(
            prod,
            libc::xdp_desc {
                addr,
                len: len as u32,
                options: 0,
            },
        );
        self.tx
            .producer()
            .store(prod.wrapping_add(1), Ordering::Release);
        self.counters.sent += 1;
        true
    }

    /// Frames queued on the tx ring that the kernel has not taken yet.
    pub fn tx_pending(&self) -> u32 {
        let prod = self.tx.producer().load(Ordering::Relaxed);
        let cons = self.tx.consumer().load(Ordering::Acquire);
        ring::filled(prod, cons, self.tx.size).unwrap_or(0)
    }

    /// Asks the kernel to transmit everything queued on the tx ring. In copy mode one
    /// `sendto` transmits a bounded batch (32 frames in Linux 6.x), so it is repeated while
    /// the kernel keeps taking frames; otherwise what is left would wait for the next
    /// wake-up of the poller — up to its longest sleep.
    pub fn flush_tx(&mut self) -> io::Result<()> {
        let mut pending = self.tx_pending();
        while pending > 0 {
            self.kick_tx()?;
            let left = self.tx_pending();
            if left >= pending {
                // The kernel took nothing (busy, or out of buffers): the caller polls again
                // soon (see `tx_pending`).
                break;
            }
            pending = left;
        }
        Ok(())
    }

    /// One zero-length `sendto`: the kernel transmits a batch from the tx ring.
    /// `EAGAIN`, `EBUSY` and `ENOBUFS` mean "try again later" and are not errors here.
    fn kick_tx(&mut self) -> io::Result<()> {
        // SAFETY: a zero-length send with null buffer and address reads no memory; the
        // descriptor is our open socket.
        let ret = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        match cvt(ret) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Takes finished transmissions off the completion ring.
    fn drain_completions(&mut self) {
        let cons = self.completion.consumer().load(Ordering::Relaxed);
        let prod = self.completion.producer().load(Ordering::Acquire);
        let Ok(ready) = ring::filled(prod, cons, self.completion.size) else {
            self.counters.corrupt_rings += 1;
            return;
        };
        for i in 0..ready {
            let addr = self.completion.read(cons.wrapping_add(i));
            if self.frames.completed(addr).is_err() {
                self.counters.bad_descriptors += 1;
            }
        }
        self.completion
            .consumer()
            .store(cons.wrapping_add(ready), Ordering::Release);
    }

    /// Whether the kernel asked to be woken to use the fill ring (need_wakeup mode).
    pub fn fill_needs_wakeup(&self) -> bool {
        self.fill.needs_wakeup()
    }

    /// Waits up to `timeout_ms` for received frames (poll(2)); true if some are ready.
    /// Also the wake-up the kernel needs when [`Xsk::fill_needs_wakeup`] is set.
    pub fn wait_readable(&self, timeout_ms: i32) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one live pollfd and we pass a count of 1.
        let n = cvt(unsafe { libc::poll(&mut pfd, 1, timeout_ms) })?;
        Ok(n > 0 && pfd.revents & libc::POLLIN != 0)
    }

    /// This socket's counters.
    pub fn counters(&self) -> XskCounters {
        self.counters
    }

    /// The frame bookkeeping (read-only).
    pub fn frames(&self) -> &FrameAllocator {
        &self.frames
    }

    /// The kernel's statistics for this socket.
    pub fn statistics(&self) -> io::Result<XskStatistics> {
        // SAFETY: plain integers; zero is valid.
        let mut stats: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::xdp_statistics>() as libc::socklen_t;
        // SAFETY: `stats` and `len` are live locals of the sizes given.
        cvt(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                (&mut stats as *mut libc::xdp_statistics).cast(),
                &mut len,
            )
        })?;
        Ok(XskStatistics {
            rx_dropped: stats.rx_dropped,
            rx_invalid_descs: stats.rx_invalid_descs,
            tx_invalid_descs: stats.tx_invalid_descs,
            rx_ring_full: stats.rx_ring_full,
            rx_fill_ring_empty_descs: stats.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: stats.tx_ring_empty_descs,
        })
    }
}

impl AsFd for Xsk {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Xsk {
    fn as_raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}
