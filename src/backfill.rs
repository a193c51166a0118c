//! History: the rows that existed before walshift started, recomputed in key
//! ranges, throttled, resumable.
//!
//! ```text
//!  checkpoint (lower key) ─▶ chunk_upper_bound(lower, n) ─▶ recompute (lower, upper] ─┐
//!        ▲                                                                            │ same txn (I6)
//!        └──────────────────────── walshift.backfill.lower_key = upper ◀──────────────┘
//! ```
//!
//! - Chunks run on the applier's session, between live batches, so a chunk
//!   and a live batch never touch a key at the same time (I3), and live
//!   changes always go first.
//! - The slot exists before the first chunk reads (I1: `run` creates it
//!   during setup), so a change a chunk does not see is in the stream.
//! - Between chunks the throttle is consulted ([`crate::throttle`]); the
//!   chunk size steers toward `chunk_target_time`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::catalog::MirrorPlan;
use crate::error_policy::{self, pg_message};
use crate::mirror::applier::{Applier, ApplyError};
use crate::spec;
use crate::state;
use crate::throttle::{self, ChunkSizer, Reason, Signals, Standby};

/// How often throttle signals are read from the database.
const SIGNAL_INTERVAL: Duration = Duration::from_millis(500);
/// Rates are averaged over this window, so the ETA does not jump per chunk.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// One mirror's progress, as status and logs show it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MirrorProgress {
    pub mirror: usize,
    pub label: String,
    pub rows_done: u64,
    /// `pg_class.reltuples` at start (0 when unknown).
    pub rows_estimate: u64,
    pub done: bool,
    /// Source rows per second over the last seconds.
    pub rate: f64,
    pub chunk_rows: u64,
}

impl MirrorProgress {
    /// Time left at the current rate; `None` when not moving or unknown.
    pub fn eta(&self) -> Option<Duration> {
        if self.done {
            return Some(Duration::ZERO);
        }
        if self.rate <= 0.0 || self.rows_estimate == 0 {
            return None;
        }
        let left = self.rows_estimate.saturating_sub(self.rows_done) as f64;
        Some(Duration::from_secs_f64(left / self.rate))
    }
}

/// The backfill's state as others see it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub mirrors: Vec<MirrorProgress>,
    /// Why history waits right now; `None` while it runs (or is done).
    pub throttle: Option<String>,
    pub throttle_kind: Option<&'static str>,
}

impl Progress {
    pub fn done(&self) -> bool {
        self.mirrors.iter().all(|m| m.done)
    }
}

/// Shared handle to the progress.
pub type SharedProgress = Arc<Mutex<Progress>>;

/// How far live apply is behind: the receive time of the oldest committed
/// transaction not yet applied, as microseconds since `base` (0: none).
#[derive(Debug)]
pub struct LiveLag {
    base: Instant,
    oldest: AtomicU64,
}

impl Default for LiveLag {
    fn default() -> Self {
        // A base in the past, so any instant of this process is after it.
        let now = Instant::now();
        LiveLag {
            base: now.checked_sub(Duration::from_secs(3600)).unwrap_or(now),
            oldest: AtomicU64::new(0),
        }
    }
}

impl LiveLag {
    /// Marks the oldest unapplied work as received at `at` (or none).
    pub fn set(&self, at: Option<Instant>) {
        let v = at
            .map(|t| t.duration_since(self.base).as_micros() as u64 + 1)
            .unwrap_or(0);
        self.oldest.store(v, Ordering::Release);
    }

    pub fn lag(&self) -> Duration {
        match self.oldest.load(Ordering::Acquire) {
            0 => Duration::ZERO,
            v => self
                .base
                .elapsed()
                .saturating_sub(Duration::from_micros(v - 1)),
        }
    }
}

struct MirrorState {
    lower: Option<Vec<String>>,
    done: bool,
    sizer: ChunkSizer,
    /// (when, rows_done) samples for the rate.
    samples: Vec<(Instant, u64)>,
}

