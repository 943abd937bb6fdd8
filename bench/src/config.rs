//! `petrel bench` command line and its validated form.
//!
//! [`BenchArgs`] is what clap parses; [`BenchConfig::resolve`] checks it (rates positive,
//! scenario sizes that make sense, a key file to mint tokens from) and turns every
//! mistake into an error message instead of a panic or a silent default.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use super::plan::Plan;

/// Which load to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScenarioKind {
    /// N connections log in, heartbeat and hold: connect rate, memory per connection.
    Connect,
    /// Pairs of users messaging each other.
    Chat1v1,
    /// G groups of M members; every member sends to its group.
    Group,
    /// One chatroom of M members; every member sends to the room.
    Chatroom,
    /// One public account with F followers; the owner broadcasts.
    Broadcast,
}

/// How the load generator opens its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientMode {
    /// One kernel TCP socket per connection; several processes past ~18,000.
    Kernel,
    /// Userspace TCP (the dataplane's smoltcp shards) over AF_XDP sockets on the load
    /// generator's end of the link: no file descriptor per connection, source addresses
    /// from a whole network (--xdp-iface, --xdp-source-net). One process.
    Xdp,
}

/// What the load generator speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireProtocol {
    /// Petrel's protocol, to a `petrel serve`.
    #[default]
    Petrel,
    /// MQTT 3.1.1 at QoS 1, to a broker such as mosquitto (chat1v1 and connect only):
    /// the reference a Petrel run is compared with (scripts/bench/mosquitto.sh).
    Mqtt,
}

