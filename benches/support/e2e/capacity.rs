//! Scenario 9: capacity, the highest offered load walshift keeps up with.
//!
//! ```text
//!  per mode (set: users.status; rows: orders -> order_items):
//!    the reference, before walshift's slot exists: T0 = the trigger saturated, then
//!      pgbench -R f x T0 for every f below, without mirroring and with the trigger
//!  per mode and repetition:
//!    T = what the trigger reaches saturated (pgbench, no -R)
//!    walshift run, then pgbench -R f x T for f = 0.3, 0.4, ... 1.0, until a step misses:
//!      a step holds when the application gets at least 95% of the offered rate and
//!      walshift's watermark lag p99 stays under 1 s
//!    capacity = the highest f that held; verified exactly after the last step
//! ```
//!
//! The report charts every step's application p99 latency against the offered rate, for no
//! mirroring, the trigger and walshift (its first repetition), with walshift's lag p99.

use std::path::Path;
use std::time::Duration;

use crate::support::backfill::fixture::{self, ROWS_MIRROR, SET_MIRROR};
use crate::support::backfill::process::drop_walshift_objects;

use super::backfill::trigger_of;
use super::cost::machine_busy_s;
use super::live::{self, LagSampler};
use super::runner::Walshift;
use super::{Ctx, exec, median, quantile, verify_statuses};

const SPEC: &str = "e2e-capacity";
const WITHIN: Duration = Duration::from_secs(1800);
/// Before every step: the server runs without autovacuum (benches/support/backfill/fixture.rs),
/// and the trigger's steps delete and insert every line item of each order they change, so an
/// unvacuumed `order_items` slows whatever runs after them (a first run left millions of dead
/// line items to walshift's steps: rows capacity 0.35x that run, 0.70x with this).
const VACUUM: &str = "VACUUM public.users, public.orders, public.order_items";
/// The offered rates, as fractions of the trigger's saturated tps.
const STEPS: [f64; 8] = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
/// A step holds when the application gets this share of the offered rate ...
pub const DELIVERED: f64 = 0.95;
/// ... and the lag p99 stays under this.
pub const LAG_P99_S: f64 = 1.0;
/// Targets (issue 17), as fractions of the trigger's saturated tps.
pub const TARGET_SET: f64 = 0.65;
pub const TARGET_ROWS: f64 = 0.85;

#[derive(Debug, Clone)]
pub struct Step {
    pub fraction: f64,
    pub offered: f64,
    pub tps: f64,
    /// The application's p99 latency, ms (pgbench's, from each transaction's scheduled start).
    pub p99_ms: f64,
    pub lag_p99: f64,
    /// How busy the machine's cores were during the step, 0..1.
    pub busy: f64,
}

/// A step of the reference sweep: the same offered rate without walshift.
#[derive(Debug, Clone)]
pub struct RefStep {
    pub offered: f64,
    pub none_tps: f64,
    pub none_p99_ms: f64,
    pub trigger_tps: f64,
    pub trigger_p99_ms: f64,
}

impl Step {
    pub fn held(&self) -> bool {
        self.tps >= DELIVERED * self.offered && self.lag_p99 < LAG_P99_S
    }
}

#[derive(Debug, Clone, Default)]
pub struct ModeOutcome {
    pub mode: &'static str,
    pub trigger_tps: Vec<f64>,
    /// The reference sweep's saturated trigger (T0) and its steps.
    pub reference_tps: f64,
    pub reference: Vec<RefStep>,
    /// Per repetition, the steps run.
    pub steps: Vec<Vec<Step>>,
}

impl ModeOutcome {
    /// The highest fraction that held, per repetition (0 when none did).
    pub fn capacities(&self) -> Vec<f64> {
        self.steps
            .iter()
            .map(|steps| {
                steps
                    .iter()
                    .take_while(|s| s.held())
                    .last()
                    .map_or(0.0, |s| s.fraction)
            })
            .collect()
    }

    pub fn capacity(&self) -> f64 {
        median(&self.capacities())
    }

