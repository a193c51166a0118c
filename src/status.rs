//! `walshift status` and the one definition of *ready* that `status`,
//! `wait` (and `/readyz`) share: backfill complete, a `run` alive, and
//! watermark lag under the bound.
//!
//! Everything here is read from the database (walshift's state, which a
//! running `run` refreshes every second, and `pg_replication_slots`), so it
//! works from any host and whether or not a `run` is alive.

use std::time::Duration;

use serde::Serialize;
use tokio_postgres::Client;

use crate::estimate::human_eta;
use crate::spec::Spec;
use crate::state;
use crate::throttle::human_bytes;

/// A heartbeat older than this means no `run` is alive (it writes one every
/// second).
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(5);

/// The documented `status --json` shape. Fields are only ever added.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Status {
    pub name: String,
    /// `not-started`, `backfilling`, `mirroring`, `stopped`, `cut-over`.
    pub phase: String,
    /// Ready under the default bound (`wait` and `/readyz` may pass another).
    pub ready: bool,
    pub run: RunState,
    pub lag: LagState,
    pub backfill: BackfillState,
    pub slot: SlotState,
    pub cutover: CutoverState,
    /// The two-way mirrors of the spec (empty when it has none).
    pub two_way: Vec<MirrorTwoWay>,
    /// Keys held because their rows fail the mapping or the target's
    /// constraints (empty when none is): not ready while any is.
    pub held: Vec<MirrorHeld>,
}

/// A mirror's held keys.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct MirrorHeld {
    pub mirror: i32,
    pub count: i64,
    /// The first few (oldest first), with their errors.
    pub examples: Vec<HeldExample>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct HeldExample {
    /// The key's columns as text.
    pub key: Vec<String>,
    /// `f` forward (old shape to new), `r` the way back of a two-way mirror.
    pub dir: String,
    pub sqlstate: String,
    pub error: String,
    /// When it was first held.
    pub since: String,
}

/// Held keys `status` shows per mirror.
const HELD_EXAMPLES: i64 = 3;

