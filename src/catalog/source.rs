//! The source side of a mirror: which columns are its key, and whether the
//! WAL will carry that key for every change (the replica identity).
//!
//! The engine learns which keys changed from the stream alone: an insert
//! or update carries the new row, but a delete, and an update that changes
//! the key, carry only the *old* row's replica identity columns. If those do
//! not include the key, the mirror cannot tell which key to recompute.

use super::relation::{Column, TableInfo};
use super::session::{Asked, CheckTransaction};

/// The source key: the primary key, or the spec's `key`, which must be NOT
/// NULL columns covered by a unique index. `Err` holds one message per
/// thing wrong (without the mirror label).
pub(super) fn resolve_key<'r>(
    rel: &'r TableInfo,
    spec_key: Option<&[String]>,
) -> Result<Vec<&'r Column>, Vec<String>> {
    let table = &rel.display;
    let columns: Vec<&Column> = match spec_key {
        None => {
            let Some(pk) = rel.primary_key() else {
                return Err(vec![format!(
                    "source {table} has no primary key, so walshift cannot tell its rows apart; \
                     add one (ALTER TABLE {table} ADD PRIMARY KEY (...)) or set key = [...] to \
                     NOT NULL columns with a unique index"
                )]);
            };
            let columns: Option<Vec<&Column>> =
                pk.columns.iter().map(|&n| rel.column_by_num(n)).collect();
            columns.unwrap_or_default()
        }
        Some(names) => {
            let mut problems = Vec::new();
            let mut columns = Vec::new();
            for name in names {
                match rel.column(name) {
                    Some(c) => columns.push(c),
                    None => problems.push(format!(
                        "key: {table} has no column {}; fix key",
                        super::pretty_ident(name)
                    )),
                }
            }
            for c in &columns {
                if !c.not_null {
                    problems.push(format!(
                        "key: column {} allows NULL, so it cannot identify a row; run ALTER TABLE \
                         {table} ALTER COLUMN {} SET NOT NULL",
                        c.display, c.display
                    ));
                }
            }
            if problems.is_empty() {
                let nums: Vec<i16> = columns.iter().map(|c| c.num).collect();
                let unique = rel
                    .indexes
                    .iter()
                    .any(|i| i.is_plain_unique() && i.columns.iter().all(|n| nums.contains(n)));
                if !unique {
                    let list: Vec<&str> = columns.iter().map(|c| c.display.as_str()).collect();
                    problems.push(format!(
                        "key: no unique index of {table} is on ({}) or a subset of it, so the key \
                         may not identify one row; run CREATE UNIQUE INDEX ON {table} ({}) or name \
                         unique columns in key",
                        list.join(", "),
                        list.join(", ")
                    ));
                }
            }
            if !problems.is_empty() {
                return Err(problems);
            }
            columns
        }
    };
    let arrays: Vec<String> = columns
        .iter()
        .filter(|c| c.is_array)
        .map(|c| {
            format!(
                "key: column {} is an array ({}); keys travel as text arrays, so the key must be \
                 scalar columns: set key = [...] to other unique NOT NULL columns",
                c.display, c.type_name
            )
        })
        .collect();
    if arrays.is_empty() {
        Ok(columns)
    } else {
        Err(arrays)
    }
}

/// One table whose changes the stream carries: the source itself, or each
/// leaf partition of a partitioned source (changes are decoded per leaf, with
/// the leaf's own replica identity).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Leaf {
    /// `schema.name`, quoted.
    pub display: String,
    pub replica_identity: char,
    /// Primary key column names, when there is a primary key.
    pub primary_key: Option<Vec<String>>,
    /// Key columns of the `REPLICA IDENTITY USING INDEX` index, when it exists.
    pub identity_index: Option<Vec<String>>,
}

