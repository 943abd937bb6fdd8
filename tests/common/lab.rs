//! The veth lab for end-to-end tests over the AF_XDP dataplane.
//!
//! `scripts/veth-lab.sh` builds namespace `petrel-e2e` with a veth pair: the server runs
//! in the root namespace with `--dataplane xdp` on `petrel-eh` (10.77.2.1), and the test's
//! clients run inside the namespace (10.77.2.2). The test thread itself moves into the
//! namespace ([`Lab::enter_clients`]), so every client socket it — or a thread or runtime
//! it starts afterwards — opens is a kernel-TCP client on the far end of the veth; the
//! server is spawned from the root namespace ([`Lab::in_root`]).
//!
//! One lab per test process, shared by the servers a test starts, torn down when the last
//! handle drops (also on panic). The xdp tests run one at a time (`.config/nextest.toml`,
//! test group `veth-lab`), since they share these names and addresses.
//!
//! The dpdk tests use a second lab of their own ([`DPDK_LAB`], namespace `petrel-e2d`):
//! the same shape, but the host end has no address — the DPDK port (`net_af_packet` on
//! it) owns [`DPDK_LAB`]'s host address and answers ARP itself; a kernel with the same
//! address would answer the SYNs too and reset the connections.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use petrel_dataplane::sys::netns::NetNs;

/// Namespace of the clients.
pub const NS: &str = "petrel-e2e";
/// The server's end of the veth (root namespace).
pub const HOST_IF: &str = "petrel-eh";
/// The clients' end (inside [`NS`]).
pub const PEER_IF: &str = "petrel-en";
/// The server's address on [`HOST_IF`].
pub const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 1);
/// The clients' address.
pub const PEER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 2);
/// The port the server listens on.
pub const PORT: u16 = 9500;
/// The source network `petrel bench --client-mode xdp` owns on [`PEER_IF`] (the host
/// routes it through the veth; unlike the other labs', so they can coexist).
pub const CLIENT_NET: &str = "10.79.0.0/16";

/// The names and addresses of one lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabSpec {
    /// Namespace of the clients.
    pub ns: &'static str,
    /// The server's end of the veth (root namespace).
    pub host_if: &'static str,
    /// The clients' end.
    pub peer_if: &'static str,
    /// The server's address.
    pub host_addr: Ipv4Addr,
    /// The clients' address.
    pub peer_addr: Ipv4Addr,
    /// Routed to the host end for the AF_XDP load generator; empty: none.
    pub client_net: &'static str,
    /// The host end has no kernel address (a DPDK port owns `host_addr`).
    pub bare_host: bool,
}

/// The AF_XDP (and kernel-on-the-lab) tests' lab.
pub const XDP_LAB: LabSpec = LabSpec {
    ns: NS,
    host_if: HOST_IF,
    peer_if: PEER_IF,
    host_addr: HOST_ADDR,
    peer_addr: PEER_ADDR,
    client_net: CLIENT_NET,
    bare_host: false,
};

/// The DPDK tests' lab: `net_af_packet` on `petrel-dh`, which has no kernel address.
pub const DPDK_LAB: LabSpec = LabSpec {
    ns: "petrel-e2d",
    host_if: "petrel-dh",
    peer_if: "petrel-dn",
    host_addr: Ipv4Addr::new(10, 77, 5, 1),
    peer_addr: Ipv4Addr::new(10, 77, 5, 2),
    client_net: "",
    bare_host: true,
};

/// A lab of the process and its spec.
type LabEntry = (LabSpec, Weak<Lab>);

/// A running lab.
pub struct Lab {
    spec: LabSpec,
    root: NetNs,
    clients: NetNs,
}

fn lab_script(spec: &LabSpec, action: &str) -> std::process::Output {
    Command::new("bash")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/veth-lab.sh"))
        .arg(action)
        .env("PETREL_LAB_NS", spec.ns)
        .env("PETREL_LAB_HOST_IF", spec.host_if)
        .env("PETREL_LAB_PEER_IF", spec.peer_if)
        .env("PETREL_LAB_HOST_ADDR", spec.host_addr.to_string())
        .env("PETREL_LAB_PEER_ADDR", spec.peer_addr.to_string())
        .env("PETREL_LAB_CLIENT_NET", spec.client_net)
        .env(
            "PETREL_LAB_BARE_HOST",
            if spec.bare_host { "1" } else { "0" },
        )
        .output()
        .expect("run scripts/veth-lab.sh")
}

/// Whether this process may build the lab (root), so xdp tests can say why they skip.
pub fn available() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Lab {
    /// The process's AF_XDP lab, built on first use.
    pub fn shared() -> Arc<Lab> {
        Lab::shared_for(XDP_LAB)
    }

    /// The process's lab `spec`, built on first use.
    pub fn shared_for(spec: LabSpec) -> Arc<Lab> {
        static CURRENT: OnceLock<Mutex<Vec<LabEntry>>> = OnceLock::new();
        let mut labs = CURRENT
            .get_or_init(|| Mutex::new(Vec::new()))
            .lock()
            .expect("lab lock");
        labs.retain(|(_, lab)| lab.strong_count() > 0);
        if let Some(lab) = labs
            .iter()
            .find(|(s, _)| *s == spec)
            .and_then(|(_, lab)| lab.upgrade())
        {
            return lab;
        }
        // Opened before anything moves this thread: the namespace servers run in.
        let root = NetNs::current().expect("current network namespace");
        let out = lab_script(&spec, "up");
        assert!(
            out.status.success(),
            "veth-lab up failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let clients = NetNs::named(spec.ns).expect("the lab namespace");
        let lab = Arc::new(Lab {
            spec,
            root,
            clients,
        });
        labs.push((spec, Arc::downgrade(&lab)));
        lab
    }

    /// Where clients connect.
    pub fn server_addr(&self) -> SocketAddr {
        SocketAddr::from((self.spec.host_addr, PORT))
    }

    /// Its names and addresses.
    pub fn spec(&self) -> &LabSpec {
        &self.spec
    }

    /// Runs `f` (e.g. spawning the server) in the root namespace, whichever namespace the
    /// calling thread is in.
    pub fn in_root<R>(&self, f: impl FnOnce() -> R) -> R {
        self.root.run(f).expect("enter the root network namespace")
    }

    /// Moves the calling thread into the clients' namespace for the rest of its life.
    pub fn enter_clients(&self) {
        self.clients.enter().expect("enter the lab namespace");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The script must run in the root namespace, where the host end lives.
        let spec = self.spec;
        let out = self.root.run(|| lab_script(&spec, "down"));
        match out {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "veth-lab down failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("veth-lab down: cannot enter the root namespace: {e}"),
        }
    }
}
