//! `petrel token issue`: mints a login token from the server's key file — the admin and
//! development path. A deployment's login service calls the same library function
//! (`petrel_control::token::mint`) after authenticating the user its own way.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use petrel_control::TokenSpec;
use petrel_proto::pb;

/// Token subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a token for a user and device and print it.
    Issue {
        /// User id.
        #[arg(long)]
        user: u64,
        /// Device id (at most 128 bytes).
        #[arg(long)]
        device: String,
        /// Platform class of the device.
        #[arg(long, value_enum, default_value_t = Platform::Desktop)]
        platform: Platform,
        /// Lifetime, e.g. `24h`, `30m`, `7d`.
        #[arg(long, default_value = "24h", value_parser = parse_ttl)]
        ttl: Duration,
        /// The server's key file.
        #[arg(long, default_value = "./petrel-data/keys")]
        key_file: PathBuf,
    },
}

/// Platform classes accepted on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Platform {
    /// iOS phone or tablet.
    Ios,
    /// Android phone or tablet.
    Android,
    /// Browser.
    Web,
    /// Desktop app.
    Desktop,
    /// Automated client.
    Bot,
}

impl From<Platform> for pb::Platform {
    fn from(p: Platform) -> pb::Platform {
        match p {
            Platform::Ios => pb::Platform::Ios,
            Platform::Android => pb::Platform::Android,
            Platform::Web => pb::Platform::Web,
            Platform::Desktop => pb::Platform::Desktop,
            Platform::Bot => pb::Platform::Bot,
        }
    }
}

fn parse_ttl(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number followed by s, m, h or d"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{text:?}: unit must be s, m, h or d")),
    };
    if secs == 0 {
        return Err("ttl must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

/// Runs a token subcommand.
pub fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Issue {
            user,
            device,
            platform,
            ttl,
            key_file,
        } => {
            let text = std::fs::read_to_string(&key_file).with_context(|| {
                format!(
                    "cannot read key file {} (petrel serve creates it on first start)",
                    key_file.display()
                )
            })?;
            let ring = petrel_control::KeyRing::parse(&text)
                .with_context(|| format!("invalid key file {}", key_file.display()))?;
            let issued = petrel_control::token::mint(
                &ring,
                &TokenSpec {
                    user,
                    device: &device,
                    platform: platform.into(),
                    issued_at: crate::server::now(),
                    ttl,
                    token_id: rand::random(),
                },
            )?;
            println!("{}", issued.token);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_ttl("0h").is_err());
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
