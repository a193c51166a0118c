//! Payloads captured from PostgreSQL 15.18 through
//! `pg_logical_slot_peek_binary_changes(slot, NULL, NULL, 'proto_version', N,
//! 'publication_names', 'pub', 'messages', 'true', ...)`, on this schema:
//!
//! ```sql
//! CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');                       -- oid 16385
//! CREATE TABLE users (id bigint PRIMARY KEY, name text, mood mood,
//!                     big text, score numeric(10,2));                     -- oid 16391
//! CREATE TABLE audit (id serial PRIMARY KEY, note text);                  -- oid 16399
//! ALTER TABLE audit REPLICA IDENTITY FULL;
//! CREATE TABLE bulk (id int PRIMARY KEY, v text);                         -- oid 16407
//! ```
//!
//! The whole captured sessions are in `tests/fixtures/pgoutput/`.

use bytes::Bytes;

use super::super::encode;
use super::{decode_hex, hex, in_block, opts};
use crate::Lsn;
use crate::pgoutput::*;

const USERS: u32 = 16391;
const AUDIT: u32 = 16399;
const BULK: u32 = 16407;
const ORIGIN_NAME: &str = "walshift_test_origin";

fn lsn(s: &str) -> Lsn {
    s.parse().expect("lsn")
}

fn t(s: &str) -> TupleColumn {
    TupleColumn::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn col(flags: u8, name: &str, type_oid: u32, type_modifier: i32) -> RelationColumn {
    RelationColumn {
        flags,
        name: name.into(),
        type_oid,
        type_modifier,
    }
}

#[test]
fn begin_and_commit() {
    let begin = decode_hex(opts(1), "42000000000153ad58000303d1a903d6c8000002db");
    assert_eq!(
        begin,
        LogicalMessage::Begin(Begin {
            final_lsn: lsn("0/153AD58"),
            commit_time: 0x0003_03d1_a903_d6c8,
            xid: 731,
        })
    );
    let commit = decode_hex(
        opts(1),
        "4300000000000153ad58000000000153ad88000303d1a903d6c8",
    );
    assert_eq!(
        commit,
        LogicalMessage::Commit(Commit {
            flags: 0,
            commit_lsn: lsn("0/153AD58"),
            end_lsn: lsn("0/153AD88"),
            commit_time: 0x0003_03d1_a903_d6c8,
        })
    );
    // 848623948781256 µs after 2000-01-01 is 2026-11-22 00:52:28.781256 UTC.
    let t = pg_timestamp_to_system_time(0x0003_03d1_a903_d6c8).unwrap();
    let unix = t.duration_since(std::time::UNIX_EPOCH).unwrap();
    assert_eq!(unix.as_micros(), 1_795_308_748_781_256);
}

#[test]
fn type_message_precedes_relation_using_an_enum() {
    let msg = decode_hex(opts(1), "59000040017075626c6963006d6f6f6400");
    assert_eq!(
        msg,
        LogicalMessage::Type(Type {
            xid: None,
            oid: 16385,
            namespace: "public".into(),
            name: "mood".into(),
        })
    );
}

#[test]
fn relation_with_primary_key() {
    let msg = decode_hex(
        opts(1),
        "52000040077075626c6963007573657273006400050169640000000014ffffffff006e616d650000000019\
         ffffffff006d6f6f640000004001ffffffff006269670000000019ffffffff0073636f726500000006a4000a0006",
    );
    assert_eq!(
        msg,
        LogicalMessage::Relation(Relation {
            xid: None,
            oid: USERS,
            namespace: "public".into(),
            name: "users".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                col(1, "id", 20, -1),
                col(0, "name", 25, -1),
                col(0, "mood", 16385, -1),
                col(0, "big", 25, -1),
                // numeric(10,2): ((10 << 16) | 2) + VARHDRSZ
                col(0, "score", 1700, (10 << 16 | 2) + 4),
            ],
        })
    );
}

#[test]
fn replica_identity_full_flags_every_column_as_key() {
    let msg = decode_hex(
        opts(1),
        "520000400f7075626c6963006175646974006600020169640000000017ffffffff016e6f74650000000019ffffffff",
    );
    let LogicalMessage::Relation(rel) = msg else {
        panic!("not a relation: {msg:?}")
    };
    assert_eq!((rel.oid, rel.name.as_str()), (AUDIT, "audit"));
    assert_eq!(rel.replica_identity, ReplicaIdentity::Full);
    assert_eq!(
        rel.columns,
        vec![col(1, "id", 23, -1), col(1, "note", 25, -1)]
    );
}

