//! `walshift run`: mirror live writes until told to stop.
//!
//! ```text
//!  LogicalStream ─XLogData─▶ Decoder ─▶ TxnAssembler ─CommittedTxn─▶ pending Batch
//!        ▲                                                               │ when the applier is free
//!        │ confirm(end LSN)                                              ▼
//!        └──────────────── done ◀──────────── applier task (one SQL session, I3)
//! ```
//!
//! While the applier works on one batch, the next accumulates; when it grows
//! past `max_batch_keys` the loop stops reading the stream (the reader task
//! keeps answering the server, I7) until the applier is free. A session ends
//! on shutdown (after the in-flight batch) or on an error; transient errors
//! start a new session after a backoff, resuming at the last committed
//! position.

pub(crate) mod apply_task;
mod confirm;
pub(crate) mod control;
mod origins;
mod publication;
mod session;
mod setup;
mod slot;
mod syncing;
mod watermarks;

use session::Session;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

pub use setup::{Objects, ensure as ensure_objects, sources};

use crate::backfill::SharedProgress;
use crate::catalog::{self, Plan, Problem};
use crate::conninfo::ConnConfig;
use crate::error_policy::{self, Action, pg_message};
use crate::mirror::applier::{ApplierOptions, ApplyError};
use crate::spec::Spec;
use crate::{Lsn, lag, state};

/// Startup parameters of the replication connection. Key values travel as
/// the walsender prints them, and the apply session casts them back, so both
/// sessions print and read values alike (see [`SESSION_SETTINGS`]).
pub const STREAM_SETTINGS: &[(&str, &str)] = &[
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
];

/// Tuning of `run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub applier: ApplierOptions,
    /// Stop reading the stream while the next batch holds this many keys and
    /// the applier is busy.
    pub max_batch_keys: usize,
    /// Keys one mirror may collect before the batch falls back to a whole
    /// mirror pass (bounds memory for huge transactions).
    pub max_txn_keys: usize,
    /// How long a one-way batch may wait for more keys while the applier is
    /// free (zero: hand each batch over at once).
    pub batch_window: Duration,
    /// Interval of the progress line in the log.
    pub log_interval: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            applier: ApplierOptions::default(),
            max_batch_keys: 20_000,
            max_txn_keys: 200_000,
            batch_window: Duration::from_millis(10),
            log_interval: Duration::from_secs(10),
        }
    }
}

/// Why `run` stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the spec does not fit the database:\n{}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Check { problems: Vec<Problem> },
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("setup failed: {0}")]
    Setup(String),
    #[error("{0}")]
    Fatal(String),
}

/// An error inside a session, with what to do about it.
#[derive(Debug)]
struct SessionError {
    message: String,
    action: Action,
    /// walshift stopped on purpose (a safety stop) and the message says
    /// why; nothing else should reinterpret it.
    deliberate: bool,
}

impl SessionError {
    fn stop(message: impl Into<String>) -> Self {
        SessionError {
            message: message.into(),
            action: Action::Stop,
            deliberate: false,
        }
    }

    /// A failure the next session may not meet (a connection refused, an
    /// origin that appeared).
    fn retry(message: impl Into<String>) -> Self {
        SessionError {
            message: message.into(),
            action: Action::Retry,
            deliberate: false,
        }
    }
}

/// A SQL backend a session opened: (host, pid, application name). The
/// next session terminates those of a failed one (src/net/watch.rs).
type Backend = (String, i32, &'static str);

impl From<ApplyError> for SessionError {
    fn from(e: ApplyError) -> Self {
        SessionError {
            action: e.action(),
            message: e.to_string(),
            deliberate: false,
        }
    }
}

impl From<crate::replication::ReplicationError> for SessionError {
    fn from(e: crate::replication::ReplicationError) -> Self {
        let action = if e.is_closed() {
            Action::Retry
        } else {
            match e.code() {
                Some(code) => error_policy::for_sqlstate(code),
                None => Action::Retry,
            }
        };
        SessionError {
            message: format!("replication stream: {e}"),
            action,
            deliberate: false,
        }
    }
}

impl From<tokio_postgres::Error> for SessionError {
    fn from(e: tokio_postgres::Error) -> Self {
        SessionError {
            action: error_policy::for_pg(&e),
            message: pg_message(&e),
            deliberate: false,
        }
    }
}

/// Totals over the life of the process, for the log and the exit summary.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub txns: u64,
    /// Transactions that were walshift's own writes coming back (skipped, I5).
    pub echo_txns: u64,
    pub batches: u64,
    pub keys: u64,
    pub rows_written: u64,
    pub rows_deleted: u64,
    pub confirmed: Lsn,
    /// A `walshift cutover` committed: the migration is switched and the
    /// run is over.
    pub cut_over: bool,
}

