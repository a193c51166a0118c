//! One session of `run`: its connections, and the loop that reads the
//! stream, hands batches to the apply task and confirms what it committed.
//!
//! [`Session::connect`] opens the apply session (and a two-way spec's flush
//! session), loads the backfill, starts the stream from the last committed
//! position and spawns the helper tasks. [`Session::run`] is the loop: each
//! pass hands the next batch over if the applier is free, then waits on the
//! events below, in this order of priority, each handled by one
//! `on_...` method:
//!
//! 1. shutdown (finish what the applier took, confirm, leave);
//!    a two-way applier's sync request and its keepalive nudge;
//!    room in the apply task's queue; a control request (cut-over, retry);
//!    the verify before a cut-over; another replication origin appearing;
//! 2. the WAL safety limit;
//! 3. a batch committed: now, and only now, confirm it (I4);
//! 4. the stream, a burst of events at a time;
//! 5. the progress line.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::{Notify, mpsc, watch};

use super::apply_task::{self, Done, Work};
use super::confirm::Confirmer;
use super::control::{self, ControlEvent};
use super::syncing::{SYNC_MAX_KEYS, SYNC_NUDGE, Syncing};
use super::{
    AbortOnDrop, Backend, Ended, Objects, Observed, RunOptions, STREAM_SETTINGS, SessionError,
    Totals, origins, watermarks,
};
use crate::backfill::{Backfill, LiveLag, SharedProgress};
use crate::catalog::Plan;
use crate::conninfo::ConnConfig;
use crate::cutover::session::{self as cutover, Cut, StateUpdate};
use crate::mirror::applier::{Applier, Batch, SESSION_SETTINGS, SyncLink, SyncReply};
use crate::mirror::txn::{Assembled, CommittedTxn, MirrorSource, TxnAssembler};
use crate::pgoutput::{Decoder, DecoderOptions};
use crate::replication::{
    LogicalStream, ReplicationClient, ReplicationError, ReplicationEvent, StreamOptions,
};
use crate::spec::Spec;
use crate::{Lsn, lag, state};

/// Stream events handled per pass of the session loop at most.
const STREAM_BURST: usize = 512;

/// Work items the loop queues for the apply task before it stops reading.
const MAX_OUTBOX: usize = 64;

/// A batch held back by `batch_window` goes as soon as it has this many
/// keys: past it the statements around the recompute are a small share.
const BATCH_WINDOW_KEYS: usize = 2_000;

/// Sleeps until `due` (never when it is `None`: the arm is disabled then).
async fn sleep_until_due(due: Option<Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due.into()).await;
    }
}

/// What every session of a run is given.
#[derive(Clone, Copy)]
pub(super) struct Given<'a> {
    pub config: &'a ConnConfig,
    pub spec: &'a Spec,
    pub plan: &'a Plan,
    pub objects: &'a Objects,
    pub opts: &'a RunOptions,
    pub observed: &'a Observed,
}

/// A session's state between passes of its loop.
pub(super) struct Session<'a> {
    /// The helper tasks (control, apply, watermarks), aborted first when
    /// the session ends.
    _tasks: [AbortOnDrop; 3],
    given: Given<'a>,
    shutdown: &'a mut watch::Receiver<bool>,
    totals: &'a mut Totals,

    // The stream and its decoding.
    stream: LogicalStream,
    decoder: Decoder,
    assembler: TxnAssembler,
    /// While streaming with `origin = none`: watches for other origins.
    guard: Option<origins::Guard>,
    confirmer: Confirmer,

    // The next batch, and how long work has waited.
    pending: Batch,
    mirrors: usize,
    /// Receive time of the oldest unapplied work, pending and in flight:
    /// the live apply lag the backfill yields to.
    pending_since: Option<Instant>,
    in_flight_since: Option<Instant>,
    live_lag: Arc<LiveLag>,
    /// Work has left the loop and is not reported done (set each pass).
    in_flight: bool,

    // The apply task.
    /// Work for the apply task, sent as it has room: the loop never blocks
    /// on it, so the apply task can always hand results back.
    outbox: VecDeque<Work>,
    /// Batches handed over and not yet reported done.
    outstanding: usize,
    work_tx: mpsc::Sender<Work>,
    done_rx: mpsc::Receiver<Done>,
    two_way: bool,
    work_ready: Arc<Notify>,
    syncing: Syncing,
    sync_request_rx: mpsc::Receiver<Lsn>,

    // Control and the cut-over.
    control_rx: mpsc::Receiver<ControlEvent>,
    updates: mpsc::UnboundedSender<StateUpdate>,
    cut: Option<Cut>,
    /// Shutdown asked for while a cut-over holds the apply task: leave once
    /// it has ended.
    stopping: bool,
    progress: SharedProgress,
    over_limit_rx: mpsc::Receiver<String>,
    log_tick: tokio::time::Interval,
    /// Marks the stream connected while the session lives.
    _streaming: super::Streaming,
}

