//! Admission control: a core that is over its budget sheds *new* work — logins, and
//! (through the loop, while [`Admission::is_overloaded`]) new connections — before the
//! sessions it already serves suffer.
//!
//! Two budgets, each off by default (the CPU budget: see
//! [`AdmissionConfig::busy_high_percent`] for why):
//! - **CPU.** After each round the loop reports a [`Round`]: how long since the last
//!   round ended, how much of that the round's work took, and whether it left input
//!   behind because it reached its per-round budget (the rx ring or the sockets hold
//!   more than one round takes). Over every window of [`WINDOW`] two shares are taken:
//!   *busy* (time spent on work) and *behind* (time during which input waited past a
//!   round's budget: from the end of a backlogged round to the end of the next). When
//!   either is at or above `busy_high_percent` the core becomes *overloaded*; it stays
//!   so until a window ends with both at or below `busy_low_percent` (hysteresis). The
//!   *behind* share catches what the busy time misses on a shared machine: a loop that
//!   is descheduled between rounds is not busy, but it falls behind all the same; and a
//!   burst that one round cannot take but the next few drain costs only those rounds'
//!   time. A connect storm meeting the first wave of heartbeats is what this is for: the
//!   heartbeats keep being answered while logins wait.
//! - **Logins per second**, a token bucket per core: a fixed ceiling an operator sets
//!   from a measured capacity (token verification, session set-up and the sync that
//!   follows are the costly part of a login).
//!
//! A refused login gets `ServerBusy` with a `retry_after_ms` spread by a hash of the
//! connection and the time over `[retry_after, 2 × retry_after)`, so the refused
//! clients do not return in step. `Ping`, and every request of a logged-in session, is
//! never refused here.
//!
//! Sans-IO: time comes in as [`Timestamp`]s (the login bucket) and [`Round`]s measured
//! by the driver; no clock is read.

use std::time::Duration;

use crate::config::RateLimit;
use crate::rate_limit::TokenBucket;
use crate::time::Timestamp;

/// The span over which the busy share is measured.
pub const WINDOW: Duration = Duration::from_millis(100);

/// Settings of [`Admission`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Busy share of a window (percent, 1–100) at or above which the core is
    /// overloaded; 0 turns the CPU budget off. Default 0 (off): the shares are wall
    /// time, so a core that shares its CPU with other work (a test suite, a load
    /// generator) measures that work's time slices as its own load; turn it on
    /// ([`AdmissionConfig::RECOMMENDED_BUSY_PERCENT`]) where the loops have their cores.
    pub busy_high_percent: u8,
    /// Busy share at or below which an overloaded core takes new work again. Default 70.
    pub busy_low_percent: u8,
    /// Logins per second this core accepts (a burst of as many); 0: no fixed ceiling.
    /// Default 0.
    pub logins_per_second: u32,
    /// The shortest wait a refused client is told. Default 1 s.
    pub retry_after: Duration,
}

impl AdmissionConfig {
    /// The CPU budget's high mark for loops on cores of their own.
    pub const RECOMMENDED_BUSY_PERCENT: u8 = 90;
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            busy_high_percent: 0,
            busy_low_percent: 70,
            logins_per_second: 0,
            retry_after: Duration::from_secs(1),
        }
    }
}

/// What the loop measured of one round (wait and work), for [`Admission::record_round`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    /// Time since the previous round ended (this round's wait and work).
    pub cycle: Duration,
    /// Of that, the time the round's work took (zero if it found nothing to do).
    pub busy: Duration,
    /// The round left input behind: it reached its per-round budget.
    pub backlogged: bool,
}

/// Why a login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The core is over its CPU budget.
    Overloaded,
    /// The core's logins-per-second budget is spent.
    LoginRate,
}

/// A refused login: why, and how long the client should wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Which budget refused it.
    pub why: Refusal,
    /// What to tell the client: wait at least this long.
    pub retry_after_ms: u32,
}

