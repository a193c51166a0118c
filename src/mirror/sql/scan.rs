//! Statements of `walshift check`'s data scan (docs/design.md, "The data
//! scan") that the engine itself never runs: a spread sample of keys, and the
//! read-only uniqueness questions a chunk cannot answer on its own.
//!
//! ```text
//!  chunks (the engine's own set_apply / rows_apply, rolled back) ── NOT NULL, CHECK,
//!                                                                   types, unique in a chunk
//!  set_duplicates / rows_duplicates ── the same unique value computed for several keys,
//!                                      in different chunks
//!  rows_collisions ── a computed row meets an existing target row of another key
//! ```
//!
//! Values are cast to the target column's type before they are compared, as
//! the write would store them. The failing keys the chunks found are left out
//! ([`Param::KeyArray`] parameters, one per key column), so a value the
//! mapping cannot compute does not abort the question.

use super::rows::source_lateral;
use super::{
    KeyColumn, Param, QualifiedName, RowsPlan, Scope, SetPlan, Statement, col, fragment, key_texts,
    place, quote_ident, row,
};

/// How many groups of duplicates a statement returns (examples; the count
/// of keys involved is summed client-side over these).
pub const DUPLICATE_GROUPS: i64 = 50;

/// A unique index of a mirror's target over plain columns (no expressions,
/// no predicate), each with its type as `format_type` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UniqueIndex {
    pub name: String,
    pub columns: Vec<KeyColumn>,
}

/// The keys of a spread sample of the source rows after `lower` (or of the
/// whole table without `after_lower`): pages picked by `TABLESAMPLE SYSTEM`,
/// so the sample is spread over the table rather than its start; `Limit`
/// of them at random (not the first pages, which would be its start again).
///
/// Params: `Lower(..)` when `after_lower`, then `Limit`.
pub fn sample_keys(
    source: &QualifiedName,
    key: &[KeyColumn],
    after_lower: bool,
    percent: f64,
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
    params.push(Param::Limit);
    let n = params.len();
    let mut sql = format!(
        "SELECT {}\nFROM {source} AS src TABLESAMPLE SYSTEM ({})\n",
        key_texts("src", key),
        percent_literal(percent)
    );
    let conditions = placed.conditions("src", key);
    if !conditions.is_empty() {
        sql.push_str(&format!("WHERE {}\n", conditions.join("\n  AND ")));
    }
    sql.push_str(&format!("ORDER BY random()\nLIMIT ${n}::bigint"));
    Statement { sql, params }
}

/// `0.5`, `100`: a percentage Postgres reads as a literal, within (0, 100].
fn percent_literal(percent: f64) -> String {
    let p = if percent.is_finite() {
        percent.clamp(0.0001, 100.0)
    } else {
        100.0
    };
    format!("{p:.4}")
}

/// `'(' || a || ', ' || b || ')'` for a key of several columns, `a` for one:
/// a key as `check` shows it.
fn key_display(alias: &str, key: &[KeyColumn]) -> String {
    let texts: Vec<String> = key
        .iter()
        .map(|k| format!("coalesce({}::text, 'NULL')", col(alias, &k.name)))
        .collect();
    match texts.as_slice() {
        [one] => one.clone(),
        _ => format!("'(' || {} || ')'", texts.join(" || ', ' || ")),
    }
}

/// The key as a value that orders like it (a row for several columns).
fn key_order(alias: &str, key: &[KeyColumn]) -> String {
    let cols: Vec<String> = key.iter().map(|k| col(alias, &k.name)).collect();
    row(&cols)
}

/// The scope's conditions on `src`, and the failing keys left out (the
/// `KeyArray` parameters come after the scope's).
fn scoped(key: &[KeyColumn], scope: Scope, params: &mut Vec<Param>) -> Vec<String> {
    let placed = place(scope, key.len(), params);
    let mut conditions = placed.conditions("src", key);
    let excluded = place(Scope::Keys, key.len(), params);
    for c in excluded.conditions("src", key) {
        conditions.push(format!("NOT ({c})"));
    }
    conditions
}

/// `value, keys, examples`: groups of the index's values computed for more
/// than one key, with how many keys share each value and up to three of them.
fn duplicates_query(inner: &str, index: &UniqueIndex) -> String {
    let us: Vec<String> = (1..=index.columns.len())
        .map(|i| format!("d.u{i}"))
        .collect();
    let shown: Vec<String> = us
        .iter()
        .map(|u| format!("coalesce({u}::text, 'NULL')"))
        .collect();
    let not_null: Vec<String> = us.iter().map(|u| format!("{u} IS NOT NULL")).collect();
    format!(
        "SELECT {shown} AS value, count(DISTINCT d.k) AS keys,\n       \
         (array_agg(d.k ORDER BY d.o))[1:3] AS examples\n\
         FROM (\n{inner}\n) AS d\nWHERE {not_null}\nGROUP BY {us}\nHAVING count(DISTINCT d.k) > 1\n\
         ORDER BY 2 DESC, 1\nLIMIT {DUPLICATE_GROUPS}",
        shown = shown.join(" || ', ' || "),
        not_null = not_null.join(" AND "),
        us = us.join(", "),
    )
}