/// How a session is over, as an event handler decides.
enum Leave {
    /// Close the stream first, then end so.
    Closing(Result<Ended, SessionError>),
    /// WAL safety: close the stream, drop the slot, stop.
    SafetyStop(String),
    /// End at once (the stream failed, or an error it need not outlive).
    Now(SessionError),
}

impl From<SessionError> for Leave {
    fn from(e: SessionError) -> Self {
        Leave::Now(e)
    }
}

/// What an event handler decides: go on (`Ok`), or the session is over.
type Handled = Result<(), Leave>;

impl<'a> Session<'a> {
    /// Connects the session's apply session, stream and helper tasks.
    /// Every SQL backend it opens is added to `backends`.
    pub(super) async fn connect(
        given: Given<'a>,
        shutdown: &'a mut watch::Receiver<bool>,
        totals: &'a mut Totals,
        backends: &mut Vec<Backend>,
    ) -> Result<Session<'a>, SessionError> {
        let (applier, start) = connect_applier(&given, backends).await?;
        // Two-way specs: the applier asks for the stream up to its snapshot
        // (mirror/applier/two_way.rs) whenever there is work; see `Syncing`.
        let two_way = applier.is_two_way();
        let (sync_request_tx, sync_request_rx) = mpsc::channel::<Lsn>(1);
        let (sync_reply_tx, sync_reply_rx) = mpsc::channel::<SyncReply>(1);
        let applier = if two_way {
            let link = SyncLink {
                request: sync_request_tx,
                reply: sync_reply_rx,
            };
            with_flusher(&given, applier, link, backends).await?
        } else {
            applier
        };
        let live_lag = Arc::new(LiveLag::default());
        let (backfill, settings_tx) = load_backfill(&given, &applier, &live_lag).await?;
        let progress = backfill.progress();
        let (stream, guard) = open_stream(&given, &applier, start, backends).await?;
        let confirmer = Confirmer::new(
            stream.feedback(),
            guard.as_ref().map(|g| g.cap()),
            given.observed.clone(),
        );
        let _streaming = given.observed.streaming();

