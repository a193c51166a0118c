//! One mirror, source first: the table, its privileges, key and replica
//! identity; then the mode's own checks ([`super::set`], [`super::rows`]);
//! then every generated statement prepared; then the row estimate.

use tokio_postgres::Error;

use super::probe::{prepare_generated, type_advice};
use super::relation::{Column, TableInfo};
use super::server::ServerInfo;
use super::source::{identity_fix, identity_index_for, identity_problem, leaves, resolve_key};
use super::{Ctx, Lookup, MirrorKind, MirrorPlan, TwoWayPlan, depends, pretty, rows, set, twoway};
use crate::mirror::sql::KeyColumn;
use crate::spec::{Mirror, MirrorMode};

/// Never-analyzed tables up to this size are counted exactly; a count of a
/// few thousand pages takes milliseconds. Larger ones are reported unknown
/// rather than scanned by a command that promises to be light.
const COUNT_MAX_BYTES: i64 = 8 * 1024 * 1024;

pub(super) async fn check(
    ctx: &mut Ctx<'_>,
    m: &Mirror,
    server: Option<&ServerInfo>,
) -> Result<Option<MirrorPlan>, Error> {
    let label = format!("mirror #{} ({})", m.number, pretty(&m.source));
    let before = ctx.problems.len();
    let Some(source) = check_source(ctx, &label, m).await? else {
        return Ok(None);
    };
    source_privileges(ctx, &source, m, server);
    let Some((key_columns, key)) = check_key(ctx, &label, &source, m.key.as_deref()).await? else {
        return Ok(None);
    };
    let Some(kind) = check_mode(ctx, &label, m, &source, &key, &key_columns).await? else {
        return Ok(None);
    };
    if ctx.problems.len() > before || !prepare_generated(ctx, &label, &kind).await? {
        return Ok(None);
    }
    let Some(two_way) = check_two_way(ctx, &label, m, server, &source, &key, &kind).await? else {
        return Ok(None);
    };
    let must_publish =
        |t: &crate::ident::QualifiedName| server.is_none_or(|s| s.must_publish(&t.schema, &t.name));
    let Some(depends) = depends::check(ctx, &label, &source, &m.depends, must_publish).await?
    else {
        return Ok(None);
    };
    undeclared_reads(ctx, &label, m, &kind).await?;
    let estimated_rows = estimate(ctx, &source).await?;
    Ok(Some(MirrorPlan {
        number: m.number,
        source: m.source.clone(),
        source_oid: source.oid,
        key,
        kind,
        estimated_rows,
        replica_identity: source.replica_identity,
        two_way,
        depends,
    }))
}

/// Whether the source exists and is a table (`None` when not, reported),
/// and whether it is logged (a problem when not, but the checks go on).
async fn check_source(
    ctx: &mut Ctx<'_>,
    label: &str,
    m: &Mirror,
) -> Result<Option<Box<TableInfo>>, Error> {
    let source = match ctx.relation(&m.source).await? {
        Lookup::Found(rel) => rel,
        Lookup::Missing => {
            ctx.problem(
                label,
                format!(
                    "source table {} does not exist; create it or fix source (a name without a \
                     schema means public)",
                    pretty(&m.source)
                ),
            );
            return Ok(None);
        }
        Lookup::Failed => return Ok(None),
    };
    if !source.is_table() {
        ctx.problem(
            label,
            format!(
                "source {} is a {}; source must be a table (ordinary or partitioned)",
                source.display,
                kind_name(source.kind)
            ),
        );
        return Ok(None);
    }
    if source.persistence != 'p' {
        ctx.problem(
            label,
            format!(
                "source {} is {}, so its changes never reach the WAL stream; run ALTER TABLE {} \
                 SET LOGGED",
                source.display,
                if source.persistence == 'u' {
                    "UNLOGGED"
                } else {
                    "TEMPORARY"
                },
                source.display
            ),
        );
    }
    Ok(Some(source))
}

/// The key: its columns resolved (`None` when they cannot be, reported),
/// whether each type can be compared and ordered, and whether the replica
/// identity carries it.
async fn check_key<'r>(
    ctx: &mut Ctx<'_>,
    label: &str,
    source: &'r TableInfo,
    spec_key: Option<&[String]>,
) -> Result<Option<(Vec<&'r Column>, Vec<KeyColumn>)>, Error> {
    let key_columns = match resolve_key(source, spec_key) {
        Ok(columns) => columns,
        Err(messages) => {
            for message in messages {
                ctx.problem(label, message);
            }
            return Ok(None);
        }
    };
    for c in &key_columns {
        if let Some(refusal) = ctx.type_refusal(&c.type_name).await? {
            ctx.problem(
                label,
                format!(
                    "key column {} is {}, which cannot be compared or ordered ({}); {} for the key",
                    c.display,
                    c.type_name,
                    refusal.message,
                    type_advice(&c.type_name)
                ),
            );
        }
    }
    replica_identity(ctx, label, source, &key_columns).await?;
    let key: Vec<KeyColumn> = key_columns
        .iter()
        .map(|c| KeyColumn::new(c.name.clone(), c.type_name.clone()))
        .collect();
    Ok(Some((key_columns, key)))
}

