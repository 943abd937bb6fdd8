//! Runs one shard of a scenario on an [`Engine`]: connect and log in, set the scenario up
//! (create groups, join the room, follow the account), wait for the common start signal,
//! generate the load (open loop or flat out) with heartbeats, then drain outstanding acks
//! and deliveries.
//!
//! The same code runs in-process (one shard) and in each worker process (many shards);
//! [`ShardControl`] is how it talks to whoever coordinates the shards.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use petrel_control::KeyRing;
use petrel_proto::pb::{self, ConversationKind};
use petrel_proto::{Body, Frame};
use serde::{Deserialize, Serialize};

use super::config::{BenchConfig, Scenario, WireProtocol};
use super::engine::{Clock, ConnSpec, Engine, Protocol};
use super::io::{Io, KernelIo};
use super::plan::{Plan, Role, Shard};
use super::schedule::{HeartbeatWheel, OpenLoop};
use super::stats::{Counts, Stats};
use super::xdp_io::XdpIo;
use super::{tls_io, ws_io};

/// Connections per source address when the bench picks loopback sources itself (the
/// ephemeral port range holds ~28,000 ports per source and destination).
pub const CONNS_PER_LOOPBACK_SOURCE: u64 = 25_000;

/// Where a shard is in its run (shown in the progress bar).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Opening connections and logging in.
    Connecting,
    /// Creating groups, joining, following.
    Setup,
    /// Waiting for the start signal.
    Ready,
    /// Sending, not measured yet.
    Warmup,
    /// Sending, measured.
    Measuring,
    /// Waiting for outstanding acks and deliveries.
    Draining,
}

/// How a shard reports to its coordinator and learns when to start.
pub trait ShardControl {
    /// Connections are logged in and the scenario is set up.
    fn ready(&mut self) -> anyhow::Result<()>;
    /// The common start time (ns since the epoch), once the coordinator has sent it.
    fn poll_start(&mut self) -> anyhow::Result<Option<u64>>;
    /// Live counters, a few times a second.
    fn progress(&mut self, phase: Phase, counts: &Counts);
}

/// Everything a shard needs to run, also what a parent hands a worker process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardJob {
    /// The run's settings.
    pub config: BenchConfig,
    /// Which connections.
    pub shard: Shard,
    /// Server address.
    pub server: SocketAddr,
    /// Key file contents (to mint tokens).
    pub key_file_text: String,
    /// Public account for broadcast, if the coordinator created it.
    pub account: Option<u64>,
}

/// The source address connection `i` binds: explicit `--source-ips` round-robin; with
/// `--client-mode xdp`, the source network's first addresses, one per 60,000
/// connections; or 127.0.0.x against a loopback server when one address would run out
/// of ports.
pub fn source_for(config: &BenchConfig, server: SocketAddr, i: u64) -> Option<IpAddr> {
    if !config.source_ips.is_empty() {
        let ips = &config.source_ips;
        return Some(IpAddr::V4(ips[(i % ips.len() as u64) as usize]));
    }
    let total = config.plan().connections();
    if let Some(setup) = &config.xdp {
        return Some(IpAddr::V4(setup.source(total, i)));
    }
    if server.ip().is_loopback() && server.is_ipv4() && total > CONNS_PER_LOOPBACK_SOURCE {
        let sources = total.div_ceil(CONNS_PER_LOOPBACK_SOURCE);
        let k = (i % sources) as u32;
        return Some(IpAddr::V4(Ipv4Addr::from(
            u32::from(Ipv4Addr::new(127, 0, 0, 1)) + k,
        )));
    }
    None
}

