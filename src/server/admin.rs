//! The admin socket: a Unix socket `DATA_DIR/admin.sock` (mode 0600) through which
//! `petrel admin backup` asks a running server for a RocksDB checkpoint — a running server
//! holds the database's lock, so no other process may open it meanwhile.
//!
//! Protocol: one request line per connection, one answer line back.
//! - `backup /absolute/dir` → `ok /absolute/dir` or `error MESSAGE`.
//! - `drain` → `ok draining`: `petrel admin drain` — the server stops as on SIGTERM
//!   (no new logins, requests in flight answered, every client kicked with
//!   `SERVER_SHUTDOWN` naming the cluster's other nodes, a goodbye to them) and exits.
//!   The server keeps that connection open until the process exits, when the kernel
//!   closes it: the caller's read ends exactly when the process is gone (whatever pid
//!   namespace either side is in).
//!
//! The socket is created after the database is opened (holding its lock means no other
//! server owns this data dir, so a leftover socket file is stale and replaced) and removed
//! when [`AdminSocket`] is dropped. The thread holds only a weak reference to the engine, so
//! shutdown closes the database as before.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use petrel_storage_rocks::{RocksEngine, RocksEngineExt};

/// The socket's file name inside the data dir.
pub const SOCKET_NAME: &str = "admin.sock";

/// What `drain` runs: set once the server serves (until then `drain` is refused).
pub type DrainHook = Arc<OnceLock<Box<dyn Fn() + Send + Sync>>>;

/// The listening admin socket; removes its file when dropped.
pub struct AdminSocket {
    path: PathBuf,
    /// Set by the server once it serves.
    pub drain: DrainHook,
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Creates `data_dir/admin.sock` and answers requests on a thread of its own.
pub fn start(data_dir: &Path, engine: &Arc<RocksEngine>) -> std::io::Result<AdminSocket> {
    let path = data_dir.join(SOCKET_NAME);
    match std::fs::remove_file(&path) {
        Ok(()) => tracing::debug!(path = %path.display(), "removed a stale admin socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let engine = Arc::downgrade(engine);
    let drain: DrainHook = Arc::default();
    let hook = drain.clone();
    std::thread::Builder::new()
        .name("petrel-admin".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(error) = answer(stream, &engine, &hook) {
                            tracing::warn!(%error, "admin request failed");
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "admin socket accept failed");
                        return;
                    }
                }
            }
        })?;
    Ok(AdminSocket { path, drain })
}

/// The connections of drain requests, open until the process exits.
static DRAINERS: Mutex<Vec<UnixStream>> = Mutex::new(Vec::new());

fn answer(
    stream: UnixStream,
    engine: &Weak<RocksEngine>,
    drain: &DrainHook,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new((&stream).take(4096)).read_line(&mut line)?;
    if line.trim_end() == "drain" {
        let reply = match drain.get() {
            Some(begin) => {
                tracing::info!("admin: drain requested; shutting down gracefully");
                begin();
                (&stream).write_all(b"ok draining\n")?;
                // Held until the process exits (see the module docs).
                let mut held = DRAINERS.lock().unwrap_or_else(|p| p.into_inner());
                held.push(stream);
                return Ok(());
            }
            None => "error the server is not serving yet",
        };
        return (&stream).write_all(format!("{reply}\n").as_bytes());
    }
    let reply = match line.trim_end().split_once(' ') {
        Some(("backup", dir)) if Path::new(dir).is_absolute() => match engine.upgrade() {
            Some(engine) => match engine.checkpoint(Path::new(dir)) {
                Ok(()) => {
                    tracing::info!(dir, "backup checkpoint written");
                    format!("ok {dir}")
                }
                Err(e) => format!("error {e}"),
            },
            None => "error the server is shutting down".to_owned(),
        },
        Some(("backup", dir)) => format!("error {dir:?} is not an absolute path"),
        _ => format!("error unknown request {:?}", line.trim_end()),
    };
    (&stream).write_all(format!("{reply}\n").as_bytes())
}