#[test]
fn relation_is_resent_after_add_column() {
    let msg = decode_hex(
        opts(1),
        "520000400f7075626c6963006175646974006600030169640000000017ffffffff016e6f74650000000019\
         ffffffff0165787472610000000017ffffffff",
    );
    let LogicalMessage::Relation(rel) = msg else {
        panic!("not a relation: {msg:?}")
    };
    assert_eq!(rel.oid, AUDIT);
    assert_eq!(
        rel.columns,
        vec![
            col(1, "id", 23, -1),
            col(1, "note", 25, -1),
            col(1, "extra", 23, -1)
        ]
    );
}

#[test]
fn insert_with_null_and_unicode() {
    let msg = decode_hex(
        opts(1),
        "49000040074e000574000000013174000000095a6fc3ab20f09f9098740000000568617070796e74000000053132\
         2e3530",
    );
    assert_eq!(
        msg,
        LogicalMessage::Insert(Insert {
            xid: None,
            relid: USERS,
            new_tuple: vec![
                t("1"),
                t("Zoë 🐘"),
                t("happy"),
                TupleColumn::Null,
                t("12.50")
            ],
        })
    );
}

#[test]
fn insert_in_binary_format() {
    // Same row, peeked with 'binary', 'true'.
    let msg = decode_hex(
        opts(1),
        "49000040074e00056200000008000000000000000162000000095a6fc3ab20f09f9098620000000568617070796e\
         620000000c0002000000000002000c1388",
    );
    let b = |h: &str| TupleColumn::Binary(hex(h));
    assert_eq!(
        msg,
        LogicalMessage::Insert(Insert {
            xid: None,
            relid: USERS,
            new_tuple: vec![
                b("0000000000000001"),
                b("5a6fc3ab20f09f9098"),
                b("6861707079"),
                TupleColumn::Null,
                // numeric_send of 12.50: ndigits 2, weight 0, sign +, dscale 2, 12 5000
                b("0002000000000002000c1388"),
            ],
        })
    );
}

#[test]
fn update_without_key_change_has_no_old_tuple() {
    let msg = decode_hex(
        opts(1),
        "55000040074e000574000000013174000000037a6f65740000000568617070796e740000000531322e3530",
    );
    assert_eq!(
        msg,
        LogicalMessage::Update(Update {
            xid: None,
            relid: USERS,
            old_tuple: None,
            new_tuple: vec![t("1"), t("zoe"), t("happy"), TupleColumn::Null, t("12.50")],
        })
    );
}

#[test]
fn primary_key_update_sends_old_key_with_nulls_elsewhere() {
    let msg = decode_hex(
        opts(1),
        "55000040074b00057400000001316e6e6e6e4e000574000000013274000000037a6f6574000000056861707079\
         6e740000000531322e3530",
    );
    let n = TupleColumn::Null;
    assert_eq!(
        msg,
        LogicalMessage::Update(Update {
            xid: None,
            relid: USERS,
            old_tuple: Some(OldTuple::Key(vec![
                t("1"),
                n.clone(),
                n.clone(),
                n.clone(),
                n.clone()
            ])),
            new_tuple: vec![t("2"), t("zoe"), t("happy"), n, t("12.50")],
        })
    );
}

#[test]
fn delete_sends_old_key() {
    let msg = decode_hex(opts(1), "44000040074b00057400000001326e6e6e6e");
    let n = TupleColumn::Null;
    assert_eq!(
        msg,
        LogicalMessage::Delete(Delete {
            xid: None,
            relid: USERS,
            old_tuple: OldTuple::Key(vec![t("2"), n.clone(), n.clone(), n.clone(), n]),
        })
    );
}

#[test]
fn replica_identity_full_sends_whole_old_row() {
    let update = decode_hex(
        opts(1),
        "550000400f4f0002740000000131740000000566697273744e000274000000013174000000067365636f6e64",
    );
    assert_eq!(
        update,
        LogicalMessage::Update(Update {
            xid: None,
            relid: AUDIT,
            old_tuple: Some(OldTuple::Full(vec![t("1"), t("first")])),
            new_tuple: vec![t("1"), t("second")],
        })
    );
    let delete = decode_hex(
        opts(1),
        "440000400f4f000274000000013174000000067365636f6e64",
    );
    assert_eq!(
        delete,
        LogicalMessage::Delete(Delete {
            xid: None,
            relid: AUDIT,
            old_tuple: OldTuple::Full(vec![t("1"), t("second")]),
        })
    );
}

