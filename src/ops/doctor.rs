//! `petrel doctor`: compares a [`Host`] with what the configured scale needs and prints a
//! checklist — current value, recommended value, and the exact command or file that fixes
//! each line. [`evaluate`] is pure (tested on fixtures); [`render`] formats.
//!
//! A check **fails** only when the configured scale cannot be reached at all (the
//! descriptor limits); a **warn** costs latency or throughput under load (backlogs, rings,
//! queues, IRQ placement); **info** lines describe (ntuple, XDP mode, port range).

use std::fmt::Write as _;

use super::host::{Host, Nic, XdpSupport};
use super::interrupts::QueueKind;
use super::procfs::format_cpu_list;
use super::tune::{Change, Scope};
use crate::server::config::DataplaneKind;

/// What the host is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scale {
    /// Concurrent connections (`--connections`, else serve's `max_connections`).
    pub connections: u64,
    /// The dataplane cores Petrel pins to (serve's `cores`, else every online CPU).
    pub cores: Vec<usize>,
    /// Which dataplane serve will run.
    pub dataplane: DataplaneKind,
}

/// Ring slots recommended per queue (the seed platform's `ethtool -G em1 rx 4096 tx 4096`).
pub const RING_SLOTS: u32 = 4096;
/// The listen backlog the kernel-socket dataplane asks for per listener.
pub const LISTEN_BACKLOG: u64 = 4096;

/// Recommended values for a [`Scale`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets {
    /// Descriptors the server needs at least: one per connection plus headroom for
    /// listeners, the database and logs.
    pub nofile_needed: u64,
    /// RLIMIT_NOFILE to configure (1.5 × connections, rounded up to 100,000; the seed's
    /// 1,500,000 for a million).
    pub nofile: u64,
    /// `fs.nr_open` and `fs.file-max` (2 × `nofile`; the seed's 3,000,000).
    pub nr_open: u64,
    /// RLIMIT_NPROC: at least this many (threads are few; the seed set 1,500,000).
    pub nproc_needed: u64,
    /// `net.core.somaxconn` and `net.ipv4.tcp_max_syn_backlog`: room for a reconnect storm.
    pub backlog: u64,
    /// `net.ipv4.ip_local_port_range`.
    pub port_range: (u32, u32),
}

impl Targets {
    /// The targets for `scale`.
    pub fn for_scale(scale: &Scale) -> Targets {
        let n = scale.connections;
        let nofile_needed = n + 1024;
        let nofile = (n * 3 / 2).div_ceil(100_000).max(1) * 100_000;
        let nofile = nofile.max(nofile_needed);
        Targets {
            nofile_needed,
            nofile,
            nr_open: nofile * 2,
            nproc_needed: scale.cores.len() as u64 + 64,
            backlog: if n >= 100_000 { 65_535 } else { LISTEN_BACKLOG },
            port_range: (1024, 65_535),
        }
    }
}

/// How bad a line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Fine.
    Ok,
    /// Informational.
    Info,
    /// Costs performance under load.
    Warn,
    /// Blocks the configured scale.
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok  ",
            Status::Info => "info",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What is checked (`fs.nr_open`).
    pub name: String,
    /// Verdict.
    pub status: Status,
    /// The value now.
    pub current: String,
    /// The value wanted.
    pub recommended: String,
    /// Commands or files that fix it (shown when not ok).
    pub fix: Vec<String>,
    /// A remark.
    pub note: Option<String>,
    /// What `petrel tune` would change for this line.
    pub changes: Vec<Change>,
}

impl Check {
    pub(super) fn new(
        name: impl Into<String>,
        status: Status,
        current: impl Into<String>,
    ) -> Check {
        Check {
            name: name.into(),
            status,
            current: current.into(),
            recommended: String::new(),
            fix: Vec::new(),
            note: None,
            changes: Vec::new(),
        }
    }

    pub(super) fn recommend(mut self, value: impl Into<String>) -> Check {
        self.recommended = value.into();
        self
    }

    pub(super) fn fix(mut self, how: impl Into<String>) -> Check {
        self.fix.push(how.into());
        self
    }

    pub(super) fn note(mut self, note: impl Into<String>) -> Check {
        self.note = Some(note.into());
        self
    }

    fn change(mut self, change: Change) -> Check {
        self.changes.push(change);
        self
    }
}

