//! Two-way mirrors: the way back compiles, and the stream can tell which
//! version wrote.
//!
//! ```text
//!  reverse ─▶ columns: like set, on the source (UPDATE ... SET old = g(new))
//!          └▶ rows:    reverse_select described over the target, fits the source
//!  inputs  ─▶ for each source column c: does the mapping still compile without c?
//!             f's inputs, g's inputs ─▶ forward and reverse signal columns
//!  source  ─▶ REPLICA IDENTITY FULL (an update must show which columns changed)
//!  target  ─▶ published too (the new version's writes are reverse changes);
//!             its old rows carry the owner columns
//!  shapes  ─▶ each shape's columns and constant defaults: what an insert set
//! ```
//!
//! Which columns a mapping reads is Postgres's answer, not a parse of ours:
//! the mapping is prepared over the source with one column left out at a
//! time, and the columns whose absence makes it fail (undefined column) are
//! its inputs. A whole-row reference (`to_jsonb(src)`) reads every column.

use std::collections::BTreeSet;

use tokio_postgres::Error;

use super::relation::TableInfo;
use super::rows::{Output, Select, assignable, describe, output_checks, types_compare};
use super::server::ServerInfo;
use super::source::{identity_fix, identity_problem, leaves};
use super::{Ctx, MirrorKind, ReversePlan, ShapeColumn, TwoWayPlan, pretty_ident, set};
use crate::ident::quote_ident;
use crate::mirror::sql::{KeyColumn, RowsPlan, reverse_rows_select};
use crate::spec::Reverse;

/// SQLSTATE of an undefined column.
const UNDEFINED_COLUMN: &str = "42703";

/// The forward side, already checked by the caller.
pub(super) struct Forward<'a> {
    pub source: &'a TableInfo,
    pub key: &'a [KeyColumn],
    pub kind: &'a MirrorKind,
    /// Rows mode: the target table.
    pub target: Option<&'a TableInfo>,
}

/// Checks the way back of a two-way mirror whose forward side checked;
/// `None` when it has a problem (already reported).
pub(super) async fn check(
    ctx: &mut Ctx<'_>,
    label: &str,
    fwd: Forward<'_>,
    reverse: &Reverse,
    server: Option<&ServerInfo>,
) -> Result<Option<TwoWayPlan>, Error> {
    let before = ctx.problems.len();
    let Some(reverse_plan) = reverse_checks(ctx, label, &fwd, reverse, server).await? else {
        return Ok(None);
    };
    if ctx.problems.len() > before {
        return Ok(None);
    }
    let Some((forward_signal, reverse_signal)) = signals(ctx, label, &fwd, &reverse_plan).await?
    else {
        return Ok(None);
    };

    let (old_shape, new_shape): (Vec<String>, Vec<String>) = match (fwd.kind, &reverse_plan) {
        (MirrorKind::Set(f), ReversePlan::Columns(g)) => (
            g.set.iter().map(|(c, _)| c.clone()).collect(),
            f.set.iter().map(|(c, _)| c.clone()).collect(),
        ),
        (MirrorKind::Rows(_), ReversePlan::Columns(g)) => {
            (g.set.iter().map(|(c, _)| c.clone()).collect(), Vec::new())
        }
        _ => (Vec::new(), Vec::new()),
    };
    let Some(old_shape) = shape(ctx, label, fwd.source, &old_shape, "old").await? else {
        return Ok(None);
    };
    let Some(new_shape) = shape(ctx, label, fwd.source, &new_shape, "new").await? else {
        return Ok(None);
    };
    if let (MirrorKind::Set(f), ReversePlan::Columns(g)) = (fwd.kind, &reverse_plan) {
        round_trips(ctx, label, fwd.source, f, g).await?;
    }
    Ok(Some(TwoWayPlan {
        reverse: reverse_plan,
        forward_signal,
        reverse_signal,
        old_shape,
        new_shape,
        target_oid: fwd.target.map(|t| t.oid),
    }))
}

