//! `walshift verify`: proves the new shape equals the mapping of the old,
//! chunk by chunk, then runs the spec's gates.
//!
//! ```text
//!  per mirror: key ranges of CHUNK rows ─▶ *_verify(range, Keys) ─▶ candidates
//!  wait until walshift has applied everything up to now (watermark), if a run is alive
//!  re-check candidates by key ─▶ still different = real differences
//!  gates: each must return exactly one true
//! ```
//!
//! Each chunk is one short read-only statement: no long locks, no long
//! snapshot. A row that changes while the check runs may differ for a moment
//! only because its change is not applied yet; it is re-checked after
//! walshift has caught up, and reported only if it still differs.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::catalog::{MirrorKind, MirrorPlan, Plan, ReversePlan};
use crate::mirror::bind::Args;
use crate::mirror::sql::{self, Scope, VerifyOutput};
use crate::spec::Spec;

/// Source rows per verification chunk.
pub const CHUNK_ROWS: i64 = 10_000;
/// Candidate keys kept per mirror for the re-check (and examples).
pub const MAX_CANDIDATES: i64 = 10_000;
/// Rounds of catch-up and re-check a differing key gets before it counts.
pub const RECHECK_ROUNDS: usize = 5;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MirrorReport {
    pub mirror: usize,
    pub label: String,
    pub chunks: u64,
    /// Keys that still differed after the re-check.
    pub differing: u64,
    /// Up to `examples` of them, key columns as text.
    pub examples: Vec<Vec<String>>,
    /// Keys that differed at first and matched once walshift caught up.
    pub settled: u64,
    /// More candidates than the re-check holds: the count is a lower bound.
    pub truncated: bool,
    /// `differing`, by kind: keys whose target rows are all missing (rows
    /// mode), keys with target rows the mapping does not yield at all (rows
    /// mode: e.g. the source row is gone), and keys whose rows differ.
    pub missing: u64,
    pub extra: u64,
    pub changed: u64,
    /// Keys the run holds because their rows fail the mapping or the
    /// target's constraints (they differ, or are missing, until fixed).
    pub held: u64,
    /// The first of them, with their errors.
    pub held_examples: Vec<crate::status::HeldExample>,
    /// Keys whose source row the mapping fails on (a data error, found by
    /// splitting the chunk that failed), up to `MAX_CANDIDATES`.
    pub unmappable: u64,
    /// The first of them, with the error.
    pub unmappable_examples: Vec<Unmappable>,
}

/// A key whose row the mapping fails on.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Unmappable {
    pub key: Vec<String>,
    pub sqlstate: String,
    pub error: String,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct GateReport {
    pub name: String,
    pub passed: bool,
    /// What the query returned, or its error.
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub name: String,
    pub passed: bool,
    pub mirrors: Vec<MirrorReport>,
    pub gates: Vec<GateReport>,
    pub seconds: f64,
}

