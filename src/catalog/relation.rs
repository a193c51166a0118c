//! What the catalog says about one table: its kind, columns, indexes, replica
//! identity and what the current role may do with it. Loaded once per named
//! table; every check reads these values instead of querying again.
//!
//! Names meant to be pasted into SQL (in the fixes problems suggest) are
//! quoted by Postgres itself (`format('%I')`, `quote_ident`), which knows
//! the keyword list of the server it runs on.

use tokio_postgres::Row;

use super::session::{Asked, CheckTransaction};
use crate::ident::QualifiedName;

#[derive(Clone, Debug)]
pub(super) struct TableInfo {
    pub oid: u32,
    /// As the spec named it (and the catalog holds it).
    pub name: QualifiedName,
    /// `schema.name`, quoted where SQL needs it.
    pub display: String,
    /// `pg_class.relkind`: `r` table, `p` partitioned table, `v` view, ...
    pub kind: char,
    /// `pg_class.relpersistence`: `p` permanent, `u` unlogged, `t` temporary.
    pub persistence: char,
    /// `pg_class.relreplident`: `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: char,
    /// The owner's role name, quoted.
    pub owner: String,
    pub owner_is_superuser: bool,
    /// Whether the current role has the owner's privileges (owns it, is a
    /// member of the owner with INHERIT, or is superuser).
    pub owned: bool,
    /// The schema, quoted, and whether the current role may use it.
    pub schema: String,
    pub schema_usage: bool,
    pub select: bool,
    pub insert: bool,
    pub update: bool,
    pub delete: bool,
    pub columns: Vec<Column>,
    pub indexes: Vec<Index>,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) struct Column {
    pub num: i16,
    pub name: String,
    /// The name quoted where SQL needs it.
    pub display: String,
    pub type_oid: u32,
    /// `format_type(atttypid, atttypmod)`: `bigint`, `character varying(20)`.
    pub type_name: String,
    pub collation: u32,
    /// The collation's name, quoted; `None` for types without one.
    pub collation_name: Option<String>,
    pub not_null: bool,
    pub has_default: bool,
    /// `GENERATED ALWAYS AS (...) STORED`: Postgres computes it, nobody writes it.
    pub generated: bool,
    /// `GENERATED ALWAYS AS IDENTITY`: writes need OVERRIDING SYSTEM VALUE.
    pub identity_always: bool,
    /// An array type (or a domain over one): keys travel as `text[]` and are
    /// cast to `<type>[]`, which has no meaning for an array key.
    pub is_array: bool,
    /// The current role may read / update this column (table or column grant).
    pub can_select: bool,
    pub can_update: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Index {
    /// The index's name, quoted.
    pub display: String,
    /// Key columns (not INCLUDE columns) by attnum; 0 is an expression.
    pub columns: Vec<i16>,
    pub unique: bool,
    pub primary: bool,
    pub valid: bool,
    /// Not DEFERRABLE: only immediate unique indexes can arbitrate ON CONFLICT.
    pub immediate: bool,
    pub partial: bool,
    pub replica_identity: bool,
    pub btree: bool,
}

impl Index {
    /// A unique index that makes its columns a key: valid, whole-table, on
    /// plain columns.
    pub(super) fn is_plain_unique(&self) -> bool {
        self.unique && self.valid && !self.partial && !self.columns.contains(&0)
    }
}

impl TableInfo {
    pub(super) fn is_table(&self) -> bool {
        matches!(self.kind, 'r' | 'p')
    }

    pub(super) fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    pub(super) fn column_by_num(&self, num: i16) -> Option<&Column> {
        self.columns.iter().find(|c| c.num == num)
    }

    pub(super) fn primary_key(&self) -> Option<&Index> {
        self.indexes.iter().find(|i| i.primary)
    }

    /// Every column readable by the current role, by table or column grants:
    /// what the mapping may read.
    pub(super) fn can_read_all(&self) -> bool {
        self.select || self.columns.iter().all(|c| c.can_select)
    }
}

/// Describe `name`, or `None` when there is no relation by that name.
pub(super) async fn load(
    session: &CheckTransaction<'_>,
    name: &QualifiedName,
) -> Asked<Option<TableInfo>> {
    let rows = match session.query(RELATION, &[&name.schema, &name.name]).await? {
        Ok(rows) => rows,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let Some(row) = rows.first() else {
        return Ok(Ok(None));
    };
    let oid: u32 = row.get("oid");
    let columns = match session.query(COLUMNS, &[&oid]).await? {
        Ok(rows) => rows.iter().map(column).collect(),
        Err(refusal) => return Ok(Err(refusal)),
    };
    let indexes = match session.query(INDEXES, &[&oid]).await? {
        Ok(rows) => rows.iter().map(index).collect(),
        Err(refusal) => return Ok(Err(refusal)),
    };
    Ok(Ok(Some(TableInfo {
        oid,
        name: name.clone(),
        display: row.get("display"),
        kind: first_char(row, "kind"),
        persistence: first_char(row, "persistence"),
        replica_identity: first_char(row, "replident"),
        owner: row.get("owner"),
        owner_is_superuser: row.get("owner_is_superuser"),
        owned: row.get("owned"),
        schema: row.get("schema"),
        schema_usage: row.get("schema_usage"),
        select: row.get("can_select"),
        insert: row.get("can_insert"),
        update: row.get("can_update"),
        delete: row.get("can_delete"),
        columns,
        indexes,
    })))
}

fn first_char(row: &Row, column: &str) -> char {
    row.get::<_, String>(column).chars().next().unwrap_or(' ')
}

// Privilege functions are asked only for tables: for other kinds (views,
// sequences) some privilege names do not apply.
const RELATION: &str = "\
SELECT c.oid, format('%I.%I', n.nspname, c.relname) AS display,
       c.relkind::text AS kind, c.relpersistence::text AS persistence,
       c.relreplident::text AS replident,
       quote_ident(pg_get_userbyid(c.relowner)) AS owner,
       COALESCE((SELECT r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.oid = c.relowner), false)
         AS owner_is_superuser,
       pg_has_role(c.relowner, 'USAGE') AS owned,
       quote_ident(n.nspname) AS schema,
       has_schema_privilege(n.oid, 'USAGE') AS schema_usage,
       c.relkind IN ('r', 'p') AND has_table_privilege(c.oid, 'SELECT') AS can_select,
       c.relkind IN ('r', 'p') AND has_table_privilege(c.oid, 'INSERT') AS can_insert,
       c.relkind IN ('r', 'p') AND has_table_privilege(c.oid, 'UPDATE') AS can_update,
       c.relkind IN ('r', 'p') AND has_table_privilege(c.oid, 'DELETE') AS can_delete
FROM pg_catalog.pg_class AS c
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = $2";

const COLUMNS: &str = "\
SELECT a.attnum, a.attname::text AS name, quote_ident(a.attname) AS display,
       a.atttypid AS type_oid, format_type(a.atttypid, a.atttypmod) AS type_name,
       a.attcollation AS collation, quote_ident(co.collname) AS collation_name,
       a.attnotnull, a.atthasdef, a.attgenerated <> '' AS generated,
       a.attidentity = 'a' AS identity_always, t.typcategory = 'A' AS is_array,
       has_column_privilege(a.attrelid, a.attnum, 'SELECT') AS can_select,
       has_column_privilege(a.attrelid, a.attnum, 'UPDATE') AS can_update
FROM pg_catalog.pg_attribute AS a
JOIN pg_catalog.pg_type AS t ON t.oid = a.atttypid
LEFT JOIN pg_catalog.pg_collation AS co ON co.oid = a.attcollation
WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum";

// `indkey` lists key columns first, then INCLUDE columns; only the first
// `indnkeyatts` make the index unique or go into a replica identity.
const INDEXES: &str = "\
SELECT quote_ident(ic.relname) AS display,
       ARRAY(SELECT k.attnum FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
             WHERE k.n <= i.indnkeyatts ORDER BY k.n) AS columns,
       i.indisunique, i.indisprimary, i.indisvalid, i.indimmediate,
       i.indpred IS NOT NULL AS partial, i.indisreplident, am.amname = 'btree' AS btree
FROM pg_catalog.pg_index AS i
JOIN pg_catalog.pg_class AS ic ON ic.oid = i.indexrelid
JOIN pg_catalog.pg_am AS am ON am.oid = ic.relam
WHERE i.indrelid = $1
ORDER BY i.indisprimary DESC, ic.relname";

fn column(row: &Row) -> Column {
    Column {
        num: row.get("attnum"),
        name: row.get("name"),
        display: row.get("display"),
        type_oid: row.get("type_oid"),
        type_name: row.get("type_name"),
        collation: row.get("collation"),
        collation_name: row.get("collation_name"),
        not_null: row.get("attnotnull"),
        has_default: row.get("atthasdef"),
        generated: row.get("generated"),
        identity_always: row.get("identity_always"),
        is_array: row.get("is_array"),
        can_select: row.get("can_select"),
        can_update: row.get("can_update"),
    }
}

fn index(row: &Row) -> Index {
    Index {
        display: row.get("display"),
        columns: row.get("columns"),
        unique: row.get("indisunique"),
        primary: row.get("indisprimary"),
        valid: row.get("indisvalid"),
        immediate: row.get("indimmediate"),
        partial: row.get("partial"),
        replica_identity: row.get("indisreplident"),
        btree: row.get("btree"),
    }
}