/// Runs one shard to the end and returns what it measured.
pub fn run_shard(job: &ShardJob, ctl: &mut dyn ShardControl) -> anyhow::Result<Stats> {
    let config = &job.config;
    let plan = config.plan();
    let shard = job.shard;
    let protocol = match config.protocol {
        WireProtocol::Petrel => {
            Protocol::Petrel(KeyRing::parse(&job.key_file_text).context("invalid key file")?)
        }
        WireProtocol::Mqtt => Protocol::Mqtt,
    };
    let specs: Vec<ConnSpec> = (shard.start..shard.end)
        .map(|i| ConnSpec {
            user: plan.user(i),
            source: source_for(config, job.server, i),
        })
        .collect();
    let clock = Clock::new();
    let io = match &config.xdp {
        None => Io::Kernel(
            KernelIo::new(job.server, specs.len())?.with_peer(config.peer_server, shard.start),
        ),
        Some(setup) => Io::Xdp(Box::new(XdpIo::start(setup, job.server, specs.len())?)),
    };
    let io = tls_io::wrap(io, config.tls.as_ref())?;
    let io = ws_io::wrap(io, config.ws, &job.server.to_string());
    let mut engine = Engine::new(io, protocol, &specs, &config.payload, clock)?;
    engine.set_retry(config.connect_retry);

    engine.set_keepalive(Some(config.heartbeat));
    // This shard's share of the paced rate.
    let share = (shard.end - shard.start) as f64 / plan.connections().max(1) as f64;
    let rate = config.connect_rate.map(|r| r * share);
    let connected = engine.connect_all(
        config.connect_concurrency,
        rate,
        config.connect_timeout,
        |s| ctl.progress(Phase::Connecting, &s.counts),
    );
    if let (Err(e), Io::Xdp(xdp)) = (&connected, engine.io()) {
        // The AF_XDP client's drops often explain a failed connect phase.
        bail!("{e:#}; AF_XDP client counters: {:?}", xdp.counters());
    }
    connected?;
    ctl.progress(Phase::Setup, &engine.stats.counts);
    let targets = setup(&mut engine, config, &plan, shard, job.account)?;
    ctl.ready()?;
    ctl.progress(Phase::Ready, &engine.stats.counts);
    let start_ns = loop {
        if let Some(t) = ctl.poll_start()? {
            break t;
        }
        engine.poll_once(Some(Duration::from_millis(10)))?;
        engine.keep_alive();
    };
    // From here the heartbeat wheel pings, measured.
    engine.set_keepalive(None);
    run_load(&mut engine, config, &plan, &targets, start_ns, ctl)?;
    drain(&mut engine, config, &plan, shard, ctl)?;
    if let Io::Xdp(xdp) = engine.io() {
        engine.stats.client_dataplane = Some(xdp.counters());
    }
    Ok(std::mem::take(&mut engine.stats))
}