/// The mode's own checks ([`set::check`], [`rows::check`]), then whether
/// the resolved plan is consistent; `None` when either fails (reported).
async fn check_mode(
    ctx: &mut Ctx<'_>,
    label: &str,
    m: &Mirror,
    source: &TableInfo,
    key: &[KeyColumn],
    key_columns: &[&Column],
) -> Result<Option<MirrorKind>, Error> {
    let kind = match &m.mode {
        MirrorMode::Set { columns } => set::check(ctx, label, source, key, columns, "set")
            .await?
            .map(MirrorKind::Set),
        MirrorMode::Rows {
            target,
            owner,
            select,
        } => {
            let found = rows::Found {
                source,
                key,
                key_columns,
            };
            rows::check(ctx, label, found, target, owner, select)
                .await?
                .map(MirrorKind::Rows)
        }
    };
    let Some(kind) = kind else {
        return Ok(None);
    };
    let checked = match &kind {
        MirrorKind::Set(plan) => plan.check(),
        MirrorKind::Rows(plan) => plan.check(),
    };
    if let Err(e) = checked {
        // The checks above should make this unreachable; if not, say so
        // rather than let a generator produce broken SQL.
        ctx.problem(
            label,
            format!(
                "the resolved plan is inconsistent ({e}); please report this as a walshift bug"
            ),
        );
        return Ok(None);
    }
    Ok(Some(kind))
}

/// The reverse direction's checks ([`twoway::check`]) when the mirror has
/// one: `Some(None)` for a one-way mirror, `None` when they fail (reported).
async fn check_two_way(
    ctx: &mut Ctx<'_>,
    label: &str,
    m: &Mirror,
    server: Option<&ServerInfo>,
    source: &TableInfo,
    key: &[KeyColumn],
    kind: &MirrorKind,
) -> Result<Option<Option<TwoWayPlan>>, Error> {
    let Some(reverse) = &m.reverse else {
        return Ok(Some(None));
    };
    let target = match &m.mode {
        MirrorMode::Rows { target, .. } => match ctx.relation(target).await? {
            Lookup::Found(t) => Some(t),
            _ => return Ok(None),
        },
        MirrorMode::Set { .. } => None,
    };
    let fwd = twoway::Forward {
        source,
        key,
        kind,
        target: target.as_deref(),
    };
    Ok(twoway::check(ctx, label, fwd, reverse, server)
        .await?
        .map(Some))
}

/// Warns of every table the mapping reads that is neither its source, its
/// target nor declared in `depends`: a change there would not reach the
/// rows that read it until they change themselves.
async fn undeclared_reads(
    ctx: &mut Ctx<'_>,
    label: &str,
    m: &Mirror,
    kind: &MirrorKind,
) -> Result<(), Error> {
    for table in depends::read_tables(ctx, &m.source, kind).await? {
        if m.depends.iter().any(|d| d.table == table) {
            continue;
        }
        ctx.warnings.push(format!(
            "{label}: the mapping reads {} but does not declare it, so a change there reaches \
             no row of {} until that row changes itself; add depends = [{{ table = \"{}\", \
             columns = [<columns of {} holding its key>] }}] (or ignore this if {} never changes \
             while walshift runs)",
            pretty(&table),
            pretty(&m.source),
            pretty(&table),
            pretty(&m.source),
            pretty(&table),
        ));
    }
    Ok(())
}

fn kind_name(kind: char) -> &'static str {
    match kind {
        'v' => "view",
        'm' => "materialized view",
        'f' => "foreign table",
        'S' => "sequence",
        'c' => "composite type",
        'i' | 'I' => "index",
        't' => "TOAST table",
        _ => "relation that is not a table",
    }
}

