//! `petrel serve` configuration: built-in defaults, overridden by a TOML file
//! (`--config petrel.toml`), overridden by command-line flags. Every option and its
//! default is listed in docs/CONFIGURATION.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde::Deserialize;

/// Which transport carries client connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataplaneKind {
    /// Kernel sockets: pinned epoll loops with SO_REUSEPORT listeners.
    Kernel,
    /// AF_XDP with userspace TCP.
    Xdp,
    /// DPDK with userspace TCP (a `petrel` built with the cargo feature `dpdk`).
    Dpdk,
}

/// How the XDP filter attaches to the interface (`--xdp-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic mode where the driver lacks XDP.
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (SKB) mode only: any interface, slower.
    Generic,
}

/// How a core waits when it has nothing to do (`--poll`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PollKind {
    /// Never sleep: spin on the sockets (AF_XDP: the rings, with no system call) — a
    /// dedicated core per loop, the lowest latency.
    Busy,
    /// Spin for `poll_spin_us` after the last work, then sleep until woken.
    Adaptive,
    /// Sleep until woken (epoll / poll on the AF_XDP socket) whenever idle.
    Interrupt,
}

/// Which cores run a control plane (`--ownership`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ownership {
    /// Core 0 runs the one control plane and storage committer; the other cores do
    /// transport I/O and hand their events over rings (the layout before per-core
    /// control planes; kept as a fallback).
    Home,
    /// Every core runs the whole loop for its own connections — control plane,
    /// committer, transport — and the cores share nothing but messages on rings
    /// (docs/ARCHITECTURE.md, "Shared-nothing cores").
    PerCore,
}

/// How the storage syncer thread is scheduled (`--syncer-priority`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncerPriority {
    /// `SCHED_FIFO` at the lowest real-time priority: the syncer runs the moment its
    /// fsync returns, even on a CPU a busy-polling loop keeps busy (falls back to
    /// `normal`, with a warning, where the process may not: needs `CAP_SYS_NICE` or
    /// `LimitRTPRIO=1`).
    Realtime,
    /// The ordinary scheduler: a woken syncer waits for a CPU like any thread.
    Normal,
}

/// The resolved polling mode of every core's loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollMode {
    /// See [`PollKind::Busy`].
    Busy,
    /// See [`PollKind::Adaptive`].
    Adaptive {
        /// How long to keep spinning after the last work.
        spin: Duration,
    },
    /// See [`PollKind::Interrupt`].
    Interrupt,
}

/// Default spin of [`PollMode::Adaptive`], microseconds.
pub const DEFAULT_POLL_SPIN_US: u64 = 50;

/// Default shortest time between two fsync starts with `sync = "batch"`, microseconds:
/// none, each fsync starts as soon as the last returned (docs/PERFORMANCE.md, "Ninth
/// session": spacing them saves the syncer's CPU but did not shorten the tail).
pub const DEFAULT_SYNC_INTERVAL_US: u64 = 0;

/// Largest `sync_interval_us` accepted: past this a lone message would wait longer for
/// its ack than any IM user would accept.
pub const MAX_SYNC_INTERVAL_US: u64 = 100_000;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Storage diffusion mode (see docs/STORAGE.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Diffusion {
    /// One copy per conversation.
    Read,
    /// An inbox entry per recipient.
    Write,
    /// Write diffusion for active users, read for inactive ones.
    Hybrid,
}

/// When appends reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sync {
    /// fsync every write batch separately.
    Always,
    /// Group commit: appends arriving together share one fsync.
    Batch,
    /// No fsync; the OS writes back later (loses recent acks on power loss).
    None,
}