impl Report {
    /// One line: what differs and which gates failed.
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = self
            .mirrors
            .iter()
            .filter(|m| m.differing > 0 || m.truncated || m.held > 0 || m.unmappable > 0)
            .map(|m| {
                let mut line = format!(
                    "{}: {}{} differing row(s){}",
                    m.label,
                    if m.truncated { "at least " } else { "" },
                    m.differing,
                    m.examples
                        .first()
                        .map(|k| format!(" (e.g. key {})", k.join(", ")))
                        .unwrap_or_default()
                );
                if let Some(u) = m.unmappable_examples.first() {
                    line.push_str(&format!(
                        ", the mapping fails on {} key(s) (e.g. key {}: {})",
                        m.unmappable,
                        u.key.join(", "),
                        u.error
                    ));
                }
                if let Some(e) = m.held_examples.first() {
                    line.push_str(&format!(
                        ", {} key(s) held (e.g. key {}: {})",
                        m.held,
                        e.key.join(", "),
                        e.error
                    ));
                }
                line
            })
            .collect();
        parts.extend(
            self.gates
                .iter()
                .filter(|g| !g.passed)
                .map(|g| format!("gate {:?} failed: {}", g.name, g.detail)),
        );
        if parts.is_empty() {
            "everything matches".into()
        } else {
            parts.join("; ")
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for m in &self.mirrors {
            let kinds = if m.differing > 0 {
                format!(
                    " ({} with rows missing, {} with extra rows, {} with changed rows)",
                    m.missing, m.extra, m.changed
                )
            } else {
                String::new()
            };
            out.push_str(&format!(
                "mirror {} ({}): {} differing key(s){}{kinds} in {} chunk(s){}\n",
                m.mirror,
                m.label,
                m.differing,
                if m.truncated { " or more" } else { "" },
                m.chunks,
                if m.settled > 0 {
                    format!(", {} settled once walshift caught up", m.settled)
                } else {
                    String::new()
                }
            ));
            for k in &m.examples {
                let held = m.held_examples.iter().any(|e| e.key == *k);
                let note = if held { " (held)" } else { "" };
                out.push_str(&format!("    key ({}){note}\n", k.join(", ")));
            }
            if m.unmappable > 0 {
                out.push_str(&format!(
                    "  the mapping fails on {} key(s): fix their rows or the spec\n",
                    m.unmappable
                ));
                for u in &m.unmappable_examples {
                    let held = m.held_examples.iter().any(|e| e.key == u.key);
                    let note = if held { " (held by the run)" } else { "" };
                    out.push_str(&format!(
                        "    key ({}){note}: {} [{}]\n",
                        u.key.join(", "),
                        u.error,
                        u.sqlstate
                    ));
                }
            }
            if m.held > 0 {
                out.push_str(&format!(
                    "  {} key(s) held by the run: their rows fail the mapping or the target's \
                     constraints (fix the rows or the spec; `walshift ctl SPEC retry`)\n",
                    m.held
                ));
                for e in &m.held_examples {
                    out.push_str(&format!(
                        "    held key ({}): {} [{}]\n",
                        e.key.join(", "),
                        e.error,
                        e.sqlstate
                    ));
                }
            }
        }
        for g in &self.gates {
            out.push_str(&format!(
                "gate {:?}: {} ({})\n",
                g.name,
                if g.passed { "passed" } else { "FAILED" },
                g.detail
            ));
        }
        out.push_str(&format!(
            "verify {} in {:.1}s\n",
            if self.passed { "passed" } else { "FAILED" },
            self.seconds
        ));
        out
    }
}

/// Rows of key columns as text.
fn key_rows(rows: &[tokio_postgres::Row], columns: usize) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| (0..columns).map(|i| r.get::<_, String>(i)).collect())
        .collect()
}

/// The statement listing the keys of `m` in `scope` whose target is not
/// the mapping of the source. A two-way key differs only when neither shape
/// follows from the other (the new version's `'paused'` is consistent when
/// the old shape is its reverse); a split's way back is checked afterwards,
/// on the keys found ([`still_differing`]).
fn verify_statement(m: &MirrorPlan, scope: Scope, output: VerifyOutput) -> sql::Statement {
    let reverse = m.two_way.as_ref().map(|t| &t.reverse);
    match (&m.kind, reverse) {
        (MirrorKind::Set(p), Some(ReversePlan::Columns(r))) => {
            sql::set_verify_two_way(p, r, scope, output)
        }
        (MirrorKind::Rows(p), Some(ReversePlan::Columns(r))) => {
            sql::rows_verify_two_way(p, r, scope, output)
        }
        (MirrorKind::Set(p), _) => sql::set_verify(p, scope, output),
        (MirrorKind::Rows(p), _) => sql::rows_verify(p, scope, output),
    }
}

/// Of `keys` found differing by [`verify_statement`], those that still
/// differ once a split's way back is asked too: a key whose source row is
/// what its target rows imply is consistent.
async fn still_differing(
    client: &Client,
    m: &MirrorPlan,
    keys: Vec<Vec<String>>,
) -> Result<Vec<Vec<String>>, tokio_postgres::Error> {
    let Some(ReversePlan::Rows(back)) = m.two_way.as_ref().map(|t| &t.reverse) else {
        return Ok(keys);
    };
    if keys.is_empty() {
        return Ok(keys);
    }
    let stmt = sql::rows_verify(back, Scope::Keys, VerifyOutput::Keys);
    let mut args = Args::keys(&keys, m.key.len());
    args.count = keys.len() as i64;
    let params = args.bind(&stmt.params);
    let back_differs: std::collections::HashSet<Vec<String>> =
        key_rows(&client.query(&stmt.sql, &params).await?, m.key.len())
            .into_iter()
            .collect();
    Ok(keys
        .into_iter()
        .filter(|k| back_differs.contains(k))
        .collect())
}

