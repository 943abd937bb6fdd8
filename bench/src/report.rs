//! The results of a run: a serializable [`Report`] (what `--json` prints) built from the
//! merged [`Stats`] and the server's `/proc` samples, and the human table.

use std::fmt::Write as _;

use serde::Serialize;

use super::config::{BenchConfig, Scenario, WireProtocol};
use super::procfs::Sample;
use super::stats::{ClientDataplane, Counts, Latency, Stats};

/// Percentiles of one latency histogram, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 90th.
    pub p90_us: f64,
    /// 99th.
    pub p99_us: f64,
    /// 99.9th.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
}

impl Percentiles {
    /// From a histogram in ns.
    pub fn of(l: &Latency) -> Percentiles {
        let h = &l.0;
        let us = |ns: u64| ns as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1000.0,
        }
    }
}

/// Server-side figures from `/proc`.
#[derive(Debug, Clone, Serialize)]
pub struct ServerFigures {
    /// The server's pid.
    pub pid: u32,
    /// RSS before any bench connection, KiB.
    pub rss_idle_kib: u64,
    /// RSS with every connection logged in and the scenario set up, KiB.
    pub rss_connected_kib: u64,
    /// RSS after the run, KiB.
    pub rss_end_kib: u64,
    /// Peak RSS (VmHWM) at the end, KiB.
    pub rss_peak_kib: u64,
    /// `(connected − idle) / connections`, bytes.
    pub rss_per_connection_bytes: f64,
    /// Server CPU (user + system) during the measured window, seconds.
    pub cpu_secs_measured: f64,
    /// That per 1,000 acknowledged messages.
    pub cpu_secs_per_1000_messages: Option<f64>,
    /// That per 1,000 deliveries.
    pub cpu_secs_per_1000_deliveries: Option<f64>,
    /// Growth of unreclaimable kernel slab (where socket structures live) from idle to
    /// connected, per connection, bytes. System-wide: on loopback it holds both ends of
    /// every connection, and other processes' allocations add noise.
    pub kernel_slab_per_connection_bytes: Option<f64>,
    /// Growth of the kernel's TCP buffer memory (system-wide, both ends) from idle to
    /// connected, KiB.
    pub kernel_tcp_mem_delta_kib: Option<i64>,
}

/// Samples of the server at the points that matter.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerSamples {
    /// Before connecting.
    pub idle: Option<Sample>,
    /// After setup.
    pub connected: Option<Sample>,
    /// Measured window start.
    pub measure_start: Option<Sample>,
    /// Measured window end.
    pub measure_end: Option<Sample>,
    /// After draining.
    pub end: Option<Sample>,
    /// The load generator's own CPU over the measured window (all its processes).
    pub client_cpu_secs: Option<f64>,
}

/// Everything `petrel bench` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario and its shape.
    pub scenario: Scenario,
    /// `kernel` (one kernel TCP socket per connection) or `xdp` (userspace TCP over
    /// AF_XDP sockets, one process).
    pub client_mode: &'static str,
    /// `petrel`, or `mqtt` (a broker loaded for reference).
    pub protocol: WireProtocol,
    /// Load-generating processes.
    pub client_processes: u64,
    /// Server address.
    pub server: String,
    /// Whether the bench started the server.
    pub server_spawned: bool,
    /// Target rate (messages/s), or `None` for flat out.
    pub rate: Option<f64>,
    /// Flat-out window per sender.
    pub window: Option<u32>,
    /// Payload bytes.
    pub payload_bytes: usize,
    /// Ping interval per connection, seconds.
    pub heartbeat_secs: f64,
    /// Warm-up seconds.
    pub warmup_secs: f64,
    /// Measured seconds.
    pub duration_secs: f64,
    /// Connections.
    pub connections: u64,
    /// Connect phase: seconds and logins per second.
    pub connect_secs: f64,
    /// Logins per second in the connect phase.
    pub connect_rate: f64,
    /// Deliveries per message.
    pub fanout: u64,
    /// Deliveries expected for every message sent (sent × fan-out).
    pub expected_deliveries: u64,
    /// Acks of measured sends per second of the measured window.
    pub throughput_msgs_per_sec: f64,
    /// Deliveries of measured sends per second of the measured window.
    pub deliveries_per_sec: f64,
    /// Raw counters.
    pub counts: Counts,
    /// Scheduled send → ack.
    pub ack: Percentiles,
    /// Scheduled send → delivery.
    pub delivery: Percentiles,
    /// Ping → pong.
    pub ping: Percentiles,
    /// Connect → login result.
    pub login: Percentiles,
    /// Server figures, when its pid is known.
    pub server_figures: Option<ServerFigures>,
    /// CPU seconds the load generator used in the measured window (all its processes):
    /// near `duration × client cores` means the client, not the server, was the limit.
    pub client_cpu_secs: Option<f64>,
    /// Load average when the run started (the machine may be shared).
    pub load_average: Option<String>,
    /// The AF_XDP client's frame counters (`--client-mode xdp`).
    pub client_dataplane: Option<ClientDataplane>,
}

