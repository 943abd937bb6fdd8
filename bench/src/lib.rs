//! `petrel bench`: a reproducible load generator for a Petrel server, and the report of
//! what it measured on both sides. A crate of its own (the `petrel` binary's `bench`
//! subcommand calls [`run`]): it speaks the protocol from outside, through
//! `petrel-proto` and the dataplane's AF_XDP client (cargo feature `client`, which only
//! this crate turns on), and builds without the server, its storage or RocksDB.
//!
//! Read in this order:
//! 1. [`config`] — the command line and its validation.
//! 2. [`plan`] — who is who in a scenario, and how connections split over processes.
//! 3. [`schedule`] — the open-loop send schedule (no coordinated omission).
//! 4. [`engine`] — the client: many connections on one loop, over [`io`]: kernel
//!    sockets (mio) or, with `--client-mode xdp`, userspace TCP over AF_XDP
//!    ([`xdp_io`]); it speaks Petrel's protocol, or MQTT 3.1.1 to a reference broker
//!    ([`mqtt`]).
//! 5. [`driver`] — one shard's run: connect, set up, load, drain.
//! 6. [`workers`] — shards in a thread or in worker processes past ~18,000 connections.
//! 7. [`stats`], [`procfs`], [`report`], [`svg`] — what is measured and how it is shown.
//! 8. [`server_proc`] — `--spawn-server`.
//!
//! This module coordinates: it resolves the server, samples its `/proc` figures at the
//! right moments, starts every shard at the same instant, draws the progress bar and
//! merges the shards' results.

mod config;
mod driver;
mod engine;
mod io;
mod mqtt;
mod plan;
mod procfs;
mod report;
mod schedule;
mod server_proc;
mod stats;
mod svg;
mod tls_io;
mod workers;
mod ws_io;
mod xdp_io;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
pub use config::BenchArgs;
use config::{BenchConfig, Scenario, WireProtocol};
use crossbeam_channel::RecvTimeoutError;
use indicatif::{ProgressBar, ProgressStyle};
use petrel_control::KeyRing;

use self::driver::{Phase, ShardJob};
use self::engine::{Clock, ConnSpec, Engine, Protocol};
use self::io::{Io, KernelIo};
use self::report::{Report, RunFacts, ServerSamples};
use self::stats::{Counts, Stats};
use self::workers::{ShardHandle, ToParent};

/// Runs `petrel bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.worker.is_some() {
        return workers::worker_main();
    }
    coordinate(args)
}

fn unix_ns() -> u64 {
    Clock::new().now_ns()
}

fn scenario_name(s: &Scenario) -> &'static str {
    match s {
        Scenario::Connect { .. } => "connect",
        Scenario::Chat1v1 { .. } => "chat1v1",
        Scenario::Group { .. } => "group",
        Scenario::Chatroom { .. } => "chatroom",
        Scenario::Broadcast { .. } => "broadcast",
    }
}