/// SELECT on the source (the mapping may read any column), USAGE on its
/// schema, and, unless the publication already lists it, ownership:
/// `CREATE PUBLICATION ... FOR TABLE` and `ALTER PUBLICATION ... ADD TABLE`
/// require it.
fn source_privileges(
    ctx: &mut Ctx<'_>,
    source: &TableInfo,
    m: &Mirror,
    server: Option<&ServerInfo>,
) {
    let role = ctx.grants.role().to_string();
    if !source.schema_usage {
        ctx.grants.need(
            format!("USAGE on schema {}", source.schema),
            "to read the source",
            format!("GRANT USAGE ON SCHEMA {} TO {role}", source.schema),
        );
    }
    if !source.can_read_all() {
        ctx.grants.table(&source.display, "SELECT");
    }
    let must_publish = server.is_none_or(|s| s.must_publish(&m.source.schema, &m.source.name));
    if must_publish {
        publication_ownership(ctx, source);
    }
}

/// Ownership of a table the publication must list unless the role already
/// has it: `CREATE PUBLICATION ... FOR TABLE` and `ALTER PUBLICATION ... ADD
/// TABLE` require it.
pub(super) fn publication_ownership(ctx: &mut Ctx<'_>, table: &TableInfo) {
    if table.owned {
        return;
    }
    let role = ctx.grants.role().to_string();
    // Membership in the owner role confers ownership, but membership in a
    // superuser role would be far more than needed (and confers no superuser
    // attribute anyway): then the table changes hands instead.
    let fix = if table.owner_is_superuser {
        format!("ALTER TABLE {} OWNER TO {role}", table.display)
    } else {
        format!("GRANT {} TO {role}", table.owner)
    };
    ctx.grants.need(
        format!("ownership of {}", table.display),
        "CREATE PUBLICATION ... FOR TABLE requires it",
        fix,
    );
}

pub(super) async fn replica_identity(
    ctx: &mut Ctx<'_>,
    label: &str,
    source: &TableInfo,
    key_columns: &[&Column],
) -> Result<(), Error> {
    let leaves = match leaves(ctx.session, source).await? {
        Ok(leaves) => leaves,
        Err(refusal) => {
            ctx.query_failed(&format!("the partitions of {}", source.display), &refusal);
            return Ok(());
        }
    };
    let key: Vec<&str> = key_columns.iter().map(|c| c.name.as_str()).collect();
    // A USING INDEX suggestion needs an index name of that very table; the
    // source's indexes are known, its partitions' are not loaded.
    let source_index = identity_index_for(source, key_columns);
    for leaf in &leaves {
        let Some(what) = identity_problem(leaf, &key) else {
            continue;
        };
        let index = if leaf.display == source.display {
            source_index
        } else {
            None
        };
        ctx.problem(
            label,
            format!(
                "{} {what}; walshift needs the key in the old row of deletes and key changes: run \
                 ALTER TABLE {} REPLICA IDENTITY {}",
                leaf.display,
                leaf.display,
                identity_fix(leaf, &key, index)
            ),
        );
    }
    Ok(())
}

const SIZE: &str = "\
SELECT COALESCE(sum(c.reltuples) FILTER (WHERE c.reltuples >= 0), 0)::float8 AS tuples,
       COALESCE(bool_or(c.reltuples < 0), false) AS unanalyzed,
       COALESCE(sum(pg_relation_size(c.oid)), 0)::int8 AS bytes
FROM pg_catalog.pg_class AS c
WHERE (c.oid = $1 AND c.relkind = 'r')
   OR c.oid IN (SELECT relid FROM pg_catalog.pg_partition_tree($1::oid::regclass) WHERE isleaf)";

/// Rows of the source: `reltuples` summed over what holds rows, or an exact
/// count of a small table that was never analyzed (reltuples -1), or -1 with
/// a note.
async fn estimate(ctx: &mut Ctx<'_>, source: &TableInfo) -> Result<i64, Error> {
    let size = match ctx.session.query(SIZE, &[&source.oid]).await? {
        Ok(rows) => rows.into_iter().next(),
        Err(_) => None,
    };
    let Some(size) = size else {
        ctx.notes.push(format!(
            "{}: row count unknown (its size could not be read)",
            source.display
        ));
        return Ok(-1);
    };
    let tuples: f64 = size.get("tuples");
    if !size.get::<_, bool>("unanalyzed") {
        return Ok(tuples.round() as i64);
    }
    let bytes: i64 = size.get("bytes");
    if bytes <= COUNT_MAX_BYTES && source.can_read_all() {
        let count = format!("SELECT count(*) FROM {}", source.display);
        if let Ok(rows) = ctx.session.query(&count, &[]).await?
            && let Some(row) = rows.first()
        {
            return Ok(row.get::<_, i64>(0));
        }
    }
    ctx.notes.push(format!(
        "{}: never analyzed, row count unknown; run ANALYZE {} for an estimate",
        source.display, source.display
    ));
    Ok(-1)
}
