//! Server-wide checks: version, `wal_level`, a free replication slot and WAL
//! sender, and what the role needs beyond the tables (REPLICATION, CREATE on
//! the database, replication-origin functions).

use tokio_postgres::Error;

use super::Ctx;
use crate::spec::Spec;

/// The oldest server walshift supports.
pub(super) const MIN_VERSION_NUM: u32 = 140_000;

/// Name of walshift's state schema (created by `run`).
const STATE_SCHEMA: &str = "walshift";

/// Replication-origin functions the applier calls (docs/design.md, I4 and I5). They
/// are revoked from PUBLIC by default, so a non-superuser needs explicit
/// grants; matched by name so that signature changes across versions do
/// not matter.
const ORIGIN_FUNCTIONS: &[&str] = &[
    "pg_replication_origin_create",
    "pg_replication_origin_oid",
    "pg_replication_origin_session_setup",
    "pg_replication_origin_xact_setup",
    "pg_replication_origin_progress",
];

/// What later checks need from the server-wide facts.
#[derive(Debug)]
pub(super) struct ServerInfo {
    pub version_num: u32,
    /// The publication `walshift_<name>` when it already exists (a run
    /// started before): `(all_tables, published tables as (schema, name))`.
    pub publication: Option<(bool, Vec<(String, String)>)>,
}

impl ServerInfo {
    /// Whether `run` must add `source` to the publication, which needs
    /// ownership of the table.
    pub(super) fn must_publish(&self, schema: &str, name: &str) -> bool {
        match &self.publication {
            None => true,
            Some((true, _)) => false,
            Some((false, tables)) => !tables.iter().any(|(s, n)| s == schema && n == name),
        }
    }
}

const FACTS: &str = "\
SELECT current_setting('server_version_num')::int4 AS version_num,
       current_setting('server_version') AS version,
       current_setting('wal_level') AS wal_level,
       current_setting('max_replication_slots')::int4 AS max_slots,
       (SELECT count(*) FROM pg_catalog.pg_replication_slots) AS slots,
       current_setting('max_wal_senders')::int4 AS max_senders,
       current_setting('max_active_replication_origins', true) AS max_origins,
       has_table_privilege('pg_catalog.pg_replication_origin_status', 'SELECT') AS origin_status_readable,
       (SELECT count(*) FROM pg_catalog.pg_stat_get_wal_senders()) AS senders,
       quote_ident(current_user) AS role, r.rolsuper, r.rolreplication,
       quote_ident(current_database()) AS database,
       has_database_privilege(current_database(), 'CREATE') AS db_create,
       (SELECT has_schema_privilege(n.oid, 'CREATE') AND has_schema_privilege(n.oid, 'USAGE')
          FROM pg_catalog.pg_namespace AS n WHERE n.nspname = $1) AS state_schema_ok,
       (SELECT array_agg(p.oid::regprocedure::text ORDER BY p.proname)
          FROM pg_catalog.pg_proc AS p
         WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proname = ANY ($2)
           AND NOT has_function_privilege(p.oid, 'EXECUTE')) AS origin_functions_denied
FROM pg_catalog.pg_roles AS r
WHERE r.rolname = current_user";

/// `invalidation_reason` exists from PostgreSQL 17 on; through jsonb it is
/// NULL before.
const OWN_SLOT: &str = "\
SELECT plugin, slot_type, database = current_database() AS here, quote_ident(database) AS database,
       active, wal_status::text AS wal_status, to_jsonb(s) ->> 'invalidation_reason' AS invalidation_reason
FROM pg_catalog.pg_replication_slots AS s WHERE slot_name = $1";

const PUBLICATION: &str = "\
SELECT p.puballtables,
       ARRAY(SELECT t.schemaname::text FROM pg_catalog.pg_publication_tables AS t
             WHERE t.pubname = p.pubname ORDER BY 1, t.tablename) AS schemas,
       ARRAY(SELECT t.tablename::text FROM pg_catalog.pg_publication_tables AS t
             WHERE t.pubname = p.pubname ORDER BY t.schemaname, 1) AS tables