/// The backfill of every mirror of a spec, one chunk at a time.
pub struct Backfill {
    spec_name: String,
    /// The spec's `[backfill]`; `limits` is it with the operator's overrides.
    base_limits: spec::BackfillLimits,
    limits: spec::BackfillLimits,
    /// The operator's pause and overrides, kept current by the run's control
    /// task (without one, the pause is read from the state row).
    control: Option<tokio::sync::watch::Receiver<crate::settings::Control>>,
    /// Under a rows-per-second cap: no chunk before this.
    next_chunk_at: Option<Instant>,
    slot: String,
    states: Vec<MirrorState>,
    progress: SharedProgress,
    live_lag: Arc<LiveLag>,
    last_signals: Option<(Instant, Option<Reason>)>,
}

impl Backfill {
    /// Loads (or creates) the checkpoints of every mirror; `progress` is
    /// filled here and kept current by [`Backfill::step`].
    pub async fn load(
        client: &Client,
        spec: &spec::Spec,
        plans: &[MirrorPlan],
        labels: Vec<String>,
        live_lag: Arc<LiveLag>,
        progress: SharedProgress,
    ) -> Result<Self, tokio_postgres::Error> {
        let estimates: Vec<i64> = plans.iter().map(|p| p.estimated_rows).collect();
        let rows = state::backfill_rows(client, &spec.name, &estimates).await?;
        let mut states = Vec::new();
        let mut mirrors = Vec::new();
        for (i, plan) in plans.iter().enumerate() {
            let row = rows
                .iter()
                .find(|r| r.mirror as usize == plan.number)
                .cloned()
                .unwrap_or_default();
            let sizer = ChunkSizer::new(&spec.backfill);
            crate::metrics::backfill_progress(plan.number, 0, 0.0);
            mirrors.push(MirrorProgress {
                mirror: plan.number,
                label: labels.get(i).cloned().unwrap_or_default(),
                rows_done: row.rows_done.max(0) as u64,
                rows_estimate: row.rows_estimate.unwrap_or(0).max(0) as u64,
                done: row.done,
                rate: 0.0,
                chunk_rows: sizer.rows(),
            });
            states.push(MirrorState {
                lower: row.lower_key,
                done: row.done,
                sizer,
                samples: Vec::new(),
            });
        }
        Ok(Backfill {
            spec_name: spec.name.clone(),
            base_limits: spec.backfill.clone(),
            limits: spec.backfill.clone(),
            control: None,
            next_chunk_at: None,
            slot: spec.slot_name(),
            states,
            progress: {
                *progress.lock().expect("progress lock") = Progress {
                    mirrors,
                    ..Default::default()
                };
                progress
            },
            live_lag,
            last_signals: None,
        })
    }

    /// Follows the operator's pause and `ctl set` overrides from `control`.
    pub fn follow(&mut self, control: tokio::sync::watch::Receiver<crate::settings::Control>) {
        self.control = Some(control);
        self.refresh_control();
    }

    /// Takes in a change of the operator's settings: new limits (logged),
    /// and the throttle decided afresh.
    fn refresh_control(&mut self) {
        let Some(rx) = self.control.as_mut() else {
            return;
        };
        if !rx.has_changed().unwrap_or(false) && self.last_signals.is_some() {
            return;
        }
        let control = rx.borrow_and_update().clone();
        let limits = crate::settings::effective(&self.base_limits, &control.overrides);
        let changes = crate::settings::describe_changes(&self.limits, &limits);
        if !changes.is_empty() {
            tracing::info!(changes = %changes.join(", "), "backfill settings changed by the operator");
            for st in &mut self.states {
                st.sizer.retarget(&limits);
            }
            self.limits = limits;
        }
        // Decide again now (a pause or resume takes effect at once).
        self.last_signals = None;
    }