/// Command-line flags of `petrel serve`. Every flag is optional so that an absent flag
/// leaves the file's (or the default) value in place.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory for the database and the token key file [default: ./petrel-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to accept clients on; repeat for several [default: 0.0.0.0:9500].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,
    /// Transport [default: kernel].
    #[arg(long, value_enum)]
    pub dataplane: Option<DataplaneKind>,
    /// CPUs for the per-core loops, e.g. `0,1`; the first is the home core (control
    /// plane and storage) [default: every CPU].
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub cores: Vec<usize>,
    /// How an idle core waits: `busy` spins (a dedicated core), `adaptive` spins
    /// `--poll-spin-us` after work then sleeps, `interrupt` sleeps at once
    /// [default: adaptive].
    #[arg(long, value_enum)]
    pub poll: Option<PollKind>,
    /// Spin of `--poll adaptive` after the last work, microseconds [default: 50].
    #[arg(long, value_name = "US")]
    pub poll_spin_us: Option<u64>,
    /// Which cores run a control plane: `per-core` (every core its own connections) or
    /// `home` (core 0 only, the others do I/O) [default: per-core].
    #[arg(long, value_enum)]
    pub ownership: Option<Ownership>,
    /// Scheduling of the storage syncer thread (sync = batch): `realtime` lets it run the
    /// moment an fsync returns, `normal` leaves it to the ordinary scheduler
    /// [default: realtime].
    #[arg(long, value_enum)]
    pub syncer_priority: Option<SyncerPriority>,
    /// Shortest time between the starts of two fsyncs (sync = batch), microseconds: under
    /// load each fsync covers more messages and the syncer takes less CPU from the loops,
    /// at the price of up to this much more ack latency [default: 0, sync again as soon
    /// as the last fsync returned; at most 100000].
    #[arg(long, value_name = "US")]
    pub sync_interval_us: Option<u64>,
    /// Most concurrent client connections [default: 1000000].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most concurrent connections from one client IP address, across every core; behind
    /// a PROXY protocol listener, the real client's [default: 0, no limit].
    #[arg(long, value_name = "N")]
    pub max_connections_per_address: Option<u32>,
    /// A listen address (of --listen or `[tls] listen`) whose connections start with a
    /// PROXY protocol v1/v2 header from a load balancer; repeat for several. Anywhere
    /// else a PROXY header is refused as forged [default: none].
    #[arg(long, value_name = "ADDR:PORT")]
    pub proxy_protocol: Vec<SocketAddr>,
    /// A listen address (of --listen or `[tls] listen`) that speaks WebSocket (RFC 6455;
    /// `wss://` on a TLS listener) for browsers; repeat for several [default: none].
    #[arg(long, value_name = "ADDR:PORT")]
    pub websocket: Vec<SocketAddr>,
    /// An `Origin` WebSocket upgrades may come from, e.g. `https://chat.example.com`;
    /// repeat for several. Requests without an `Origin` (not from a browser) are always
    /// accepted [default: any origin].
    #[arg(long, value_name = "ORIGIN")]
    pub websocket_origin: Vec<String>,
    /// The WebSocket listeners are behind an HTTP proxy (nginx's `http` module): each
    /// upgrade must carry `X-Forwarded-For`, whose last entry is the client's address for
    /// logs, metrics and the per-address limit [default: off].
    #[arg(long)]
    pub websocket_forwarded_for: bool,
    /// AF_XDP: the network interface whose queues Petrel takes (required with
    /// `--dataplane xdp`).
    #[arg(long, value_name = "IF")]
    pub iface: Option<String>,
    /// AF_XDP: rx queues to serve, e.g. `0,1` [default: every rx queue of the interface];
    /// spread over the `--cores` loops (a loop serves one or more queues).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub queues: Vec<u32>,
    /// AF_XDP: how the XDP filter attaches [default: auto].
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpMode>,
    /// DPDK: the EAL arguments, one string split at spaces, e.g. `-l 1 --no-huge -m 256
    /// --no-pci --vdev=net_af_packet0,iface=eth1` (required with `--dataplane dpdk`).
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub dpdk_args: Option<String>,
    /// DPDK: the port's device name, a vdev (`net_af_packet0`) or a PCI address
    /// (`0000:03:00.0`) [default: the first `--vdev` of `--dpdk-args`, else port 0].
    #[arg(long, value_name = "NAME")]
    pub dpdk_device: Option<String>,
    /// Token signing keys (`kid hex-secret` per line, first = active)
    /// [default: DATA_DIR/keys, created on first start].
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Storage diffusion mode [default: hybrid].
    #[arg(long, value_enum)]
    pub diffusion: Option<Diffusion>,
    /// Storage durability [default: batch].
    #[arg(long, value_enum)]
    pub sync: Option<Sync>,
    /// Log filter, e.g. `info` or `petrel=debug` [default: info; env RUST_LOG].
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log format [default: human].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (port 0 picks one; the
    /// address is printed at start) [default: off].
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_addr: Option<SocketAddr>,
    /// Serve the HTTP API for the deployment's backend at ADDR:PORT (docs/API.md; port 0
    /// picks one; the address is printed at start). Needs `--api-key-file` [default: off].
    #[arg(long, value_name = "ADDR:PORT")]
    pub api_addr: Option<SocketAddr>,
    /// File holding the API key that requests must send as `Authorization: Bearer KEY`
    /// (at least 16 printable characters).
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// User id that API messages sent with `"system": true` come from [default: none].
    #[arg(long, value_name = "USER")]
    pub api_system_user: Option<u64>,
    /// No longer used (a warning says so at start): chatroom members are skipped while
    /// their connection is congested, i.e. over `max_outbound_bytes`.
    #[arg(long, value_name = "MESSAGES", hide = true)]
    pub chatroom_lag_budget: Option<u64>,
    /// Serve the media upload service (HTTP, docs/MEDIA.md) on ADDR:PORT, on its own
    /// threads (port 0 picks one; the address is printed at start) [default: off].
    #[arg(long, value_name = "ADDR:PORT")]
    pub media_addr: Option<SocketAddr>,
    /// POST an event for every message to a recipient with no online session to URL
    /// (http://…; docs/API.md, "Webhooks"). Needs `secret_file` in the `[webhook]` table
    /// [default: off].
    #[arg(long, value_name = "URL")]
    pub webhook_url: Option<String>,
    /// This node's index in its cluster (overrides `node` in the `[cluster]` table, so
    /// every node can share one config file; docs/CLUSTER.md) [default: the table's].
    #[arg(long, value_name = "N")]
    pub cluster_node: Option<u8>,
    /// Start as the standby of this cluster node (overrides `standby` in the
    /// `[cluster]` table): follow its replica log, and serve in its place once the
    /// serving process is drained (docs/CLUSTER.md, "Standby and handover"). Needs
    /// `[cluster] replicas` [default: the table's, off].
    #[arg(long)]
    pub standby: bool,
    /// Serve the dispatch directory clients ask where to connect (`GET /v1/dispatch`;
    /// HTTPS when every client listener speaks TLS, else HTTP; docs/CLUSTER.md,
    /// "Dispatch") at ADDR:PORT (overrides `addr` in the `[dispatch]` table; port 0
    /// picks one; printed at start) [default: off].
    #[arg(long, value_name = "ADDR:PORT")]
    pub dispatch_addr: Option<SocketAddr>,
    /// Speak TLS on every client listener, and HTTPS on the dispatch directory, with
    /// this PEM certificate chain (needs --tls-key; reloaded on SIGHUP) [default:
    /// plaintext].
    #[arg(long, value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
}

/// The `[server]`-less flat TOML file. Unknown keys are an error, so a typo never
/// silently falls back to a default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<Vec<SocketAddr>>,
    dataplane: Option<DataplaneKind>,
    cores: Option<Vec<usize>>,
    poll: Option<PollKind>,
    poll_spin_us: Option<u64>,
    ownership: Option<Ownership>,
    syncer_priority: Option<SyncerPriority>,
    sync_interval_us: Option<u64>,
    max_connections: Option<usize>,
    max_connections_per_address: Option<u32>,
    proxy_protocol: Option<Vec<SocketAddr>>,
    websocket: Option<Vec<SocketAddr>>,
    websocket_origins: Option<Vec<String>>,
    websocket_forwarded_for: Option<bool>,
    iface: Option<String>,
    queues: Option<Vec<u32>>,
    xdp_mode: Option<XdpMode>,
    xdp_shards_per_queue: Option<usize>,
    xdp_tcp_rx_buffer: Option<usize>,
    xdp_tcp_tx_buffer: Option<usize>,
    xdp_syn_backlog: Option<usize>,
    xdp_syn_cookies: Option<bool>,
    dpdk_args: Option<String>,
    dpdk_device: Option<String>,
    dpdk_mbufs_per_queue: Option<u32>,
    key_file: Option<PathBuf>,
    diffusion: Option<Diffusion>,
    sync: Option<Sync>,
    log_level: Option<String>,
    log_format: Option<LogFormat>,
    metrics_addr: Option<SocketAddr>,
    api_addr: Option<SocketAddr>,
    api_key_file: Option<PathBuf>,
    api_system_user: Option<u64>,
    max_frame_body: Option<u32>,
    max_outbound_bytes: Option<usize>,
    heartbeat_interval_secs: Option<u64>,
    heartbeat_jitter_percent: Option<u8>,
    idle_timeout_secs: Option<u64>,
    login_deadline_secs: Option<u64>,
    rate_limit_per_second: Option<u32>,
    rate_limit_burst: Option<u32>,
    admission_busy_percent: Option<u8>,
    admission_busy_low_percent: Option<u8>,
    admission_logins_per_second: Option<u32>,
    admission_retry_after_ms: Option<u64>,
    chatroom_lag_budget: Option<u64>,
    typing_max_audience: Option<usize>,
    read_receipt_max_group: Option<usize>,
    recall_window_secs: Option<u64>,
    edit_window_secs: Option<u64>,
    shutdown_grace_ms: Option<u64>,
    retention_single_secs: Option<u64>,
    retention_group_secs: Option<u64>,
    retention_public_secs: Option<u64>,
    inbox_max_entries: Option<u64>,
    inbox_retention_secs: Option<u64>,
    trim_interval_secs: Option<u64>,
    dedup_filter_ids: Option<usize>,
    dedup_filter_per_sender: Option<usize>,
    writer_cache_entries: Option<usize>,
    member_cache_conversations: Option<usize>,
    partitions: Option<u16>,
    /// The `[media]` table (docs/CONFIGURATION.md, "Media").
    media: Option<crate::media::MediaFile>,
    /// The `[webhook]` table (docs/CONFIGURATION.md, "Webhooks").
    webhook: Option<crate::webhook::WebhookFile>,
    /// The `[tls]` table (docs/CONFIGURATION.md, "TLS").
    tls: Option<super::tls::TlsFile>,
    /// The `[cluster]` table (docs/CLUSTER.md, "Settings").
    cluster: Option<crate::cluster::ClusterFile>,
    /// The `[dispatch]` table (docs/CLUSTER.md, "Dispatch").
    dispatch: Option<crate::dispatch::DispatchFile>,
}

