//! Frames over a tokio byte stream (a `TcpStream`, or TLS over one): petrel-proto's decoder on a `BytesMut` read buffer,
//! and its encoder into a write buffer flushed once per batch of frames. The buffers
//! ([`FramedIo`]) are apart from the socket, which is passed in for each read and write.
//!
//! [`FramedIo::read_frame`] is cancel-safe (it may lose a race in `tokio::select!`
//! without losing bytes): bytes only move from the socket into the read buffer when a
//! read completes, and the decoder keeps its state between calls.

use bytes::BytesMut;
use petrel_proto::codec::{EncodeError, FrameEncoder};
use petrel_proto::{Frame, FrameDecoder, FrameError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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

/// A connection's framing state: petrel-proto's decoder over the bytes received so far,
/// and the encoded frames waiting to be written. It owns no socket: the session passes
/// its `TcpStream` to [`FramedIo::read_frame`] and [`FramedIo::flush`], and the frame
/// handling in between (`task`) is synchronous, so the SDK's fuzz target can drive it
/// with bytes ([`FramedIo::received`], [`FramedIo::next_frame`], [`FramedIo::take_output`]).
#[derive(Debug)]
pub struct FramedIo {
    decoder: FrameDecoder,
    encoder: FrameEncoder,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

impl Default for FramedIo {
    fn default() -> Self {
        FramedIo::new()
    }
}

impl FramedIo {
    /// Empty buffers.
    pub fn new() -> FramedIo {
        FramedIo {
            decoder: FrameDecoder::default(),
            encoder: FrameEncoder::default(),
            rbuf: BytesMut::with_capacity(16 * 1024),
            wbuf: BytesMut::with_capacity(4 * 1024),
        }
    }

    /// The next whole frame among the bytes received so far, if any. Frames of unknown
    /// types or with undecodable bodies are skipped (the stream stays in sync); a fatal
    /// framing error is returned.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ConnError> {
        loop {
            match self.decoder.decode(&mut self.rbuf) {
                Ok(frame) => return Ok(frame),
                Err(e) if !e.is_fatal() => {
                    tracing::debug!(error = %e, "skipping a frame this SDK does not understand");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Takes the bytes received and not yet decoded.
    pub fn take_unread(&mut self) -> BytesMut {
        self.rbuf.split()
    }

    /// Appends bytes received from the server.
    pub fn received(&mut self, bytes: &[u8]) {
        self.rbuf.extend_from_slice(bytes);
    }

    /// The next frame from `stream`; `None` when the server closed the connection.
    pub async fn read_frame<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> Result<Option<Frame>, ConnError> {
        loop {
            if let Some(frame) = self.next_frame()? {
                return Ok(Some(frame));
            }
            if stream.read_buf(&mut self.rbuf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Encodes `frame` into the write buffer (sent by [`FramedIo::flush`]).
    pub fn queue(&mut self, frame: &Frame) -> Result<(), ConnError> {
        self.encoder.encode(frame, &mut self.wbuf)?;
        Ok(())
    }

    /// Takes every queued byte (instead of writing it to a socket).
    pub fn take_output(&mut self) -> BytesMut {
        self.wbuf.split()
    }

    /// Writes every queued frame to `stream`.
    pub async fn flush<S: AsyncWrite + Unpin>(&mut self, stream: &mut S) -> Result<(), ConnError> {
        if !self.wbuf.is_empty() {
            stream.write_all(&self.wbuf).await?;
            // TLS holds records until flushed; a plain socket's flush does nothing.
            stream.flush().await?;
            self.wbuf.clear();
        }
        Ok(())
    }
}
