//! From decoded pgoutput messages to the dirty keys of committed
//! transactions. Pure: no I/O.
//!
//! The WAL only tells walshift *which* source keys changed (DESIGN.md §3);
//! values are never copied out of it. For each transaction this collects, per
//! mirror, the set of keys whose target must be recomputed, and hands them
//! over at Commit — not before, since an uncommitted change is not visible to
//! the statement that recomputes it.
//!
//! - Insert: the new key. Update: the new key, and the old key when the
//!   server sent one (the key changed, or REPLICA IDENTITY FULL). Delete: the
//!   old key. TRUNCATE: the mirror is marked truncated.
//! - A transaction that touches more keys than `max_txn_keys` for a mirror
//!   stops collecting them and is marked *overflowed*: the applier then
//!   recomputes that mirror over its whole key range. Memory stays bounded
//!   however large the transaction.
//! - Transactions whose Origin message names walshift's own origin are its
//!   own writes echoed back (I5): they are skipped.

use std::collections::{HashMap, HashSet};

use crate::Lsn;
use crate::pgoutput::{LogicalMessage, Relation, TupleColumn};
use crate::relcache::RelationCache;

/// One key, its columns as text in key order (Postgres's text output).
pub type Key = Box<[Box<str>]>;

/// What a mirror needs to extract its keys from a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorSource {
    /// OID of the source table (changes name it as `relid`).
    pub source_oid: u32,
    /// Key column names in key order.
    pub key_columns: Vec<String>,
}

/// The dirty keys of one mirror.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MirrorKeys {
    pub keys: HashSet<Key>,
    /// Too many keys to hold: recompute the whole mirror.
    pub overflowed: bool,
    /// The source was truncated: remove owned target rows with no source.
    pub truncated: bool,
}

impl MirrorKeys {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && !self.overflowed && !self.truncated
    }

    /// Adds `other`'s work, collapsing to overflow past `max_keys`.
    pub fn merge(&mut self, other: MirrorKeys, max_keys: usize) {
        self.truncated |= other.truncated;
        self.overflowed |= other.overflowed;
        if self.overflowed {
            self.keys.clear();
            return;
        }
        self.keys.extend(other.keys);
        if self.keys.len() > max_keys {
            self.overflowed = true;
            self.keys = HashSet::new();
        }
    }
}

/// A committed transaction's work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedTxn {
    pub xid: u32,
    /// Confirm this once the work is committed in the target (I4).
    pub end_lsn: Lsn,
    /// Microseconds since 2000-01-01.
    pub commit_time: i64,
    /// Per mirror (same order as the sources given to the assembler).
    pub mirrors: Vec<MirrorKeys>,
    /// walshift's own writes coming back: nothing to do but confirm.
    pub echo: bool,
}

impl CommittedTxn {
    pub fn has_work(&self) -> bool {
        !self.echo && self.mirrors.iter().any(|m| !m.is_empty())
    }
}

/// What feeding one message produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Assembled {
    Nothing,
    Committed(CommittedTxn),
    /// A non-transactional logical message (watermarks travel this way).
    Message {
        prefix: String,
        content: bytes::Bytes,
        lsn: Lsn,
    },
}

/// The stream did not make sense for the mirrors; reconnecting will not help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssembleError {
    #[error("{message} outside a transaction")]
    OutsideTransaction { message: &'static str },
    #[error(
        "table {table} no longer has key column {column:?}: the source changed shape under walshift; stop, fix the spec, and restart"
    )]
    MissingKeyColumn { table: String, column: String },
    #[error(
        "a change to {table} carries no value for key column {column:?} (replica identity does not cover the key): ALTER TABLE {table} REPLICA IDENTITY FULL, or key the mirror on the primary key"
    )]
    NoKeyValue { table: String, column: String },
    #[error("change to relation {relid} before its Relation message")]
    UnknownRelation { relid: u32 },
}

