//! From decoded pgoutput messages to the dirty keys of committed
//! transactions. Pure: no I/O.
//!
//! The WAL only tells walshift *which* source keys changed (docs/design.md §4);
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
use crate::catalog::{MirrorKind, MirrorPlan};
use crate::pgoutput::{LogicalMessage, OldTuple, Relation, TupleColumn};
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
    /// A two-way mirror: how a change tells which shape it wrote.
    pub two_way: Option<TwoWaySource>,
    /// Tables the mapping depends on: OID and primary key column names.
    pub depends: Vec<(u32, Vec<String>)>,
}

impl MirrorSource {
    /// What the stream needs of a checked mirror.
    pub fn of(plan: &MirrorPlan) -> Self {
        let shape = |cols: &[crate::catalog::ShapeColumn]| {
            cols.iter()
                .map(|c| (c.name.clone(), c.default.clone()))
                .collect()
        };
        MirrorSource {
            source_oid: plan.source_oid,
            key_columns: plan.key.iter().map(|k| k.name.clone()).collect(),
            two_way: plan.two_way.as_ref().map(|t| TwoWaySource {
                forward_signal: t.forward_signal.clone(),
                reverse_signal: t.reverse_signal.clone(),
                old_shape: shape(&t.old_shape),
                new_shape: shape(&t.new_shape),
                rows: matches!(plan.kind, MirrorKind::Rows(_)),
                target: match (&plan.kind, t.target_oid) {
                    (MirrorKind::Rows(p), Some(oid)) => {
                        Some((oid, p.owner.iter().map(|o| o.name.clone()).collect()))
                    }
                    _ => None,
                },
            }),
            depends: plan
                .depends
                .iter()
                .map(|d| (d.table_oid, d.key.iter().map(|k| k.name.clone()).collect()))
                .collect(),
        }
    }
}

/// What tells the direction of a two-way mirror's changes (see the module
/// docs): the columns only one direction reads, each shape's columns with
/// their constant defaults, and the target whose changes are the new
/// version's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TwoWaySource {
    pub forward_signal: Vec<String>,
    pub reverse_signal: Vec<String>,
    /// `(column, constant default as text)`.
    pub old_shape: Vec<(String, Option<String>)>,
    pub new_shape: Vec<(String, Option<String>)>,
    pub rows: bool,
    /// Rows mode: the target's OID and its owner columns (in key order).
    pub target: Option<(u32, Vec<String>)>,
}

/// Which shape a two-way mirror recomputes for a key: decided by the key's
/// last write that changed either shape's inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    /// The old version wrote (the old shape changed): recompute the new one.
    Forward,
    /// The new version wrote: recompute the old shape.
    Reverse,
    /// The application wrote both shapes itself: nothing to recompute.
    Both,
}

impl Dir {
    /// One letter, as walshift's key table stores it.
    pub fn code(self) -> &'static str {
        match self {
            Dir::Forward => "f",
            Dir::Reverse => "r",
            Dir::Both => "b",
        }
    }

    pub fn from_code(code: &str) -> Option<Dir> {
        match code {
            "f" => Some(Dir::Forward),
            "r" => Some(Dir::Reverse),
            "b" => Some(Dir::Both),
            _ => None,
        }
    }

    /// Whether a later write in direction `later` overrode an unreconciled
    /// write in this one: the two versions wrote the same key before
    /// walshift could reconcile the first write (a conflict; the later wins).
    pub fn conflicts_with(self, later: Dir) -> bool {
        matches!(
            (self, later),
            (Dir::Forward, Dir::Reverse) | (Dir::Reverse, Dir::Forward)
        )
    }
}

/// Keys of a mirror whose two versions' writes met before walshift could
/// reconcile the first: counted, and the first few kept to be named.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conflicts {
    pub count: u64,
    pub examples: Vec<Key>,
}

/// Conflict keys kept per batch to be named in the log.
pub const CONFLICT_EXAMPLES: usize = 5;

impl Conflicts {
    pub fn add(&mut self, key: &Key) {
        self.count += 1;
        if self.examples.len() < CONFLICT_EXAMPLES {
            self.examples.push(key.clone());
        }
    }