/// Thousands separators: 1500000 → `1,500,000`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn opt(v: Option<u64>) -> String {
    v.map_or("unreadable".into(), thousands)
}

fn limit(v: Option<u64>) -> String {
    v.map_or("unlimited".into(), thousands)
}

const SYSCTL_FILE: &str = "scripts/deploy/sysctl.d/90-petrel.conf → /etc/sysctl.d/";
const LIMITS_FILE: &str = "scripts/deploy/limits.d/90-petrel.conf → /etc/security/limits.d/";
const UNIT_FILE: &str = "scripts/deploy/petrel.service → /etc/systemd/system/";

/// Every check for `host` at `scale`.
pub fn evaluate(host: &Host, scale: &Scale) -> Vec<Check> {
    let t = Targets::for_scale(scale);
    let mut checks = Vec::new();
    checks.extend(limits(host, scale, &t));
    checks.extend(sysctls(host, &t));
    match &host.nic {
        Some(nic) => checks.extend(nic_checks(nic, scale)),
        None => checks.push(
            Check::new("network interface", Status::Info, "none checked")
                .note(host.no_nic.clone().unwrap_or_else(|| "no interface".into())),
        ),
    }
    checks.extend(host.kdamonds.iter().map(|k| kdamond_check(k, host, scale)));
    checks
}

/// A running DAMON monitor on a dataplane core stalls that core's loop for the length of
/// each of its runs (docs/PERFORMANCE.md, "Ninth session": 12 ms every 0.5 s on the
/// project's VM, and `--sync none`'s p99 2–3× higher with it running).
fn kdamond_check(k: &super::host::Kdamond, host: &Host, scale: &Scale) -> Check {
    let name = match k.pid {
        Some(pid) => format!("DAMON kdamond.{} (pid {pid})", k.index),
        None => format!("DAMON kdamond.{}", k.index),
    };
    let allowed = k.cpus.clone().unwrap_or_else(|| host.cpus.clone());
    let on_dataplane: Vec<usize> = allowed
        .iter()
        .copied()
        .filter(|c| scale.cores.contains(c))
        .collect();
    let current = format!("running, on CPUs {}", format_cpu_list(&allowed));
    if on_dataplane.is_empty() {
        return Check::new(name, Status::Ok, current).recommend("off the dataplane cores");
    }
    let others: Vec<usize> = host
        .cpus
        .iter()
        .copied()
        .filter(|c| !scale.cores.contains(c))
        .collect();
    let mut check = Check::new(name, Status::Warn, current)
        .recommend("off the dataplane cores")
        .note(format!(
            "the kernel's data-access monitor runs for milliseconds at a time; on dataplane \
             CPUs {} each run stalls that core's loop and shows in the tail latency",
            format_cpu_list(&on_dataplane)
        ));
    if let (Some(pid), false) = (k.pid, others.is_empty()) {
        check = check.fix(format!("taskset -pc {} {pid}", format_cpu_list(&others)));
    }
    check.fix(format!(
        "if the host can do without the reclaim it drives: echo off > {}/{}/state",
        super::host::DAMON_ADMIN,
        k.index
    ))
}

