//! Pure decoder for pgoutput, PostgreSQL's logical replication output plugin.
//!
//! Bytes in, values out: [`Decoder::decode`] takes the payload of one
//! `XLogData` message and returns a [`LogicalMessage`]. There is no I/O here;
//! the replication socket lives in `crate::replication`. Protocol versions 1
//! to 4 are understood ("Logical Replication Message Formats" in the
//! PostgreSQL documentation, `src/backend/replication/logical/proto.c`).
//!
//! # The stream-block state
//!
//! With `streaming` on (protocol v2+), a large in-progress transaction is
//! sent in chunks. Between Stream Start and Stream Stop, data messages carry
//! the xid of the (sub)transaction that made the change right after their
//! tag; outside a block they do not. The bytes alone cannot tell which layout
//! a message has, so the decoder remembers where it is:
//!
//! ```text
//!            ┌──────────── Stream Start 'S' ────────────┐
//!            │                                          ▼
//!   ┌─────────────────┐                        ┌─────────────────┐
//!   │ outside a block │                        │ inside a block  │
//!   │  R Y I U D T M  │                        │  R Y I U D T M  │  + xid
//!   │  without xid    │                        │  O (origin)     │
//!   │  B C O b P K r  │                        │                 │
//!   │  c A p          │                        │                 │
//!   └─────────────────┘                        └─────────────────┘
//!            ▲                                          │
//!            └──────────── Stream Stop 'E' ─────────────┘
//! ```
//!
//! Stream Commit, Stream Abort and Stream Prepare come after the last Stream
//! Stop of their transaction, outside any block. A message in the wrong
//! state, or one the negotiated protocol version cannot produce, is an error
//! ([`DecodeError::is_out_of_sequence`]) rather than a guess: misreading the
//! xid as a relation OID would silently corrupt everything after it.
//!
//! The xid inside a block may name a subtransaction; the top-level
//! transaction is the one in the enclosing Stream Start
//! ([`Decoder::stream_xid`]).

mod decode;
#[doc(hidden)]
pub mod encode;
mod error;
mod messages;
#[cfg(test)]
mod tests;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

pub use error::DecodeError;
pub use messages::*;

/// The START_REPLICATION options that change the byte layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecoderOptions {
    /// The `proto_version` option sent to the server (1 to 4).
    pub proto_version: u32,
    /// The `streaming` option was `parallel` (only accepted with
    /// `proto_version` 4): Stream Abort then carries abort_lsn and abort_time.
    pub streaming_parallel: bool,
}

impl Default for DecoderOptions {
    fn default() -> Self {
        DecoderOptions {
            proto_version: 1,
            streaming_parallel: false,
        }
    }
}

/// Decodes the pgoutput payloads of one replication session, in order.
///
/// Create one per START_REPLICATION: a new session starts outside any stream
/// block. A payload that fails to decode leaves the decoder unchanged.
#[derive(Clone, Debug)]
pub struct Decoder {
    opts: DecoderOptions,
    /// The xid of the enclosing Stream Start while inside a stream block.
    stream_xid: Option<u32>,
}

impl Decoder {
    pub fn new(opts: DecoderOptions) -> Self {
        Decoder {
            opts,
            stream_xid: None,
        }
    }

    pub fn options(&self) -> DecoderOptions {
        self.opts
    }

    /// Between Stream Start and Stream Stop.
    pub fn in_stream_block(&self) -> bool {
        self.stream_xid.is_some()
    }

    /// The top-level transaction of the current stream block, if inside one.
    pub fn stream_xid(&self) -> Option<u32> {
        self.stream_xid
    }

    /// Decode one `XLogData` payload. The returned values borrow nothing:
    /// tuple values and message contents are slices of `data`.
    pub fn decode(&mut self, data: Bytes) -> Result<LogicalMessage, DecodeError> {
        let tag = *data.first().ok_or(DecodeError::Empty)?;
        self.check_sequence(tag)?;
        let cx = decode::DecodeContext {
            in_stream_block: self.in_stream_block(),
            stream_abort_info: self.opts.proto_version >= 4 && self.opts.streaming_parallel,
        };
        let msg = decode::decode(&data, cx)?;
        match &msg {
            LogicalMessage::StreamStart(s) => self.stream_xid = Some(s.xid),
            LogicalMessage::StreamStop => self.stream_xid = None,
            _ => {}
        }
        Ok(msg)
    }

    /// Refuse a tag this session cannot produce here, before reading further.
    fn check_sequence(&self, tag: u8) -> Result<(), DecodeError> {
        let message = tag_name(tag).ok_or(DecodeError::UnknownTag { tag })?;
        // LOGICALREP_PROTO_STREAM_VERSION_NUM = 2, LOGICALREP_PROTO_TWOPHASE_VERSION_NUM = 3.
        let required = match tag {
            b'S' | b'E' | b'c' | b'A' => 2,
            b'b' | b'P' | b'K' | b'r' | b'p' => 3,
            _ => 1,
        };
        if self.opts.proto_version < required {
            return Err(DecodeError::RequiresProtocol {
                message,
                required,
                proto_version: self.opts.proto_version,
            });
        }
        let inside = self.in_stream_block();
        match tag {
            // Origin is sent right after a transaction's first Stream Start.
            b'O' | b'R' | b'Y' | b'I' | b'U' | b'D' | b'T' | b'M' => Ok(()),
            b'E' if !inside => Err(DecodeError::OutsideStreamBlock { message }),
            b'E' => Ok(()),
            _ if inside => Err(DecodeError::InsideStreamBlock { message }),
            _ => Ok(()),
        }
    }
}

/// Seconds from the Unix epoch to the PostgreSQL epoch, 2000-01-01 00:00 UTC.
pub const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

fn pg_epoch() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS)
}

/// A `TimestampTz` from the wire (microseconds since the PostgreSQL epoch) as
/// a [`SystemTime`]; `None` only where the platform's clock type cannot hold it.
pub fn pg_timestamp_to_system_time(micros: i64) -> Option<SystemTime> {
    let d = Duration::from_micros(micros.unsigned_abs());
    if micros >= 0 {
        pg_epoch().checked_add(d)
    } else {
        pg_epoch().checked_sub(d)
    }
}

/// The inverse of [`pg_timestamp_to_system_time`], truncated to whole
/// microseconds and saturating far outside Postgres's range. Standby status
/// updates carry their send time this way.
pub fn system_time_to_pg_timestamp(t: SystemTime) -> i64 {
    match t.duration_since(pg_epoch()) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_micros()).map_or(i64::MIN, |m| -m),
    }
}
