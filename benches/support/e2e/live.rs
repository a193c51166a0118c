//! Scenario 3: live mirroring under an application's write load.
//!
//! ```text
//!  pgbench -c 4 -T 20 on public.users, per workload
//!    update:  UPDATE users SET is_active = NOT is_active WHERE id = random
//!    mix:     that, or (half the transactions) INSERT a new user
//!    rated:   update at -R = half of what "no mirroring" reached in the same repetition
//!  per workload and repetition, three variants (order rotating):
//!    none      nothing keeps users.status in step
//!    trigger   a BEFORE INSERT OR UPDATE trigger computes it (the trigger method's trigger)
//!    walshift  `walshift run` mirrors it; its watermark lag (walshift.migration.lag_seconds,
//!              written every second) is sampled every 200 ms; after the load, the time until
//!              it has confirmed everything ("drain"), then the mapping is verified exactly
//!  tps from pgbench; latency percentiles from its per-transaction log (--log)
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use walshift_cluster::Database;

use crate::support::backfill::fixture::SET_MIRROR;
use crate::support::backfill::process::drop_walshift_objects;

use super::backfill::users_trigger;
use super::runner::{Cpu, Walshift};
use super::{Ctx, exec, max, quantile, thousands, verify_statuses};

const SPEC: &str = "e2e-live";
/// Ids of inserted users start here, far above the generated ones; the mix runs delete them
/// again so every run sees the same table.
const INSERTED_FROM: i64 = 1_000_000_000_000;
const LAG_POLL: Duration = Duration::from_millis(200);
const WITHIN: Duration = Duration::from_secs(1800);
/// Before a load, walshift's recorded lag must be under this ...
const SETTLED: f64 = 0.5;
/// ... which it is given this long to reach.
const SETTLE_WITHIN: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Update,
    Mix,
    Rated,
}

impl Workload {
    pub const ALL: [Workload; 3] = [Workload::Update, Workload::Mix, Workload::Rated];

    pub fn label(self) -> &'static str {
        match self {
            Workload::Update => "update, saturated",
            Workload::Mix => "update+insert, saturated",
            Workload::Rated => "update, rate-limited",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    None,
    Trigger,
    Walshift,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::None, Variant::Trigger, Variant::Walshift];

    pub fn label(self) -> &'static str {
        match self {
            Variant::None => "no mirroring",
            Variant::Trigger => "trigger",
            Variant::Walshift => "walshift",
        }
    }
}

/// One lag reading: seconds since the load started, walshift's watermark lag, bytes between
/// the server's WAL position and the slot's confirmed position.
#[derive(Debug, Clone, Copy)]
pub struct LagSample {
    pub t: f64,
    pub lag_s: f64,
    pub lag_bytes: f64,
}

/// One pgbench run.
#[derive(Debug, Clone)]
pub struct LiveRun {
    pub workload: Workload,
    pub variant: Variant,
    /// The -R of a rate-limited run.
    pub rate: Option<f64>,
    pub tps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// walshift only: one reading per watermark measurement during the load.
    pub lag: Vec<LagSample>,
    /// walshift only: load end until everything written is confirmed.
    pub drain_s: f64,
    pub peak_rss_mb: f64,
    /// walshift only: CPU its processes used during the load.
    pub cpu: Option<Cpu>,
}

impl LiveRun {
    pub fn lag_values(&self) -> Vec<f64> {
        self.lag.iter().map(|s| s.lag_s).collect()
    }
    pub fn lag_p50(&self) -> f64 {
        quantile(&self.lag_values(), 0.5)
    }
    pub fn lag_p99(&self) -> f64 {
        quantile(&self.lag_values(), 0.99)
    }
    pub fn lag_max(&self) -> f64 {
        max(&self.lag_values())
    }
    /// The most WAL the slot was behind at any reading, MB.
    pub fn behind_max_mb(&self) -> f64 {
        max(&self
            .lag
            .iter()
            .map(|s| s.lag_bytes / 1e6)
            .collect::<Vec<_>>())
    }
}

#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub size: String,
    pub clients: u32,
    pub seconds: u64,
    pub runs: Vec<LiveRun>,
    /// Why the scenario did not run (no pgbench).
    pub skipped: Option<String>,
}

