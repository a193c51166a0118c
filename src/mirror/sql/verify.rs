//! Queries for `verify` (and the catalog's `check`): which source keys in a
//! scope are not mirrored as the mapping says. Read-only; one statement, one
//! snapshot, so a key listed here differed at one instant (possibly only
//! because its change was not applied yet: the caller re-checks after lag).

use super::rows::{owned_conditions, owners_and_keys, same_copy, source_lateral};
use super::{
    Param, RowsPlan, Scope, SetPlan, Statement, col, key_list, key_texts, place, row, set_differs,
};

/// What a verification query returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyOutput {
    /// One row, `count bigint`: how many keys differ.
    Count,
    /// The differing keys in key order, each as its key columns as text, at
    /// most [`Param::Limit`] of them (the last parameter).
    Keys,
    /// Like `Keys`, each followed by two booleans: the mapping yields rows
    /// for the key, and the target holds rows for it. Both true: changed
    /// rows; only the first: missing rows; only the second: extra rows. Set
    /// mode always answers true, true (the target row is the source row).
    Kinds,
}

/// Set mode: keys in `scope` whose stored columns differ from what the
/// expressions compute now — exactly the rows [`super::set_apply`] would write.
///
/// ```sql
/// SELECT src."id"::text
/// FROM "public"."users" AS src
/// WHERE src."id" > $1::text::bigint
///   AND src."id" <= $2::text::bigint
///   AND src."status" IS DISTINCT FROM (<expr>)
/// ORDER BY src."id"
/// LIMIT $3::bigint
/// ```
pub fn set_verify(plan: &SetPlan, scope: Scope, output: VerifyOutput) -> Statement {
    set_verify_where(plan, None, scope, output)
}

/// Set mode, two-way: keys in `scope` where neither shape is the mapping of
/// the other: the new columns differ from what `forward` computes *and* the
/// old ones from what `reverse` computes. A key written last through the new
/// shape holds values the forward mapping may never produce (`'paused'`),
/// and is consistent when the old shape follows from it.
pub fn set_verify_two_way(
    forward: &SetPlan,
    reverse: &SetPlan,
    scope: Scope,
    output: VerifyOutput,
) -> Statement {
    set_verify_where(forward, Some(reverse), scope, output)
}

fn set_verify_where(
    plan: &SetPlan,
    reverse: Option<&SetPlan>,
    scope: Scope,
    output: VerifyOutput,
) -> Statement {
    debug_assert_eq!(plan.check(), Ok(()));
    let mut params = Vec::new();
    let placed = place(scope, plan.key.len(), &mut params);
    let mut conditions = placed.conditions("src", &plan.key);
    conditions.push(set_differs(plan));
    conditions.extend(reverse.map(set_differs));
    let head = match output {
        VerifyOutput::Count => "count(*)".to_string(),
        VerifyOutput::Keys => key_texts("src", &plan.key),
        VerifyOutput::Kinds => format!("{}, true, true", key_texts("src", &plan.key)),
    };
    let mut sql = format!(
        "SELECT {head}\nFROM {} AS src\nWHERE {}",
        plan.source,
        conditions.join("\n  AND ")
    );
    if output != VerifyOutput::Count {
        params.push(Param::Limit);
        sql.push_str(&format!(
            "\nORDER BY {}\nLIMIT ${}::bigint",
            key_list("src", &plan.key),
            params.len()
        ));
    }
    Statement { sql, params }
}

/// Rows mode: keys in `scope` whose desired rows and owned target rows
/// differ, compared both ways as multisets of whole rows (so a missing row,
/// an extra row, a changed column and a duplicated row all count).
///
/// Desired rows come from the select over the scope's source rows and are
/// attributed to the source key that yielded them, *without* the owner filter
/// of [`super::rows_apply`]: a select whose owner columns are not its source
/// key is reported here instead of being silently dropped. Target rows are
/// those whose owner columns fall in the scope, attributed to their owner.
/// Rows are numbered within groups of identical rows, so
/// `(columns, copy number)` identifies one copy; owner equality comes first in
/// each match so the comparison is hashed per owner.
pub fn rows_verify(plan: &RowsPlan, scope: Scope, output: VerifyOutput) -> Statement {
    rows_verify_where(plan, None, scope, output)
}