/// What a running `run` shows its observers (the terminal's progress bars
/// now; status and HTTP read the same handles).
#[derive(Clone, Default)]
pub struct Observed {
    pub progress: SharedProgress,
    /// Watermark lag (emit -> applied).
    pub watermarks: Arc<lag::Watermarks>,
    /// The last LSN confirmed to the server.
    pub confirmed: Arc<AtomicU64>,
    /// The replication stream is up: set when a session starts streaming,
    /// cleared when it ends (`/healthz`).
    pub connected: Arc<AtomicBool>,
    /// What the watermark task last measured in the database.
    pub measured: Arc<std::sync::Mutex<Measured>>,
    /// Two-way mirrors' conflicts and written-back keys, counted by the
    /// applier and recorded by the watermark task.
    pub two_way: Arc<crate::mirror::applier::TwoWayCounts>,
    /// Keys held on their data, as the applier counts them.
    pub held: Arc<std::sync::atomic::AtomicUsize>,
}

/// Lag bytes and retained WAL, as the watermark task last read them (once a
/// second); `None` until measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Measured {
    pub lag_bytes: Option<i64>,
    pub retained_wal_bytes: Option<u64>,
}

/// Marks the stream connected while it lives ([`Observed::streaming`]).
pub struct Streaming(Arc<AtomicBool>);

impl Drop for Streaming {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
        crate::metrics::stream_connected(false);
    }
}

impl Observed {
    /// The stream is up until the returned guard is dropped (the session
    /// ends, however it ends).
    pub fn streaming(&self) -> Streaming {
        self.watermarks.stream_started();
        self.connected.store(true, Ordering::Release);
        crate::metrics::stream_connected(true);
        Streaming(self.connected.clone())
    }
}

/// Checks the spec against the database, creates what is missing, and
/// mirrors until `shutdown` turns true.
pub async fn run(
    config: &ConnConfig,
    spec: &Spec,
    opts: RunOptions,
    mut shutdown: watch::Receiver<bool>,
    observed: Observed,
) -> Result<Totals, RunError> {
    let (plan, objects) = prepare(config, spec).await?;
    let given = session::Given {
        config,
        spec,
        plan: &plan,
        objects: &objects,
        opts: &opts,
        observed: &observed,
    };
    let mut totals = Totals::default();
    let mut attempt = 0u32;
    loop {
        let started = Instant::now();
        let e = match one_session(given, &mut shutdown, &mut totals).await {
            Ok(ended) => {
                totals.cut_over = ended == Ended::CutOver;
                clear_heartbeat(config, spec).await;
                return Ok(totals);
            }
            Err(e) => e,
        };
        if started.elapsed() > Duration::from_secs(60) {
            attempt = 0;
        }
        match after_failure(config, spec, e, attempt).await? {
            Again::Resynced => attempt = 0,
            Again::After(delay) => {
                attempt += 1;
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return Ok(totals),
                }
                crate::metrics::reconnect();
            }
        }
    }
}

/// Before the first session: the migration is not cut over, the spec fits
/// the database, walshift's objects exist (and a lost slot is dealt with).
async fn prepare(config: &ConnConfig, spec: &Spec) -> Result<(Plan, Objects), RunError> {
    let client = config
        .with_application_name("walshift")
        .connect_sql()
        .await
        .map_err(|e| RunError::Connect(format!("{} ({})", e, config.redacted())))?;
    // After the switch there is nothing left to mirror, and the old shape
    // may be gone: starting again would only fail later, less clearly.
    if let Some(at) = state::cutover_at(&client, &spec.name)
        .await
        .map_err(|e| RunError::Connect(pg_message(&e)))?
    {
        return Err(RunError::Fatal(format!(
            "{} was cut over at {at}; nothing is left to mirror: run `walshift cleanup {}` to remove walshift's objects",
            spec.name, spec.file
        )));
    }
    let report = catalog::check(&client, spec)
        .await
        .map_err(|e| RunError::Connect(pg_message(&e)))?;
    let plan = match report.plan {
        Some(plan) if report.problems.is_empty() => plan,
        _ => {
            return Err(RunError::Check {
                problems: report.problems,
            });
        }
    };
    for note in &plan.notes {
        tracing::info!("{note}");
    }
    for warning in &plan.warnings {
        tracing::warn!("{warning}");
    }
    let objects = setup::ensure(&client, config, spec, &plan)
        .await
        .map_err(RunError::Setup)?;
    drop(client);
    // A lost slot: a new one and a backfill from scratch before the first
    // session (or a stop, as `[safety] on_slot_lost` says).
    if let Some(reason) = &objects.lost {
        lost_slot(config, spec, reason).await?;
    }
    Ok((plan, objects))
}

