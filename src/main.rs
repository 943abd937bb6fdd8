//! `petrel` — the Petrel instant-messaging server's command line.
//!
//! One binary for operators and developers: `serve` runs the server, `token issue` mints
//! login tokens, `frames` lists the wire protocol's frame types, `doctor` / `tune` check
//! and tune the host, `admin backup` checkpoints the database (see [`ops`]). The crates it wires
//! together, in the direction data flows:
//! `petrel-dataplane` (NIC/socket) → `petrel-proto` (frames) → `petrel-control` (sessions,
//! routing) → `petrel-storage` (RocksDB); `petrel-sdk` is the client side.
#![deny(unsafe_code)]

mod api;
mod chat;
mod cluster;
mod dispatch;
mod http_serve;
mod media;
mod ops;
mod server;
mod token_cmd;
mod webhook;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Petrel: an instant-messaging server built for millions of connections per node.
#[derive(Debug, Parser)]
#[command(
    name = "petrel",
    version,
    about = "Petrel: an instant-messaging server built for millions of connections per node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (kernel sockets, embedded RocksDB).
    Serve(Box<server::ServeArgs>),
    /// Login tokens.
    #[command(subcommand)]
    Token(token_cmd::TokenCommand),
    /// Print the wire protocol's frame types and their type bytes.
    Frames,
    /// Interactive terminal client (on the SDK) for trying a server.
    Chat(chat::ChatArgs),
    /// Check this host for the configured scale: limits, sysctls, NIC rings, queues, IRQ
    /// affinity, ntuple and XDP support; each failing line names its fix. Exits 1 when
    /// something blocks the configured scale.
    Doctor(ops::DoctorArgs),
    /// Apply what doctor recommends (--apply, root) or print it (--dry-run).
    Tune(ops::TuneArgs),
    /// Administration of a server's data.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Load generator: run a scenario against a server and report latency, throughput
    /// and the server's memory and CPU.
    Bench(Box<petrel_bench::BenchArgs>),
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Write a consistent checkpoint of the database to DIR (through the running
    /// server's admin socket, or directly when no server runs).
    Backup(ops::backup::BackupArgs),
    /// Stop a running server gracefully through its admin socket (as SIGTERM does: its
    /// clients are told to reconnect, to the cluster's other nodes first) and wait
    /// until it has exited: one step of a rolling restart.
    Drain(ops::drain::DrainArgs),
}

/// Logs go to stderr, in colour only when stderr is a terminal: a log file, a pipe or
/// the journal gets plain text without ANSI escape codes.
fn init_logging(filter: &str, format: server::config::LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        server::config::LogFormat::Human => builder.init(),
        server::config::LogFormat::Json => builder.json().init(),
    }
}

fn exit(result: anyhow::Result<ExitCode>) -> ExitCode {
    result.unwrap_or_else(|e| {
        eprintln!("petrel: error: {e:#}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => {
            let stopped = server::ServeConfig::resolve(&args).and_then(|config| {
                init_logging(&config.log_level, config.log_format);
                server::run(config)
            });
            match stopped {
                Ok(server::Stopped::ForStorageRestart) => {
                    eprintln!(
                        "petrel: stopped after a full disk had space again; start it again to \
                         reopen the database (systemd restarts it: exit status {})",
                        server::disk_watch::EXIT_RESTART
                    );
                    return ExitCode::from(server::disk_watch::EXIT_RESTART);
                }
                other => other.map(|_| ()),
            }
        }
        Command::Token(cmd) => token_cmd::run(cmd),
        Command::Chat(args) => chat::run(args),
        Command::Doctor(args) => return exit(ops::doctor(&args)),
        Command::Tune(args) => return exit(ops::tune(&args)),
        Command::Admin(AdminCommand::Backup(args)) => ops::backup::run(&args),
        Command::Admin(AdminCommand::Drain(args)) => ops::drain::run(&args),
        Command::Bench(args) => petrel_bench::run(*args),
        Command::Frames => {
            for &t in petrel_proto::FrameType::ALL {
                let direction = if t.is_client_to_server() {
                    "client -> server"
                } else {
                    "server -> client"
                };
                println!("{:#04x}  {:<30} {direction}", t as u8, t.message_name());
            }
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("petrel: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
