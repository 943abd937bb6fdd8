//! Group commit: a dedicated writer thread that turns many small requests into one
//! durable batch, so callers (the control plane's driver on a dataplane core) never
//! block on fsync.
//!
//! ```text
//! callers ──submit(request, completion)──▶ channel ──▶ writer thread
//!                                                     │ take up to N requests, waiting at
//!                                                     │ most M µs for more after the first
//!                                                     │ Engine::execute_batch (one WAL fsync
//!                                                     │ in SyncMode::Batch)
//! completion(reply) ◀─────────────────────────────────┘ only after the fsync returned
//! ```
//!
//! Nobody is told "done" before their write is durable: completions run after
//! `execute_batch` returns, and `execute_batch` syncs the WAL before it returns. Replies
//! keep submission order. Completions run on the writer thread, so they must be quick
//! (send on a channel, wake a core); a slow completion delays the next batch.
//!
//! The queue is unbounded (submit never blocks); the caller bounds in-flight requests.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::api::{Engine, Reply, Request};
use crate::error::StorageError;

/// A completion callback: receives the reply once it is durable.
pub type Completion = Box<dyn FnOnce(Result<Reply, StorageError>) + Send + 'static>;

/// Group-commit bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitQueueConfig {
    /// Most requests applied per WAL fsync (N).
    pub max_batch: usize,
    /// Longest the writer waits for more requests after the first one of a batch (M).
    pub max_wait: Duration,
}

impl Default for CommitQueueConfig {
    fn default() -> Self {
        CommitQueueConfig {
            max_batch: 512,
            max_wait: Duration::from_micros(100),
        }
    }
}

struct Job {
    request: Request,
    done: Completion,
}

/// Handle to the writer thread. Dropping it (or calling [`CommitQueue::shutdown`])
/// finishes every request already submitted, then stops the thread.
pub struct CommitQueue {
    tx: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for CommitQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitQueue")
            .field("running", &self.tx.is_some())
            .finish()
    }
}

impl CommitQueue {
    /// Start the writer thread for `engine`.
    pub fn start<E: Engine + 'static>(
        engine: Arc<E>,
        config: CommitQueueConfig,
    ) -> Result<Self, StorageError> {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let thread = std::thread::Builder::new()
            .name("petrel-storage-writer".into())
            .spawn(move || writer_loop(&*engine, &rx, config))?;
        Ok(CommitQueue {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queue a request; `done` is called with its reply once durable. Never blocks.
    /// Fails with [`StorageError::Closed`] if the writer has stopped.
    pub fn submit(
        &self,
        request: Request,
        done: impl FnOnce(Result<Reply, StorageError>) + Send + 'static,
    ) -> Result<(), StorageError> {
        let tx = self.tx.as_ref().ok_or(StorageError::Closed)?;
        tx.send(Job {
            request,
            done: Box::new(done),
        })
        .map_err(|_| StorageError::Closed)
    }

    /// Queue a request whose reply is sent to `to` tagged with `ticket` (for a driver
    /// that polls one channel for all completions).
    pub fn submit_to(
        &self,
        request: Request,
        ticket: u64,
        to: Sender<(u64, Result<Reply, StorageError>)>,
    ) -> Result<(), StorageError> {
        self.submit(request, move |reply| {
            // The receiver may have gone away (driver shut down); nothing to tell then.
            let _ = to.send((ticket, reply));
        })
    }

    /// Finish every submitted request, then stop the writer thread.
    pub fn shutdown(mut self) -> Result<(), StorageError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), StorageError> {
        drop(self.tx.take());
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| StorageError::Backend("storage writer thread panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for CommitQueue {
    fn drop(&mut self) {
        // Errors here can only be a writer panic, already reported by the panic hook.
        let _ = self.stop();
    }
}

fn writer_loop<E: Engine + ?Sized>(engine: &E, rx: &Receiver<Job>, config: CommitQueueConfig) {
    let max_batch = config.max_batch.max(1);
    let mut requests = Vec::with_capacity(max_batch);
    let mut completions: Vec<Completion> = Vec::with_capacity(max_batch);
    while let Ok(first) = rx.recv() {
        requests.push(first.request);
        completions.push(first.done);
        let deadline = Instant::now() + config.max_wait;
        let mut open = true;
        while requests.len() < max_batch {
            let job = match rx.try_recv() {
                Ok(job) => job,
                Err(_) => match rx.recv_deadline(deadline) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        open = false;
                        break;
                    }
                },
            };
            requests.push(job.request);
            completions.push(job.done);
        }
        let replies = engine.execute_batch(std::mem::take(&mut requests));
        for (done, reply) in completions.drain(..).zip(replies) {
            done(reply);
        }
        if !open {
            break;
        }
    }
}
