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

mod setup;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

pub use setup::{Objects, ensure as ensure_objects, sources};

use crate::backfill::{Backfill, LiveLag, SharedProgress};
use crate::catalog::{self, Plan, Problem};
use crate::conninfo::ConnConfig;
use crate::error_policy::{self, Action, pg_message};
use crate::mirror::applier::{
    Applier, ApplierOptions, ApplyError, ApplyStats, Batch, SESSION_SETTINGS,
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
}

impl Observed {
    fn confirm(&self, feedback: &crate::replication::Feedback, totals: &mut Totals, lsn: Lsn) {
        feedback.confirm(lsn);
        totals.confirmed = totals.confirmed.max(lsn);
        self.confirmed.fetch_max(lsn.0, Ordering::AcqRel);
    }
}

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
        if let Err(e) = c
            .execute(
                "SELECT pg_logical_emit_message(false, $1, $2)",
                &[&lag::PREFIX, &lag::content(&name, seq)],
            )
            .await
        {
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
        if let Some(max) = spec.safety.max_retained_wal {
            if let Some(msg) = retained_wal_check(c, &spec, max, &mut last_warning).await {
                let _ = over_limit.send(msg).await;
                return;
            }
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
    let objects = setup::ensure(&client, config, spec, &plan)
        .await
        .map_err(RunError::Setup)?;
    drop(client);

    let mut totals = Totals::default();
    let mut attempt = 0u32;
    loop {
        let started = Instant::now();
        match session(
            config,
            spec,
            &plan,
            &objects,
            &opts,
            &mut shutdown,
            &mut totals,
            &observed,
        )
        .await
        {
            Ok(()) => {
                clear_heartbeat(config, spec).await;
                return Ok(totals);
            }
            // Resuming needs the slot and the state: if they are gone
            // (`walshift cleanup --force`, or by hand) there is nothing to
            // resume, and any error (a terminated stream, a missing table)
            // is only a symptom of that.
            Err(e) if e.deliberate => return Err(RunError::Fatal(e.message)),
            Err(_) if let Some(gone) = objects_gone(config, spec).await => {
                return Err(RunError::Fatal(gone));
            }
            Err(e) if e.action == Action::Retry => {
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
            }
            Err(e) => return Err(RunError::Fatal(e.message)),
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
) -> Result<(), SessionError> {
    // The apply session.
    let client = config
        .with_application_name("walshift-apply")
        .connect_sql()
        .await
        .map_err(|e| SessionError {
            message: format!("connecting the apply session: {e}"),
            action: Action::Retry,
            deliberate: false,
        })?;
    client.batch_execute(SESSION_SETTINGS).await?;
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
        let row = client
            .query_one(
                "SELECT pg_replication_origin_progress($1, true)::text",
                &[&spec.origin_name()],
            )
            .await?;
        if let Some(lsn) = row
            .get::<_, Option<String>>(0)
            .and_then(|s| s.parse::<Lsn>().ok())
        {
            start = start.max(lsn);
        }
    }
    let applier = Applier::new(
        client,
        &spec.name,
        &plan.mirrors,
        objects.origin,
        opts.applier.clone(),
    )
    .await?;
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
    let plugin_options = vec![
        ("proto_version".to_string(), "1".to_string()),
        (
            "publication_names".to_string(),
            crate::ident::quote_ident(&spec.publication_name()),
        ),
        ("messages".to_string(), "true".to_string()),
    ];
    let mut stream = LogicalStream::start(
        repl,
        &spec.slot_name(),
        start,
        &plugin_options,
        StreamOptions::default(),
    )
    .await?;
    tracing::info!(slot = %spec.slot_name(), start = %start, "streaming");
    let feedback = stream.feedback();

    let sources = plan
        .mirrors
        .iter()
        .map(|m| MirrorSource {
            source_oid: m.source_oid,
            key_columns: m.key.iter().map(|k| k.name.clone()).collect(),
        })
        .collect();
    let mut assembler = TxnAssembler::new(sources, spec.origin_name(), opts.max_txn_keys);
    let mut decoder = Decoder::new(DecoderOptions {
        proto_version: 1,
        streaming_parallel: false,
    });
    let n = plan.mirrors.len();
    let mut pending = Batch::new(n);

    // The applier runs in its own task so the loop keeps reading meanwhile.
    // Between live batches it copies history (I3: one writer for both).
    let (work_tx, work_rx) = mpsc::channel::<Batch>(1);
    let (done_tx, mut done_rx) = mpsc::channel::<Done>(1);
    let apply_task = tokio::spawn(apply_loop(applier, backfill, work_rx, done_tx));
    let _abort_applier = AbortOnDrop(apply_task);

    let mut in_flight = false;
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
        // Hand the next batch over as soon as the applier is free; a batch of
        // echoes or unrelated transactions needs no SQL, only a confirm.
        if !in_flight && pending.txns > 0 {
            let batch = std::mem::replace(&mut pending, Batch::new(n));
            if batch.has_work() {
                in_flight = true;
                in_flight_since = pending_since.take();
                if work_tx.send(batch).await.is_err() {
                    return Err(SessionError::stop("the applier task ended unexpectedly"));
                }
            } else {
                observed.confirm(&feedback, totals, batch.end_lsn);
                applied_txns += batch.txns as u64;
                release_watermarks(&mut watermarks, applied_txns, observed);
            }
        }
        let may_read = !in_flight || pending.key_count() < opts.max_batch_keys;

        tokio::select! {
            biased;
            // 1. Shutdown: finish the batch under way, report, leave.
            _ = shutdown.changed() => {
                if in_flight {
                    while let Some(done) = done_rx.recv().await {
                        if let Done::Batch(batch, result) = done {
                            if result.is_ok() {
                                feedback.confirm(batch.end_lsn);
                                totals.confirmed = totals.confirmed.max(batch.end_lsn);
                            }
                            break;
                        }
                    }
                }
                let _ = stream.close().await;
                tracing::info!(confirmed = %totals.confirmed, "stopped");
                return Ok(());
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
                    Some(Done::Batch(batch, result)) => (batch, result),
                    Some(Done::Failed(e)) => return Err(e.into()),
                    None => return Err(SessionError::stop("the applier task ended unexpectedly")),
                };
                in_flight = false;
                live_lag.set(pending_since);
                in_flight_since = None;
                let stats = result?;
                observed.confirm(&feedback, totals, batch.end_lsn);
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
                match ev {
                    None => return Err(SessionError { message: "replication stream ended".into(), action: Action::Retry , deliberate: false}),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(ReplicationEvent::XLogData { data, .. })) => {
                        // Row changes of walshift's own echoes are skipped
                        // unread: the backfill's writes come back this way
                        // by the million.
                        if assembler.skipping() && matches!(data.first(), Some(b'I' | b'U' | b'D' | b'T')) {
                            continue;
                        }
                        let msg = decoder
                            .decode(data)
                            .map_err(|e| SessionError::stop(format!("cannot decode the stream: {e}")))?;
                        match assembler.feed(msg).map_err(|e| SessionError::stop(e.to_string()))? {
                            Assembled::Committed(txn) => {
                                if txn.has_work() && pending_since.is_none() {
                                    pending_since = Some(Instant::now());
                                    live_lag.set(in_flight_since.or(pending_since));
                                }
                                totals.txns += 1;
                                received_txns += 1;
                                totals.echo_txns += txn.echo as u64;
                                pending.add(txn, opts.max_txn_keys);
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
                    Some(Ok(ReplicationEvent::Keepalive { wal_end, .. })) => {
                        // Nothing pending anywhere: every change before this
                        // keepalive is applied, so the slot may move on and
                        // an idle slot does not pin WAL.
                        if !in_flight && pending.txns == 0 && !assembler.in_transaction() {
                            observed.confirm(&feedback, totals, wal_end);
                        }
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
async fn retained_wal_check(
    c: &tokio_postgres::Client,
    spec: &Spec,
    max: u64,
    last_warning: &mut Option<Instant>,
) -> Option<String> {
    let row = c
        .query_opt(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::float8 FROM pg_replication_slots WHERE slot_name = $1",
            &[&spec.slot_name()],
        )
        .await
        .ok()??;
    let retained = row.get::<_, Option<f64>>(0)?.max(0.0) as u64;
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

fn release_watermarks(pending: &mut lag::Pending, applied_txns: u64, observed: &Observed) {
    let now = Instant::now();
    for seq in pending.release(applied_txns) {
        observed.watermarks.applied(seq, now);
    }
}

/// Which of walshift's objects no longer exist, in words; `None` when all
/// do or the database cannot be asked (then the retry will tell).
async fn objects_gone(config: &ConnConfig, spec: &Spec) -> Option<String> {
    let c = config
        .with_application_name("walshift")
        .connect_sql()
        .await
        .ok()?;
    let row = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1),
                    to_regclass('walshift.migration') IS NOT NULL",
            &[&spec.slot_name()],
        )
        .await
        .ok()?;
    let (slot, state): (bool, bool) = (row.get(0), row.get(1));
    if slot && state {
        return None;
    }
    Some(format!(
        "walshift's {} {} removed while it ran (by walshift cleanup, or by hand), so there is nothing to resume: \
         stopping; run walshift run again to start over",
        match (slot, state) {
            (false, false) => "slot and state",
            (false, true) => "slot",
            _ => "state",
        },
        if slot || state { "was" } else { "were" }
    ))
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

/// What the applier task reports.
enum Done {
    Batch(Batch, Result<ApplyStats, ApplyError>),
    /// The backfill failed; the session ends.
    Failed(ApplyError),
}

/// History gets a turn at least this often, even while live batches keep
/// arriving, so a saturating application load cannot starve the backfill
/// forever (live apply lag above `max_apply_lag` still pauses it).
const HISTORY_TURN: Duration = Duration::from_secs(1);

/// The applier task: live batches first; history when there are none (or
/// when its turn is due) and the throttle allows.
async fn apply_loop(
    mut applier: Applier,
    mut backfill: Backfill,
    mut work_rx: mpsc::Receiver<Batch>,
    done_tx: mpsc::Sender<Done>,
) {
    let mut last_chunk = Instant::now();
    loop {
        let live = if backfill.is_done() {
            match work_rx.recv().await {
                Some(b) => Some(b),
                None => return,
            }
        } else if last_chunk.elapsed() < HISTORY_TURN {
            match work_rx.try_recv() {
                Ok(b) => Some(b),
                Err(mpsc::error::TryRecvError::Disconnected) => return,
                Err(mpsc::error::TryRecvError::Empty) => None,
            }
        } else {
            None
        };
        if let Some(batch) = live {
            let r = applier.apply(&batch).await;
            if done_tx.send(Done::Batch(batch, r)).await.is_err() {
                return;
            }
            continue;
        }
        let step = match backfill.throttled(applier.client()).await {
            Ok(Some(_)) => {
                // Wait for live work or the next look at the signals.
                tokio::select! {
                    b = work_rx.recv() => match b {
                        Some(b) => {
                            let r = applier.apply(&b).await;
                            if done_tx.send(Done::Batch(b, r)).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        None => return,
                    },
                    _ = tokio::time::sleep(Duration::from_millis(250)) => continue,
                }
            }
            Ok(None) => backfill.step(&mut applier).await,
            Err(e) => Err(e),
        };
        last_chunk = Instant::now();
        if let Err(e) = step {
            let _ = done_tx.send(Done::Failed(e)).await;
            return;
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
