//! The run's side of the cut-over, carried out on its apply session (the
//! protocol is in the module above).
//!
//! The lock is taken by the session that writes the targets, so the drain
//! can write under it (a set-mode target is the source table itself). Writes
//! to the sources wait from the LOCK statement until the COMMIT: that is the
//! freeze reported. Reads go on throughout.
//!
//! The drain must happen inside the lock: after the marker, no write to a
//! source can be missing from the targets, so the re-check and the gates see
//! the final state. A failure after the drain rolls back to the savepoint and
//! commits, keeping the drained mirror work (ordinary mirroring) and
//! releasing the lock; nothing of the operator's SQL remains.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::SqlState;

use super::{MARKER_PREFIX, MarkerKind, MirrorCheck, Outcome, marker, marker_content};
use crate::catalog::{MirrorPlan, Plan};
use crate::conninfo::ConnConfig;
use crate::error_policy::pg_message;
use crate::mirror::applier::{Applier, ApplyError, ApplyStats, Batch};
use crate::mirror::txn::Key;
use crate::run::AbortOnDrop;
use crate::run::apply_task::{Done, Work};
use crate::spec::Spec;
use crate::verify;

/// Longest the drain may take with the lock held before the cut-over gives
/// up (rolls back, releasing the lock). The marker normally arrives within
/// milliseconds; this bounds the freeze when the stream is stuck.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Keys the tracker holds before it gives up: the re-check under the lock
/// must stay short.
pub(crate) const MAX_TRACKED_KEYS: usize = 500_000;

/// Keys per re-check statement.
const RECHECK_CHUNK: usize = 10_000;

/// Before locking, tracked keys are re-checked without the lock while there
/// are more than this many, so the re-check under the lock covers only what
/// changed during the last round (the freeze stays short under load).
const CONVERGED_KEYS: usize = 200;

/// The lock is taken once a probe marker came back through the stream this
/// fast (walshift is caught up: the drain under the lock will be short) ...
const SETTLED: Duration = Duration::from_millis(40);
/// ... or after this many probes, whatever they showed.
const MAX_PROBES: u32 = 12;
/// A probe that takes longer than this counts as lost.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Keys a drain merges into one recompute per mirror.
const DRAIN_MAX_KEYS: usize = 1_000_000;

/// A cut-over request accepted by the run.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub id: i64,
    pub dry_run: bool,
    /// What the request was made with (`Spec::cutover_digest` and file);
    /// `None` for a request of an older walshift.
    pub spec_digest: Option<String>,
    pub spec_file: Option<String>,
}

/// What the apply task needs to carry a cut-over out.
pub(crate) struct CutoverContext {
    pub spec: Spec,
    pub mirrors: Vec<MirrorPlan>,
    pub updates: mpsc::UnboundedSender<StateUpdate>,
}

/// Every key the applier committed since tracking began, per mirror.
#[derive(Debug)]
pub(crate) struct Tracker {
    keys: Vec<HashSet<Key>>,
    total: usize,
    /// Why the tracked keys are incomplete (a whole-mirror pass, a TRUNCATE,
    /// too many keys): the re-check cannot stand in for the verify.
    incomplete: Option<String>,
}

impl Tracker {
    /// Keys tracked so far; tracking starts afresh.
    fn take(&mut self) -> Vec<HashSet<Key>> {
        self.total = 0;
        let n = self.keys.len();
        std::mem::replace(&mut self.keys, vec![HashSet::new(); n])
    }

    /// Keys to check again later (they differed: probably not applied yet).
    fn keep(&mut self, mirror: usize, keys: Vec<Vec<String>>) {
        if self.incomplete.is_some() {
            return;
        }
        for k in keys {
            let key: Key = k.into_iter().map(String::into_boxed_str).collect();
            if self.keys[mirror].insert(key) {
                self.total += 1;
            }
        }
    }

    pub fn new(mirrors: usize) -> Self {
        Tracker {
            keys: vec![HashSet::new(); mirrors],
            total: 0,
            incomplete: None,
        }
    }

    pub fn add(&mut self, batch: &Batch) {
        if self.incomplete.is_some() {
            return;
        }
        for (i, work) in batch.mirrors.iter().enumerate() {
            if work.overflowed || work.truncated || work.target_truncated {
                self.incomplete = Some(format!(
                    "mirror {} was {} while the verify ran",
                    i + 1,
                    if work.truncated || work.target_truncated {
                        "truncated"
                    } else {
                        "changed by a transaction too large to track key by key"
                    }
                ));
                self.keys.clear();
                return;
            }
            for k in work.keys.iter().chain(work.dirs.keys()) {
                if self.keys[i].insert(k.clone()) {
                    self.total += 1;
                }
            }
        }
        if self.total > MAX_TRACKED_KEYS {
            self.incomplete = Some(format!(
                "more than {MAX_TRACKED_KEYS} keys changed while the verify ran"
            ));
            self.keys.clear();
        }
    }
}

