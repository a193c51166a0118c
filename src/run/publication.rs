//! The publication the stream reads: which tables it lists, and on
//! PostgreSQL 15 and later which of their columns (docs/design.md §4).
//!
//! The stream only tells walshift which keys changed, so a one-way mirror's
//! source needs its key columns and a dependency its primary key; every other
//! column the walsender would print, send and walshift would parse for
//! nothing. A publication column list leaves them out. It must cover the
//! table's replica identity, or PostgreSQL refuses the application's UPDATE
//! and DELETE on the table, so a list is only made where the identity is the
//! primary key or an index, and it always includes those columns:
//!
//! | table | column list |
//! |---|---|
//! | one-way source, dependency | key (or primary key) ∪ replica identity |
//! | two-way source or target | none: the stream compares whole old and new rows |
//! | REPLICA IDENTITY FULL or NOTHING, partitioned or inherited, before 15 | none |
//!
//! An existing publication is changed only when it must be: it lacks a table,
//! lists one more, or its list leaves out a column the stream reads. A wider
//! list than needed (say, one made by an older walshift without lists) is
//! left alone, so a role that does not own the tables can still run against
//! a publication a DBA made.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::catalog::{COLUMN_LISTS_SINCE, MirrorKind, Plan};
use crate::error_policy::pg_message;
use crate::ident::{QualifiedName, quote_ident};
use crate::spec::Spec;
use crate::state;

use super::setup::sources;

/// One table of the publication: `columns` is its column list, `None` for
/// every column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub table: QualifiedName,
    pub columns: Option<Vec<String>>,
}

impl Listed {
    /// `public.users (id)`, as `FOR TABLE` and `SET TABLE` take it.
    fn sql(&self) -> String {
        match &self.columns {
            None => self.table.to_string(),
            Some(cols) => {
                let cols: Vec<String> = cols.iter().map(|c| quote_ident(c)).collect();
                format!("{} ({})", self.table, cols.join(", "))
            }
        }
    }
}

/// What the catalog says about a table a column list would be made for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableFacts {
    /// `pg_class.relreplident`.
    pub identity: char,
    /// Partitioned, or with inheritance children: their replica identities
    /// would have to be covered too, so no list is made.
    pub has_children: bool,
    /// The replica identity's columns (primary key or the identity index).
    pub identity_columns: Vec<String>,
    /// Every column, in attribute order, and which of them are generated.
    pub columns: Vec<String>,
    pub generated: Vec<String>,
}

/// The columns of `table` the stream reads, or `None` when it reads whole
/// rows: a two-way mirror compares the old row with the new one.
pub fn read_columns(plan: &Plan, table: &QualifiedName) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |names: &mut dyn Iterator<Item = &String>| {
        for n in names {
            if !out.contains(n) {
                out.push(n.clone());
            }
        }
    };
    for m in &plan.mirrors {
        if &m.source == table {
            if m.two_way.is_some() {
                return None;
            }
            add(&mut m.key.iter().map(|k| &k.name));
        }
        if let (Some(_), MirrorKind::Rows(p)) = (&m.two_way, &m.kind)
            && &p.target == table
        {
            return None;
        }
        for d in m.depends.iter().filter(|d| &d.table == table) {
            add(&mut d.key.iter().map(|k| &k.name));
        }
    }
    Some(out)
}

/// The column list for a table the stream reads `read` of: those columns and
/// the replica identity's, in the table's order; `None` where a list could
/// break the application's writes or is not possible.
pub fn column_list(read: Option<Vec<String>>, facts: &TableFacts) -> Option<Vec<String>> {
    let read = read?;
    if !matches!(facts.identity, 'd' | 'i') || facts.has_children {
        return None;
    }
    if facts.identity_columns.is_empty() {
        return None;
    }
    let wanted = |c: &String| read.contains(c) || facts.identity_columns.contains(c);
    if facts
        .columns
        .iter()
        .any(|c| wanted(c) && facts.generated.contains(c))
    {
        return None;
    }
    let list: Vec<String> = facts
        .columns
        .iter()
        .filter(|c| wanted(c))
        .cloned()
        .collect();
    // A name the table lacks (dropped since the check) leaves it to the
    // stream's own error, which names the column.
    if read.iter().any(|c| !list.contains(c)) || list.len() == facts.columns.len() {
        return None;
    }
    Some(list)
}

/// Whether the published `have` gives the stream every column `want` needs.
fn covers(have: &Option<Vec<String>>, want: &Option<Vec<String>>) -> bool {
    match (have, want) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(have), Some(want)) => want.iter().all(|c| have.contains(c)),
    }
}

