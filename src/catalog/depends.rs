//! A mirror's dependencies: other tables its mapping reads (`depends`), and
//! the tables it reads without declaring them.
//!
//! ```text
//!  depends[i] ─▶ table: exists, a logged table, primary key, replica identity
//!            ─▶ columns of the source: one per key column, of its type
//!            ─▶ an index of the source led by them (a change finds its rows)
//!  mapping ─▶ EXPLAIN (VERBOSE) of its whole-table verify query ─▶ relations
//!            read that are neither the source, the target nor declared ─▶ warning
//! ```
//!
//! A change to a dependency row makes dirty the source rows whose `columns`
//! hold its key *now*: a source row that pointed at it before was changed
//! itself, and that change is in the stream (docs/design.md §4).

use std::collections::BTreeSet;

use tokio_postgres::Error;

use super::relation::{Column, TableInfo};
use super::{Ctx, DependPlan, Lookup, MirrorKind, pretty, pretty_ident, rows};
use crate::ident::QualifiedName;
use crate::mirror::sql::{self, KeyColumn, Scope, VerifyOutput};
use crate::spec::Depends;

/// Checks every `depends` entry of a mirror; `None` when any has a problem
/// (already reported).
pub(super) async fn check(
    ctx: &mut Ctx<'_>,
    label: &str,
    source: &TableInfo,
    depends: &[Depends],
    must_publish: impl Fn(&QualifiedName) -> bool,
) -> Result<Option<Vec<DependPlan>>, Error> {
    let before = ctx.problems.len();
    let mut out = Vec::new();
    for (i, d) in depends.iter().enumerate() {
        let field = format!("depends[{i}]");
        let table = match ctx.relation(&d.table).await? {
            Lookup::Found(t) => t,
            Lookup::Missing => {
                ctx.problem(
                    label,
                    format!(
                        "{field}: table {} does not exist; create it or fix the table name",
                        pretty(&d.table)
                    ),
                );
                continue;
            }
            Lookup::Failed => continue,
        };
        if let Some(plan) = one(ctx, label, &field, source, d, &table, &must_publish).await? {
            out.push(plan);
        }
    }
    Ok((ctx.problems.len() == before).then_some(out))
}

/// One `depends` entry of a mirror, as the checks of [`one`] see it.
#[derive(Clone, Copy)]
struct Entry<'a> {
    label: &'a str,
    /// `depends[i]`, as problems name the entry.
    field: &'a str,
    source: &'a TableInfo,
    d: &'a Depends,
    table: &'a TableInfo,
}

/// Checks one `depends` entry whose table exists; `None` when it has a
/// problem (already reported).
async fn one(
    ctx: &mut Ctx<'_>,
    label: &str,
    field: &str,
    source: &TableInfo,
    d: &Depends,
    table: &TableInfo,
    must_publish: &impl Fn(&QualifiedName) -> bool,
) -> Result<Option<DependPlan>, Error> {
    let entry = Entry {
        label,
        field,
        source,
        d,
        table,
    };
    let Some(key) = entry.key(ctx).await? else {
        return Ok(None);
    };
    let Some(refs) = entry.refs(ctx, &key) else {
        return Ok(None);
    };
    entry.grants(ctx, must_publish);
    Ok(Some(DependPlan {
        table: d.table.clone(),
        table_oid: table.oid,
        key: key
            .iter()
            .map(|c| KeyColumn::new(c.name.clone(), c.type_name.clone()))
            .collect(),
        refs: refs
            .iter()
            .map(|c| KeyColumn::new(c.name.clone(), c.type_name.clone()))
            .collect(),
    }))
}