/// A step of a request, for the command that follows it.
#[derive(Debug, Clone)]
pub(crate) struct StateUpdate {
    pub id: i64,
    pub state: &'static str,
    pub detail: Option<String>,
    pub attempts: Option<u32>,
    pub result: Option<Outcome>,
}

impl StateUpdate {
    pub fn step(id: i64, state: &'static str, detail: impl Into<String>) -> Self {
        StateUpdate {
            id,
            state,
            detail: Some(detail.into()),
            attempts: None,
            result: None,
        }
    }

    pub fn finished(outcome: Outcome) -> Self {
        StateUpdate {
            id: outcome.id,
            state: if outcome.passed { "done" } else { "failed" },
            detail: outcome.error.clone(),
            attempts: Some(outcome.attempts),
            result: Some(outcome),
        }
    }
}

/// Why a request is turned down or was dropped.
pub(crate) fn refused(job: &Job, why: impl Into<String>) -> Outcome {
    Outcome {
        id: job.id,
        dry_run: job.dry_run,
        error: Some(why.into()),
        ..Default::default()
    }
}

/// The apply task's side: lock, drain, check, run the SQL, commit.
/// Live batches that arrive meanwhile are applied (between lock attempts) or
/// drained (under the lock); each is reported as `Done::Batch` once committed.
pub(crate) async fn execute(
    applier: &mut Applier,
    work_rx: &mut mpsc::Receiver<Work>,
    done_tx: &mpsc::Sender<Done>,
    tracker: Option<Tracker>,
    job: Job,
    ctx: &CutoverContext,
) -> Outcome {
    let mut out = refused(&job, "");
    out.error = None;
    let Some(mut tracker) = tracker else {
        out.error = Some("internal: the cut-over started without key tracking".into());
        return out;
    };
    if let Some(why) = &tracker.incomplete {
        out.error = Some(format!(
            "{why}: too much changed to re-check under the lock; run walshift cutover again when writes are quieter"
        ));
        return out;
    }
    let cut = &ctx.spec.cutover;
    let sources = lock_targets(ctx);
    let lock_sql = format!(
        "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
        sources.join(", ")
    );
    let begin = format!(
        "BEGIN; SET LOCAL lock_timeout = '{}ms'",
        cut.lock_timeout.as_millis().max(1)
    );
    let ended = "the session ended during the cut-over";
    let mut probes = 0u32;
    let mut failed_attempts = Duration::ZERO;
    for attempt in 1..=cut.max_attempts {
        // Lock with as little as possible left to drain under the lock.
        let ready = prepare(
            applier,
            work_rx,
            done_tx,
            &mut tracker,
            &job,
            ctx,
            &mut probes,
        );
        if !ready.await {
            out.error = Some(ended.into());
            return out;
        }
        out.attempts = attempt;
        let _ = ctx.updates.send(StateUpdate {
            attempts: Some(attempt),
            ..StateUpdate::step(
                job.id,
                "locking",
                format!(
                    "locking {} (attempt {attempt} of {}, lock_timeout {:?})",
                    sources.join(", "),
                    cut.max_attempts,
                    cut.lock_timeout
                ),
            )
        });
        let asked = Instant::now();
        match lock(applier.client(), &begin, &lock_sql).await {
            Err(why) => {
                out.error = Some(why);
                return out;
            }
            Ok(false) if attempt == cut.max_attempts => {
                out.failed_attempts_ms = ms(failed_attempts + asked.elapsed());
                out.error = Some(could_not_lock(&sources, cut));
                return out;
            }
            Ok(false) => {}
            Ok(true) => {
                out.lock_wait_ms = ms(asked.elapsed());
                let (done, again) =
                    under_lock(applier, work_rx, done_tx, tracker, &job, ctx, out, asked).await;
                out = done;
                // The drain waited past lock_timeout on a row lock the
                // sources' lock does not cover: like a lock attempt that
                // timed out, nothing was changed, and the next one may get
                // through.
                let Some(t) = again.filter(|_| attempt < cut.max_attempts) else {
                    return out;
                };
                tracker = t;
                tracing::info!(
                    request = job.id,
                    attempt,
                    error = out.error.as_deref().unwrap_or(""),
                    "the drain under the lock timed out on a lock; trying again"
                );
                out.error = None;
            }
        }
        failed_attempts += asked.elapsed();
        out.failed_attempts_ms = ms(failed_attempts);
        // Back off, mirroring meanwhile so the drain stays short.
        let pause = backoff(cut.lock_timeout, attempt);
        if !apply_for(applier, work_rx, done_tx, &mut tracker, pause).await {
            out.error = Some(ended.into());
            return out;
        }
    }
    out.error = Some("cutover.max_attempts is 0".into());
    out
}

