//! The backfill ETA that `check` prints.
//!
//! The data scan ([`crate::scan`]) runs the backfill's own chunk statement
//! over the table in key order, with the backfill's chunk sizes
//! ([`crate::throttle::ChunkSizer`]) and session settings, each chunk rolled
//! back; its chunks after the first (a warm-up) are timed, and the time is
//! extrapolated by row count. With `--scan off` a few chunks are still timed
//! for this. The spec's `max_rows_per_second` is the backfill's pacing: the
//! ETA is never faster than it. Throttling by lag and live batches between
//! chunks are not counted ("unthrottled").
//!
//! Why not one sample chunk: the former estimate timed the first 2000 keys
//! once, on `check`'s own session, and reported the demo's order backfill
//! at 29 s for 4 s. What the code shows as the likely reasons (not measured
//! apart): that session had JIT on, which the applier turns off because JIT
//! compiled chunk statements at up to 600 ms (benches/backfill.rs), and the
//! one chunk carried the planning and cold caches a backfill pays once.
//!
//! What it still leaves out, measured by
//! `cargo nextest run --test check --run-ignored only the_estimate
//! --no-capture`: the run commits each chunk with its checkpoint, and a
//! walsender decodes its writes on the same machine; on a shared 2-core
//! machine the real one-way backfill took 0.5 to 2 times the estimate.

use std::time::Duration;

use crate::scan::Timing;

/// One mirror's estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub mirror: usize,
    /// Source rows in the timed chunks, and their time.
    pub sample_rows: u64,
    pub sample_time: Duration,
    pub chunks: u32,
    /// Source rows to backfill: exact when the scan covered the table.
    pub rows_estimate: i64,
    /// The rows-per-second cap made the estimate longer than the timing.
    pub capped: bool,
    /// `None` when there is nothing to backfill or nothing was timed.
    pub eta: Option<Duration>,
}

impl Estimate {
    /// The ETA of `rows` source rows at the pace of `timing`, no faster
    /// than `max_rows_per_second`.
    pub fn from_timing(
        mirror: usize,
        timing: &Timing,
        rows: i64,
        max_rows_per_second: Option<u64>,
    ) -> Estimate {
        let measured = extrapolate(timing.rows as i64, timing.elapsed, rows);
        let floor = max_rows_per_second
            .filter(|c| *c > 0 && rows > 0)
            .map(|cap| Duration::from_secs_f64(rows as f64 / cap as f64));
        let (eta, capped) = match (measured, floor) {
            (Some(m), Some(f)) if f > m => (Some(f), true),
            (None, Some(f)) if timing.rows > 0 => (Some(f), true),
            (m, _) => (m, false),
        };
        Estimate {
            mirror,
            sample_rows: timing.rows,
            sample_time: timing.elapsed,
            chunks: timing.chunks,
            rows_estimate: rows,
            capped,
            eta,
        }
    }

    pub fn rows_per_second(&self) -> Option<f64> {
        let secs = self.sample_time.as_secs_f64();
        (self.sample_rows > 0 && secs > 0.0).then(|| self.sample_rows as f64 / secs)
    }
}

/// Pure extrapolation: the time for `total` rows at the sampled rate.
pub fn extrapolate(sample_rows: i64, sample_time: Duration, total: i64) -> Option<Duration> {
    if sample_rows <= 0 || total <= 0 {
        return None;
    }
    Some(sample_time.mul_f64(total as f64 / sample_rows as f64))
}

/// `1h 02m`, `3m 20s`, `42s`, `4.2s`, `850ms`.
pub fn human_eta(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h {:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else if s >= 10 {
        format!("{s}s")
    } else if s >= 1 {
        // Whole seconds would be off by up to a half here.
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extrapolates_linearly() {
        assert_eq!(
            extrapolate(2000, Duration::from_millis(20), 1_000_000),
            Some(Duration::from_secs(10))
        );
        assert_eq!(extrapolate(0, Duration::from_millis(1), 10), None);
        assert_eq!(extrapolate(10, Duration::from_millis(1), 0), None);
    }

    #[test]
    fn the_rate_cap_is_a_floor() {
        let t = Timing {
            rows: 1000,
            elapsed: Duration::from_millis(100),
            chunks: 2,
        };
        let e = Estimate::from_timing(1, &t, 100_000, None);
        assert_eq!(e.eta, Some(Duration::from_secs(10)));
        assert!(!e.capped);
        let e = Estimate::from_timing(1, &t, 100_000, Some(1000));
        assert_eq!(e.eta, Some(Duration::from_secs(100)));
        assert!(e.capped);
        let e = Estimate::from_timing(1, &t, 100_000, Some(1_000_000));
        assert_eq!(e.eta, Some(Duration::from_secs(10)));
        assert_eq!(Estimate::from_timing(1, &t, 0, Some(10)).eta, None);
    }

    #[test]
    fn eta_reads_like_a_clock() {
        assert_eq!(human_eta(Duration::from_secs(3720)), "1h 02m");
        assert_eq!(human_eta(Duration::from_secs(200)), "3m 20s");
        assert_eq!(human_eta(Duration::from_secs(42)), "42s");
        assert_eq!(human_eta(Duration::from_millis(4240)), "4.2s");
        assert_eq!(human_eta(Duration::from_millis(850)), "850ms");
    }
}
