//! What one node sends another over NATS: an [`Envelope`] encoded with postcard (serde's
//! compact binary format). Mail between cores travels as the types the cores already
//! exchange; a storage error crosses as [`WireError`].
//!
//! Subjects (all under the cluster's name): `<name>.node.<n>` carries the mail for
//! node *n*'s cores, in batches; `<name>.hello` carries every node's heartbeat and its
//! goodbye. NATS keeps the order of one connection's messages on one subject, so mail
//! from one core to another arrives in the order it was sent, as on a ring.

use petrel_control::{CoreMessage, Ticket};
use petrel_storage::{Reply, Request, StorageError, WireError};
use serde::{Deserialize, Serialize};

use crate::server::writers::Mail;

/// Most bytes of mail one NATS message carries (NATS refuses payloads over its
/// `max_payload`, 1 MiB by default); a larger batch is split.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

/// One NATS message between nodes.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// The sending node.
    pub node: u8,
    /// The sending process's random id: a new one means the node restarted (and lost
    /// every session and every request it had in flight).
    pub incarnation: u64,
    /// What it carries.
    pub body: Body,
}

/// What an [`Envelope`] carries.
#[derive(Debug, Serialize, Deserialize)]
pub enum Body {
    /// "Alive", with what the receiver checks it agrees on.
    Hello(Hello),
    /// Mail for cores of the receiving node, in order.
    Mail {
        /// The receiving process's incarnation as the sender knew it: mail for an
        /// earlier process of the node names its connections and requests, which a
        /// restarted process does not have, and is dropped.
        to: u64,
        /// The mail.
        parcels: Vec<Parcel>,
    },
    /// The node is shutting down: down from now on.
    Bye,
    /// "Tell me your sessions again": the sender has just seen the receiver come up, and
    /// the receiver may never have seen the sender go down (its notices may have been
    /// lost meanwhile).
    Resync,
}

/// A node's heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The cluster's node count (every node must have the same).
    pub nodes: u8,
    /// Its cores (every node must run as many).
    pub cores: u8,
    /// Its database's partitions (every node must have as many).
    pub partitions: u16,
    /// Where its clients reach it (`host:port`).
    pub endpoints: Vec<String>,
    /// Its dispatch pool (`[dispatch] pools`; `general` if none names it).
    pub pool: String,
}

impl Hello {
    /// Whether a node saying `other` can share a cluster with this one.
    pub fn agrees_with(&self, other: &Hello) -> bool {
        (self.nodes, self.cores, self.partitions) == (other.nodes, other.cores, other.partitions)
    }
}

/// One piece of mail from a core to a core of another node.
#[derive(Debug, Serialize, Deserialize)]
pub struct Parcel {
    /// The sending core (cluster index).
    pub from: u8,
    /// The receiving core (cluster index).
    pub to: u8,
    /// The mail.
    pub mail: WireMail,
}

/// [`Mail`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub enum WireMail {
    /// [`Mail::Control`].
    Control(CoreMessage),
    /// [`Mail::Write`] (a write, or in a cluster also a read, for the receiver).
    Write(Ticket, Request),
    /// [`Mail::Written`].
    Written(Ticket, Result<Reply, WireError>),
}

impl From<Mail> for WireMail {
    fn from(mail: Mail) -> WireMail {
        match mail {
            Mail::Control(message) => WireMail::Control(message),
            Mail::Write { ticket, request } => WireMail::Write(ticket, request),
            Mail::Written { ticket, result } => WireMail::Written(
                ticket,
                result.map(fit_page).map_err(|e| WireError::from(&e)),
            ),
        }
    }
}

/// Most bytes of message content and device names one sync or history page carries
/// from its owner node to the node that asked. Without a limit a page of large
/// messages (up to `limit` × 60 KiB) could exceed what NATS takes, and the read would
/// time out every time it was asked again.
pub const MAX_PAGE_BYTES: usize = 512 * 1024;