/// The tables the cut-over locks: every mirror's sources, and two-way
/// mirrors' targets (the new version writes them too).
fn lock_targets(ctx: &CutoverContext) -> Vec<String> {
    let mut sources: Vec<String> = ctx
        .mirrors
        .iter()
        .flat_map(|m| m.published())
        .map(|t| t.to_string())
        .collect();
    sources.sort();
    sources.dedup();
    sources
}

/// One attempt at the lock, in a new transaction with `lock_timeout`:
/// `Ok(true)` when it holds the lock, `Ok(false)` when it timed out (rolled
/// back), `Err` with why otherwise.
async fn lock(
    client: &tokio_postgres::Client,
    begin: &str,
    lock_sql: &str,
) -> Result<bool, String> {
    if let Err(e) = client.batch_execute(begin).await {
        return Err(format!("cannot begin the cut-over: {}", pg_message(&e)));
    }
    match client.batch_execute(lock_sql).await {
        Ok(()) => Ok(true),
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
                Ok(false)
            } else {
                Err(format!("cannot lock the sources: {}", pg_message(&e)))
            }
        }
    }
}

/// Why the cut-over gave up on the lock.
fn could_not_lock(sources: &[String], cut: &crate::spec::Cutover) -> String {
    format!(
        "could not lock {} within lock_timeout {:?} in {} attempts (another session holds a \
         conflicting lock; see pg_locks); nothing was changed. Retry later, or raise \
         cutover.lock_timeout / cutover.max_attempts",
        sources.join(", "),
        cut.lock_timeout,
        cut.max_attempts
    )
}

/// Gets ready to lock: probe markers through the stream, each one applying
/// everything before it (merged), and tracked keys re-checked without the
/// lock, round by round (each round covering what changed during the one
/// before; a key that still differs is kept: its change is probably not
/// applied yet), until a probe comes back within [`SETTLED`] with few keys
/// left, or [`MAX_PROBES`] probes were made. Then the drain under the lock
/// is short and so is the re-check there. `false` when the session is ending.
async fn prepare(
    applier: &mut Applier,
    work_rx: &mut mpsc::Receiver<Work>,
    done_tx: &mpsc::Sender<Done>,
    tracker: &mut Tracker,
    job: &Job,
    ctx: &CutoverContext,
    probes: &mut u32,
) -> bool {
    let base = marker(&ctx.spec.name, job.id);
    let budget = *probes + MAX_PROBES;
    while *probes < budget {
        let token = marker_content(&base, MarkerKind::Probe, *probes);
        *probes += 1;
        let rtt = match probe(applier, work_rx, done_tx, tracker, &token).await {
            Probe::Back(rtt) => rtt,
            Probe::Lost => continue,
            Probe::Ended => return false,
        };
        if tracker.incomplete.is_none() && tracker.total > CONVERGED_KEYS {
            let _ = ctx.updates.send(StateUpdate::step(
                job.id,
                "verifying",
                format!(
                    "re-checking {} key(s) changed meanwhile, without locks",
                    tracker.total
                ),
            ));
            recheck_outside_lock(applier, tracker, ctx).await;
            continue;
        }
        if rtt <= SETTLED {
            return true;
        }
    }
    true
}

enum Probe {
    /// The marker came back after this long; everything before it is applied.
    Back(Duration),
    /// It did not come back in time.
    Lost,
    /// The session is ending.
    Ended,
}

/// Emits probe marker `token` and applies every batch the stream delivers
/// before it, merged into one transaction. A two-way spec's applier syncs
/// instead: it takes everything committed until now, which is the same.
async fn probe(
    applier: &mut Applier,
    work_rx: &mut mpsc::Receiver<Work>,
    done_tx: &mpsc::Sender<Done>,
    tracker: &mut Tracker,
    token: &str,
) -> Probe {
    let sent = Instant::now();
    if applier.is_two_way() {
        return match synced(applier, done_tx, tracker).await {
            true => Probe::Back(sent.elapsed()),
            false => Probe::Ended,
        };
    }
    if let Err(e) = applier.emit_message(MARKER_PREFIX, token).await {
        tracing::debug!(error = %e, "cannot emit a cut-over probe");
        return Probe::Lost;
    }
    let deadline = tokio::time::Instant::from_std(sent + PROBE_TIMEOUT);
    let mut waiting: Vec<Batch> = Vec::new();
    let result = loop {
        match tokio::time::timeout_at(deadline, work_rx.recv()).await {
            Err(_) => break Probe::Lost,
            Ok(None) => return Probe::Ended,
            Ok(Some(Work::Batch(b))) => waiting.push(b),
            Ok(Some(Work::DrainEnd(t))) if t == token => break Probe::Back(sent.elapsed()),
            Ok(Some(_)) => {}
        }
    };
    if !apply_merged(applier, done_tx, tracker, waiting).await {
        return Probe::Ended;
    }
    result
}

