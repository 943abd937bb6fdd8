//! An eventfd that wakes a dataplane poller, and a poll(2) over it and an AF_XDP socket.
//!
//! The AF_XDP poller sleeps in [`wait`] on two descriptors: its socket (frames arrived)
//! and its [`EventFd`] (the control plane queued commands and called
//! [`Wake::wake`]). One write per batch wakes it; the counter
//! is drained on wake-up.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::cvt;
use crate::boundary::Wake;

/// A non-blocking eventfd.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// A new eventfd with counter 0.
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd takes plain values and returns a new descriptor or -1.
        let raw = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        // SAFETY: `raw` was just created and is owned by nothing else.
        Ok(EventFd {
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
        })
    }

    /// Resets the counter; true if any wake-up was pending.
    pub fn drain(&self) -> io::Result<bool> {
        let mut value: u64 = 0;
        // SAFETY: reads exactly 8 bytes into `value`, a live u64.
        let ret = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut value as *mut u64).cast(),
                size_of::<u64>(),
            )
        };
        match cvt(ret) {
            Ok(_) => Ok(value > 0),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl Wake for EventFd {
    fn wake(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes exactly 8 bytes from `one`, a live u64.
        let ret = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&one as *const u64).cast(),
                size_of::<u64>(),
            )
        };
        match cvt(ret) {
            Ok(_) => Ok(()),
            // The counter is saturated: a wake-up is pending anyway.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// What [`wait`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ready {
    /// The socket has frames to read.
    pub socket: bool,
    /// The eventfd was written.
    pub woken: bool,
}

/// Sleeps up to `timeout_ms` (-1: forever) until `socket` is readable or `event` is
/// written. An interrupted wait (EINTR) returns nothing ready.
pub fn wait(socket: BorrowedFd<'_>, event: &EventFd, timeout_ms: i32) -> io::Result<Ready> {
    let mut fds = [
        libc::pollfd {
            fd: socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: event.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: `fds` is a live array of two pollfds and we pass its length.
    match cvt(unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) }) {
        Ok(_) => Ok(Ready {
            socket: fds[0].revents & libc::POLLIN != 0,
            woken: fds[1].revents & libc::POLLIN != 0,
        }),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Ready::default()),
        Err(e) => Err(e),
    }
}

/// Most sockets [`wait_any`] watches (the XDP filter's socket map holds 64 queues).
pub const WAIT_ANY_MAX: usize = 64;

/// Sleeps up to `timeout_ms` (-1: forever) until one of `sockets` is readable; returns
/// whether one is. At most [`WAIT_ANY_MAX`] sockets (more is an `InvalidInput` error);
/// no allocation. An interrupted wait (EINTR) returns false.
pub fn wait_any<'a>(
    sockets: impl IntoIterator<Item = BorrowedFd<'a>>,
    timeout_ms: i32,
) -> io::Result<bool> {
    let mut fds = [libc::pollfd {
        fd: -1,
        events: libc::POLLIN,
        revents: 0,
    }; WAIT_ANY_MAX];
    let mut count = 0;
    for socket in sockets {
        let Some(slot) = fds.get_mut(count) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("wait_any watches at most {WAIT_ANY_MAX} sockets"),
            ));
        };
        slot.fd = socket.as_raw_fd();
        count += 1;
    }
    // SAFETY: `fds` is a live array and we pass a length no larger than it; poll only
    // writes `revents` of those entries.
    match cvt(unsafe { libc::poll(fds.as_mut_ptr(), count as libc::nfds_t, timeout_ms) }) {
        Ok(n) => Ok(n > 0),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn wait_any_sees_the_one_readable_socket_of_several() {
        let quiet = EventFd::new().unwrap();
        let loud = EventFd::new().unwrap();
        assert!(!wait_any([quiet.as_fd(), loud.as_fd()], 0).unwrap());
        loud.wake().unwrap();
        assert!(wait_any([quiet.as_fd(), loud.as_fd()], 5_000).unwrap());
        let many = vec![quiet.as_fd(); WAIT_ANY_MAX + 1];
        assert!(wait_any(many, 0).is_err());
    }

    #[test]
    fn a_wake_from_another_thread_ends_the_wait_and_drains_once() {
        let event = Arc::new(EventFd::new().unwrap());
        // A second eventfd stands in for the socket; it is never written.
        let quiet = EventFd::new().unwrap();
        assert_eq!(wait(quiet.as_fd(), &event, 0).unwrap(), Ready::default());

        let waker = event.clone();
        let thread = std::thread::spawn(move || {
            waker.wake().unwrap();
            waker.wake().unwrap();
        });
        let ready = wait(quiet.as_fd(), &event, 5_000).unwrap();
        thread.join().unwrap();
        assert!(ready.woken && !ready.socket);
        assert!(event.drain().unwrap());
        assert!(!event.drain().unwrap(), "both wakes were drained at once");
        assert_eq!(wait(quiet.as_fd(), &event, 0).unwrap(), Ready::default());
    }

    #[test]
    fn a_readable_socket_is_reported() {
        let event = EventFd::new().unwrap();
        let socket = EventFd::new().unwrap();
        socket.wake().unwrap();
        let ready = wait(socket.as_fd(), &event, 1_000).unwrap();
        assert!(ready.socket && !ready.woken);
    }
}
