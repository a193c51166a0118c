//! The uniqueness questions the evaluation of a chunk does not answer:
//! values of a unique index of the target that the mapping computes twice
//! for one key (rows mode) or for several keys, and, in rows mode, computed
//! rows meeting an existing target row of another key. Asked read-only over
//! the range the ordered pass covered, leaving out the keys that failed
//! there.

use tokio_postgres::Error;

use super::MirrorScanner;
use crate::catalog::MirrorKind;
use crate::mirror::bind::Args;
use crate::mirror::sql::scan::{
    DUPLICATE_GROUPS, UniqueIndex, index_columns, rows_collisions, rows_duplicates,
    rows_duplicates_within, set_duplicates,
};
use crate::mirror::sql::{KeyColumn, Scope, Statement};

/// Unique indexes of a table: name, whether it is partial or on an
/// expression (not asked), key columns and their types.
const UNIQUE_INDEXES: &str = "
SELECT c.relname::text,
       i.indpred IS NOT NULL OR 0 = ANY (i.indkey::int2[]),
       array(SELECT a.attname::text
             FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             WHERE k.n <= i.indnkeyatts ORDER BY k.n),
       array(SELECT format_type(a.atttypid, a.atttypmod)
             FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             WHERE k.n <= i.indnkeyatts ORDER BY k.n)
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = $1::text::regclass AND i.indisunique
ORDER BY 1";