/// Re-checks the tracked keys without the lock; what still differs stays
/// tracked (errors too: the check under the lock covers them then).
async fn recheck_outside_lock(applier: &mut Applier, tracker: &mut Tracker, ctx: &CutoverContext) {
    let batch = tracker.take();
    for (i, (m, keys)) in ctx.mirrors.iter().zip(&batch).enumerate() {
        let keys = key_texts(keys);
        for chunk in keys.chunks(RECHECK_CHUNK) {
            match verify::differing_among(applier.client(), m, chunk).await {
                Ok(found) => tracker.keep(i, found),
                Err(e) => {
                    tracing::debug!(error = %e, "re-check before the lock failed");
                    tracker.keep(i, chunk.to_vec());
                }
            }
        }
    }
}

/// Applies `waiting` as one merged transaction and reports each batch (the
/// session counts them one by one). `false` when the session is ending or
/// the apply failed (the session ends on that error).
async fn apply_merged(
    applier: &mut Applier,
    done_tx: &mpsc::Sender<Done>,
    tracker: &mut Tracker,
    waiting: Vec<Batch>,
) -> bool {
    let Some(first) = waiting.first() else {
        return true;
    };
    let mut all = first.clone();
    for b in &waiting[1..] {
        all.absorb(b, DRAIN_MAX_KEYS);
    }
    let result = applier.apply(&all).await;
    if result.is_ok() {
        tracker.add(&all);
    }
    let mut result = Some(result);
    for b in waiting {
        let r = result.take().unwrap_or_else(|| Ok(ApplyStats::default()));
        let failed = r.is_err();
        if done_tx.send(Done::Batch(b, r)).await.is_err() || failed {
            return false;
        }
    }
    true
}

/// With the sources locked: marker, drain, checks, SQL, commit.
#[allow(clippy::too_many_arguments)]
async fn under_lock(
    applier: &mut Applier,
    work_rx: &mut mpsc::Receiver<Work>,
    done_tx: &mpsc::Sender<Done>,
    mut tracker: Tracker,
    job: &Job,
    ctx: &CutoverContext,
    mut out: Outcome,
    asked: Instant,
) -> (Outcome, Option<Tracker>) {
    let locked = Instant::now();
    if applier.is_two_way() {
        return under_lock_two_way(applier, done_tx, tracker, job, ctx, out, asked).await;
    }
    let token = marker_content(
        &marker(&ctx.spec.name, job.id),
        MarkerKind::Lock,
        out.attempts,
    );
    if let Err(e) = applier.emit_message(MARKER_PREFIX, &token).await {
        let _ = applier.client().batch_execute("ROLLBACK").await;
        out.error = Some(format!(
            "cannot emit the cut-over marker: {}",
            pg_message(&e)
        ));
        return (out, None);
    }
    let _ = ctx.updates.send(StateUpdate::step(
        job.id,
        "draining",
        "sources locked; applying the last changes",
    ));

    // The drain: every batch the stream delivered before the marker, merged
    // into one recompute per mirror.
    let deadline = tokio::time::Instant::from_std(locked + DRAIN_TIMEOUT);
    let (mut drained, drain) = collect_drain(work_rx, &mut tracker, &token, deadline).await;
    let drain = match drain {
        Ok(()) => apply_drain(applier, &mut drained).await,
        Err(e) => Err((e, false)),
    };
    let drained = drained.batches;
    if let Err(e) = drain {
        // Nothing committed: the drained batches are applied again, on
        // their own, once the lock is gone.
        let _ = applier.client().batch_execute("ROLLBACK").await;
        out.freeze_ms = ms(asked.elapsed());
        let (e, again) = e;
        out.error = Some(e);
        reapply(applier, done_tx, drained).await;
        return (out, again.then_some(tracker));
    }
    out.drained_txns = drained.iter().map(|(b, _)| b.txns as u64).sum();
    match check_and_commit(applier, &tracker, job, ctx, &mut out, locked, asked).await {
        Ok(()) => {
            for (b, stats) in drained {
                if done_tx.send(Done::Batch(b, Ok(stats))).await.is_err() {
                    break;
                }
            }
        }
        Err(e) => {
            out.error = Some(e);
            reapply(applier, done_tx, drained).await;
        }
    }
    (out, None)
}

