//! Kernel-socket transport: one pinned event loop per core over ordinary TCP sockets.
//!
//! ```text
//!            ┌────────── core 0 ──────────┐        ┌─ control-plane thread ─┐
//! clients ──▶│ SO_REUSEPORT listener(s)    │ Event  │                        │
//!   TCP      │ mio/epoll: accept, read,    │───────▶│ Control::handle(now,e) │
//!            │ FrameDecoder, batched write │◀───────│ Router::route(action)  │
//!            └─────────────────────────────┘Command └────────────────────────┘
//!            ┌────────── core 1 ──────────┐            ▲
//!            │ ... same, own listener ...  │────────────┘
//! ```
//!
//! Every core binds its own listening socket to each listen address with `SO_REUSEPORT`,
//! so the kernel spreads incoming connections across cores (the seed platform's "port
//! multiplexing") and no accept lock is shared. A connection lives on the core that
//! accepted it; its [`ConnId`](petrel_control::ConnId) carries that core, so replies go
//! straight there.
//!
//! Per wake-up a core reads each readable socket until it would block, decodes every
//! complete frame in place, drains its command queue, and then writes each connection
//! that has output **once** (a vectored write of everything queued), so many frames to one
//! client cost one syscall. A connection whose queued output exceeds
//! [`KernelConfig::max_outbound_bytes`] is closed: memory never grows because a client
//! stops reading.

mod conn;
mod event_loop;
mod listener;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use petrel_control::Event;
use petrel_proto::DecoderConfig;

use crate::boundary::{CoreHandle, Router, Wake};

/// Settings of the kernel-socket transport.
#[derive(Debug, Clone)]
pub struct KernelConfig {
    /// Addresses to listen on; every core listens on each. Port 0 picks a free port
    /// (the same one for every core); see [`KernelTransport::local_addrs`].
    pub listen: Vec<SocketAddr>,
    /// CPU ids to run event loops on, one loop per entry. `None` entries run unpinned.
    pub cores: Vec<Option<usize>>,
    /// Most connections the whole transport holds; further accepts are closed at once.
    pub max_connections: usize,
    /// Most bytes queued for one connection before it is closed as a slow consumer.
    pub max_outbound_bytes: usize,
    /// Frame decoder limits.
    pub decoder: DecoderConfig,
    /// Listen backlog per socket.
    pub backlog: i32,
}

impl Default for KernelConfig {
    fn default() -> Self {
        KernelConfig {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 9500))],
            cores: vec![None],
            max_connections: 1_000_000,
            max_outbound_bytes: 4 << 20,
            decoder: DecoderConfig::default(),
            backlog: 4096,
        }
    }
}

/// A running kernel-socket transport.
#[derive(Debug)]
pub struct KernelTransport {
    handles: Vec<CoreHandle>,
    threads: Vec<JoinHandle<()>>,
    local_addrs: Vec<SocketAddr>,
}

impl KernelTransport {
    /// Binds every listener, then starts one event loop thread per configured core.
    /// Events go to `events` (bounded: when it is full, cores stop reading until the
    /// control plane catches up).
    pub fn start(config: KernelConfig, events: Sender<Event>) -> io::Result<KernelTransport> {
        if config.cores.is_empty() || config.cores.len() > 256 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the kernel transport needs between 1 and 256 cores",
            ));
        }
        let per_core =
            listener::bind_reuseport(&config.listen, config.cores.len(), config.backlog)?;
        let local_addrs = per_core
            .first()
            .map(|ls| ls.iter().filter_map(|l| l.local_addr().ok()).collect())
            .unwrap_or_default();
        let max_per_core = config.max_connections.div_ceil(config.cores.len());

        let mut handles = Vec::new();
        let mut threads = Vec::new();
        for (index, (cpu, listeners)) in config.cores.iter().zip(per_core).enumerate() {
            let (tx, rx) = crossbeam_channel::unbounded();
            let mut core = event_loop::CoreLoop::new(event_loop::CoreSettings {
                index: index as u8,
                listeners,
                commands: rx,
                events: events.clone(),
                max_connections: max_per_core,
                max_outbound_bytes: config.max_outbound_bytes,
                decoder: config.decoder,
            })?;
            let waker: Arc<dyn Wake> = core.waker();
            handles.push(CoreHandle::new(tx, waker));
            let cpu = *cpu;
            threads.push(
                std::thread::Builder::new()
                    .name(format!("petrel-core-{index}"))
                    .spawn(move || {
                        if let Some(cpu) = cpu {
                            crate::pin::pin_current_thread(cpu);
                        }
                        core.run();
                    })?,
            );
        }
        Ok(KernelTransport {
            handles,
            threads,
            local_addrs,
        })
    }

    /// The addresses actually bound (with the real port when 0 was configured).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// A router for the control-plane thread.
    pub fn router(&self) -> Router {
        Router::new(self.handles.clone())
    }

    /// Waits for every core loop to exit (after [`Router::shutdown_all`]).
    pub fn join(self) {
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!("a dataplane core thread panicked");
            }
        }
    }
}
