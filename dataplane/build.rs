//! Compiles the XDP filter (`vendor/xdp/petrel_filter.bpf.c`) into `$OUT_DIR` with clang,
//! so the object embedded in the binary always matches its source (no committed binary).
//!
//! Needs clang (already required for RocksDB's bindgen) and the headers from
//! `linux-libc-dev` and `libbpf-dev` (scripts/setup.sh installs them). The exact command is
//! printed on stderr (shown by `cargo build -vv`) and repeated in the C file's header comment.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let source = manifest.join("../vendor/xdp/petrel_filter.bpf.c");
    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("petrel_filter.bpf.o");
    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-env-changed=PETREL_BPF_CLANG");

    // linux/bpf.h includes <asm/types.h>, which lives under the multiarch include directory
    // of the *host* (the BPF target has none of its own).
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let (multiarch, target_arch) = match arch.as_str() {
        "aarch64" => ("aarch64-linux-gnu", "arm64"),
        _ => ("x86_64-linux-gnu", "x86"),
    };
    let clang = env::var("PETREL_BPF_CLANG").unwrap_or_else(|_| "clang".into());
    let mut command = Command::new(&clang);
    command
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
        .arg(format!("-D__TARGET_ARCH_{target_arch}"))
        .arg(format!("-I/usr/include/{multiarch}"))
        .arg("-c")
        .arg(&source)
        .arg("-o")
        .arg(&out);
    eprintln!("building the XDP filter: {command:?}");
    let status = command.status().unwrap_or_else(|e| {
        panic!("running {clang} to build the XDP filter failed: {e} (run scripts/setup.sh)")
    });
    assert!(
        status.success(),
        "{clang} could not compile {} ({status}); are linux-libc-dev and libbpf-dev installed? \
         (scripts/setup.sh)",
        source.display()
    );
}
