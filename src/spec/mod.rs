//! The spec file: what to mirror, how to throttle the backfill, which gates
//! must hold and what to run at cut-over (docs/design.md section 3).
//!
//! ```text
//!  spec.toml ──toml──▶ raw (every field optional, spanned) ──validate──▶ Spec
//!                                                         └─▶ SpecError: one line per problem,
//!                                                             file:line:column: field: what to do
//! ```
//!
//! This module checks only the spec's own shape. Whether the tables, columns,
//! keys and expression types exist and fit is the catalog's job (`check`).
//!
//! Column names (`key`, `owner`, the left side of `set`) are read as SQL
//! identifiers, like table names: `Status` means the column `status`, and
//! `'"Status"'` the column `Status`.

mod check;
mod raw;
#[cfg(test)]
mod tests;
mod units;

use std::fmt;
use std::path::Path;
use std::time::Duration;

use crate::ident::QualifiedName;
use check::Checker;
use raw::RawSpec;
pub use units::{parse_duration, parse_size};

/// Longest `name`: `walshift_` + 40 stays far below the 63 bytes of a slot name.
pub const MAX_NAME_LEN: usize = 40;

/// A validated spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    /// The file it was read from, for messages.
    pub file: String,
    pub name: String,
    pub mirrors: Vec<Mirror>,
    pub backfill: BackfillLimits,
    pub gates: Vec<Gate>,
    pub cutover: Cutover,
    pub safety: Safety,
}

/// One `[[mirror]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Mirror {
    /// 1-based position among the `[[mirror]]` tables, as messages name it.
    pub number: usize,
    /// Line of its `[[mirror]]` header.
    pub line: usize,
    pub source: QualifiedName,
    /// `None`: the source's primary key.
    pub key: Option<Vec<String>>,
    pub mode: MirrorMode,
    /// The way back: `Some` makes the mirror two-way (both shapes writable,
    /// for the rolling deploy); `None` mirrors old -> new only.
    pub reverse: Option<Reverse>,
    /// Other tables the mapping reads, whose changes make source rows dirty.
    pub depends: Vec<Depends>,
}

/// `depends = [{ table = "public.users", columns = ["user_id"] }]`: the
/// mapping reads `table`, and the source's `columns` hold the key of the
/// `table` row each source row reads. A change to a row of `table` makes
/// every source row whose `columns` hold its key dirty.
#[derive(Clone, Debug, PartialEq)]
pub struct Depends {
    pub table: QualifiedName,
    /// Source columns, in the order of `table`'s key columns.
    pub columns: Vec<String>,
}

/// How the old shape is computed from the new one in a two-way mirror.
#[derive(Clone, Debug, PartialEq)]
pub enum Reverse {
    /// `reverse = { column = "expression" }`: columns of the source row (the
    /// old shape), sorted by column. In set mode the expressions read the
    /// row's new columns; in rows mode they read the key's target rows with
    /// a subquery (`src` is the source row).
    Columns(Vec<(String, String)>),
    /// `reverse_select`, rows mode: the source row a target row stands for,
    /// for table splits where the new version inserts into the target and
    /// the old table must receive the row. It runs once per target row,
    /// which it names `tgt`; its output columns are source columns and must
    /// include the key.
    Rows { select: String },
}

impl Mirror {
    pub fn is_two_way(&self) -> bool {
        self.reverse.is_some()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum MirrorMode {
    /// Same-row columns: `(column, expression)`, sorted by column.
    Set { columns: Vec<(String, String)> },
    /// A new table: `select` yields the target rows of one source row `src`;
    /// `owner` are the target columns holding the source key, in key order.
    Rows {
        target: QualifiedName,
        owner: Vec<String>,
        select: String,
    },
}

/// `[backfill]`: when history copying pauses and how big a chunk is.
#[derive(Clone, Debug, PartialEq)]
pub struct BackfillLimits {
    /// Pause while any standby's replay lag is above this. Default 5s.
    pub max_replica_lag: Duration,
    /// Pause while any standby is this many bytes of WAL behind.
    pub max_replica_lag_bytes: Option<u64>,
    /// Pause while other replication slots retain more WAL than this.
    pub max_retained_wal: Option<u64>,
    /// Pause while walshift's own live apply lags more than this, so history
    /// never starves live changes. Default 5s.
    pub max_apply_lag: Duration,
    pub throttle_query: Option<ThrottleQuery>,
    pub max_rows_per_second: Option<u64>,
    /// Chunk size adapts so one chunk statement takes about this long. Default 200ms.
    pub chunk_target_time: Duration,
    /// Default 100.
    pub min_chunk_rows: u64,
    /// Default 50000.
    pub max_chunk_rows: u64,
}

/// The operator's own throttle: pause while `sql` returns more than `max`.
#[derive(Clone, Debug, PartialEq)]
pub struct ThrottleQuery {
    pub sql: String,
    pub max: f64,
}

/// A `[[gate]]`: a query that must return true before `verify` passes and
/// inside the cut-over transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gate {
    pub name: String,
    pub sql: String,
}

/// `[cutover]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cutover {
    /// Run in the cut-over transaction; `None` only freezes, drains and checks.
    pub sql: Option<String>,
    /// How long to wait for the source locks before backing off. Default 200ms.
    pub lock_timeout: Duration,
    /// Default 10.
    pub max_attempts: u32,
}

