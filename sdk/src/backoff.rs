//! When and where to reconnect: exponential back-off with full jitter over an ordered
//! endpoint list.
//!
//! Pure logic, no clock and no socket: every method that depends on time takes `now`, and
//! the random source is a seeded [`StdRng`], so tests drive it deterministically.
//!
//! The rules:
//! - A failed connection attempt (refused, timed out, login failed) moves to the **next**
//!   endpoint in the list, wrapping around, and waits a back-off delay first.
//! - The delay for attempt `n` (0-based) is drawn uniformly from
//!   `[0, min(cap, base * 2^n)]` ("full jitter"), so a crowd of clients that lost the same
//!   server does not come back in lock-step.
//! - A connection that stayed up for at least `stable_after` resets the attempt counter,
//!   so the next drop starts again from `base`; the endpoint that worked is tried first.
//! - [`Reconnector::reconnect_now`] (a network change) resets the counter and makes the
//!   next attempt immediate.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Back-off parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Upper bound of the first delay. Default 500 ms.
    pub base: Duration,
    /// Largest delay ever drawn. Default 30 s.
    pub cap: Duration,
    /// A connection up at least this long resets the back-off. Default 30 s.
    pub stable_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            stable_after: Duration::from_secs(30),
        }
    }
}

/// Exponential back-off with full jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
    rng: StdRng,
}

