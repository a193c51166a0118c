//! The decoded shape of every pgoutput message.
//!
//! Field names follow PostgreSQL's `logicalproto.h` and the "Logical
//! Replication Message Formats" chapter, so each one can be checked against
//! the documentation. LSNs are [`Lsn`]; timestamps stay as Postgres sends
//! them, microseconds since 2000-01-01 (see
//! [`pg_timestamp_to_system_time`](super::pg_timestamp_to_system_time)).
//! Transaction ids are the raw 32-bit `TransactionId`s of the wire.

use bytes::Bytes;

use crate::Lsn;

/// One decoded pgoutput message (the payload of one `XLogData`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogicalMessage {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(Type),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    Message(Message),
    StreamStart(StreamStart),
    StreamStop,
    StreamCommit(StreamCommit),
    StreamAbort(StreamAbort),
    BeginPrepare(BeginPrepare),
    Prepare(Prepare),
    CommitPrepared(CommitPrepared),
    RollbackPrepared(RollbackPrepared),
    /// Same fields as [`Prepare`]: Postgres writes both with one function.
    StreamPrepare(Prepare),
}

impl LogicalMessage {
    /// The one-byte tag that starts the message on the wire.
    pub fn tag(&self) -> u8 {
        match self {
            LogicalMessage::Begin(_) => b'B',
            LogicalMessage::Commit(_) => b'C',
            LogicalMessage::Origin(_) => b'O',
            LogicalMessage::Relation(_) => b'R',
            LogicalMessage::Type(_) => b'Y',
            LogicalMessage::Insert(_) => b'I',
            LogicalMessage::Update(_) => b'U',
            LogicalMessage::Delete(_) => b'D',
            LogicalMessage::Truncate(_) => b'T',
            LogicalMessage::Message(_) => b'M',
            LogicalMessage::StreamStart(_) => b'S',
            LogicalMessage::StreamStop => b'E',
            LogicalMessage::StreamCommit(_) => b'c',
            LogicalMessage::StreamAbort(_) => b'A',
            LogicalMessage::BeginPrepare(_) => b'b',
            LogicalMessage::Prepare(_) => b'P',
            LogicalMessage::CommitPrepared(_) => b'K',
            LogicalMessage::RollbackPrepared(_) => b'r',
            LogicalMessage::StreamPrepare(_) => b'p',
        }
    }

    /// The message's name as the protocol documentation spells it.
    pub fn name(&self) -> &'static str {
        tag_name(self.tag()).unwrap_or("unknown")
    }
}

/// The documented name of a message tag, `None` for a tag pgoutput never sends.
pub fn tag_name(tag: u8) -> Option<&'static str> {
    Some(match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        b'S' => "Stream Start",
        b'E' => "Stream Stop",
        b'c' => "Stream Commit",
        b'A' => "Stream Abort",
        b'b' => "Begin Prepare",
        b'P' => "Prepare",
        b'K' => "Commit Prepared",
        b'r' => "Rollback Prepared",
        b'p' => "Stream Prepare",
        _ => return None,
    })
}

/// 'B': a (non-streamed) transaction starts. Its changes follow until Commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the commit record: the transaction is already committed in WAL.
    pub final_lsn: Lsn,
    pub commit_time: i64,
    pub xid: u32,
}

/// 'C': the transaction opened by the last Begin is complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// Currently always 0; kept raw so a future flag is visible, not dropped.
    pub flags: u8,
    pub commit_lsn: Lsn,
    /// End of the commit record: the position to confirm once it is applied.
    pub end_lsn: Lsn,
    pub commit_time: i64,
}

/// 'O': the transaction was replayed from another node (a replication origin).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// LSN of the commit on the origin server (`origin_lsn` in proto.c). It is
    /// 0 when sent at a Stream Start, and whatever the originating session set
    /// with `pg_replication_origin_xact_setup` otherwise.
    pub origin_lsn: Lsn,
    pub name: String,
}

/// 'R': the shape of a table. Sent before its first change in a session and
/// again whenever the server's relation cache entry was invalidated (DDL, but
/// also e.g. `TRUNCATE ... RESTART IDENTITY`), so receivers must replace, not
/// merely insert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    /// Present only inside a stream block (protocol v2+).
    pub xid: Option<u32>,
    pub oid: u32,
    /// Schema name. The wire sends an empty string for `pg_catalog`; the
    /// decoder restores the name, as Postgres's own reader does.
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    /// Live columns only: dropped and generated columns are not sent, so the
    /// position here is not `attnum`.
    pub columns: Vec<RelationColumn>,
}

/// `pg_class.relreplident`: which old values Update and Delete carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// 'd': the primary key.
    Default,
    /// 'n': nothing; updates and deletes are refused by the publisher.
    Nothing,
    /// 'f': every column; every column is then flagged as part of the key.
    Full,
    /// 'i': a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'd' => Some(ReplicaIdentity::Default),
            b'n' => Some(ReplicaIdentity::Nothing),
            b'f' => Some(ReplicaIdentity::Full),
            b'i' => Some(ReplicaIdentity::Index),
            _ => None,
        }
    }

    pub fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }
}

/// One column of a [`Relation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationColumn {
    /// Bit 1 ([`RelationColumn::KEY`]): part of the replica identity.
    pub flags: u8,
    pub name: String,
    pub type_oid: u32,
    /// `atttypmod`, -1 when the type has none.
    pub type_modifier: i32,
}

impl RelationColumn {
    /// `LOGICALREP_IS_REPLICA_IDENTITY`.
    pub const KEY: u8 = 1;

    pub fn is_key(&self) -> bool {
        self.flags & Self::KEY != 0
    }
}

