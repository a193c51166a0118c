//! Batches of specs with two-way mirrors: applied in step with the stream,
//! under one snapshot, so that the later commit wins in both shapes.
//!
//! ```text
//!  BEGIN ISOLATION LEVEL REPEATABLE READ
//!  snapshot Q, WAL position L (and the state row locked)      ─┐ one statement
//!  ── ask the session loop for every transaction before L ──▶  │ (sync)
//!  ◀── all of them: the state Q shows is theirs, known key by key
//!  each key: the direction of its last write (carried keys first)
//!    reverse keys ─▶ old shape = g(new)     ┐ each in a savepoint; a key whose row
//!    forward keys ─▶ new shape = f(old)     ┘ changed after Q is carried, not lost
//!  marks (backfill), carried keys, position (I4)
//!  COMMIT
//! ```
//!
//! Why a snapshot and a sync: recomputing from current state is only right
//! when walshift knows every write the state holds. The old version writes
//! `is_active` (commit 1), the new version writes `status` on the same key
//! (commit 2): applying commit 1 as "status = f(current row)" would erase
//! commit 2. Here the snapshot Q holds exactly the transactions committed
//! before L, walshift has received all of them before it decides, and each
//! key's direction is its last write's: commit 2 decides, the old shape
//! follows from `status`, and commit 1's write to the key is a conflict it
//! lost, counted and logged.
//!
//! A key whose row the application changes after Q cannot be written under
//! Q (Postgres refuses with a serialization failure). Its statement is split
//! until the key is alone, and the key is *carried*: its direction is stored
//! in `walshift.keys` in the same transaction and decided again in the next
//! one, which by then knows the later write.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_postgres::Client;
use tokio_postgres::types::Type;

use super::super::pipeline;
use super::super::sql::{self, Param, Scope};
use super::super::txn::{Conflicts, Dir, Key, MirrorKeys};
use super::super::visibility::Snapshot;
use super::isolate::{Holding, forget_keys, range, store_keys};
use super::{
    Applier, ApplyError, ApplyStats, Batch, PreparedMirror, Step, Wrote, in_transaction,
    position_steps, simple,
};
use crate::Lsn;
use crate::catalog::{MirrorKind, MirrorPlan, ReversePlan};
use crate::error_policy::Action;
use crate::state;
use crate::state::keys::{KEYS_CARRIED, KEYS_FORGET_MARKS, KeyKind};

/// Carried keys taken into one transaction at most, per mirror (the rest
/// wait for the next): after a long catch-up the carry can be large.
const CARRIED_PER_TRANSACTION: usize = 20_000;

/// Per two-way mirror (by number): conflicts and written-back keys counted
/// since they were last taken.
#[derive(Debug, Default)]
pub struct TwoWayCounts(std::sync::Mutex<std::collections::BTreeMap<usize, (u64, u64)>>);

impl TwoWayCounts {
    pub fn add(&self, mirror: usize, conflicts: u64, keys: u64) {
        let mut m = self.0.lock().expect("two-way counts");
        let e = m.entry(mirror).or_default();
        e.0 += conflicts;
        e.1 += keys;
    }

    /// `(mirror, conflicts, keys)` counted since the last take.
    pub fn take(&self) -> Vec<(usize, u64, u64)> {
        let mut m = self.0.lock().expect("two-way counts");
        std::mem::take(&mut *m)
            .into_iter()
            .filter(|(_, (c, k))| *c > 0 || *k > 0)
            .map(|(mirror, (c, k))| (mirror, c, k))
            .collect()
    }
}

/// A two-way mirror's way back for a batch of keys, prepared.
pub(super) struct PreparedReverse {
    pub(super) statement: tokio_postgres::Statement,
    pub(super) params: Vec<Param>,
    /// The way back of a split upserts rows (its answer is a row of counts);
    /// the columns form updates (a row count).
    pub(super) rows: bool,
    /// The whole table at once (after the target was truncated).
    whole: sql::Statement,
    /// Source columns the way back writes: other mirrors of the source that
    /// read one of them are recomputed for the key too.
    writes: Vec<String>,
}

impl PreparedReverse {
    pub(super) async fn prepare(
        client: &Client,
        plan: &MirrorPlan,
    ) -> Result<Option<Self>, ApplyError> {
        let Some(two_way) = &plan.two_way else {
            return Ok(None);
        };
        let whole = Scope::Range {
            lower: false,
            upper: false,
        };
        let (keys, whole, rows, writes) = match &two_way.reverse {
            ReversePlan::Columns(p) => (
                sql::set_apply(p, Scope::Keys),
                sql::set_apply(p, whole),
                false,
                p.set.iter().map(|(c, _)| c.clone()).collect(),
            ),
            ReversePlan::Rows(p) => (
                sql::rows_apply(p, Scope::Keys),
                sql::rows_apply(p, whole),
                true,
                p.columns.clone(),
            ),
        };
        let statement = client
            .prepare(&keys.sql)
            .await
            .map_err(ApplyError::session)?;
        Ok(Some(PreparedReverse {
            statement,
            params: keys.params,
            rows,
            whole,
            writes,
        }))
    }
}