    pub fn absorb(&mut self, other: Conflicts) {
        self.count += other.count;
        for k in other.examples {
            if self.examples.len() < CONFLICT_EXAMPLES {
                self.examples.push(k);
            }
        }
    }
}

/// The dirty keys of one mirror.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MirrorKeys {
    /// A one-way mirror's dirty keys.
    pub keys: HashSet<Key>,
    /// A two-way mirror's dirty keys, each with the direction of its last
    /// write that changed a shape.
    pub dirs: HashMap<Key, Dir>,
    /// Too many keys to hold: recompute the whole mirror.
    pub overflowed: bool,
    /// The source was truncated: remove owned target rows with no source.
    pub truncated: bool,
    /// Two-way rows mode: the application truncated the target, so every
    /// key's old shape is recomputed, but for the keys in `dirs` (written
    /// after the truncate).
    pub target_truncated: bool,
    /// Merged writes of one key in opposite directions.
    pub conflicts: Conflicts,
    /// Keys of rows of the tables the mapping depends on that changed: the
    /// index into the mirror's dependencies, and that table's key. Each
    /// makes dirty the source rows that refer to it.
    pub depends: HashSet<(usize, Key)>,
}

impl MirrorKeys {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
            && self.dirs.is_empty()
            && self.depends.is_empty()
            && !self.overflowed
            && !self.truncated
            && !self.target_truncated
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.keys.len() + self.dirs.len() + self.depends.len()
    }

    /// A two-way key's write in direction `dir`, later than those held: it
    /// decides the key, and overriding the opposite direction is a conflict.
    pub fn set_dir(&mut self, key: Key, dir: Dir) {
        if super::plant::active(super::plant::Plant::EarlierWriteWins)
            && self.dirs.contains_key(&key)
        {
            return;
        }
        if let Some(old) = self.dirs.insert(key.clone(), dir)
            && old.conflicts_with(dir)
        {
            self.conflicts.add(&key);
        }
    }

    /// Adds `other`'s work (later than this), collapsing one-way keys to
    /// overflow past `max_keys`. Two-way keys are never collapsed: a whole
    /// pass could not tell which shape each key's last write changed.
    pub fn merge(&mut self, other: MirrorKeys, max_keys: usize) {
        self.truncated |= other.truncated;
        self.overflowed |= other.overflowed;
        self.conflicts.absorb(other.conflicts);
        if other.target_truncated {
            // Every earlier write is superseded by the truncate.
            self.target_truncated = true;
            self.dirs.clear();
        }
        for (key, dir) in other.dirs {
            self.set_dir(key, dir);
        }
        if self.overflowed {
            self.keys.clear();
            self.depends.clear();
            return;
        }
        self.keys.extend(other.keys);
        self.depends.extend(other.depends);
        self.overflow_past(max_keys);
    }

    /// Past `max_keys` one-way and dependency keys, collapses to a
    /// whole-mirror pass (the keys' memory freed).
    fn overflow_past(&mut self, max_keys: usize) {
        if self.keys.len() + self.depends.len() > max_keys {
            self.overflowed = true;
            self.keys = HashSet::new();
            self.depends = HashSet::new();
        }
    }
}

/// A committed transaction's work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedTxn {
    pub xid: u32,
    /// Position of the commit record: transactions visible to a snapshot
    /// committed before the WAL position read with it.
    pub commit_lsn: Lsn,
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
    #[error(
        "an update of {table} came without its old row, so walshift cannot tell which shape it \
         wrote (a two-way mirror needs it): ALTER TABLE {table} REPLICA IDENTITY FULL, then restart"
    )]
    NoOldRow { table: String },
}

struct OpenTxn {
    xid: u32,
    echo: bool,
    mirrors: Vec<MirrorKeys>,
}

