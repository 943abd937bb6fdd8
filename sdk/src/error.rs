//! Every way an SDK call can fail, as one typed error.

use petrel_proto::pb;

/// An SDK call failed.
#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    /// The [`crate::ClientConfig`] is unusable.
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// The local SQLite store failed.
    #[error("local store: {0}")]
    Store(#[from] rusqlite::Error),
    /// A stored row could not be decoded (e.g. a content blob that is not protobuf).
    #[error("local store holds a corrupt row: {0}")]
    CorruptRow(String),
    /// Reading or writing the token cache file failed.
    #[error("token cache {path}: {source}")]
    TokenCache {
        /// The cache file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The request needs a live session and there is none right now (sends do not: they
    /// wait in the outbox).
    #[error("not connected")]
    NotConnected,
    /// The connection dropped before the server answered.
    #[error("connection lost before the server answered")]
    ConnectionLost,
    /// The server did not answer within the request timeout.
    #[error("the server did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The server answered with an `Error` frame.
    #[error("server error {code:?}: {message}")]
    Server {
        /// The protocol error code.
        code: pb::ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The server answered with a frame of an unexpected type.
    #[error("unexpected answer from the server: {0}")]
    UnexpectedAnswer(String),
    /// The client was shut down (or its task ended).
    #[error("the client has been shut down")]
    Closed,
    /// The media service answered an upload or download with an error (docs/MEDIA.md).
    #[error("media service: HTTP {status} {code}: {message}")]
    Media {
        /// The HTTP status.
        status: u16,
        /// The service's error code (`too_large`, `unsupported_media_type`, ...).
        code: String,
        /// Its explanation.
        message: String,
    },
    /// Talking HTTP to the media service, or reading/writing the local file, failed.
    #[error("media transfer: {0}")]
    MediaTransfer(String),
    /// The call's arguments break a protocol limit (caught before anything is queued).
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    /// The call is part of the SDK's planned API but is not implemented yet.
    #[error("not implemented yet: {0}")]
    NotImplemented(&'static str),
}

impl SdkError {
    /// The error a server `Error` frame stands for.
    pub fn from_server(e: &pb::Error) -> SdkError {
        SdkError::Server {
            code: pb::ErrorCode::try_from(e.code).unwrap_or(pb::ErrorCode::Unspecified),
            message: e.message.clone(),
        }
    }
}
