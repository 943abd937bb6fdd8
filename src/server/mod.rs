//! `petrel serve`: wires the dataplane, the control plane and storage into a running
//! server.
//!
//! Threads: one pinned loop per core (`petrel-core-N`, [`core_loop`]): core 0, the home
//! core, runs transport I/O, the control plane and storage writes; the others run
//! transport I/O and talk to it over bounded rings. Beside them, the storage syncer
//! (`petrel-syncer`, which sleeps in fdatasync), the signal thread and, when enabled,
//! the metrics endpoint and the HTTP API (`petrel-api`, whose requests reach the home
//! core's control plane over a bounded channel: [`crate::api::bridge`]). See docs/ARCHITECTURE.md for the data flow.

pub mod admin;
pub mod config;
pub mod core_loop;
pub mod disk_watch;
mod keys;
mod limits;
pub mod metrics;
mod node_db;
pub mod per_core;
mod plane;
pub(crate) mod ring;
pub mod scrub;
pub mod tls;
pub(crate) mod transport;
pub(crate) mod writers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::time::{Duration, Instant};

use anyhow::Context;
use petrel_control::{Action, Control, Event};
use petrel_storage::{
    Committer, DiffusionMode, GroupEngine, Retention, StorageConfig, SyncMode, SyncRounds,
};
use petrel_storage_rocks::RocksEngine;
use writers::Origin;

pub use config::{ServeArgs, ServeConfig};
pub use core_loop::now;

use self::config::{DataplaneKind, Diffusion, Ownership, PollMode, Sync, SyncerPriority};
use self::transport::{Cores, Transport};

fn storage_config(config: &ServeConfig) -> StorageConfig {
    StorageConfig {
        diffusion: match config.diffusion {
            Diffusion::Read => DiffusionMode::Read,
            Diffusion::Write => DiffusionMode::Write,
            Diffusion::Hybrid => DiffusionMode::Hybrid,
        },
        sync: match config.sync {
            Sync::Always => SyncMode::Always,
            Sync::Batch => SyncMode::Batch,
            Sync::None => SyncMode::None,
        },
        retention: Retention {
            single_ms: millis(config.storage.retention_single),
            group_ms: millis(config.storage.retention_group),
            public_ms: millis(config.storage.retention_public),
        },
        inbox_max_entries: config.storage.inbox_max_entries,
        inbox_retention_ms: millis(config.storage.inbox_retention),
        dedup_filter_ids: config.storage.dedup_filter_ids,
        dedup_filter_per_sender: config.storage.dedup_filter_per_sender,
        writer_cache_entries: config.storage.writer_cache_entries,
        member_cache_conversations: config.storage.member_cache_conversations,
        partitions: config.storage.partitions,
        ..StorageConfig::default()
    }
}

fn millis(d: Option<Duration>) -> Option<u64> {
    d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The control plane's settings for core `core_index` of `core_count` (1 when one control
/// plane serves every core).
fn control_config(config: &ServeConfig, core_index: u8, core_count: u8) -> petrel_control::Config {
    petrel_control::Config {
        core_index,
        core_count,
        heartbeat_interval: config.heartbeat_interval,
        heartbeat_jitter_percent: config.heartbeat_jitter_percent,
        idle_timeout: config.idle_timeout,
        login_deadline: config.login_deadline,
        rate_limit: petrel_control::RateLimit {
            burst: config.rate_limit_burst,
            per_second: config.rate_limit_per_second,
        },
        shutdown_grace: config.shutdown_grace,
        admission: config.admission,
        // Retention walks every partition through one shared cursor: one core runs it.
        trim_interval: if core_index == 0 {
            config.storage.trim_interval
        } else {
            Duration::ZERO
        },
        typing_max_audience: config.typing_max_audience,
        read_receipt_max_group: config.read_receipt_max_group,
        offline_notices: config.webhook.is_some(),
        recall_window: config.recall_window,
        edit_window: config.edit_window,
        id_seed: rand::random(),
        // A chatroom request to another node waits as long as any other request does.
        room_answer_timeout: config.cluster.as_ref().map_or(
            petrel_control::Config::default().room_answer_timeout,
            |cluster| cluster.request_timeout,
        ),
        ..petrel_control::Config::default()
    }
}

/// How a server run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// By a signal, after a graceful shutdown.
    Signal,
    /// By the disk watch, after a graceful shutdown, so the database is reopened: exit
    /// with [`disk_watch::EXIT_RESTART`] and let the supervisor start the server again.
    ForStorageRestart,
}

