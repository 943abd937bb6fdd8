//! MQTT 3.1.1 for the load generator (`petrel bench chat1v1 --protocol mqtt`): the same
//! pairs, open-loop schedule and histograms against an MQTT broker such as mosquitto, so
//! one run can put a lean broker's latency next to Petrel's on the same cores (issue 14's
//! reference; `scripts/bench/mosquitto.sh` starts the broker).
//!
//! The mapping, chosen so each number means what it means for Petrel:
//! - a connection is client `petrel-bench-<user>` (clean session, no keep-alive); its
//!   "login" is CONNECT → CONNACK, then a QoS 1 SUBSCRIBE to its own topic
//!   `petrel-bench/<user>` → SUBACK;
//! - a message to a peer is a QoS 1 PUBLISH to the peer's topic. **send → ack** ends at
//!   the broker's PUBACK (mosquitto acks from memory; Petrel acks after its group commit
//!   is durable, unless `--sync none`), **send → delivery** at the peer's receipt of the
//!   PUBLISH, which the peer then PUBACKs (at-least-once both ways, like Petrel's pushes);
//! - a ping is PINGREQ → PINGRESP.
//!
//! The message id is the scheduled send time, as for Petrel: it rides in the first eight
//! bytes of the payload (big-endian), so a delivery carries its own latency; the rest of
//! the payload is padding up to `--payload` bytes. PUBACKs carry only a 16-bit packet id,
//! so each connection keeps its unacknowledged `(packet id, message id)` pairs in send
//! order (brokers acknowledge in order, so the match is the queue's front).
//!
//! Packets are encoded and parsed by `rumqttc`'s `mqttbytes` codec; its client event loop
//! is not used, because the engine's own loop drives every connection and the schedule.

use std::collections::VecDeque;

use bytes::{BufMut, BytesMut};
use rumqttc::mqttbytes::v4::{
    self, ConnectReturnCode, Packet, PingReq, PubAck, Publish, Subscribe, SubscribeReasonCode,
};
use rumqttc::mqttbytes::{self, QoS};

/// Largest packet accepted from the broker.
const MAX_PACKET: usize = 1 << 20;

/// Most PUBLISHes one connection keeps unacknowledged: below the 65,535 packet ids, so an
/// id is never reused while in flight (a send past it is skipped, like one whose queue is
/// full).
pub const MAX_IN_FLIGHT: usize = 60_000;

/// The topic user `user` subscribes to and its peer publishes to.
pub fn topic(user: u64) -> String {
    format!("petrel-bench/{user}")
}

/// One connection's MQTT state.
#[derive(Debug, Default)]
pub struct Session {
    /// The CONNACK arrived (the SUBSCRIBE went out).
    connected: bool,
    /// Last packet id used (1..=65535, then round again).
    last_pkid: u16,
    /// Unacknowledged PUBLISHes: `(packet id, message id)` in send order.
    in_flight: VecDeque<(u16, u64)>,
}

impl Session {
    fn next_pkid(&mut self) -> u16 {
        self.last_pkid = self.last_pkid % u16::MAX + 1;
        self.last_pkid
    }

    /// The message id a PUBACK for `pkid` acknowledges, if it was in flight.
    fn acked(&mut self, pkid: u16) -> Option<u64> {
        match self.in_flight.front() {
            Some(&(p, id)) if p == pkid => {
                self.in_flight.pop_front();
                Some(id)
            }
            _ => {
                let k = self.in_flight.iter().position(|&(p, _)| p == pkid)?;
                self.in_flight.remove(k).map(|(_, id)| id)
            }
        }
    }
}

/// What a connection read from the broker means to the engine.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// CONNACK accepted and SUBACK granted: the connection is ready.
    LoggedIn,
    /// A send was acknowledged (its message id).
    Acked(u64),
    /// A PUBACK for no PUBLISH in flight (ignored).
    StrayAck,
    /// A message arrived for this connection (its message id); the PUBACK is queued.
    Delivered(u64),
    /// PINGRESP.
    Pong,
    /// A packet needing nothing (the CONNACK before the SUBACK, say).
    Nothing,
}

/// Writes the CONNECT of user `user`'s connection.
pub fn write_connect(user: u64, out: &mut BytesMut) -> anyhow::Result<()> {
    let mut connect = v4::Connect::new(format!("petrel-bench-{user}"));
    connect.keep_alive = 0;
    connect.clean_session = true;
    connect.write(out).map_err(codec_error)?;
    Ok(())
}