/// Arguments of `petrel bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Scenario to run.
    #[arg(value_enum)]
    pub scenario: ScenarioKind,
    /// Server to load. With --spawn-server, defaults to the address the server prints
    /// [default: 127.0.0.1:9500, or 127.0.0.1:1883 with --protocol mqtt].
    #[arg(long, value_name = "ADDR:PORT")]
    pub server: Option<SocketAddr>,
    /// chat1v1 across two cluster nodes (docs/CLUSTER.md): the second connection of every
    /// pair (the receiver of its partner's messages) connects here instead of --server, so
    /// every message crosses between the nodes. Kernel sockets only [default: off].
    #[arg(long, value_name = "ADDR:PORT")]
    pub peer_server: Option<SocketAddr>,
    /// Protocol to speak: Petrel's, or MQTT to a broker for a side-by-side reference.
    #[arg(long, value_enum, default_value_t = WireProtocol::Petrel)]
    pub protocol: WireProtocol,
    /// Token key file of that server (tokens are minted locally from it)
    /// [default: ./petrel-data/keys, or the spawned server's].
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Start `petrel serve` for the run (temporary data dir, 127.0.0.1, port 0, rate
    /// limit off); arguments after `--` are passed on to it.
    #[arg(long)]
    pub spawn_server: bool,
    /// Process id of an already-running server, for its RSS and CPU from /proc.
    #[arg(long, value_name = "PID", conflicts_with = "spawn_server")]
    pub server_pid: Option<u32>,
    /// connect: number of connections.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub connections: u64,
    /// chat1v1: number of pairs.
    #[arg(long, default_value_t = 100)]
    pub pairs: u64,
    /// group: number of groups.
    #[arg(long, default_value_t = 10)]
    pub groups: u64,
    /// group and chatroom: members per group / in the room.
    #[arg(long, default_value_t = 20)]
    pub members: u64,
    /// broadcast: followers of the public account.
    #[arg(long, default_value_t = 1000)]
    pub followers: u64,
    /// Messages per second over all senders (open loop). Without it: flat out, each
    /// sender keeping --window messages unacknowledged.
    #[arg(long, value_name = "MSGS_PER_SEC")]
    pub rate: Option<f64>,
    /// Flat-out mode: unacknowledged messages per sender.
    #[arg(long, default_value_t = 8)]
    pub window: u32,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub duration: f64,
    /// Seconds of load before measuring starts (sent, but not in the histograms).
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    pub warmup: f64,
    /// Most seconds to wait for outstanding acks and deliveries after the last send.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub drain: f64,
    /// Text payload per message, bytes.
    #[arg(long, default_value_t = 100, value_name = "BYTES")]
    pub payload: usize,
    /// Every connection pings once per this many seconds.
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    pub heartbeat: f64,
    /// TCP handshakes + logins in flight at once while connecting.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Most new connections per second (over all load-generating processes) while
    /// connecting; default: as fast as --connect-concurrency allows. A connect storm that
    /// outlasts the heartbeat interval adds every connection's first heartbeat to the
    /// logins still under way: pace it so the server keeps up.
    #[arg(long, value_name = "PER_SEC")]
    pub connect_rate: Option<f64>,
    /// Most seconds for connecting and logging in every connection.
    #[arg(long, default_value_t = 120.0, value_name = "SECS")]
    pub connect_timeout: f64,
    /// A connection whose connect or login is refused (connection refused or reset,
    /// closed before its login was answered, `RATE_LIMITED` or `SHUTTING_DOWN`) tries
    /// again up to this many times, backing off as the SDK does; other login errors
    /// (a bad token) end the run at once. 0: the first refusal ends the run.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub connect_retries: u32,
    /// First back-off after a refusal, in milliseconds; it doubles after each further
    /// refusal of the same connection, up to 64 times this, half fixed and half random.
    #[arg(long, default_value_t = 100, value_name = "MS")]
    pub connect_backoff_ms: u64,
    /// Client source addresses, round-robin over connections: a list (`10.78.0.1,10.78.0.2`)
    /// or ranges (`10.78.0.1-10.78.0.40`). Default: the kernel's choice, or 127.0.0.x
    /// (one per 25,000 connections) against a loopback server.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub source_ips: Vec<String>,
    /// Most connections per load-generating process (a process holds at most 20,000
    /// file descriptors here).
    #[arg(long, default_value_t = 18_000)]
    pub conns_per_process: u64,
    /// Client side implementation.
    #[arg(long, value_enum, default_value_t = ClientMode::Kernel)]
    pub client_mode: ClientMode,
    /// --client-mode xdp: the interface to send on (the load generator's end of the link;
    /// run the bench as root inside that interface's network namespace).
    #[arg(long, value_name = "IFACE")]
    pub xdp_iface: Option<String>,
    /// --client-mode xdp: the source network the client owns. The kernel must have none
    /// of its addresses, and the server needs a route to it through the link
    /// (scripts/veth-lab.sh adds one for the default).
    #[arg(long, default_value = "10.78.0.0/16", value_name = "CIDR")]
    pub xdp_source_net: String,
    /// Speak TLS to the server (its listeners have `[tls]`), with a rustls session per
    /// connection over either client mode; needs --tls-ca.
    #[arg(long)]
    pub tls: bool,
    /// --tls: PEM file of the certificate(s) to trust (the server's own, or its CA).
    #[arg(long, value_name = "PATH")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// --tls: the name the server's certificate must carry.
    #[arg(long, default_value = "localhost", value_name = "NAME")]
    pub tls_server_name: String,
    /// Speak WebSocket to the server (a `websocket` listener; inside TLS with --tls):
    /// every write is one binary message.
    #[arg(long)]
    pub ws: bool,
    /// --client-mode xdp: userspace TCP receive and transmit buffer per connection, bytes.
    #[arg(long, default_value_t = 4096, value_name = "BYTES")]
    pub xdp_tcp_buffer: usize,
    /// First user id; the run uses consecutive ids from there.
    #[arg(long, default_value_t = 1_000_000_000)]
    pub first_user: u64,
    /// Chatroom id [default: derived from the start time].
    #[arg(long)]
    pub room: Option<u64>,
    /// Print the results as JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also write a latency-percentile plot (SVG) to this file.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// No progress bar (it is also hidden when stdout is not a terminal).
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Internal: run as worker I of W (`I/W`), started by a parent `petrel bench`.
    #[arg(long, hide = true, value_name = "I/W")]
    pub worker: Option<String>,
    /// Internal: the unix time (ns) the parent's run started, shared by all workers.
    #[arg(long, hide = true)]
    pub run_id: Option<u64>,
    /// Arguments for the spawned `petrel serve` (after `--`).
    #[arg(last = true, value_name = "SERVE_ARGS")]
    pub serve_args: Vec<String>,
}

/// Scenario shape, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "scenario", rename_all = "lowercase")]
pub enum Scenario {
    /// `connections` connections.
    Connect {
        /// N.
        connections: u64,
    },
    /// `pairs` pairs.
    Chat1v1 {
        /// Pairs.
        pairs: u64,
    },
    /// `groups` × `members`.
    Group {
        /// G.
        groups: u64,
        /// M.
        members: u64,
    },
    /// One room of `members`.
    Chatroom {
        /// M.
        members: u64,
        /// Room id.
        room: u64,
    },
    /// Owner + `followers`.
    Broadcast {
        /// F.
        followers: u64,
    },
}

