//! This node's replica log: a JetStream stream (`PETREL_<name>_NODE_<n>`, subject
//! `<name>.replica.<n>`) holding every write of the node's database as a record
//! (`petrel_storage::replica`), with `[cluster] replicas` copies across the NATS
//! cluster. The database acknowledges nothing before the stream has it, and a node that
//! lost its disk is rebuilt from it when it starts (docs/CLUSTER.md, "Replication").
//!
//! A record larger than a NATS message is sent as several **pieces**, each
//! `record(u64 BE) writer(u64 BE) index(u16 BE) last(u8)` then bytes. A crash between
//! pieces leaves a partial record at the stream's end; the record is sent again whole
//! after it, and readers drop the partial one (a new index 0 starts the record over).
//!
//! Every piece is published with `Nats-Expected-Last-Sequence`, so the stream takes it
//! only right after the last piece this process knows of: a second process writing the
//! same node's stream is refused instead of interleaving. When a publish fails or its
//! acknowledgement is lost, the stream's end is read again before the next one, and a
//! record whose last piece this process did land counts as stored.
//!
//! The storage layer calls in from its own threads (the syncers); each call is run to
//! completion on a runtime of this module's own with one worker thread.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, DiscardPolicy, StorageType};
use async_nats::jetstream::{self, Context};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use petrel_storage::StorageError;
use petrel_storage::replica::{RecordVisitor, ReplicaLog};

use super::config::ClusterSettings;

/// Bytes before each piece's data.
const PIECE_HEADER: usize = 8 + 8 + 2 + 1;

/// Room left in a NATS message for the headers of a publish.
const HEADROOM: usize = 1024;

/// The stream's end as this process last saw it.
#[derive(Debug, Clone, Copy)]
struct Tail {
    /// The stream sequence of its last message (0: empty).
    seq: u64,
    /// The last whole record.
    record: u64,
    /// Whether that record's last piece was written by this process.
    ours: bool,
}

/// A piece's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    record: u64,
    writer: u64,
    index: u16,
    last: bool,
}

impl Piece {
    fn parse(payload: &[u8]) -> Result<(Piece, &[u8]), StorageError> {
        if payload.len() < PIECE_HEADER {
            return Err(corrupt(format!(
                "a piece of {} bytes, shorter than its header",
                payload.len()
            )));
        }
        let (head, data) = payload.split_at(PIECE_HEADER);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&head[i..i + 8]);
            u64::from_be_bytes(b)
        };
        let piece = Piece {
            record: u64_at(0),
            writer: u64_at(8),
            index: u16::from_be_bytes([head[16], head[17]]),
            last: match head[18] {
                0 => false,
                1 => true,
                other => return Err(corrupt(format!("piece flag {other}"))),
            },
        };
        Ok((piece, data))
    }

    fn encode(self, data: &[u8]) -> Bytes {
        let mut b = BytesMut::with_capacity(PIECE_HEADER + data.len());
        b.put_u64(self.record);
        b.put_u64(self.writer);
        b.put_u16(self.index);
        b.put_u8(u8::from(self.last));
        b.put_slice(data);
        b.freeze()
    }
}

fn corrupt(what: String) -> StorageError {
    StorageError::Backend(format!("replica log: {what}"))
}

/// A node's replica log on JetStream.
pub struct JetStreamLog {
    /// Taken only by `drop`.
    runtime: Option<tokio::runtime::Runtime>,
    js: Context,
    stream: String,
    subject: String,
    /// Largest piece data per message.
    piece_bytes: usize,
    /// This process, in the pieces it writes.
    writer: u64,
    /// `None` after a failed publish, until the stream's end is read again.
    tail: Mutex<Option<Tail>>,
    /// When the log last warned that it is unreachable (once a second at most).
    warned: Mutex<Option<Instant>>,
    /// Longest a shipping round waits for NATS (`request_timeout_ms`).
    timeout: Duration,
}

impl std::fmt::Debug for JetStreamLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamLog")
            .field("stream", &self.stream)
            .finish()
    }
}

