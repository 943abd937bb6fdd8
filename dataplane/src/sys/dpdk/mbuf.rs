//! Mbuf pools and mbufs. The ownership rule is stated in the parent module: an [`Mbuf`]
//! is freed exactly once, by its `Drop`, unless [`super::PortQueue::tx_burst`] handed it
//! to the driver (which then frees it after transmitting).

use std::ffi::c_int;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use super::ffi::{self, RteMbuf, RteMempool};
use super::{Eal, c_string};

/// A packet-buffer pool (`rte_pktmbuf_pool_create`, default buffer size: 2 KiB of data
/// after the headroom). Lives as long as the process: see the parent module.
#[derive(Debug)]
pub struct Mempool {
    ptr: NonNull<RteMempool>,
    name: String,
    size: u32,
}

// SAFETY: DPDK mempools are multi-producer, multi-consumer (the default ring ops):
// allocating and freeing from several threads at once is what they are for, and a pool
// never moves or is freed while the process lives.
unsafe impl Send for Mempool {}
// SAFETY: as above; `&Mempool` only allows allocation, which is thread-safe.
unsafe impl Sync for Mempool {}

/// Makes pool names unique within the process (DPDK refuses a name twice).
static POOLS: AtomicU32 = AtomicU32::new(0);

impl Mempool {
    /// A pool of `mbufs` buffers with a per-lcore cache of `cache`, on NUMA `socket`
    /// (-1: any), named `petrel_<label>_<n>` (at most 25 characters are kept). Leaked on
    /// purpose: the pool lives as long as the process.
    pub fn create(
        _eal: &Eal,
        label: &str,
        mbufs: u32,
        cache: u32,
        socket: i32,
    ) -> io::Result<&'static Mempool> {
        let n = POOLS.fetch_add(1, Ordering::Relaxed);
        let mut name = format!("petrel_{label}_{n}");
        // RTE_MEMPOOL_NAMESIZE is 26 with the NUL, minus the "MP_" prefix DPDK adds to
        // the ring's name (RTE_RING_NAMESIZE 32): keep it short.
        name.truncate(20);
        let c_name = c_string(&name, "pool name")?;
        // SAFETY: a valid C string; integers; the EAL exists (`_eal` proves it).
        let ptr =
            unsafe { ffi::petrel_dpdk_pool_create(c_name.as_ptr(), mbufs, cache, socket as c_int) };
        let ptr = NonNull::new(ptr).ok_or_else(|| {
            let e = io::Error::last_os_error();
            io::Error::new(
                e.kind(),
                format!("dpdk: cannot create the mbuf pool {name} ({mbufs} mbufs): {e}"),
            )
        })?;
        Ok(Box::leak(Box::new(Mempool {
            ptr,
            name,
            size: mbufs,
        })))
    }

    /// One free mbuf, or `None` when the pool is empty.
    pub fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: the pool is valid for the life of the process.
        let m = unsafe { ffi::petrel_dpdk_mbuf_alloc(self.ptr.as_ptr()) };
        NonNull::new(m).map(Mbuf)
    }

    /// Free mbufs in the pool, per-lcore caches included.
    pub fn available(&self) -> u32 {
        // SAFETY: the pool is valid for the life of the process; the call only reads it.
        unsafe { ffi::petrel_dpdk_pool_available(self.ptr.as_ptr()) }
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many mbufs it was created with.
    pub fn size(&self) -> u32 {
        self.size
    }

    pub(crate) fn as_ptr(&self) -> *mut RteMempool {
        self.ptr.as_ptr()
    }
}

/// One packet buffer (one segment), owned: freed on drop unless transmitted.
#[repr(transparent)]
#[derive(Debug)]
pub struct Mbuf(NonNull<RteMbuf>);

// SAFETY: an mbuf is plain memory owned by whoever holds the pointer; this type holds it
// alone (not Clone), and freeing it from any thread returns it to a thread-safe pool.
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// Whether the packet is one segment (only those are read: the dataplane's MTU fits
    /// one 2 KiB buffer, so a chained mbuf is a jumbo frame it does not take).
    pub fn is_contiguous(&self) -> bool {
        // SAFETY: we own a valid mbuf; the call only reads it.
        unsafe { ffi::petrel_dpdk_mbuf_is_contiguous(self.0.as_ptr()) != 0 }
    }

    /// The first segment's data.
    pub fn data(&self) -> &[u8] {
        let mut len = 0u16;
        // SAFETY: we own a valid mbuf; the call returns its data pointer and length.
        let ptr = unsafe { ffi::petrel_dpdk_mbuf_data(self.0.as_ptr(), &mut len) };
        // SAFETY: [ptr, ptr+len) is the mbuf's data, inside its buffer; the mbuf is ours
        // (nobody writes it) for as long as this shared borrow of it lives.
        unsafe { std::slice::from_raw_parts(ptr, usize::from(len)) }
    }

    /// All the bytes a packet can take from the data start (data + tailroom), to be
    /// written and then sized with [`Mbuf::set_len`].
    pub fn room_mut(&mut self) -> &mut [u8] {
        let mut room = 0u16;
        // SAFETY: we own a valid mbuf; the call returns its data start and room.
        let ptr = unsafe { ffi::petrel_dpdk_mbuf_room(self.0.as_ptr(), &mut room) };
        // SAFETY: [ptr, ptr+room) lies inside the mbuf's buffer; we own the mbuf and hold
        // `&mut self`, so this is the only borrow.
        unsafe { std::slice::from_raw_parts_mut(ptr, usize::from(room)) }
    }

    /// Sets the packet length to `len` bytes of [`Mbuf::room_mut`] (clamped to the room).
    pub fn set_len(&mut self, len: usize) {
        let room = self.room_mut().len();
        let len = u16::try_from(len.min(room)).unwrap_or(u16::MAX);
        // SAFETY: we own a valid single-segment mbuf and `len` fits its room.
        unsafe { ffi::petrel_dpdk_mbuf_set_len(self.0.as_ptr(), len) }
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own the mbuf (see the type's docs) and this is the one place it is
        // freed; a transmitted mbuf is forgotten, never dropped.
        unsafe { ffi::petrel_dpdk_mbuf_free(self.0.as_ptr()) }
    }
}
