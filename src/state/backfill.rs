//! The backfill's checkpoints, `walshift.backfill`: one row per mirror.

use tokio_postgres::GenericClient;

/// A mirror's backfill checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackfillRow {
    pub mirror: i32,
    pub lower_key: Option<Vec<String>>,
    pub done: bool,
    pub rows_done: i64,
    pub chunks: i64,
    pub rows_estimate: Option<i64>,
}

/// Reads (creating missing rows for) the checkpoints of mirrors `1..=n`.
pub async fn backfill_rows(
    client: &tokio_postgres::Client,
    name: &str,
    estimates: &[i64],
) -> Result<Vec<BackfillRow>, tokio_postgres::Error> {
    for (i, est) in estimates.iter().enumerate() {
        client
            .execute(
                "INSERT INTO walshift.backfill (name, mirror, rows_estimate, started_at)
                 VALUES ($1, $2, $3, now())
                 ON CONFLICT (name, mirror) DO UPDATE SET rows_estimate = EXCLUDED.rows_estimate",
                &[&name, &(i as i32 + 1), &(*est).max(0)],
            )
            .await?;
    }
    let rows = client
        .query(
            "SELECT mirror, lower_key, done, rows_done, chunks, rows_estimate
             FROM walshift.backfill WHERE name = $1 ORDER BY mirror",
            &[&name],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| BackfillRow {
            mirror: r.get(0),
            lower_key: r.get(1),
            done: r.get(2),
            rows_done: r.get(3),
            chunks: r.get(4),
            rows_estimate: r.get(5),
        })
        .collect())
}

/// Records a committed chunk; runs inside the chunk's transaction (I6).
/// Params: name, mirror, new lower key (NULL when the mirror is done), rows.
pub const RECORD_CHUNK: &str = "UPDATE walshift.backfill
    SET lower_key = $3::text[], done = ($3::text[] IS NULL), rows_done = rows_done + $4::bigint,
        chunks = chunks + 1, updated_at = now(),
        finished_at = CASE WHEN $3::text[] IS NULL THEN now() END
    WHERE name = $1 AND mirror = $2";

/// Adds a two-way mirror's conflicts and written-back keys since the last
/// record: `$1` name, `$2` mirror, `$3` conflicts, `$4` keys.
pub const RECORD_TWO_WAY: &str = "UPDATE walshift.backfill
    SET conflicts = conflicts + $3::bigint, reverse_keys = reverse_keys + $4::bigint
    WHERE name = $1 AND mirror = $2::int4";

/// Records a mirror's backfill rate (params: name, mirror, rows per second).
pub const RECORD_RATE: &str = "UPDATE walshift.backfill SET rows_per_second = $3::float8 WHERE name = $1 AND mirror = $2 AND NOT done";

/// Every mirror's backfill from the start; the two-way counters (conflicts,
/// keys written back) count the migration's whole life and stay.
pub async fn reset_backfill(
    client: &impl GenericClient,
    name: &str,
) -> Result<u64, tokio_postgres::Error> {
    client.execute(RESET_BACKFILL, &[&name]).await
}

const RESET_BACKFILL: &str = "UPDATE walshift.backfill
    SET lower_key = NULL, done = false, rows_done = 0, chunks = 0, rows_per_second = NULL,
        started_at = now(), finished_at = NULL, updated_at = now()
    WHERE name = $1";

/// Starts mirror `mirror`'s backfill over (it depends on tables the stream
/// did not carry until now); returns how many rows were reset (0 before
/// its first checkpoint).
pub async fn restart_mirror_backfill(
    client: &tokio_postgres::Client,
    name: &str,
    mirror: i32,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "UPDATE walshift.backfill
                 SET lower_key = NULL, done = false, rows_done = 0, chunks = 0,
                     rows_per_second = NULL, started_at = now(), finished_at = NULL,
                     updated_at = now()
                 WHERE name = $1 AND mirror = $2",
            &[&name, &mirror],
        )
        .await
}

/// Deletes every backfill checkpoint of `name` (after a safety stop the
/// backfill must start over with a new slot).
pub async fn delete_backfill(
    client: &tokio_postgres::Client,
    name: &str,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute("DELETE FROM walshift.backfill WHERE name = $1", &[&name])
        .await
}

/// Each mirror's backfill progress for `walshift status`: `mirror int4,
/// rows_done int8, rows_estimate int8 (0 when unknown), chunks int8, done
/// bool, rows_per_second float8` (NULL, also when the state predates it).
pub const BACKFILL_PROGRESS: &str =
    "SELECT mirror, rows_done, coalesce(rows_estimate, 0), chunks, done,
                    (to_jsonb(b)->>'rows_per_second')::float8
             FROM walshift.backfill b WHERE name = $1 ORDER BY mirror";

/// The two-way mirrors' counts: `mirror int4, conflicts int8, reverse_keys
/// int8, carried int8` for migration `$1` and the mirrors in `$2`
/// (`int4[]`); carried keys are counted when `keys` says the key table
/// exists, else 0 (counters missing from an older state read as 0).
pub fn two_way_counts(keys: bool) -> String {
    let carried = if keys {
        "(SELECT count(*) FROM walshift.keys k WHERE k.name = b.name AND k.mirror = b.mirror AND k.kind = 'carry')"
    } else {
        "0::bigint"
    };
    format!(
        "SELECT b.mirror, coalesce((to_jsonb(b)->>'conflicts')::bigint, 0),
                        coalesce((to_jsonb(b)->>'reverse_keys')::bigint, 0), {carried}
                 FROM walshift.backfill b WHERE b.name = $1 AND b.mirror = ANY($2) ORDER BY b.mirror"
    )
}

/// A two-way backfill chunk's [`SYNC_POINT`](super::SYNC_POINT): its
/// mirror's checkpoint row is locked as well (the run's rate recorder
/// updates it meanwhile). Params: `$1` spec name, `$2` mirror.
pub const CHUNK_SYNC_POINT: &str = "SELECT pg_current_snapshot()::text, pg_current_wal_insert_lsn()::text \
     FROM walshift.migration AS m, walshift.backfill AS b \
     WHERE m.name = $1 AND b.name = $1 AND b.mirror = $2 FOR UPDATE";

/// A two-way migration's conflicts over all its mirrors (`int8`), as a
/// scalar subquery for a larger statement. Params: `$1` spec name.
pub const CONFLICTS_TOTAL: &str =
    "SELECT coalesce(sum(conflicts), 0)::bigint FROM walshift.backfill WHERE name = $1";

/// A two-way migration's written-back keys over all its mirrors (`int8`), as
/// a scalar subquery for a larger statement. Params: `$1` spec name.
pub const REVERSE_KEYS_TOTAL: &str =
    "SELECT coalesce(sum(reverse_keys), 0)::bigint FROM walshift.backfill WHERE name = $1";
