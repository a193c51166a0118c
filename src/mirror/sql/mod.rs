//! SQL text for the "dirty keys, recomputed from current state" engine
//! (docs/design.md section 4). Pure: plans in, statement text out; nothing here
//! talks to a server.
//!
//! ```text
//!  catalog ──▶ SetPlan / RowsPlan ──▶ set_apply / rows_apply ──▶ Statement { sql, params }
//!                                     chunk_upper_bound           │
//!                                     *_verify, rows_truncate     ▼
//!                                                  applier binds params in `params` order
//! ```
//!
//! # Conventions every statement follows
//!
//! - **Keys travel as text.** A batch binds one `text[]` per key column
//!   ([`Param::KeyArray`]), a range binds one `text` per key column and bound
//!   ([`Param::Lower`], [`Param::Upper`]); Postgres casts them with
//!   `$1::text[]::bigint[]` / `$1::text::bigint`. Every parameter is first cast
//!   to `text`, so one parameter can be cast to the key type in one place and
//!   to the owner type in another without "inconsistent types deduced". The
//!   text form is the one Postgres prints (pgoutput, or `k::text`), so the
//!   sessions that read keys and the ones that apply them must share
//!   `DateStyle`, `IntervalStyle`, `TimeZone` and `extra_float_digits`.
//! - **Ranges are `lower < key <= upper`** in the key's own btree order, as
//!   the row comparison `(k1, k2) > (l1, l2)`; either bound may be absent.
//! - **Nothing is written that would not change.** Every UPDATE carries
//!   `IS DISTINCT FROM`, every INSERT skips rows already present, so a
//!   recompute of an up-to-date key writes no row version and no WAL (I5).
//! - **Every name is quoted** ([`quote_ident`]); aliases and CTE columns are
//!   generated (`src`, `m`, `c1`, `k1`, ...) and never clash with user names.
//!   Inside the operator's SQL the source row is `src`.
//! - User SQL is embedded verbatim, each fragment closed on a new line when it
//!   may end in a `--` comment, so a comment cannot swallow our `)`.
//!
//! Equality caveat: `IS DISTINCT FROM`, `=` and `PARTITION BY` need equality
//! and ordering operators, so mirrored columns of types without them (`json`,
//! `xml`, `point`) must be rejected by the catalog check (use `jsonb`).

pub mod evaluate;
mod rows;
pub mod scan;
mod verify;

pub use crate::ident::{QualifiedName, quote_ident, quote_literal};
pub use rows::{reverse_rows_select, rows_apply, rows_apply_excluding, rows_truncate};
pub use verify::{
    VerifyOutput, rows_owner_mismatch, rows_verify, rows_verify_two_way, set_verify,
    set_verify_two_way,
};

/// A key (or owner) column and its type as `format_type()` prints it, e.g.
/// `bigint`, `character varying(20)`, `"My Schema"."My Type"`. The type name
/// is pasted into casts (`::text[]::<type>[]`) and must not be an array type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyColumn {
    pub name: String,
    pub type_name: String,
}

impl KeyColumn {
    pub fn new(name: impl Into<String>, type_name: impl Into<String>) -> Self {
        KeyColumn {
            name: name.into(),
            type_name: type_name.into(),
        }
    }
}

/// A resolved set-mode mirror: `set` columns of `source` computed from the
/// same row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetPlan {
    pub source: QualifiedName,
    pub key: Vec<KeyColumn>,
    /// `(column, expression)`.
    pub set: Vec<(String, String)>,
}

/// A resolved rows-mode mirror: `select` yields the `target` rows of each
/// source row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowsPlan {
    pub source: QualifiedName,
    pub key: Vec<KeyColumn>,
    pub target: QualifiedName,
    /// Target columns holding the source key, in key order, with their
    /// (target) types. They must order like the key (same type and collation),
    /// since key ranges are applied to them.
    pub owner: Vec<KeyColumn>,
    /// Output columns of the select, in order (target column names).
    pub columns: Vec<String>,
    /// A unique (ideally primary-key, NOT NULL) column set of the target that
    /// `columns` covers; `None` = replace-by-owner.
    pub conflict_key: Option<Vec<String>>,
    pub select: String,
    /// Only target rows for which this rows-mode select, run on the target
    /// row as `src`, yields a row belong to the plan; `None`: every row whose
    /// owner columns hold a key of the scope. The way back of a table split
    /// owns only the old table's rows of its own kind (its forward select).
    pub owned_if: Option<String>,
}