    /// How long the rows-per-second cap wants the next chunk to wait.
    pub fn pace(&self) -> Option<Duration> {
        self.next_chunk_at
            .and_then(|at| at.checked_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }

    /// The limits in force (the spec's, with the operator's overrides).
    pub fn limits(&self) -> &spec::BackfillLimits {
        &self.limits
    }

    pub fn progress(&self) -> SharedProgress {
        self.progress.clone()
    }

    pub fn is_done(&self) -> bool {
        self.states.iter().all(|s| s.done)
    }

    /// Per mirror, whether its backfill still runs.
    pub fn running(&self) -> Vec<bool> {
        self.states.iter().map(|s| !s.done).collect()
    }

    /// Whether history must wait now, and why. Signals are read at most every
    /// [`SIGNAL_INTERVAL`]; the operator's pause and our own apply lag are
    /// cheap and always current.
    pub async fn throttled(&mut self, client: &Client) -> Result<Option<Reason>, ApplyError> {
        self.refresh_control();
        let fresh = matches!(&self.last_signals, Some((at, _)) if at.elapsed() < SIGNAL_INTERVAL);
        let reason = if fresh {
            let cached = self.last_signals.as_ref().and_then(|(_, r)| r.clone());
            // Our own lag changes fastest; re-check it against the cache.
            match cached {
                Some(r) => Some(r),
                None => throttle::decide(
                    &Signals {
                        apply_lag: self.live_lag.lag(),
                        ..Default::default()
                    },
                    &self.limits,
                ),
            }
        } else {
            let signals = self.read_signals(client).await?;
            let r = throttle::decide(&signals, &self.limits);
            self.last_signals = Some((Instant::now(), r.clone()));
            r
        };
        let mut p = self.progress.lock().expect("progress lock");
        let changed = p.throttle.as_deref() != reason.as_ref().map(|r| r.to_string()).as_deref();
        if changed {
            match &reason {
                Some(r) => tracing::info!(reason = %r, "backfill throttled"),
                None if p.throttle.is_some() => tracing::info!("backfill resumed"),
                None => {}
            }
        }
        p.throttle = reason.as_ref().map(|r| r.to_string());
        p.throttle_kind = reason.as_ref().map(|r| r.kind());
        if changed {
            crate::metrics::throttle(p.throttle_kind);
            if reason.is_some() {
                for m in &p.mirrors {
                    crate::metrics::backfill_rate(m.mirror, 0.0);
                }
            }
        }
        Ok(reason)
    }

    async fn read_signals(&self, client: &Client) -> Result<Signals, ApplyError> {
        let err = |e: tokio_postgres::Error| ApplyError::Session {
            action: error_policy::for_pg(&e),
            message: format!("reading throttle signals: {}", pg_message(&e)),
            sqlstate: e.code().map(|c| c.code().to_string()),
        };
        let mut signals = Signals {
            apply_lag: self.live_lag.lag(),
            paused: match &self.control {
                Some(rx) => rx.borrow().paused,
                None => state::backfill_paused(client, &self.spec_name)
                    .await
                    .map_err(err)?,
            },
            ..Default::default()
        };
        // Physical standbys only: logical walsenders (walshift's own stream,
        // subscriptions) have a logical slot and their own lag.
        let rows = client
            .query(
                "SELECT coalesce(nullif(r.application_name, ''), r.client_addr::text, r.pid::text),
                        extract(epoch FROM r.replay_lag)::float8,
                        coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn), 0)::float8
                 FROM pg_stat_replication r
                 LEFT JOIN pg_replication_slots s ON s.active_pid = r.pid
                 WHERE s.slot_type IS DISTINCT FROM 'logical'",
                &[],
            )
            .await
            .map_err(err)?;
        signals.standbys = rows
            .iter()
            .map(|r| Standby {
                name: r.get(0),
                replay_lag: r.get::<_, Option<f64>>(1).map(Duration::from_secs_f64),
                replay_lag_bytes: r.get::<_, f64>(2).max(0.0) as u64,
            })
            .collect();
        if self.limits.max_retained_wal.is_some() {
            let row = client
                .query_opt(
                    "SELECT slot_name::text, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::float8
                     FROM pg_replication_slots
                     WHERE slot_name <> $1 AND restart_lsn IS NOT NULL
                     ORDER BY 2 DESC LIMIT 1",
                    &[&self.slot],
                )
                .await
                .map_err(err)?;
            signals.max_other_slot = row.map(|r| (r.get(0), r.get::<_, f64>(1).max(0.0) as u64));
        }
        if let Some(q) = &self.limits.throttle_query {
            signals.query_value = Some(run_throttle_query(client, &q.sql).await?);
        }
        Ok(signals)
    }

    /// Runs one chunk of the first unfinished mirror. Mirrors are done one
    /// after the other: one table's locks and cache at a time.
    pub async fn step(&mut self, applier: &mut Applier) -> Result<(), ApplyError> {
        let Some(i) = self.states.iter().position(|s| !s.done) else {
            return Ok(());
        };
        let st = &mut self.states[i];
        // Under a rate cap a chunk holds at most one second's worth of rows,
        // so the pace is even rather than bursts followed by long sleeps.
        let rows = match self.limits.max_rows_per_second.filter(|c| *c > 0) {
            Some(cap) => st.sizer.rows().min(cap),
            None => st.sizer.rows(),
        };
        let started = Instant::now();
        let running: Vec<bool> = self.states.iter().map(|s| !s.done).collect();
        let st = &mut self.states[i];
        let Some(out) = applier
            .backfill_chunk_in(i, st.lower.as_deref(), rows as i64, &running)
            .await?
        else {
            // A two-way chunk that could not run now (the stream is far
            // behind): nothing moved.
            return Ok(());
        };
        st.sizer.observe(out.rows.max(1), out.elapsed);
        st.done = out.upper.is_none();
        st.lower = out.upper;
        {
            let now = Instant::now();
            let mut p = self.progress.lock().expect("progress lock");
            let mp = &mut p.mirrors[i];
            mp.rows_done += out.rows;
            mp.done = st.done;
            mp.chunk_rows = st.sizer.rows();
            st.samples.push((now, mp.rows_done));
            st.samples
                .retain(|(t, _)| now.duration_since(*t) <= RATE_WINDOW);
            if let (Some((t0, r0)), Some((t1, r1))) = (st.samples.first(), st.samples.last()) {
                let secs = t1.duration_since(*t0).as_secs_f64();
                if secs > 0.0 {
                    mp.rate = (r1 - r0) as f64 / secs;
                }
            }
            crate::metrics::backfill_progress(
                mp.mirror,
                out.rows,
                if st.done { 0.0 } else { mp.rate },
            );
            if st.done {
                tracing::info!(mirror = %mp.label, rows = mp.rows_done, "backfill of mirror complete");
            }
        }
        if self.states[i].done && applier.is_two_way() {
            // The chunks are over: nothing is left for the marks to guard.
            applier.forget_marks(i).await?;
        }
        // The rows-per-second cap: space chunks so the average stays under
        // it. The caller waits (see `pace`), applying live batches meanwhile.
        self.next_chunk_at = self
            .limits
            .max_rows_per_second
            .filter(|c| *c > 0)
            .map(|cap| started + Duration::from_secs_f64(out.rows as f64 / cap as f64));
        Ok(())
    }
}

