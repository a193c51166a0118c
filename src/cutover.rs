//! `walshift cutover`: the command's side of the switch.
//!
//! The cut-over itself runs inside `walshift run` (see `run/cutover.rs`):
//! the lock must be held by the session that writes the targets, and only
//! the run knows which keys it applied since the verify began. The command
//! checks that the migration is ready, files a request row in
//! `walshift.cutover`, and follows the run's steps until the outcome is
//! written. Everything travels through the database, so the command works
//! from any host that can reach it.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::error_policy::pg_message;
use crate::spec::Spec;
use crate::status;
use crate::verify::GateReport;

/// Prefix of the marker a cut-over emits under the lock. Everything the
/// stream delivers before it is in the drain.
pub const MARKER_PREFIX: &str = "walshift.cutover";

/// The marker's content: which spec and which request.
pub fn marker(spec_name: &str, id: i64) -> String {
    format!("{spec_name}:{id}")
}

/// What a marker of a cut-over is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerKind {
    /// Before the lock: times the stream and catches up.
    Probe,
    /// Under the lock: ends the drain.
    Lock,
}

/// The content of marker `n` of a cut-over whose base marker is `base`.
pub fn marker_content(base: &str, kind: MarkerKind, n: u32) -> String {
    let kind = match kind {
        MarkerKind::Probe => "probe",
        MarkerKind::Lock => "lock",
    };
    format!("{base}:{kind}:{n}")
}

/// Whether `content` is a marker of the cut-over with base `base`, and which.
pub fn marker_of(base: &str, content: &str) -> Option<MarkerKind> {
    let rest = content.strip_prefix(base)?.strip_prefix(':')?;
    let (kind, n) = rest.split_once(':')?;
    n.parse::<u32>().ok()?;
    match kind {
        "probe" => Some(MarkerKind::Probe),
        "lock" => Some(MarkerKind::Lock),
        _ => None,
    }
}

/// How long a request may stay unclaimed before the command concludes that
/// no run is there to carry it out (a run polls every 200 ms).
pub const UNCLAIMED_TIMEOUT: Duration = Duration::from_secs(10);

/// The outcome of one cut-over, as the run records it (the `result` column
/// of `walshift.cutover`, and `walshift cutover --json`). Fields are only
/// ever added.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Outcome {
    pub id: i64,
    pub dry_run: bool,
    /// Every step ran and every check passed (for a dry run: and was rolled back).
    pub passed: bool,
    /// The operator's SQL is committed: the switch happened.
    pub committed: bool,
    /// Lock attempts made (the last one succeeded when `lock_wait_ms` is set).
    pub attempts: u32,
    /// Writes to the sources waited this long: from the LOCK statement of
    /// the successful attempt until its COMMIT returned.
    pub freeze_ms: f64,
    /// Time spent in lock attempts that timed out (writes queue behind a
    /// waiting LOCK too, for up to `lock_timeout` each).
    pub failed_attempts_ms: f64,
    /// Parts of the freeze.
    pub lock_wait_ms: f64,
    pub drain_ms: f64,
    pub checks_ms: f64,
    pub sql_ms: f64,
    pub commit_ms: f64,
    /// Transactions applied under the lock.
    pub drained_txns: u64,
    /// Keys applied since the verify began, re-checked under the lock.
    pub keys_checked: u64,
    /// The verify that ran before the lock, seconds.
    pub verify_seconds: f64,
    pub mirrors: Vec<MirrorCheck>,
    pub gates: Vec<GateReport>,
    /// Why the cut-over did not happen (nothing was changed).
    pub error: Option<String>,
}

/// The re-check of one mirror under the lock.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct MirrorCheck {
    pub mirror: usize,
    pub keys: u64,
    pub differing: u64,
    pub examples: Vec<Vec<String>>,
}

