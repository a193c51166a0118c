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

mod control;
mod cutover;
mod origins;
mod setup;
mod slot;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

pub use setup::{Objects, ensure as ensure_objects, sources};

use crate::backfill::{Backfill, LiveLag, SharedProgress};
use crate::catalog::{self, Plan, Problem};
use crate::conninfo::ConnConfig;
use crate::error_policy::{self, Action, pg_message};
use crate::mirror::applier::{
    Applier, ApplierOptions, ApplyError, ApplyStats, Batch, SESSION_SETTINGS, SyncLink, SyncReply,
};
use crate::mirror::txn::{Assembled, MirrorSource, TxnAssembler};
use crate::pgoutput::{Decoder, DecoderOptions};
use crate::replication::{LogicalStream, ReplicationClient, ReplicationEvent, StreamOptions};
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
    /// Interval of the progress line in the log.
    pub log_interval: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            applier: ApplierOptions::default(),
            max_batch_keys: 20_000,
            max_txn_keys: 200_000,
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
}

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
        self.connected.store(true, Ordering::Release);
        crate::metrics::stream_connected(true);
        Streaming(self.connected.clone())
    }

    /// Reports `lsn` as committed. The server is told at most what `cap`
    /// allows (origins.rs); the totals and the lag follow `lsn` itself.
    fn confirm(
        &self,
        feedback: &crate::replication::Feedback,
        cap: Option<&origins::Cap>,
        totals: &mut Totals,
        lsn: Lsn,
    ) {
        feedback.confirm(cap.map_or(lsn, |c| c.apply(lsn)));
        totals.confirmed = totals.confirmed.max(lsn);
        self.confirmed.fetch_max(lsn.0, Ordering::AcqRel);
    }
}

/// Keys the session loop collects while an applier waits for the stream to
/// reach its snapshot; past it the loop answers short and the applier
/// stores the batch's two-way keys instead of applying them (a far-behind
/// stream must not hold unbounded memory).
const SYNC_MAX_KEYS: usize = 1_000_000;

/// While an applier waits for the stream, how often the server is asked for
/// a keepalive (which tells how far it has sent).
const SYNC_NUDGE: Duration = Duration::from_millis(5);

/// The session loop's side of a two-way applier's sync: at most one
/// outstanding, answered with every transaction received before the first
/// one committed at or past its position (or once a keepalive shows the
/// stream is past it).
struct Syncing {
    reply: Option<mpsc::Sender<SyncReply>>,
    /// The position asked for, while the answer waits.
    to: Option<Lsn>,
    /// How far the stream is known to have come: the last commit received,
    /// or a keepalive's position between transactions.
    received: Lsn,
    /// The applier holds what a sync took, until it reports it done.
    busy: bool,
}

impl Syncing {
    fn new(reply: mpsc::Sender<SyncReply>) -> Self {
        Syncing {
            reply: Some(reply),
            to: None,
            received: Lsn::INVALID,
            busy: false,
        }
    }

    fn waiting(&self) -> bool {
        self.to.is_some()
    }

    /// Work has left the session loop and is not reported done.
    fn in_flight(&self) -> bool {
        self.busy || self.waiting()
    }

    /// A request for `lsn`: answered at once (true) when the stream is
    /// already there, else when it gets there.
    fn request(&mut self, lsn: Lsn, pending: &mut Batch, n: usize) -> bool {
        if self.received >= lsn {
            self.answer(pending, n, true);
            return true;
        }
        self.to = Some(lsn);
        false
    }

    /// The stream has come to `lsn` (a commit received, or a keepalive
    /// between transactions); answers a waiting request it reaches (true).
    fn reached(&mut self, lsn: Lsn, pending: &mut Batch, n: usize) -> bool {
        self.received = self.received.max(lsn);
        match self.to {
            Some(to) if lsn >= to => {
                self.to = None;
                self.answer(pending, n, true);
                true
            }
            _ => false,
        }
    }

    /// The stream is too far behind to reach the position within bounds.
    fn give_up(&mut self, pending: &mut Batch, n: usize) {
        self.to = None;
        self.answer(pending, n, false);
    }

    fn answer(&mut self, pending: &mut Batch, n: usize, complete: bool) {
        self.busy = true;
        let batch = std::mem::replace(pending, Batch::new(n));
        if let Some(reply) = &self.reply {
            let _ = reply.try_send(SyncReply { batch, complete });
        }
    }

    /// The session ends: an applier waiting for an answer stops waiting.
    fn close(&mut self) {
        self.to = None;
        self.reply = None;
    }
}

/// A two-way applier's signal from the session loop (its sync link is
/// the applier's own).
struct TwoWayLink {
    /// Set when the session loop holds work for the applier.
    work_ready: Arc<tokio::sync::Notify>,
}

/// Stream events handled per pass of the session loop at most.
const STREAM_BURST: usize = 512;

/// How often a watermark is emitted (and lag and heartbeat recorded).
pub const WATERMARK_INTERVAL: Duration = Duration::from_secs(1);

/// Emits watermarks and records lag and heartbeat, on a session of its own so
/// a busy applier does not delay the measurement.
async fn emit_watermarks(
    config: ConnConfig,
    spec: Spec,
    observed: Observed,
    over_limit: mpsc::Sender<String>,
) {
    let name = spec.name.clone();
    let mut last_warning: Option<Instant> = None;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let pid = std::process::id() as i32;
    let mut tick = tokio::time::interval(WATERMARK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client: Option<tokio_postgres::Client> = None;
    loop {
        tick.tick().await;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            match config
                .with_application_name("walshift-lag")
                .connect_sql()
                .await
            {
                Ok(c) => client = Some(c),
                Err(e) => {
                    tracing::debug!(error = %e, "watermark session: cannot connect");
                    continue;
                }
            }
        }
        let Some(c) = client.as_ref() else { continue };
        let seq = observed.watermarks.emit(Instant::now());
        if let Err(e) = lag::emit_message(c, lag::PREFIX, &lag::content(&name, seq)).await {
            observed.watermarks.cancel(seq);
            tracing::debug!(error = %e, "cannot emit a watermark");
            continue;
        }
        let lag = observed
            .watermarks
            .lag(Instant::now())
            .map(|d| d.as_secs_f64());
        let confirmed = Lsn(observed.confirmed.load(Ordering::Acquire)).to_string();
        let progress = observed.progress.lock().expect("progress lock").clone();
        if let Err(e) = c
            .execute(
                state::RECORD_LAG,
                &[&name, &lag, &confirmed, &host, &pid, &progress.throttle],
            )
            .await
        {
            tracing::debug!(error = %e, "cannot record lag");
        }
        for m in progress.mirrors.iter().filter(|m| !m.done) {
            let _ = c
                .execute(state::RECORD_RATE, &[&name, &(m.mirror as i32), &m.rate])
                .await;
        }
        for (mirror, conflicts, keys) in observed.two_way.take() {
            let recorded = c
                .execute(
                    state::RECORD_TWO_WAY,
                    &[&name, &(mirror as i32), &(conflicts as i64), &(keys as i64)],
                )
                .await;
            if recorded.is_err() {
                observed.two_way.add(mirror, conflicts, keys);
            }
        }
        let measured = measure_slot(c, &spec, &confirmed).await;
        crate::metrics::lag(lag, measured.lag_bytes);
        if let Some(retained) = measured.retained_wal_bytes {
            crate::metrics::retained_wal(retained);
        }
        *observed.measured.lock().expect("measured lock") = measured;
        if let (Some(max), Some(retained)) =
            (spec.safety.max_retained_wal, measured.retained_wal_bytes)
        {
            if let Some(msg) = retained_wal_check(&spec, retained, max, &mut last_warning) {
                let _ = over_limit.send(msg).await;
                return;
            }
        }
    }
}

