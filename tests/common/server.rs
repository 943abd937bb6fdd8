//! A `petrel serve` child process with a temporary data directory, on any dataplane:
//! kernel sockets on 127.0.0.1, AF_XDP on the veth lab ([`super::lab`]) with the test's
//! clients inside the lab's namespace, or DPDK (`net_af_packet`) on the DPDK lab.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use petrel_control::{KeyRing, TokenSpec};
use petrel_proto::pb;

use super::lab::{self, Lab};

/// Which transport the server under test runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dataplane {
    /// Kernel sockets on loopback.
    Kernel,
    /// AF_XDP with userspace TCP on the veth lab; clients in the lab's namespace.
    Xdp,
    /// DPDK (`net_af_packet` on a veth) with userspace TCP on the DPDK lab; clients in its
    /// namespace. Only built with the `dpdk` feature.
    Dpdk,
}

impl Dataplane {
    /// The listen address a [`TestServer`] on this dataplane is configured with: port 0
    /// on loopback for kernel sockets, the lab's host address for the others (what a
    /// test names in per-listener settings such as `proxy_protocol` or `websocket`).
    pub fn listen_addr(self) -> SocketAddr {
        match self {
            Dataplane::Kernel => SocketAddr::from(([127, 0, 0, 1], 0)),
            Dataplane::Xdp => SocketAddr::from((lab::HOST_ADDR, lab::PORT)),
            Dataplane::Dpdk => SocketAddr::from((lab::DPDK_LAB.host_addr, lab::PORT)),
        }
    }

    /// Fails the test, saying why, unless this machine can run the dataplane (xdp needs
    /// root). The tests that need it are `#[ignore]`d, so a run without root lists them
    /// as skipped; a run that asks for them (scripts/test.sh as root, and always in CI)
    /// fails loudly where the privilege is missing instead of passing without testing.
    pub fn require(self) {
        assert!(
            self == Dataplane::Kernel || lab::available(),
            "the {self:?} dataplane needs root (veth lab, XDP, AF_XDP, DPDK): run as root, \
             or leave the ignored root-only tests out (plain `cargo nextest run` does)"
        );
    }

    /// The lab this dataplane's servers and clients run on (none for kernel sockets).
    pub fn lab(self) -> Option<Arc<Lab>> {
        match self {
            Dataplane::Kernel => None,
            Dataplane::Xdp => Some(Lab::shared()),
            Dataplane::Dpdk => Some(Lab::shared_for(lab::DPDK_LAB)),
        }
    }
}

/// A running server. Killed (SIGKILL) on drop if still running.
pub struct TestServer {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The listeners that speak TLS besides plaintext ones (`[tls] listen`), as printed.
    pub tls_addrs: Vec<SocketAddr>,
    /// Every listener, in the order printed (`addr` is the first).
    pub addrs: Vec<SocketAddr>,
    /// The listeners that expect a PROXY protocol header, as printed.
    pub proxy_addrs: Vec<SocketAddr>,
    /// The listeners that speak WebSocket, as printed.
    pub ws_addrs: Vec<SocketAddr>,
    /// The metrics endpoint, when the config set `metrics_addr` (in the root namespace).
    pub metrics: Option<SocketAddr>,
    /// The media service, when the config has a `[media]` table with an `addr`.
    pub media: Option<SocketAddr>,
    /// The HTTP API, when the config set `api_addr` (in the root namespace).
    pub api: Option<SocketAddr>,
    /// The dispatch directory, when the config has a `[dispatch]` table with an `addr`.
    pub dispatch: Option<SocketAddr>,
    pub dataplane: Dataplane,
    data_dir: PathBuf,
    extra_config: String,
    _tmp: Option<tempfile::TempDir>,
    /// Dropped after the child is killed (see `Drop`).
    lab: Option<Arc<Lab>>,
}

impl TestServer {
    /// Starts a kernel-socket server on a fresh data directory. `extra_config` is appended
    /// to the TOML config file (e.g. `"login_deadline_secs = 1\n"`).
    pub fn start(extra_config: &str) -> TestServer {
        TestServer::start_on(Dataplane::Kernel, extra_config)
    }