/// The resolved configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub listen: Vec<SocketAddr>,
    pub dataplane: DataplaneKind,
    pub cores: Vec<usize>,
    /// How idle cores wait.
    pub poll: PollMode,
    /// Which cores run a control plane.
    pub ownership: Ownership,
    /// How the storage syncer thread is scheduled.
    pub syncer_priority: SyncerPriority,
    /// Shortest time between two fsync starts (`sync = "batch"`).
    pub sync_interval: Duration,
    pub max_connections: usize,
    /// Most connections per client address (`None`: no limit).
    pub max_connections_per_address: Option<u32>,
    /// Listen addresses whose connections start with a PROXY protocol header.
    pub proxy_protocol: Vec<SocketAddr>,
    /// Listen addresses that speak WebSocket.
    pub websocket: Vec<SocketAddr>,
    /// Origins WebSocket upgrades may come from (empty: any).
    pub websocket_origins: Vec<String>,
    /// The WebSocket listeners are behind an HTTP proxy that sets `X-Forwarded-For`.
    pub websocket_forwarded_for: bool,
    /// AF_XDP settings (used with `dataplane = "xdp"`; the userspace TCP ones with
    /// `dataplane = "dpdk"` too).
    pub xdp: XdpSettings,
    /// DPDK settings (used with `dataplane = "dpdk"`).
    pub dpdk: DpdkSettings,
    pub key_file: PathBuf,
    pub diffusion: Diffusion,
    pub sync: Sync,
    pub log_level: String,
    pub log_format: LogFormat,
    /// Where the Prometheus endpoint listens, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the HTTP API listens, if enabled.
    pub api_addr: Option<SocketAddr>,
    /// The API key file (required with `api_addr`).
    pub api_key_file: Option<PathBuf>,
    /// The user `"system": true` API messages come from.
    pub api_system_user: Option<u64>,
    pub max_frame_body: u32,
    pub max_outbound_bytes: usize,
    pub heartbeat_interval: Duration,
    /// Each session's announced heartbeat is up to this many percent shorter.
    pub heartbeat_jitter_percent: u8,
    pub idle_timeout: Duration,
    pub login_deadline: Duration,
    /// Sustained SendMessage/ConversationOp frames per second per connection (0 = no
    /// limit).
    pub rate_limit_per_second: u32,
    /// Burst allowance of the same limit.
    pub rate_limit_burst: u32,
    /// When a core sheds new logins and connections (`admission_*` keys).
    pub admission: petrel_control::AdmissionConfig,
    /// Set if the retired `chatroom_lag_budget` key or flag was given: ignored, with a
    /// warning at start (the one outbound limit, `max_outbound_bytes`, decides).
    pub chatroom_lag_budget: Option<u64>,
    /// Largest conversation that typing indicators are forwarded in.
    pub typing_max_audience: usize,
    /// Largest group whose members get each other's read receipts (0: none).
    pub read_receipt_max_group: usize,
    /// How long after sending a sender may recall a message.
    pub recall_window: Duration,
    /// How long after sending a sender may edit a message.
    pub edit_window: Duration,
    /// How long a graceful shutdown keeps answering new requests with SHUTTING_DOWN
    /// before it kicks everyone.
    pub shutdown_grace: Duration,
    /// Retention and the storage writer's memory bounds.
    pub storage: StorageSettings,
    /// The media upload service (off unless it has an address).
    pub media: crate::media::MediaSettings,
    /// Webhooks for offline recipients (off unless a URL is set).
    pub webhook: Option<crate::webhook::WebhookSettings>,
    /// TLS on every client listener, when configured.
    pub tls: Option<super::tls::TlsSettings>,
    /// This node's cluster, when it is one (docs/CLUSTER.md).
    pub cluster: Option<crate::cluster::ClusterSettings>,
    /// The directory clients ask where to connect, pools and backup domains.
    pub dispatch: crate::dispatch::DispatchSettings,
}

/// Retention and storage memory bounds (docs/CONFIGURATION.md, "Storage").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageSettings {
    /// How long 1:1 messages are kept; `None` = forever.
    pub retention_single: Option<Duration>,
    /// How long group messages are kept; `None` = forever.
    pub retention_group: Option<Duration>,
    /// How long public-account messages are kept; `None` = forever.
    pub retention_public: Option<Duration>,
    /// Most inbox entries kept per user.
    pub inbox_max_entries: u64,
    /// Inbox entries older than this are trimmed; `None` = by count only.
    pub inbox_retention: Option<Duration>,
    /// How often a retention pass starts; zero = never.
    pub trim_interval: Duration,
    /// The writer's recent-id dedup filter: ids over all senders.
    pub dedup_filter_ids: usize,
    /// The same filter: ids per sender.
    pub dedup_filter_per_sender: usize,
    /// Each of the writer's per-conversation / per-user caches, entries.
    pub writer_cache_entries: usize,
    /// The writer's member-map cache, conversations.
    pub member_cache_conversations: usize,
    /// Logical partitions of a database this server creates (an existing one keeps its
    /// own count).
    pub partitions: u16,
}