/// How a relation's changes concern one mirror, with column positions
/// resolved from its Relation message.
#[derive(Clone, Debug)]
enum Binding {
    /// The mirror's source: its key columns, and for a two-way mirror what
    /// tells the direction of a change.
    Source {
        mirror: usize,
        key: Vec<usize>,
        two_way: Option<SourceColumns>,
    },
    /// A two-way rows mirror's target: every change is the new version's
    /// write to the keys its owner columns hold.
    Target { mirror: usize, owner: Vec<usize> },
    /// A table the mirror's mapping depends on (`dep` indexes the mirror's
    /// dependencies): its primary key columns.
    Depends {
        mirror: usize,
        dep: usize,
        key: Vec<usize>,
    },
}

/// [`TwoWaySource`] as positions in the source relation.
#[derive(Clone, Debug)]
struct SourceColumns {
    forward: Vec<usize>,
    reverse: Vec<usize>,
    old_shape: Vec<(usize, Option<String>)>,
    new_shape: Vec<(usize, Option<String>)>,
    rows: bool,
}

impl SourceColumns {
    /// An update: the direction of the columns it changed, or `None` when it
    /// changed neither direction's inputs. A TOASTed value sent as
    /// "unchanged" did not change.
    fn update(&self, new: &[TupleColumn], old: &[TupleColumn]) -> Option<Dir> {
        if super::plant::active(super::plant::Plant::RecomputeEveryWrite) {
            return Some(Dir::Forward);
        }
        let changed = |i: &usize| match (new.get(*i), old.get(*i)) {
            (Some(TupleColumn::UnchangedToast), _) => false,
            (a, b) => a != b,
        };
        match (
            self.forward.iter().any(changed),
            self.reverse.iter().any(changed),
        ) {
            (true, false) => Some(Dir::Forward),
            (false, true) => Some(Dir::Reverse),
            (true, true) => Some(Dir::Both),
            (false, false) => None,
        }
    }

    /// An insert: the shape it left unset (NULL, or the column's constant
    /// default) is mirrored from the one it set. Set mode: only the old
    /// shape set, or neither, is the old version's insert; only the new one,
    /// the new version's; both, the application wrote both. Rows mode: an
    /// insert leaving the old shape's columns unset is the new version's
    /// (its rows come in the target); a split's way back has no such
    /// columns, and a source insert there is always the old version's.
    fn insert(&self, new: &[TupleColumn]) -> Dir {
        let unset = |shape: &[(usize, Option<String>)]| {
            shape.iter().all(|(i, default)| match new.get(*i) {
                None | Some(TupleColumn::Null) => true,
                Some(TupleColumn::Text(b)) => {
                    default.as_deref().is_some_and(|d| d.as_bytes() == &b[..])
                }
                Some(_) => false,
            })
        };
        if self.rows {
            return if !self.old_shape.is_empty() && unset(&self.old_shape) {
                Dir::Reverse
            } else {
                Dir::Forward
            };
        }
        match (unset(&self.old_shape), unset(&self.new_shape)) {
            (true, false) => Dir::Reverse,
            (false, false) => Dir::Both,
            (_, true) => Dir::Forward,
        }
    }
}

/// A row change as the stream gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChangeKind {
    Insert,
    Update,
    Delete,
}