impl Backoff {
    /// A back-off drawing from an RNG seeded with `seed`.
    pub fn new(config: BackoffConfig, seed: u64) -> Backoff {
        Backoff {
            config,
            attempt: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The ceiling of the next delay: `min(cap, base * 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.config
            .base
            .checked_mul(factor)
            .unwrap_or(self.config.cap)
            .min(self.config.cap)
    }

    /// Draws the next delay and counts the attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.random_range(0..=nanos))
    }

    /// Attempts counted since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Starts again from `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The parameters.
    pub fn config(&self) -> BackoffConfig {
        self.config
    }
}

/// Which endpoint to try next and how long to wait before trying it.
#[derive(Debug, Clone)]
pub struct Reconnector {
    /// What is tried, in turn: the directory's answer, then the configured endpoints.
    endpoints: Vec<String>,
    /// The configured endpoints (`ClientConfig::endpoints`).
    configured: Vec<String>,
    current: usize,
    /// Connects failed in a row since the last session or directory answer.
    failures: u32,
    /// Endpoints a stopping server named (`Kick.reconnect_to`): tried first, once each,
    /// before the configured list again.
    hinted: std::collections::VecDeque<String>,
    /// Spreads the hints: each client starts at its own place in the list.
    spread: usize,
    backoff: Backoff,
    connected_since: Option<Instant>,
    skip_delay: bool,
}

impl Reconnector {
    /// A reconnector over `endpoints` (tried in order, primary first). The list must not
    /// be empty; [`crate::ClientConfig::validate`] checks that before a client starts.
    pub fn new(endpoints: Vec<String>, config: BackoffConfig, seed: u64) -> Reconnector {
        Reconnector {
            configured: endpoints.clone(),
            endpoints,
            current: 0,
            failures: 0,
            hinted: std::collections::VecDeque::new(),
            spread: usize::try_from(seed % 1024).unwrap_or(0),
            backoff: Backoff::new(config, seed),
            connected_since: None,
            skip_delay: false,
        }
    }

    /// The endpoint the next attempt goes to (empty string if the list is empty).
    pub fn endpoint(&self) -> &str {
        if let Some(hint) = self.hinted.front() {
            return hint;
        }
        self.endpoints
            .get(self.current)
            .map(String::as_str)
            .unwrap_or("")
    }

    /// A stopping server named where to reconnect (a cluster's other nodes): the next
    /// attempts try them, each once, starting at a place of this client's own so the
    /// clients of one node spread over the others; then the configured list again.
    pub fn prefer(&mut self, hints: &[String]) {
        self.hinted.clear();
        if hints.is_empty() {
            return;
        }
        let start = self.spread % hints.len();
        self.hinted
            .extend(hints[start..].iter().chain(&hints[..start]).cloned());
    }

    /// Index of that endpoint in the list.
    pub fn endpoint_index(&self) -> usize {
        self.current
    }

    /// Attempts counted since the last reset.
    pub fn attempt(&self) -> u32 {
        self.backoff.attempt()
    }

    /// The attempt failed before a session was established: move to the next endpoint and
    /// return how long to wait before trying it.
    pub fn connect_failed(&mut self) -> Duration {
        self.connected_since = None;
        self.failures = self.failures.saturating_add(1);
        if self.hinted.pop_front().is_none() {
            self.advance();
        }
        self.delay()
    }

    /// A session was established at `now`.
    pub fn connected(&mut self, now: Instant) {
        self.connected_since = Some(now);
        self.failures = 0;
        self.hinted.clear();
    }

    /// An established session ended at `now`. If it had been up for `stable_after` the
    /// back-off starts over. With `move_on` (the server said it is shutting down) the next
    /// attempt goes to the next endpoint; otherwise the same endpoint is tried again.
    /// Returns the delay before the next attempt.
    pub fn disconnected(&mut self, now: Instant, move_on: bool) -> Duration {
        if let Some(since) = self.connected_since.take()
            && now.saturating_duration_since(since) >= self.backoff.config().stable_after
        {
            self.backoff.reset();
        }
        if move_on && self.hinted.is_empty() {
            self.advance();
        }
        self.delay()
    }

    /// Connects that failed in a row since the last session or directory answer.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The dispatch directory answered `endpoints`: from now on they are tried first,
    /// in order, then the configured endpoints not among them. A new list starts from
    /// its first endpoint (after any stopping server's hints); the same list again goes
    /// on where it was, so every endpoint gets its turn.
    pub fn use_directory(&mut self, endpoints: &[String]) {
        let mut list = endpoints.to_vec();
        for own in &self.configured {
            if !list.contains(own) {
                list.push(own.clone());
            }
        }
        if list != self.endpoints {
            self.endpoints = list;
            self.current = 0;
        }
        self.failures = 0;
    }

    /// No directory answered: keep the list as it is (the configured endpoints are in
    /// it), and ask again only after as many failures again.
    pub fn directory_unanswered(&mut self) {
        self.failures = 0;
    }

    /// How many endpoints are tried in turn.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }

    /// The network changed: forget the back-off and make the next attempt immediate.
    pub fn reconnect_now(&mut self) {
        self.backoff.reset();
        self.skip_delay = true;
    }

    fn advance(&mut self) {
        if !self.endpoints.is_empty() {
            self.current = (self.current + 1) % self.endpoints.len();
        }
    }

    fn delay(&mut self) -> Duration {
        if std::mem::take(&mut self.skip_delay) {
            return Duration::ZERO;
        }
        self.backoff.next_delay()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopping_servers_hints_come_first_then_the_configured_list() {
        let own = vec!["a:1".to_owned(), "b:1".to_owned()];
        let mut r = Reconnector::new(own, config(), 3);
        r.connected(Instant::now());
        // Kicked by a stopping node that names two others: this client (seed 3) starts
        // at the second hint.
        r.prefer(&["x:1".to_owned(), "y:1".to_owned()]);
        r.disconnected(Instant::now(), true);
        assert_eq!(r.endpoint(), "y:1");
        r.connect_failed();
        assert_eq!(r.endpoint(), "x:1");
        r.connect_failed();
        // Both hints failed: the configured list, where it was.
        assert_eq!(r.endpoint(), "a:1");
        // A hint that works is forgotten once connected.
        r.prefer(&["x:1".to_owned()]);
        assert_eq!(r.endpoint(), "x:1");
        r.connected(Instant::now());
        assert_eq!(r.endpoint(), "a:1");
    }

    fn config() -> BackoffConfig {
        BackoffConfig {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
            stable_after: Duration::from_secs(10),
        }
    }

    #[test]
    fn the_directorys_answer_comes_first_then_the_configured_list() {
        let own = vec!["a:1".to_owned(), "b:1".to_owned()];
        let mut r = Reconnector::new(own, config(), 3);
        r.connect_failed();
        r.connect_failed();
        assert_eq!((r.endpoint(), r.failures()), ("a:1", 2));
        r.use_directory(&["d:1".to_owned(), "b:1".to_owned()]);
        assert_eq!((r.endpoint(), r.failures()), ("d:1", 0));
        r.connect_failed();
        assert_eq!(r.endpoint(), "b:1");
        r.connect_failed();
        assert_eq!(r.endpoint(), "a:1", "the configured ones after");
        r.connect_failed();
        assert_eq!((r.endpoint(), r.failures()), ("d:1", 3));
        r.connect_failed();
        r.use_directory(&["d:1".to_owned(), "b:1".to_owned()]);
        assert_eq!(r.endpoint(), "b:1", "the same answer goes on where it was");
        r.directory_unanswered();
        assert_eq!((r.endpoint(), r.failures()), ("b:1", 0));
        r.connected(Instant::now());
        assert_eq!(r.failures(), 0);
    }

    #[test]
    fn ceilings_double_from_base_up_to_cap() {
        let mut b = Backoff::new(config(), 1);
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            ceilings.push(b.ceiling().as_millis());
            b.next_delay();
        }
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1600, 2000, 2000, 2000]);
    }

