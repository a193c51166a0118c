//! The migration's row, `walshift.migration`: one per spec name, with its
//! slot, position, run heartbeat and the operator's controls.

use tokio_postgres::GenericClient;

use crate::Lsn;
use crate::spec::Spec;

/// Whether the migration table exists (no run has made the state schema
/// yet, or cleanup dropped it).
pub async fn has_migration_table(
    client: &tokio_postgres::Client,
) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one("SELECT to_regclass('walshift.migration') IS NOT NULL", &[])
        .await?
        .get(0))
}

/// Whether `name` has a migration row.
pub async fn has_migration(
    client: &tokio_postgres::Client,
    name: &str,
) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_opt("SELECT 1 FROM walshift.migration WHERE name = $1", &[&name])
        .await?
        .is_some())
}

/// Deletes the state of `name` (its other tables' rows go with it, `ON
/// DELETE CASCADE`); returns how many rows went (0 or 1).
pub async fn delete_migration(
    client: &tokio_postgres::Client,
    name: &str,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute("DELETE FROM walshift.migration WHERE name = $1", &[&name])
        .await
}

/// How many specs have state in this database.
pub async fn count_migrations(
    client: &tokio_postgres::Client,
) -> Result<i64, tokio_postgres::Error> {
    Ok(client
        .query_one("SELECT count(*) FROM walshift.migration", &[])
        .await?
        .get(0))
}

/// Records the spec's objects (once; later runs keep the first row).
pub async fn register(
    client: &tokio_postgres::Client,
    spec: &Spec,
    consistent_point: Option<Lsn>,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO walshift.migration
                 (name, slot_name, publication_name, origin_name, consistent_point, spec_file)
             VALUES ($1, $2, $3, $4, $5::text::pg_lsn, $6)
             ON CONFLICT (name) DO UPDATE
                 SET consistent_point = coalesce(walshift.migration.consistent_point, EXCLUDED.consistent_point),
                     spec_file = EXCLUDED.spec_file",
            &[
                &spec.name,
                &spec.slot_name(),
                &spec.publication_name(),
                &spec.origin_name(),
                &consistent_point.map(|l| l.to_string()),
                &spec.file,
            ],
        )
        .await
        .map(drop)
}

/// The last applied end LSN recorded in the state table.
pub async fn applied_lsn(
    client: &tokio_postgres::Client,
    name: &str,
) -> Result<Option<Lsn>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT applied_lsn::text FROM walshift.migration WHERE name = $1",
            &[&name],
        )
        .await?;
    Ok(row
        .and_then(|r| r.get::<_, Option<String>>(0))
        .and_then(|s| s.parse().ok()))
}

/// The statement that records progress inside an apply transaction.
pub const RECORD_APPLIED: &str = "UPDATE walshift.migration SET applied_lsn = $2::text::pg_lsn, applied_at = now() WHERE name = $1";

/// Whether the operator paused the backfill.
pub async fn backfill_paused(
    client: &tokio_postgres::Client,
    name: &str,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT backfill_paused FROM walshift.migration WHERE name = $1",
            &[&name],
        )
        .await?;
    Ok(row.map(|r| r.get(0)).unwrap_or(false))
}

/// Sets the operator's pause flag; false when walshift has no state for `name`.
pub async fn set_backfill_paused(
    client: &tokio_postgres::Client,
    name: &str,
    paused: bool,
) -> Result<bool, tokio_postgres::Error> {
    let n = client
        .execute(
            "UPDATE walshift.migration SET backfill_paused = $2 WHERE name = $1",
            &[&name, &paused],
        )
        .await?;
    Ok(n == 1)
}

/// Sets the operator's hold on cut-over; false when walshift has no state
/// for `name`.
pub async fn set_cutover_postponed(
    client: &tokio_postgres::Client,
    name: &str,
    postponed: bool,
) -> Result<bool, tokio_postgres::Error> {
    let n = client
        .execute(
            "UPDATE walshift.migration SET cutover_postponed = $2 WHERE name = $1",
            &[&name, &postponed],
        )
        .await?;
    Ok(n == 1)
}

/// `walshift ctl SPEC retry`: asks the run to try its held keys again.
/// Returns how many keys are held, or `None` without state for `name`.
pub async fn request_retry(
    client: &tokio_postgres::Client,
    name: &str,
) -> Result<Option<i64>, tokio_postgres::Error> {
    let n = client
        .execute(
            "UPDATE walshift.migration SET retry_held = retry_held + 1 WHERE name = $1",
            &[&name],
        )
        .await?;
    if n == 0 {
        return Ok(None);
    }
    let held: i64 = client
        .query_one(
            "SELECT count(*) FROM walshift.keys WHERE name = $1 AND kind = 'held'",
            &[&name],
        )
        .await?
        .get(0);
    Ok(Some(held))
}

/// When `name` was cut over, if it was (`None` also when walshift has no
/// state here yet).
pub async fn cutover_at(
    client: &tokio_postgres::Client,
    name: &str,
) -> Result<Option<String>, tokio_postgres::Error> {
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute
                            WHERE attrelid = to_regclass('walshift.migration') AND attname = 'cutover_at')",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    Ok(client
        .query_opt(
            "SELECT cutover_at::text FROM walshift.migration WHERE name = $1",
            &[&name],
        )
        .await?
        .and_then(|r| r.get(0)))
}

/// Records the lag, the throttle state and the run's heartbeat (params: name,
/// lag seconds or NULL, confirmed LSN as text, host, pid, throttle reason or
/// NULL). Byte lag is measured here, on the server, against its current WAL
/// position.
pub const RECORD_LAG: &str = "UPDATE walshift.migration
    SET lag_seconds = $2::float8,
        lag_bytes = greatest(pg_wal_lsn_diff(pg_current_wal_lsn(), $3::text::pg_lsn), 0)::bigint,
        lag_measured_at = now(), run_heartbeat = now(), run_host = $4, run_pid = $5,
        throttle_reason = $6
    WHERE name = $1";