#[test]
fn update_leaves_out_unchanged_toast_value() {
    // `big` holds 6400 incompressible bytes stored out of line; only `name` changed.
    let msg = decode_hex(
        opts(1),
        "55000040074e0005740000000133740000000c7374696c6c20746f6173747974000000026f6b757400000004312e3030",
    );
    assert_eq!(
        msg,
        LogicalMessage::Update(Update {
            xid: None,
            relid: USERS,
            old_tuple: None,
            new_tuple: vec![
                t("3"),
                t("still toasty"),
                t("ok"),
                TupleColumn::UnchangedToast,
                t("1.00")
            ],
        })
    );
}

#[test]
fn truncate_of_two_tables_with_cascade_and_restart_identity() {
    let msg = decode_hex(opts(1), "540000000203000040070000400f");
    let LogicalMessage::Truncate(tr) = &msg else {
        panic!("not a truncate: {msg:?}")
    };
    assert_eq!(
        *tr,
        Truncate {
            xid: None,
            options: Truncate::CASCADE | Truncate::RESTART_IDENTITY,
            relids: vec![USERS, AUDIT],
        }
    );
    assert!(tr.cascade() && tr.restart_identity());
}

#[test]
fn logical_decoding_messages() {
    // pg_logical_emit_message(false, 'walshift', '\x00ff'::bytea): sent at once,
    // before the Begin of the transaction that emitted it.
    let msg = decode_hex(
        opts(1),
        "4d00000000000153ec4077616c7368696674000000000200ff",
    );
    assert_eq!(
        msg,
        LogicalMessage::Message(Message {
            xid: None,
            flags: 0,
            lsn: lsn("0/153EC40"),
            prefix: "walshift".into(),
            content: Bytes::from_static(&[0x00, 0xff]),
        })
    );
    // pg_logical_emit_message(true, 'walshift', 'tx-msg'): inside Begin/Commit.
    let msg = decode_hex(
        opts(1),
        "4d01000000000153ec0077616c7368696674000000000674782d6d7367",
    );
    let LogicalMessage::Message(m) = &msg else {
        panic!("not a message: {msg:?}")
    };
    assert!(m.transactional());
    assert_eq!(
        (m.xid, m.lsn, m.prefix.as_str(), &m.content[..]),
        (None, lsn("0/153EC00"), "walshift", &b"tx-msg"[..])
    );
}

#[test]
fn origin_of_a_replicated_transaction() {
    // After pg_replication_origin_xact_setup('0/ABCDEF', now()).
    let msg = decode_hex(
        opts(1),
        "4f0000000000abcdef77616c73686966745f746573745f6f726967696e00",
    );
    assert_eq!(
        msg,
        LogicalMessage::Origin(Origin {
            origin_lsn: lsn("0/ABCDEF"),
            name: ORIGIN_NAME.into(),
        })
    );
}

#[test]
fn streamed_transaction_v2() {
    let mut d = Decoder::new(opts(2));
    let mut next = |h: &str| d.decode(hex(h)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        next("53000002e901"),
        LogicalMessage::StreamStart(StreamStart {
            xid: 745,
            first_segment: true
        })
    );
    let LogicalMessage::Relation(rel) = next(
        "52000002e9000040177075626c69630062756c6b006400020169640000000017ffffffff00760000000019ffffffff",
    ) else {
        panic!("expected relation")
    };
    assert_eq!(
        (rel.xid, rel.oid, rel.namespace.as_str(), rel.name.as_str()),
        (Some(745), BULK, "public", "bulk")
    );
    assert_eq!(rel.columns, vec![col(1, "id", 23, -1), col(0, "v", 25, -1)]);
    assert_eq!(
        next("49000002e9000040174e00027400000001317400000005726f772031"),
        LogicalMessage::Insert(Insert {
            xid: Some(745),
            relid: BULK,
            new_tuple: vec![t("1"), t("row 1")],
        })
    );
    assert_eq!(next("45"), LogicalMessage::StreamStop);
    assert_eq!(
        next("53000002e900"),
        LogicalMessage::StreamStart(StreamStart {
            xid: 745,
            first_segment: false
        })
    );
    assert_eq!(next("45"), LogicalMessage::StreamStop);
    assert_eq!(
        next("63000002e9000000000001582b680000000001582b98000303d1a90422c6"),
        LogicalMessage::StreamCommit(StreamCommit {
            xid: 745,
            flags: 0,
            commit_lsn: lsn("0/1582B68"),
            end_lsn: lsn("0/1582B98"),
            commit_time: 0x0003_03d1_a904_22c6,
        })
    );
}