/// 'Y': a non-built-in type used by a following Relation (sent once per session).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Type {
    /// Present only inside a stream block (protocol v2+).
    pub xid: Option<u32>,
    pub oid: u32,
    /// Empty on the wire for `pg_catalog`; restored like [`Relation::namespace`].
    pub namespace: String,
    pub name: String,
}

/// One column value in a tuple. Values are slices of the message's buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TupleColumn {
    /// 'n'
    Null,
    /// 'u': a TOASTed value the change did not touch; its value is not sent.
    UnchangedToast,
    /// 't': the type's text output (in the connection's client_encoding).
    Text(Bytes),
    /// 'b': the type's binary send format (only with the `binary` option).
    Binary(Bytes),
}

impl TupleColumn {
    /// The sent value, text or binary; `None` for null and unchanged TOAST.
    pub fn value(&self) -> Option<&Bytes> {
        match self {
            TupleColumn::Text(b) | TupleColumn::Binary(b) => Some(b),
            TupleColumn::Null | TupleColumn::UnchangedToast => None,
        }
    }
}

/// The old values an Update or Delete carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OldTuple {
    /// 'K': the replica identity columns. The tuple still has one entry per
    /// relation column; columns outside the key are sent as null.
    Key(Vec<TupleColumn>),
    /// 'O': the whole old row (REPLICA IDENTITY FULL).
    Full(Vec<TupleColumn>),
}

impl OldTuple {
    pub fn columns(&self) -> &[TupleColumn] {
        match self {
            OldTuple::Key(c) | OldTuple::Full(c) => c,
        }
    }
}

/// 'I'
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Insert {
    /// Present only inside a stream block; may name a subtransaction.
    pub xid: Option<u32>,
    /// OID of the relation, as announced by a previous Relation message.
    pub relid: u32,
    pub new_tuple: Vec<TupleColumn>,
}

/// 'U'
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    /// Present only inside a stream block; may name a subtransaction.
    pub xid: Option<u32>,
    pub relid: u32,
    /// Sent only when the key changed, or always with REPLICA IDENTITY FULL.
    pub old_tuple: Option<OldTuple>,
    pub new_tuple: Vec<TupleColumn>,
}

/// 'D'
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delete {
    /// Present only inside a stream block; may name a subtransaction.
    pub xid: Option<u32>,
    pub relid: u32,
    pub old_tuple: OldTuple,
}

/// 'T': one TRUNCATE statement, possibly over several published tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncate {
    /// Present only inside a stream block; may name a subtransaction.
    pub xid: Option<u32>,
    /// Bit set of [`Truncate::CASCADE`] and [`Truncate::RESTART_IDENTITY`].
    pub options: u8,
    pub relids: Vec<u32>,
}

impl Truncate {
    pub const CASCADE: u8 = 1;
    pub const RESTART_IDENTITY: u8 = 2;

    pub fn cascade(&self) -> bool {
        self.options & Self::CASCADE != 0
    }

    pub fn restart_identity(&self) -> bool {
        self.options & Self::RESTART_IDENTITY != 0
    }
}

/// 'M': a `pg_logical_emit_message` (only with the `messages` option).
///
/// A non-transactional message arrives when it is decoded, outside any
/// Begin/Commit pair, even if the emitting transaction later aborts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Present only inside a stream block (protocol v2+).
    pub xid: Option<u32>,
    /// Bit 1 ([`Message::TRANSACTIONAL`]).
    pub flags: u8,
    pub lsn: Lsn,
    pub prefix: String,
    pub content: Bytes,
}

impl Message {
    pub const TRANSACTIONAL: u8 = 1;

    pub fn transactional(&self) -> bool {
        self.flags & Self::TRANSACTIONAL != 0
    }
}

/// 'S': a chunk of an in-progress transaction follows, up to Stream Stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamStart {
    /// The top-level transaction being streamed.
    pub xid: u32,
    /// True for the first chunk of this transaction.
    pub first_segment: bool,
}

/// 'c': a streamed transaction committed; apply everything streamed for `xid`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamCommit {
    pub xid: u32,
    /// Currently always 0.
    pub flags: u8,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_time: i64,
}

/// 'A': discard what was streamed for `subxid` (the whole transaction when
/// `subxid == xid`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamAbort {
    /// The top-level transaction.
    pub xid: u32,
    /// The (sub)transaction that aborted.
    pub subxid: u32,
    /// Only present with protocol v4 and `streaming = parallel`.
    pub abort_info: Option<StreamAbortInfo>,
}

/// The fields Postgres adds to Stream Abort when it writes "abort info".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamAbortInfo {
    pub abort_lsn: Lsn,
    pub abort_time: i64,
}

/// 'b': a transaction prepared for two-phase commit starts (protocol v3+).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BeginPrepare {
    pub prepare_lsn: Lsn,
    pub end_lsn: Lsn,
    pub prepare_time: i64,
    pub xid: u32,
    pub gid: String,
}

/// 'P' (Prepare) and 'p' (Stream Prepare): the transaction is prepared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepare {
    /// Currently always 0.
    pub flags: u8,
    pub prepare_lsn: Lsn,
    pub end_lsn: Lsn,
    pub prepare_time: i64,
    pub xid: u32,
    pub gid: String,
}

/// 'K': `COMMIT PREPARED`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitPrepared {
    /// Currently always 0.
    pub flags: u8,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_time: i64,
    pub xid: u32,
    pub gid: String,
}

/// 'r': `ROLLBACK PREPARED`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RollbackPrepared {
    /// Currently always 0.
    pub flags: u8,
    /// End LSN of the PREPARE this rollback undoes.
    pub prepare_end_lsn: Lsn,
    pub rollback_end_lsn: Lsn,
    pub prepare_time: i64,
    pub rollback_time: i64,
    pub xid: u32,
    pub gid: String,
}