/// Sets the scenario up; returns the conversation each local connection sends to.
fn setup(
    engine: &mut Engine,
    config: &BenchConfig,
    plan: &Plan,
    shard: Shard,
    account: Option<u64>,
) -> anyhow::Result<Vec<Option<pb::ConversationId>>> {
    let n = engine.len();
    let mut targets = vec![None; n];
    let conv = |kind: ConversationKind, id: u64| pb::ConversationId {
        kind: kind as i32,
        id,
    };
    engine.set_capture_responses(true);
    match config.scenario {
        Scenario::Connect { .. } => {}
        Scenario::Chat1v1 { .. } => {
            for (local, target) in targets.iter_mut().enumerate() {
                if let Role::SendSingle { peer } = plan.role(shard.start + local as u64) {
                    *target = Some(conv(ConversationKind::Single, peer));
                }
            }
        }
        Scenario::Group { members, .. } => {
            let members = members as usize;
            let mut requests = Vec::new();
            for creator in (0..n).step_by(members) {
                let others: Vec<u64> = (creator + 1..creator + members)
                    .map(|i| engine.user(i))
                    .collect();
                let id = engine.request(
                    creator,
                    op(pb::conversation_op::Op::CreateGroup(pb::CreateGroup {
                        name: format!("bench group {}", engine.user(creator)),
                        members: others,
                    })),
                )?;
                requests.push((creator, id));
            }
            let results = await_responses(engine, &requests, config.connect_timeout)?;
            for ((creator, _), frame) in requests.iter().zip(results) {
                let group = created_id(frame, "create a group")?;
                for target in &mut targets[*creator..*creator + members] {
                    *target = Some(conv(ConversationKind::Group, group));
                }
            }
        }
        Scenario::Chatroom { room, .. } => {
            let mut requests = Vec::new();
            for (i, target) in targets.iter_mut().enumerate() {
                let id = engine.request(
                    i,
                    op(pb::conversation_op::Op::JoinChatroom(pb::JoinChatroom {
                        room_id: room,
                    })),
                )?;
                requests.push((i, id));
                *target = Some(conv(ConversationKind::Chatroom, room));
            }
            for frame in await_responses(engine, &requests, config.connect_timeout)? {
                created_id(frame, "join the chatroom")?;
            }
        }
        Scenario::Broadcast { .. } => {
            let account = match account {
                Some(a) => a,
                None if shard.start == 0 => {
                    let id = engine.request(0, create_account_op(engine.user(0)))?;
                    let frame = await_responses(engine, &[(0, id)], config.connect_timeout)?;
                    created_id(
                        frame.into_iter().next().context("no response")?,
                        "create the public account",
                    )?
                }
                None => bail!("a broadcast worker without connection 0 needs --account"),
            };
            let mut requests = Vec::new();
            for (local, target) in targets.iter_mut().enumerate() {
                match plan.role(shard.start + local as u64) {
                    Role::SendAccount => {
                        *target = Some(conv(ConversationKind::PublicAccount, account));
                    }
                    _ => {
                        let id = engine.request(
                            local,
                            op(pb::conversation_op::Op::Follow(pb::Follow {
                                account_id: account,
                            })),
                        )?;
                        requests.push((local, id));
                    }
                }
            }
            for frame in await_responses(engine, &requests, config.connect_timeout)? {
                created_id(frame, "follow the public account")?;
            }
        }
    }
    engine.set_capture_responses(false);
    engine.responses.clear();
    Ok(targets)
}

/// The op that creates the broadcast's public account (owned by `owner`).
pub fn create_account_op(owner: u64) -> pb::ConversationOp {
    op(pb::conversation_op::Op::CreatePublicAccount(
        pb::CreatePublicAccount {
            name: format!("bench account {owner}"),
        },
    ))
}

fn op(op: pb::conversation_op::Op) -> pb::ConversationOp {
    pb::ConversationOp { op: Some(op) }
}

/// The conversation id in a `ConversationOpResult`, or the server's error.
pub fn created_id(frame: Frame, what: &str) -> anyhow::Result<u64> {
    match frame.body {
        Body::ConversationOpResult(r) => r
            .conversation
            .map(|c| c.id)
            .with_context(|| format!("cannot {what}: result without a conversation")),
        Body::Error(e) => bail!(
            "cannot {what}: the server answered {:?} {}",
            pb::ErrorCode::try_from(e.code).unwrap_or(pb::ErrorCode::Unspecified),
            e.message
        ),
        other => bail!("cannot {what}: unexpected answer {:?}", other.frame_type()),
    }
}

/// Waits until every `(connection, request id)` has its response; returns them in order.
pub fn await_responses(
    engine: &mut Engine,
    requests: &[(usize, u32)],
    timeout: Duration,
) -> anyhow::Result<Vec<Frame>> {
    let start = Instant::now();
    let mut slots: Vec<Option<Frame>> = vec![None; requests.len()];
    let index: std::collections::HashMap<(usize, u32), usize> =
        requests.iter().enumerate().map(|(k, &r)| (r, k)).collect();
    let mut missing = requests.len();
    while missing > 0 {
        engine.poll_once(Some(Duration::from_millis(5)))?;
        for (conn, frame) in engine.responses.drain(..) {
            if let Some(&k) = index.get(&(conn, frame.request_id))
                && slots[k].is_none()
            {
                slots[k] = Some(frame);
                missing -= 1;
            }
        }
        if engine.stats.counts.disconnects > 0 {
            bail!("the server closed a connection during setup");
        }
        if start.elapsed() > timeout {
            bail!(
                "setup: {missing} of {} requests unanswered after {timeout:?}",
                requests.len()
            );
        }
    }
    Ok(slots.into_iter().map(|s| s.expect("all filled")).collect())
}

