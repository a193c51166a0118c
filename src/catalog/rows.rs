//! Rows mode: the target table, its owner columns and their index, the
//! select's output columns as Postgres describes them, and how target rows
//! are identified (a conflict key, or replace-by-owner).
//!
//! ```text
//!  target ─▶ privileges, owner columns (type = key type) ─▶ owner index
//!  select ─▶ describe: SELECT m.* FROM source AS src CROSS JOIN LATERAL (select) AS m
//!         ─▶ output names ⊆ target columns, owner ⊆ outputs, NOT NULL columns covered
//!         ─▶ types compare ─▶ INSERT INTO target (outputs) SELECT m.* ... WHERE FALSE
//!         ─▶ conflict key: the PK, else a unique index, covered by the outputs
//! ```

use std::collections::HashSet;

use tokio_postgres::Error;

use super::probe::{refusal_in, type_advice};
use super::relation::{Column, TableInfo};
use super::{Ctx, Lookup, pretty, pretty_ident};
use crate::ident::QualifiedName;
use crate::mirror::sql::{KeyColumn, RowsPlan};

/// The source side, already resolved by the caller.
pub(super) struct Found<'a> {
    pub source: &'a TableInfo,
    pub key: &'a [KeyColumn],
    pub key_columns: &'a [&'a Column],
}

/// A select as the operator wrote it in spec field `field`, and how the
/// engine runs it: `before` + `text` + `after` (the way back of a split wraps
/// `reverse_select` so that it can name the target row `tgt`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Select<'a> {
    pub field: &'a str,
    pub text: &'a str,
    pub before: &'a str,
    pub after: &'a str,
    /// How messages name the columns the select must fill with the key, and
    /// an example expression for the key: `("owner", "src.id")`.
    pub owner: (&'a str, &'a str),
}

impl<'a> Select<'a> {
    /// The forward `select` of a rows-mode mirror, run as it is.
    pub(super) fn forward(text: &'a str) -> Self {
        Select {
            field: "select",
            text,
            before: "",
            after: "",
            owner: ("owner", "src.id"),
        }
    }

    fn sql(&self) -> String {
        format!("{}{}{}", self.before, self.text, self.after)
    }

    /// Postgres's refusal, placed inside the operator's text when it is there.
    fn refusal_at(&self, refusal: &super::session::Refusal, head: &str) -> String {
        let start = head.chars().count() + self.before.chars().count();
        refusal_in(refusal, self.text, start, self.field)
    }
}

/// An output column of the select, as Postgres describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Output {
    pub name: String,
    /// `format_type` of its type and modifier.
    pub type_name: String,
}

pub(super) async fn check(
    ctx: &mut Ctx<'_>,
    label: &str,
    found: Found<'_>,
    target: &QualifiedName,
    owner: &[String],
    select: &str,
) -> Result<Option<RowsPlan>, Error> {
    let before = ctx.problems.len();
    let target_rel = match ctx.relation(target).await? {
        Lookup::Found(rel) if rel.is_table() => Some(rel),
        Lookup::Found(rel) => {
            ctx.problem(
                label,
                format!(
                    "target {} is not a table; rows mode writes an ordinary or partitioned table",
                    rel.display
                ),
            );
            None
        }
        Lookup::Missing => {
            ctx.problem(
                label,
                format!(
                    "target table {} does not exist; create it first (the expand step) or fix \
                     target",
                    pretty(target)
                ),
            );
            None
        }
        Lookup::Failed => None,
    };
    if let Some(t) = &target_rel {
        target_privileges(ctx, t);
        owner_checks(ctx, label, &found, t, owner);
    }
    if !found.source.schema_usage || target_rel.as_ref().is_some_and(|t| !t.schema_usage) {
        // Every probe would fail on the schema; the role's line says so.
        return Ok(None);
    }
    // The select is described even when the target is wrong: its own
    // mistakes are worth reporting in the same run.
    let select = Select::forward(select);
    let outputs = describe(ctx, label, found.source, &select).await?;
    let (Some(t), Some(outputs)) = (target_rel, outputs) else {
        return Ok(None);
    };
    output_checks(ctx, label, &t, &outputs, owner, &select);
    if ctx.problems.len() > before {
        return Ok(None);
    }
    if !types_compare(ctx, label, &t, &outputs, &select).await?
        || !assignable(ctx, label, found.source, &t, &outputs, &select).await?
    {
        return Ok(None);
    }

    let names: Vec<String> = outputs.into_iter().map(|o| o.name).collect();
    let conflict = conflict_key(&t, &names);
    match &conflict {
        None => ctx.notes.push(format!(
            "{label}: {}: no unique key covered by the select; replace-by-owner (each recompute \
             replaces a key's rows as a whole; a primary key or unique index on output columns \
             would update rows in place)",
            t.display
        )),
        Some(c) if !c.nullable.is_empty() => ctx.notes.push(format!(
            "{label}: conflict key ({}) of {} allows NULL in {}; a row with NULL there is deleted \
             and inserted again on every recompute, so make it NOT NULL",
            c.columns.join(", "),
            t.display,
            c.nullable.join(", ")
        )),
        Some(_) => {}
    }
    let owner_keys: Vec<KeyColumn> = owner
        .iter()
        .filter_map(|o| t.column(o))
        .map(|c| KeyColumn::new(c.name.clone(), c.type_name.clone()))
        .collect();
    Ok(Some(RowsPlan {
        source: found.source.name.clone(),
        key: found.key.to_vec(),
        target: t.name.clone(),
        owner: owner_keys,
        columns: names,
        conflict_key: conflict.map(|c| c.names),
        select: select.text.to_string(),
        owned_if: None,
    }))
}

