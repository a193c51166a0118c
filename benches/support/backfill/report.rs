//! Medians, the markdown tables and `target/bench-results/backfill.json`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::support::backfill::fixture::InServerSample;
use crate::support::backfill::process::RunSample;
use crate::support::backfill::profile::{Steps, WithConsumer};
use crate::support::backfill::summary::{median, ratio_spread, target_dir};

/// The ratio the issue allows: walshift at most 1.15x the in-server loop.
pub const GOAL: f64 = 1.15;

/// Every run of one scenario.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub scenario: &'static str,
    pub source_rows: u64,
    pub target_rows: i64,
    pub chunk: u64,
    pub walshift: Vec<RunSample>,
    pub in_server: Vec<InServerSample>,
    /// walshift with the default (adaptive) `[backfill]`.
    pub adaptive: Vec<RunSample>,
    pub profile: Option<Profile>,
}

/// The profile variants of one scenario (`BACKFILL_BENCH_PROFILE=1`).
#[derive(Debug, Clone)]
pub struct Profile {
    pub consumer: WithConsumer,
    /// walshift's backfill loop in-process, no stream: seconds, backend CPU.
    pub engine_s: f64,
    pub engine_cpu_s: f64,
    pub steps: Steps,
}

impl Outcome {
    pub fn new(scenario: &'static str, source_rows: u64, chunk: u64) -> Self {
        Outcome {
            scenario,
            source_rows,
            target_rows: 0,
            chunk,
            walshift: Vec::new(),
            in_server: Vec::new(),
            adaptive: Vec::new(),
            profile: None,
        }
    }

    fn label(&self) -> String {
        match self.scenario {
            "set" => "set: users.status".to_owned(),
            "rows" => "rows: orders → order_items".to_owned(),
            other => other.to_owned(),
        }
    }

    fn in_server_median(&self) -> f64 {
        median(self.in_server.iter().map(|s| s.total_s))
    }

    fn in_server_cpu_median(&self) -> f64 {
        median(self.in_server.iter().map(|s| s.cpu_backend_s))
    }

    /// walshift's time over the in-server loop's within each repetition. The
    /// two runs of a repetition are back to back, so a drift of the machine's
    /// speed over minutes (other tenants of the host) cancels out of each.
    fn paired_ratios(&self) -> Vec<f64> {
        self.walshift
            .iter()
            .zip(&self.in_server)
            .map(|(w, i)| w.total_s / i.total_s)
            .collect()
    }
}

/// Everything one bench run measured.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub outcomes: Vec<Outcome>,
    pub settings: Vec<(String, String)>,
    pub server_version_num: u32,
    pub loadavg_before: String,
    pub loadavg_after: String,
    pub wall_s: f64,
}