/// `--client-mode xdp` settings, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XdpClientSetup {
    /// Interface to send on.
    pub iface: String,
    /// Source network address.
    pub source_addr: Ipv4Addr,
    /// Source network prefix length.
    pub prefix_len: u8,
    /// smoltcp buffer per direction per connection.
    pub tcp_buffer: usize,
}

/// Connections per source address `--client-mode xdp` puts on one address by itself
/// (ports 1024-65535 are all the client's: 64,512 of them).
pub const XDP_CONNS_PER_SOURCE: u64 = 60_000;

impl XdpClientSetup {
    /// Source addresses `connections` connections use when none are given: one per
    /// [`XDP_CONNS_PER_SOURCE`].
    pub fn sources_needed(connections: u64) -> u64 {
        connections.div_ceil(XDP_CONNS_PER_SOURCE).max(1)
    }

    /// The source of connection `i` of `connections` when none are given: the network's
    /// first [`XdpClientSetup::sources_needed`] host addresses, round-robin.
    pub fn source(&self, connections: u64, i: u64) -> Ipv4Addr {
        let first = (u32::from(self.source_addr) & self.mask()) + 1;
        let k = i % Self::sources_needed(connections);
        Ipv4Addr::from(first + k as u32)
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.source_addr) & self.mask()
    }

    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0)
    }
}

/// A validated `petrel bench` run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchConfig {
    /// What to run.
    pub scenario: Scenario,
    /// Messages/s over all senders, or `None` for flat out.
    pub rate: Option<f64>,
    /// Flat-out window per sender.
    pub window: u32,
    /// Measured time.
    pub duration: Duration,
    /// Warm-up time.
    pub warmup: Duration,
    /// Longest drain.
    pub drain: Duration,
    /// Payload text.
    pub payload: String,
    /// Ping interval per connection.
    pub heartbeat: Duration,
    /// Handshakes in flight.
    pub connect_concurrency: usize,
    /// New connections per second over all processes, if paced.
    #[serde(default)]
    pub connect_rate: Option<f64>,
    /// Connect phase limit.
    pub connect_timeout: Duration,
    /// Retries of a refused connection, and the first back-off.
    #[serde(default)]
    pub connect_retry: crate::engine::RetryPolicy,
    /// Explicit source addresses (empty = automatic).
    pub source_ips: Vec<Ipv4Addr>,
    /// Connections per process.
    pub conns_per_process: u64,
    /// First user id.
    pub first_user: u64,
    /// `--client-mode xdp`, or `None` for kernel sockets.
    pub xdp: Option<XdpClientSetup>,
    /// What the connections speak.
    #[serde(default)]
    pub protocol: WireProtocol,
    /// `--tls`: the trusted certificates' file and the server name.
    #[serde(default)]
    pub tls: Option<TlsSetup>,
    /// `--ws`: WebSocket over the connections.
    #[serde(default)]
    pub ws: bool,
    /// `--peer-server`: where the odd connections (each pair's second) connect.
    #[serde(default)]
    pub peer_server: Option<SocketAddr>,
}

/// What `--tls` asked for (each worker process builds its rustls config from it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TlsSetup {
    /// PEM file of the trusted certificates.
    pub ca: std::path::PathBuf,
    /// The name the server's certificate must carry.
    pub server_name: String,
}

/// Checks the `--xdp-*` flags.
fn xdp_setup(args: &BenchArgs) -> anyhow::Result<XdpClientSetup> {
    let Some(iface) = args.xdp_iface.clone() else {
        bail!(
            "--client-mode xdp needs --xdp-iface: the load generator's end of the link to the \
             server (e.g. petrel-n inside the veth lab's namespace)"
        );
    };
    let (source_addr, prefix_len) = parse_cidr(&args.xdp_source_net)
        .with_context(|| format!("bad --xdp-source-net {:?}", args.xdp_source_net))?;
    if !(8..=30).contains(&prefix_len) {
        bail!("--xdp-source-net must be a prefix between /8 and /30, not /{prefix_len}");
    }
    if !(256..=1 << 20).contains(&args.xdp_tcp_buffer) {
        bail!(
            "--xdp-tcp-buffer must be between 256 bytes and 1 MiB, not {}",
            args.xdp_tcp_buffer
        );
    }
    Ok(XdpClientSetup {
        iface,
        source_addr,
        prefix_len,
        tcp_buffer: args.xdp_tcp_buffer,
    })
}