/// What the way back needs of the tables (the source's full replica
/// identity, the target published, its old rows carrying the owner
/// columns), then the reverse mapping's own checks; `None` when the
/// reverse mapping does not check (reported).
async fn reverse_checks(
    ctx: &mut Ctx<'_>,
    label: &str,
    fwd: &Forward<'_>,
    reverse: &Reverse,
    server: Option<&ServerInfo>,
) -> Result<Option<ReversePlan>, Error> {
    full_identity(ctx, label, fwd.source, server).await?;
    if let Some(t) = fwd.target {
        target_published(ctx, label, t, server);
        if let MirrorKind::Rows(plan) = fwd.kind {
            let owner: Vec<&str> = plan.owner.iter().map(|o| o.name.as_str()).collect();
            target_identity(ctx, label, t, &owner).await?;
        }
    }
    Ok(match (reverse, fwd.kind) {
        (Reverse::Columns(columns), _) => {
            set::check(ctx, label, fwd.source, fwd.key, columns, "reverse")
                .await?
                .map(ReversePlan::Columns)
        }
        (Reverse::Rows { select }, MirrorKind::Rows(plan)) => match fwd.target {
            Some(t) => reverse_rows(ctx, label, fwd.source, t, plan, select).await?,
            None => None,
        },
        // The spec refuses reverse_select in set mode.
        (Reverse::Rows { .. }, MirrorKind::Set(_)) => None,
    })
}

/// Which columns only the forward mapping reads and which only the reverse
/// (the key aside): the signal columns that tell which version wrote.
/// `None` when the inputs could not be found, or when a direction that
/// needs one has no signal of its own (reported).
async fn signals(
    ctx: &mut Ctx<'_>,
    label: &str,
    fwd: &Forward<'_>,
    reverse_plan: &ReversePlan,
) -> Result<Option<(Vec<String>, Vec<String>)>, Error> {
    let key: BTreeSet<&str> = fwd.key.iter().map(|k| k.name.as_str()).collect();
    let Some(f_inputs) = forward_inputs(ctx, label, fwd.source, fwd.kind).await? else {
        return Ok(None);
    };
    let g_inputs = match reverse_plan {
        ReversePlan::Columns(plan) => {
            let exprs: Vec<&str> = plan.set.iter().map(|(_, e)| e.as_str()).collect();
            match inputs(ctx, label, fwd.source, &Mapping::Expressions(&exprs)).await? {
                Some(g) => g,
                None => return Ok(None),
            }
        }
        // The way back of a split reads target rows, no source column.
        ReversePlan::Rows(_) => BTreeSet::new(),
    };
    let signal = |a: &BTreeSet<String>, b: &BTreeSet<String>| -> Vec<String> {
        a.iter()
            .filter(|c| !b.contains(*c) && !key.contains(c.as_str()))
            .cloned()
            .collect()
    };
    let forward_signal = signal(&f_inputs, &g_inputs);
    let reverse_signal = signal(&g_inputs, &f_inputs);
    let shared: Vec<String> = f_inputs
        .intersection(&g_inputs)
        .filter(|c| !key.contains(c.as_str()))
        .map(|c| pretty_ident(c))
        .collect();
    if !shared.is_empty() {
        ctx.notes.push(format!(
            "{label}: both directions read {}; a write that changes only {} recomputes neither \
             shape, since it tells walshift nothing about which version wrote",
            shared.join(", "),
            if shared.len() == 1 { "it" } else { "them" }
        ));
    }
    if forward_signal.is_empty() {
        ctx.problem(
            label,
            "the forward mapping reads no column of its own (every column it reads, the reverse \
             reads too, or it reads only the key), so no write can be told apart as the old \
             version's; map from the old columns",
        );
        return Ok(None);
    }
    if matches!(fwd.kind, MirrorKind::Set(_)) && reverse_signal.is_empty() {
        ctx.problem(
            label,
            "reverse reads no column of its own (every column it reads, the forward mapping \
             reads too), so no write can be told apart as the new version's; compute the old \
             columns from the new ones",
        );
        return Ok(None);
    }
    Ok(Some((forward_signal, reverse_signal)))
}

