//! SYN cookies for the userspace TCP: a handshake that keeps no state until the client
//! proves it received our SYN-ACK.
//!
//! A [`super::shards::ShardSet`] whose half-open connections reach its backlog stops giving
//! SYNs to smoltcp. It answers each with a SYN-ACK of its own whose sequence number is a
//! *cookie*: a keyed hash of the 4-tuple, the client's initial sequence number and a coarse
//! clock, plus the client's MSS rounded down to one of eight values. Nothing is stored. A
//! client that really sent the SYN answers with an ACK of `cookie + 1`; the set checks the
//! cookie ([`SynCookies::check`]) and only then opens the connection. A flood of spoofed
//! SYNs therefore costs a hash and one reply per SYN, never memory, and real clients keep
//! connecting while it lasts.
//!
//! What a cookie cannot carry, as in every TCP stack that uses them: window scaling, SACK
//! and timestamps are not offered in a cookie's SYN-ACK (our IM frames are small; a
//! 64 KiB window is plenty), and the client's MSS is rounded down to [`MSS_TABLE`].
//!
//! The key is a [`RandomState`]: std's keyed hash (SipHash today), whose keys come from the
//! operating system's random source once per process. It is built to stay unpredictable
//! to someone who sees its outputs but not its keys (hash-flooding resistance), which is
//! the property a cookie needs; no dependency is added for it. A cookie is valid for the
//! period it was issued in and the next ([`PERIOD_MS`] each, so 64 to 128 s), like Linux's.
//!
//! Sans-IO: time is milliseconds passed in.

use std::hash::BuildHasher;
use std::net::Ipv4Addr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ETHERNET_HEADER_LEN, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress,
    IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

/// Half-open connections a core holds before it answers SYNs with cookies, by default.
/// Linux's `tcp_max_syn_backlog` is of the same order; at default buffers they take about
/// 32 MiB per core, and past them a flood costs no memory at all.
pub const DEFAULT_SYN_BACKLOG: usize = 4096;
/// Length of one cookie period, milliseconds.
pub const PERIOD_MS: u64 = 64_000;
/// The MSS values a cookie can carry (3 bits): a client's MSS is rounded down to one.
pub const MSS_TABLE: [u16; 8] = [536, 1200, 1360, 1400, 1440, 1460, 4312, 8960];
/// Bits of the cookie that are the hash (the rest: 5 of period, 3 of MSS).
const HASH_BITS: u32 = 24;
const HASH_MASK: u32 = (1 << HASH_BITS) - 1;
/// Bytes of the IPv4 + TCP headers a cookie SYN-ACK (or our synthetic SYN) has: 20 + 20 + MSS option.
pub const SYN_PACKET_LEN: usize = 20 + 24;

/// A connection's 4-tuple, seen from our side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// The client's address.
    pub remote: Ipv4Addr,
    /// The client's port.
    pub remote_port: u16,
    /// Our address.
    pub local: Ipv4Addr,
    /// Our (listening) port.
    pub local_port: u16,
}

/// Why an ACK's cookie was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    /// Issued more than one period ago (or in a period that has not begun).
    #[error("the SYN cookie has expired")]
    Expired,
    /// Not a cookie we issued for this 4-tuple and initial sequence number.
    #[error("the SYN cookie does not match")]
    Forged,
}

/// Issues and checks cookies with one secret key.
#[derive(Debug, Clone, Default)]
pub struct SynCookies {
    key: std::collections::hash_map::RandomState,
}

impl SynCookies {
    /// Cookies under a fresh random key.
    pub fn new() -> SynCookies {
        SynCookies::default()
    }

    /// The cookie (our initial sequence number) for a SYN from `tuple` with initial
    /// sequence number `client_isn` and MSS option `client_mss`, at `now_ms`.
    pub fn issue(
        &self,
        tuple: &Tuple,
        client_isn: u32,
        client_mss: Option<u16>,
        now_ms: u64,
    ) -> u32 {
        let period = now_ms / PERIOD_MS;
        let mss_index = mss_index(client_mss.unwrap_or(MSS_TABLE[0]));
        ((period as u32 & 0x1f) << 27)
            | (u32::from(mss_index) << HASH_BITS)
            | self.hash(tuple, client_isn, period, mss_index)
    }

    /// Checks the cookie `cookie` (the ACK's acknowledgement number minus one) of a client
    /// whose initial sequence number was `client_isn` (the ACK's sequence number minus
    /// one). Returns the MSS the cookie carries.
    pub fn check(
        &self,
        tuple: &Tuple,
        client_isn: u32,
        cookie: u32,
        now_ms: u64,
    ) -> Result<u16, CookieError> {
        let now = now_ms / PERIOD_MS;
        let age = (now as u32).wrapping_sub(cookie >> 27) & 0x1f;
        if age > 1 || u64::from(age) > now {
            return Err(CookieError::Expired);
        }
        let period = now - u64::from(age);
        let mss_index = ((cookie >> HASH_BITS) & 0x7) as u8;
        if cookie & HASH_MASK != self.hash(tuple, client_isn, period, mss_index) {
            return Err(CookieError::Forged);
        }
        Ok(MSS_TABLE[usize::from(mss_index)])
    }