/// Keys a range statement leaves alone: those listed for the mirror in
/// walshift's key table (`walshift.keys`), which another step decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Excluded {
    pub spec: String,
    /// The mirror's number in the spec.
    pub mirror: usize,
}

impl Excluded {
    /// `NOT EXISTS (...)`: the key held by `columns` of `alias` (as text,
    /// the form keys are stored in) is not listed.
    fn condition(&self, alias: &str, columns: &[KeyColumn]) -> String {
        let texts: Vec<String> = columns
            .iter()
            .map(|c| format!("{}::text", col(alias, &c.name)))
            .collect();
        // Generated inside a batch statement, so made here; see crate::state::keys.
        format!(
            "NOT EXISTS (SELECT FROM walshift.keys AS w WHERE w.name = {} AND w.mirror = {} AND w.key = ARRAY[{}])",
            quote_literal(&self.spec),
            self.mirror,
            texts.join(", ")
        )
    }
}

/// What a batch statement covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The keys in the `text[]` parameters ([`Param::KeyArray`]).
    Keys,
    /// `lower < key <= upper`; an absent bound is open. `{ lower: false,
    /// upper: false }` is the whole table.
    Range { lower: bool, upper: bool },
}

/// One parameter of a [`Statement`], in `$1, $2, ...` order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    /// `text[]`: the batch's values of key column `i` as text. All arrays have
    /// the same length; element `j` of each forms key `j`.
    KeyArray(usize),
    /// `text`: key column `i` of the exclusive lower bound.
    Lower(usize),
    /// `text`: key column `i` of the inclusive upper bound.
    Upper(usize),
    /// `bigint`: how many rows the chunk should hold (at least 1).
    ChunkRows,
    /// `bigint`: return at most this many keys.
    Limit,
}

impl Param {
    /// The type the statement text gives the parameter (its first cast), for
    /// typed execution without a prepare round trip.
    pub fn pg_type(self) -> tokio_postgres::types::Type {
        use tokio_postgres::types::Type;
        match self {
            Param::KeyArray(_) => Type::TEXT_ARRAY,
            Param::Lower(_) | Param::Upper(_) => Type::TEXT,
            Param::ChunkRows | Param::Limit => Type::INT8,
        }
    }
}

/// Statement text and what to bind to its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<Param>,
}

/// A plan that would generate broken SQL. The catalog builds plans from the
/// live database and runs [`SetPlan::check`] / [`RowsPlan::check`]; the
/// generators assume a checked plan.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the key has no columns")]
    EmptyKey,
    #[error("set has no columns")]
    EmptySet,
    #[error("column {0:?} is listed twice")]
    DuplicateColumn(String),
    #[error("set writes key column {0:?}")]
    WritesKey(String),
    #[error("owner has {owner} column(s) but the key has {key}")]
    OwnerLength { owner: usize, key: usize },
    #[error("owner column {0:?} is not an output column of the select")]
    OwnerNotSelected(String),
    #[error("the select has no output columns")]
    NoColumns,
    #[error("the conflict key has no columns")]
    EmptyConflictKey,
    #[error("conflict key column {0:?} is not an output column of the select")]
    ConflictKeyNotSelected(String),
    #[error("a name contains a NUL character")]
    Nul,
}

impl SetPlan {
    pub fn check(&self) -> Result<(), PlanError> {
        check_key(&self.key)?;
        if self.set.is_empty() {
            return Err(PlanError::EmptySet);
        }
        let columns: Vec<&str> = self.set.iter().map(|(c, _)| c.as_str()).collect();
        check_distinct(&columns)?;
        if let Some(k) = self.key.iter().find(|k| columns.contains(&k.name.as_str())) {
            return Err(PlanError::WritesKey(k.name.clone()));
        }
        Ok(())
    }
}

