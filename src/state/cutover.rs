//! Cut-over requests, `walshift.cutover`: filed by `walshift cutover`,
//! carried out by the running `run`, which writes each step back.

/// Whether the cut-over table exists (a state schema from before cut-over
/// has none).
pub async fn has_cutover_table(
    client: &tokio_postgres::Client,
) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one("SELECT to_regclass('walshift.cutover') IS NOT NULL", &[])
        .await?
        .get(0))
}

/// The latest request of `$1` for `walshift status`: `id int8, dry_run
/// bool, state text, detail text, freeze_ms float8, requested_at text,
/// finished_at text`.
pub const LAST_CUTOVER: &str = "SELECT id, dry_run, state, detail, (result->>'freeze_ms')::float8,
                    requested_at::text, finished_at::text
             FROM walshift.cutover WHERE name = $1 ORDER BY id DESC LIMIT 1";

/// Files a cut-over request; returns its id.
pub async fn file_cutover_request(
    client: &tokio_postgres::Client,
    name: &str,
    dry_run: bool,
    spec_digest: &str,
    spec_file: &str,
) -> Result<i64, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "INSERT INTO walshift.cutover (name, dry_run, spec_digest, spec_file)
             VALUES ($1, $2, $3, $4) RETURNING id",
            &[&name, &dry_run, &spec_digest, &spec_file],
        )
        .await?
        .get(0))
}

/// Where request `$1` stands: `state text, detail text, result text` (the
/// outcome as JSON, once there is one).
pub const CUTOVER_PROGRESS: &str =
    "SELECT state, detail, result::text FROM walshift.cutover WHERE id = $1";

/// Cancels request `id` if the run has not begun locking. Returns whether
/// it was cancelled.
pub async fn cancel_cutover_request(
    client: &tokio_postgres::Client,
    id: i64,
) -> Result<bool, tokio_postgres::Error> {
    let n = client
        .execute(
            "UPDATE walshift.cutover SET state = 'cancelled', updated_at = now(), finished_at = now()
             WHERE id = $1 AND state IN ('requested', 'accepted', 'verifying')",
            &[&id],
        )
        .await?;
    Ok(n == 1)
}

/// Fails the requests of `name` that a previous session of the run had in
/// hand (they died with it).
pub async fn fail_interrupted_cutovers(
    client: &tokio_postgres::Client,
    name: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE walshift.cutover SET state = 'failed', finished_at = now(), updated_at = now(),
                    detail = 'interrupted: the run restarted its session; nothing was changed, request again'
             WHERE name = $1 AND state NOT IN ('requested', 'done', 'failed', 'cancelled')",
            &[&name],
        )
        .await
        .map(drop)
}

/// The state of request `id`, if it exists.
pub async fn cutover_request_state(
    client: &tokio_postgres::Client,
    id: i64,
) -> Result<Option<String>, tokio_postgres::Error> {
    Ok(client
        .query_opt("SELECT state FROM walshift.cutover WHERE id = $1", &[&id])
        .await?
        .map(|r| r.get(0)))
}

/// Claims the oldest new request of `$1` (one no other session is claiming)
/// and returns `id int8, dry_run bool, cutover_postponed bool (of the
/// migration), spec_digest text, spec_file text`; no row without one.
pub const CUTOVER_ACCEPT: &str =
    "UPDATE walshift.cutover c SET state = 'accepted', updated_at = now()
                 WHERE id = (SELECT id FROM walshift.cutover WHERE name = $1 AND state = 'requested'
                             ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
                 RETURNING id, dry_run,
                           (SELECT cutover_postponed FROM walshift.migration WHERE name = $1),
                           spec_digest, spec_file";

/// Records a step of request `id`: its state and detail, and the attempts
/// and outcome (JSON text) when given (kept as they were when not);
/// finished once `done` or `failed`.
pub async fn record_cutover_step(
    client: &tokio_postgres::Client,
    id: i64,
    state: &str,
    detail: Option<&str>,
    attempts: Option<i32>,
    result: Option<&str>,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE walshift.cutover SET state = $2, detail = $3,
                attempts = coalesce($4, attempts), result = coalesce($5::text::jsonb, result), updated_at = now(),
                finished_at = CASE WHEN $2 IN ('done', 'failed') THEN now() END
         WHERE id = $1",
            &[&id, &state, &detail, &attempts, &result],
        )
        .await
        .map(|_| ())
}
