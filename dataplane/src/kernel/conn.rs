//! One TCP connection on a dataplane core: its socket, its frame decoder and its queue of
//! outbound bytes.
//!
//! Performance-critical path: `read_frames` and `flush` run for every packet. They
//! allocate only to grow the read buffer for a partial frame; frames go to the core's
//! loop as they are decoded, and outbound `Bytes` are written with one vectored write
//! without being copied or concatenated.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};

use bytes::{Buf, Bytes, BytesMut};
use mio::net::TcpStream;
use petrel_conn::{ConnId, TransportEvent};
use petrel_proto::{DecoderConfig, FrameDecoder};

/// Most buffers handed to one `writev` call.
const MAX_IOVECS: usize = 64;

/// What reading a readable socket led to.
#[derive(Debug)]
pub(super) enum ReadOutcome {
    /// Read until the socket would block; the connection stays open.
    Open,
    /// The peer closed its side.
    PeerClosed,
    /// The socket failed.
    Failed(io::Error),
}

pub(super) struct Connection {
    pub(super) id: ConnId,
    pub(super) stream: TcpStream,
    read_buf: BytesMut,
    decoder: FrameDecoder,
    /// After a fatal framing error the stream is out of sync: stop reading and let the
    /// control plane send its error frame and close.
    read_stopped: bool,
    out: VecDeque<Bytes>,
    out_bytes: usize,
    /// Registered for WRITABLE because a flush could not finish.
    pub(super) wants_write: bool,
    /// Close once everything queued is written.
    pub(super) closing: bool,
    /// In the core's list of connections to flush this wake-up.
    pub(super) dirty: bool,
    /// Its queued output passed the limit: closed without writing more.
    slow_consumer: bool,
    /// In the core's list of connections to read at the next `receive`.
    pub(super) read_pending: bool,
}

impl Connection {
    pub(super) fn new(id: ConnId, stream: TcpStream, decoder: DecoderConfig) -> Connection {
        Connection {
            id,
            stream,
            read_buf: BytesMut::new(),
            decoder: FrameDecoder::new(decoder),
            read_stopped: false,
            out: VecDeque::new(),
            out_bytes: 0,
            wants_write: false,
            closing: false,
            dirty: false,
            slow_consumer: false,
            read_pending: false,
        }
    }

    /// Drops what is queued; the connection is to be closed as a slow consumer.
    pub(super) fn fail_slow_consumer(&mut self) {
        self.out.clear();
        self.out_bytes = 0;
        self.slow_consumer = true;
    }

    /// Whether [`Connection::fail_slow_consumer`] was called.
    pub(super) fn is_slow_consumer(&self) -> bool {
        self.slow_consumer
    }

    /// Bytes queued and not yet written.
    pub(super) fn queued_bytes(&self) -> usize {
        self.out_bytes
    }

    /// Reads until the socket would block, appending a `Frame` or `FrameError` event for
    /// every frame. `scratch` is the core's shared read buffer.
    pub(super) fn read_frames(
        &mut self,
        scratch: &mut [u8],
        events: &mut Vec<TransportEvent>,
    ) -> ReadOutcome {
        if self.read_stopped {
            return ReadOutcome::Open;
        }
        loop {
            let n = match self.stream.read(scratch) {
                Ok(0) => return ReadOutcome::PeerClosed,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return ReadOutcome::Failed(e),
            };
            self.read_buf.extend_from_slice(&scratch[..n]);
            loop {
                match self.decoder.decode(&mut self.read_buf) {
                    Ok(Some(frame)) => events.push(TransportEvent::Frame {
                        conn: self.id,
                        frame,
                    }),
                    Ok(None) => break,
                    Err(error) => {
                        let fatal = error.is_fatal();
                        events.push(TransportEvent::FrameError {
                            conn: self.id,
                            error,
                        });
                        if fatal {
                            self.read_stopped = true;
                            self.read_buf = BytesMut::new();
                            return ReadOutcome::Open;
                        }
                    }
                }
            }
            if self.read_buf.is_empty() {
                // Idle connections hold no read buffer at all: memory per idle connection
                // is a headline number.
                self.read_buf = BytesMut::new();
            }
        }
        ReadOutcome::Open
    }

    /// Queues bytes for the next flush.
    pub(super) fn queue(&mut self, bytes: Bytes) {
        if !bytes.is_empty() && !self.slow_consumer {
            self.out_bytes += bytes.len();
            self.out.push_back(bytes);
        }
    }

    /// Writes as much queued output as the socket takes. Returns the bytes written.
    pub(super) fn flush(&mut self) -> io::Result<usize> {
        let mut written = 0;
        while !self.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (slot, bytes) in slices.iter_mut().zip(self.out.iter()) {
                *slot = IoSlice::new(bytes);
                count += 1;
            }
            let n = match self.stream.write_vectored(&slices[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            written += n;
            self.out_bytes -= n;
            let mut left = n;
            while left > 0 {
                let Some(front) = self.out.front_mut() else {
                    break;
                };
                if front.len() <= left {
                    left -= front.len();
                    self.out.pop_front();
                } else {
                    front.advance(left);
                    left = 0;
                }
            }
        }
        Ok(written)
    }
}