/// Writes a QoS 1 PUBLISH of message `id` to `peer`'s topic, padded to `payload_len`
/// bytes (at least the eight of the id), and remembers it until its PUBACK. An error,
/// writing nothing, when [`MAX_IN_FLIGHT`] are unacknowledged.
pub fn write_publish(
    session: &mut Session,
    peer: u64,
    id: u64,
    payload_len: usize,
    out: &mut BytesMut,
) -> anyhow::Result<()> {
    if session.in_flight.len() >= MAX_IN_FLIGHT {
        anyhow::bail!("{MAX_IN_FLIGHT} PUBLISHes unacknowledged: the broker is not answering");
    }
    let mut payload = BytesMut::with_capacity(payload_len.max(8));
    payload.put_u64(id);
    payload.resize(payload_len.max(8), b'x');
    let mut publish = Publish::from_bytes(topic(peer), QoS::AtLeastOnce, payload.freeze());
    publish.pkid = session.next_pkid();
    publish.write(out).map_err(codec_error)?;
    session.in_flight.push_back((publish.pkid, id));
    Ok(())
}

/// Writes a PINGREQ.
pub fn write_ping(out: &mut BytesMut) -> anyhow::Result<()> {
    PingReq.write(out).map_err(codec_error)?;
    Ok(())
}

/// Parses the next packet of `rbuf` for user `user`'s connection, writing what the
/// protocol requires in answer (the SUBSCRIBE after the CONNACK, a PUBACK per
/// delivery) to `out`. `Ok(None)`: `rbuf` holds no whole packet yet. An error is a
/// refused connection or subscription, or a malformed packet.
pub fn read(
    session: &mut Session,
    user: u64,
    rbuf: &mut BytesMut,
    out: &mut BytesMut,
) -> anyhow::Result<Option<Incoming>> {
    let packet = match v4::read(rbuf, MAX_PACKET) {
        Ok(p) => p,
        Err(mqttbytes::Error::InsufficientBytes(_)) => return Ok(None),
        Err(e) => return Err(codec_error(e)),
    };
    Ok(Some(match packet {
        Packet::ConnAck(ack) if !session.connected => {
            if ack.code != ConnectReturnCode::Success {
                anyhow::bail!("the broker refused the connection: {:?}", ack.code);
            }
            session.connected = true;
            let mut subscribe = Subscribe::new(topic(user), QoS::AtLeastOnce);
            // A SUBSCRIBE needs a non-zero packet id; the codec's default is 0.
            subscribe.pkid = u16::MAX;
            subscribe.write(out).map_err(codec_error)?;
            Incoming::Nothing
        }
        Packet::SubAck(ack) => {
            if ack
                .return_codes
                .iter()
                .any(|c| matches!(c, SubscribeReasonCode::Failure))
            {
                anyhow::bail!("the broker refused the subscription to {}", topic(user));
            }
            Incoming::LoggedIn
        }
        Packet::PubAck(ack) => match session.acked(ack.pkid) {
            Some(id) => Incoming::Acked(id),
            None => Incoming::StrayAck,
        },
        Packet::Publish(publish) => {
            if publish.qos != QoS::AtMostOnce {
                PubAck::new(publish.pkid).write(out).map_err(codec_error)?;
            }
            let Some(id) = publish.payload.get(..8) else {
                anyhow::bail!(
                    "a message of {} bytes on {}: not one of this run's (no id)",
                    publish.payload.len(),
                    publish.topic
                );
            };
            Incoming::Delivered(u64::from_be_bytes(id.try_into().unwrap_or_default()))
        }
        Packet::PingResp => Incoming::Pong,
        _ => Incoming::Nothing,
    }))
}

