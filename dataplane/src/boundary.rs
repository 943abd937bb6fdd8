//! The transport boundary: what one core's share of a transport offers the loop that
//! drives it ([`CoreIo`]), and a small threaded adapter over it for tests and tools
//! ([`spawn_threaded`]).
//!
//! A transport owns no thread of its own. The server's per-core loop (in the `petrel`
//! binary) calls, per iteration:
//!
//! ```text
//! io.wait(timeout)          sleep until I/O is ready, the core is woken, or timeout
//! io.receive(&mut events)   accept, read and decode: Opened / Frame / FrameError / Closed
//! …feed the events to the control plane, collect its actions…
//! io.send(conn, bytes)      queue whole frames         (per Send action)
//! io.close(conn)            flush, then close           (per Close action)
//! io.transmit(&mut events)  write what is queued: Congested / Drained / Closed
//! ```
//!
//! so a message is read, handled and answered on one core without a hand-off. Events
//! are appended to a caller-owned `Vec` that the loop reuses, so the boundary allocates
//! nothing per event. Other threads (a storage syncer, another core) end a core's
//! `wait` through its [`Wake`] handle.

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use petrel_conn::{ConnId, TransportEvent};

/// Where a core's connection-id generations ([`ConnId::from_slot`]) start: a random
/// place, so a restarted process does not hand out its predecessor's ids — other nodes
/// of a cluster may still hold some of those in mail on its way (docs/CLUSTER.md).
pub fn first_generation() -> u64 {
    rand::random()
}

/// Wakes a core's loop from another thread.
pub trait Wake: Send + Sync {
    /// Ends the core's current or next [`CoreIo::wait`].
    fn wake(&self) -> io::Result<()>;
}

impl Wake for mio::Waker {
    fn wake(&self) -> io::Result<()> {
        mio::Waker::wake(self)
    }
}

/// What a transport did in one round ([`CoreIo::round_load`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundLoad {
    /// It did work that may have produced no event: took input, or polled its
    /// userspace TCP (ACKs, retransmissions, dropped SYNs).
    pub worked: bool,
    /// [`CoreIo::receive`] left input behind because it reached its per-round budget
    /// (the rx ring, or readable sockets, hold more than one round takes).
    pub backlogged: bool,
}

/// One core's share of a transport (a kernel-socket event loop's sockets, or one AF_XDP
/// queue with its userspace TCP shards), driven by the loop that owns it.
///
/// Contract: events for one connection come out in order — `Opened` first, `Closed`
/// last and nothing after it; `send` and `close` for a connection that is gone are
/// ignored. A connection whose queued output passes the transport's limit is closed as
/// a slow consumer (its `Closed` follows); the limit is measured from the driver's
/// [`CoreIo::note_congestion`] for its `Congested` edge (see `framed`'s module docs).
pub trait CoreIo: Send {
    /// The core index in this core's [`ConnId`]s.
    fn index(&self) -> u8;

    /// Takes what the network delivered since the last call, without blocking: accepted
    /// connections, decoded frames, decode errors, closes. Appends to `events`.
    fn receive(&mut self, events: &mut Vec<TransportEvent>);

    /// Queues `bytes` (whole frames) on `conn`'s outbound stream.
    fn send(&mut self, conn: ConnId, bytes: Bytes);

    /// Closes `conn` once what is queued for it is written.
    fn close(&mut self, conn: ConnId);

    /// The driver (the control plane) has seen one `Congested` edge of `conn`: what it
    /// sends to `conn` after this, it sends knowing. Called once per edge, in order with
    /// `send`; the slow-consumer limit counts from here.
    fn note_congestion(&mut self, conn: ConnId);

    /// Writes queued output as far as the network takes it. Appends the back-pressure
    /// edges (`Congested`, `Drained`) and `Closed` (connections finished or failed) to
    /// `events`.
    fn transmit(&mut self, events: &mut Vec<TransportEvent>);

    /// Sleeps until there is I/O, [`CoreIo::waker`] is woken, or `timeout` passed
    /// (`None`: no limit of the caller's; the transport may still wake for its own
    /// timers). `Some(Duration::ZERO)` only looks, and may do nothing at all where the
    /// transport needs no system call to see new input (AF_XDP rings): busy polling.
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()>;

