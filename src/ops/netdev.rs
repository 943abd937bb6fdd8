//! Pure parsers for what describes a NIC: the queue directories under
//! `/sys/class/net/IF/queues`, and `ethtool`'s text for ring sizes (`-g`), channels
//! (`-l`), driver (`-i`) and the ntuple feature (`-k`).
//!
//! Doctor reads the live values with `SIOCETHTOOL` (petrel-dataplane's `sys::ethtool`),
//! not by running ethtool; these text parsers turn captured `ethtool` output into the same
//! structs, so the checks are tested on NICs this machine does not have (and a user can
//! paste their output into a bug report).
// Only the tests build a Host from ethtool text; the binary reads the NIC by ioctl.
#![cfg_attr(not(test), allow(dead_code))]

use petrel_dataplane::sys::ethtool::{Channels, NtupleFeature, Rings};

/// Counts `rx-N` and `tx-N` entries of a `/sys/class/net/IF/queues` listing.
pub fn count_queues<'a>(entries: impl IntoIterator<Item = &'a str>) -> (usize, usize) {
    let mut rx = 0;
    let mut tx = 0;
    for name in entries {
        let numbered = |p: &str| {
            name.strip_prefix(p)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        };
        if numbered("rx-") {
            rx += 1;
        } else if numbered("tx-") {
            tx += 1;
        }
    }
    (rx, tx)
}

/// The two sections of `ethtool -g` / `-l` output: "Pre-set maximums" and "Current
/// hardware settings", each as (field, value) with `n/a` read as 0.
type Fields = Vec<(String, u32)>;

fn sections(text: &str) -> Option<(Fields, Fields)> {
    let mut max = Vec::new();
    let mut current = Vec::new();
    let mut section = 0;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("Pre-set maximums") {
            section = 1;
            continue;
        }
        if line.starts_with("Current hardware settings") {
            section = 2;
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let value = if value == "n/a" {
            0
        } else {
            match value.parse() {
                Ok(v) => v,
                Err(_) => continue,
            }
        };
        match section {
            1 => max.push((key.trim().to_owned(), value)),
            2 => current.push((key.trim().to_owned(), value)),
            _ => {}
        }
    }
    (!max.is_empty() && !current.is_empty()).then_some((max, current))
}

fn field(fields: &[(String, u32)], name: &str) -> u32 {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map_or(0, |(_, v)| *v)
}

/// Parses `ethtool -g IF`.
pub fn parse_ethtool_rings(text: &str) -> Option<Rings> {
    let (max, current) = sections(text)?;
    Some(Rings::new(
        field(&max, "RX"),
        field(&max, "TX"),
        field(&current, "RX"),
        field(&current, "TX"),
    ))
}

/// Parses `ethtool -l IF`.
pub fn parse_ethtool_channels(text: &str) -> Option<Channels> {
    let (max, current) = sections(text)?;
    let four = |f: &[(String, u32)]| {
        [
            field(f, "RX"),
            field(f, "TX"),
            field(f, "Other"),
            field(f, "Combined"),
        ]
    };
    Some(Channels::new(four(&max), four(&current)))
}

/// Parses the `driver:` and `bus-info:` lines of `ethtool -i IF`.
pub fn parse_ethtool_driver(text: &str) -> Option<(String, String)> {
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_owned())
    };
    Some((value("driver:")?, value("bus-info:").unwrap_or_default()))
}

/// Parses the `ntuple-filters:` line of `ethtool -k IF` (`on`, `off`, `off [fixed]`).
pub fn parse_ethtool_ntuple(text: &str) -> Option<NtupleFeature> {
    let value = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("ntuple-filters:"))?
        .trim();
    Some(NtupleFeature {
        available: !value.contains("[fixed]"),
        active: value.starts_with("on"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ops/");

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{FIX}{name}")).expect(name)
    }

    #[test]
    fn queue_directories_are_counted() {
        assert_eq!(count_queues(["rx-0", "tx-0"]), (1, 1));
        assert_eq!(
            count_queues(["rx-0", "rx-1", "tx-0", "tx-1", "tx-2", "rx-", "foo"]),
            (2, 3)
        );
    }

    #[test]
    fn virtio_rings_and_channels_captured_here() {
        let rings = parse_ethtool_rings(&fixture("vm-2cpu/ethtool-g-eth0")).unwrap();
        assert_eq!(rings, Rings::new(256, 256, 256, 256));
        let ch = parse_ethtool_channels(&fixture("vm-2cpu/ethtool-l-eth0")).unwrap();
        assert_eq!((ch.max_combined, ch.combined, ch.max_rx), (1, 1, 0));
        assert_eq!(ch.rx_queues(), 1);
        assert_eq!(
            parse_ethtool_driver(&fixture("vm-2cpu/ethtool-i-eth0")),
            Some(("virtio_net".into(), "0000:00:03.0".into()))
        );
        assert_eq!(
            parse_ethtool_ntuple(&fixture("vm-2cpu/ethtool-k-eth0")),
            Some(NtupleFeature {
                available: false,
                active: false
            })
        );
    }

    #[test]
    fn ixgbe_rings_and_channels() {
        let rings = parse_ethtool_rings(&fixture("ixgbe-8cpu/ethtool-g-em1")).unwrap();
        assert_eq!(rings, Rings::new(4096, 4096, 512, 512));
        let ch = parse_ethtool_channels(&fixture("ixgbe-8cpu/ethtool-l-em1")).unwrap();
        assert_eq!(
            (ch.max_combined, ch.combined, ch.max_other, ch.other),
            (63, 8, 1, 1)
        );
        assert_eq!(ch.max_rx_queues(), 63);
        assert_eq!(
            parse_ethtool_ntuple(&fixture("ixgbe-8cpu/ethtool-k-em1")),
            Some(NtupleFeature {
                available: true,
                active: true
            })
        );
        assert_eq!(parse_ethtool_rings("garbage"), None);
    }
}