    /// Starts a server on `dataplane`. With [`Dataplane::Xdp`] the calling thread moves
    /// into the lab's namespace, so the clients it opens from now on reach the server
    /// across the veth.
    pub fn start_on(dataplane: Dataplane, extra_config: &str) -> TestServer {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().to_path_buf();
        let lab = dataplane.lab();
        let mut server = TestServer::spawn(&data_dir, extra_config, None, lab, dataplane);
        server._tmp = Some(tmp);
        server
    }

    /// Starts a server on `dataplane` at the lab's host address, whichever the
    /// dataplane: kernel sockets too (for clients that need the veth, such as `petrel
    /// bench --client-mode xdp`). The calling thread moves into the lab's namespace.
    pub fn start_on_lab(dataplane: Dataplane, extra_config: &str) -> TestServer {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().to_path_buf();
        let lab = dataplane.lab().unwrap_or_else(Lab::shared);
        let listen = lab.server_addr();
        let mut server =
            TestServer::spawn(&data_dir, extra_config, Some(listen), Some(lab), dataplane);
        server._tmp = Some(tmp);
        server
    }

    /// Starts a server on `dataplane` in an existing data directory (kept after the
    /// server is gone).
    pub fn start_in(dataplane: Dataplane, data_dir: &Path, extra_config: &str) -> TestServer {
        std::fs::create_dir_all(data_dir).expect("data dir");
        let lab = dataplane.lab();
        TestServer::spawn(data_dir, extra_config, None, lab, dataplane)
    }

    /// Starts an xdp server listening on `addr` of the lab's subnet, an address the
    /// kernel does not have: Petrel answers ARP for it and owns every TCP port on it.
    pub fn start_xdp_owning(addr: std::net::Ipv4Addr, extra_config: &str) -> TestServer {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().to_path_buf();
        let listen = SocketAddr::from((addr, lab::PORT));
        let mut server = TestServer::spawn(
            &data_dir,
            extra_config,
            Some(listen),
            Some(Lab::shared()),
            Dataplane::Xdp,
        );
        server._tmp = Some(tmp);
        server
    }

    /// The lab this server runs on (xdp only).
    pub fn lab(&self) -> Option<&Lab> {
        self.lab.as_deref()
    }