/// Telling which columns an update changed needs the old row whole: with
/// any other replica identity an update carries only the new row.
async fn full_identity(
    ctx: &mut Ctx<'_>,
    label: &str,
    source: &TableInfo,
    server: Option<&ServerInfo>,
) -> Result<(), Error> {
    let leaves = match leaves(ctx.session, source).await? {
        Ok(leaves) => leaves,
        Err(refusal) => {
            ctx.query_failed(&format!("the partitions of {}", source.display), &refusal);
            return Ok(());
        }
    };
    if leaves.iter().all(|l| l.replica_identity == 'f') {
        return Ok(());
    }
    let listed_in_part = match server {
        Some(s) if s.version_num >= super::COLUMN_LISTS_SINCE => {
            match ctx.session.query(LISTED_IN_PART, &[&source.oid]).await? {
                Ok(rows) => rows.iter().map(|r| r.get::<_, String>(0)).collect(),
                Err(refusal) => {
                    let what = format!("the publications listing {}", source.display);
                    ctx.query_failed(&what, &refusal);
                    return Ok(());
                }
            }
        }
        _ => Vec::new(),
    };
    for leaf in leaves.iter().filter(|l| l.replica_identity != 'f') {
        let fix = full_identity_fix(&leaf.display, &listed_in_part);
        ctx.problem(
            label,
            format!(
                "{} has REPLICA IDENTITY {}, so an update does not show which columns it \
                 changed and walshift cannot tell the old version's writes from the new \
                 version's; {fix}",
                leaf.display,
                identity_name(leaf.replica_identity),
            ),
        );
    }
    Ok(())
}

/// The publications (quoted) whose column list names some of a table's
/// columns: under REPLICA IDENTITY FULL, PostgreSQL refuses every UPDATE
/// and DELETE of it while one does.
const LISTED_IN_PART: &str = "\
SELECT quote_ident(p.pubname) FROM pg_catalog.pg_publication_rel AS r
JOIN pg_catalog.pg_publication AS p ON p.oid = r.prpubid
WHERE r.prrelid = $1 AND r.prattrs IS NOT NULL ORDER BY 1";

/// How to make `table`'s replica identity FULL. A publication that lists
/// only some of its columns (walshift's own does, for a one-way mirror) must
/// list them all first, in the same transaction, or the application's
/// writes to it fail in between; dropping and adding the table back in one
/// transaction loses none of its changes.
fn full_identity_fix(table: &str, listed_in_part: &[String]) -> String {
    if listed_in_part.is_empty() {
        return format!("run ALTER TABLE {table} REPLICA IDENTITY FULL");
    }
    let mut steps: Vec<String> = vec!["BEGIN".into()];
    for p in listed_in_part {
        steps.push(format!("ALTER PUBLICATION {p} DROP TABLE {table}"));
        steps.push(format!("ALTER PUBLICATION {p} ADD TABLE {table}"));
    }
    steps.push(format!("ALTER TABLE {table} REPLICA IDENTITY FULL"));
    steps.push("COMMIT".into());
    format!(
        "publication {} lists only some of its columns, and under REPLICA IDENTITY FULL \
         PostgreSQL would refuse every UPDATE and DELETE of it, so run, as one transaction: {}",
        listed_in_part.join(", "),
        steps.join("; ")
    )
}

fn identity_name(c: char) -> &'static str {
    match c {
        'd' => "DEFAULT",
        'i' => "USING INDEX",
        'n' => "NOTHING",
        _ => "FULL",
    }
}

/// The target of a two-way rows mirror is published too: the new version's
/// writes to it are what the way back follows. That needs ownership, as for
/// the source.
fn target_published(ctx: &mut Ctx<'_>, label: &str, t: &TableInfo, server: Option<&ServerInfo>) {
    let must_publish = server.is_none_or(|s| s.must_publish(&t.name.schema, &t.name.name));
    if must_publish && !t.owned {
        let role = ctx.grants.role().to_string();
        let fix = if t.owner_is_superuser {
            format!("ALTER TABLE {} OWNER TO {role}", t.display)
        } else {
            format!("GRANT {} TO {role}", t.owner)
        };
        ctx.grants.need(
            format!("ownership of {}", t.display),
            "a two-way mirror publishes its target, and CREATE PUBLICATION ... FOR TABLE requires \
             it",
            fix,
        );
    }
    if t.persistence != 'p' {
        ctx.problem(
            label,
            format!(
                "target {} is not a logged table, so the new version's writes to it never reach \
                 the WAL stream; run ALTER TABLE {} SET LOGGED",
                t.display, t.display
            ),
        );
    }
}