/// Parses `a.b.c.d/len`.
pub fn parse_cidr(text: &str) -> anyhow::Result<(Ipv4Addr, u8)> {
    let (addr, len) = text
        .split_once('/')
        .context("expected ADDRESS/PREFIX_LENGTH, e.g. 10.78.0.0/16")?;
    let addr: Ipv4Addr = addr.parse().context("not an IPv4 address")?;
    let len: u8 = len.parse().context("not a prefix length")?;
    if len > 32 {
        bail!("prefix length {len} is over 32");
    }
    Ok((addr, len))
}

/// Largest payload accepted: the server's default frame limit is 64 KiB.
const MAX_PAYLOAD: usize = 60 * 1024;

impl BenchConfig {
    /// Checks the arguments. `run_id` seeds the default room id.
    pub fn resolve(args: &BenchArgs, run_id: u64) -> anyhow::Result<BenchConfig> {
        let positive = |name: &str, n: u64| -> anyhow::Result<u64> {
            if n == 0 {
                bail!("--{name} must be at least 1");
            }
            Ok(n)
        };
        let scenario = match args.scenario {
            ScenarioKind::Connect => Scenario::Connect {
                connections: positive("connections", args.connections)?,
            },
            ScenarioKind::Chat1v1 => Scenario::Chat1v1 {
                pairs: positive("pairs", args.pairs)?,
            },
            ScenarioKind::Group => {
                if args.members < 2 {
                    bail!("--members must be at least 2 for a group (a sender and a receiver)");
                }
                Scenario::Group {
                    groups: positive("groups", args.groups)?,
                    members: args.members,
                }
            }
            ScenarioKind::Chatroom => {
                if args.members < 2 {
                    bail!("--members must be at least 2 for a chatroom");
                }
                Scenario::Chatroom {
                    members: args.members,
                    room: args.room.unwrap_or(run_id % 1_000_000_007 + 1),
                }
            }
            ScenarioKind::Broadcast => Scenario::Broadcast {
                followers: positive("followers", args.followers)?,
            },
        };
        if args.protocol == WireProtocol::Mqtt {
            if !matches!(args.scenario, ScenarioKind::Chat1v1 | ScenarioKind::Connect) {
                bail!(
                    "--protocol mqtt runs chat1v1 and connect only (the other scenarios \
                     create groups, rooms or accounts, which MQTT does not have)"
                );
            }
            if args.spawn_server {
                bail!("--protocol mqtt loads a broker that is already running, not --spawn-server");
            }
            if args.payload < 8 {
                bail!("--protocol mqtt needs --payload of at least 8 bytes (the message id)");
            }
        }
        if let Some(rate) = args.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            bail!("--rate must be a positive number of messages per second, not {rate}");
        }
        let secs = |name: &str, v: f64, min: f64| -> anyhow::Result<Duration> {
            if !v.is_finite() || v < min || v > 86_400.0 {
                bail!("--{name} must be between {min} and 86400 seconds, not {v}");
            }
            Ok(Duration::from_secs_f64(v))
        };
        if args.payload > MAX_PAYLOAD {
            bail!(
                "--payload {} is over {MAX_PAYLOAD} bytes (the server's frame limit is 64 KiB)",
                args.payload
            );
        }
        if args.window == 0 {
            bail!("--window must be at least 1");
        }
        if let Some(rate) = args.connect_rate
            && !(rate.is_finite() && rate > 0.0)
        {
            bail!("--connect-rate must be a positive number of connections per second, not {rate}");
        }
        if args.connect_concurrency == 0 {
            bail!("--connect-concurrency must be at least 1");
        }
        let xdp = match args.client_mode {
            ClientMode::Kernel => None,
            ClientMode::Xdp => Some(xdp_setup(args)?),
        };
        if xdp.is_none() && (args.conns_per_process == 0 || args.conns_per_process > 19_500) {
            bail!(
                "--conns-per-process must be between 1 and 19500 (a process holds at most \
                 20,000 file descriptors here)"
            );
        }
        let tls = match (args.tls, &args.tls_ca) {
            (false, None) => None,
            (false, Some(_)) => bail!("--tls-ca needs --tls"),
            (true, None) => bail!("--tls needs --tls-ca (the server's certificate, PEM)"),
            (true, Some(_)) if args.protocol != WireProtocol::Petrel => {
                bail!("--tls is for Petrel's protocol only")
            }
            (true, Some(ca)) => {
                // Checked here so a bad file fails before any process starts.
                crate::tls_io::TlsClient::new(ca, &args.tls_server_name)?;
                Some(TlsSetup {
                    ca: ca.clone(),
                    server_name: args.tls_server_name.clone(),
                })
            }
        };
        if args.ws && args.protocol != WireProtocol::Petrel {
            bail!("--ws is for Petrel's protocol only");
        }
        if let Some(peer) = args.peer_server {
            if !matches!(scenario, Scenario::Chat1v1 { .. }) {
                bail!("--peer-server is for chat1v1 (one user of each pair on each server)");
            }
            if xdp.is_some() || args.ws || args.tls || args.protocol != WireProtocol::Petrel {
                bail!(
                    "--peer-server {peer}: kernel-socket clients speaking Petrel's protocol only"
                );
            }
        }
        let source_ips = parse_source_ips(&args.source_ips)?;
        if let Some(setup) = &xdp
            && let Some(outside) = source_ips.iter().find(|ip| !setup.contains(**ip))
        {
            bail!(
                "--source-ips {outside} is outside --xdp-source-net {}/{}: the AF_XDP client \
                 sends only from addresses of its own network",
                setup.source_addr,
                setup.prefix_len
            );
        }
        let config = BenchConfig {
            scenario,
            rate: args.rate,
            window: args.window,
            duration: secs("duration", args.duration, 0.1)?,
            warmup: secs("warmup", args.warmup, 0.0)?,
            drain: secs("drain", args.drain, 0.1)?,
            payload: "x".repeat(args.payload),
            heartbeat: secs("heartbeat", args.heartbeat, 0.1)?,
            connect_concurrency: args.connect_concurrency,
            connect_rate: args.connect_rate,
            connect_timeout: secs("connect-timeout", args.connect_timeout, 1.0)?,
            connect_retry: crate::engine::RetryPolicy {
                attempts: args.connect_retries,
                base: Duration::from_millis(args.connect_backoff_ms.max(1)),
            },
            source_ips,
            // The AF_XDP client needs no descriptor per connection: one process.
            conns_per_process: if xdp.is_some() {
                u64::MAX
            } else {
                args.conns_per_process
            },
            first_user: args.first_user,
            xdp,
            protocol: args.protocol,
            tls,
            ws: args.ws,
            peer_server: args.peer_server,
        };
        if let Some(setup) = &config.xdp {
            let needed = XdpClientSetup::sources_needed(config.plan().connections());
            let hosts = (1u64 << (32 - u32::from(setup.prefix_len))) - 2;
            if config.source_ips.is_empty() && needed > hosts {
                bail!(
                    "{} connections need {needed} source addresses at {XDP_CONNS_PER_SOURCE} \
                     each; --xdp-source-net /{} has {hosts}",
                    config.plan().connections(),
                    setup.prefix_len
                );
            }
        }
        config
            .first_user
            .checked_add(config.plan().connections())
            .context("--first-user plus the number of connections overflows a user id")?;
        Ok(config)
    }

    /// The scenario's layout.
    pub fn plan(&self) -> Plan {
        Plan {
            scenario: self.scenario,
            first_user: self.first_user,
        }
    }
}