/// After the drain, under the lock: re-check, gates and the operator's SQL,
/// then COMMIT (on a dry run or a failed check the operator's part is
/// rolled back to the savepoint first, and the drain commits). `Err` with
/// why, when the transaction did not commit (it is rolled back).
async fn check_and_commit(
    applier: &mut Applier,
    tracker: &Tracker,
    job: &Job,
    ctx: &CutoverContext,
    out: &mut Outcome,
    locked: Instant,
    asked: Instant,
) -> Result<(), String> {
    let checks_from = Instant::now();
    out.drain_ms = ms(checks_from - locked);
    let _ = ctx.updates.send(StateUpdate::step(
        job.id,
        "checking",
        "re-checking the keys changed since the verify, and the gates",
    ));
    let failure = checks_and_sql(applier, tracker, job, ctx, out, checks_from).await;
    let client = applier.client();
    let end = match &failure {
        None if !job.dry_run => "COMMIT",
        _ => "ROLLBACK TO SAVEPOINT walshift_cutover; COMMIT",
    };
    let committing = Instant::now();
    let committed = client.batch_execute(end).await;
    out.commit_ms = ms(committing.elapsed());
    out.freeze_ms = ms(asked.elapsed());
    match committed {
        Ok(()) => {
            out.error = failure;
            out.passed = out.error.is_none();
            out.committed = out.passed && !job.dry_run;
            Ok(())
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(match failure {
                Some(f) => f,
                None => format!(
                    "the cut-over transaction did not commit: {}; nothing was changed",
                    pg_message(&e)
                ),
            })
        }
    }
}

/// What a drain took from the stream: each batch (with the stats of its
/// apply, all on the first), and all of them merged.
struct Drained {
    batches: Vec<(Batch, ApplyStats)>,
    merged: Option<Batch>,
}

/// Takes every batch the session forwards until the lock's marker `token`
/// comes back (`Err` past `deadline` or when the session ends). What was
/// taken is returned either way: a failed drain applies it again after the
/// lock.
async fn collect_drain(
    work_rx: &mut mpsc::Receiver<Work>,
    tracker: &mut Tracker,
    token: &str,
    deadline: tokio::time::Instant,
) -> (Drained, Result<(), String>) {
    let mut drained = Drained {
        batches: Vec::new(),
        merged: None,
    };
    let result = loop {
        match tokio::time::timeout_at(deadline, work_rx.recv()).await {
            Err(_) => {
                break Err(format!(
                    "the cut-over marker did not come back through the stream within {DRAIN_TIMEOUT:?} \
                     (walshift is behind, or the stream is stuck); nothing was changed"
                ));
            }
            Ok(None) => break Err("the session ended during the cut-over".into()),
            Ok(Some(Work::Batch(b))) => {
                tracker.add(&b);
                match drained.merged.as_mut() {
                    Some(m) => m.absorb(&b, DRAIN_MAX_KEYS),
                    None => drained.merged = Some(b.clone()),
                }
                drained.batches.push((b, ApplyStats::default()));
            }
            Ok(Some(Work::DrainEnd(t))) if t == token => break Ok(()),
            // A marker of an earlier, abandoned cut-over; nothing else is
            // sent while a cut-over runs.
            Ok(Some(_)) => {}
        }
    };
    (drained, result)
}

/// Applies the drain, merged, in the lock's transaction, and records its
/// position (I4). An error says whether it was a lock timeout.
async fn apply_drain(applier: &mut Applier, drained: &mut Drained) -> Result<(), (String, bool)> {
    let Some(all) = drained.merged.as_ref() else {
        return Ok(());
    };
    let stats = applier
        .apply_in_transaction(all)
        .await
        .map_err(|e| (format!("applying the last changes: {e}"), lock_timeout(&e)))?;
    if let Some((_, first)) = drained.batches.first_mut() {
        *first = stats;
    }
    applier
        .record_position(all)
        .await
        .map_err(|e| (format!("recording the position: {e}"), lock_timeout(&e)))
}

/// The statement waited past `lock_timeout` for a lock.
fn lock_timeout(e: &ApplyError) -> bool {
    e.sqlstate() == Some(SqlState::LOCK_NOT_AVAILABLE.code())
}

