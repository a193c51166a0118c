//! The backfill ETA that `check` prints.
//!
//! For each mirror it runs the real chunk statement over the first
//! `SAMPLE_ROWS` keys inside a transaction that is rolled back, times it, and
//! extrapolates to the table's estimated size. The sample takes row locks on
//! those rows for the few milliseconds it runs (as a chunk would) and leaves
//! nothing behind: the transaction never commits.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::catalog::{MirrorKind, MirrorPlan};
use crate::mirror::bind::Args;
use crate::mirror::sql::{self, Scope};

/// Rows timed per mirror.
pub const SAMPLE_ROWS: i64 = 2000;

/// One mirror's estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub mirror: usize,
    pub sample_rows: i64,
    pub sample_time: Duration,
    pub rows_estimate: i64,
    /// `None` when the table is empty or unanalyzed.
    pub eta: Option<Duration>,
}

impl Estimate {
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

/// Times the chunk statement of `plan` on a sample, rolled back.
pub async fn estimate(
    client: &mut Client,
    plan: &MirrorPlan,
) -> Result<Estimate, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let bound = sql::chunk_upper_bound(&plan.source, &plan.key, false);
    let upper: Option<Vec<String>> = tx
        .query_opt(
            &bound.sql,
            &Args {
                count: SAMPLE_ROWS,
                ..Default::default()
            }
            .bind(&bound.params),
        )
        .await?
        .map(|r| (0..plan.key.len()).map(|i| r.get::<_, String>(i)).collect());
    // Fewer rows than the sample: the whole table is the sample.
    let sample_rows = match &upper {
        Some(_) => SAMPLE_ROWS,
        None => {
            let c = sql::range_count(&plan.source, &plan.key, false);
            tx.query_one(&c.sql, &[]).await?.get::<_, i64>(0)
        }
    };
    let scope = Scope::Range {
        lower: false,
        upper: upper.is_some(),
    };
    let stmt = match &plan.kind {
        MirrorKind::Set(p) => sql::set_apply(p, scope),
        MirrorKind::Rows(p) => sql::rows_apply(p, scope),
    };
    let args = Args {
        upper: upper.as_deref(),
        ..Default::default()
    };
    let params = args.bind(&stmt.params);
    let started = Instant::now();
    tx.execute(&stmt.sql, &params).await?;
    let sample_time = started.elapsed();
    tx.rollback().await?;
    Ok(Estimate {
        mirror: plan.number,
        sample_rows,
        sample_time,
        rows_estimate: plan.estimated_rows,
        eta: extrapolate(
            sample_rows,
            sample_time,
            plan.estimated_rows.max(sample_rows),
        ),
    })
}

/// `1h 02m`, `3m 20s`, `42s`, `850ms`.
pub fn human_eta(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h {:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else if s >= 1 {
        format!("{s}s")
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
    fn eta_reads_like_a_clock() {
        assert_eq!(human_eta(Duration::from_secs(3720)), "1h 02m");
        assert_eq!(human_eta(Duration::from_secs(200)), "3m 20s");
        assert_eq!(human_eta(Duration::from_secs(42)), "42s");
        assert_eq!(human_eta(Duration::from_millis(850)), "850ms");
    }
}