    /// The hash covers the MSS index too, so a client cannot raise its MSS by editing it.
    fn hash(&self, tuple: &Tuple, client_isn: u32, period: u64, mss_index: u8) -> u32 {
        (self.key.hash_one((tuple, client_isn, period, mss_index)) as u32) & HASH_MASK
    }
}

/// The index of the largest [`MSS_TABLE`] value not above `mss` (0 below the smallest).
fn mss_index(mss: u16) -> u8 {
    MSS_TABLE.iter().rposition(|&m| m <= mss).unwrap_or(0) as u8
}

/// A SYN answered with a cookie: everything its SYN-ACK needs, so the reply can be written
/// straight into a transmit frame after the receive batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieSynAck {
    /// The SYN's 4-tuple.
    pub tuple: Tuple,
    /// The client's initial sequence number.
    pub client_isn: u32,
    /// Our initial sequence number.
    pub cookie: u32,
    /// The MSS we offer.
    pub our_mss: u16,
    /// The window we offer (unscaled).
    pub window: u16,
}

impl CookieSynAck {
    /// Writes the SYN-ACK as an Ethernet frame from `src_mac` to `dst_mac` into `buf`;
    /// returns its length, or `None` if `buf` is too short.
    pub fn write_frame(
        &self,
        src_mac: EthernetAddress,
        dst_mac: EthernetAddress,
        buf: &mut [u8],
    ) -> Option<usize> {
        let len = ETHERNET_HEADER_LEN + SYN_PACKET_LEN;
        let mut frame = EthernetFrame::new_checked(buf.get_mut(..len)?).ok()?;
        EthernetRepr {
            src_addr: src_mac,
            dst_addr: dst_mac,
            ethertype: EthernetProtocol::Ipv4,
        }
        .emit(&mut frame);
        self.write_packet(frame.payload_mut())?;
        Some(len)
    }

    /// Writes the SYN-ACK as an IPv4 packet into `buf`; returns its length.
    pub fn write_packet(&self, buf: &mut [u8]) -> Option<usize> {
        write_syn(
            &self.tuple,
            self.cookie,
            Some(self.client_isn.wrapping_add(1)),
            self.our_mss,
            self.window,
            buf,
        )
    }
}

impl Tuple {
    /// The 4-tuple of a segment we received (its source is the remote end).
    pub fn of_received(ip: &Ipv4Packet<&[u8]>, tcp: &TcpPacket<&[u8]>) -> Tuple {
        Tuple {
            remote: ip.src_addr(),
            remote_port: tcp.src_port(),
            local: ip.dst_addr(),
            local_port: tcp.dst_port(),
        }
    }

    /// The same connection seen from the other end.
    pub fn reversed(&self) -> Tuple {
        Tuple {
            remote: self.local,
            remote_port: self.local_port,
            local: self.remote,
            local_port: self.remote_port,
        }
    }
}