/// A sync or history page cut to [`MAX_PAGE_BYTES`]: a sync page keeps its first
/// messages, a history page its newest (the ends a client is answered from), and says
/// it has more (`has_more`; a history page `cut`). Nothing is lost by the cut: a
/// client's answer holds at most 60 KiB of messages, so a page of more than
/// `MAX_PAGE_BYTES − 60 KiB` is always cut again by the asking core, which then answers
/// `has_more` with the device's old position (a sync) or the oldest seq it sent
/// (history), and the client asks on from there; the HTTP API's history, which has no
/// such budget, answers `has_more` for a `cut` page and the backend pages on.
fn fit_page(reply: Reply) -> Reply {
    fn size(m: &petrel_storage::StoredMessage) -> usize {
        m.payload.len() + m.sender_device.len() + 64
    }
    /// How many of `sizes` fit, taken in order.
    fn fitting(sizes: impl Iterator<Item = usize>) -> usize {
        let mut total = 0;
        sizes
            .take_while(|&n| {
                total += n;
                total <= MAX_PAGE_BYTES
            })
            .count()
    }
    match reply {
        Reply::Synced(mut page) => {
            let keep = fitting(page.messages.iter().map(size));
            if keep < page.messages.len() {
                page.messages.truncate(keep);
                page.has_more = true;
            }
            Reply::Synced(page)
        }
        Reply::History(mut page) => {
            let keep = fitting(page.messages.iter().rev().map(size));
            let cut = page.messages.len() - keep;
            if cut > 0 {
                page.messages.drain(..cut);
                page.cut = true;
            }
            Reply::History(page)
        }
        other => other,
    }
}

impl From<WireMail> for Mail {
    fn from(mail: WireMail) -> Mail {
        match mail {
            WireMail::Control(message) => Mail::Control(message),
            WireMail::Write(ticket, request) => Mail::Write { ticket, request },
            WireMail::Written(ticket, result) => Mail::Written {
                ticket,
                result: result.map_err(StorageError::from),
            },
        }
    }
}

/// The first byte of every envelope: "a Petrel node wrote this".
const MAGIC: u8 = 0xE7;

/// The version of this wire format, the second byte of every envelope. Bump it with
/// any change to [`Envelope`] or what it carries: postcard has no schema, so nodes of
/// two versions cannot read each other, and the version lets them say so instead of
/// failing to decode. 2: the heartbeat names the node's pool and endpoints (version 1
/// had no version byte). 3: mail names the receiving process's incarnation, a room
/// owner's answers name the request they answer, a history page says it was cut, and
/// nodes ask each other the API's calls about sessions and chatrooms. Every version
/// keeps the sending node's index as the first byte after the version.
pub const WIRE_VERSION: u8 = 3;

/// Why bytes on a cluster subject are not an envelope this node can read.
#[derive(Debug)]
pub enum DecodeError {
    /// A node of another version of Petrel (a different wire format).
    Version(u8),
    /// Not from a Petrel node with a wire version (a foreign publisher, or a Petrel
    /// from before wire versions).
    Foreign,
    /// The right version, bytes that do not decode.
    Body(postcard::Error),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Version(v) => {
                write!(f, "a node speaks wire version {v}, this one {WIRE_VERSION}")
            }
            DecodeError::Foreign => write!(
                f,
                "not a Petrel envelope (a foreign publisher, or a Petrel of wire version 1)"
            ),
            DecodeError::Body(e) => write!(f, "a damaged envelope: {e}"),
        }
    }
}

/// Encodes `value` (an [`Envelope`], or a forwarded API call or its answer), after the
/// magic byte and [`WIRE_VERSION`].
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_extend(value, vec![MAGIC, WIRE_VERSION])
}

/// Decodes what [`encode`] wrote; an error for anything else (a foreign publisher on
/// our subjects, another version of Petrel).
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    match bytes {
        [MAGIC, WIRE_VERSION, body @ ..] => postcard::from_bytes(body).map_err(DecodeError::Body),
        [MAGIC, version, ..] => Err(DecodeError::Version(*version)),
        _ => Err(DecodeError::Foreign),
    }
}

/// The subject of node `node`'s mail.
pub fn node_subject(cluster: &str, node: u8) -> String {
    format!("{cluster}.node.{node}")
}

/// The subject of every node's heartbeats and goodbyes.
pub fn hello_subject(cluster: &str) -> String {
    format!("{cluster}.hello")
}