/// The applier's line to the session loop: it asks for every transaction
/// committed before a WAL position, and gets them as one batch.
pub struct SyncLink {
    pub request: mpsc::Sender<Lsn>,
    pub reply: mpsc::Receiver<SyncReply>,
}

/// What the session loop answers a sync with.
#[derive(Debug)]
pub struct SyncReply {
    /// Every transaction received since the last reply (those committed
    /// before the position asked for, and rarely one or two after it).
    pub batch: Batch,
    /// `false`: the stream is so far behind that the loop stopped short of
    /// the position (its memory bound); the batch is only staged.
    pub complete: bool,
}

/// How long the applier waits for the stream to reach its sync point before
/// it has the WAL flushed: the walsender sends only flushed WAL, and a WAL
/// record nobody commits behind (a non-transactional message, the tail of a
/// page) is not flushed by itself.
const FLUSH_AFTER: Duration = Duration::from_millis(10);

impl SyncLink {
    /// Every transaction committed before `lsn`; `flusher` (a session of
    /// its own) commits an empty transaction now and then meanwhile, which
    /// flushes the WAL up to it.
    async fn until(&mut self, lsn: Lsn, flusher: Option<&Client>) -> Result<SyncReply, ApplyError> {
        let gone = || ApplyError::Session {
            message: "the session ended while the applier waited for the stream".into(),
            action: Action::Retry,
            sqlstate: None,
        };
        self.request.send(lsn).await.map_err(|_| gone())?;
        loop {
            tokio::select! {
                reply = self.reply.recv() => return reply.ok_or_else(gone),
                _ = tokio::time::sleep(FLUSH_AFTER), if flusher.is_some() => {
                    if let Some(f) = flusher {
                        f.batch_execute(FLUSH).await.map_err(ApplyError::session)?;
                    }
                }
            }
        }
    }
}

/// An empty transaction that still writes a commit record (it takes an
/// xid), and so flushes the WAL before it.
const FLUSH: &str = "SELECT pg_current_xact_id()";

/// Settings of the flusher session: flush locally, do not wait for
/// synchronous standbys (the walsender needs only the local flush).
pub const FLUSHER_SETTINGS: &str = "SET synchronous_commit = local";

/// The carried keys of the spec, per mirror.
pub(super) async fn load_carried(
    client: &Client,
    spec_name: &str,
    plans: &[MirrorPlan],
) -> Result<Vec<HashMap<Key, Dir>>, ApplyError> {
    let mut carried = vec![HashMap::new(); plans.len()];
    let rows = client
        .query(KEYS_CARRIED, &[&spec_name])
        .await
        .map_err(ApplyError::session)?;
    for row in rows {
        let mirror: i32 = row.get(0);
        let key: Vec<String> = row.get(1);
        let dir: String = row.get(2);
        let (Some(i), Some(dir)) = (
            plans.iter().position(|p| p.number as i32 == mirror),
            Dir::from_code(&dir),
        ) else {
            continue;
        };
        carried[i].insert(key.into_iter().map(Into::into).collect(), dir);
    }
    Ok(carried)
}

/// One mirror's part of a two-way transaction.
#[derive(Debug, Default)]
struct MirrorWork {
    forward: Vec<Key>,
    reverse: Vec<Key>,
    /// Keys whose new shape the application wrote while the backfill runs.
    marks: Vec<(Key, Dir)>,
    /// Carried keys this transaction takes up (their rows are forgotten;
    /// those carried again are stored again).
    settled: Vec<Key>,
    truncated: bool,
    target_truncated: bool,
    /// A one-way mirror whose keys overflowed: the whole range.
    overflowed: bool,
    conflicts: Conflicts,
}

/// What the statements of a transaction did.
#[derive(Default)]
struct WorkDone {
    stats: ApplyStats,
    /// Keys to carry, per mirror, with their direction.
    carried: Vec<Vec<(Key, Dir)>>,
    /// Keys whose old shape was recomputed, per mirror.
    reversed: Vec<u64>,
    /// Keys held and recovered, per mirror.
    holdings: Vec<Holding>,
}

