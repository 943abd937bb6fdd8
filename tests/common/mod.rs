//! Test harness for end-to-end tests: runs the real `petrel` binary as a child process
//! on loopback and talks to it with a small blocking client speaking the wire protocol.
#![allow(dead_code)]

pub mod client;
pub mod server;

pub use client::TestClient;
pub use server::TestServer;
