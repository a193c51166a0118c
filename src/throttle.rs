//! When history copying pauses, and why. Pure: signals in, decision out.
//!
//! The backfill re-evaluates this between chunks. Live mirroring never
//! pauses; only history does. The reason is always a sentence an operator can
//! act on ("standby s1 replay lag 7.2s > 5s"), shown by status, logs and
//! metrics alike.

use std::fmt;
use std::time::Duration;

use crate::spec::BackfillLimits;

/// One standby as `pg_stat_replication` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Standby {
    pub name: String,
    /// `replay_lag`; `None` when the standby has nothing to replay.
    pub replay_lag: Option<Duration>,
    /// `pg_current_wal_lsn() - replay_lsn`.
    pub replay_lag_bytes: u64,
}

/// Everything the decision looks at, read between chunks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Signals {
    pub standbys: Vec<Standby>,
    /// The other replication slot retaining the most WAL, and how much.
    pub max_other_slot: Option<(String, u64)>,
    /// How far walshift's live apply is behind the stream.
    pub apply_lag: Duration,
    /// The operator's throttle query's value.
    pub query_value: Option<f64>,
    /// Paused by the operator (`walshift ctl pause`).
    pub paused: bool,
}

/// Why the backfill is waiting.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    Paused,
    ReplayLag {
        standby: String,
        lag: Duration,
        max: Duration,
    },
    ReplayLagBytes {
        standby: String,
        bytes: u64,
        max: u64,
    },
    RetainedWal {
        slot: String,
        bytes: u64,
        max: u64,
    },
    ApplyLag {
        lag: Duration,
        max: Duration,
    },
    Query {
        value: f64,
        max: f64,
    },
    RateLimit {
        rows_per_second: u64,
    },
}

impl Reason {
    /// A short stable label for metrics (`walshift_backfill_throttled{reason=...}`).
    pub fn kind(&self) -> &'static str {
        match self {
            Reason::Paused => "paused",
            Reason::ReplayLag { .. } => "replica_lag",
            Reason::ReplayLagBytes { .. } => "replica_lag_bytes",
            Reason::RetainedWal { .. } => "retained_wal",
            Reason::ApplyLag { .. } => "apply_lag",
            Reason::Query { .. } => "query",
            Reason::RateLimit { .. } => "rate_limit",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Paused => write!(
                f,
                "paused by the operator (walshift ctl resume to continue)"
            ),
            Reason::ReplayLag { standby, lag, max } => write!(
                f,
                "standby {standby} replay lag {:.1}s > {}",
                lag.as_secs_f64(),
                human_duration(*max)
            ),
            Reason::ReplayLagBytes {
                standby,
                bytes,
                max,
            } => write!(
                f,
                "standby {standby} is {} behind > {}",
                human_bytes(*bytes),
                human_bytes(*max)
            ),
            Reason::RetainedWal { slot, bytes, max } => write!(
                f,
                "slot {slot} retains {} of WAL > {}",
                human_bytes(*bytes),
                human_bytes(*max)
            ),
            Reason::ApplyLag { lag, max } => write!(
                f,
                "live apply lag {:.1}s > {} (history waits for live changes)",
                lag.as_secs_f64(),
                human_duration(*max)
            ),
            Reason::Query { value, max } => write!(f, "throttle query returned {value} > {max}"),
            Reason::RateLimit { rows_per_second } => {
                write!(f, "rate limit {rows_per_second} rows/s")
            }
        }
    }
}

/// The first reason to wait, in a fixed order: the operator's word first,
/// then the health of others (standbys, other slots), then our own lag.
pub fn decide(signals: &Signals, limits: &BackfillLimits) -> Option<Reason> {
    if signals.paused {
        return Some(Reason::Paused);
    }
    for s in &signals.standbys {
        if let Some(lag) = s.replay_lag {
            if lag > limits.max_replica_lag {
                return Some(Reason::ReplayLag {
                    standby: s.name.clone(),
                    lag,
                    max: limits.max_replica_lag,
                });
            }
        }
        if let Some(max) = limits.max_replica_lag_bytes {
            if s.replay_lag_bytes > max {
                return Some(Reason::ReplayLagBytes {
                    standby: s.name.clone(),
                    bytes: s.replay_lag_bytes,
                    max,
                });
            }
        }
    }
    if let (Some(max), Some((slot, bytes))) = (limits.max_retained_wal, &signals.max_other_slot) {
        if *bytes > max {
            return Some(Reason::RetainedWal {
                slot: slot.clone(),
                bytes: *bytes,
                max,
            });
        }
    }
    if signals.apply_lag > limits.max_apply_lag {
        return Some(Reason::ApplyLag {
            lag: signals.apply_lag,
            max: limits.max_apply_lag,
        });
    }
    if let (Some(q), Some(value)) = (&limits.throttle_query, signals.query_value) {
        if value > q.max {
            return Some(Reason::Query { value, max: q.max });
        }
    }
    None
}

/// Chunk size that steers toward a target statement time.
///
/// After each chunk the size is scaled by target/elapsed, but by at most 2x
/// up or 4x down per step: one slow chunk (a lock wait, a cold cache) should
/// not collapse the size, while a real slowdown still brings it down fast.
#[derive(Debug, Clone)]
pub struct ChunkSizer {
    rows: u64,
    min: u64,
    max: u64,
    target: Duration,
}

