//! The applier: one SQL session that recomputes dirty keys.
//!
//! ```text
//!  Batch (keys per mirror, xids, end LSN)
//!    │ 1. visibility barrier: every xid visible in pg_current_snapshot() (I2)
//!    │ 2. BEGIN; pg_replication_origin_xact_setup(end LSN)       (I4, I5)  ┐ one pipeline:
//!    │ 3. progress row                                                   │ sent back to
//!    │ 4. one statement per mirror: keys as text[] cast by Postgres      │ back, one
//!    │ 5. COMMIT                                                         ┘ round trip
//!    ▼
//!  end LSN may now be confirmed to the server (by the caller)
//! ```
//!
//! Round trips are what a sidecar pays per transaction, and more so when it
//! runs on another host than the database: a batch costs two (the barrier's
//! snapshot, then the [`pipeline`]), a backfill chunk two (BEGIN with its
//! bound, then the recompute with its checkpoint and COMMIT).
//!
//! The applier is the only writer of the targets (I3): live batches and
//! whole-mirror passes run through the same session, one after the other.
//! Its session has walshift's replication origin set up, so its own writes
//! come back through the stream marked with it and are skipped (I5).

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_postgres::types::Type;

mod depends;
mod isolate;
mod two_way;

pub use isolate::HeldKey;
pub use two_way::{SyncLink, SyncReply, TwoWayCounts};

use super::bind::Args;
use super::pipeline;
use super::sql::{self, Param, Scope};
use super::txn::{CommittedTxn, Key, MirrorKeys};
use super::visibility::Snapshot;
use crate::Lsn;
use crate::catalog::{MirrorKind, MirrorPlan};
use crate::error_policy::{self, Action, pg_message};
use crate::pgoutput::pg_timestamp_to_system_time;
use crate::state;

/// Settings every walshift session shares with the replication connection:
/// keys travel as Postgres's text output, which depends on them.
///
/// `jit = off`: chunk statements look expensive to the planner (set-returning
/// functions such as `jsonb_array_elements` are estimated at 100 rows each),
/// so JIT compiled them at up to 600 ms per chunk for statements that run in
/// about a second without it (measured in benches/backfill.rs).
///
/// `plan_cache_mode = force_custom_plan`: the recomputes are prepared once,
/// and after five executions PostgreSQL may switch to one generic plan, made
/// for ten keys and the tables as they were, kept until they are analyzed
/// again. Made while a rows-mode target was empty (before the backfill fills
/// it), that plan scans the whole target once per desired row: a 10,000-key
/// catch-up batch ran for minutes where its own plan takes 0.2 s
/// (tests/applier.rs). Planning each execution with its keys costs a live
/// one-key recompute no measurable time (pgbench -M prepared, both ways).
pub const SESSION_SETTINGS: &str = "SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres'; \
     SET TimeZone = 'UTC'; SET extra_float_digits = 3; SET bytea_output = 'hex'; SET jit = off; \
     SET plan_cache_mode = force_custom_plan";

/// Work collected from committed transactions, applied in one go.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub mirrors: Vec<MirrorKeys>,
    pub xids: Vec<u32>,
    /// End LSN of the last transaction in the batch.
    pub end_lsn: Lsn,
    pub commit_time: i64,
    pub txns: usize,
}

impl Batch {
    pub fn new(mirrors: usize) -> Self {
        Batch {
            mirrors: vec![MirrorKeys::default(); mirrors],
            ..Default::default()
        }
    }

    /// Adds a committed transaction. Echoes only move the end LSN.
    pub fn add(&mut self, txn: CommittedTxn, max_keys_per_mirror: usize) {
        self.end_lsn = self.end_lsn.max(txn.end_lsn);
        self.commit_time = txn.commit_time;
        self.txns += 1;
        if txn.echo {
            return;
        }
        let mut any = false;
        for (mine, theirs) in self.mirrors.iter_mut().zip(txn.mirrors) {
            if !theirs.is_empty() {
                any = true;
                mine.merge(theirs, max_keys_per_mirror);
            }
        }
        if any {
            self.xids.push(txn.xid);
        }
    }

    pub fn has_work(&self) -> bool {
        self.mirrors.iter().any(|m| !m.is_empty())
    }

    /// Adds a later batch's work (same mirrors): one recompute for both.
    pub fn absorb(&mut self, later: &Batch, max_keys_per_mirror: usize) {
        self.end_lsn = self.end_lsn.max(later.end_lsn);
        self.commit_time = later.commit_time;
        self.txns += later.txns;
        self.xids.extend_from_slice(&later.xids);
        for (mine, theirs) in self.mirrors.iter_mut().zip(&later.mirrors) {
            if !theirs.is_empty() {
                mine.merge(theirs.clone(), max_keys_per_mirror);
            }
        }
    }

    pub fn key_count(&self) -> usize {
        self.mirrors.iter().map(|m| m.keys.len()).sum()
    }
}

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub keys: usize,
    pub rows_written: u64,
    pub rows_deleted: u64,
    /// Mirrors recomputed over their whole key range (a transaction had too
    /// many keys to hold).
    pub full_passes: usize,
    /// Times the barrier found a transaction not yet visible.
    pub visibility_waits: u32,
}

/// Why a batch failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{mirror}: {message}")]
    Mirror {
        mirror: String,
        message: String,
        action: Action,
        sqlstate: Option<String>,
    },
    #[error("apply session: {message}")]
    Session {
        message: String,
        action: Action,
        sqlstate: Option<String>,
    },
}