struct OpenTxn {
    xid: u32,
    echo: bool,
    mirrors: Vec<MirrorKeys>,
}

/// Turns a pgoutput message sequence (protocol v1: transactions arrive whole,
/// one at a time) into committed transactions' dirty keys.
pub struct TxnAssembler {
    sources: Vec<MirrorSource>,
    own_origin: String,
    max_txn_keys: usize,
    relations: RelationCache,
    /// relid -> (mirror index, key column positions in the relation).
    key_positions: HashMap<u32, Vec<(usize, Vec<usize>)>>,
    open: Option<OpenTxn>,
}

impl TxnAssembler {
    pub fn new(
        sources: Vec<MirrorSource>,
        own_origin: impl Into<String>,
        max_txn_keys: usize,
    ) -> Self {
        TxnAssembler {
            sources,
            own_origin: own_origin.into(),
            max_txn_keys: max_txn_keys.max(1),
            relations: RelationCache::default(),
            key_positions: HashMap::new(),
            open: None,
        }
    }

    /// Whether a transaction has begun and not yet committed.
    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    /// Whether the open transaction is walshift's own echo: its row changes
    /// need not even be decoded (the Origin message comes right after Begin).
    pub fn skipping(&self) -> bool {
        self.open.as_ref().is_some_and(|t| t.echo)
    }

    pub fn feed(&mut self, msg: LogicalMessage) -> Result<Assembled, AssembleError> {
        match msg {
            LogicalMessage::Begin(b) => {
                self.open = Some(OpenTxn {
                    xid: b.xid,
                    echo: false,
                    mirrors: vec![MirrorKeys::default(); self.sources.len()],
                });
            }
            LogicalMessage::Origin(o) => {
                let echo = o.name == self.own_origin;
                self.txn("Origin")?.echo = echo;
            }
            LogicalMessage::Relation(r) => self.relation(r)?,
            LogicalMessage::Type(_) => {}
            LogicalMessage::Insert(i) => self.change(i.relid, &[&i.new_tuple])?,
            LogicalMessage::Update(u) => match &u.old_tuple {
                Some(old) => self.change_update(u.relid, &u.new_tuple, old.columns())?,
                None => self.change(u.relid, &[&u.new_tuple])?,
            },
            LogicalMessage::Delete(d) => self.change(d.relid, &[d.old_tuple.columns()])?,
            LogicalMessage::Truncate(t) => {
                let mut hit = Vec::new();
                for relid in &t.relids {
                    for (i, s) in self.sources.iter().enumerate() {
                        if s.source_oid == *relid {
                            hit.push(i);
                        }
                    }
                }
                let txn = self.txn("Truncate")?;
                for i in hit {
                    txn.mirrors[i].truncated = true;
                }
            }
            LogicalMessage::Message(m) if !m.transactional() => {
                return Ok(Assembled::Message {
                    prefix: m.prefix,
                    content: m.content,
                    lsn: m.lsn,
                });
            }
            LogicalMessage::Message(_) => {}
            LogicalMessage::Commit(c) => {
                let txn = self
                    .open
                    .take()
                    .ok_or(AssembleError::OutsideTransaction { message: "Commit" })?;
                return Ok(Assembled::Committed(CommittedTxn {
                    xid: txn.xid,
                    end_lsn: c.end_lsn,
                    commit_time: c.commit_time,
                    echo: txn.echo,
                    mirrors: if txn.echo {
                        vec![MirrorKeys::default(); self.sources.len()]
                    } else {
                        txn.mirrors
                    },
                }));
            }
            // Protocol v1 without two_phase never sends these; the stream is
            // opened that way.
            other => {
                return Err(AssembleError::OutsideTransaction {
                    message: other.name(),
                });
            }
        }
        Ok(Assembled::Nothing)
    }

    fn txn(&mut self, message: &'static str) -> Result<&mut OpenTxn, AssembleError> {
        self.open
            .as_mut()
            .ok_or(AssembleError::OutsideTransaction { message })
    }

