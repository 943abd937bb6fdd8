//! This node's replica log: a JetStream stream (`PETREL_<name>_NODE_<n>`, subject
//! `<name>.replica.<n>`) holding every write of the node's database as a record
//! (`petrel_storage::replica`), with `[cluster] replicas` copies across the NATS
//! cluster. The database acknowledges nothing before the stream has it, and a node that
//! lost its disk is rebuilt from it when it starts (docs/CLUSTER.md, "Replication").
//!
//! Each message of the stream starts `record(u64 BE) writer(u64 BE) index(u16 BE)
//! kind(u8)`. A round's records go as **batches** of whole records (`len(u32 BE)
//! bytes` each, `index` = how many), as many as fit a NATS message, so a round is
//! usually one publish. A record larger than a message goes alone, in **pieces**. A
//! crash between pieces leaves a partial record at the stream's end; the record is
//! sent again after it, and readers drop the partial one (a new piece 0, or a batch,
//! starts over).
//!
//! Every message is published with `Nats-Expected-Last-Sequence`, one at a time, so
//! the stream takes it only right after the last one this process knows of, and a
//! message left over from a round that timed out can land only where it was meant to.
//! After a round that failed, the messages after the last end this process is sure of
//! are read back: if all are its own and follow in order, the records they complete
//! are stored (a lost acknowledgement); a message of another writer means another
//! process writes this node's log, which is refused for good.
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
use bytes::{BufMut, BytesMut};
use futures_util::StreamExt;
use petrel_storage::StorageError;
use petrel_storage::replica::{RecordVisitor, ReplicaLog};

use super::config::ClusterSettings;

/// Bytes before each message's data.
const HEADER: usize = 8 + 8 + 2 + 1;

/// Room left in a NATS message for the headers of a publish.
const HEADROOM: usize = 1024;

/// The stream's end: its last message and the last whole record before it.
#[derive(Debug, Clone, Copy)]
struct Tail {
    /// The stream sequence of its last message (0: empty).
    seq: u64,
    /// The last whole record.
    record: u64,
}

/// What this process knows of the stream's end.
#[derive(Debug, Default)]
struct Ends {
    /// Exact (from the last acknowledgement); `None` after a round that failed, until
    /// the stream is read again.
    known: Option<Tail>,
    /// The last end this process is sure of (read at start, or acknowledged): a failed
    /// round's leftovers are checked from it.
    confirmed: Option<Tail>,
}

/// What a message of the stream holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A piece of one record, not its last.
    Part,
    /// The last piece of one record (the whole of it, at index 0).
    End,
    /// Whole records `record ..` (`count` of them), each `len(u32 BE) bytes`.
    Batch,
}

/// A message's header: `record(u64 BE) writer(u64 BE) index(u16 BE) kind(u8)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    /// The record (the first one, in a batch).
    record: u64,
    writer: u64,
    /// The piece's index; in a batch, how many records it holds.
    index: u16,
    kind: Kind,
}

impl Header {
    fn parse(payload: &[u8]) -> Result<(Header, &[u8]), StorageError> {
        if payload.len() < HEADER {
            return Err(corrupt(format!(
                "a message of {} bytes, shorter than its header",
                payload.len()
            )));
        }
        let (head, data) = payload.split_at(HEADER);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&head[i..i + 8]);
            u64::from_be_bytes(b)
        };
        let header = Header {
            record: u64_at(0),
            writer: u64_at(8),
            index: u16::from_be_bytes([head[16], head[17]]),
            kind: match head[18] {
                0 => Kind::Part,
                1 => Kind::End,
                2 => Kind::Batch,
                other => return Err(corrupt(format!("message kind {other}"))),
            },
        };
        if header.kind == Kind::Batch && header.index == 0 {
            return Err(corrupt(format!(
                "an empty batch at record {}",
                header.record
            )));
        }
        Ok((header, data))
    }

    fn encode(self, capacity: usize) -> BytesMut {
        let mut b = BytesMut::with_capacity(HEADER + capacity);
        b.put_u64(self.record);
        b.put_u64(self.writer);
        b.put_u16(self.index);
        b.put_u8(match self.kind {
            Kind::Part => 0,
            Kind::End => 1,
            Kind::Batch => 2,
        });
        b
    }

    /// The last record the message holds, whole or in part.
    fn last_record(self) -> u64 {
        match self.kind {
            Kind::Batch => self.record + u64::from(self.index) - 1,
            Kind::Part | Kind::End => self.record,
        }
    }

    /// Whether the message ends a record (so its last record is whole).
    fn completes(self) -> bool {
        self.kind != Kind::Part
    }
}

