//! proptest generators: every message kind a given protocol version can
//! produce, placed inside or outside a stream block as the server would.

use bytes::Bytes;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::strategy::Union;

use crate::Lsn;
use crate::pgoutput::*;

/// A message together with the decoder setting it must be decoded in.
#[derive(Clone, Debug)]
pub(crate) struct Case {
    pub opts: DecoderOptions,
    /// The decoder must be inside a stream block first.
    pub in_block: bool,
    pub msg: LogicalMessage,
}

pub(crate) fn arb_options() -> impl Strategy<Value = DecoderOptions> {
    // streaming_parallel with an older version must be ignored, so it is
    // generated there too.
    (1u32..=4, any::<bool>()).prop_map(|(proto_version, streaming_parallel)| DecoderOptions {
        proto_version,
        streaming_parallel,
    })
}

pub(crate) fn arb_case() -> impl Strategy<Value = Case> {
    arb_options().prop_flat_map(|opts| {
        arb_placed_message(opts).prop_map(move |(in_block, msg)| Case {
            opts,
            in_block,
            msg,
        })
    })
}

fn lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn)
}

/// Names and gids: any printable text (no NUL), possibly empty.
fn text() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}

/// Namespaces: never empty, because the wire's "" means pg_catalog.
fn namespace() -> impl Strategy<Value = String> {
    prop_oneof![Just("pg_catalog".to_owned()), "\\PC{1,12}"]
}

fn value() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn column() -> impl Strategy<Value = TupleColumn> {
    prop_oneof![
        Just(TupleColumn::Null),
        Just(TupleColumn::UnchangedToast),
        value().prop_map(TupleColumn::Text),
        value().prop_map(TupleColumn::Binary),
    ]
}

fn tuple() -> impl Strategy<Value = Vec<TupleColumn>> {
    vec(column(), 0..8)
}

fn old_tuple() -> impl Strategy<Value = OldTuple> {
    prop_oneof![
        tuple().prop_map(OldTuple::Key),
        tuple().prop_map(OldTuple::Full)
    ]
}

fn replica_identity() -> impl Strategy<Value = ReplicaIdentity> {
    prop_oneof![
        Just(ReplicaIdentity::Default),
        Just(ReplicaIdentity::Nothing),
        Just(ReplicaIdentity::Full),
        Just(ReplicaIdentity::Index),
    ]
}

fn relation_column() -> impl Strategy<Value = RelationColumn> {
    (any::<u8>(), text(), any::<u32>(), any::<i32>()).prop_map(
        |(flags, name, type_oid, type_modifier)| RelationColumn {
            flags,
            name,
            type_oid,
            type_modifier,
        },
    )
}

type Placed = BoxedStrategy<(bool, LogicalMessage)>;

/// Data messages carry an xid exactly when inside a stream block, which only
/// exists from protocol v2 on.
fn data(xid: BoxedStrategy<Option<u32>>) -> Vec<Placed> {
    let placed = |m: LogicalMessage, xid: Option<u32>| (xid.is_some(), m);
    vec![
        (
            xid.clone(),
            any::<u32>(),
            namespace(),
            text(),
            replica_identity(),
            vec(relation_column(), 0..6),
        )
            .prop_map(
                move |(xid, oid, namespace, name, replica_identity, columns)| {
                    let m = Relation {
                        xid,
                        oid,
                        namespace,
                        name,
                        replica_identity,
                        columns,
                    };
                    placed(LogicalMessage::Relation(m), xid)
                },
            )
            .boxed(),
        (xid.clone(), any::<u32>(), namespace(), text())
            .prop_map(move |(xid, oid, namespace, name)| {
                let m = Type {
                    xid,
                    oid,
                    namespace,
                    name,
                };
                placed(LogicalMessage::Type(m), xid)
            })
            .boxed(),
        (xid.clone(), any::<u32>(), tuple())
            .prop_map(move |(xid, relid, new_tuple)| {
                let m = Insert {
                    xid,
                    relid,
                    new_tuple,
                };
                placed(LogicalMessage::Insert(m), xid)
            })
            .boxed(),
        (xid.clone(), any::<u32>(), option::of(old_tuple()), tuple())
            .prop_map(move |(xid, relid, old_tuple, new_tuple)| {
                let m = Update {
                    xid,
                    relid,
                    old_tuple,
                    new_tuple,
                };
                placed(LogicalMessage::Update(m), xid)
            })
            .boxed(),
        (xid.clone(), any::<u32>(), old_tuple())
            .prop_map(move |(xid, relid, old_tuple)| {
                let m = Delete {
                    xid,
                    relid,
                    old_tuple,
                };
                placed(LogicalMessage::Delete(m), xid)
            })
            .boxed(),
        (xid.clone(), any::<u8>(), vec(any::<u32>(), 0..6))
            .prop_map(move |(xid, options, relids)| {
                let m = Truncate {
                    xid,
                    options,
                    relids,
                };
                placed(LogicalMessage::Truncate(m), xid)
            })
            .boxed(),
        (xid, any::<u8>(), lsn(), text(), value())
            .prop_map(move |(xid, flags, lsn, prefix, content)| {
                let m = Message {
                    xid,
                    flags,
                    lsn,
                    prefix,
                    content,
                };
                placed(LogicalMessage::Message(m), xid)
            })
            .boxed(),
    ]
}