impl Outcome {
    pub fn of(&self, workload: Workload, variant: Variant) -> Vec<&LiveRun> {
        self.runs
            .iter()
            .filter(|r| r.workload == workload && r.variant == variant)
            .collect()
    }
}

/// The pgbench scripts, written once.
pub(super) struct Scripts {
    pub update: PathBuf,
    pub insert: PathBuf,
}

pub(super) fn write_scripts(dir: &Path) -> Scripts {
    let update = dir.join("e2e-update.sql");
    let insert = dir.join("e2e-insert.sql");
    std::fs::write(
        &update,
        "\\set id random(1, :users)\n\
         UPDATE public.users SET is_active = NOT is_active WHERE id = :id;\n",
    )
    .expect("write the update script");
    std::fs::write(
        &insert,
        "INSERT INTO public.users (id, is_active) \
         VALUES (nextval('public.e2e_user_ids'), random() < 0.66);\n",
    )
    .expect("write the insert script");
    Scripts { update, insert }
}

pub(super) struct Pgbench {
    pub tps: f64,
    pub latencies_ms: Vec<f64>,
    /// The same latencies, by the script that ran (`-f` order).
    pub by_script: Vec<Vec<f64>>,
}

pub(super) async fn pgbench(
    ctx: &Ctx<'_>,
    pgbench: &Path,
    scripts: &[(&Path, u32)],
    rate: Option<f64>,
    tag: &str,
) -> Pgbench {
    let cfg = ctx.cfg;
    let log_dir = ctx.scratch.join(format!("pgbench-{tag}"));
    std::fs::create_dir_all(&log_dir).expect("pgbench log directory");
    let mut cmd = tokio::process::Command::new(pgbench);
    cmd.args(["-n", "-M", "prepared"])
        .args(["-c", &cfg.clients.to_string()])
        .args(["-j", &cfg.clients.min(2).to_string()])
        .args(["-T", &cfg.live_seconds.to_string()])
        .arg("--log")
        .arg(format!("--log-prefix={}", log_dir.join("txn").display()))
        .args(["-D", &format!("users={}", cfg.users)])
        .args(["-D", &format!("orders={}", cfg.orders)]);
    for (script, weight) in scripts {
        cmd.arg("-f").arg(format!("{}@{weight}", script.display()));
    }
    if let Some(r) = rate {
        cmd.args(["-R", &format!("{r:.0}")]);
    }
    cmd.arg(ctx.db.conninfo());
    for (key, _) in std::env::vars_os() {
        if key.as_encoded_bytes().starts_with(b"PG") {
            cmd.env_remove(key);
        }
    }
    let out = cmd.output().await.expect("run pgbench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let tps = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench's output:\n{stdout}"));
    let by_script = read_latencies(&log_dir);
    let _ = std::fs::remove_dir_all(&log_dir);
    Pgbench {
        tps,
        latencies_ms: by_script.iter().flatten().copied().collect(),
        by_script,
    }
}

/// The per-transaction latencies (the third field, µs, as ms) of every log file pgbench wrote,
/// by script number (the fourth).
fn read_latencies(dir: &Path) -> Vec<Vec<f64>> {
    let mut out: Vec<Vec<f64>> = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read the pgbench log directory") {
        let text = std::fs::read_to_string(entry.expect("log entry").path()).expect("log file");
        for line in text.lines() {
            let mut fields = line.split_whitespace().skip(2);
            let (Some(Ok(us)), Some(Ok(script))) = (
                fields.next().map(str::parse::<f64>),
                fields.next().map(str::parse::<usize>),
            ) else {
                continue;
            };
            if out.len() <= script {
                out.resize(script + 1, Vec::new());
            }
            out[script].push(us / 1000.0);
        }
    }
    out
}

/// Reads walshift's lag every [`LAG_POLL`] on a session of its own, until stopped.
pub(super) struct LagSampler {
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<Vec<(f64, f64, f64, f64)>>,
}