/// A delete of a target row, or an update moving it to another owner, must
/// carry the owner columns in its old row: they name the key whose old
/// shape is recomputed.
async fn target_identity(
    ctx: &mut Ctx<'_>,
    label: &str,
    t: &TableInfo,
    owner: &[&str],
) -> Result<(), Error> {
    let leaves = match leaves(ctx.session, t).await? {
        Ok(leaves) => leaves,
        Err(refusal) => {
            ctx.query_failed(&format!("the partitions of {}", t.display), &refusal);
            return Ok(());
        }
    };
    for leaf in &leaves {
        let Some(what) = identity_problem(leaf, owner) else {
            continue;
        };
        ctx.problem(
            label,
            format!(
                "target {} {what}; the way back needs the owner columns in the old row of the new \
                 version's deletes: run ALTER TABLE {} REPLICA IDENTITY {}",
                leaf.display,
                leaf.display,
                identity_fix(leaf, owner, None)
            ),
        );
    }
    Ok(())
}

/// `reverse_select` of a table split: run on each target row (`tgt`), it
/// yields the source row that target row stands for. Checked like a forward
/// select with the roles swapped; the plan upserts source rows on the key.
async fn reverse_rows(
    ctx: &mut Ctx<'_>,
    label: &str,
    source: &TableInfo,
    target: &TableInfo,
    forward: &RowsPlan,
    reverse_select: &str,
) -> Result<Option<ReversePlan>, Error> {
    let before = ctx.problems.len();
    let wrapped = reverse_rows_select(reverse_select);
    let (prefix, suffix) = wrapped
        .split_once(reverse_select)
        .expect("the wrapper holds the select");
    let select = Select {
        field: "reverse_select",
        text: reverse_select,
        before: prefix,
        after: suffix,
        owner: ("key column", "tgt.id"),
    };
    for (has, privilege) in [
        (source.select, "SELECT"),
        (source.insert, "INSERT"),
        (source.update, "UPDATE"),
        (source.delete, "DELETE"),
    ] {
        if !has {
            ctx.grants.table(&source.display, privilege);
        }
    }
    let Some(outputs) = describe(ctx, label, target, &select).await? else {
        return Ok(None);
    };
    let key: Vec<String> = forward.key.iter().map(|k| k.name.clone()).collect();
    output_checks(ctx, label, source, &outputs, &key, &select);
    if ctx.problems.len() > before {
        return Ok(None);
    }
    if !types_compare(ctx, label, source, &outputs, &select).await?
        || !assignable(ctx, label, target, source, &outputs, &select).await?
    {
        return Ok(None);
    }
    let columns: Vec<String> = outputs.into_iter().map(|o: Output| o.name).collect();
    Ok(Some(ReversePlan::Rows(RowsPlan {
        source: forward.target.clone(),
        key: forward.owner.clone(),
        target: forward.source.clone(),
        owner: forward.key.clone(),
        columns,
        conflict_key: Some(key),
        select: wrapped,
        owned_if: Some(forward.select.clone()),
    })))
}

/// Rows sampled for the round trips.
const ROUND_TRIP_SAMPLE: usize = 1000;

