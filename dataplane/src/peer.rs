//! Who a connection's client is, and whether it may stay: the PROXY header's outcome
//! (counted, logged with the real address) and the per-address connection limit, the
//! same for every transport.
//!
//! A transport asks [`PeerPolicy::admit`] when it accepts a connection on an ordinary
//! listener (the TCP peer is the client), and [`PeerPolicy::settle`] when a PROXY
//! listener's connection has its header (the header names the client). Both run once per
//! connection, never per message.

use std::net::SocketAddr;
use std::sync::Arc;

use petrel_conn::ConnId;

use crate::address_limit::{AddressLimiter, AddressSlot};
use crate::proxy_header::{ProxyOutcome, ProxyStats};

/// The client checks of one server, shared by its cores and transports.
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    /// Counters of PROXY headers and refusals.
    pub proxy_stats: Arc<ProxyStats>,
    /// The per-address connection limit (`None`: no limit).
    pub per_address: Option<Arc<AddressLimiter>>,
}

/// What to do with a connection after a check.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Serve it, holding this place in the per-address limit (if one applies).
    Admit(Option<AddressSlot>),
    /// Close it without a word.
    Refuse,
}

impl PeerPolicy {
    /// A connection accepted from `peer` on a listener without PROXY headers.
    pub(crate) fn admit(&self, peer: SocketAddr) -> Verdict {
        match &self.per_address {
            None => Verdict::Admit(None),
            Some(limiter) => match limiter.acquire(peer.ip()) {
                Some(slot) => Verdict::Admit(Some(slot)),
                None => {
                    tracing::debug!(%peer, limit = limiter.limit(), "per-address connection limit reached; refusing");
                    Verdict::Refuse
                }
            },
        }
    }

    /// Connection `conn` from TCP peer `via` had its first bytes judged: counts the
    /// outcome and, for a named client, applies the per-address limit to it.
    pub(crate) fn settle(&self, conn: ConnId, via: SocketAddr, outcome: ProxyOutcome) -> Verdict {
        self.proxy_stats.count(outcome);
        match outcome {
            ProxyOutcome::Proxied { version, source } => {
                tracing::debug!(%conn, client = %source, %via, version, "PROXY header");
                self.admit(source)
            }
            ProxyOutcome::Forwarded { source } => {
                tracing::debug!(%conn, client = %source.ip(), %via, "X-Forwarded-For");
                self.admit(source)
            }
            // The balancer's own check: not a client, not limited.
            ProxyOutcome::Local { version } => {
                tracing::debug!(%conn, %via, version, "PROXY header without a client address");
                Verdict::Admit(None)
            }
            ProxyOutcome::Failed(reason) => {
                tracing::debug!(%conn, %via, reason = reason.as_str(), "PROXY header refused; closing");
                Verdict::Refuse
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::proxy_header::ProxyFailure;

    use super::*;

    #[test]
    fn the_proxied_client_not_the_balancer_is_limited() {
        let policy = PeerPolicy {
            per_address: Some(AddressLimiter::new(1)),
            ..PeerPolicy::default()
        };
        let balancer = SocketAddr::from(([127, 0, 0, 1], 40000));
        let client = |last| ProxyOutcome::Proxied {
            version: 2,
            source: SocketAddr::from(([198, 51, 100, last], 5000)),
        };
        let conn = ConnId::new(0, 1);
        let Verdict::Admit(Some(first)) = policy.settle(conn, balancer, client(1)) else {
            panic!("first client admitted");
        };
        assert_eq!(first.ip(), SocketAddr::from(([198, 51, 100, 1], 0)).ip());
        assert!(matches!(
            policy.settle(conn, balancer, client(2)),
            Verdict::Admit(Some(_))
        ));
        assert!(matches!(
            policy.settle(conn, balancer, client(1)),
            Verdict::Refuse
        ));
        assert!(matches!(
            policy.settle(conn, balancer, ProxyOutcome::Local { version: 2 }),
            Verdict::Admit(None)
        ));
        assert!(matches!(
            policy.settle(
                conn,
                balancer,
                ProxyOutcome::Failed(ProxyFailure::Malformed)
            ),
            Verdict::Refuse
        ));
        assert_eq!(policy.proxy_stats.proxied(2), 3);
        assert_eq!(policy.proxy_stats.local(), 1);
        assert_eq!(policy.proxy_stats.failures(ProxyFailure::Malformed), 1);
        assert_eq!(policy.per_address.as_ref().unwrap().refused(), 1);
    }
}
