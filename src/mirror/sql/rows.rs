//! Rows mode: make the target rows owned by a set of source keys equal to
//! what the select yields for those keys now, in one statement.
//!
//! ```text
//!  desired  = select over the scope's source rows        (what should exist)
//!  deleted  = owned target rows not in desired           ┐ disjoint, so their order
//!  written  = desired rows not already in the target     ┘ inside the statement is moot
//! ```
//!
//! All three are CTEs of one statement, so they share one snapshot and commit
//! together. `desired` is first, so no CTE name is visible inside the
//! operator's select.
//!
//! Cases the shape is built for:
//! - **A deleted source row** yields no desired rows, so everything it owns
//!   is deleted. A scope key matching no source row means "deleted".
//! - **A source primary-key change** puts the old and the new key in the
//!   batch (pgoutput sends both). The old key yields nothing, so its rows are
//!   deleted, unless the new key yields the same conflict key, in which case
//!   that row is updated in place and its owner columns move to the new key.
//!   Applied in two separate batches the end state is the same.
//! - **A row moving between owners** (conflict key X produced by K2 instead
//!   of K1): recomputing K2 updates X's owner to K2 (owner columns are plain
//!   updatable columns); recomputing K1 only deletes rows still owned by K1,
//!   so the order of the two recomputes does not matter.
//! - **Duplicates in desired.** With a conflict key, two desired rows with
//!   the same conflict key are a mapping that cannot be stored; the INSERT
//!   fails with SQLSTATE 21000 ("ON CONFLICT DO UPDATE command cannot affect
//!   row a second time"), which the engine reports as a mapping error. (An
//!   exact duplicate of a row already stored is skipped before the INSERT and
//!   does not fail.) Without a conflict key, desired and target are compared
//!   as multisets: rows are numbered within groups of identical rows
//!   (`row_number() OVER (PARTITION BY every column)`), so a select yielding a
//!   row twice keeps two copies and one yielding it once leaves one.
//! - **A select yielding rows whose owner columns are not its own source
//!   key** would write rows no recompute of that key ever deletes (and, without
//!   a conflict key, insert them again each time). `desired` keeps only rows
//!   whose owner columns equal the source key as text; `rows_verify` does not
//!   filter, so such a mapping shows up as a difference, and
//!   `rows_owner_mismatch` names the keys.

use super::{Excluded, Placed, RowsPlan, Scope, Statement, col, place, quote_ident, row};

/// Rows mode, one batch or one backfill chunk.
///
/// Params: the scope's ([`super::Param`]); the same parameters select the
/// source rows (cast to the key types) and the owned target rows (cast to the
/// owner types). Returns one row: `deleted bigint, written bigint` (written =
/// inserted + updated).
///
/// With a conflict key:
///
/// ```sql
/// WITH desired AS (<select per scope source row, owner = key>),
/// deleted AS (
///   DELETE FROM <target> AS t
///   WHERE <t owned by scope> AND NOT EXISTS (<desired row with t's conflict key>)
///   RETURNING 1),
/// written AS (
///   INSERT INTO <target> AS t (<columns>)
///   SELECT ... FROM desired AS d
///   WHERE NOT EXISTS (<identical target row>)
///   ON CONFLICT (<conflict key>) DO UPDATE SET <other columns> = EXCLUDED.<...>
///   WHERE (<t columns>) IS DISTINCT FROM (<EXCLUDED columns>)
///   RETURNING 1)
/// SELECT (SELECT count(*) FROM deleted) AS deleted, (SELECT count(*) FROM written) AS written
/// ```
///
/// The `NOT EXISTS` before the INSERT is not redundant with the
/// `DO UPDATE ... WHERE`: ON CONFLICT locks the existing row even when its
/// WHERE is false, and a row lock is a WAL record and an `xmax` write. Rows
/// already equal never reach ON CONFLICT, so an up-to-date key writes nothing.
/// The ON CONFLICT WHERE still compares after assignment casts, which matters
/// if a select output type differs from its target column's.
///
/// The DELETE matches "in desired" by conflict key with `=`, as the unique
/// index does; a conflict-key column holding NULL matches nothing, so such a
/// row would be deleted and inserted again on each recompute (correct, not
/// quiet): conflict keys should be NOT NULL, e.g. the primary key.
pub fn rows_apply(plan: &RowsPlan, scope: Scope) -> Statement {
    rows_apply_excluding(plan, scope, None)
}