impl LagSampler {
    pub(super) async fn start(db: &Database, spec: &str) -> LagSampler {
        let client = db.connect().await;
        let spec = spec.to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = tokio::spawn(async move {
            let started = Instant::now();
            let mut out = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let row = client
                    .query_opt(
                        "SELECT m.lag_seconds, extract(epoch FROM m.lag_measured_at)::float8,
                                (pg_current_wal_lsn() - s.confirmed_flush_lsn)::float8
                         FROM walshift.migration AS m
                         LEFT JOIN pg_replication_slots AS s ON s.slot_name = m.slot_name
                         WHERE m.name = $1",
                        &[&spec],
                    )
                    .await
                    .expect("read walshift.migration");
                if let Some(r) = row {
                    let lag: Option<f64> = r.get(0);
                    let at: Option<f64> = r.get(1);
                    let bytes: Option<f64> = r.get(2);
                    if let (Some(lag), Some(at)) = (lag, at) {
                        out.push((
                            started.elapsed().as_secs_f64(),
                            lag,
                            at,
                            bytes.unwrap_or(f64::NAN),
                        ));
                    }
                }
                tokio::time::sleep(LAG_POLL).await;
            }
            out
        });
        LagSampler { stop, handle }
    }

    /// One sample per watermark measurement (walshift writes one a second), at the time it was
    /// first seen.
    pub(super) async fn finish(self) -> Vec<LagSample> {
        self.stop.store(true, Ordering::Relaxed);
        let raw = self.handle.await.expect("lag sampler");
        let mut out: Vec<LagSample> = Vec::new();
        let mut last_at = f64::NAN;
        for (t, lag_s, at, lag_bytes) in raw {
            if at != last_at {
                out.push(LagSample {
                    t,
                    lag_s,
                    lag_bytes,
                });
                last_at = at;
            }
        }
        // The first reading was measured before the load began.
        if !out.is_empty() {
            out.remove(0);
        }
        out
    }
}

/// Waits until walshift has recorded a lag under [`SETTLED`] measured after now (at most
/// [`SETTLE_WITHIN`]), so the lag left over from draining a backlog before the load is not
/// read as the load's.
pub(super) async fn wait_lag_settled(admin: &Client, spec: &str) {
    let since: f64 = admin
        .query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[])
        .await
        .expect("server clock")
        .get(0);
    let started = Instant::now();
    while started.elapsed() < SETTLE_WITHIN {
        let settled: bool = admin
            .query_one(
                "SELECT coalesce(bool_and(lag_seconds < $2::float8
                     AND extract(epoch FROM lag_measured_at)::float8 > $3::float8), false)
                 FROM walshift.migration WHERE name = $1",
                &[&spec, &SETTLED, &since],
            )
            .await
            .expect("read walshift.migration")
            .get(0);
        if settled {
            return;
        }
        tokio::time::sleep(LAG_POLL).await;
    }
    eprintln!("  (walshift's lag did not settle under {SETTLED} s within {SETTLE_WITHIN:?})");
}