/// Set mode: values of `index` that the mapping computes for more than one
/// source row in `scope` (the row's other columns as stored, the set columns
/// as computed). Unique indexes treat NULLs as distinct, so rows with a NULL
/// in the index are left out.
///
/// Params: the scope's, then one `KeyArray` per key column (keys left out).
/// Returns `value text, keys bigint, examples text[]`.
pub fn set_duplicates(plan: &SetPlan, index: &UniqueIndex, scope: Scope) -> Statement {
    let mut params = Vec::new();
    let conditions = scoped(&plan.key, scope, &mut params);
    let values: Vec<String> = index
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let value = match plan.set.iter().find(|(s, _)| *s == c.name) {
                Some((_, expr)) => format!("CAST({} AS {})", fragment(expr), c.type_name),
                None => col("src", &c.name),
            };
            format!("{value} AS u{}", i + 1)
        })
        .collect();
    let mut inner = format!(
        "  SELECT {} AS k, {} AS o, {}\n  FROM {} AS src",
        key_display("src", &plan.key),
        key_order("src", &plan.key),
        values.join(", "),
        plan.source
    );
    if !conditions.is_empty() {
        inner.push_str(&format!("\n  WHERE {}", conditions.join("\n    AND ")));
    }
    Statement {
        sql: duplicates_query(&inner, index),
        params,
    }
}

/// The desired rows of the scope's source rows, as `rows_apply` computes
/// them, with the key shown (`k`), the key columns as text (`k1..`) and the
/// index's columns cast to their types (`u1..`).
fn rows_inner(plan: &RowsPlan, index: &UniqueIndex, conditions: &mut Vec<String>) -> String {
    let (owners, keys) = super::rows::owners_and_keys(plan);
    conditions.push(format!("{owners} = {keys}"));
    let values: Vec<String> = index
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "CAST(m.{} AS {}) AS u{}",
                plan.column_alias(&c.name),
                c.type_name,
                i + 1
            )
        })
        .collect();
    let key_texts: Vec<String> = plan
        .key
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{}::text AS k{}", col("src", &k.name), i + 1))
        .collect();
    format!(
        "  SELECT {} AS k, {} AS o, {}, {}\n{}\n  WHERE {}",
        key_display("src", &plan.key),
        key_order("src", &plan.key),
        key_texts.join(", "),
        values.join(", "),
        source_lateral(plan),
        conditions.join("\n    AND ")
    )
}

/// Rows mode: values of `index` that the select yields for more than one
/// source key in `scope` (within one key, the chunk statement itself
/// refuses them). The index's columns must all be output columns.
///
/// Params and output as [`set_duplicates`].
pub fn rows_duplicates(plan: &RowsPlan, index: &UniqueIndex, scope: Scope) -> Statement {
    let mut params = Vec::new();
    let mut conditions = scoped(&plan.key, scope, &mut params);
    let inner = rows_inner(plan, index, &mut conditions);
    Statement {
        sql: duplicates_query(&inner, index),
        params,
    }
}

/// Rows mode: keys in `scope` whose own rows hold the same value of `index`
/// more than once (the chunk statement's INSERT would refuse the second).
/// Unlike [`rows_duplicates`], also for an index over the owner columns.
///
/// Params as [`set_duplicates`]. Returns `key text` (shown) per key, in key
/// order, at most [`DUPLICATE_GROUPS`].
pub fn rows_duplicates_within(plan: &RowsPlan, index: &UniqueIndex, scope: Scope) -> Statement {
    let mut params = Vec::new();
    let mut conditions = scoped(&plan.key, scope, &mut params);
    let inner = rows_inner(plan, index, &mut conditions);
    let us: Vec<String> = (1..=index.columns.len())
        .map(|i| format!("d.u{i}"))
        .collect();
    let not_null: Vec<String> = us.iter().map(|u| format!("{u} IS NOT NULL")).collect();
    let sql = format!(
        "SELECT DISTINCT ON (d.o) d.k
FROM (
{inner}
) AS d
WHERE {}
GROUP BY d.k, d.o, {}
         HAVING count(*) > 1
ORDER BY d.o
LIMIT {DUPLICATE_GROUPS}",
        not_null.join(" AND "),
        us.join(", ")
    );
    Statement { sql, params }
}