/// Parses `a.b.c.d` items and `a.b.c.d-e.f.g.h` ranges (at most 65,536 addresses).
pub fn parse_source_ips(items: &[String]) -> anyhow::Result<Vec<Ipv4Addr>> {
    let mut out = Vec::new();
    for item in items {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        match item.split_once('-') {
            Some((a, b)) => {
                let a: Ipv4Addr = a
                    .trim()
                    .parse()
                    .with_context(|| format!("bad address {a:?} in --source-ips"))?;
                let b: Ipv4Addr = b
                    .trim()
                    .parse()
                    .with_context(|| format!("bad address {b:?} in --source-ips"))?;
                let (a, b) = (u32::from(a), u32::from(b));
                if b < a {
                    bail!("--source-ips range {item} ends before it starts");
                }
                if b - a >= 65_536 || out.len() + (b - a) as usize >= 65_536 {
                    bail!("--source-ips: at most 65,536 addresses");
                }
                out.extend((a..=b).map(Ipv4Addr::from));
            }
            None => out.push(
                item.parse()
                    .with_context(|| format!("bad address {item:?} in --source-ips"))?,
            ),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn xdp_sources_are_the_network_s_first_hosts_one_per_60000_connections() {
        let setup = XdpClientSetup {
            iface: "petrel-n".into(),
            source_addr: Ipv4Addr::new(10, 78, 3, 4),
            prefix_len: 16,
            tcp_buffer: 4096,
        };
        assert_eq!(setup.source(1, 0), Ipv4Addr::new(10, 78, 0, 1));
        assert_eq!(XdpClientSetup::sources_needed(1_000_000), 17);
        assert_eq!(setup.source(1_000_000, 16), Ipv4Addr::new(10, 78, 0, 17));
        assert_eq!(setup.source(1_000_000, 17), Ipv4Addr::new(10, 78, 0, 1));
        assert!(setup.contains(Ipv4Addr::new(10, 78, 255, 254)));
        assert!(!setup.contains(Ipv4Addr::new(10, 79, 0, 1)));
    }

    #[test]
    fn cidrs_parse_or_say_why_not() {
        assert_eq!(
            parse_cidr("10.78.0.0/16").unwrap(),
            (Ipv4Addr::new(10, 78, 0, 0), 16)
        );
        for bad in ["10.78.0.0", "10.78.0.0/33", "host/16", "10.78.0.0/x"] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn resolve(line: &str) -> anyhow::Result<BenchConfig> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(line.split_whitespace()))?;
        BenchConfig::resolve(&cli.args, 12345)
    }

    #[test]
    fn defaults_make_a_runnable_config() {
        let c = resolve("group --groups 3 --members 4").unwrap();
        assert_eq!(c.plan().connections(), 12);
        assert_eq!(c.rate, None);
        assert_eq!(c.payload.len(), 100);
        let room = resolve("chatroom").unwrap();
        assert!(matches!(room.scenario, Scenario::Chatroom { room, .. } if room > 0));
    }

    #[test]
    fn mqtt_runs_the_pairs_of_chat1v1() {
        let c = resolve("chat1v1 --protocol mqtt --pairs 3").unwrap();
        assert_eq!(c.protocol, WireProtocol::Mqtt);
        assert_eq!(c.plan().connections(), 6);
        assert_eq!(resolve("chat1v1").unwrap().protocol, WireProtocol::Petrel);
    }

    #[test]
    fn nonsense_is_refused_with_the_flag_named() {
        for (line, flag) in [
            ("chat1v1 --pairs 0", "--pairs"),
            ("chat1v1 --rate=-1", "--rate"),
            ("chat1v1 --rate=inf", "--rate"),
            ("chat1v1 --duration 0", "--duration"),
            ("chat1v1 --warmup=-1", "--warmup"),
            ("chat1v1 --payload 100000", "--payload"),
            ("chat1v1 --window 0", "--window"),
            ("connect --conns-per-process 30000", "--conns-per-process"),
            (
                "connect -n 5 --first-user 18446744073709551614",
                "--first-user",
            ),
            ("chatroom --members 1", "--members"),
            ("group --protocol mqtt", "--protocol mqtt"),
            ("chat1v1 --protocol mqtt --spawn-server", "--protocol mqtt"),
            ("chat1v1 --protocol mqtt --payload 4", "--payload"),
        ] {
            let err = format!("{:#}", resolve(line).unwrap_err());
            assert!(err.contains(flag), "{line}: {err}");
        }
    }

    #[test]
    fn source_ip_lists_and_ranges() {
        let ips = parse_source_ips(&["10.78.0.1".into(), "10.78.0.254-10.78.1.1".into()]).unwrap();
        assert_eq!(
            ips,
            [
                "10.78.0.1",
                "10.78.0.254",
                "10.78.0.255",
                "10.78.1.0",
                "10.78.1.1"
            ]
            .map(|s| s.parse::<Ipv4Addr>().unwrap())
        );
        assert!(parse_source_ips(&["10.78.0.9-10.78.0.1".into()]).is_err());
        assert!(parse_source_ips(&["10.0.0.0-10.255.0.0".into()]).is_err());
        assert!(parse_source_ips(&["host".into()]).is_err());
    }
}