impl StorageSettings {
    fn from_file(file: &FileConfig) -> StorageSettings {
        let defaults = petrel_storage::StorageConfig::default();
        // 0 in the file means "keep forever" / "by count only", like leaving it out.
        let secs = |v: Option<u64>| v.filter(|s| *s > 0).map(Duration::from_secs);
        StorageSettings {
            retention_single: secs(file.retention_single_secs),
            retention_group: secs(file.retention_group_secs),
            retention_public: secs(file.retention_public_secs),
            inbox_max_entries: file.inbox_max_entries.unwrap_or(defaults.inbox_max_entries),
            inbox_retention: match file.inbox_retention_secs {
                Some(s) => secs(Some(s)),
                None => defaults.inbox_retention_ms.map(Duration::from_millis),
            },
            trim_interval: Duration::from_secs(file.trim_interval_secs.unwrap_or(60)),
            dedup_filter_ids: file.dedup_filter_ids.unwrap_or(defaults.dedup_filter_ids),
            dedup_filter_per_sender: file
                .dedup_filter_per_sender
                .unwrap_or(defaults.dedup_filter_per_sender),
            writer_cache_entries: file
                .writer_cache_entries
                .unwrap_or(defaults.writer_cache_entries),
            member_cache_conversations: file
                .member_cache_conversations
                .unwrap_or(defaults.member_cache_conversations),
            partitions: file.partitions.unwrap_or(defaults.partitions),
        }
    }
}

/// Connections per smoltcp shard the automatic shard count aims for: smoltcp scans a
/// shard's sockets for every packet and every egress poll, and the poller reads every
/// connection of a shard it polled, so a shard must stay small. 32, not 128: at 128 a
/// million connections' heartbeats (one packet polls a shard) cost more than a core on
/// the veth lab; a shard's own memory (~3 KB with its listener) is ~100 B per connection.
pub const CONNECTIONS_PER_SHARD: usize = 32;

/// The AF_XDP dataplane's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpSettings {
    /// The interface (required for the xdp dataplane).
    pub iface: Option<String>,
    /// rx queues to serve; empty: every rx queue of the interface.
    pub queues: Vec<u32>,
    /// How the filter attaches.
    pub mode: XdpMode,
    /// smoltcp shards per queue (each a small interface + socket set); `None`: sized
    /// from `max_connections` for about [`CONNECTIONS_PER_SHARD`] connections per shard.
    pub shards_per_queue: Option<usize>,
    /// Userspace TCP receive buffer per connection, bytes.
    pub tcp_rx_buffer: usize,
    /// Userspace TCP transmit buffer per connection, bytes.
    pub tcp_tx_buffer: usize,
    /// Most half-open connections per core; past it SYNs get SYN cookies.
    pub syn_backlog: usize,
    /// SYN cookies past `syn_backlog` (off: such SYNs are dropped).
    pub syn_cookies: bool,
}

/// The DPDK dataplane's settings (its userspace TCP ones are [`XdpSettings`]').
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DpdkSettings {
    /// EAL arguments, split at spaces.
    pub args: Vec<String>,
    /// The port's device name; `None`: the first `--vdev`, else port 0.
    pub device: Option<String>,
    /// Mbufs in each queue's pool.
    pub mbufs_per_queue: u32,
}

