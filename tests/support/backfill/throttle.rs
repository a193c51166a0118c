//! The throttle as walshift's log shows it ("backfill throttled" with a reason, "backfill
//! resumed"), the "history stays still" window, and WAL that keeps coming for a paused standby.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Checkpoint, Scenario};
use crate::support::Database;
use crate::support::process::Run;

/// How long a throttle (or its end) may take to show in the log: signals are read every
/// 500 ms, and a standby's replay lag needs a status reply to move.
pub const THROTTLE_WITHIN: Duration = Duration::from_secs(20);

/// A throttle transition logged by walshift.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ThrottleEvent {
    Throttled(String),
    Resumed,
}

/// The JSON lines of walshift's output (other lines are skipped).
pub fn log_lines(ws: &Run) -> Vec<Value> {
    ws.stderr()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// A field of a tracing JSON line (`fields.<key>`, or top level).
pub fn field<'v>(line: &'v Value, key: &str) -> Option<&'v str> {
    line.get("fields")
        .and_then(|f| f.get(key))
        .or_else(|| line.get(key))
        .and_then(|v| v.as_str())
}

/// "backfill throttled" (with its reason) and "backfill resumed", in order.
pub fn throttle_events(ws: &Run) -> Vec<ThrottleEvent> {
    log_lines(ws)
        .iter()
        .filter_map(|l| match field(l, "message") {
            Some("backfill throttled") => Some(ThrottleEvent::Throttled(
                field(l, "reason").unwrap_or("<no reason field>").to_owned(),
            )),
            Some("backfill resumed") => Some(ThrottleEvent::Resumed),
            _ => None,
        })
        .collect()
}

/// Until the log says "backfill throttled" with a reason `matches` accepts; returns the
/// event's index and reason.
pub async fn wait_throttled(
    ws: &Run,
    what: &str,
    matches: impl Fn(&str) -> bool,
) -> (usize, String) {
    let deadline = Instant::now() + THROTTLE_WITHIN;
    loop {
        ws.ensure_running();
        let found = throttle_events(ws)
            .into_iter()
            .enumerate()
            .find_map(|(i, e)| match e {
                ThrottleEvent::Throttled(r) if matches(&r) => Some((i, r)),
                _ => None,
            });
        if let Some(found) = found {
            return found;
        }
        if Instant::now() >= deadline {
            ws.fail(&format!(
                "no \"backfill throttled\" line with reason {what} within {THROTTLE_WITHIN:?}; \
                 throttle events so far: {:?}",
                throttle_events(ws)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Until the log says "backfill resumed" after event `after`.
pub async fn wait_resumed(ws: &Run, after: usize) {
    let deadline = Instant::now() + THROTTLE_WITHIN;
    loop {
        ws.ensure_running();
        if resumed_after(ws, after) {
            return;
        }
        if Instant::now() >= deadline {
            ws.fail(&format!(
                "no \"backfill resumed\" within {THROTTLE_WITHIN:?} after event {after}; \
                 throttle events: {:?}",
                throttle_events(ws)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn resumed_after(ws: &Run, after: usize) -> bool {
    throttle_events(ws)
        .iter()
        .skip(after + 1)
        .any(|e| *e == ThrottleEvent::Resumed)
}

/// Holds for `window` that no checkpoint moves and the log does not say "backfill resumed"
/// after event `after`; polls every 100 ms and fails at the first change. Returns the
/// checkpoints it held at.
pub async fn assert_still(
    s: &Scenario,
    ws: &Run,
    after: usize,
    window: Duration,
) -> Vec<Checkpoint> {
    let held = s.checkpoints().await;
    let started = Instant::now();
    while started.elapsed() < window {
        ws.ensure_running();
        let now = s.checkpoints().await;
        if now != held {
            ws.fail(&format!(
                "the backfill advanced while throttled, {:?} into the window:\n  before: {held:?}\n  \
                 now:    {now:?}\n  throttle events: {:?}",
                started.elapsed(),
                throttle_events(ws)
            ));
        }
        if resumed_after(ws, after) {
            ws.fail(&format!(
                "the throttle lifted {:?} into the window, before the test lifted its cause; \
                 throttle events: {:?}",
                started.elapsed(),
                throttle_events(ws)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    held
}

// ---------------------------------------------------------------------------------------------
// WAL that keeps coming

/// Writes a little WAL every 50 ms on its own connection (into a table no mirror reads), so a
/// paused standby keeps falling behind: `pg_stat_replication.replay_lag` only grows while
/// there is WAL the standby has received and not replayed.
pub struct WalGenerator {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<u64>,
}

impl WalGenerator {
    pub async fn start(db: &Database) -> WalGenerator {
        let client = db.connect().await;
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS public.wal_filler (n int, pad text)")
            .await
            .unwrap_or_else(|e| panic!("create wal_filler: {e:?}"));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut commits = 0u64;
            loop {
                client
                    .batch_execute(
                        "INSERT INTO public.wal_filler SELECT g, repeat('x', 100) FROM generate_series(1, 20) AS g",
                    )
                    .await
                    .unwrap_or_else(|e| panic!("write WAL filler: {e:?}"));
                commits += 1;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = stopped.changed() => return commits,
                }
            }
        });
        WalGenerator { stop, task }
    }

    /// Stops it; returns how many transactions it committed.
    pub async fn stop(self) -> u64 {
        let _ = self.stop.send(true);
        self.task.await.expect("the WAL generator panicked")
    }
}