FROM pg_catalog.pg_publication AS p WHERE p.pubname = $1";

/// Run the server-wide checks; `None` when the facts could not be read
/// (already reported).
pub(super) async fn check(ctx: &mut Ctx<'_>, spec: &Spec) -> Result<Option<ServerInfo>, Error> {
    let Some(facts) = facts(ctx).await? else {
        return Ok(None);
    };
    let version_num = version_and_wal_level(ctx, &facts);
    if !slot(ctx, spec, &facts).await? {
        return Ok(None);
    }
    wal_senders(ctx, &facts);

    let role: String = facts.get("role");
    let database: String = facts.get("database");
    ctx.grants.set_role(&role);
    let superuser: bool = facts.get("rolsuper");
    if !superuser {
        stats_note(ctx, &role).await?;
    }
    if !superuser && !facts.get::<_, bool>("rolreplication") {
        ctx.grants.need(
            "REPLICATION",
            "to stream the WAL",
            format!("ALTER ROLE {role} REPLICATION"),
        );
    }
    let Some(publication) = publication(ctx, spec).await? else {
        return Ok(None);
    };
    create_grants(ctx, &facts, &role, &database, publication.is_none());
    if origin_functions(ctx, &facts, &role) {
        origin_capacity(ctx, spec, &facts, version_num).await?;
        origin_filter_note(ctx, spec, version_num).await?;
    }
    Ok(Some(ServerInfo {
        version_num,
        publication,
    }))
}

/// The row of [`FACTS`]: server settings and the current role; `None` when
/// it could not be read or the role has no `pg_roles` entry (reported).
async fn facts(ctx: &mut Ctx<'_>) -> Result<Option<tokio_postgres::Row>, Error> {
    let functions: Vec<&str> = ORIGIN_FUNCTIONS.to_vec();
    let rows = match ctx
        .session
        .query(FACTS, &[&STATE_SCHEMA, &functions])
        .await?
    {
        Ok(rows) => rows,
        Err(refusal) => {
            ctx.query_failed("server settings and the current role", &refusal);
            return Ok(None);
        }
    };
    let Some(facts) = rows.into_iter().next() else {
        ctx.problem(
            "role",
            "current_user has no pg_roles entry; connect as an ordinary login role",
        );
        return Ok(None);
    };
    Ok(Some(facts))
}

/// Whether the server is new enough and decodes its WAL (`wal_level =
/// logical`); returns `server_version_num`.
fn version_and_wal_level(ctx: &mut Ctx<'_>, facts: &tokio_postgres::Row) -> u32 {
    let version_num = facts.get::<_, i32>("version_num") as u32;
    let version: String = facts.get("version");
    if version_num < MIN_VERSION_NUM {
        ctx.problem(
            "server",
            format!(
                "PostgreSQL {version} is too old; walshift needs PostgreSQL 14 or newer \
                 (upgrade the server)"
            ),
        );
    }
    let wal_level: String = facts.get("wal_level");
    if wal_level != "logical" {
        ctx.problem(
            "wal_level",
            format!(
                "is {wal_level}, so the WAL cannot be decoded; set wal_level = logical in \
                 postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and restart the server"
            ),
        );
    }
    version_num
}

/// Whether walshift's slot, when it exists, is one `run` can resume from
/// (and in what state), or else whether a slot is free for it; `false` when
/// `pg_replication_slots` could not be read (reported).
async fn slot(ctx: &mut Ctx<'_>, spec: &Spec, facts: &tokio_postgres::Row) -> Result<bool, Error> {
    let slot = spec.slot_name();
    let own_slot = match ctx.session.query(OWN_SLOT, &[&slot]).await? {
        Ok(rows) => rows.into_iter().next(),
        Err(refusal) => {
            ctx.query_failed("pg_replication_slots", &refusal);
            return Ok(false);
        }
    };
    match own_slot {
        Some(row) => existing_slot(ctx, spec, &slot, &row),
        None => {
            let max: i32 = facts.get("max_slots");
            let used: i64 = facts.get("slots");
            if i64::from(max) - used < 1 {
                ctx.problem(
                    "max_replication_slots",
                    format!(
                        "is {max} and {used} slot(s) exist, so none is free for walshift's slot \
                         {slot}; raise max_replication_slots in postgresql.conf and restart, \
                         or drop an unused slot (SELECT pg_drop_replication_slot('<name>'))"
                    ),
                );
            }
        }
    }
    Ok(true)
}