    fn spawn(
        data_dir: &Path,
        extra_config: &str,
        listen: Option<SocketAddr>,
        lab: Option<Arc<Lab>>,
        dataplane: Dataplane,
    ) -> TestServer {
        let config_path = data_dir.join("petrel.toml");
        let transport = match (&lab, dataplane) {
            // A kernel server whose test lists its own listeners.
            (None, _)
                if extra_config
                    .lines()
                    .take_while(|l| !l.starts_with('['))
                    .any(|l| l.starts_with("listen =")) =>
            {
                String::new()
            }
            (None, _) | (Some(_), Dataplane::Kernel) => format!(
                "listen = [\"{}\"]\n",
                listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
            ),
            (Some(lab), Dataplane::Xdp) => format!(
                "dataplane = \"xdp\"\niface = {:?}\nlisten = [\"{}\"]\n",
                lab::HOST_IF,
                listen.unwrap_or_else(|| lab.server_addr())
            ),
            (Some(lab), Dataplane::Dpdk) => {
                // net_af_packet fans a port's packets out over `qpairs` sockets by flow
                // hash: exactly one per core the server runs (one unless the test names
                // its cores), or a flow would land on a queue nobody polls.
                let cores = extra_config
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("cores ="))
                    .map_or(1, |list| list.matches(',').count() + 1);
                let cores_line = if extra_config.contains("cores =") {
                    String::new()
                } else {
                    "cores = [0]\n".to_owned()
                };
                format!(
                    "dataplane = \"dpdk\"\ndpdk_args = \"-l 1 --no-huge -m 512 --no-pci \
                     --no-shconf --no-telemetry --vdev=net_af_packet0,iface={},qpairs={cores}\"\n\
                     listen = [\"{}\"]\n{cores_line}",
                    lab.spec().host_if,
                    listen.unwrap_or_else(|| lab.server_addr())
                )
            }
        };
        // PETREL_TEST_CORES=1 runs the server on one core (the home core alone: no rings;
        // with AF_XDP that one loop reads both of the lab's queues); by default it uses
        // every CPU (two here: rings in use).
        let one_core = std::env::var("PETREL_TEST_CORES").is_ok_and(|v| v == "1")
            && !extra_config.contains("cores =")
            && dataplane != Dataplane::Dpdk;
        let transport = if one_core {
            format!("{transport}cores = [0]\n")
        } else {
            transport
        };
        // PETREL_TEST_OWNERSHIP=home runs one control plane on core 0 and I/O only on the
        // other cores (the fallback layout; per-core is the default); scripts/test.sh
        // runs the main suites that way too.
        let transport = match std::env::var("PETREL_TEST_OWNERSHIP") {
            Ok(mode) if !extra_config.contains("ownership =") => {
                format!("{transport}ownership = {mode:?}\n")
            }
            _ => transport,
        };
        std::fs::write(
            &config_path,
            format!(
                "data_dir = {:?}\n{transport}log_level = \"warn\"\nmax_connections = 15000\n{extra_config}",
                data_dir.display().to_string()
            ),
        )
        .expect("write config");
        let mut command = Command::new(env!("CARGO_BIN_EXE_petrel"));
        command
            .args(["serve", "--config"])
            .arg(&config_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = match &lab {
            None => command.spawn(),
            Some(lab) => {
                let child = lab.in_root(|| command.spawn());
                lab.enter_clients();
                child
            }
        }
        .expect("spawn petrel serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut metrics = None;
        let mut media = None;
        let mut api = None;
        let mut dispatch = None;
        let mut tls_addrs = Vec::new();
        let mut proxy_addrs = Vec::new();
        let mut ws_addrs = Vec::new();
        let parse_list = |list: &str| -> Vec<SocketAddr> {
            list.split(", ")
                .map(|a| a.parse().expect("listener address"))
                .collect()
        };
        let addrs = loop {
            let line = lines
                .next()
                .expect("petrel serve exited before printing its address")
                .expect("read stdout");
            if let Some(rest) = line.strip_prefix("petrel: metrics on http://") {
                let addr = rest.strip_suffix("/metrics").expect("…/metrics");
                metrics = Some(addr.parse().expect("metrics address"));
            }
            if let Some(rest) = line.strip_prefix("petrel: media on http://") {
                media = Some(rest.parse().expect("media address"));
            }
            if let Some(rest) = line.strip_prefix("petrel: api on http://") {
                let addr = rest.strip_suffix("/v1").expect("…/v1");
                api = Some(addr.parse().expect("api address"));
            }
            if let Some(rest) = line
                .strip_prefix("petrel: dispatch on http://")
                .or_else(|| line.strip_prefix("petrel: dispatch on https://"))
            {
                dispatch = Some(rest.parse().expect("dispatch address"));
            }
            if let Some(rest) = line.strip_prefix("petrel: TLS on ") {
                tls_addrs = parse_list(rest);
            }
            if let Some(rest) = line.strip_prefix("petrel: PROXY protocol on ") {
                proxy_addrs = parse_list(rest);
            }
            if let Some(rest) = line.strip_prefix("petrel: WebSocket on ") {
                ws_addrs = parse_list(rest);
            }
            if let Some(rest) = line.strip_prefix("petrel: serving on ") {
                let list = rest.split(" (").next().expect("addresses");
                break parse_list(list);
            }
        };
        let addr = addrs[0];
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        TestServer {
            child: Some(child),
            addr,
            tls_addrs,
            addrs,
            proxy_addrs,
            ws_addrs,
            metrics,
            media,
            api,
            dispatch,
            dataplane,
            data_dir: data_dir.to_path_buf(),
            extra_config: extra_config.to_owned(),
            _tmp: None,
            lab,
        }
    }

    /// Sends SIGTERM and returns at once: the server drains, then exits. [`Self::stop`]
    /// (which signals again, harmlessly) waits for the exit.
    pub fn signal_stop(&self) {
        let child = self.child.as_ref().expect("server running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
    }

    /// Sends SIGTERM and waits for a clean exit (status 0).
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("server running");
        let pid = child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let exit = wait_timeout(&mut child, Duration::from_secs(30));
        assert!(exit.success(), "petrel serve exited with {exit}");
    }

    /// Waits (up to `limit`) for the server to exit by itself and returns its exit status.
    /// Whether the server process has exited (reaping it, as [`Self::wait_exit`] would).
    pub fn has_exited(&mut self) -> bool {
        let child = self.child.as_mut().expect("server started");
        child.try_wait().expect("try_wait").is_some()
    }

    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("server running");
        wait_timeout(&mut child, limit)
    }

