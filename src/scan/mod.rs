//! `walshift check`'s data scan: every mapping over the existing rows,
//! within a time budget, before `run` meets them (docs/design.md, "The data
//! scan").
//!
//! ```text
//!  BEGIN (rolled back); SAVEPOINT walshift_scan
//!   per mirror, in key order, chunk sizes as the backfill's:
//!     bound ─▶ the read-only evaluation of the chunk (mirror/sql/evaluate.rs):
//!               rows the constraints refuse come back by key (NOT NULL, length, CHECK);
//!               a value the mapping cannot compute fails it: the chunk's keys, split in
//!               halves until each failing key is alone ─▶ kind, count, examples
//!     a few chunks, spread over the pass: also the backfill's own chunk statement,
//!               timed (the ETA) and rolled back to the savepoint at once
//!   budget out: coverage, then a TABLESAMPLE SYSTEM sample of the rest, by keys
//!   unique indexes: duplicates among computed values (and, rows mode,
//!   collisions with existing target rows of other keys) over the covered range
//!  ROLLBACK
//! ```
//!
//! The scan reads: it takes no row locks and writes no WAL, so a scan of a
//! production table for a minute costs that table nothing but reads. Only
//! the timed chunks ([`timed`]: a few dozen at most) run the write the backfill
//! will run, each rolled back at once: the ETA is that statement's time, and
//! what the evaluation cannot see (foreign keys, triggers, exclusion
//! constraints) is refused there by Postgres itself.

mod report;
mod unique;

use std::time::{Duration, Instant};

use tokio_postgres::{Client, Error, Row};

pub use report::{FailureKind, MirrorScan, ScanReport, Timing};
use report::{Kinds, show_key};

use crate::catalog::{MirrorKind, MirrorPlan, Plan};
use crate::error_policy::is_about_the_row;
use crate::mirror::applier::SESSION_SETTINGS;
use crate::mirror::bind::Args;
use crate::mirror::sql::evaluate::{self, Constraints};
use crate::mirror::sql::{self, Scope, Statement, scan::sample_keys};
use crate::spec::{self, Spec};
use crate::throttle::ChunkSizer;

/// How much of the data `check` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    /// No scan; a few chunks are timed for the ETA.
    Off,
    /// Scan for about this long in all (split across the mirrors), then a
    /// spread sample of what is left.
    For(Duration),
    /// Every row, however long it takes.
    Full,
}

impl Default for Budget {
    fn default() -> Self {
        Budget::For(Duration::from_secs(60))
    }
}

impl std::str::FromStr for Budget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "off" => Ok(Budget::Off),
            "full" => Ok(Budget::Full),
            other => spec::parse_duration(other)
                .map(Budget::For)
                .map_err(|e| format!("{e}; give a duration such as 60s, or full, or off")),
        }
    }
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Budget::Off => write!(f, "off"),
            Budget::Full => write!(f, "full"),
            Budget::For(d) => write!(f, "{}", crate::throttle::human_duration(*d)),
        }
    }
}

/// Where the scan tells how far it is (a bar on a terminal, lines otherwise).
pub trait ScanProgress {
    /// A mirror's scan begins: `total` is the estimated row count (0 unknown).
    fn start(&mut self, label: &str, total: u64);
    /// `done` rows covered so far; `what` says which pass.
    fn advance(&mut self, done: u64, what: &str);
    fn finish(&mut self);
}

/// Progress nobody watches.
pub struct Quiet;

impl ScanProgress for Quiet {
    fn start(&mut self, _: &str, _: u64) {}
    fn advance(&mut self, _: u64, _: &str) {}
    fn finish(&mut self) {}
}

/// Chunks timed per mirror with `--scan off` (the first is the warm-up).
const TIMING_CHUNKS: u32 = 5;
/// Beyond the first [`TIMING_CHUNKS`], the scan times (writes and rolls
/// back) the chunks whose number is a power of two: spread over the pass, a
/// few dozen at most.
fn timed(chunk: u32) -> bool {
    chunk < TIMING_CHUNKS || chunk.is_power_of_two()
}
/// ... and at most this long.
const TIMING_BUDGET: Duration = Duration::from_secs(2);
/// The spread sample: a quarter of what the budget covered, within these.
const SAMPLE_MIN: u64 = 500;
const SAMPLE_MAX: u64 = 20_000;
/// Failing keys kept to leave out of the uniqueness questions; beyond this
/// those questions are skipped (the mapping is broken anyway).
const MAX_FAILING_KEYS: usize = 100_000;

