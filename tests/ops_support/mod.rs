//! Support for the operations tests (metrics, backup, tune): a `petrel serve` child with
//! its metrics endpoint, a scraper, and running the other `petrel` subcommands. The wire
//! client is tests/common/client.rs, included as is.
#![allow(dead_code)]

#[path = "../common/client.rs"]
pub mod client;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use petrel_control::{KeyRing, TokenSpec};
use petrel_proto::pb;

pub const PETREL: &str = env!("CARGO_BIN_EXE_petrel");

/// A `petrel serve` child on 127.0.0.1 with `--metrics-addr 127.0.0.1:0`.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub metrics: Option<SocketAddr>,
    pub data_dir: PathBuf,
}

impl Server {
    /// Starts on `data_dir` (created if needed) with `extra` TOML lines.
    pub fn start(data_dir: &Path, extra: &str, metrics: bool) -> Server {
        std::fs::create_dir_all(data_dir).expect("data dir");
        let config = data_dir.join("petrel.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\nlisten = [\"127.0.0.1:0\"]\nlog_level = \"warn\"\n\
                 max_connections = 1000\n{extra}",
                data_dir.display().to_string()
            ),
        )
        .expect("config");
        let mut cmd = Command::new(PETREL);
        cmd.args(["serve", "--config"]).arg(&config);
        if metrics {
            cmd.args(["--metrics-addr", "127.0.0.1:0"]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn petrel serve");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut metrics_addr = None;
        let addr = loop {
            let line = lines
                .next()
                .expect("petrel serve exited before printing its address")
                .expect("stdout");
            if let Some(rest) = line.strip_prefix("petrel: metrics on http://") {
                let addr = rest.strip_suffix("/metrics").expect("…/metrics");
                metrics_addr = Some(addr.parse().expect("metrics address"));
            }
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
        assert_eq!(
            metrics_addr.is_some(),
            metrics,
            "metrics line printed iff enabled"
        );
        Server {
            child: Some(child),
            addr,
            metrics: metrics_addr,
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// Mints a token from the server's key file.
    pub fn token(&self, user: u64, device: &str) -> String {
        let text = std::fs::read_to_string(self.data_dir.join("keys")).expect("key file");
        let ring = KeyRing::parse(&text).expect("key ring");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64;
        petrel_control::token::mint(
            &ring,
            &TokenSpec {
                user,
                device,
                platform: pb::Platform::Desktop,
                issued_at: petrel_control::Timestamp::from_millis(now),
                ttl: Duration::from_secs(3600),
                token_id: rand::random(),
            },
        )
        .expect("mint")
        .token
    }

    /// One scrape: every sample line as `series → value`, plus the raw text.
    pub fn scrape(&self) -> Scrape {
        let addr = self.metrics.expect("metrics enabled");
        let mut s = TcpStream::connect(addr).expect("connect metrics");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: petrel\r\n\r\n")
            .expect("request");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("response");
        let (head, body) = text.split_once("\r\n\r\n").expect("http response");
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(head.contains("application/openmetrics-text"), "{head}");
        Scrape::parse(body)
    }

    /// Scrapes until `pred` holds (the driver publishes every 500 ms), up to 10 s.
    pub fn scrape_until(&self, what: &str, mut pred: impl FnMut(&Scrape) -> bool) -> Scrape {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.scrape();
            if pred(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "never saw {what}:\n{}", s.text);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(status.success(), "petrel serve exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "petrel serve did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A parsed exposition.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub samples: BTreeMap<String, f64>,
    pub text: String,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect();
        Scrape {
            samples,
            text: text.to_owned(),
        }
    }

    /// The value of one series (0 when absent).
    pub fn get(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }

    /// The sum over every series of a family whose labels contain `filter`.
    pub fn sum(&self, family: &str, filter: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(k, _)| {
                (k.as_str() == family || k.starts_with(&format!("{family}{{")))
                    && k.contains(filter)
            })
            .map(|(_, v)| v)
            .sum()
    }
}

/// Runs `petrel ARGS`, returning its output.
pub fn petrel(args: &[&str]) -> Output {
    Command::new(PETREL)
        .args(args)
        .output()
        .expect("run petrel")
}

/// Whether this process runs as root (the namespace tests need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|v| v.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false)
}