/// Keys of `m` that differ in `(lower, upper]` (bounds as text).
async fn differing_in_range(
    client: &Client,
    m: &MirrorPlan,
    lower: Option<&[String]>,
    upper: Option<&[String]>,
    limit: i64,
) -> Result<Vec<Vec<String>>, tokio_postgres::Error> {
    let scope = Scope::Range {
        lower: lower.is_some(),
        upper: upper.is_some(),
    };
    let stmt = verify_statement(m, scope, VerifyOutput::Keys);
    let args = Args {
        lower,
        upper,
        count: limit,
        ..Default::default()
    };
    let params = args.bind(&stmt.params);
    let keys = key_rows(&client.query(&stmt.sql, &params).await?, m.key.len());
    still_differing(client, m, keys).await
}

/// Whether `e` is about the data of a row the statement read.
fn is_about_a_row(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| crate::error_policy::is_about_the_row(c.code()))
}

/// The keys of a chunk the mapping failed on, found by splitting its key
/// list in halves around the failures; returns the keys of the rest that
/// differ. Failing keys go to `unmappable` (at most `MAX_CANDIDATES`).
async fn split_range(
    client: &Client,
    m: &MirrorPlan,
    (lower, upper): (Option<&[String]>, Option<&[String]>),
    unmappable: &mut Vec<Unmappable>,
) -> Result<Vec<Vec<String>>, tokio_postgres::Error> {
    let scope = Scope::Range {
        lower: lower.is_some(),
        upper: upper.is_some(),
    };
    let stmt = sql::range_keys(&m.source, &m.key, scope);
    let args = Args {
        lower,
        upper,
        ..Default::default()
    };
    let all = key_rows(
        &client.query(&stmt.sql, &args.bind(&stmt.params)).await?,
        m.key.len(),
    );
    among_isolating(client, m, all, unmappable).await
}