/// Runs the server until SIGINT or SIGTERM (or a full disk that has space again), then
/// shuts down gracefully.
pub fn run(config: ServeConfig) -> anyhow::Result<Stopped> {
    // Registered first, so a SIGTERM or a SIGHUP (`systemctl reload`) during start-up is
    // held for the signal thread instead of killing the process half started.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .context("cannot install signal handlers")?;
    match config.dataplane {
        // Kernel sockets hold a descriptor each; AF_XDP connections hold none.
        DataplaneKind::Kernel => {
            limits::raise_nofile(config.max_connections);
        }
        DataplaneKind::Xdp => config.validate_xdp()?,
        DataplaneKind::Dpdk => config.validate_dpdk()?,
    }

    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    if let Some(budget) = config.chatroom_lag_budget {
        tracing::warn!(
            chatroom_lag_budget = budget,
            max_outbound_bytes = config.max_outbound_bytes,
            "chatroom_lag_budget is no longer used and is ignored: a chatroom member is \
             skipped while its connection's queued output is over max_outbound_bytes"
        );
    }
    let keys = keys::load_or_create(&config.key_file)?;
    let media_keys = keys.clone();
    let dispatch_keys = keys.clone();
    // The dispatch directory (which nodes are up, in which pool; the users' pools),
    // which the cluster bridge and the pool watcher keep current.
    let directory = Arc::new(crate::dispatch::Directory::new(
        config.cluster.as_ref().map_or(1, |c| c.nodes),
        config.dispatch.backup.clone(),
        config.cluster.is_some(),
    ));
    let pool_book = config.cluster.as_ref().map(|cluster| {
        Arc::new(crate::dispatch::PoolBook::new(
            &cluster.name,
            config.dispatch.kv_replicas,
            config.dispatch.pools.clone(),
            directory.clone(),
        ))
    });
    let db_path = config.data_dir.join("db");
    // A cluster node: its place among the cluster's cores, the partitions it allocates
    // new conversations in, and the inbox epoch every node shares.
    let layout = match &config.cluster {
        Some(cluster) => {
            let cores =
                u8::try_from(transport::planned_cores(&config)?).context("more than 255 cores")?;
            Some(crate::cluster::Layout::new(
                cluster.node,
                cluster.nodes,
                cores,
            )?)
        }
        None => None,
    };
    let mut storage = storage_config(&config);
    if let (Some(cluster), Some(layout)) = (&config.cluster, layout) {
        let partitions = petrel_storage::partition::Partitions::clamped(config.storage.partitions);
        anyhow::ensure!(
            partitions.count() >= u16::from(layout.total_cores()),
            "[cluster] {} nodes × {} cores = {} cores need at least as many partitions \
             (partitions = {}): every core owns at least one",
            layout.nodes,
            layout.cores,
            layout.total_cores(),
            partitions.count()
        );
        storage.new_ids_in = Some(layout.owned_partitions(partitions));
        storage.epoch = Some(crate::cluster::epoch_of(&cluster.name));
    }
    // Before anything of this node is served: no other process runs as it, and with a
    // replica log this one holds its lease (a standby waits here until it is handed
    // the node).
    let Some((engine, mut lease)) =
        node_db::open(&db_path, storage, config.cluster.as_ref(), &mut signals)?
    else {
        return Ok(Stopped::Signal);
    };
    let engine = Arc::new(engine);
    let handover_engine = lease.is_some().then(|| Arc::clone(&engine));
    if layout.is_some() {
        let partitions = engine.partitions().count();
        anyhow::ensure!(
            partitions == config.storage.partitions,
            "[cluster] the database in {} has {partitions} partitions, the config says {}: \
             every node of a cluster must have as many",
            db_path.display(),
            config.storage.partitions
        );
    }
    // Without it only offline backups work; not a reason to refuse to serve.
    let _admin = admin::start(&config.data_dir, &engine)
        .inspect_err(|error| {
            tracing::warn!(
                %error,
                dir = %config.data_dir.display(),
                "no admin socket: `petrel admin backup` works only while the server is stopped"
            );
        })
        .ok();
    let tls = match &config.tls {
        Some(settings) => Some(tls::TlsServer::start(settings)?),
        None => None,
    };
    let peers = petrel_dataplane::PeerPolicy {
        per_address: config
            .max_connections_per_address
            .map(petrel_dataplane::AddressLimiter::new),
        ..Default::default()
    };
    // Every WebSocket message is at most one largest frame of the protocol.
    let websocket = (!config.websocket.is_empty()).then(|| {
        let ws = petrel_dataplane::WsAcceptor::new(
            config.websocket_origins.clone(),
            config.max_frame_body as usize + petrel_proto::header::HEADER_LEN,
            Arc::default(),
        );
        if config.websocket_forwarded_for {
            ws.behind_proxy()
        } else {
            ws
        }
    });
    let (transport, cores, cpus) = Transport::start(
        &config,
        tls.as_ref().map(tls::TlsServer::acceptor),
        &peers,
        websocket.as_ref(),
    )?;
    let home_waker = cores
        .home_waker()
        .context("the dataplane started no core")?;
    let syncer_wakes = home_waker.clone();
    let engine_figures = Arc::clone(&engine);
    let media_engine = Arc::clone(&engine);
    let dispatch_engine = Arc::clone(&engine);
    let scrub_engine = Arc::downgrade(&engine);
    // One control plane and committer on core 0, or one per core (each committer's
    // syncer wake-ups go to its own core).
    let loop_wakers = match config.ownership {
        Ownership::Home => vec![syncer_wakes],
        Ownership::PerCore => cores.wakers(),
    };
    let api_wakers = loop_wakers.clone();
    let core_count = u8::try_from(loop_wakers.len())
        .ok()
        .filter(|&n| n <= petrel_control::remote::MAX_CORES)
        .with_context(|| {
            format!(
                "ownership = \"per-core\" serves at most {} cores",
                petrel_control::remote::MAX_CORES
            )
        })?;
    let partitions = engine.partitions();
    let mut committers = Committer::start_many(
        engine,
        (config.sync == Sync::Batch).then_some(SyncRounds {
            min_interval: config.sync_interval,
        }),
        loop_wakers
            .into_iter()
            .map(|waker| -> petrel_storage::WakeLoop {
                Arc::new(move || {
                    let _ = waker.wake();
                })
            })
            .collect(),
    )
    .context("cannot start the storage syncer")?;
    schedule_syncer(&committers[0], config.syncer_priority, config.poll);
    if let Some(layout) = layout {
        anyhow::ensure!(
            layout.cores == core_count,
            "the dataplane started {core_count} cores, {} were planned",
            layout.cores
        );
    }
    let mut controls = Vec::with_capacity(committers.len());
    for (index, committer) in (0..core_count).zip(committers.iter_mut()) {
        // In a cluster, every core of every node has one index.
        let (index, count) = match layout {
            Some(layout) => (layout.first_core() + index, layout.total_cores()),
            None => (index, core_count),
        };
        let mut control = Control::new(control_config(&config, index, count), keys.clone(), now());
        warm_up(&mut control, committer)?;
        if let Some(layout) = layout {
            // The other nodes count once heard from (the cluster bridge says so).
            control.handle(
                now(),
                petrel_control::Event::CoresDown {
                    cores: layout.remote_cores(),
                },
            );
        }
        controls.push(control);
    }

    let api_stats = Arc::new(crate::api::stats::ApiStats::default());
    // A cluster node answers the other nodes' API calls (about its sessions and its
    // chatrooms) whether or not it serves the API itself.
    let cluster_api = config
        .cluster
        .as_ref()
        .zip(layout)
        .map(|(settings, layout)| {
            crate::cluster::api_calls::ClusterApi::new(
                &settings.name,
                layout,
                settings.request_timeout,
            )
        });
    let cluster_stats = cluster_api
        .is_some()
        .then(|| Arc::new(crate::cluster::stats::ClusterStats::default()));
    let api_channel = (config.api_addr.is_some() || cluster_api.is_some()).then(|| {
        let (bridge, inboxes) = crate::api::bridge::channel(api_wakers);
        match layout.zip(cluster_api.clone()) {
            Some((layout, remote)) => (bridge.in_cluster(layout, remote), inboxes),
            None => (bridge, inboxes),
        }
    });
    let api_bridge = api_channel.as_ref().map(|(bridge, _)| bridge.clone());
    let mut api_inboxes = api_channel.map(|(_, inboxes)| inboxes).unwrap_or_default();
    if let (Some(addr), Some(bridge)) = (config.api_addr, &api_bridge) {
        let key_file = config
            .api_key_file
            .as_deref()
            .context("api_addr needs api_key_file")?;
        let key = crate::api::auth::ApiKey::load(key_file)?;
        let bridge = bridge.clone();
        let endpoint = crate::api::start(
            crate::api::ApiSettings {
                addr,
                key,
                system_user: config.api_system_user,
                pools: pool_book.clone(),
            },
            bridge,
            api_stats.clone(),
        )?;
        tracing::info!(addr = %endpoint.addr, "api listening");
        println!("petrel: api on http://{}/v1", endpoint.addr);
    }

    let metrics = match config.metrics_addr {
        Some(addr) => {
            let metrics = metrics::Metrics::new(
                transport.metrics_label(),
                committers.iter().map(Committer::stats).collect(),
            );
            if config.api_addr.is_some() {
                metrics.set_api_stats(api_stats.clone());
            }
            if let Some(source) = transport.metrics_source() {
                metrics.set_transport_source(source);
            }
            if let Some(tls) = &tls {
                metrics.set_tls(tls.metrics());
            }
            metrics.set_peers(peers.clone());
            if let Some(ws) = &websocket {
                metrics.set_websocket(ws.stats().clone());
            }
            if let Some(stats) = &cluster_stats {
                metrics.set_cluster(stats.clone());
            }
            metrics.set_storage_source(Box::new(move || metrics::StorageSnapshot {
                caches: engine_figures.writer_cache_stats().ok(),
                dedup: engine_figures.recent_ids_stats().ok(),
                replica: engine_figures.kv().replica_marks(),
            }));
            let endpoint = metrics::serve(addr, metrics.clone())
                .with_context(|| format!("cannot serve metrics on {addr}"))?;
            tracing::info!(addr = %endpoint.addr, "metrics endpoint listening");
            println!("petrel: metrics on http://{}/metrics", endpoint.addr);
            Some(metrics)
        }
        None => None,
    };

    let webhooks = match &config.webhook {
        Some(settings) => {
            let stats = Arc::new(crate::webhook::WebhookStats::default());
            if let Some(metrics) = &metrics {
                metrics.set_webhook_stats(stats.clone());
            }
            let webhooks =
                crate::webhook::Webhooks::start(settings.clone(), &config.data_dir, stats)?;
            tracing::info!(url = %settings.target.url, "webhooks on");
            Some(webhooks)
        }
        None => None,
    };

    if let Some(addr) = config.media.addr {
        let addr = start_media(&config, addr, media_keys, media_engine)?;
        tracing::info!(%addr, "media service listening");
        println!("petrel: media on http://{addr}");
    }

    let stop = Arc::new(AtomicBool::new(false));
    // Set when this cluster node stops because another process serves as it.
    let yielded = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let home_waker = home_waker.clone();
        let reloader = tls.as_ref().map(tls::TlsServer::reloader);
        std::thread::Builder::new()
            .name("petrel-signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    if signal == signal_hook::consts::SIGHUP {
                        // SIGHUP reloads what can change without a restart: the TLS
                        // certificate and key.
                        match &reloader {
                            Some(r) => match r.reload() {
                                Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                                Err(e) => tracing::warn!(
                                    error = format!("{e:#}"),
                                    "SIGHUP: TLS certificate not reloaded; the old one stays"
                                ),
                            },
                            None => tracing::info!("SIGHUP: nothing to reload (no TLS)"),
                        }
                        continue;
                    }
                    tracing::info!(signal, "signal received; shutting down gracefully");
                    stop.store(true, Ordering::Relaxed);
                    let _ = home_waker.wake();
                    break;
                }
            })?;
    }
    // `petrel admin drain` stops the server as SIGTERM does.
    if let Some(admin) = &_admin {
        let stop = stop.clone();
        let home_waker = home_waker.clone();
        let _ = admin.drain.set(Box::new(move || {
            stop.store(true, Ordering::Relaxed);
            let _ = home_waker.wake();
        }));
    }

    let local_addrs = transport.local_addrs();
    // The TLS listeners: the last `[tls] listen` ones, or all of them.
    let tls_from = match &config.tls {
        None => local_addrs.len(),
        Some(t) if t.listen.is_empty() => 0,
        Some(t) => local_addrs.len().saturating_sub(t.listen.len()),
    };
    // The PROXY protocol listeners: bound in the order configured (`listen`, then
    // `[tls] listen`).
    let configured = config
        .listen
        .iter()
        .chain(config.tls.iter().flat_map(|t| &t.listen));
    let (proxied, websockets): (Vec<bool>, Vec<bool>) = configured
        .map(|a| {
            (
                config.proxy_protocol.contains(a),
                config.websocket.contains(a),
            )
        })
        .unzip();
    let endpoints = advertised_endpoints(&config, &local_addrs, &proxied, &websockets);
    let this_node = config.cluster.as_ref().map_or(0, |c| c.node);
    directory.set_node(
        this_node,
        Some((config.dispatch.pool_of_node(this_node), &endpoints)),
    );
    if let Some(addr) = config.dispatch.addr {
        let auth = crate::media::auth::Authenticator::new(
            dispatch_keys,
            revocation_source(&dispatch_engine),
        );
        let https = match (&tls, config.dispatch.tls) {
            (Some(tls), true) => Some(tls.https_acceptor()?),
            _ => None,
        };
        let scheme = if https.is_some() { "https" } else { "http" };
        let addr = crate::dispatch::http::start(
            addr,
            directory.clone(),
            auth,
            (config.dispatch.limits, https),
        )?;
        tracing::info!(%addr, scheme, "dispatch directory listening");
        if endpoints.is_empty() {
            tracing::warn!(
                "dispatch: this node names no endpoint of its own (its listeners are on \
                 wildcard addresses, PROXY protocol or WebSocket): the directories send no \
                 client here; set [cluster] advertise"
            );
        }
        println!("petrel: dispatch on {scheme}://{addr}");
    }
    for (i, addr) in local_addrs.iter().enumerate() {
        let tls = i >= tls_from;
        let proxy_protocol = proxied.get(i).copied().unwrap_or(false);
        let websocket = websockets.get(i).copied().unwrap_or(false);
        tracing::info!(%addr, tls, proxy_protocol, websocket, dataplane = transport.describe(), cores = cpus.len(), poll = ?config.poll, "listening");
    }
    let list = |addrs: &mut dyn Iterator<Item = &SocketAddr>| {
        addrs
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if tls_from < local_addrs.len() {
        println!(
            "petrel: TLS on {}",
            list(&mut local_addrs[tls_from..].iter())
        );
    }
    for (what, marks) in [("PROXY protocol", &proxied), ("WebSocket", &websockets)] {
        if marks.contains(&true) {
            let mut addrs = local_addrs
                .iter()
                .zip(marks)
                .filter(|(_, marked)| **marked)
                .map(|(a, _)| a);
            println!("petrel: {what} on {}", list(&mut addrs));
        }
    }
    println!(
        "petrel: serving on {} ({}, data in {})\n\
         petrel: mint a token:  petrel token issue --key-file {} --user 1 --device laptop\n\
         petrel: then connect to {} with any client speaking docs/PROTOCOL.md \
         (Login frame with that token, user 1, device laptop)",
        local_addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        transport.describe(),
        config.data_dir.display(),
        config.key_file.display(),
        local_addrs
            .first()
            .map_or("127.0.0.1:9500".into(), ToString::to_string),
    );

    let disk = Arc::new(disk_watch::DiskWatch::default());
    disk_watch::start(
        config.data_dir.clone(),
        disk.clone(),
        stop.clone(),
        home_waker.clone(),
    )
    .context("cannot start the disk watch")?;
    scrub::start(scrub_engine, stop.clone()).context("cannot start the scrub thread")?;
    let webhook = webhooks.as_ref().and_then(|w| w.sender());
    let result = match config.ownership {
        Ownership::Home => {
            let (Some(control), Some(committer)) = (controls.pop(), committers.pop()) else {
                anyhow::bail!("no control plane was started");
            };
            let home = core_loop::HomeParts {
                control,
                committer,
                stop,
                metrics,
                disk: disk.clone(),
                api: api_inboxes.pop(),
                webhook,
            };
            match cores {
                Cores::Kernel(cores) => core_loop::run(cores, cpus, config.poll, home),
                Cores::Xdp(cores) => core_loop::run(cores, cpus, config.poll, home),
                #[cfg(feature = "dpdk")]
                Cores::Dpdk(cores) => core_loop::run(cores, cpus, config.poll, home),
            }
        }
        Ownership::PerCore => {
            let mut api = api_inboxes.into_iter();
            let parts = controls
                .into_iter()
                .zip(committers)
                .map(|(control, committer)| per_core::CoreParts {
                    control,
                    committer,
                    api: api.next(),
                })
                .collect();
            let (bridge, links) = match (&config.cluster, layout) {
                (Some(settings), Some(layout)) => {
                    let dispatch = crate::cluster::bridge::DispatchLink {
                        directory: directory.clone(),
                        pools: pool_book.clone().context("a cluster has a pool book")?,
                        pool: config.dispatch.pool_of_node(layout.node).to_owned(),
                        api: cluster_api
                            .clone()
                            .zip(api_bridge.clone())
                            .context("a cluster node has its API bridge")?,
                        stats: cluster_stats.clone().context("a cluster node counts")?,
                        yield_node: {
                            let (stop, waker, yielded) =
                                (stop.clone(), home_waker.clone(), yielded.clone());
                            Box::new(move || {
                                yielded.store(true, Ordering::Relaxed);
                                stop.store(true, Ordering::Relaxed);
                                let _ = waker.wake();
                            })
                        },
                    };
                    let (bridge, links) = crate::cluster::bridge::start(
                        settings,
                        layout,
                        partitions.count(),
                        endpoints.clone(),
                        dispatch,
                        cores.wakers(),
                    )?;
                    // Said hello: the lease is written again, or this process lost it
                    // while it started and must not serve.
                    if let Some(lease) = lease.as_mut() {
                        match lease.confirm() {
                            Ok(true) => {}
                            Ok(false) => {
                                tracing::error!(
                                    node = layout.node,
                                    "another process took this node's lease while this one \
                                     started; stopping"
                                );
                                yielded.store(true, Ordering::Relaxed);
                                stop.store(true, Ordering::Relaxed);
                            }
                            Err(error) => tracing::warn!(
                                node = layout.node,
                                error = format!("{error:#}"),
                                "lease: not written again after start (NATS?); serving on"
                            ),
                        }
                    }
                    (Some(bridge), links)
                }
                _ => (None, Vec::new()),
            };
            let shared =
                per_core::SharedParts {
                    stop,
                    disk: disk.clone(),
                    webhook,
                    metrics,
                    partitions,
                    cluster: config.cluster.as_ref().zip(layout).zip(cluster_stats).map(
                        |((settings, layout), stats)| (layout, settings.request_timeout, stats),
                    ),
                };
            let result = match cores {
                Cores::Kernel(cores) => {
                    per_core::run(cores, cpus, config.poll, parts, shared, links)
                }
                Cores::Xdp(cores) => per_core::run(cores, cpus, config.poll, parts, shared, links),
                #[cfg(feature = "dpdk")]
                Cores::Dpdk(cores) => per_core::run(cores, cpus, config.poll, parts, shared, links),
            };
            if let Some(bridge) = bridge {
                bridge.stop();
            }
            result
        }
    };
    // Stopped cleanly (not yielding to another process as this node): the node's
    // standby, if it has one, takes over once the replica log holds every write.
    if let (Some(lease), Some(engine)) = (lease, handover_engine) {
        if result.is_ok() && !yielded.load(Ordering::Relaxed) {
            lease.hand_over(&engine);
        }
        drop(engine);
    }
    transport.log_counters();
    drop(transport);
    if let Some(webhooks) = webhooks {
        webhooks.stop();
    }
    result?;
    if yielded.load(Ordering::Relaxed) {
        anyhow::bail!(
            "stopped: another process serves as this cluster node (see the log); run one \
             process per node index"
        );
    }
    tracing::info!("stopped");
    Ok(if disk.restart.load(Ordering::Relaxed) {
        Stopped::ForStorageRestart
    } else {
        Stopped::Signal
    })
}