/// What the coordinator knows besides the merged stats.
pub struct RunFacts<'a> {
    /// The config.
    pub config: &'a BenchConfig,
    /// Processes used.
    pub processes: u64,
    /// Server address.
    pub server: String,
    /// Spawned by the bench.
    pub spawned: bool,
    /// Server pid.
    pub pid: Option<u32>,
    /// Samples.
    pub samples: ServerSamples,
    /// `/proc/loadavg` at the start.
    pub load_average: Option<String>,
}

impl Report {
    /// Builds the report.
    pub fn build(stats: &Stats, facts: RunFacts<'_>) -> Report {
        let config = facts.config;
        let plan = config.plan();
        let secs = config.duration.as_secs_f64();
        let c = stats.counts;
        let connections = plan.connections();
        let server_figures = facts.pid.and_then(|pid| {
            let s = facts.samples;
            let idle = s.idle?;
            let connected = s.connected?;
            let end = s.end.unwrap_or(connected);
            let cpu = match (s.measure_start, s.measure_end) {
                (Some(a), Some(b)) => b.cpu.seconds() - a.cpu.seconds(),
                _ => 0.0,
            };
            let per = |n: u64| (n > 0).then(|| cpu / (n as f64 / 1000.0));
            Some(ServerFigures {
                pid,
                rss_idle_kib: idle.status.rss_kib,
                rss_connected_kib: connected.status.rss_kib,
                rss_end_kib: end.status.rss_kib,
                rss_peak_kib: end.status.peak_rss_kib,
                rss_per_connection_bytes: (connected.status.rss_kib as f64
                    - idle.status.rss_kib as f64)
                    * 1024.0
                    / connections as f64,
                cpu_secs_measured: cpu,
                cpu_secs_per_1000_messages: per(c.acked_measured),
                cpu_secs_per_1000_deliveries: per(c.delivered_measured),
                kernel_slab_per_connection_bytes: match (
                    idle.slab_unreclaimable_kib,
                    connected.slab_unreclaimable_kib,
                ) {
                    (Some(a), Some(b)) => Some((b as f64 - a as f64) * 1024.0 / connections as f64),
                    _ => None,
                },
                kernel_tcp_mem_delta_kib: match (idle.sockstat, connected.sockstat) {
                    (Some(a), Some(b)) => Some((b.mem_pages as i64 - a.mem_pages as i64) * 4),
                    _ => None,
                },
            })
        });
        Report {
            scenario: config.scenario,
            client_mode: if config.xdp.is_some() {
                "xdp"
            } else {
                "kernel"
            },
            protocol: config.protocol,
            client_processes: facts.processes,
            server: facts.server,
            server_spawned: facts.spawned,
            rate: config.rate,
            window: config.rate.is_none().then_some(config.window),
            payload_bytes: config.payload.len(),
            heartbeat_secs: config.heartbeat.as_secs_f64(),
            warmup_secs: config.warmup.as_secs_f64(),
            duration_secs: secs,
            connections,
            connect_secs: stats.connect_secs,
            connect_rate: if stats.connect_secs > 0.0 {
                c.logged_in as f64 / stats.connect_secs
            } else {
                0.0
            },
            fanout: plan.fanout(),
            expected_deliveries: c.sent * plan.fanout(),
            throughput_msgs_per_sec: c.acked_measured as f64 / secs,
            deliveries_per_sec: c.delivered_measured as f64 / secs,
            counts: c,
            ack: Percentiles::of(&stats.ack),
            delivery: Percentiles::of(&stats.delivery),
            ping: Percentiles::of(&stats.pong),
            login: Percentiles::of(&stats.login),
            server_figures,
            client_cpu_secs: facts.samples.client_cpu_secs,
            load_average: facts.load_average,
            client_dataplane: stats.client_dataplane,
        }
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let c = &self.counts;
        let scenario = match self.scenario {
            Scenario::Connect { connections } => format!("connect, {connections} connections"),
            Scenario::Chat1v1 { pairs } => format!("chat1v1, {pairs} pairs"),
            Scenario::Group { groups, members } => {
                format!("group, {groups} groups × {members} members")
            }
            Scenario::Chatroom { members, room } => {
                format!("chatroom {room}, {members} members")
            }
            Scenario::Broadcast { followers } => {
                format!("broadcast, 1 public account × {followers} followers")
            }
        };
        let _ = writeln!(
            s,
            "petrel bench: {scenario}{}",
            match self.protocol {
                WireProtocol::Petrel => "",
                WireProtocol::Mqtt => " — MQTT 3.1.1 QoS 1 to a broker (reference run)",
            }
        );
        let _ = writeln!(
            s,
            "  client mode: {}, {} process{}; server {}{}",
            match self.client_mode {
                "xdp" => "userspace TCP over AF_XDP",
                _ => "kernel sockets",
            },
            self.client_processes,
            if self.client_processes == 1 { "" } else { "es" },
            self.server,
            if self.server_spawned {
                " (spawned)"
            } else {
                ""
            }
        );
        if let Some(load) = &self.load_average {
            let _ = writeln!(s, "  load average at start: {load}");
        }
        let load = match (self.rate, self.window) {
            _ if self.fanout == 0 => format!(
                "hold, a ping per connection every {:.1} s",
                self.heartbeat_secs
            ),
            (Some(r), _) => format!("open loop, {} msg/s target", thousands(r)),
            (None, Some(w)) => format!("flat out, window {w} per sender (closed loop)"),
            _ => "—".into(),
        };
        let _ = writeln!(
            s,
            "  load: {load}, {} B payload, {:.1} s warm-up + {:.1} s measured",
            self.payload_bytes, self.warmup_secs, self.duration_secs
        );
        let _ = writeln!(
            s,
            "  connections: {} logged in in {:.2} s ({}/s), {} failed, {} dropped, {} kicks, \
             {} refused and retried ({} of them busy)",
            c.logged_in,
            self.connect_secs,
            thousands(self.connect_rate),
            c.login_failures,
            c.disconnects,
            c.kicks,
            c.refused,
            c.busy
        );
        if self.fanout > 0 {
            let _ = writeln!(
                s,
                "  messages: {} sent, {} acked, {} errors ({} rate-limited), {} skipped, {} \
                 duplicate acks",
                c.sent, c.acked, c.send_errors, c.rate_limited, c.skipped, c.duplicates
            );
            let _ = writeln!(
                s,
                "  deliveries: {} of {} expected (fan-out {})",
                c.delivered, self.expected_deliveries, self.fanout
            );
            let _ = writeln!(
                s,
                "  throughput (measured window): {} msg/s acked, {} deliveries/s",
                thousands(self.throughput_msgs_per_sec),
                thousands(self.deliveries_per_sec)
            );
        }
        let _ = writeln!(s, "  heartbeats: {} pings, {} pongs", c.pings, c.pongs);
        let _ = writeln!(
            s,
            "\n  {:<16} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "latency", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        let mut row = |name: &str, p: &Percentiles| {
            if p.count == 0 {
                return;
            }
            let _ = writeln!(
                s,
                "  {:<16} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10}",
                name,
                p.count,
                us(p.p50_us),
                us(p.p90_us),
                us(p.p99_us),
                us(p.p999_us),
                us(p.max_us)
            );
        };
        row("send → ack", &self.ack);
        row("send → delivery", &self.delivery);
        row("ping → pong", &self.ping);
        row("connect → login", &self.login);
        if let Some(f) = &self.server_figures {
            let _ = writeln!(
                s,
                "\n  server (pid {}): RSS idle {:.1} MiB, connected {:.1} MiB ({:.0} B per \
                 connection above idle), end {:.1} MiB, peak {:.1} MiB",
                f.pid,
                f.rss_idle_kib as f64 / 1024.0,
                f.rss_connected_kib as f64 / 1024.0,
                f.rss_per_connection_bytes,
                f.rss_end_kib as f64 / 1024.0,
                f.rss_peak_kib as f64 / 1024.0
            );
            if let Some(slab) = f.kernel_slab_per_connection_bytes {
                let _ = writeln!(
                    s,
                    "  kernel slab (system-wide, both ends on loopback): {slab:.0} B per \
                     connection"
                );
            }
            let per = |v: Option<f64>| v.map_or("—".into(), |v| format!("{v:.4}"));
            let _ = writeln!(
                s,
                "  server CPU in the measured window: {:.2} s = {} s per 1,000 messages, {} s \
                 per 1,000 deliveries",
                f.cpu_secs_measured,
                per(f.cpu_secs_per_1000_messages),
                per(f.cpu_secs_per_1000_deliveries)
            );
        }
        if let Some(cpu) = self.client_cpu_secs {
            let _ = writeln!(
                s,
                "  load generator CPU in the measured window: {cpu:.2} s ({:.0} % of one core)",
                cpu / self.duration_secs * 100.0
            );
        }
        if let Some(d) = &self.client_dataplane {
            let _ = writeln!(
                s,
                "  AF_XDP client: {} TCP + {} ARP frames in; dropped: {} fill ring empty, {} rx \
                 ring full, {} other (kernel), {} shard queue full, {} tx ring full, {} malformed",
                thousands(d.tcp_frames as f64),
                thousands(d.arp_frames as f64),
                d.socket_fill_ring_empty,
                d.socket_rx_ring_full,
                d.socket_rx_dropped,
                d.queue_full,
                d.tx_dropped,
                d.malformed
            );
        }
        s
    }
}

/// `12345.6` → `12,346`.
pub fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (k, ch) in digits.chars().enumerate() {
        if k > 0 && (digits.len() - k).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Microseconds, shown as µs below 10 ms and ms above.
fn us(v: f64) -> String {
    if v < 10_000.0 {
        format!("{v:.0} µs")
    } else {
        format!("{:.1} ms", v / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1234.0), "1,234");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
    }

    #[test]
    fn latency_units() {
        assert_eq!(us(151.2), "151 µs");
        assert_eq!(us(19_000.0), "19.0 ms");
    }
}
