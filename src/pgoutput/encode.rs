//! Encoder for pgoutput messages, for tests and benches only.
//!
//! walshift never sends pgoutput; this exists so property tests can round-trip
//! generated messages and the benchmark can build realistic streams. It is
//! public only because benches cannot see `cfg(test)` items.
//!
//! The layout written is fully determined by the message: an xid is written
//! when the message holds one (as inside a stream block) and Stream Abort's
//! abort info when present. Strings must not contain NUL (Postgres names and
//! gids cannot); a namespace of `pg_catalog` is written as the empty string,
//! as the server does.

use bytes::{BufMut, Bytes, BytesMut};

use super::messages::*;
use crate::Lsn;

/// Append the wire form of `msg` to `buf`.
pub fn encode(msg: &LogicalMessage, buf: &mut BytesMut) {
    buf.put_u8(msg.tag());
    match msg {
        LogicalMessage::Begin(m) => {
            put_lsn(buf, m.final_lsn);
            buf.put_i64(m.commit_time);
            buf.put_u32(m.xid);
        }
        LogicalMessage::Commit(m) => {
            buf.put_u8(m.flags);
            put_lsn(buf, m.commit_lsn);
            put_lsn(buf, m.end_lsn);
            buf.put_i64(m.commit_time);
        }
        LogicalMessage::Origin(m) => {
            put_lsn(buf, m.origin_lsn);
            put_cstring(buf, &m.name);
        }
        LogicalMessage::Relation(m) => {
            put_xid(buf, m.xid);
            buf.put_u32(m.oid);
            put_namespace(buf, &m.namespace);
            put_cstring(buf, &m.name);
            buf.put_u8(m.replica_identity.as_byte());
            buf.put_u16(count(m.columns.len()));
            for c in &m.columns {
                buf.put_u8(c.flags);
                put_cstring(buf, &c.name);
                buf.put_u32(c.type_oid);
                buf.put_i32(c.type_modifier);
            }
        }
        LogicalMessage::Type(m) => {
            put_xid(buf, m.xid);
            buf.put_u32(m.oid);
            put_namespace(buf, &m.namespace);
            put_cstring(buf, &m.name);
        }
        LogicalMessage::Insert(m) => {
            put_xid(buf, m.xid);
            buf.put_u32(m.relid);
            buf.put_u8(b'N');
            put_tuple(buf, &m.new_tuple);
        }
        LogicalMessage::Update(m) => {
            put_xid(buf, m.xid);
            buf.put_u32(m.relid);
            if let Some(old) = &m.old_tuple {
                put_old_tuple(buf, old);
            }
            buf.put_u8(b'N');
            put_tuple(buf, &m.new_tuple);
        }
        LogicalMessage::Delete(m) => {
            put_xid(buf, m.xid);
            buf.put_u32(m.relid);
            put_old_tuple(buf, &m.old_tuple);
        }
        LogicalMessage::Truncate(m) => {
            put_xid(buf, m.xid);
            buf.put_u32(count(m.relids.len()));
            buf.put_u8(m.options);
            for relid in &m.relids {
                buf.put_u32(*relid);
            }
        }
        LogicalMessage::Message(m) => {
            put_xid(buf, m.xid);
            buf.put_u8(m.flags);
            put_lsn(buf, m.lsn);
            put_cstring(buf, &m.prefix);
            put_counted(buf, &m.content);
        }
        LogicalMessage::StreamStart(m) => {
            buf.put_u32(m.xid);
            buf.put_u8(u8::from(m.first_segment));
        }
        LogicalMessage::StreamStop => {}
        LogicalMessage::StreamCommit(m) => {
            buf.put_u32(m.xid);
            buf.put_u8(m.flags);
            put_lsn(buf, m.commit_lsn);
            put_lsn(buf, m.end_lsn);
            buf.put_i64(m.commit_time);
        }
        LogicalMessage::StreamAbort(m) => {
            buf.put_u32(m.xid);
            buf.put_u32(m.subxid);
            if let Some(info) = &m.abort_info {
                put_lsn(buf, info.abort_lsn);
                buf.put_i64(info.abort_time);
            }
        }
        LogicalMessage::BeginPrepare(m) => {
            put_lsn(buf, m.prepare_lsn);
            put_lsn(buf, m.end_lsn);
            buf.put_i64(m.prepare_time);
            buf.put_u32(m.xid);
            put_cstring(buf, &m.gid);
        }
        LogicalMessage::Prepare(m) | LogicalMessage::StreamPrepare(m) => {
            buf.put_u8(m.flags);
            put_lsn(buf, m.prepare_lsn);
            put_lsn(buf, m.end_lsn);
            buf.put_i64(m.prepare_time);
            buf.put_u32(m.xid);
            put_cstring(buf, &m.gid);
        }
        LogicalMessage::CommitPrepared(m) => {
            buf.put_u8(m.flags);
            put_lsn(buf, m.commit_lsn);
            put_lsn(buf, m.end_lsn);
            buf.put_i64(m.commit_time);
            buf.put_u32(m.xid);
            put_cstring(buf, &m.gid);
        }
        LogicalMessage::RollbackPrepared(m) => {
            buf.put_u8(m.flags);
            put_lsn(buf, m.prepare_end_lsn);
            put_lsn(buf, m.rollback_end_lsn);
            buf.put_i64(m.prepare_time);
            buf.put_i64(m.rollback_time);
            buf.put_u32(m.xid);
            put_cstring(buf, &m.gid);
        }
    }
}

