//! Compiles the XDP filter (`vendor/xdp/petrel_filter.bpf.c`) into `$OUT_DIR` with clang,
//! so the object embedded in the binary always matches its source (no committed binary).
//!
//! Needs clang (already required for RocksDB's bindgen) and the headers from
//! `linux-libc-dev` and `libbpf-dev` (scripts/setup.sh installs them). The exact command is
//! printed on stderr (shown by `cargo build -vv`) and repeated in the C file's header comment.
//!
//! With the cargo feature `dpdk`, also compiles the DPDK shim (`vendor/dpdk/shim.c`) and
//! links DPDK, both with the flags of `pkg-config libdpdk` (see [`dpdk`]).

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    #[cfg(feature = "dpdk")]
    dpdk::build();
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

/// The DPDK shim. Its C flags are taken raw from `pkg-config --cflags libdpdk`: they carry
/// `-include rte_config.h` and `-march=...`, which the `pkg-config` crate drops and without
/// which `rte_memcpy.h` does not compile; the link flags come from the `pkg-config` crate.
#[cfg(feature = "dpdk")]
mod dpdk {
    use std::process::Command;

    pub fn build() {
        let manifest =
            std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
        let dir = manifest.join("../vendor/dpdk");
        println!("cargo:rerun-if-changed={}", dir.join("shim.c").display());
        println!("cargo:rerun-if-changed={}", dir.join("shim.h").display());
        println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
        let library = pkg_config::Config::new()
            .atleast_version("22.11")
            .probe("libdpdk")
            .unwrap_or_else(|e| {
                panic!(
                    "the `dpdk` feature needs DPDK 22.11 or later (libdpdk-dev; \
                     scripts/setup.sh installs it): {e}"
                )
            });
        let output = Command::new("pkg-config")
            .args(["--cflags", "libdpdk"])
            .output()
            .expect("running pkg-config --cflags libdpdk");
        assert!(
            output.status.success(),
            "pkg-config --cflags libdpdk failed"
        );
        let cflags = String::from_utf8(output.stdout).expect("pkg-config printed UTF-8");
        let mut build = cc::Build::new();
        build
            .file(dir.join("shim.c"))
            .include(&dir)
            .warnings(true)
            .warnings_into_errors(true);
        for path in &library.include_paths {
            build.include(path);
        }
        let mut flags = cflags.split_whitespace();
        while let Some(flag) = flags.next() {
            if flag == "-include" {
                if let Some(file) = flags.next() {
                    build.flag("-include").flag(file);
                }
            } else if !flag.starts_with("-I") {
                build.flag(flag);
            }
        }
        eprintln!("building the DPDK shim with {cflags}");
        build.compile("petrel_dpdk_shim");
    }
}