fn run_load(
    engine: &mut Engine,
    config: &BenchConfig,
    plan: &Plan,
    targets: &[Option<pb::ConversationId>],
    start_ns: u64,
    ctl: &mut dyn ShardControl,
) -> anyhow::Result<()> {
    let clock = engine.clock();
    let measure_from = start_ns + config.warmup.as_nanos() as u64;
    let end = measure_from + config.duration.as_nanos() as u64;
    engine.set_measure_from(measure_from);
    let senders: Vec<(usize, pb::ConversationId)> = targets
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.map(|t| (i, t)))
        .collect();
    let mut heartbeats = HeartbeatWheel::new(
        start_ns,
        config.heartbeat.as_nanos() as u64,
        engine.len() as u64,
    );
    // This shard's share of the rate, by its share of the senders.
    let mut open_loop = match config.rate {
        Some(rate) if !senders.is_empty() => Some(OpenLoop::new(
            start_ns,
            end,
            rate * senders.len() as f64 / plan.senders() as f64,
        )),
        _ => None,
    };
    let flat_out = config.rate.is_none() && !senders.is_empty();
    engine.set_window(flat_out.then_some(config.window));
    // Wait for the start.
    while clock.now_ns() < start_ns {
        engine.poll_once(Some(Duration::from_millis(1)))?;
    }
    if flat_out {
        for &(i, conv) in &senders {
            for _ in 0..config.window {
                engine.send_message(i, conv, clock.now_ns());
            }
        }
    }
    let sender_slot: std::collections::HashMap<usize, usize> = senders
        .iter()
        .enumerate()
        .map(|(k, &(i, _))| (i, k))
        .collect();
    let mut last_progress = Instant::now();
    loop {
        let now = clock.now_ns();
        if now >= end {
            break;
        }
        let mut timeout = Duration::from_millis(5);
        if let Some(schedule) = &mut open_loop {
            let due = schedule.due(now, 50_000);
            for k in due {
                let (i, conv) = senders[(k % senders.len() as u64) as usize];
                engine.send_message(i, conv, schedule.scheduled_at(k));
            }
            // epoll waits in whole milliseconds: spin when the next send is closer.
            timeout = match schedule.next_due() {
                Some(at) if at <= now + 1_000_000 => Duration::ZERO,
                Some(at) => Duration::from_nanos(at - now - 1_000_000).min(timeout),
                None => timeout,
            };
        }
        if flat_out {
            let freed = std::mem::take(&mut engine.freed);
            for &i in &freed {
                if sender_slot.contains_key(&i) {
                    let conv = senders[sender_slot[&i]].1;
                    while engine.outstanding_of(i) < config.window {
                        if !engine.send_message(i, conv, clock.now_ns()) {
                            break;
                        }
                    }
                }
            }
            let mut freed = freed;
            freed.clear();
            engine.freed = freed;
        }
        for c in heartbeats.due(now, 10_000) {
            engine.ping(c);
        }
        engine.poll_once(Some(timeout))?;
        if last_progress.elapsed() > Duration::from_millis(200) {
            let phase = if now < measure_from {
                Phase::Warmup
            } else {
                Phase::Measuring
            };
            ctl.progress(phase, &engine.stats.counts);
            last_progress = Instant::now();
        }
        if engine.stats.counts.disconnects > 0 {
            bail!(
                "the server closed {} connections during the run (kicks: {}); see its log",
                engine.stats.counts.disconnects,
                engine.stats.counts.kicks
            );
        }
    }
    // Whatever the last iteration did not reach is still due before the end.
    if let Some(schedule) = &mut open_loop {
        for k in schedule.due(end, u64::MAX) {
            let (i, conv) = senders[(k % senders.len() as u64) as usize];
            engine.send_message(i, conv, schedule.scheduled_at(k));
        }
    }
    Ok(())
}