/// Rows mode, two-way with `reverse` computing source columns from the
/// target rows: keys in `scope` where the target rows differ from the
/// mapping of the source row *and* the source row's reverse columns differ
/// from what `reverse` computes from the target rows. A key whose source row
/// is gone keeps its difference (nothing is consistent with no row).
pub fn rows_verify_two_way(
    plan: &RowsPlan,
    reverse: &SetPlan,
    scope: Scope,
    output: VerifyOutput,
) -> Statement {
    rows_verify_where(plan, Some(reverse), scope, output)
}

fn rows_verify_where(
    plan: &RowsPlan,
    reverse: Option<&SetPlan>,
    scope: Scope,
    output: VerifyOutput,
) -> Statement {
    debug_assert_eq!(plan.check(), Ok(()));
    let mut params = Vec::new();
    let placed = place(scope, plan.key.len(), &mut params);
    let n_cols = plan.columns.len();
    let ks: Vec<String> = (1..=plan.key.len()).map(|i| format!("k{i}")).collect();
    let ms: Vec<String> = (1..=n_cols).map(|i| format!("m.c{i}")).collect();
    let ds: Vec<String> = (1..=n_cols).map(|i| format!("d.c{i}")).collect();
    let es: Vec<String> = (1..=n_cols).map(|i| format!("e.c{i}")).collect();
    let src_keys: Vec<String> = plan
        .key
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{} AS k{}", col("src", &k.name), i + 1))
        .collect();
    // The owner, read back as the source key it holds (through text, as
    // every key travels), so both sides report keys of one type.
    let owner_keys: Vec<String> = plan
        .owner
        .iter()
        .zip(&plan.key)
        .enumerate()
        .map(|(i, (o, k))| format!("{}::text::{} AS k{}", col("t", &o.name), k.type_name, i + 1))
        .collect();
    let t_cols: Vec<String> = plan.columns.iter().map(|c| col("t", c)).collect();
    let aliased: Vec<String> = t_cols
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{c} AS c{}", i + 1))
        .collect();
    let mut src_conditions = placed.conditions("src", &plan.key);
    if src_conditions.is_empty() {
        src_conditions.push("TRUE".into());
    }
    let owned = owned_conditions(plan, &placed, "t", None);
    let d_ks: Vec<String> = ks.iter().map(|k| format!("d.{k}")).collect();
    let e_ks: Vec<String> = ks.iter().map(|k| format!("e.{k}")).collect();
    let same = same_copy(plan, &ds.join(", "), &es.join(", "), "      ");
    let mut sql = format!(
        "WITH desired AS (\n  SELECT {src_keys}, {ms},\n    row_number() OVER (PARTITION BY {ms}) AS n\n\
         {lateral}\n  WHERE {src_conditions}\n),\n\
         existing AS (\n  SELECT {owner_keys}, {aliased},\n    row_number() OVER (PARTITION BY {t_cols}) AS n\n  \
         FROM {target} AS t\n  WHERE {owned}\n),\n\
         {differing} AS (\n  SELECT {d_ks}\n  FROM desired AS d\n  WHERE NOT EXISTS (\n    SELECT FROM existing AS e\n    \
         WHERE {same})\n  UNION\n  SELECT {e_ks}\n  FROM existing AS e\n  WHERE NOT EXISTS (\n    \
         SELECT FROM desired AS d\n    WHERE {same})\n){filtered}\n",
        src_keys = src_keys.join(", "),
        ms = ms.join(", "),
        lateral = source_lateral(plan),
        src_conditions = src_conditions.join("\n    AND "),
        owner_keys = owner_keys.join(", "),
        aliased = aliased.join(", "),
        t_cols = t_cols.join(", "),
        target = plan.target,
        owned = owned.join("\n    AND "),
        d_ks = d_ks.join(", "),
        e_ks = e_ks.join(", "),
        differing = if reverse.is_some() {
            "forward"
        } else {
            "differing"
        },
        filtered = reverse
            .map(|r| reverse_filter(plan, r, &ks))
            .unwrap_or_default(),
    );
    match output {
        VerifyOutput::Count => sql.push_str("SELECT count(*) FROM differing"),
        VerifyOutput::Keys | VerifyOutput::Kinds => {
            params.push(Param::Limit);
            // Qualified: a bare `ORDER BY k1` would name the text output
            // column and sort 10 before 9.
            let mut texts: Vec<String> = ks.iter().map(|k| format!("f.{k}::text")).collect();
            if output == VerifyOutput::Kinds {
                let on = |side: &str| {
                    ks.iter()
                        .map(|k| format!("{side}.{k} = f.{k}"))
                        .collect::<Vec<_>>()
                        .join(" AND ")
                };
                texts.push(format!(
                    "EXISTS (SELECT FROM desired AS d WHERE {})",
                    on("d")
                ));
                texts.push(format!(
                    "EXISTS (SELECT FROM existing AS e WHERE {})",
                    on("e")
                ));
            }
            let order: Vec<String> = ks.iter().map(|k| format!("f.{k}")).collect();
            sql.push_str(&format!(
                "SELECT {}\nFROM differing AS f\nORDER BY {}\nLIMIT ${}::bigint",
                texts.join(", "),
                order.join(", "),
                params.len()
            ));
        }
    }
    Statement { sql, params }
}

