//! What one load-generating process measured: counters and HdrHistograms of latencies in
//! nanoseconds, mergeable across worker processes.
//!
//! Histograms cross the process boundary in HdrHistogram's V2 serialization format
//! (base64 in the JSON line a worker prints), so merging loses nothing: the parent adds
//! the workers' histograms bucket by bucket.

use anyhow::Context;
use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};

/// Lowest latency tracked: 1 µs (a loopback round trip is tens of µs).
const LOWEST_NS: u64 = 1_000;
/// Highest latency tracked: 10 minutes; longer ones are clamped (and counted as such).
const HIGHEST_NS: u64 = 600_000_000_000;
/// Significant decimal digits: 0.1 % resolution.
const SIGFIG: u8 = 3;

/// A latency histogram in nanoseconds.
#[derive(Debug, Clone)]
pub struct Latency(pub Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Latency(
            Histogram::new_with_bounds(LOWEST_NS, HIGHEST_NS, SIGFIG)
                .expect("constant histogram bounds are valid"),
        )
    }
}

impl Latency {
    /// Records one latency; values outside the tracked range are clamped into it.
    pub fn record(&mut self, ns: u64) {
        self.0.saturating_record(ns.clamp(LOWEST_NS, HIGHEST_NS));
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Latency) -> anyhow::Result<()> {
        self.0
            .add(&other.0)
            .map_err(|e| anyhow::anyhow!("cannot merge histograms: {e:?}"))
    }

    /// V2 serialization, base64.
    pub fn encode(&self) -> anyhow::Result<String> {
        let mut bytes = Vec::new();
        V2Serializer::new()
            .serialize(&self.0, &mut bytes)
            .map_err(|e| anyhow::anyhow!("cannot serialize a histogram: {e:?}"))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    /// The inverse of [`Latency::encode`].
    pub fn decode(text: &str) -> anyhow::Result<Latency> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .context("histogram is not base64")?;
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| anyhow::anyhow!("cannot deserialize a histogram: {e:?}"))?;
        let mut out = Latency::default();
        out.0
            .add(&h)
            .map_err(|e| anyhow::anyhow!("histogram out of range: {e:?}"))?;
        Ok(out)
    }
}

/// Counters of one run (or one worker's part of it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Connections that logged in.
    pub logged_in: u64,
    /// Connections that could not connect or log in (after their retries).
    pub login_failures: u64,
    /// Connects or logins refused and tried again after a back-off.
    #[serde(default)]
    pub refused: u64,
    /// Of those, logins the server answered `SERVER_BUSY` (its admission control).
    #[serde(default)]
    pub busy: u64,
    /// Connections the server closed (or reset) after login.
    pub disconnects: u64,
    /// Kicks received (any reason).
    pub kicks: u64,
    /// `SendMessage` frames written (warm-up included).
    pub sent: u64,
    /// Of those, scheduled after the warm-up.
    pub sent_measured: u64,
    /// Sends the open-loop schedule wanted but a connection's write queue was full.
    pub skipped: u64,
    /// `Ack`s received.
    pub acked: u64,
    /// Of those, acks of measured sends.
    pub acked_measured: u64,
    /// `Ack`s with `duplicate = true` (must be 0: every client_msg_id is new).
    pub duplicates: u64,
    /// `Error` answers to sends (rate limited, not a member, ...).
    pub send_errors: u64,
    /// Of those, `RATE_LIMITED`.
    pub rate_limited: u64,
    /// `MessagePush` frames received.
    pub delivered: u64,
    /// Of those, of measured sends.
    pub delivered_measured: u64,
    /// Deliveries the scenario expects for the messages this process sent, when it can
    /// know (every receiver in this process); `None` when receivers live elsewhere.
    pub expected_deliveries: Option<u64>,
    /// Pings written.
    pub pings: u64,
    /// Pongs received.
    pub pongs: u64,
}

impl Counts {
    /// Adds another process's counters (expected deliveries only add when both know).
    pub fn merge(&mut self, o: &Counts) {
        self.logged_in += o.logged_in;
        self.login_failures += o.login_failures;
        self.refused += o.refused;
        self.busy += o.busy;
        self.disconnects += o.disconnects;
        self.kicks += o.kicks;
        self.sent += o.sent;
        self.sent_measured += o.sent_measured;
        self.skipped += o.skipped;
        self.acked += o.acked;
        self.acked_measured += o.acked_measured;
        self.duplicates += o.duplicates;
        self.send_errors += o.send_errors;
        self.rate_limited += o.rate_limited;
        self.delivered += o.delivered;
        self.delivered_measured += o.delivered_measured;
        self.expected_deliveries = match (self.expected_deliveries, o.expected_deliveries) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
        self.pings += o.pings;
        self.pongs += o.pongs;
    }
}

