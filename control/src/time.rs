//! Time as the control plane sees it: a [`Timestamp`] handed in by the driver.
//!
//! The control plane never reads a clock. Every input carries `now`, milliseconds since
//! the Unix epoch (UTC) as read by the driver, which lets token expiry and the
//! `server_time_ms` fields of frames use wall-clock time while a simulator runs a virtual
//! clock.

use std::fmt;
use std::time::Duration;

/// Milliseconds since the Unix epoch, supplied by the driver.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The timestamp `ms` milliseconds after the epoch.
    pub const fn from_millis(ms: u64) -> Timestamp {
        Timestamp(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating at the far future.
    pub fn saturating_add(self, d: Duration) -> Timestamp {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Timestamp(u64::MAX - 5);
        assert_eq!(
            t.saturating_add(Duration::from_secs(1)),
            Timestamp(u64::MAX)
        );
        assert_eq!(Timestamp(5).saturating_since(Timestamp(9)), Duration::ZERO);
        assert_eq!(
            Timestamp(1_500).saturating_since(Timestamp(500)),
            Duration::from_secs(1)
        );
    }
}