/// Set mode: on a sample of the rows, values that do not survive a round
/// trip through both mappings. Where the new shape holds a value the forward
/// mapping cannot produce (`'paused'` -> false -> `'disabled'`), a later write
/// of the old version to that row changes what the new version wrote; where
/// an old value does not survive (NULL -> `'disabled'` -> false), a write of
/// the new version changes the old shape. Both are notes: they may be
/// intended, the operator should know.
async fn round_trips(
    ctx: &mut Ctx<'_>,
    label: &str,
    source: &TableInfo,
    forward: &crate::mirror::sql::SetPlan,
    reverse: &crate::mirror::sql::SetPlan,
) -> Result<(), Error> {
    if !source.can_read_all() {
        return Ok(());
    }
    for (there, back, what) in [
        (reverse, forward, "new -> old -> new"),
        (forward, reverse, "old -> new -> old"),
    ] {
        let sql = round_trip_sql(source, forward, there, back, what);
        let rows = match ctx.session.query(&sql, &[]).await? {
            Ok(rows) => rows,
            Err(refusal) => {
                ctx.notes.push(format!(
                    "{label}: the {what} round trip could not be sampled: {}",
                    refusal.describe(None)
                ));
                continue;
            }
        };
        let Some(row) = rows.first() else { continue };
        let (lost, sampled): (i64, i64) = (row.get(0), row.get(1));
        if lost == 0 {
            continue;
        }
        let example: Option<String> = row.get(2);
        ctx.notes.push(format!(
            "{label}: {lost} of {sampled} sampled rows do not survive the round trip {what} \
             (e.g. key {}); on such a row a later write of the {} version changes what the {} \
             version wrote",
            example.unwrap_or_default(),
            if what.starts_with("new") {
                "old"
            } else {
                "new"
            },
            if what.starts_with("new") {
                "new"
            } else {
                "old"
            },
        ));
    }
    Ok(())
}

/// The query of one round trip (`what`: `there`, then `back`) on a sample of
/// the source: how many sampled rows do not survive it, of how many, and
/// one of them as key: start -> mid -> back.
fn round_trip_sql(
    source: &TableInfo,
    forward: &crate::mirror::sql::SetPlan,
    there: &crate::mirror::sql::SetPlan,
    back: &crate::mirror::sql::SetPlan,
    what: &str,
) -> String {
    // Each sampled row with `there`'s columns replaced by what `there`
    // computes from the row, then `back` computed again and compared
    // with the row's own values.
    let replaced: Vec<String> = source
        .columns
        .iter()
        .map(|c| match there.set.iter().find(|(n, _)| *n == c.name) {
            Some((_, e)) => format!("({e}\n) AS {}", c.display),
            None => format!("src.{}", c.display),
        })
        .collect();
    let starts: Vec<String> = back
        .set
        .iter()
        .map(|(c, _)| format!("src.{}", quote_ident(c)))
        .collect();
    let backs: Vec<String> = back.set.iter().map(|(_, e)| format!("({e}\n)")).collect();
    let text = |cols: &[String]| -> String {
        cols.iter()
            .map(|c| format!("coalesce(quote_literal({c}), 'NULL')"))
            .collect::<Vec<_>>()
            .join(" || ', ' || ")
    };
    let key: Vec<String> = forward
        .key
        .iter()
        .map(|k| format!("src.{}::text", quote_ident(&k.name)))
        .collect();
    // The new shape is sampled where it holds something (before the
    // backfill it is NULL everywhere); the old shape everywhere.
    let set_filter: Vec<String> = if what.starts_with("new") {
        starts.iter().map(|c| format!("{c} IS NOT NULL")).collect()
    } else {
        vec!["TRUE".to_string()]
    };
    let mid_src: Vec<String> = there
        .set
        .iter()
        .map(|(c, _)| format!("src.{}", quote_ident(c)))
        .collect();
    format!(
        "WITH sample AS (SELECT * FROM {table} AS src WHERE {set} LIMIT {ROUND_TRIP_SAMPLE}),\n\
         there AS (SELECT {replaced} FROM sample AS src),\n\
         trip AS (SELECT {key} AS key, {start} AS start, {mid} AS mid, {back} AS back,\n\
                  ({starts}) IS DISTINCT FROM ({backs}) AS lost\n\
                  FROM there AS src)\n\
         SELECT count(*) FILTER (WHERE lost), (SELECT count(*) FROM sample),\n\
                (array_agg(key || ': ' || start || ' -> ' || mid || ' -> ' || back) FILTER (WHERE lost))[1]\n\
         FROM trip",
        table = source.display,
        set = set_filter.join(" OR "),
        replaced = replaced.join(", "),
        key = if key.len() == 1 {
            key[0].clone()
        } else {
            format!("concat_ws(', ', {})", key.join(", "))
        },
        start = text(&starts),
        mid = text(&mid_src),
        back = text(&backs),
        starts = starts.join(", "),
        backs = backs.join(", "),
    )
}

