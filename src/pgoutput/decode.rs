//! Byte-level parsing of one pgoutput payload.
//!
//! Everything here is a pure function of the payload and a [`DecodeContext`] (the
//! decoder state that changes the layout). Counts read from the wire are
//! checked against the bytes left before anything is allocated for them, and
//! every loop is bounded by such a count, so hostile input costs at most time
//! and memory linear in its own size.

use bytes::Bytes;

use super::error::DecodeError;
use super::messages::*;
use crate::Lsn;

/// The parts of the decoder's state and options that change the byte layout.
#[derive(Clone, Copy, Debug)]
pub(super) struct DecodeContext {
    /// Between Stream Start and Stream Stop: data messages carry an xid.
    pub in_stream_block: bool,
    /// Stream Abort carries abort_lsn and abort_time.
    pub stream_abort_info: bool,
}

/// A cursor over the payload that reports where and what it failed to read.
struct Cursor<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let available = self.remaining();
        if n > available {
            return Err(DecodeError::Truncated {
                field,
                offset: self.pos,
                needed: n,
                available,
            });
        }
        let start = self.pos;
        self.pos += n;
        Ok(&self.buf[start..self.pos])
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    fn lsn(&mut self, field: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.array(field)?)))
    }

    /// A NUL-terminated string.
    fn cstring(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let offset = self.pos;
        let rest = &self.buf[self.pos..];
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::UnterminatedString { field, offset })?;
        let s = std::str::from_utf8(&rest[..len])
            .map_err(|_| DecodeError::InvalidUtf8 { field, offset })?
            .to_owned();
        self.pos += len + 1;
        Ok(s)
    }

    /// An Int32 byte length followed by that many bytes, as a zero-copy slice.
    fn counted_bytes(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let offset = self.pos;
        let length = self.i32(field)?;
        let len = usize::try_from(length).map_err(|_| DecodeError::NegativeLength {
            field,
            offset,
            length,
        })?;
        let start = self.pos;
        self.take(len, field)?;
        Ok(self.buf.slice(start..self.pos))
    }

    /// Refuse a count whose items cannot fit in what is left, so that
    /// `Vec::with_capacity(count)` is bounded by the payload size.
    fn check_count(
        &self,
        count: u64,
        min_item_size: usize,
        field: &'static str,
        offset: usize,
    ) -> Result<usize, DecodeError> {
        debug_assert!(min_item_size > 0, "a zero-size item bounds nothing");
        let available = self.remaining();
        let fits = count
            .checked_mul(min_item_size as u64)
            .is_some_and(|need| need <= available as u64);
        if !fits {
            return Err(DecodeError::CountTooLarge {
                field,
                offset,
                count,
                min_item_size,
                available,
            });
        }
        // `fits` implies count <= available, which is a usize.
        Ok(count as usize)
    }

    /// The optional xid that data messages carry inside a stream block.
    fn stream_xid(
        &mut self,
        cx: DecodeContext,
        field: &'static str,
    ) -> Result<Option<u32>, DecodeError> {
        if cx.in_stream_block {
            Ok(Some(self.u32(field)?))
        } else {
            Ok(None)
        }
    }

    /// Schema name: Postgres sends "" for pg_catalog to save bytes.
    fn namespace(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let s = self.cstring(field)?;
        Ok(if s.is_empty() {
            "pg_catalog".to_owned()
        } else {
            s
        })
    }

    fn finish(&self, message: &'static str) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes {
                message,
                offset: self.pos,
                count,
            }),
        }
    }
}