    #[test]
    fn delays_are_full_jitter_within_the_ceiling_and_spread_out() {
        let mut b = Backoff::new(config(), 7);
        let mut at_cap = Vec::new();
        for _ in 0..1000 {
            let ceiling = b.ceiling();
            let d = b.next_delay();
            assert!(d <= ceiling, "{d:?} > {ceiling:?}");
            if ceiling == config().cap {
                at_cap.push(d);
            }
        }
        // Full jitter: draws at the cap cover the whole range, not just its top.
        let low = at_cap
            .iter()
            .filter(|d| **d < Duration::from_millis(500))
            .count();
        let high = at_cap
            .iter()
            .filter(|d| **d > Duration::from_millis(1500))
            .count();
        assert!(low > 100 && high > 100, "low {low}, high {high}");
    }

    #[test]
    fn same_seed_same_delays_and_huge_attempt_counts_do_not_overflow() {
        let mut a = Backoff::new(config(), 42);
        let mut b = Backoff::new(config(), 42);
        let da: Vec<_> = (0..100).map(|_| a.next_delay()).collect();
        let db: Vec<_> = (0..100).map(|_| b.next_delay()).collect();
        assert_eq!(da, db);
        let mut big = Backoff::new(
            BackoffConfig {
                base: Duration::from_secs(u64::MAX / 4),
                cap: Duration::MAX,
                stable_after: Duration::ZERO,
            },
            3,
        );
        for _ in 0..100 {
            big.next_delay();
        }
        assert_eq!(big.attempt(), 100);
    }

    #[test]
    fn failures_walk_the_endpoint_list_and_wrap() {
        let eps = vec![
            "primary:1".to_owned(),
            "backup:1".to_owned(),
            "backup:2".to_owned(),
        ];
        let mut r = Reconnector::new(eps, config(), 5);
        let mut seen = vec![r.endpoint().to_owned()];
        for _ in 0..3 {
            r.connect_failed();
            seen.push(r.endpoint().to_owned());
        }
        assert_eq!(seen, ["primary:1", "backup:1", "backup:2", "primary:1"]);
        assert_eq!(r.attempt(), 3);
    }

    #[test]
    fn a_stable_connection_resets_the_backoff_and_keeps_its_endpoint() {
        let t0 = Instant::now();
        let mut r = Reconnector::new(vec!["a:1".into(), "b:1".into()], config(), 9);
        for _ in 0..5 {
            r.connect_failed();
        }
        assert_eq!((r.endpoint(), r.attempt()), ("b:1", 5));
        r.connected(t0);
        let delay = r.disconnected(t0 + Duration::from_secs(11), false);
        assert!(delay <= Duration::from_millis(100), "{delay:?}");
        assert_eq!((r.endpoint(), r.attempt()), ("b:1", 1));
    }

    #[test]
    fn a_short_lived_connection_keeps_backing_off() {
        let t0 = Instant::now();
        let mut r = Reconnector::new(vec!["a:1".into()], config(), 9);
        for _ in 0..4 {
            r.connect_failed();
        }
        r.connected(t0);
        r.disconnected(t0 + Duration::from_secs(1), false);
        assert_eq!(r.attempt(), 5);
    }

    #[test]
    fn server_shutdown_moves_to_the_next_endpoint() {
        let t0 = Instant::now();
        let mut r = Reconnector::new(vec!["a:1".into(), "b:1".into()], config(), 9);
        r.connected(t0);
        r.disconnected(t0, true);
        assert_eq!(r.endpoint(), "b:1");
    }

    #[test]
    fn reconnect_now_makes_the_next_attempt_immediate_and_resets() {
        let mut r = Reconnector::new(vec!["a:1".into()], config(), 11);
        for _ in 0..10 {
            r.connect_failed();
        }
        r.reconnect_now();
        assert_eq!(r.connect_failed(), Duration::ZERO);
        // The counter restarted: the following delay is bounded by base.
        assert!(r.connect_failed() <= Duration::from_millis(100));
    }
}