        // The applier runs in its own task so the loop keeps reading
        // meanwhile. Between live batches it copies history (I3: one writer
        // for both).
        let (work_tx, work_rx) = mpsc::channel::<Work>(1);
        let (done_tx, done_rx) = mpsc::channel::<Done>(1);
        // Cut-over requests come in and their steps go out through the
        // state table, on a session of the control task's own.
        let (updates, updates_rx) = mpsc::unbounded_channel();
        let (control_tx, control_rx) = mpsc::channel(4);
        let control = AbortOnDrop(tokio::spawn(control::control(
            given.config.clone(),
            given.spec.name.clone(),
            control_tx,
            updates_rx,
            settings_tx,
        )));
        let ctx = cutover::CutoverContext {
            spec: given.spec.clone(),
            mirrors: given.plan.mirrors.clone(),
            updates: updates.clone(),
        };
        let work_ready = Arc::new(Notify::new());
        let applier_task = AbortOnDrop(tokio::spawn(apply_task::apply_loop(
            applier,
            backfill,
            work_rx,
            done_tx,
            ctx,
            two_way.then(|| work_ready.clone()),
        )));
        let (over_limit_tx, over_limit_rx) = mpsc::channel::<String>(1);
        let emitter = AbortOnDrop(tokio::spawn(watermarks::emit_watermarks(
            given.config.clone(),
            given.spec.clone(),
            given.observed.clone(),
            over_limit_tx,
        )));
        let mut outbox = VecDeque::new();
        // Keys held by an earlier run are tried again first: the rows or
        // the spec may have been fixed meanwhile.
        if given.observed.held.load(Ordering::Acquire) > 0 {
            outbox.push_back(Work::RetryHeld);
        }
        let mirrors = given.plan.mirrors.len();
        let sources = given.plan.mirrors.iter().map(MirrorSource::of).collect();
        Ok(Session {
            given,
            shutdown,
            totals,
            stream,
            decoder: Decoder::new(DecoderOptions {
                proto_version: 1,
                streaming_parallel: false,
            }),
            assembler: TxnAssembler::new(
                sources,
                given.spec.origin_name(),
                given.opts.max_txn_keys,
            ),
            guard,
            confirmer,
            pending: Batch::new(mirrors),
            mirrors,
            pending_since: None,
            in_flight_since: None,
            live_lag,
            in_flight: false,
            outbox,
            outstanding: 0,
            work_tx,
            done_rx,
            two_way,
            work_ready,
            syncing: Syncing::new(sync_reply_tx),
            sync_request_rx,
            control_rx,
            updates,
            cut: None,
            stopping: false,
            progress,
            over_limit_rx,
            log_tick: tokio::time::interval(given.opts.log_interval),
            _tasks: [control, applier_task, emitter],
            _streaming,
        })
    }

    /// The loop, until shutdown, a committed cut-over or an error.
    pub(super) async fn run(mut self) -> Result<Ended, SessionError> {
        self.log_tick.tick().await;
        let leave = loop {
            if let Err(leave) = self.pass().await {
                break leave;
            }
        };
        let Session {
            stream,
            totals,
            given,
            ..
        } = self;
        match leave {
            Leave::Now(e) => Err(e),
            Leave::Closing(ended) => {
                let _ = stream.close().await;
                if ended.is_ok() {
                    tracing::info!(confirmed = %totals.confirmed, "stopped");
                }
                ended
            }
            Leave::SafetyStop(reason) => {
                let _ = stream.close().await;
                super::drop_slot_after_safety_stop(given.config, given.spec).await;
                Err(SessionError {
                    deliberate: true,
                    ..SessionError::stop(reason)
                })
            }
        }
    }

    /// One pass: the next batch handed over, then the first event, by
    /// priority.
    async fn pass(&mut self) -> Handled {
        self.hand_over();
        let may_read = self.may_read();
        let stopping = self.stopping;
        let sync_request = self.two_way && !self.syncing.waiting();
        let sync_waiting = self.syncing.waiting();
        let has_outbox = !self.outbox.is_empty();
        let verifying = self.cut.as_ref().is_some_and(|c| c.verify.is_some());
        let watching = self.guard.is_some() && !self.job_running();
        let due = self.batch_due();
        tokio::select! {
            biased;
            // 1.
            _ = self.shutdown.changed(), if !stopping => self.on_shutdown().await,
            Some(lsn) = self.sync_request_rx.recv(), if sync_request => self.on_sync_request(lsn),
            _ = tokio::time::sleep(SYNC_NUDGE), if sync_waiting => self.on_sync_nudge(),
            permit = self.work_tx.clone().reserve_owned(), if has_outbox => self.on_room(permit.ok()),
            Some(ev) = self.control_rx.recv() => self.on_control(ev),
            answer = cutover::verify_answer(&mut self.cut), if verifying => self.on_verified(answer),
            names = foreign_origins(&mut self.guard), if watching => self.on_foreign_origin(names),
            // 2.
            Some(reason) = self.over_limit_rx.recv() => Err(Leave::SafetyStop(reason)),
            // 3.
            done = self.done_rx.recv() => self.on_done(done).await,
            // 4.
            ev = self.stream.recv(), if may_read => self.on_stream(ev),
            // 5.
            _ = sleep_until_due(due), if due.is_some() => Ok(()),
            _ = self.log_tick.tick() => self.on_log_tick(),
        }
    }

    /// A cut-over's job is with the apply task.
    fn job_running(&self) -> bool {
        self.cut.as_ref().is_some_and(|c| c.running)
    }

    /// Batches go straight to the apply task until the cut-over's marker.
    fn forwarding(&self) -> bool {
        self.cut.as_ref().is_some_and(|c| c.forwarding)
    }

    /// Whether the loop reads the stream this pass: not while the applier
    /// is busy and the next batch is full (back-pressure; the reader task
    /// keeps answering the server, I7).
    fn may_read(&self) -> bool {
        let keys = self.pending.key_count();
        (!self.in_flight
            || keys < self.given.opts.max_batch_keys
            || (self.syncing.waiting() && keys < SYNC_MAX_KEYS))
            && self.outbox.len() < MAX_OUTBOX
    }

    /// The next batch, leaving an empty one pending.
    fn take_pending(&mut self) -> Batch {
        std::mem::replace(&mut self.pending, Batch::new(self.mirrors))
    }

    /// Hands the next batch over as soon as the applier is free; a batch of
    /// echoes or unrelated transactions needs no SQL, only a confirm. While
    /// a cut-over waits for its lock or drains, every batch goes straight
    /// on: the drain applies them under the lock.
    fn hand_over(&mut self) {
        let forwarding = self.forwarding();
        self.in_flight = self.outstanding > 0 || self.job_running() || self.syncing.in_flight();
        if self.two_way && !forwarding {
            // The applier takes the work when it syncs; it is told there is
            // some. What needs no SQL is confirmed here, as below.
            if self.pending.has_work() {
                self.work_ready.notify_one();
            } else if !self.in_flight && self.pending.txns > 0 {
                let batch = self.take_pending();
                self.confirmer.applied(self.totals, &batch);
            }
        } else if forwarding && self.pending.txns > 0 {
            let batch = self.take_pending();
            self.in_flight_since = self.in_flight_since.or(self.pending_since.take());
            self.send_batch(batch);
        } else if !self.in_flight && self.pending.txns > 0 && self.batch_due().is_none() {
            let batch = self.take_pending();
            if batch.has_work() {
                self.in_flight = true;
                self.in_flight_since = self.pending_since.take();
                self.send_batch(batch);
            } else {
                self.confirmer.applied(self.totals, &batch);
            }
        }
    }

    /// While the applier is free, a one-way batch with few keys waits up to
    /// `batch_window` from its first change for more: each batch costs
    /// the apply session its statements around the recompute (the barrier,
    /// the position, BEGIN and COMMIT), and the stream a confirm, whatever
    /// its size. Returns when the batch is due; `None` when it goes now.
    fn batch_due(&self) -> Option<Instant> {
        let window = self.given.opts.batch_window;
        if window.is_zero()
            || self.two_way
            || self.in_flight
            || self.stopping
            || self.forwarding()
            || !self.pending.has_work()
            || self.pending.key_count() >= BATCH_WINDOW_KEYS
        {
            return None;
        }
        let due = self.pending_since? + window;
        (due > Instant::now()).then_some(due)
    }

    fn send_batch(&mut self, batch: Batch) {
        self.outstanding += 1;
        self.outbox.push_back(Work::Batch(batch));
    }

    /// Pending work has left the loop (a sync answered or given up).
    fn pending_left(&mut self) {
        self.in_flight_since = self.in_flight_since.or(self.pending_since.take());
    }

    /// Shutdown: finish the batches under way, report, leave. A cut-over in
    /// progress ends first (it needs the stream).
    async fn on_shutdown(&mut self) -> Handled {
        if self.job_running() {
            tracing::info!("stopping once the cut-over under way has ended");
            self.stopping = true;
            return Ok(());
        }
        if let Some(c) = self.cut.take() {
            let why = "walshift run stopped before the cut-over began; nothing was changed";
            let _ = self
                .updates
                .send(StateUpdate::finished(cutover::refused(&c.job, why)));
        }
        // Sent but not yet taken: never applied, nothing to confirm.
        let unsent = self.outbox.iter().filter(|w| matches!(w, Work::Batch(_)));
        self.outstanding -= unsent.count();
        // An applier waiting for the stream gives up; one applying what it
        // took finishes.
        let mut busy = self.syncing.in_flight();
        self.syncing.close();
        while self.outstanding > 0 || busy {
            let (batch, result) = match self.done_rx.recv().await {
                Some(Done::Batch(batch, result)) => {
                    self.outstanding = self.outstanding.saturating_sub(1);
                    (batch, result)
                }
                Some(Done::Synced(batch, result, handed)) => {
                    busy = false;
                    self.outstanding = self.outstanding.saturating_sub(handed);
                    (batch, result)
                }
                Some(_) | None => break,
            };
            if result.is_err() {
                break;
            }
            self.confirmer.confirm(self.totals, batch.end_lsn);
        }
        Err(Leave::Closing(Ok(Ended::Stopped)))
    }

    /// The applier of a two-way spec asks for the stream up to its
    /// snapshot's WAL position.
    fn on_sync_request(&mut self, lsn: Lsn) -> Handled {
        if self.syncing.request(lsn, &mut self.pending, self.mirrors) {
            self.pending_left();
        } else {
            self.confirmer.request_reply();
        }
        Ok(())
    }

    /// While a sync waits: ask the server for a keepalive, which says how
    /// far the stream is.
    fn on_sync_nudge(&mut self) -> Handled {
        self.confirmer.request_reply();
        Ok(())
    }

    /// The apply task has room for the next item of the outbox.
    fn on_room(&mut self, permit: Option<mpsc::OwnedPermit<Work>>) -> Handled {
        let Some(permit) = permit else {
            return Err(SessionError::stop("the applier task ended unexpectedly").into());
        };
        permit.send(self.outbox.pop_front().expect("outbox is not empty"));
        Ok(())
    }

    /// A cut-over request, its cancellation, or `ctl retry`.
    fn on_control(&mut self, ev: ControlEvent) -> Handled {
        let spec = self.given.spec;
        let job = match ev {
            ControlEvent::Retry => {
                self.outbox.push_back(Work::RetryHeld);
                return Ok(());
            }
            ControlEvent::Cancelled(id) => {
                if self
                    .cut
                    .as_ref()
                    .is_some_and(|c| c.job.id == id && !c.running)
                {
                    tracing::info!(request = id, "cut-over cancelled by the operator");
                    self.cut = None;
                    self.outbox.push_back(Work::Untrack);
                }
                return Ok(());
            }
            ControlEvent::Postponed(job) => {
                self.refuse(&job, cutover::postponed(spec));
                return Ok(());
            }
            ControlEvent::Request(job) => job,
        };
        let held = self.given.observed.held.load(Ordering::Acquire);
        let backfill_done = self.progress.lock().expect("progress lock").done();
        if let Some(why) = cutover::refusal(&job, spec, self.cut.is_some(), backfill_done, held) {
            self.refuse(&job, why);
            return Ok(());
        }
        self.outbox.push_back(Work::Track);
        let (config, plan) = (self.given.config, self.given.plan);
        self.cut = Some(Cut::begin(job, config, spec, plan, &self.updates));
        Ok(())
    }

    fn refuse(&self, job: &cutover::Job, why: String) {
        let _ = self
            .updates
            .send(StateUpdate::finished(cutover::refused(job, why)));
    }

    /// The verify before a cut-over has finished: refuse, or hand the job
    /// to the apply task.
    fn on_verified(
        &mut self,
        answer: Result<cutover::VerifyResult, tokio::sync::oneshot::error::RecvError>,
    ) -> Handled {
        let c = self.cut.as_mut().expect("a cut-over is verifying");
        match c.verified(answer) {
            Some(why) => {
                let c = self.cut.take().expect("a cut-over is verifying");
                self.outbox.push_back(Work::Untrack);
                tracing::warn!(request = c.job.id, "{why}");
                let mut out = cutover::refused(&c.job, why);
                out.verify_seconds = c.verify_seconds;
                let _ = self.updates.send(StateUpdate::finished(out));
            }
            None => {
                tracing::info!(
                    request = c.job.id,
                    dry_run = c.job.dry_run,
                    seconds = c.verify_seconds,
                    "verify passed; locking the sources for the cut-over"
                );
                c.running = true;
                // A two-way spec's applier takes the stream itself (syncs),
                // under the lock too.
                c.forwarding = !self.two_way;
                let job = c.job.clone();
                self.outbox.push_back(Work::Cutover(job));
            }
        }
        Ok(())
    }

    /// Another replication origin appeared while streaming with `origin =
    /// none`: stream again with every origin (origins.rs). Not in the middle
    /// of a cut-over: it ends first.
    fn on_foreign_origin(&mut self, names: Vec<String>) -> Handled {
        Err(Leave::Closing(Err(SessionError::retry(format!(
            "replication origin {} appeared: streaming again with every origin, from the slot's confirmed position",
            names.join(", ")
        )))))
    }

    /// The apply task reports: a batch committed (confirm it, I4), the
    /// backfill failed, or a cut-over ended.
    async fn on_done(&mut self, done: Option<Done>) -> Handled {
        let (batch, result) = match done {
            Some(Done::Batch(batch, result)) => {
                self.outstanding = self.outstanding.saturating_sub(1);
                (batch, result)
            }
            // The applier of a two-way spec is done with what its syncs took.
            Some(Done::Synced(batch, result, handed)) => {
                self.syncing.busy = false;
                self.outstanding = self.outstanding.saturating_sub(handed);
                (batch, result)
            }
            Some(Done::Failed(e)) => return Err(SessionError::from(e).into()),
            Some(Done::Cutover(outcome)) => return self.on_cutover_ended(*outcome).await,
            None => return Err(SessionError::stop("the applier task ended unexpectedly").into()),
        };
        self.live_lag.set(self.pending_since);
        self.in_flight_since = None;
        let stats = result.map_err(SessionError::from)?;
        self.confirmer.applied(self.totals, &batch);
        let totals = &mut *self.totals;
        totals.batches += 1;
        totals.keys += stats.keys as u64;
        totals.rows_written += stats.rows_written;
        totals.rows_deleted += stats.rows_deleted;
        if stats.full_passes > 0 {
            tracing::info!(
                mirrors = stats.full_passes,
                "recomputed whole mirrors after a transaction too large to track key by key"
            );
        }
        Ok(())
    }

    async fn on_cutover_ended(&mut self, mut outcome: crate::cutover::Outcome) -> Handled {
        let c = self.cut.take().expect("a cut-over was running");
        outcome.verify_seconds = c.verify_seconds;
        let committed = cutover::ended(self.given.config, &self.updates, outcome).await;
        if !committed && !self.stopping {
            return Ok(());
        }
        Err(Leave::Closing(Ok(if committed {
            Ended::CutOver
        } else {
            Ended::Stopped
        })))
    }

    /// The stream: the event, then whatever else the reader already has, up
    /// to a burst: one pass of the loop per burst rather than per message
    /// (the backfill's echoes come by the million).
    fn on_stream(&mut self, first: Option<Result<ReplicationEvent, ReplicationError>>) -> Handled {
        let mut ev = first;
        let mut handled = 0;
        loop {
            match ev {
                None => return Err(SessionError::retry("replication stream ended").into()),
                Some(Err(e)) => return Err(SessionError::from(e).into()),
                Some(Ok(ReplicationEvent::XLogData { data, .. })) => self.on_xlog(data)?,
                Some(Ok(ReplicationEvent::Keepalive { wal_end, .. })) => self.on_keepalive(wal_end),
            }
            handled += 1;
            // Checked before taking the next event, which would be lost.
            if handled >= STREAM_BURST || !self.may_read() {
                break;
            }
            match self.stream.try_recv() {
                Some(next) => ev = Some(next),
                None => break,
            }
        }
        Ok(())
    }

    /// One message of the stream.
    fn on_xlog(&mut self, data: bytes::Bytes) -> Result<(), SessionError> {
        // Row changes of walshift's own echoes are skipped unread: the
        // backfill's writes come back this way by the million.
        let row_change = data
            .first()
            .copied()
            .is_some_and(crate::replication::is_row_change);
        if self.assembler.skipping() && row_change {
            return Ok(());
        }
        let msg = self
            .decoder
            .decode(data)
            .map_err(|e| SessionError::stop(format!("cannot decode the stream: {e}")))?;
        crate::metrics::decoded(&msg);
        let assembled = self
            .assembler
            .feed(msg)
            .map_err(|e| SessionError::stop(e.to_string()))?;
        match assembled {
            Assembled::Committed(txn) => self.on_committed(txn),
            Assembled::Message {
                prefix, content, ..
            } if prefix == crate::cutover::MARKER_PREFIX => self.on_marker(&content),
            Assembled::Message {
                prefix, content, ..
            } => {
                let run = self.given.observed.watermarks.run();
                if let Some(seq) = lag::parse(&self.given.spec.name, run, &prefix, &content) {
                    self.confirmer.watermark(seq);
                }
            }
            Assembled::Nothing => {}
        }
        Ok(())
    }

    /// A committed transaction joins the next batch.
    fn on_committed(&mut self, txn: CommittedTxn) {
        // A sync is answered before the first transaction past its position.
        if self
            .syncing
            .reached(txn.commit_lsn, &mut self.pending, self.mirrors)
        {
            self.pending_left();
        }
        if txn.has_work() && self.pending_since.is_none() {
            self.pending_since = Some(Instant::now());
            self.live_lag
                .set(self.in_flight_since.or(self.pending_since));
        }
        self.totals.txns += 1;
        self.confirmer.received();
        self.totals.echo_txns += txn.echo as u64;
        self.pending.add(txn, self.given.opts.max_txn_keys);
        if self.syncing.waiting() && self.pending.key_count() >= SYNC_MAX_KEYS {
            self.syncing.give_up(&mut self.pending, self.mirrors);
            self.pending_left();
        }
    }

    /// A marker of the cut-over under way: every batch before it is sent
    /// first. The one emitted under the lock ends the drain.
    fn on_marker(&mut self, content: &[u8]) {
        use crate::cutover::{MarkerKind, marker_of};
        let content = String::from_utf8_lossy(content).into_owned();
        let Some(c) = self.cut.as_mut() else {
            return;
        };
        let kind = marker_of(&c.marker, &content);
        if !c.forwarding || kind.is_none() {
            return;
        }
        if kind == Some(MarkerKind::Lock) {
            c.forwarding = false;
        }
        if self.pending.txns > 0 {
            let batch = self.take_pending();
            self.send_batch(batch);
        }
        self.outbox.push_back(Work::DrainEnd(content));
    }

    /// A keepalive: how far the server has sent.
    fn on_keepalive(&mut self, wal_end: Lsn) {
        let between = !self.assembler.in_transaction();
        if between
            && self
                .syncing
                .reached(wal_end, &mut self.pending, self.mirrors)
        {
            self.pending_left();
        }
        // Nothing pending anywhere: every change before this keepalive is
        // applied, so the slot may move on and an idle slot does not pin WAL.
        if !self.in_flight && self.pending.txns == 0 && between {
            self.confirmer.confirm(self.totals, wal_end);
        }
    }

    /// A progress line now and then.
    fn on_log_tick(&mut self) -> Handled {
        log_backfill(&self.progress);
        let t = &self.totals;
        tracing::info!(
            txns = t.txns,
            keys = t.keys,
            rows_written = t.rows_written,
            rows_deleted = t.rows_deleted,
            confirmed = %t.confirmed,
            "mirroring"
        );
        Ok(())
    }
}