const LEAVES: &str = "\
SELECT format('%I.%I', n.nspname, c.relname) AS display, c.relreplident::text AS replident,
       (SELECT ARRAY(SELECT a.attname::text
                     FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
                     JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                     WHERE k.n <= i.indnkeyatts ORDER BY k.n)
          FROM pg_catalog.pg_index AS i WHERE i.indrelid = c.oid AND i.indisprimary) AS primary_key,
       (SELECT ARRAY(SELECT a.attname::text
                     FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
                     JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                     WHERE k.n <= i.indnkeyatts ORDER BY k.n)
          FROM pg_catalog.pg_index AS i WHERE i.indrelid = c.oid AND i.indisreplident) AS identity_index
FROM pg_catalog.pg_class AS c
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE (c.oid = $1 AND c.relkind = 'r')
   OR c.oid IN (SELECT relid FROM pg_catalog.pg_partition_tree($1::oid::regclass) WHERE isleaf)
ORDER BY 1";

/// The tables whose replica identity matters for `rel`: itself when it is
/// an ordinary table, its leaf partitions when it is partitioned.
pub(super) async fn leaves(session: &CheckTransaction<'_>, rel: &TableInfo) -> Asked<Vec<Leaf>> {
    Ok(session.query(LEAVES, &[&rel.oid]).await?.map(|rows| {
        rows.iter()
            .map(|row| Leaf {
                display: row.get("display"),
                replica_identity: row
                    .get::<_, String>("replident")
                    .chars()
                    .next()
                    .unwrap_or(' '),
                primary_key: row.get("primary_key"),
                identity_index: row.get("identity_index"),
            })
            .collect()
    }))
}

/// What is wrong with `leaf`'s replica identity for `key`, if anything.
pub(super) fn identity_problem(leaf: &Leaf, key: &[&str]) -> Option<String> {
    let covers = |cols: &[String]| key.iter().all(|k| cols.iter().any(|c| c == k));
    match leaf.replica_identity {
        'f' => None,
        'd' => match &leaf.primary_key {
            Some(pk) if covers(pk) => None,
            Some(pk) => Some(format!(
                "has REPLICA IDENTITY DEFAULT, whose primary key ({}) lacks key column(s) of the \
                 mirror",
                pk.join(", ")
            )),
            None => Some(
                "has REPLICA IDENTITY DEFAULT but no primary key, so deletes carry no key (and \
                 once it is published Postgres rejects its UPDATEs and DELETEs)"
                    .to_string(),
            ),
        },
        'i' => match &leaf.identity_index {
            Some(cols) if covers(cols) => None,
            Some(cols) => Some(format!(
                "has REPLICA IDENTITY USING INDEX on ({}), which lacks key column(s) of the mirror",
                cols.join(", ")
            )),
            None => Some(
                "has REPLICA IDENTITY USING INDEX but the index is gone, so deletes carry no key"
                    .to_string(),
            ),
        },
        _ => Some("has REPLICA IDENTITY NOTHING, so deletes and key changes carry no key".into()),
    }
}

/// The replica identity to set on `leaf`: DEFAULT when its primary key
/// covers the key, else `USING INDEX` of `unique_index` (a unique index on
/// exactly the key, when the caller knows one), else FULL.
pub(super) fn identity_fix(leaf: &Leaf, key: &[&str], unique_index: Option<&str>) -> String {
    let covered = leaf
        .primary_key
        .as_ref()
        .is_some_and(|pk| key.iter().all(|k| pk.iter().any(|c| c == k)));
    if covered {
        "DEFAULT".to_string()
    } else if let Some(index) = unique_index {
        format!("USING INDEX {index}")
    } else {
        "FULL".to_string()
    }
}

/// A unique index of `rel` usable as its replica identity for exactly the
/// key columns: valid, immediate, whole-table, on NOT NULL columns.
pub(super) fn identity_index_for<'r>(rel: &'r TableInfo, key: &[&Column]) -> Option<&'r str> {
    let mut nums: Vec<i16> = key.iter().map(|c| c.num).collect();
    nums.sort_unstable();
    rel.indexes
        .iter()
        .find(|i| {
            let mut cols = i.columns.clone();
            cols.sort_unstable();
            i.is_plain_unique() && i.immediate && cols == nums
        })
        .map(|i| i.display.as_str())
}