impl ServeConfig {
    /// Defaults ← file (if `--config` was given) ← flags.
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<ServeConfig> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let storage = StorageSettings::from_file(&file);
        let media = crate::media::MediaSettings::resolve(file.media.as_ref(), args.media_addr)?;
        let webhook = crate::webhook::WebhookSettings::resolve(
            file.webhook.as_ref(),
            args.webhook_url.as_deref(),
        )?;
        let tls = super::tls::TlsSettings::resolve(
            file.tls.as_ref(),
            args.tls_cert.as_deref(),
            args.tls_key.as_deref(),
        )?;
        let cluster = crate::cluster::ClusterSettings::resolve(
            file.cluster.as_ref(),
            args.cluster_node,
            args.standby,
        )?;
        let mut dispatch = crate::dispatch::DispatchSettings::resolve(
            file.dispatch.as_ref(),
            cluster.as_ref().map(|c| c.nodes),
            tls.is_some(),
            tls.as_ref().is_some_and(|t| t.listen.is_empty()),
        )?;
        if args.dispatch_addr.is_some() {
            dispatch.addr = args.dispatch_addr;
        }
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./petrel-data"));
        let key_file = args
            .key_file
            .clone()
            .or(file.key_file)
            .unwrap_or_else(|| data_dir.join("keys"));
        let listen = if !args.listen.is_empty() {
            args.listen.clone()
        } else {
            file.listen
                .unwrap_or_else(|| vec![SocketAddr::from(([0, 0, 0, 0], 9500))])
        };
        let cores = if !args.cores.is_empty() {
            args.cores.clone()
        } else {
            file.cores.unwrap_or_default()
        };
        let heartbeat_interval = Duration::from_secs(file.heartbeat_interval_secs.unwrap_or(50));
        let xdp = XdpSettings {
            iface: args.iface.clone().or(file.iface),
            queues: if args.queues.is_empty() {
                file.queues.unwrap_or_default()
            } else {
                args.queues.clone()
            },
            mode: args.xdp_mode.or(file.xdp_mode).unwrap_or(XdpMode::Auto),
            shards_per_queue: file.xdp_shards_per_queue,
            tcp_rx_buffer: file.xdp_tcp_rx_buffer.unwrap_or(2048),
            tcp_tx_buffer: file.xdp_tcp_tx_buffer.unwrap_or(4096),
            syn_backlog: file
                .xdp_syn_backlog
                .unwrap_or(petrel_dataplane::xdp::syn_cookie::DEFAULT_SYN_BACKLOG),
            syn_cookies: file.xdp_syn_cookies.unwrap_or(true),
        };
        let dpdk = DpdkSettings {
            args: args
                .dpdk_args
                .clone()
                .or(file.dpdk_args)
                .map(|a| a.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default(),
            device: args.dpdk_device.clone().or(file.dpdk_device),
            mbufs_per_queue: file.dpdk_mbufs_per_queue.unwrap_or(8191),
        };
        let mut config = ServeConfig {
            data_dir,
            listen,
            dataplane: args
                .dataplane
                .or(file.dataplane)
                .unwrap_or(DataplaneKind::Kernel),
            cores,
            poll: match args.poll.or(file.poll).unwrap_or(PollKind::Adaptive) {
                PollKind::Busy => PollMode::Busy,
                PollKind::Adaptive => PollMode::Adaptive {
                    spin: Duration::from_micros(
                        args.poll_spin_us
                            .or(file.poll_spin_us)
                            .unwrap_or(DEFAULT_POLL_SPIN_US),
                    ),
                },
                PollKind::Interrupt => PollMode::Interrupt,
            },
            ownership: args
                .ownership
                .or(file.ownership)
                .unwrap_or(Ownership::PerCore),
            syncer_priority: args
                .syncer_priority
                .or(file.syncer_priority)
                .unwrap_or(SyncerPriority::Realtime),
            sync_interval: Duration::from_micros(
                args.sync_interval_us
                    .or(file.sync_interval_us)
                    .unwrap_or(DEFAULT_SYNC_INTERVAL_US),
            ),
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(1_000_000),
            max_connections_per_address: args
                .max_connections_per_address
                .or(file.max_connections_per_address)
                .filter(|&n| n > 0),
            proxy_protocol: if args.proxy_protocol.is_empty() {
                file.proxy_protocol.unwrap_or_default()
            } else {
                args.proxy_protocol.clone()
            },
            websocket: if args.websocket.is_empty() {
                file.websocket.unwrap_or_default()
            } else {
                args.websocket.clone()
            },
            websocket_origins: if args.websocket_origin.is_empty() {
                file.websocket_origins.unwrap_or_default()
            } else {
                args.websocket_origin.clone()
            },
            websocket_forwarded_for: args.websocket_forwarded_for
                || file.websocket_forwarded_for.unwrap_or(false),
            xdp,
            dpdk,
            key_file,
            diffusion: args
                .diffusion
                .or(file.diffusion)
                .unwrap_or(Diffusion::Hybrid),
            sync: args.sync.or(file.sync).unwrap_or(Sync::Batch),
            log_level: args
                .log_level
                .clone()
                .or(file.log_level)
                .unwrap_or_else(|| "info".into()),
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Human),
            metrics_addr: args.metrics_addr.or(file.metrics_addr),
            api_addr: args.api_addr.or(file.api_addr),
            api_key_file: args.api_key_file.clone().or(file.api_key_file),
            api_system_user: args.api_system_user.or(file.api_system_user),
            max_frame_body: file.max_frame_body.unwrap_or(64 * 1024),
            max_outbound_bytes: file.max_outbound_bytes.unwrap_or(1 << 20),
            heartbeat_interval,
            heartbeat_jitter_percent: file.heartbeat_jitter_percent.unwrap_or(20),
            idle_timeout: file
                .idle_timeout_secs
                .map_or(heartbeat_interval * 3, Duration::from_secs),
            login_deadline: Duration::from_secs(file.login_deadline_secs.unwrap_or(10)),
            rate_limit_per_second: file.rate_limit_per_second.unwrap_or(20),
            rate_limit_burst: file.rate_limit_burst.unwrap_or(50),
            admission: {
                let default = petrel_control::AdmissionConfig::default();
                petrel_control::AdmissionConfig {
                    busy_high_percent: file
                        .admission_busy_percent
                        .unwrap_or(default.busy_high_percent),
                    busy_low_percent: file
                        .admission_busy_low_percent
                        .unwrap_or(default.busy_low_percent),
                    logins_per_second: file
                        .admission_logins_per_second
                        .unwrap_or(default.logins_per_second),
                    retry_after: file
                        .admission_retry_after_ms
                        .map_or(default.retry_after, Duration::from_millis),
                }
            },
            chatroom_lag_budget: args.chatroom_lag_budget.or(file.chatroom_lag_budget),
            typing_max_audience: file.typing_max_audience.unwrap_or(500),
            read_receipt_max_group: file.read_receipt_max_group.unwrap_or(100),
            recall_window: Duration::from_secs(file.recall_window_secs.unwrap_or(120)),
            edit_window: Duration::from_secs(file.edit_window_secs.unwrap_or(2 * 24 * 3600)),
            shutdown_grace: Duration::from_millis(file.shutdown_grace_ms.unwrap_or(200)),
            storage,
            media,
            webhook,
            tls,
            cluster,
            dispatch,
        };
        // Browsers offer ALPN `http/1.1` for wss://; a TLS listener that speaks WebSocket
        // must accept it.
        if let Some(tls) = &mut config.tls
            && !config.websocket.is_empty()
            && !tls.alpn.iter().any(|p| p == "http/1.1")
        {
            tls.alpn.push("http/1.1".to_owned());
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.listen.is_empty() {
            bail!("at least one listen address is required");
        }
        if let Some(tls) = &self.tls
            && !tls.listen.is_empty()
            && self.dataplane != DataplaneKind::Kernel
        {
            bail!(
                "[tls] listen: plaintext and TLS listeners side by side need dataplane = \
                 \"kernel\"; the {:?} dataplane serves one port (leave [tls] listen out to \
                 speak TLS on it)",
                self.dataplane
            );
        }
        if self.max_connections == 0 {
            bail!("max_connections must be at least 1");
        }
        if self.cluster.is_some() && self.ownership != Ownership::PerCore {
            bail!(
                "[cluster] needs ownership = \"per-core\": the nodes' cores exchange what the \
                 cores of one server do"
            );
        }
        let tls_listen = self.tls.as_ref().map(|t| &t.listen[..]).unwrap_or_default();
        for (key, addrs) in [
            ("proxy_protocol", &self.proxy_protocol),
            ("websocket", &self.websocket),
        ] {
            if let Some(stray) = addrs
                .iter()
                .find(|a| !self.listen.contains(a) && !tls_listen.contains(a))
            {
                bail!(
                    "{key} names {stray}, which is not a listen address (of `listen` or \
                     `[tls] listen`): it is set per listener"
                );
            }
        }
        if self.websocket_forwarded_for {
            if self.websocket.is_empty() {
                bail!("websocket_forwarded_for needs WebSocket listeners (`websocket`)");
            }
            if let Some(both) = self
                .websocket
                .iter()
                .find(|a| self.proxy_protocol.contains(a))
            {
                bail!(
                    "{both} is in proxy_protocol and its WebSocket is behind an HTTP proxy \
                     (websocket_forwarded_for): a listener gets its client address one way"
                );
            }
        }
        if let Some(origin) = self
            .websocket_origins
            .iter()
            .find(|o| !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/'))
        {
            bail!(
                "websocket_origins: {origin:?} is not an origin (scheme://host[:port], no path \
                 or trailing slash, as browsers send it)"
            );
        }
        if self.sync_interval > Duration::from_micros(MAX_SYNC_INTERVAL_US) {
            bail!(
                "sync_interval_us must be at most {MAX_SYNC_INTERVAL_US} (100 ms), not {}",
                self.sync_interval.as_micros()
            );
        }
        if self.max_frame_body < 1024 {
            bail!("max_frame_body must be at least 1024 bytes");
        }
        if self.max_outbound_bytes < self.max_frame_body as usize + 16 {
            bail!(
                "max_outbound_bytes must be at least one largest frame (max_frame_body + 16 = {} bytes)",
                self.max_frame_body as usize + 16
            );
        }
        if self.heartbeat_jitter_percent > petrel_control::config::MAX_HEARTBEAT_JITTER_PERCENT {
            bail!(
                "heartbeat_jitter_percent must be at most {}",
                petrel_control::config::MAX_HEARTBEAT_JITTER_PERCENT
            );
        }
        let admission = &self.admission;
        if admission.busy_high_percent > 100 {
            bail!("admission_busy_percent must be at most 100 (0 turns the CPU budget off)");
        }
        if admission.busy_high_percent > 0
            && admission.busy_low_percent >= admission.busy_high_percent
        {
            bail!(
                "admission_busy_low_percent ({}) must be below admission_busy_percent ({})",
                admission.busy_low_percent,
                admission.busy_high_percent
            );
        }
        if admission.retry_after.is_zero() || admission.retry_after > Duration::from_secs(600) {
            bail!("admission_retry_after_ms must be between 1 and 600000");
        }
        if self.heartbeat_interval.is_zero() || self.idle_timeout <= self.heartbeat_interval {
            bail!("idle_timeout must be longer than heartbeat_interval (both non-zero)");
        }
        if self.shutdown_grace > Duration::from_secs(60) {
            bail!("shutdown_grace_ms must be at most 60000");
        }
        if self.api_addr.is_some() && self.api_key_file.is_none() {
            bail!("api_addr needs api_key_file (the key every API request must carry)");
        }
        if self.api_system_user == Some(0) {
            bail!("api_system_user must be a user id (1 or more)");
        }
        let s = &self.storage;
        if !(1..=petrel_storage::partition::MAX_PARTITIONS).contains(&s.partitions) {
            bail!(
                "partitions must be 1 to {}",
                petrel_storage::partition::MAX_PARTITIONS
            );
        }
        if s.inbox_max_entries == 0 {
            bail!("inbox_max_entries must be at least 1 (each user keeps their newest entry)");
        }
        if s.dedup_filter_ids == 0
            || s.dedup_filter_per_sender == 0
            || s.writer_cache_entries == 0
            || s.member_cache_conversations == 0
        {
            bail!(
                "dedup_filter_ids, dedup_filter_per_sender, writer_cache_entries and \
                 member_cache_conversations must be at least 1"
            );
        }
        Ok(())
    }

    /// What `petrel serve --dataplane dpdk` needs beyond a valid configuration: EAL
    /// arguments, one concrete IPv4 listen address, and one queue per core (not
    /// `--queues`, which names AF_XDP queues).
    pub fn validate_dpdk(&self) -> anyhow::Result<()> {
        if self.dpdk.args.is_empty() {
            bail!(
                "--dataplane dpdk needs --dpdk-args \"EAL ARGS\" (e.g. \"-l 1 --no-huge -m 256 \
                 --no-pci --vdev=net_af_packet0,iface=eth1\")"
            );
        }
        self.one_concrete_ipv4_listen("dpdk", "Petrel owns that address on the DPDK port")?;
        if !self.xdp.queues.is_empty() {
            bail!("--queues is for --dataplane xdp; a DPDK port gets one queue per --cores CPU");
        }
        if self.dpdk.mbufs_per_queue < 1024 {
            bail!("dpdk_mbufs_per_queue must be at least 1024");
        }
        if self.xdp.tcp_rx_buffer < 256 || self.xdp.tcp_tx_buffer < 256 {
            bail!("xdp_tcp_rx_buffer and xdp_tcp_tx_buffer must be at least 256 bytes");
        }
        if self.xdp.syn_backlog == 0 && !self.xdp.syn_cookies {
            bail!(
                "xdp_syn_backlog = 0 with xdp_syn_cookies = false would refuse every connection: \
                 raise the backlog or turn cookies on"
            );
        }
        Ok(())
    }

    /// The kernel-bypass dataplanes serve exactly one concrete IPv4 `--listen` address
    /// (`why` says what depends on it).
    fn one_concrete_ipv4_listen(&self, dataplane: &str, why: &str) -> anyhow::Result<()> {
        let [addr] = self.listen[..] else {
            bail!(
                "--dataplane {dataplane} serves exactly one --listen IPV4:PORT (got {})",
                self.listen.len()
            );
        };
        if !addr.is_ipv4() || addr.ip().is_unspecified() || addr.port() == 0 {
            bail!(
                "--dataplane {dataplane} needs a concrete IPv4 address and port to listen on \
                 (got {addr}): {why}"
            );
        }
        Ok(())
    }

    /// What `petrel serve --dataplane xdp` needs beyond a valid configuration: an
    /// interface and one concrete IPv4 listen address. (Checked when serving, not when
    /// resolving: `petrel doctor` and `tune` read the same settings for other purposes.)
    pub fn validate_xdp(&self) -> anyhow::Result<()> {
        if self.xdp.iface.is_none() {
            bail!("--dataplane xdp needs --iface IF (the interface whose queues Petrel serves)");
        }
        self.one_concrete_ipv4_listen("xdp", "the XDP filter matches that address and port")?;
        if !self.cores.is_empty()
            && !self.xdp.queues.is_empty()
            && self.cores.len() > self.xdp.queues.len()
        {
            bail!(
                "--cores names more CPUs than --queues names queues with --dataplane xdp \
                 ({} cores, {} queues): each core serves one or more queues",
                self.cores.len(),
                self.xdp.queues.len()
            );
        }
        if self
            .xdp
            .shards_per_queue
            .is_some_and(|n| n == 0 || n > 65_536)
        {
            bail!("xdp_shards_per_queue must be between 1 and 65536");
        }
        if self.xdp.tcp_rx_buffer < 256 || self.xdp.tcp_tx_buffer < 256 {
            bail!("xdp_tcp_rx_buffer and xdp_tcp_tx_buffer must be at least 256 bytes");
        }
        if self.xdp.syn_backlog == 0 && !self.xdp.syn_cookies {
            bail!(
                "xdp_syn_backlog = 0 with xdp_syn_cookies = false would refuse every connection: \
                 raise the backlog or turn cookies on"
            );
        }
        Ok(())
    }
}

fn load_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resolves a config file of `text` (written into `dir`) with no flags.
    fn resolve_file(dir: &Path, text: &str) -> anyhow::Result<ServeConfig> {
        let path = dir.join("petrel.toml");
        std::fs::write(&path, text).unwrap();
        ServeConfig::resolve(&ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        })
    }

    #[test]
    fn defaults_apply_without_file_or_flags() {
        let c = ServeConfig::resolve(&ServeArgs::default()).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./petrel-data"));
        assert_eq!(c.key_file, PathBuf::from("./petrel-data/keys"));
        assert_eq!(c.listen, vec!["0.0.0.0:9500".parse().unwrap()]);
        assert_eq!(c.dataplane, DataplaneKind::Kernel);
        assert_eq!(c.sync, Sync::Batch);
        assert_eq!(c.idle_timeout, Duration::from_secs(150));
        assert_eq!(c.metrics_addr, None);
        assert_eq!(c.chatroom_lag_budget, None);
        assert_eq!(c.max_outbound_bytes, 1 << 20);
        assert_eq!(c.shutdown_grace, Duration::from_millis(200));
    }

    #[test]
    fn the_retired_lag_budget_is_still_accepted_and_shutdown_grace_comes_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("petrel.toml");
        std::fs::write(
            &path,
            "chatroom_lag_budget = 64
shutdown_grace_ms = 1500
",
        )
        .unwrap();
        let mut args = ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        };
        let c = ServeConfig::resolve(&args).unwrap();
        assert_eq!(c.chatroom_lag_budget, Some(64));
        assert_eq!(c.shutdown_grace, Duration::from_millis(1500));
        args.chatroom_lag_budget = Some(0);
        assert_eq!(
            ServeConfig::resolve(&args).unwrap().chatroom_lag_budget,
            Some(0)
        );
    }

    #[test]
    fn retention_and_storage_bounds_come_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let resolve = |text: &str| resolve_file(dir.path(), text);
        let defaults = resolve("").unwrap().storage;
        assert_eq!(
            defaults.retention_group, None,
            "messages are kept forever by default"
        );
        assert_eq!(defaults.inbox_max_entries, 10_000);
        assert_eq!(
            defaults.inbox_retention,
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(defaults.trim_interval, Duration::from_secs(60));
        assert_eq!(defaults.partitions, 16);
        let s = resolve(
            "retention_single_secs = 86400\nretention_group_secs = 0\n\
             retention_public_secs = 7200\ninbox_max_entries = 500\ninbox_retention_secs = 0\n\
             trim_interval_secs = 5\nwriter_cache_entries = 1000\npartitions = 64\n",
        )
        .unwrap()
        .storage;
        assert_eq!(s.retention_single, Some(Duration::from_secs(86_400)));
        assert_eq!(s.retention_group, None, "0 keeps forever");
        assert_eq!(s.retention_public, Some(Duration::from_secs(7200)));
        assert_eq!(s.inbox_max_entries, 500);
        assert_eq!(s.inbox_retention, None, "0 trims by count only");
        assert_eq!(s.trim_interval, Duration::from_secs(5));
        assert_eq!(s.writer_cache_entries, 1000);
        assert_eq!(s.partitions, 64);
        for bad in ["inbox_max_entries = 0\n", "dedup_filter_ids = 0\n"] {
            let err = resolve(bad).unwrap_err();
            assert!(format!("{err:#}").contains("at least 1"), "{bad}: {err:#}");
        }
        for bad in ["partitions = 0\n", "partitions = 1025\n"] {
            let err = resolve(bad).unwrap_err();
            assert!(
                format!("{err:#}").contains("partitions must be 1 to 1024"),
                "{bad}: {err:#}"
            );
        }
    }

    #[test]
    fn metrics_addr_comes_from_the_file_or_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("petrel.toml");
        std::fs::write(&path, "metrics_addr = \"127.0.0.1:9600\"\n").unwrap();
        let mut args = ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        };
        let c = ServeConfig::resolve(&args).unwrap();
        assert_eq!(c.metrics_addr, Some("127.0.0.1:9600".parse().unwrap()));
        args.metrics_addr = Some("0.0.0.0:9700".parse().unwrap());
        let c = ServeConfig::resolve(&args).unwrap();
        assert_eq!(c.metrics_addr, Some("0.0.0.0:9700".parse().unwrap()));
    }

    #[test]
    fn the_sync_interval_comes_from_the_file_or_the_flag_and_is_bounded() {
        assert_eq!(
            ServeConfig::resolve(&ServeArgs::default())
                .unwrap()
                .sync_interval,
            Duration::ZERO
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("petrel.toml");
        std::fs::write(&path, "sync_interval_us = 700\n").unwrap();
        let mut args = ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        };
        let c = ServeConfig::resolve(&args).unwrap();
        assert_eq!(c.sync_interval, Duration::from_micros(700));
        args.sync_interval_us = Some(250);
        let c = ServeConfig::resolve(&args).unwrap();
        assert_eq!(c.sync_interval, Duration::from_micros(250));
        args.sync_interval_us = Some(100_001);
        let e = ServeConfig::resolve(&args).unwrap_err().to_string();
        assert!(e.contains("sync_interval_us"), "{e}");
    }

    #[test]
    fn admission_keys_reach_the_control_plane_and_nonsense_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let resolve = |text: &str| resolve_file(dir.path(), text);
        let c = resolve("").unwrap();
        assert_eq!(c.admission, petrel_control::AdmissionConfig::default());
        let c = resolve(
            "admission_busy_percent = 80\nadmission_busy_low_percent = 50\n\
             admission_logins_per_second = 2000\nadmission_retry_after_ms = 250\n",
        )
        .unwrap();
        assert_eq!(
            c.admission,
            petrel_control::AdmissionConfig {
                busy_high_percent: 80,
                busy_low_percent: 50,
                logins_per_second: 2000,
                retry_after: Duration::from_millis(250),
            }
        );
        assert_eq!(
            resolve("admission_busy_percent = 0\n")
                .unwrap()
                .admission
                .busy_high_percent,
            0,
            "0 turns the CPU budget off"
        );
        for (text, key) in [
            ("admission_busy_percent = 101\n", "admission_busy_percent"),
            (
                "admission_busy_percent = 80\nadmission_busy_low_percent = 80\n",
                "admission_busy_low_percent",
            ),
            ("admission_retry_after_ms = 0\n", "admission_retry_after_ms"),
        ] {
            let e = resolve(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn proxy_protocol_names_listen_addresses_and_a_zero_address_limit_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let resolve = |text: &str| resolve_file(dir.path(), text);
        let c = resolve(
            "listen = [\"0.0.0.0:9500\", \"0.0.0.0:9600\"]\n\
             proxy_protocol = [\"0.0.0.0:9600\"]\nmax_connections_per_address = 50\n",
        )
        .unwrap();
        assert_eq!(c.proxy_protocol, vec!["0.0.0.0:9600".parse().unwrap()]);
        assert_eq!(c.max_connections_per_address, Some(50));
        let tls_port = "proxy_protocol = [\"0.0.0.0:9643\"]\n\
                        [tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\nlisten = [\"0.0.0.0:9643\"]\n";
        assert_eq!(resolve(tls_port).unwrap().proxy_protocol.len(), 1);
        let e = resolve("proxy_protocol = [\"0.0.0.0:9700\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a listen address"), "{e}");
        let c = resolve(
            "listen = [\"0.0.0.0:9500\", \"0.0.0.0:9580\"]\nwebsocket = [\"0.0.0.0:9580\"]\n\
             websocket_origins = [\"https://chat.example.com\"]\n",
        )
        .unwrap();
        assert_eq!(c.websocket, vec!["0.0.0.0:9580".parse().unwrap()]);
        let e = resolve("websocket = [\"0.0.0.0:9581\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("websocket names"), "{e}");
        let e = resolve("websocket_origins = [\"https://chat.example.com/\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an origin"), "{e}");
        let c = resolve("max_connections_per_address = 0\n").unwrap();
        assert_eq!(c.max_connections_per_address, None, "0 means no limit");
    }

    #[test]
    fn tls_needs_cert_and_key_and_separate_tls_listeners_need_kernel_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let resolve = |text: &str| resolve_file(dir.path(), text);
        let c = resolve("[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n").unwrap();
        let tls = c.tls.expect("TLS on");
        assert!(tls.listen.is_empty(), "every listener speaks TLS");
        assert_eq!(tls.alpn, ["petrel"]);
        let e = resolve("[tls]\ncert = \"/c.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("private key"), "{e}");
        let e = resolve("[tls]\nlisten = [\"0.0.0.0:9543\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cert"), "{e}");
        let side_by_side = "[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n\
                            listen = [\"0.0.0.0:9543\"]\n";
        assert_eq!(resolve(side_by_side).unwrap().tls.unwrap().listen.len(), 1);
        let e = resolve(&format!(
            "dataplane = \"xdp\"\niface = \"veth0\"\n{side_by_side}"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("side by side"), "{e}");
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("petrel.toml");
        std::fs::write(
            &path,
            "data_dir = \"/from/file\"\nlisten = [\"127.0.0.1:7000\"]\nsync = \"none\"\n\
             heartbeat_interval_secs = 10\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            data_dir: Some("/from/flag".into()),
            ..ServeArgs::default()
        };
        let c = ServeConfig::resolve(&args).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(c.listen, vec!["127.0.0.1:7000".parse().unwrap()]);
        assert_eq!(c.sync, Sync::None);
        assert_eq!(c.idle_timeout, Duration::from_secs(30));
    }

    #[test]
    fn unknown_keys_in_the_file_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("petrel.toml");
        std::fs::write(&path, "lsiten = [\"127.0.0.1:7000\"]\n").unwrap();
        let err = ServeConfig::resolve(&ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("lsiten"), "{err:#}");
    }

    #[test]
    fn xdp_needs_an_interface_and_one_concrete_ipv4_listen_address() {
        let xdp = |listen: &[&str], iface: Option<&str>| {
            ServeConfig::resolve(&ServeArgs {
                dataplane: Some(DataplaneKind::Xdp),
                listen: listen.iter().map(|a| a.parse().unwrap()).collect(),
                iface: iface.map(str::to_owned),
                ..ServeArgs::default()
            })
            .and_then(|config| config.validate_xdp().map(|()| config))
            .map_err(|e| format!("{e:#}"))
        };
        assert!(
            xdp(&["10.0.0.1:9500"], None)
                .unwrap_err()
                .contains("--iface")
        );
        assert!(
            xdp(&["0.0.0.0:9500"], Some("eth0"))
                .unwrap_err()
                .contains("concrete IPv4")
        );
        assert!(
            xdp(&["10.0.0.1:0"], Some("eth0"))
                .unwrap_err()
                .contains("concrete IPv4")
        );
        assert!(
            xdp(&["10.0.0.1:9500", "10.0.0.1:9501"], Some("eth0"))
                .unwrap_err()
                .contains("exactly one")
        );
        let mut ok = xdp(&["10.0.0.1:9500"], Some("eth0")).unwrap();
        assert_eq!(ok.xdp.iface.as_deref(), Some("eth0"));
        assert_eq!(ok.xdp.mode, XdpMode::Auto);
        assert!(ok.xdp.queues.is_empty());
        assert_eq!(
            (ok.xdp.syn_backlog, ok.xdp.syn_cookies),
            (petrel_dataplane::xdp::syn_cookie::DEFAULT_SYN_BACKLOG, true)
        );
        // A backlog of 0 means "cookies for every SYN"; without cookies it refuses all.
        ok.xdp.syn_backlog = 0;
        assert!(ok.validate_xdp().is_ok());
        ok.xdp.syn_cookies = false;
        assert!(
            format!("{:#}", ok.validate_xdp().unwrap_err()).contains("xdp_syn_backlog = 0"),
            "a backlog of 0 without cookies is refused"
        );
    }

    #[test]
    fn dpdk_needs_eal_arguments_one_concrete_ipv4_address_and_no_xdp_queues() {
        let dpdk = |listen: &str, args: Option<&str>, queues: Vec<u32>| {
            ServeConfig::resolve(&ServeArgs {
                dataplane: Some(DataplaneKind::Dpdk),
                listen: vec![listen.parse().unwrap()],
                dpdk_args: args.map(str::to_owned),
                queues,
                ..ServeArgs::default()
            })
            .and_then(|config| config.validate_dpdk().map(|()| config))
            .map_err(|e| format!("{e:#}"))
        };
        let eal = Some("-l 1  --no-huge -m 256 --vdev=net_af_packet0,iface=veth1");
        assert!(
            dpdk("10.0.0.1:9500", None, vec![])
                .unwrap_err()
                .contains("--dpdk-args")
        );
        assert!(
            dpdk("0.0.0.0:9500", eal, vec![])
                .unwrap_err()
                .contains("concrete IPv4")
        );
        assert!(
            dpdk("10.0.0.1:9500", eal, vec![0, 1])
                .unwrap_err()
                .contains("--queues is for --dataplane xdp")
        );
        let ok = dpdk("10.0.0.1:9500", eal, vec![]).unwrap();
        assert_eq!(
            ok.dpdk.args,
            [
                "-l",
                "1",
                "--no-huge",
                "-m",
                "256",
                "--vdev=net_af_packet0,iface=veth1"
            ]
        );
        assert_eq!(ok.dpdk.device, None);
        assert_eq!(ok.dpdk.mbufs_per_queue, 8191);

        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            file.path(),
            "dataplane = \"dpdk\"\ndpdk_args = \"-l 2 --in-memory -a 0000:03:00.0\"\n\
             dpdk_device = \"0000:03:00.0\"\ndpdk_mbufs_per_queue = 4095\n",
        )
        .unwrap();
        let from_file = ServeConfig::resolve(&ServeArgs {
            config: Some(file.path().to_owned()),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(from_file.dataplane, DataplaneKind::Dpdk);
        assert_eq!(from_file.dpdk.args.len(), 5);
        assert_eq!(from_file.dpdk.device.as_deref(), Some("0000:03:00.0"));
        assert_eq!(from_file.dpdk.mbufs_per_queue, 4095);
    }
}
