//! A `petrel serve` child process on 127.0.0.1 with a temporary data directory.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use petrel_control::{KeyRing, TokenSpec};
use petrel_proto::pb;

/// A running server. Killed (SIGKILL) on drop if still running.
pub struct TestServer {
    child: Option<Child>,
    pub addr: SocketAddr,
    data_dir: PathBuf,
    extra_config: String,
    _tmp: Option<tempfile::TempDir>,
}

impl TestServer {
    /// Starts a server on a fresh data directory. `extra_config` is appended to the TOML
    /// config file (e.g. `"login_deadline_secs = 1\n"`).
    pub fn start(extra_config: &str) -> TestServer {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().to_path_buf();
        let mut server = TestServer::spawn(&data_dir, extra_config, None);
        server._tmp = Some(tmp);
        server
    }

    fn spawn(data_dir: &Path, extra_config: &str, port: Option<u16>) -> TestServer {
        let config_path = data_dir.join("petrel.toml");
        let listen = format!("127.0.0.1:{}", port.unwrap_or(0));
        std::fs::write(
            &config_path,
            format!(
                "data_dir = {:?}\nlisten = [{listen:?}]\nlog_level = \"warn\"\nmax_connections = 15000\n{extra_config}",
                data_dir.display().to_string()
            ),
        )
        .expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_petrel"))
            .args(["serve", "--config"])
            .arg(&config_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn petrel serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("petrel serve exited before printing its address")
                .expect("read stdout");
            if let Some(rest) = line.strip_prefix("petrel: serving on ") {
                let addr = rest.split_whitespace().next().expect("address");
                break addr.parse().expect("socket address");
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        TestServer {
            child: Some(child),
            addr,
            data_dir: data_dir.to_path_buf(),
            extra_config: extra_config.to_owned(),
            _tmp: None,
        }
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
        let mut again =
            TestServer::spawn(&self.data_dir, &self.extra_config, Some(self.addr.port()));
        again._tmp = tmp;
        *self = again;
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
