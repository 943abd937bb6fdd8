//! Start-up checks of process and kernel limits that cap how many connections a
//! kernel-socket server can hold.

/// Raises the soft RLIMIT_NOFILE to the hard limit and warns, naming the fix, when the
/// hard limit or `fs.nr_open` is below what `max_connections` needs. Returns the soft
/// limit now in force.
pub fn raise_nofile(max_connections: usize) -> u64 {
    let soft = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "could not raise RLIMIT_NOFILE");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft)
        }
    };
    // Listeners, the database and logs need descriptors too.
    let needed = max_connections as u64 + 1024;
    if soft < needed {
        tracing::warn!(
            nofile = soft,
            needed,
            "RLIMIT_NOFILE is below --max-connections: the kernel-socket dataplane will refuse \
             connections past it. Fix: `LimitNOFILE=1500000` in the systemd unit, or \
             `* soft nofile 1500000` / `* hard nofile 1500000` in /etc/security/limits.d/ \
             (see scripts/deploy/ and docs/OPERATIONS.md); the AF_XDP dataplane needs no \
             descriptor per connection"
        );
    }
    if let Some(nr_open) = read_sysctl("fs/nr_open")
        && nr_open < needed
    {
        tracing::warn!(
            fs.nr_open = nr_open,
            needed,
            "fs.nr_open caps every process's descriptors below --max-connections. Fix: \
             `sysctl -w fs.nr_open=3000000 fs.file-max=3000000` (persist in /etc/sysctl.d/)"
        );
    }
    soft
}

fn read_sysctl(name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/sys/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}
