//! `walshift check`, the command: the catalog check ([`crate::catalog`]),
//! then the data scan ([`crate::scan`]) and the backfill ETA it timed, and
//! what the operator reads. Creates nothing.
//!
//! ```text
//!  catalog::check (READ ONLY, rolled back) ── problems ─▶ one line each, exit 1
//!        │ plan
//!        ▼
//!  scan (rolled back) ── failing rows ─▶ per mirror: kinds, counts, keys; exit 1
//!        │ timings
//!        ▼
//!  ETA per mirror ─▶ "check passed", exit 0
//! ```

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_postgres::Client;

use crate::catalog;
use crate::estimate::human_eta;
use crate::scan::{self, Budget, ScanProgress};
use crate::spec::Spec;

/// How `check` ended, for the exit code.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    /// Problems, printed; nothing was created.
    Failed,
}

/// Runs the command on `client` (idle), printing the plan, the scan and
/// the ETA on stdout and progress on stderr. `Err`: the connection failed,
/// as one line.
pub async fn command(
    client: &Client,
    config: &crate::conninfo::ConnConfig,
    spec: &Spec,
    budget: Budget,
) -> Result<Verdict, String> {
    let report = catalog::check(client, spec)
        .await
        .map_err(|e| format!("lost the connection during check: {e}"))?;
    let Some(plan) = report.plan.as_ref().filter(|_| report.problems.is_empty()) else {
        for p in &report.problems {
            println!("{p}");
        }
        eprintln!(
            "walshift: check found {} problem(s) in {}; nothing was created",
            report.problems.len(),
            spec.file
        );
        return Ok(Verdict::Failed);
    };
    print!("{}", report.render_plan());
    match crate::topology::check_line(client, config, &spec.slot_name()).await {
        Ok(line) => println!("{line}"),
        Err(e) => println!(
            "failover: cannot tell: {}",
            crate::error_policy::pg_message(&e)
        ),
    }
    println!();
    let mut progress = progress_for_stderr(budget);
    let scanned = scan::scan(client, spec, plan, budget, progress.as_mut())
        .await
        .map_err(|e| format!("lost the connection during the data scan: {e}"))?;
    print!("{}", scanned.render());
    print!("{}", estimates(&scanned, spec.backfill.max_rows_per_second));
    let failed: Vec<&scan::MirrorScan> = scanned.mirrors.iter().filter(|m| !m.passed()).collect();
    if failed.is_empty() {
        println!(
            "check passed: {} mirror(s), nothing was created",
            spec.mirrors.len()
        );
        Ok(Verdict::Passed)
    } else {
        let numbers: Vec<String> = failed.iter().map(|m| format!("#{}", m.mirror)).collect();
        eprintln!(
            "walshift: check found rows that run would fail on in mirror(s) {} (see above); \
             nothing was created",
            numbers.join(", ")
        );
        Ok(Verdict::Failed)
    }
}

/// The ETA lines: per mirror, then all mirrors.
fn estimates(scanned: &scan::ScanReport, max_rows_per_second: Option<u64>) -> String {
    let mut out = String::new();
    let mut total = Duration::ZERO;
    for e in scanned.estimates(max_rows_per_second) {
        let rate = e
            .rows_per_second()
            .map(|r| format!("{r:.0} rows/s"))
            .unwrap_or_default();
        let line = match e.eta {
            Some(eta) => {
                total += eta;
                let how = if e.capped {
                    format!(
                        "at backfill.max_rows_per_second = {}; {rate} measured",
                        max_rows_per_second.unwrap_or(0)
                    )
                } else {
                    format!(
                        "{rate}: {} row(s) in {} timed chunk(s) after a warm-up, rolled back",
                        e.sample_rows, e.chunks
                    )
                };
                format!("~{} for ~{} rows ({how})", human_eta(eta), e.rows_estimate)
            }
            None if e.rows_estimate <= 0 => "nothing to backfill (empty table)".to_string(),
            None => "none: no chunk could be timed".to_string(),
        };
        out.push_str(&format!("backfill estimate, mirror {}: {line}\n", e.mirror));
    }
    out.push_str(&format!(
        "backfill estimate, all mirrors: ~{} unthrottled\n",
        human_eta(total)
    ));
    out
}

fn progress_for_stderr(budget: Budget) -> Box<dyn ScanProgress> {
    if std::io::stderr().is_terminal() {
        Box::new(Bar { bar: None })
    } else {
        Box::new(Lines {
            budget,
            label: String::new(),
            last: Instant::now(),
        })
    }
}

/// A bar per mirror on a terminal.
struct Bar {
    bar: Option<ProgressBar>,
}

impl ScanProgress for Bar {
    fn start(&mut self, label: &str, total: u64) {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(5));
        bar.set_style(
            ProgressStyle::with_template("scan {prefix:<40!} [{bar:28}] {pos:>10}/{len:<10} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        self.bar = Some(bar);
    }
    fn advance(&mut self, done: u64, what: &str) {
        if let Some(bar) = &self.bar {
            if bar.length().is_some_and(|l| l < done) {
                bar.set_length(done);
            }
            bar.set_position(done);
            bar.set_message(what.to_string());
        }
    }
    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// Plain lines on stderr off a terminal: one when a mirror's scan begins,
/// then one every [`LINE_EVERY`].
struct Lines {
    budget: Budget,
    label: String,
    last: Instant,
}

const LINE_EVERY: Duration = Duration::from_secs(5);

impl ScanProgress for Lines {
    fn start(&mut self, label: &str, total: u64) {
        self.label = label.to_string();
        self.last = Instant::now();
        if self.budget != Budget::Off {
            eprintln!(
                "walshift check: scanning {label}: ~{total} row(s), budget {}",
                self.budget
            );
        }
    }
    fn advance(&mut self, done: u64, what: &str) {
        if self.last.elapsed() >= LINE_EVERY {
            self.last = Instant::now();
            eprintln!("walshift check: {}: {done} row(s) ({what})", self.label);
        }
    }
    fn finish(&mut self) {}
}