impl ApplyError {
    pub fn action(&self) -> Action {
        match self {
            ApplyError::Mirror { action, .. } | ApplyError::Session { action, .. } => *action,
        }
    }

    /// The server's SQLSTATE, when the server said no.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ApplyError::Mirror { sqlstate, .. } | ApplyError::Session { sqlstate, .. } => {
                sqlstate.as_deref()
            }
        }
    }

    fn session(e: tokio_postgres::Error) -> Self {
        ApplyError::Session {
            action: error_policy::for_pg(&e),
            message: pg_message(&e),
            sqlstate: e.code().map(|c| c.code().to_string()),
        }
    }

    /// Serialization failures and deadlocks: the transaction lost a race
    /// with the application and is simply run again (a recompute is
    /// idempotent), without tearing down the session and the stream.
    pub fn retry_in_place(&self) -> bool {
        let (ApplyError::Mirror { sqlstate, .. } | ApplyError::Session { sqlstate, .. }) = self;
        matches!(sqlstate.as_deref(), Some("40001" | "40P01"))
    }
}

/// Runs `attempt` again while it fails with a lost race (see
/// [`ApplyError::retry_in_place`]), with a short growing pause.
macro_rules! retrying_in_place {
    ($what:literal, $attempt:expr) => {{
        let mut tries = 0u32;
        loop {
            match $attempt {
                Err(e) if e.retry_in_place() && tries < IN_PLACE_RETRIES => {
                    tries += 1;
                    crate::metrics::error(crate::metrics::error_kind::LOST_RACE);
                    tracing::debug!(error = %e, tries, concat!("retrying ", $what, " after a lost race"));
                    tokio::time::sleep(Duration::from_millis(10 * tries as u64)).await;
                }
                r => break r,
            }
        }
    }};
}

/// Attempts of one batch or chunk before a lost race becomes a session error.
const IN_PLACE_RETRIES: u32 = 5;

/// What one backfill chunk did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkOutcome {
    /// The chunk's upper key: the next chunk's lower bound. `None`: the
    /// mirror's backfill is complete.
    pub upper: Option<Vec<String>>,
    /// Source rows the chunk covered.
    pub rows: u64,
    pub written: u64,
    pub deleted: u64,
    /// Time of the recompute statement alone (what chunk sizing steers).
    pub elapsed: Duration,
}

/// Options of the applier.
#[derive(Debug, Clone)]
pub struct ApplierOptions {
    /// Hold I2. Only the test that proves the barrier is needed turns it off.
    pub visibility_barrier: bool,
    /// Rows per chunk of a whole-mirror pass.
    pub full_pass_chunk_rows: i64,
    /// Source keys a batch's dependency changes may make dirty per mirror
    /// before the mirror is recomputed whole instead.
    pub max_depends_keys: usize,
}

impl Default for ApplierOptions {
    fn default() -> Self {
        ApplierOptions {
            visibility_barrier: true,
            full_pass_chunk_rows: 10_000,
            max_depends_keys: 200_000,
        }
    }
}

struct PreparedMirror {
    label: String,
    plan: MirrorPlan,
    keys: tokio_postgres::Statement,
    keys_params: Vec<Param>,
    truncate: Option<(tokio_postgres::Statement, Vec<Param>)>,
    /// A two-way mirror's way back, for a batch of keys.
    reverse: Option<two_way::PreparedReverse>,
}