fn outside(s: impl Strategy<Value = LogicalMessage> + 'static) -> Placed {
    s.prop_map(|m| (false, m)).boxed()
}

fn prepare() -> impl Strategy<Value = Prepare> {
    (
        any::<u8>(),
        lsn(),
        lsn(),
        any::<i64>(),
        any::<u32>(),
        text(),
    )
        .prop_map(
            |(flags, prepare_lsn, end_lsn, prepare_time, xid, gid)| Prepare {
                flags,
                prepare_lsn,
                end_lsn,
                prepare_time,
                xid,
                gid,
            },
        )
}

/// Every message `opts` allows, each with where it may appear.
pub(crate) fn arb_placed_message(opts: DecoderOptions) -> Placed {
    let streaming = opts.proto_version >= 2;
    let xid = if streaming {
        option::of(any::<u32>()).boxed()
    } else {
        Just(None).boxed()
    };
    let mut all = data(xid);
    all.push(outside((lsn(), any::<i64>(), any::<u32>()).prop_map(
        |(final_lsn, commit_time, xid)| {
            LogicalMessage::Begin(Begin {
                final_lsn,
                commit_time,
                xid,
            })
        },
    )));
    all.push(outside((any::<u8>(), lsn(), lsn(), any::<i64>()).prop_map(
        |(flags, commit_lsn, end_lsn, commit_time)| {
            LogicalMessage::Commit(Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_time,
            })
        },
    )));
    all.push(
        (any::<bool>(), lsn(), text())
            .prop_map(move |(inside, origin_lsn, name)| {
                let m = LogicalMessage::Origin(Origin { origin_lsn, name });
                (inside && streaming, m)
            })
            .boxed(),
    );
    if streaming {
        let abort_info = opts.proto_version >= 4 && opts.streaming_parallel;
        all.push(outside((any::<u32>(), any::<bool>()).prop_map(
            |(xid, first_segment)| LogicalMessage::StreamStart(StreamStart { xid, first_segment }),
        )));
        all.push(Just((true, LogicalMessage::StreamStop)).boxed());
        all.push(outside(
            (any::<u32>(), any::<u8>(), lsn(), lsn(), any::<i64>()).prop_map(
                |(xid, flags, commit_lsn, end_lsn, commit_time)| {
                    LogicalMessage::StreamCommit(StreamCommit {
                        xid,
                        flags,
                        commit_lsn,
                        end_lsn,
                        commit_time,
                    })
                },
            ),
        ));
        all.push(outside(
            (any::<u32>(), any::<u32>(), lsn(), any::<i64>()).prop_map(
                move |(xid, subxid, abort_lsn, abort_time)| {
                    LogicalMessage::StreamAbort(StreamAbort {
                        xid,
                        subxid,
                        abort_info: abort_info.then_some(StreamAbortInfo {
                            abort_lsn,
                            abort_time,
                        }),
                    })
                },
            ),
        ));
    }
    if opts.proto_version >= 3 {
        all.push(outside(
            (lsn(), lsn(), any::<i64>(), any::<u32>(), text()).prop_map(
                |(prepare_lsn, end_lsn, prepare_time, xid, gid)| {
                    LogicalMessage::BeginPrepare(BeginPrepare {
                        prepare_lsn,
                        end_lsn,
                        prepare_time,
                        xid,
                        gid,
                    })
                },
            ),
        ));
        all.push(outside(prepare().prop_map(LogicalMessage::Prepare)));
        all.push(outside(prepare().prop_map(LogicalMessage::StreamPrepare)));
        all.push(outside(
            (
                any::<u8>(),
                lsn(),
                lsn(),
                any::<i64>(),
                any::<u32>(),
                text(),
            )
                .prop_map(|(flags, commit_lsn, end_lsn, commit_time, xid, gid)| {
                    LogicalMessage::CommitPrepared(CommitPrepared {
                        flags,
                        commit_lsn,
                        end_lsn,
                        commit_time,
                        xid,
                        gid,
                    })
                }),
        ));
        all.push(outside(
            (
                any::<u8>(),
                lsn(),
                lsn(),
                any::<i64>(),
                any::<i64>(),
                any::<u32>(),
                text(),
            )
                .prop_map(
                    |(
                        flags,
                        prepare_end_lsn,
                        rollback_end_lsn,
                        prepare_time,
                        rollback_time,
                        xid,
                        gid,
                    )| {
                        LogicalMessage::RollbackPrepared(RollbackPrepared {
                            flags,
                            prepare_end_lsn,
                            rollback_end_lsn,
                            prepare_time,
                            rollback_time,
                            xid,
                            gid,
                        })
                    },
                ),
        ));
    }
    Union::new(all).boxed()
}