impl Applier {
    /// Applies `batch` in step with the stream (see the module docs): waits
    /// for every transaction committed before its snapshot's WAL position,
    /// applies them all with the carried keys, and returns the batch it
    /// applied (with the transactions the sync added), whose end LSN may be
    /// confirmed when the result is `Ok`.
    pub async fn apply_synced(
        &mut self,
        batch: Batch,
        backfilling: &[bool],
    ) -> (Batch, Result<ApplyStats, ApplyError>) {
        let started = Instant::now();
        let mut batch = batch;
        let mut pause = Duration::from_micros(500);
        let mut warned = false;
        let mut lost = 0u32;
        loop {
            match self.synced_once(&mut batch, backfilling).await {
                Ok(Some(stats)) => {
                    crate::metrics::batch_applied(
                        stats.keys,
                        stats.rows_written,
                        stats.rows_deleted,
                        started.elapsed(),
                    );
                    return (batch, Ok(stats));
                }
                // A transaction of the batch is committed but not yet
                // visible (I2), or committed after the snapshot: again.
                Ok(None) => {
                    if !warned && started.elapsed() > Duration::from_secs(5) {
                        warned = true;
                        tracing::warn!(
                            "committed transactions are in the WAL but not yet visible after 5s \
                             (synchronous replication waiting for a standby?); waiting before \
                             applying them"
                        );
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                Err(e) if e.retry_in_place() && lost < super::IN_PLACE_RETRIES => {
                    lost += 1;
                    crate::metrics::error(crate::metrics::error_kind::LOST_RACE);
                    tracing::debug!(error = %e, tries = lost, "retrying a two-way batch after a lost race");
                    tokio::time::sleep(Duration::from_millis(10 * lost as u64)).await;
                }
                Err(e) => return (batch, Err(e)),
            }
        }
    }

    /// One attempt: `Ok(None)` when a transaction of the batch is not visible
    /// to the snapshot (nothing was written; try again).
    async fn synced_once(
        &mut self,
        batch: &mut Batch,
        backfilling: &[bool],
    ) -> Result<Option<ApplyStats>, ApplyError> {
        let c = &self.client;
        c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .await
            .map_err(ApplyError::session)?;
        let point = c
            .query_typed_one(state::SYNC_POINT, &[(&self.spec_name, Type::TEXT)])
            .await;
        let (snapshot, lsn) = match point {
            Ok(row) => (row.get::<_, String>(0), row.get::<_, String>(1)),
            Err(e) => {
                let _ = c.batch_execute("ROLLBACK").await;
                return Err(ApplyError::session(e));
            }
        };
        let (Some(snapshot), Ok(lsn)) = (Snapshot::parse(&snapshot), lsn.parse::<Lsn>()) else {
            let _ = c.batch_execute("ROLLBACK").await;
            return Err(ApplyError::Session {
                message: format!("cannot read the sync point ({snapshot:?}, {lsn:?})"),
                action: Action::Stop,
                sqlstate: None,
            });
        };
        let reply = match self.sync_until(lsn).await {
            Ok(reply) => reply,
            Err(e) => {
                let _ = self.client.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        };
        batch.absorb(&reply.batch, usize::MAX);
        if !reply.complete {
            let _ = self.client.batch_execute("ROLLBACK").await;
            return self.stage(batch).await.map(Some);
        }
        if !snapshot.invisible(&batch.xids).is_empty() {
            let _ = self.client.batch_execute("ROLLBACK").await;
            return Ok(None);
        }
        let work = self.plan_work(batch, backfilling);
        log_work(&self.mirrors, &work, batch, &snapshot_text(&snapshot));
        let outcome = match self.run_work(&work).await {
            Ok(outcome) => outcome,
            Err(e) => {
                let _ = self.client.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        };
        let c = &self.client;
        let mut steps = self.keep_keys(&work, &outcome);
        if batch.txns > 0 {
            steps.extend(position_steps(c, &self.positions, &self.spec_name, batch));
        }
        steps.push(simple(c, "COMMIT"));
        in_transaction(c, steps).await?;
        self.report(&work, &outcome.reversed);
        self.carried_after(&work, outcome.carried);
        self.held_after(outcome.holdings);
        Ok(Some(outcome.stats))
    }

    /// Like [`Applier::apply_in_transaction`] for a spec with two-way
    /// mirrors, in the cut-over's locked transaction: nothing can change
    /// under it, so every key is applied (and every carried one).
    pub async fn apply_two_way_in_transaction(
        &mut self,
        batch: &Batch,
    ) -> Result<ApplyStats, ApplyError> {
        let none = vec![false; self.mirrors.len()];
        let work = self.plan_work(batch, &none);
        let outcome = self.run_work(&work).await?;
        if outcome.carried.iter().any(|c| !c.is_empty()) {
            return Err(ApplyError::Session {
                message: "a key changed under the cut-over's lock".into(),
                action: Action::Retry,
                sqlstate: None,
            });
        }
        if let Some((m, h)) = self
            .mirrors
            .iter()
            .zip(&outcome.holdings)
            .find(|(_, h)| !h.is_empty())
        {
            let keys = h.hold.iter().map(|(k, _)| k).chain(&h.recovered);
            return Err(ApplyError::Session {
                message: format!(
                    "{}: keys {} fail on their data (or were held) under the cut-over's lock",
                    m.label,
                    super::isolate::name_keys(keys)
                ),
                action: Action::Retry,
                sqlstate: None,
            });
        }
        let steps = self.keep_keys(&work, &outcome);
        pipeline::in_order(steps).await.map_err(|f| f.error)?;
        self.report(&work, &outcome.reversed);
        self.carried_after(&work, outcome.carried);
        self.held_after(outcome.holdings);
        Ok(outcome.stats)
    }

    /// Tries every held key again in its direction, in step with the
    /// stream (see [`Applier::retry_held`]).
    pub(super) async fn retry_held_two_way(
        &mut self,
        backfilling: &[bool],
    ) -> (Batch, Result<ApplyStats, ApplyError>) {
        let mut batch = Batch::new(self.mirrors.len());
        for ((keys, held), m) in batch.mirrors.iter_mut().zip(&self.held).zip(&self.mirrors) {
            for (k, h) in held {
                if m.reverse.is_some() {
                    keys.dirs.insert(k.clone(), h.dir);
                }
                keys.keys.insert(k.clone());
            }
        }
        self.apply_synced(batch, backfilling).await
    }

    /// Every transaction the stream carries before `lsn`, from the session
    /// loop.
    async fn sync_until(&mut self, lsn: Lsn) -> Result<SyncReply, ApplyError> {
        let Some(sync) = self.sync.as_mut() else {
            return Err(ApplyError::Session {
                message: "internal: a two-way applier without its line to the stream".into(),
                action: Action::Stop,
                sqlstate: None,
            });
        };
        sync.until(lsn, self.flusher.as_ref()).await
    }

    /// A two-way transaction with whatever the stream holds now (a probe
    /// of the cut-over, carried keys waiting): see [`Applier::apply_synced`].
    pub async fn sync_now(
        &mut self,
        backfilling: &[bool],
    ) -> (Batch, Result<ApplyStats, ApplyError>) {
        let n = self.mirrors.len();
        self.apply_synced(Batch::new(n), backfilling).await
    }

    /// The cut-over's drain for a two-way spec, in its transaction holding
    /// the locks: every transaction committed before now comes from the
    /// stream (nothing can commit on the locked tables meanwhile). The
    /// reply says whether it is complete; what it holds is the caller's
    /// (applied by [`Applier::apply_drain`], or again after the lock).
    pub async fn sync_for_drain(&mut self) -> Result<SyncReply, ApplyError> {
        let lsn: String = self
            .client
            .query_typed_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await
            .map_err(ApplyError::session)?
            .get(0);
        let lsn: Lsn = lsn.parse().map_err(|_| ApplyError::Session {
            message: format!("cannot read the WAL position {lsn:?}"),
            action: Action::Stop,
            sqlstate: None,
        })?;
        self.sync_until(lsn).await
    }

    /// Applies what [`Applier::sync_for_drain`] took, and every carried key
    /// (nothing may wait past the switch), in the lock's transaction, and
    /// records its position (I4). On an error the caller rolls back, puts
    /// the carry back and applies `batch` again after the lock.
    pub async fn apply_drain(&mut self, batch: &Batch) -> Result<ApplyStats, ApplyError> {
        let mut stats = self.apply_two_way_in_transaction(batch).await?;
        while self.has_carried() {
            let more = self
                .apply_two_way_in_transaction(&Batch::new(self.mirrors.len()))
                .await?;
            stats.keys += more.keys;
            stats.rows_written += more.rows_written;
            stats.rows_deleted += more.rows_deleted;
        }
        if batch.txns > 0 {
            self.record_position(batch).await?;
        }
        Ok(stats)
    }

    /// The carry as it is, to be put back with [`Applier::restore_carried`]
    /// when a transaction that took carried keys up rolls back.
    pub fn carried_backup(&self) -> Vec<HashMap<Key, Dir>> {
        self.carried.clone()
    }

    pub fn restore_carried(&mut self, backup: Vec<HashMap<Key, Dir>>) {
        self.carried = backup;
    }

    /// One backfill chunk of two-way mirror `i` (see [`Applier::backfill_chunk`]),
    /// in step with the stream like a batch: the chunk recomputes the new
    /// shape of history, so it runs under the snapshot of a sync, after the
    /// transactions it brings, and leaves alone the keys whose new shape the
    /// application wrote since the slot (marks) or that wait in the carry.
    /// A row the application changes after the snapshot makes the range
    /// split until that key is alone, and the key is carried forward.
    /// `Ok(None)`: no chunk ran (the stream is far behind; the batch was
    /// staged). What the sync took is kept for [`Applier::take_synced`].
    pub(super) async fn backfill_chunk_synced(
        &mut self,
        i: usize,
        lower: Option<&[String]>,
        rows: i64,
        backfilling: &[bool],
    ) -> Result<Option<super::ChunkOutcome>, ApplyError> {
        let n = self.mirrors.len();
        let mut batch = Batch::new(n);
        let mut lost = 0u32;
        let result = loop {
            match self
                .chunk_once(i, lower, rows, &mut batch, backfilling)
                .await
            {
                Ok(Some(out)) => break Ok(out),
                Ok(None) => tokio::time::sleep(Duration::from_millis(1)).await,
                Err(e) if e.retry_in_place() && lost < super::IN_PLACE_RETRIES => {
                    lost += 1;
                    crate::metrics::error(crate::metrics::error_kind::LOST_RACE);
                    tokio::time::sleep(Duration::from_millis(10 * lost as u64)).await;
                }
                Err(e) => break Err(e),
            }
        };
        match result {
            Ok((out, stats)) => {
                self.synced = Some((batch, Ok(stats)));
                Ok(out)
            }
            Err(e) => {
                // Its transactions were not applied: reported as failed.
                self.synced = Some((
                    batch,
                    Err(ApplyError::Session {
                        message: format!("a backfill chunk failed: {e}"),
                        action: e.action(),
                        sqlstate: None,
                    }),
                ));
                Err(e)
            }
        }
    }

    /// What the last chunk's sync took from the session loop, to be
    /// reported like a synced batch.
    pub fn take_synced(&mut self) -> Option<(Batch, Result<ApplyStats, ApplyError>)> {
        self.synced.take()
    }

    /// One attempt of a two-way chunk: `Ok(None)` to try again (a
    /// transaction not yet visible).
    async fn chunk_once(
        &mut self,
        i: usize,
        lower: Option<&[String]>,
        rows: i64,
        batch: &mut Batch,
        backfilling: &[bool],
    ) -> Result<Option<(Option<super::ChunkOutcome>, ApplyStats)>, ApplyError> {
        let c = &self.client;
        c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .await
            .map_err(ApplyError::session)?;
        let mirror = self.mirrors[i].plan.number as i32;
        let point = c
            .query_typed_one(
                state::CHUNK_SYNC_POINT,
                &[(&self.spec_name, Type::TEXT), (&mirror, Type::INT4)],
            )
            .await;
        let (snapshot, lsn) = match point {
            Ok(row) => (row.get::<_, String>(0), row.get::<_, String>(1)),
            Err(e) => {
                let _ = c.batch_execute("ROLLBACK").await;
                return Err(ApplyError::session(e));
            }
        };
        let (Some(snapshot), Ok(lsn)) = (Snapshot::parse(&snapshot), lsn.parse::<Lsn>()) else {
            let _ = c.batch_execute("ROLLBACK").await;
            return Err(ApplyError::Session {
                message: format!("cannot read the sync point ({snapshot:?}, {lsn:?})"),
                action: Action::Stop,
                sqlstate: None,
            });
        };
        let reply = match self.sync_until(lsn).await {
            Ok(reply) => reply,
            Err(e) => {
                let _ = self.client.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        };
        batch.absorb(&reply.batch, usize::MAX);
        if !reply.complete {
            let _ = self.client.batch_execute("ROLLBACK").await;
            let stats = self.stage(batch).await?;
            return Ok(Some((None, stats)));
        }
        if !snapshot.invisible(&batch.xids).is_empty() {
            let _ = self.client.batch_execute("ROLLBACK").await;
            return Ok(None);
        }
        let work = self.plan_work(batch, backfilling);
        let attempt = async {
            let mut outcome = self.run_work(&work).await?;
            // The chunk, after the live work: its marks are visible to it.
            let mark_steps = self.keep_marks(&work);
            pipeline::in_order(mark_steps).await.map_err(|f| f.error)?;
            let chunk = self.history_range(i, lower, rows, &mut outcome).await?;
            Ok::<_, ApplyError>((outcome, chunk))
        }
        .await;
        let (outcome, chunk) = match attempt {
            Ok(v) => v,
            Err(e) => {
                let _ = self.client.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        };
        let c = &self.client;
        let upper = chunk.upper.clone();
        let covered = chunk.rows as i64;
        let spec_name = &self.spec_name;
        let mut steps = self.keep_carry(&work, &outcome);
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
        if batch.txns > 0 {
            steps.extend(position_steps(c, &self.positions, &self.spec_name, batch));
        }
        steps.push(simple(c, "COMMIT"));
        in_transaction(c, steps).await?;
        self.report(&work, &outcome.reversed);
        self.carried_after(&work, outcome.carried);
        self.held_after(outcome.holdings);
        crate::metrics::chunk_applied(chunk.written, chunk.deleted);
        Ok(Some((Some(chunk), outcome.stats)))
    }

    /// The chunk's range of mirror `i`, from `lower` over `rows` source rows,
    /// recomputed forward but for the keys the key table lists, split around
    /// rows the application changed after the snapshot (their keys are
    /// carried forward, in `outcome`).
    async fn history_range(
        &self,
        i: usize,
        lower: Option<&[String]>,
        rows: i64,
        outcome: &mut WorkDone,
    ) -> Result<super::ChunkOutcome, ApplyError> {
        let started = Instant::now();
        let ignore = crate::mirror::plant::active(crate::mirror::plant::Plant::ChunksIgnoreMarks);
        let excluded = self.excluded(i);
        let (upper, covered, wrote, lost) = self
            .isolated_range(i, (!ignore).then_some(&excluded), lower, rows)
            .await?;
        // Keys lost to a later write wait in the carry; keys whose data
        // fails are held.
        let later = self.sort_lost(
            i,
            Dir::Forward,
            std::iter::empty(),
            lost,
            &mut outcome.holdings[i],
        );
        outcome.carried[i].extend(later.into_iter().map(|k| (k, Dir::Forward)));
        Ok(super::ChunkOutcome {
            upper,
            rows: covered.max(0) as u64,
            written: wrote.written,
            deleted: wrote.deleted,
            elapsed: started.elapsed(),
        })
    }

    /// Whether keys wait in the carry.
    pub fn has_carried(&self) -> bool {
        self.carried.iter().any(|c| !c.is_empty())
    }

    /// How many keys wait in the carry: (mirror number, count) per
    /// two-way mirror.
    pub fn carried_counts(&self) -> Vec<(usize, usize)> {
        self.mirrors
            .iter()
            .zip(&self.carried)
            .filter(|(m, _)| m.reverse.is_some())
            .map(|(m, c)| (m.plan.number, c.len()))
            .collect()
    }

    /// The stream could not be followed up to the snapshot (it is far
    /// behind): the batch's two-way keys are stored with their directions
    /// (the carry), one-way keys are applied as usual, and the position
    /// moves on. The carry is applied once the stream has caught up.
    async fn stage(&mut self, batch: &Batch) -> Result<ApplyStats, ApplyError> {
        let c = &self.client;
        let mut stats = ApplyStats::default();
        let mut staged: Vec<Vec<(Key, Dir)>> = vec![Vec::new(); self.mirrors.len()];
        for (i, (m, keys)) in self.mirrors.iter().zip(&batch.mirrors).enumerate() {
            if m.reverse.is_none() {
                continue;
            }
            let mut dirs = self.carried[i].clone();
            if keys.target_truncated {
                dirs.clear();
            }
            for (k, d) in &keys.dirs {
                dirs.insert(k.clone(), *d);
            }
            staged[i] = dirs.into_iter().collect();
        }
        let one_way = Batch {
            mirrors: self
                .mirrors
                .iter()
                .zip(&batch.mirrors)
                .map(|(m, k)| {
                    if m.reverse.is_none() {
                        k.clone()
                    } else {
                        MirrorKeys::default()
                    }
                })
                .collect(),
            ..Batch::default()
        };
        let mut steps = vec![simple(c, "BEGIN")];
        steps.extend(position_steps(c, &self.positions, &self.spec_name, batch));
        steps.extend(super::key_steps(&self.mirrors, c, &one_way, &mut stats));
        for (m, keys) in self.mirrors.iter().zip(&staged) {
            if !keys.is_empty() {
                steps.push(store_keys(c, &self.spec_name, m, KeyKind::Carry, keys));
            }
        }
        steps.push(simple(c, "COMMIT"));
        stats.add(in_transaction(c, steps).await?);
        for (i, keys) in staged.into_iter().enumerate() {
            if !keys.is_empty() {
                self.carried[i] = keys.into_iter().collect();
            }
        }
        tracing::info!(
            carried = self.carried.iter().map(HashMap::len).sum::<usize>(),
            "the stream is far behind: two-way keys are stored with their directions and applied \
             once it has caught up"
        );
        Ok(stats)
    }

    /// Each mirror's keys by direction, the carried keys first (older than
    /// anything in the batch), and the cascades: a key whose old shape is
    /// recomputed is recomputed forward for the other mirrors of its source
    /// that read what the way back writes (walshift's own writes do not come
    /// back through the stream to do it).
    fn plan_work(&self, batch: &Batch, backfilling: &[bool]) -> Vec<MirrorWork> {
        let mut work: Vec<MirrorWork> = Vec::with_capacity(self.mirrors.len());
        for (i, (m, keys)) in self.mirrors.iter().zip(&batch.mirrors).enumerate() {
            let mut w = MirrorWork {
                truncated: keys.truncated,
                target_truncated: keys.target_truncated,
                overflowed: keys.overflowed,
                conflicts: keys.conflicts.clone(),
                ..Default::default()
            };
            let carried: Vec<(&Key, &Dir)> = self.carried[i]
                .iter()
                .filter(|(k, _)| keys.dirs.contains_key(*k) || keys.keys.contains(*k))
                .chain(
                    self.carried[i]
                        .iter()
                        .filter(|(k, _)| !keys.dirs.contains_key(*k) && !keys.keys.contains(*k))
                        .take(CARRIED_PER_TRANSACTION),
                )
                .collect();
            w.settled = carried.iter().map(|(k, _)| (*k).clone()).collect();
            if m.reverse.is_none() {
                // One-way: every key forward, carried ones included.
                let mut all: std::collections::HashSet<Key> = keys.keys.clone();
                all.extend(carried.iter().map(|(k, _)| (*k).clone()));
                w.forward = all.into_iter().collect();
                work.push(w);
                continue;
            }
            let mut dirs: HashMap<Key, Dir> = if keys.target_truncated {
                HashMap::new()
            } else {
                carried.iter().map(|(k, d)| ((*k).clone(), **d)).collect()
            };
            for (k, d) in &keys.dirs {
                if crate::mirror::plant::active(crate::mirror::plant::Plant::EarlierWriteWins)
                    && dirs.contains_key(k)
                {
                    continue;
                }
                if let Some(old) = dirs.insert(k.clone(), *d)
                    && self.carried[i].contains_key(k)
                    && old.conflicts_with(*d)
                {
                    w.conflicts.add(k);
                }
            }
            for (k, d) in dirs {
                if backfilling.get(i).copied().unwrap_or(false) && d != Dir::Forward {
                    w.marks.push((k.clone(), d));
                }
                match d {
                    Dir::Forward => w.forward.push(k),
                    Dir::Reverse => w.reverse.push(k),
                    Dir::Both => {}
                }
            }
            work.push(w);
        }
        // Cascades from the way back to the other mirrors of the source.
        for i in 0..work.len() {
            let Some(reverse) = &self.mirrors[i].reverse else {
                continue;
            };
            if work[i].reverse.is_empty() {
                continue;
            }
            let keys = work[i].reverse.clone();
            for (j, (other, w)) in self.mirrors.iter().zip(work.iter_mut()).enumerate() {
                if j == i || other.plan.source != self.mirrors[i].plan.source {
                    continue;
                }
                let reads = match &other.plan.two_way {
                    None => true,
                    Some(t) => t.forward_signal.iter().any(|c| reverse.writes.contains(c)),
                };
                if !reads {
                    continue;
                }
                let decided = batch.mirrors[j].dirs.keys().chain(self.carried[j].keys());
                let decided: std::collections::HashSet<&Key> = decided.collect();
                let mut add: Vec<Key> = keys
                    .iter()
                    .filter(|k| !decided.contains(k) && !w.forward.contains(k))
                    .cloned()
                    .collect();
                w.forward.append(&mut add);
            }
        }
        work
    }

    /// The statements: every way back first (it writes the old columns the
    /// forward mappings read), then every forward mapping, each in spec
    /// order.
    async fn run_work(&self, work: &[MirrorWork]) -> Result<WorkDone, ApplyError> {
        let mut out = WorkDone {
            carried: vec![Vec::new(); work.len()],
            reversed: vec![0; work.len()],
            holdings: (0..work.len()).map(|_| Holding::default()).collect(),
            ..Default::default()
        };
        for (i, (m, w)) in self.mirrors.iter().zip(work).enumerate() {
            let Some(reverse) = &m.reverse else {
                continue;
            };
            if w.target_truncated {
                let s = &reverse.whole;
                let wrote = self
                    .guarded(range(&self.client, m, s, reverse.rows))
                    .await?;
                out.stats.add(vec![wrote]);
                out.stats.full_passes += 1;
            }
            let (wrote, lost) = self.keyed(m, Dir::Reverse, w.reverse.clone()).await?;
            out.stats.keys += w.reverse.len() - lost.len();
            out.stats.add(vec![wrote]);
            out.reversed[i] = (w.reverse.len() - lost.len()) as u64;
            let later = self.sort_lost(
                i,
                Dir::Reverse,
                w.reverse.iter(),
                lost,
                &mut out.holdings[i],
            );
            out.carried[i].extend(later.into_iter().map(|k| (k, Dir::Reverse)));
        }
        for (i, (m, w)) in self.mirrors.iter().zip(work).enumerate() {
            if w.overflowed {
                // The whole range, split around the rows that fail.
                let rows = self.count_after(m, None).await?;
                let (wrote, lost) = self.ranged(m, None, None, None, rows).await?;
                out.stats.add(vec![wrote]);
                out.stats.full_passes += 1;
                // Every key was tried: held keys not lost are recovered.
                let held: Vec<Key> = self.held[i].keys().cloned().collect();
                let later =
                    self.sort_lost(i, Dir::Forward, held.iter(), lost, &mut out.holdings[i]);
                out.carried[i].extend(later.into_iter().map(|k| (k, Dir::Forward)));
            }
            if w.truncated
                && let MirrorKind::Rows(p) = &m.plan.kind
            {
                let s = sql::rows_truncate(p);
                let mut wrote = self.guarded(range(&self.client, m, &s, false)).await?;
                wrote.deleted = wrote.written;
                wrote.written = 0;
                out.stats.add(vec![wrote]);
            }
            if w.truncated {
                out.holdings[i].forget_all = true;
            }
            let (wrote, lost) = self.keyed(m, Dir::Forward, w.forward.clone()).await?;
            out.stats.keys += w.forward.len() - lost.len();
            out.stats.add(vec![wrote]);
            let later = self.sort_lost(
                i,
                Dir::Forward,
                w.forward.iter(),
                lost,
                &mut out.holdings[i],
            );
            out.carried[i].extend(later.into_iter().map(|k| (k, Dir::Forward)));
        }
        Ok(out)
    }

    /// Writes of the key table that go with the transaction: the marks,
    /// the carried keys it took up and the ones it carries on.
    fn keep_keys<'a>(&'a self, work: &'a [MirrorWork], outcome: &'a WorkDone) -> Vec<Step<'a>> {
        let mut steps = self.keep_marks(work);
        steps.extend(self.keep_carry(work, outcome));
        steps
    }

    fn keep_marks<'a>(&'a self, work: &'a [MirrorWork]) -> Vec<Step<'a>> {
        let c = &self.client;
        self.mirrors
            .iter()
            .zip(work)
            .filter(|(_, w)| !w.marks.is_empty())
            .map(|(m, w)| store_keys(c, &self.spec_name, m, KeyKind::Mark, &w.marks))
            .collect()
    }

    fn keep_carry<'a>(&'a self, work: &'a [MirrorWork], outcome: &'a WorkDone) -> Vec<Step<'a>> {
        let c = &self.client;
        let mut steps = Vec::new();
        for ((m, w), carried) in self.mirrors.iter().zip(work).zip(&outcome.carried) {
            if !w.settled.is_empty() {
                steps.push(forget_keys(
                    c,
                    &self.spec_name,
                    m,
                    KeyKind::Carry,
                    &w.settled,
                ));
            }
            if !carried.is_empty() {
                steps.push(store_keys(c, &self.spec_name, m, KeyKind::Carry, carried));
            }
        }
        steps.extend(self.holding_steps(&outcome.holdings));
        steps
    }

    fn carried_after(&mut self, work: &[MirrorWork], carried: Vec<Vec<(Key, Dir)>>) {
        for ((mine, w), again) in self.carried.iter_mut().zip(work).zip(carried) {
            for k in &w.settled {
                mine.remove(k);
            }
            mine.extend(again);
        }
    }

    /// After a commit: the conflicts it resolved (metric, count, a log line
    /// naming the keys) and the keys it wrote back.
    fn report(&self, work: &[MirrorWork], reversed: &[u64]) {
        for ((m, w), reversed) in self.mirrors.iter().zip(work).zip(reversed) {
            if *reversed > 0 || w.conflicts.count > 0 {
                self.counts.add(m.plan.number, w.conflicts.count, *reversed);
                crate::metrics::reverse_keys(m.plan.number, *reversed);
            }
            if w.conflicts.count == 0 {
                continue;
            }
            crate::metrics::conflicts(m.plan.number, w.conflicts.count);
            let keys: Vec<String> = w
                .conflicts
                .examples
                .iter()
                .map(|k| format!("({})", k.join(", ")))
                .collect();
            tracing::info!(
                mirror = %m.label,
                conflicts = w.conflicts.count,
                keys = %keys.join(" "),
                "both versions wrote these keys before walshift had reconciled the first write; \
                 the later commit won in both shapes"
            );
        }
    }

    /// Forgets the marks of mirror `i` once its backfill is complete.
    pub async fn forget_marks(&self, i: usize) -> Result<(), ApplyError> {
        let mirror = self.mirrors[i].plan.number as i32;
        self.client
            .execute(KEYS_FORGET_MARKS, &[&self.spec_name, &mirror])
            .await
            .map(drop)
            .map_err(ApplyError::session)
    }
}

fn snapshot_text(s: &Snapshot) -> String {
    format!("{s:?}")
}

/// At debug level, what a two-way transaction decided, key by key while
/// there are few.
fn log_work(mirrors: &[PreparedMirror], work: &[MirrorWork], batch: &Batch, snapshot: &str) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let show = |keys: &[Key]| -> String {
        if keys.len() > 40 {
            return format!("{} keys", keys.len());
        }
        keys.iter()
            .map(|k| k.join(","))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for (m, w) in mirrors.iter().zip(work) {
        if w.forward.is_empty() && w.reverse.is_empty() && w.settled.is_empty() {
            continue;
        }
        tracing::debug!(
            mirror = m.plan.number,
            forward = %show(&w.forward),
            reverse = %show(&w.reverse),
            carried_in = %show(&w.settled),
            xids = ?batch.xids,
            end = %batch.end_lsn,
            snapshot,
            "two-way transaction"
        );
    }
}
