//! `walshift check`'s read-only evaluation of a mapping (docs/design.md,
//! "The data scan"): a `SELECT` that computes what the backfill's chunk
//! statement would write, cast to the written columns' types, and returns
//! the keys whose new row the written relation's constraints would refuse.
//!
//! ```text
//!  set:  r = (SELECT <every column, the set ones computed and cast> FROM source
//!             WHERE <scope> AND <stored values differ>)          -- the rows the UPDATE writes
//!  rows: r = (SELECT <key as text>, <select's columns cast> FROM source, LATERAL select
//!             WHERE <scope> AND <owner = key>)                   -- the rows the INSERT writes
//!  SELECT <key texts>, p.problem FROM r, LATERAL (CASE NOT NULL | too long | CHECK false) p
//!  WHERE p.problem IS NOT NULL
//! ```
//!
//! What a cast, a domain or the expression itself refuses (invalid input,
//! out of range, division by zero) fails the statement as the write would;
//! the scan then splits the keys until the failing ones are alone. What the
//! constraints refuse comes back as rows: `problem` is a SQLSTATE, a space
//! and the message Postgres gives for it. Unique indexes are asked separately
//! (scan.rs). Foreign keys, exclusion constraints and triggers are not
//! evaluated.
//!
//! A cast to `varchar(n)` or `char(n)` truncates where an assignment refuses,
//! so such columns are computed unbounded and their length compared.

use super::rows::source_lateral;
use super::{
    KeyColumn, Param, RowsPlan, Scope, SetPlan, Statement, col, fragment, place, quote_ident,
};
use crate::ident::quote_literal;

/// A column of the relation a mirror writes (the source in set mode, the
/// target in rows mode), as `pg_attribute` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenColumn {
    pub name: String,
    /// `format_type` with the modifier: what a value is cast to.
    pub type_name: String,
    pub not_null: bool,
    /// `varchar(n)` / `char(n)`: `n`, and the type without it.
    pub bounded: Option<(i32, String)>,
}

/// A CHECK constraint of that relation: its expression as `pg_get_expr`
/// prints it (unqualified column names) and the columns it reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckConstraint {
    pub name: String,
    pub expr: String,
    pub columns: Vec<String>,
}

/// What the evaluation checks of a written relation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Constraints {
    /// The relation's name as Postgres's messages give it (no schema).
    pub relation: String,
    pub columns: Vec<WrittenColumn>,
    pub checks: Vec<CheckConstraint>,
}

/// The columns of a relation, in order. Params: the relation as text.
pub const COLUMNS_SQL: &str =
    "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
        CASE WHEN a.atttypid IN ('varchar'::regtype, 'bpchar'::regtype) AND a.atttypmod > 4
             THEN a.atttypmod - 4 END,
        format_type(a.atttypid, NULL)
 FROM pg_attribute AS a
 WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum";

/// The CHECK constraints of a relation. Params: the relation as text.
pub const CHECKS_SQL: &str = "SELECT c.conname::text, pg_get_expr(c.conbin, c.conrelid),
        ARRAY(SELECT a.attname::text FROM pg_attribute AS a
              WHERE a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey))
 FROM pg_constraint AS c
 WHERE c.conrelid = $1::text::regclass AND c.contype = 'c'
 ORDER BY c.conname";

/// The name the inner query gives the `i`-th key column's text.
fn key_alias(i: usize) -> String {
    quote_ident(&format!("walshift key {}", i + 1))
}

/// `WHEN <cond> THEN '<sqlstate> <message>'` for each constraint the new
/// row `r` may break: NOT NULL and length of the `written` columns, and the
/// CHECKs that read only columns `r` holds (`held`).
fn problems(cons: &Constraints, written: &[&WrittenColumn], held: &[&str]) -> Vec<String> {
    let relation = &cons.relation;
    let mut whens = Vec::new();
    for c in written.iter().filter(|c| c.not_null) {
        whens.push(format!(
            "WHEN {} IS NULL THEN {}",
            col("r", &c.name),
            quote_literal(&format!(
                "23502 null value in column \"{}\" of relation \"{relation}\" violates not-null constraint",
                c.name
            ))
        ));
    }
    for c in written {
        if let Some((n, _)) = &c.bounded {
            whens.push(format!(
                "WHEN length(rtrim({}::text)) > {n} THEN {}",
                col("r", &c.name),
                quote_literal(&format!("22001 value too long for type {}", c.type_name))
            ));
        }
    }
    for k in &cons.checks {
        // A CHECK over a column the new row does not hold (rows mode: one
        // the select leaves to its default) cannot be evaluated here.
        if k.columns.iter().all(|c| held.contains(&c.as_str())) {
            whens.push(format!(
                "WHEN ({}) IS FALSE THEN {}",
                k.expr,
                quote_literal(&format!(
                    "23514 new row for relation \"{relation}\" violates check constraint \"{}\"",
                    k.name
                ))
            ));
        }
    }
    // Never true, but it reads every computed column, so that each one is
    // computed (and fails where the write would) whatever else the planner
    // leaves out: a column nothing reads is not computed at all, and a
    // filter on a constant is not even run. A mirror always writes a
    // column (the catalog check sees to it).
    let computed: Vec<String> = written.iter().map(|c| col("r", &c.name)).collect();
    debug_assert!(!computed.is_empty(), "a mirror that writes no column");
    whens.push(format!(
        "WHEN num_nulls({}) < 0 THEN 'XX000 unreachable'",
        computed.join(", ")
    ));
    whens
}