/// [`rows_apply`], leaving alone the keys `excluded` lists: their source
/// rows yield nothing and their owned rows are neither deleted nor replaced.
pub fn rows_apply_excluding(
    plan: &RowsPlan,
    scope: Scope,
    excluded: Option<&Excluded>,
) -> Statement {
    debug_assert_eq!(plan.check(), Ok(()));
    let mut params = Vec::new();
    let placed = place(scope, plan.key.len(), &mut params);
    let owned = owned_conditions(plan, &placed, "t", excluded).join("\n    AND ");
    let target = &plan.target;
    let targets: Vec<String> = plan.columns.iter().map(|c| quote_ident(c)).collect();
    let ds = d_columns(plan);
    let sql = match &plan.conflict_key {
        Some(conflict_key) => {
            let ck = |alias: &str| -> String {
                let cols: Vec<String> = conflict_key
                    .iter()
                    .map(|c| format!("{alias}.{}", plan.column_alias(c)))
                    .collect();
                row(&cols)
            };
            let ck_target = |alias: &str| -> String {
                let cols: Vec<String> = conflict_key.iter().map(|c| col(alias, c)).collect();
                row(&cols)
            };
            let rest: Vec<&String> = plan
                .columns
                .iter()
                .filter(|c| !conflict_key.contains(c))
                .collect();
            // Scoped to the owned rows like the DELETE, so the planner probes
            // the owner index instead of hashing the whole target: a row
            // identical to a desired one has the desired row's owner, which is
            // a key of the scope.
            let mut already: Vec<String> = placed.conditions("e", &plan.owner);
            already.push(format!("{} = {}", ck_target("e"), ck("d")));
            let arbiter: Vec<String> = conflict_key.iter().map(|c| quote_ident(c)).collect();
            let arbiter = arbiter.join(", ");
            let on_conflict = if rest.is_empty() {
                // Every column is part of the conflict key: a conflicting row
                // is already identical. The arbiter is still named, so that a
                // violation of another unique constraint raises.
                format!("ON CONFLICT ({arbiter}) DO NOTHING")
            } else {
                let stored: Vec<String> = rest.iter().map(|c| col("e", c)).collect();
                let wanted: Vec<String> = rest
                    .iter()
                    .map(|c| format!("d.{}", plan.column_alias(c)))
                    .collect();
                already.push(format!(
                    "{} IS NOT DISTINCT FROM {}",
                    row(&stored),
                    row(&wanted)
                ));
                let sets: Vec<String> = rest
                    .iter()
                    .map(|c| format!("{} = EXCLUDED.{}", quote_ident(c), quote_ident(c)))
                    .collect();
                let t: Vec<String> = rest.iter().map(|c| col("t", c)).collect();
                let incoming: Vec<String> = rest.iter().map(|c| col("EXCLUDED", c)).collect();
                // A conflicting row the plan does not own is left as it is.
                let owned = owned_if(plan, "t")
                    .map(|c| format!("\n    AND {c}"))
                    .unwrap_or_default();
                format!(
                    "ON CONFLICT ({arbiter}) DO UPDATE\n  SET {}\n  WHERE {} IS DISTINCT FROM {}{owned}",
                    sets.join(",\n      "),
                    row(&t),
                    row(&incoming)
                )
            };
            format!(
                "WITH desired AS (\n{desired}\n),\n\
                 deleted AS (\n  DELETE FROM {target} AS t\n  WHERE {owned}\n    AND NOT EXISTS (\n      \
                 SELECT FROM desired AS d\n      WHERE {d_ck} = {t_ck})\n  RETURNING 1\n),\n\
                 written AS (\n  INSERT INTO {target} AS t ({targets})\n  SELECT {ds}\n  FROM desired AS d\n  \
                 WHERE NOT EXISTS (\n    SELECT FROM {target} AS e\n    WHERE {already})\n  {on_conflict}\n  \
                 RETURNING 1\n)\n{COUNTS}",
                desired = desired(plan, &placed, false, excluded),
                d_ck = ck("d"),
                t_ck = ck_target("t"),
                already = already.join("\n      AND "),
                targets = targets.join(", "),
            )
        }
        None => {
            // Replace-by-owner: no row identity but the whole row, so match
            // rows as multisets (numbered copies of identical rows) and find
            // the exact target rows to delete by (tableoid, ctid): ctid alone
            // repeats across partitions. Owner equality (`=`, hashable) comes
            // first in every match so that the planner can hash-join per owner
            // and only compares whole rows within an owner's group.
            let es: Vec<String> = (1..=plan.columns.len())
                .map(|i| format!("e.c{i}"))
                .collect();
            let t_cols: Vec<String> = plan.columns.iter().map(|c| col("t", c)).collect();
            let aliased: Vec<String> = t_cols
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c} AS c{}", i + 1))
                .collect();
            format!(
                "WITH desired AS (\n{desired}\n),\n\
                 existing AS (\n  SELECT t.tableoid AS row_table, t.ctid AS row_id, {aliased},\n    \
                 row_number() OVER (PARTITION BY {t_cols}) AS n\n  FROM {target} AS t\n  WHERE {owned}\n),\n\
                 deleted AS (\n  DELETE FROM {target} AS t\n  WHERE {owned}\n    \
                 AND (t.tableoid, t.ctid) IN (\n      SELECT e.row_table, e.row_id\n      FROM existing AS e\n      \
                 WHERE NOT EXISTS (\n        SELECT FROM desired AS d\n        WHERE {same_d}))\n  RETURNING 1\n),\n\
                 written AS (\n  INSERT INTO {target} ({targets})\n  SELECT {ds}\n  FROM desired AS d\n  \
                 WHERE NOT EXISTS (\n    SELECT FROM existing AS e\n    WHERE {same_w})\n  RETURNING 1\n)\n{COUNTS}",
                desired = desired(plan, &placed, true, excluded),
                aliased = aliased.join(", "),
                t_cols = t_cols.join(", "),
                same_d = same_copy(plan, &ds, &es.join(", "), "          "),
                same_w = same_copy(plan, &ds, &es.join(", "), "      "),
                targets = targets.join(", "),
            )
        }
    };
    Statement { sql, params }
}

