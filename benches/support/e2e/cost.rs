//! Scenario 8: what mirroring costs at a normal load, per change and per application
//! transaction, against its floor.
//!
//! ```text
//!  per repetition:
//!    rate = a quarter of what "no mirroring" reaches saturated (pgbench update, measured first)
//!    pgbench -R rate, per variant (order rotating): none │ trigger │ walshift [│ baseline]
//!      machine CPU (/proc/stat) during the load; tps, p50/p99 latency; walshift: lag, the CPU
//!      of its three processes, its batches and keys (its /metrics)
//!    the floor, after each walshift run, over the same WAL and the same number of keys:
//!      receive    pg_recvlogical --endpos on a copy of the slot taken before the load, pgoutput,
//!                 the same publication (origin = none on 16+, as walshift asks): its walsender
//!                 and its own CPU
//!      recompute  the generated recompute statement in a DO block, the same keys per batch as
//!                 walshift's mean, COMMIT per batch, over as many random users made stale first
//! ```
//!
//! `E2E_BASELINE_BIN` adds a fourth variant: another walshift binary, so an engine change and
//! the engine before it are measured side by side in one run.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use walshift::catalog::MirrorKind;
use walshift::mirror::sql::{self, Scope};

use crate::support::backfill::fixture::{self, SET_MIRROR};
use crate::support::backfill::process::{
    binary, cpu_seconds, drop_walshift_objects, slot_walsender, slot_walsender_now,
    wait_slot_released,
};

use super::backfill::users_trigger;
use super::live::{self, LagSampler, Pgbench};
use super::runner::{Cpu, Walshift, free_listen_addr, metric};
use super::{Ctx, exec, median, quantile, sync_point, verify_statuses};

const SPEC: &str = "e2e-cost";
const COPY: &str = "e2e_cost_copy";
const WITHIN: Duration = Duration::from_secs(1800);
/// The load, as a fraction of the unmirrored saturated tps.
pub const LOAD_FRACTION: f64 = 0.25;
/// Targets (issue 17): walshift's CPU per change within this of the floor's ...
pub const COST_VS_FLOOR: f64 = 1.3;
/// ... application p99 latency at the load within this of the trigger's ...
pub const P99_VS_TRIGGER: f64 = 1.2;
/// ... and walshift's lag p99 under this.
pub const LAG_P99_S: f64 = 0.1;
/// One user every client updates now and then: this share of the transactions ...
const HOT_PERCENT: u32 = 5;
/// ... on this id.
const HOT_ID: i64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    None,
    Trigger,
    Walshift,
    Baseline,
    /// No mirroring, with pg_recvlogical receiving the load live from a slot of its own.
    Receiver,
}

impl Variant {
    pub fn label(self) -> &'static str {
        match self {
            Variant::None => "no mirroring",
            Variant::Trigger => "trigger",
            Variant::Walshift => "walshift",
            Variant::Baseline => "walshift (E2E_BASELINE_BIN)",
            Variant::Receiver => "no mirroring + pg_recvlogical live",
        }
    }

    fn is_walshift(self) -> bool {
        matches!(self, Variant::Walshift | Variant::Baseline)
    }
}

/// CPU seconds of the floor's processes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Floor {
    /// The walsender serving pg_recvlogical.
    pub walsender: f64,
    /// pg_recvlogical itself.
    pub receiver: f64,
    /// The backend running the recompute loop.
    pub recompute: f64,
}

impl Floor {
    pub fn total(&self) -> f64 {
        self.walsender + self.receiver + self.recompute
    }
}

/// One pgbench run at the load.
#[derive(Debug, Clone)]
pub struct CostRun {
    pub variant: Variant,
    pub rate: f64,
    pub tps: f64,
    pub transactions: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The hot row's transactions: p99 latency, and how many a second.
    pub hot_p99_ms: f64,
    pub hot_tps: f64,
    /// CPU seconds the whole machine was busy during the load.
    pub machine_cpu: f64,
    /// walshift: one lag reading per watermark measurement.
    pub lag: Vec<f64>,
    /// walshift: CPU of its processes during the load and the drain.
    pub cpu: Cpu,
    pub keys: f64,
    pub batches: f64,
    pub floor: Option<Floor>,
}