const SAVEPOINT: &str = "SAVEPOINT walshift_scan";
const ROLLBACK_TO: &str = "ROLLBACK TO SAVEPOINT walshift_scan";

/// Scans every mirror of `plan` in one transaction on `client` (idle, not
/// in a transaction), which is rolled back. `Err` only when the connection
/// failed; a refused statement is in the report.
pub async fn scan(
    client: &Client,
    spec: &Spec,
    plan: &Plan,
    budget: Budget,
    progress: &mut dyn ScanProgress,
) -> Result<ScanReport, Error> {
    // The applier's settings: the chunk statement runs (and is timed) as
    // `run` will run it, JIT off included.
    client.batch_execute(SESSION_SETTINGS).await?;
    let timeout = match budget {
        Budget::Full => "0".to_string(),
        // A backstop for one statement, not the budget (checked between
        // chunks): a lock queue or a pathological chunk.
        Budget::For(d) => format!("{}ms", (d + Duration::from_secs(30)).as_millis()),
        Budget::Off => "30s".to_string(),
    };
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL lock_timeout = '2s'; SET LOCAL statement_timeout = '{timeout}'; {SAVEPOINT}"
        ))
        .await?;
    let outcome = scan_all(client, spec, plan, budget, progress).await;
    let ended = client.batch_execute("ROLLBACK").await;
    let mirrors = outcome?;
    ended?;
    Ok(ScanReport {
        mirrors,
        budget: budget.to_string(),
    })
}

async fn scan_all(
    client: &Client,
    spec: &Spec,
    plan: &Plan,
    budget: Budget,
    progress: &mut dyn ScanProgress,
) -> Result<Vec<MirrorScan>, Error> {
    let started = Instant::now();
    let mut out = Vec::new();
    for (i, m) in plan.mirrors.iter().enumerate() {
        // What is left of the budget, shared among the mirrors left: a
        // small table passes its time on.
        let deadline = match budget {
            Budget::For(total) => {
                let left = total.saturating_sub(started.elapsed());
                Some(Instant::now() + left / (plan.mirrors.len() - i) as u32)
            }
            Budget::Full => None,
            Budget::Off => Some(Instant::now() + TIMING_BUDGET),
        };
        let mut s = MirrorScanner {
            client,
            m,
            limits: &spec.backfill,
            constraints: constraints(client, m).await?,
            kinds: Kinds::default(),
            failing: Vec::new(),
            stopped: None,
        };
        out.push(s.run(deadline, budget == Budget::Off, progress).await?);
    }
    Ok(out)
}

/// A refused statement: its SQLSTATE, its message on one line, and whether
/// it is about the row (see [`is_about_the_row`]).
struct Refused {
    sqlstate: String,
    message: String,
    about_row: bool,
}

impl Refused {
    fn from(e: &Error) -> Option<Refused> {
        let db = e.as_db_error()?;
        let code = db.code().code();
        Some(Refused {
            sqlstate: code.to_string(),
            message: db
                .message()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            about_row: is_about_the_row(code),
        })
    }
}

struct MirrorScanner<'a> {
    client: &'a Client,
    m: &'a MirrorPlan,
    limits: &'a spec::BackfillLimits,
    /// Of the relation the mirror writes, for the evaluation.
    constraints: Constraints,
    kinds: Kinds,
    /// Keys that failed, to leave out of the uniqueness questions.
    failing: Vec<Vec<String>>,
    stopped: Option<String>,
}

