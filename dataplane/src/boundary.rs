//! The transport boundary: commands from the control plane's thread to the dataplane
//! cores, and the router that delivers them to the core owning each connection.
//!
//! Events flow the other way as plain [`petrel_control::Event`]s on a bounded channel
//! (see the crate docs).

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_channel::Sender;
use petrel_control::{Action, ConnId};

/// What a dataplane core is asked to do.
#[derive(Debug)]
pub enum CoreCommand {
    /// Queue `bytes` (whole frames) on `conn`'s outbound stream.
    Send {
        /// The connection.
        conn: ConnId,
        /// Encoded frames; a fan-out shares one buffer among receivers.
        bytes: Bytes,
    },
    /// Flush what is queued for `conn`, then close it.
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// Stop accepting, flush every connection, close them and exit the loop.
    Shutdown,
}

/// Wakes a core's event loop after commands were queued for it.
pub trait Wake: Send + Sync {
    /// Interrupts the core's poll so it drains its command queue.
    fn wake(&self) -> io::Result<()>;
}

impl Wake for mio::Waker {
    fn wake(&self) -> io::Result<()> {
        mio::Waker::wake(self)
    }
}

/// The sending half of one core's command queue.
#[derive(Clone)]
pub struct CoreHandle {
    commands: Sender<CoreCommand>,
    waker: Arc<dyn Wake>,
}

impl std::fmt::Debug for CoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreHandle")
            .field("queued", &self.commands.len())
            .finish()
    }
}

impl CoreHandle {
    /// A handle from a command sender and the core's waker.
    pub fn new(commands: Sender<CoreCommand>, waker: Arc<dyn Wake>) -> CoreHandle {
        CoreHandle { commands, waker }
    }

    /// Queues a command without waking the core.
    fn queue(&self, command: CoreCommand) -> bool {
        self.commands.send(command).is_ok()
    }
}

/// Delivers the control plane's transport actions to the owning cores, waking each core
/// at most once per batch (one eventfd write per core, not one per frame).
///
/// Owned by the thread that runs the control plane.
#[derive(Debug)]
pub struct Router {
    cores: Vec<CoreHandle>,
    pending: Vec<bool>,
}

impl Router {
    /// A router over the given cores; `cores[i]` owns connections whose
    /// [`ConnId::core`] is `i`.
    pub fn new(cores: Vec<CoreHandle>) -> Router {
        let pending = vec![false; cores.len()];
        Router { cores, pending }
    }

    /// Number of cores.
    pub fn cores(&self) -> usize {
        self.cores.len()
    }

    /// Queues a command for the core owning `conn`. Returns false if that core does not
    /// exist or has exited (the command is dropped; the connection is gone anyway).
    pub fn command(&mut self, conn: ConnId, command: CoreCommand) -> bool {
        let core = usize::from(conn.core());
        match self.cores.get(core) {
            Some(handle) if handle.queue(command) => {
                self.pending[core] = true;
                true
            }
            _ => false,
        }
    }

    /// Routes a control-plane action. Transport actions (`Send`, `Close`) are queued and
    /// `None` is returned; a `Storage` action is handed back for the storage driver.
    pub fn route(&mut self, action: Action) -> Option<Action> {
        match action {
            Action::Send { conn, bytes } => {
                self.command(conn, CoreCommand::Send { conn, bytes });
                None
            }
            Action::Close { conn, .. } => {
                self.command(conn, CoreCommand::Close { conn });
                None
            }
            other => Some(other),
        }
    }

    /// Wakes every core that has commands queued since the last call.
    pub fn wake_pending(&mut self) {
        for (core, pending) in self.pending.iter_mut().enumerate() {
            if std::mem::take(pending)
                && let Err(e) = self.cores[core].waker.wake()
            {
                tracing::warn!(core, error = %e, "failed to wake dataplane core");
            }
        }
    }

    /// Commands queued for each core and not yet taken by it (for metrics: a core that
    /// falls behind shows a growing queue).
    pub fn queued(&self) -> Vec<usize> {
        self.cores.iter().map(|c| c.commands.len()).collect()
    }

    /// Asks every core to shut down (stop accepting, flush, close) and wakes them.
    pub fn shutdown_all(&mut self) {
        for (core, handle) in self.cores.iter().enumerate() {
            if handle.queue(CoreCommand::Shutdown) {
                self.pending[core] = true;
            }
        }
        self.wake_pending();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crossbeam_channel::unbounded;

    use super::*;

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(&self) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    #[test]
    fn routes_by_core_bits_and_wakes_each_core_once_per_batch() {
        let wakers: Vec<Arc<CountingWaker>> = (0..2).map(|_| Arc::default()).collect();
        let channels: Vec<_> = (0..2).map(|_| unbounded()).collect();
        let handles = channels
            .iter()
            .zip(&wakers)
            .map(|((tx, _), w)| CoreHandle::new(tx.clone(), w.clone() as Arc<dyn Wake>))
            .collect();
        let mut router = Router::new(handles);

        for i in 0..5 {
            let conn = ConnId::new(1, i);
            let passed = router.route(Action::Send {
                conn,
                bytes: Bytes::from_static(b"x"),
            });
            assert!(passed.is_none());
        }
        router.wake_pending();
        router.wake_pending();

        assert_eq!(channels[0].1.len(), 0);
        assert_eq!(channels[1].1.len(), 5);
        assert_eq!(router.queued(), vec![0, 5]);
        assert_eq!(wakers[0].0.load(Ordering::Relaxed), 0);
        assert_eq!(wakers[1].0.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn commands_for_a_missing_core_are_refused() {
        let (tx, _rx) = unbounded();
        let mut router = Router::new(vec![CoreHandle::new(
            tx,
            Arc::new(CountingWaker::default()) as Arc<dyn Wake>,
        )]);
        assert!(!router.command(
            ConnId::new(7, 1),
            CoreCommand::Close {
                conn: ConnId::new(7, 1)
            }
        ));
    }
}