/// [`differing_among`], split in halves around the keys the mapping fails
/// on (those go to `unmappable`).
async fn among_isolating(
    client: &Client,
    m: &MirrorPlan,
    keys: Vec<Vec<String>>,
    unmappable: &mut Vec<Unmappable>,
) -> Result<Vec<Vec<String>>, tokio_postgres::Error> {
    let mut differing = Vec::new();
    let mut parts = vec![keys];
    while let Some(part) = parts.pop() {
        if part.is_empty() {
            continue;
        }
        match differing_among(client, m, &part).await {
            Ok(keys) => differing.extend(keys),
            Err(e) if is_about_a_row(&e) && part.len() == 1 => {
                if (unmappable.len() as i64) < MAX_CANDIDATES {
                    let db = e.as_db_error();
                    unmappable.push(Unmappable {
                        key: part.into_iter().next().expect("one key"),
                        sqlstate: e.code().map(|c| c.code().to_string()).unwrap_or_default(),
                        error: db
                            .map(|d| d.message().to_string())
                            .unwrap_or_else(|| e.to_string()),
                    });
                }
            }
            Err(e) if is_about_a_row(&e) => {
                let mut part = part;
                let second = part.split_off(part.len() / 2);
                parts.push(second);
                parts.push(part);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(differing)
}

/// Keys among `keys` that still differ.
pub async fn differing_among(
    client: &Client,
    m: &MirrorPlan,
    keys: &[Vec<String>],
) -> Result<Vec<Vec<String>>, tokio_postgres::Error> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let stmt = verify_statement(m, Scope::Keys, VerifyOutput::Keys);
    let mut args = Args::keys(keys, m.key.len());
    args.count = keys.len() as i64;
    let params = args.bind(&stmt.params);
    let found = key_rows(&client.query(&stmt.sql, &params).await?, m.key.len());
    still_differing(client, m, found).await
}

/// How the rows of `keys` differ: (missing, extra, changed) key counts.
async fn kinds(
    client: &Client,
    m: &MirrorPlan,
    keys: &[Vec<String>],
) -> Result<(u64, u64, u64), tokio_postgres::Error> {
    if keys.is_empty() {
        return Ok((0, 0, 0));
    }
    let stmt = verify_statement(m, Scope::Keys, VerifyOutput::Kinds);
    let mut args = Args::keys(keys, m.key.len());
    args.count = keys.len() as i64;
    let params = args.bind(&stmt.params);
    let (mut missing, mut extra, mut changed) = (0, 0, 0);
    for row in client.query(&stmt.sql, &params).await? {
        let n = m.key.len();
        match (row.get::<_, bool>(n), row.get::<_, bool>(n + 1)) {
            (true, false) => missing += 1,
            (false, true) => extra += 1,
            _ => changed += 1,
        }
    }
    Ok((missing, extra, changed))
}

/// Whether slot `$2` has confirmed position `$1`.
const CONFIRMED_PAST: &str =
    "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $2";

/// Waits until walshift has confirmed everything written before now: a
/// watermark is emitted and the slot's confirmed position must pass it. A
/// run confirms only what it has applied. Returns how long that took (the
/// watermark's round trip), or `None` when no run is alive to catch up or
/// it did not within `timeout`.
pub async fn wait_caught_up(
    client: &Client,
    slot: &str,
    timeout: Duration,
) -> Result<Option<Duration>, tokio_postgres::Error> {
    let active = client
        .query_opt(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?
        .map(|r| r.get::<_, bool>(0))
        .unwrap_or(false);
    if !active {
        return Ok(None);
    }
    let started = Instant::now();
    let lsn: String = client
        .query_one(
            "SELECT pg_logical_emit_message(false, 'walshift-sync', 'sync')::text",
            &[],
        )
        .await?
        .get(0);
    while started.elapsed() < timeout {
        let done: Option<bool> = client
            .query_one(CONFIRMED_PAST, &[&lsn, &slot])
            .await?
            .get(0);
        if done == Some(true) {
            return Ok(Some(started.elapsed()));
        }
        // Fine-grained: the demo reports this round trip as its lag figure.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(None)
}

/// Verifies every mirror of `plan` and runs the gates of `spec`.
pub async fn verify(
    client: &Client,
    spec: &Spec,
    plan: &Plan,
    examples: usize,
) -> Result<Report, tokio_postgres::Error> {
    verify_with(client, spec, plan, examples, true).await
}

/// Verifies every mirror of `plan`, and runs the gates if `gates`. The
/// cut-over's verify before the lock leaves them out: under a write load a
/// gate can see rows whose change is not applied yet, and the cut-over runs
/// them under the lock anyway, where the targets are exact.
pub async fn verify_with(
    client: &Client,
    spec: &Spec,
    plan: &Plan,
    examples: usize,
    gates: bool,
) -> Result<Report, tokio_postgres::Error> {
    let started = Instant::now();
    let mut mirrors = Vec::new();
    let mut candidates: Vec<Vec<Vec<String>>> = Vec::new();
    for m in &plan.mirrors {
        let (report, found) = first_pass(client, m, examples).await?;
        mirrors.push(report);
        candidates.push(found);
    }

    let found: Vec<usize> = candidates.iter().map(Vec::len).collect();
    let late_unmappable = recheck(client, spec, plan, &mut candidates).await?;
    for ((((report, still), found), m), late) in mirrors
        .iter_mut()
        .zip(candidates)
        .zip(found)
        .zip(&plan.mirrors)
        .zip(late_unmappable)
    {
        report.settled = (found - still.len() - late.len()) as u64;
        report.unmappable += late.len() as u64;
        let room = examples.saturating_sub(report.unmappable_examples.len());
        report
            .unmappable_examples
            .extend(late.into_iter().take(room));
        report.differing = still.len() as u64;
        (report.missing, report.extra, report.changed) = kinds(client, m, &still).await?;
        report.examples = still.into_iter().take(examples).collect();
    }
    // Keys the run holds: named, and the verify fails while any is.
    for h in crate::status::held_state(client, &spec.name).await? {
        if let Some(report) = mirrors.iter_mut().find(|r| r.mirror as i32 == h.mirror) {
            report.held = h.count as u64;
            report.held_examples = h.examples;
        }
    }

    let run_gates = gates;
    let mut gates = Vec::new();
    for g in spec.gates.iter().filter(|_| run_gates) {
        gates.push(run_gate(client, &g.name, &g.sql).await);
    }
    let passed = mirrors
        .iter()
        .all(|m| m.differing == 0 && !m.truncated && m.held == 0 && m.unmappable == 0)
        && gates.iter().all(|g| g.passed);
    Ok(Report {
        name: spec.name.clone(),
        passed,
        mirrors,
        gates,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The first pass over one mirror, chunk by chunk in key order: which keys
/// differ (at most [`MAX_CANDIDATES`], else truncated) and which rows the
/// mapping fails on. Returns the mirror's report so far (chunks,
/// truncation, unmappable rows; the rest is filled in after the re-check)
/// and the differing keys, candidates for the re-check.
async fn first_pass(
    client: &Client,
    m: &MirrorPlan,
    examples: usize,
) -> Result<(MirrorReport, Vec<Vec<String>>), tokio_postgres::Error> {
    let mut found: Vec<Vec<String>> = Vec::new();
    let mut unmappable: Vec<Unmappable> = Vec::new();
    let mut truncated = false;
    let mut chunks = 0u64;
    let mut lower: Option<Vec<String>> = None;
    loop {
        let bound = sql::chunk_upper_bound(&m.source, &m.key, lower.is_some());
        let args = Args {
            lower: lower.as_deref(),
            count: CHUNK_ROWS,
            ..Default::default()
        };
        let upper: Option<Vec<String>> = client
            .query_opt(&bound.sql, &args.bind(&bound.params))
            .await?
            .map(|r| (0..m.key.len()).map(|i| r.get::<_, String>(i)).collect());
        let room = (MAX_CANDIDATES - found.len() as i64).max(0);
        if room == 0 {
            truncated = true;
        } else {
            let range = (lower.as_deref(), upper.as_deref());
            let keys = match differing_in_range(client, m, range.0, range.1, room + 1).await {
                Ok(keys) => keys,
                // A row the mapping fails on: the chunk key by key.
                Err(e) if is_about_a_row(&e) => {
                    split_range(client, m, range, &mut unmappable).await?
                }
                Err(e) => return Err(e),
            };
            if keys.len() as i64 > room {
                truncated = true;
            }
            found.extend(keys.into_iter().take(room as usize));
        }
        chunks += 1;
        match upper {
            Some(u) => lower = Some(u),
            None => break,
        }
    }
    let report = MirrorReport {
        mirror: m.number,
        label: m.describe(),
        chunks,
        differing: 0,
        examples: Vec::new(),
        settled: 0,
        truncated,
        missing: 0,
        extra: 0,
        changed: 0,
        held: 0,
        held_examples: Vec::new(),
        unmappable: unmappable.len() as u64,
        unmappable_examples: unmappable.into_iter().take(examples).collect(),
    };
    Ok((report, found))
}

/// Re-check: what differed may only be in flight. Under a write load a
/// key can change again while walshift catches up, so the keys that
/// still differ get a few more rounds; a real difference survives them
/// all (and a key a run is not alive to fix does not wait at all).
/// Leaves in `candidates` the keys that still differ, and returns, per
/// mirror, the rows the mapping failed on in the re-check.
async fn recheck(
    client: &Client,
    spec: &Spec,
    plan: &Plan,
    candidates: &mut [Vec<Vec<String>>],
) -> Result<Vec<Vec<Unmappable>>, tokio_postgres::Error> {
    let mut late_unmappable: Vec<Vec<Unmappable>> = vec![Vec::new(); plan.mirrors.len()];
    for round in 0..RECHECK_ROUNDS {
        if candidates.iter().all(|c| c.is_empty()) {
            break;
        }
        let caught_up = wait_caught_up(client, &spec.slot_name(), Duration::from_secs(60)).await?;
        for ((m, keys), late) in plan
            .mirrors
            .iter()
            .zip(candidates.iter_mut())
            .zip(&mut late_unmappable)
        {
            *keys = among_isolating(client, m, std::mem::take(keys), late).await?;
        }
        if caught_up.is_none() || round + 1 == RECHECK_ROUNDS {
            break;
        }
    }
    Ok(late_unmappable)
}

/// A gate passes when its query returns exactly one row of one true.
pub async fn run_gate(client: &Client, name: &str, sql: &str) -> GateReport {
    let report = |passed: bool, detail: String| GateReport {
        name: name.to_string(),
        passed,
        detail,
    };
    match client.simple_query(sql).await {
        Err(e) => report(
            false,
            format!("error: {}", crate::error_policy::pg_message(&e)),
        ),
        Ok(msgs) => {
            let rows: Vec<Vec<Option<String>>> = msgs
                .iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(r) => {
                        Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                    }
                    _ => None,
                })
                .collect();
            match rows.as_slice() {
                [row] if row.len() == 1 && row[0].as_deref() == Some("t") => {
                    report(true, "returned true".into())
                }
                [row] if row.len() == 1 => report(
                    false,
                    format!("returned {}", row[0].as_deref().unwrap_or("NULL")),
                ),
                _ => report(
                    false,
                    format!(
                        "returned {} row(s); a gate must return one row of one boolean",
                        rows.len()
                    ),
                ),
            }
        }
    }
}
