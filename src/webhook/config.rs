//! The webhook's settings: the `[webhook]` table of the config file and `--webhook-url`,
//! resolved into [`WebhookSettings`] (every key and default is in docs/CONFIGURATION.md,
//! "Webhooks").

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

/// Shortest accepted signing secret, bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// The `[webhook]` table of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookFile {
    url: Option<String>,
    secret_file: Option<PathBuf>,
    batch_max: Option<usize>,
    max_attempts: Option<u32>,
    retry_base_ms: Option<u64>,
    retry_max_ms: Option<u64>,
    timeout_ms: Option<u64>,
    queue_max: Option<usize>,
}

/// Where calls go: an `http://` URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL as configured (for logs).
    pub url: String,
    /// `host:port` (port 80 when the URL names none).
    pub authority: String,
    /// Path and query, at least `/`.
    pub path: String,
}

impl Target {
    /// Parses `url`. Only `http://` for now: the server has no TLS client yet (issue 18
    /// brings rustls); put a local relay (e.g. nginx with `proxy_pass https://…`) in front
    /// of an `https://` receiver.
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        if url.starts_with("https://") {
            bail!(
                "webhook.url {url:?}: https is not supported yet (the server has no TLS \
                 client); point it at a local http relay to the https receiver"
            );
        }
        let Some(rest) = url.strip_prefix("http://") else {
            bail!("webhook.url must start with http://, got {url:?}");
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            bail!("webhook.url {url:?} must name a host (and no user info)");
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.contains(']'))
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Target {
            url: url.to_owned(),
            authority,
            path: path.to_owned(),
        })
    }
}

/// The resolved webhook settings.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// Where calls go.
    pub target: Target,
    /// The HMAC-SHA256 key calls are signed with (the secret file's bytes, trimmed).
    pub secret: Vec<u8>,
    /// Most events in one call.
    pub batch_max: usize,
    /// Calls of one batch before its events become dead letters.
    pub max_attempts: u32,
    /// Delay after the first failed call; it doubles after each further failure.
    pub retry_base: Duration,
    /// Longest delay between two calls of one batch.
    pub retry_max: Duration,
    /// How long one call may take (connect, send, answer).
    pub timeout: Duration,
    /// Most events queued on disk; beyond it new events are dropped (and counted).
    pub queue_max: usize,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("WebhookSettings")
            .field("target", &self.target)
            .field("batch_max", &self.batch_max)
            .field("max_attempts", &self.max_attempts)
            .field("retry_base", &self.retry_base)
            .field("retry_max", &self.retry_max)
            .field("timeout", &self.timeout)
            .field("queue_max", &self.queue_max)
            .finish()
    }
}

