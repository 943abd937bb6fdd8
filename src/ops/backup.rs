//! `petrel admin backup DIR`: a consistent RocksDB checkpoint of the server's database.
//!
//! When a server is running on the data dir it holds the database's lock, so the request
//! goes through its admin socket (`DATA_DIR/admin.sock`, see `server::admin`) and the
//! server writes the checkpoint. When none is running (no socket, or a stale one nobody
//! answers on) the database is opened directly. Either way SST files are hard-linked when
//! DIR is on the same file system (cheap, instant) and copied otherwise; the WAL is copied.
//!
//! Restore: stop the server, move the checkpoint to `DATA_DIR/db`, start it. The token key
//! file is not part of the database; back it up on its own.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use petrel_storage::StorageConfig;
use petrel_storage_rocks::{RocksEngine, RocksEngineExt};

use crate::server::admin::SOCKET_NAME;
use crate::server::config::{ServeArgs, ServeConfig};

/// `petrel admin backup`.
#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    /// Where to write the checkpoint (must not exist yet; its parent must).
    pub dir: PathBuf,
    /// serve's TOML configuration (for its `data_dir`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The server's data directory [default: serve's, ./petrel-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// How the checkpoint was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// By the running server, through its admin socket.
    Server,
    /// By opening the database directly (no server running).
    Direct,
}

fn absolute(dir: &Path) -> anyhow::Result<PathBuf> {
    if dir.exists() {
        bail!(
            "{} already exists; a checkpoint needs a new directory",
            dir.display()
        );
    }
    let name = dir
        .file_name()
        .with_context(|| format!("{} has no directory name", dir.display()))?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parent = parent
        .canonicalize()
        .with_context(|| format!("parent directory of {} does not exist", dir.display()))?;
    Ok(parent.join(name))
}

/// Writes a checkpoint of `data_dir`'s database to `dir`.
pub fn backup(data_dir: &Path, dir: &Path) -> anyhow::Result<(PathBuf, Via)> {
    let dir = absolute(dir)?;
    let socket = data_dir.join(SOCKET_NAME);
    match UnixStream::connect(&socket) {
        Ok(mut stream) => {
            let text = dir
                .to_str()
                .with_context(|| format!("{} is not UTF-8", dir.display()))?;
            if text.contains('\n') {
                bail!("{} contains a newline", dir.display());
            }
            stream.write_all(format!("backup {text}\n").as_bytes())?;
            let mut reply = String::new();
            BufReader::new(&stream)
                .read_line(&mut reply)
                .context("the server did not answer on its admin socket")?;
            match reply.trim_end().split_once(' ') {
                Some(("ok", _)) => Ok((dir, Via::Server)),
                Some(("error", why)) => bail!("the server could not write the checkpoint: {why}"),
                _ => bail!("unexpected answer from the admin socket: {reply:?}"),
            }
        }
        Err(e) if socket.exists() && e.kind() != std::io::ErrorKind::ConnectionRefused => {
            Err(e).with_context(|| format!("cannot connect to {}", socket.display()))
        }
        // No server (never started, or gone and its socket stale): open the DB directly.
        Err(_) => {
            let db = data_dir.join("db");
            if !db.join("CURRENT").exists() {
                bail!("no database at {}", db.display());
            }
            let engine = RocksEngine::open(&db, StorageConfig::default()).with_context(|| {
                format!(
                    "cannot open {} (a running server holds its lock but its admin socket {} \
                     did not answer)",
                    db.display(),
                    socket.display()
                )
            })?;
            engine
                .checkpoint(&dir)
                .with_context(|| format!("cannot write a checkpoint to {}", dir.display()))?;
            Ok((dir, Via::Direct))
        }
    }
}

/// Runs `petrel admin backup`.
pub fn run(args: &BackupArgs) -> anyhow::Result<()> {
    let config = ServeConfig::resolve(&ServeArgs {
        config: args.config.clone(),
        data_dir: args.data_dir.clone(),
        ..ServeArgs::default()
    })?;
    let (dir, via) = backup(&config.data_dir, &args.dir)?;
    println!(
        "petrel: checkpoint of {} written to {} ({})\n\
         petrel: restore: stop the server, move it to {}, start the server",
        config.data_dir.join("db").display(),
        dir.display(),
        match via {
            Via::Server => "by the running server, through its admin socket",
            Via::Direct => "no server running: opened the database directly",
        },
        config.data_dir.join("db").display(),
    );
    Ok(())
}