fn coordinate(args: BenchArgs) -> anyhow::Result<()> {
    let run_id = args.run_id.unwrap_or_else(unix_ns);
    let config = BenchConfig::resolve(&args, run_id)?;
    if !args.spawn_server && !args.serve_args.is_empty() {
        bail!("arguments after -- are for the server that --spawn-server starts");
    }
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    let mut spawned = if args.spawn_server {
        Some(server_proc::SpawnedServer::start(&args.serve_args)?)
    } else {
        None
    };
    let mqtt = config.protocol == WireProtocol::Mqtt;
    let server: SocketAddr = args
        .server
        .or(spawned.as_ref().map(|s| s.addr))
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], if mqtt { 1883 } else { 9500 })));
    // An MQTT broker needs no tokens.
    let key_file_text = if mqtt {
        String::new()
    } else {
        let key_file = args
            .key_file
            .clone()
            .or(spawned.as_ref().map(|s| s.key_file.clone()))
            .unwrap_or_else(|| PathBuf::from("./petrel-data/keys"));
        let text = std::fs::read_to_string(&key_file).with_context(|| {
            format!(
                "cannot read the token key file {} (pass the server's with --key-file)",
                key_file.display()
            )
        })?;
        KeyRing::parse(&text)
            .with_context(|| format!("invalid key file {}", key_file.display()))?;
        text
    };
    let pid = spawned.as_ref().map(|s| s.pid()).or(args.server_pid);
    let _ = rlimit::increase_nofile_limit(u64::MAX);

    let plan = config.plan();
    let shards = plan.shards(config.conns_per_process)?;
    let account = match config.scenario {
        Scenario::Broadcast { .. } if shards.len() > 1 => Some(create_account(
            server,
            &KeyRing::parse(&key_file_text)?,
            &config,
        )?),
        _ => None,
    };
    let mut samples = ServerSamples::default();
    let sample = |pid: Option<u32>| -> anyhow::Result<Option<procfs::Sample>> {
        pid.map(procfs::sample).transpose()
    };
    samples.idle = sample(pid)?;

    let bar = progress_bar(&args, &config);
    let (tx, inbox) = crossbeam_channel::unbounded();
    let mut handles: Vec<ShardHandle> = Vec::new();
    for shard in &shards {
        let job = ShardJob {
            config: config.clone(),
            shard: *shard,
            server,
            key_file_text: key_file_text.clone(),
            account,
        };
        let index = shard.index as usize;
        handles.push(if shards.len() == 1 {
            workers::spawn_thread(index, job, tx.clone())?
        } else {
            workers::spawn_process(index, &job, scenario_name(&config.scenario), tx.clone())?
        });
    }
    drop(tx);

    let n = shards.len();
    let mut latest = vec![(Phase::Connecting, Counts::default()); n];
    let mut results: Vec<Option<Stats>> = vec![None; n];
    let mut ready = 0;
    let mut start_ns: Option<u64> = None;
    let warmup = config.warmup.as_nanos() as u64;
    let duration = config.duration.as_nanos() as u64;
    let mut rates = RateMeter::default();
    let mut last_draw = Instant::now();
    let mut client_cpu_start = 0.0;
    while results.iter().any(Option::is_none) {
        let now = unix_ns();
        // Wake for the next /proc sample on time.
        let next_sample = start_ns.and_then(|s| {
            if samples.measure_start.is_none() {
                Some(s + warmup)
            } else if samples.measure_end.is_none() {
                Some(s + warmup + duration)
            } else {
                None
            }
        });
        let wait = next_sample.map_or(Duration::from_millis(100), |t| {
            Duration::from_nanos(t.saturating_sub(now)).min(Duration::from_millis(100))
        });
        match inbox.recv_timeout(wait) {
            Ok((i, msg)) => match msg {
                ToParent::Progress { phase, counts } => latest[i] = (phase, counts),
                ToParent::Ready => {
                    ready += 1;
                    if ready == n {
                        samples.connected = sample(pid)?;
                        let t = unix_ns() + 200_000_000;
                        for h in &mut handles {
                            h.start(t)?;
                        }
                        start_ns = Some(t);
                    }
                }
                ToParent::Result(wire) => results[i] = Some(Stats::from_wire(&wire)?),
                ToParent::Failed(e) => {
                    bar.finish_and_clear();
                    if n == 1 {
                        bail!("{e}");
                    }
                    bail!("load generator {i} of {n}: {e}");
                }
            },
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let now = unix_ns();
        if let Some(s) = start_ns {
            if samples.measure_start.is_none() && now >= s + warmup {
                samples.measure_start = sample(pid)?;
                client_cpu_start = client_cpu(&handles);
            }
            if samples.measure_end.is_none() && now >= s + warmup + duration {
                samples.measure_end = sample(pid)?;
                samples.client_cpu_secs = Some(client_cpu(&handles) - client_cpu_start);
            }
        }
        if last_draw.elapsed() >= Duration::from_millis(250) {
            draw(&bar, &latest, start_ns, &config, &mut rates, now);
            last_draw = Instant::now();
        }
    }
    bar.finish_and_clear();
    let mut total = Stats::default();
    for r in results.iter().flatten() {
        total.merge(r)?;
    }
    samples.end = sample(pid)?;
    drop(handles);
    let report = Report::build(
        &total,
        RunFacts {
            config: &config,
            processes: n as u64,
            server: server.to_string(),
            spawned: spawned.is_some(),
            pid,
            samples,
            load_average,
        },
    );
    if let Some(path) = &args.svg {
        let title = format!(
            "petrel bench {} — {}",
            scenario_name(&config.scenario),
            match config.rate {
                Some(r) => format!("{} msg/s open loop", report::thousands(r)),
                None => "flat out".into(),
            }
        );
        let svg = svg::render(
            &title,
            &[
                svg::Series {
                    name: "send → ack",
                    colour: "#1f77b4",
                    latency: &total.ack,
                },
                svg::Series {
                    name: "send → delivery",
                    colour: "#d62728",
                    latency: &total.delivery,
                },
                svg::Series {
                    name: "ping → pong",
                    colour: "#2ca02c",
                    latency: &total.pong,
                },
            ],
        );
        std::fs::write(path, svg).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
        for warning in sanity_warnings(&report) {
            println!("  WARNING: {warning}");
        }
    }
    if let Some(server) = &mut spawned {
        server.stop()?;
    }
    Ok(())
}