#[test]
fn changes_in_a_stream_block_carry_the_subtransaction_xid() {
    // Inside a block of top-level xid 746, rows written after SAVEPOINT carry 747.
    let mut d = in_block(opts(2), 746);
    let msg = d
        .decode(hex(
            "49000002eb000040174e000274000000053230343531740000000179",
        ))
        .unwrap();
    assert_eq!(
        msg,
        LogicalMessage::Insert(Insert {
            xid: Some(747),
            relid: BULK,
            new_tuple: vec![t("20451"), t("y")],
        })
    );
    assert_eq!(d.stream_xid(), Some(746));
}

#[test]
fn stream_abort_of_a_subtransaction_then_of_the_whole_transaction() {
    // ROLLBACK TO SAVEPOINT, then ROLLBACK; without streaming=parallel no abort info.
    assert_eq!(
        decode_hex(opts(2), "41000002ea000002eb"),
        LogicalMessage::StreamAbort(StreamAbort {
            xid: 746,
            subxid: 747,
            abort_info: None
        })
    );
    assert_eq!(
        decode_hex(opts(3), "41000002ea000002ea"),
        LogicalMessage::StreamAbort(StreamAbort {
            xid: 746,
            subxid: 746,
            abort_info: None
        })
    );
}

#[test]
fn origin_inside_a_stream_block_has_no_lsn() {
    let mut d = Decoder::new(opts(2));
    d.decode(hex("53000002f001")).unwrap();
    let msg = d
        .decode(hex(
            "4f000000000000000077616c73686966745f746573745f6f726967696e00",
        ))
        .unwrap();
    assert_eq!(
        msg,
        LogicalMessage::Origin(Origin {
            origin_lsn: Lsn::INVALID,
            name: ORIGIN_NAME.into(),
        })
    );
    assert!(d.in_stream_block());
}

#[test]
fn two_phase_commit_v3() {
    assert_eq!(
        decode_hex(
            opts(3),
            "620000000001641d100000000001641e30000303d1a9047c59000002ed6769642d636f6d6d697400",
        ),
        LogicalMessage::BeginPrepare(BeginPrepare {
            prepare_lsn: lsn("0/1641D10"),
            end_lsn: lsn("0/1641E30"),
            prepare_time: 0x0003_03d1_a904_7c59,
            xid: 749,
            gid: "gid-commit".into(),
        })
    );
    assert_eq!(
        decode_hex(
            opts(3),
            "50000000000001641d100000000001641e30000303d1a9047c59000002ed6769642d636f6d6d697400",
        ),
        LogicalMessage::Prepare(Prepare {
            flags: 0,
            prepare_lsn: lsn("0/1641D10"),
            end_lsn: lsn("0/1641E30"),
            prepare_time: 0x0003_03d1_a904_7c59,
            xid: 749,
            gid: "gid-commit".into(),
        })
    );
    assert_eq!(
        decode_hex(
            opts(3),
            "4b000000000001641e300000000001641e70000303d1a90481fd000002ed6769642d636f6d6d697400",
        ),
        LogicalMessage::CommitPrepared(CommitPrepared {
            flags: 0,
            commit_lsn: lsn("0/1641E30"),
            end_lsn: lsn("0/1641E70"),
            commit_time: 0x0003_03d1_a904_81fd,
            xid: 749,
            gid: "gid-commit".into(),
        })
    );
}