/// The single writer of the targets.
pub struct Applier {
    client: Client,
    spec_name: String,
    mirrors: Vec<PreparedMirror>,
    /// walshift's origin is set up on this session (else progress is kept
    /// only in the state table, and echoes are recomputed once).
    origin: bool,
    positions: BatchStatements,
    opts: ApplierOptions,
    /// Keys of two-way specs carried to the next transaction (as stored in
    /// `walshift.keys`), per mirror.
    carried: Vec<std::collections::HashMap<Key, super::txn::Dir>>,
    /// Two-way specs: a session of its own that flushes the WAL while the
    /// applier waits for the stream to reach its sync point.
    flusher: Option<Client>,
    /// Two-way specs: the line to the session loop that hands over the
    /// stream up to a sync point.
    sync: Option<SyncLink>,
    /// What a two-way chunk's sync took, until the apply loop reports it.
    synced: Option<(Batch, Result<ApplyStats, ApplyError>)>,
    /// Two-way mirrors' conflicts and written-back keys, for `status`.
    counts: std::sync::Arc<TwoWayCounts>,
    /// Keys whose recompute fails on their data (as stored in
    /// `walshift.keys`), per mirror: isolated and held while everything
    /// else goes on (isolate.rs).
    held: Vec<std::collections::HashMap<Key, HeldKey>>,
    /// How many keys are held, for the run (cut-over refusal).
    held_total: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Applier {
    /// Prepares the statements of every mirror on `client`, which must
    /// already have [`SESSION_SETTINGS`] applied and, if `origin`, walshift's
    /// origin set up with `pg_replication_origin_session_setup`.
    pub async fn new(
        client: Client,
        spec_name: &str,
        plans: &[MirrorPlan],
        origin: bool,
        opts: ApplierOptions,
    ) -> Result<Self, ApplyError> {
        let mut mirrors = Vec::with_capacity(plans.len());
        for plan in plans {
            let (stmt, truncate) = match &plan.kind {
                MirrorKind::Set(p) => (sql::set_apply(p, Scope::Keys), None),
                MirrorKind::Rows(p) => {
                    (sql::rows_apply(p, Scope::Keys), Some(sql::rows_truncate(p)))
                }
            };
            let keys = client
                .prepare(&stmt.sql)
                .await
                .map_err(ApplyError::session)?;
            let truncate = match truncate {
                Some(t) => Some((
                    client.prepare(&t.sql).await.map_err(ApplyError::session)?,
                    t.params,
                )),
                None => None,
            };
            let reverse = two_way::PreparedReverse::prepare(&client, plan).await?;
            mirrors.push(PreparedMirror {
                label: label(plan),
                plan: plan.clone(),
                keys,
                keys_params: stmt.params,
                truncate,
                reverse,
            });
        }
        let carried = if plans.iter().any(MirrorPlan::is_two_way) {
            two_way::load_carried(&client, spec_name, plans).await?
        } else {
            vec![Default::default(); plans.len()]
        };
        let held = isolate::load_held(&client, spec_name, plans).await?;
        let positions = BatchStatements::prepare(&client, origin).await?;
        let applier = Applier {
            client,
            spec_name: spec_name.to_string(),
            mirrors,
            origin,
            positions,
            opts,
            carried,
            flusher: None,
            sync: None,
            synced: None,
            counts: Default::default(),
            held,
            held_total: Default::default(),
        };
        applier.publish_held();
        Ok(applier)
    }

    /// Shares the count of held keys with `total` (kept up to date from now).
    pub fn count_held_into(&mut self, total: std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        self.held_total = total;
        self.publish_held();
    }

    /// How many keys are held.
    pub fn held_total(&self) -> usize {
        self.held.iter().map(|h| h.len()).sum()
    }

    /// Tries every held key again (`walshift ctl SPEC retry`): those that
    /// now succeed are forgotten, the others stay held with their new
    /// error. A two-way spec's retry runs in step with the stream: the
    /// batch its sync took comes back, to be reported like any.
    pub async fn retry_held(
        &mut self,
        backfilling: &[bool],
    ) -> (Option<Batch>, Result<ApplyStats, ApplyError>) {
        let before = self.held_total();
        let (batch, r) = if self.is_two_way() {
            let (batch, r) = self.retry_held_two_way(backfilling).await;
            (Some(batch), r)
        } else {
            let mut batch = Batch::new(self.mirrors.len());
            for (keys, held) in batch.mirrors.iter_mut().zip(&self.held) {
                keys.keys.extend(held.keys().cloned());
            }
            let r = retrying_in_place!("held keys", self.apply_isolating(&batch, false).await);
            (None, r)
        };
        if r.is_ok() {
            tracing::info!(
                tried = before,
                mirrored = before.saturating_sub(self.held_total()),
                held = self.held_total(),
                "retried the held keys (walshift ctl retry)"
            );
        }
        (batch, r)
    }

    /// Gives a two-way applier its line to the session loop and its flusher
    /// session (see [`two_way`]).
    pub async fn with_sync(
        mut self,
        sync: SyncLink,
        flusher: Client,
        counts: std::sync::Arc<TwoWayCounts>,
    ) -> Result<Self, ApplyError> {
        self.counts = counts;
        flusher
            .batch_execute(two_way::FLUSHER_SETTINGS)
            .await
            .map_err(ApplyError::session)?;
        self.flusher = Some(flusher);
        self.sync = Some(sync);
        Ok(self)
    }

    /// Whether the spec has two-way mirrors: then every batch is applied
    /// in step with the stream ([`Applier::apply_synced`]).
    pub fn is_two_way(&self) -> bool {
        self.mirrors.iter().any(|m| m.reverse.is_some())
    }

    /// Recomputes every dirty key of `batch` and commits, with the batch's end
    /// LSN recorded in the same transaction. The caller confirms the LSN to
    /// the server only after this returns `Ok` (I4).
    pub async fn apply(&mut self, batch: &Batch) -> Result<ApplyStats, ApplyError> {
        let started = Instant::now();
        let r = retrying_in_place!("a batch", self.apply_once(batch).await);
        if let Ok(s) = &r {
            crate::metrics::batch_applied(
                s.keys,
                s.rows_written,
                s.rows_deleted,
                started.elapsed(),
            );
        }
        r
    }

    /// What comes before a batch's keyed writes: the visibility barrier
    /// (I2), then the whole-mirror passes of mirrors whose keys overflowed.
    /// Those run first, in chunks of their own: one huge transaction would
    /// hold locks on the whole target. They are recomputes like any other,
    /// so running them before the keyed part (or twice, after a crash)
    /// changes nothing.
    async fn before_keys(&mut self, batch: &Batch) -> Result<ApplyStats, ApplyError> {
        let mut stats = ApplyStats::default();
        if self.opts.visibility_barrier && !batch.xids.is_empty() {
            stats.visibility_waits = self.wait_visible(&batch.xids).await?;
        }
        Ok(stats)
    }

    /// The rest of [`Applier::before_keys`], once dependency keys are
    /// resolved: whole-mirror passes.
    async fn whole_passes(&mut self, batch: &Batch) -> Result<ApplyStats, ApplyError> {
        let mut stats = ApplyStats::default();
        for (i, work) in batch.mirrors.iter().enumerate() {
            if work.overflowed {
                let (w, d) = self.full_pass(i).await?;
                stats.rows_written += w;
                stats.rows_deleted += d;
                stats.full_passes += 1;
            }
        }
        Ok(stats)
    }

    /// The barrier, dependency keys resolved, whole-mirror passes: what
    /// every way of applying a one-way batch starts with. Returns the batch
    /// to apply when dependencies changed it.
    async fn prepare_batch(
        &mut self,
        batch: &Batch,
    ) -> Result<(ApplyStats, Option<Batch>), ApplyError> {
        let mut stats = self.before_keys(batch).await?;
        let resolved = if Self::has_depends(batch)
            && !crate::mirror::plant::active(crate::mirror::plant::Plant::IgnoreDepends)
        {
            Some(self.resolve_depends(batch).await?)
        } else {
            None
        };
        stats.absorb(
            self.whole_passes(resolved.as_ref().unwrap_or(batch))
                .await?,
        );
        Ok((stats, resolved))
    }

    async fn apply_once(&mut self, batch: &Batch) -> Result<ApplyStats, ApplyError> {
        let (mut stats, resolved) = self.prepare_batch(batch).await?;
        let batch = resolved.as_ref().unwrap_or(batch);
        // A held key's row changed: it is tried again key by key.
        if self.batch_touches_held(batch) {
            stats.absorb(self.apply_isolating(batch, true).await?);
            return Ok(stats);
        }
        let c = &self.client;
        let mut keyed = ApplyStats::default();
        let mut steps = vec![simple(c, "BEGIN")];
        steps.extend(position_steps(c, &self.positions, &self.spec_name, batch));
        steps.extend(key_steps(&self.mirrors, c, batch, &mut keyed));
        steps.push(simple(c, "COMMIT"));
        match in_transaction(c, steps).await {
            Ok(wrote) => {
                keyed.add(wrote);
                stats.absorb(keyed);
            }
            // A key's data fails: the batch again, isolating it.
            Err(e) if isolate::about_the_row(&e) => {
                tracing::debug!(error = %e, "a batch failed on a row's data; isolating its keys");
                stats.absorb(self.apply_isolating(batch, true).await?);
            }
            Err(e) => return Err(e),
        }
        Ok(stats)
    }

    /// Like [`Applier::apply`], inside a transaction the caller has opened
    /// on [`Applier::client`] and will commit (the cut-over's drain). The
    /// position is not recorded: call [`Applier::record_position`] once,
    /// with the last batch, before committing.
    pub async fn apply_in_transaction(&mut self, batch: &Batch) -> Result<ApplyStats, ApplyError> {
        if self.is_two_way() {
            return self.apply_two_way_in_transaction(batch).await;
        }
        let (mut stats, resolved) = self.prepare_batch(batch).await?;
        let batch = resolved.as_ref().unwrap_or(batch);
        let steps = key_steps(&self.mirrors, &self.client, batch, &mut stats);
        // The caller rolls its transaction back on an error.
        stats.add(pipeline::in_order(steps).await.map_err(|f| f.error)?);
        Ok(stats)
    }

    /// Records `batch`'s end LSN as applied (state row and origin, I4) in
    /// the transaction open on [`Applier::client`].
    pub async fn record_position(&self, batch: &Batch) -> Result<(), ApplyError> {
        let steps = position_steps(&self.client, &self.positions, &self.spec_name, batch);
        pipeline::in_order(steps)
            .await
            .map(drop)
            .map_err(|f| f.error)
    }

    /// I2: waits until every xid is visible to a new snapshot. Returns how
    /// many times it had to wait.
    async fn wait_visible(&self, xids: &[u32]) -> Result<u32, ApplyError> {
        let started = Instant::now();
        let mut pending = xids.to_vec();
        let mut waits = 0u32;
        let mut pause = Duration::from_micros(500);
        let mut warned = false;
        loop {
            let row = self
                .client
                .query_one(&self.positions.snapshot, &[])
                .await
                .map_err(ApplyError::session)?;
            let text: String = row.get(0);
            let snap = Snapshot::parse(&text).ok_or_else(|| ApplyError::Session {
                message: format!("cannot read snapshot {text:?}"),
                action: Action::Stop,
                sqlstate: None,
            })?;
            pending = snap.invisible(&pending);
            if pending.is_empty() {
                return Ok(waits);
            }
            waits += 1;
            if !warned && started.elapsed() > Duration::from_secs(5) {
                warned = true;
                tracing::warn!(
                    xids = ?pending,
                    "committed transactions are in the WAL but not yet visible after 5s \
                     (synchronous replication waiting for a standby?); waiting before applying them"
                );
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// Recomputes mirror `i` over its whole key range, chunk by chunk. A
    /// chunk that fails on a row's data runs again isolating its keys; as
    /// every key is tried, held keys that no longer fail are forgotten.
    async fn full_pass(&mut self, i: usize) -> Result<(u64, u64), ApplyError> {
        let rows = self.opts.full_pass_chunk_rows;
        let mut lower: Option<Vec<String>> = None;
        let (mut written, mut deleted) = (0u64, 0u64);
        let mut failing: std::collections::HashSet<Key> = Default::default();
        loop {
            let m = &self.mirrors[i];
            let c = &self.client;
            let found = bound_step(c, m, lower.as_deref(), rows);
            let upper = found.await?.upper_key(&m.plan);
            let upper = match range_step(c, m, lower.as_deref(), upper.as_deref()).await {
                Ok(w) => {
                    written += w.written;
                    deleted += w.deleted;
                    upper
                }
                Err(e) if isolate::about_the_row(&e) => {
                    let (upper, w, held) =
                        self.isolated_chunk(i, lower.as_deref(), rows, None).await?;
                    written += w.written;
                    deleted += w.deleted;
                    failing.extend(held);
                    upper
                }
                Err(e) => return Err(e),
            };
            match upper {
                Some(u) => lower = Some(u),
                None => break,
            }
        }
        // Every key was tried: the held keys that did not fail are written.
        let recovered: Vec<Key> = self.held[i]
            .keys()
            .filter(|k| !failing.contains(*k))
            .cloned()
            .collect();
        if !recovered.is_empty() {
            let mut holdings: Vec<isolate::Holding> = (0..self.mirrors.len())
                .map(|_| Default::default())
                .collect();
            holdings[i].recovered = recovered;
            pipeline::in_order(self.holding_steps(&holdings))
                .await
                .map_err(|f| f.error)?;
            self.held_after(holdings);
        }
        Ok((written, deleted))
    }

    /// One chunk of mirror `i` isolating the keys that fail on their data:
    /// a REPEATABLE READ transaction (the splitting counts rows, which must
    /// hold from statement to statement), the failing keys held, the
    /// checkpoint recorded when `checkpoint` (a backfill chunk). Keys lost
    /// to a concurrent write are left to the stream, which brings that
    /// write. Returns the chunk's upper key, what it wrote and the keys it
    /// held.
    async fn isolated_chunk(
        &mut self,
        i: usize,
        lower: Option<&[String]>,
        rows: i64,
        checkpoint: Option<&mut i64>,
    ) -> Result<(Option<Vec<String>>, Wrote, Vec<Key>), ApplyError> {
        let c = &self.client;
        c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .await
            .map_err(ApplyError::session)?;
        let excluded = self.excluded(i);
        let excluded = self.holds(i).then_some(&excluded);
        let attempt = self.isolated_range(i, excluded, lower, rows).await;
        let (upper, covered, wrote, lost) = match attempt {
            Ok(v) => v,
            Err(e) => {
                let _ = c.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        };
        let mut holdings: Vec<isolate::Holding> = (0..self.mirrors.len())
            .map(|_| Default::default())
            .collect();
        let later = self.sort_lost(
            i,
            super::txn::Dir::Forward,
            std::iter::empty(),
            lost,
            &mut holdings[i],
        );
        if !later.is_empty() {
            tracing::debug!(
                keys = later.len(),
                "keys changed under a chunk; the stream brings their writes"
            );
        }
        let held: Vec<Key> = holdings[i].hold.iter().map(|(k, _)| k.clone()).collect();
        let mut steps = self.holding_steps(&holdings);
        let mirror = self.mirrors[i].plan.number as i32;
        let spec_name = &self.spec_name;
        if let Some(out) = checkpoint {
            *out = covered;
            let upper = upper.clone();
            steps.push(Box::pin(async move {
                c.execute_typed(
                    state::RECORD_CHUNK,
                    &[
                        (spec_name, Type::TEXT),
                        (&mirror, Type::INT4),
                        (&upper, Type::TEXT_ARRAY),
                        (&covered, Type::INT8),
                    ],
                )
                .await
                .map_err(ApplyError::session)?;
                Ok(Wrote::default())
            }));
        }
        steps.push(simple(c, "COMMIT"));
        in_transaction(c, steps).await?;
        self.held_after(holdings);
        Ok((upper, wrote, held))
    }

    /// One backfill chunk of mirror `i`: the keys in `(lower, upper]` where
    /// `upper` is the key `rows` rows past `lower` (open at the end of the
    /// table), recomputed like any live key and committed together with the
    /// mirror's checkpoint (I6). Runs on the applier's session, so it never
    /// overlaps a live batch (I3).
    pub async fn backfill_chunk(
        &mut self,
        i: usize,
        lower: Option<&[String]>,
        rows: i64,
    ) -> Result<ChunkOutcome, ApplyError> {
        self.backfill_chunk_in(i, lower, rows, &[])
            .await
            .map(|out| out.expect("a one-way chunk always runs"))
    }

    /// [`Applier::backfill_chunk`] for any spec: a two-way mirror's chunk
    /// runs in step with the stream (`None` when it could not run now), and
    /// `backfilling` says which mirrors' backfills still run.
    pub async fn backfill_chunk_in(
        &mut self,
        i: usize,
        lower: Option<&[String]>,
        rows: i64,
        backfilling: &[bool],
    ) -> Result<Option<ChunkOutcome>, ApplyError> {
        if self.mirrors[i].reverse.is_some() {
            return self
                .backfill_chunk_synced(i, lower, rows, backfilling)
                .await;
        }
        self.backfill_chunk_one_way(i, lower, rows).await.map(Some)
    }

    async fn backfill_chunk_one_way(
        &mut self,
        i: usize,
        lower: Option<&[String]>,
        rows: i64,
    ) -> Result<ChunkOutcome, ApplyError> {
        let r = retrying_in_place!(
            "a backfill chunk",
            self.backfill_chunk_attempt(i, lower, rows).await
        );
        if let Ok(out) = &r {
            crate::metrics::chunk_applied(out.written, out.deleted);
        }
        r
    }

    /// A one-way chunk; when a row's data fails it, the chunk again,
    /// isolating its keys.
    async fn backfill_chunk_attempt(
        &mut self,
        i: usize,
        lower: Option<&[String]>,
        rows: i64,
    ) -> Result<ChunkOutcome, ApplyError> {
        match self.backfill_chunk_once(i, lower, rows).await {
            Err(e) if isolate::about_the_row(&e) => {
                tracing::debug!(error = %e, "a chunk failed on a row's data; isolating its keys");
                let started = Instant::now();
                let mut covered = 0i64;
                let (upper, w, _) = self
                    .isolated_chunk(i, lower, rows, Some(&mut covered))
                    .await?;
                Ok(ChunkOutcome {
                    upper,
                    rows: covered.max(0) as u64,
                    written: w.written,
                    deleted: w.deleted,
                    elapsed: started.elapsed(),
                })
            }
            r => r,
        }
    }

    async fn backfill_chunk_once(
        &mut self,
        i: usize,
        lower: Option<&[String]>,
        rows: i64,
    ) -> Result<ChunkOutcome, ApplyError> {
        let m = &self.mirrors[i];
        let plan = &m.plan;
        let c = &self.client;
        // Flight 1: BEGIN and the chunk's upper bound. Its errors are
        // handled with the count's below: any of them ends in ROLLBACK.
        let found =
            pipeline::in_order(vec![simple(c, "BEGIN"), bound_step(c, m, lower, rows)]).await;
        let opened = async {
            let upper = found
                .map_err(|f| f.error)?
                .pop()
                .and_then(|bound| bound.upper_key(plan));
            let covered = match upper {
                Some(_) => rows.max(1),
                None => {
                    let count = sql::range_count(&plan.source, &plan.key, lower.is_some());
                    let args = Args {
                        lower,
                        ..Default::default()
                    };
                    c.query_typed_one(&count.sql, &args.bind_typed(&count.params))
                        .await
                        .map_err(|e| mirror_err(&m.label, e))?
                        .get::<_, i64>(0)
                }
            };
            Ok((upper, covered))
        }
        .await;
        let (upper, covered) = match opened {
            Ok(v) => v,
            Err(e) => {
                // Nothing was written: end the transaction so the session is
                // clean for a retry or the next batch.
                let _ = c.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        };
        // Flight 2: the recompute, the checkpoint (I6) and COMMIT. An error
        // anywhere leaves the COMMIT to roll back.
        let mirror = plan.number as i32;
        let started = Instant::now();
        // Held keys are left alone (tried again when their rows change).
        let excluded = self.excluded(i);
        let recompute = if self.holds(i) {
            let upper = upper.clone();
            isolate::excluded_range(c, m, Some(&excluded), lower.map(<[String]>::to_vec), upper)
        } else {
            range_step(c, m, lower, upper.as_deref())
        };
        let wrote = in_transaction(
            c,
            vec![
                recompute,
                Box::pin(async {
                    let r = c
                        .execute_typed(
                            state::RECORD_CHUNK,
                            &[
                                (&self.spec_name, Type::TEXT),
                                (&mirror, Type::INT4),
                                (&upper, Type::TEXT_ARRAY),
                                (&covered, Type::INT8),
                            ],
                        )
                        .await;
                    r.map_err(ApplyError::session)?;
                    Ok(Wrote::default())
                }),
                simple(c, "COMMIT"),
            ],
        )
        .await?;
        let elapsed = started.elapsed();
        let written = wrote.iter().map(|w| w.written).sum();
        let deleted = wrote.iter().map(|w| w.deleted).sum();
        Ok(ChunkOutcome {
            upper,
            rows: covered.max(0) as u64,
            written,
            deleted,
            elapsed,
        })
    }

    /// Each mirror's label ("mirror 1 (public.users set status)").
    pub fn labels(&self) -> Vec<String> {
        self.mirrors.iter().map(|m| m.label.clone()).collect()
    }

    /// The session, for callers that share it between batches (status queries).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// [`crate::lag::emit_message`] on this session, the message carrying no replication
    /// origin: walshift's origin, when set up here, is reset around it. A message that
    /// carried it would be skipped by a stream with `origin = none` (PostgreSQL 16+,
    /// src/run/origins.rs), and the cut-over would wait for its marker in vain.
    pub async fn emit_message(
        &self,
        prefix: &str,
        content: &str,
    ) -> Result<(), tokio_postgres::Error> {
        if !self.origin {
            return crate::lag::emit_message(&self.client, prefix, content).await;
        }
        self.client
            .execute("SELECT pg_replication_origin_session_reset()", &[])
            .await?;
        let emitted = crate::lag::emit_message(&self.client, prefix, content).await;
        let restored = self
            .client
            .execute(
                "SELECT pg_replication_origin_session_setup($1)",
                &[&crate::spec::object_name(&self.spec_name)],
            )
            .await;
        emitted?;
        restored.map(drop)
    }
}

/// One statement of a [`pipeline`] on the applier's session, and what it wrote.
type Step<'a> = pipeline::Step<'a, Wrote, ApplyError>;

/// What one statement of a pipeline wrote, or the row it read.
#[derive(Default)]
struct Wrote {
    written: u64,
    deleted: u64,
    row: Option<tokio_postgres::Row>,
}

impl Wrote {
    fn set(written: u64) -> Self {
        Wrote {
            written,
            ..Default::default()
        }
    }

    /// A rows-mode recompute's one row: (deleted, written).
    fn rows(row: &tokio_postgres::Row) -> Self {
        Wrote {
            deleted: row.get::<_, i64>(0) as u64,
            written: row.get::<_, i64>(1) as u64,
            row: None,
        }
    }

    fn row(row: Option<tokio_postgres::Row>) -> Self {
        Wrote {
            row,
            ..Default::default()
        }
    }

    /// The key columns (as text) of a [`bound_step`]'s row: the chunk's
    /// upper bound, or `None` when fewer rows were left (the last chunk).
    fn upper_key(self, plan: &MirrorPlan) -> Option<Vec<String>> {
        self.row
            .map(|r| (0..plan.key.len()).map(|c| r.get::<_, String>(c)).collect())
    }
}

impl ApplyStats {
    fn absorb(&mut self, other: ApplyStats) {
        self.keys += other.keys;
        self.rows_written += other.rows_written;
        self.rows_deleted += other.rows_deleted;
        self.full_passes += other.full_passes;
        self.visibility_waits += other.visibility_waits;
    }

    fn add(&mut self, wrote: Vec<Wrote>) {
        for w in wrote {
            self.rows_written += w.written;
            self.rows_deleted += w.deleted;
        }
    }
}

/// The bound of the next chunk of `m`'s key range: the key `rows` rows past
/// `lower` (from the start when `None`), read into [`Wrote::row`].
fn bound_step<'a>(
    c: &'a Client,
    m: &'a PreparedMirror,
    lower: Option<&'a [String]>,
    rows: i64,
) -> Step<'a> {
    Box::pin(async move {
        let plan = &m.plan;
        let bound = sql::chunk_upper_bound(&plan.source, &plan.key, lower.is_some());
        let args = Args {
            lower,
            count: rows.max(1),
            ..Default::default()
        };
        let row = c
            .query_typed_opt(&bound.sql, &args.bind_typed(&bound.params))
            .await;
        Ok(Wrote::row(row.map_err(|e| mirror_err(&m.label, e))?))
    })
}

/// The recompute of `m` over the keys in `(lower, upper]` (open where
/// `None`), for a backfill chunk or a whole-mirror pass.
fn range_step<'a>(
    c: &'a Client,
    m: &'a PreparedMirror,
    lower: Option<&'a [String]>,
    upper: Option<&'a [String]>,
) -> Step<'a> {
    Box::pin(async move {
        let scope = Scope::Range {
            lower: lower.is_some(),
            upper: upper.is_some(),
        };
        let args = Args {
            lower,
            upper,
            ..Default::default()
        };
        let err = |e| mirror_err(&m.label, e);
        match &m.plan.kind {
            MirrorKind::Set(p) => {
                let s = sql::set_apply(p, scope);
                let n = c.execute_typed(&s.sql, &args.bind_typed(&s.params)).await;
                Ok(Wrote::set(n.map_err(err)?))
            }
            MirrorKind::Rows(p) => {
                let s = sql::rows_apply(p, scope);
                let row = c.query_typed_one(&s.sql, &args.bind_typed(&s.params)).await;
                Ok(Wrote::rows(&row.map_err(err)?))
            }
        }
    })
}

/// A pipeline that begins (or continues) a transaction on `c`. When it fails
/// before all of it was sent, the transaction is still open, and it is
/// rolled back here; otherwise the pipeline's own `COMMIT` (or the caller's
/// `ROLLBACK`, for a pipeline without one) ends it.
async fn in_transaction<'a>(c: &'a Client, steps: Vec<Step<'a>>) -> Result<Vec<Wrote>, ApplyError> {
    match pipeline::in_order(steps).await {
        Ok(wrote) => Ok(wrote),
        Err(failed) => {
            if failed.unsent > 0 {
                let _ = c.batch_execute("ROLLBACK").await;
            }
            Err(failed.error)
        }
    }
}

/// `BEGIN`, `COMMIT`: a simple query, sent on its first poll.
fn simple<'a>(c: &'a Client, sql: &'static str) -> Step<'a> {
    Box::pin(async move {
        c.batch_execute(sql).await.map_err(ApplyError::session)?;
        Ok(Wrote::default())
    })
}

/// The batch's position, in the transaction that holds its writes (I4):
/// the origin's progress (when walshift has its origin) and the state row.
fn position_steps<'a>(
    c: &'a Client,
    positions: &'a BatchStatements,
    spec_name: &'a str,
    batch: &Batch,
) -> Vec<Step<'a>> {
    let lsn = batch.end_lsn.to_string();
    let mut steps: Vec<Step<'a>> = Vec::with_capacity(2);
    if let Some(origin) = &positions.origin_setup {
        let lsn = lsn.clone();
        let ts = pg_timestamp_to_system_time(batch.commit_time);
        steps.push(Box::pin(async move {
            c.execute(origin, &[&lsn, &ts])
                .await
                .map_err(ApplyError::session)?;
            Ok(Wrote::default())
        }));
    }
    steps.push(Box::pin(async move {
        c.execute(&positions.record_applied, &[&spec_name, &lsn])
            .await
            .map_err(ApplyError::session)?;
        Ok(Wrote::default())
    }));
    steps
}