/// `,\ndiffering AS (...)`: the keys of `forward` (rows mode's differing
/// keys, as `k1..`) whose source row does not have the reverse columns the
/// target rows imply.
fn reverse_filter(plan: &RowsPlan, reverse: &SetPlan, ks: &[String]) -> String {
    let keys: Vec<String> = plan.key.iter().map(|k| col("src", &k.name)).collect();
    let fs: Vec<String> = ks.iter().map(|k| format!("f.{k}")).collect();
    format!(
        ",\ndiffering AS (\n  SELECT f.*\n  FROM forward AS f\n  WHERE NOT EXISTS (\n    \
         SELECT FROM {} AS src\n    WHERE {} = {}\n      AND NOT ({}))\n)",
        plan.source,
        row(&keys),
        row(&fs),
        set_differs(reverse)
    )
}

/// For `check` (on a sample range) and to explain a `verify` failure: source
/// keys in `scope` whose select yields a row whose owner columns are not that
/// source key. [`super::rows_apply`] ignores such rows.
///
/// Params: the scope's, then [`Param::Limit`]. Returns the keys as text, in
/// key order.
pub fn rows_owner_mismatch(plan: &RowsPlan, scope: Scope) -> Statement {
    debug_assert_eq!(plan.check(), Ok(()));
    let mut params = Vec::new();
    let placed = place(scope, plan.key.len(), &mut params);
    let (owners, keys) = owners_and_keys(plan);
    let cs: Vec<String> = (1..=plan.columns.len()).map(|i| format!("c{i}")).collect();
    let mut conditions = placed.conditions("src", &plan.key);
    // IS DISTINCT FROM: an owner column left NULL is a mismatch too.
    conditions.push(format!(
        "EXISTS (\n    SELECT FROM (\n{}\n    ) AS m({})\n    WHERE {} IS DISTINCT FROM {})",
        plan.select,
        cs.join(", "),
        owners,
        keys
    ));
    params.push(Param::Limit);
    let sql = format!(
        "SELECT {}\nFROM {} AS src\nWHERE {}\nORDER BY {}\nLIMIT ${}::bigint",
        key_texts("src", &plan.key),
        plan.source,
        conditions.join("\n  AND "),
        key_list("src", &plan.key),
        params.len()
    );
    Statement { sql, params }
}