/// Decode one payload whose tag has already been checked against the state.
pub(super) fn decode(data: &Bytes, cx: DecodeContext) -> Result<LogicalMessage, DecodeError> {
    let mut r = Cursor { buf: data, pos: 0 };
    let tag = r.u8("tag").map_err(|_| DecodeError::Empty)?;
    let msg = match tag {
        b'B' => LogicalMessage::Begin(Begin {
            final_lsn: r.lsn("Begin.final_lsn")?,
            commit_time: r.i64("Begin.commit_time")?,
            xid: r.u32("Begin.xid")?,
        }),
        b'C' => LogicalMessage::Commit(Commit {
            flags: r.u8("Commit.flags")?,
            commit_lsn: r.lsn("Commit.commit_lsn")?,
            end_lsn: r.lsn("Commit.end_lsn")?,
            commit_time: r.i64("Commit.commit_time")?,
        }),
        b'O' => LogicalMessage::Origin(Origin {
            origin_lsn: r.lsn("Origin.origin_lsn")?,
            name: r.cstring("Origin.name")?,
        }),
        b'R' => LogicalMessage::Relation(relation(&mut r, cx)?),
        b'Y' => LogicalMessage::Type(Type {
            xid: r.stream_xid(cx, "Type.xid")?,
            oid: r.u32("Type.oid")?,
            namespace: r.namespace("Type.namespace")?,
            name: r.cstring("Type.name")?,
        }),
        b'I' => LogicalMessage::Insert(insert(&mut r, cx)?),
        b'U' => LogicalMessage::Update(update(&mut r, cx)?),
        b'D' => LogicalMessage::Delete(delete(&mut r, cx)?),
        b'T' => LogicalMessage::Truncate(truncate(&mut r, cx)?),
        b'M' => LogicalMessage::Message(Message {
            xid: r.stream_xid(cx, "Message.xid")?,
            flags: r.u8("Message.flags")?,
            lsn: r.lsn("Message.lsn")?,
            prefix: r.cstring("Message.prefix")?,
            content: r.counted_bytes("Message.content")?,
        }),
        b'S' => LogicalMessage::StreamStart(StreamStart {
            xid: r.u32("Stream Start.xid")?,
            // Postgres's own reader treats anything but 1 as "not first".
            first_segment: r.u8("Stream Start.first_segment")? == 1,
        }),
        b'E' => LogicalMessage::StreamStop,
        b'c' => LogicalMessage::StreamCommit(StreamCommit {
            xid: r.u32("Stream Commit.xid")?,
            flags: r.u8("Stream Commit.flags")?,
            commit_lsn: r.lsn("Stream Commit.commit_lsn")?,
            end_lsn: r.lsn("Stream Commit.end_lsn")?,
            commit_time: r.i64("Stream Commit.commit_time")?,
        }),
        b'A' => LogicalMessage::StreamAbort(StreamAbort {
            xid: r.u32("Stream Abort.xid")?,
            subxid: r.u32("Stream Abort.subxid")?,
            abort_info: if cx.stream_abort_info {
                Some(StreamAbortInfo {
                    abort_lsn: r.lsn("Stream Abort.abort_lsn")?,
                    abort_time: r.i64("Stream Abort.abort_time")?,
                })
            } else {
                None
            },
        }),
        b'b' => LogicalMessage::BeginPrepare(BeginPrepare {
            prepare_lsn: r.lsn("Begin Prepare.prepare_lsn")?,
            end_lsn: r.lsn("Begin Prepare.end_lsn")?,
            prepare_time: r.i64("Begin Prepare.prepare_time")?,
            xid: r.u32("Begin Prepare.xid")?,
            gid: r.cstring("Begin Prepare.gid")?,
        }),
        b'P' => LogicalMessage::Prepare(prepare(&mut r, &PREPARE_FIELDS)?),
        b'p' => LogicalMessage::StreamPrepare(prepare(&mut r, &STREAM_PREPARE_FIELDS)?),
        b'K' => LogicalMessage::CommitPrepared(CommitPrepared {
            flags: r.u8("Commit Prepared.flags")?,
            commit_lsn: r.lsn("Commit Prepared.commit_lsn")?,
            end_lsn: r.lsn("Commit Prepared.end_lsn")?,
            commit_time: r.i64("Commit Prepared.commit_time")?,
            xid: r.u32("Commit Prepared.xid")?,
            gid: r.cstring("Commit Prepared.gid")?,
        }),
        b'r' => LogicalMessage::RollbackPrepared(RollbackPrepared {
            flags: r.u8("Rollback Prepared.flags")?,
            prepare_end_lsn: r.lsn("Rollback Prepared.prepare_end_lsn")?,
            rollback_end_lsn: r.lsn("Rollback Prepared.rollback_end_lsn")?,
            prepare_time: r.i64("Rollback Prepared.prepare_time")?,
            rollback_time: r.i64("Rollback Prepared.rollback_time")?,
            xid: r.u32("Rollback Prepared.xid")?,
            gid: r.cstring("Rollback Prepared.gid")?,
        }),
        tag => return Err(DecodeError::UnknownTag { tag }),
    };
    r.finish(msg.name())?;
    Ok(msg)
}