/// `CAST((<value>) AS <type>)`, unbounded for `varchar(n)` / `char(n)`.
fn cast(value: &str, c: &WrittenColumn) -> String {
    let ty = c.bounded.as_ref().map_or(&c.type_name, |(_, t)| t);
    format!("CAST(({value}) AS {ty})")
}

/// The outer query over the new rows `r` (the inner query's text).
fn outer(inner: &str, key: &[KeyColumn], keys_in_r: bool, whens: &[String]) -> String {
    let keys: Vec<String> = if keys_in_r {
        key.iter()
            .map(|k| format!("{}::text", col("r", &k.name)))
            .collect()
    } else {
        (0..key.len())
            .map(|i| format!("r.{}", key_alias(i)))
            .collect()
    };
    let case = format!("CASE\n    {}\n  END", whens.join("\n    "));
    format!(
        "SELECT {}, p.problem\nFROM (\n{inner}\n) AS r\nCROSS JOIN LATERAL (SELECT {case} AS problem) AS p\n\
         WHERE p.problem IS NOT NULL",
        keys.join(", ")
    )
}

/// Set mode: the rows the chunk statement would update in `scope` (stored
/// values that differ from the computed ones), with every other column as
/// stored; returns `key texts..., problem` for each the constraints refuse.
///
/// Params: the scope's.
pub fn set_evaluate(plan: &SetPlan, cons: &Constraints, scope: Scope) -> Statement {
    let mut params: Vec<Param> = Vec::new();
    let placed = place(scope, plan.key.len(), &mut params);
    let mut conditions = placed.conditions("src", &plan.key);
    conditions.push(super::set_differs(plan));
    let mut projection = Vec::new();
    let mut written = Vec::new();
    for c in &cons.columns {
        match plan.set.iter().find(|(s, _)| *s == c.name) {
            Some((_, expr)) => {
                projection.push(format!(
                    "{} AS {}",
                    cast(&fragment(expr), c),
                    quote_ident(&c.name)
                ));
                written.push(c);
            }
            None => projection.push(col("src", &c.name)),
        }
    }
    // The UPDATE checks every CHECK on the whole new row, which r holds.
    let held: Vec<&str> = cons.columns.iter().map(|c| c.name.as_str()).collect();
    let whens = problems(cons, &written, &held);
    let inner = format!(
        "  SELECT {}\n  FROM {} AS src\n  WHERE {}",
        projection.join(", "),
        plan.source,
        conditions.join("\n    AND ")
    );
    Statement {
        sql: outer(&inner, &plan.key, true, &whens),
        params,
    }
}

/// Rows mode: the rows the chunk statement would insert for the source rows
/// in `scope`, the select's columns cast to the target's types; returns
/// `key texts..., problem` for each row the constraints refuse.
///
/// Params: the scope's.
pub fn rows_evaluate(plan: &RowsPlan, cons: &Constraints, scope: Scope) -> Statement {
    let mut params: Vec<Param> = Vec::new();
    let placed = place(scope, plan.key.len(), &mut params);
    let mut conditions = placed.conditions("src", &plan.key);
    let (owners, keys) = super::rows::owners_and_keys(plan);
    conditions.push(format!("{owners} = {keys}"));
    let mut projection: Vec<String> = plan
        .key
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{}::text AS {}", col("src", &k.name), key_alias(i)))
        .collect();
    let mut written = Vec::new();
    for name in &plan.columns {
        let alias = format!("m.{}", plan.column_alias(name));
        match cons.columns.iter().find(|c| c.name == *name) {
            Some(c) => {
                projection.push(format!("{} AS {}", cast(&alias, c), quote_ident(name)));
                written.push(c);
            }
            None => projection.push(format!("{alias} AS {}", quote_ident(name))),
        }
    }
    let held: Vec<&str> = plan.columns.iter().map(String::as_str).collect();
    let whens = problems(cons, &written, &held);
    let inner = format!(
        "  SELECT {}\n{}\n  WHERE {}",
        projection.join(", "),
        source_lateral(plan),
        conditions.join("\n    AND ")
    );
    Statement {
        sql: outer(&inner, &plan.key, false, &whens),
        params,
    }
}

