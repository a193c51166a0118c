//! Helpers for `tests/backfill.rs`: the checkpoint table as the test reads it, `walshift ctl`,
//! dedicated clusters, and writing as walshift's own origin, on the one scenario builder
//! ([`Scenario`], given the old shape created and pre-filled). The pre-fills are in `fixtures`,
//! the throttle log and the "stays still" window in `throttle`.
//!
//! ```text
//!  fixtures (DDL + pre-fill, new shape deliberately wrong) ─▶ Scenario ─▶ Run (binary)
//!                                                                  │
//!  walshift.backfill (name, mirror, lower_key, done, rows_done, chunks) ◀── checkpoints()
//!  stderr JSON lines "backfill throttled" {reason} / "backfill resumed" ◀── throttle::throttle_events
//! ```
//!
//! The process, the load, the caught-up wait and the exact comparisons are
//! `tests/support/mirror`'s; this module only adds what the backfill needs.

pub mod fixtures;
pub mod throttle;

use std::time::Duration;

use tokio_postgres::Client;

use crate::support::cli::cli;
use crate::support::mirror::compare::{RowsMirror, SetMirror};
use crate::support::process::Run;
use crate::support::{backfill_done, poll};

// The one scenario builder, dedicated clusters (reconfigured, or with a standby or slots of their
// own), databases on them and counts: the same as the mirror scenarios'.
#[allow(unused_imports)]
pub use crate::support::mirror::{Scenario, count, dedicated_cluster, fresh_db_on};

/// How long a whole backfill may take in these scenarios (debug build, small tables).
pub const BACKFILL_WITHIN: Duration = Duration::from_secs(60);

/// The backfill scenarios' own reads and commands, on the one scenario builder.
impl Scenario {
    /// Every mirror's checkpoint row, by mirror number.
    pub async fn checkpoints(&self) -> Vec<Checkpoint> {
        checkpoints(&self.sql, &self.spec.name)
            .await
            .unwrap_or_else(|e| panic!("read walshift.backfill: {e:?}"))
    }

    /// Until every mirror's backfill is done (`bool_and(done)` of the contract); returns the
    /// checkpoints.
    pub async fn wait_done(&self, ws: &Run) -> Vec<Checkpoint> {
        let (sql, name) = (&self.sql, self.spec.name.as_str());
        poll(
            Some(ws),
            &format!("the backfill of {name} to be done"),
            BACKFILL_WITHIN,
            || async move { backfill_done(sql, name).await },
        )
        .await;
        let cps = self.checkpoints().await;
        eprintln!("backfill of {name} done: {cps:?}");
        cps
    }

    /// Until `rows_done` of `mirror` reaches `rows`; returns the checkpoints.
    pub async fn wait_rows_done(&self, ws: &Run, mirror: i32, rows: i64) -> Vec<Checkpoint> {
        let (sql, name) = (&self.sql, self.spec.name.as_str());
        poll(
            Some(ws),
            &format!("mirror {mirror} of {name} to have backfilled {rows} rows"),
            BACKFILL_WITHIN,
            || async move {
                checkpoints(sql, name).await.is_ok_and(|cps| {
                    cps.iter()
                        .any(|c| c.mirror == mirror && c.rows_done >= rows)
                })
            },
        )
        .await;
        self.checkpoints().await
    }

    /// `walshift ctl SPEC <action> --db ...`: exit code, stdout, stderr.
    pub async fn ctl(&self, action: &str) -> (Option<i32>, String, String) {
        let out = cli(&["ctl", action], &self.spec, &self.db).await;
        (out.code(), out.stdout, out.stderr)
    }
}

/// One row of `walshift.backfill`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub mirror: i32,
    pub lower_key: Option<Vec<String>>,
    pub done: bool,
    pub rows_done: i64,
    pub chunks: i64,
}

pub async fn checkpoints(client: &Client, name: &str) -> Result<Vec<Checkpoint>, String> {
    let rows = client
        .query(
            "SELECT mirror, lower_key, done, rows_done, chunks
             FROM walshift.backfill WHERE name = $1 ORDER BY mirror",
            &[&name],
        )
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(rows
        .iter()
        .map(|r| Checkpoint {
            mirror: r.get(0),
            lower_key: r.get(1),
            done: r.get(2),
            rows_done: r.get(3),
            chunks: r.get(4),
        })
        .collect())
}

/// A mapping to compare exactly, of either mode.
pub enum Mapping<'a> {
    Set(&'a SetMirror<'a>),
    Rows(&'a RowsMirror<'a>),
}

impl Mapping<'_> {
    pub fn spec(&self) -> String {
        match self {
            Mapping::Set(m) => m.spec(),
            Mapping::Rows(m) => m.spec(),
        }
    }

    /// Rows compared; fails the test, with the differing rows and walshift's output, unless the
    /// new shape is exactly the mapping of the old.
    pub async fn assert_exact(&self, client: &Client, ws: &Run) -> i64 {
        match self {
            Mapping::Set(m) => m.assert_exact(client, Some(ws)).await,
            Mapping::Rows(m) => m.assert_exact(client, Some(ws)).await,
        }
    }
}

/// The final checkpoint of a backfill with a fixed chunk size over `rows` rows that did not
/// change meanwhile: `rows / size` full chunks and one last chunk (open at the end, possibly
/// empty), `rows_done` exactly the row count. More chunks or rows would mean a range copied
/// twice; fewer, a range skipped.
pub fn assert_exact_progress(cp: &Checkpoint, rows: i64, size: i64) {
    assert!(cp.done, "{cp:?}");
    assert_eq!(
        (cp.rows_done, cp.chunks),
        (rows, rows / size + 1),
        "mirror {}: (rows_done, chunks) for {rows} rows in chunks of {size}: {cp:?}",
        cp.mirror
    );
}

// ---------------------------------------------------------------------------------------------
// Writing as walshift

/// Until no session of walshift is left in the scenario's database. After a SIGKILL its
/// backends end only when they next read from their socket, so one may still be finishing a
/// COMMIT the process sent just before it died; read the checkpoint after this.
pub async fn wait_sessions_gone(s: &Scenario) {
    let sql = &s.sql;
    poll(
        None,
        "the killed walshift's sessions to end",
        Duration::from_secs(30),
        || async move {
            count(
                sql,
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name LIKE 'walshift%'",
            )
            .await
                == 0
        },
    )
    .await;
}

/// Writes `status = 'tampered'` to users `ids` as walshift itself would: in a session using
/// walshift's replication origin, so the change streams as walshift's own write and is skipped
/// as an echo (I5). Nothing but a backfill chunk covering those ids can overwrite it, which
/// makes it a marker for "this range was copied". walshift must not be running (it holds the
/// origin): call [`wait_sessions_gone`] first.
pub async fn tamper_as_walshift(s: &Scenario, ids: &[i64]) {
    let origin = s.spec.object();
    let session = s.db.connect().await;
    session
        .execute("SELECT pg_replication_origin_session_setup($1)", &[&origin])
        .await
        .unwrap_or_else(|e| panic!("use origin {origin}: {e:?}"));
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    let n = session
        .execute(
            &format!(
                "UPDATE public.users SET status = 'tampered' WHERE id IN ({})",
                list.join(", ")
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n, ids.len() as u64);
    session
        .execute("SELECT pg_replication_origin_session_reset()", &[])
        .await
        .unwrap();
}