impl Default for BackfillLimits {
    fn default() -> Self {
        BackfillLimits {
            max_replica_lag: Duration::from_secs(5),
            max_replica_lag_bytes: None,
            max_retained_wal: None,
            max_apply_lag: Duration::from_secs(5),
            throttle_query: None,
            max_rows_per_second: None,
            chunk_target_time: Duration::from_millis(200),
            min_chunk_rows: 100,
            max_chunk_rows: 50_000,
        }
    }
}

/// `[safety]`: what a forgotten sidecar may cost the database.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Safety {
    /// WAL walshift's slot may retain. `run` warns from 80% of it on.
    pub max_retained_wal: Option<u64>,
    pub on_max_retained_wal: OnMaxRetainedWal,
    pub on_slot_lost: OnSlotLost,
}

/// What `run` does when its slot is gone or invalidated (docs/design.md,
/// "Lost slots").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnSlotLost {
    /// Drop what is left of the slot, create a new one, then recompute every
    /// key (a backfill from scratch).
    #[default]
    Resync,
    /// Stop with an error, leaving the slot and the state as they are.
    Stop,
}

/// What `run` does when its slot retains more than `max_retained_wal`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnMaxRetainedWal {
    /// Keep going, warning every minute.
    #[default]
    Warn,
    /// Stop and drop the slot, releasing the WAL. The migration's backfill
    /// starts over on the next `run`.
    DropSlot,
}

impl Default for Cutover {
    fn default() -> Self {
        Cutover {
            sql: None,
            lock_timeout: Duration::from_millis(200),
            max_attempts: 10,
        }
    }
}

/// The name walshift gives its replication slot, publication and replication
/// origin for spec `name`: `walshift_` + name with `-` as `_` (slot names allow
/// only `[a-z0-9_]`). Note that `a-b` and `a_b` therefore share objects.
pub fn object_name(spec_name: &str) -> String {
    format!("walshift_{}", spec_name.replace('-', "_"))
}

impl Spec {
    /// Read and validate a spec file.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Spec, SpecError> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            file: file.clone(),
            source,
        })?;
        Spec::from_str_named(&text, &file)
    }

    /// Validate spec text; `file_name` is only used in messages.
    pub fn from_str_named(text: &str, file_name: &str) -> Result<Spec, SpecError> {
        let mut checker = Checker {
            text,
            problems: Vec::new(),
        };
        let spec = match toml::from_str::<RawSpec>(text) {
            Ok(raw) => checker.spec(raw, file_name),
            Err(err) => {
                // toml's messages may span lines ("invalid string\nexpected ...").
                let message = err.message().trim().replace('\n', "; ");
                match err.span() {
                    Some(span) => checker.at(span, message),
                    None => checker.nowhere(message),
                }
                None
            }
        };
        match spec {
            Some(spec) if checker.problems.is_empty() => Ok(spec),
            _ => Err(SpecError::Invalid {
                file: file_name.to_string(),
                problems: checker.problems,
            }),
        }
    }

    /// A fingerprint of what a cut-over depends on: the name, the mirrors,
    /// the gates and `[cutover]` (not the file's path, not `[backfill]` or
    /// `[safety]`). A cut-over request carries it, and the running walshift
    /// refuses one made with another spec than the one it loaded.
    pub fn cutover_digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let canonical = format!(
            "{:?}\n{:?}\n{:?}\n{:?}",
            self.name, self.mirrors, self.gates, self.cutover
        );
        Sha256::digest(canonical.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The logical replication slot: `walshift_<name>`.
    pub fn slot_name(&self) -> String {
        object_name(&self.name)
    }

    /// The publication listing the sources: `walshift_<name>`.
    pub fn publication_name(&self) -> String {
        object_name(&self.name)
    }

    /// The replication origin of walshift's own writes: `walshift_<name>`.
    pub fn origin_name(&self) -> String {
        object_name(&self.name)
    }
}

/// A spec that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{file}: cannot read the spec: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render_problems(file, problems))]
    Invalid {
        file: String,
        problems: Vec<FieldProblem>,
    },
}

/// One thing wrong with the spec, with where it is (1-based line and column,
/// in characters) when that is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldProblem {
    pub at: Option<(usize, usize)>,
    pub message: String,
}

fn render_problems(file: &str, problems: &[FieldProblem]) -> String {
    let lines: Vec<String> = problems
        .iter()
        .map(|p| match p.at {
            Some((line, column)) => format!("{file}:{line}:{column}: {}", p.message),
            None => format!("{file}: {}", p.message),
        })
        .collect();
    lines.join("\n")
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, column)) => write!(f, "{line}:{column}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}
