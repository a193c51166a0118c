//! The apply task: the one writer of the targets (I3). It applies the live
//! batches the session loop hands it, copies history in between (the
//! backfill), and carries out a cut-over when asked. It reports each result
//! back to the session loop, which confirms (confirm.rs).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};

use crate::backfill::Backfill;
use crate::cutover::session as cutover;
use crate::mirror::applier::{Applier, ApplyError, ApplyStats, Batch};

/// What the session hands the apply task.
pub(crate) enum Work {
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
pub(crate) enum Done {
    Batch(Batch, Result<ApplyStats, ApplyError>),
    /// A two-way transaction, with everything its syncs took from the
    /// session loop, and how many handed-over batches it applied too.
    Synced(Batch, Result<ApplyStats, ApplyError>, usize),
    /// The backfill failed; the session ends.
    Failed(ApplyError),
    /// A cut-over ended (its drained batches were reported before).
    Cutover(Box<crate::cutover::Outcome>),
}

/// History gets a turn at least this often, even while live batches keep
/// arriving, so a saturating application load cannot starve the backfill
/// forever (live apply lag above `max_apply_lag` still pauses it).
const HISTORY_TURN: Duration = Duration::from_secs(1);

/// How soon carried keys of a two-way spec are tried again when nothing
/// else brings a transaction.
const CARRY_RETRY: Duration = Duration::from_millis(50);

/// The longest wait for the throttle or the pace before looking again.
const THROTTLE_RECHECK: Duration = Duration::from_millis(250);

/// The applier task: live batches first; history when there are none (or
/// when its turn is due) and the throttle allows; a cut-over when asked.
///
/// With `work_ready` (a spec with two-way mirrors) live work is not handed
/// over in batches: the applier takes it from the session loop when it
/// syncs (mirror/applier/two_way.rs), whenever the loop says it holds some
/// (`work_ready`), or carried keys wait.
pub(super) async fn apply_loop(
    applier: Applier,
    backfill: Backfill,
    work_rx: mpsc::Receiver<Work>,
    done_tx: mpsc::Sender<Done>,
    ctx: cutover::CutoverContext,
    work_ready: Option<Arc<Notify>>,
) {
    let mut task = ApplyTask {
        applier,
        backfill,
        work_rx,
        done_tx,
        ctx,
        tracker: None,
        last_chunk: Instant::now(),
        work_ready,
    };
    if task.work_ready.is_some() {
        task.run_two_way().await;
    } else {
        task.run_one_way().await;
    }
}

/// What the apply task does next.
enum Next {
    Work(Work),
    /// A two-way sync: take what the session loop holds.
    Live,
    /// A chunk of history.
    History,
    /// Nothing yet: look again.
    Wait,
    /// The session is gone (or a failure was reported): the task ends.
    Closed,
}

struct ApplyTask {
    applier: Applier,
    backfill: Backfill,
    work_rx: mpsc::Receiver<Work>,
    done_tx: mpsc::Sender<Done>,
    ctx: cutover::CutoverContext,
    /// Keys applied since a cut-over's verify began.
    tracker: Option<cutover::Tracker>,
    last_chunk: Instant,
    /// A two-way spec's signal from the session loop: it holds work.
    work_ready: Option<Arc<Notify>>,
}

impl ApplyTask {
    async fn run_one_way(&mut self) {
        loop {
            let go_on = match self.next_one_way().await {
                Next::Work(work) => self.handle(work).await,
                Next::History => self.chunk().await,
                Next::Wait => true,
                Next::Live | Next::Closed => false,
            };
            if !go_on {
                return;
            }
        }
    }

