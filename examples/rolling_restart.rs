//! The load and the audit of the rolling-restart benchmark
//! (`scripts/bench/rolling-restart.sh`, docs/PERFORMANCE.md): SDK clients send 1:1
//! messages at a fixed total rate while the script drains and restarts every node of
//! the cluster lab in turn; the clients follow the kicks (and their back-off) as any
//! app's would. When the load stops, every client waits for its outbox to drain, and
//! every conversation's stored history is read back through the API and checked: each
//! acked message stored exactly once, at the seq its ack gave, and the seqs gap-free.
//!
//! Each client `u` writes to user `peer_base + u`, who never logs in, so each
//! conversation has one writer and its history is exactly what that client sent; the
//! conversations' partitions spread over every node. Prints a JSON report; exits 1 if a
//! message was lost or duplicated.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use petrel_control::{KeyRing, TokenSpec};
use petrel_sdk::{
    Client, ClientConfig, ConnectionState, ConversationKey, Event, Events, Token, pb, token_fn,
};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
struct Args {
    /// The nodes' client endpoints; each client starts at a different one.
    #[arg(long, value_delimiter = ',', required = true)]
    servers: Vec<String>,
    /// Dispatch directories (`http://host:port`) the clients ask where to connect after
    /// a round of failed connects (`ClientConfig::directory`); none: `servers` only.
    #[arg(long, value_delimiter = ',')]
    directory: Vec<String>,
    /// The cluster's token key file (to mint the clients' tokens).
    #[arg(long)]
    key_file: PathBuf,
    /// An API endpoint (`host:port`) to read the histories back from.
    #[arg(long)]
    api: String,
    /// The API key file.
    #[arg(long)]
    api_key_file: PathBuf,
    /// SDK clients (one user each).
    #[arg(long, default_value_t = 60)]
    clients: u64,
    /// Messages per second, all clients together.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// Seconds of load.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// The first client's user id.
    #[arg(long, default_value_t = 1_000_001)]
    first_user: u64,
    /// Each client writes to user `peer_base + its own id`.
    #[arg(long, default_value_t = 500_000_000)]
    peer_base: u64,
    /// Longest wait for the outboxes to drain after the load.
    #[arg(long, default_value_t = 120)]
    drain_timeout: u64,
}

/// What one client saw.
#[derive(Debug, Default)]
struct Log {
    /// client_msg_id → acked seq.
    acked: HashMap<u64, u64>,
    /// Every client_msg_id sent.
    sent: Vec<u64>,
    /// When each message not yet acked was sent.
    sent_at: HashMap<u64, Instant>,
    /// Per acked message: from its send to its ack (through reconnects and the
    /// `SERVER_BUSY` of a conversation whose node is away).
    ack_waits: Vec<Duration>,
    failed: u64,
    /// Per outage: (time from disconnect to connected, back-off delays announced).
    outages: Vec<(Duration, Duration)>,
    /// Endpoints connected to, in order.
    endpoints: Vec<String>,
    /// From the end of the load until the outbox was empty.
    drained_after: Duration,
}

fn mint(ring: &KeyRing, user: u64) -> Result<Token, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_millis() as u64;
    let issued = petrel_control::token::mint(
        ring,
        &TokenSpec {
            user,
            device: "roll",
            platform: pb::Platform::Desktop,
            issued_at: petrel_control::Timestamp::from_millis(now),
            ttl: Duration::from_secs(3600),
            token_id: rand::random(),
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(Token {
        token: issued.token,
        expires_at_ms: issued.claims.expires_at.as_millis(),
    })
}

/// Follows one client's events until `stop`, recording acks and outages.
async fn watch(mut events: Events, log: Arc<std::sync::Mutex<Log>>) {
    let mut down_since: Option<Instant> = None;
    let mut backoff = Duration::ZERO;
    while let Some(event) = events.recv().await {
        let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::Acked {
                client_msg_id, seq, ..
            } => {
                log.acked.insert(client_msg_id, seq);
                if let Some(at) = log.sent_at.remove(&client_msg_id) {
                    log.ack_waits.push(at.elapsed());
                }
            }
            Event::SendFailed { .. } => log.failed += 1,
            Event::State(ConnectionState::Disconnected { retry_in, .. }) => {
                down_since.get_or_insert_with(Instant::now);
                backoff += retry_in;
            }
            Event::State(ConnectionState::Connected { endpoint, .. }) => {
                if let Some(since) = down_since.take() {
                    log.outages.push((since.elapsed(), backoff));
                }
                backoff = Duration::ZERO;
                log.endpoints.push(endpoint);
            }
            _ => {}
        }
    }
}

