//! `petrel tune` and `petrel doctor` inside a network namespace on a veth pair made for
//! the test: `--dry-run` changes nothing, `--apply --only net,nic` changes the namespace's
//! sysctls and the veth's queue count, and the host is left exactly as it was —
//! including the machine-wide settings (`fs.*`, IRQ affinity), which are only ever shown
//! by a dry run here.
//!
//! Needs root (network namespaces); skipped with a message otherwise.

#[allow(unused_imports)] // common re-exports what other test files use
mod common;

use std::collections::BTreeMap;
use std::process::{Command, Output};

use common::PETREL;
use common::lab::available as is_root;

/// The namespace and veth pair; removed on drop (deleting the namespace deletes the pair).
struct Lab {
    ns: String,
    host_if: String,
    ns_if: String,
}

fn run(cmd: &[&str]) -> Output {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Lab {
    fn new() -> Lab {
        let id = std::process::id() % 100_000;
        let lab = Lab {
            ns: format!("petrel-ops-{id}"),
            host_if: format!("pops-h{id}"),
            ns_if: format!("pops-n{id}"),
        };
        run(&["ip", "netns", "add", &lab.ns]);
        run(&[
            "ip",
            "link",
            "add",
            &lab.host_if,
            "numrxqueues",
            "4",
            "numtxqueues",
            "4",
            "type",
            "veth",
            "peer",
            "name",
            &lab.ns_if,
            "numrxqueues",
            "4",
            "numtxqueues",
            "4",
        ]);
        run(&["ip", "link", "set", &lab.ns_if, "netns", &lab.ns]);
        run(&[
            "ip",
            "-n",
            &lab.ns,
            "addr",
            "add",
            "10.77.20.2/24",
            "dev",
            &lab.ns_if,
        ]);
        run(&["ip", "-n", &lab.ns, "link", "set", &lab.ns_if, "up"]);
        run(&["ip", "addr", "add", "10.77.20.1/24", "dev", &lab.host_if]);
        run(&["ip", "link", "set", &lab.host_if, "up"]);
        lab
    }

    /// Runs `petrel ARGS` inside the namespace.
    fn petrel(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, PETREL])
            .args(args)
            .output()
            .expect("ip netns exec");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// `petrel doctor --probe-xdp` on the namespace's interface; its output.
    fn probe_xdp(&self) -> String {
        let (_, out) = self.petrel(&[
            "doctor",
            "--probe-xdp",
            "--iface",
            &self.ns_if,
            "--connections",
            "1000",
        ]);
        out
    }

    fn ns_read(&self, path: &str) -> String {
        let out = run(&["ip", "netns", "exec", &self.ns, "cat", path]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn ns_rx_queues(&self) -> usize {
        let out = run(&[
            "ip",
            "netns",
            "exec",
            &self.ns,
            "ls",
            &format!("/sys/class/net/{}/queues", self.ns_if),
        ]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter(|q| q.starts_with("rx-"))
            .count()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
    }
}

fn xdp_attached(lab: &Lab) -> bool {
    let link = run(&[
        "ip", "netns", "exec", &lab.ns, "ip", "link", "show", &lab.ns_if,
    ]);
    String::from_utf8_lossy(&link.stdout).contains("xdp")
}

const NET: [&str; 3] = [
    "/proc/sys/net/core/somaxconn",
    "/proc/sys/net/ipv4/tcp_max_syn_backlog",
    "/proc/sys/net/ipv4/ip_local_port_range",
];

/// Everything on the host a stray tune could touch.
fn host_state(host_if: &str) -> BTreeMap<String, String> {
    let mut state = BTreeMap::new();
    for path in NET
        .iter()
        .chain(&["/proc/sys/fs/nr_open", "/proc/sys/fs/file-max"])
    {
        state.insert(path.to_string(), std::fs::read_to_string(path).unwrap());
    }
    for entry in std::fs::read_dir("/proc/irq").unwrap().flatten() {
        let p = entry.path().join("smp_affinity_list");
        if let Ok(v) = std::fs::read_to_string(&p) {
            state.insert(p.display().to_string(), v);
        }
    }
    let queues: Vec<String> = std::fs::read_dir(format!("/sys/class/net/{host_if}/queues"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    state.insert(format!("{host_if} queues"), format!("{}", queues.len()));
    state
}

#[test]
#[ignore = "needs root (network namespaces); scripts/test.sh runs it as root and in CI"]
fn tune_changes_the_namespace_only_and_dry_run_nothing() {
    assert!(is_root(), "network namespaces need root: run as root");
    let lab = Lab::new();
    let ns_if = lab.ns_if.as_str();
    // Probing XDP on the fresh pair (4 rx queues each way) attaches the filter natively,
    // then detaches it.
    let out = lab.probe_xdp();
    assert!(
        out.contains("native (driver mode): attached and detached"),
        "{out}"
    );
    assert!(!xdp_attached(&lab), "the probe detached");
    // Start the namespace from known, untuned values (a new namespace starts from the
    // kernel defaults, not the host's).
    for (path, value) in NET.iter().zip(["128", "128", "32768 60999"]) {
        run(&[
            "ip",
            "netns",
            "exec",
            &lab.ns,
            "sh",
            "-c",
            &format!("echo {value} > {path}"),
        ]);
    }
    // One queue to start with, set by tune itself (veth takes `ethtool -L` within the
    // queues it was created with): the AF_XDP dataplane wants one queue per core.
    let (ok, out) = lab.petrel(&[
        "tune",
        "--apply",
        "--only",
        "nic",
        "--iface",
        ns_if,
        "--cores",
        "0",
        "--dataplane",
        "xdp",
        "--connections",
        "1000",
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("[nic] {ns_if} queues: 4 → 1  (applied)")),
        "{out}"
    );
    assert_eq!(lab.ns_rx_queues(), 1);

    let before = host_state(&lab.host_if);
    let scale = [
        "--iface",
        ns_if,
        "--cores",
        "0,1",
        "--connections",
        "1000000",
    ];

    // Dry run: every change is listed, host-global ones included, and nothing changes.
    let (ok, out) = lab.petrel(&[&["tune", "--dry-run"][..], &scale].concat());
    assert!(ok, "{out}");
    for line in [
        "[net] net.core.somaxconn: 128 → 65535  (dry run: not changed)",
        "[net] net.ipv4.tcp_max_syn_backlog: 128 → 65535  (dry run: not changed)",
        "[net] net.ipv4.ip_local_port_range: 32768 60999 → 1024 65535  (dry run: not changed)",
        &format!("[nic] {ns_if} queues: 1 → 2  (dry run: not changed)"),
        "[fs] fs.nr_open: 1048576 → 3000000  (dry run: not changed)",
        "→ 1500000/1500000  (dry run: not changed)",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert_eq!(lab.ns_read(NET[0]), "128");
    assert_eq!(lab.ns_rx_queues(), 1);
    assert_eq!(host_state(&lab.host_if), before);

    // Apply, namespaced scopes only.
    let (ok, out) = lab.petrel(&[&["tune", "--apply", "--only", "net,nic"][..], &scale].concat());
    assert!(ok, "{out}");
    assert!(
        out.contains("[net] net.core.somaxconn: 128 → 65535  (applied)"),
        "{out}"
    );
    assert!(
        out.contains(&format!("[nic] {ns_if} queues: 1 → 2  (applied)")),
        "{out}"
    );
    assert!(
        out.contains("[fs] fs.nr_open: 1048576 → 3000000  (skipped: not in --only)"),
        "{out}"
    );
    assert_eq!(lab.ns_read(NET[0]), "65535");
    assert_eq!(lab.ns_read(NET[1]), "65535");
    assert_eq!(lab.ns_read(NET[2]), "1024 65535");
    assert_eq!(lab.ns_rx_queues(), 2);
    assert_eq!(host_state(&lab.host_if), before, "the host is untouched");

    // Doctor in the namespace now: the namespaced lines pass; the descriptor limit of
    // this machine (hard 20,000) still blocks a million, so it exits 1.
    let (ok, out) = lab.petrel(&[&["doctor"][..], &scale].concat());
    assert!(!ok, "{out}");
    assert!(out.contains("[ok  ] net.core.somaxconn"), "{out}");
    assert!(out.contains(&format!("[ok  ] {ns_if}: queues")), "{out}");
    assert!(out.contains("[FAIL] RLIMIT_NOFILE hard"), "{out}");
    assert!(out.contains("no queue interrupts found"), "{out}");
    assert!(out.contains("driver veth implements XDP"), "{out}");
    // A second tune has nothing namespaced left to do.
    let (ok, out) = lab.petrel(&[&["tune", "--dry-run", "--only", "net,nic"][..], &scale].concat());
    assert!(ok, "{out}");
    assert!(!out.contains("[net]") && !out.contains("[nic]"), "{out}");

    // With 2 rx queues against the peer's 4 tx queues, veth refuses native XDP: the
    // probe says so and falls back to generic mode.
    let out = lab.probe_xdp();
    assert!(
        out.contains("generic (SKB) mode only: native refused when probing"),
        "{out}"
    );
    assert!(
        out.contains("as many rx queues as its peer has tx queues"),
        "{out}"
    );
    assert!(!xdp_attached(&lab), "the probe detached");
    assert_eq!(host_state(&lab.host_if), before);
}

#[test]
#[ignore = "needs root (every IRQ's affinity); scripts/test.sh runs it as root and in CI"]
fn irq_affinity_is_only_shown_by_a_dry_run_on_the_host() {
    assert!(
        is_root(),
        "reading every IRQ's affinity needs root: run as root"
    );
    // On the host's default interface, pinned to one core: any queue IRQ not on that
    // core is listed as an [irq] change, and a dry run leaves every affinity as it was.
    let before: BTreeMap<String, String> = host_state("lo");
    let out = Command::new(PETREL)
        .args(["tune", "--dry-run", "--cores", "1", "--connections", "1000"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for line in text.lines().filter(|l| l.starts_with("[irq]")) {
        assert!(line.ends_with("→ 1  (dry run: not changed)"), "{line}");
    }
    eprintln!("{text}");
    assert_eq!(host_state("lo"), before);
}