impl Outcome {
    /// What the operator reads.
    pub fn render(&self) -> String {
        let freeze = format!(
            "writes frozen for {:.1} ms (lock {:.1}, drain {:.1}, checks {:.1}, sql {:.1}, commit {:.1}; \
             {} transaction(s) drained, {} key(s) re-checked, {} gate(s) passed)",
            self.freeze_ms,
            self.lock_wait_ms,
            self.drain_ms,
            self.checks_ms,
            self.sql_ms,
            self.commit_ms,
            self.drained_txns,
            self.keys_checked,
            self.gates.iter().filter(|g| g.passed).count()
        );
        let retries = if self.attempts > 1 {
            format!(
                "\n{} lock attempt(s) timed out first ({:.0} ms in all, writes waited behind them too)",
                self.attempts - 1,
                self.failed_attempts_ms
            )
        } else {
            String::new()
        };
        match (&self.error, self.dry_run) {
            (Some(e), _) => format!("cut-over failed: {e}{retries}"),
            (None, true) => {
                format!("dry run passed: everything ran and was rolled back; {freeze}{retries}")
            }
            (None, false) => format!("cut over: {freeze}{retries}"),
        }
    }
}

/// Why the command did not get an outcome.
#[derive(Debug, thiserror::Error)]
pub enum CutoverError {
    /// The migration is not in a state to cut over (exit 1).
    #[error("{0}")]
    NotReady(String),
    /// The database said no, or went away (exit 2).
    #[error("{0}")]
    Database(String),
}

impl From<tokio_postgres::Error> for CutoverError {
    fn from(e: tokio_postgres::Error) -> Self {
        CutoverError::Database(pg_message(&e))
    }
}

/// The command's options.
#[derive(Debug, Clone)]
pub struct Request {
    pub dry_run: bool,
    /// Lag bound for "ready" (as `walshift wait --max-lag`).
    pub max_lag: Duration,
}

/// Checks readiness and files the request; returns its id.
pub async fn request(client: &Client, spec: &Spec, req: &Request) -> Result<i64, CutoverError> {
    let row = client
        .query_opt(
            "SELECT cutover_at::text, cutover_postponed FROM walshift.migration WHERE name = $1",
            &[&spec.name],
        )
        .await
        .map_err(|e| {
            if e.code() == Some(&SqlState::UNDEFINED_TABLE) {
                CutoverError::NotReady(format!(
                    "no walshift state in this database: start `walshift run {}` first",
                    spec.file
                ))
            } else {
                e.into()
            }
        })?
        .ok_or_else(|| {
            CutoverError::NotReady(format!(
                "no walshift state for {:?} in this database: start `walshift run {}` first",
                spec.name, spec.file
            ))
        })?;
    if let Some(at) = row.get::<_, Option<String>>(0) {
        return Err(CutoverError::NotReady(format!(
            "{} was already cut over at {at}; run `walshift cleanup {}` to remove walshift's objects",
            spec.name, spec.file
        )));
    }
    if row.get::<_, bool>(1) {
        return Err(CutoverError::NotReady(format!(
            "cut-over of {} is postponed by the operator; run `walshift ctl {} allow-cutover` first",
            spec.name, spec.file
        )));
    }
    let status = status::read(client, spec).await?;
    if let Some(waiting) = status.waiting_for(req.max_lag) {
        return Err(CutoverError::NotReady(format!(
            "not ready to cut over: {waiting}; `walshift wait {}` returns once it is",
            spec.file
        )));
    }
    let id: i64 = client
        .query_one(
            "INSERT INTO walshift.cutover (name, dry_run, spec_digest, spec_file)
             VALUES ($1, $2, $3, $4) RETURNING id",
            &[&spec.name, &req.dry_run, &spec.cutover_digest(), &spec.file],
        )
        .await?
        .get(0);
    Ok(id)
}