/// Starts the media upload service on its own runtime; it reads the revocation list
/// from the database (see `media::auth`).
fn start_media(
    config: &ServeConfig,
    addr: std::net::SocketAddr,
    keys: petrel_control::KeyRing,
    engine: Arc<RocksEngine>,
) -> anyhow::Result<std::net::SocketAddr> {
    let revoked = revocation_source(&engine);
    crate::media::start(config.media.clone(), addr, &config.data_dir, keys, revoked)
}

/// The token revocation list as the database has it, for the HTTP services that check
/// clients' tokens (media, dispatch). In a cluster, the revocations this node stored.
fn revocation_source(engine: &Arc<RocksEngine>) -> crate::media::RevocationSource {
    use petrel_storage::Engine as _;
    // Weak: the HTTP threads live until the process exits and must not keep the
    // database open past the server's own shutdown.
    let engine = Arc::downgrade(engine);
    Box::new(move |now_ms| {
        let engine = engine.upgrade().ok_or("the database is closed")?;
        let mut list = petrel_control::token::RevocationList::default();
        for entry in engine.load_revoked(now_ms).map_err(|e| e.to_string())? {
            list.insert(
                entry.token.0,
                petrel_control::Timestamp::from_millis(entry.expires_at_ms),
            );
        }
        Ok(list)
    })
}