impl RowsPlan {
    pub fn check(&self) -> Result<(), PlanError> {
        check_key(&self.key)?;
        if self.owner.len() != self.key.len() {
            return Err(PlanError::OwnerLength {
                owner: self.owner.len(),
                key: self.key.len(),
            });
        }
        if self.columns.is_empty() {
            return Err(PlanError::NoColumns);
        }
        let columns: Vec<&str> = self.columns.iter().map(String::as_str).collect();
        check_distinct(&columns)?;
        for o in &self.owner {
            if !self.columns.contains(&o.name) {
                return Err(PlanError::OwnerNotSelected(o.name.clone()));
            }
        }
        if let Some(conflict_key) = &self.conflict_key {
            if conflict_key.is_empty() {
                return Err(PlanError::EmptyConflictKey);
            }
            if let Some(c) = conflict_key.iter().find(|c| !self.columns.contains(c)) {
                return Err(PlanError::ConflictKeyNotSelected(c.clone()));
            }
        }
        Ok(())
    }

    /// `c<i>`: the CTE column holding target column `name`.
    fn column_alias(&self, name: &str) -> String {
        let i = self.columns.iter().position(|c| c == name);
        debug_assert!(i.is_some(), "unchecked plan: {name:?} is not selected");
        format!("c{}", i.map_or(0, |i| i + 1))
    }
}

fn check_key(key: &[KeyColumn]) -> Result<(), PlanError> {
    if key.is_empty() {
        return Err(PlanError::EmptyKey);
    }
    let names: Vec<&str> = key.iter().map(|k| k.name.as_str()).collect();
    check_distinct(&names)
}

fn check_distinct(names: &[&str]) -> Result<(), PlanError> {
    for (i, name) in names.iter().enumerate() {
        if name.contains('\0') {
            return Err(PlanError::Nul);
        }
        if names[..i].contains(name) {
            return Err(PlanError::DuplicateColumn(name.to_string()));
        }
    }
    Ok(())
}

/// Set mode, one batch or one backfill chunk: recompute `set` for the rows in
/// `scope`, writing only rows whose value changes.
///
/// ```sql
/// UPDATE "public"."users" AS src
/// SET "status" = (<expr>)
/// WHERE src."id" = ANY($1::text[]::bigint[])
///   AND src."status" IS DISTINCT FROM (<expr>)
/// ```
///
/// Correctness: under READ COMMITTED a row updated concurrently is re-read
/// (EvalPlanQual) and both the WHERE and the SET are evaluated on its newest
/// version, so the write is "f(row now)". The `IS DISTINCT FROM` repeats the
/// expressions rather than joining a precomputed copy because a self-join
/// would re-check only the target row, not the copy. A key that no longer
/// exists matches nothing: deletes need no statement in set mode.
///
/// Returns no rows; the command tag's row count is the number of rows written.
pub fn set_apply(plan: &SetPlan, scope: Scope) -> Statement {
    set_apply_excluding(plan, scope, None)
}

/// [`set_apply`], leaving alone the keys `excluded` lists.
pub fn set_apply_excluding(plan: &SetPlan, scope: Scope, excluded: Option<&Excluded>) -> Statement {
    debug_assert_eq!(plan.check(), Ok(()));
    let mut params = Vec::new();
    let placed = place(scope, plan.key.len(), &mut params);
    let assignments: Vec<String> = plan
        .set
        .iter()
        .map(|(c, e)| format!("{} = {}", quote_ident(c), fragment(e)))
        .collect();
    let mut conditions = placed.conditions("src", &plan.key);
    conditions.push(set_differs(plan));
    conditions.extend(excluded.map(|e| e.condition("src", &plan.key)));
    let sql = format!(
        "UPDATE {} AS src\nSET {}\nWHERE {}",
        plan.source,
        assignments.join(",\n    "),
        conditions.join("\n  AND ")
    );
    Statement { sql, params }
}

/// `(src.a, src.b) IS DISTINCT FROM ((<e1>), (<e2>))`: true for rows whose
/// stored values are not what the expressions compute now. A one-column list
/// is written without the row constructor: `(x)` alone is just a
/// parenthesized scalar, which compares the same way.
fn set_differs(plan: &SetPlan) -> String {
    let stored: Vec<String> = plan.set.iter().map(|(c, _)| col("src", c)).collect();
    let computed: Vec<String> = plan.set.iter().map(|(_, e)| fragment(e)).collect();
    format!("{} IS DISTINCT FROM {}", row(&stored), row(&computed))
}

