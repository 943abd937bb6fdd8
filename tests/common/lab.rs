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

/// A running lab.
pub struct Lab {
    root: NetNs,
    clients: NetNs,
}

fn lab_script(action: &str) -> std::process::Output {
    Command::new("bash")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/veth-lab.sh"))
        .arg(action)
        .env("PETREL_LAB_NS", NS)
        .env("PETREL_LAB_HOST_IF", HOST_IF)
        .env("PETREL_LAB_PEER_IF", PEER_IF)
        .env("PETREL_LAB_HOST_ADDR", HOST_ADDR.to_string())
        .env("PETREL_LAB_PEER_ADDR", PEER_ADDR.to_string())
        .env("PETREL_LAB_CLIENT_NET", CLIENT_NET)
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
    /// The process's lab, built on first use.
    pub fn shared() -> Arc<Lab> {
        static CURRENT: OnceLock<Mutex<Weak<Lab>>> = OnceLock::new();
        let mut current = CURRENT
            .get_or_init(|| Mutex::new(Weak::new()))
            .lock()
            .expect("lab lock");
        if let Some(lab) = current.upgrade() {
            return lab;
        }
        // Opened before anything moves this thread: the namespace servers run in.
        let root = NetNs::current().expect("current network namespace");
        let out = lab_script("up");
        assert!(
            out.status.success(),
            "veth-lab up failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let clients = NetNs::named(NS).expect("the lab namespace");
        let lab = Arc::new(Lab { root, clients });
        *current = Arc::downgrade(&lab);
        lab
    }

    /// Where clients connect.
    pub fn server_addr(&self) -> SocketAddr {
        SocketAddr::from((HOST_ADDR, PORT))
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
        let out = self.root.run(|| lab_script("down"));
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