const COUNTS: &str =
    "SELECT (SELECT count(*) FROM deleted) AS deleted, (SELECT count(*) FROM written) AS written";

/// The select's owner columns (`m.<alias>::text`, as a row) and the source
/// key (`src.<key>::text`, as a row), compared as text: a row belongs to the
/// source row whose key its owner columns hold. `desired` keeps the rows
/// where they are equal; the verify query reports those where they are not.
pub(super) fn owners_and_keys(plan: &RowsPlan) -> (String, String) {
    let owners: Vec<String> = plan
        .owner
        .iter()
        .map(|o| format!("m.{}::text", plan.column_alias(&o.name)))
        .collect();
    let keys: Vec<String> = plan
        .key
        .iter()
        .map(|k| format!("{}::text", col("src", &k.name)))
        .collect();
    (row(&owners), row(&keys))
}

/// `d.c1, d.c2, ...`.
fn d_columns(plan: &RowsPlan) -> String {
    let ds: Vec<String> = (1..=plan.columns.len())
        .map(|i| format!("d.c{i}"))
        .collect();
    ds.join(", ")
}

/// The `desired` CTE body: the select's rows for the scope's source rows, as
/// `c1..cm` (plus the copy number `n` when `numbered`), keeping only rows
/// whose owner columns are the source key (see the module docs).
fn desired(
    plan: &RowsPlan,
    placed: &Placed,
    numbered: bool,
    excluded: Option<&Excluded>,
) -> String {
    let ms: Vec<String> = (1..=plan.columns.len())
        .map(|i| format!("m.c{i}"))
        .collect();
    let mut select = format!("  SELECT {}", ms.join(", "));
    if numbered {
        select.push_str(&format!(
            ",\n    row_number() OVER (PARTITION BY {}) AS n",
            ms.join(", ")
        ));
    }
    let mut conditions = placed.conditions("src", &plan.key);
    let (owners, keys) = owners_and_keys(plan);
    conditions.push(format!("{owners} = {keys}"));
    conditions.extend(excluded.map(|e| e.condition("src", &plan.key)));
    format!(
        "{select}\n{}\n  WHERE {}",
        source_lateral(plan),
        conditions.join("\n    AND ")
    )
}

/// Conditions (to be ANDed, never empty) selecting the target rows, aliased
/// `alias`, that the scope's keys own: owner columns in the scope, owned by
/// the plan ([`RowsPlan::owned_if`]) and not excluded.
pub(super) fn owned_conditions(
    plan: &RowsPlan,
    placed: &Placed,
    alias: &str,
    excluded: Option<&Excluded>,
) -> Vec<String> {
    let mut owned = placed.conditions(alias, &plan.owner);
    owned.extend(owned_if(plan, alias));
    owned.extend(excluded.map(|e| e.condition(alias, &plan.owner)));
    if owned.is_empty() {
        owned.push("TRUE".into());
    }
    owned
}

