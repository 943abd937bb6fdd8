//! PROXY protocol headers (HAProxy's v1 text and v2 binary) in front of a connection from
//! a load balancer: the real client's address, which the TCP peer (the balancer) hides.
//!
//! A listener opts in (the transports' `proxy_listen` / `proxy_protocol` settings); its
//! connections must begin with a header, and the frames (or the TLS handshake) follow it.
//! A connection on such a listener whose first bytes are not a header, or a malformed or
//! oversized one, is closed; so is a connection on an ordinary listener that *starts*
//! with a header (someone forging their address, or a balancer configured for a listener
//! that does not expect it). Every outcome is counted in [`ProxyStats`].
//!
//! Parsing is the `ppp` crate's; this module adds what a server needs around it: a cheap
//! early rejection (the first bytes must be a prefix of one of the two signatures, so
//! garbage is refused at once instead of waiting for a line end), a bound on the header's
//! size, and the mapping to an outcome (`LOCAL` commands and `UNKNOWN`/unspecified
//! addresses keep the TCP peer's address, as the specification says).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use ppp::{HeaderResult, PartialResult, v1, v2};

/// The v1 header's start.
const V1_PREFIX: &[u8] = b"PROXY ";
/// Most bytes of a v1 header, its line end included.
const V1_MAX_BYTES: usize = 107;
/// The v2 header's signature.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// Most bytes a header may have. A v1 header is at most 107; a v2 header with IPv6
/// addresses is 52, and the TLVs balancers add (SSL details, an AWS VPC endpoint id)
/// stay well under this.
pub const MAX_HEADER_BYTES: usize = 1024;

/// What a connection's first bytes said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyOutcome {
    /// The balancer relayed a client from `source`.
    Proxied {
        /// 1 or 2.
        version: u8,
        /// The real client's address and port.
        source: SocketAddr,
    },
    /// An HTTP proxy's `X-Forwarded-For` on a WebSocket upgrade named the client
    /// ([`crate::websocket`], behind a proxy; the port is 0: the header has none).
    Forwarded {
        /// The real client's address.
        source: SocketAddr,
    },
    /// A header without a client address (a `LOCAL` command: the balancer's own health
    /// check, or an unknown or non-IP address family): the TCP peer's address stands.
    Local {
        /// 1 or 2.
        version: u8,
    },
    /// The connection is refused for this reason.
    Failed(ProxyFailure),
}

/// Why a connection's PROXY header was refused, as counted in [`ProxyStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyFailure {
    /// A PROXY listener's connection did not start with a header.
    Missing,
    /// The header was malformed (a bad address, port, version, command or length).
    Malformed,
    /// The header was longer than [`MAX_HEADER_BYTES`].
    TooLong,
    /// A header arrived on a listener that does not expect one: a forged address.
    Unexpected,
}

impl ProxyFailure {
    /// Every reason, in the order of [`ProxyStats::failures`].
    pub const ALL: [ProxyFailure; 4] = [
        ProxyFailure::Missing,
        ProxyFailure::Malformed,
        ProxyFailure::TooLong,
        ProxyFailure::Unexpected,
    ];

    /// The reason's name in metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyFailure::Missing => "missing",
            ProxyFailure::Malformed => "malformed",
            ProxyFailure::TooLong => "too_long",
            ProxyFailure::Unexpected => "unexpected",
        }
    }
}

/// Counters of PROXY headers, shared by every core and listener (one relaxed atomic add
/// per connection, never per message).
#[derive(Debug, Default)]
pub struct ProxyStats {
    by_version: [AtomicU64; 2],
    forwarded: AtomicU64,
    local: AtomicU64,
    failures: [AtomicU64; 4],
}

impl ProxyStats {
    /// Headers of `version` (1 or 2) that named a client.
    pub fn proxied(&self, version: u8) -> u64 {
        let index = usize::from(version.clamp(1, 2) - 1);
        self.by_version[index].load(Ordering::Relaxed)
    }

    /// WebSocket upgrades whose `X-Forwarded-For` named the client.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// Headers without a client address (`LOCAL`, `UNKNOWN`).
    pub fn local(&self) -> u64 {
        self.local.load(Ordering::Relaxed)
    }

    /// Connections refused for `reason`.
    pub fn failures(&self, reason: ProxyFailure) -> u64 {
        self.failures[reason as usize].load(Ordering::Relaxed)
    }

