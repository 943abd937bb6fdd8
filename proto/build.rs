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
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