fn drain(
    engine: &mut Engine,
    config: &BenchConfig,
    plan: &Plan,
    shard: Shard,
    ctl: &mut dyn ShardControl,
) -> anyhow::Result<()> {
    let clock = engine.clock();
    let deadline = Instant::now() + config.drain;
    let expected = plan
        .deliveries_stay_in_shard(shard.count)
        .then(|| engine.stats.counts.sent * plan.fanout());
    engine.stats.counts.expected_deliveries = expected;
    // Receivers elsewhere: wait until no frame arrived for this long.
    let quiet_ns = 500_000_000;
    let mut last_progress = Instant::now();
    while Instant::now() < deadline {
        let counts = &engine.stats.counts;
        let deliveries_done = match expected {
            Some(e) => counts.delivered >= e,
            None => clock.now_ns().saturating_sub(engine.last_rx_ns()) > quiet_ns,
        };
        // Every ping sent is answered too (the last heartbeats go out just before the end).
        let pongs_done = counts.pongs >= counts.pings;
        if engine.outstanding() == 0 && deliveries_done && pongs_done {
            break;
        }
        engine.poll_once(Some(Duration::from_millis(5)))?;
        if last_progress.elapsed() > Duration::from_millis(200) {
            ctl.progress(Phase::Draining, &engine.stats.counts);
            last_progress = Instant::now();
        }
    }
    ctl.progress(Phase::Draining, &engine.stats.counts);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Scenario;

    fn config(connections: u64, source_ips: Vec<Ipv4Addr>) -> BenchConfig {
        BenchConfig {
            scenario: Scenario::Connect { connections },
            rate: None,
            window: 1,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            drain: Duration::from_secs(1),
            payload: String::new(),
            heartbeat: Duration::from_secs(1),
            connect_concurrency: 1,
            connect_rate: None,
            connect_timeout: Duration::from_secs(1),
            connect_retry: Default::default(),
            source_ips,
            conns_per_process: 18_000,
            first_user: 1,
            xdp: None,
            protocol: WireProtocol::Petrel,
            tls: None,
            ws: false,
            peer_server: None,
        }
    }

    #[test]
    fn explicit_sources_are_used_round_robin() {
        let ips = vec![Ipv4Addr::new(10, 78, 0, 1), Ipv4Addr::new(10, 78, 0, 2)];
        let c = config(10, ips);
        let server: SocketAddr = "10.77.30.1:9530".parse().unwrap();
        let picks: Vec<_> = (0..4).map(|i| source_for(&c, server, i)).collect();
        assert_eq!(
            picks,
            ["10.78.0.1", "10.78.0.2", "10.78.0.1", "10.78.0.2"]
                .map(|a| Some(a.parse::<IpAddr>().unwrap()))
        );
    }

    #[test]
    fn loopback_sources_only_when_one_address_would_run_out() {
        let server: SocketAddr = "127.0.0.1:9500".parse().unwrap();
        assert_eq!(source_for(&config(25_000, vec![]), server, 7), None);
        let big = config(60_000, vec![]);
        // 60,000 connections: three loopback sources, 20,000 each.
        let picks: std::collections::BTreeSet<_> = (0..60_000)
            .map(|i| source_for(&big, server, i).unwrap())
            .collect();
        assert_eq!(
            picks.into_iter().collect::<Vec<_>>(),
            ["127.0.0.1", "127.0.0.2", "127.0.0.3"].map(|a| a.parse::<IpAddr>().unwrap())
        );
        // Not loopback: the kernel chooses (the caller must pass --source-ips).
        let remote: SocketAddr = "10.77.30.1:9530".parse().unwrap();
        assert_eq!(source_for(&big, remote, 0), None);
    }
}
