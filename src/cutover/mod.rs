//! The cut-over: the switch from the old shape to the new, under a lock
//! that freezes writes to the sources for well under a second while reads
//! go on.
//!
//! ```text
//!  walshift cutover ──request row──▶ control task ──▶ session loop
//!                                                      │ Track: the applier notes every key it applies from now on
//!                                                      │ verify (own session, no locks) ── fails ─▶ refused
//!                                                      ▼ passes
//!  apply task:  BEGIN; LOCK sources IN SHARE ROW EXCLUSIVE MODE   (lock_timeout; on timeout back off, retry)
//!               emit a non-transactional marker ─▶ stream ─▶ session loop forwards every batch before it, then DrainEnd
//!               apply those batches in this transaction, record their position (I4)
//!               SAVEPOINT; re-check every key applied since the verify began; gates; operator SQL
//!               COMMIT  (dry run: ROLLBACK TO SAVEPOINT first)
//! ```
//!
//! Three parts, one per file:
//!
//! - this module: what both sides share — the markers the stream carries,
//!   the outcome the run records and the command prints;
//! - [`command`]: `walshift cutover`, which checks that the migration is
//!   ready, files a request row in `walshift.cutover` and follows the run's
//!   steps until the outcome is written. Everything travels through the
//!   database, so the command works from any host that can reach it;
//! - `session`: the run's side. The cut-over itself runs inside `walshift
//!   run`: the lock must be held by the session that writes the targets,
//!   and only the run knows which keys it applied since the verify began.

pub mod command;
pub(crate) mod session;

pub use command::{CutoverError, Request, cancel, follow, request};

use std::time::Duration;

use serde::{Deserialize, Serialize};

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