/// The statements every batch runs besides its recomputes, prepared once:
/// planned per batch they cost the apply session more than a small batch's
/// recompute.
struct BatchStatements {
    /// `pg_replication_origin_xact_setup`, when walshift has its origin.
    origin_setup: Option<tokio_postgres::Statement>,
    /// [`state::RECORD_APPLIED`].
    record_applied: tokio_postgres::Statement,
    /// The visibility barrier's snapshot.
    snapshot: tokio_postgres::Statement,
}

impl BatchStatements {
    async fn prepare(client: &Client, origin: bool) -> Result<Self, ApplyError> {
        let origin_setup = if origin {
            Some(
                client
                    .prepare_typed(
                        "SELECT pg_replication_origin_xact_setup($1::text::pg_lsn, $2)",
                        &[Type::TEXT, Type::TIMESTAMPTZ],
                    )
                    .await
                    .map_err(ApplyError::session)?,
            )
        } else {
            None
        };
        let record_applied = client
            .prepare_typed(state::RECORD_APPLIED, &[Type::TEXT, Type::TEXT])
            .await
            .map_err(ApplyError::session)?;
        let snapshot = client
            .prepare("SELECT pg_current_snapshot()::text")
            .await
            .map_err(ApplyError::session)?;
        Ok(BatchStatements {
            origin_setup,
            record_applied,
            snapshot,
        })
    }
}

