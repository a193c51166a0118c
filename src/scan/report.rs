//! What the data scan found, per mirror, and how `check` prints it.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use crate::estimate::{Estimate, human_eta};

/// How many example keys a kind of failure shows.
pub const EXAMPLES: usize = 3;

/// One kind of failure of a mirror: rows whose mapping or write failed the
/// same way (SQLSTATE and message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureKind {
    pub sqlstate: String,
    pub message: String,
    /// Keys (or rows) failing this way.
    pub count: u64,
    /// `count` is a lower bound (the question returned its first groups only).
    pub at_least: bool,
    /// Up to [`EXAMPLES`] keys, as `check` shows keys (`17`, `(1, a)`).
    pub examples: Vec<String>,
}

/// Failures by kind, in the order they were first met.
#[derive(Clone, Debug, Default)]
pub(super) struct Kinds {
    order: Vec<(String, String)>,
    kinds: BTreeMap<(String, String), FailureKind>,
}

impl Kinds {
    pub(super) fn add(&mut self, sqlstate: &str, message: &str, count: u64, examples: &[String]) {
        let id = (sqlstate.to_string(), message.to_string());
        let kind = self.kinds.entry(id.clone()).or_insert_with(|| {
            self.order.push(id);
            FailureKind {
                sqlstate: sqlstate.to_string(),
                message: message.to_string(),
                count: 0,
                at_least: false,
                examples: Vec::new(),
            }
        });
        kind.count += count;
        for e in examples {
            if kind.examples.len() < EXAMPLES {
                kind.examples.push(e.clone());
            }
        }
    }

    pub(super) fn mark_at_least(&mut self, sqlstate: &str, message: &str) {
        if let Some(k) = self
            .kinds
            .get_mut(&(sqlstate.to_string(), message.to_string()))
        {
            k.at_least = true;
        }
    }

    pub(super) fn into_vec(mut self) -> Vec<FailureKind> {
        self.order
            .iter()
            .filter_map(|id| self.kinds.remove(id))
            .collect()
    }
}

/// Time spent in chunk statements of the ordered pass, for the ETA: the
/// chunks after the first (a warm-up: plans, caches), or the first alone
/// when there was no other.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timing {
    pub rows: u64,
    pub elapsed: Duration,
    pub chunks: u32,
}

/// One mirror's scan.
#[derive(Clone, Debug, PartialEq)]
pub struct MirrorScan {
    pub mirror: usize,
    pub label: String,
    /// `pg_class.reltuples` of the source (-1 unknown).
    pub rows_estimate: i64,
    /// Source rows covered in key order, from the start of the table.
    pub covered: u64,
    /// Every source row was covered.
    pub complete: bool,
    /// Rows of the spread sample of the rest (when not complete).
    pub sampled: u64,
    pub elapsed: Duration,
    pub failures: Vec<FailureKind>,
    /// A statement failed for a reason that is not about a row (a lock held
    /// elsewhere, a privilege): the scan of this mirror stopped there.
    pub stopped: Option<String>,
    /// What was not scanned, and why.
    pub notes: Vec<String>,
    pub timing: Timing,
    /// Only timed (`--scan off`): failures are those of the timed chunks.
    pub timing_only: bool,
}

impl MirrorScan {
    pub fn passed(&self) -> bool {
        self.failures.is_empty() && self.stopped.is_none()
    }

    /// Share of the estimated rows covered in key order, in percent.
    pub fn covered_percent(&self) -> f64 {
        if self.complete {
            return 100.0;
        }
        let total = self.rows_estimate.max(self.covered as i64).max(1) as f64;
        (self.covered as f64 * 100.0 / total).min(100.0)
    }

    /// Source rows the backfill will cover: exact when the scan covered
    /// them all, else the estimate.
    pub fn rows_to_backfill(&self) -> i64 {
        if self.complete {
            self.covered as i64
        } else {
            self.rows_estimate.max(self.covered as i64)
        }
    }
}

/// Every mirror's scan, in spec order.
#[derive(Clone, Debug, PartialEq)]
pub struct ScanReport {
    pub mirrors: Vec<MirrorScan>,
    /// The budget as given (`60s`, `full`, `off`).
    pub budget: String,
}

impl ScanReport {
    pub fn passed(&self) -> bool {
        self.mirrors.iter().all(MirrorScan::passed)
    }

    /// The backfill ETA of each mirror from its timed chunks, with the
    /// spec's rows-per-second cap.
    pub fn estimates(&self, max_rows_per_second: Option<u64>) -> Vec<Estimate> {
        self.mirrors
            .iter()
            .map(|m| {
                Estimate::from_timing(
                    m.mirror,
                    &m.timing,
                    m.rows_to_backfill(),
                    max_rows_per_second,
                )
            })
            .collect()
    }

    /// The scan's lines for the operator: per mirror what was covered and
    /// each kind of failure.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for m in &self.mirrors {
            render_mirror(&mut out, m, &self.budget);
        }
        out
    }
}

fn render_mirror(out: &mut String, m: &MirrorScan, budget: &str) {
    let took = human_eta(m.elapsed);
    let coverage = if m.timing_only {
        format!(
            "not scanned (--scan off); {} row(s) timed in {took}",
            m.covered
        )
    } else if m.complete {
        format!("all {} row(s) in {took}", m.covered)
    } else {
        format!(
            "{} of ~{} row(s) ({:.1}%) in {took}, then the budget ({budget}) ran out; a spread \
             sample of {} of the other rows",
            m.covered,
            m.rows_estimate.max(m.covered as i64),
            m.covered_percent(),
            m.sampled
        )
    };
    let verdict = if m.passed() {
        "no failures".to_string()
    } else {
        let rows: u64 = m.failures.iter().map(|f| f.count).sum();
        format!(
            "FAILED: {rows} failing row(s) in {} kind(s)",
            m.failures.len()
        )
    };
    let _ = writeln!(
        out,
        "scan, mirror #{} ({}): {coverage}: {verdict}",
        m.mirror, m.label
    );
    for f in &m.failures {
        let _ = writeln!(
            out,
            "  {}{} row(s): {} (SQLSTATE {}); e.g. key {}",
            if f.at_least { "at least " } else { "" },
            f.count,
            f.message,
            f.sqlstate,
            f.examples.join("; ")
        );
    }
    if let Some(why) = &m.stopped {
        let _ = writeln!(out, "  FAILED: the scan stopped: {why}");
    }
    for note in &m.notes {
        let _ = writeln!(out, "  note: {note}");
    }
}

/// A key as `check` shows it: `17`, or `(1, a)` for several columns.
pub(super) fn show_key(key: &[String]) -> String {
    match key {
        [one] => one.clone(),
        _ => format!("({})", key.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_count_and_keep_three_examples() {
        let mut k = Kinds::default();
        for key in ["1", "2", "3", "4"] {
            k.add("22P02", "bad", 1, &[key.to_string()]);
        }
        k.add("23502", "null", 1, &["9".into()]);
        let v = k.into_vec();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].count, 4);
        assert_eq!(v[0].examples, vec!["1", "2", "3"]);
        assert_eq!(v[1].sqlstate, "23502");
    }

    #[test]
    fn keys_show_like_rows() {
        assert_eq!(show_key(&["7".into()]), "7");
        assert_eq!(show_key(&["1".into(), "a".into()]), "(1, a)");
    }
}