/// Splits a `problem` the evaluation returned into SQLSTATE and message.
pub fn split_problem(problem: &str) -> (&str, &str) {
    problem.split_once(' ').unwrap_or(("23000", problem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ident::QualifiedName;

    fn status_column() -> WrittenColumn {
        WrittenColumn {
            name: "status".into(),
            type_name: "character varying(8)".into(),
            not_null: true,
            bounded: Some((8, "character varying".into())),
        }
    }

    fn users_constraints() -> Constraints {
        Constraints {
            relation: "users".into(),
            columns: vec![
                WrittenColumn {
                    name: "id".into(),
                    type_name: "bigint".into(),
                    not_null: true,
                    bounded: None,
                },
                WrittenColumn {
                    name: "is_active".into(),
                    type_name: "boolean".into(),
                    not_null: false,
                    bounded: None,
                },
                status_column(),
            ],
            checks: vec![CheckConstraint {
                name: "users_status_check".into(),
                expr: "(status)::text <> 'bogus'::text".into(),
                columns: vec!["status".into()],
            }],
        }
    }

    fn users() -> SetPlan {
        SetPlan {
            source: QualifiedName::new("public", "users"),
            key: vec![KeyColumn::new("id", "bigint")],
            set: vec![(
                "status".into(),
                "CASE WHEN is_active THEN 'active' END".into(),
            )],
        }
    }

    #[test]
    fn set_evaluation_reads_computes_and_names_each_refusal() {
        let s = set_evaluate(
            &users(),
            &users_constraints(),
            Scope::Range {
                lower: true,
                upper: true,
            },
        );
        assert_eq!(s.params, vec![Param::Lower(0), Param::Upper(0)]);
        assert!(
            s.sql.starts_with("SELECT r.\"id\"::text, p.problem"),
            "{}",
            s.sql
        );
        assert!(
            !s.sql.contains("UPDATE") && !s.sql.contains("INSERT"),
            "{}",
            s.sql
        );
        assert!(
            s.sql.contains(
                "src.\"id\", src.\"is_active\", CAST(((CASE WHEN is_active THEN 'active' END)) AS character varying) AS \"status\""
            ),
            "{}",
            s.sql
        );
        assert!(
            s.sql.contains("IS DISTINCT FROM"),
            "only rows the UPDATE writes: {}",
            s.sql
        );
        assert!(
            s.sql.contains(
                "WHEN r.\"status\" IS NULL THEN '23502 null value in column \"status\" of relation \"users\" violates not-null constraint'"
            ),
            "{}",
            s.sql
        );
        assert!(
            s.sql.contains(
                "WHEN length(rtrim(r.\"status\"::text)) > 8 THEN '22001 value too long for type character varying(8)'"
            ),
            "{}",
            s.sql
        );
        assert!(
            s.sql.contains(
                "WHEN ((status)::text <> 'bogus'::text) IS FALSE THEN '23514 new row for relation \"users\" violates check constraint \"users_status_check\"'"
            ),
            "{}",
            s.sql
        );
        assert_eq!(
            split_problem("23514 new row for relation"),
            ("23514", "new row for relation")
        );
    }

    #[test]
    fn rows_evaluation_checks_only_what_the_select_writes() {
        let plan = RowsPlan {
            source: QualifiedName::new("public", "orders"),
            key: vec![KeyColumn::new("id", "bigint")],
            target: QualifiedName::new("public", "order_items"),
            owner: vec![KeyColumn::new("order_id", "bigint")],
            columns: vec!["order_id".into(), "qty".into()],
            conflict_key: None,
            select: "SELECT src.id, (i->>'qty')::int FROM jsonb_array_elements(src.items) AS i"
                .into(),
            owned_if: None,
        };
        let cons = Constraints {
            relation: "order_items".into(),
            columns: vec![
                WrittenColumn {
                    name: "order_id".into(),
                    type_name: "bigint".into(),
                    not_null: true,
                    bounded: None,
                },
                WrittenColumn {
                    name: "qty".into(),
                    type_name: "integer".into(),
                    not_null: true,
                    bounded: None,
                },
            ],
            checks: vec![
                CheckConstraint {
                    name: "qty_positive".into(),
                    expr: "qty > 0".into(),
                    columns: vec!["qty".into()],
                },
                CheckConstraint {
                    name: "note_short".into(),
                    expr: "length(note) < 10".into(),
                    columns: vec!["note".into()],
                },
            ],
        };
        let s = rows_evaluate(&plan, &cons, Scope::Keys);
        assert!(
            s.sql.starts_with("SELECT r.\"walshift key 1\", p.problem"),
            "{}",
            s.sql
        );
        assert!(
            s.sql.contains("CAST((m.c2) AS integer) AS \"qty\""),
            "{}",
            s.sql
        );
        assert!(
            s.sql.contains("qty_positive") && !s.sql.contains("note_short"),
            "{}",
            s.sql
        );
        assert!(s.sql.contains("m.c1::text = src.\"id\"::text"), "{}", s.sql);
    }
}