/// One core's admission state.
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    /// Time, busy time and time behind in the window so far.
    window: Duration,
    busy: Duration,
    behind: Duration,
    /// The last round left input behind.
    last_backlogged: bool,
    overloaded: bool,
    logins: Option<TokenBucket>,
}

impl Admission {
    /// A core within its budgets, its login budget full, at `now`.
    pub fn new(config: AdmissionConfig, now: Timestamp) -> Admission {
        let logins = (config.logins_per_second > 0).then(|| {
            TokenBucket::new(
                RateLimit {
                    burst: config.logins_per_second,
                    per_second: config.logins_per_second,
                },
                now,
            )
        });
        Admission {
            config,
            window: Duration::ZERO,
            busy: Duration::ZERO,
            behind: Duration::ZERO,
            last_backlogged: false,
            overloaded: false,
            logins,
        }
    }

    /// One more round of the loop. At the end of each [`WINDOW`] the core's state is
    /// decided from the window's busy and behind shares.
    pub fn record_round(&mut self, round: Round) {
        if self.config.busy_high_percent == 0 {
            return;
        }
        self.window += round.cycle;
        self.busy += round.busy.min(round.cycle);
        if self.last_backlogged {
            self.behind += round.cycle;
        }
        self.last_backlogged = round.backlogged;
        if self.window < WINDOW {
            return;
        }
        let span = self.window.as_micros().max(1);
        let load = self.busy.max(self.behind).as_micros() * 100 / span;
        if load >= u128::from(self.config.busy_high_percent) {
            self.overloaded = true;
        } else if load <= u128::from(self.config.busy_low_percent) {
            self.overloaded = false;
        }
        self.window = Duration::ZERO;
        self.busy = Duration::ZERO;
        self.behind = Duration::ZERO;
    }

    /// Whether the core is over its CPU budget (new connections should be refused).
    pub fn is_overloaded(&self) -> bool {
        self.overloaded
    }

    /// Decides on a login on `conn_key` (any number that differs between connections,
    /// for the spread of retry times) at `now`.
    pub fn admit_login(&mut self, now: Timestamp, conn_key: u64) -> Result<(), Refused> {
        let why = if self.overloaded {
            Refusal::Overloaded
        } else if let Some(bucket) = &mut self.logins {
            match bucket.try_take(now) {
                Ok(()) => return Ok(()),
                Err(_) => Refusal::LoginRate,
            }
        } else {
            return Ok(());
        };
        Err(Refused {
            why,
            retry_after_ms: self.retry_after_ms(now, conn_key),
        })
    }

