//! Server-side figures from `/proc`: resident memory from `/proc/PID/status`, CPU time
//! from `/proc/PID/stat`, and the kernel's TCP socket memory from `/proc/net/sockstat`.
//!
//! The parsers are pure functions over the files' text, so they are tested on fixtures;
//! [`sample`] is the only function here that reads a file.

use std::fmt;

/// Clock ticks per second of `/proc/PID/stat`'s `utime`/`stime` (`USER_HZ`). It is 100 on
/// every Linux architecture Petrel runs on (the kernel exports `USER_HZ`, not `HZ`, to
/// user space, and `sysconf(_SC_CLK_TCK)` returns the same constant).
pub const USER_HZ: u64 = 100;

/// Why a `/proc` file could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

/// Memory figures of `/proc/PID/status`, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcStatus {
    /// `VmRSS`: resident set size now.
    pub rss_kib: u64,
    /// `VmHWM`: the peak resident set size.
    pub peak_rss_kib: u64,
    /// `Threads`.
    pub threads: u64,
}

/// Parses the `VmRSS`, `VmHWM` and `Threads` lines of `/proc/PID/status`.
pub fn parse_status(text: &str) -> Result<ProcStatus, ParseError> {
    let mut rss = None;
    let mut hwm = None;
    let mut threads = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "VmRSS" => &mut rss,
            "VmHWM" => &mut hwm,
            "Threads" => &mut threads,
            _ => continue,
        };
        let number = value.trim().trim_end_matches("kB").trim();
        *slot = Some(
            number
                .parse::<u64>()
                .map_err(|_| ParseError(format!("bad {key} value {value:?} in /proc status")))?,
        );
    }
    Ok(ProcStatus {
        rss_kib: rss.ok_or_else(|| ParseError("no VmRSS line in /proc status".into()))?,
        peak_rss_kib: hwm.unwrap_or(0),
        threads: threads.unwrap_or(0),
    })
}

/// CPU time of a process from `/proc/PID/stat`, in clock ticks ([`USER_HZ`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcCpu {
    /// Field 14, `utime`: time in user mode.
    pub user_ticks: u64,
    /// Field 15, `stime`: time in kernel mode.
    pub system_ticks: u64,
}

impl ProcCpu {
    /// User plus system time in seconds.
    pub fn seconds(&self) -> f64 {
        (self.user_ticks + self.system_ticks) as f64 / USER_HZ as f64
    }
}

/// Parses `utime` and `stime` out of `/proc/PID/stat`. The second field (the command
/// name, in parentheses) may itself contain spaces and parentheses, so fields are counted
/// from the *last* `)`.
pub fn parse_stat(text: &str) -> Result<ProcCpu, ParseError> {
    let close = text
        .rfind(')')
        .ok_or_else(|| ParseError("no ')' after the command name in /proc stat".into()))?;
    // After ") " come field 3 (state), 4 (ppid), ... so utime (14) is the 12th of them.
    let mut fields = text[close + 1..].split_whitespace().skip(11);
    let mut next = |name: &str| -> Result<u64, ParseError> {
        let field = fields
            .next()
            .ok_or_else(|| ParseError(format!("/proc stat ends before {name}")))?;
        field
            .parse()
            .map_err(|_| ParseError(format!("bad {name} {field:?} in /proc stat")))
    };
    Ok(ProcCpu {
        user_ticks: next("utime")?,
        system_ticks: next("stime")?,
    })
}

/// The `TCP:` line of `/proc/net/sockstat` (system-wide, both ends of every loopback
/// connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpSockstat {
    /// Sockets in use.
    pub inuse: u64,
    /// Socket buffer memory in pages (`mem`).
    pub mem_pages: u64,
}

/// Parses the `TCP:` line of `/proc/net/sockstat`.
pub fn parse_sockstat(text: &str) -> Result<TcpSockstat, ParseError> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("TCP:"))
        .ok_or_else(|| ParseError("no TCP line in /proc/net/sockstat".into()))?;
    let mut out = TcpSockstat::default();
    let mut words = line.split_whitespace();
    while let (Some(key), Some(value)) = (words.next(), words.next()) {
        let value: u64 = value
            .parse()
            .map_err(|_| ParseError(format!("bad {key} value {value:?} in sockstat")))?;
        match key {
            "inuse" => out.inuse = value,
            "mem" => out.mem_pages = value,
            _ => {}
        }
    }
    Ok(out)
}