/// CPU seconds used so far by the load generator: this process, or its workers.
fn client_cpu(handles: &[ShardHandle]) -> f64 {
    let mut pids: Vec<u32> = handles.iter().map(ShardHandle::pid).collect();
    pids.dedup();
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|text| procfs::parse_stat(&text).ok())
        .map(|cpu| cpu.seconds())
        .sum()
}

/// What a reader must not miss: unanswered sends, missing deliveries.
fn sanity_warnings(r: &Report) -> Vec<String> {
    let c = &r.counts;
    let mut out = Vec::new();
    let answered = c.acked + c.send_errors;
    if answered < c.sent {
        out.push(format!(
            "{} of {} messages got no answer within the drain time",
            c.sent - answered,
            c.sent
        ));
    }
    if c.delivered < r.expected_deliveries {
        out.push(format!(
            "{} of {} expected deliveries did not arrive",
            r.expected_deliveries - c.delivered,
            r.expected_deliveries
        ));
    }
    if c.rate_limited > 0 {
        out.push(
            "the server rate-limited sends: run it with rate_limit_per_second = 0 \
             (--spawn-server does)"
                .into(),
        );
    }
    out
}

/// Creates the broadcast's public account over one connection of its own (the owner's),
/// for runs whose followers span several worker processes.
fn create_account(
    server: SocketAddr,
    keyring: &KeyRing,
    config: &BenchConfig,
) -> anyhow::Result<u64> {
    let owner = config.plan().user(0);
    let spec = ConnSpec {
        user: owner,
        source: driver::source_for(config, server, 0),
    };
    let io = tls_io::wrap(Io::Kernel(KernelIo::new(server, 1)?), config.tls.as_ref())?;
    let io = ws_io::wrap(io, config.ws, &server.to_string());
    let mut engine = Engine::new(
        io,
        Protocol::Petrel(keyring.clone()),
        &[spec],
        "",
        Clock::new(),
    )?;
    engine.connect_all(1, None, config.connect_timeout, |_| {})?;
    engine.set_capture_responses(true);
    let id = engine.request(0, driver::create_account_op(owner))?;
    let frames = driver::await_responses(&mut engine, &[(0, id)], config.connect_timeout)?;
    driver::created_id(
        frames.into_iter().next().context("no response")?,
        "create the public account",
    )
}

fn progress_bar(args: &BenchArgs, config: &BenchConfig) -> ProgressBar {
    if args.quiet || !std::io::stdout().is_terminal() {
        return ProgressBar::hidden();
    }
    let total_ms = (config.warmup + config.duration).as_millis() as u64;
    let bar = ProgressBar::new(total_ms.max(1));
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} {elapsed_precise} {bar:12} {wide_msg}")
    {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// Per-second rates from successive totals.
#[derive(Default)]
struct RateMeter {
    last: Option<(u64, Counts)>,
    rates: (f64, f64, f64),
}

fn draw(
    bar: &ProgressBar,
    latest: &[(Phase, Counts)],
    start_ns: Option<u64>,
    config: &BenchConfig,
    meter: &mut RateMeter,
    now: u64,
) {
    if bar.is_hidden() {
        return;
    }
    let mut total = Counts::default();
    for (_, c) in latest {
        total.merge(c);
    }
    let phase = latest.iter().map(|(p, _)| *p).min_by_key(|p| *p as u8);
    // Rates over at least a second: shards report every 200 ms and the bar redraws every
    // 250 ms, so shorter differences alias.
    match meter.last {
        Some((t, prev)) if now - t >= 1_000_000_000 => {
            let dt = (now - t) as f64 / 1e9;
            meter.rates = (
                total.sent.saturating_sub(prev.sent) as f64 / dt,
                total.acked.saturating_sub(prev.acked) as f64 / dt,
                total.delivered.saturating_sub(prev.delivered) as f64 / dt,
            );
            meter.last = Some((now, total));
        }
        Some(_) => {}
        None => meter.last = Some((now, total)),
    }
    if let Some(s) = start_ns {
        bar.set_position(now.saturating_sub(s) / 1_000_000);
    }
    let (sent, acked, delivered) = meter.rates;
    bar.set_message(format!(
        "{:?} {}/{} conns | sent {}/s ack {}/s dlv {}/s",
        phase.unwrap_or(Phase::Connecting),
        total.logged_in,
        config.plan().connections(),
        report::thousands(sent),
        report::thousands(acked),
        report::thousands(delivered)
    ));
}
