//! Introspection of the live database, and every check `walshift check` runs
//! before `run` touches anything (docs/design.md, section 2, step 3).
//!
//! ```text
//!  Spec ─▶ server: version, wal_level, free slot and WAL sender, role ──────────┐
//!     └──▶ per mirror: source table ─▶ key ─▶ replica identity                  │
//!                       ├─ set:  columns ─▶ types ─▶ each expression (prepare)   ├─▶ problems
//!                       └─ rows: target ─▶ owner + index ─▶ select (describe)    │   (one line each)
//!                                ─▶ output columns ─▶ types ─▶ assignability    │
//!                       ─▶ SetPlan / RowsPlan ─▶ every generated statement      │
//!                          prepared by Postgres ────────────────────────────────┘
//!                       ─▶ row estimate                          └─▶ Plan (no problems)
//! ```
//!
//! The catalog answers the structural questions (does it exist, is it unique,
//! may this role write it); Postgres itself answers every question about SQL
//! (does the expression compile, is its type assignable, does a type have
//! equality) by preparing statements, so the answers are the server's own and
//! not a re-implementation of its type rules.
//!
//! `check` creates nothing: it runs in one READ ONLY transaction that is
//! rolled back (see [`session`]), prepares but never executes, and closes
//! every statement it prepared. A refused statement is a [`Problem`]; `Err`
//! means only that the connection failed.
//!
//! Checks that depend on an earlier one are skipped when it failed (no
//! replica-identity verdict for a key that could not be resolved, no
//! expression compile against a missing column), so each mistake is reported
//! once, in the place the operator has to fix it.

mod depends;
mod mirror;
mod privileges;
mod probe;
mod relation;
mod render;
mod rows;
mod server;
pub use server::{COLUMN_LISTS_SINCE, ORIGIN_OPTION_SINCE, OTHER_ORIGINS};
mod session;
mod set;
mod source;
#[cfg(test)]
mod tests;
mod twoway;

use std::collections::HashMap;
use std::fmt;

use tokio_postgres::{Client, Error};

use crate::ident::{QualifiedName, quote_ident};
use crate::mirror::sql::{KeyColumn, RowsPlan, SetPlan};
use crate::spec::Spec;
use privileges::Grants;
use relation::TableInfo;
use session::{CheckTransaction, Refusal};

/// What `run` will do, resolved against the live database.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub mirrors: Vec<MirrorPlan>,
    pub server_version_num: u32,
    /// Decisions the operator should know about, e.g. `mirror #2
    /// (public.order_items): no unique key covered by the select;
    /// replace-by-owner`.
    pub notes: Vec<String>,
    /// Things that will not stop `run` but may make a target wrong, e.g. a
    /// table the mapping reads without a `depends`. `run` logs them too.
    pub warnings: Vec<String>,
}

/// One mirror of the spec, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct MirrorPlan {
    /// The spec's mirror number (1-based).
    pub number: usize,
    pub source: QualifiedName,
    pub source_oid: u32,
    /// The source key (primary key, or the spec's `key`) with `format_type` names.
    pub key: Vec<KeyColumn>,
    pub kind: MirrorKind,
    /// `pg_class.reltuples` (summed over partitions), an exact count for a
    /// small never-analyzed table, or -1 when unknown.
    pub estimated_rows: i64,
    /// `pg_class.relreplident` of the source: `d`, `f` or `i`.
    pub replica_identity: char,
    /// The way back, for a two-way mirror.
    pub two_way: Option<TwoWayPlan>,
    /// Other tables the mapping reads (`depends`).
    pub depends: Vec<DependPlan>,
}

/// A table a mapping reads, and which source rows read each of its rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DependPlan {
    pub table: QualifiedName,
    pub table_oid: u32,
    /// Its primary key, with `format_type` names.
    pub key: Vec<KeyColumn>,
    /// The source columns holding that key, in key order, of the same types.
    pub refs: Vec<KeyColumn>,
}

impl MirrorPlan {
    /// What the mirror does, for messages: `public.users set status` or
    /// `public.orders -> public.order_items`.
    pub fn describe(&self) -> String {
        match &self.kind {
            MirrorKind::Set(p) => {
                let cols: Vec<&str> = p.set.iter().map(|(c, _)| c.as_str()).collect();
                format!("{} set {}", self.source, cols.join(", "))
            }
            MirrorKind::Rows(p) => format!("{} -> {}", self.source, p.target),
        }
    }

    pub fn is_two_way(&self) -> bool {
        self.two_way.is_some()
    }

    /// The tables the application writes for this mirror, whose changes the
    /// stream must carry: the source, a two-way rows mirror's target (the new
    /// version's writes) and the tables the mapping depends on.
    pub fn published(&self) -> Vec<QualifiedName> {
        let mut out = vec![self.source.clone()];
        if let (Some(_), MirrorKind::Rows(p)) = (&self.two_way, &self.kind) {
            out.push(p.target.clone());
        }
        out.extend(self.depends.iter().map(|d| d.table.clone()));
        out
    }
}

/// A two-way mirror's way back, and how the stream tells which version
/// wrote (see [`crate::mirror::txn`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TwoWayPlan {
    pub reverse: ReversePlan,
    /// Source columns only the forward mapping reads: an update changing one
    /// of them is the old version's write, and recomputes the new shape.
    pub forward_signal: Vec<String>,
    /// Source columns only the reverse mapping reads: an update changing one
    /// of them is the new version's write, and recomputes the old shape. (In
    /// rows mode the new version's writes are the target's changes.)
    pub reverse_signal: Vec<String>,
    /// Source columns of the old shape (what `reverse` computes) and of the
    /// new shape (set mode: what `set` computes): an insert that leaves one
    /// shape unset is mirrored from the other.
    pub old_shape: Vec<ShapeColumn>,
    pub new_shape: Vec<ShapeColumn>,
    /// Rows mode: the target, whose changes are the new version's writes.
    pub target_oid: Option<u32>,
}