pub(super) async fn check(
    s: &mut MirrorScanner<'_>,
    upper: Option<&[String]>,
    notes: &mut Vec<String>,
) -> Result<(), Error> {
    let m = s.m;
    let table = match &m.kind {
        MirrorKind::Set(p) => &p.source,
        MirrorKind::Rows(p) => &p.target,
    };
    let rows = match s.client.query(UNIQUE_INDEXES, &[&table.to_string()]).await {
        Ok(rows) => rows,
        Err(e) if e.as_db_error().is_some() => {
            notes.push(format!(
                "unique indexes of {table} not checked across chunks: {}",
                crate::error_policy::pg_message(&e)
            ));
            // The failed catalog read aborted the savepoint's subtransaction.
            s.client.batch_execute(super::ROLLBACK_TO).await?;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    if s.failing.len() >= super::MAX_FAILING_KEYS {
        notes.push(format!(
            "unique indexes of {table} not checked across chunks: too many failing rows"
        ));
        return Ok(());
    }
    for row in rows {
        let name: String = row.get(0);
        let skipped: bool = row.get(1);
        let names: Vec<String> = row.get(2);
        let types: Vec<String> = row.get(3);
        let index = UniqueIndex {
            name,
            columns: names
                .into_iter()
                .zip(types)
                .map(|(n, t)| KeyColumn::new(n, t))
                .collect(),
        };
        let has = |cols: &[String]| {
            cols.iter()
                .all(|c| index.columns.iter().any(|i| i.name == *c))
        };
        // Which questions can have an answer: the index must hold a value
        // the mapping computes, and not the key itself (two keys never
        // share a value of an index over the key).
        let (questions, computed): (Vec<(Statement, Question)>, bool) = match &m.kind {
            MirrorKind::Set(p) => {
                let computed = index
                    .columns
                    .iter()
                    .any(|c| p.set.iter().any(|(s, _)| *s == c.name));
                let keys: Vec<String> = p.key.iter().map(|k| k.name.clone()).collect();
                let q = if computed && !has(&keys) {
                    vec![(
                        set_duplicates(p, &index, range(upper)),
                        Question::AcrossKeys,
                    )]
                } else {
                    Vec::new()
                };
                (q, computed)
            }
            MirrorKind::Rows(p) => {
                let computed = index.columns.iter().all(|c| p.columns.contains(&c.name));
                let owner: Vec<String> = p.owner.iter().map(|o| o.name.clone()).collect();
                let mut q = Vec::new();
                if computed {
                    q.push((
                        rows_duplicates_within(p, &index, range(upper)),
                        Question::WithinKey,
                    ));
                }
                if computed && !has(&owner) {
                    q.push((
                        rows_duplicates(p, &index, range(upper)),
                        Question::AcrossKeys,
                    ));
                    q.push((
                        rows_collisions(p, &index, range(upper)),
                        Question::Collisions,
                    ));
                }
                if !computed && !skipped {
                    notes.push(format!(
                        "unique index {:?} of {table} holds columns the select does not yield; \
                         not checked across chunks",
                        index.name
                    ));
                }
                (q, computed)
            }
        };
        if skipped {
            if computed || matches!(m.kind, MirrorKind::Rows(_)) {
                notes.push(format!(
                    "unique index {:?} of {table} is partial or on an expression; only the \
                     rows of the chunks timed for the estimate were checked against it",
                    index.name
                ));
            }
            continue;
        }
        for (stmt, question) in questions {
            ask(s, &index, &stmt, upper, question, notes).await?;
        }
    }
    Ok(())
}

/// What a statement of [`check`] asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Question {
    /// One key's own rows hold a value twice (rows mode).
    WithinKey,
    /// Several keys compute one value.
    AcrossKeys,
    /// Computed rows meet existing rows of other keys (rows mode).
    Collisions,
}

fn range(upper: Option<&[String]>) -> Scope {
    Scope::Range {
        lower: false,
        upper: upper.is_some(),
    }
}

async fn ask(
    s: &mut MirrorScanner<'_>,
    index: &UniqueIndex,
    stmt: &Statement,
    upper: Option<&[String]>,
    question: Question,
    notes: &mut Vec<String>,
) -> Result<(), Error> {
    let mut args = Args::keys(&s.failing, s.m.key.len());
    args.upper = upper;
    let rows = match s.attempt(stmt, &args, false).await? {
        Ok(rows) => rows,
        Err(r) => {
            notes.push(format!(
                "unique index {:?} not checked across chunks: {} (SQLSTATE {})",
                index.name, r.message, r.sqlstate
            ));
            return Ok(());
        }
    };
    let columns = index_columns(index);
    if question == Question::WithinKey {
        // As the write would refuse it, with Postgres's words.
        let message = format!(
            "duplicate key value violates unique constraint \"{}\"",
            index.name
        );
        for row in &rows {
            let key: String = row.get(0);
            s.kinds.add("23505", &message, 1, &[key]);
        }
        if rows.len() as i64 >= DUPLICATE_GROUPS {
            s.kinds.mark_at_least("23505", &message);
        }
        return Ok(());
    }
    if question == Question::Collisions {
        let Some(row) = rows.first() else {
            return Ok(());
        };
        let count: i64 = row.get(0);
        if count > 0 {
            let examples: Vec<String> = row.get::<_, Option<Vec<String>>>(1).unwrap_or_default();
            let target = match &s.m.kind {
                MirrorKind::Rows(p) => p.target.to_string(),
                MirrorKind::Set(p) => p.source.to_string(),
            };
            s.kinds.add(
                "23505",
                &format!(
                    "computed rows collide on unique index \"{}\" ({columns}) with existing rows \
                     of {target} that another key owns",
                    index.name
                ),
                count as u64,
                &examples,
            );
        }
        return Ok(());
    }
    let message = format!(
        "the mapping computes the same value of unique index \"{}\" ({columns}) for several keys",
        index.name
    );
    for row in &rows {
        let value: String = row.get(0);
        let keys: i64 = row.get(1);
        let examples: Vec<String> = row.get::<_, Option<Vec<String>>>(2).unwrap_or_default();
        let more = if keys as usize > examples.len() {
            " and others"
        } else {
            ""
        };
        s.kinds.add(
            "23505",
            &message,
            keys as u64,
            &[format!(
                "{}{more} all compute ({value})",
                examples.join(" and ")
            )],
        );
    }
    if rows.len() as i64 >= DUPLICATE_GROUPS {
        s.kinds.mark_at_least("23505", &message);
    }
    Ok(())
}