/// Waits for another replication origin to appear; never, when the stream
/// decodes every origin anyway.
async fn foreign_origins(guard: &mut Option<origins::Guard>) -> Vec<String> {
    match guard.as_mut() {
        Some(g) => g.foreign().await,
        None => std::future::pending().await,
    }
}

/// The apply session: its settings, the position to resume from and the
/// replication origin it records positions with.
async fn connect_applier(
    given: &Given<'_>,
    backends: &mut Vec<Backend>,
) -> Result<(Applier, Lsn), SessionError> {
    let (spec, objects) = (given.spec, given.objects);
    let (client, target) = given
        .config
        .with_application_name("walshift-apply")
        .connect_sql_to()
        .await
        .map_err(|e| SessionError::retry(format!("connecting the apply session: {e}")))?;
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
            start = start.max(super::origin_progress(&client, &spec.origin_name()).await?);
        }
    }
    let mut applier = Applier::new(
        client,
        &spec.name,
        &given.plan.mirrors,
        objects.origin,
        given.opts.applier.clone(),
    )
    .await?;
    applier.count_held_into(given.observed.held.clone());
    Ok((applier, start))
}

/// A two-way spec's applier gets its sync link and a flush session.
async fn with_flusher(
    given: &Given<'_>,
    applier: Applier,
    link: SyncLink,
    backends: &mut Vec<Backend>,
) -> Result<Applier, SessionError> {
    let (flusher, target) = given
        .config
        .with_application_name("walshift-flush")
        .connect_sql_to()
        .await
        .map_err(|e| SessionError::retry(format!("connecting the flush session: {e}")))?;
    let pid: i32 = flusher
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    backends.push((target.to_string(), pid, "walshift-flush"));
    Ok(applier
        .with_sync(link, flusher, given.observed.two_way.clone())
        .await?)
}

