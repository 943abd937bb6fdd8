//! The sending end of a ring between two cores.
//!
//! A ring is crossbeam's bounded array channel used one-to-one (single producer, single
//! consumer): lock-free, allocation-free once built, and already a dependency — a ring
//! of our own would only repeat it. What did not fit stays here, in order, and goes
//! before anything newer; the producer treats a non-empty overflow as "stop taking new
//! input" (so the overflow is bounded by what one iteration produces). The receiving
//! core is woken once per iteration, not per message.

use std::collections::VecDeque;
use std::sync::Arc;

use crossbeam_channel::{Sender, TrySendError};
use petrel_dataplane::Wake;

/// Capacity of each ring between two cores, in messages.
pub const RING: usize = 16 * 1024;
/// Most messages taken off one ring per iteration (the rest wait for the next one).
pub const RING_BATCH: usize = 1024;

/// One core's end of its ring to another core.
pub struct RingOut<T> {
    tx: Sender<T>,
    waker: Arc<dyn Wake>,
    /// Messages that did not fit, in order; sent before anything newer.
    overflow: VecDeque<T>,
    wake: bool,
}

impl<T> RingOut<T> {
    /// The end of `tx`, whose receiving core `waker` wakes.
    pub fn new(tx: Sender<T>, waker: Arc<dyn Wake>) -> Self {
        RingOut {
            tx,
            waker,
            overflow: VecDeque::new(),
            wake: false,
        }
    }

    /// Sends `message` after whatever is waiting; the receiver is woken at
    /// [`RingOut::wake_if_needed`].
    pub fn push(&mut self, message: T) {
        self.wake = true;
        if self.overflow.is_empty() {
            match self.tx.try_send(message) {
                Ok(()) => {}
                Err(TrySendError::Full(m)) => self.overflow.push_back(m),
                // The receiving core has exited (it stops only when shutting down).
                Err(TrySendError::Disconnected(_)) => {}
            }
        } else {
            self.overflow.push_back(message);
        }
    }

    /// Moves what waits into the ring, as far as it has room.
    pub fn flush_overflow(&mut self) {
        while let Some(message) = self.overflow.pop_front() {
            match self.tx.try_send(message) {
                Ok(()) => self.wake = true,
                Err(TrySendError::Full(m)) => {
                    self.overflow.push_front(m);
                    return;
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.overflow.clear();
                    return;
                }
            }
        }
    }

    /// Whether messages wait for room in the ring (the producer should stop taking
    /// new input).
    pub fn is_backed_up(&self) -> bool {
        !self.overflow.is_empty()
    }

    /// Messages in the ring and waiting for it.
    pub fn queued(&self) -> usize {
        self.tx.len() + self.overflow.len()
    }

    /// Wakes the receiving core if anything was sent since the last call.
    pub fn wake_if_needed(&mut self) {
        if std::mem::take(&mut self.wake)
            && let Err(e) = self.waker.wake()
        {
            tracing::warn!(error = %e, "cannot wake another core");
        }
    }
}
