//! `petrel` — the Petrel instant-messaging server's command line.
//!
//! One binary for operators and developers: `serve` runs the server, and further
//! subcommands (tokens, diagnostics, benchmarks) join as their issues land. The crates it
//! wires together, in the direction data flows:
//! `petrel-dataplane` (NIC/socket) → `petrel-proto` (frames) → `petrel-control` (sessions,
//! routing) → `petrel-storage` (RocksDB); `petrel-sdk` is the client side.
#![deny(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Petrel: an instant-messaging server built for millions of connections per node.
#[derive(Debug, Parser)]
#[command(name = "petrel", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve,
    /// Print the wire protocol's frame types and their type bytes.
    Frames,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => {
            eprintln!(
                "petrel serve: not implemented yet. The kernel-socket server lands with the \
                 `petrel serve` issue; until then this build provides the wire protocol \
                 (petrel-proto) and `petrel frames`."
            );
            ExitCode::from(2)
        }
        Command::Frames => {
            for &t in petrel_proto::FrameType::ALL {
                let direction = if t.is_client_to_server() {
                    "client -> server"
                } else {
                    "server -> client"
                };
                println!("{:#04x}  {:<22} {direction}", t as u8, t.message_name());
            }
            ExitCode::SUCCESS
        }
    }
}