/// [`under_lock`] for a spec with two-way mirrors: the drain is a sync
/// under the lock (the application waits on every table both versions
/// write), with every carried key; the rest is the same.
async fn under_lock_two_way(
    applier: &mut Applier,
    done_tx: &mpsc::Sender<Done>,
    mut tracker: Tracker,
    job: &Job,
    ctx: &CutoverContext,
    mut out: Outcome,
    asked: Instant,
) -> (Outcome, Option<Tracker>) {
    let locked = Instant::now();
    let _ = ctx.updates.send(StateUpdate::step(
        job.id,
        "draining",
        "sources and two-way targets locked; applying the last changes",
    ));
    let backup = applier.carried_backup();
    let reply = match tokio::time::timeout(DRAIN_TIMEOUT, applier.sync_for_drain()).await {
        Ok(Ok(reply)) => reply,
        failed => {
            let _ = applier.client().batch_execute("ROLLBACK").await;
            applier.restore_carried(backup);
            out.freeze_ms = ms(asked.elapsed());
            out.error = Some(match failed {
                Ok(Err(e)) => format!("applying the last changes: {e}"),
                _ => format!(
                    "the stream did not bring the last changes within {DRAIN_TIMEOUT:?} \
                     (walshift is behind, or the stream is stuck); nothing was changed"
                ),
            });
            return (out, None);
        }
    };
    let batch = reply.batch;
    let drained = if reply.complete {
        applier.apply_drain(&batch).await
    } else {
        Err(ApplyError::Session {
            message: "the stream is too far behind to drain under the lock".into(),
            action: crate::error_policy::Action::Retry,
            sqlstate: None,
        })
    };
    let stats = match drained {
        Ok(stats) => stats,
        Err(e) => {
            // Nothing committed: what the sync took is applied again, in
            // step with the stream, once the lock is gone.
            let _ = applier.client().batch_execute("ROLLBACK").await;
            applier.restore_carried(backup);
            out.freeze_ms = ms(asked.elapsed());
            let again = lock_timeout(&e);
            out.error = Some(format!("applying the last changes: {e}"));
            reapply(applier, done_tx, vec![(batch, ApplyStats::default())]).await;
            return (out, again.then_some(tracker));
        }
    };
    tracker.add(&batch);
    out.drained_txns = batch.txns as u64;
    match check_and_commit(applier, &tracker, job, ctx, &mut out, locked, asked).await {
        Ok(()) => {
            let _ = done_tx.send(Done::Synced(batch, Ok(stats), 0)).await;
        }
        Err(e) => {
            applier.restore_carried(backup);
            out.error = Some(e);
            reapply(applier, done_tx, vec![(batch, stats)]).await;
        }
    }
    (out, None)
}

/// Under the lock, after the drain: re-check, gates, operator SQL. Returns
/// why the cut-over must not commit, if it must not.
async fn checks_and_sql(
    applier: &mut Applier,
    tracker: &Tracker,
    job: &Job,
    ctx: &CutoverContext,
    out: &mut Outcome,
    from: Instant,
) -> Option<String> {
    let client = applier.client();
    if let Err(e) = client.batch_execute("SAVEPOINT walshift_cutover").await {
        return Some(format!("cannot set a savepoint: {}", pg_message(&e)));
    }
    if let Some(why) = &tracker.incomplete {
        return Some(format!(
            "{why}: too much changed to re-check under the lock; nothing was changed. Run walshift \
             cutover again when writes are quieter"
        ));
    }
    let mut differing = false;
    for (m, keys) in ctx.mirrors.iter().zip(&tracker.keys) {
        let keys = key_texts(keys);
        out.keys_checked += keys.len() as u64;
        let mut check = MirrorCheck {
            mirror: m.number,
            keys: keys.len() as u64,
            differing: 0,
            examples: Vec::new(),
        };
        for chunk in keys.chunks(RECHECK_CHUNK) {
            match verify::differing_among(client, m, chunk).await {
                Ok(found) => {
                    check.differing += found.len() as u64;
                    check
                        .examples
                        .extend(found.into_iter().take(10 - check.examples.len().min(10)));
                }
                Err(e) => {
                    return Some(format!(
                        "re-checking mirror {}: {}",
                        m.number,
                        pg_message(&e)
                    ));
                }
            }
        }
        differing |= check.differing > 0;
        out.mirrors.push(check);
    }
    if differing {
        let what: Vec<String> = out
            .mirrors
            .iter()
            .filter(|c| c.differing > 0)
            .map(|c| {
                format!(
                    "mirror {}: {} differing (e.g. key {:?})",
                    c.mirror,
                    c.differing,
                    c.examples.first()
                )
            })
            .collect();
        return Some(format!(
            "targets differ from the mapping after the drain ({}); nothing was changed",
            what.join("; ")
        ));
    }
    for g in &ctx.spec.gates {
        out.gates
            .push(verify::run_gate(client, &g.name, &g.sql).await);
        if !out.gates.last().is_some_and(|g| g.passed) {
            // A failed query aborts the transaction: later gates cannot run.
            let g = out.gates.last().expect("just pushed");
            return Some(format!(
                "gate {:?} failed: {}; nothing was changed",
                g.name, g.detail
            ));
        }
    }
    let sql_from = Instant::now();
    out.checks_ms = ms(sql_from - from);
    if let Some(sql) = &ctx.spec.cutover.sql {
        let _ = ctx
            .updates
            .send(StateUpdate::step(job.id, "checking", "running cutover.sql"));
        if let Err(e) = client.batch_execute(sql).await {
            out.sql_ms = ms(sql_from.elapsed());
            return Some(format!(
                "cutover.sql failed: {}; nothing was changed",
                pg_message(&e)
            ));
        }
    }
    if !job.dry_run {
        if let Err(e) = crate::state::record_cut_over(client, &ctx.spec.name).await {
            return Some(format!("recording the cut-over: {}", pg_message(&e)));
        }
    }
    out.sql_ms = ms(sql_from.elapsed());
    None
}