/// One client: connect, send at `per_second` for `duration`, then wait for its outbox.
async fn run_client(
    args: Arc<Args>,
    ring: Arc<KeyRing>,
    index: u64,
    start: tokio::time::Instant,
) -> anyhow::Result<Log> {
    let user = args.first_user + index;
    let n = args.servers.len();
    let first = usize::try_from(index).unwrap_or(0) % n;
    let endpoints: Vec<String> = (0..n)
        .map(|i| args.servers[(first + i) % n].clone())
        .collect();
    let mut config = ClientConfig::new(user, "roll", endpoints);
    config.jitter_seed = Some(user);
    config.directory = args.directory.clone();
    let provider = token_fn(move || mint(&ring, user));
    let (client, events) = Client::start(config, provider).context("start a client")?;
    let log = Arc::new(std::sync::Mutex::new(Log::default()));
    let watcher = tokio::spawn(watch(events, log.clone()));
    client
        .wait_connected(Duration::from_secs(30))
        .await
        .context("connect")?;
    let peer = ConversationKey::single(args.peer_base + user);
    let period = Duration::from_secs_f64(args.clients as f64 / args.rate as f64);
    let mut tick = tokio::time::interval_at(start, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = start + Duration::from_secs(args.duration);
    let mut i = 0u64;
    loop {
        let at = tick.tick().await;
        if at >= end {
            break;
        }
        i += 1;
        let at = Instant::now();
        let id = client.send_text(peer, &format!("{user}:{i}"))?;
        let mut entry = log.lock().unwrap_or_else(|p| p.into_inner());
        entry.sent.push(id);
        // An ack faster than this lock is not timed (none on a loaded machine).
        if !entry.acked.contains_key(&id) {
            entry.sent_at.insert(id, at);
        }
    }
    let load_ended = Instant::now();
    let deadline = load_ended + Duration::from_secs(args.drain_timeout);
    while client.outbox_len()? > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    log.lock().unwrap_or_else(|p| p.into_inner()).drained_after = load_ended.elapsed();
    // The last acks' events.
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.shutdown(false).await;
    drop(client);
    let _ = watcher.await;
    let log = Arc::try_unwrap(log)
        .map_err(|_| anyhow::anyhow!("the watcher still holds the log"))?
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    Ok(log)
}

/// Every message stored in `user`'s conversation with `peer`: seq → (sender,
/// client_msg_id), read through the API page by page.
async fn history(
    http: &HttpClient<HttpConnector, Empty<Bytes>>,
    api: &str,
    key: &str,
    user: u64,
    peer: u64,
) -> anyhow::Result<BTreeMap<u64, (u64, u64)>> {
    let mut stored = BTreeMap::new();
    let mut before = 0u64;
    loop {
        let uri = format!(
            "http://{api}/v1/conversations/single/{peer}/messages?user={user}&limit=100&before_seq={before}"
        );
        let mut attempt = 0;
        let page: Value = loop {
            attempt += 1;
            let request = axum::http::Request::get(&uri)
                .header("authorization", format!("Bearer {key}"))
                .body(Empty::new())?;
            let response = http.request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            if status.is_success() {
                break serde_json::from_slice(&body)?;
            }
            // A node still coming up answers 503 for its partitions for a moment.
            if attempt >= 50 {
                bail!(
                    "history of {user}: HTTP {status}: {}",
                    String::from_utf8_lossy(&body)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let messages = page["messages"].as_array().context("messages")?;
        for m in messages {
            let seq = m["seq"].as_u64().context("seq")?;
            let sender = m["sender"].as_u64().context("sender")?;
            let id = m["client_msg_id"].as_u64().unwrap_or(0);
            if stored.insert(seq, (sender, id)).is_some() {
                bail!("history of {user}: seq {seq} listed twice");
            }
        }
        // The next page: below the lowest seq of this one.
        let lowest = messages.first().and_then(|m| m["seq"].as_u64());
        match lowest {
            Some(seq) if page["has_more"].as_bool().unwrap_or(false) => before = seq,
            _ => return Ok(stored),
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let ring = Arc::new(KeyRing::parse(
        &std::fs::read_to_string(&args.key_file).context("read the key file")?,
    )?);
    let api_key = std::fs::read_to_string(&args.api_key_file)
        .context("read the API key file")?
        .trim()
        .to_owned();
    let start = tokio::time::Instant::now() + Duration::from_secs(3);
    let clients: Vec<_> = (0..args.clients)
        .map(|i| tokio::spawn(run_client(args.clone(), ring.clone(), i, start)))
        .collect();
    let mut logs = Vec::new();
    for c in clients {
        logs.push(c.await??);
    }
    let http = HttpClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let (mut sent, mut acked, mut unacked, mut lost, mut misplaced) = (0u64, 0u64, 0u64, 0, 0);
    let (mut duplicates, mut gaps, mut stored_total, mut failed) = (0u64, 0u64, 0u64, 0u64);
    let mut outages: Vec<Duration> = Vec::new();
    let mut ack_waits: Vec<Duration> = Vec::new();
    let mut late = 0u64;
    let mut moved = 0u64;
    let mut drained_after = Duration::ZERO;
    for (i, log) in logs.iter().enumerate() {
        let user = args.first_user + i as u64;
        let stored = history(&http, &args.api, &api_key, user, args.peer_base + user).await?;
        sent += log.sent.len() as u64;
        acked += log.acked.len() as u64;
        unacked += log
            .sent
            .iter()
            .filter(|id| !log.acked.contains_key(id))
            .count() as u64;
        failed += log.failed;
        stored_total += stored.len() as u64;
        let mut seen: HashMap<u64, u32> = HashMap::new();
        for (sender, id) in stored.values() {
            if *sender == user {
                *seen.entry(*id).or_default() += 1;
            }
        }
        duplicates += seen
            .values()
            .filter(|n| **n > 1)
            .map(|n| u64::from(n - 1))
            .sum::<u64>();
        let max = stored.keys().next_back().copied().unwrap_or(0);
        gaps += max - stored.len() as u64;
        for (id, seq) in &log.acked {
            match stored.get(seq) {
                Some((sender, stored_id)) if *sender == user && stored_id == id => {}
                Some(_) => misplaced += 1,
                None => lost += 1,
            }
        }
        drained_after = drained_after.max(log.drained_after);
        ack_waits.extend_from_slice(&log.ack_waits);
        for (outage, backoff) in &log.outages {
            outages.push(*outage);
            // Back within its back-off window: the delays it announced, plus a second
            // for the connect and the login itself.
            if *outage > *backoff + Duration::from_secs(1) {
                late += 1;
            }
        }
        moved += log.endpoints.windows(2).filter(|w| w[0] != w[1]).count() as u64;
    }
    outages.sort();
    ack_waits.sort();
    let waited_past = |limit: Duration| ack_waits.iter().filter(|w| **w > limit).count();
    let report = json!({
        "clients": args.clients,
        "rate_per_s": args.rate,
        "duration_s": args.duration,
        "sent": sent,
        "acked": acked,
        "unacked_at_end": unacked,
        "refused_for_good": failed,
        "stored": stored_total,
        "lost_acked": lost,
        "misplaced_acked": misplaced,
        "duplicates": duplicates,
        "seq_gaps": gaps,
        "reconnects": outages.len(),
        "reconnects_to_another_node": moved,
        "outage_ms": {
            "p50": percentile(&outages, 0.5),
            "p99": percentile(&outages, 0.99),
            "max": percentile(&outages, 1.0),
        },
        "outages_past_backoff_window": late,
        "ack_wait_ms": {
            "p50": percentile(&ack_waits, 0.5),
            "p99": percentile(&ack_waits, 0.99),
            "p999": percentile(&ack_waits, 0.999),
            "max": percentile(&ack_waits, 1.0),
        },
        "acks_after_500ms": waited_past(Duration::from_millis(500)),
        "acks_after_2s": waited_past(Duration::from_secs(2)),
        "outbox_empty_after_load_ms": drained_after.as_secs_f64() * 1e3,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    if lost > 0 || misplaced > 0 || duplicates > 0 || gaps > 0 {
        bail!("acked messages lost, misplaced or duplicated, or seqs with gaps");
    }
    Ok(())
}