/// Where this node's clients reach it, which the dispatch directory answers and the
/// other nodes name in the kicks of their stopping clients: `[cluster] advertise` if
/// set, else the listeners that speak the plain protocol (not PROXY protocol, not
/// WebSocket) bound to a specific address.
fn advertised_endpoints(
    config: &ServeConfig,
    local_addrs: &[SocketAddr],
    proxied: &[bool],
    websockets: &[bool],
) -> Vec<String> {
    if let Some(cluster) = &config.cluster
        && !cluster.advertise.is_empty()
    {
        return cluster.advertise.clone();
    }
    local_addrs
        .iter()
        .enumerate()
        .filter(|(i, a)| {
            !a.ip().is_unspecified()
                && !proxied.get(*i).copied().unwrap_or(false)
                && !websockets.get(*i).copied().unwrap_or(false)
        })
        .map(|(_, a)| a.to_string())
        .collect()
}

/// Gives the storage syncer thread the configured scheduling policy. The real-time one
/// matters when a loop busy-polls the syncer's CPU: under the ordinary scheduler the
/// woken syncer waits for the loop's time slice before it can report a finished fsync
/// (docs/PERFORMANCE.md measured 442 µs per wake-up on average, up to 10 ms).
fn schedule_syncer<E: GroupEngine + 'static>(
    committer: &Committer<E, Origin>,
    priority: SyncerPriority,
    poll: PollMode,
) {
    let Some(thread) = committer.syncer_thread() else {
        return;
    };
    if priority == SyncerPriority::Normal {
        return;
    }
    match petrel_dataplane::pin::run_realtime(thread) {
        Ok(()) => tracing::debug!("storage syncer runs SCHED_FIFO"),
        // It matters most behind a busy loop (measured: p90 of durable acks 4-15 ms
        // instead of under 1 ms); a loop that sleeps when idle leaves the syncer room.
        Err(error) if poll == PollMode::Busy => tracing::warn!(
            %error,
            "storage syncer keeps the normal scheduler (SCHED_FIFO needs CAP_SYS_NICE or \
             LimitRTPRIO=1): with --poll busy, durable acks may wait for the CPU behind the \
             loop; `syncer_priority = \"normal\"` silences this"
        ),
        Err(error) => tracing::info!(
            %error,
            "storage syncer keeps the normal scheduler (SCHED_FIFO needs CAP_SYS_NICE or \
             LimitRTPRIO=1)"
        ),
    }
}

/// Runs the control plane's start-up storage work (loading the token revocation list)
/// before any client is served, so the first logins are not turned away as "server
/// busy".
fn warm_up<E: GroupEngine + 'static>(
    control: &mut Control,
    committer: &mut Committer<E, Origin>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut batch = Vec::new();
    while !control.is_ready() {
        while let Some(action) = control.poll_action() {
            let Action::Storage { ticket, request } = action else {
                anyhow::bail!("control plane asked for network I/O before any connection existed");
            };
            batch.push((Origin::Here(ticket), request));
        }
        committer.commit(&mut batch);
        committer.take_ready(|origin, result| {
            // Nothing crosses cores before the loops run.
            if let Origin::Here(ticket) = origin {
                control.handle(now(), Event::Storage { ticket, result });
            }
        });
        if Instant::now() > deadline {
            anyhow::bail!("storage did not answer the start-up requests within 30 s");
        }
        if !control.is_ready() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(())
}