impl MirrorScanner<'_> {
    async fn run(
        &mut self,
        deadline: Option<Instant>,
        timing_only: bool,
        progress: &mut dyn ScanProgress,
    ) -> Result<MirrorScan, Error> {
        let started = Instant::now();
        let label = self.m.describe();
        progress.start(&label, self.m.estimated_rows.max(0) as u64);
        let ordered = self.ordered(deadline, timing_only, progress).await?;
        let mut notes = Vec::new();
        let mut sampled = 0;
        if !timing_only && !ordered.complete && self.stopped.is_none() {
            progress.advance(ordered.covered, "spread sample");
            sampled = self
                .sample(ordered.lower.as_deref(), ordered.covered, &mut notes)
                .await?;
        }
        if !timing_only && self.stopped.is_none() && ordered.covered > 0 {
            progress.advance(ordered.covered, "unique indexes");
            let upper = (!ordered.complete)
                .then_some(ordered.lower.as_deref())
                .flatten();
            unique::check(self, upper, &mut notes).await?;
        }
        progress.finish();
        Ok(MirrorScan {
            mirror: self.m.number,
            label,
            rows_estimate: self.m.estimated_rows,
            covered: ordered.covered,
            complete: ordered.complete,
            sampled,
            elapsed: started.elapsed(),
            failures: std::mem::take(&mut self.kinds).into_vec(),
            stopped: self.stopped.take(),
            notes,
            timing: ordered.timing,
            timing_only,
        })
    }

    /// The chunks in key order until the table ends or the deadline passes
    /// (at least one chunk either way).
    async fn ordered(
        &mut self,
        deadline: Option<Instant>,
        timing_only: bool,
        progress: &mut dyn ScanProgress,
    ) -> Result<Ordered, Error> {
        let (source, key) = (&self.m.source, &self.m.key);
        let mut sizer = ChunkSizer::new(self.limits);
        let cap = self.limits.max_rows_per_second.filter(|c| *c > 0);
        let mut lower: Option<Vec<String>> = None;
        let mut covered = 0u64;
        let mut chunks = 0u32;
        let mut warm_up = Timing::default();
        let mut timing = Timing::default();
        loop {
            let out_of_time = deadline.is_some_and(|d| Instant::now() >= d);
            if chunks > 0 && (out_of_time || (timing_only && chunks >= TIMING_CHUNKS)) {
                break;
            }
            let rows = cap.map_or(sizer.rows(), |c| sizer.rows().min(c));
            let began = Instant::now();
            let bound = sql::chunk_upper_bound(source, key, lower.is_some());
            let args = Args {
                lower: lower.as_deref(),
                count: rows as i64,
                ..Default::default()
            };
            let upper = match self.attempt(&bound, &args, false).await? {
                Ok(found) => found.first().map(|r| key_texts(r, key.len())),
                Err(r) => {
                    self.stop(&format!("reading the next chunk's bound: {}", r.message));
                    break;
                }
            };
            // A backfill chunk is its bound, then its write: the timing is
            // both, the evaluation between them left out.
            let bounded = began.elapsed();
            let scope = Scope::Range {
                lower: lower.is_some(),
                upper: upper.is_some(),
            };
            let args = Args {
                lower: lower.as_deref(),
                upper: upper.as_deref(),
                ..Default::default()
            };
            let before = self.failing.len();
            if !timing_only {
                self.evaluate_range(scope, &args).await?;
            }
            let writing = Instant::now();
            let result = if timed(chunks) || timing_only {
                Some(self.attempt(&apply(self.m, scope), &args, true).await?)
            } else {
                None
            };
            let elapsed = bounded + writing.elapsed();
            let chunk_rows = match &upper {
                Some(_) => rows,
                None => self.count_after(lower.as_deref()).await?,
            };
            match result {
                None => {}
                Some(Ok(_)) => {
                    let t = if chunks == 0 {
                        &mut warm_up
                    } else {
                        &mut timing
                    };
                    t.rows += chunk_rows;
                    t.elapsed += elapsed;
                    t.chunks += 1;
                    sizer.observe(chunk_rows, elapsed);
                }
                // Refused by what the evaluation does not see (a unique
                // index within one key's rows, a foreign key, a trigger; or
                // --scan off): the keys it did not name, by the write.
                Some(Err(r)) if r.about_row => {
                    let known = self.failing[before..].to_vec();
                    let mut keys = self.keys_in(scope, &args).await?;
                    keys.retain(|k| !known.contains(k));
                    self.isolate(keys, By::Writing).await?;
                }
                Some(Err(r)) => {
                    self.stop(&format!("{} (SQLSTATE {})", r.message, r.sqlstate));
                    break;
                }
            }
            if self.stopped.is_some() {
                break;
            }
            covered += chunk_rows;
            chunks += 1;
            progress.advance(covered, "in key order");
            match upper {
                Some(u) => lower = Some(u),
                None => {
                    return Ok(Ordered {
                        covered,
                        complete: true,
                        lower,
                        timing: pick(timing, warm_up),
                    });
                }
            }
        }
        Ok(Ordered {
            covered,
            complete: false,
            lower,
            timing: pick(timing, warm_up),
        })
    }

    /// A spread sample of the rows after `lower`: their keys by
    /// `TABLESAMPLE SYSTEM`, run in chunks of keys. Returns the rows sampled.
    async fn sample(
        &mut self,
        lower: Option<&[String]>,
        covered: u64,
        notes: &mut Vec<String>,
    ) -> Result<u64, Error> {
        let want = (covered / 4).clamp(SAMPLE_MIN, SAMPLE_MAX);
        let left = self.m.estimated_rows - covered as i64;
        let mut percent = if left > 0 {
            100.0 * want as f64 / left as f64
        } else {
            100.0
        };
        // SYSTEM picks whole pages, each with the chance asked: on a small
        // rest it can pick none. Ask again with more until half the sample
        // is there (at 100% it is the whole rest).
        let keys = loop {
            let stmt = sample_keys(&self.m.source, &self.m.key, lower.is_some(), percent);
            let args = Args {
                lower,
                count: want as i64,
                ..Default::default()
            };
            let keys = match self.attempt(&stmt, &args, false).await? {
                Ok(rows) => rows
                    .iter()
                    .map(|r| key_texts(r, self.m.key.len()))
                    .collect::<Vec<_>>(),
                Err(r) => {
                    notes.push(format!(
                        "no spread sample of the rest: {} (SQLSTATE {})",
                        r.message, r.sqlstate
                    ));
                    return Ok(0);
                }
            };
            if keys.len() as u64 * 2 >= want || percent >= 100.0 {
                break keys;
            }
            percent = (percent * 4.0).min(100.0);
        };
        let size = ChunkSizer::new(self.limits).rows().max(1) as usize;
        for part in keys.chunks(size) {
            if self.stopped.is_some() {
                break;
            }
            self.isolate(part.to_vec(), By::Evaluating).await?;
        }
        Ok(keys.len() as u64)
    }

    /// The evaluation of a range: what the constraints refuse is recorded by
    /// key; where a value cannot be computed, the range's keys are split
    /// until the failing ones are alone.
    async fn evaluate_range(&mut self, scope: Scope, args: &Args<'_>) -> Result<(), Error> {
        match self.attempt(&self.evaluation(scope), args, false).await? {
            Ok(rows) => self.record_refused(&rows),
            Err(r) if r.about_row => {
                let keys = self.keys_in(scope, args).await?;
                self.isolate(keys, By::Evaluating).await?;
            }
            Err(r) => self.stop(&format!("{} (SQLSTATE {})", r.message, r.sqlstate)),
        }
        Ok(())
    }

    /// Runs the evaluation (or the chunk statement, rolled back) for
    /// `keys`; where it fails on a row, splits the keys in halves until each
    /// failing key is alone, and records it.
    async fn isolate(&mut self, keys: Vec<Vec<String>>, by: By) -> Result<(), Error> {
        let stmt = match by {
            By::Evaluating => self.evaluation(Scope::Keys),
            By::Writing => apply(self.m, Scope::Keys),
        };
        let columns = self.m.key.len();
        // Second halves wait under first halves: keys come out in key order.
        let mut stack = vec![keys];
        while let Some(mut part) = stack.pop() {
            if part.is_empty() {
                continue;
            }
            let args = Args::keys(&part, columns);
            match self.attempt(&stmt, &args, by == By::Writing).await? {
                Ok(rows) if by == By::Evaluating => self.record_refused(&rows),
                Ok(_) => {}
                Err(r) if r.about_row => {
                    if part.len() == 1 {
                        let key = part.pop().expect("one key");
                        self.record(&r.sqlstate, &r.message, key);
                    } else {
                        let second = part.split_off(part.len() / 2);
                        stack.push(second);
                        stack.push(part);
                    }
                }
                Err(r) => {
                    self.stop(&format!("{} (SQLSTATE {})", r.message, r.sqlstate));
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The read-only evaluation statement of the mirror for `scope`.
    fn evaluation(&self, scope: Scope) -> Statement {
        match &self.m.kind {
            MirrorKind::Set(p) => evaluate::set_evaluate(p, &self.constraints, scope),
            MirrorKind::Rows(p) => evaluate::rows_evaluate(p, &self.constraints, scope),
        }
    }

    /// The rows an evaluation returned (`key texts..., problem`): one
    /// refusal per key (a rows-mode key may yield several refused rows).
    fn record_refused(&mut self, rows: &[Row]) {
        let columns = self.m.key.len();
        let mut last: Option<Vec<String>> = None;
        for r in rows {
            let key = key_texts(r, columns);
            if last.as_ref() == Some(&key) {
                continue;
            }
            let problem: String = r.get(columns);
            let (sqlstate, message) = evaluate::split_problem(&problem);
            self.record(sqlstate, message, key.clone());
            last = Some(key);
        }
    }

    fn record(&mut self, sqlstate: &str, message: &str, key: Vec<String>) {
        self.kinds.add(sqlstate, message, 1, &[show_key(&key)]);
        if self.failing.len() < MAX_FAILING_KEYS {
            self.failing.push(key);
        }
    }

    /// Runs `stmt`; rolls back to the scan's savepoint after it when it
    /// wrote (`writes`) or failed, so nothing stays and the transaction goes
    /// on. `Ok(Err(_))`: Postgres refused it.
    async fn attempt(
        &self,
        stmt: &Statement,
        args: &Args<'_>,
        writes: bool,
    ) -> Result<Result<Vec<Row>, Refused>, Error> {
        let result = self
            .client
            .query_typed(&stmt.sql, &args.bind_typed(&stmt.params))
            .await;
        match result {
            Ok(rows) => {
                if writes {
                    self.client.batch_execute(ROLLBACK_TO).await?;
                }
                Ok(Ok(rows))
            }
            Err(e) => match Refused::from(&e) {
                Some(r) => {
                    self.client.batch_execute(ROLLBACK_TO).await?;
                    Ok(Err(r))
                }
                // No SQLSTATE: the connection, not the statement.
                None => Err(e),
            },
        }
    }

    /// The keys of a range, to split it.
    async fn keys_in(&mut self, scope: Scope, args: &Args<'_>) -> Result<Vec<Vec<String>>, Error> {
        let stmt = sql::range_keys(&self.m.source, &self.m.key, scope);
        match self.attempt(&stmt, args, false).await? {
            Ok(rows) => Ok(rows
                .iter()
                .map(|r| key_texts(r, self.m.key.len()))
                .collect()),
            Err(r) => {
                self.stop(&format!("listing a chunk's keys: {}", r.message));
                Ok(Vec::new())
            }
        }
    }

    /// Source rows after `lower` (the last chunk's size).
    async fn count_after(&mut self, lower: Option<&[String]>) -> Result<u64, Error> {
        let stmt = sql::range_count(&self.m.source, &self.m.key, lower.is_some());
        let args = Args {
            lower,
            ..Default::default()
        };
        Ok(match self.attempt(&stmt, &args, false).await? {
            Ok(rows) => rows.first().map_or(0, |r| r.get::<_, i64>(0).max(0) as u64),
            Err(_) => 0,
        })
    }

    fn stop(&mut self, why: &str) {
        if self.stopped.is_none() {
            self.stopped = Some(why.to_string());
        }
    }
}

/// The ordered pass's end: how far it got.
struct Ordered {
    covered: u64,
    complete: bool,
    /// The last chunk's upper bound: everything up to it is covered.
    lower: Option<Vec<String>>,
    timing: Timing,
}

/// How [`MirrorScanner::isolate`] asks about keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum By {
    /// The read-only evaluation.
    Evaluating,
    /// The backfill's chunk statement, rolled back.
    Writing,
}

/// The constraints of the relation the mirror writes.
async fn constraints(client: &Client, m: &MirrorPlan) -> Result<Constraints, Error> {
    let written = match &m.kind {
        MirrorKind::Set(p) => &p.source,
        MirrorKind::Rows(p) => &p.target,
    };
    let relation = written.to_string();
    let columns = client
        .query(evaluate::COLUMNS_SQL, &[&relation])
        .await?
        .iter()
        .map(|r| evaluate::WrittenColumn {
            name: r.get(0),
            type_name: r.get(1),
            not_null: r.get(2),
            bounded: r.get::<_, Option<i32>>(3).map(|n| (n, r.get(4))),
        })
        .collect();
    let checks = client
        .query(evaluate::CHECKS_SQL, &[&relation])
        .await?
        .iter()
        .map(|r| evaluate::CheckConstraint {
            name: r.get(0),
            expr: r.get(1),
            columns: r.get(2),
        })
        .collect();
    Ok(Constraints {
        relation: written.name.clone(),
        columns,
        checks,
    })
}

/// The timed chunks, or the warm-up when it was the only one.
fn pick(timing: Timing, warm_up: Timing) -> Timing {
    if timing.chunks > 0 { timing } else { warm_up }
}

/// The backfill's chunk statement of a mirror.
fn apply(m: &MirrorPlan, scope: Scope) -> Statement {
    match &m.kind {
        MirrorKind::Set(p) => sql::set_apply(p, scope),
        MirrorKind::Rows(p) => sql::rows_apply(p, scope),
    }
}

fn key_texts(row: &Row, columns: usize) -> Vec<String> {
    (0..columns).map(|i| row.get::<_, String>(i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_parse() {
        assert_eq!("off".parse::<Budget>(), Ok(Budget::Off));
        assert_eq!("full".parse::<Budget>(), Ok(Budget::Full));
        assert_eq!(
            "90s".parse::<Budget>(),
            Ok(Budget::For(Duration::from_secs(90)))
        );
        assert!("soon".parse::<Budget>().is_err());
        assert_eq!(Budget::default().to_string(), "1m");
    }
}
