//! The pgoutput stream the decoder benchmarks decode, shared by
//! `benches/decoder.rs` (criterion) and the decoder row of `benches/e2e.rs`.
//!
//! It is what a busy OLTP table produces: short transactions, each Begin,
//! Insert of an 8-column row, Update carrying the old key (a primary key
//! change), Delete, Commit; the Relation is announced once at the start, as
//! pgoutput does.

use bytes::{Bytes, BytesMut};
use walshift::Lsn;
use walshift::pgoutput::encode::encode;
use walshift::pgoutput::{
    Begin, Commit, Delete, Insert, LogicalMessage, OldTuple, Relation, RelationColumn,
    ReplicaIdentity, TupleColumn, Update,
};

const TRANSACTIONS: u32 = 1_000;
const RELID: u32 = 16_391;
const COLUMNS: [&str; 8] = [
    "id",
    "email",
    "name",
    "status",
    "plan",
    "country",
    "created_at",
    "note",
];

fn text(s: String) -> TupleColumn {
    TupleColumn::Text(Bytes::from(s))
}

fn row(id: u32) -> Vec<TupleColumn> {
    vec![
        text(id.to_string()),
        text(format!("user{id}@example.com")),
        text(format!("User Number {id}")),
        text("active".into()),
        text("enterprise-annual".into()),
        text("NZ".into()),
        text(format!("2025-06-{:02} 12:34:56.789+00", id % 28 + 1)),
        text(format!("imported from legacy system batch {}", id / 100)),
    ]
}

fn old_key(id: u32) -> OldTuple {
    let mut cols = vec![TupleColumn::Null; COLUMNS.len()];
    cols[0] = text(id.to_string());
    OldTuple::Key(cols)
}

/// The stream as separate payloads, one per XLogData.
pub fn stream() -> Vec<Bytes> {
    let relation = LogicalMessage::Relation(Relation {
        xid: None,
        oid: RELID,
        namespace: "public".into(),
        name: "accounts".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: COLUMNS
            .iter()
            .enumerate()
            .map(|(i, name)| RelationColumn {
                flags: u8::from(i == 0),
                name: (*name).into(),
                type_oid: if i == 0 { 20 } else { 25 },
                type_modifier: -1,
            })
            .collect(),
    });
    let mut msgs = Vec::new();
    for t in 0..TRANSACTIONS {
        let lsn = 0x1_0000_0000 + u64::from(t) * 0x400;
        let id = 100_000 + t;
        msgs.push(LogicalMessage::Begin(Begin {
            final_lsn: Lsn(lsn + 0x300),
            commit_time: 800_000_000_000_000 + i64::from(t),
            xid: 5_000 + t,
        }));
        if t == 0 {
            msgs.push(relation.clone());
        }
        msgs.push(LogicalMessage::Insert(Insert {
            xid: None,
            relid: RELID,
            new_tuple: row(id),
        }));
        msgs.push(LogicalMessage::Update(Update {
            xid: None,
            relid: RELID,
            old_tuple: Some(old_key(id)),
            new_tuple: row(id + 1_000_000),
        }));
        msgs.push(LogicalMessage::Delete(Delete {
            xid: None,
            relid: RELID,
            old_tuple: old_key(id + 1_000_000),
        }));
        msgs.push(LogicalMessage::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(lsn + 0x300),
            end_lsn: Lsn(lsn + 0x330),
            commit_time: 800_000_000_000_000 + i64::from(t),
        }));
    }
    // One buffer for the whole stream, split into payloads, like frames cut
    // out of a socket read buffer.
    let mut buf = BytesMut::new();
    let mut ends = Vec::with_capacity(msgs.len());
    for m in &msgs {
        encode(m, &mut buf);
        ends.push(buf.len());
    }
    let all = buf.freeze();
    let mut start = 0;
    ends.into_iter()
        .map(|end| {
            let payload = all.slice(start..end);
            start = end;
            payload
        })
        .collect()
}