impl CostRun {
    /// CPU seconds per 100k application transactions (one change each).
    pub fn per_100k(&self, cpu_s: f64) -> f64 {
        cpu_s / self.transactions * 1e5
    }
}

#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub clients: u32,
    pub seconds: u64,
    /// "no mirroring" saturated, per repetition.
    pub saturated_tps: Vec<f64>,
    pub runs: Vec<CostRun>,
    pub skipped: Option<String>,
}

impl Outcome {
    pub fn of(&self, v: Variant) -> Vec<&CostRun> {
        self.runs.iter().filter(|r| r.variant == v).collect()
    }

    /// The median over the runs of `v` of `f`.
    pub fn median_of(&self, v: Variant, f: impl Fn(&CostRun) -> f64) -> f64 {
        median(&self.of(v).into_iter().map(f).collect::<Vec<_>>())
    }

    /// Every lag reading of `v`'s runs, pooled.
    pub fn lag_p99(&self, v: Variant) -> f64 {
        let pooled: Vec<f64> = self.of(v).iter().flat_map(|r| r.lag.clone()).collect();
        quantile(&pooled, 0.99)
    }

    /// Machine CPU per 100k transactions above no mirroring's, median.
    pub fn extra_machine(&self, v: Variant) -> f64 {
        let none = self.median_of(Variant::None, |r| r.per_100k(r.machine_cpu));
        self.median_of(v, |r| r.per_100k(r.machine_cpu)) - none
    }
}

/// Busy CPU seconds of the whole machine so far (`/proc/stat`: all but idle and iowait).
pub(super) fn machine_busy_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
    let line = stat.lines().next().expect("the cpu line");
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...: steal is the host's, not ours.
    let busy: f64 = [0, 1, 2, 5, 6].iter().filter_map(|&i| ticks.get(i)).sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    busy / hz
}

