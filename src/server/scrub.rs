//! The `petrel-scrub` thread: purges what recalls and edits overwrote from the database
//! files (`RocksEngineExt::scrub`: a flush and a targeted compaction), within
//! [`INTERVAL`] of it, off the core loops — compaction rewrites whole files and must not
//! stall a loop. docs/STORAGE.md, "Recall and edit".

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use petrel_storage_rocks::{RocksEngine, RocksEngineExt};

/// How long a recalled message's old bytes may stay in the files (plus the time the
/// purge takes). Each purge flushes every column family, so this also bounds how many
/// small SST files recalls and edits can cause: at most one flush per family per
/// interval, whatever their rate.
pub const INTERVAL: Duration = Duration::from_secs(30);

/// Starts the thread. It holds the database only while it purges (`Weak`), so it never
/// keeps it open past the server's shutdown, and ends when `stop` is raised.
pub fn start(engine: Weak<RocksEngine>, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("petrel-scrub".into())
        .spawn(move || {
            let mut next = Instant::now() + INTERVAL;
            while !stop.load(Ordering::Relaxed) {
                // Short naps, so a stop is noticed within a fraction of a second.
                std::thread::sleep(Duration::from_millis(200));
                if Instant::now() < next {
                    continue;
                }
                next = Instant::now() + INTERVAL;
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                match engine.scrub() {
                    Ok(0) => {}
                    Ok(keys) => {
                        tracing::debug!(keys, "storage: purged recalled and edited content")
                    }
                    Err(error) => tracing::warn!(
                        %error,
                        "storage: purging recalled and edited content failed; retrying"
                    ),
                }
            }
        })
        .map(|_| ())
}