/// Runs the live scenario.
pub async fn run(ctx: &Ctx<'_>) -> Outcome {
    let cfg = ctx.cfg;
    let mut outcome = Outcome {
        size: format!("{} users", thousands(cfg.users)),
        clients: cfg.clients,
        seconds: cfg.live_seconds,
        ..Outcome::default()
    };
    let [pgbench_bin] = match ctx.programs("live", ["pgbench"]) {
        Ok(p) => p,
        Err(why) => {
            outcome.skipped = Some(why);
            return outcome;
        }
    };
    eprintln!(
        "== live: {} clients, {} s per run, {}",
        cfg.clients, cfg.live_seconds, outcome.size
    );
    let scripts = write_scripts(ctx.scratch);
    exec(
        ctx.admin,
        &format!("CREATE SEQUENCE IF NOT EXISTS public.e2e_user_ids START {INSERTED_FROM}"),
    )
    .await;

    // The slot, and history backfilled, before any measurement.
    drop_walshift_objects(ctx.admin, SPEC).await;
    let spec = ctx.write_spec(SPEC, SET_MIRROR);
    let mut run_no = 0;
    let spawn = |run_no: &mut usize| {
        *run_no += 1;
        Walshift::spawn(
            &ctx.db.conninfo(),
            &spec,
            SPEC,
            &ctx.scratch.join(format!("{SPEC}-{run_no}.log")),
        )
    };
    let mut ws = spawn(&mut run_no);
    ws.wait_backfill_done(ctx.admin, WITHIN).await;
    ws.wait_caught_up(ctx.admin, WITHIN).await;
    ws.stop();

    let (trigger_create, trigger_drop) = users_trigger();
    for rep in 0..cfg.reps {
        let mut none_update_tps = f64::NAN;
        for workload in Workload::ALL {
            let rate = match workload {
                Workload::Rated => Some((none_update_tps / 2.0).max(1.0)),
                _ => None,
            };
            let scripts_of: Vec<(&Path, u32)> = match workload {
                Workload::Mix => vec![(&scripts.update, 1), (&scripts.insert, 1)],
                _ => vec![(&scripts.update, 1)],
            };
            for i in 0..Variant::ALL.len() {
                let variant = Variant::ALL[(rep + i) % Variant::ALL.len()];
                let mut ws = match variant {
                    Variant::None => None,
                    Variant::Trigger => {
                        exec(ctx.admin, trigger_create).await;
                        None
                    }
                    Variant::Walshift => {
                        // It first drains what the other variants wrote meanwhile; the lag
                        // it measured while doing so must not count as the load's.
                        let mut ws = spawn(&mut run_no);
                        ws.wait_caught_up(ctx.admin, WITHIN).await;
                        wait_lag_settled(ctx.admin, SPEC).await;
                        Some(ws)
                    }
                };
                exec(ctx.admin, "VACUUM public.users").await;
                exec(ctx.admin, "CHECKPOINT").await;
                let (sampler, cpu_before) = match &ws {
                    Some(w) => (
                        Some(LagSampler::start(ctx.db, SPEC).await),
                        Some(w.cpu(ctx.admin).await),
                    ),
                    None => (None, None),
                };
                let tag = format!("{rep}-{workload:?}-{variant:?}");
                let bench = pgbench(ctx, &pgbench_bin, &scripts_of, rate, &tag).await;
                let lag = match sampler {
                    Some(s) => s.finish().await,
                    None => Vec::new(),
                };
                let cpu = match (&ws, cpu_before) {
                    (Some(w), Some(before)) => Some(w.cpu(ctx.admin).await.since(&before)),
                    _ => None,
                };
                let (drain_s, peak_rss_mb) = match ws.take() {
                    Some(mut w) => {
                        let drain = w.wait_caught_up(ctx.admin, WITHIN).await;
                        verify_statuses(ctx.admin, "public.users", "walshift's live mirroring")
                            .await;
                        (drain, w.stop())
                    }
                    None => (f64::NAN, f64::NAN),
                };
                if variant == Variant::Trigger {
                    exec(ctx.admin, trigger_drop).await;
                }
                if workload == Workload::Mix {
                    exec(
                        ctx.admin,
                        &format!("DELETE FROM public.users WHERE id >= {INSERTED_FROM}"),
                    )
                    .await;
                }
                let run = LiveRun {
                    workload,
                    variant,
                    rate,
                    tps: bench.tps,
                    p50_ms: quantile(&bench.latencies_ms, 0.5),
                    p99_ms: quantile(&bench.latencies_ms, 0.99),
                    lag,
                    drain_s,
                    peak_rss_mb,
                    cpu,
                };
                if workload == Workload::Update && variant == Variant::None {
                    none_update_tps = run.tps;
                }
                let lag_note = if variant == Variant::Walshift {
                    format!(
                        ", lag p50/p99/max {:.3}/{:.3}/{:.3} s, drain {:.2} s, peak RSS {:.1} MB, CPU {}",
                        run.lag_p50(),
                        run.lag_p99(),
                        run.lag_max(),
                        run.drain_s,
                        run.peak_rss_mb,
                        run.cpu.unwrap_or_default().line()
                    )
                } else {
                    String::new()
                };
                eprintln!(
                    "  rep {} {} / {}: {:.0} tps, p99 {:.2} ms{lag_note}",
                    rep + 1,
                    workload.label(),
                    variant.label(),
                    run.tps,
                    run.p99_ms
                );
                outcome.runs.push(run);
            }
        }
    }
    drop_walshift_objects(ctx.admin, SPEC).await;
    outcome
}