/// One recompute statement per mirror with dirty keys (and the removal of
/// owned rows after a TRUNCATE), on `c`. Counts the keys into `stats`; the
/// rows come back with the steps' answers.
fn key_steps<'a>(
    mirrors: &'a [PreparedMirror],
    c: &'a Client,
    batch: &'a Batch,
    stats: &mut ApplyStats,
) -> Vec<Step<'a>> {
    let mut steps: Vec<Step<'a>> = Vec::new();
    for (m, work) in mirrors.iter().zip(&batch.mirrors) {
        if !work.keys.is_empty() && !work.overflowed {
            stats.keys += work.keys.len();
            steps.push(Box::pin(async move {
                let keys: Vec<&Key> = work.keys.iter().collect();
                let args = Args::engine_keys(&keys, m.plan.key.len());
                let params = args.bind(&m.keys_params);
                let err = |e| mirror_err(&m.label, e);
                match &m.plan.kind {
                    MirrorKind::Set(_) => {
                        Ok(Wrote::set(c.execute(&m.keys, &params).await.map_err(err)?))
                    }
                    MirrorKind::Rows(_) => Ok(Wrote::rows(
                        &c.query_one(&m.keys, &params).await.map_err(err)?,
                    )),
                }
            }));
        }
        if work.truncated {
            if let Some((stmt, params)) = &m.truncate {
                steps.push(Box::pin(async move {
                    let none = Args::default();
                    let params = none.bind(params);
                    let n = c.execute(stmt, &params).await;
                    Ok(Wrote {
                        deleted: n.map_err(|e| mirror_err(&m.label, e))?,
                        ..Default::default()
                    })
                }));
            }
        }
    }
    steps
}