fn limits(host: &Host, scale: &Scale, t: &Targets) -> Vec<Check> {
    let Some(l) = &host.limits else {
        return vec![Check::new("RLIMIT_NOFILE", Status::Warn, "unreadable")];
    };
    let nofile = t.nofile.to_string();
    let who = &host.limits_of;
    let mut hard = Check::new(
        format!("RLIMIT_NOFILE hard ({who})"),
        Status::Ok,
        limit(l.nofile.hard),
    )
    .recommend(format!(
        "≥ {} (set {})",
        thousands(t.nofile_needed),
        thousands(t.nofile)
    ));
    if !l.nofile.hard_at_least(t.nofile_needed) {
        hard.status = Status::Fail;
        hard = hard
            .note(format!(
                "kernel sockets need one descriptor per connection: {} connections cannot be \
                 reached (the AF_XDP dataplane needs none per connection). Raising a hard \
                 limit needs CAP_SYS_RESOURCE: set it where the server starts",
                thousands(scale.connections)
            ))
            .fix(format!("systemd: LimitNOFILE={nofile} ({UNIT_FILE})"))
            .fix(format!(
                "login shells: '* hard nofile {nofile}' and '* soft nofile {nofile}' ({LIMITS_FILE})"
            ))
            .fix(format!("a running server: prlimit --pid PID --nofile={nofile}:{nofile}"))
            .change(Change::limits(&l.nofile, t.nofile));
    }
    let mut soft = Check::new(
        format!("RLIMIT_NOFILE soft ({who})"),
        Status::Ok,
        limit(l.nofile.soft),
    )
    .recommend(format!("≥ {}", thousands(t.nofile_needed)));
    if !l.nofile.soft_at_least(t.nofile_needed) {
        if l.nofile.hard_at_least(t.nofile_needed) {
            soft = soft.note("petrel serve raises its soft limit to the hard limit at start");
        } else {
            soft.status = Status::Fail;
            soft = soft
                .note("serve raises the soft limit only up to the hard limit")
                .fix(format!("see RLIMIT_NOFILE hard: LimitNOFILE={nofile}"));
        }
    }
    let mut nproc = Check::new(
        format!("RLIMIT_NPROC soft ({who})"),
        Status::Ok,
        limit(l.nproc.soft),
    )
    .recommend(format!("≥ {} threads", thousands(t.nproc_needed)));
    if !l.nproc.soft_at_least(t.nproc_needed) {
        nproc.status = Status::Fail;
        nproc = nproc
            .note("Petrel runs one thread per dataplane core plus a few")
            .fix(format!(
                "'* soft nproc 1500000' / '* hard nproc 1500000' ({LIMITS_FILE})"
            ))
            .fix(format!("systemd: LimitNPROC=1500000 ({UNIT_FILE})"));
    }
    vec![hard, soft, nproc]
}

fn sysctl_check(name: &str, current: Option<u64>, want: u64, fail: Status, scope: Scope) -> Check {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    let mut c =
        Check::new(name, Status::Ok, opt(current)).recommend(format!("≥ {}", thousands(want)));
    if current.is_none_or(|v| v < want) {
        c.status = fail;
        c = c
            .fix(format!("sysctl -w {name}={want}"))
            .fix(format!("persist: {SYSCTL_FILE}"))
            .change(Change::sysctl(
                scope,
                &path,
                current.map(|v| v.to_string()),
                want.to_string(),
            ));
    }
    c
}

fn sysctls(host: &Host, t: &Targets) -> Vec<Check> {
    let s = &host.sysctls;
    let mut nr_open = sysctl_check("fs.nr_open", s.nr_open, t.nr_open, Status::Fail, Scope::Fs);
    if s.nr_open.is_some_and(|v| v >= t.nofile_needed) && nr_open.status == Status::Fail {
        // Enough for this scale, short of the recommendation.
        nr_open.status = Status::Warn;
    }
    nr_open = nr_open.note("caps RLIMIT_NOFILE: no hard limit can be set above it");
    let mut file_max = sysctl_check(
        "fs.file-max",
        s.file_max,
        t.nr_open,
        Status::Fail,
        Scope::Fs,
    );
    if s.file_max.is_some_and(|v| v >= t.nofile_needed) && file_max.status == Status::Fail {
        file_max.status = Status::Warn;
    }
    file_max = file_max.note("open files of the whole system");
    let somaxconn = sysctl_check(
        "net.core.somaxconn",
        s.somaxconn,
        t.backlog,
        Status::Warn,
        Scope::Net,
    )
    .note("caps every listen backlog: a reconnect storm overflows a short one (SYNs dropped, clients retry after 1 s, 3 s, ...)");
    let syn = sysctl_check(
        "net.ipv4.tcp_max_syn_backlog",
        s.syn_backlog,
        t.backlog,
        Status::Warn,
        Scope::Net,
    )
    .note("half-open connections per listener");
    let (lo, hi) = t.port_range;
    let range = match s.port_range {
        None => Check::new("net.ipv4.ip_local_port_range", Status::Warn, "unreadable"),
        Some((a, b)) => {
            let mut c = Check::new(
                "net.ipv4.ip_local_port_range",
                Status::Ok,
                format!("{a} {b} ({} ports)", thousands(u64::from(b - a + 1))),
            )
            .recommend(format!("{lo} {hi}"))
            .note(
                "only outbound connections use it: a load balancer or load generator on this \
                 host (the seed's Nginx); accepted connections never do",
            );
            if (a, b) != (lo, hi) && (b - a) < (hi - lo) {
                c.status = Status::Info;
                c = c
                    .fix(format!(
                        "sysctl -w net.ipv4.ip_local_port_range=\"{lo} {hi}\""
                    ))
                    .fix(format!("persist: {SYSCTL_FILE}"))
                    .change(Change::sysctl(
                        Scope::Net,
                        "/proc/sys/net/ipv4/ip_local_port_range",
                        Some(format!("{a} {b}")),
                        format!("{lo} {hi}"),
                    ));
            }
            c
        }
    };
    vec![nr_open, file_max, somaxconn, syn, range]
}

