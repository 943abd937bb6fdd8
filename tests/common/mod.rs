//! Test harness for end-to-end tests: runs the real `petrel` binary as a child process
//! on loopback or on the veth lab (AF_XDP), and talks to it with a small blocking client speaking the wire protocol.
#![allow(dead_code)]

pub mod client;
pub mod cluster;
pub mod http;
pub mod lab;
pub mod media;
pub mod metrics;
pub mod nginx;
pub mod server;
pub mod ws;

pub use client::TestClient;
pub use server::{Dataplane, TestServer};

/// The `petrel` binary under test.
pub const PETREL: &str = env!("CARGO_BIN_EXE_petrel");

/// Runs `petrel ARGS`, returning its output.
pub fn petrel(args: &[&str]) -> std::process::Output {
    std::process::Command::new(PETREL)
        .args(args)
        .output()
        .expect("run petrel")
}