fn label(plan: &MirrorPlan) -> String {
    format!("mirror {} ({})", plan.number, plan.describe())
}

fn mirror_err(label: &str, e: tokio_postgres::Error) -> ApplyError {
    let action = error_policy::for_pg(&e);
    let mut message = pg_message(&e);
    let about_the_row = e
        .code()
        .is_some_and(|c| error_policy::is_about_the_row(c.code()));
    // A row's data error isolates and holds its key; other refusals stop.
    if action == Action::Stop && !about_the_row {
        message.push_str(
            ": fix the mapping in the spec (or the data it fails on), then restart walshift",
        );
    }
    ApplyError::Mirror {
        mirror: label.to_string(),
        message,
        action,
        sqlstate: e.code().map(|c| c.code().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn txn(xid: u32, end: u64, keys: &[&str], echo: bool) -> CommittedTxn {
        CommittedTxn {
            xid,
            commit_lsn: Lsn(end - 1),
            end_lsn: Lsn(end),
            commit_time: end as i64,
            echo,
            mirrors: vec![MirrorKeys {
                keys: keys
                    .iter()
                    .map(|k| vec![Box::<str>::from(*k)].into_boxed_slice())
                    .collect(),
                ..Default::default()
            }],
        }
    }

    #[test]
    fn batch_merges_keys_and_tracks_the_last_commit() {
        let mut b = Batch::new(1);
        b.add(txn(1, 10, &["a", "b"], false), 100);
        b.add(txn(2, 20, &[], true), 100);
        b.add(txn(3, 30, &["b", "c"], false), 100);
        assert_eq!(b.end_lsn, Lsn(30));
        assert_eq!(b.txns, 3);
        assert_eq!(
            b.xids,
            vec![1, 3],
            "echoes and empty transactions need no barrier"
        );
        assert_eq!(b.key_count(), 3);
        let keys: HashSet<&str> = b.mirrors[0].keys.iter().map(|k| &*k[0]).collect();
        assert_eq!(keys, ["a", "b", "c"].into());
        assert!(b.has_work());
    }

    #[test]
    fn a_batch_of_echoes_has_no_work_but_an_lsn() {
        let mut b = Batch::new(1);
        b.add(txn(1, 10, &["a"], true), 100);
        assert!(!b.has_work());
        assert_eq!(b.end_lsn, Lsn(10));
    }
}