fn codec_error(e: mqttbytes::Error) -> anyhow::Error {
    anyhow::anyhow!("MQTT: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::v4::{ConnAck, SubAck};

    /// The payload of a PUBLISH packet.
    fn payload_of(packet: &[u8]) -> bytes::Bytes {
        let mut buf = BytesMut::from(packet);
        match v4::read(&mut buf, MAX_PACKET) {
            Ok(Packet::Publish(p)) => p.payload,
            other => panic!("not a publish: {other:?}"),
        }
    }

    /// What a broker would send: a packet written with the same codec.
    fn from_broker(write: impl FnOnce(&mut BytesMut)) -> BytesMut {
        let mut b = BytesMut::new();
        write(&mut b);
        b
    }

    #[test]
    fn login_is_connack_then_subscribe_then_suback() {
        let mut s = Session::default();
        let mut out = BytesMut::new();
        write_connect(7, &mut out).unwrap();
        match v4::read(&mut out, MAX_PACKET).unwrap() {
            Packet::Connect(c) => {
                assert_eq!(c.client_id, "petrel-bench-7");
                assert!(c.clean_session);
            }
            other => panic!("{other:?}"),
        }
        let mut rbuf = from_broker(|b| {
            ConnAck::new(ConnectReturnCode::Success, false)
                .write(b)
                .unwrap();
        });
        assert_eq!(
            read(&mut s, 7, &mut rbuf, &mut out).unwrap(),
            Some(Incoming::Nothing)
        );
        match v4::read(&mut out, MAX_PACKET).unwrap() {
            Packet::Subscribe(sub) => {
                assert_ne!(sub.pkid, 0, "MQTT forbids packet id 0");
                assert_eq!(sub.filters[0].path, "petrel-bench/7");
                assert_eq!(sub.filters[0].qos, QoS::AtLeastOnce);
            }
            other => panic!("{other:?}"),
        }
        let mut rbuf = from_broker(|b| {
            SubAck::new(1, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)])
                .write(b)
                .unwrap();
        });
        assert_eq!(
            read(&mut s, 7, &mut rbuf, &mut out).unwrap(),
            Some(Incoming::LoggedIn)
        );
    }

    #[test]
    fn refusals_are_errors() {
        let mut s = Session::default();
        let mut out = BytesMut::new();
        let mut rbuf = from_broker(|b| {
            ConnAck::new(ConnectReturnCode::NotAuthorized, false)
                .write(b)
                .unwrap();
        });
        let e = read(&mut s, 1, &mut rbuf, &mut out).unwrap_err();
        assert!(e.to_string().contains("NotAuthorized"), "{e}");
        let mut rbuf = from_broker(|b| {
            SubAck::new(1, vec![SubscribeReasonCode::Failure])
                .write(b)
                .unwrap();
        });
        let e = read(&mut s, 1, &mut rbuf, &mut out).unwrap_err();
        assert!(e.to_string().contains("petrel-bench/1"), "{e}");
    }

    #[test]
    fn acks_match_their_publish_in_or_out_of_order() {
        let mut s = Session::default();
        let mut out = BytesMut::new();
        for id in [100, 200, 300] {
            write_publish(&mut s, 9, id, 100, &mut out).unwrap();
        }
        let first = out.split_to(out.len() / 3);
        let payload = payload_of(&first);
        assert_eq!(payload.len(), 100);
        assert_eq!(&payload[..8], &100u64.to_be_bytes());
        let mut rbuf = from_broker(|b| {
            for pkid in [2, 1, 3, 3] {
                PubAck::new(pkid).write(b).unwrap();
            }
        });
        let mut got = Vec::new();
        while let Some(i) = read(&mut s, 9, &mut rbuf, &mut out).unwrap() {
            got.push(i);
        }
        assert_eq!(
            got,
            [
                Incoming::Acked(200),
                Incoming::Acked(100),
                Incoming::Acked(300),
                Incoming::StrayAck
            ]
        );
    }

    #[test]
    fn a_delivery_is_acknowledged_and_carries_its_id() {
        let mut s = Session::default();
        let mut out = BytesMut::new();
        let mut sender = Session::default();
        let mut rbuf = BytesMut::new();
        write_publish(&mut sender, 5, 42, 16, &mut rbuf).unwrap();
        // Half a packet is not a packet yet.
        let mut half = rbuf.split_to(rbuf.len() / 2);
        assert_eq!(read(&mut s, 5, &mut half, &mut out).unwrap(), None);
        half.unsplit(rbuf);
        assert_eq!(
            read(&mut s, 5, &mut half, &mut out).unwrap(),
            Some(Incoming::Delivered(42))
        );
        match v4::read(&mut out, MAX_PACKET).unwrap() {
            Packet::PubAck(a) => assert_eq!(a.pkid, 1),
            other => panic!("{other:?}"),
        }
        // A payload too short for an id is not this run's.
        let mut rbuf = from_broker(|b| {
            let mut p = Publish::new("petrel-bench/5", QoS::AtLeastOnce, vec![1, 2]);
            p.pkid = 4;
            p.write(b).unwrap();
        });
        assert!(read(&mut s, 5, &mut rbuf, &mut out).is_err());
    }

    #[test]
    fn packet_ids_are_never_reused_while_in_flight() {
        let mut s = Session::default();
        let mut out = BytesMut::new();
        for id in 0..MAX_IN_FLIGHT as u64 {
            write_publish(&mut s, 1, id, 8, &mut out).unwrap();
        }
        let before = out.len();
        assert!(write_publish(&mut s, 1, 0, 8, &mut out).is_err());
        assert_eq!(out.len(), before, "nothing written");
    }

    #[test]
    fn packet_ids_skip_zero() {
        let mut s = Session {
            last_pkid: u16::MAX - 1,
            ..Session::default()
        };
        assert_eq!(s.next_pkid(), u16::MAX);
        assert_eq!(s.next_pkid(), 1);
    }
}