/// Rows mode inserts, updates, deletes and reads the target.
fn target_privileges(ctx: &mut Ctx<'_>, t: &TableInfo) {
    if !t.schema_usage {
        let role = ctx.grants.role().to_string();
        ctx.grants.need(
            format!("USAGE on schema {}", t.schema),
            "to write the target",
            format!("GRANT USAGE ON SCHEMA {} TO {role}", t.schema),
        );
    }
    for (has, privilege) in [
        (t.select, "SELECT"),
        (t.insert, "INSERT"),
        (t.update, "UPDATE"),
        (t.delete, "DELETE"),
    ] {
        if !has {
            ctx.grants.table(&t.display, privilege);
        }
    }
}

/// Owner columns: one per key column, existing, of the key's type and
/// collation (key ranges are applied to them, so they must order alike; a
/// different type modifier, e.g. varchar(20) vs varchar(40), orders the same
/// and is accepted), and led by an index.
fn owner_checks(
    ctx: &mut Ctx<'_>,
    label: &str,
    found: &Found<'_>,
    t: &TableInfo,
    owner: &[String],
) {
    let table = &t.display;
    if owner.len() != found.key_columns.len() {
        let key: Vec<&str> = found
            .key_columns
            .iter()
            .map(|c| c.display.as_str())
            .collect();
        ctx.problem(
            label,
            format!(
                "owner has {} column(s) but the key of {} ({}) has {}; list the target columns \
                 holding the source key, one per key column, in key order",
                owner.len(),
                found.source.display,
                key.join(", "),
                key.len()
            ),
        );
        return;
    }
    let mut columns = Vec::new();
    for (name, key) in owner.iter().zip(found.key_columns) {
        let Some(column) = t.column(name) else {
            ctx.problem(
                label,
                format!(
                    "owner: {table} has no column {}; add it (ALTER TABLE {table} ADD COLUMN {} \
                     {}) or fix owner",
                    pretty_ident(name),
                    pretty_ident(name),
                    key.type_name
                ),
            );
            continue;
        };
        columns.push(column);
        if column.type_oid != key.type_oid {
            ctx.problem(
                label,
                format!(
                    "owner {} is {} but key column {} of {} is {}; owners are matched and ranged \
                     like the key, so run ALTER TABLE {table} ALTER COLUMN {} TYPE {}",
                    column.display,
                    column.type_name,
                    key.display,
                    found.source.display,
                    key.type_name,
                    column.display,
                    key.type_name
                ),
            );
        } else if column.collation != key.collation {
            let collation = key.collation_name.as_deref().unwrap_or("default");
            ctx.problem(
                label,
                format!(
                    "owner {} has collation {} but key column {} has {collation}, so they order \
                     differently; run ALTER TABLE {table} ALTER COLUMN {} TYPE {} COLLATE \
                     {collation}",
                    column.display,
                    column.collation_name.as_deref().unwrap_or("default"),
                    key.display,
                    column.display,
                    column.type_name
                ),
            );
        }
    }
    if columns.len() == owner.len() && !has_owner_index(t, &columns) {
        let list: Vec<&str> = columns.iter().map(|c| c.display.as_str()).collect();
        ctx.problem(
            label,
            format!(
                "no index of {table} starts with the owner columns ({}); every batch finds a key's \
                 rows through one, so run CREATE INDEX ON {table} ({})",
                list.join(", "),
                list.join(", ")
            ),
        );
    }
}