fn relation(r: &mut Cursor<'_>, cx: DecodeContext) -> Result<Relation, DecodeError> {
    let xid = r.stream_xid(cx, "Relation.xid")?;
    let oid = r.u32("Relation.oid")?;
    let namespace = r.namespace("Relation.namespace")?;
    let name = r.cstring("Relation.name")?;
    let offset = r.pos;
    let byte = r.u8("Relation.replica_identity")?;
    let replica_identity = ReplicaIdentity::from_byte(byte).ok_or(DecodeError::InvalidByte {
        field: "Relation.replica_identity",
        offset,
        value: byte,
    })?;
    let offset = r.pos;
    let ncols = r.u16("Relation.ncols")?;
    // flags (1) + empty name (1) + type oid (4) + type modifier (4)
    let ncols = r.check_count(ncols.into(), 10, "Relation.ncols", offset)?;
    let mut columns = Vec::with_capacity(ncols);
    for _ in 0..ncols {
        columns.push(RelationColumn {
            flags: r.u8("Relation column flags")?,
            name: r.cstring("Relation column name")?,
            type_oid: r.u32("Relation column type_oid")?,
            type_modifier: r.i32("Relation column type_modifier")?,
        });
    }
    Ok(Relation {
        xid,
        oid,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

/// TupleData: Int16 column count, then per column a kind byte and maybe a value.
fn tuple(r: &mut Cursor<'_>) -> Result<Vec<TupleColumn>, DecodeError> {
    let offset = r.pos;
    let ncols = r.u16("TupleData.ncols")?;
    // The smallest column is a lone kind byte ('n' or 'u').
    let ncols = r.check_count(ncols.into(), 1, "TupleData.ncols", offset)?;
    let mut columns = Vec::with_capacity(ncols);
    for _ in 0..ncols {
        let offset = r.pos;
        let column = match r.u8("TupleData column kind")? {
            b'n' => TupleColumn::Null,
            b'u' => TupleColumn::UnchangedToast,
            b't' => TupleColumn::Text(r.counted_bytes("TupleData text value")?),
            b'b' => TupleColumn::Binary(r.counted_bytes("TupleData binary value")?),
            value => {
                return Err(DecodeError::InvalidByte {
                    field: "TupleData column kind",
                    offset,
                    value,
                });
            }
        };
        columns.push(column);
    }
    Ok(columns)
}

/// The 'K' / 'O' / 'N' byte that announces which tuple follows.
fn tuple_marker(
    r: &mut Cursor<'_>,
    field: &'static str,
    allowed: &[u8],
) -> Result<u8, DecodeError> {
    let offset = r.pos;
    let value = r.u8(field)?;
    if allowed.contains(&value) {
        Ok(value)
    } else {
        Err(DecodeError::InvalidByte {
            field,
            offset,
            value,
        })
    }
}

fn insert(r: &mut Cursor<'_>, cx: DecodeContext) -> Result<Insert, DecodeError> {
    let xid = r.stream_xid(cx, "Insert.xid")?;
    let relid = r.u32("Insert.relid")?;
    tuple_marker(r, "Insert new tuple marker", b"N")?;
    Ok(Insert {
        xid,
        relid,
        new_tuple: tuple(r)?,
    })
}

fn update(r: &mut Cursor<'_>, cx: DecodeContext) -> Result<Update, DecodeError> {
    let xid = r.stream_xid(cx, "Update.xid")?;
    let relid = r.u32("Update.relid")?;
    let old_tuple = match tuple_marker(r, "Update tuple marker", b"KON")? {
        b'K' => Some(OldTuple::Key(tuple(r)?)),
        b'O' => Some(OldTuple::Full(tuple(r)?)),
        _ => None,
    };
    if old_tuple.is_some() {
        tuple_marker(r, "Update new tuple marker", b"N")?;
    }
    Ok(Update {
        xid,
        relid,
        old_tuple,
        new_tuple: tuple(r)?,
    })
}

fn delete(r: &mut Cursor<'_>, cx: DecodeContext) -> Result<Delete, DecodeError> {
    let xid = r.stream_xid(cx, "Delete.xid")?;
    let relid = r.u32("Delete.relid")?;
    let old_tuple = match tuple_marker(r, "Delete old tuple marker", b"KO")? {
        b'K' => OldTuple::Key(tuple(r)?),
        _ => OldTuple::Full(tuple(r)?),
    };
    Ok(Delete {
        xid,
        relid,
        old_tuple,
    })
}

fn truncate(r: &mut Cursor<'_>, cx: DecodeContext) -> Result<Truncate, DecodeError> {
    let xid = r.stream_xid(cx, "Truncate.xid")?;
    let offset = r.pos;
    let nrelids = r.u32("Truncate.nrelids")?;
    let options = r.u8("Truncate.options")?;
    let nrelids = r.check_count(nrelids.into(), 4, "Truncate.nrelids", offset)?;
    let mut relids = Vec::with_capacity(nrelids);
    for _ in 0..nrelids {
        relids.push(r.u32("Truncate.relid")?);
    }
    Ok(Truncate {
        xid,
        options,
        relids,
    })
}

/// Field names of Prepare and Stream Prepare, which share one layout.
const PREPARE_FIELDS: [&str; 6] = [
    "Prepare.flags",
    "Prepare.prepare_lsn",
    "Prepare.end_lsn",
    "Prepare.prepare_time",
    "Prepare.xid",
    "Prepare.gid",
];
const STREAM_PREPARE_FIELDS: [&str; 6] = [
    "Stream Prepare.flags",
    "Stream Prepare.prepare_lsn",
    "Stream Prepare.end_lsn",
    "Stream Prepare.prepare_time",
    "Stream Prepare.xid",
    "Stream Prepare.gid",
];

fn prepare(r: &mut Cursor<'_>, f: &[&'static str; 6]) -> Result<Prepare, DecodeError> {
    Ok(Prepare {
        flags: r.u8(f[0])?,
        prepare_lsn: r.lsn(f[1])?,
        end_lsn: r.lsn(f[2])?,
        prepare_time: r.i64(f[3])?,
        xid: r.u32(f[4])?,
        gid: r.cstring(f[5])?,
    })
}