/// The records of a batch's data, checked: each `len(u32 BE) bytes`, `count` of them,
/// nothing after.
fn batch_records(data: &[u8], count: u16) -> Result<Vec<&[u8]>, StorageError> {
    let mut records = Vec::with_capacity(usize::from(count));
    let mut rest = data;
    for _ in 0..count {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(corrupt("a batch cut short".into()));
        };
        let len = u32::from_be_bytes(*len) as usize;
        if tail.len() < len {
            return Err(corrupt("a batch cut short".into()));
        }
        let (record, tail) = tail.split_at(len);
        records.push(record);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(corrupt(format!(
            "{} bytes after a batch's records",
            rest.len()
        )));
    }
    Ok(records)
}

/// A stream's identity: its name, then its description, which holds a random number
/// drawn when it was made (a stream deleted and made again under the same name is
/// another log). Not its creation time, which a server may rewrite.
fn identity_of(info: &stream::Info) -> String {
    format!(
        "{} {}",
        info.config.name,
        info.config.description.as_deref().unwrap_or_default()
    )
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
    /// The stream's identity when this process connected ([`identity_of`]).
    identity: String,
    /// The stream's end, as far as this process knows it.
    ends: Mutex<Ends>,
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
        let (js, max_payload, identity) = runtime.block_on(async {
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
                // The random number tells this stream from one of the same name
                // made again ([`identity_of`]).
                description: Some(format!(
                    "Petrel cluster {:?}, node {}: every write of its database (log {:016x})",
                    settings.name,
                    settings.node,
                    rand::random::<u64>()
                )),
                ..Default::default()
            };
            let made = match js.get_or_create_stream(config).await {
                Ok(made) => Ok(made),
                // Made meanwhile by another process of this node (its standby), with
                // another number: that one is the log.
                Err(_) => js.get_stream(&stream).await.map_err(|e| anyhow::anyhow!("{e}")),
            };
            let info = made
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
            anyhow::Ok((js, max_payload, identity_of(&info)))
        })?;
        Ok(JetStreamLog {
            runtime: Some(runtime),
            js,
            stream,
            subject,
            piece_bytes: max_payload.saturating_sub(HEADROOM + HEADER).max(4096),
            writer: rand::random(),
            identity,
            ends: Mutex::new(Ends::default()),
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

    async fn header_at(&self, stream: &stream::Stream, seq: u64) -> Result<Header, StorageError> {
        let message = stream
            .get_raw_message(seq)
            .await
            .map_err(|e| self.unavailable("get", e))?;
        Ok(Header::parse(&message.payload)?.0)
    }

    /// The stream and its state; an error when it is not the stream this process
    /// connected to (deleted and made again since).
    async fn stream_state(&self) -> Result<(stream::Stream, stream::State), StorageError> {
        let mut stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| self.unavailable("stream", e))?;
        let info = stream
            .info()
            .await
            .map_err(|e| self.unavailable("info", e))?;
        let identity = identity_of(info);
        if identity != self.identity {
            return Err(StorageError::Backend(format!(
                "replica log: the stream is now {identity:?}, not {:?}, which this process \
                 started with: it was deleted and made again; restart this process",
                self.identity
            )));
        }
        let state = info.state.clone();
        Ok((stream, state))
    }

    /// Reads the stream's end: its last sequence and the last whole record.
    async fn read_tail(&self) -> Result<Tail, StorageError> {
        let (stream, state) = self.stream_state().await?;
        if state.messages == 0 {
            return Ok(Tail {
                seq: state.last_sequence,
                record: 0,
            });
        }
        let header = self.header_at(&stream, state.last_sequence).await?;
        Ok(Tail {
            seq: state.last_sequence,
            // The pieces of record r come after every record before it.
            record: if header.completes() {
                header.last_record()
            } else {
                header.record.saturating_sub(1)
            },
        })
    }

    /// After a round that failed: what landed after `from`, the last end this process
    /// is sure of. Every message there must be this process's, its records following
    /// `from`'s in order (a record may start over at piece 0 after a partial one); then
    /// the records it completed are in the log. A message of another writer means
    /// another process writes this node's log: refused for good.
    async fn check_after(&self, from: Tail) -> Result<Tail, StorageError> {
        let (stream, state) = self.stream_state().await?;
        let mut tail = from;
        // The record being put together and its last piece's index.
        let mut open: Option<(u64, u16)> = None;
        for seq in from.seq + 1..=state.last_sequence {
            let header = self.header_at(&stream, seq).await?;
            let follows = match (header.kind, open) {
                (Kind::Batch, _) => header.record == tail.record + 1,
                _ if header.index == 0 => header.record == tail.record + 1,
                (_, Some((record, index))) => header.record == record && header.index == index + 1,
                (_, None) => false,
            };
            if header.writer != self.writer || !follows {
                return Err(StorageError::Backend(format!(
                    "replica log {}: sequence {seq} holds record {} of another writer, after \
                     record {} of this process: another process writes this node's log",
                    self.stream, header.record, tail.record
                )));
            }
            open = (header.kind == Kind::Part).then_some((header.record, header.index));
            if header.completes() {
                tail.record = header.last_record();
            }
        }
        tail.seq = tail.seq.max(state.last_sequence);
        Ok(tail)
    }

    /// Publishes `records` as few messages as they fit in, one at a time, each expecting
    /// the one before it at the stream's end: whole records are batched up to a
    /// message's size (a round is usually one message, one round trip), and a record
    /// larger than that goes in pieces. With one message in flight at most, a message
    /// left over from a round that timed out can land only where it was meant to, or
    /// not at all. Returns the stream's end after the last record acknowledged, how
    /// many records that is, and what stopped the rest.
    async fn append_round(
        &self,
        mut tail: Tail,
        records: &[(u64, Vec<u8>)],
    ) -> (Tail, usize, Result<(), StorageError>) {
        let mut stored = 0;
        while stored < records.len() {
            let (number, record) = &records[stored];
            let (messages, count) = if HEADER + 4 + record.len() <= self.piece_bytes {
                // As many whole records as fit.
                let mut size = HEADER;
                let mut count = 0;
                for (_, r) in &records[stored..] {
                    if size + 4 + r.len() > self.piece_bytes || count == usize::from(u16::MAX) {
                        break;
                    }
                    size += 4 + r.len();
                    count += 1;
                }
                let header = Header {
                    record: *number,
                    writer: self.writer,
                    // At most u16::MAX (the loop stops there).
                    index: u16::try_from(count).unwrap_or(u16::MAX),
                    kind: Kind::Batch,
                };
                let mut b = header.encode(size);
                for (_, r) in &records[stored..stored + count] {
                    // Each record fits in a message, far below 4 GiB.
                    b.put_u32(r.len() as u32);
                    b.put_slice(r);
                }
                (vec![b.freeze()], count)
            } else {
                let chunks: Vec<&[u8]> = record.chunks(self.piece_bytes).collect();
                let mut messages = Vec::with_capacity(chunks.len());
                for (index, data) in chunks.iter().enumerate() {
                    let Ok(index16) = u16::try_from(index) else {
                        let too_large = corrupt(format!(
                            "record {number} of {} bytes is too large",
                            record.len()
                        ));
                        return (tail, stored, Err(too_large));
                    };
                    let header = Header {
                        record: *number,
                        writer: self.writer,
                        index: index16,
                        kind: if index + 1 == chunks.len() {
                            Kind::End
                        } else {
                            Kind::Part
                        },
                    };
                    let mut b = header.encode(data.len());
                    b.put_slice(data);
                    messages.push(b.freeze());
                }
                (messages, 1)
            };
            for payload in messages {
                let message = PublishMessage::build()
                    .payload(payload)
                    .expected_last_sequence(tail.seq);
                let ack = match self.js.send_publish(self.subject.clone(), message).await {
                    Ok(ack) => ack
                        .await
                        .map_err(|e| self.unavailable("acknowledgement", e)),
                    Err(e) => Err(self.unavailable("publish", e)),
                };
                match ack {
                    Ok(ack) => tail.seq = ack.sequence,
                    Err(e) => return (tail, stored, Err(e)),
                }
            }
            stored += count;
            tail.record = records[stored - 1].0;
        }
        (tail, stored, Ok(()))
    }

    /// The first stream sequence holding a record after `after`.
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
            if self.header_at(stream, mid).await?.last_record() > after {
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
        // However long the whole read, each message comes within `request_timeout`, or
        // the read fails (NATS went away) instead of waiting for it.
        while let Some(message) = tokio::time::timeout(self.timeout, messages.next())
            .await
            .map_err(|e| self.unavailable("read", e))?
        {
            let message = message.map_err(|e| self.unavailable("read", e))?;
            let seq = message
                .info()
                .map_err(|e| self.unavailable("message info", e))?
                .stream_sequence;
            let (header, data) = Header::parse(&message.payload)?;
            if header.kind == Kind::Batch {
                // Drops a partial record left by a crash between its pieces.
                open = None;
                for (i, record) in batch_records(data, header.index)?.into_iter().enumerate() {
                    let number = header.record + i as u64;
                    if number > after {
                        visit(number, record)?;
                    }
                }
            } else {
                if header.index == 0 {
                    open = Some((header.record, 0, Vec::new()));
                }
                match &mut open {
                    Some((record, next, bytes))
                        if *record == header.record && *next == header.index =>
                    {
                        bytes.extend_from_slice(data);
                        *next += 1;
                    }
                    _ => {
                        return Err(corrupt(format!(
                            "piece {} of record {} at sequence {seq} follows no piece before it",
                            header.index, header.record
                        )));
                    }
                }
                if header.kind == Kind::End
                    && let Some((record, _, bytes)) = open.take()
                    && record > after
                {
                    visit(record, &bytes)?;
                }
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
        let mut ends = self.ends.lock().unwrap_or_else(|p| p.into_inner());
        *ends = Ends {
            known: Some(tail),
            confirmed: Some(tail),
        };
        Ok(tail.record)
    }

    fn append(&self, number: u64, record: &[u8]) -> Result<(), StorageError> {
        self.append_all(&[(number, record.to_vec())]).1
    }

    fn append_all(&self, records: &[(u64, Vec<u8>)]) -> (usize, Result<(), StorageError>) {
        let Some(&(first, _)) = records.first() else {
            return (0, Ok(()));
        };
        let mut ends = self.ends.lock().unwrap_or_else(|p| p.into_inner());
        let tail = match (ends.known, ends.confirmed) {
            (Some(tail), _) => Ok(tail),
            // After a failed round: what of it landed, checked piece by piece.
            (None, Some(from)) => self.block_on_bounded(self.check_after(from)),
            (None, None) => self.block_on_bounded(self.read_tail()),
        };
        let tail = match tail {
            Ok(tail) => tail,
            Err(e) => return (0, Err(e)),
        };
        (ends.known, ends.confirmed) = (Some(tail), Some(tail));
        // Records of a failed round that landed after all (checked to be this
        // process's), or whose acknowledgement was lost.
        let landed = records
            .iter()
            .take_while(|(n, _)| *n <= tail.record)
            .count();
        let rest = &records[landed..];
        let Some(&(next, _)) = rest.first() else {
            return (landed, Ok(()));
        };
        if tail.record + 1 != next {
            ends.known = None;
            return (
                landed,
                Err(StorageError::Backend(format!(
                    "replica log {}: holds records through {}, so record {next} does not \
                     follow (first record asked: {first})",
                    self.stream, tail.record
                ))),
            );
        }
        // Past the time limit nothing is known of what landed: the next round checks.
        let pipelined = self.block_on_bounded(async { Ok(self.append_round(tail, rest).await) });
        let (tail, stored, result) = match pipelined {
            Ok(done) => done,
            Err(e) => (tail, 0, Err(e)),
        };
        if result.is_ok() {
            (ends.known, ends.confirmed) = (Some(tail), Some(tail));
        } else {
            ends.known = None;
        }
        (landed + stored, result)
    }

    fn clear(&self) -> Result<(), StorageError> {
        let mut ends = self.ends.lock().unwrap_or_else(|p| p.into_inner());
        self.block_on_bounded(async {
            let (stream, _) = self.stream_state().await?;
            stream
                .purge()
                .await
                .map_err(|e| self.unavailable("purge", e))?;
            Ok(())
        })?;
        // Sequences go on from where they were; no record is left.
        let tail = self.block_on_bounded(self.read_tail())?;
        *ends = Ends {
            known: Some(tail),
            confirmed: Some(tail),
        };
        Ok(())
    }

    fn identity(&self) -> String {
        self.identity.clone()
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
    fn headers_and_batches_round_trip_and_bad_ones_are_errors() {
        let header = Header {
            record: 7,
            writer: 42,
            index: 2,
            kind: Kind::Batch,
        };
        let mut b = header.encode(16);
        for r in [&b"ab"[..], b"cde"] {
            b.put_u32(r.len() as u32);
            b.put_slice(r);
        }
        let bytes = b.freeze();
        let (back, data) = Header::parse(&bytes).expect("parse");
        assert_eq!(back, header);
        assert_eq!((back.last_record(), back.completes()), (8, true));
        assert_eq!(
            batch_records(data, 2).expect("records"),
            [&b"ab"[..], b"cde"]
        );
        assert!(
            batch_records(data, 3).is_err(),
            "fewer records than counted"
        );
        assert!(batch_records(data, 1).is_err(), "bytes after the records");
        assert!(
            batch_records(&data[..data.len() - 1], 2).is_err(),
            "cut short"
        );
        assert!(Header::parse(&bytes[..HEADER - 1]).is_err());
        let mut bad = bytes.to_vec();
        bad[18] = 3;
        assert!(Header::parse(&bad).is_err(), "unknown kind");
        let empty = Header { index: 0, ..header }.encode(0);
        assert!(Header::parse(&empty).is_err(), "an empty batch");
        let part = Header {
            kind: Kind::Part,
            ..header
        };
        assert_eq!((part.last_record(), part.completes()), (7, false));
    }
}