/// CPU seconds of this process's waited-for children so far.
fn children_cpu_s() -> f64 {
    // SAFETY: getrusage writes into the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

pub async fn run(ctx: &Ctx<'_>) -> Outcome {
    let cfg = ctx.cfg;
    let mut outcome = Outcome {
        clients: cfg.clients,
        seconds: cfg.live_seconds,
        ..Outcome::default()
    };
    let [pgbench, recvlogical] = match ctx.programs("cost", ["pgbench", "pg_recvlogical"]) {
        Ok(p) => p,
        Err(why) => {
            outcome.skipped = Some(why);
            return outcome;
        }
    };
    let baseline = std::env::var_os("E2E_BASELINE_BIN").map(PathBuf::from);
    let mut variants = vec![
        Variant::None,
        Variant::Trigger,
        Variant::Walshift,
        Variant::Receiver,
    ];
    if baseline.is_some() {
        variants.push(Variant::Baseline);
    }
    eprintln!(
        "== cost: {} clients, {} s per run, at {LOAD_FRACTION} of the unmirrored tps",
        cfg.clients, cfg.live_seconds
    );
    let scripts = live::write_scripts(ctx.scratch);
    drop_walshift_objects(ctx.admin, SPEC).await;
    let spec = ctx.write_spec(SPEC, SET_MIRROR);
    let plan = fixture::plan_for(ctx.admin, &format!("name = \"{SPEC}\"\n\n{SET_MIRROR}")).await;
    let MirrorKind::Set(set_plan) = &plan.kind else {
        panic!("the cost scenario's mirror is a set mirror")
    };
    let recompute = sql::set_apply(set_plan, Scope::Keys).sql;
    let origin_none = ctx
        .admin
        .query_one("SHOW server_version_num", &[])
        .await
        .is_ok_and(|r| r.get::<_, String>(0).parse::<u32>().unwrap_or(0) >= 160_000);
    let mut run_no = 0;
    let mut spawn = |bin: &Path, listen: &str| {
        run_no += 1;
        Walshift::spawn_listening(
            bin,
            &ctx.db.conninfo(),
            &spec,
            SPEC,
            &ctx.scratch.join(format!("{SPEC}-{run_no}.log")),
            listen,
        )
    };
    let mut ws = spawn(&binary(), &free_listen_addr());
    ws.wait_backfill_done(ctx.admin, WITHIN).await;
    ws.wait_caught_up(ctx.admin, WITHIN).await;
    ws.stop();

    let (trigger_create, trigger_drop) = users_trigger();
    let update: &[(&Path, u32)] = &[(&scripts.update, 1)];
    let hot = ctx.scratch.join("e2e-hot-row.sql");
    std::fs::write(
        &hot,
        format!("UPDATE public.users SET is_active = NOT is_active WHERE id = {HOT_ID};\n"),
    )
    .expect("write the hot-row script");
    let load: &[(&Path, u32)] = &[(&scripts.update, 100 - HOT_PERCENT), (&hot, HOT_PERCENT)];
    for rep in 0..cfg.reps {
        let saturated =
            live::pgbench(ctx, &pgbench, update, None, &format!("cost-sat-{rep}")).await;
        outcome.saturated_tps.push(saturated.tps);
        let rate = (saturated.tps * LOAD_FRACTION).max(1.0);
        for i in 0..variants.len() {
            let variant = variants[(rep + i) % variants.len()];
            let listen = free_listen_addr();
            let mut ws = match variant {
                Variant::Walshift => Some(spawn(&binary(), &listen)),
                Variant::Baseline => Some(spawn(baseline.as_deref().expect("baseline"), &listen)),
                _ => None,
            };
            if variant == Variant::Trigger {
                exec(ctx.admin, trigger_create).await;
            }
            let receiver = match variant {
                Variant::Receiver => {
                    Some(LiveReceiver::start(ctx, &recvlogical, origin_none).await)
                }
                _ => None,
            };
            if let Some(w) = ws.as_mut() {
                w.wait_caught_up(ctx.admin, WITHIN).await;
                live::wait_lag_settled(ctx.admin, SPEC).await;
            }
            exec(ctx.admin, "VACUUM public.users").await;
            exec(ctx.admin, "CHECKPOINT").await;
            if ws.is_some() {
                exec(
                    ctx.admin,
                    &format!(
                        "SELECT pg_copy_logical_replication_slot('{}', '{COPY}')",
                        walshift::spec::object_name(SPEC)
                    ),
                )
                .await;
            }
            let before = match &ws {
                Some(w) => Some((
                    w.cpu(ctx.admin).await,
                    metric(&listen, "walshift_keys_applied_total"),
                    metric(&listen, "walshift_apply_batch_duration_seconds_count"),
                    LagSampler::start(ctx.db, SPEC).await,
                )),
                None => None,
            };
            let machine_before = machine_busy_s();
            let tag = format!("cost-{rep}-{variant:?}");
            let bench: Pgbench = live::pgbench(ctx, &pgbench, load, Some(rate), &tag).await;
            let hot_ms = bench.by_script.get(1).cloned().unwrap_or_default();
            let machine_cpu = machine_busy_s() - machine_before;
            let mut run = CostRun {
                variant,
                rate,
                tps: bench.tps,
                transactions: bench.latencies_ms.len() as f64,
                p50_ms: quantile(&bench.latencies_ms, 0.5),
                p99_ms: quantile(&bench.latencies_ms, 0.99),
                hot_p99_ms: quantile(&hot_ms, 0.99),
                hot_tps: hot_ms.len() as f64 / cfg.live_seconds as f64,
                machine_cpu,
                lag: Vec::new(),
                cpu: Cpu::default(),
                keys: f64::NAN,
                batches: f64::NAN,
                floor: None,
            };
            if let (Some(mut w), Some((cpu0, keys0, batches0, sampler))) = (ws.take(), before) {
                run.lag = sampler.finish().await.iter().map(|s| s.lag_s).collect();
                let end = sync_point(ctx.admin).await;
                w.wait_confirmed(ctx.admin, &end, WITHIN).await;
                run.cpu = w.cpu(ctx.admin).await.since(&cpu0);
                run.keys = metric(&listen, "walshift_keys_applied_total") - keys0;
                run.batches =
                    metric(&listen, "walshift_apply_batch_duration_seconds_count") - batches0;
                w.stop();
                verify_statuses(ctx.admin, "public.users", "walshift at a normal load").await;
                let receive = receive_floor(ctx, &recvlogical, &end, origin_none).await;
                let per_batch = (run.keys / run.batches).round().max(1.0) as u64;
                let recompute_s =
                    recompute_floor(ctx, &recompute, run.keys as u64, per_batch, cfg.users).await;
                run.floor = Some(Floor {
                    walsender: receive.0,
                    receiver: receive.1,
                    recompute: recompute_s,
                });
            }
            if let Some(r) = receiver {
                run.floor = Some(r.finish(ctx).await);
            }
            if variant == Variant::Trigger {
                exec(ctx.admin, trigger_drop).await;
            }
            eprintln!("  rep {} {}: {}", rep + 1, variant.label(), run.line());
            outcome.runs.push(run);
        }
    }
    drop_walshift_objects(ctx.admin, SPEC).await;
    outcome
}

impl CostRun {
    fn line(&self) -> String {
        let mut s = format!(
            "-R {:.0}: {:.0} tps, p50/p99 {:.2}/{:.2} ms, hot row {:.0} tps p99 {:.2} ms, machine CPU {:.2} s per 100k txns",
            self.rate,
            self.tps,
            self.p50_ms,
            self.p99_ms,
            self.hot_tps,
            self.hot_p99_ms,
            self.per_100k(self.machine_cpu)
        );
        if self.variant.is_walshift() {
            s.push_str(&format!(
                ", lag p99 {:.3} s, {:.0} keys in {:.0} batches, CPU {}",
                quantile(&self.lag, 0.99),
                self.keys,
                self.batches,
                self.cpu.line()
            ));
        }
        if let Some(f) = &self.floor {
            s.push_str(&format!(
                "; floor walsender {:.2} + pg_recvlogical {:.2} + recompute {:.2} = {:.2} s",
                f.walsender,
                f.receiver,
                f.recompute,
                f.total()
            ));
        }
        s
    }
}

/// pg_recvlogical over the copy of walshift's slot up to `end`: the CPU seconds of its walsender
/// (read every few ms while it runs; the last few ms are lost) and its own. Drops the copy.
async fn receive_floor(
    ctx: &Ctx<'_>,
    recvlogical: &Path,
    end: &str,
    origin_none: bool,
) -> (f64, f64) {
    let mut cmd = recvlogical_command(ctx, recvlogical, COPY, origin_none);
    cmd.arg(format!("--endpos={end}"));
    let children_before = children_cpu_s();
    let mut child = cmd.spawn().expect("run pg_recvlogical");
    let mut walsender = 0.0f64;
    let mut pid: Option<i32> = None;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for pg_recvlogical") {
            break s;
        }
        if pid.is_none() {
            pid = slot_walsender_now(ctx.admin, COPY).await;
        }
        if let Some(p) = pid {
            let now = cpu_seconds(p);
            if now.is_finite() {
                walsender = now;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let receiver = children_cpu_s() - children_before;
    assert!(status.success(), "pg_recvlogical failed ({status})");
    wait_slot_released(ctx.admin, COPY).await;
    exec(
        ctx.admin,
        &format!("SELECT pg_drop_replication_slot('{COPY}')"),
    )
    .await;
    (walsender, receiver)
}

/// The recompute statement walshift generates, run inside the server over `keys` random users
/// made stale first, `per_batch` keys a statement, COMMIT after each ([`fixture::in_server`]):
/// its backend's CPU seconds. walshift's slot sees these writes; its next run catches up on
/// them before it is measured. The batches wait in an unlogged table of their own (not in the
/// publication), which the loop's session reads.
async fn recompute_floor(
    ctx: &Ctx<'_>,
    statement: &str,
    keys: u64,
    per_batch: u64,
    users: u64,
) -> f64 {
    let setup = format!(
        "CREATE UNLOGGED TABLE public.e2e_cost_batches AS
           SELECT (n - 1) / {per_batch} AS b, array_agg(id::text) AS ids
           FROM (SELECT row_number() OVER () AS n, id
                 FROM (SELECT DISTINCT 1 + (random() * ({users} - 1))::bigint AS id
                       FROM generate_series(1, {draw})) AS d
                 LIMIT {keys}) AS k
           GROUP BY 1;
         UPDATE public.users SET status = NULL
         WHERE id IN (SELECT unnest(ids)::bigint FROM public.e2e_cost_batches);",
        draw = keys + keys / 4 + 100,
    );
    exec(ctx.admin, &setup).await;
    let block = format!(
        "DO $cost$
DECLARE
  r record;
  chunks bigint := 0;
BEGIN
  FOR r IN SELECT ids FROM public.e2e_cost_batches ORDER BY b LOOP
    EXECUTE $stmt${statement}$stmt$ USING r.ids;
    COMMIT;
    chunks := chunks + 1;
  END LOOP;
  PERFORM set_config('walshift_bench.chunks', chunks::text, false);
END
$cost$"
    );
    let sample = fixture::in_server(ctx.db, &block).await;
    exec(ctx.admin, "DROP TABLE public.e2e_cost_batches").await;
    verify_statuses(ctx.admin, "public.users", "the recompute floor").await;
    sample.cpu_backend_s
}

impl Outcome {
    /// The section of the report: per variant, then walshift's CPU per change beside the floor.
    pub fn markdown(&self) -> String {
        use std::fmt::Write;
        let mut out = String::from("\n## Cost at a normal load\n\n");
        if let Some(why) = &self.skipped {
            let _ = writeln!(out, "skipped: {why}");
            return out;
        }
        let _ = writeln!(
            out,
            "pgbench, {} clients, {} s per run, `UPDATE users SET is_active = NOT is_active` on \
             random ids at `-R` = {LOAD_FRACTION} x what no mirroring reached saturated ({} tps), \
             {HOT_PERCENT}% of them on one hot row (id {HOT_ID}); \
             medians of {} repetition(s). Machine CPU is every busy CPU second of the machine \
             during the load (`/proc/stat`), per 100k application transactions of one change \
             each.\n",
            self.clients,
            self.seconds,
            super::report::list(&self.saturated_tps, 0),
            self.saturated_tps.len()
        );
        out.push_str(
            "| variant | tps | p50 ms | p99 ms | hot row: tps, p99 ms | lag p99 s | keys / batch | machine CPU-s / 100k | above no mirroring |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        let variants: Vec<Variant> = [
            Variant::None,
            Variant::Trigger,
            Variant::Walshift,
            Variant::Baseline,
        ]
        .into_iter()
        .filter(|v| !self.of(*v).is_empty())
        .collect();
        for &v in &variants {
            let (lag, per_batch) = if v.is_walshift() {
                (
                    format!("{:.3}", self.lag_p99(v)),
                    format!("{:.0}", self.median_of(v, |r| r.keys / r.batches)),
                )
            } else {
                ("—".into(), "—".into())
            };
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.2} | {:.2} | {:.0}, {:.2} | {lag} | {per_batch} | {:.2} | {:.2} |",
                v.label(),
                self.median_of(v, |r| r.tps),
                self.median_of(v, |r| r.p50_ms),
                self.median_of(v, |r| r.p99_ms),
                self.median_of(v, |r| r.hot_tps),
                self.median_of(v, |r| r.hot_p99_ms),
                self.median_of(v, |r| r.per_100k(r.machine_cpu)),
                self.extra_machine(v),
            );
        }
        out.push_str(
            "\nCPU-s per 100k changes, by process, against the floor (pg_recvlogical receiving the \
             same WAL through the same publication, and the generated recompute statement looped \
             in the server over as many keys, as many per batch):\n\n\
             | variant | walsender | walshift / pg_recvlogical | apply / in-server recompute | total | floor total | vs floor |\n\
             |---|---:|---:|---:|---:|---:|---:|\n",
        );
        for &v in variants.iter().filter(|v| v.is_walshift()) {
            let m = |f: &dyn Fn(&CostRun) -> f64| self.median_of(v, |r| r.per_100k(f(r)));
            let floor =
                |f: &dyn Fn(&Floor) -> f64| m(&|r: &CostRun| r.floor.as_ref().map_or(f64::NAN, f));
            let total = m(&|r: &CostRun| r.cpu.total());
            let floor_total = floor(&|f: &Floor| f.total());
            let _ = writeln!(
                out,
                "| {} | {:.2} (floor {:.2}) | {:.2} ({:.2}) | {:.2} ({:.2}) | {total:.2} | {floor_total:.2} | {:.2}x |",
                v.label(),
                m(&|r: &CostRun| r.cpu.walsender),
                floor(&|f: &Floor| f.walsender),
                m(&|r: &CostRun| r.cpu.walshift),
                floor(&|f: &Floor| f.receiver),
                m(&|r: &CostRun| r.cpu.apply),
                floor(&|f: &Floor| f.recompute),
                total / floor_total,
            );
        }
        if !self.of(Variant::Receiver).is_empty() {
            let m = |f: &dyn Fn(&Floor) -> f64| {
                self.median_of(Variant::Receiver, |r| {
                    r.per_100k(r.floor.as_ref().map_or(f64::NAN, f))
                })
            };
            let recompute = self.median_of(Variant::Walshift, |r| {
                r.per_100k(r.floor.as_ref().map_or(f64::NAN, |f| f.recompute))
            });
            let live = m(&|f: &Floor| f.walsender + f.receiver) + recompute;
            let total = self.median_of(Variant::Walshift, |r| r.per_100k(r.cpu.total()));
            let _ = writeln!(
                out,
                "| {} (the live floor: the same load received as it is written, plus the recompute above) | {:.2} | {:.2} | ({recompute:.2}) | — | {live:.2} | walshift {:.2}x |",
                Variant::Receiver.label(),
                m(&|f: &Floor| f.walsender),
                m(&|f: &Floor| f.receiver),
                total / live,
            );
        }
        out
    }
}