impl JetStreamLog {
    /// Connects to NATS and finds or creates this node's stream with `settings.replicas`
    /// copies. An error when NATS or JetStream cannot be reached: a node that
    /// replicates does not start without its log.
    pub fn connect(settings: &ClusterSettings) -> anyhow::Result<JetStreamLog> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("petrel-replica")
            .enable_all()
            .build()?;
        let stream = format!("PETREL_{}_NODE_{}", settings.name, settings.node);
        let subject = format!("{}.replica.{}", settings.name, settings.node);
        let (js, max_payload) = runtime.block_on(async {
            let client = async_nats::ConnectOptions::new()
                .name(format!("petrel-{}-node-{}-replica", settings.name, settings.node))
                .connection_timeout(settings.request_timeout)
                .connect(settings.nats_url.as_str())
                .await
                .with_context(|| {
                    format!(
                        "cannot reach NATS at {} for this node's replica log ([cluster] \
                         replicas = {}): a node that replicates does not start without it",
                        settings.nats_url, settings.replicas
                    )
                })?;
            let max_payload = client.server_info().max_payload;
            let mut js = jetstream::new(client);
            js.set_timeout(settings.request_timeout);
            let config = stream::Config {
                name: stream.clone(),
                subjects: vec![subject.clone()],
                num_replicas: usize::from(settings.replicas),
                storage: StorageType::File,
                // Never drop old records to make room: a full stream refuses writes.
                discard: DiscardPolicy::New,
                description: Some(format!(
                    "Petrel cluster {:?}, node {}: every write of its database",
                    settings.name, settings.node
                )),
                ..Default::default()
            };
            let info = js
                .get_or_create_stream(config)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| {
                    format!(
                        "cannot find or create the JetStream stream {stream} (is JetStream \
                         enabled on the NATS server, with room for {} replicas?)",
                        settings.replicas
                    )
                })?
                .cached_info()
                .clone();
            if info.config.num_replicas != usize::from(settings.replicas) {
                tracing::warn!(
                    stream = %stream,
                    has = info.config.num_replicas,
                    configured = settings.replicas,
                    "replica log: the stream keeps its own replica count; change it with `nats stream edit`"
                );
            }
            anyhow::Ok((js, max_payload))
        })?;
        Ok(JetStreamLog {
            runtime: Some(runtime),
            js,
            stream,
            subject,
            piece_bytes: max_payload
                .saturating_sub(HEADROOM + PIECE_HEADER)
                .max(4096),
            writer: rand::random(),
            tail: Mutex::new(None),
            warned: Mutex::new(None),
            timeout: settings.request_timeout,
        })
    }

    /// The stream's name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Runs `f` on this log's runtime (there until `drop`), for as long as it takes.
    fn block_on<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        match &self.runtime {
            Some(runtime) => runtime.block_on(f),
            None => Err(StorageError::Closed),
        }
    }

    /// [`Self::block_on`] for at most `request_timeout`: however many requests NATS is
    /// slow to answer (reconnecting, a stream recovering), a shipping round ends in
    /// time to answer its writes `SERVER_BUSY` while their clients still wait.
    fn block_on_bounded<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        self.block_on(async {
            match tokio::time::timeout(self.timeout, f).await {
                Ok(result) => result,
                Err(elapsed) => Err(self.unavailable("no answer in time", elapsed)),
            }
        })
    }

    /// A NATS failure: logged (once a second at most) and answered `Unavailable`, so
    /// the writes waiting for it are answered `SERVER_BUSY` and sent again.
    fn unavailable(&self, what: &str, e: impl std::fmt::Display) -> StorageError {
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            *warned = Some(Instant::now());
            tracing::warn!(stream = %self.stream, error = %e,
                "replica log unreachable ({what}): writes are answered SERVER_BUSY until it is back");
        }
        StorageError::Unavailable
    }

    async fn piece_at(
        &self,
        stream: &stream::Stream,
        seq: u64,
    ) -> Result<(Piece, Bytes), StorageError> {
        let message = stream
            .get_raw_message(seq)
            .await
            .map_err(|e| self.unavailable("get", e))?;
        let (piece, _) = Piece::parse(&message.payload)?;
        Ok((piece, message.payload))
    }

    /// The stream and what it holds now (sequences, message count).
    async fn stream_state(&self) -> Result<(stream::Stream, stream::State), StorageError> {
        let mut stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| self.unavailable("stream", e))?;
        let state = stream
            .info()
            .await
            .map_err(|e| self.unavailable("info", e))?
            .state
            .clone();
        Ok((stream, state))
    }

    /// Reads the stream's end: its last sequence and the last whole record.
    async fn read_tail(&self) -> Result<Tail, StorageError> {
        let (stream, state) = self.stream_state().await?;
        if state.messages == 0 {
            return Ok(Tail {
                seq: state.last_sequence,
                record: 0,
                ours: false,
            });
        }
        let (piece, _) = self.piece_at(&stream, state.last_sequence).await?;
        Ok(Tail {
            seq: state.last_sequence,
            // Pieces of record r follow every piece of r - 1.
            record: if piece.last {
                piece.record
            } else {
                piece.record.saturating_sub(1)
            },
            ours: piece.last && piece.writer == self.writer,
        })
    }

    /// Publishes every piece of `records` at once, each expecting the one before it at
    /// the stream's end (one round trip for the lot, not one per piece), then collects
    /// the acknowledgements in order. Returns the stream's end after the last record
    /// acknowledged whole, how many records that is, and what stopped the rest.
    async fn append_pipelined(
        &self,
        mut tail: Tail,
        records: &[(u64, Vec<u8>)],
    ) -> (Tail, usize, Result<(), StorageError>) {
        let mut sent = Vec::new();
        let mut stopped = Ok(());
        let mut seq = tail.seq;
        'records: for (at, (number, record)) in records.iter().enumerate() {
            // An empty record (none is) would still be one piece.
            let mut chunks: Vec<&[u8]> = record.chunks(self.piece_bytes.max(1)).collect();
            if chunks.is_empty() {
                chunks.push(&[]);
            }
            let count = chunks.len();
            for (index, data) in chunks.into_iter().enumerate() {
                let Ok(index16) = u16::try_from(index) else {
                    stopped = Err(corrupt(format!(
                        "record {number} of {} bytes is too large",
                        record.len()
                    )));
                    break 'records;
                };
                let piece = Piece {
                    record: *number,
                    writer: self.writer,
                    index: index16,
                    last: index + 1 == count,
                };
                let message = PublishMessage::build()
                    .payload(piece.encode(data))
                    .expected_last_sequence(seq);
                match self.js.send_publish(self.subject.clone(), message).await {
                    Ok(ack) => {
                        seq += 1;
                        sent.push((at, piece.last, ack));
                    }
                    Err(e) => {
                        stopped = Err(self.unavailable("publish", e));
                        break 'records;
                    }
                }
            }
        }
        let mut stored = 0;
        for (at, last, ack) in sent {
            match ack.await {
                Ok(ack) => {
                    tail.seq = ack.sequence;
                    if last {
                        stored = at + 1;
                        tail.record = records[at].0;
                        tail.ours = true;
                    }
                }
                Err(e) => {
                    // The later pieces expected this one before them: refused too.
                    stopped = Err(self.unavailable("acknowledgement", e));
                    break;
                }
            }
        }
        (tail, stored, stopped)
    }

    /// The first stream sequence holding a piece of a record after `after`.
    async fn first_seq_after(
        &self,
        stream: &stream::Stream,
        after: u64,
        first: u64,
        last: u64,
    ) -> Result<u64, StorageError> {
        // Record numbers never fall along the stream: binary search.
        let (mut lo, mut hi) = (first, last + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (piece, _) = self.piece_at(stream, mid).await?;
            if piece.record > after {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }

    async fn read(&self, after: u64, visit: &mut RecordVisitor<'_>) -> Result<(), StorageError> {
        let (stream, state) = self.stream_state().await?;
        if state.messages == 0 {
            return Ok(());
        }
        let start = self
            .first_seq_after(&stream, after, state.first_sequence, state.last_sequence)
            .await?;
        if start > state.last_sequence {
            return Ok(());
        }
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| self.unavailable("consumer", e))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| self.unavailable("messages", e))?;
        // The record being put together: its number, next index, bytes.
        let mut open: Option<(u64, u16, Vec<u8>)> = None;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| self.unavailable("read", e))?;
            let seq = message
                .info()
                .map_err(|e| self.unavailable("message info", e))?
                .stream_sequence;
            let (piece, data) = Piece::parse(&message.payload)?;
            if piece.index == 0 {
                // Drops a partial record left by a crash between its pieces.
                open = Some((piece.record, 0, Vec::new()));
            }
            match &mut open {
                Some((record, next, bytes)) if *record == piece.record && *next == piece.index => {
                    bytes.extend_from_slice(data);
                    *next += 1;
                }
                _ => {
                    return Err(corrupt(format!(
                        "piece {} of record {} at sequence {seq} follows no piece before it",
                        piece.index, piece.record
                    )));
                }
            }
            if piece.last
                && let Some((record, _, bytes)) = open.take()
            {
                visit(record, &bytes)?;
            }
            if seq >= state.last_sequence {
                break;
            }
        }
        Ok(())
    }
}