impl<'a> Entry<'a> {
    /// Whether the table is a logged table with a primary key, and whether
    /// its replica identity carries that key; returns the key's columns.
    async fn key(&self, ctx: &mut Ctx<'_>) -> Result<Option<Vec<&'a Column>>, Error> {
        let Entry {
            label,
            field,
            table,
            ..
        } = *self;
        let shown = &table.display;
        if !table.is_table() {
            ctx.problem(
                label,
                format!(
                    "{field}: {shown} is not a table (ordinary or partitioned), so its changes do \
                     not reach the WAL stream; depend on the tables it reads instead"
                ),
            );
            return Ok(None);
        }
        if table.persistence != 'p' {
            ctx.problem(
                label,
                format!(
                    "{field}: {shown} is not a logged table, so its changes never reach the WAL \
                     stream; run ALTER TABLE {shown} SET LOGGED"
                ),
            );
            return Ok(None);
        }
        let Some(pk) = table.primary_key() else {
            ctx.problem(
                label,
                format!(
                    "{field}: {shown} has no primary key, so walshift cannot tell which of its \
                     rows changed; add one (ALTER TABLE {shown} ADD PRIMARY KEY (...))"
                ),
            );
            return Ok(None);
        };
        let key: Vec<&Column> = pk
            .columns
            .iter()
            .filter_map(|&n| table.column_by_num(n))
            .collect();
        super::mirror::replica_identity(ctx, label, table, &key).await?;
        Ok(Some(key))
    }

    /// Whether `columns` name, one per key column and of its type, source
    /// columns that an index of the source starts with; returns them.
    fn refs(&self, ctx: &mut Ctx<'_>, key: &[&Column]) -> Option<Vec<&'a Column>> {
        let Entry {
            label,
            field,
            source,
            d,
            table,
        } = *self;
        let shown = &table.display;
        let key_names: Vec<&str> = key.iter().map(|c| c.display.as_str()).collect();
        if d.columns.len() != key.len() {
            ctx.problem(
                label,
                format!(
                    "{field}: columns lists {} column(s) but the primary key of {shown} ({}) has \
                     {}; list the source columns holding that key, one per key column, in key \
                     order",
                    d.columns.len(),
                    key_names.join(", "),
                    key.len()
                ),
            );
            return None;
        }
        let mut refs = Vec::new();
        for (name, k) in d.columns.iter().zip(key) {
            let Some(c) = source.column(name) else {
                ctx.problem(
                    label,
                    format!(
                        "{field}: source {} has no column {}; list the source columns that hold \
                         the key of {shown}",
                        source.display,
                        pretty_ident(name)
                    ),
                );
                continue;
            };
            if c.type_oid != k.type_oid {
                ctx.problem(
                    label,
                    format!(
                        "{field}: {} of {} is {} but key column {} of {shown} is {}; a change \
                         finds its rows by equality of the two, so make them the same type (ALTER \
                         TABLE {} ALTER COLUMN {} TYPE {})",
                        c.display,
                        source.display,
                        c.type_name,
                        k.display,
                        k.type_name,
                        source.display,
                        c.display,
                        k.type_name
                    ),
                );
                continue;
            }
            refs.push(c);
        }
        if refs.len() != key.len() {
            return None;
        }
        if !rows::has_owner_index(source, &refs) {
            let list: Vec<&str> = refs.iter().map(|c| c.display.as_str()).collect();
            ctx.problem(
                label,
                format!(
                    "{field}: no index of {} starts with ({}); every change to {shown} looks its \
                     rows up through one, so run CREATE INDEX ON {} ({})",
                    source.display,
                    list.join(", "),
                    source.display,
                    list.join(", ")
                ),
            );
            return None;
        }
        Some(refs)
    }

    /// What the role needs to read the table, and to add it to the
    /// publication when `run` must.
    fn grants(&self, ctx: &mut Ctx<'_>, must_publish: &impl Fn(&QualifiedName) -> bool) {
        let Entry { d, table, .. } = *self;
        let shown = &table.display;
        if !table.schema_usage {
            let role = ctx.grants.role().to_string();
            ctx.grants.need(
                format!("USAGE on schema {}", table.schema),
                "to read a table the mapping depends on",
                format!("GRANT USAGE ON SCHEMA {} TO {role}", table.schema),
            );
        }
        if !table.select {
            ctx.grants.table(shown, "SELECT");
        }
        if must_publish(&d.table) {
            super::mirror::publication_ownership(ctx, table);
        }
    }
}

/// The tables the mapping reads besides the source and the target, as
/// Postgres plans them: the relations of `EXPLAIN (VERBOSE, FORMAT JSON)`
/// of the mapping's whole-table verify query (never executed). Tables read
/// inside a PL/pgSQL function do not show; inlined SQL functions and views
/// do, as the tables under them.
pub(super) async fn read_tables(
    ctx: &mut Ctx<'_>,
    source: &QualifiedName,
    kind: &MirrorKind,
) -> Result<Vec<QualifiedName>, Error> {
    let whole = Scope::Range {
        lower: false,
        upper: false,
    };
    let (statement, target) = match kind {
        MirrorKind::Set(p) => (sql::set_verify(p, whole, VerifyOutput::Count), None),
        MirrorKind::Rows(p) => (
            sql::rows_verify(p, whole, VerifyOutput::Count),
            Some(&p.target),
        ),
    };
    let explain = format!("EXPLAIN (VERBOSE, FORMAT JSON) {}", statement.sql);
    let Ok(rows) = ctx.session.query(&explain, &[]).await? else {
        // The statements were prepared already; a refusal here says nothing
        // about dependencies.
        return Ok(Vec::new());
    };
    let mut found = BTreeSet::new();
    for row in rows {
        let plan: serde_json::Value = match row.try_get::<_, serde_json::Value>(0) {
            Ok(v) => v,
            Err(_) => continue,
        };
        relations(&plan, &mut found);
    }
    Ok(found
        .into_iter()
        .filter(|(schema, name)| {
            let n = QualifiedName::new(schema.clone(), name.clone());
            &n != source && Some(&n) != target
        })
        .map(|(schema, name)| QualifiedName::new(schema, name))
        .collect())
}

/// Every `("Schema", "Relation Name")` of a JSON plan.
fn relations(v: &serde_json::Value, out: &mut BTreeSet<(String, String)>) {
    match v {
        serde_json::Value::Object(map) => {
            if let (
                Some(serde_json::Value::String(schema)),
                Some(serde_json::Value::String(name)),
            ) = (map.get("Schema"), map.get("Relation Name"))
            {
                out.insert((schema.clone(), name.clone()));
            }
            for child in map.values() {
                relations(child, out);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                relations(item, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relations_are_collected_from_every_level_of_a_plan() {
        let plan = serde_json::json!([{"Plan": {
            "Node Type": "Aggregate",
            "Plans": [{
                "Node Type": "Nested Loop",
                "Plans": [
                    {"Node Type": "Seq Scan", "Relation Name": "posts", "Schema": "public"},
                    {"Node Type": "Index Only Scan", "Relation Name": "users", "Schema": "app",
                     "Plans": [{"Node Type": "Seq Scan", "Relation Name": "posts", "Schema": "public"}]}
                ]
            }]
        }}]);
        let mut out = BTreeSet::new();
        relations(&plan, &mut out);
        let got: Vec<_> = out.into_iter().collect();
        assert_eq!(
            got,
            vec![
                ("app".to_string(), "users".to_string()),
                ("public".to_string(), "posts".to_string())
            ]
        );
    }
}
