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