/// A two-way mirror, since the migration began.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct MirrorTwoWay {
    pub mirror: i32,
    /// Keys both versions wrote before walshift had reconciled the first
    /// write (the later commit won in both shapes).
    pub conflicts: i64,
    /// Keys whose old shape was recomputed from the new one.
    pub reverse_keys: i64,
    /// Keys waiting for the next transaction (their row changed while
    /// walshift applied, or the stream was far behind).
    pub carried: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct CutoverState {
    /// When the switch committed (then the phase is `cut-over`).
    pub cut_over_at: Option<String>,
    /// `walshift ctl SPEC postpone-cutover` is in force.
    pub postponed: bool,
    /// The latest `walshift cutover` request, dry runs included.
    pub last: Option<LastCutover>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct LastCutover {
    pub id: i64,
    pub dry_run: bool,
    /// `requested`, `accepted`, `verifying`, `locking`, `draining`,
    /// `checking`, `done`, `failed`, `cancelled`.
    pub state: String,
    pub detail: Option<String>,
    pub freeze_ms: Option<f64>,
    pub requested_at: String,
    pub finished_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct RunState {
    /// A `run` wrote its heartbeat within the last 5 s and holds the slot.
    pub alive: bool,
    pub host: Option<String>,
    pub pid: Option<i32>,
    pub heartbeat_age_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct LagState {
    /// Watermark round trip (emit -> applied), seconds.
    pub seconds: Option<f64>,
    /// Server WAL position minus walshift's confirmed position.
    pub bytes: Option<i64>,
    pub measured_age_seconds: Option<f64>,
    /// Measured by a run that is alive now: otherwise the figures are the
    /// last ones a run recorded, `measured_age_seconds` ago.
    pub live: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct BackfillState {
    pub complete: bool,
    /// Chunks are being copied now: not complete, and a run alive.
    pub running: bool,
    pub paused: bool,
    /// Why history waits right now (`None` while it runs or when done).
    pub throttle: Option<String>,
    pub mirrors: Vec<MirrorBackfill>,
    /// The operator's `ctl set` overrides of `[backfill]` limits.
    pub overrides: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct MirrorBackfill {
    pub mirror: i32,
    pub rows_done: i64,
    pub rows_estimate: i64,
    pub chunks: i64,
    pub done: bool,
    pub rows_per_second: Option<f64>,
    pub eta_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct SlotState {
    pub name: String,
    pub exists: bool,
    pub active: bool,
    /// `reserved`, `extended`, `unreserved`, `lost` (pg_replication_slots).
    pub wal_status: Option<String>,
    /// WAL the slot keeps from being recycled.
    pub retained_bytes: Option<i64>,
    pub confirmed_flush_lsn: Option<String>,
    /// 17+: why the server invalidated the slot (`wal_removed`, ...).
    pub invalidation_reason: Option<String>,
    /// 17+: a failover slot, which standbys with `sync_replication_slots`
    /// copy; `None` before 17 (no such slots).
    pub failover: Option<bool>,
    /// 17+: the primary's `synchronized_standby_slots` (the physical slots
    /// of standbys that must have received WAL before logical decoding
    /// sends it); empty when unset.
    pub synchronized_standby_slots: Option<String>,
    /// Standbys asked whether they keep a synced copy of the slot (`status`
    /// asks each host of a multi-host `--db` that is not the primary).
    pub standbys: Vec<crate::topology::StandbyCopy>,
    /// The slot is lost and its resync has not finished: why.
    pub lost: Option<String>,
    /// Resynchronisations after the slot was lost, over the migration's life.
    pub resyncs: i64,
    /// The last one: when, and why.
    pub resynced_at: Option<String>,
    pub resync_reason: Option<String>,
}

/// Default lag bound for `ready` in `status` (and `wait` without `--max-lag`).
pub const DEFAULT_MAX_LAG: Duration = Duration::from_secs(1);

impl Status {
    /// The readiness definition, in one place.
    pub fn is_ready(&self, max_lag: Duration) -> bool {
        self.backfill.complete
            && self.held.is_empty()
            && self.run.alive
            && self.lag.seconds.is_some_and(|l| l <= max_lag.as_secs_f64())
            && self
                .lag
                .measured_age_seconds
                .is_some_and(|a| a <= HEARTBEAT_STALE.as_secs_f64())
    }

    /// What `wait` is waiting for, in words; `None` when ready.
    pub fn waiting_for(&self, max_lag: Duration) -> Option<String> {
        if self.phase == "not-started" {
            return Some("walshift run has not started for this spec in this database".into());
        }
        if !self.run.alive {
            return Some(
                "no walshift run is alive (no heartbeat in 5s, or the slot is inactive)".into(),
            );
        }
        if !self.backfill.complete {
            let done: i64 = self.backfill.mirrors.iter().map(|m| m.rows_done).sum();
            let est: i64 = self.backfill.mirrors.iter().map(|m| m.rows_estimate).sum();
            let mut s = format!("backfill: {done} of ~{est} rows");
            if let Some(t) = &self.backfill.throttle {
                s.push_str(&format!(" (throttled: {t})"));
            }
            return Some(s);
        }
        if !self.held.is_empty() {
            let n: i64 = self.held.iter().map(|h| h.count).sum();
            return Some(format!(
                "{n} key(s) held: their rows fail the mapping or the target's constraints (see \
                 `walshift status`); fix the rows or the spec, or run `walshift ctl SPEC retry`"
            ));
        }
        match self.lag.seconds {
            Some(l) if l <= max_lag.as_secs_f64() && self.is_ready(max_lag) => None,
            Some(l) => Some(format!("lag {:.3}s > {:.3}s", l, max_lag.as_secs_f64())),
            None => Some("no lag measured yet".into()),
        }
    }

    /// The one-screen summary.
    pub fn render(&self) -> String {
        let mut out = self.render_main();
        for t in &self.two_way {
            out.push_str(&format!(
                "  two-way:   mirror {}: {} conflict(s) resolved, {} key(s) written back, {} \
                 carried\n",
                t.mirror, t.conflicts, t.reverse_keys, t.carried
            ));
        }
        for h in &self.held {
            out.push_str(&format!(
                "  held:      mirror {}: {} key(s) fail on their data; every other key goes on \
                 (fix the rows, or `walshift ctl SPEC retry`)\n",
                h.mirror, h.count
            ));
            for e in &h.examples {
                let way = if e.dir == "r" { " (way back)" } else { "" };
                out.push_str(&format!(
                    "    ({}){way}: {} [{}] since {}\n",
                    e.key.join(", "),
                    e.error,
                    e.sqlstate,
                    e.since
                ));
            }
            if h.count > h.examples.len() as i64 {
                out.push_str(&format!(
                    "    and {} more\n",
                    h.count - h.examples.len() as i64
                ));
            }
        }
        out
    }

    fn render_main(&self) -> String {
        let mut out = String::new();
        let ready = if self.ready { "READY" } else { "not ready" };
        out.push_str(&format!(
            "walshift {}: {} ({ready})\n",
            self.name, self.phase
        ));
        match (&self.run.host, self.run.pid, self.run.alive) {
            (Some(h), Some(p), true) => {
                out.push_str(&format!("  run:       alive (pid {p} on {h})\n"))
            }
            _ => out.push_str("  run:       not running\n"),
        }
        out.push_str(&format!("  lag:       {}\n", self.render_lag()));
        self.render_backfill(&mut out);
        self.render_slot(&mut out);
        out.push_str(&format!("  cutover:   {}\n", self.render_cutover()));
        out
    }

    /// The `lag:` figure: live only while a run is alive, else the last
    /// run's figure as history.
    fn render_lag(&self) -> String {
        match (self.lag.seconds, self.lag.bytes) {
            (Some(s), Some(b)) if self.lag.live => format!(
                "{:.0} ms, {} behind",
                s * 1000.0,
                human_bytes(b.max(0) as u64)
            ),
            // No run alive: the last figures are history, not the lag now.
            (Some(s), _) => format!(
                "not measured: no run alive (the last run measured {:.0} ms, {} ago)",
                s * 1000.0,
                self.lag
                    .measured_age_seconds
                    .map(|a| human_eta(Duration::from_secs_f64(a.max(0.0))))
                    .unwrap_or_else(|| "?".into())
            ),
            _ => "not measured".into(),
        }
    }

    /// The `backfill:` line, the operator's `settings:` when there are
    /// any, and one line per mirror.
    fn render_backfill(&self, out: &mut String) {
        let bf = if self.backfill.complete {
            "complete".to_string()
        } else if !self.run.alive {
            let done: i64 = self.backfill.mirrors.iter().map(|m| m.rows_done).sum();
            let est: i64 = self.backfill.mirrors.iter().map(|m| m.rows_estimate).sum();
            format!("stopped at {done} of ~{est} rows: no run alive (it resumes with the next run)")
        } else if self.backfill.paused {
            "paused by the operator".to_string()
        } else if let Some(t) = &self.backfill.throttle {
            format!("throttled: {t}")
        } else {
            "running".to_string()
        };
        out.push_str(&format!("  backfill:  {bf}\n"));
        if !self.backfill.overrides.is_empty() {
            let list: Vec<String> = self
                .backfill
                .overrides
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            out.push_str(&format!("  settings:  {} (walshift ctl)\n", list.join(" ")));
        }
        for m in &self.backfill.mirrors {
            let pct = if m.rows_estimate > 0 {
                100.0 * m.rows_done as f64 / m.rows_estimate as f64
            } else if m.done {
                100.0
            } else {
                0.0
            };
            let tail = self.render_mirror_tail(m);
            out.push_str(&format!(
                "    mirror {}: {}/{} rows ({:.1}%), {} chunks, {tail}\n",
                m.mirror,
                m.rows_done,
                m.rows_estimate,
                pct.min(100.0),
                m.chunks
            ));
        }
    }

    /// How a mirror's backfill ends its line: done, stopped (no run
    /// alive), or its rate and ETA.
    fn render_mirror_tail(&self, m: &MirrorBackfill) -> String {
        if m.done {
            "done".to_string()
        } else if !self.run.alive {
            "stopped".to_string()
        } else {
            let rate = m
                .rows_per_second
                .map(|r| format!("{r:.0} rows/s"))
                .unwrap_or_else(|| "-".into());
            let eta = m
                .eta_seconds
                .map(|s| human_eta(Duration::from_secs_f64(s)))
                .unwrap_or_else(|| "?".into());
            format!("{rate}, ETA {eta}")
        }
    }

    /// The `slot:` line, then `slot lost:`, `resynced:` and `failover:`
    /// when they apply.
    fn render_slot(&self, out: &mut String) {
        let slot = if self.slot.exists {
            format!(
                "{} {}, wal_status {}{}, retains {}{}",
                self.slot.name,
                if self.slot.active {
                    "active"
                } else {
                    "inactive"
                },
                self.slot.wal_status.as_deref().unwrap_or("?"),
                self.slot
                    .invalidation_reason
                    .as_deref()
                    .map(|r| format!(" (invalidated: {r})"))
                    .unwrap_or_default(),
                self.slot
                    .retained_bytes
                    .map(|b| human_bytes(b.max(0) as u64))
                    .unwrap_or_else(|| "?".into()),
                match self.slot.failover {
                    Some(true) => ", failover slot",
                    Some(false) => ", not a failover slot",
                    None => "",
                }
            )
        } else {
            format!("{} does not exist", self.slot.name)
        };
        out.push_str(&format!("  slot:      {slot}\n"));
        if let Some(why) = &self.slot.lost {
            out.push_str(&format!(
                "  slot lost: {why}; the next run resynchronises (or stops, as [safety] \
                 on_slot_lost says)\n"
            ));
        }
        if self.slot.resyncs > 0 {
            out.push_str(&format!(
                "  resynced:  after slot lost at {}: {} ({} resync(s) in all)\n",
                self.slot.resynced_at.as_deref().unwrap_or("?"),
                self.slot.resync_reason.as_deref().unwrap_or("?"),
                self.slot.resyncs
            ));
        }
        if let Some(line) = crate::topology::render(&self.slot) {
            out.push_str(&format!("  failover:  {line}\n"));
        }
    }

    /// The `cutover:` figure: when it happened, else the latest request,
    /// and whether the operator postponed it.
    fn render_cutover(&self) -> String {
        let c = &self.cutover;
        let cut = match (&c.cut_over_at, &c.last) {
            (Some(at), last) => format!(
                "cut over at {at}{}",
                last.as_ref()
                    .and_then(|l| l.freeze_ms)
                    .map(|f| format!(", writes frozen {f:.1} ms"))
                    .unwrap_or_default()
            ),
            (None, Some(l)) => format!(
                "last request #{} ({}): {}{}{}",
                l.id,
                if l.dry_run { "dry run" } else { "cut-over" },
                l.state,
                l.freeze_ms
                    .map(|f| format!(", writes frozen {f:.1} ms"))
                    .unwrap_or_default(),
                l.detail
                    .as_deref()
                    .map(|d| format!(" - {d}"))
                    .unwrap_or_default()
            ),
            (None, None) => "not requested".into(),
        };
        let hold = if c.postponed {
            " (postponed by the operator)"
        } else {
            ""
        };
        format!("{cut}{hold}")
    }
}

/// Reads the status of `spec` from the database.
pub async fn read(client: &Client, spec: &Spec) -> Result<Status, tokio_postgres::Error> {
    let mut slot = read_slot(client, spec).await?;
    let Some(row) = migration_row(client, spec).await? else {
        return Ok(Status {
            name: spec.name.clone(),
            phase: "not-started".into(),
            ready: false,
            run: RunState::default(),
            lag: LagState::default(),
            backfill: BackfillState::default(),
            slot,
            cutover: CutoverState::default(),
            two_way: Vec::new(),
            held: Vec::new(),
        });
    };
    let row = StateRow(&row);
    slot.lost = row.str("slot_lost");
    slot.resyncs = row.i64("slot_resyncs").unwrap_or(0);
    slot.resynced_at = row.str("slot_resynced_at");
    slot.resync_reason = row.str("slot_resync_reason");
    let heartbeat_age = row.f64("heartbeat_age");
    let alive = slot.active && heartbeat_age.is_some_and(|a| a <= HEARTBEAT_STALE.as_secs_f64());
    let mirrors = mirror_backfill(client, spec, alive).await?;
    let complete = mirrors.len() == spec.mirrors.len() && mirrors.iter().all(|m| m.done);
    let two_way = two_way_state(client, spec).await?;
    let held = held_state(client, &spec.name).await?;
    let mut status = Status {
        name: spec.name.clone(),
        phase: String::new(),
        ready: false,
        run: RunState {
            alive,
            host: row.str("run_host"),
            pid: row.i64("run_pid").map(|p| p as i32),
            heartbeat_age_seconds: heartbeat_age,
        },
        lag: LagState {
            seconds: row.f64("lag_seconds"),
            bytes: row.i64("lag_bytes"),
            measured_age_seconds: row.f64("lag_age"),
            live: alive,
        },
        backfill: row.backfill(mirrors, complete, alive),
        slot,
        two_way,
        held,
        cutover: CutoverState {
            cut_over_at: row.str("cutover_at"),
            postponed: row.bool("cutover_postponed").unwrap_or(false),
            last: last_cutover(client, &spec.name).await?,
        },
    };
    status.phase = if status.cutover.cut_over_at.is_some() {
        "cut-over"
    } else if !alive {
        "stopped"
    } else if !complete {
        "backfilling"
    } else {
        "mirroring"
    }
    .into();
    status.ready = status.is_ready(DEFAULT_MAX_LAG);
    Ok(status)
}

/// The state of the replication slot of `spec` (defaults when it does not
/// exist), with the standbys that must confirm its changes.
async fn read_slot(client: &Client, spec: &Spec) -> Result<SlotState, tokio_postgres::Error> {
    let slot_name = spec.slot_name();
    let slot = client
        .query_opt(
            "SELECT active, wal_status::text,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint,
                    confirmed_flush_lsn::text,
                    to_jsonb(s)->>'invalidation_reason', (to_jsonb(s)->>'failover')::bool
             FROM pg_replication_slots AS s WHERE slot_name = $1",
            &[&slot_name],
        )
        .await?;
    let slot = match slot {
        Some(r) => SlotState {
            name: slot_name.clone(),
            exists: true,
            active: r.get(0),
            wal_status: r.get(1),
            retained_bytes: r.get(2),
            confirmed_flush_lsn: r.get(3),
            invalidation_reason: r.get(4),
            failover: r.get(5),
            ..Default::default()
        },
        None => SlotState {
            name: slot_name.clone(),
            ..Default::default()
        },
    };
    let mut slot = slot;
    slot.synchronized_standby_slots = crate::topology::synchronized_standby_slots(client).await?;
    Ok(slot)
}

/// The row of `spec` in `walshift.migration` as JSON, with the ages of the
/// last lag measurement and heartbeat; `None` before the first run (no state
/// table, or no row).
async fn migration_row(
    client: &Client,
    spec: &Spec,
) -> Result<Option<serde_json::Value>, tokio_postgres::Error> {
    let has_state = state::has_migration_table(client).await?;
    // As JSON, so a state table written by an older walshift (fewer
    // columns) still reads: missing fields are simply absent.
    let row: Option<serde_json::Value> = if has_state {
        client
            .query_opt(state::MIGRATION_ROW, &[&spec.name])
            .await?
            .and_then(|r| serde_json::from_str(&r.get::<_, String>(0)).ok())
    } else {
        None
    };
    Ok(row)
}

/// The backfill progress of each mirror of `spec`, by mirror name; rate and
/// ETA only while a run is `alive` (ETA 0 once done).
async fn mirror_backfill(
    client: &Client,
    spec: &Spec,
    alive: bool,
) -> Result<Vec<MirrorBackfill>, tokio_postgres::Error> {
    Ok(client
        .query(state::BACKFILL_PROGRESS, &[&spec.name])
        .await?
        .iter()
        .map(|r| {
            let (done_rows, est, done, rate): (i64, i64, bool, Option<f64>) =
                (r.get(1), r.get(2), r.get(4), r.get(5));
            let eta = if done {
                Some(0.0)
            } else {
                rate.filter(|r| *r > 0.0)
                    .map(|r| (est - done_rows).max(0) as f64 / r)
            };
            MirrorBackfill {
                mirror: r.get(0),
                rows_done: done_rows,
                rows_estimate: est,
                chunks: r.get(3),
                done,
                rows_per_second: rate.filter(|_| !done && alive),
                eta_seconds: eta.filter(|_| done || alive),
            }
        })
        .collect())
}

/// A `walshift.migration` row as JSON (see [`migration_row`]); a missing or
/// mistyped field reads as `None`.
struct StateRow<'a>(&'a serde_json::Value);

impl StateRow<'_> {
    /// A number, or a string that parses as one (`extract` gives numerics).
    fn f64(&self, k: &str) -> Option<f64> {
        self.0
            .get(k)
            .and_then(|v| v.as_f64().or_else(|| v.as_str()?.parse().ok()))
    }

    fn str(&self, k: &str) -> Option<String> {
        self.0.get(k).and_then(|v| v.as_str()).map(str::to_string)
    }

    fn i64(&self, k: &str) -> Option<i64> {
        self.0.get(k).and_then(|v| v.as_i64())
    }

    fn bool(&self, k: &str) -> Option<bool> {
        self.0.get(k).and_then(|v| v.as_bool())
    }

    /// The backfill as a whole: whether it is complete, running, paused or
    /// throttled (only while a run is `alive` and it is not complete), and
    /// the operator's setting overrides.
    fn backfill(&self, mirrors: Vec<MirrorBackfill>, complete: bool, alive: bool) -> BackfillState {
        BackfillState {
            complete,
            running: !complete && alive,
            paused: self.bool("backfill_paused").unwrap_or(false),
            throttle: if complete || !alive {
                None
            } else {
                self.str("throttle_reason")
            },
            mirrors,
            overrides: self
                .0
                .get("settings")
                .and_then(|v| v.as_object())
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// The latest cut-over request (none before the first, or when the state
/// predates cut-over).
async fn last_cutover(
    client: &Client,
    name: &str,
) -> Result<Option<LastCutover>, tokio_postgres::Error> {
    let exists = state::has_cutover_table(client).await?;
    if !exists {
        return Ok(None);
    }
    Ok(client
        .query_opt(state::LAST_CUTOVER, &[&name])
        .await?
        .map(|r| LastCutover {
            id: r.get(0),
            dry_run: r.get(1),
            state: r.get(2),
            detail: r.get(3),
            freeze_ms: r.get(4),
            requested_at: r.get(5),
            finished_at: r.get(6),
        }))
}

/// The held keys, per mirror with a few examples.
pub async fn held_state(
    client: &Client,
    name: &str,
) -> Result<Vec<MirrorHeld>, tokio_postgres::Error> {
    let keys = client
        .query_one(state::HAS_HELD_KEYS, &[])
        .await?
        .get::<_, bool>(0);
    if !keys {
        return Ok(Vec::new());
    }
    let rows = client
        .query(state::HELD_KEYS, &[&name, &HELD_EXAMPLES])
        .await?;
    let mut out: Vec<MirrorHeld> = Vec::new();
    for r in rows {
        let mirror: i32 = r.get(0);
        if out.last().is_none_or(|h| h.mirror != mirror) {
            out.push(MirrorHeld {
                mirror,
                count: r.get(1),
                examples: Vec::new(),
            });
        }
        let h = out.last_mut().expect("pushed above");
        h.examples.push(HeldExample {
            key: r.get(2),
            dir: r.get(3),
            sqlstate: r.get(4),
            error: r.get(5),
            since: r.get(6),
        });
    }
    Ok(out)
}

/// The two-way mirrors' counts, from the checkpoint rows and the key table.
async fn two_way_state(
    client: &Client,
    spec: &Spec,
) -> Result<Vec<MirrorTwoWay>, tokio_postgres::Error> {
    let numbers: Vec<i32> = spec
        .mirrors
        .iter()
        .filter(|m| m.is_two_way())
        .map(|m| m.number as i32)
        .collect();
    if numbers.is_empty() {
        return Ok(Vec::new());
    }
    let keys = state::has_keys_table(client).await?;
    let sql = state::two_way_counts(keys);
    let rows = client.query(&sql, &[&spec.name, &numbers]).await?;
    Ok(rows
        .iter()
        .map(|r| MirrorTwoWay {
            mirror: r.get(0),
            conflicts: r.get(1),
            reverse_keys: r.get(2),
            carried: r.get(3),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(complete: bool, alive: bool, lag: Option<f64>) -> Status {
        Status {
            name: "x".into(),
            phase: "mirroring".into(),
            ready: false,
            run: RunState {
                alive,
                ..Default::default()
            },
            lag: LagState {
                seconds: lag,
                bytes: Some(0),
                measured_age_seconds: Some(0.5),
                live: alive,
            },
            backfill: BackfillState {
                complete,
                ..Default::default()
            },
            slot: SlotState::default(),
            cutover: CutoverState::default(),
            two_way: Vec::new(),
            held: Vec::new(),
        }
    }

    #[test]
    fn ready_needs_backfill_a_live_run_and_small_lag() {
        let bound = Duration::from_secs(1);
        assert!(status(true, true, Some(0.2)).is_ready(bound));
        assert!(!status(false, true, Some(0.2)).is_ready(bound));
        assert!(!status(true, false, Some(0.2)).is_ready(bound));
        assert!(!status(true, true, Some(1.5)).is_ready(bound));
        assert!(!status(true, true, None).is_ready(bound));
        let mut stale = status(true, true, Some(0.1));
        stale.lag.measured_age_seconds = Some(30.0);
        assert!(!stale.is_ready(bound), "an old measurement proves nothing");
    }

    #[test]
    fn waiting_for_says_what_is_missing() {
        let bound = Duration::from_secs(1);
        assert!(
            status(false, true, Some(0.1))
                .waiting_for(bound)
                .unwrap()
                .starts_with("backfill")
        );
        assert!(
            status(true, false, Some(0.1))
                .waiting_for(bound)
                .unwrap()
                .contains("no walshift run")
        );
        assert_eq!(
            status(true, true, Some(2.0)).waiting_for(bound).unwrap(),
            "lag 2.000s > 1.000s"
        );
        assert_eq!(status(true, true, Some(0.1)).waiting_for(bound), None);
    }

    #[test]
    fn json_shape_is_stable() {
        let v = serde_json::to_value(status(true, true, Some(0.1))).unwrap();
        for key in ["name", "phase", "ready", "run", "lag", "backfill", "slot"] {
            assert!(v.get(key).is_some(), "{key} missing");
        }
        assert!(v["lag"].get("seconds").is_some() && v["lag"].get("bytes").is_some());
        assert!(v["backfill"].get("mirrors").is_some());
    }
}