/// Follows request `id` until the run writes its outcome, calling `step`
/// with each new step's description. Gives up (and cancels the request if
/// the run has not started locking) after `timeout`, or when no run claims
/// it within [`UNCLAIMED_TIMEOUT`].
pub async fn follow(
    client: &Client,
    id: i64,
    timeout: Duration,
    mut step: impl FnMut(&str, &str),
) -> Result<Outcome, CutoverError> {
    let started = Instant::now();
    let mut last: (String, Option<String>) = (String::new(), None);
    loop {
        let row = client
            .query_one(
                "SELECT state, detail, result::text FROM walshift.cutover WHERE id = $1",
                &[&id],
            )
            .await?;
        let state: String = row.get(0);
        let detail: Option<String> = row.get(1);
        if (state.as_str(), detail.as_ref()) != (last.0.as_str(), last.1.as_ref()) {
            step(&state, detail.as_deref().unwrap_or(""));
            last = (state.clone(), detail.clone());
        }
        match state.as_str() {
            "done" | "failed" => {
                let result: Option<String> = row.get(2);
                let mut outcome: Outcome = result
                    .and_then(|r| serde_json::from_str(&r).ok())
                    .unwrap_or_default();
                outcome.id = id;
                if state == "failed" && outcome.error.is_none() {
                    outcome.error = Some(detail.unwrap_or_else(|| "failed".into()));
                }
                return Ok(outcome);
            }
            "cancelled" => {
                return Err(CutoverError::NotReady(
                    "the request was cancelled; nothing was changed".into(),
                ));
            }
            "requested" if started.elapsed() > UNCLAIMED_TIMEOUT => {
                cancel(client, id).await?;
                return Err(CutoverError::NotReady(format!(
                    "no running walshift claimed the cut-over request within {UNCLAIMED_TIMEOUT:?}; \
                     is `walshift run` running against this database?"
                )));
            }
            _ if started.elapsed() > timeout => {
                let cancelled = cancel(client, id).await?;
                return Err(CutoverError::NotReady(if cancelled {
                    format!(
                        "no outcome within {timeout:?}: the request was cancelled; nothing was changed"
                    )
                } else {
                    format!(
                        "no outcome within {timeout:?}, and the run is already past verifying: \
                         see `walshift status` for how it ended"
                    )
                }));
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Cancels request `id` if the run has not begun locking. Returns whether
/// it was cancelled.
pub async fn cancel(client: &Client, id: i64) -> Result<bool, CutoverError> {
    let n = client
        .execute(
            "UPDATE walshift.cutover SET state = 'cancelled', updated_at = now(), finished_at = now()
             WHERE id = $1 AND state IN ('requested', 'accepted', 'verifying')",
            &[&id],
        )
        .await?;
    Ok(n == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_name_their_cutover_and_kind() {
        let base = marker("users-status", 7);
        let lock = marker_content(&base, MarkerKind::Lock, 2);
        assert_eq!(marker_of(&base, &lock), Some(MarkerKind::Lock));
        let probe = marker_content(&base, MarkerKind::Probe, 0);
        assert_eq!(marker_of(&base, &probe), Some(MarkerKind::Probe));
        // Another request, another spec, or garbage: not ours.
        assert_eq!(marker_of(&marker("users-status", 70), &lock), None);
        assert_eq!(
            marker_of(
                &base,
                &marker_content(&marker("users", 7), MarkerKind::Lock, 2)
            ),
            None
        );
        assert_eq!(marker_of(&base, "users-status:7:lock:x"), None);
        assert_eq!(marker_of(&base, "users-status:7"), None);
    }

    #[test]
    fn outcome_reads_back_with_missing_fields() {
        let o: Outcome = serde_json::from_str(r#"{"id": 3, "passed": true}"#).unwrap();
        assert_eq!(o.id, 3);
        assert!(o.passed);
        assert_eq!(o.error, None);
    }

    #[test]
    fn render_says_what_happened() {
        let mut o = Outcome {
            freeze_ms: 12.5,
            attempts: 1,
            ..Default::default()
        };
        assert!(
            o.render()
                .starts_with("cut over: writes frozen for 12.5 ms")
        );
        o.dry_run = true;
        assert!(o.render().starts_with("dry run passed"));
        o.error = Some("gate \"x\" failed".into());
        assert!(o.render().starts_with("cut-over failed: gate"));
        o.attempts = 3;
        assert!(o.render().contains("2 lock attempt(s) timed out"));
    }
}