/// What a mapping is, for finding the columns it reads.
enum Mapping<'a> {
    /// Set mode expressions (of `set` or `reverse`), on the row `src`.
    Expressions(&'a [&'a str]),
    /// A rows-mode select, once per source row `src`.
    Select(&'a str),
}

impl Mapping<'_> {
    /// The mapping over `from` (a FROM item that names the row `src`).
    fn probe(&self, from: &str) -> String {
        match self {
            Mapping::Expressions(exprs) => {
                let list: Vec<String> = exprs.iter().map(|e| format!("({e}\n)")).collect();
                format!("SELECT {} FROM {from}", list.join(", "))
            }
            Mapping::Select(select) => {
                format!("SELECT m.* FROM {from} CROSS JOIN LATERAL (\n{select}\n) AS m")
            }
        }
    }

    fn whole_row(&self) -> bool {
        match self {
            Mapping::Expressions(exprs) => exprs.iter().any(|e| refers_to_whole_row(e)),
            Mapping::Select(select) => refers_to_whole_row(select),
        }
    }
}

async fn forward_inputs(
    ctx: &mut Ctx<'_>,
    label: &str,
    source: &TableInfo,
    kind: &MirrorKind,
) -> Result<Option<BTreeSet<String>>, Error> {
    match kind {
        MirrorKind::Set(plan) => {
            let exprs: Vec<&str> = plan.set.iter().map(|(_, e)| e.as_str()).collect();
            inputs(ctx, label, source, &Mapping::Expressions(&exprs)).await
        }
        MirrorKind::Rows(plan) => inputs(ctx, label, source, &Mapping::Select(&plan.select)).await,
    }
}

/// The source columns `mapping` reads, as Postgres resolves it: each column
/// is left out of the row once, and the mapping reads it when it then fails
/// to compile for an undefined column.
async fn inputs(
    ctx: &mut Ctx<'_>,
    label: &str,
    source: &TableInfo,
    mapping: &Mapping<'_>,
) -> Result<Option<BTreeSet<String>>, Error> {
    let all: BTreeSet<String> = source.columns.iter().map(|c| c.name.clone()).collect();
    if mapping.whole_row() {
        ctx.notes.push(format!(
            "{label}: a mapping refers to the whole source row (src without a column), so it \
             reads every column: a write to any column recomputes that direction"
        ));
        return Ok(Some(all));
    }
    let mut read = BTreeSet::new();
    for left_out in &source.columns {
        let kept: Vec<&str> = source
            .columns
            .iter()
            .filter(|c| c.num != left_out.num)
            .map(|c| c.display.as_str())
            .collect();
        let from = format!(
            "(SELECT {} FROM {}) AS src",
            if kept.is_empty() {
                "NULL AS \"?walshift\"".to_string()
            } else {
                kept.join(", ")
            },
            source.display
        );
        match ctx.session.prepare(&mapping.probe(&from)).await? {
            Ok(_) => {}
            Err(refusal) if refusal.code == UNDEFINED_COLUMN => {
                read.insert(left_out.name.clone());
            }
            Err(refusal) => {
                ctx.refused(label, &refusal, || {
                    format!(
                        "finding the columns the mapping reads failed: {}; report this as a \
                         walshift bug",
                        refusal.describe(None)
                    )
                });
                return Ok(None);
            }
        }
    }
    Ok(Some(read))
}

/// Whether `sql` names the row `src` itself (`to_jsonb(src)`, `src::text`)
/// rather than only its columns (`src.x`). String literals and quoted
/// identifiers are skipped.
fn refers_to_whole_row(sql: &str) -> bool {
    let chars: Vec<char> = sql.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            q @ ('\'' | '"') => {
                i += 1;
                while i < chars.len() && chars[i] != q {
                    i += 1;
                }
                i += 1;
            }
            c if c.is_alphanumeric() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let after_dot = start > 0 && chars[start - 1] == '.';
                if word.eq_ignore_ascii_case("src") && !after_dot {
                    let next = chars[i..].iter().find(|c| !c.is_whitespace());
                    if next != Some(&'.') {
                        return true;
                    }
                }
            }
            _ => i += 1,
        }
    }
    false
}