/// The backfill where it stopped, following the operator's pause and `ctl
/// set` overrides (the control task sends them on the returned channel).
async fn load_backfill(
    given: &Given<'_>,
    applier: &Applier,
    live_lag: &Arc<LiveLag>,
) -> Result<(Backfill, watch::Sender<crate::settings::Control>), SessionError> {
    let (spec, client) = (given.spec, applier.client());
    let mut backfill = Backfill::load(
        client,
        spec,
        &given.plan.mirrors,
        applier.labels(),
        live_lag.clone(),
        given.observed.progress.clone(),
    )
    .await?;
    let (settings_tx, settings_rx) = watch::channel(crate::settings::Control {
        paused: state::backfill_paused(client, &spec.name)
            .await
            .unwrap_or(false),
        overrides: crate::settings::read(client, &spec.name)
            .await
            .unwrap_or_default(),
    });
    backfill.follow(settings_rx);
    if !backfill.is_done() {
        tracing::info!("backfill of history runs alongside live mirroring");
    }
    Ok((backfill, settings_tx))
}

/// The stream, from the last committed position: transactions that ended at
/// or before it are not sent again (I4). With `origin = none` when that is
/// safe (PostgreSQL 16+, no other origin), and then a guard that watches for
/// other origins.
async fn open_stream(
    given: &Given<'_>,
    applier: &Applier,
    mut start: Lsn,
    backends: &mut Vec<Backend>,
) -> Result<(LogicalStream, Option<origins::Guard>), SessionError> {
    let (config, spec, objects) = (given.config, given.spec, given.objects);
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
    let choice = origins::choose(
        applier.client(),
        &spec.origin_name(),
        repl.server_version_num(),
        objects.origin,
    )
    .await?;
    let guard = match &choice {
        origins::Choice::None => {
            // The walsender then skips walshift's own writes while decoding.
            plugin_options.push(("origin".to_string(), "none".to_string()));
            tracing::info!(
                "no other replication origin exists: pgoutput skips walshift's own writes (origin = none)"
            );
            let guard = origins::Guard::start(config, spec.origin_name())
                .await
                .map_err(SessionError::retry)?;
            Some(guard)
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
    let stream = LogicalStream::start(
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
    Ok((stream, guard))
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