/// Everything one process measured.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Counters.
    pub counts: Counts,
    /// TCP connect start → `LoginResult`.
    pub login: Latency,
    /// Scheduled send time → `Ack` (measured sends only).
    pub ack: Latency,
    /// Scheduled send time → `MessagePush` at a receiver (measured sends only).
    pub delivery: Latency,
    /// `Ping` written → `Pong`.
    pub pong: Latency,
    /// Wall-clock seconds of the connect phase (first connect → last login).
    pub connect_secs: f64,
    /// What the AF_XDP client's dataplane counted (`--client-mode xdp` only).
    pub client_dataplane: Option<ClientDataplane>,
}

/// Frames the AF_XDP client received and what it (or the kernel, for its sockets)
/// dropped: a load generator that drops frames slows the run it measures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientDataplane {
    /// TCP frames received for the client's connections.
    pub tcp_frames: u64,
    /// ARP frames received.
    pub arp_frames: u64,
    /// Malformed frames dropped.
    pub malformed: u64,
    /// Segments dropped because their shard's receive queue was full.
    pub queue_full: u64,
    /// Frames not sent because a transmit ring stayed full.
    pub tx_dropped: u64,
    /// The kernel's counters of the client's AF_XDP sockets: frames dropped, rx ring
    /// full, fill ring found empty.
    pub socket_rx_dropped: u64,
    /// See above.
    pub socket_rx_ring_full: u64,
    /// See above.
    pub socket_fill_ring_empty: u64,
}

/// [`Stats`] as one JSON line between a worker process and its parent.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatsWire {
    counts: Counts,
    login: String,
    ack: String,
    delivery: String,
    pong: String,
    connect_secs: f64,
    client_dataplane: Option<ClientDataplane>,
}

impl Stats {
    /// Adds another process's measurements. Connect time is the longest of the two (the
    /// processes connect in parallel).
    pub fn merge(&mut self, o: &Stats) -> anyhow::Result<()> {
        self.counts.merge(&o.counts);
        self.login.merge(&o.login)?;
        self.ack.merge(&o.ack)?;
        self.delivery.merge(&o.delivery)?;
        self.pong.merge(&o.pong)?;
        self.connect_secs = self.connect_secs.max(o.connect_secs);
        // One AF_XDP client process per run: at most one side has counters.
        self.client_dataplane = self.client_dataplane.or(o.client_dataplane);
        Ok(())
    }

    /// For the wire.
    pub fn to_wire(&self) -> anyhow::Result<StatsWire> {
        Ok(StatsWire {
            counts: self.counts,
            login: self.login.encode()?,
            ack: self.ack.encode()?,
            delivery: self.delivery.encode()?,
            pong: self.pong.encode()?,
            connect_secs: self.connect_secs,
            client_dataplane: self.client_dataplane,
        })
    }

    /// From the wire.
    pub fn from_wire(w: &StatsWire) -> anyhow::Result<Stats> {
        Ok(Stats {
            counts: w.counts,
            login: Latency::decode(&w.login)?,
            ack: Latency::decode(&w.ack)?,
            delivery: Latency::decode(&w.delivery)?,
            pong: Latency::decode(&w.pong)?,
            connect_secs: w.connect_secs,
            client_dataplane: w.client_dataplane,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_survive_the_wire_and_merge_exactly() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        for v in [10_000, 20_000, 30_000] {
            a.ack.record(v);
        }
        b.ack.record(5_000_000);
        b.counts.sent = 4;
        b.counts.expected_deliveries = Some(4);
        a.counts.expected_deliveries = Some(3);
        let wire = serde_json::to_string(&b.to_wire().unwrap()).unwrap();
        let back = Stats::from_wire(&serde_json::from_str(&wire).unwrap()).unwrap();
        a.merge(&back).unwrap();
        assert_eq!(a.ack.count(), 4);
        assert_eq!(a.counts.sent, 4);
        assert_eq!(a.counts.expected_deliveries, Some(7));
        let max = a.ack.0.max();
        assert!(a.ack.0.equivalent(max, 5_000_000), "max {max}");
        assert!(a.ack.0.equivalent(a.ack.0.value_at_quantile(0.5), 20_000));
    }

    #[test]
    fn out_of_range_values_are_clamped_not_lost() {
        let mut l = Latency::default();
        l.record(0);
        l.record(u64::MAX);
        assert_eq!(l.count(), 2);
    }

    #[test]
    fn unknown_expectation_stays_unknown() {
        let mut a = Counts {
            expected_deliveries: Some(3),
            ..Counts::default()
        };
        a.merge(&Counts::default());
        assert_eq!(a.expected_deliveries, None);
    }

    #[test]
    fn garbage_histogram_is_an_error() {
        assert!(Latency::decode("not base64!").is_err());
        assert!(Latency::decode("AAAA").is_err());
    }
}