/// Turns a pgoutput message sequence (protocol v1: transactions arrive whole,
/// one at a time) into committed transactions' dirty keys.
pub struct TxnAssembler {
    sources: Vec<MirrorSource>,
    own_origin: String,
    max_txn_keys: usize,
    relations: RelationCache,
    /// relid -> how its changes concern each mirror.
    bindings: HashMap<u32, Vec<Binding>>,
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
            bindings: HashMap::new(),
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
            LogicalMessage::Insert(i) => {
                self.change(i.relid, ChangeKind::Insert, Some(&i.new_tuple), None)?
            }
            LogicalMessage::Update(u) => self.change(
                u.relid,
                ChangeKind::Update,
                Some(&u.new_tuple),
                u.old_tuple.as_ref(),
            )?,
            LogicalMessage::Delete(d) => {
                self.change(d.relid, ChangeKind::Delete, None, Some(&d.old_tuple))?
            }
            LogicalMessage::Truncate(t) => {
                let mut sources = Vec::new();
                let mut targets = Vec::new();
                let mut depending = Vec::new();
                for relid in &t.relids {
                    for (i, s) in self.sources.iter().enumerate() {
                        if s.source_oid == *relid {
                            sources.push(i);
                        }
                        if s.depends.iter().any(|(oid, _)| oid == relid) {
                            depending.push(i);
                        }
                        let target = s.two_way.as_ref().and_then(|t| t.target.as_ref());
                        if target.is_some_and(|(oid, _)| oid == relid) {
                            targets.push(i);
                        }
                    }
                }
                let txn = self.txn("Truncate")?;
                for i in sources {
                    txn.mirrors[i].truncated = true;
                }
                // Every source row may have read the emptied table.
                for i in depending {
                    let m = &mut txn.mirrors[i];
                    m.overflowed = true;
                    m.keys.clear();
                    m.depends.clear();
                }
                for i in targets {
                    // Later writes in this transaction still decide their keys.
                    txn.mirrors[i].dirs.clear();
                    txn.mirrors[i].target_truncated = true;
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
                    commit_lsn: c.commit_lsn,
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
        let table = || format!("{}.{}", r.namespace, r.name);
        let position = |name: &str| -> Result<usize, AssembleError> {
            r.columns
                .iter()
                .position(|c| c.name == name)
                .ok_or_else(|| AssembleError::MissingKeyColumn {
                    table: table(),
                    column: name.to_string(),
                })
        };
        let positions = |names: &[String]| -> Result<Vec<usize>, AssembleError> {
            names.iter().map(|n| position(n)).collect()
        };
        let shape = |cols: &[(String, Option<String>)]| -> Result<Vec<(usize, Option<String>)>, AssembleError> {
            cols.iter()
                .map(|(n, d)| Ok((position(n)?, d.clone())))
                .collect()
        };
        let mut bindings = Vec::new();
        for (i, s) in self.sources.iter().enumerate() {
            if s.source_oid == r.oid {
                let two_way = match &s.two_way {
                    None => None,
                    Some(t) => Some(SourceColumns {
                        forward: positions(&t.forward_signal)?,
                        reverse: positions(&t.reverse_signal)?,
                        old_shape: shape(&t.old_shape)?,
                        new_shape: shape(&t.new_shape)?,
                        rows: t.rows,
                    }),
                };
                bindings.push(Binding::Source {
                    mirror: i,
                    key: positions(&s.key_columns)?,
                    two_way,
                });
            }
            if let Some((oid, owner)) = s.two_way.as_ref().and_then(|t| t.target.as_ref())
                && *oid == r.oid
            {
                bindings.push(Binding::Target {
                    mirror: i,
                    owner: positions(owner)?,
                });
            }
            for (dep, (oid, key)) in s.depends.iter().enumerate() {
                if *oid == r.oid {
                    bindings.push(Binding::Depends {
                        mirror: i,
                        dep,
                        key: positions(key)?,
                    });
                }
            }
        }
        self.bindings.insert(r.oid, bindings);
        self.relations.apply(r);
        Ok(())
    }

    /// The keys (and for two-way mirrors the directions) of one row change.
    /// `old` is the old row as the server sent it: its replica identity, or
    /// the whole row under REPLICA IDENTITY FULL.
    fn change(
        &mut self,
        relid: u32,
        kind: ChangeKind,
        new: Option<&[TupleColumn]>,
        old: Option<&OldTuple>,
    ) -> Result<(), AssembleError> {
        let bindings = self
            .bindings
            .get(&relid)
            .ok_or(AssembleError::UnknownRelation { relid })?;
        if bindings.is_empty() {
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
        let merged = merge_unchanged_toast(new, old);
        let row = RowChange {
            relid,
            relations: &self.relations,
            new: merged.as_deref(),
            old,
        };
        for binding in bindings {
            match binding {
                Binding::Source {
                    mirror,
                    key,
                    two_way: None,
                } => row.dirty(&mut txn.mirrors[*mirror], key, max)?,
                Binding::Source {
                    mirror,
                    key,
                    two_way: Some(signals),
                } => row.directed(&mut txn.mirrors[*mirror], key, signals, kind)?,
                Binding::Target { mirror, owner } => {
                    row.owners(&mut txn.mirrors[*mirror], owner)?
                }
                Binding::Depends { mirror, dep, key } => {
                    row.depends(&mut txn.mirrors[*mirror], *dep, key, max)?
                }
            }
        }
        Ok(())
    }
}

/// A new-row column sent as "unchanged TOAST" is, by definition, the old
/// value (when the old row was sent).
fn merge_unchanged_toast(
    new: Option<&[TupleColumn]>,
    old: Option<&OldTuple>,
) -> Option<Vec<TupleColumn>> {
    match (new, old) {
        (Some(new), Some(old)) => Some(
            new.iter()
                .enumerate()
                .map(|(i, c)| match c {
                    TupleColumn::UnchangedToast => old
                        .columns()
                        .get(i)
                        .cloned()
                        .unwrap_or(TupleColumn::UnchangedToast),
                    c => c.clone(),
                })
                .collect(),
        ),
        (Some(new), None) => Some(new.to_vec()),
        (None, _) => None,
    }
}

/// One row change, as each binding of its relation reads it.
struct RowChange<'a> {
    relid: u32,
    relations: &'a RelationCache,
    /// The new row, unchanged TOAST filled in from the old.
    new: Option<&'a [TupleColumn]>,
    old: Option<&'a OldTuple>,
}

impl RowChange<'_> {
    /// The new row and the old, whichever were sent.
    fn tuples(&self) -> impl Iterator<Item = &[TupleColumn]> {
        [self.new, self.old.map(OldTuple::columns)]
            .into_iter()
            .flatten()
    }