const TABLE_FACTS: &str = "\
SELECT c.relreplident::text AS identity,
       c.relkind = 'p' OR c.relhassubclass AS has_children,
       ARRAY(SELECT a.attname::text FROM pg_catalog.pg_index AS i
             JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
             WHERE i.indrelid = c.oid
               AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))
             ORDER BY a.attnum) AS identity_columns,
       ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute AS a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum) AS columns,
       ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute AS a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated <> ''
             ORDER BY a.attnum) AS generated
FROM pg_catalog.pg_class AS c WHERE c.oid = $1::text::regclass";

async fn table_facts(
    client: &Client,
    table: &QualifiedName,
) -> Result<TableFacts, tokio_postgres::Error> {
    let row = client.query_one(TABLE_FACTS, &[&table.to_string()]).await?;
    let identity: String = row.get("identity");
    Ok(TableFacts {
        identity: identity.chars().next().unwrap_or('d'),
        has_children: row.get("has_children"),
        identity_columns: row.get("identity_columns"),
        columns: row.get("columns"),
        generated: row.get("generated"),
    })
}

/// Every table the publication lists, in spec order, with its column list.
pub async fn wanted(client: &Client, plan: &Plan) -> Result<Vec<Listed>, String> {
    let lists = plan.server_version_num >= COLUMN_LISTS_SINCE;
    let mut out = Vec::new();
    for table in sources(plan) {
        let columns = if lists {
            let facts = table_facts(client, &table)
                .await
                .map_err(|e| format!("reading the columns of {table}: {}", pg_message(&e)))?;
            column_list(read_columns(plan, &table), &facts)
        } else {
            None
        };
        out.push(Listed { table, columns });
    }
    Ok(out)
}

/// `(schema, name) -> column list` of what the publication lists now, with
/// `{lists}` the column list's expression (NULL before 15).
const PUBLISHED: &str = "\
SELECT n.nspname::text, c.relname::text, {lists}
FROM pg_catalog.pg_publication_rel AS r
JOIN pg_catalog.pg_publication AS p ON p.oid = r.prpubid
JOIN pg_catalog.pg_class AS c ON c.oid = r.prrelid
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE p.pubname = $1";

const LISTS_15: &str = "\
CASE WHEN r.prattrs IS NULL THEN NULL ELSE
  ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute AS a
        WHERE a.attrelid = r.prrelid AND a.attnum = ANY(r.prattrs::int2[]) ORDER BY a.attnum)
END";

type Published = HashMap<(String, String), Option<Vec<String>>>;

async fn published(
    client: &Client,
    pubname: &str,
    version_num: u32,
) -> Result<Published, tokio_postgres::Error> {
    let lists = if version_num >= COLUMN_LISTS_SINCE {
        LISTS_15
    } else {
        "NULL::text[]"
    };
    let sql = PUBLISHED.replace("{lists}", lists);
    Ok(client
        .query(&sql, &[&pubname])
        .await?
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect())
}

/// Whether the publication as it stands gives the stream what it needs.
fn up_to_date(have: &Published, want: &[Listed]) -> bool {
    have.len() == want.len()
        && want.iter().all(|l| {
            have.get(&(l.table.schema.clone(), l.table.name.clone()))
                .is_some_and(|cols| covers(cols, &l.columns))
        })
}

/// `what` failed, as one line.
fn fail(what: &str, e: tokio_postgres::Error) -> String {
    format!("{what}: {}", pg_message(&e))
}

/// The publication over the sources (and dependencies): created, or
/// brought in line with the spec (a new dependency restarts its mirror's
/// history). `created` says whether this call made it.
pub async fn ensure(
    client: &Client,
    spec: &Spec,
    plan: &Plan,
    created: &mut bool,
) -> Result<(), String> {
    let pubname = spec.publication_name();
    let want = wanted(client, plan).await?;
    let tables: Vec<String> = want.iter().map(Listed::sql).collect();
    let all_tables: Option<bool> = client
        .query_opt(
            "SELECT puballtables FROM pg_catalog.pg_publication WHERE pubname = $1",
            &[&pubname],
        )
        .await
        .map_err(|e| fail("looking up the publication", e))?
        .map(|r| r.get(0));
    let quoted = quote_ident(&pubname);
    if all_tables == Some(true) {
        // Made by hand FOR ALL TABLES: every table, whole rows.
        return Ok(());
    }
    if all_tables.is_none() {
        // Partitioned sources publish changes as their root, so keys map to
        // the table the spec names.
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {quoted} FOR TABLE {} WITH (publish_via_partition_root = true)",
                tables.join(", ")
            ))
            .await
            .map_err(|e| fail(&format!("creating publication {pubname}"), e))?;
        *created = true;
        tracing::info!(publication = %pubname, tables = %tables.join(", "), "created publication");
        return Ok(());
    }
    let have = published(client, &pubname, plan.server_version_num)
        .await
        .map_err(|e| fail("reading the publication's tables", e))?;
    if up_to_date(&have, &want) {
        return Ok(());
    }
    let had: Vec<(String, String)> = have.keys().cloned().collect();
    tracing::warn!(
        publication = %pubname,
        have = ?have,
        want = %tables.join(", "),
        "the publication's tables or columns differ from what the spec needs; updating it"
    );
    client
        .batch_execute(&format!(
            "ALTER PUBLICATION {quoted} SET TABLE {}",
            tables.join(", ")
        ))
        .await
        .map_err(|e| fail(&format!("updating publication {pubname}"), e))?;
    restart_history_of_new_dependencies(client, spec, plan, &had)
        .await
        .map_err(|e| {
            fail(
                "restarting the backfill of a mirror with a new dependency",
                e,
            )
        })
}