/// A valid, whole-table btree index whose leading key columns are the owner
/// columns (in any order: batches look owners up by equality).
pub(super) fn has_owner_index(t: &TableInfo, owner: &[&Column]) -> bool {
    let wanted: HashSet<i16> = owner.iter().map(|c| c.num).collect();
    t.indexes.iter().any(|i| {
        i.valid
            && i.btree
            && !i.partial
            && i.columns.len() >= wanted.len()
            && i.columns[..wanted.len()]
                .iter()
                .copied()
                .collect::<HashSet<_>>()
                == wanted
    })
}

/// Ask Postgres for the select's output columns: names and types exactly
/// as the engine's `CROSS JOIN LATERAL` will produce them.
pub(super) async fn describe(
    ctx: &mut Ctx<'_>,
    label: &str,
    source: &TableInfo,
    select: &Select<'_>,
) -> Result<Option<Vec<Output>>, Error> {
    let head = format!(
        "SELECT m.* FROM {} AS src CROSS JOIN LATERAL (\n",
        source.display
    );
    let sql = format!("{head}{}\n) AS m LIMIT 0", select.sql());
    let statement = match ctx.session.prepare(&sql).await? {
        Ok(statement) => statement,
        Err(refusal) => {
            let at = select.refusal_at(&refusal, &head);
            let field = select.field;
            ctx.refused(label, &refusal, || {
                format!("{field} does not compile: {at}")
            });
            return Ok(None);
        }
    };
    let oids: Vec<u32> = statement
        .columns()
        .iter()
        .map(|c| c.type_().oid())
        .collect();
    let mods: Vec<i32> = statement
        .columns()
        .iter()
        .map(|c| c.type_modifier())
        .collect();
    let names: Vec<String> = statement
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    drop(statement);
    let types = "SELECT format_type(t.oid, t.mod) FROM unnest($1::oid[], $2::int4[]) \
                 WITH ORDINALITY AS t(oid, mod, n) ORDER BY t.n";
    let rows = match ctx.session.query(types, &[&oids, &mods]).await? {
        Ok(rows) => rows,
        Err(refusal) => {
            ctx.query_failed("the types of the select's columns", &refusal);
            return Ok(None);
        }
    };
    Ok(Some(
        names
            .into_iter()
            .zip(rows.iter().map(|r| r.get::<_, String>(0)))
            .map(|(name, type_name)| Output { name, type_name })
            .collect(),
    ))
}

/// Output names against the target: each a distinct, writable target
/// column; every owner column among them; no NOT NULL column left out.
pub(super) fn output_checks(
    ctx: &mut Ctx<'_>,
    label: &str,
    t: &TableInfo,
    outputs: &[Output],
    owner: &[String],
    select: &Select<'_>,
) {
    let table = &t.display;
    let field = select.field;
    let (owner_name, example) = select.owner;
    if outputs.is_empty() {
        ctx.problem(
            label,
            format!("{field} has no output columns; select the columns of {table} to fill"),
        );
        return;
    }
    let mut seen = HashSet::new();
    for (i, output) in outputs.iter().enumerate() {
        let name = pretty_ident(&output.name);
        if output.name == "?column?" {
            ctx.problem(
                label,
                format!(
                    "{field}: output column {} has no name; name it after its column of {table} \
                     with AS",
                    i + 1
                ),
            );
        } else if !seen.insert(output.name.as_str()) {
            ctx.problem(
                label,
                format!(
                    "{field}: two output columns are named {name}; each fills one column of \
                     {table}, so rename one with AS"
                ),
            );
        } else {
            match t.column(&output.name) {
                None => ctx.problem(
                    label,
                    format!(
                        "{field}: output column {name} is not a column of {table}; rename it with \
                         AS to the column it fills, or add the column"
                    ),
                ),
                Some(c) if c.generated || c.identity_always => ctx.problem(
                    label,
                    format!(
                        "{field}: output column {name} fills {table}.{}, which is generated by \
                         Postgres and cannot be written; drop it from {field}",
                        c.display
                    ),
                ),
                Some(_) => {}
            }
        }
    }
    for o in owner {
        if t.column(o).is_some() && !outputs.iter().any(|out| out.name == *o) {
            ctx.problem(
                label,
                format!(
                    "{owner_name} {} is not an output column of {field}; select the source key \
                     into it (e.g. {example} AS {})",
                    pretty_ident(o),
                    pretty_ident(o)
                ),
            );
        }
    }
    for c in &t.columns {
        let filled_by_postgres = c.has_default || c.generated || c.identity_always;
        if c.not_null && !filled_by_postgres && !outputs.iter().any(|o| o.name == c.name) {
            ctx.problem(
                label,
                format!(
                    "{field} does not produce {table}.{}, which is NOT NULL without a default; add \
                     it to {field} (... AS {}) or give it a default",
                    c.display, c.display
                ),
            );
        }
    }
}