    fn relation(&mut self, r: Relation) -> Result<(), AssembleError> {
        let mut positions = Vec::new();
        for (i, s) in self.sources.iter().enumerate() {
            if s.source_oid != r.oid {
                continue;
            }
            let mut cols = Vec::with_capacity(s.key_columns.len());
            for k in &s.key_columns {
                let pos = r.columns.iter().position(|c| &c.name == k).ok_or_else(|| {
                    AssembleError::MissingKeyColumn {
                        table: format!("{}.{}", r.namespace, r.name),
                        column: k.clone(),
                    }
                })?;
                cols.push(pos);
            }
            positions.push((i, cols));
        }
        self.key_positions.insert(r.oid, positions);
        self.relations.apply(r);
        Ok(())
    }

    /// Keys from each tuple (new, or old) of a change.
    fn change(&mut self, relid: u32, tuples: &[&[TupleColumn]]) -> Result<(), AssembleError> {
        let positions = self
            .key_positions
            .get(&relid)
            .ok_or(AssembleError::UnknownRelation { relid })?;
        if positions.is_empty() {
            return Ok(());
        }
        let max = self.max_txn_keys;
        let txn = self
            .open
            .as_mut()
            .ok_or(AssembleError::OutsideTransaction { message: "change" })?;
        if txn.echo {
            return Ok(());
        }
        for (mirror, cols) in positions {
            for tuple in tuples {
                let key = extract(tuple, cols).map_err(|c| {
                    let rel = self.relations.get(relid);
                    AssembleError::NoKeyValue {
                        table: rel
                            .map(|r| format!("{}.{}", r.namespace, r.name))
                            .unwrap_or_default(),
                        column: rel
                            .and_then(|r| r.columns.get(c))
                            .map(|c| c.name.clone())
                            .unwrap_or_default(),
                    }
                })?;
                add(&mut txn.mirrors[*mirror], key, max);
            }
        }
        Ok(())
    }

    /// An update with an old tuple: a new-tuple key column sent as
    /// "unchanged TOAST" is, by definition, the old value.
    fn change_update(
        &mut self,
        relid: u32,
        new: &[TupleColumn],
        old: &[TupleColumn],
    ) -> Result<(), AssembleError> {
        let merged: Vec<TupleColumn> = new
            .iter()
            .enumerate()
            .map(|(i, c)| match c {
                TupleColumn::UnchangedToast => {
                    old.get(i).cloned().unwrap_or(TupleColumn::UnchangedToast)
                }
                c => c.clone(),
            })
            .collect();
        self.change(relid, &[&merged, old])
    }
}

fn add(m: &mut MirrorKeys, key: Key, max: usize) {
    if m.overflowed {
        return;
    }
    m.keys.insert(key);
    if m.keys.len() > max {
        m.overflowed = true;
        m.keys = HashSet::new();
    }
}

