//! `petrel serve`: wires the dataplane, the control plane and storage into a running
//! server.
//!
//! Threads: one pinned event loop per dataplane core (`petrel-core-N`), the control-plane
//! thread (this module's [`driver`], running on the caller's thread), and the storage
//! writer (`petrel-storage-writer`, group commit). See docs/ARCHITECTURE.md for the data
//! flow.

pub mod admin;
pub mod config;
mod driver;
mod keys;
mod limits;
pub mod metrics;
pub(crate) mod transport;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use petrel_control::Control;
use petrel_storage::{
    CommitQueue, CommitQueueConfig, DiffusionMode, RocksEngine, StorageConfig, SyncMode,
};

pub use config::{ServeArgs, ServeConfig};
pub use driver::now;

use self::config::{DataplaneKind, Diffusion, Sync};
use self::transport::Transport;

/// Events a transport may queue for the control plane before it stops reading.
const TRANSPORT_EVENT_QUEUE: usize = 64 * 1024;

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
        ..StorageConfig::default()
    }
}

fn control_config(config: &ServeConfig) -> petrel_control::Config {
    petrel_control::Config {
        heartbeat_interval: config.heartbeat_interval,
        idle_timeout: config.idle_timeout,
        login_deadline: config.login_deadline,
        rate_limit: petrel_control::RateLimit {
            burst: config.rate_limit_burst,
            per_second: config.rate_limit_per_second,
        },
        id_seed: rand::random(),
        ..petrel_control::Config::default()
    }
}

/// Runs the server until SIGINT or SIGTERM, then shuts down gracefully.
pub fn run(config: ServeConfig) -> anyhow::Result<()> {
    match config.dataplane {
        // Kernel sockets hold a descriptor each; AF_XDP connections hold none.
        DataplaneKind::Kernel => {
            limits::raise_nofile(config.max_connections);
        }
        DataplaneKind::Xdp => config.validate_xdp()?,
    }

    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let keys = keys::load_or_create(&config.key_file)?;
    let db_path = config.data_dir.join("db");
    let engine = Arc::new(
        RocksEngine::open(&db_path, storage_config(&config))
            .with_context(|| format!("cannot open database {}", db_path.display()))?,
    );
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
    let storage = CommitQueue::start(engine, CommitQueueConfig::default())
        .context("cannot start the storage writer")?;
    let mut control = Control::new(control_config(&config), keys, now());
    let (storage_tx, storage_rx) = crossbeam_channel::unbounded();
    driver::warm_up(&mut control, &storage, &storage_tx, &storage_rx)?;

    let (transport_tx, transport_rx) = crossbeam_channel::bounded(TRANSPORT_EVENT_QUEUE);
    let transport = Transport::start(&config, transport_tx)?;
    let metrics = match config.metrics_addr {
        Some(addr) => {
            let metrics = metrics::Metrics::new(transport.metrics_label(), storage.stats());
            if let Some(source) = transport.metrics_source() {
                metrics.set_transport_source(source);
            }
            let endpoint = metrics::serve(addr, metrics.clone())
                .with_context(|| format!("cannot serve metrics on {addr}"))?;
            tracing::info!(addr = %endpoint.addr, "metrics endpoint listening");
            println!("petrel: metrics on http://{}/metrics", endpoint.addr);
            Some(metrics)
        }
        None => None,
    };

    let stop = Arc::new(AtomicBool::new(false));
    let (stop_wakeup_tx, stop_wakeup_rx) = crossbeam_channel::bounded(1);
    {
        let stop = stop.clone();
        let mut signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
        ])
        .context("cannot install signal handlers")?;
        std::thread::Builder::new()
            .name("petrel-signals".into())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    tracing::info!(signal, "signal received; shutting down gracefully");
                    stop.store(true, Ordering::Relaxed);
                    let _ = stop_wakeup_tx.try_send(());
                }
            })?;
    }

    let local_addrs = transport.local_addrs();
    for addr in &local_addrs {
        tracing::info!(%addr, dataplane = transport.describe(), "listening");
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

    let driver = driver::Driver {
        control,
        router: transport.router(),
        storage,
        transport_events: transport_rx,
        storage_events: storage_rx,
        storage_events_tx: storage_tx,
        stop,
        stop_wakeup: stop_wakeup_rx,
        metrics: metrics.map(driver::DriverMetrics::new),
    };
    let result = driver.run();
    transport.log_counters();
    transport.join();
    result.context("storage did not shut down cleanly")?;
    tracing::info!("stopped");
    Ok(())
}
