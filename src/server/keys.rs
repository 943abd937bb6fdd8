//! The token key file: loaded at start, created with a fresh random key on first start so
//! a developer's `petrel serve` works with no setup.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;
use petrel_control::KeyRing;

/// Loads the key ring from `path`, creating the file (mode 0600, one 32-byte random key
/// with id `k1`) if it does not exist.
pub fn load_or_create(path: &Path) -> anyhow::Result<KeyRing> {
    if !path.exists() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let secret: [u8; 32] = rand::random();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot create key file {}", path.display()))?;
        writeln!(
            file,
            "# Petrel token signing keys: `key-id hex-secret` per line; the first is used to\n\
             # sign, all verify. Add a new first line to rotate; remove old lines once their\n\
             # tokens have expired.\nk1 {}",
            hex::encode(secret)
        )?;
        tracing::info!(path = %path.display(), "created a new token key file");
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    KeyRing::parse(&text).with_context(|| format!("invalid key file {}", path.display()))
}