    /// `retry_after` spread over `[retry_after, 2 × retry_after)` by a hash of the
    /// connection and the time.
    fn retry_after_ms(&self, now: Timestamp, conn_key: u64) -> u32 {
        let base = u64::try_from(self.config.retry_after.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let spread = petrel_storage::partition::mix(conn_key ^ now.as_millis().rotate_left(32));
        u32::try_from(base + spread % base).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU budget on at its recommended marks.
    fn on() -> AdmissionConfig {
        AdmissionConfig {
            busy_high_percent: AdmissionConfig::RECOMMENDED_BUSY_PERCENT,
            ..AdmissionConfig::default()
        }
    }

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    /// `ms` rounds of one millisecond each, `busy_us` of it on work.
    fn load(a: &mut Admission, ms: u64, busy_us: u64) {
        for _ in 0..ms {
            a.record_round(Round {
                cycle: Duration::from_millis(1),
                busy: Duration::from_micros(busy_us),
                backlogged: false,
            });
        }
    }

    #[test]
    fn a_loop_that_falls_behind_is_overloaded_however_little_it_is_busy() {
        let mut a = Admission::new(on(), at(0));
        // Descheduled most of the time (10 % busy), every round leaving input behind.
        let behind = Round {
            cycle: Duration::from_millis(1),
            busy: Duration::from_micros(100),
            backlogged: true,
        };
        for _ in 0..100 {
            a.record_round(behind);
        }
        assert!(a.is_overloaded());
        // Caught up: one round in ten leaves something, which the next one takes.
        for i in 0..100 {
            a.record_round(Round {
                backlogged: i % 10 == 0,
                ..behind
            });
        }
        assert!(
            !a.is_overloaded(),
            "behind 10 % of the time is under the low mark"
        );
    }

    #[test]
    fn a_burst_drained_in_a_few_fast_rounds_is_no_overload() {
        let mut a = Admission::new(on(), at(0));
        // Sixteen 10 µs rounds drain a burst, then the loop idles in 10 ms waits.
        for _ in 0..16 {
            a.record_round(Round {
                cycle: Duration::from_micros(10),
                busy: Duration::from_micros(10),
                backlogged: true,
            });
        }
        for _ in 0..10 {
            a.record_round(Round {
                cycle: Duration::from_millis(10),
                ..Round::default()
            });
        }
        assert!(!a.is_overloaded());
    }

    #[test]
    fn a_busy_window_overloads_and_a_quiet_one_recovers_with_hysteresis() {
        let mut a = Admission::new(on(), at(0));
        load(&mut a, 100, 500);
        assert!(!a.is_overloaded(), "50 % busy is within budget");
        load(&mut a, 100, 950);
        assert!(a.is_overloaded(), "95 % busy is over 90 %");
        load(&mut a, 100, 800);
        assert!(
            a.is_overloaded(),
            "80 % is between the marks: still overloaded"
        );
        load(&mut a, 100, 600);
        assert!(!a.is_overloaded(), "60 % is under the low mark: recovered");
    }

    #[test]
    fn the_state_changes_only_at_the_end_of_a_window() {
        let mut a = Admission::new(on(), at(0));
        load(&mut a, 99, 1000);
        assert!(!a.is_overloaded(), "the window is not over yet");
        load(&mut a, 1, 1000);
        assert!(a.is_overloaded());
    }

    #[test]
    fn overloaded_cores_refuse_logins_with_a_spread_retry_after() {
        let config = AdmissionConfig {
            retry_after: Duration::from_millis(1000),
            ..on()
        };
        let mut a = Admission::new(config, at(0));
        assert_eq!(a.admit_login(at(0), 1), Ok(()));
        load(&mut a, 100, 1000);
        let waits: Vec<u32> = (0..200)
            .map(|conn| {
                let refused = a.admit_login(at(101), conn).expect_err("overloaded");
                assert_eq!(refused.why, Refusal::Overloaded);
                refused.retry_after_ms
            })
            .collect();
        assert!(waits.iter().all(|w| (1000..2000).contains(w)), "{waits:?}");
        let early = waits.iter().filter(|w| **w < 1500).count();
        assert!(
            (60..140).contains(&early),
            "spread over the range, not in step: {early} of 200 in the first half"
        );
    }

    #[test]
    fn the_login_rate_budget_refuses_past_its_burst_and_refills() {
        let config = AdmissionConfig {
            logins_per_second: 10,
            ..on()
        };
        let mut a = Admission::new(config, at(0));
        for conn in 0..10 {
            assert_eq!(a.admit_login(at(0), conn), Ok(()), "login {conn}");
        }
        let refused = a.admit_login(at(0), 10).expect_err("the burst is spent");
        assert_eq!(refused.why, Refusal::LoginRate);
        assert_eq!(
            a.admit_login(at(100), 11),
            Ok(()),
            "one token back after 100 ms"
        );
        assert!(a.admit_login(at(100), 12).is_err());
        assert!(
            !a.is_overloaded(),
            "the login budget leaves connections alone"
        );
    }

    #[test]
    fn budgets_at_zero_admit_everything() {
        let config = AdmissionConfig {
            busy_high_percent: 0,
            logins_per_second: 0,
            ..on()
        };
        let mut a = Admission::new(config, at(0));
        load(&mut a, 1000, 1000);
        assert!(!a.is_overloaded());
        for conn in 0..1000 {
            assert_eq!(a.admit_login(at(1000), conn), Ok(()));
        }
    }
}