/// The dataplane core queue `q` should interrupt.
pub fn core_for_queue(cores: &[usize], q: usize) -> Option<usize> {
    (!cores.is_empty()).then(|| cores[q % cores.len()])
}

fn nic_checks(nic: &Nic, scale: &Scale) -> Vec<Check> {
    let name = &nic.name;
    let mut out = Vec::new();
    let driver = match &nic.driver {
        Ok((d, bus)) if bus.is_empty() => d.clone(),
        Ok((d, bus)) => format!("{d} at {bus}"),
        Err(e) => format!("unknown ({e})"),
    };
    out.push(Check::new(format!("{name}: driver"), Status::Info, driver));

    // Rings.
    out.push(match &nic.rings {
        Err(e) => Check::new(format!("{name}: ring sizes"), Status::Info, e.clone())
            .note("nothing to tune (veth and some virtual NICs have fixed rings)"),
        Ok(r) => {
            let want_rx = RING_SLOTS.min(r.rx_max);
            let want_tx = RING_SLOTS.min(r.tx_max);
            let mut c = Check::new(
                format!("{name}: ring sizes"),
                Status::Ok,
                format!("rx {} tx {} (max {} / {})", r.rx, r.tx, r.rx_max, r.tx_max),
            )
            .recommend(format!("rx {want_rx} tx {want_tx}"));
            if r.rx < want_rx || r.tx < want_tx {
                c.status = Status::Warn;
                c = c
                    .note("short rings drop packets in bursts (rx_missed / rx_no_buffer)")
                    .fix(format!("ethtool -G {name} rx {want_rx} tx {want_tx}"))
                    .change(Change::rings(name, (r.rx, r.tx), (want_rx, want_tx)));
            }
            c
        }
    });

    // Channels / queues.
    let cores = scale.cores.len() as u32;
    match &nic.channels {
        Err(e) => out.push(Check::new(
            format!("{name}: queues"),
            Status::Info,
            format!(
                "{} rx / {} tx (sysfs); channels: {e}",
                nic.sysfs_queues.0, nic.sysfs_queues.1
            ),
        )),
        Ok(ch) => {
            let max = ch.max_rx_queues();
            let want = cores.min(max).max(1);
            let now = ch.rx_queues();
            let shape = if ch.max_combined > 0 {
                format!("combined {} (max {})", ch.combined, ch.max_combined)
            } else {
                format!(
                    "rx {} tx {} (max {} / {})",
                    ch.rx, ch.tx, ch.max_rx, ch.max_tx
                )
            };
            let mut c = Check::new(format!("{name}: queues"), Status::Ok, shape)
                .recommend(format!("{want} (one per dataplane core)"));
            let off = match scale.dataplane {
                // Each AF_XDP socket serves one queue with one core: queues without a
                // socket pass Petrel's packets to the kernel.
                DataplaneKind::Xdp => now != want,
                // The kernel stack spreads flows over queues; fewer queues than cores
                // leaves cores without softirq work of their own.
                DataplaneKind::Kernel => now < want,
                // A DPDK-bound NIC has no kernel channels: DPDK configures its queues.
                DataplaneKind::Dpdk => false,
            };
            if off {
                c.status = Status::Warn;
                let how = if ch.max_combined > 0 {
                    format!("ethtool -L {name} combined {want}")
                } else {
                    format!("ethtool -L {name} rx {want} tx {want}")
                };
                c = c.fix(how).change(Change::channels(name, now, want));
            }
            out.push(c);
        }
    }

    // IRQ affinity.
    if nic.irqs.is_empty() {
        out.push(
            Check::new(
                format!("{name}: IRQ affinity"),
                Status::Info,
                "no queue interrupts found",
            )
            .note(if nic.has_device {
                "this driver's interrupt names are not recognised; see /proc/interrupts"
            } else {
                "a virtual interface (veth, bridge, ...) has no interrupts of its own"
            }),
        );
    } else {
        for (q, affinity) in &nic.irqs {
            let Some(core) = core_for_queue(&scale.cores, q.queue) else {
                continue;
            };
            let kind = match q.kind {
                QueueKind::Combined => "",
                QueueKind::Rx => " rx",
                QueueKind::Tx => " tx",
            };
            let mut c = Check::new(
                format!("{name}: queue {}{kind} IRQ {} ({})", q.queue, q.irq, q.name),
                Status::Ok,
                format!("CPUs {}", format_cpu_list(affinity)),
            )
            .recommend(format!("CPU {core}"));
            if affinity != &[core] {
                c.status = Status::Warn;
                c = c
                    .note("a queue's interrupts belong on the core that serves it (cache-hot, no cross-core wake-ups); stop irqbalance or ban these IRQs")
                    .fix(format!("echo {core} > /proc/irq/{}/smp_affinity_list", q.irq))
                    .change(Change::irq(q.irq, affinity, core));
            }
            out.push(c);
        }
    }

    // ntuple.
    let ntuple = match &nic.ntuple {
        Err(e) => Check::new(format!("{name}: ntuple filters"), Status::Info, e.clone()),
        Ok(f) => {
            let state = match (f.available, f.active) {
                (_, true) => "on",
                (true, false) => "off (can be switched on)",
                (false, false) => "off [fixed]: not supported",
            };
            let rules = match &nic.rules {
                Ok(r) if r.is_empty() => "; no rules".to_owned(),
                Ok(r) => format!(
                    "; rules: {}",
                    r.iter()
                        .map(|r| format!(
                            "loc {} {}dst-port {} → queue {}",
                            r.location,
                            r.dst_ip
                                .map(|ip| format!("dst-ip {ip} "))
                                .unwrap_or_default(),
                            r.dst_port.map_or("*".into(), |p| p.to_string()),
                            r.action
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Err(_) => String::new(),
            };
            let mut c = Check::new(
                format!("{name}: ntuple filters"),
                Status::Info,
                format!("{state}{rules}"),
            )
            .note("the AF_XDP dataplane steers its port to one queue with an ntuple rule when it serves one queue; without ntuple it serves every queue (RSS)");
            if f.available && !f.active {
                c = c.fix(format!("ethtool -K {name} ntuple on"));
            }
            c
        }
    };
    out.push(ntuple);

    // XDP.
    let (status, current, note) = match &nic.xdp {
        XdpSupport::ProbedNative => (
            Status::Ok,
            "native (driver mode): attached and detached the filter (--probe-xdp)".to_owned(),
            None,
        ),
        XdpSupport::ProbedGeneric(why) => (
            Status::Warn,
            "generic (SKB) mode only: native refused when probing (--probe-xdp)".to_owned(),
            Some(if nic.driver.as_ref().is_ok_and(|(d, _)| d == "veth") {
                format!(
                    "native mode: {why}; veth takes native XDP only with at least as many rx \
                     queues as its peer has tx queues, and a peer MTU that fits a page"
                )
            } else {
                format!("native mode: {why}")
            }),
        ),
        XdpSupport::ProbeFailed(why) => (Status::Warn, format!("probe failed: {why}"), None),
        XdpSupport::DriverNative(d) => (
            Status::Ok,
            format!("native (driver {d} implements XDP; by driver name, not probed)"),
            Some("--probe-xdp attaches the filter for a moment to be sure (root)".to_owned()),
        ),
        XdpSupport::DriverGeneric(d) => (
            Status::Warn,
            format!("generic (SKB) mode only: driver {d} has no native XDP (by driver name)"),
            Some("generic XDP works on any interface but copies every packet".to_owned()),
        ),
        XdpSupport::Unknown => (Status::Info, "unknown (no driver name)".to_owned(), None),
    };
    let status = if scale.dataplane != DataplaneKind::Xdp && status == Status::Warn {
        Status::Info
    } else {
        status
    };
    let mut c = Check::new(format!("{name}: XDP / AF_XDP"), status, current);
    c.note = note;
    out.push(c);
    out
}

/// The checklist as text; the header names the scale.
pub fn render(checks: &[Check], scale: &Scale, host: &Host) -> String {
    let mut out = String::new();
    let iface = host.nic.as_ref().map_or("no interface".to_owned(), |n| {
        format!("interface {}", n.name)
    });
    let _ = writeln!(
        out,
        "petrel doctor: {} connections, {} dataplane on cores {} ({} online CPUs: {}), {iface}\n",
        thousands(scale.connections),
        match scale.dataplane {
            DataplaneKind::Kernel => "kernel",
            DataplaneKind::Xdp => "xdp",
            DataplaneKind::Dpdk => "dpdk",
        },
        format_cpu_list(&scale.cores),
        host.cpus.len(),
        format_cpu_list(&host.cpus),
    );
    for c in checks {
        let _ = write!(out, "[{}] {:<44} {}", c.status.label(), c.name, c.current);
        if !c.recommended.is_empty() && c.status != Status::Ok {
            let _ = write!(out, "  → recommended {}", c.recommended);
        } else if !c.recommended.is_empty() {
            let _ = write!(out, "  (recommended {})", c.recommended);
        }
        out.push('\n');
        if c.status != Status::Ok {
            if let Some(note) = &c.note {
                let _ = writeln!(out, "       {note}");
            }
            for fix in &c.fix {
                let _ = writeln!(out, "       fix: {fix}");
            }
        }
    }
    let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
    let _ = writeln!(
        out,
        "\n{} ok, {} info, {} warn, {} fail{}",
        count(Status::Ok),
        count(Status::Info),
        count(Status::Warn),
        count(Status::Fail),
        if count(Status::Fail) > 0 {
            format!(
                ": this host cannot hold {} connections as configured",
                thousands(scale.connections)
            )
        } else {
            String::new()
        }
    );
    if checks.iter().any(|c| !c.changes.is_empty()) {
        let _ = writeln!(
            out,
            "`petrel tune --dry-run` shows what `petrel tune --apply` would change."
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use petrel_dataplane::sys::ethtool::NtupleRuleInfo;

    use super::*;
    use crate::ops::host::from_fixture;
    use crate::ops::tune::What;

    fn find<'a>(checks: &'a [Check], name: &str) -> &'a Check {
        checks
            .iter()
            .find(|c| c.name.starts_with(name))
            .unwrap_or_else(|| panic!("no check {name:?} in {checks:#?}"))
    }

    fn scale(connections: u64, cores: Vec<usize>, dataplane: DataplaneKind) -> Scale {
        Scale {
            connections,
            cores,
            dataplane,
        }
    }

    #[test]
    fn a_kdamond_on_a_dataplane_core_is_a_warning_with_the_command_that_moves_it() {
        // The development VM runs one (a host-configured proactive reclaimer).
        let mut host = from_fixture("vm-2cpu", "eth0", vec![0, 1], None);
        assert_eq!(
            host.kdamonds,
            [crate::ops::host::Kdamond {
                index: 0,
                pid: Some(82),
                cpus: Some(vec![0, 1]),
            }]
        );
        let checks = evaluate(&host, &scale(1000, vec![0], DataplaneKind::Kernel));
        let c = find(&checks, "DAMON kdamond.0 (pid 82)");
        assert_eq!(c.status, Status::Warn);
        assert!(c.fix.iter().any(|f| f == "taskset -pc 1 82"), "{c:#?}");
        assert!(c.note.as_deref().is_some_and(|n| n.contains("CPUs 0")));
        // Every CPU a dataplane core: nowhere to move it, only the switch.
        let checks = evaluate(&host, &scale(1000, vec![0, 1], DataplaneKind::Kernel));
        let c = find(&checks, "DAMON kdamond.0");
        assert_eq!(c.status, Status::Warn);
        assert!(!c.fix.iter().any(|f| f.starts_with("taskset")));
        assert!(c.fix.iter().any(|f| f.contains("kdamonds/0/state")));
        // Kept off the dataplane cores: fine.
        host.kdamonds[0].cpus = Some(vec![1]);
        let checks = evaluate(&host, &scale(1000, vec![0], DataplaneKind::Kernel));
        assert_eq!(find(&checks, "DAMON kdamond.0").status, Status::Ok);
        // None running: no line.
        host.kdamonds.clear();
        let checks = evaluate(&host, &scale(1000, vec![0], DataplaneKind::Kernel));
        assert!(!checks.iter().any(|c| c.name.starts_with("DAMON")));
    }

    #[test]
    fn targets_follow_the_scale_and_match_the_seed_at_a_million() {
        let t = Targets::for_scale(&scale(1_000_000, vec![0, 1], DataplaneKind::Kernel));
        assert_eq!((t.nofile, t.nr_open), (1_500_000, 3_000_000));
        assert_eq!(t.nofile_needed, 1_001_024);
        assert_eq!(t.backlog, 65_535);
        let small = Targets::for_scale(&scale(15_000, vec![0], DataplaneKind::Kernel));
        assert_eq!(
            (small.nofile, small.nr_open, small.backlog),
            (100_000, 200_000, 4096)
        );
        assert_eq!(thousands(1_500_000), "1,500,000");
        assert_eq!(thousands(999), "999");
    }

    #[test]
    fn the_deploy_files_set_what_doctor_recommends_for_a_million() {
        let root = env!("CARGO_MANIFEST_DIR");
        let t = Targets::for_scale(&scale(1_000_000, vec![0], DataplaneKind::Kernel));
        let sysctl =
            std::fs::read_to_string(format!("{root}/scripts/deploy/sysctl.d/90-petrel.conf"))
                .unwrap();
        for line in [
            format!("fs.nr_open = {}", t.nr_open),
            format!("fs.file-max = {}", t.nr_open),
            format!("net.core.somaxconn = {}", t.backlog),
            format!("net.ipv4.tcp_max_syn_backlog = {}", t.backlog),
            format!(
                "net.ipv4.ip_local_port_range = {} {}",
                t.port_range.0, t.port_range.1
            ),
        ] {
            assert!(sysctl.lines().any(|l| l == line), "{line:?} missing");
        }
        let unit =
            std::fs::read_to_string(format!("{root}/scripts/deploy/petrel.service")).unwrap();
        assert!(
            unit.lines()
                .any(|l| l == format!("LimitNOFILE={}", t.nofile))
        );
        let limits =
            std::fs::read_to_string(format!("{root}/scripts/deploy/limits.d/90-petrel.conf"))
                .unwrap();
        let nofile: Vec<&str> = limits
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains("nofile"))
            .collect();
        assert_eq!(nofile.len(), 2);
        assert!(nofile.iter().all(|l| l.ends_with(&t.nofile.to_string())));
        let toml = format!("{root}/scripts/deploy/petrel.toml");
        let config = crate::server::ServeConfig::resolve(&crate::server::ServeArgs {
            config: Some(toml.into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(config.max_connections, 1_000_000);
    }

    #[test]
    fn an_untuned_ixgbe_server_fails_the_million_and_every_fix_is_named() {
        let mut host = from_fixture("ixgbe-8cpu", "em1", (0..8).collect(), None);
        if let Some(nic) = &mut host.nic {
            nic.rules = Ok(vec![NtupleRuleInfo {
                location: 1,
                flow_type: 1,
                dst_port: Some(9500),
                dst_ip: None,
                action: 0,
            }]);
        }
        let s = scale(1_000_000, (0..8).collect(), DataplaneKind::Kernel);
        let checks = evaluate(&host, &s);

        let hard = find(&checks, "RLIMIT_NOFILE hard");
        assert_eq!(hard.status, Status::Fail);
        assert_eq!(hard.current, "524,288");
        assert!(hard.fix.iter().any(|f| f.contains("LimitNOFILE=1500000")));
        assert_eq!(find(&checks, "RLIMIT_NOFILE soft").status, Status::Fail);
        assert_eq!(find(&checks, "RLIMIT_NPROC").status, Status::Ok);

        let nr_open = find(&checks, "fs.nr_open");
        assert_eq!(
            nr_open.status,
            Status::Warn,
            "1,048,576 holds a million, short of 3M"
        );
        assert_eq!(nr_open.fix[0], "sysctl -w fs.nr_open=3000000");
        assert_eq!(find(&checks, "fs.file-max").status, Status::Ok);
        let somaxconn = find(&checks, "net.core.somaxconn");
        assert_eq!(somaxconn.status, Status::Warn);
        assert_eq!(somaxconn.fix[0], "sysctl -w net.core.somaxconn=65535");
        assert_eq!(
            find(&checks, "net.ipv4.tcp_max_syn_backlog").status,
            Status::Warn
        );

        let rings = find(&checks, "em1: ring sizes");
        assert_eq!(rings.status, Status::Warn);
        assert_eq!(rings.fix, vec!["ethtool -G em1 rx 4096 tx 4096"]);
        assert_eq!(
            find(&checks, "em1: queues").status,
            Status::Ok,
            "8 queues, 8 cores"
        );

        // Queues 0-3 are pinned to their cores, 4-7 spread over every CPU.
        for q in 0..8u32 {
            let c = find(&checks, &format!("em1: queue {q} IRQ {}", 120 + q));
            if q < 4 {
                assert_eq!(c.status, Status::Ok, "{c:?}");
            } else {
                assert_eq!(c.status, Status::Warn, "{c:?}");
                assert_eq!(
                    c.fix,
                    vec![format!(
                        "echo {q} > /proc/irq/{}/smp_affinity_list",
                        120 + q
                    )]
                );
                assert_eq!(
                    c.changes[0].what,
                    What::Irq {
                        irq: 120 + q,
                        cpu: q as usize
                    }
                );
            }
        }
        let ntuple = find(&checks, "em1: ntuple");
        assert_eq!(ntuple.current, "on; rules: loc 1 dst-port 9500 → queue 0");
        let xdp = find(&checks, "em1: XDP");
        assert!(xdp.current.starts_with("native (driver ixgbe"), "{xdp:?}");

        let text = render(&checks, &s, &host);
        assert!(text.contains("cannot hold 1,000,000 connections"), "{text}");
        assert!(
            text.contains("fix: echo 7 > /proc/irq/127/smp_affinity_list"),
            "{text}"
        );
    }

    #[test]
    fn queue_count_and_irq_placement_follow_the_pinned_cores() {
        let host = from_fixture("ixgbe-8cpu", "em1", (0..8).collect(), None);
        // Two dataplane cores: the kernel dataplane is fine with more queues than cores,
        // AF_XDP wants exactly one queue per core.
        let kernel = evaluate(&host, &scale(10_000, vec![2, 3], DataplaneKind::Kernel));
        assert_eq!(find(&kernel, "em1: queues").status, Status::Ok);
        let xdp = evaluate(&host, &scale(10_000, vec![2, 3], DataplaneKind::Xdp));
        let queues = find(&xdp, "em1: queues");
        assert_eq!(queues.status, Status::Warn);
        assert_eq!(queues.fix, vec!["ethtool -L em1 combined 2"]);
        // Queue q belongs on core cores[q % 2].
        let q5 = find(&xdp, "em1: queue 5 IRQ 125");
        assert_eq!(q5.recommended, "CPU 3");
        let q0 = find(&xdp, "em1: queue 0 IRQ 120");
        assert_eq!(
            (q0.status, q0.recommended.as_str()),
            (Status::Warn, "CPU 2")
        );
        // 10,000 connections fit the default limits of this host.
        assert!(
            kernel.iter().all(|c| c.status != Status::Fail),
            "{kernel:#?}"
        );
    }

    #[test]
    fn this_vm_as_captured() {
        let host = from_fixture("vm-2cpu", "eth0", vec![0, 1], Some("virtio2"));
        let s = scale(15_000, vec![0, 1], DataplaneKind::Kernel);
        let checks = evaluate(&host, &s);
        // 20,000 descriptors hold 15,000 connections but not a million.
        assert_eq!(find(&checks, "RLIMIT_NOFILE hard").status, Status::Ok);
        let million = evaluate(&host, &scale(1_000_000, vec![0, 1], DataplaneKind::Kernel));
        assert_eq!(find(&million, "RLIMIT_NOFILE hard").status, Status::Fail);
        let rings = find(&checks, "eth0: ring sizes");
        assert_eq!(
            (rings.status, rings.current.as_str()),
            (Status::Ok, "rx 256 tx 256 (max 256 / 256)")
        );
        assert_eq!(
            find(&checks, "eth0: queues").status,
            Status::Ok,
            "max 1 combined"
        );
        let rx = find(&checks, "eth0: queue 0 rx IRQ 38 (virtio2-input.0)");
        assert_eq!((rx.status, rx.current.as_str()), (Status::Warn, "CPUs 0-1"));
        assert_eq!(
            find(&checks, "eth0: ntuple").current,
            "off [fixed]: not supported"
        );
        let xdp = find(&checks, "eth0: XDP");
        assert!(xdp.current.contains("virtio_net"), "{xdp:?}");
        let range = find(&checks, "net.ipv4.ip_local_port_range");
        assert_eq!(range.status, Status::Info);
        assert_eq!(range.changes.len(), 1);
    }
}
