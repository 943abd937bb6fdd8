//! Frames over a tokio `TcpStream`: petrel-proto's decoder on a `BytesMut` read buffer,
//! and its encoder into a write buffer flushed once per batch of frames.
//!
//! [`FramedIo::read_frame`] is cancel-safe (it may lose a race in `tokio::select!`
//! without losing bytes): bytes only move from the socket into the read buffer when a
//! read completes, and the decoder keeps its state between calls.

use bytes::BytesMut;
use petrel_proto::codec::{EncodeError, FrameEncoder};
use petrel_proto::{Frame, FrameDecoder, FrameError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a connection can no longer be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The server's byte stream is not valid Petrel framing.
    #[error("bad frame from the server: {0}")]
    Frame(#[from] FrameError),
    /// A frame could not be encoded (too large for the server's limit).
    #[error("cannot encode frame: {0}")]
    Encode(#[from] EncodeError),
}

/// A framed connection.
#[derive(Debug)]
pub struct FramedIo {
    stream: TcpStream,
    decoder: FrameDecoder,
    encoder: FrameEncoder,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

impl FramedIo {
    /// Wraps a connected stream.
    pub fn new(stream: TcpStream) -> FramedIo {
        FramedIo {
            stream,
            decoder: FrameDecoder::default(),
            encoder: FrameEncoder::default(),
            rbuf: BytesMut::with_capacity(16 * 1024),
            wbuf: BytesMut::with_capacity(4 * 1024),
        }
    }

    /// The next frame; `None` when the server closed the connection. Frames of unknown
    /// types or with undecodable bodies are skipped (the stream stays in sync).
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ConnError> {
        loop {
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) => {}
                Err(e) if !e.is_fatal() => {
                    tracing::debug!(error = %e, "skipping a frame this SDK does not understand");
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Encodes `frame` into the write buffer (sent by [`FramedIo::flush`]).
    pub fn queue(&mut self, frame: &Frame) -> Result<(), ConnError> {
        self.encoder.encode(frame, &mut self.wbuf)?;
        Ok(())
    }

    /// Writes every queued frame.
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }
}