    fn table(&self) -> String {
        self.relations
            .get(self.relid)
            .map(|r| format!("{}.{}", r.namespace, r.name))
            .unwrap_or_default()
    }

    /// Key column `c` came without a value.
    fn no_key(&self, c: usize) -> AssembleError {
        AssembleError::NoKeyValue {
            table: self.table(),
            column: self
                .relations
                .get(self.relid)
                .and_then(|r| r.columns.get(c))
                .map(|c| c.name.clone())
                .unwrap_or_default(),
        }
    }

    fn key(&self, tuple: &[TupleColumn], cols: &[usize]) -> Result<Key, AssembleError> {
        extract(tuple, cols).map_err(|c| self.no_key(c))
    }

    /// A one-way mirror's source: the row's key now, and before.
    fn dirty(&self, keys: &mut MirrorKeys, key: &[usize], max: usize) -> Result<(), AssembleError> {
        for tuple in self.tuples() {
            add(keys, self.key(tuple, key)?, max);
        }
        Ok(())
    }

    /// A two-way mirror's source: the key, and which way the change goes.
    fn directed(
        &self,
        keys: &mut MirrorKeys,
        key: &[usize],
        signals: &SourceColumns,
        kind: ChangeKind,
    ) -> Result<(), AssembleError> {
        match kind {
            ChangeKind::Insert => {
                let new = self.new.unwrap_or_default();
                keys.dirs.insert(self.key(new, key)?, signals.insert(new));
            }
            ChangeKind::Delete => {
                // Set mode: both shapes went with the row.
                if signals.rows {
                    let old = self.old.map(OldTuple::columns).unwrap_or_default();
                    keys.dirs.insert(self.key(old, key)?, Dir::Forward);
                }
            }
            ChangeKind::Update => {
                let Some(OldTuple::Full(old)) = self.old else {
                    return Err(AssembleError::NoOldRow {
                        table: self.table(),
                    });
                };
                let new = self.new.unwrap_or_default();
                let new_key = self.key(new, key)?;
                let old_key = self.key(old, key)?;
                if new_key != old_key && signals.rows {
                    // The target rows move with the key.
                    keys.dirs.insert(old_key, Dir::Forward);
                    keys.dirs.insert(new_key, Dir::Forward);
                } else if let Some(dir) = signals.update(new, old) {
                    keys.dirs.insert(new_key, dir);
                }
            }
        }
        Ok(())
    }

