//! Pinning threads to CPU cores.
//!
//! Each dataplane loop runs on one core for its whole life, so its caches, its share of
//! NIC interrupts (when IRQ affinity matches; see docs/OPERATIONS.md) and its connections
//! stay together.

/// Pins the calling thread to CPU `cpu`. Returns false (and logs) if the CPU does not
/// exist or the OS refused; the thread then runs unpinned, which is correct but slower.
pub fn pin_current_thread(cpu: usize) -> bool {
    let ok = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.id == cpu)
        .is_some_and(core_affinity::set_for_current);
    if !ok {
        tracing::warn!(cpu, "could not pin thread to CPU; running unpinned");
    }
    ok
}

/// The CPU ids this process may run on, in ascending order.
pub fn available_cpus() -> Vec<usize> {
    let mut ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort_unstable();
    ids
}

/// Runs `thread` (a live thread of this process) under `SCHED_FIFO` at the lowest
/// real-time priority, so it takes its CPU the moment it wakes — for a thread that only
/// ever sleeps in the kernel and then does a few microseconds of work (the storage
/// syncer). Fails without `CAP_SYS_NICE` (or an `RLIMIT_RTPRIO` of at least 1).
pub fn run_realtime(thread: std::os::unix::thread::RawPthread) -> std::io::Result<()> {
    crate::sys::sched::set_fifo(thread, 1)
}