impl ReplicaLog for JetStreamLog {
    fn last(&self) -> Result<u64, StorageError> {
        let tail = self.block_on_bounded(self.read_tail())?;
        let mut known = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        *known = Some(tail);
        Ok(tail.record)
    }

    fn append(&self, number: u64, record: &[u8]) -> Result<(), StorageError> {
        self.append_all(&[(number, record.to_vec())]).1
    }

    fn append_all(&self, records: &[(u64, Vec<u8>)]) -> (usize, Result<(), StorageError>) {
        let Some(&(first, _)) = records.first() else {
            return (0, Ok(()));
        };
        let mut known = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        let tail = match *known {
            Some(tail) => tail,
            None => match self.block_on_bounded(self.read_tail()) {
                Ok(tail) => tail,
                Err(e) => return (0, Err(e)),
            },
        };
        // Records this process sent whose acknowledgements were lost: every record up
        // to the stream's last is ours when the last is (each piece landed only right
        // after the one before it).
        let landed = if tail.ours {
            records
                .iter()
                .take_while(|(n, _)| *n <= tail.record)
                .count()
        } else {
            0
        };
        let rest = &records[landed..];
        let Some(&(next, _)) = rest.first() else {
            *known = Some(tail);
            return (landed, Ok(()));
        };
        if tail.record + 1 != next {
            *known = None;
            return (
                landed,
                Err(StorageError::Backend(format!(
                    "replica log {}: holds records through {}, so record {next} does not \
                     follow (another process writes this node's log; first record asked: \
                     {first})",
                    self.stream, tail.record
                ))),
            );
        }
        // Past the time limit nothing is known of what landed: the stream's end is read
        // again before the next round, which counts what did as ours.
        let pipelined =
            self.block_on_bounded(async { Ok(self.append_pipelined(tail, rest).await) });
        let (tail, stored, result) = match pipelined {
            Ok(done) => done,
            Err(e) => (tail, 0, Err(e)),
        };
        *known = result.is_ok().then_some(tail);
        (landed + stored, result)
    }

    fn read_after(&self, after: u64, visit: &mut RecordVisitor<'_>) -> Result<(), StorageError> {
        self.block_on(self.read(after, visit))
    }
}

impl Drop for JetStreamLog {
    fn drop(&mut self) {
        // Whatever thread drops the engine last, even one inside another runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_round_trip_and_bad_headers_are_errors() {
        let piece = Piece {
            record: 7,
            writer: 42,
            index: 3,
            last: true,
        };
        let bytes = piece.encode(b"data");
        let (back, data) = Piece::parse(&bytes).expect("parse");
        assert_eq!((back, data), (piece, &b"data"[..]));
        assert!(Piece::parse(&bytes[..PIECE_HEADER - 1]).is_err());
        let mut bad = bytes.to_vec();
        bad[18] = 2;
        assert!(Piece::parse(&bad).is_err());
    }
}