impl ChunkSizer {
    pub fn new(limits: &BackfillLimits) -> Self {
        let min = limits.min_chunk_rows.max(1);
        let max = limits.max_chunk_rows.max(min);
        ChunkSizer {
            rows: 1000u64.clamp(min, max),
            min,
            max,
            target: limits.chunk_target_time,
        }
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Records how long a chunk of `rows` rows took and returns the next size.
    pub fn observe(&mut self, rows: u64, elapsed: Duration) -> u64 {
        if rows == 0 {
            return self.rows;
        }
        let elapsed = elapsed.max(Duration::from_micros(100));
        let ratio = (self.target.as_secs_f64() / elapsed.as_secs_f64()).clamp(0.25, 2.0);
        let next = (rows as f64 * ratio).round() as u64;
        self.rows = next.clamp(self.min, self.max);
        self.rows
    }

    /// New bounds and target (the operator changed them at runtime); the
    /// current size is kept within them.
    pub fn retarget(&mut self, limits: &BackfillLimits) {
        self.min = limits.min_chunk_rows.max(1);
        self.max = limits.max_chunk_rows.max(self.min);
        self.target = limits.chunk_target_time;
        self.rows = self.rows.clamp(self.min, self.max);
    }

    /// Sets the size directly (operator override).
    pub fn set(&mut self, rows: u64) {
        self.rows = rows.clamp(self.min, self.max);
    }
}

/// `5s`, `250ms`, `2m`.
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// `512B`, `3.0MB`, `1.5GB` (1024-based, as Postgres prints sizes).
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ThrottleQuery;

    fn limits() -> BackfillLimits {
        BackfillLimits {
            max_replica_lag_bytes: Some(64 << 20),
            max_retained_wal: Some(1 << 30),
            throttle_query: Some(ThrottleQuery {
                sql: "SELECT 1".into(),
                max: 10.0,
            }),
            ..BackfillLimits::default()
        }
    }

    #[test]
    fn healthy_signals_do_not_throttle() {
        assert_eq!(decide(&Signals::default(), &limits()), None);
    }

    #[test]
    fn each_signal_throttles_with_a_readable_reason() {
        let standby = |lag_s: u64, bytes: u64| Standby {
            name: "s1".into(),
            replay_lag: Some(Duration::from_millis(lag_s)),
            replay_lag_bytes: bytes,
        };
        let r = decide(
            &Signals {
                standbys: vec![standby(7200, 0)],
                ..Default::default()
            },
            &limits(),
        )
        .unwrap();
        assert_eq!(r.to_string(), "standby s1 replay lag 7.2s > 5s");
        assert_eq!(r.kind(), "replica_lag");

        let r = decide(
            &Signals {
                standbys: vec![standby(0, 100 << 20)],
                ..Default::default()
            },
            &limits(),
        )
        .unwrap();
        assert_eq!(r.to_string(), "standby s1 is 100.0MB behind > 64.0MB");

        let r = decide(
            &Signals {
                max_other_slot: Some(("old_sub".into(), 2 << 30)),
                ..Default::default()
            },
            &limits(),
        )
        .unwrap();
        assert_eq!(r.to_string(), "slot old_sub retains 2.0GB of WAL > 1.0GB");

        let r = decide(
            &Signals {
                apply_lag: Duration::from_secs(9),
                ..Default::default()
            },
            &limits(),
        )
        .unwrap();
        assert_eq!(r.kind(), "apply_lag");

        let r = decide(
            &Signals {
                query_value: Some(11.0),
                ..Default::default()
            },
            &limits(),
        )
        .unwrap();
        assert_eq!(r.to_string(), "throttle query returned 11 > 10");

        let r = decide(
            &Signals {
                paused: true,
                standbys: vec![standby(9000, 0)],
                ..Default::default()
            },
            &limits(),
        )
        .unwrap();
        assert_eq!(r, Reason::Paused, "the operator's word comes first");
    }

    #[test]
    fn chunk_size_steers_toward_the_target_within_bounds() {
        let mut s = ChunkSizer::new(&BackfillLimits::default());
        assert_eq!(s.rows(), 1000);
        // Fast chunks grow the size, at most 2x per step.
        assert_eq!(s.observe(1000, Duration::from_millis(10)), 2000);
        // On target: unchanged.
        assert_eq!(s.observe(2000, Duration::from_millis(200)), 2000);
        // Slow: shrinks, at most 4x per step.
        assert_eq!(s.observe(2000, Duration::from_secs(10)), 500);
        // Never below min or above max.
        for _ in 0..20 {
            s.observe(s.rows(), Duration::from_secs(100));
        }
        assert_eq!(s.rows(), 100);
        for _ in 0..40 {
            s.observe(s.rows(), Duration::from_millis(1));
        }
        assert_eq!(s.rows(), 50_000);
    }

    #[test]
    fn human_units() {
        assert_eq!(human_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(human_duration(Duration::from_secs(120)), "2m");
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(3 << 20), "3.0MB");
    }
}