/// The columns of one shape on the source, with what an insert leaves in
/// them when it does not set them: NULL, or their default when that is a
/// constant (compared as text).
async fn shape(
    ctx: &mut Ctx<'_>,
    label: &str,
    source: &TableInfo,
    columns: &[String],
    which: &str,
) -> Result<Option<Vec<ShapeColumn>>, Error> {
    let mut out = Vec::new();
    for name in columns {
        let Some(column) = source.column(name) else {
            continue;
        };
        let default = if column.has_default {
            match constant_default(ctx, source, name).await? {
                Ok(Some(text)) => Some(text),
                Ok(None) => {
                    ctx.notes.push(format!(
                        "{label}: {}.{} has a default that is not a constant; an insert that \
                         leaves it out looks as if it set it, so such inserts are told apart by \
                         the other shape's columns only",
                        source.display, column.display
                    ));
                    None
                }
                Err(message) => {
                    ctx.problem(label, message);
                    return Ok(None);
                }
            }
        } else {
            None
        };
        if column.not_null && !column.has_default && which == "old" {
            ctx.notes.push(format!(
                "{label}: {}.{} is NOT NULL without a default, so inserts of the new version that \
                 leave it out fail: walshift fills it after the commit, not before it; for the \
                 rollout run ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL",
                source.display, column.display, source.display, column.display
            ));
        }
        if column.not_null && !column.has_default && which == "new" {
            ctx.notes.push(format!(
                "{label}: {}.{} is NOT NULL without a default, so inserts of the old version, \
                 which do not know it, fail; for the rollout run ALTER TABLE {} ALTER COLUMN {} \
                 DROP NOT NULL",
                source.display, column.display, source.display, column.display
            ));
        }
        out.push(ShapeColumn {
            name: name.clone(),
            default,
        });
    }
    Ok(Some(out))
}

const DEFAULT: &str = "\
SELECT pg_get_expr(d.adbin, d.adrelid) AS expr, d.adbin::text LIKE '{CONST %' AS constant
FROM pg_catalog.pg_attrdef AS d
JOIN pg_catalog.pg_attribute AS a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
WHERE d.adrelid = $1 AND a.attname = $2";

/// The text (the type's output, as the WAL carries it) of `column`'s default
/// when it is a constant; `Ok(None)` for any other default. Only constants
/// are evaluated, so nothing with a side effect (`nextval`) ever runs.
async fn constant_default(
    ctx: &mut Ctx<'_>,
    source: &TableInfo,
    column: &str,
) -> Result<Result<Option<String>, String>, Error> {
    let rows = match ctx.session.query(DEFAULT, &[&source.oid, &column]).await? {
        Ok(rows) => rows,
        Err(refusal) => {
            return Ok(Err(format!(
                "reading the default of {}.{} failed: {}",
                source.display,
                quote_ident(column),
                refusal.describe(None)
            )));
        }
    };
    let Some(row) = rows.first() else {
        return Ok(Ok(None));
    };
    if !row.get::<_, bool>("constant") {
        return Ok(Ok(None));
    }
    let expr: String = row.get("expr");
    // concat() prints a value with its type's output function, as the WAL
    // does (a boolean is `t`, where `::text` would say `true`).
    let sql = format!("SELECT concat(({expr}))");
    match ctx.session.query(&sql, &[]).await? {
        Ok(rows) => Ok(Ok(rows.first().map(|r| r.get::<_, String>(0)))),
        Err(_) => Ok(Ok(None)),
    }
}

#[cfg(test)]
mod tests {
    use super::refers_to_whole_row;

    #[test]
    fn whole_row_references_are_found() {
        assert!(refers_to_whole_row("to_jsonb(src)->>'x'"));
        assert!(refers_to_whole_row("src::text"));
        assert!(refers_to_whole_row("row_to_json(SRC )"));
        assert!(!refers_to_whole_row("src.is_active"));
        assert!(!refers_to_whole_row("src . is_active"));
        assert!(!refers_to_whole_row("'src' || x.src || \"src\""));
        assert!(!refers_to_whole_row(
            "CASE WHEN is_active THEN 'active' END"
        ));
        assert!(!refers_to_whole_row("srcx + my_src"));
    }
}