    pub fn target(&self) -> f64 {
        if self.mode == "set" {
            TARGET_SET
        } else {
            TARGET_ROWS
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub clients: u32,
    pub seconds: u64,
    pub modes: Vec<ModeOutcome>,
    pub skipped: Option<String>,
}

struct Mode {
    name: &'static str,
    mirror: &'static str,
    script: &'static str,
}

const MODES: [Mode; 2] = [
    Mode {
        name: "set",
        mirror: SET_MIRROR,
        script: "\\set id random(1, :users)\n\
                 UPDATE public.users SET is_active = NOT is_active WHERE id = :id;\n",
    },
    Mode {
        name: "rows",
        mirror: ROWS_MIRROR,
        // One item's quantity changes: the order's items are recomputed.
        script: "\\set id random(1, :orders)\n\\set qty random(1, 9)\n\
                 UPDATE public.orders SET items = jsonb_set(items, '{0,qty}', to_jsonb(:qty::int)) \
                 WHERE id = :id;\n",
    },
];

pub async fn run(ctx: &Ctx<'_>) -> Outcome {
    let cfg = ctx.cfg;
    let mut outcome = Outcome {
        clients: cfg.clients,
        seconds: cfg.live_seconds,
        ..Outcome::default()
    };
    let [pgbench] = match ctx.programs("capacity", ["pgbench"]) {
        Ok(p) => p,
        Err(why) => {
            outcome.skipped = Some(why);
            return outcome;
        }
    };
    for mode in &MODES {
        eprintln!(
            "== capacity, {} mode: {} clients, {} s per step",
            mode.name, cfg.clients, cfg.live_seconds
        );
        outcome.modes.push(run_mode(ctx, &pgbench, mode).await);
    }
    outcome
}

async fn run_mode(ctx: &Ctx<'_>, pgbench: &Path, mode: &Mode) -> ModeOutcome {
    let cfg = ctx.cfg;
    let mut out = ModeOutcome {
        mode: mode.name,
        ..ModeOutcome::default()
    };
    let script = ctx.scratch.join(format!("e2e-capacity-{}.sql", mode.name));
    std::fs::write(&script, mode.script).expect("write the capacity script");
    let scripts: &[(&Path, u32)] = &[(&script, 1)];
    let (trigger_create, trigger_drop) = trigger_of(mode.name);
    drop_walshift_objects(ctx.admin, SPEC).await;
    let spec = ctx.write_spec(SPEC, mode.mirror);
    let mut run_no = 0;
    let mut spawn = || {
        run_no += 1;
        Walshift::spawn(
            &ctx.db.conninfo(),
            &spec,
            SPEC,
            &ctx.scratch
                .join(format!("{SPEC}-{}-{run_no}.log", mode.name)),
        )
    };
    reference(ctx, pgbench, scripts, mode, &mut out).await;
    exec(ctx.admin, VACUUM).await;
    let mut ws = spawn();
    ws.wait_backfill_done(ctx.admin, WITHIN).await;
    ws.wait_caught_up(ctx.admin, WITHIN).await;
    ws.stop();
    for rep in 0..cfg.reps {
        exec(ctx.admin, VACUUM).await;
        exec(ctx.admin, trigger_create).await;
        let tag = format!("capacity-{}-{rep}-trigger", mode.name);
        let trigger = live::pgbench(ctx, pgbench, scripts, None, &tag).await;
        exec(ctx.admin, trigger_drop).await;
        out.trigger_tps.push(trigger.tps);
        eprintln!(
            "  rep {} trigger saturated: {:.0} tps",
            rep + 1,
            trigger.tps
        );
        let mut ws = spawn();
        let mut steps = Vec::new();
        for fraction in STEPS {
            ws.wait_caught_up(ctx.admin, WITHIN).await;
            live::wait_lag_settled(ctx.admin, SPEC).await;
            exec(ctx.admin, VACUUM).await;
            let offered = fraction * trigger.tps;
            let sampler = LagSampler::start(ctx.db, SPEC).await;
            let busy_before = machine_busy_s();
            let started = std::time::Instant::now();
            let tag = format!("capacity-{}-{rep}-{fraction}", mode.name);
            let bench = live::pgbench(ctx, pgbench, scripts, Some(offered), &tag).await;
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            let busy = (machine_busy_s() - busy_before) / started.elapsed().as_secs_f64() / cores;
            let lag: Vec<f64> = sampler.finish().await.iter().map(|s| s.lag_s).collect();
            let step = Step {
                fraction,
                offered,
                tps: bench.tps,
                p99_ms: quantile(&bench.latencies_ms, 0.99),
                lag_p99: quantile(&lag, 0.99),
                busy,
            };
            eprintln!(
                "  rep {} {fraction:.1} x trigger (-R {offered:.0}): {:.0} tps, lag p99 {:.3} s, cores {:.0}% busy: {}",
                rep + 1,
                step.tps,
                step.lag_p99,
                step.busy * 100.0,
                if step.held() { "held" } else { "missed" }
            );
            let held = step.held();
            steps.push(step);
            if !held {
                break;
            }
        }
        ws.wait_caught_up(ctx.admin, WITHIN).await;
        ws.stop();
        verify(ctx, mode.name).await;
        out.steps.push(steps);
    }
    drop_walshift_objects(ctx.admin, SPEC).await;
    out
}

/// The reference sweep: the trigger saturated (T0), then every step's rate of T0 without
/// mirroring and with the trigger. Runs before walshift's slot exists, so nothing decodes the
/// load.
async fn reference(
    ctx: &Ctx<'_>,
    pgbench: &Path,
    scripts: &[(&Path, u32)],
    mode: &Mode,
    out: &mut ModeOutcome,
) {
    let (trigger_create, trigger_drop) = trigger_of(mode.name);
    exec(ctx.admin, trigger_create).await;
    let tag = format!("capacity-{}-reference-trigger", mode.name);
    out.reference_tps = live::pgbench(ctx, pgbench, scripts, None, &tag).await.tps;
    exec(ctx.admin, trigger_drop).await;
    eprintln!(
        "  reference: trigger saturated {:.0} tps",
        out.reference_tps
    );
    for fraction in STEPS {
        let offered = fraction * out.reference_tps;
        exec(ctx.admin, VACUUM).await;
        let tag = format!("capacity-{}-reference-none-{fraction}", mode.name);
        let none = live::pgbench(ctx, pgbench, scripts, Some(offered), &tag).await;
        exec(ctx.admin, VACUUM).await;
        exec(ctx.admin, trigger_create).await;
        let tag = format!("capacity-{}-reference-trigger-{fraction}", mode.name);
        let trigger = live::pgbench(ctx, pgbench, scripts, Some(offered), &tag).await;
        exec(ctx.admin, trigger_drop).await;
        let step = RefStep {
            offered,
            none_tps: none.tps,
            none_p99_ms: quantile(&none.latencies_ms, 0.99),
            trigger_tps: trigger.tps,
            trigger_p99_ms: quantile(&trigger.latencies_ms, 0.99),
        };
        eprintln!(
            "  reference {fraction:.1} x (-R {offered:.0}): none {:.0} tps p99 {:.1} ms; trigger {:.0} tps p99 {:.1} ms",
            step.none_tps, step.none_p99_ms, step.trigger_tps, step.trigger_p99_ms
        );
        out.reference.push(step);
    }
}

async fn verify(ctx: &Ctx<'_>, mode: &str) {
    if mode == "set" {
        verify_statuses(ctx.admin, "public.users", "the capacity sweep").await;
    } else {
        let scenarios = fixture::scenarios(ctx.cfg.users, ctx.cfg.orders);
        let rows = scenarios
            .iter()
            .find(|s| s.name == "rows")
            .expect("the rows scenario");
        fixture::verify(ctx.admin, rows, "the capacity sweep").await;
    }
}

impl Outcome {
    /// The chart of `mode` beside page `page` (docs/results/<page>.md).
    pub fn chart_name(page: &str, mode: &str) -> String {
        format!("{page}-capacity-{mode}.svg")
    }

    /// Writes each mode's chart (latency and lag against the offered rate) into `dir`, named
    /// for page `page`; returns the names written.
    pub fn charts(&self, dir: &Path, page: &str) -> Vec<String> {
        use super::chart::{self, Limit, Line};
        let mut written = Vec::new();
        for m in self.modes.iter().filter(|m| !m.reference.is_empty()) {
            let reference = |f: fn(&RefStep) -> f64| -> Vec<(f64, f64)> {
                m.reference.iter().map(|r| (r.offered, f(r))).collect()
            };
            let first = m.steps.first().map(Vec::as_slice).unwrap_or_default();
            let walshift = |f: fn(&Step) -> f64| -> Vec<(f64, f64)> {
                first.iter().map(|s| (s.offered, f(s))).collect()
            };
            let line = |name: &str, color, points| Line {
                name: name.to_owned(),
                color,
                points,
            };
            let name = Self::chart_name(page, m.mode);
            let result = chart::log_lines(
                &dir.join(&name),
                &format!(
                    "{} mode: application p99 latency and walshift's lag against the offered load",
                    m.mode
                ),
                "offered load, transactions/s (pgbench -R)",
                "ms (log scale)",
                &[
                    line(
                        "no mirroring: p99 latency",
                        chart::NONE,
                        reference(|r| r.none_p99_ms),
                    ),
                    line(
                        "trigger: p99 latency",
                        chart::TRIGGER,
                        reference(|r| r.trigger_p99_ms),
                    ),
                    line(
                        "walshift: p99 latency",
                        chart::WALSHIFT,
                        walshift(|s| s.p99_ms),
                    ),
                    line(
                        "walshift: lag p99",
                        chart::RECVLOGICAL,
                        walshift(|s| s.lag_p99 * 1000.0),
                    ),
                ],
                &[Limit {
                    value: LAG_P99_S * 1000.0,
                    label: format!("lag bound of a step that holds ({LAG_P99_S} s)"),
                }],
            );
            match result {
                Ok(()) => written.push(name),
                Err(e) => eprintln!("chart {name}: {e}"),
            }
        }
        written
    }

    /// The section of the report: every step of every repetition, the reference sweep, and
    /// each mode's chart (see [`Outcome::charts`]) beside page `page`.
    pub fn markdown(&self, page: &str) -> String {
        use std::fmt::Write;
        let mut out = String::from("\n## Capacity\n\n");
        if let Some(why) = &self.skipped {
            let _ = writeln!(out, "skipped: {why}");
            return out;
        }
        let _ = writeln!(
            out,
            "pgbench, {} clients, {} s per step, at `-R` = a fraction of what the trigger reached \
             saturated; a step holds when the application gets at least {:.0}% of the offered \
             rate and walshift's lag p99 stays under {LAG_P99_S} s. The sweep stops at the first \
             step that misses.\n",
            self.clients,
            self.seconds,
            DELIVERED * 100.0
        );
        out.push_str(
            "| mode | rep | trigger tps | steps (fraction: tps, lag p99 s, cores busy) | capacity |\n",
        );
        out.push_str("|---|---:|---:|---|---:|\n");
        for m in &self.modes {
            for (i, steps) in m.steps.iter().enumerate() {
                let cells: Vec<String> = steps
                    .iter()
                    .map(|s| {
                        format!(
                            "{:.1}: {:.0}, {:.3}, {:.0}%{}",
                            s.fraction,
                            s.tps,
                            s.lag_p99,
                            s.busy * 100.0,
                            if s.held() { "" } else { " (missed)" }
                        )
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.0} | {} | {:.1}x |",
                    m.mode,
                    i + 1,
                    m.trigger_tps.get(i).copied().unwrap_or(f64::NAN),
                    cells.join("; "),
                    m.capacities()[i]
                );
            }
        }
        for m in self.modes.iter().filter(|m| !m.reference.is_empty()) {
            let _ = writeln!(
                out,
                "\n**{} mode against the offered load.** The reference (no mirroring, the \
                 trigger) ran before walshift's slot existed, at fractions of the trigger's \
                 saturated {:.0} tps; walshift's steps are its first repetition's, at fractions \
                 of that repetition's trigger. p99 latencies in ms, lag p99 in s.\n",
                m.mode, m.reference_tps
            );
            out.push_str(
                "| fraction | offered | no mirroring: tps, p99 | trigger: tps, p99 | walshift: offered, tps, p99 | walshift lag p99 |\n\
                 |---:|---:|---:|---:|---:|---:|\n",
            );
            let first = m.steps.first().map(Vec::as_slice).unwrap_or_default();
            for (r, fraction) in m.reference.iter().zip(STEPS) {
                let w = first.iter().find(|s| s.fraction == fraction);
                let (ws, lag) = match w {
                    Some(s) => (
                        format!("{:.0}, {:.0}, {:.1}", s.offered, s.tps, s.p99_ms),
                        format!("{:.3}", s.lag_p99),
                    ),
                    None => (
                        "not run (an earlier step missed)".to_owned(),
                        "—".to_owned(),
                    ),
                };
                let _ = writeln!(
                    out,
                    "| {fraction:.1} | {:.0} | {:.0}, {:.1} | {:.0}, {:.1} | {ws} | {lag} |",
                    r.offered, r.none_tps, r.none_p99_ms, r.trigger_tps, r.trigger_p99_ms
                );
            }
            let _ = writeln!(
                out,
                "\n![{} mode: p99 latency and lag against the offered load]({})",
                m.mode,
                Self::chart_name(page, m.mode)
            );
        }
        out
    }
}