    /// Sends SIGKILL (a crash: no shutdown, no flush) and waits for the process to go.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("server running");
        child.kill().expect("SIGKILL the server");
        let _ = child.wait();
    }

    /// Stops the server gracefully and starts it again on the same data directory and
    /// port.
    pub fn restart(&mut self) {
        self.stop();
        self.restart_stopped();
    }

    /// Starts a stopped server again on the same data directory and port.
    pub fn restart_stopped(&mut self) {
        assert!(self.child.is_none(), "server still running");
        let tmp = self._tmp.take();
        let mut again = TestServer::spawn(
            &self.data_dir,
            &self.extra_config,
            Some(self.addr),
            self.lab.clone(),
            self.dataplane,
        );
        again._tmp = tmp;
        *self = again;
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// One scrape of the metrics endpoint (reached from the root namespace, where the
    /// server listens, whichever namespace the calling thread is in).
    pub fn scrape(&self) -> super::metrics::Scrape {
        let addr = self.metrics.expect("metrics_addr not configured");
        match &self.lab {
            Some(lab) => lab.in_root(|| super::metrics::scrape(addr)),
            None => super::metrics::scrape(addr),
        }
    }

    /// One request to the HTTP API (from the root namespace, where it listens): `body`,
    /// if any, is sent as JSON; `key` is the bearer key.
    pub fn api_request(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> super::http::Response {
        let addr = self.api.expect("api_addr not configured");
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let content_type = body.map(|_| "application/json");
        let send = || super::http::request(addr, method, path, key, content_type, &bytes);
        match &self.lab {
            Some(lab) => lab.in_root(send),
            None => send(),
        }
    }

    /// Scrapes until `pred` holds (the driver publishes every 500 ms), up to 10 s.
    pub fn scrape_until(
        &self,
        what: &str,
        mut pred: impl FnMut(&super::metrics::Scrape) -> bool,
    ) -> super::metrics::Scrape {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.scrape();
            if pred(&s) {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never saw {what}:\n{}",
                s.text
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// Resident memory of the server process in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().expect("try_wait").is_none())
    }

    /// Mints a token from the server's key file.
    pub fn token(&self, user: u64, device: &str) -> String {
        let text = std::fs::read_to_string(self.data_dir.join("keys")).expect("key file");
        let ring = KeyRing::parse(&text).expect("key ring");
        petrel_control::token::mint(
            &ring,
            &TokenSpec {
                user,
                device,
                platform: pb::Platform::Desktop,
                issued_at: now(),
                ttl: Duration::from_secs(3600),
                token_id: rand::random(),
            },
        )
        .expect("mint")
        .token
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("petrel serve did not exit within {limit:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wall-clock now for token minting.
pub fn now() -> petrel_control::Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    petrel_control::Timestamp::from_millis(ms)
}

/// Generates `NAME::kernel` and `NAME::xdp` tests for each `fn NAME(dp: Dataplane)` named,
/// and `NAME::dpdk` when the `dpdk` feature is on. The root-only variants are ignored
/// (run by scripts/test.sh as root and in CI) and fail saying why without root.
#[macro_export]
macro_rules! dataplane_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn kernel() {
                super::$name($crate::common::Dataplane::Kernel);
            }

            #[test]
            #[ignore = "needs root (veth lab, XDP, AF_XDP); scripts/test.sh runs it as root and in CI"]
            fn xdp() {
                $crate::common::Dataplane::Xdp.require();
                super::$name($crate::common::Dataplane::Xdp);
            }

            #[cfg(feature = "dpdk")]
            #[test]
            #[ignore = "needs root (veth lab, DPDK EAL); scripts/test.sh runs it as root and in CI"]
            fn dpdk() {
                $crate::common::Dataplane::Dpdk.require();
                super::$name($crate::common::Dataplane::Dpdk);
            }
        }
    )*};
}

/// Runs an async test body on a two-worker tokio runtime whose threads are in the
/// dataplane's client namespace: with [`Dataplane::Xdp`] the runtime is built after the
/// calling thread entered the lab's namespace, so every socket the SDK opens is a client
/// across the veth.
pub fn block_on<F: std::future::Future>(dataplane: Dataplane, body: F) -> F::Output {
    let lab = dataplane.lab();
    if let Some(lab) = &lab {
        lab.enter_clients();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let output = runtime.block_on(body);
    drop(runtime);
    drop(lab);
    output
}