/// `SUnreclaim` of `/proc/meminfo` in KiB: unreclaimable kernel slab, where TCP sockets
/// live (system-wide).
pub fn parse_meminfo_sunreclaim(text: &str) -> Result<u64, ParseError> {
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("SUnreclaim:"))
        .ok_or_else(|| ParseError("no SUnreclaim line in /proc/meminfo".into()))?;
    value
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .map_err(|_| ParseError(format!("bad SUnreclaim value {value:?} in /proc/meminfo")))
}

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Sample {
    /// Memory.
    pub status: ProcStatus,
    /// CPU time so far.
    pub cpu: ProcCpu,
    /// The kernel's TCP memory (system-wide), if readable.
    pub sockstat: Option<TcpSockstat>,
    /// Unreclaimable kernel slab (system-wide), KiB, if readable.
    pub slab_unreclaimable_kib: Option<u64>,
}

/// Reads `/proc/PID/status`, `/proc/PID/stat` and `/proc/net/sockstat`.
pub fn sample(pid: u32) -> anyhow::Result<Sample> {
    use anyhow::Context;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status (is the server running?)"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    let sockstat = std::fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|t| parse_sockstat(&t).ok());
    let slab_unreclaimable_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| parse_meminfo_sunreclaim(&t).ok());
    Ok(Sample {
        status: parse_status(&status)?,
        cpu: parse_stat(&stat)?,
        sockstat,
        slab_unreclaimable_kib,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tpetrel\nUmask:\t0022\nState:\tS (sleeping)\n\
        VmPeak:\t  812344 kB\nVmSize:\t  812340 kB\nVmHWM:\t   52040 kB\nVmRSS:\t   51200 kB\n\
        RssAnon:\t   40000 kB\nThreads:\t6\nSigQ:\t0/95000\n";

    #[test]
    fn status_fields() {
        assert_eq!(
            parse_status(STATUS).unwrap(),
            ProcStatus {
                rss_kib: 51200,
                peak_rss_kib: 52040,
                threads: 6
            }
        );
    }

    #[test]
    fn status_without_rss_is_an_error() {
        // Kernel threads and zombies have no VmRSS line.
        let err = parse_status("Name:\tkthreadd\nState:\tZ (zombie)\n").unwrap_err();
        assert!(err.0.contains("VmRSS"), "{err}");
    }

    #[test]
    fn status_with_garbage_value_is_an_error() {
        assert!(parse_status("VmRSS:\t lots kB\n").is_err());
    }

    #[test]
    fn stat_counts_fields_after_the_last_parenthesis() {
        // A command name with spaces and a ')' inside must not shift the fields.
        let text = "4242 (petrel) x (1)) S 1 4242 4242 0 -1 4194560 1500 0 0 0 \
                    731 129 0 0 20 0 6 0 123456 812340000 12800 18446744073709551615\n";
        assert_eq!(
            parse_stat(text).unwrap(),
            ProcCpu {
                user_ticks: 731,
                system_ticks: 129
            }
        );
        assert!((parse_stat(text).unwrap().seconds() - 8.6).abs() < 1e-9);
    }

    #[test]
    fn truncated_stat_is_an_error() {
        assert!(parse_stat("4242 (petrel) S 1 2 3").is_err());
        assert!(parse_stat("no parenthesis here").is_err());
        assert!(parse_stat("1 (x) S 1 1 1 0 -1 0 0 0 0 0 abc 5").is_err());
    }

    #[test]
    fn sockstat_tcp_line() {
        let text = "sockets: used 2101\nTCP: inuse 2004 orphan 0 tw 3 alloc 2010 mem 517\n\
                    UDP: inuse 2 mem 1\n";
        assert_eq!(
            parse_sockstat(text).unwrap(),
            TcpSockstat {
                inuse: 2004,
                mem_pages: 517
            }
        );
        assert!(parse_sockstat("UDP: inuse 2 mem 1\n").is_err());
    }

    #[test]
    fn meminfo_unreclaimable_slab() {
        let text = "MemTotal:       24569872 kB\nSlab:             412000 kB\n\
                    SReclaimable:     300000 kB\nSUnreclaim:       112000 kB\n";
        assert_eq!(parse_meminfo_sunreclaim(text).unwrap(), 112_000);
        assert!(parse_meminfo_sunreclaim("MemTotal: 1 kB\n").is_err());
    }

    #[test]
    fn sample_of_this_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.status.rss_kib > 0);
    }
}