    /// The handle other threads use to end [`CoreIo::wait`].
    fn waker(&self) -> Arc<dyn Wake>;

    /// What the round since the last [`CoreIo::receive`] did, for the driver's
    /// admission control.
    fn round_load(&self) -> RoundLoad;

    /// Whether new connections are welcome (the driver's admission control): with
    /// false a transport that owns the handshake takes none — the userspace TCP drops
    /// their SYNs (counted; clients retransmit) — while every open connection is served
    /// as before. Kernel sockets accept regardless (see their implementation): there the
    /// login refusal sheds.
    fn admit_connections(&mut self, admit: bool);

    /// Stops accepting and closes every connection once its output is written.
    fn begin_shutdown(&mut self);

    /// After [`CoreIo::begin_shutdown`]: true once every connection is gone. Past the
    /// transport's flush limit the rest are closed regardless (their `Closed` appended).
    fn shutdown_done(&mut self, events: &mut Vec<TransportEvent>) -> bool;

    /// Connections open on this core.
    fn connections(&self) -> usize;
}

/// A command for a core run by [`spawn_threaded`].
#[derive(Debug)]
pub enum Command {
    /// [`CoreIo::send`].
    Send {
        /// The connection.
        conn: ConnId,
        /// Whole frames.
        bytes: Bytes,
    },
    /// [`CoreIo::close`].
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// [`CoreIo::note_congestion`].
    NoteCongestion {
        /// The connection.
        conn: ConnId,
    },
    /// [`CoreIo::begin_shutdown`], then exit once done.
    Shutdown,
}

/// A core running on a thread of its own, driven through channels: for dataplane tests
/// and tools that need a transport without the server's loop.
#[derive(Debug)]
pub struct Threaded {
    commands: Sender<Command>,
    waker: Arc<dyn Wake>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for dyn Wake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Wake")
    }
}

impl Threaded {
    /// Sends a command and wakes the core.
    pub fn command(&self, command: Command) -> bool {
        let sent = self.commands.send(command).is_ok();
        let _ = self.waker.wake();
        sent
    }

    /// Asks the core to shut down and waits for its thread.
    pub fn shutdown(mut self) {
        self.command(Command::Shutdown);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("a threaded transport core panicked");
        }
    }
}

/// Runs `core` on a new thread: its events go to `events` (blocking when the channel is
/// full: back-pressure by not reading), and [`Threaded::command`] drives it.
pub fn spawn_threaded<C: CoreIo + 'static>(
    mut core: C,
    events: Sender<TransportEvent>,
) -> io::Result<Threaded> {
    let (commands, rx): (Sender<Command>, Receiver<Command>) = crossbeam_channel::unbounded();
    let waker = core.waker();
    let thread = std::thread::Builder::new()
        .name(format!("petrel-io-{}", core.index()))
        .spawn(move || {
            let mut batch = Vec::new();
            let mut stopping = false;
            loop {
                if let Err(e) = core.wait(Some(Duration::from_millis(20))) {
                    tracing::error!(error = %e, "transport wait failed; core stops");
                    return;
                }
                core.receive(&mut batch);
                loop {
                    match rx.try_recv() {
                        Ok(Command::Send { conn, bytes }) => core.send(conn, bytes),
                        Ok(Command::Close { conn }) => core.close(conn),
                        Ok(Command::NoteCongestion { conn }) => core.note_congestion(conn),
                        Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => {
                            if !stopping {
                                stopping = true;
                                core.begin_shutdown();
                            }
                            break;
                        }
                        Err(TryRecvError::Empty) => break,
                    }
                }
                core.transmit(&mut batch);
                let done = stopping && core.shutdown_done(&mut batch);
                for event in batch.drain(..) {
                    if events.send(event).is_err() && !stopping {
                        stopping = true;
                        core.begin_shutdown();
                    }
                }
                if done {
                    return;
                }
            }
        })?;
    Ok(Threaded {
        commands,
        waker,
        thread: Some(thread),
    })
}
