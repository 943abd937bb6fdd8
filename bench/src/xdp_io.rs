//! The bench's userspace-TCP client mode (`--client-mode xdp`): every connection is a
//! smoltcp socket of the dataplane's [`XdpClient`], sent and received through AF_XDP
//! sockets on the load generator's end of the link. No file descriptor per connection,
//! and the source addresses are a whole network the client owns (the kernel has none
//! of them), so one process opens as many connections as memory allows.
//!
//! Local ports are handed out per source address from 1024 up; connection `i`'s address
//! comes from the driver (`--source-ips`, or addresses of `--xdp-source-net`).

use std::collections::HashMap;
use std::io::{self, ErrorKind};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use anyhow::{Context, bail};
use petrel_dataplane::sys::xsk::XskConfig;
use petrel_dataplane::xdp::client::{
    ConnKey, ConnPhase, PollOutcome, XdpClient, XdpClientConfig, XdpClientStats,
};
use petrel_dataplane::xdp::filter::AttachMode;
use petrel_dataplane::xdp::tcp::ShardConfig;

use super::config::XdpClientSetup;
use super::io::{Handshake, Ready};
use super::stats::ClientDataplane;

/// Lowest local port handed out.
const FIRST_PORT: u16 = 1024;
/// Connections per smoltcp shard (each poll of a shard scans all of its sockets).
const CONNS_PER_SHARD: usize = 16;
/// Longest wait per poll, so the caller's schedule keeps its pace.
const MAX_WAIT_MS: u64 = 5;

/// Connections over an [`XdpClient`].
pub struct XdpIo {
    client: XdpClient,
    keys: Vec<Option<ConnKey>>,
    by_key: HashMap<ConnKey, usize>,
    /// Connections that ended before the engine looked (refused, reset).
    failed: Vec<bool>,
    next_port: HashMap<Ipv4Addr, u16>,
    outcome: PollOutcome,
}

impl XdpIo {
    /// Starts the client on the setup's interface for `connections` connections to
    /// `server`.
    pub fn start(
        setup: &XdpClientSetup,
        server: SocketAddr,
        connections: usize,
    ) -> anyhow::Result<XdpIo> {
        let SocketAddr::V4(server) = server else {
            bail!("--client-mode xdp needs an IPv4 server address, not {server}");
        };
        let queues = petrel_dataplane::xdp::rx_queues(&setup.iface).context(
            "run the bench inside the interface's namespace with `ip netns exec`, which \
             mounts that namespace's /sys",
        )?;
        let shards = connections.div_ceil(CONNS_PER_SHARD).max(16);
        let config = XdpClientConfig {
            iface: setup.iface.clone(),
            source_addr: setup.source_addr,
            source_prefix_len: setup.prefix_len,
            server,
            queues,
            attach: AttachMode::Auto,
            shards,
            // The hash spreads connections unevenly; leave room.
            max_connections_per_shard: CONNS_PER_SHARD * 4,
            shard: ShardConfig {
                rx_buffer: setup.tcp_buffer,
                tx_buffer: setup.tcp_buffer,
                ..ShardConfig::default()
            },
            // One thread takes every connection's frames: rings twice the server's.
            xsk: XskConfig {
                frame_count: 16384,
                ring_size: 4096,
                tx_reserve: 2048,
                ..XskConfig::default()
            },
        };
        let client = XdpClient::start(config).with_context(|| {
            format!(
                "cannot start the AF_XDP client on {} (run as root inside the interface's \
                 network namespace; the server needs a route to {}/{} through this link)",
                setup.iface, setup.source_addr, setup.prefix_len
            )
        })?;
        Ok(XdpIo {
            client,
            keys: vec![None; connections],
            by_key: HashMap::with_capacity(connections),
            failed: vec![false; connections],
            next_port: HashMap::new(),
            outcome: PollOutcome::default(),
        })
    }

    /// The dataplane's counters, as the report shows them.
    pub fn counters(&self) -> ClientDataplane {
        let XdpClientStats {
            rx,
            tcp_drops,
            sockets,
            tx_dropped,
        } = self.client.stats();
        ClientDataplane {
            tcp_frames: rx.tcp,
            arp_frames: rx.arp,
            malformed: rx.malformed_total(),
            queue_full: tcp_drops.queue_full,
            tx_dropped,
            socket_rx_dropped: sockets.rx_dropped,
            socket_rx_ring_full: sockets.rx_ring_full,
            socket_fill_ring_empty: sockets.fill_ring_empty,
        }
    }

    pub(super) fn open(&mut self, i: usize, source: Option<IpAddr>) -> anyhow::Result<()> {
        let ip = match source {
            Some(IpAddr::V4(ip)) => ip,
            Some(other) => bail!("source address {other} is not IPv4"),
            None => self.client.first_source(),
        };
        let port = self.next_port.entry(ip).or_insert(FIRST_PORT);
        if *port == 0 {
            bail!(
                "out of local ports on {ip} (64,512 per address): spread connections over \
                 more addresses of --xdp-source-net"
            );
        }
        let local = SocketAddrV4::new(ip, *port);
        *port = port.checked_add(1).unwrap_or(0);
        let key = self
            .client
            .connect(local)
            .with_context(|| format!("cannot open a userspace TCP connection from {local}"))?;
        self.keys[i] = Some(key);
        self.by_key.insert(key, i);
        Ok(())
    }

    pub(super) fn handshake(&mut self, i: usize) -> Handshake {
        if std::mem::take(&mut self.failed[i]) {
            return Handshake::Failed("reset by the server, refused or timed out".into());
        }
        let Some(key) = self.keys[i] else {
            return Handshake::Failed("closed".into());
        };
        match self.client.phase(key) {
            ConnPhase::Opening => Handshake::Pending,
            ConnPhase::Open => Handshake::Done,
            ConnPhase::Ended(why) => Handshake::Failed(why),
        }
    }

    pub(super) fn read(&mut self, i: usize, buf: &mut [u8]) -> io::Result<usize> {
        let key = self.keys[i].ok_or(ErrorKind::ConnectionReset)?;
        self.client.recv(key, buf)
    }

    pub(super) fn write(&mut self, i: usize, buf: &[u8]) -> io::Result<usize> {
        let key = self.keys[i].ok_or(ErrorKind::ConnectionReset)?;
        self.client.send(key, buf)
    }

    pub(super) fn close(&mut self, i: usize) {
        if let Some(key) = self.keys[i].take() {
            self.by_key.remove(&key);
            self.client.abort(key);
        }
    }

    pub(super) fn poll(
        &mut self,
        timeout: Option<Duration>,
        ready: &mut Vec<Ready>,
    ) -> anyhow::Result<()> {
        let wait = timeout.map_or(MAX_WAIT_MS, |t| (t.as_millis() as u64).min(MAX_WAIT_MS));
        self.client
            .poll(wait, &mut self.outcome)
            .context("AF_XDP client poll failed")?;
        for key in &self.outcome.closed {
            if let Some(i) = self.by_key.remove(key) {
                self.keys[i] = None;
                self.failed[i] = true;
                ready.push(Ready {
                    conn: i,
                    readable: true,
                    writable: false,
                });
            }
        }
        for key in &self.outcome.touched {
            if let Some(&i) = self.by_key.get(key) {
                ready.push(Ready {
                    conn: i,
                    readable: true,
                    writable: true,
                });
            }
        }
        Ok(())
    }
}

impl Drop for XdpIo {
    fn drop(&mut self) {
        // Reset what is still open, so the server does not hold the connections until
        // their heartbeats time out.
        self.client.abort_all();
    }
}