impl Figures {
    /// The summary table the issue asks for, then the details behind it.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "\n| scenario | rows | walshift s | in-server s | ratio | walshift rows/s | paired ratio: median (min-max) |\n\
             |---|---:|---:|---:|---:|---:|---|\n",
        );
        for o in &self.outcomes {
            let inner = o.in_server_median();
            let mut line = |what: String, runs: &[RunSample], paired: &[f64]| {
                if runs.is_empty() {
                    return;
                }
                let w = median(runs.iter().map(|s| s.total_s));
                let paired = if paired.is_empty() {
                    String::new()
                } else {
                    ratio_spread(paired)
                };
                let _ = writeln!(
                    out,
                    "| {what} | {} | {w:.2} | {inner:.2} | {:.2}x{} | {:.0} | {paired} |",
                    o.source_rows,
                    w / inner,
                    if w / inner > GOAL { " ✗" } else { " ✓" },
                    o.source_rows as f64 / w
                );
            };
            line(
                format!("{}, chunk {}", o.label(), o.chunk),
                &o.walshift,
                &o.paired_ratios(),
            );
            line(
                format!("{}, walshift adaptive (default [backfill])", o.label()),
                &o.adaptive,
                &[],
            );
        }
        let _ = writeln!(
            out,
            "\nMedians of {} run(s) each; ✓ = within {GOAL}x. walshift s counts from process start \
             (setup included). Paired ratio: walshift over the in-server loop within each repetition \
             (back-to-back runs, so a drift of the machine's speed cancels). Load average \
             before/after: {} / {}. Total {:.0}s.\n\
             CPU ratio: CPU seconds of walshift's apply backend, its walsender and the walshift \
             process over those of the in-server loop's backend (medians); steadier than wall \
             time when other processes share the cores.",
            self.outcomes.first().map_or(0, |o| o.in_server.len()),
            self.loadavg_before,
            self.loadavg_after,
            self.wall_s
        );
        out.push_str(
            "\n| scenario | contender | runs s | setup s | backfill s (server) | backfill-only ratio | chunks | CPU s: apply backend / walsender / walshift | CPU ratio | backend off-CPU s: run queue / other |\n\
             |---|---|---|---:|---:|---:|---:|---|---:|---|\n",
        );
        for o in &self.outcomes {
            let inner = o.in_server_median();
            let _ = writeln!(
                out,
                "| {} | in-server DO | {} | | | | {} | backend {} | | {} / {} |",
                o.scenario,
                list(o.in_server.iter().map(|s| s.total_s)),
                median(o.in_server.iter().map(|s| s.chunks as f64)),
                list(o.in_server.iter().map(|s| s.cpu_backend_s)),
                list(o.in_server.iter().map(|s| s.runq_backend_s)),
                list(
                    o.in_server
                        .iter()
                        .map(|s| s.total_s - s.cpu_backend_s - s.runq_backend_s)
                ),
            );
            for (who, runs) in [
                ("walshift", &o.walshift),
                ("walshift adaptive", &o.adaptive),
            ] {
                if runs.is_empty() {
                    continue;
                }
                let backfill = median(runs.iter().map(|s| s.backfill_s));
                let _ = writeln!(
                    out,
                    "| {} | {who} | {} | {:.2} | {backfill:.2} | {:.2}x | {} | {} / {} / {} | {:.2}x | {} / {} |",
                    o.scenario,
                    list(runs.iter().map(|s| s.total_s)),
                    median(runs.iter().map(|s| s.setup_s)),
                    backfill / inner,
                    median(runs.iter().map(|s| s.chunks as f64)),
                    list(runs.iter().map(|s| s.cpu_apply_backend_s)),
                    list(runs.iter().map(|s| s.cpu_walsender_s)),
                    list(runs.iter().map(|s| s.cpu_walshift_s)),
                    median(runs.iter().map(RunSample::cpu_total_s)) / o.in_server_cpu_median(),
                    list(runs.iter().map(|s| s.runq_apply_backend_s)),
                    list(
                        runs.iter()
                            .map(|s| s.backfill_s - s.cpu_apply_backend_s - s.runq_apply_backend_s)
                    ),
                );
            }
        }
        for o in &self.outcomes {
            let Some(p) = &o.profile else { continue };
            let inner = o.in_server_median();
            let _ = writeln!(
                out,
                "\nProfile of {} (one run each; in-server median {inner:.2}s):\n\
                 - in-server + pgoutput consumer: {:.2}s ({:.2}x); CPU s backend {:.2}, walsender {:.2}, consumer {:.2}\n\
                 - walshift engine without stream: {:.2}s ({:.2}x); backend CPU {:.2}s\n\
                 - timed replay of the chunk steps: {}",
                o.scenario,
                p.consumer.total_s,
                p.consumer.total_s / inner,
                p.consumer.cpu_backend_s,
                p.consumer.cpu_walsender_s,
                p.consumer.cpu_consumer_s,
                p.engine_s,
                p.engine_s / inner,
                p.engine_cpu_s,
                p.steps.line(),
            );
        }
        out
    }

    pub fn write_json(&self, path: &Path) {
        let run = |s: &RunSample| {
            json!({
                "total_s": s.total_s, "setup_s": s.setup_s, "backfill_s": s.backfill_s,
                "chunks": s.chunks, "rows_done": s.rows_done,
                "cpu_apply_backend_s": finite(s.cpu_apply_backend_s),
                "cpu_walsender_s": finite(s.cpu_walsender_s),
                "cpu_walshift_s": finite(s.cpu_walshift_s),
                "runq_apply_backend_s": finite(s.runq_apply_backend_s),
                "peak_rss_mb": finite(s.peak_rss_mb),
            })
        };
        let scenarios: Vec<Value> = self
            .outcomes
            .iter()
            .map(|o| {
                let inner = o.in_server_median();
                let w = median(o.walshift.iter().map(|s| s.total_s));
                let a = median(o.adaptive.iter().map(|s| s.total_s));
                json!({
                    "scenario": o.scenario,
                    "label": o.label(),
                    "rows": o.source_rows,
                    "target_rows": o.target_rows,
                    "chunk_rows": o.chunk,
                    "walshift_s": w,
                    "in_server_s": inner,
                    "ratio": w / inner,
                    "paired_ratio": median(o.paired_ratios().into_iter()),
                    "paired_ratios": o.paired_ratios(),
                    "walshift_rows_per_s": o.source_rows as f64 / w,
                    "within_goal": w / inner <= GOAL,
                    "walshift_setup_s": median(o.walshift.iter().map(|s| s.setup_s)),
                    "walshift_backfill_s": median(o.walshift.iter().map(|s| s.backfill_s)),
                    "cpu_ratio": finite(
                        median(o.walshift.iter().map(RunSample::cpu_total_s)) / o.in_server_cpu_median()
                    ),
                    "adaptive": (!o.adaptive.is_empty()).then(|| json!({
                        "walshift_s": a,
                        "ratio": a / inner,
                        "walshift_rows_per_s": o.source_rows as f64 / a,
                        "runs": o.adaptive.iter().map(run).collect::<Vec<_>>(),
                    })),
                    "profile": o.profile.as_ref().map(|p| json!({
                        "in_server_with_consumer_s": p.consumer.total_s,
                        "in_server_with_consumer_cpu": {
                            "backend_s": finite(p.consumer.cpu_backend_s),
                            "walsender_s": finite(p.consumer.cpu_walsender_s),
                            "consumer_s": finite(p.consumer.cpu_consumer_s),
                        },
                        "engine_without_stream_s": p.engine_s,
                        "engine_without_stream_cpu_s": finite(p.engine_cpu_s),
                        "replay": {
                            "chunks": p.steps.chunks, "total_s": p.steps.total_s,
                            "begin_s": p.steps.begin_s, "bound_s": p.steps.bound_s,
                            "count_s": p.steps.count_s, "apply_s": p.steps.apply_s,
                            "checkpoint_s": p.steps.checkpoint_s, "commit_s": p.steps.commit_s,
                        },
                    })),
                    "runs": {
                        "walshift": o.walshift.iter().map(run).collect::<Vec<_>>(),
                        "in_server": o.in_server.iter().map(|s| json!({
                            "total_s": s.total_s, "chunks": s.chunks,
                            "cpu_backend_s": finite(s.cpu_backend_s),
                            "runq_backend_s": finite(s.runq_backend_s),
                        })).collect::<Vec<_>>(),
                    },
                })
            })
            .collect();
        let doc = json!({
            "bench": "backfill",
            "goal_ratio": GOAL,
            "server_version_num": self.server_version_num,
            "settings": self.settings.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<String, Value>>(),
            "loadavg_before": self.loadavg_before,
            "loadavg_after": self.loadavg_after,
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "wall_s": self.wall_s,
            "scenarios": scenarios,
        });
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        }
        let text = serde_json::to_string_pretty(&doc).expect("serialize the figures");
        std::fs::write(path, text + "\n")
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

/// `<target dir>/bench-results/backfill.json`.
pub fn results_path() -> PathBuf {
    target_dir().join("bench-results").join("backfill.json")
}

fn list(values: impl Iterator<Item = f64>) -> String {
    values
        .map(|v| format!("{v:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// JSON has no NaN.
fn finite(v: f64) -> Value {
    if v.is_finite() { json!(v) } else { Value::Null }
}