/// The subject of the HTTP API's calls that node `node` answers for the others
/// ([`super::api_calls`]).
pub fn api_subject(cluster: &str, node: u8) -> String {
    format!("{cluster}.api.{node}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use petrel_control::remote::{PushKind, RemotePush};
    use petrel_storage::{AppendRequest, ConversationKey, Refs, UserId};

    #[test]
    fn mail_survives_the_wire_and_garbage_is_refused() {
        let conversation = ConversationKey::single(UserId(1), UserId(2));
        let parcels = vec![
            Parcel {
                from: 0,
                to: 3,
                mail: Mail::Write {
                    ticket: Ticket(7),
                    request: Request::Append(AppendRequest {
                        conversation,
                        sender: UserId(1),
                        sender_device: "phone".into(),
                        client_msg_id: 42,
                        payload: Bytes::from_static(b"hello"),
                        now_ms: 1,
                        refs: Refs::default(),
                    }),
                }
                .into(),
            },
            Parcel {
                from: 3,
                to: 0,
                mail: Mail::Written {
                    ticket: Ticket(7),
                    result: Err(StorageError::NotAMember {
                        conversation,
                        user: UserId(1),
                    }),
                }
                .into(),
            },
            Parcel {
                from: 1,
                to: 2,
                mail: Mail::Control(CoreMessage::Push(RemotePush {
                    users: vec![2],
                    except: None,
                    kind: PushKind::Message(conversation),
                    bytes: Bytes::from_static(b"frame"),
                }))
                .into(),
            },
        ];
        let bytes = encode(&Envelope {
            node: 1,
            incarnation: 99,
            body: Body::Mail { to: 5, parcels },
        })
        .expect("encode");
        let back: Envelope = decode(&bytes).expect("decode");
        assert_eq!((back.node, back.incarnation), (1, 99));
        let Body::Mail { to: 5, parcels } = back.body else {
            panic!("not mail for incarnation 5");
        };
        let mails: Vec<Mail> = parcels.into_iter().map(|p| p.mail.into()).collect();
        assert!(matches!(
            &mails[0],
            Mail::Write { ticket: Ticket(7), request: Request::Append(a) }
                if a.client_msg_id == 42 && &*a.sender_device == "phone" && a.payload == "hello"
        ));
        assert!(matches!(
            &mails[1],
            Mail::Written {
                result: Err(StorageError::NotAMember { .. }),
                ..
            }
        ));
        assert!(matches!(
            &mails[2],
            Mail::Control(CoreMessage::Push(p)) if p.users == [2] && p.bytes == "frame"
        ));
        assert!(matches!(
            decode::<Envelope>(b"\xff\xff\xff"),
            Err(DecodeError::Foreign)
        ));
        assert!(matches!(decode::<Envelope>(b""), Err(DecodeError::Foreign)));
        assert!(matches!(
            decode::<Envelope>(&bytes[..bytes.len() / 2]),
            Err(DecodeError::Body(_))
        ));
        let mut other = bytes.clone();
        other[1] = WIRE_VERSION + 1;
        assert!(
            matches!(decode::<Envelope>(&other), Err(DecodeError::Version(v)) if v == WIRE_VERSION + 1)
        );
    }

    #[test]
    fn large_pages_are_cut_at_the_end_a_client_is_answered_from() {
        let conversation = ConversationKey::single(UserId(1), UserId(2));
        let message = |seq: u64| petrel_storage::StoredMessage {
            conversation,
            seq,
            sender: UserId(1),
            sender_device: "phone".into(),
            client_msg_id: seq,
            server_time_ms: 0,
            payload: Bytes::from(vec![b'x'; 60 * 1024]),
            recalled: None,
            edited_at_ms: None,
            refs: Default::default(),
        };
        let messages: Vec<_> = (1..=100).map(message).collect();
        let sync = petrel_storage::SyncPage {
            messages: messages.clone(),
            ..Default::default()
        };
        let Reply::Synced(cut) = fit_page(Reply::Synced(sync)) else {
            panic!("not a sync page");
        };
        assert!(cut.has_more);
        assert_eq!(cut.messages.first().map(|m| m.seq), Some(1));
        let kept: usize = cut.messages.iter().map(|m| m.payload.len()).sum();
        assert!(kept <= MAX_PAGE_BYTES && kept > MAX_PAGE_BYTES - 2 * 61 * 1024);
        let history = petrel_storage::HistoryPage {
            messages,
            first_seq: 1,
            cut: false,
        };
        let Reply::History(cut) = fit_page(Reply::History(history)) else {
            panic!("not a history page");
        };
        assert_eq!(cut.messages.last().map(|m| m.seq), Some(100));
        assert!(cut.cut);
        assert!(cut.messages.len() < 100 && cut.messages.len() > 5);
        // A small page crosses whole.
        let small = petrel_storage::HistoryPage {
            messages: vec![message(1)],
            first_seq: 1,
            cut: false,
        };
        let Reply::History(same) = fit_page(Reply::History(small)) else {
            panic!("not a history page");
        };
        assert_eq!(same.messages.len(), 1);
        assert!(!same.cut);
    }
}