/// The exclusive upper bound of the next backfill chunk: the key of the
/// `n`-th row after `lower` (or from the start when `after_lower` is false),
/// in key order.
///
/// ```sql
/// SELECT src."id"::text
/// FROM "public"."users" AS src
/// WHERE src."id" > $1::text::bigint
/// ORDER BY src."id"
/// LIMIT 1 OFFSET ($2::bigint - 1)
/// ```
///
/// Params: `Lower(0..n)` when `after_lower`, then `ChunkRows`. Returns one
/// row of key columns as text, or no row when fewer than `n` rows remain:
/// then the chunk is the last one and runs with no upper bound. Rows inserted
/// past the end while the backfill runs are in the stream (I1), so "the last
/// chunk" needs no second look. `ORDER BY` and the row comparison use the same
/// columns, collations and btree order as the primary key index, which serves
/// both.
pub fn chunk_upper_bound(
    source: &QualifiedName,
    key: &[KeyColumn],
    after_lower: bool,
) -> Statement {
    let mut params = Vec::new();
    let placed = place(
        Scope::Range {
            lower: after_lower,
            upper: false,
        },
        key.len(),
        &mut params,
    );
    params.push(Param::ChunkRows);
    let n = params.len();
    let mut sql = format!("SELECT {}\nFROM {source} AS src\n", key_texts("src", key));
    let conditions = placed.conditions("src", key);
    if !conditions.is_empty() {
        sql.push_str(&format!("WHERE {}\n", conditions.join("\n  AND ")));
    }
    sql.push_str(&format!(
        "ORDER BY {}\nLIMIT 1 OFFSET (${n}::bigint - 1)",
        key_list("src", key)
    ));
    Statement { sql, params }
}

/// The keys of the source rows in a range, in key order, as text: what
/// `verify` splits when the mapping fails on a row of the range.
pub fn range_keys(source: &QualifiedName, key: &[KeyColumn], scope: Scope) -> Statement {
    let mut params = Vec::new();
    let placed = place(scope, key.len(), &mut params);
    let mut sql = format!("SELECT {}\nFROM {source} AS src\n", key_texts("src", key));
    let conditions = placed.conditions("src", key);
    if !conditions.is_empty() {
        sql.push_str(&format!("WHERE {}\n", conditions.join("\n  AND ")));
    }
    sql.push_str(&format!("ORDER BY {}", key_list("src", key)));
    Statement { sql, params }
}

/// The keys of the source rows whose `refs` columns hold one of the given
/// keys of a table the mapping depends on: the rows a change there makes
/// dirty. `refs` carry the dependency key's types (`check` requires the two
/// alike), so the `text[]` parameters cast as the key's values would.
///
/// ```sql
/// SELECT src."id"::text
/// FROM "public"."posts" AS src
/// WHERE src."user_id" = ANY($1::text[]::bigint[])
/// LIMIT $2::bigint
/// ```
///
/// Params: `KeyArray(0..refs)`, then [`Param::Limit`].
pub fn depends_keys(source: &QualifiedName, key: &[KeyColumn], refs: &[KeyColumn]) -> Statement {
    let mut params = Vec::new();
    let placed = place(Scope::Keys, refs.len(), &mut params);
    params.push(Param::Limit);
    let sql = format!(
        "SELECT {}\nFROM {source} AS src\nWHERE {}\nLIMIT ${}::bigint",
        key_texts("src", key),
        placed.conditions("src", refs).join("\n  AND "),
        params.len()
    );
    Statement { sql, params }
}

/// How many source rows lie in `lower < key` (or in the whole table without
/// `after_lower`): the size of a backfill's last chunk, whose upper bound is
/// open, so progress counts rows and not guesses.
///
/// Params: `Lower(0..n)` when `after_lower`. Returns one `bigint`.
pub fn range_count(source: &QualifiedName, key: &[KeyColumn], after_lower: bool) -> Statement {
    let mut params = Vec::new();
    let placed = place(
        Scope::Range {
            lower: after_lower,
            upper: false,
        },
        key.len(),
        &mut params,
    );
    let mut sql = format!("SELECT count(*)\nFROM {source} AS src");
    let conditions = placed.conditions("src", key);
    if !conditions.is_empty() {
        sql.push_str(&format!("\nWHERE {}", conditions.join("\n  AND ")));
    }
    Statement { sql, params }
}