/// The key columns of a tuple as text; `Err(position)` when one is missing.
fn extract(tuple: &[TupleColumn], cols: &[usize]) -> Result<Key, usize> {
    cols.iter()
        .map(|&c| match tuple.get(c) {
            Some(TupleColumn::Text(b)) => Ok(String::from_utf8_lossy(b).into()),
            _ => Err(c),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::*;
    use bytes::Bytes;

    fn t(s: &str) -> TupleColumn {
        TupleColumn::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn rel(oid: u32, cols: &[&str]) -> LogicalMessage {
        LogicalMessage::Relation(Relation {
            xid: None,
            oid,
            namespace: "public".into(),
            name: format!("t{oid}"),
            replica_identity: ReplicaIdentity::Default,
            columns: cols
                .iter()
                .enumerate()
                .map(|(i, c)| RelationColumn {
                    flags: (i == 0) as u8,
                    name: c.to_string(),
                    type_oid: 25,
                    type_modifier: -1,
                })
                .collect(),
        })
    }

    fn begin(xid: u32) -> LogicalMessage {
        LogicalMessage::Begin(Begin {
            final_lsn: Lsn(1),
            commit_time: 0,
            xid,
        })
    }

    fn commit(end: u64) -> LogicalMessage {
        LogicalMessage::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(end - 1),
            end_lsn: Lsn(end),
            commit_time: 7,
        })
    }

    fn key(parts: &[&str]) -> Key {
        parts.iter().map(|p| Box::<str>::from(*p)).collect()
    }

    fn committed(a: &mut TxnAssembler, msgs: Vec<LogicalMessage>) -> CommittedTxn {
        let mut out = None;
        for m in msgs {
            if let Assembled::Committed(c) = a.feed(m).unwrap() {
                out = Some(c);
            }
        }
        out.expect("a commit")
    }

    fn users() -> TxnAssembler {
        TxnAssembler::new(
            vec![MirrorSource {
                source_oid: 10,
                key_columns: vec!["id".into()],
            }],
            "walshift_x",
            1000,
        )
    }

    #[test]
    fn insert_update_delete_mark_their_keys() {
        let mut a = users();
        let c = committed(
            &mut a,
            vec![
                begin(5),
                rel(10, &["id", "v"]),
                LogicalMessage::Insert(Insert {
                    xid: None,
                    relid: 10,
                    new_tuple: vec![t("1"), t("a")],
                }),
                LogicalMessage::Update(Update {
                    xid: None,
                    relid: 10,
                    old_tuple: None,
                    new_tuple: vec![t("2"), t("b")],
                }),
                LogicalMessage::Delete(Delete {
                    xid: None,
                    relid: 10,
                    old_tuple: OldTuple::Key(vec![t("3"), TupleColumn::Null]),
                }),
                commit(100),
            ],
        );
        assert_eq!(
            (c.xid, c.end_lsn, c.commit_time, c.echo),
            (5, Lsn(100), 7, false)
        );
        let want: HashSet<Key> = [key(&["1"]), key(&["2"]), key(&["3"])].into();
        assert_eq!(c.mirrors[0].keys, want);
        assert!(c.has_work());
        assert!(!a.in_transaction());
    }

    /// A primary-key update makes both the old and the new key dirty.
    #[test]
    fn key_update_marks_old_and_new_key() {
        let mut a = users();
        let c = committed(
            &mut a,
            vec![
                begin(1),
                rel(10, &["id", "v"]),
                LogicalMessage::Update(Update {
                    xid: None,
                    relid: 10,
                    old_tuple: Some(OldTuple::Key(vec![t("1"), TupleColumn::Null])),
                    new_tuple: vec![t("9"), TupleColumn::UnchangedToast],
                }),
                commit(2),
            ],
        );
        let want: HashSet<Key> = [key(&["1"]), key(&["9"])].into();
        assert_eq!(c.mirrors[0].keys, want);
    }

    #[test]
    fn own_origin_is_an_echo_other_origins_are_work() {
        let mut a = users();
        let ins = LogicalMessage::Insert(Insert {
            xid: None,
            relid: 10,
            new_tuple: vec![t("1"), t("a")],
        });
        let origin = |name: &str| {
            LogicalMessage::Origin(Origin {
                origin_lsn: Lsn(0),
                name: name.into(),
            })
        };
        let c = committed(
            &mut a,
            vec![
                begin(1),
                origin("walshift_x"),
                rel(10, &["id", "v"]),
                ins.clone(),
                commit(2),
            ],
        );
        assert!(c.echo && !c.has_work());
        let c = committed(
            &mut a,
            vec![begin(2), origin("subscription_feed"), ins, commit(3)],
        );
        assert!(!c.echo && c.has_work());
    }

    #[test]
    fn echo_transactions_are_skipped_from_the_origin_message_on() {
        let mut a = users();
        a.feed(begin(1)).unwrap();
        assert!(!a.skipping());
        a.feed(LogicalMessage::Origin(Origin {
            origin_lsn: Lsn(0),
            name: "walshift_x".into(),
        }))
        .unwrap();
        assert!(a.skipping(), "the run loop may drop row changes undecoded");
        a.feed(rel(10, &["id"])).unwrap();
        a.feed(LogicalMessage::Insert(Insert {
            xid: None,
            relid: 10,
            new_tuple: vec![t("1")],
        }))
        .unwrap();
        let Assembled::Committed(c) = a.feed(commit(5)).unwrap() else {
            panic!()
        };
        assert!(c.echo && c.mirrors[0].keys.is_empty());
        assert!(!a.skipping());
    }

    #[test]
    fn huge_transaction_overflows_instead_of_growing() {
        let mut a = TxnAssembler::new(
            vec![MirrorSource {
                source_oid: 10,
                key_columns: vec!["id".into()],
            }],
            "w",
            3,
        );
        let mut msgs = vec![begin(1), rel(10, &["id"])];
        for i in 0..10 {
            msgs.push(LogicalMessage::Insert(Insert {
                xid: None,
                relid: 10,
                new_tuple: vec![t(&i.to_string())],
            }));
        }
        msgs.push(commit(9));
        let c = committed(&mut a, msgs);
        assert!(c.mirrors[0].overflowed);
        assert!(c.mirrors[0].keys.is_empty());
    }

    #[test]
    fn composite_keys_unrelated_tables_and_truncate() {
        let mut a = TxnAssembler::new(
            vec![
                MirrorSource {
                    source_oid: 10,
                    key_columns: vec!["b".into(), "a".into()],
                },
                MirrorSource {
                    source_oid: 11,
                    key_columns: vec!["id".into()],
                },
            ],
            "w",
            100,
        );
        let c = committed(
            &mut a,
            vec![
                begin(1),
                rel(10, &["a", "b", "c"]),
                rel(99, &["x"]),
                LogicalMessage::Insert(Insert {
                    xid: None,
                    relid: 10,
                    new_tuple: vec![t("A"), t("B"), t("C")],
                }),
                LogicalMessage::Insert(Insert {
                    xid: None,
                    relid: 99,
                    new_tuple: vec![t("x")],
                }),
                LogicalMessage::Truncate(Truncate {
                    xid: None,
                    options: 0,
                    relids: vec![11],
                }),
                commit(5),
            ],
        );
        assert_eq!(c.mirrors[0].keys, [key(&["B", "A"])].into());
        assert!(!c.mirrors[0].truncated);
        assert!(c.mirrors[1].truncated && c.mirrors[1].keys.is_empty());
    }

    #[test]
    fn missing_key_value_is_a_clear_error() {
        let mut a = users();
        a.feed(begin(1)).unwrap();
        a.feed(rel(10, &["id", "v"])).unwrap();
        let e = a
            .feed(LogicalMessage::Delete(Delete {
                xid: None,
                relid: 10,
                old_tuple: OldTuple::Key(vec![TupleColumn::Null, TupleColumn::Null]),
            }))
            .unwrap_err();
        assert!(e.to_string().contains("REPLICA IDENTITY"), "{e}");
        let e = a.feed(rel(10, &["v"])).unwrap_err();
        assert!(matches!(e, AssembleError::MissingKeyColumn { .. }), "{e}");
    }

    #[test]
    fn merge_collapses_past_the_bound() {
        let mut m = MirrorKeys::default();
        m.merge(
            MirrorKeys {
                keys: [key(&["1"]), key(&["2"])].into(),
                ..Default::default()
            },
            2,
        );
        assert_eq!(m.keys.len(), 2);
        m.merge(
            MirrorKeys {
                keys: [key(&["3"])].into(),
                truncated: true,
                ..Default::default()
            },
            2,
        );
        assert!(m.overflowed && m.truncated && m.keys.is_empty());
    }
}
