//! Exact comparisons of the new shape with the mapping, evaluated by Postgres itself over the
//! current source rows, in one statement (one snapshot). Run them once, after "caught up".

use tokio_postgres::Client;

use super::load::describe;
use crate::support::process::Run;

/// Differing rows shown in a failure message.
const SAMPLE: i64 = 20;

/// A set-mode mirror: `column` of `table` should equal `expr` over the same row (`src`).
pub struct SetMirror<'a> {
    /// Qualified and quoted as SQL, e.g. `public.users`.
    pub table: &'a str,
    /// Quoted as SQL, e.g. `status` or `"Item Count"`.
    pub column: &'a str,
    pub expr: &'a str,
}

/// A rows-mode mirror: `target` should hold exactly the multiset of rows that `select`
/// yields over every row `src` of `source`.
pub struct RowsMirror<'a> {
    pub source: &'a str,
    pub select: &'a str,
    pub target: &'a str,
    /// Target columns holding the source key (the spec's `owner`).
    pub owner: &'a [&'a str],
    /// The target's columns, in the order of the select's output columns.
    pub columns: &'a str,
}

/// A TOML basic string holding `s` exactly.
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The outcome of a comparison.
#[derive(Debug)]
pub struct Diff {
    pub what: String,
    /// Rows compared (source rows in set mode; expected rows in rows mode).
    pub rows: i64,
    pub differing: i64,
    pub sample: Vec<String>,
}

impl Diff {
    /// Fails the test, with the first differing rows and walshift's output, unless exact.
    /// Returns the number of rows compared.
    pub fn assert_exact(&self, ws: Option<&Run>) -> i64 {
        if self.differing != 0 {
            let message = self.report();
            match ws {
                Some(ws) => ws.fail(&message),
                None => panic!("{message}"),
            }
        }
        self.rows
    }

    pub fn report(&self) -> String {
        format!(
            "{}: {} of {} rows differ; first {}:\n  {}",
            self.what,
            self.differing,
            self.rows,
            self.sample.len(),
            self.sample.join("\n  ")
        )
    }
}

impl SetMirror<'_> {
    /// Its `[[mirror]]` table. The SQL spellings of table and column are also the spec's.
    pub fn spec(&self) -> String {
        format!(
            "[[mirror]]\nsource = {}\nset = {{ {} = {} }}\n\n",
            toml_str(self.table),
            toml_str(self.column),
            toml_str(self.expr)
        )
    }

    pub async fn diff(&self, client: &Client) -> Diff {
        let SetMirror {
            table,
            column,
            expr,
        } = self;
        let sql = format!(
            "WITH r AS (
                 SELECT src::text AS src_row, (src.{column})::text AS have, (
{expr}
                 )::text AS want, src.{column} IS DISTINCT FROM (
{expr}
                 ) AS differs
                 FROM {table} AS src)
             SELECT (SELECT count(*) FROM r),
                    (SELECT count(*) FROM r WHERE differs),
                    ARRAY(SELECT format('%s: has %s, mapping gives %s',
                                        src_row, coalesce(have, 'NULL'), coalesce(want, 'NULL'))
                          FROM r WHERE differs ORDER BY src_row LIMIT {SAMPLE})"
        );
        let row = client
            .query_one(&sql, &[])
            .await
            .unwrap_or_else(|e| panic!("compare {table}.{column}: {}\n{sql}", describe(&e)));
        Diff {
            what: format!("{table}.{column} = {}", expr.trim()),
            rows: row.get(0),
            differing: row.get(1),
            sample: row.get(2),
        }
    }

    pub async fn assert_exact(&self, client: &Client, ws: Option<&Run>) -> i64 {
        self.diff(client).await.assert_exact(ws)
    }
}

impl RowsMirror<'_> {
    /// Its `[[mirror]]` table.
    pub fn spec(&self) -> String {
        let owner: Vec<String> = self.owner.iter().map(|o| toml_str(o)).collect();
        format!(
            "[[mirror]]\nsource = {}\ntarget = {}\nowner = [{}]\nselect = {}\n\n",
            toml_str(self.source),
            toml_str(self.target),
            owner.join(", "),
            toml_str(self.select)
        )
    }

    pub async fn diff(&self, client: &Client) -> Diff {
        let RowsMirror {
            source,
            select,
            target,
            columns,
            ..
        } = self;
        let sql = format!(
            "WITH expected AS MATERIALIZED (
                 SELECT m.* FROM {source} AS src CROSS JOIN LATERAL (
{select}
                 ) AS m),
             actual AS MATERIALIZED (SELECT {columns} FROM {target}),
             diff AS (
                 SELECT 'only in target: ' || d::text AS line
                 FROM (TABLE actual EXCEPT ALL TABLE expected) AS d
                 UNION ALL
                 SELECT 'missing from target: ' || d::text
                 FROM (TABLE expected EXCEPT ALL TABLE actual) AS d)
             SELECT (SELECT count(*) FROM expected),
                    (SELECT count(*) FROM diff),
                    ARRAY(SELECT line FROM diff ORDER BY line LIMIT {SAMPLE})"
        );
        let row = client
            .query_one(&sql, &[])
            .await
            .unwrap_or_else(|e| panic!("compare {target}: {}\n{sql}", describe(&e)));
        Diff {
            what: format!("{target} = select over {source}"),
            rows: row.get(0),
            differing: row.get(1),
            sample: row.get(2),
        }
    }

    pub async fn assert_exact(&self, client: &Client, ws: Option<&Run>) -> i64 {
        self.diff(client).await.assert_exact(ws)
    }
}