impl WebhookSettings {
    /// The file's `[webhook]` table with `--webhook-url` over its `url`; `None` when no
    /// URL is set (webhooks off, the default).
    pub fn resolve(
        file: Option<&WebhookFile>,
        flag_url: Option<&str>,
    ) -> anyhow::Result<Option<WebhookSettings>> {
        let empty = WebhookFile::default();
        let file = file.unwrap_or(&empty);
        let Some(url) = flag_url.or(file.url.as_deref()) else {
            return Ok(None);
        };
        let target = Target::parse(url)?;
        let secret_file = file
            .secret_file
            .as_ref()
            .context("webhook.url needs webhook.secret_file (the key calls are signed with)")?;
        let secret = std::fs::read(secret_file).with_context(|| {
            format!("cannot read webhook.secret_file {}", secret_file.display())
        })?;
        let secret = secret.trim_ascii().to_vec();
        if secret.len() < MIN_SECRET_LEN {
            bail!(
                "webhook.secret_file {} holds {} bytes; at least {MIN_SECRET_LEN} are needed",
                secret_file.display(),
                secret.len()
            );
        }
        let positive = |value: Option<u64>, default: u64, key: &str| -> anyhow::Result<u64> {
            match value {
                Some(0) => bail!("webhook.{key} must be at least 1"),
                Some(v) => Ok(v),
                None => Ok(default),
            }
        };
        let at_most = |value: u64, max: u64, key: &str| -> anyhow::Result<u64> {
            if value > max {
                bail!("webhook.{key} is at most {max}, got {value}");
            }
            Ok(value)
        };
        // A day between two calls at most; a minute per call at most (a graceful stop
        // waits for the call in flight).
        let retry_base = at_most(
            positive(file.retry_base_ms, 1_000, "retry_base_ms")?,
            86_400_000,
            "retry_base_ms",
        )?;
        let retry_max = at_most(
            positive(file.retry_max_ms, 300_000, "retry_max_ms")?,
            86_400_000,
            "retry_max_ms",
        )?;
        if retry_max < retry_base {
            bail!("webhook.retry_max_ms ({retry_max}) is below retry_base_ms ({retry_base})");
        }
        Ok(Some(WebhookSettings {
            target,
            secret,
            batch_max: positive(file.batch_max.map(|v| v as u64), 100, "batch_max")? as usize,
            max_attempts: positive(file.max_attempts.map(u64::from), 8, "max_attempts")? as u32,
            retry_base: Duration::from_millis(retry_base),
            retry_max: Duration::from_millis(retry_max),
            timeout: Duration::from_millis(at_most(
                positive(file.timeout_ms, 5_000, "timeout_ms")?,
                60_000,
                "timeout_ms",
            )?),
            queue_max: positive(file.queue_max.map(|v| v as u64), 100_000, "queue_max")? as usize,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_http_with_a_host_and_a_port() {
        let t = Target::parse("http://127.0.0.1:9000/hooks/petrel?x=1").unwrap();
        assert_eq!(t.authority, "127.0.0.1:9000");
        assert_eq!(t.path, "/hooks/petrel?x=1");
        let t = Target::parse("http://hooks.internal").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("hooks.internal:80", "/")
        );
        let t = Target::parse("http://[::1]/h").unwrap();
        assert_eq!(t.authority, "[::1]:80");
        let https = Target::parse("https://example.com/")
            .unwrap_err()
            .to_string();
        assert!(https.contains("https is not supported yet"), "{https}");
        assert!(Target::parse("ftp://x/").is_err());
        assert!(Target::parse("http:///path").is_err());
        assert!(Target::parse("http://user:pw@host/").is_err());
    }

    #[test]
    fn off_without_a_url_and_a_url_needs_a_long_enough_secret() {
        assert!(WebhookSettings::resolve(None, None).unwrap().is_none());
        let err = WebhookSettings::resolve(None, Some("http://127.0.0.1:1/"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("secret_file"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "short\n").unwrap();
        let file: WebhookFile = toml::from_str(&format!(
            "url = \"http://127.0.0.1:1/h\"\nsecret_file = {:?}\nretry_base_ms = 50\n",
            secret.display().to_string()
        ))
        .unwrap();
        let err = WebhookSettings::resolve(Some(&file), None).unwrap_err();
        assert!(err.to_string().contains("at least 16"), "{err}");
        std::fs::write(&secret, "0123456789abcdef0123\n").unwrap();
        let s = WebhookSettings::resolve(Some(&file), None)
            .unwrap()
            .unwrap();
        assert_eq!(s.secret, b"0123456789abcdef0123");
        assert_eq!(s.retry_base, Duration::from_millis(50));
        assert_eq!(
            (s.batch_max, s.max_attempts, s.queue_max),
            (100, 8, 100_000)
        );
        // The flag wins over the file's URL.
        let s = WebhookSettings::resolve(Some(&file), Some("http://127.0.0.1:2/x"))
            .unwrap()
            .unwrap();
        assert_eq!(s.target.authority, "127.0.0.1:2");
        assert!(
            !format!("{s:?}").contains("0123456789"),
            "no secret in logs"
        );
    }
}