/// Rows mode: rows the select yields for keys in `scope` whose values of
/// `index` an existing target row holds that another key (or none) owns.
/// Rows of the scope's own keys are replaced by the recompute, so they are
/// no collision.
///
/// Params as [`set_duplicates`]. Returns one row: `rows bigint, examples
/// text[]` (up to three `key: value, owned by other` descriptions).
pub fn rows_collisions(plan: &RowsPlan, index: &UniqueIndex, scope: Scope) -> Statement {
    let mut params = Vec::new();
    let mut conditions = scoped(&plan.key, scope, &mut params);
    let inner = rows_inner(plan, index, &mut conditions);
    let t_cols: Vec<String> = index.columns.iter().map(|c| col("t", &c.name)).collect();
    let us: Vec<String> = (1..=index.columns.len())
        .map(|i| format!("d.u{i}"))
        .collect();
    let t_owner: Vec<String> = plan
        .owner
        .iter()
        .map(|o| format!("{}::text", col("t", &o.name)))
        .collect();
    let d_key: Vec<String> = (1..=plan.key.len()).map(|i| format!("d.k{i}")).collect();
    let shown: Vec<String> = us
        .iter()
        .map(|u| format!("coalesce({u}::text, 'NULL')"))
        .collect();
    let sql = format!(
        "SELECT count(*) AS rows,\n       \
         (array_agg(d.k || ': ' || {shown} || ', held by the row of ' || {other} ORDER BY d.o))[1:3] AS examples\n\
         FROM (\n{inner}\n) AS d\nJOIN {target} AS t ON {t_row} = {u_row}\n\
         WHERE {t_owner} IS DISTINCT FROM {d_key}",
        shown = shown.join(" || ', ' || "),
        other = key_display("t", &plan.owner),
        target = plan.target,
        t_row = row(&t_cols),
        u_row = row(&us),
        t_owner = row(&t_owner),
        d_key = row(&d_key),
    );
    Statement { sql, params }
}

/// The index's columns, quoted, for messages: `"slug", "tenant_id"`.
pub fn index_columns(index: &UniqueIndex) -> String {
    let names: Vec<String> = index.columns.iter().map(|c| quote_ident(&c.name)).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> SetPlan {
        SetPlan {
            source: QualifiedName::new("public", "users"),
            key: vec![KeyColumn::new("id", "bigint")],
            set: vec![("slug".into(), "lower(name)".into())],
        }
    }

    fn slug_index() -> UniqueIndex {
        UniqueIndex {
            name: "users_slug_key".into(),
            columns: vec![
                KeyColumn::new("tenant", "integer"),
                KeyColumn::new("slug", "text"),
            ],
        }
    }

    #[test]
    fn set_duplicates_compute_set_columns_and_keep_the_others() {
        let s = set_duplicates(
            &users(),
            &slug_index(),
            Scope::Range {
                lower: false,
                upper: true,
            },
        );
        assert_eq!(s.params, vec![Param::Upper(0), Param::KeyArray(0)]);
        assert!(
            s.sql
                .contains("src.\"tenant\" AS u1, CAST((lower(name)) AS text) AS u2"),
            "{}",
            s.sql
        );
        assert!(
            s.sql.contains("src.\"id\" <= $1::text::bigint"),
            "{}",
            s.sql
        );
        assert!(
            s.sql
                .contains("NOT (src.\"id\" = ANY($2::text[]::bigint[]))"),
            "{}",
            s.sql
        );
        assert!(
            s.sql.contains("HAVING count(DISTINCT d.k) > 1"),
            "{}",
            s.sql
        );
    }

    #[test]
    fn sample_keys_are_spread_and_limited() {
        let key = vec![KeyColumn::new("a", "int"), KeyColumn::new("b", "text")];
        let s = sample_keys(&QualifiedName::new("public", "t"), &key, true, 2.5);
        assert_eq!(
            s.params,
            vec![Param::Lower(0), Param::Lower(1), Param::Limit]
        );
        assert!(s.sql.contains("TABLESAMPLE SYSTEM (2.5000)"), "{}", s.sql);
        assert!(s.sql.ends_with("LIMIT $3::bigint"), "{}", s.sql);
        assert_eq!(percent_literal(0.0), "0.0001");
        assert_eq!(percent_literal(500.0), "100.0000");
    }

    #[test]
    fn keys_of_several_columns_are_shown_in_parentheses() {
        let key = vec![KeyColumn::new("a", "int"), KeyColumn::new("b", "text")];
        assert_eq!(
            key_display("src", &key),
            "'(' || coalesce(src.\"a\"::text, 'NULL') || ', ' || coalesce(src.\"b\"::text, 'NULL') || ')'"
        );
    }
}