/// Writes an IPv4 packet carrying a SYN (`ack: None`) or SYN-ACK from `from.local:local_port`
/// to `from.remote:remote_port`, with the MSS option and no other, into `buf`; returns its
/// length. Used for a cookie's SYN-ACK and for the SYN a valid cookie replays into smoltcp
/// (with `from` reversed: the client's SYN, as it was).
pub fn write_syn(
    from: &Tuple,
    seq: u32,
    ack: Option<u32>,
    mss: u16,
    window: u16,
    buf: &mut [u8],
) -> Option<usize> {
    let tcp = TcpRepr {
        src_port: from.local_port,
        dst_port: from.remote_port,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: window,
        window_scale: None,
        max_seg_size: Some(mss),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let ip = Ipv4Repr {
        src_addr: from.local,
        dst_addr: from.remote,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let len = ip.buffer_len() + tcp.buffer_len();
    let buf = buf.get_mut(..len)?;
    let caps = ChecksumCapabilities::default();
    let mut packet = Ipv4Packet::new_unchecked(&mut *buf);
    ip.emit(&mut packet, &caps);
    let mut segment = TcpPacket::new_unchecked(packet.payload_mut());
    tcp.emit(
        &mut segment,
        &IpAddress::Ipv4(from.local),
        &IpAddress::Ipv4(from.remote),
        &caps,
    );
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple() -> Tuple {
        Tuple {
            remote: Ipv4Addr::new(10, 77, 2, 9),
            remote_port: 40_000,
            local: Ipv4Addr::new(10, 77, 2, 1),
            local_port: 9500,
        }
    }

    const NOW: u64 = 1_000_000_000;

    #[test]
    fn a_valid_cookie_is_accepted_and_carries_the_mss_rounded_down() {
        let cookies = SynCookies::new();
        for (mss, carried) in [
            (Some(1460), 1460),
            (Some(1450), 1440),
            (Some(9000), 8960),
            (None, 536),
            (Some(100), 536),
        ] {
            let cookie = cookies.issue(&tuple(), 7, mss, NOW);
            assert_eq!(
                cookies.check(&tuple(), 7, cookie, NOW),
                Ok(carried),
                "{mss:?}"
            );
        }
    }

    #[test]
    fn a_cookie_is_valid_for_its_period_and_the_next_then_expires() {
        let cookies = SynCookies::new();
        let issued = NOW - NOW % PERIOD_MS; // the start of a period
        let cookie = cookies.issue(&tuple(), 7, Some(1460), issued);
        assert!(
            cookies
                .check(&tuple(), 7, cookie, issued + PERIOD_MS - 1)
                .is_ok()
        );
        assert!(
            cookies
                .check(&tuple(), 7, cookie, issued + 2 * PERIOD_MS - 1)
                .is_ok()
        );
        assert_eq!(
            cookies.check(&tuple(), 7, cookie, issued + 2 * PERIOD_MS),
            Err(CookieError::Expired)
        );
        // 32 periods later the 5-bit counter has wrapped: the hash still refuses it.
        assert_eq!(
            cookies.check(&tuple(), 7, cookie, issued + 32 * PERIOD_MS),
            Err(CookieError::Forged)
        );
        // Not from the future either (a clock that went backwards, or a forged counter).
        assert_eq!(
            cookies.check(&tuple(), 7, cookie, issued - PERIOD_MS),
            Err(CookieError::Expired)
        );
    }

    #[test]
    fn forged_cookies_are_refused() {
        let cookies = SynCookies::new();
        let cookie = cookies.issue(&tuple(), 7, Some(1460), NOW);
        // Another ISN, another 4-tuple, a flipped hash bit, a changed MSS index.
        assert_eq!(
            cookies.check(&tuple(), 8, cookie, NOW),
            Err(CookieError::Forged)
        );
        let other = Tuple {
            remote_port: 40_001,
            ..tuple()
        };
        assert_eq!(
            cookies.check(&other, 7, cookie, NOW),
            Err(CookieError::Forged)
        );
        assert_eq!(
            cookies.check(&tuple(), 7, cookie ^ 1, NOW),
            Err(CookieError::Forged)
        );
        assert_eq!(
            cookies.check(&tuple(), 7, cookie ^ (1 << HASH_BITS), NOW),
            Err(CookieError::Forged)
        );
        // Another process's key.
        assert_eq!(
            SynCookies::new().check(&tuple(), 7, cookie, NOW),
            Err(CookieError::Forged)
        );
    }

    #[test]
    fn guessing_needs_about_two_to_the_24_tries() {
        let cookies = SynCookies::new();
        let period = ((NOW / PERIOD_MS) as u32 & 0x1f) << 27;
        let accepted = (0..100_000u32)
            .filter(|guess| {
                cookies
                    .check(&tuple(), 7, period | (5 << HASH_BITS) | guess, NOW)
                    .is_ok()
            })
            .count();
        assert!(
            accepted <= 1,
            "{accepted} of 100,000 blind guesses accepted"
        );
    }

    #[test]
    fn the_syn_ack_frame_parses_back_with_the_cookie_and_checksums() {
        let cookies = SynCookies::new();
        let reply = CookieSynAck {
            tuple: tuple(),
            client_isn: u32::MAX,
            cookie: cookies.issue(&tuple(), u32::MAX, Some(1460), NOW),
            our_mss: 1460,
            window: 4096,
        };
        let (ours, theirs) = (
            EthernetAddress([2, 0, 0, 0, 0, 1]),
            EthernetAddress([2, 0, 0, 0, 0, 2]),
        );
        let mut buf = [0u8; 128];
        let len = reply.write_frame(ours, theirs, &mut buf).expect("fits");
        let frame = EthernetFrame::new_checked(&buf[..len]).unwrap();
        assert_eq!((frame.src_addr(), frame.dst_addr()), (ours, theirs));
        let ip = Ipv4Packet::new_checked(frame.payload()).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(
            (ip.src_addr(), ip.dst_addr()),
            (tuple().local, tuple().remote)
        );
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        let (src, dst) = (
            IpAddress::Ipv4(ip.src_addr()),
            IpAddress::Ipv4(ip.dst_addr()),
        );
        assert!(tcp.verify_checksum(&src, &dst));
        let repr = TcpRepr::parse(&tcp, &src, &dst, &ChecksumCapabilities::default()).unwrap();
        assert_eq!(repr.control, TcpControl::Syn);
        assert_eq!(repr.seq_number, TcpSeqNumber(reply.cookie as i32));
        assert_eq!(repr.ack_number, Some(TcpSeqNumber(0))); // u32::MAX + 1 wraps
        assert_eq!((repr.src_port, repr.dst_port), (9500, 40_000));
        assert_eq!(
            (repr.max_seg_size, repr.window_scale, repr.sack_permitted),
            (Some(1460), None, false)
        );
        assert_eq!(repr.window_len, 4096);
        assert!(reply.write_frame(ours, theirs, &mut buf[..40]).is_none());
    }
}
