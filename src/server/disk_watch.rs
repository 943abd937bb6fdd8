//! After a full disk stopped storage: notice when space is back, and stop the server so
//! its supervisor starts it again with the database reopened.
//!
//! A failed WAL flush is fatal to RocksDB (docs/OPERATIONS.md, "Disk full"): writes stay
//! refused until the database is reopened, which this process cannot do under its own
//! feet. So once the home loop reports storage failed for lack of space, this thread
//! checks the data directory's file system every [`CHECK_INTERVAL`]; when it has
//! [`resume_threshold`] bytes free again it raises the stop flag (a graceful shutdown:
//! every acked write is already durable) and marks the exit as "restart me", which
//! `petrel serve` reports with exit status [`EXIT_RESTART`] — systemd's
//! `Restart=on-failure` (scripts/deploy) then starts it again after `RestartSec`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use petrel_dataplane::Wake;

/// How often free space is checked once storage has failed.
const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Exit status of a server that stopped to have its storage reopened (`EX_TEMPFAIL`).
pub const EXIT_RESTART: u8 = 75;

/// Free bytes that count as "space is back" on a file system of `total` bytes: 10 % of
/// it, at most 256 MiB, at least 1 MiB (room for RocksDB's new WAL and a memtable flush).
pub fn resume_threshold(total: u64) -> u64 {
    (total / 10).clamp(1 << 20, 256 << 20)
}

/// Flags shared by the home loop, the watch and `run`.
#[derive(Debug, Default)]
pub struct DiskWatch {
    /// Raised by the home loop when storage failed because the disk was full.
    pub storage_full: AtomicBool,
    /// Raised by the watch when it stopped the server for a restart.
    pub restart: AtomicBool,
}

/// Starts the watch thread for `data_dir`.
pub fn start(
    data_dir: PathBuf,
    watch: Arc<DiskWatch>,
    stop: Arc<AtomicBool>,
    home: Arc<dyn Wake>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("petrel-disk-watch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(CHECK_INTERVAL);
                if !watch.storage_full.load(Ordering::Relaxed) {
                    continue;
                }
                let Ok(fs) = rustix::fs::statvfs(&data_dir) else {
                    continue;
                };
                let free = fs.f_bavail.saturating_mul(fs.f_frsize);
                let total = fs.f_blocks.saturating_mul(fs.f_frsize);
                if free >= resume_threshold(total) {
                    tracing::warn!(
                        free,
                        dir = %data_dir.display(),
                        "storage: disk space is back; stopping gracefully so the server is \
                         started again with the database reopened (exit status 75)"
                    );
                    watch.restart.store(true, Ordering::Relaxed);
                    stop.store(true, Ordering::Relaxed);
                    let _ = home.wake();
                    return;
                }
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_is_a_tenth_within_bounds() {
        assert_eq!(resume_threshold(24 << 20), (24 << 20) / 10);
        assert_eq!(resume_threshold(4 << 20), 1 << 20);
        assert_eq!(resume_threshold(1 << 40), 256 << 20);
    }
}
