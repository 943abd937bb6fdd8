//! Debian's nginx in front of a test server, with the shipped configuration
//! (`scripts/deploy/nginx/`), inside a network namespace of the test's own: the
//! namespace, the nginx process, a test certificate, and the shipped configs made fit
//! for a test. Used by tests/nginx.rs and tests/web_client.rs.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use petrel_dataplane::sys::netns::NetNs;

/// The name the test certificate is issued for.
pub const CERT_NAME: &str = "petrel.test";

/// A file of the repository.
pub fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(status.success(), "{program} {args:?}: {status}");
}

/// Panics with the fix unless nginx is installed.
pub fn require_nginx() {
    assert!(
        Command::new("nginx").arg("-v").output().is_ok(),
        "nginx is not installed: run scripts/setup.sh"
    );
}

/// A network namespace with only its loopback, up; deleted when dropped (also on
/// panic).
pub struct Namespace {
    pub name: String,
}

impl Namespace {
    /// Creates `PREFIX-PID`; `port_range` ("LOW HIGH") narrows its ephemeral ports.
    pub fn create(prefix: &str, port_range: Option<&str>) -> Namespace {
        let name = format!("{prefix}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "delete", &name])
            .stderr(Stdio::null())
            .status();
        run("ip", &["netns", "add", &name]);
        let ns = Namespace { name };
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
        if let Some(range) = port_range {
            let setting = format!("net.ipv4.ip_local_port_range={range}");
            run(
                "ip",
                &["netns", "exec", &ns.name, "sysctl", "-qw", &setting],
            );
        }
        ns
    }

    /// Moves the calling thread inside: every process, thread and socket it starts from
    /// here on is in the namespace.
    pub fn enter(&self) {
        NetNs::named(&self.name)
            .expect("open the namespace")
            .enter()
            .expect("enter the namespace");
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// nginx in the foreground; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Nginx {
    child: Child,
    error_log: PathBuf,
}

impl Nginx {
    /// Starts nginx with `config`, its pid file and error log in `dir`, and waits until
    /// it listens on `probe` (a port of that config).
    pub fn start(config: &Path, dir: &Path, probe: &str) -> Nginx {
        let error_log = dir.join("nginx-error.log");
        let globals = format!(
            "daemon off; pid {}; error_log {} info;",
            dir.join("nginx.pid").display(),
            error_log.display()
        );
        let child = Command::new("nginx")
            .arg("-c")
            .arg(config)
            .args(["-g", &globals])
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nginx (scripts/setup.sh installs it)");
        let nginx = Nginx { child, error_log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(probe).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {probe}: {}",
                nginx.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        nginx
    }

    /// nginx's error log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.error_log).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed certificate for [`CERT_NAME`], written to `dir` as `cert.pem` and
/// `key.pem`.
pub struct TestCertificate {
    pub generated: rcgen::CertifiedKey,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCertificate {
    pub fn write(dir: &Path) -> TestCertificate {
        let generated =
            rcgen::generate_simple_self_signed(vec![CERT_NAME.to_owned()]).expect("cert");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, generated.cert.pem()).expect("write cert");
        std::fs::write(&key, generated.key_pair.serialize_pem()).expect("write key");
        TestCertificate {
            generated,
            cert,
            key,
        }
    }
}

/// The shipped Petrel config for running behind nginx, made fit for a test server: the
/// test's certificate, metrics on, no rate limit (the harness adds data_dir and friends).
pub fn shipped_petrel_config(certificate: &TestCertificate) -> toml::Table {
    let text = std::fs::read_to_string(repo_file("scripts/deploy/nginx/petrel-behind-nginx.toml"))
        .expect("read the shipped Petrel config");
    let mut table: toml::Table = text.parse().expect("the shipped Petrel config parses");
    for key in ["data_dir", "max_connections", "log_format", "metrics_addr"] {
        table.remove(key);
    }
    table.insert("metrics_addr".into(), "127.0.0.1:0".into());
    table.insert("rate_limit_per_second".into(), 0.into());
    // Every client here comes through one loopback, most from a few addresses.
    table.insert("max_connections_per_address".into(), 1000.into());
    let tls = table
        .get_mut("tls")
        .and_then(toml::Value::as_table_mut)
        .expect("[tls] in the shipped config");
    tls.insert("cert".into(), certificate.cert.display().to_string().into());
    tls.insert("key".into(), certificate.key.display().to_string().into());
    table
}

/// The shipped nginx config written to `dir`, its certificate paths pointed at the
/// test's and the web client served from `web_root`; returns its path.
pub fn shipped_nginx_config(dir: &Path, certificate: &TestCertificate, web_root: &Path) -> PathBuf {
    let shipped = std::fs::read_to_string(repo_file("scripts/deploy/nginx/nginx.conf"))
        .expect("read the shipped nginx config");
    let replaced = [
        ("/etc/petrel/tls/fullchain.pem", &certificate.cert),
        ("/etc/petrel/tls/privkey.pem", &certificate.key),
        ("/usr/share/petrel/web", &web_root.to_path_buf()),
    ]
    .iter()
    .fold(shipped, |text, (from, to)| {
        assert!(text.contains(from), "the shipped nginx config names {from}");
        text.replace(from, &to.display().to_string())
    });
    let config = dir.join("nginx.conf");
    std::fs::write(&config, replaced).expect("write nginx config");
    config
}