/// What walshift's existing slot (a row of [`OWN_SLOT`]) means for `run`: a
/// problem when it is not walshift's kind of slot, else a note on whether it
/// was invalidated, is in use, or is resumed from.
fn existing_slot(ctx: &mut Ctx<'_>, spec: &Spec, slot: &str, row: &tokio_postgres::Row) {
    let plugin: Option<String> = row.get("plugin");
    let kind: String = row.get("slot_type");
    let here: Option<bool> = row.get("here");
    if kind != "logical" || plugin.as_deref() != Some("pgoutput") || here != Some(true) {
        let database: Option<String> = row.get("database");
        ctx.problem(
            &format!("slot {slot}"),
            format!(
                "exists but is a {kind} slot{} in database {}, not walshift's pgoutput \
                 slot for this database; drop it (SELECT pg_drop_replication_slot('{slot}')) \
                 or give the spec another name",
                plugin.map(|p| format!(" for {p}")).unwrap_or_default(),
                database.unwrap_or_else(|| "(none)".into())
            ),
        );
    } else if row.get::<_, Option<String>>("wal_status").as_deref() == Some("lost") {
        // Invalidated: its WAL is gone (max_slot_wal_keep_size), it sat idle past
        // idle_timeout (18's idle_replication_slot_timeout), or it conflicted with
        // recovery. The server refuses to stream from it: run resynchronises
        // (docs/topology.md), unless the spec says to stop.
        let reason: Option<String> = row.get("invalidation_reason");
        let reason = reason.map(|r| format!(" ({r})")).unwrap_or_default();
        // A note either way: run decides, with one line when it stops.
        let note = if spec.safety.on_slot_lost == crate::spec::OnSlotLost::Stop {
            format!(
                "slot {slot} was invalidated by the server{reason}: run stops, as [safety] \
                 on_slot_lost = \"stop\" says; set on_slot_lost = \"resync\" (a new slot, then \
                 every key recomputed), or `walshift cleanup` to start over"
            )
        } else {
            format!(
                "slot {slot} was invalidated by the server{reason}: run resynchronises (drops it, \
                 creates a new slot, then recomputes every key)"
            )
        };
        ctx.notes.push(note);
    } else if row.get::<_, bool>("active") {
        ctx.notes.push(format!(
            "slot {slot} is in use: a walshift run for this spec seems to be running"
        ));
    } else {
        ctx.notes
            .push(format!("slot {slot} already exists; run resumes from it"));
    }
}

/// Whether a WAL sender is free for walshift's replication connection.
fn wal_senders(ctx: &mut Ctx<'_>, facts: &tokio_postgres::Row) {
    let max: i32 = facts.get("max_senders");
    let used: i64 = facts.get("senders");
    if i64::from(max) - used < 1 {
        ctx.problem(
            "max_wal_senders",
            format!(
                "is {max} and {used} WAL sender(s) are running, so none is free for walshift's \
                 replication connection; raise max_wal_senders in postgresql.conf and restart, or \
                 stop an unused replication client"
            ),
        );
    }
}

/// Whether a non-superuser `role` can see standbys' positions. Without
/// pg_read_all_stats (pg_monitor has it), pg_stat_replication shows other
/// roles' walsenders with NULL positions: the standby lag throttle would see
/// no lag at all. Not a problem (no standby may exist), but the operator must
/// know.
async fn stats_note(ctx: &mut Ctx<'_>, role: &str) -> Result<(), Error> {
    if let Ok(rows) = ctx
        .session
        .query(
            "SELECT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')",
            &[],
        )
        .await?
    {
        if rows.first().is_some_and(|r| !r.get::<_, bool>(0)) {
            ctx.notes.push(format!(
                "role {role} cannot read standbys' replay positions in pg_stat_replication, \
                 so the backfill's standby lag throttle (max_replica_lag, max_replica_lag_bytes) \
                 would see no lag: GRANT pg_monitor TO {role}"
            ));
        }
    }
    Ok(())
}

