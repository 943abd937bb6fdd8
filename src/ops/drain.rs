//! `petrel admin drain`: stops a running server the way a rolling restart wants it —
//! through its admin socket (`DATA_DIR/admin.sock`), as SIGTERM would: no new logins,
//! the requests in flight answered, every client kicked with `SERVER_SHUTDOWN` (a cluster
//! node names its other nodes in the kick, where the clients reconnect), a goodbye to the
//! other nodes so they stop waiting for it at once — then waits until it has exited.
//! docs/CLUSTER.md, "Rolling restart".

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
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
    /// How long to wait for the server to exit, in seconds (0: do not wait; at most a
    /// day).
    #[arg(long, value_name = "SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
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
    match reply.trim_end().split_once(' ') {
        Some(("ok", _)) => {}
        Some(("error", why)) => bail!("the server refused to drain: {why}"),
        _ => bail!("unexpected answer from the admin socket: {reply:?}"),
    }
    println!("petrel: {} is draining", config.data_dir.display());
    if args.wait == 0 {
        return Ok(());
    }
    // The server holds this connection until its process exits, when the kernel closes
    // it; then the socket file is gone too (removed as the server's last step; an older
    // server closes the connection at once, and only the file tells).
    let deadline = Instant::now() + Duration::from_secs(args.wait);
    let still_runs = || {
        anyhow::anyhow!(
            "the server still runs after {} s (its admin socket {} is open)",
            args.wait,
            socket.display()
        )
    };
    let mut byte = [0u8; 1];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(still_runs());
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut byte) {
            // Closed: the process is gone.
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            // Reset: gone too.
            Err(_) => break,
        }
    }
    while socket.exists() {
        if Instant::now() > deadline {
            return Err(still_runs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("petrel: stopped");
    Ok(())
}