/// A dependency the publication did not carry until now: its changes before
/// this moment never reached the stream, so every target row that reads it
/// may be stale. Its mirrors' backfill starts over (the publication change
/// came first, so what the new pass does not see, the stream brings).
async fn restart_history_of_new_dependencies(
    client: &Client,
    spec: &Spec,
    plan: &Plan,
    had: &[(String, String)],
) -> Result<(), tokio_postgres::Error> {
    for m in &plan.mirrors {
        let new: Vec<String> = m
            .depends
            .iter()
            .filter(|d| {
                !had.iter()
                    .any(|(s, n)| *s == d.table.schema && *n == d.table.name)
            })
            .map(|d| d.table.to_string())
            .collect();
        if new.is_empty() {
            continue;
        }
        let restarted = state::restart_mirror_backfill(client, &spec.name, m.number as i32).await?;
        if restarted > 0 {
            tracing::warn!(
                mirror = m.number,
                tables = %new.join(", "),
                "the mirror depends on tables the stream did not carry until now; its history is \
                 recomputed from the start so no earlier change of theirs is missed"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(identity: char, identity_columns: &[&str], columns: &[&str]) -> TableFacts {
        TableFacts {
            identity,
            has_children: false,
            identity_columns: identity_columns.iter().map(|s| s.to_string()).collect(),
            columns: columns.iter().map(|s| s.to_string()).collect(),
            generated: Vec::new(),
        }
    }

    fn names(v: &[&str]) -> Option<Vec<String>> {
        Some(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn a_list_carries_the_read_columns_and_the_replica_identity_in_table_order() {
        let f = facts('d', &["id"], &["id", "email", "name", "status"]);
        assert_eq!(column_list(names(&["email"]), &f), names(&["id", "email"]));
        assert_eq!(column_list(names(&["id"]), &f), names(&["id"]));
        let f = facts('i', &["tenant", "id"], &["id", "tenant", "pad"]);
        assert_eq!(column_list(names(&["id"]), &f), names(&["id", "tenant"]));
    }

    #[test]
    fn no_list_where_one_could_refuse_the_applications_writes_or_gains_nothing() {
        let cols = ["id", "pad"];
        // FULL needs every column in the list; NOTHING has no identity to cover.
        assert_eq!(column_list(names(&["id"]), &facts('f', &[], &cols)), None);
        assert_eq!(column_list(names(&["id"]), &facts('n', &[], &cols)), None);
        // Children have replica identities of their own.
        let mut f = facts('d', &["id"], &cols);
        f.has_children = true;
        assert_eq!(column_list(names(&["id"]), &f), None);
        // A generated column cannot be listed.
        let mut f = facts('d', &["id"], &cols);
        f.generated = vec!["id".into()];
        assert_eq!(column_list(names(&["id"]), &f), None);
        // Whole rows read (two-way), or every column needed anyway.
        assert_eq!(column_list(None, &facts('d', &["id"], &cols)), None);
        assert_eq!(
            column_list(names(&["pad"]), &facts('d', &["id"], &cols)),
            None
        );
        // A read column the table lacks: left to the stream's error.
        assert_eq!(
            column_list(names(&["gone"]), &facts('d', &["id"], &cols)),
            None
        );
    }

    #[test]
    fn a_list_is_widened_only_when_it_leaves_out_what_the_stream_reads() {
        assert!(covers(&None, &names(&["id"])));
        assert!(covers(&None, &None));
        assert!(covers(&names(&["id", "email"]), &names(&["id"])));
        assert!(!covers(&names(&["id"]), &names(&["id", "email"])));
        assert!(!covers(&names(&["id"]), &None));
    }
}