/// `EXISTS (...)`: the target row `alias` is one [`RowsPlan::owned_if`]
/// yields a row for; `None` when the plan owns every row.
pub(super) fn owned_if(plan: &RowsPlan, alias: &str) -> Option<String> {
    plan.owned_if.as_ref().map(|select| {
        format!(
            "EXISTS (SELECT FROM (SELECT {alias}.*) AS src CROSS JOIN LATERAL (\n{select}\n) AS f)"
        )
    })
}

/// The select of a table split's way back: the operator's `reverse_select`,
/// which names the target row `tgt`, run on the row a rows plan from the
/// target calls `src`.
pub fn reverse_rows_select(reverse_select: &str) -> String {
    format!("SELECT r.* FROM (SELECT src.*) AS tgt CROSS JOIN LATERAL (\n{reverse_select}\n) AS r")
}

/// `FROM <source> AS src CROSS JOIN LATERAL (<select>) AS m(c1, ...)`: the
/// select runs once per source row and may refer to it as `src`. Its own
/// output names are replaced by position, which is how the catalog matched
/// them to `columns`.
pub(super) fn source_lateral(plan: &RowsPlan) -> String {
    let cs: Vec<String> = (1..=plan.columns.len()).map(|i| format!("c{i}")).collect();
    format!(
        "  FROM {} AS src\n  CROSS JOIN LATERAL (\n{}\n  ) AS m({})",
        plan.source,
        plan.select,
        cs.join(", ")
    )
}

/// `d` and `e` hold the same copy of the same row: owner columns equal (`=`,
/// for a hash join), then every column and the copy number with
/// `IS NOT DISTINCT FROM` (NULL matches NULL).
/// `indent` starts the continuation line.
pub(super) fn same_copy(plan: &RowsPlan, ds: &str, es: &str, indent: &str) -> String {
    let d_owner: Vec<String> = plan
        .owner
        .iter()
        .map(|o| format!("d.{}", plan.column_alias(&o.name)))
        .collect();
    let e_owner: Vec<String> = plan
        .owner
        .iter()
        .map(|o| format!("e.{}", plan.column_alias(&o.name)))
        .collect();
    format!(
        "{} = {}\n{indent}AND ({ds}, d.n) IS NOT DISTINCT FROM ({es}, e.n)",
        row(&e_owner),
        row(&d_owner)
    )
}

/// After a TRUNCATE of the source: delete the target rows this mirror owns
/// whose owner no longer exists in the source.
///
/// ```sql
/// DELETE FROM "public"."order_items" AS t
/// WHERE t."order_id" IS NOT NULL
///   AND NOT EXISTS (
///     SELECT FROM "public"."orders" AS src
///     WHERE src."id" = t."order_id"::text::bigint)
/// ```
///
/// Not `TRUNCATE target`: the target may also hold rows of other mirrors
/// (other sources, other owner columns — those rows have this mirror's owner
/// columns NULL, hence the IS NOT NULL), TRUNCATE would take an ACCESS
/// EXCLUSIVE lock that blocks readers of the new shape, and it is not MVCC-safe.
/// And not "delete everything owned": by the time the TRUNCATE is applied the
/// source may hold new rows (inserted after it, or copied by a backfill chunk)
/// whose target rows are already right. "Orphans of the current source" is a
/// function of the current state, so like every other write it is idempotent
/// and can run at any time. The owner is cast to the key type through text,
/// the same conversion every key goes through, so the probe can use the
/// source's key index.
///
/// No params. Returns no rows; the command tag counts the deleted rows.
pub fn rows_truncate(plan: &RowsPlan) -> Statement {
    debug_assert_eq!(plan.check(), Ok(()));
    let not_null: Vec<String> = plan
        .owner
        .iter()
        .map(|o| format!("{} IS NOT NULL", col("t", &o.name)))
        .collect();
    let owners: Vec<String> = plan
        .owner
        .iter()
        .zip(&plan.key)
        .map(|(o, k)| format!("{}::text::{}", col("t", &o.name), k.type_name))
        .collect();
    let keys: Vec<String> = plan.key.iter().map(|k| col("src", &k.name)).collect();
    let sql = format!(
        "DELETE FROM {} AS t\nWHERE {}\n  AND NOT EXISTS (\n    SELECT FROM {} AS src\n    WHERE {} = {})",
        plan.target,
        not_null.join("\n  AND "),
        plan.source,
        row(&keys),
        row(&owners)
    );
    Statement {
        sql,
        params: Vec::new(),
    }
}