#[test]
fn rollback_prepared_v3() {
    assert_eq!(
        decode_hex(
            opts(3),
            "720000000000016420300000000001642070000303d1a90483dc000303d1a90484cd000002ee6769642d726f\
             6c6c6261636b00",
        ),
        LogicalMessage::RollbackPrepared(RollbackPrepared {
            flags: 0,
            prepare_end_lsn: lsn("0/1642030"),
            rollback_end_lsn: lsn("0/1642070"),
            prepare_time: 0x0003_03d1_a904_83dc,
            rollback_time: 0x0003_03d1_a904_84cd,
            xid: 750,
            gid: "gid-rollback".into(),
        })
    );
}

#[test]
fn stream_prepare_v3() {
    // A large prepared transaction: streamed, then Stream Prepare, no Begin Prepare.
    assert_eq!(
        decode_hex(
            opts(3),
            "70000000000001681d280000000001681e28000303d1a904a07a000002ef6769642d73747265616d00",
        ),
        LogicalMessage::StreamPrepare(Prepare {
            flags: 0,
            prepare_lsn: lsn("0/1681D28"),
            end_lsn: lsn("0/1681E28"),
            prepare_time: 0x0003_03d1_a904_a07a,
            xid: 751,
            gid: "gid-stream".into(),
        })
    );
}

#[test]
fn a_streamed_insert_misread_outside_a_block_is_refused() {
    // Without the state machine the xid would be taken for the relation OID.
    let err = Decoder::new(opts(2))
        .decode(hex(
            "49000002e9000040174e00027400000001317400000005726f772031",
        ))
        .unwrap_err();
    assert_eq!(
        err,
        DecodeError::InvalidByte {
            field: "Insert new tuple marker",
            offset: 5,
            value: 0
        }
    );
}

/// Parse a fixture: `lsn xid hex` per line, `#` comments.
fn fixture(text: &str) -> Vec<Bytes> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| hex(l.split_whitespace().nth(2).expect("payload column")))
        .collect()
}

/// Decode a whole captured session with one decoder; every payload must
/// decode, and re-encode to exactly the bytes Postgres sent.
fn replay(opts: DecoderOptions, text: &str) -> Vec<LogicalMessage> {
    let mut d = Decoder::new(opts);
    let msgs: Vec<_> = fixture(text)
        .into_iter()
        .enumerate()
        .map(|(i, payload)| {
            let msg = d
                .decode(payload.clone())
                .unwrap_or_else(|e| panic!("payload {i}: {e}"));
            assert_eq!(encode::to_bytes(&msg), payload, "payload {i} re-encoded");
            msg
        })
        .collect();
    assert!(!d.in_stream_block());
    msgs
}

fn count(msgs: &[LogicalMessage], tag: u8) -> usize {
    msgs.iter().filter(|m| m.tag() == tag).count()
}

#[test]
fn captured_session_proto_v1() {
    let msgs = replay(
        opts(1),
        include_str!("../../../tests/fixtures/pgoutput/pg15_proto1.txt"),
    );
    // 16 transactions; the aborted streamed one and the prepared ones (no
    // two_phase option) show up as ordinary or not at all.
    assert_eq!((count(&msgs, b'B'), count(&msgs, b'C')), (16, 16));
    assert_eq!(count(&msgs, b'O'), 1);
    assert_eq!(count(&msgs, b'M'), 2);
    assert_eq!(count(&msgs, b'T'), 1);
}

#[test]
fn captured_session_proto_v2_streaming() {
    let msgs = replay(
        opts(2),
        include_str!("../../../tests/fixtures/pgoutput/pg15_proto2_streaming.txt"),
    );
    assert_eq!(count(&msgs, b'S'), count(&msgs, b'E'));
    // The bulk insert, the origin session, and the prepared transaction:
    // without the two_phase option it is streamed and then committed.
    assert_eq!(count(&msgs, b'c'), 3);
    assert_eq!(count(&msgs, b'A'), 3);
    // The streamed origin session announces its origin inside the first block.
    assert_eq!(count(&msgs, b'O'), 2);
}

#[test]
fn captured_session_proto_v3_two_phase() {
    let msgs = replay(
        opts(3),
        include_str!("../../../tests/fixtures/pgoutput/pg15_proto3_two_phase.txt"),
    );
    assert_eq!(count(&msgs, b'b'), 2);
    assert_eq!(count(&msgs, b'P'), 2);
    assert_eq!(count(&msgs, b'K'), 2);
    assert_eq!(count(&msgs, b'r'), 1);
    assert_eq!(count(&msgs, b'p'), 1);
}