/// How the old shape is computed from the new one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReversePlan {
    /// Columns of the source, from the row's new columns (set mode) or its
    /// target rows (rows mode).
    Columns(SetPlan),
    /// A table split's way back: source rows upserted from target rows.
    Rows(RowsPlan),
}

/// A source column of one shape, and what an insert that does not set it
/// leaves there besides NULL: its default, when that is a constant, as the
/// text the WAL carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShapeColumn {
    pub name: String,
    pub default: Option<String>,
}

/// The SQL generation plan of a mirror; both have passed their `check()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MirrorKind {
    Set(SetPlan),
    Rows(RowsPlan),
}

/// One thing that would stop `run` or make it wrong: what is wrong and what
/// to do, on one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// What it is about: `wal_level`, `role app`, `mirror #1 (public.users)`.
    pub object: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}

/// The outcome of [`check`]: every problem found, and the plan when there are none.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckReport {
    pub problems: Vec<Problem>,
    /// `Some` exactly when `problems` is empty.
    pub plan: Option<Plan>,
}

/// Check `spec` against the database `client` is connected to, collecting
/// every problem rather than stopping at the first. `client` must be idle
/// (not inside a transaction); `check` leaves it as it found it.
pub async fn check(client: &Client, spec: &Spec) -> Result<CheckReport, Error> {
    let session = CheckTransaction::begin(client).await?;
    let outcome = run(&session, spec).await;
    // End the transaction even when a check failed; a lost connection is the
    // error to report either way.
    let ended = session.end().await;
    let report = outcome?;
    ended?;
    Ok(report)
}

async fn run(session: &CheckTransaction<'_>, spec: &Spec) -> Result<CheckReport, Error> {
    let mut ctx = Ctx::new(session);
    let server = server::check(&mut ctx, spec).await?;
    let mut mirrors = Vec::new();
    for m in &spec.mirrors {
        if let Some(plan) = mirror::check(&mut ctx, m, server.as_ref()).await? {
            mirrors.push(plan);
        }
    }
    if let Some(problem) = ctx.grants.problem() {
        ctx.problems.push(problem);
    }
    if ctx.problems.is_empty()
        && let Some(server) = server
    {
        if let Some(note) = render::eta_note(&mirrors, spec.backfill.max_rows_per_second) {
            ctx.notes.push(note);
        }
        return Ok(CheckReport {
            problems: Vec::new(),
            plan: Some(Plan {
                mirrors,
                server_version_num: server.version_num,
                notes: ctx.notes,
                warnings: ctx.warnings,
            }),
        });
    }
    Ok(CheckReport {
        problems: ctx.problems,
        plan: None,
    })
}

/// A catalog lookup of a table by name.
enum Lookup {
    Found(Box<TableInfo>),
    Missing,
    /// The catalog query itself was refused; already reported.
    Failed,
}

/// What the checks share: the session, the problems and notes so far, the
/// privileges the role lacks (reported together, as one line), and the
/// answers of type probes (many columns share a type).
struct Ctx<'a> {
    session: &'a CheckTransaction<'a>,
    problems: Vec<Problem>,
    notes: Vec<String>,
    warnings: Vec<String>,
    grants: Grants,
    type_probes: HashMap<String, Option<Refusal>>,
}

impl<'a> Ctx<'a> {
    fn new(session: &'a CheckTransaction<'a>) -> Self {
        Ctx {
            session,
            problems: Vec::new(),
            notes: Vec::new(),
            warnings: Vec::new(),
            grants: Grants::default(),
            type_probes: HashMap::new(),
        }
    }

    fn problem(&mut self, object: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            object: object.to_string(),
            message: message.into(),
        });
    }

    /// A query of walshift's own was refused: not the operator's mistake,
    /// but nothing after it can be trusted either. (Reading partitions locks
    /// them, so a lock held elsewhere can be the reason.)
    fn query_failed(&mut self, what: &str, refusal: &Refusal) {
        let label = "catalog";
        self.refused(label, refusal, || {
            format!(
                "reading {what} failed: {}; check that the role can read pg_catalog, and report \
                 this if it persists",
                refusal.describe(None)
            )
        });
    }

    async fn relation(&mut self, name: &QualifiedName) -> Result<Lookup, Error> {
        Ok(match relation::load(self.session, name).await? {
            Ok(Some(rel)) => Lookup::Found(Box::new(rel)),
            Ok(None) => Lookup::Missing,
            Err(refusal) => {
                self.query_failed(&format!("the catalog entry of {}", pretty(name)), &refusal);
                Lookup::Failed
            }
        })
    }
}

/// A table name as the operator would write it: parts bare when they are
/// plain lower-case identifiers, quoted otherwise. For labels only; SQL in
/// fixes uses names Postgres quoted ([`Relation::display`]).
fn pretty(name: &QualifiedName) -> String {
    format!(
        "{}.{}",
        pretty_ident(&name.schema),
        pretty_ident(&name.name)
    )
}

fn pretty_ident(name: &str) -> String {
    let mut chars = name.chars();
    let plain = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        quote_ident(name)
    }
}