/// Where a scope's parameters landed: `$first` is key column 0.
#[derive(Clone, Copy, Debug)]
enum Placed {
    Keys {
        first: usize,
    },
    Range {
        lower: Option<usize>,
        upper: Option<usize>,
    },
}

/// Append the scope's parameters (see [`Param`]) and say where they are.
fn place(scope: Scope, key_len: usize, params: &mut Vec<Param>) -> Placed {
    let mut block = |make: fn(usize) -> Param| {
        let first = params.len() + 1;
        params.extend((0..key_len).map(make));
        first
    };
    match scope {
        Scope::Keys => Placed::Keys {
            first: block(Param::KeyArray),
        },
        Scope::Range { lower, upper } => Placed::Range {
            lower: lower.then(|| block(Param::Lower)),
            upper: upper.then(|| block(Param::Upper)),
        },
    }
}

impl Placed {
    /// Conditions (to be ANDed) selecting the scope's keys from columns
    /// `columns` of `alias`, the parameters cast to those columns' types. For
    /// the source these are the key columns; for a rows-mode target, the owner
    /// columns, so the same parameters select a source key's target rows.
    fn conditions(&self, alias: &str, columns: &[KeyColumn]) -> Vec<String> {
        let cols: Vec<String> = columns.iter().map(|c| col(alias, &c.name)).collect();
        match *self {
            // One column: `= ANY(array)`, which the planner turns into an
            // index scan over the array. Several: a semi-join against the
            // zipped arrays; IN (not a join) so a key listed twice matches
            // its row once.
            Placed::Keys { first } => {
                let arrays: Vec<String> = columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("${}::text[]::{}[]", first + i, c.type_name))
                    .collect();
                if arrays.len() == 1 {
                    vec![format!("{} = ANY({})", cols[0], arrays[0])]
                } else {
                    vec![format!(
                        "{} IN (SELECT * FROM unnest({}))",
                        row(&cols),
                        arrays.join(", ")
                    )]
                }
            }
            Placed::Range { lower, upper } => {
                let bound = |first: usize| -> String {
                    let values: Vec<String> = columns
                        .iter()
                        .enumerate()
                        .map(|(i, c)| format!("${}::text::{}", first + i, c.type_name))
                        .collect();
                    row(&values)
                };
                let mut out = Vec::new();
                if let Some(first) = lower {
                    out.push(format!("{} > {}", row(&cols), bound(first)));
                }
                if let Some(first) = upper {
                    out.push(format!("{} <= {}", row(&cols), bound(first)));
                }
                out
            }
        }
    }
}

/// `alias."name"`.
fn col(alias: &str, name: &str) -> String {
    format!("{alias}.{}", quote_ident(name))
}

/// `src."a", src."b"`.
fn key_list(alias: &str, key: &[KeyColumn]) -> String {
    let cols: Vec<String> = key.iter().map(|k| col(alias, &k.name)).collect();
    cols.join(", ")
}

/// `src."a"::text, src."b"::text`: keys as the text the engine carries.
fn key_texts(alias: &str, key: &[KeyColumn]) -> String {
    let cols: Vec<String> = key
        .iter()
        .map(|k| format!("{}::text", col(alias, &k.name)))
        .collect();
    cols.join(", ")
}

/// A row constructor for two or more items, the bare item for one: `(x)` and
/// `x` compare alike, and `ROW(x)` would turn a scalar into a record.
fn row(items: &[String]) -> String {
    match items {
        [one] => one.clone(),
        _ => format!("({})", items.join(", ")),
    }
}

/// An operator's expression in parentheses. A trailing `--` comment would
/// swallow the `)`, so a fragment holding `--` is closed on its own line.
fn fragment(expr: &str) -> String {
    if expr.contains("--") {
        format!("({expr}\n)")
    } else {
        format!("({expr})")
    }
}

#[cfg(test)]
mod tests;