    /// A two-way rows mirror's target: the new version wrote the keys its
    /// owner columns hold (rows of other mirrors leave them NULL).
    fn owners(&self, keys: &mut MirrorKeys, owner: &[usize]) -> Result<(), AssembleError> {
        for tuple in self.tuples() {
            match extract_owner(tuple, owner) {
                Ok(Some(k)) => {
                    keys.dirs.insert(k, Dir::Reverse);
                }
                Ok(None) => {}
                Err(c) => return Err(self.no_key(c)),
            }
        }
        Ok(())
    }

    /// A table the mapping depends on: the row's key now, and before when
    /// it changed.
    fn depends(
        &self,
        keys: &mut MirrorKeys,
        dep: usize,
        key: &[usize],
        max: usize,
    ) -> Result<(), AssembleError> {
        for tuple in self.tuples() {
            let k = self.key(tuple, key)?;
            if keys.overflowed {
                continue;
            }
            keys.depends.insert((dep, k));
            keys.overflow_past(max);
        }
        Ok(())
    }
}

fn add(m: &mut MirrorKeys, key: Key, max: usize) {
    if m.overflowed {
        return;
    }
    m.keys.insert(key);
    m.overflow_past(max);
}

/// The owner columns of a target row as a key; `Ok(None)` when they are
/// NULL (a row no key of this mirror owns), `Err(position)` when the old row
/// does not carry them.
fn extract_owner(tuple: &[TupleColumn], cols: &[usize]) -> Result<Option<Key>, usize> {
    if cols
        .iter()
        .all(|&c| matches!(tuple.get(c), Some(TupleColumn::Null)))
    {
        return Ok(None);
    }
    extract(tuple, cols).map(Some)
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
                two_way: None,
                depends: Vec::new(),
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
                two_way: None,
                depends: Vec::new(),
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
                    two_way: None,
                    depends: Vec::new(),
                },
                MirrorSource {
                    source_oid: 11,
                    key_columns: vec!["id".into()],
                    two_way: None,
                    depends: Vec::new(),
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

    /// users(id, name, is_active, status): status = f(is_active), is_active = g(status).
    fn two_way_users(defaults: (Option<&str>, Option<&str>)) -> TxnAssembler {
        TxnAssembler::new(
            vec![MirrorSource {
                source_oid: 10,
                key_columns: vec!["id".into()],
                two_way: Some(TwoWaySource {
                    forward_signal: vec!["is_active".into()],
                    reverse_signal: vec!["status".into()],
                    old_shape: vec![("is_active".into(), defaults.0.map(String::from))],
                    new_shape: vec![("status".into(), defaults.1.map(String::from))],
                    rows: false,
                    target: None,
                }),
                depends: Vec::new(),
            }],
            "w",
            1000,
        )
    }

    fn full_update(old: &[TupleColumn], new: &[TupleColumn]) -> LogicalMessage {
        LogicalMessage::Update(Update {
            xid: None,
            relid: 10,
            old_tuple: Some(OldTuple::Full(old.to_vec())),
            new_tuple: new.to_vec(),
        })
    }

    fn insert(relid: u32, new: &[TupleColumn]) -> LogicalMessage {
        LogicalMessage::Insert(Insert {
            xid: None,
            relid,
            new_tuple: new.to_vec(),
        })
    }

    fn dirs_of(a: &mut TxnAssembler, changes: Vec<LogicalMessage>) -> HashMap<Key, Dir> {
        let mut msgs = vec![begin(1), rel(10, &["id", "name", "is_active", "status"])];
        msgs.extend(changes);
        msgs.push(commit(9));
        committed(a, msgs).mirrors[0].dirs.clone()
    }

    /// Direction comes from what a write changed: the old version flipping
    /// `is_active` recomputes `status`, the new version setting `status`
    /// recomputes `is_active`, a write to `name` alone recomputes nothing.
    #[test]
    fn two_way_direction_from_the_columns_an_update_changed() {
        let row =
            |name: &str, active: &str, status: &str| vec![t("1"), t(name), t(active), t(status)];
        let mut a = two_way_users((None, None));
        let d = dirs_of(
            &mut a,
            vec![full_update(
                &row("a", "t", "active"),
                &row("a", "f", "active"),
            )],
        );
        assert_eq!(d.get(&key(&["1"])), Some(&Dir::Forward));
        let d = dirs_of(
            &mut a,
            vec![full_update(
                &row("a", "t", "active"),
                &row("a", "t", "paused"),
            )],
        );
        assert_eq!(d.get(&key(&["1"])), Some(&Dir::Reverse));
        let d = dirs_of(
            &mut a,
            vec![full_update(
                &row("a", "t", "active"),
                &row("b", "t", "active"),
            )],
        );
        assert!(
            d.is_empty(),
            "a write to name alone recomputes nothing: {d:?}"
        );
        let d = dirs_of(
            &mut a,
            vec![full_update(
                &row("a", "t", "active"),
                &row("a", "f", "disabled"),
            )],
        );
        assert_eq!(d.get(&key(&["1"])), Some(&Dir::Both));
        // An unchanged TOASTed status did not change.
        let d = dirs_of(
            &mut a,
            vec![full_update(
                &row("a", "t", "active"),
                &[t("1"), t("a"), t("f"), TupleColumn::UnchangedToast],
            )],
        );
        assert_eq!(d.get(&key(&["1"])), Some(&Dir::Forward));
        // Within a transaction the last write decides (as a row trigger would).
        let d = dirs_of(
            &mut a,
            vec![
                full_update(&row("a", "t", "active"), &row("a", "f", "active")),
                full_update(&row("a", "f", "active"), &row("a", "f", "paused")),
            ],
        );
        assert_eq!(d.get(&key(&["1"])), Some(&Dir::Reverse));
    }

    #[test]
    fn two_way_update_without_the_old_row_is_refused() {
        let mut a = two_way_users((None, None));
        a.feed(begin(1)).unwrap();
        a.feed(rel(10, &["id", "name", "is_active", "status"]))
            .unwrap();
        let e = a
            .feed(LogicalMessage::Update(Update {
                xid: None,
                relid: 10,
                old_tuple: None,
                new_tuple: vec![t("1"), t("a"), t("t"), t("active")],
            }))
            .unwrap_err();
        assert!(e.to_string().contains("REPLICA IDENTITY FULL"), "{e}");
    }

    /// An insert that sets only one shape's columns is mirrored into the
    /// other; a column left at its constant default counts as unset.
    #[test]
    fn two_way_insert_direction_from_the_shape_it_set() {
        let n = TupleColumn::Null;
        let mut a = two_way_users((None, None));
        let one = |a: &mut TxnAssembler, active: TupleColumn, status: TupleColumn| {
            dirs_of(a, vec![insert(10, &[t("1"), t("a"), active, status])])[&key(&["1"])]
        };
        assert_eq!(one(&mut a, t("t"), n.clone()), Dir::Forward);
        assert_eq!(one(&mut a, n.clone(), t("paused")), Dir::Reverse);
        assert_eq!(one(&mut a, t("t"), t("paused")), Dir::Both);
        assert_eq!(one(&mut a, n.clone(), n.clone()), Dir::Forward);
        // is_active DEFAULT true: the new version's insert leaves it at `t`.
        let mut a = two_way_users((Some("t"), None));
        assert_eq!(one(&mut a, t("t"), t("paused")), Dir::Reverse);
        assert_eq!(one(&mut a, t("f"), n.clone()), Dir::Forward);
        assert_eq!(one(&mut a, t("f"), t("paused")), Dir::Both);
    }

    /// orders(id, note, items) -> order_items(order_id, line_no): a write of
    /// the target is the new version's, for the key its owner holds.
    fn two_way_orders() -> TxnAssembler {
        TxnAssembler::new(
            vec![MirrorSource {
                source_oid: 10,
                key_columns: vec!["id".into()],
                two_way: Some(TwoWaySource {
                    forward_signal: vec!["items".into()],
                    reverse_signal: vec![],
                    old_shape: vec![("items".into(), None)],
                    new_shape: vec![],
                    rows: true,
                    target: Some((20, vec!["order_id".into()])),
                }),
                depends: Vec::new(),
            }],
            "w",
            1000,
        )
    }

    #[test]
    fn two_way_rows_target_writes_go_back_to_their_owner() {
        let mut a = two_way_orders();
        let mut msgs = vec![
            begin(1),
            rel(10, &["id", "note", "items"]),
            rel(20, &["order_id", "line_no", "sku"]),
        ];
        // The new version inserts an order without items, then its lines.
        msgs.push(insert(10, &[t("1"), t("n"), TupleColumn::Null]));
        msgs.push(insert(20, &[t("1"), t("1"), t("a")]));
        // The old version inserts an order with items.
        msgs.push(insert(10, &[t("2"), t("n"), t("[]")]));
        // A line moves from order 3 to order 4.
        msgs.push(LogicalMessage::Update(Update {
            xid: None,
            relid: 20,
            old_tuple: Some(OldTuple::Key(vec![t("3"), t("1"), TupleColumn::Null])),
            new_tuple: vec![t("4"), t("1"), t("a")],
        }));
        // A line of no key of this mirror.
        msgs.push(insert(20, &[TupleColumn::Null, t("1"), t("a")]));
        // An order's note alone changes nothing; its items do.
        msgs.push(full_update(
            &[t("5"), t("a"), t("[]")],
            &[t("5"), t("b"), t("[]")],
        ));
        msgs.push(full_update(
            &[t("6"), t("a"), t("[]")],
            &[t("6"), t("a"), t("[1]")],
        ));
        // Deleting an order removes its lines (forward).
        msgs.push(LogicalMessage::Delete(Delete {
            xid: None,
            relid: 10,
            old_tuple: OldTuple::Full(vec![t("7"), t("a"), t("[]")]),
        }));
        msgs.push(commit(9));
        let c = committed(&mut a, msgs);
        let want: HashMap<Key, Dir> = [
            (key(&["1"]), Dir::Reverse),
            (key(&["2"]), Dir::Forward),
            (key(&["3"]), Dir::Reverse),
            (key(&["4"]), Dir::Reverse),
            (key(&["6"]), Dir::Forward),
            (key(&["7"]), Dir::Forward),
        ]
        .into();
        assert_eq!(c.mirrors[0].dirs, want);
    }

    #[test]
    fn two_way_target_truncate_supersedes_earlier_writes() {
        let mut a = two_way_orders();
        let c = committed(
            &mut a,
            vec![
                begin(1),
                rel(10, &["id", "note", "items"]),
                rel(20, &["order_id", "line_no", "sku"]),
                insert(20, &[t("1"), t("1"), t("a")]),
                LogicalMessage::Truncate(Truncate {
                    xid: None,
                    options: 0,
                    relids: vec![20],
                }),
                insert(20, &[t("2"), t("1"), t("a")]),
                commit(9),
            ],
        );
        let m = &c.mirrors[0];
        assert!(m.target_truncated && !m.truncated);
        assert_eq!(m.dirs, [(key(&["2"]), Dir::Reverse)].into());
    }

    /// Writes of one key in opposite directions, merged before walshift
    /// reconciled the first, are conflicts; the later write decides.
    #[test]
    fn merging_opposite_writes_counts_conflicts() {
        let k = key(&["1"]);
        let mut m = MirrorKeys::default();
        m.set_dir(k.clone(), Dir::Forward);
        let mut later = MirrorKeys::default();
        later.set_dir(k.clone(), Dir::Reverse);
        later.set_dir(key(&["2"]), Dir::Forward);
        m.merge(later, 10);
        assert_eq!(m.dirs[&k], Dir::Reverse);
        assert_eq!(m.conflicts.count, 1);
        assert_eq!(m.conflicts.examples, vec![k.clone()]);
        let mut same = MirrorKeys::default();
        same.set_dir(k.clone(), Dir::Reverse);
        same.set_dir(key(&["2"]), Dir::Both);
        m.merge(same, 10);
        assert_eq!(
            m.conflicts.count, 1,
            "same direction or Both is no conflict"
        );
        // Two-way keys never collapse to a whole pass.
        let mut many = MirrorKeys::default();
        for i in 0..20 {
            many.set_dir(key(&[&i.to_string()]), Dir::Forward);
        }
        m.merge(many, 10);
        assert!(!m.overflowed && m.dirs.len() == 20);
    }
}