/// The operator's throttle query: its first column of its first row, as a
/// number.
async fn run_throttle_query(client: &Client, sql: &str) -> Result<f64, ApplyError> {
    let msgs = client
        .simple_query(sql)
        .await
        .map_err(|e| ApplyError::Session {
            action: error_policy::for_pg(&e),
            message: format!("throttle query failed: {}", pg_message(&e)),
            sqlstate: e.code().map(|c| c.code().to_string()),
        })?;
    for m in msgs {
        if let SimpleQueryMessage::Row(row) = m {
            let text = row.get(0).unwrap_or("0");
            return text.trim().parse::<f64>().map_err(|_| ApplyError::Session {
                action: error_policy::Action::Stop,
                message: format!("throttle query returned {text:?}, not a number: make it return one numeric value"),
                sqlstate: None,
            });
        }
    }
    Err(ApplyError::Session {
        action: error_policy::Action::Stop,
        message: "throttle query returned no row: make it return one numeric value".into(),
        sqlstate: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_from_rate_and_estimate() {
        let mut m = MirrorProgress {
            rows_done: 250,
            rows_estimate: 1250,
            rate: 100.0,
            ..Default::default()
        };
        assert_eq!(m.eta(), Some(Duration::from_secs(10)));
        m.rate = 0.0;
        assert_eq!(m.eta(), None);
        m.done = true;
        assert_eq!(m.eta(), Some(Duration::ZERO));
    }

    #[test]
    fn live_lag_counts_from_the_oldest_unapplied_work() {
        let l = LiveLag::default();
        assert_eq!(l.lag(), Duration::ZERO);
        l.set(Some(Instant::now() - Duration::from_millis(300)));
        assert!(l.lag() >= Duration::from_millis(300));
        l.set(None);
        assert_eq!(l.lag(), Duration::ZERO);
    }
}
