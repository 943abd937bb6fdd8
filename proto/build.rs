//! Compiles `schema/petrel/v1/*.proto` into Rust with prost.
//!
//! The `.proto` files are parsed by `protox`, a pure-Rust protobuf compiler, instead of
//! Google's `protoc`: the build then needs nothing installed on the machine, works the
//! same on every developer box and in CI, and cannot pick up a mismatched system protoc.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let schema_dir = PathBuf::from("schema");
    let files = [
        "petrel/v1/common.proto",
        "petrel/v1/content.proto",
        "petrel/v1/session.proto",
        "petrel/v1/message.proto",
        "petrel/v1/conversation.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", schema_dir.join(file).display());
    }
    let descriptors = protox::compile(files, [&schema_dir])?;
    // The messages that carry message content are hand-written in `src/wire.rs`, with the
    // content as encoded bytes (the same wire as the schema's embedded `Content`).
    prost_build::Config::new()
        .extern_path(".petrel.v1.SendMessage", "crate::wire::SendMessage")
        .extern_path(".petrel.v1.MessagePush", "crate::wire::MessagePush")
        .extern_path(".petrel.v1.SyncResponse", "crate::wire::SyncResponse")
        .compile_fds(descriptors)?;
    Ok(())
}