    /// Counts one outcome.
    pub(crate) fn count(&self, outcome: ProxyOutcome) {
        let counter = match outcome {
            ProxyOutcome::Proxied { version, .. } => {
                &self.by_version[usize::from(version.clamp(1, 2) - 1)]
            }
            ProxyOutcome::Forwarded { .. } => &self.forwarded,
            ProxyOutcome::Local { .. } => &self.local,
            ProxyOutcome::Failed(reason) => &self.failures[reason as usize],
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The result of looking at a connection's first bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// Not enough bytes yet to decide.
    Incomplete,
    /// Decided: the header took `consumed` bytes (0 on a failure).
    Done {
        consumed: usize,
        outcome: ProxyOutcome,
    },
}

/// Reads a PROXY header from the start of `input` (everything received so far).
pub(crate) fn parse(input: &[u8]) -> Parsed {
    let failed = |reason| Parsed::Done {
        consumed: 0,
        outcome: ProxyOutcome::Failed(reason),
    };
    if !could_be_header(input) {
        return failed(ProxyFailure::Missing);
    }
    // A v1 header is decided at its line end (`ppp` calls some cut-off lines malformed).
    if input.starts_with(V1_PREFIX) && !input.windows(2).any(|w| w == b"\r\n") {
        return if input.len() >= V1_MAX_BYTES {
            failed(ProxyFailure::TooLong)
        } else {
            Parsed::Incomplete
        };
    }
    let result = HeaderResult::parse(input);
    if result.is_incomplete() {
        return match declared_len(input) {
            Some(len) if len > MAX_HEADER_BYTES => failed(ProxyFailure::TooLong),
            _ if input.len() >= MAX_HEADER_BYTES => failed(ProxyFailure::TooLong),
            _ => Parsed::Incomplete,
        };
    }
    match result {
        HeaderResult::V1(Ok(header)) => Parsed::Done {
            consumed: header.header.len(),
            outcome: match header.addresses {
                v1::Addresses::Tcp4(a) => ProxyOutcome::Proxied {
                    version: 1,
                    source: SocketAddr::from((a.source_address, a.source_port)),
                },
                v1::Addresses::Tcp6(a) => ProxyOutcome::Proxied {
                    version: 1,
                    source: SocketAddr::from((a.source_address, a.source_port)),
                },
                v1::Addresses::Unknown => ProxyOutcome::Local { version: 1 },
            },
        },
        HeaderResult::V2(Ok(header)) => {
            let consumed = header.len();
            if consumed > MAX_HEADER_BYTES {
                return failed(ProxyFailure::TooLong);
            }
            let source = match (header.command, header.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                _ => None,
            };
            Parsed::Done {
                consumed,
                outcome: match source {
                    Some(source) => ProxyOutcome::Proxied { version: 2, source },
                    None => ProxyOutcome::Local { version: 2 },
                },
            }
        }
        HeaderResult::V1(Err(v1::BinaryParseError::Parse(v1::ParseError::HeaderTooLong))) => {
            failed(ProxyFailure::TooLong)
        }
        HeaderResult::V1(Err(_)) | HeaderResult::V2(Err(_)) => failed(ProxyFailure::Malformed),
    }
}

/// Whether a connection that expects no header starts with one (its first bytes). Two
/// bytes decide: Petrel's frames open with "PT", a TLS record with 0x16, a v1 header with
/// "PR" and a v2 one with "\r\n". Fewer than two never count as a header (the frame
/// decoder or TLS then refuses them on their own terms).
pub(crate) fn starts_like_header(first: &[u8]) -> bool {
    first.len() >= 2 && could_be_header(first)
}

/// Whether `input` is a prefix of a v1 or v2 header, or starts with a whole signature.
fn could_be_header(input: &[u8]) -> bool {
    let matches = |signature: &[u8]| {
        let n = input.len().min(signature.len());
        input[..n] == signature[..n]
    };
    matches(V1_PREFIX) || matches(V2_SIGNATURE)
}

/// The whole length a v2 header declares, once its fixed part is in.
fn declared_len(input: &[u8]) -> Option<usize> {
    if input.len() < 16 || !input.starts_with(V2_SIGNATURE) {
        return None;
    }
    Some(16 + usize::from(u16::from_be_bytes([input[14], input[15]])))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.push(0x20 | command);
        header.push(family);
        let len = (addresses.len() + tlvs.len()) as u16;
        header.extend(len.to_be_bytes());
        header.extend(addresses);
        header.extend(tlvs);
        header
    }

    fn ipv4_addresses(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut a = src.to_vec();
        a.extend(dst);
        a.extend(sport.to_be_bytes());
        a.extend(dport.to_be_bytes());
        a
    }

    #[test]
    fn v1_tcp4_and_tcp6_name_the_client_and_leave_what_follows() {
        let wire = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 9500\r\n\x00\x01frame";
        let header_len = wire.len() - 7;
        assert_eq!(
            parse(wire),
            Parsed::Done {
                consumed: header_len,
                outcome: ProxyOutcome::Proxied {
                    version: 1,
                    source: SocketAddr::from((Ipv4Addr::new(203, 0, 113, 7), 51234)),
                },
            }
        );
        let wire = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 9500\r\n";
        assert_eq!(
            parse(wire),
            Parsed::Done {
                consumed: wire.len(),
                outcome: ProxyOutcome::Proxied {
                    version: 1,
                    source: SocketAddr::from(("2001:db8::1".parse::<Ipv6Addr>().unwrap(), 4000)),
                },
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Done {
                consumed: 15,
                outcome: ProxyOutcome::Local { version: 1 }
            }
        );
    }

    #[test]
    fn v2_proxy_local_and_tlvs() {
        let addresses = ipv4_addresses([198, 51, 100, 9], [10, 0, 0, 1], 40000, 9500);
        // A NOOP TLV of 3 bytes after the addresses.
        let header = v2(1, 0x11, &addresses, &[0x04, 0, 3, 1, 2, 3]);
        let mut wire = header.clone();
        wire.extend(b"rest");
        assert_eq!(
            parse(&wire),
            Parsed::Done {
                consumed: header.len(),
                outcome: ProxyOutcome::Proxied {
                    version: 2,
                    source: SocketAddr::from((Ipv4Addr::new(198, 51, 100, 9), 40000)),
                },
            }
        );
        let local = v2(0, 0x00, &[], &[]);
        assert_eq!(
            parse(&local),
            Parsed::Done {
                consumed: 16,
                outcome: ProxyOutcome::Local { version: 2 }
            }
        );
    }

    #[test]
    fn a_header_split_anywhere_waits_for_the_rest() {
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 9500\r\n".to_vec();
        let v2 = v2(
            1,
            0x11,
            &ipv4_addresses([1, 2, 3, 4], [5, 6, 7, 8], 1, 2),
            &[],
        );
        for wire in [v1, v2] {
            for cut in 1..wire.len() {
                assert_eq!(parse(&wire[..cut]), Parsed::Incomplete, "cut at {cut}");
            }
            assert!(matches!(parse(&wire), Parsed::Done { .. }));
        }
    }

    #[test]
    fn garbage_malformed_and_oversized_headers_are_refused() {
        let failed = |reason| Parsed::Done {
            consumed: 0,
            outcome: ProxyOutcome::Failed(reason),
        };
        // Not a header: refused at the first byte that differs, not at a line end.
        assert_eq!(parse(b"\x00\x01"), failed(ProxyFailure::Missing));
        assert_eq!(parse(b"PROXZ"), failed(ProxyFailure::Missing));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), failed(ProxyFailure::Missing));
        // Malformed.
        assert_eq!(
            parse(b"PROXY TCP4 999.1.1.1 10.0.0.1 1 2\r\n"),
            failed(ProxyFailure::Malformed)
        );
        assert_eq!(
            parse(b"PROXY TCP4 1.1.1.1 10.0.0.1 70000 2\r\n"),
            failed(ProxyFailure::Malformed)
        );
        let bad_command = v2(
            7,
            0x11,
            &ipv4_addresses([1, 2, 3, 4], [5, 6, 7, 8], 1, 2),
            &[],
        );
        assert_eq!(parse(&bad_command), failed(ProxyFailure::Malformed));
        let short_addresses = v2(1, 0x11, &[1, 2, 3], &[]);
        assert_eq!(parse(&short_addresses), failed(ProxyFailure::Malformed));
        // Too long: a v1 line without its end, and a v2 header declaring 60 KiB (refused
        // from its fixed part, before the bytes arrive).
        let mut endless = b"PROXY TCP4 ".to_vec();
        endless.resize(200, b'1');
        assert_eq!(parse(&endless), failed(ProxyFailure::TooLong));
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend([0x21, 0x11]);
        huge.extend(60_000u16.to_be_bytes());
        assert_eq!(parse(&huge), failed(ProxyFailure::TooLong));
    }

