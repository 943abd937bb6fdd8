//! Pure parsers for the text the kernel shows under /proc and /sys: sysctl values,
//! `/proc/PID/limits`, CPU lists (`/sys/devices/system/cpu/online`,
//! `/proc/irq/N/smp_affinity_list`) and `/proc/net/route`. No I/O here: callers read
//! the files, so every parser is tested on captured text.

/// A soft/hard limit pair from `/proc/PID/limits`; `None` is "unlimited".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// The soft limit (what the process gets now).
    pub soft: Option<u64>,
    /// The hard limit (the ceiling an unprivileged process may raise its soft limit to).
    pub hard: Option<u64>,
}

impl Limit {
    /// Whether the soft limit is at least `n`.
    pub fn soft_at_least(&self, n: u64) -> bool {
        self.soft.is_none_or(|s| s >= n)
    }

    /// Whether the hard limit is at least `n`.
    pub fn hard_at_least(&self, n: u64) -> bool {
        self.hard.is_none_or(|h| h >= n)
    }
}

/// The limits `petrel doctor` looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcLimits {
    /// `Max open files` (RLIMIT_NOFILE).
    pub nofile: Limit,
    /// `Max processes` (RLIMIT_NPROC: processes and threads of the user).
    pub nproc: Limit,
}

/// Parses `/proc/PID/limits`. Returns `None` if either row is missing.
pub fn parse_limits(text: &str) -> Option<ProcLimits> {
    let row = |name: &str| -> Option<Limit> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let mut fields = line[name.len()..].split_whitespace();
        let soft = limit_value(fields.next()?)?;
        let hard = limit_value(fields.next()?)?;
        Some(Limit { soft, hard })
    };
    Some(ProcLimits {
        nofile: row("Max open files")?,
        nproc: row("Max processes")?,
    })
}

fn limit_value(field: &str) -> Option<Option<u64>> {
    if field == "unlimited" {
        Some(None)
    } else {
        field.parse().ok().map(Some)
    }
}

/// Parses a single-number sysctl file such as `/proc/sys/fs/nr_open`.
pub fn parse_sysctl_u64(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// Parses `/proc/sys/net/ipv4/ip_local_port_range` (`"32768\t60999"`).
pub fn parse_port_range(text: &str) -> Option<(u32, u32)> {
    let mut fields = text.split_whitespace();
    let low = fields.next()?.parse().ok()?;
    let high = fields.next()?.parse().ok()?;
    (fields.next().is_none() && low <= high).then_some((low, high))
}

/// The `Cpus_allowed_list` of a `/proc/PID/status` text.
pub fn parse_cpus_allowed(status: &str) -> Option<Vec<usize>> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(parse_cpu_list)
}

/// Parses a CPU list such as `0-3,8,10-11` (`/sys/devices/system/cpu/online`,
/// `/proc/irq/N/smp_affinity_list`). Returns the CPUs sorted, without duplicates.
pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let text = text.trim();
    if text.is_empty() {
        return Some(Vec::new());
    }
    let mut cpus = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                if a > b || b - a > 65_536 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Some(cpus)
}

/// Formats CPUs the way the kernel does (`0-3,8`).
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

/// The interface of the IPv4 default route in `/proc/net/route` (the lowest metric
/// wins), if there is one.
pub fn parse_default_route(text: &str) -> Option<String> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
            (f.len() >= 8 && f[1] == "00000000" && f[7] == "00000000")
                .then(|| (f[6].parse::<u64>().unwrap_or(u64::MAX), f[0].to_owned()))
        })
        .min()
        .map(|(_, iface)| iface)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str = include_str!("../../tests/fixtures/ops/vm-2cpu/proc-self-limits");

    #[test]
    fn limits_of_this_machine_are_read_from_the_captured_file() {
        let l = parse_limits(LIMITS).unwrap();
        assert_eq!(
            l.nofile,
            Limit {
                soft: Some(20_000),
                hard: Some(20_000)
            }
        );
        assert_eq!(l.nproc.soft, Some(96_365));
        assert!(l.nofile.hard_at_least(20_000) && !l.nofile.hard_at_least(20_001));
    }

    #[test]
    fn unlimited_is_none_and_satisfies_everything() {
        let text = "Limit                     Soft Limit           Hard Limit           Units\n\
                    Max processes             unlimited            unlimited            processes\n\
                    Max open files            1500000              1500000              files\n";
        let l = parse_limits(text).unwrap();
        assert_eq!(l.nproc.soft, None);
        assert!(l.nproc.soft_at_least(u64::MAX));
        assert_eq!(l.nofile.hard, Some(1_500_000));
        assert_eq!(parse_limits("Max open files 1 2\n"), None);
    }

    #[test]
    fn sysctl_values_and_port_ranges() {
        assert_eq!(parse_sysctl_u64("1048576\n"), Some(1_048_576));
        assert_eq!(parse_sysctl_u64("x"), None);
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("1024 65535"), Some((1024, 65535)));
        assert_eq!(parse_port_range("9 3"), None);
        assert_eq!(parse_port_range("1 2 3"), None);
    }

    #[test]
    fn cpu_lists_round_trip() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11\n"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpu_list("1"), Some(vec![1]));
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("a"), None);
        assert_eq!(format_cpu_list(&[8, 0, 1, 2, 3, 10, 11]), "0-3,8,10-11");
        assert_eq!(format_cpu_list(&[5]), "5");
    }

    #[test]
    fn default_route_interface() {
        let text = include_str!("../../tests/fixtures/ops/vm-2cpu/proc-net-route");
        assert_eq!(parse_default_route(text).as_deref(), Some("eth0"));
        let two = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                   wlan0\t00000000\t0102A8C0\t0003\t0\t0\t600\t00000000\n\
                   em1\t00000000\t010010AC\t0003\t0\t0\t100\t00000000\n";
        assert_eq!(parse_default_route(two).as_deref(), Some("em1"));
        assert_eq!(parse_default_route("Iface\n"), None);
    }

    #[test]
    fn cpus_allowed_comes_from_its_status_line() {
        let status =
            "Name:\tkdamond.0\nCpus_allowed:\t3\nCpus_allowed_list:\t0-1\nMems_allowed:\t1\n";
        assert_eq!(parse_cpus_allowed(status), Some(vec![0, 1]));
        assert_eq!(parse_cpus_allowed("Name:\tx\n"), None);
    }
}