/// Every target column filled and every output type must compare (see
/// [`super::probe`]): rows are matched whole.
pub(super) async fn types_compare(
    ctx: &mut Ctx<'_>,
    label: &str,
    t: &TableInfo,
    outputs: &[Output],
    select: &Select<'_>,
) -> Result<bool, Error> {
    let field = select.field;
    let mut ok = true;
    for output in outputs {
        let Some(column) = t.column(&output.name) else {
            continue;
        };
        if let Some(refusal) = ctx.type_refusal(&column.type_name).await? {
            ctx.problem(
                label,
                format!(
                    "column {}.{} is {}, which cannot be compared ({}), so walshift cannot tell a \
                     stale row from a fresh one; {}: ALTER TABLE {} ALTER COLUMN {} TYPE ...",
                    t.display,
                    column.display,
                    column.type_name,
                    refusal.message,
                    type_advice(&column.type_name),
                    t.display,
                    column.display
                ),
            );
            ok = false;
        } else if output.type_name != column.type_name
            && let Some(refusal) = ctx.type_refusal(&output.type_name).await?
        {
            ctx.problem(
                label,
                format!(
                    "{field}: output column {} is {}, which cannot be compared ({}); cast it to \
                     the column's type ({})",
                    pretty_ident(&output.name),
                    output.type_name,
                    refusal.message,
                    column.type_name
                ),
            );
            ok = false;
        }
    }
    Ok(ok)
}

/// Postgres's verdict on writing the select's rows into the target, with
/// the assignment casts an INSERT applies.
pub(super) async fn assignable(
    ctx: &mut Ctx<'_>,
    label: &str,
    source: &TableInfo,
    t: &TableInfo,
    outputs: &[Output],
    select: &Select<'_>,
) -> Result<bool, Error> {
    let columns: Vec<&str> = outputs
        .iter()
        .filter_map(|o| t.column(&o.name))
        .map(|c| c.display.as_str())
        .collect();
    let head = format!(
        "INSERT INTO {} ({}) SELECT m.* FROM {} AS src CROSS JOIN LATERAL (\n",
        t.display,
        columns.join(", "),
        source.display
    );
    let sql = format!("{head}{}\n) AS m WHERE FALSE", select.sql());
    match ctx.session.prepare(&sql).await? {
        Ok(_) => Ok(true),
        Err(refusal) => {
            let at = select.refusal_at(&refusal, &head);
            let field = select.field;
            ctx.refused(label, &refusal, || {
                format!("{field}: its rows do not fit {}: {at}", t.display)
            });
            Ok(false)
        }
    }
}

/// The unique column set rows mode upserts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ConflictKey {
    /// Column names, in index order.
    pub names: Vec<String>,
    /// The same, quoted, for messages.
    pub columns: Vec<String>,
    /// Columns (quoted) that allow NULL.
    pub nullable: Vec<String>,
}

/// The target's best unique key whose columns the select produces: the
/// primary key, else a unique index on NOT NULL columns, else any unique
/// index (fewest columns, then by name). Only valid, immediate (DEFERRABLE
/// ones cannot arbitrate ON CONFLICT), whole-table indexes on plain columns
/// qualify: exactly what `ON CONFLICT (columns)` will infer.
pub(super) fn conflict_key(t: &TableInfo, outputs: &[String]) -> Option<ConflictKey> {
    let mut candidates: Vec<(bool, bool, usize, &str, Vec<&Column>)> = t
        .indexes
        .iter()
        .filter(|i| i.is_plain_unique() && i.immediate)
        .filter_map(|i| {
            let columns: Option<Vec<&Column>> =
                i.columns.iter().map(|&n| t.column_by_num(n)).collect();
            let columns = columns?;
            columns.iter().all(|c| outputs.contains(&c.name)).then(|| {
                let nullable = columns.iter().any(|c| !c.not_null);
                (
                    !i.primary,
                    nullable,
                    columns.len(),
                    i.display.as_str(),
                    columns,
                )
            })
        })
        .collect();
    candidates.sort_by(|a, b| (a.0, a.1, a.2, a.3).cmp(&(b.0, b.1, b.2, b.3)));
    let (.., columns) = candidates.into_iter().next()?;
    Some(ConflictKey {
        names: columns.iter().map(|c| c.name.clone()).collect(),
        columns: columns.iter().map(|c| c.display.clone()).collect(),
        nullable: columns
            .iter()
            .filter(|c| !c.not_null)
            .map(|c| c.display.clone())
            .collect(),
    })
}