/// Batches drained in a transaction that did not commit: applied again on
/// their own (a recompute is idempotent) and reported.
async fn reapply(
    applier: &mut Applier,
    done_tx: &mpsc::Sender<Done>,
    drained: Vec<(Batch, ApplyStats)>,
) {
    for (b, _) in drained {
        if applier.is_two_way() {
            let none = vec![false; b.mirrors.len()];
            let (b, r) = applier.apply_synced(b, &none).await;
            if done_tx.send(Done::Synced(b, r, 0)).await.is_err() {
                return;
            }
            continue;
        }
        let r = applier.apply(&b).await;
        if done_tx.send(Done::Batch(b, r)).await.is_err() {
            return;
        }
    }
}

/// A two-way transaction in step with the stream, its keys tracked and it
/// reported. `false` when the session is ending or it failed.
async fn synced(
    applier: &mut Applier,
    done_tx: &mpsc::Sender<Done>,
    tracker: &mut Tracker,
) -> bool {
    let (batch, r) = applier.sync_now(&[]).await;
    let ok = r.is_ok();
    if ok {
        tracker.add(&batch);
    }
    done_tx.send(Done::Synced(batch, r, 0)).await.is_ok() && ok
}

/// Between lock attempts: applies live batches for `pause`. `false` when the
/// session is ending.
async fn apply_for(
    applier: &mut Applier,
    work_rx: &mut mpsc::Receiver<Work>,
    done_tx: &mpsc::Sender<Done>,
    tracker: &mut Tracker,
    pause: Duration,
) -> bool {
    let until = tokio::time::Instant::now() + pause;
    if applier.is_two_way() {
        while tokio::time::Instant::now() < until {
            if !synced(applier, done_tx, tracker).await {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        return true;
    }
    loop {
        tokio::select! {
            w = work_rx.recv() => match w {
                Some(Work::Batch(b)) => {
                    if !crate::run::apply_task::apply_and_report(applier, done_tx, Some(&mut *tracker), b).await {
                        return false;
                    }
                }
                Some(_) => {}
                None => return false,
            },
            _ = tokio::time::sleep_until(until) => return true,
        }
    }
}

/// Keys as the verify queries take them: key columns as text.
fn key_texts(keys: &HashSet<Key>) -> Vec<Vec<String>> {
    keys.iter()
        .map(|k| k.iter().map(|c| c.to_string()).collect())
        .collect()
}

/// Pause after the `attempt`th lock timeout: growing, jittered, so a
/// periodic lock holder does not win every time.
fn backoff(lock_timeout: Duration, attempt: u32) -> Duration {
    let base = lock_timeout.max(Duration::from_millis(50)) * attempt.min(10);
    let jitter = (std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64) % 100;
    (base + Duration::from_millis(jitter)).min(Duration::from_secs(5))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A cut-over request the session loop has in hand, from its verify to
/// its outcome.
pub(crate) struct Cut {
    pub job: Job,
    pub marker: String,
    pub started: Instant,
    /// The verify before the lock, while it runs.
    pub verify: Option<(oneshot::Receiver<VerifyResult>, AbortOnDrop)>,
    pub verify_seconds: f64,
    /// The apply task has the job.
    pub running: bool,
    /// Batches go straight to the apply task until the marker.
    pub forwarding: bool,
}

/// What the verify before the lock answers.
pub(crate) type VerifyResult = Result<crate::verify::Report, String>;

/// Why a request cannot start now, if it cannot: made with another spec,
/// another under way, history not copied, keys held.
pub(crate) fn refusal(
    job: &Job,
    spec: &Spec,
    another: bool,
    backfill_done: bool,
    held: usize,
) -> Option<String> {
    let differs = job
        .spec_digest
        .as_ref()
        .is_some_and(|d| *d != spec.cutover_digest());
    if differs {
        Some(format!(
            "the request was made with {}, whose mirrors, gates or [cutover] differ from {}, which \
             this run loaded; cut over with the spec the run uses, or restart `walshift run` with \
             the new one",
            job.spec_file.as_deref().unwrap_or("another spec"),
            spec.file
        ))
    } else if another {
        Some("another cut-over is under way".to_string())
    } else if !backfill_done {
        Some("the backfill is not complete; `walshift wait` returns once it is".to_string())
    } else if held > 0 {
        Some(format!(
            "{held} key(s) are held: their rows fail the mapping or the target's constraints (see \
             `walshift status {}`); fix the rows or the spec, or run `walshift ctl {} retry`",
            spec.file, spec.file
        ))
    } else {
        None
    }
}

/// Why a request the operator postponed is turned down.
pub(crate) fn postponed(spec: &Spec) -> String {
    format!(
        "cut-over of {} is postponed by the operator; run `walshift ctl {} allow-cutover` first",
        spec.name, spec.file
    )
}

impl Cut {
    /// Accepts `job`: its verify (own session, no locks) starts now. The
    /// caller has the apply task track keys from here on, so the re-check
    /// under the lock covers every key applied since.
    pub(crate) fn begin(
        job: Job,
        config: &ConnConfig,
        spec: &Spec,
        plan: &Plan,
        updates: &mpsc::UnboundedSender<StateUpdate>,
    ) -> Cut {
        tracing::info!(
            request = job.id,
            dry_run = job.dry_run,
            "cut-over requested; verifying first"
        );
        let _ = updates.send(StateUpdate::step(
            job.id,
            "verifying",
            format!(
                "verifying {} mirror(s) chunk by chunk, without locks",
                plan.mirrors.len()
            ),
        ));
        let marker = crate::cutover::marker(&spec.name, job.id);
        let (tx, rx) = oneshot::channel();
        let (config, spec, plan) = (config.clone(), spec.clone(), plan.clone());
        let task = tokio::spawn(async move {
            let _ = tx.send(verify_unlocked(&config, &spec, &plan).await);
        });
        Cut {
            marker,
            job,
            started: Instant::now(),
            verify: Some((rx, AbortOnDrop(task))),
            verify_seconds: 0.0,
            running: false,
            forwarding: false,
        }
    }

    /// The verify answered: why the cut-over stops here, if it does.
    pub(crate) fn verified(
        &mut self,
        answer: Result<VerifyResult, oneshot::error::RecvError>,
    ) -> Option<String> {
        self.verify = None;
        self.verify_seconds = self.started.elapsed().as_secs_f64();
        match answer {
            Ok(Ok(report)) if report.passed => None,
            Ok(Ok(report)) => Some(format!(
                "the verify before the lock failed: {}; nothing was changed",
                report.summary()
            )),
            Ok(Err(e)) => Some(format!(
                "the verify before the lock could not run: {e}; nothing was changed"
            )),
            Err(_) => {
                Some("the verify before the lock ended unexpectedly; nothing was changed".into())
            }
        }
    }
}

/// The verify before the lock, on a session of its own.
async fn verify_unlocked(config: &ConnConfig, spec: &Spec, plan: &Plan) -> VerifyResult {
    let client = config
        .with_application_name("walshift-verify")
        .connect_sql()
        .await
        .map_err(|e| e.to_string())?;
    crate::verify::verify_with(&client, spec, plan, 10, false)
        .await
        .map_err(|e| pg_message(&e))
}

/// Waits for the verify of the cut-over in hand; never, when none runs.
pub(crate) async fn verify_answer(
    cut: &mut Option<Cut>,
) -> Result<VerifyResult, oneshot::error::RecvError> {
    match cut.as_mut().and_then(|c| c.verify.as_mut()) {
        Some(v) => (&mut v.0).await,
        None => std::future::pending().await,
    }
}

/// Reports a cut-over's outcome. Returns whether it committed (the run is
/// over then; the outcome is written before the run exits).
pub(crate) async fn ended(
    config: &ConnConfig,
    updates: &mpsc::UnboundedSender<StateUpdate>,
    outcome: Outcome,
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
    let update = StateUpdate::finished(outcome);
    if committed {
        // Written here and now: the run ends right after.
        for _ in 0..20 {
            if let Ok(c) = config
                .with_application_name("walshift-control")
                .connect_sql()
                .await
            {
                if crate::run::control::write_update(&c, &update).await.is_ok() {
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
