//! Real-time scheduling for a helper thread that must run the moment it wakes.
//!
//! The storage syncer sleeps in `fdatasync` and, once the disk answers, must tell the
//! per-core loop that a group is durable. When that loop busy-polls on the same CPU, a
//! normally scheduled syncer waits for the loop's time slice to end before it runs again
//! (measured: 442 µs on average per wake-up, up to 10 ms, at 10,000 msg/s — see
//! docs/PERFORMANCE.md). `SCHED_FIFO` at the lowest real-time priority makes the kernel
//! switch to it at once; it only ever sleeps in the kernel, so it cannot starve the loop.

use std::io;
use std::os::unix::thread::RawPthread;

/// Puts `thread` (a live thread of this process) in `SCHED_FIFO` at `priority` (1–99).
/// Fails with the OS's error, typically `EPERM` without `CAP_SYS_NICE` or an
/// `RLIMIT_RTPRIO` of at least `priority`.
pub fn set_fifo(thread: RawPthread, priority: i32) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `param` is a live, initialised sched_param; the caller names a thread of
    // this process that has not been joined (its pthread_t is valid). pthread functions
    // return the error number instead of setting errno.
    let ret = unsafe { libc::pthread_setschedparam(thread, libc::SCHED_FIFO, &param) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(ret))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::thread::JoinHandleExt;

    use super::*;

    /// The scheduling policy and priority of `thread`.
    fn policy_of(thread: RawPthread) -> (i32, i32) {
        let mut policy = 0;
        let mut param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `thread` is alive (joined only after this), the out-pointers are live
        // locals.
        let ret = unsafe { libc::pthread_getschedparam(thread, &mut policy, &mut param) };
        assert_eq!(ret, 0);
        (policy, param.sched_priority)
    }

    #[test]
    fn a_thread_becomes_fifo_where_allowed_and_gets_a_clear_error_where_not() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let _ = rx.recv();
        });
        let pthread = thread.as_pthread_t();
        let out_of_range = set_fifo(pthread, 1000).unwrap_err();
        assert_eq!(out_of_range.raw_os_error(), Some(libc::EINVAL));
        match set_fifo(pthread, 1) {
            Ok(()) => assert_eq!(policy_of(pthread), (libc::SCHED_FIFO, 1)),
            // Without CAP_SYS_NICE: refused, and the thread keeps its normal policy.
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
                assert_eq!(policy_of(pthread).0, libc::SCHED_OTHER);
            }
        }
        let _ = tx.send(());
        thread.join().unwrap();
    }
}