    /// Live work first; history when there is none, or when its turn is
    /// due, and the throttle allows.
    async fn next_one_way(&mut self) -> Next {
        if self.backfill.is_done() {
            return self.work_rx.recv().await.map_or(Next::Closed, Next::Work);
        }
        if self.last_chunk.elapsed() < HISTORY_TURN {
            match self.work_rx.try_recv() {
                Ok(work) => return Next::Work(work),
                Err(mpsc::error::TryRecvError::Disconnected) => return Next::Closed,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
        }
        let wait = match self.history_wait().await {
            Ok(Some(wait)) => wait,
            Ok(None) => return Next::History,
            Err(()) => return Next::Closed,
        };
        // Live work is applied meanwhile.
        tokio::select! {
            w = self.work_rx.recv() => w.map_or(Next::Closed, Next::Work),
            _ = tokio::time::sleep(wait) => Next::Wait,
        }
    }

    async fn run_two_way(&mut self) {
        loop {
            let go_on = match self.next_two_way().await {
                Next::Work(work) => self.handle(work).await,
                Next::Live => self.sync_now().await,
                Next::History => self.history_two_way().await,
                Next::Wait => true,
                Next::Closed => return,
            };
            crate::metrics::carried(&self.applier);
            if !go_on {
                return;
            }
        }
    }

    /// Control items and the cut-over, in order; then live work, unless
    /// history's turn is due; then history.
    async fn next_two_way(&mut self) -> Next {
        let history = !self.backfill.is_done();
        let history_due = history && self.last_chunk.elapsed() >= HISTORY_TURN;
        let carried = self.applier.has_carried();
        let ready = self.work_ready.as_deref().expect("a two-way apply task");
        tokio::select! {
            biased;
            w = self.work_rx.recv() => w.map_or(Next::Closed, Next::Work),
            _ = ready.notified(), if !history_due => Next::Live,
            _ = tokio::time::sleep(CARRY_RETRY), if carried && !history_due => Next::Live,
            _ = std::future::ready(()), if history => Next::History,
        }
    }

    /// History's turn in a two-way spec: a chunk, unless throttled; live
    /// work and control items meanwhile.
    async fn history_two_way(&mut self) -> bool {
        let wait = match self.history_wait().await {
            Ok(Some(wait)) => wait,
            Ok(None) => return self.chunk().await,
            Err(()) => return false,
        };
        let ready = self.work_ready.as_deref().expect("a two-way apply task");
        let next = tokio::select! {
            w = self.work_rx.recv() => w.map_or(Next::Closed, Next::Work),
            _ = ready.notified() => Next::Live,
            _ = tokio::time::sleep(wait) => Next::Wait,
        };
        match next {
            Next::Work(work) => self.handle(work).await,
            Next::Live => self.sync_now().await,
            Next::Closed => false,
            Next::History | Next::Wait => true,
        }
    }

    /// Throttled: how long to wait before looking again. Under a
    /// rows-per-second cap: the next chunk's time. `Err` when the throttle
    /// could not be read (reported; the task ends).
    async fn history_wait(&mut self) -> Result<Option<Duration>, ()> {
        match self.backfill.throttled(self.applier.client()).await {
            Ok(Some(_)) => Ok(Some(THROTTLE_RECHECK)),
            Ok(None) => Ok(self.backfill.pace().map(|d| d.min(THROTTLE_RECHECK))),
            Err(e) => {
                self.fail(e).await;
                Err(())
            }
        }
    }

    /// One chunk of history. In a two-way spec the chunk syncs with the
    /// stream first, and what that took is reported like a batch.
    async fn chunk(&mut self) -> bool {
        let two_way = self.work_ready.is_some();
        if two_way {
            self.last_chunk = Instant::now();
        }
        let step = self.backfill.step(&mut self.applier).await;
        if !two_way {
            self.last_chunk = Instant::now();
        }
        if two_way && let Some((batch, r)) = self.applier.take_synced() {
            self.track(&batch, &r);
            if self.done_tx.send(Done::Synced(batch, r, 0)).await.is_err() {
                return false;
            }
        }
        match step {
            Ok(()) => true,
            Err(e) => {
                self.fail(e).await;
                false
            }
        }
    }

    /// A two-way transaction in step with the stream (it takes whatever the
    /// session loop holds), reported like a batch. `false` when the session
    /// is gone.
    async fn sync_now(&mut self) -> bool {
        let (batch, r) = self.applier.sync_now(&self.backfill.running()).await;
        self.track(&batch, &r);
        self.done_tx.send(Done::Synced(batch, r, 0)).await.is_ok()
    }

    /// One item of work. `false` when the session is gone.
    async fn handle(&mut self, work: Work) -> bool {
        let two_way = self.work_ready.is_some();
        match work {
            // A two-way spec's batches come through syncs; one handed over
            // (after a cut-over that gave up) is applied in step all the
            // same.
            Work::Batch(batch) if two_way => {
                let running = self.backfill.running();
                let (batch, r) = self.applier.apply_synced(batch, &running).await;
                self.track(&batch, &r);
                self.done_tx.send(Done::Synced(batch, r, 1)).await.is_ok()
            }
            Work::Batch(batch) => {
                let tracker = self.tracker.as_mut();
                apply_and_report(&mut self.applier, &self.done_tx, tracker, batch).await
            }
            Work::Track => {
                self.tracker = Some(cutover::Tracker::new(self.ctx.mirrors.len()));
                true
            }
            Work::Untrack => {
                self.tracker = None;
                true
            }
            Work::Cutover(job) => {
                let (applier, work_rx, done_tx) =
                    (&mut self.applier, &mut self.work_rx, &self.done_tx);
                let tracker = self.tracker.take();
                let outcome =
                    cutover::execute(applier, work_rx, done_tx, tracker, job, &self.ctx).await;
                done_tx.send(Done::Cutover(Box::new(outcome))).await.is_ok()
            }
            // The marker of a cut-over that already gave up.
            Work::DrainEnd(_) => true,
            Work::RetryHeld => self.retry_held(two_way).await,
        }
    }

    /// `walshift ctl SPEC retry`, or held keys found at start.
    async fn retry_held(&mut self, two_way: bool) -> bool {
        let running = if two_way {
            self.backfill.running()
        } else {
            Default::default()
        };
        match self.applier.retry_held(&running).await {
            (Some(batch), r) => {
                self.track(&batch, &r);
                self.done_tx.send(Done::Synced(batch, r, 0)).await.is_ok()
            }
            (None, Ok(_)) => true,
            (None, Err(e)) => {
                self.fail(e).await;
                false
            }
        }
    }

    /// A cut-over is tracking keys: note those `batch` committed.
    fn track(&mut self, batch: &Batch, r: &Result<ApplyStats, ApplyError>) {
        if let (Ok(_), Some(t)) = (r, self.tracker.as_mut()) {
            t.add(batch);
        }
    }

    /// The backfill failed: the session ends with the error.
    async fn fail(&self, e: ApplyError) {
        let _ = self.done_tx.send(Done::Failed(e)).await;
    }
}

/// Applies one live batch, notes its keys if a cut-over is tracking them,
/// and reports it. `false` when the session is gone.
pub(crate) async fn apply_and_report(
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