/// The publication `walshift_<name>` when it exists (see
/// [`Server::publication`]); the outer `None` when `pg_publication` could
/// not be read (reported).
async fn publication(
    ctx: &mut Ctx<'_>,
    spec: &Spec,
) -> Result<Option<Option<(bool, Vec<(String, String)>)>>, Error> {
    match ctx
        .session
        .query(PUBLICATION, &[&spec.publication_name()])
        .await?
    {
        Ok(rows) => Ok(Some(rows.first().map(|row| {
            let schemas: Vec<String> = row.get("schemas");
            let tables: Vec<String> = row.get("tables");
            (
                row.get::<_, bool>("puballtables"),
                schemas.into_iter().zip(tables).collect(),
            )
        }))),
        Err(refusal) => {
            ctx.query_failed("pg_publication", &refusal);
            Ok(None)
        }
    }
}

/// Which CREATE grants `role` lacks: on the database for a publication that
/// does not exist yet (`new_publication`) and for the state schema when that
/// does not exist, else on the state schema itself.
fn create_grants(
    ctx: &mut Ctx<'_>,
    facts: &tokio_postgres::Row,
    role: &str,
    database: &str,
    new_publication: bool,
) {
    let db_create: bool = facts.get("db_create");
    let grant_create = format!("GRANT CREATE ON DATABASE {database} TO {role}");
    if new_publication && !db_create {
        ctx.grants.need(
            format!("CREATE on database {database}"),
            "for the publication",
            grant_create.clone(),
        );
    }
    match facts.get::<_, Option<bool>>("state_schema_ok") {
        None if !db_create => ctx.grants.need(
            format!("CREATE on database {database}"),
            format!("for the {STATE_SCHEMA} schema"),
            grant_create,
        ),
        Some(false) => ctx.grants.need(
            format!("CREATE and USAGE on schema {STATE_SCHEMA}"),
            "for walshift's state",
            format!("GRANT CREATE, USAGE ON SCHEMA {STATE_SCHEMA} TO {role}"),
        ),
        _ => {}
    }
}

/// Whether `role` may execute the replication-origin functions; a note
/// naming the grants when it may not.
fn origin_functions(ctx: &mut Ctx<'_>, facts: &tokio_postgres::Row, role: &str) -> bool {
    let denied: Option<Vec<String>> = facts.get("origin_functions_denied");
    let has_origin = denied.as_ref().is_none_or(|d| d.is_empty());
    // Not a problem: without its origin walshift still converges (its own
    // writes come back once and recompute to no-ops, I5's IS DISTINCT FROM),
    // so `run` says so and goes on. The note tells how to avoid the waste.
    if let Some(denied) = denied.filter(|d| !d.is_empty()) {
        ctx.notes.push(format!(
            "role {role} may not execute the replication origin functions: walshift works without \
             them, but its own writes come back through the stream once and are recomputed as \
             no-ops, and progress is kept only in {STATE_SCHEMA}.migration; to avoid that, as a \
             superuser run: GRANT EXECUTE ON FUNCTION {} TO {role}",
            denied.join(", ")
        ));
    }
    has_origin
}

/// The first server version with its own limit on replication origins
/// (`max_active_replication_origins`); before it, `max_replication_slots`
/// bounds them too.
const ORIGIN_LIMIT_SINCE: u32 = 180000;

/// Replication origins that hold a progress slot in shared memory, other
/// than `$1`, and whether `$1` holds one.
const ORIGIN_STATES: &str = "\
SELECT count(*) FILTER (WHERE external_id IS DISTINCT FROM $1) AS others,
       coalesce(bool_or(external_id = $1), false) AS own
FROM pg_catalog.pg_replication_origin_status";