/// One session, connected and run to its end.
async fn one_session(
    given: session::Given<'_>,
    shutdown: &mut watch::Receiver<bool>,
    totals: &mut Totals,
) -> Result<Ended, SessionError> {
    let mut backends = Vec::new();
    let ended = match Session::connect(given, shutdown, totals, &mut backends).await {
        Ok(session) => session.run().await,
        Err(e) => Err(e),
    };
    // A failed session's SQL backends may live on: behind a dead link the
    // server never sees the client leave, and an idle apply session holds
    // the replication origin (the next one would fail with 55006 until the
    // server noticed, through a middlebox maybe never) or a transaction's
    // locks. The next session terminates them if they are still there
    // (src/net/watch.rs).
    if ended.is_err() {
        for (target, pid, name) in backends {
            crate::net::watch::abandon(&target, pid, name);
        }
    }
    ended
}

/// What follows a failed session.
enum Again {
    /// The slot was lost and is replaced: the next session starts at once.
    Resynced,
    /// A transient failure: the next session after this backoff.
    After(Duration),
}

/// Decides what a failed session leads to: a stop (`Err`), a resync, or a
/// retry after a backoff (`attempt` is the number of retries so far).
async fn after_failure(
    config: &ConnConfig,
    spec: &Spec,
    e: SessionError,
    attempt: u32,
) -> Result<Again, RunError> {
    // A safety stop dropped the slot on purpose; nothing else may
    // reinterpret it (least of all as a lost slot).
    if e.deliberate {
        crate::metrics::error(crate::metrics::error_kind::SAFETY_STOP);
        return Err(RunError::Fatal(e.message));
    }
    // Resuming needs the slot and the state. Without the state (`walshift
    // cleanup --force`, or by hand) there is nothing to resume; without a
    // usable slot walshift resynchronises. Any error (a terminated stream,
    // START_REPLICATION refused with 42704 or 55000) is only a symptom of
    // that.
    match slot::after_failure(config, spec).await {
        Some(slot::AfterFailure::Gone(gone)) => {
            crate::metrics::error(crate::metrics::error_kind::OBJECTS_GONE);
            return Err(RunError::Fatal(gone));
        }
        Some(slot::AfterFailure::Lost(reason)) => {
            tracing::warn!(error = %e.message, "session failed: the replication slot is {reason}");
            lost_slot(config, spec, &reason).await?;
            return Ok(Again::Resynced);
        }
        None => {}
    }
    if e.action != Action::Retry {
        crate::metrics::error(crate::metrics::error_kind::STOP);
        return Err(RunError::Fatal(e.message));
    }
    crate::metrics::error(crate::metrics::error_kind::RETRY);
    let delay = error_policy::backoff(attempt);
    tracing::warn!(error = %e.message, retry_in = ?delay, "session failed; reconnecting");
    Ok(Again::After(delay))
}

/// The replication origin's progress (`Lsn::INVALID` when it has none).
/// Only the planted bug resumes from it: see [`session::Session::connect`].
async fn origin_progress(
    client: &tokio_postgres::Client,
    origin: &str,
) -> Result<Lsn, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT pg_replication_origin_progress($1, true)::text",
            &[&origin],
        )
        .await?;
    Ok(row
        .get::<_, Option<String>>(0)
        .and_then(|s| s.parse().ok())
        .unwrap_or(Lsn::INVALID))
}

/// The slot is lost: resynchronise, or stop as `[safety] on_slot_lost`
/// says (slot.rs).
async fn lost_slot(config: &ConnConfig, spec: &Spec, reason: &str) -> Result<(), RunError> {
    match slot::handle_lost(config, spec, reason).await {
        Ok(_) => Ok(()),
        Err(message) => {
            crate::metrics::error(crate::metrics::error_kind::STOP);
            Err(RunError::Fatal(message))
        }
    }
}

/// After a clean stop: no heartbeat, so `status`, `wait` and `cleanup` see
/// at once that no run is alive (instead of for up to 5 s).
async fn clear_heartbeat(config: &ConnConfig, spec: &Spec) {
    if let Ok(c) = config.with_application_name("walshift").connect_sql().await {
        let _ = state::clear_heartbeat(&c, &spec.name).await;
    }
}

/// After a safety stop: drops the slot (waiting for its walsender to let go)
/// and resets the backfill, which must start over with a new slot (I1).
async fn drop_slot_after_safety_stop(config: &ConnConfig, spec: &Spec) {
    let Ok(c) = config.with_application_name("walshift").connect_sql().await else {
        tracing::error!("cannot connect to drop the slot after the safety stop; drop it by hand");
        return;
    };
    for _ in 0..50 {
        match c
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
                &[&spec.slot_name()],
            )
            .await
        {
            Ok(1) => break,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let _ = state::delete_backfill(&c, &spec.name).await;
    let _ = state::forget_position(&c, &spec.name).await;
}

/// How a session ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Shutdown was asked for.
    Stopped,
    /// A cut-over committed: the migration is switched, nothing is left to
    /// mirror.
    CutOver,
}

/// A spawned task that is aborted when its handle is dropped: helper tasks
/// end with the session or command that started them.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