    #[test]
    fn only_a_header_start_looks_like_a_header() {
        assert!(starts_like_header(b"PR"));
        assert!(starts_like_header(b"PROXY TCP4"));
        assert!(!starts_like_header(b"P"), "one byte does not decide");
        assert!(!starts_like_header(b"PT\x01"), "a Petrel frame");
        assert!(starts_like_header(b"\r\n\r\n"));
        assert!(!starts_like_header(b""));
        assert!(!starts_like_header(b"\x00\x00\x00\x10"));
        assert!(!starts_like_header(b"\x16\x03\x01"), "a TLS ClientHello");
    }

    #[test]
    fn stats_count_each_outcome() {
        let stats = ProxyStats::default();
        stats.count(ProxyOutcome::Proxied {
            version: 2,
            source: SocketAddr::from(([1, 1, 1, 1], 1)),
        });
        stats.count(ProxyOutcome::Local { version: 1 });
        stats.count(ProxyOutcome::Failed(ProxyFailure::Unexpected));
        assert_eq!((stats.proxied(1), stats.proxied(2)), (0, 1));
        assert_eq!(stats.local(), 1);
        assert_eq!(stats.failures(ProxyFailure::Unexpected), 1);
        assert_eq!(stats.failures(ProxyFailure::Missing), 0);
    }
}
