//! Smoke runs of `petrel bench`: every scenario for a second or two with small N against
//! a real `petrel serve`, so the load generator keeps working. The assertions are about
//! the results being consistent (every send acked, every expected delivery arrived,
//! histogram counts matching the counters), never about timing.
//!
//! `xdp_client::*` run the userspace-TCP client mode (`--client-mode xdp`) from the veth
//! lab's namespace against a server of either dataplane at the lab's host address (root
//! only; one at a time, in nextest's `veth-lab` group).

#[allow(unused_imports)] // the shared harness re-exports more than these tests use
mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

/// A `petrel serve` on 127.0.0.1 with a temporary data directory and the rate limit off.
struct Server {
    child: Child,
    addr: SocketAddr,
    key_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        Server::start_in(tempfile::tempdir().expect("tempdir"), "127.0.0.1:0")
    }

    /// A server on `listen` with its data (and token key, if already written) in `dir`.
    fn start_in(dir: tempfile::TempDir, listen: &str) -> Server {
        Server::start_with(dir, listen, "")
    }

    /// [`Server::start_in`] with `extra` lines in its config.
    fn start_with(dir: tempfile::TempDir, listen: &str, extra: &str) -> Server {
        let config = dir.path().join("petrel.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\nlisten = [\"{listen}\"]\nlog_level = \"warn\"\n\
                 max_connections = 15000\nrate_limit_per_second = 0\n{extra}",
                dir.path().display().to_string()
            ),
        )
        .expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_petrel"))
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn petrel serve");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("petrel serve exited before printing its address")
                .expect("read stdout");
            if let Some(rest) = line.strip_prefix("petrel: serving on ") {
                break rest
                    .split_whitespace()
                    .next()
                    .expect("address")
                    .parse()
                    .expect("socket address");
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            addr,
            key_file: dir.path().join("keys"),
            _dir: dir,
        }
    }

    /// Runs `petrel bench` against this server with `--json`; returns the report.
    fn bench(&self, args: &[&str]) -> Value {
        let output = Command::new(env!("CARGO_BIN_EXE_petrel"))
            .arg("bench")
            .args(args)
            .args(["--json", "--quiet", "--warmup", "0.5", "--duration", "1.5"])
            .arg("--server")
            .arg(self.addr.to_string())
            .arg("--key-file")
            .arg(&self.key_file)
            .arg("--server-pid")
            .arg(self.child.id().to_string())
            .output()
            .expect("run petrel bench");
        report(output)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn report(output: Output) -> Value {
    assert!(
        output.status.success(),
        "petrel bench failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "bench output is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn u(v: &Value, path: &str) -> u64 {
    path.split('.')
        .fold(v, |v, k| &v[k])
        .as_u64()
        .unwrap_or_else(|| panic!("{path} missing in {v:#}"))
}

/// Every message acked exactly once, every expected delivery arrived, and the histograms
/// hold exactly the measured messages.
fn assert_consistent(r: &Value, connections: u64, fanout: u64) {
    assert_eq!(u(r, "connections"), connections, "{r:#}");
    assert_eq!(u(r, "counts.logged_in"), connections, "{r:#}");
    assert_eq!(u(r, "counts.login_failures"), 0);
    assert_eq!(u(r, "counts.disconnects"), 0);
    assert_eq!(u(r, "fanout"), fanout);
    let sent = u(r, "counts.sent");
    assert!(sent > 0, "nothing sent: {r:#}");
    assert_eq!(u(r, "counts.acked"), sent, "{r:#}");
    assert_eq!(u(r, "counts.send_errors"), 0, "{r:#}");
    assert_eq!(u(r, "counts.duplicates"), 0);
    assert_eq!(u(r, "counts.skipped"), 0);
    assert_eq!(u(r, "counts.delivered"), sent * fanout, "{r:#}");
    assert_eq!(u(r, "expected_deliveries"), sent * fanout);
    let measured = u(r, "counts.sent_measured");
    assert!(measured > 0 && measured <= sent);
    assert_eq!(u(r, "counts.acked_measured"), measured);
    assert_eq!(u(r, "ack.count"), measured);
    assert_eq!(u(r, "counts.delivered_measured"), measured * fanout);
    assert_eq!(u(r, "delivery.count"), measured * fanout);
    assert_eq!(u(r, "login.count"), connections);
    assert!(r["ack"]["p50_us"].as_f64().unwrap() <= r["ack"]["max_us"].as_f64().unwrap());
    let server = &r["server_figures"];
    assert!(u(server, "rss_connected_kib") > 0, "{r:#}");
}

/// A fresh token signing key in `dir/keys` (the key file format `petrel serve` reads).
fn new_key_file(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("keys");
    let secret: [u8; 32] = rand::random();
    std::fs::write(&path, format!("bench-test {}\n", hex::encode(secret))).expect("key");
    path
}

/// The load generator started before its server: the connects are refused, back off and
/// are retried until the server is up, and the report counts the refusals.
#[test]
fn connect_backs_off_while_refused_and_gets_in_once_the_server_is_up() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    // The server's token key, written first: the bench mints its tokens with it.
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = new_key_file(dir.path());
    let bench = Command::new(env!("CARGO_BIN_EXE_petrel"))
        .args([
            "bench",
            "connect",
            "-n",
            "50",
            "--json",
            "--quiet",
            "--duration",
            "0.5",
        ])
        .args(["--connect-backoff-ms", "50", "--connect-retries", "12"])
        .arg("--server")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--key-file")
        .arg(&key_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run petrel bench");
    std::thread::sleep(Duration::from_millis(800));
    let _server = Server::start_in(dir, &format!("127.0.0.1:{port}"));
    let r = report(bench.wait_with_output().expect("bench output"));
    assert_eq!(u(&r, "counts.logged_in"), 50, "{r:#}");
    assert_eq!(u(&r, "counts.login_failures"), 0, "{r:#}");
    assert!(
        u(&r, "counts.refused") >= 50,
        "every connection was refused first: {r:#}"
    );
}

#[test]
fn a_bad_token_is_not_retried() {
    let server = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let wrong_key = new_key_file(dir.path());
    // Were the token refusals retried, a minute's back-off would run into the 30 s
    // connect timeout and the run would end with that instead.
    let output = Command::new(env!("CARGO_BIN_EXE_petrel"))
        .args([
            "bench",
            "connect",
            "-n",
            "5",
            "--quiet",
            "--duration",
            "0.5",
        ])
        .args(["--connect-backoff-ms", "60000", "--connect-timeout", "30"])
        .arg("--server")
        .arg(server.addr.to_string())
        .arg("--key-file")
        .arg(&wrong_key)
        .output()
        .expect("run petrel bench");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refused: Token"), "{stderr}");
}

#[test]
fn connect_holds_and_heartbeats() {
    let server = Server::start();
    let r = server.bench(&["connect", "-n", "300", "--heartbeat", "0.5"]);
    assert_eq!(u(&r, "counts.logged_in"), 300);
    assert_eq!(u(&r, "login.count"), 300);
    assert_eq!(u(&r, "counts.sent"), 0);
    // 300 connections, one ping each per 0.5 s, over 2 s.
    let pings = u(&r, "counts.pings");
    assert!(pings >= 300, "{r:#}");
    assert_eq!(u(&r, "counts.pongs"), pings);
    assert_eq!(u(&r, "ping.count"), pings);
    assert!(u(&r, "server_figures.rss_idle_kib") > 0);
    assert_eq!(r["client_mode"], "kernel");
}

#[test]
fn chat1v1_open_loop() {
    let server = Server::start();
    let r = server.bench(&["chat1v1", "--pairs", "10", "--rate", "400"]);
    assert_consistent(&r, 20, 1);
    // The open-loop schedule sends exactly rate × time (2 s at 400/s).
    assert_eq!(u(&r, "counts.sent"), 800);
}

#[test]
fn chat1v1_over_websocket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(dir, "127.0.0.1:0", "websocket = [\"127.0.0.1:0\"]\n");
    let r = server.bench(&["chat1v1", "--pairs", "10", "--rate", "400", "--ws"]);
    assert_consistent(&r, 20, 1);
    assert_eq!(u(&r, "counts.sent"), 800);
    // A plain client on the WebSocket port is refused at its upgrade, not served.
    let output = Command::new(env!("CARGO_BIN_EXE_petrel"))
        .args([
            "bench",
            "connect",
            "-n",
            "1",
            "--json",
            "--quiet",
            "--duration",
            "0.5",
        ])
        .args(["--connect-retries", "0", "--server"])
        .arg(server.addr.to_string())
        .arg("--key-file")
        .arg(&server.key_file)
        .output()
        .expect("run petrel bench");
    assert!(
        !output.status.success()
            || report(output)
                .get("counts")
                .is_some_and(|c| c["logged_in"] == 0),
        "a plain client logged in on a WebSocket port"
    );
}

#[test]
fn chat1v1_flat_out() {
    let server = Server::start();
    let r = server.bench(&["chat1v1", "--pairs", "4", "--window", "4"]);
    assert_consistent(&r, 8, 1);
    assert!(r["rate"].is_null());
}

#[test]
fn group_fans_out_to_every_other_member() {
    let server = Server::start();
    let r = server.bench(&["group", "--groups", "3", "--members", "5", "--rate", "150"]);
    assert_consistent(&r, 15, 4);
}

#[test]
fn chatroom_fans_out_to_every_other_member() {
    let server = Server::start();
    let r = server.bench(&["chatroom", "--members", "12", "--rate", "100"]);
    assert_consistent(&r, 12, 11);
}

#[test]
fn broadcast_reaches_every_follower() {
    let server = Server::start();
    let r = server.bench(&["broadcast", "--followers", "40", "--rate", "20"]);
    assert_consistent(&r, 41, 40);
}

#[test]
fn worker_processes_merge_their_results() {
    // 3 processes of at most 10 connections; the room spans all of them, so deliveries
    // cross processes and the histograms are merged from three serialized ones.
    let server = Server::start();
    let r = server.bench(&[
        "chatroom",
        "--members",
        "30",
        "--rate",
        "60",
        "--conns-per-process",
        "10",
    ]);
    assert_eq!(u(&r, "client_processes"), 3);
    assert_consistent(&r, 30, 29);
}

#[test]
fn broadcast_over_worker_processes() {
    let server = Server::start();
    let r = server.bench(&[
        "broadcast",
        "--followers",
        "25",
        "--rate",
        "20",
        "--conns-per-process",
        "10",
    ]);
    assert_eq!(u(&r, "client_processes"), 3);
    assert_consistent(&r, 26, 25);
}

#[test]
fn groups_stay_whole_in_a_worker_process() {
    let server = Server::start();
    let r = server.bench(&[
        "group",
        "--groups",
        "4",
        "--members",
        "4",
        "--rate",
        "100",
        "--conns-per-process",
        "9",
    ]);
    // Two groups (8 connections) per process.
    assert_eq!(u(&r, "client_processes"), 2);
    assert_consistent(&r, 16, 3);
}

#[test]
fn worker_processes_spread_over_source_addresses() {
    // Two processes, connections round-robin over two loopback source addresses.
    let server = Server::start();
    let r = server.bench(&[
        "chat1v1",
        "--pairs",
        "6",
        "--rate",
        "120",
        "--conns-per-process",
        "6",
        "--source-ips",
        "127.0.0.2-127.0.0.3",
    ]);
    assert_eq!(u(&r, "client_processes"), 2);
    assert_consistent(&r, 12, 1);
}

#[test]
fn spawn_server_and_table_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let svg = dir.path().join("latency.svg");
    let output = Command::new(env!("CARGO_BIN_EXE_petrel"))
        .args(["bench", "chat1v1", "--pairs", "2", "--rate", "100"])
        .args([
            "--warmup",
            "0.2",
            "--duration",
            "1",
            "--quiet",
            "--spawn-server",
        ])
        .arg("--svg")
        .arg(&svg)
        .output()
        .expect("run petrel bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("client mode: kernel sockets, 1 process"),
        "{stdout}"
    );
    assert!(stdout.contains("send → ack"), "{stdout}");
    assert!(stdout.contains("(spawned)"), "{stdout}");
    assert!(!stdout.contains("WARNING"), "{stdout}");
    let plot = std::fs::read_to_string(&svg).expect("svg written");
    assert!(plot.starts_with("<svg") && plot.contains("<polyline"));
}

#[test]
fn bad_arguments_are_clear_errors() {
    for (args, expected) in [
        (&["chat1v1", "--rate=-5"][..], "--rate must be a positive"),
        (&["chat1v1", "--rate", "0"][..], "--rate must be a positive"),
        (&["group", "--members", "1"][..], "at least 2"),
        (
            &["connect", "--client-mode", "xdp"][..],
            "needs --xdp-iface",
        ),
        (
            &[
                "connect",
                "--client-mode",
                "xdp",
                "--xdp-iface",
                "lo",
                "--xdp-source-net",
                "10.78.0.0/33",
            ][..],
            "prefix length 33 is over 32",
        ),
        (
            &[
                "connect",
                "--client-mode",
                "xdp",
                "--xdp-iface",
                "lo",
                "--source-ips",
                "10.1.0.1",
            ][..],
            "outside --xdp-source-net",
        ),
        (
            &[
                "connect",
                "-n",
                "70000000",
                "--client-mode",
                "xdp",
                "--xdp-iface",
                "lo",
                "--xdp-source-net",
                "10.78.0.0/30",
            ][..],
            "has 2",
        ),
        (
            &["connect", "--key-file", "/nonexistent/keys"][..],
            "cannot read the token key file",
        ),
        (
            &["connect", "--source-ips", "10.0.0.9-10.0.0.1"][..],
            "ends before",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_petrel"))
            .arg("bench")
            .args(args)
            .output()
            .expect("run petrel bench");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn unreachable_server_is_a_clear_error() {
    // A port nobody listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("k1 {}\n", "ab".repeat(32))).expect("key file");
    let output = Command::new(env!("CARGO_BIN_EXE_petrel"))
        .args(["bench", "connect", "-n", "3", "--quiet", "--server"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--key-file")
        .arg(&keys)
        .output()
        .expect("run petrel bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("Connection refused"), "{stderr}");
    assert!(stderr.contains("0 of 3 connections logged in"), "{stderr}");
}

/// `petrel bench --client-mode xdp` from the lab's namespace: every connection is
/// userspace TCP over AF_XDP sockets on the lab's client end, from the lab's client
/// network (no kernel socket, no address the namespace's kernel has).
mod xdp_client {
    use serde_json::Value;

    use super::common::{Dataplane, TestServer, lab};
    use super::{assert_consistent, report, u};

    fn bench(server: &TestServer, args: &[&str]) -> Value {
        // `ip netns exec` (not only this thread's setns) so the bench sees the
        // namespace's own /sys, where it reads the interface's queues and MAC address.
        let output = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                lab::NS,
                env!("CARGO_BIN_EXE_petrel"),
                "bench",
            ])
            .args(args)
            .args(["--json", "--quiet", "--warmup", "0.5", "--duration", "1.5"])
            .args(["--client-mode", "xdp", "--xdp-iface", lab::PEER_IF])
            .args(["--xdp-source-net", lab::CLIENT_NET])
            .arg("--server")
            .arg(server.addr.to_string())
            .arg("--key-file")
            .arg(server.data_dir().join("keys"))
            .arg("--server-pid")
            .arg(server.pid().to_string())
            .output()
            .expect("run petrel bench");
        let r = report(output);
        assert_eq!(r["client_mode"], "xdp", "{r:#}");
        assert_eq!(u(&r, "client_processes"), 1, "{r:#}");
        r
    }

    /// Connect, 1:1 and a chatroom over one server of `dataplane`.
    fn scenarios(dataplane: Dataplane) {
        // The AF_XDP client runs on the lab's veth, whichever server it talks to: the
        // same privilege as the xdp dataplane.
        Dataplane::Xdp.require();
        let server = TestServer::start_on_lab(dataplane, "rate_limit_per_second = 0\n");
        // More connections than one source address has ports for would need a second
        // address; 3,000 spread over one address's ports and heartbeat twice a second.
        let r = bench(&server, &["connect", "-n", "3000", "--heartbeat", "0.5"]);
        assert_eq!(u(&r, "counts.logged_in"), 3000, "{r:#}");
        assert_eq!(u(&r, "counts.login_failures"), 0, "{r:#}");
        let pings = u(&r, "counts.pings");
        assert!(pings >= 3000, "{r:#}");
        assert_eq!(u(&r, "counts.pongs"), pings, "{r:#}");

        let r = bench(
            &server,
            &[
                "chat1v1",
                "--pairs",
                "20",
                "--rate",
                "400",
                "--first-user",
                "2000000000",
            ],
        );
        assert_consistent(&r, 40, 1);
        assert_eq!(u(&r, "counts.sent"), 800);

        let r = bench(
            &server,
            &[
                "chatroom",
                "--members",
                "12",
                "--rate",
                "100",
                "--first-user",
                "3000000000",
            ],
        );
        assert_consistent(&r, 12, 11);
    }

    #[test]
    #[ignore = "needs root (veth lab, XDP, AF_XDP); scripts/test.sh runs it as root and in CI"]
    fn against_a_kernel_server() {
        scenarios(Dataplane::Kernel);
    }

    #[test]
    #[ignore = "needs root (veth lab, XDP, AF_XDP); scripts/test.sh runs it as root and in CI"]
    fn against_an_xdp_server() {
        scenarios(Dataplane::Xdp);
    }
}