/// Whether walshift's origin can be set up: each origin that has been used
/// holds one of a fixed number of progress slots until it is dropped, and
/// `run` fails to set up its origin when none is free. The limit is
/// `max_active_replication_origins` from PostgreSQL 18, `max_replication_slots`
/// before. Skipped when the role may not read `pg_replication_origin_status`.
async fn origin_capacity(
    ctx: &mut Ctx<'_>,
    spec: &Spec,
    facts: &tokio_postgres::Row,
    version_num: u32,
) -> Result<(), Error> {
    if !facts.get::<_, bool>("origin_status_readable") {
        return Ok(());
    }
    let (setting, max) = if version_num >= ORIGIN_LIMIT_SINCE {
        let max: Option<String> = facts.get("max_origins");
        let Some(max) = max.and_then(|m| m.parse::<i64>().ok()) else {
            return Ok(());
        };
        ("max_active_replication_origins", max)
    } else {
        (
            "max_replication_slots",
            i64::from(facts.get::<_, i32>("max_slots")),
        )
    };
    let origin = spec.origin_name();
    let row = match ctx.session.query(ORIGIN_STATES, &[&origin]).await? {
        Ok(rows) => rows.into_iter().next(),
        Err(refusal) => {
            ctx.query_failed("pg_replication_origin_status", &refusal);
            return Ok(());
        }
    };
    let Some(row) = row else { return Ok(()) };
    let used: i64 = row.get("others");
    if row.get::<_, bool>("own") || used < max {
        return Ok(());
    }
    let bound = if version_num >= ORIGIN_LIMIT_SINCE {
        ""
    } else {
        " (before PostgreSQL 18 it bounds replication origins as well as slots)"
    };
    ctx.problem(
        setting,
        format!(
            "is {max}{bound} and {used} other replication origin(s) hold progress \
             (pg_replication_origin_status), so none is free for walshift's origin {origin} and \
             run could not set it up; raise {setting} in postgresql.conf and restart, or drop an \
             unused origin (SELECT pg_replication_origin_drop('<name>'))"
        ),
    );
    Ok(())
}

/// The first server version whose pgoutput takes the `origin` option.
/// Shared with `run`'s origin guard (src/run/origins.rs).
pub const ORIGIN_OPTION_SINCE: u32 = 160000;

/// The first server version with publication column lists. Shared with
/// `run`'s publication (src/run/publication.rs).
pub const COLUMN_LISTS_SINCE: u32 = 150000;

/// Replication origins other than `$1`, by name (a text array). Shared with
/// `run`'s origin guard (src/run/origins.rs).
pub const OTHER_ORIGINS: &str = "SELECT coalesce(array_agg(roname::text ORDER BY roname), '{}') \
     FROM pg_replication_origin WHERE roname <> $1";

/// Whether the stream will skip walshift's own writes while decoding
/// (`origin = none`, PostgreSQL 16+), and why not when it will not (I5).
async fn origin_filter_note(ctx: &mut Ctx<'_>, spec: &Spec, version_num: u32) -> Result<(), Error> {
    // Before 16 there is no choice to report: walshift drops its own
    // writes as they arrive (src/replication/echo.rs).
    if version_num < ORIGIN_OPTION_SINCE {
        return Ok(());
    }
    let rows = match ctx
        .session
        .query(OTHER_ORIGINS, &[&spec.origin_name()])
        .await?
    {
        Ok(rows) => rows,
        Err(refusal) => {
            ctx.query_failed("replication origins", &refusal);
            return Ok(());
        }
    };
    let others: Vec<String> = rows.first().map(|r| r.get(0)).unwrap_or_default();
    ctx.notes.push(if others.is_empty() {
        "no other replication origin exists: the stream asks for origin = none, so walshift's own \
         writes are not even decoded; should one appear (a subscription), walshift streams every \
         origin again without losing its writes"
            .to_string()
    } else {
        format!(
            "other replication origins exist ({}): the stream decodes every origin (origin = none \
             would drop their writes into the sources), and walshift drops its own writes as they \
             arrive",
            others.join(", ")
        )
    });
    Ok(())
}