/// What holds a cut-over of `name` back, if it has state: when it was
/// already cut over (`None` if not) and whether the operator postponed it.
/// Fails with `UNDEFINED_TABLE` before the first run made the state schema.
pub async fn cutover_hold(
    client: &tokio_postgres::Client,
    name: &str,
) -> Result<Option<(Option<String>, bool)>, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "SELECT cutover_at::text, cutover_postponed FROM walshift.migration WHERE name = $1",
            &[&name],
        )
        .await?
        .map(|r| (r.get(0), r.get(1))))
}

/// Records that `name` was cut over, now (in the cut-over's transaction).
pub async fn record_cut_over(
    client: &tokio_postgres::Client,
    name: &str,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "UPDATE walshift.migration SET cutover_at = now() WHERE name = $1",
            &[&name],
        )
        .await
}

/// What the operator asks of the run of `$1`: `backfill_paused bool,
/// settings text (the overrides as JSON), retry_held int8`. Read through
/// `to_jsonb`, so a state table from before the overrides or retries reads
/// as none.
pub const CONTROL_STATE: &str = "SELECT backfill_paused, (to_jsonb(m)->'settings')::text, \
                        coalesce((to_jsonb(m)->>'retry_held')::int8, 0) \
                 FROM walshift.migration m WHERE name = $1";

/// The operator's `ctl set` overrides of `name` as JSON text; `None`
/// without a row, or when the state predates them.
pub async fn read_settings(
    client: &tokio_postgres::Client,
    name: &str,
) -> Result<Option<String>, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "SELECT (to_jsonb(m)->'settings')::text FROM walshift.migration m WHERE name = $1",
            &[&name],
        )
        .await?
        .and_then(|r| r.get(0)))
}

/// Merges `set` (a JSON object as text) into the overrides of `name` after
/// removing the keys in `removed`; returns the overrides now stored as JSON
/// text, or `None` when walshift has no state for `name`.
pub async fn update_settings(
    client: &tokio_postgres::Client,
    name: &str,
    set: &str,
    removed: &[String],
) -> Result<Option<String>, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "UPDATE walshift.migration SET settings = (settings - $3::text[]) || $2::text::jsonb
             WHERE name = $1 RETURNING settings::text",
            &[&name, &set, &removed],
        )
        .await?
        .map(|r| r.get(0)))
}

/// Whether walshift made a slot for `name` (a consistent point is recorded)
/// and the reason of a resync that has not finished; `None` without a row.
pub async fn slot_state(
    client: &tokio_postgres::Client,
    name: &str,
) -> Result<Option<(bool, Option<String>)>, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "SELECT consistent_point IS NOT NULL, slot_lost FROM walshift.migration WHERE name = $1",
            &[&name],
        )
        .await?
        .map(|r| (r.get(0), r.get(1))))
}

/// Marks the slot of `name` lost for `reason` and forgets its position and
/// consistent point: the first step of a resync (in its transaction).
pub async fn mark_slot_lost(
    client: &impl GenericClient,
    name: &str,
    reason: &str,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "UPDATE walshift.migration SET slot_lost = $2, applied_lsn = NULL, consistent_point = NULL WHERE name = $1",
            &[&name, &reason],
        )
        .await
}

/// Records the new slot's consistent point (as text) and the resync of
/// `name` for `reason` as finished.
pub async fn record_resync(
    client: &tokio_postgres::Client,
    name: &str,
    consistent_point: &str,
    reason: &str,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "UPDATE walshift.migration
             SET consistent_point = $2::text::pg_lsn, slot_lost = NULL, slot_resyncs = slot_resyncs + 1,
                 slot_resynced_at = now(), slot_resync_reason = $3
             WHERE name = $1",
            &[&name, &consistent_point, &reason],
        )
        .await
}

/// Clears the run's heartbeat after a clean stop, so no run shows as alive.
pub async fn clear_heartbeat(
    client: &tokio_postgres::Client,
    name: &str,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "UPDATE walshift.migration SET run_heartbeat = NULL, run_pid = NULL, run_host = NULL WHERE name = $1",
            &[&name],
        )
        .await
}

/// Forgets the applied position and consistent point of `name` (its slot
/// was dropped after a safety stop).
pub async fn forget_position(
    client: &tokio_postgres::Client,
    name: &str,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "UPDATE walshift.migration SET applied_lsn = NULL, consistent_point = NULL WHERE name = $1",
            &[&name],
        )
        .await
}

/// The row of migration `$1` as JSON text, with the ages of its lag
/// measurement and heartbeat in seconds. As JSON, so a state table written
/// by an older walshift (fewer columns) still reads.
pub const MIGRATION_ROW: &str = "SELECT (to_jsonb(m) || jsonb_build_object(
                            'lag_age', extract(epoch FROM now() - (to_jsonb(m)->>'lag_measured_at')::timestamptz),
                            'heartbeat_age', extract(epoch FROM now() - (to_jsonb(m)->>'run_heartbeat')::timestamptz)))::text
                 FROM walshift.migration m WHERE name = $1";

/// The snapshot, the WAL position no transaction visible to it committed
/// past, and the lock on the state row the transaction will write (so no
/// other session's update of it can make the position's write fail); run
/// at the start of a two-way transaction. Params: `$1` spec name.
pub const SYNC_POINT: &str = "SELECT pg_current_snapshot()::text, pg_current_wal_insert_lsn()::text \
     FROM walshift.migration WHERE name = $1 FOR UPDATE";
