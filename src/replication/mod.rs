//! walshift's own replication client, on postgres-protocol.
//!
//! tokio-postgres has no CopyBoth support, so the replication connection is
//! ours: [`ReplicationClient`] connects (TCP or unix socket, TLS per
//! `sslmode`, trust/password/MD5/SCRAM-SHA-256), runs replication commands,
//! and becomes a [`LogicalStream`] with `START_REPLICATION`.
//!
//! ```text
//!  conn.rs    socket, TLS, startup, auth, IDENTIFY_SYSTEM / CREATE_ / DROP_REPLICATION_SLOT
//!  stream.rs  START_REPLICATION: reader task ─▶ events; Feedback ─▶ status updates
//!  echo.rs    drops walshift's own row changes in the reader task (I5)
//!  proto.rs   pure: framing, XLogData / keepalive / status update, command text
//! ```

mod conn;
mod echo;
mod pace;
pub mod proto;
mod stream;

use std::fmt;

pub use conn::{CreatedSlot, IdentifySystem, ReplicationClient, Row};
pub use echo::is_row_change;
pub use proto::{SlotOptions, SnapshotAction, StandbyStatus};
pub use stream::{Feedback, LogicalStream, ReplicationEvent, StreamOptions};

use crate::tls::{SslMode, TlsError};

/// An error the server reported (`ErrorResponse`), with its SQLSTATE.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " hint: {h}")?;
        }
        write!(f, " [SQLSTATE {}]", self.code)
    }
}

/// What went wrong on a replication connection.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("TLS handshake with {host} failed: {source}")]
    TlsHandshake {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("server {host} does not accept TLS, but sslmode={mode} requires it")]
    TlsUnavailable { host: String, mode: SslMode },
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("server error: {0}")]
    Db(Box<DbError>),
    #[error("I/O error on the replication connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("replication protocol violation: {0}")]
    Protocol(String),
    #[error("the server closed the replication connection")]
    Closed,
    /// Several hosts, none of them fit: each named with its reason.
    #[error(transparent)]
    NoHost(crate::net::NoHostFits),
    /// Nothing arrived on the stream for longer than the server's own
    /// keepalives allow: the link is dead (src/replication/stream.rs).
    #[error(
        "nothing arrived on the replication stream for {0:?} (wal_sender_timeout plus the status interval): the link is dead"
    )]
    Silent(std::time::Duration),
}

impl ReplicationError {
    /// The SQLSTATE when the server reported the error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ReplicationError::Db(e) => Some(&e.code),
            _ => None,
        }
    }

    /// Whether the connection is gone (network, server restart, terminated
    /// backend): such errors are worth a reconnect.
    pub fn is_closed(&self) -> bool {
        match self {
            ReplicationError::Closed
            | ReplicationError::Io(_)
            | ReplicationError::Connect { .. }
            | ReplicationError::NoHost(_)
            | ReplicationError::Silent(_) => true,
            // 57P01 admin_shutdown (pg_terminate_backend, fast shutdown),
            // 57P02 crash_shutdown, 57P03 cannot_connect_now (starting up).
            ReplicationError::Db(e) => matches!(e.code.as_str(), "57P01" | "57P02" | "57P03"),
            _ => false,
        }
    }
}
