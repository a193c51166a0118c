//! Set mode: each `set` column exists, may be written, holds a type that
//! compares, and its expression compiles against the source row and is
//! assignable to it, as Postgres itself judges.

use tokio_postgres::Error;

use super::probe::{refusal_in, type_advice};
use super::relation::TableInfo;
use super::{Ctx, pretty_ident};
use crate::ident::quote_ident;
use crate::mirror::sql::{KeyColumn, SetPlan};

/// `set` (or a two-way mirror's `reverse`, named by `field`) against the
/// source: the plan of the UPDATE that computes those columns.
pub(super) async fn check(
    ctx: &mut Ctx<'_>,
    label: &str,
    source: &TableInfo,
    key: &[KeyColumn],
    set: &[(String, String)],
    field: &str,
) -> Result<Option<SetPlan>, Error> {
    let spec_field = field;
    let table = &source.display;
    let mut ok = true;
    let mut not_updatable = Vec::new();
    for (name, _) in set {
        let field = format!("{spec_field}.{}", pretty_ident(name));
        let Some(column) = source.column(name) else {
            ctx.problem(
                label,
                format!(
                    "{field}: {table} has no column {}; add it first (the expand step: ALTER TABLE \
                     {table} ADD COLUMN ...) or fix the name",
                    pretty_ident(name)
                ),
            );
            ok = false;
            continue;
        };
        let unwritable = if key.iter().any(|k| k.name == *name) {
            Some(
                "a key column; the key identifies the row being recomputed, so it cannot be \
                 computed itself",
            )
        } else if column.generated {
            Some("a generated column; Postgres computes it, so it cannot be set")
        } else if column.identity_always {
            Some("a GENERATED ALWAYS identity column, which cannot be updated")
        } else {
            None
        };
        if let Some(why) = unwritable {
            ctx.problem(
                label,
                format!(
                    "{field}: {} is {why}; remove it from {spec_field}",
                    column.display
                ),
            );
            ok = false;
            continue;
        }
        if !column.can_update {
            not_updatable.push(column.display.clone());
        }
        if let Some(refusal) = ctx.type_refusal(&column.type_name).await? {
            ctx.problem(
                label,
                format!(
                    "{field}: column {} is {}, which cannot be compared ({}), so walshift cannot \
                     tell a stale value from a fresh one; {}: ALTER TABLE {table} ALTER COLUMN {} \
                     TYPE ...",
                    column.display,
                    column.type_name,
                    refusal.message,
                    type_advice(&column.type_name),
                    column.display
                ),
            );
            ok = false;
        }
    }
    // Set mode writes the source table itself.
    if !not_updatable.is_empty() && !source.update {
        ctx.grants
            .table(table, format!("UPDATE ({})", not_updatable.join(", ")));
    }
    if !ok {
        return Ok(None);
    }
    if !source.schema_usage {
        // Every probe would fail on the schema; the role's line says so.
        return Ok(None);
    }
    for (name, expr) in set {
        if !expression_compiles(ctx, label, source, (spec_field, name), expr).await? {
            ok = false;
        }
    }
    if !ok {
        return Ok(None);
    }
    Ok(Some(SetPlan {
        source: source.name.clone(),
        key: key.to_vec(),
        set: set.to_vec(),
    }))
}

/// Compile `expr` where it will run, as the right side of an UPDATE of the
/// source aliased `src`: unknown columns, syntax errors and types that are
/// not assignable (with the assignment casts the real statement uses) are
/// Postgres's verdict. Then compare it with the stored value, as every
/// write's `IS DISTINCT FROM` does: an expression of another type (json
/// into jsonb) may be assignable and still not comparable.
async fn expression_compiles(
    ctx: &mut Ctx<'_>,
    label: &str,
    source: &TableInfo,
    (spec_field, name): (&str, &str),
    expr: &str,
) -> Result<bool, Error> {
    let table = &source.display;
    let field = format!("{spec_field}.{}", pretty_ident(name));
    let column = quote_ident(name);
    let head = format!("UPDATE {table} AS src SET {column} = (\n");
    let probe = format!("{head}{expr}\n) WHERE FALSE");
    if let Err(refusal) = ctx.session.prepare(&probe).await? {
        let at = refusal_in(&refusal, expr, head.chars().count(), "the expression");
        ctx.refused(label, &refusal, || {
            format!("{field}: the expression does not compile: {at}")
        });
        return Ok(false);
    }
    let head = format!("SELECT src.{column} IS DISTINCT FROM (\n");
    let probe = format!("{head}{expr}\n) FROM {table} AS src");
    if let Err(refusal) = ctx.session.prepare(&probe).await? {
        let type_name = source.column(name).map_or("", |c| c.type_name.as_str());
        let at = refusal_in(&refusal, expr, head.chars().count(), "the expression");
        ctx.refused(label, &refusal, || {
            format!(
                "{field}: the stored value cannot be compared with the expression: {at}; cast \
                 the expression to the column's type: (...)::{type_name}"
            )
        });
        return Ok(false);
    }
    Ok(true)
}
