//! `--spawn-server`: runs `petrel serve` (this same executable) as a child for the
//! duration of the bench, on a temporary data directory, listening on 127.0.0.1 with a
//! free port and with the per-connection rate limit off (a load generator sends far more
//! than 20 messages/s per connection). Arguments after `--` are passed on and override
//! those defaults (flags beat the config file).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A `petrel serve` child. Stopped with SIGTERM (then SIGKILL) on drop.
pub struct SpawnedServer {
    child: Option<Child>,
    /// Where it accepts clients (a wildcard listen address is reached on loopback).
    pub addr: SocketAddr,
    /// Its token key file.
    pub key_file: PathBuf,
    _data_dir: tempfile::TempDir,
}

/// What `petrel serve` prints on stdout once it accepts clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeBanner {
    /// First listen address.
    pub addr: SocketAddr,
    /// Key file path, if the banner names one.
    pub key_file: Option<PathBuf>,
}

/// Parses the banner line `petrel: serving on ADDR[, ADDR...] (...)`, and the
/// `--key-file FILE` in the line that says how to mint a token.
pub fn parse_banner_line(line: &str, banner: &mut Option<ServeBanner>) -> anyhow::Result<bool> {
    if let Some(rest) = line.strip_prefix("petrel: serving on ") {
        let first = rest
            .split([',', ' '])
            .next()
            .context("banner without an address")?;
        let mut addr: SocketAddr = first
            .parse()
            .with_context(|| format!("cannot parse the server's address {first:?}"))?;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        *banner = Some(ServeBanner {
            addr,
            key_file: None,
        });
        return Ok(false);
    }
    if let (Some(b), Some(rest)) = (banner.as_mut(), line.split_once("--key-file ")) {
        let path = rest.1.split_whitespace().next().unwrap_or_default();
        b.key_file = Some(PathBuf::from(path));
        return Ok(true);
    }
    Ok(false)
}

/// What the spawned server can hold with one descriptor per connection: its
/// `RLIMIT_NOFILE` hard limit less the 1,024 serve keeps for itself (so serve does not
/// warn about a limit the bench cannot change).
fn spawned_max_connections() -> u64 {
    match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((_, hard)) if hard > 2048 && hard < 1_001_024 => hard - 1024,
        _ => 1_000_000,
    }
}

impl SpawnedServer {
    /// Starts the server and waits (up to 60 s) until it prints its address.
    pub fn start(serve_args: &[String]) -> anyhow::Result<SpawnedServer> {
        let exe = std::env::current_exe().context("cannot find the petrel executable")?;
        let data_dir = tempfile::Builder::new()
            .prefix("petrel-bench-")
            .tempdir()
            .context("cannot create a temporary data directory")?;
        let config_path = data_dir.path().join("bench-serve.toml");
        std::fs::write(
            &config_path,
            format!(
                "data_dir = {:?}\nlisten = [\"127.0.0.1:0\"]\nlog_level = \"warn\"\n\
                 rate_limit_per_second = 0\nmax_connections = {}\n",
                data_dir.path().display().to_string(),
                spawned_max_connections()
            ),
        )
        .context("cannot write the server's config file")?;
        let mut command = Command::new(exe);
        command.arg("serve");
        if serve_args
            .iter()
            .any(|a| a == "--config" || a.starts_with("--config="))
        {
            eprintln!(
                "petrel bench: using the --config given after --; its rate limit applies \
                 (rate_limit_per_second = 0 turns it off)"
            );
        } else {
            command.arg("--config").arg(&config_path);
        }
        command.args(serve_args);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start petrel serve")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut banner = None;
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent {
                    match parse_banner_line(&line, &mut banner) {
                        Ok(true) => {
                            sent = true;
                            let _ = tx.send(Ok(banner.clone()));
                        }
                        Ok(false) => {}
                        Err(e) => {
                            sent = true;
                            let _ = tx.send(Err(e));
                        }
                    }
                }
                // Keep draining so the server never blocks on a full pipe.
            }
            if !sent {
                let _ = tx.send(Ok(banner));
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let banner = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(result) => break result?,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = child.try_wait()? {
                        bail!("petrel serve exited with {status} before accepting clients");
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        bail!("petrel serve printed no address within 60 s");
                    }
                }
                Err(_) => bail!("petrel serve exited before printing its address"),
            }
        };
        let Some(banner) = banner else {
            let status = child.wait()?;
            bail!("petrel serve exited with {status} before printing its address");
        };
        Ok(SpawnedServer {
            child: Some(child),
            addr: banner.addr,
            key_file: banner
                .key_file
                .unwrap_or_else(|| data_dir.path().join("keys")),
            _data_dir: data_dir,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM, then wait up to 30 s, then SIGKILL.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("petrel serve exited with {status} after SIGTERM");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("petrel serve did not stop within 30 s of SIGTERM; killed it");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_gives_address_and_key_file() {
        let mut b = None;
        assert!(
            !parse_banner_line(
                "petrel: serving on 0.0.0.0:9500, 0.0.0.0:9501 (kernel sockets, data in x)",
                &mut b
            )
            .unwrap()
        );
        assert!(
            parse_banner_line(
                "petrel: mint a token:  petrel token issue --key-file /tmp/d/keys --user 1",
                &mut b
            )
            .unwrap()
        );
        let b = b.unwrap();
        assert_eq!(b.addr, "127.0.0.1:9500".parse().unwrap());
        assert_eq!(b.key_file, Some(PathBuf::from("/tmp/d/keys")));
    }

    #[test]
    fn unparsable_address_is_an_error() {
        let mut b = None;
        assert!(parse_banner_line("petrel: serving on nowhere (x)", &mut b).is_err());
    }
}