/// Lag in bytes (server WAL position minus `confirmed`, as `RECORD_LAG`
/// stores it) and the WAL walshift's slot retains; `None` where the
/// database does not answer or the slot is missing.
async fn measure_slot(c: &tokio_postgres::Client, spec: &Spec, confirmed: &str) -> Measured {
    let row = c
        .query_one(
            "SELECT greatest(pg_wal_lsn_diff(pg_current_wal_lsn(), $2::text::pg_lsn), 0)::bigint,
                    (SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::float8
                     FROM pg_replication_slots WHERE slot_name = $1)",
            &[&spec.slot_name(), &confirmed],
        )
        .await;
    match row {
        Ok(r) => Measured {
            lag_bytes: r.get(0),
            retained_wal_bytes: r.get::<_, Option<f64>>(1).map(|b| b.max(0.0) as u64),
        },
        Err(e) => {
            tracing::debug!(error = %e, "cannot measure the slot");
            Measured::default()
        }
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

    let mut totals = Totals::default();
    let mut attempt = 0u32;
    loop {
        let started = Instant::now();
        let mut backends = Vec::new();
        let ended = session(
            config,
            spec,
            &plan,
            &objects,
            &opts,
            &mut shutdown,
            &mut totals,
            &observed,
            &mut backends,
        )
        .await;
        // A failed session's SQL backends may live on: behind a dead link
        // the server never sees the client leave, and an idle apply session
        // holds the replication origin (the next one would fail with 55006
        // until the server noticed, through a middlebox maybe never) or a
        // transaction's locks. The next session terminates them if they
        // are still there (src/net/watch.rs).
        if ended.is_err() {
            for (target, pid, name) in backends {
                crate::net::watch::abandon(&target, pid, name);
            }
        }
        match ended {
            Ok(ended) => {
                totals.cut_over = ended == Ended::CutOver;
                clear_heartbeat(config, spec).await;
                return Ok(totals);
            }
            // A safety stop dropped the slot on purpose; nothing else may
            // reinterpret it (least of all as a lost slot).
            Err(e) if e.deliberate => {
                crate::metrics::error(crate::metrics::error_kind::SAFETY_STOP);
                return Err(RunError::Fatal(e.message));
            }
            // Resuming needs the slot and the state. Without the state
            // (`walshift cleanup --force`, or by hand) there is nothing to
            // resume; without a usable slot walshift resynchronises. Any
            // error (a terminated stream, START_REPLICATION refused with
            // 42704 or 55000) is only a symptom of that.
            Err(e) if let Some(after) = slot::after_failure(config, spec).await => match after {
                slot::AfterFailure::Gone(gone) => {
                    crate::metrics::error(crate::metrics::error_kind::OBJECTS_GONE);
                    return Err(RunError::Fatal(gone));
                }
                slot::AfterFailure::Lost(reason) => {
                    tracing::warn!(error = %e.message, "session failed: the replication slot is {reason}");
                    lost_slot(config, spec, &reason).await?;
                    attempt = 0;
                }
            },
            Err(e) if e.action == Action::Retry => {
                crate::metrics::error(crate::metrics::error_kind::RETRY);
                if started.elapsed() > Duration::from_secs(60) {
                    attempt = 0;
                }
                let delay = error_policy::backoff(attempt);
                attempt += 1;
                tracing::warn!(error = %e.message, retry_in = ?delay, "session failed; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return Ok(totals),
                }
                crate::metrics::reconnect();
            }
            Err(e) => {
                crate::metrics::error(crate::metrics::error_kind::STOP);
                return Err(RunError::Fatal(e.message));
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn session(
    config: &ConnConfig,
    spec: &Spec,
    plan: &Plan,
    objects: &Objects,
    opts: &RunOptions,
    shutdown: &mut watch::Receiver<bool>,
    totals: &mut Totals,
    observed: &Observed,
    backends: &mut Vec<(String, i32, &'static str)>,
) -> Result<Ended, SessionError> {
    // The apply session.
    let (client, target) = config
        .with_application_name("walshift-apply")
        .connect_sql_to()
        .await
        .map_err(|e| SessionError {
            message: format!("connecting the apply session: {e}"),
            action: Action::Retry,
            deliberate: false,
        })?;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    backends.push((target.to_string(), pid, "walshift-apply"));
    client.batch_execute(SESSION_SETTINGS).await?;
    // Every apply transaction records its position in the state row and in
    // the origin's progress (I4); only the state row is to be trusted. From
    // PostgreSQL 16 on, a transaction that set up the origin and then rolled
    // back (walshift killed mid-apply, a failed batch) advances the origin's
    // progress too, past writes never committed: resuming from there would
    // lose them. Without a recorded position the stream starts at the slot's
    // confirmed position, which never passes an uncommitted apply.
    let mut start = state::applied_lsn(&client, &spec.name)
        .await?
        .unwrap_or(Lsn::INVALID);
    if objects.origin {
        client
            .execute(
                "SELECT pg_replication_origin_session_setup($1)",
                &[&spec.origin_name()],
            )
            .await?;
        if crate::mirror::plant::active(crate::mirror::plant::Plant::ResumeFromOriginProgress) {
            start = start.max(origin_progress(&client, &spec.origin_name()).await?);
        }
    }
    let mut applier = Applier::new(
        client,
        &spec.name,
        &plan.mirrors,
        objects.origin,
        opts.applier.clone(),
    )
    .await?;
    applier.count_held_into(observed.held.clone());
    // Two-way specs: the applier asks for the stream up to its snapshot
    // (mirror/applier/two_way.rs) whenever there is work; see `Syncing`.
    let two_way = applier.is_two_way();
    let (sync_request_tx, mut sync_request_rx) = mpsc::channel::<Lsn>(1);
    let (sync_reply_tx, sync_reply_rx) = mpsc::channel::<SyncReply>(1);
    let work_ready = Arc::new(tokio::sync::Notify::new());
    let mut syncing = Syncing::new(sync_reply_tx);
    let applier = if two_way {
        let (flusher, target) = config
            .with_application_name("walshift-flush")
            .connect_sql_to()
            .await
            .map_err(|e| SessionError {
                message: format!("connecting the flush session: {e}"),
                action: Action::Retry,
                deliberate: false,
            })?;
        let pid: i32 = flusher
            .query_one("SELECT pg_backend_pid()", &[])
            .await?
            .get(0);
        backends.push((target.to_string(), pid, "walshift-flush"));
        applier
            .with_sync(
                SyncLink {
                    request: sync_request_tx.clone(),
                    reply: sync_reply_rx,
                },
                flusher,
                observed.two_way.clone(),
            )
            .await?
    } else {
        applier
    };
    let live_lag = Arc::new(LiveLag::default());
    let backfill = Backfill::load(
        applier.client(),
        spec,
        &plan.mirrors,
        applier.labels(),
        live_lag.clone(),
        observed.progress.clone(),
    )
    .await?;
    // The operator's pause and `ctl set` overrides, read by the control task.
    let (settings_tx, settings_rx) = watch::channel(crate::settings::Control {
        paused: state::backfill_paused(applier.client(), &spec.name)
            .await
            .unwrap_or(false),
        overrides: crate::settings::read(applier.client(), &spec.name)
            .await
            .unwrap_or_default(),
    });
    let mut backfill = backfill;
    backfill.follow(settings_rx);
    let progress = backfill.progress();
    if !backfill.is_done() {
        tracing::info!("backfill of history runs alongside live mirroring");
    }

    // The stream, from the last committed position: transactions that ended
    // at or before it are not sent again (I4).
    let repl = ReplicationClient::connect_with_params(
        &config.with_application_name("walshift-stream"),
        STREAM_SETTINGS,
    )
    .await?;
    let mut plugin_options = vec![
        ("proto_version".to_string(), "1".to_string()),
        (
            "publication_names".to_string(),
            crate::ident::quote_ident(&spec.publication_name()),
        ),
        ("messages".to_string(), "true".to_string()),
    ];
    // origin = 'none' when it is safe (PostgreSQL 16+, no other origin):
    // the walsender then skips walshift's own writes while decoding.
    let choice = origins::choose(
        applier.client(),
        &spec.origin_name(),
        repl.server_version_num(),
        objects.origin,
    )
    .await?;
    let mut guard = match &choice {
        origins::Choice::None => {
            plugin_options.push(("origin".to_string(), "none".to_string()));
            tracing::info!(
                "no other replication origin exists: pgoutput skips walshift's own writes (origin = none)"
            );
            Some(
                origins::Guard::start(config, spec.origin_name())
                    .await
                    .map_err(|message| SessionError {
                        message,
                        action: Action::Retry,
                        deliberate: false,
                    })?,
            )
        }
        origins::Choice::Any { others } if others.is_empty() => None,
        origins::Choice::Any { others } => {
            // An earlier session may have streamed with origin = none and
            // recorded applied positions past changes the filter dropped;
            // the slot's confirmed position never passed one (origins.rs).
            start = Lsn::INVALID;
            tracing::info!(
                others = %others.join(", "),
                "other replication origins exist: every change is decoded, walshift's own are dropped as they arrive"
            );
            None
        }
    };
    let cap = guard.as_ref().map(|g| g.cap());
    let mut stream = LogicalStream::start(
        repl,
        &spec.slot_name(),
        start,
        &plugin_options,
        StreamOptions {
            // Echoes (I5) are dropped before they are handed over.
            skip_changes_of_origin: objects.origin.then(|| spec.origin_name()),
            ..StreamOptions::default()
        },
    )
    .await?;
    if let (host, pid) = stream.backend()
        && pid != 0
    {
        backends.push((host.to_string(), pid, "walshift-stream"));
    }
    tracing::info!(slot = %spec.slot_name(), start = %start, "streaming");
    let _streaming = observed.streaming();
    let feedback = stream.feedback();

    let sources = plan.mirrors.iter().map(MirrorSource::of).collect();
    let mut assembler = TxnAssembler::new(sources, spec.origin_name(), opts.max_txn_keys);
    let mut decoder = Decoder::new(DecoderOptions {
        proto_version: 1,
        streaming_parallel: false,
    });
    let n = plan.mirrors.len();
    let mut pending = Batch::new(n);

    // The applier runs in its own task so the loop keeps reading meanwhile.
    // Between live batches it copies history (I3: one writer for both).
    let (work_tx, work_rx) = mpsc::channel::<Work>(1);
    let (done_tx, mut done_rx) = mpsc::channel::<Done>(1);
    // Cut-over requests come in and their steps go out through the state
    // table, on a session of the control task's own.
    let (updates, updates_rx) = mpsc::unbounded_channel();
    let (control_tx, mut control_rx) = mpsc::channel(4);
    let _control = AbortOnDrop(tokio::spawn(control::control(
        config.clone(),
        spec.name.clone(),
        control_tx,
        updates_rx,
        settings_tx,
    )));
    let ctx = cutover::Context {
        spec: spec.clone(),
        mirrors: plan.mirrors.clone(),
        updates: updates.clone(),
    };
    let link = two_way.then(|| TwoWayLink {
        work_ready: work_ready.clone(),
    });
    let apply_task = tokio::spawn(apply_loop(applier, backfill, work_rx, done_tx, ctx, link));
    let _abort_applier = AbortOnDrop(apply_task);
    // Work for the apply task, sent as it has room: the loop never blocks
    // on it, so the apply task can always hand results back.
    let mut outbox: VecDeque<Work> = VecDeque::new();
    // Keys held by an earlier run are tried again first: the rows or the
    // spec may have been fixed meanwhile.
    if observed.held.load(Ordering::Acquire) > 0 {
        outbox.push_back(Work::RetryHeld);
    }
    // Batches handed over and not yet reported done.
    let mut outstanding = 0usize;
    let mut cut: Option<Cut> = None;
    // Shutdown asked for while a cut-over holds the apply task: leave once
    // it has ended.
    let mut stopping = false;
    // Watermarks wait for the transactions received before them.
    let mut watermarks = lag::Pending::default();
    let (mut received_txns, mut applied_txns) = (0u64, 0u64);
    let (over_limit_tx, mut over_limit_rx) = mpsc::channel::<String>(1);
    let _emitter = AbortOnDrop(tokio::spawn(emit_watermarks(
        config.clone(),
        spec.clone(),
        observed.clone(),
        over_limit_tx,
    )));
    // Receive time of the oldest unapplied work, in flight and pending: the
    // live apply lag the backfill yields to.
    let mut in_flight_since: Option<Instant> = None;
    let mut pending_since: Option<Instant> = None;
    let mut log_tick = tokio::time::interval(opts.log_interval);
    log_tick.tick().await;
    loop {
        let job_running = cut.as_ref().is_some_and(|c| c.running);
        let forwarding = cut.as_ref().is_some_and(|c| c.forwarding);
        let mut in_flight = outstanding > 0 || job_running || syncing.in_flight();
        // Hand the next batch over as soon as the applier is free; a batch of
        // echoes or unrelated transactions needs no SQL, only a confirm.
        // While a cut-over waits for its lock or drains, every batch goes
        // straight on: the drain applies them under the lock.
        if two_way && !forwarding {
            // The applier takes the work when it syncs; it is told there is
            // some. What needs no SQL is confirmed here, as below.
            if pending.has_work() {
                work_ready.notify_one();
            } else if !in_flight && pending.txns > 0 {
                let batch = std::mem::replace(&mut pending, Batch::new(n));
                observed.confirm(&feedback, cap.as_ref(), totals, batch.end_lsn);
                applied_txns += batch.txns as u64;
                release_watermarks(&mut watermarks, applied_txns, observed);
            }
        } else if forwarding && pending.txns > 0 {
            let batch = std::mem::replace(&mut pending, Batch::new(n));
            in_flight_since = in_flight_since.or(pending_since.take());
            outstanding += 1;
            outbox.push_back(Work::Batch(batch));
        } else if !in_flight && pending.txns > 0 {
            let batch = std::mem::replace(&mut pending, Batch::new(n));
            if batch.has_work() {
                in_flight = true;
                in_flight_since = pending_since.take();
                outstanding += 1;
                outbox.push_back(Work::Batch(batch));
            } else {
                observed.confirm(&feedback, cap.as_ref(), totals, batch.end_lsn);
                applied_txns += batch.txns as u64;
                release_watermarks(&mut watermarks, applied_txns, observed);
            }
        }
        let may_read = (!in_flight
            || pending.key_count() < opts.max_batch_keys
            || (syncing.waiting() && pending.key_count() < SYNC_MAX_KEYS))
            && outbox.len() < 64;

        tokio::select! {
            biased;
            // 1. Shutdown: finish the batches under way, report, leave. A
            //    cut-over in progress ends first (it needs the stream).
            _ = shutdown.changed(), if !stopping => {
                if job_running {
                    tracing::info!("stopping once the cut-over under way has ended");
                    stopping = true;
                    continue;
                }
                if let Some(c) = cut.take() {
                    let _ = updates.send(cutover::Update::finished(cutover::refused(&c.job, "walshift run stopped before the cut-over began; nothing was changed")));
                }
                // Sent but not yet taken: never applied, nothing to confirm.
                outstanding -= outbox.iter().filter(|w| matches!(w, Work::Batch(_))).count();
                // An applier waiting for the stream gives up; one applying
                // what it took finishes.
                let mut busy = syncing.in_flight();
                syncing.close();
                while outstanding > 0 || busy {
                    let (batch, result) = match done_rx.recv().await {
                        Some(Done::Batch(batch, result)) => {
                            outstanding = outstanding.saturating_sub(1);
                            (batch, result)
                        }
                        Some(Done::Synced(batch, result, handed)) => {
                            busy = false;
                            outstanding = outstanding.saturating_sub(handed);
                            (batch, result)
                        }
                        Some(_) | None => break,
                    };
                    if result.is_ok() {
                        observed.confirm(&feedback, cap.as_ref(), totals, batch.end_lsn);
                    } else {
                        break;
                    }
                }
                let _ = stream.close().await;
                tracing::info!(confirmed = %totals.confirmed, "stopped");
                return Ok(Ended::Stopped);
            }
            // The applier of a two-way spec asks for the stream up to its
            // snapshot's WAL position.
            Some(lsn) = sync_request_rx.recv(), if two_way && !syncing.waiting() => {
                if syncing.request(lsn, &mut pending, n) {
                    in_flight_since = in_flight_since.or(pending_since.take());
                } else {
                    feedback.request_reply();
                }
            }
            _ = tokio::time::sleep(SYNC_NUDGE), if syncing.waiting() => {
                // Ask the server for a keepalive: it says how far the stream is.
                feedback.request_reply();
            }
            // Work for the apply task, as soon as it has room.
            permit = work_tx.reserve(), if !outbox.is_empty() => {
                match permit {
                    Ok(p) => p.send(outbox.pop_front().expect("outbox is not empty")),
                    Err(_) => return Err(SessionError::stop("the applier task ended unexpectedly")),
                }
            }
            // A cut-over request, or its cancellation.
            Some(ev) = control_rx.recv() => {
                if matches!(ev, control::Control::Retry) {
                    outbox.push_back(Work::RetryHeld);
                    continue;
                }
                let held = observed.held.load(Ordering::Acquire);
                handle_control(ev, &mut cut, &mut outbox, &updates, &progress, held, config, spec, plan);
            }
            // The verify before a cut-over has finished.
            verified = async {
                match cut.as_mut().and_then(|c| c.verify.as_mut()) {
                    Some(v) => (&mut v.0).await,
                    None => std::future::pending().await,
                }
            }, if cut.as_ref().is_some_and(|c| c.verify.is_some()) => {
                let c = cut.as_mut().expect("a cut-over is verifying");
                c.verify = None;
                c.verify_seconds = c.started.elapsed().as_secs_f64();
                let refusal = match verified {
                    Ok(Ok(report)) if report.passed => None,
                    Ok(Ok(report)) => Some(format!("the verify before the lock failed: {}; nothing was changed", report.summary())),
                    Ok(Err(e)) => Some(format!("the verify before the lock could not run: {e}; nothing was changed")),
                    Err(_) => Some("the verify before the lock ended unexpectedly; nothing was changed".into()),
                };
                match refusal {
                    Some(why) => {
                        let c = cut.take().expect("a cut-over is verifying");
                        outbox.push_back(Work::Untrack);
                        tracing::warn!(request = c.job.id, "{why}");
                        let mut out = cutover::refused(&c.job, why);
                        out.verify_seconds = c.verify_seconds;
                        let _ = updates.send(cutover::Update::finished(out));
                    }
                    None => {
                        tracing::info!(request = c.job.id, dry_run = c.job.dry_run, seconds = c.verify_seconds, "verify passed; locking the sources for the cut-over");
                        c.running = true;
                        // A two-way spec's applier takes the stream itself
                        // (syncs), under the lock too.
                        c.forwarding = !two_way;
                        outbox.push_back(Work::Cutover(c.job.clone()));
                    }
                }
            }
            // Another replication origin appeared while streaming with
            // origin = none: stream again with every origin (origins.rs).
            // Not in the middle of a cut-over: it ends first.
            names = async {
                match guard.as_mut() {
                    Some(g) => g.foreign().await,
                    None => std::future::pending().await,
                }
            }, if guard.is_some() && !job_running => {
                let _ = stream.close().await;
                return Err(SessionError {
                    message: format!(
                        "replication origin {} appeared: streaming again with every origin, from the slot's confirmed position",
                        names.join(", ")
                    ),
                    action: Action::Retry,
                    deliberate: false,
                });
            }
            // 2. WAL safety: the slot retains more than the spec allows.
            Some(reason) = over_limit_rx.recv() => {
                let _ = stream.close().await;
                drop_slot_after_safety_stop(config, spec).await;
                return Err(SessionError { deliberate: true, ..SessionError::stop(reason) });
            }
            // 3. A batch is committed: now, and only now, confirm it (I4).
            done = done_rx.recv() => {
                let (batch, result) = match done {
                    Some(Done::Batch(batch, result)) => {
                        outstanding = outstanding.saturating_sub(1);
                        (batch, result)
                    }
                    // The applier of a two-way spec is done with what its
                    // syncs took.
                    Some(Done::Synced(batch, result, handed)) => {
                        syncing.busy = false;
                        outstanding = outstanding.saturating_sub(handed);
                        (batch, result)
                    }
                    Some(Done::Failed(e)) => return Err(e.into()),
                    Some(Done::Cutover(outcome)) => {
                        let c = cut.take().expect("a cut-over was running");
                        let mut outcome = *outcome;
                        outcome.verify_seconds = c.verify_seconds;
                        let ended = cutover_ended(config, &updates, outcome).await;
                        if ended || stopping {
                            let _ = stream.close().await;
                            tracing::info!(confirmed = %totals.confirmed, "stopped");
                            return Ok(if ended { Ended::CutOver } else { Ended::Stopped });
                        }
                        continue;
                    }
                    None => return Err(SessionError::stop("the applier task ended unexpectedly")),
                };
                live_lag.set(pending_since);
                in_flight_since = None;
                let stats = result?;
                observed.confirm(&feedback, cap.as_ref(), totals, batch.end_lsn);
                applied_txns += batch.txns as u64;
                release_watermarks(&mut watermarks, applied_txns, observed);
                totals.batches += 1;
                totals.keys += stats.keys as u64;
                totals.rows_written += stats.rows_written;
                totals.rows_deleted += stats.rows_deleted;
                if stats.full_passes > 0 {
                    tracing::info!(mirrors = stats.full_passes, "recomputed whole mirrors after a transaction too large to track key by key");
                }
            }
            // 4. The stream.
            ev = stream.recv(), if may_read => {
                // The event, then whatever else the reader already has, up
                // to a burst: one pass of this select per burst rather than
                // per message (the backfill's echoes come by the million).
                let mut ev = ev;
                let mut burst = 0usize;
                loop {
                match ev {
                    None => return Err(SessionError { message: "replication stream ended".into(), action: Action::Retry , deliberate: false}),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(ReplicationEvent::XLogData { data, .. })) => {
                        // Row changes of walshift's own echoes are skipped
                        // unread: the backfill's writes come back this way
                        // by the million.
                        let skip = assembler.skipping() && data.first().copied().is_some_and(crate::replication::is_row_change);
                        if !skip {
                        let msg = decoder
                            .decode(data)
                            .map_err(|e| SessionError::stop(format!("cannot decode the stream: {e}")))?;
                        crate::metrics::decoded(&msg);
                        match assembler.feed(msg).map_err(|e| SessionError::stop(e.to_string()))? {
                            Assembled::Committed(txn) => {
                                // A sync is answered before the first
                                // transaction past its position.
                                if syncing.reached(txn.commit_lsn, &mut pending, n) {
                                    in_flight_since = in_flight_since.or(pending_since.take());
                                }
                                if txn.has_work() && pending_since.is_none() {
                                    pending_since = Some(Instant::now());
                                    live_lag.set(in_flight_since.or(pending_since));
                                }
                                totals.txns += 1;
                                received_txns += 1;
                                totals.echo_txns += txn.echo as u64;
                                pending.add(txn, opts.max_txn_keys);
                                if syncing.waiting() && pending.key_count() >= SYNC_MAX_KEYS {
                                    syncing.give_up(&mut pending, n);
                                    in_flight_since = in_flight_since.or(pending_since.take());
                                }
                            }
                            Assembled::Message { prefix, content, .. } if prefix == crate::cutover::MARKER_PREFIX => {
                                // A marker of the cut-over under way: every
                                // batch before it is sent first. The one
                                // emitted under the lock ends the drain.
                                let content = String::from_utf8_lossy(&content).into_owned();
                                if let Some(c) = cut.as_mut().filter(|c| c.forwarding && crate::cutover::marker_of(&c.marker, &content).is_some()) {
                                    if crate::cutover::marker_of(&c.marker, &content) == Some(crate::cutover::MarkerKind::Lock) {
                                        c.forwarding = false;
                                    }
                                    if pending.txns > 0 {
                                        outstanding += 1;
                                        outbox.push_back(Work::Batch(std::mem::replace(&mut pending, Batch::new(n))));
                                    }
                                    outbox.push_back(Work::DrainEnd(content));
                                }
                            }
                            Assembled::Message { prefix, content, .. } => {
                                if let Some(seq) = lag::parse(&spec.name, &prefix, &content) {
                                    watermarks.arrived(seq, received_txns);
                                    release_watermarks(&mut watermarks, applied_txns, observed);
                                }
                            }
                            Assembled::Nothing => {}
                        }
                        }
                    }
                    Some(Ok(ReplicationEvent::Keepalive { wal_end, .. })) => {
                        if !assembler.in_transaction() && syncing.reached(wal_end, &mut pending, n) {
                            in_flight_since = in_flight_since.or(pending_since.take());
                        }
                        // Nothing pending anywhere: every change before this
                        // keepalive is applied, so the slot may move on and
                        // an idle slot does not pin WAL.
                        if !in_flight && pending.txns == 0 && !assembler.in_transaction() {
                            observed.confirm(&feedback, cap.as_ref(), totals, wal_end);
                        }
                    }
                }
                burst += 1;
                let may_read = (!in_flight
                    || pending.key_count() < opts.max_batch_keys
                    || (syncing.waiting() && pending.key_count() < SYNC_MAX_KEYS))
                    && outbox.len() < 64;
                if burst >= STREAM_BURST || !may_read {
                    break;
                }
                match stream.try_recv() {
                    Some(next) => ev = Some(next),
                    None => break,
                }
                }
            }
            // 5. A progress line now and then.
            _ = log_tick.tick() => {
                log_backfill(&progress);
                tracing::info!(
                    txns = totals.txns,
                    keys = totals.keys,
                    rows_written = totals.rows_written,
                    rows_deleted = totals.rows_deleted,
                    confirmed = %totals.confirmed,
                    "mirroring"
                );
            }
        }
    }
}

/// WAL safety: warns (once a minute) from 80% of `max` on; past `max` with
/// `on_max_retained_wal = "drop-slot"` returns the reason to stop.
fn retained_wal_check(
    spec: &Spec,
    retained: u64,
    max: u64,
    last_warning: &mut Option<Instant>,
) -> Option<String> {
    let human = crate::throttle::human_bytes;
    if retained > max && spec.safety.on_max_retained_wal == crate::spec::OnMaxRetainedWal::DropSlot
    {
        return Some(format!(
            "slot {} retains {} of WAL, over safety.max_retained_wal = {}: walshift stopped and dropped its slot \
             so the disk cannot fill; the backfill starts over with the next run",
            spec.slot_name(),
            human(retained),
            human(max)
        ));
    }
    if retained * 5 >= max * 4
        && last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
    {
        *last_warning = Some(Instant::now());
        tracing::warn!(
            slot = %spec.slot_name(),
            retained = %human(retained),
            max = %human(max),
            "walshift's slot retains a lot of WAL (is walshift falling behind, or stopped for long?)"
        );
    }
    None
}

/// The replication origin's progress (`Lsn::INVALID` when it has none).
/// Only the planted bug resumes from it: see the start of [`session`].
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

fn release_watermarks(pending: &mut lag::Pending, applied_txns: u64, observed: &Observed) {
    let now = Instant::now();
    for seq in pending.release(applied_txns) {
        observed.watermarks.applied(seq, now);
    }
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
        let _ = c
            .execute(
                "UPDATE walshift.migration SET run_heartbeat = NULL, run_pid = NULL, run_host = NULL WHERE name = $1",
                &[&spec.name],
            )
            .await;
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
    let _ = c
        .execute(
            "DELETE FROM walshift.backfill WHERE name = $1",
            &[&spec.name],
        )
        .await;
    let _ = c
        .execute(
            "UPDATE walshift.migration SET applied_lsn = NULL, consistent_point = NULL WHERE name = $1",
            &[&spec.name],
        )
        .await;
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

/// What the session hands the apply task.
enum Work {
    Batch(Batch),
    /// Note every key applied from now on (a cut-over's verify begins).
    Track,
    /// Forget them (the cut-over was refused or cancelled).
    Untrack,
    Cutover(cutover::Job),
    /// The cut-over's marker came through the stream: every batch before it
    /// has been sent.
    DrainEnd(String),
    /// `walshift ctl SPEC retry`: try the held keys again.
    RetryHeld,
}

/// What the applier task reports.
enum Done {
    Batch(Batch, Result<ApplyStats, ApplyError>),
    /// A two-way transaction, with everything its syncs took from the
    /// session loop, and how many handed-over batches it applied too.
    Synced(Batch, Result<ApplyStats, ApplyError>, usize),
    /// The backfill failed; the session ends.
    Failed(ApplyError),
    /// A cut-over ended (its drained batches were reported before).
    Cutover(Box<crate::cutover::Outcome>),
}

/// A cut-over request the session has in hand.
struct Cut {
    job: cutover::Job,
    marker: String,
    started: Instant,
    /// The verify before the lock, while it runs.
    verify: Option<(
        oneshot::Receiver<Result<crate::verify::Report, String>>,
        AbortOnDrop,
    )>,
    verify_seconds: f64,
    /// The apply task has the job.
    running: bool,
    /// Batches go straight to the apply task until the marker.
    forwarding: bool,
}

/// A request from the control task: refuse it, or start its verify (and the
/// key tracking that makes the re-check under the lock complete).
#[allow(clippy::too_many_arguments)]
fn handle_control(
    ev: control::Control,
    cut: &mut Option<Cut>,
    outbox: &mut VecDeque<Work>,
    updates: &mpsc::UnboundedSender<cutover::Update>,
    progress: &SharedProgress,
    held: usize,
    config: &ConnConfig,
    spec: &Spec,
    plan: &Plan,
) {
    use control::Control;
    use cutover::{Update, refused};
    let job = match ev {
        Control::Cancelled(id) => {
            if cut.as_ref().is_some_and(|c| c.job.id == id && !c.running) {
                tracing::info!(request = id, "cut-over cancelled by the operator");
                *cut = None;
                outbox.push_back(Work::Untrack);
            }
            return;
        }
        Control::Postponed(job) => {
            let why = format!(
                "cut-over of {} is postponed by the operator; run `walshift ctl {} allow-cutover` first",
                spec.name, spec.file
            );
            let _ = updates.send(Update::finished(refused(&job, why)));
            return;
        }
        Control::Request(job) => job,
        Control::Retry => return,
    };
    let differs = job
        .spec_digest
        .as_ref()
        .is_some_and(|d| *d != spec.cutover_digest());
    let why = if differs {
        Some(format!(
            "the request was made with {}, whose mirrors, gates or [cutover] differ from {}, which              this run loaded; cut over with the spec the run uses, or restart `walshift run` with              the new one",
            job.spec_file.as_deref().unwrap_or("another spec"),
            spec.file
        ))
    } else if cut.is_some() {
        Some("another cut-over is under way".to_string())
    } else if !progress.lock().expect("progress lock").done() {
        Some("the backfill is not complete; `walshift wait` returns once it is".to_string())
    } else if held > 0 {
        Some(format!(
            "{held} key(s) are held: their rows fail the mapping or the target's constraints (see \
             `walshift status {}`); fix the rows or the spec, or run `walshift ctl {} retry`",
            spec.file, spec.file
        ))
    } else {
        None
    };
    if let Some(why) = why {
        let _ = updates.send(Update::finished(refused(&job, why)));
        return;
    }
    tracing::info!(
        request = job.id,
        dry_run = job.dry_run,
        "cut-over requested; verifying first"
    );
    let _ = updates.send(Update::step(
        job.id,
        "verifying",
        format!(
            "verifying {} mirror(s) chunk by chunk, without locks",
            plan.mirrors.len()
        ),
    ));
    outbox.push_back(Work::Track);
    let (tx, rx) = oneshot::channel();
    let marker = crate::cutover::marker(&spec.name, job.id);
    let (config, spec, plan) = (config.clone(), spec.clone(), plan.clone());
    let task = tokio::spawn(async move {
        let result = async {
            let client = config
                .with_application_name("walshift-verify")
                .connect_sql()
                .await
                .map_err(|e| e.to_string())?;
            crate::verify::verify_with(&client, &spec, &plan, 10, false)
                .await
                .map_err(|e| pg_message(&e))
        }
        .await;
        let _ = tx.send(result);
    });
    *cut = Some(Cut {
        marker,
        job,
        started: Instant::now(),
        verify: Some((rx, AbortOnDrop(task))),
        verify_seconds: 0.0,
        running: false,
        forwarding: false,
    });
}

/// Reports a cut-over's outcome. Returns whether it committed (the run is
/// over then; the outcome is written before the run exits).
async fn cutover_ended(
    config: &ConnConfig,
    updates: &mpsc::UnboundedSender<cutover::Update>,
    outcome: crate::cutover::Outcome,
) -> bool {
    let committed = outcome.committed;
    match &outcome.error {
        None => tracing::info!(
            request = outcome.id,
            dry_run = outcome.dry_run,
            freeze_ms = format!("{:.1}", outcome.freeze_ms),
            "{}",
            outcome.render()
        ),
        Some(_) => tracing::warn!(request = outcome.id, "{}", outcome.render()),
    }
    let update = cutover::Update::finished(outcome);
    if committed {
        // Written here and now: the run ends right after.
        for _ in 0..20 {
            if let Ok(c) = config
                .with_application_name("walshift-control")
                .connect_sql()
                .await
            {
                if control::write_update(&c, &update).await.is_ok() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    } else {
        let _ = updates.send(update);
    }
    committed
}

/// History gets a turn at least this often, even while live batches keep
/// arriving, so a saturating application load cannot starve the backfill
/// forever (live apply lag above `max_apply_lag` still pauses it).
const HISTORY_TURN: Duration = Duration::from_secs(1);

/// The applier task: live batches first; history when there are none (or
/// when its turn is due) and the throttle allows; a cut-over when asked.
async fn apply_loop(
    mut applier: Applier,
    mut backfill: Backfill,
    mut work_rx: mpsc::Receiver<Work>,
    done_tx: mpsc::Sender<Done>,
    ctx: cutover::Context,
    link: Option<TwoWayLink>,
) {
    if let Some(link) = link {
        return apply_loop_two_way(applier, backfill, work_rx, done_tx, ctx, link).await;
    }
    let mut tracker: Option<cutover::Tracker> = None;
    let mut last_chunk = Instant::now();
    loop {
        let live = if backfill.is_done() {
            match work_rx.recv().await {
                Some(w) => Some(w),
                None => return,
            }
        } else if last_chunk.elapsed() < HISTORY_TURN {
            match work_rx.try_recv() {
                Ok(w) => Some(w),
                Err(mpsc::error::TryRecvError::Disconnected) => return,
                Err(mpsc::error::TryRecvError::Empty) => None,
            }
        } else {
            None
        };
        if let Some(work) = live {
            let go_on = handle_work(
                &mut applier,
                &mut work_rx,
                &done_tx,
                &mut tracker,
                &ctx,
                work,
                None,
            )
            .await;
            if !go_on {
                return;
            }
            continue;
        }
        // Throttled: look again in a moment. Under a rows-per-second cap:
        // the next chunk's time. Live work is applied meanwhile.
        let wait = match backfill.throttled(applier.client()).await {
            Ok(Some(_)) => Some(Duration::from_millis(250)),
            Ok(None) => backfill.pace().map(|d| d.min(Duration::from_millis(250))),
            Err(e) => {
                let _ = done_tx.send(Done::Failed(e)).await;
                return;
            }
        };
        let step = match wait {
            Some(wait) => {
                tokio::select! {
                    w = work_rx.recv() => match w {
                        Some(w) => {
                            let go_on = handle_work(&mut applier, &mut work_rx, &done_tx, &mut tracker, &ctx, w, None).await;
                            if !go_on {
                                return;
                            }
                            continue;
                        }
                        None => return,
                    },
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
            None => backfill.step(&mut applier).await,
        };
        last_chunk = Instant::now();
        if let Err(e) = step {
            let _ = done_tx.send(Done::Failed(e)).await;
            return;
        }
    }
}

/// How soon carried keys of a two-way spec are tried again when nothing
/// else brings a transaction.
const CARRY_RETRY: Duration = Duration::from_millis(50);

/// What the two-way applier does next.
enum Next {
    Work(Work),
    Live,
    History,
}

/// The applier task of a spec with two-way mirrors: like [`apply_loop`],
/// but live work is not handed over in batches: the applier takes it from
/// the session loop when it syncs (mirror/applier/two_way.rs), whenever the
/// loop says it holds some, or carried keys wait.
async fn apply_loop_two_way(
    mut applier: Applier,
    mut backfill: Backfill,
    mut work_rx: mpsc::Receiver<Work>,
    done_tx: mpsc::Sender<Done>,
    ctx: cutover::Context,
    mut link: TwoWayLink,
) {
    let mut tracker: Option<cutover::Tracker> = None;
    let mut last_chunk = Instant::now();
    loop {
        let history_due = !backfill.is_done() && last_chunk.elapsed() >= HISTORY_TURN;
        let next = tokio::select! {
            biased;
            // 1. Control items and the cut-over, in order.
            w = work_rx.recv() => match w {
                Some(w) => Next::Work(w),
                None => return,
            },
            // 2. Live work, unless history's turn is due.
            _ = link.work_ready.notified(), if !history_due => Next::Live,
            _ = tokio::time::sleep(CARRY_RETRY), if applier.has_carried() && !history_due => Next::Live,
            // 3. History.
            _ = std::future::ready(()), if !backfill.is_done() => Next::History,
        };
        let go_on = match next {
            Next::Work(work) => {
                handle_work(
                    &mut applier,
                    &mut work_rx,
                    &done_tx,
                    &mut tracker,
                    &ctx,
                    work,
                    Some((&mut link, &backfill)),
                )
                .await
            }
            Next::Live => {
                synced_and_report(
                    &mut applier,
                    &mut link,
                    &backfill,
                    &done_tx,
                    tracker.as_mut(),
                )
                .await
            }
            Next::History => {
                let wait = match backfill.throttled(applier.client()).await {
                    Ok(Some(_)) => Some(Duration::from_millis(250)),
                    Ok(None) => backfill.pace().map(|d| d.min(Duration::from_millis(250))),
                    Err(e) => {
                        let _ = done_tx.send(Done::Failed(e)).await;
                        return;
                    }
                };
                match wait {
                    Some(wait) => tokio::select! {
                        w = work_rx.recv() => match w {
                            Some(w) => handle_work(&mut applier, &mut work_rx, &done_tx, &mut tracker, &ctx, w, Some((&mut link, &backfill))).await,
                            None => return,
                        },
                        _ = link.work_ready.notified() => {
                            synced_and_report(&mut applier, &mut link, &backfill, &done_tx, tracker.as_mut()).await
                        }
                        _ = tokio::time::sleep(wait) => true,
                    },
                    None => {
                        last_chunk = Instant::now();
                        let step = backfill.step(&mut applier).await;
                        // What the chunk's sync took from the stream.
                        if let Some((batch, r)) = applier.take_synced() {
                            if let (Ok(_), Some(t)) = (&r, tracker.as_mut()) {
                                t.add(&batch);
                            }
                            if done_tx.send(Done::Synced(batch, r, 0)).await.is_err() {
                                return;
                            }
                        }
                        match step {
                            Ok(()) => true,
                            Err(e) => {
                                let _ = done_tx.send(Done::Failed(e)).await;
                                return;
                            }
                        }
                    }
                }
            }
        };
        crate::metrics::carried(&applier);
        if !go_on {
            return;
        }
    }
}

/// A two-way transaction in step with the stream (it takes whatever the
/// session loop holds), reported like a batch. `false` when the session is
/// gone.
async fn synced_and_report(
    applier: &mut Applier,
    link: &mut TwoWayLink,
    backfill: &Backfill,
    done_tx: &mpsc::Sender<Done>,
    tracker: Option<&mut cutover::Tracker>,
) -> bool {
    let _ = link;
    let (batch, r) = applier.sync_now(&backfill.running()).await;
    if let (Ok(_), Some(t)) = (&r, tracker) {
        t.add(&batch);
    }
    done_tx.send(Done::Synced(batch, r, 0)).await.is_ok()
}

/// Applies one live batch, notes its keys if a cut-over is tracking them,
/// and reports it. `false` when the session is gone.
async fn apply_and_report(
    applier: &mut Applier,
    done_tx: &mpsc::Sender<Done>,
    tracker: Option<&mut cutover::Tracker>,
    batch: Batch,
) -> bool {
    let r = applier.apply(&batch).await;
    if let (Ok(_), Some(t)) = (&r, tracker) {
        t.add(&batch);
    }
    done_tx.send(Done::Batch(batch, r)).await.is_ok()
}

/// One item of work. `false` when the session is gone.
async fn handle_work(
    applier: &mut Applier,
    work_rx: &mut mpsc::Receiver<Work>,
    done_tx: &mpsc::Sender<Done>,
    tracker: &mut Option<cutover::Tracker>,
    ctx: &cutover::Context,
    work: Work,
    two_way: Option<(&mut TwoWayLink, &Backfill)>,
) -> bool {
    match work {
        // A two-way spec's batches come through syncs; one handed over
        // (after a cut-over that gave up) is applied in step all the same.
        Work::Batch(batch) if let Some((link, backfill)) = two_way => {
            let _ = link;
            let (batch, r) = applier.apply_synced(batch, &backfill.running()).await;
            if let (Ok(_), Some(t)) = (&r, tracker.as_mut()) {
                t.add(&batch);
            }
            done_tx.send(Done::Synced(batch, r, 1)).await.is_ok()
        }
        Work::Batch(batch) => apply_and_report(applier, done_tx, tracker.as_mut(), batch).await,
        Work::Track => {
            *tracker = Some(cutover::Tracker::new(ctx.mirrors.len()));
            true
        }
        Work::Untrack => {
            *tracker = None;
            true
        }
        Work::Cutover(job) => {
            let outcome =
                cutover::execute(applier, work_rx, done_tx, tracker.take(), job, ctx).await;
            done_tx.send(Done::Cutover(Box::new(outcome))).await.is_ok()
        }
        // The marker of a cut-over that already gave up.
        Work::DrainEnd(_) => true,
        Work::RetryHeld => {
            let running = two_way.map(|(_, b)| b.running()).unwrap_or_default();
            match applier.retry_held(&running).await {
                (Some(batch), r) => {
                    if let (Ok(_), Some(t)) = (&r, tracker.as_mut()) {
                        t.add(&batch);
                    }
                    done_tx.send(Done::Synced(batch, r, 0)).await.is_ok()
                }
                (None, Ok(_)) => true,
                (None, Err(e)) => {
                    let _ = done_tx.send(Done::Failed(e)).await;
                    false
                }
            }
        }
    }
}

fn log_backfill(progress: &SharedProgress) {
    let p = progress.lock().expect("progress lock").clone();
    for m in p.mirrors.iter().filter(|m| !m.done) {
        let pct = if m.rows_estimate > 0 {
            format!(
                "{:.1}%",
                100.0 * m.rows_done as f64 / m.rows_estimate as f64
            )
        } else {
            "?%".into()
        };
        tracing::info!(
            mirror = %m.label,
            rows = m.rows_done,
            estimate = m.rows_estimate,
            percent = %pct,
            rate = format!("{:.0}/s", m.rate),
            eta = ?m.eta(),
            throttled = p.throttle.as_deref().unwrap_or("no"),
            "backfill"
        );
    }
}

/// A spawned task that is aborted when its handle is dropped: helper tasks
/// end with the session or command that started them.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
