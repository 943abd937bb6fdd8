//! `petrel admin drain`: stops a running server the way a rolling restart wants it —
//! through its admin socket (`DATA_DIR/admin.sock`), as SIGTERM would: no new logins,
//! the requests in flight answered, every client kicked with `SERVER_SHUTDOWN` (a cluster
//! node names its other nodes in the kick, where the clients reconnect), a goodbye to the
//! other nodes so they stop waiting for it at once — then waits until it has exited.
//! docs/CLUSTER.md, "Rolling restart".

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use crate::server::admin::SOCKET_NAME;
use crate::server::config::{ServeArgs, ServeConfig};

/// `petrel admin drain`.
#[derive(Debug, Clone, Args)]
pub struct DrainArgs {
    /// serve's TOML configuration (for its `data_dir`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The server's data directory [default: serve's, ./petrel-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// This node's index, with a config file shared by a cluster's nodes (as
    /// `serve --cluster-node`).
    #[arg(long, value_name = "N")]
    pub cluster_node: Option<u8>,
    /// How long to wait for the server to exit, in seconds (0: do not wait).
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub wait: u64,
}

/// Runs `petrel admin drain`.
pub fn run(args: &DrainArgs) -> anyhow::Result<()> {
    let config = ServeConfig::resolve(&ServeArgs {
        config: args.config.clone(),
        data_dir: args.data_dir.clone(),
        cluster_node: args.cluster_node,
        ..ServeArgs::default()
    })?;
    let socket = config.data_dir.join(SOCKET_NAME);
    let mut stream = UnixStream::connect(&socket).with_context(|| {
        format!(
            "cannot reach the server's admin socket {} (is it running?)",
            socket.display()
        )
    })?;
    stream.write_all(b"drain\n")?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .context("the server did not answer on its admin socket")?;
    let pid = match reply.trim_end().split_once(' ') {
        Some(("ok", rest)) => rest
            .split_whitespace()
            .find_map(|word| word.strip_prefix("pid="))
            .and_then(|pid| pid.parse::<u32>().ok()),
        Some(("error", why)) => bail!("the server refused to drain: {why}"),
        _ => bail!("unexpected answer from the admin socket: {reply:?}"),
    };
    println!("petrel: {} is draining", config.data_dir.display());
    if args.wait == 0 {
        return Ok(());
    }
    // The socket file goes when the server has stopped (its last step); the process
    // is gone a moment later (a server of an older version names no pid).
    let deadline = Instant::now() + Duration::from_secs(args.wait);
    while socket.exists() || pid.is_some_and(alive) {
        if Instant::now() > deadline {
            bail!(
                "the server (pid {}) still runs after {} s",
                pid.map_or_else(|| "unknown".to_owned(), |p| p.to_string()),
                args.wait,
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("petrel: stopped");
    Ok(())
}

/// Whether process `pid` still runs: it is in /proc and not a zombie (an exited
/// process its parent has not reaped yet; it holds nothing any more).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::alive;

    #[test]
    fn this_process_is_alive_and_a_pid_beyond_any_is_not() {
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX));
    }
}
