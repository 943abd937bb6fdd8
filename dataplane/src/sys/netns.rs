//! Network namespaces: move the calling thread into another one (setns(2)).
//!
//! A thread's network namespace decides where the sockets it creates live, and a child
//! process inherits the namespace of the thread that spawned it. The end-to-end tests use
//! this to run kernel-TCP clients inside the veth lab's namespace while the server they
//! start runs in the root namespace; `ip netns exec` does the same for a whole process.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::cvt;

/// An open handle on a network namespace (a `/proc/…/ns/net` or `/run/netns/NAME` file).
#[derive(Debug)]
pub struct NetNs {
    file: File,
}

impl NetNs {
    /// The namespace the calling thread is in now.
    pub fn current() -> io::Result<NetNs> {
        NetNs::open(Path::new("/proc/thread-self/ns/net"))
    }

    /// The namespace `ip netns add NAME` created.
    pub fn named(name: &str) -> io::Result<NetNs> {
        if name.is_empty() || name.contains('/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad network namespace name {name:?}"),
            ));
        }
        NetNs::open(&Path::new("/run/netns").join(name))
    }

    /// The namespace behind a namespace file.
    pub fn open(path: &Path) -> io::Result<NetNs> {
        let file = File::open(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("network namespace {}: {e}", path.display()),
            )
        })?;
        Ok(NetNs { file })
    }

    /// Moves the calling thread (only it) into this namespace. Threads and processes it
    /// starts afterwards are in it too.
    pub fn enter(&self) -> io::Result<()> {
        // SAFETY: setns takes a descriptor we own (valid for the call) and a flag; it
        // changes only the calling thread's namespace and touches no memory of ours.
        cvt(unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) })?;
        Ok(())
    }

    /// Runs `f` with the calling thread in this namespace, then moves it back to the one
    /// it was in (also when `f` panics).
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> io::Result<R> {
        struct Back(NetNs);
        impl Drop for Back {
            fn drop(&mut self) {
                if let Err(e) = self.0.enter() {
                    // Staying in the wrong namespace would silently misroute every later
                    // socket of this thread.
                    panic!("cannot return to the previous network namespace: {e}");
                }
            }
        }
        let back = Back(NetNs::current()?);
        self.enter()?;
        let result = f();
        drop(back);
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_namespace_opens_and_bad_names_are_refused() {
        assert!(NetNs::current().is_ok());
        assert_eq!(
            NetNs::named("../x").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            NetNs::named("petrel-no-such-ns").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