/// pg_recvlogical on `slot` with pgoutput and walshift's publication, into /dev/null; one
/// status update a second.
fn recvlogical_command(
    ctx: &Ctx<'_>,
    recvlogical: &Path,
    slot: &str,
    origin_none: bool,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(recvlogical);
    cmd.args(["-d", &ctx.db.conninfo(), "-S", slot, "--start", "--no-loop"])
        .args(["-o", "proto_version=1", "-o"])
        .arg(format!(
            "publication_names={}",
            walshift::spec::object_name(SPEC)
        ))
        .args(["-o", "messages=true"]);
    if origin_none {
        cmd.args(["-o", "origin=none"]);
    }
    cmd.args(["-s", "1", "-F", "0", "-f", "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// A slot of its own and pg_recvlogical on it for the length of one load: what any live
/// logical consumer costs.
struct LiveReceiver {
    child: tokio::process::Child,
    walsender: i32,
    walsender_before: f64,
    children_before: f64,
}

const LIVE_SLOT: &str = "e2e_cost_live";

impl LiveReceiver {
    async fn start(ctx: &Ctx<'_>, recvlogical: &Path, origin_none: bool) -> LiveReceiver {
        exec(
            ctx.admin,
            &format!("SELECT pg_create_logical_replication_slot('{LIVE_SLOT}', 'pgoutput')"),
        )
        .await;
        let children_before = children_cpu_s();
        let child = recvlogical_command(ctx, recvlogical, LIVE_SLOT, origin_none)
            .spawn()
            .expect("run pg_recvlogical");
        let walsender = slot_walsender(ctx.admin, LIVE_SLOT, WITHIN).await;
        LiveReceiver {
            child,
            walsender,
            walsender_before: cpu_seconds(walsender),
            children_before,
        }
    }

    /// Once it has confirmed everything written so far: its CPU, and the slot dropped.
    async fn finish(mut self, ctx: &Ctx<'_>) -> Floor {
        let end = sync_point(ctx.admin).await;
        let started = std::time::Instant::now();
        while !super::confirmed_at_least(ctx.admin, LIVE_SLOT, &end).await {
            assert!(
                started.elapsed() < WITHIN,
                "pg_recvlogical did not confirm {end}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let walsender = cpu_seconds(self.walsender) - self.walsender_before;
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe { libc::kill(pid as i32, libc::SIGINT) };
        }
        self.child.wait().await.expect("wait for pg_recvlogical");
        let receiver = children_cpu_s() - self.children_before;
        wait_slot_released(ctx.admin, LIVE_SLOT).await;
        exec(
            ctx.admin,
            &format!("SELECT pg_drop_replication_slot('{LIVE_SLOT}')"),
        )
        .await;
        Floor {
            walsender,
            receiver,
            recompute: 0.0,
        }
    }
}