/// Encode `msg` into a fresh buffer.
pub fn to_bytes(msg: &LogicalMessage) -> Bytes {
    let mut buf = BytesMut::new();
    encode(msg, &mut buf);
    buf.freeze()
}

fn put_lsn(buf: &mut BytesMut, lsn: Lsn) {
    buf.put_u64(lsn.0);
}

fn put_xid(buf: &mut BytesMut, xid: Option<u32>) {
    if let Some(xid) = xid {
        buf.put_u32(xid);
    }
}

fn put_cstring(buf: &mut BytesMut, s: &str) {
    debug_assert!(!s.contains('\0'), "pgoutput strings cannot hold NUL: {s:?}");
    buf.put_slice(s.as_bytes());
    buf.put_u8(0);
}

fn put_namespace(buf: &mut BytesMut, namespace: &str) {
    put_cstring(
        buf,
        if namespace == "pg_catalog" {
            ""
        } else {
            namespace
        },
    );
}

fn put_counted(buf: &mut BytesMut, value: &[u8]) {
    let len = i32::try_from(value.len()).expect("pgoutput values are shorter than 2 GiB");
    buf.put_i32(len);
    buf.put_slice(value);
}

/// A count field; callers build messages no larger than the wire allows.
fn count<T: TryFrom<usize>>(n: usize) -> T {
    T::try_from(n)
        .ok()
        .expect("item count fits its pgoutput field")
}

fn put_old_tuple(buf: &mut BytesMut, old: &OldTuple) {
    match old {
        OldTuple::Key(cols) => {
            buf.put_u8(b'K');
            put_tuple(buf, cols);
        }
        OldTuple::Full(cols) => {
            buf.put_u8(b'O');
            put_tuple(buf, cols);
        }
    }
}

fn put_tuple(buf: &mut BytesMut, cols: &[TupleColumn]) {
    buf.put_u16(count(cols.len()));
    for col in cols {
        match col {
            TupleColumn::Null => buf.put_u8(b'n'),
            TupleColumn::UnchangedToast => buf.put_u8(b'u'),
            TupleColumn::Text(v) => {
                buf.put_u8(b't');
                put_counted(buf, v);
            }
            TupleColumn::Binary(v) => {
                buf.put_u8(b'b');
                put_counted(buf, v);
            }
        }
    }
}
