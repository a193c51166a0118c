//! Scenario 4: catching up on a backlog.
//!
//! ```text
//!  walshift run (slot, backfill done, caught up) ─▶ SIGTERM
//!  per repetition:
//!    1,000,000 changes to users in transactions of 100 (a DO block, COMMIT each) pile up in the slot
//!    end = pg_current_wal_lsn();  pg_copy_logical_replication_slot(walshift's slot, copy)
//!    walshift run          ─ until its slot's confirmed_flush_lsn >= end   (decode + apply)
//!    pg_recvlogical --endpos end on the copy, pgoutput, walshift's publication  (receive only)
//!    (the order alternates; both read the same backlog from the same position)
//! ```

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::backfill::fixture::SET_MIRROR;
use crate::support::backfill::process::drop_walshift_objects;

use super::runner::{Cpu, Walshift};
use super::{Ctx, current_lsn, exec, thousands, verify_statuses};

const SPEC: &str = "e2e-catchup";
const COPY: &str = "e2e_catchup_copy";
/// Changes per transaction of the backlog.
const PER_TXN: u64 = 100;
const WITHIN: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Default)]
pub struct CatchupRun {
    pub backlog_bytes: f64,
    pub load_s: f64,
    pub walshift_s: f64,
    pub recvlogical_s: f64,
    pub peak_rss_mb: f64,
    /// CPU of walshift's processes until caught up.
    pub cpu: Cpu,
}

#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub size: String,
    pub runs: Vec<CatchupRun>,
    pub skipped: Option<String>,
}

impl Outcome {
    pub fn walshift_s(&self) -> Vec<f64> {
        self.runs.iter().map(|r| r.walshift_s).collect()
    }
    pub fn recvlogical_s(&self) -> Vec<f64> {
        self.runs.iter().map(|r| r.recvlogical_s).collect()
    }
    pub fn peak_rss_mb(&self) -> Vec<f64> {
        self.runs.iter().map(|r| r.peak_rss_mb).collect()
    }
}

pub async fn run(ctx: &Ctx<'_>) -> Outcome {
    let cfg = ctx.cfg;
    let changes = cfg.catchup_changes.min(cfg.users / PER_TXN * PER_TXN);
    let mut outcome = Outcome {
        size: format!(
            "{} changes in {} txns",
            thousands(changes),
            thousands(changes / PER_TXN)
        ),
        ..Outcome::default()
    };
    let [recvlogical] = match ctx.programs("catch-up", ["pg_recvlogical"]) {
        Ok(p) => p,
        Err(why) => {
            outcome.skipped = Some(why);
            return outcome;
        }
    };
    eprintln!("== catch-up: {}", outcome.size);
    drop_walshift_objects(ctx.admin, SPEC).await;
    let spec = ctx.write_spec(SPEC, SET_MIRROR);
    let mut run_no = 0;
    let mut spawn = || {
        run_no += 1;
        Walshift::spawn(
            &ctx.db.conninfo(),
            &spec,
            SPEC,
            &ctx.scratch.join(format!("{SPEC}-{run_no}.log")),
        )
    };
    let mut ws = spawn();
    ws.wait_backfill_done(ctx.admin, WITHIN).await;
    ws.wait_caught_up(ctx.admin, WITHIN).await;
    let slot = ws.object.clone();
    ws.stop();

    let load = format!(
        "DO $e2e$
BEGIN
  FOR b IN 0..{last} LOOP
    UPDATE public.users SET is_active = NOT is_active
    WHERE id > b * {PER_TXN} AND id <= (b + 1) * {PER_TXN};
    COMMIT;
  END LOOP;
END
$e2e$",
        last = changes / PER_TXN - 1
    );
    for rep in 0..cfg.reps {
        exec(ctx.admin, "VACUUM public.users").await;
        exec(ctx.admin, "CHECKPOINT").await;
        let started = Instant::now();
        exec(ctx.admin, &load).await;
        let load_s = started.elapsed().as_secs_f64();
        let end = current_lsn(ctx.admin).await;
        let backlog_bytes: f64 = ctx
            .admin
            .query_one(
                "SELECT ($1::text::pg_lsn - confirmed_flush_lsn)::float8
                 FROM pg_replication_slots WHERE slot_name = $2",
                &[&end, &slot],
            )
            .await
            .expect("backlog size")
            .get(0);
        exec(
            ctx.admin,
            &format!("SELECT pg_copy_logical_replication_slot('{slot}', '{COPY}')"),
        )
        .await;
        let mut run = CatchupRun {
            backlog_bytes,
            load_s,
            ..CatchupRun::default()
        };
        for turn in 0..2 {
            if (turn == 0) == (rep % 2 == 0) {
                let mut ws = spawn();
                run.walshift_s = ws.wait_confirmed(ctx.admin, &end, WITHIN).await;
                run.cpu = ws.cpu(ctx.admin).await;
                // Past its own writes too, so the next backlog holds only the next load.
                ws.wait_caught_up(ctx.admin, WITHIN).await;
                run.peak_rss_mb = ws.stop();
            } else {
                let started = Instant::now();
                let out = tokio::process::Command::new(&recvlogical)
                    .args(["-d", &ctx.db.conninfo(), "-S", COPY, "--start", "--no-loop"])
                    .arg(format!("--endpos={end}"))
                    .args(["-o", "proto_version=1", "-o"])
                    .arg(format!("publication_names={slot}"))
                    .args(["-o", "messages=true", "-F", "0", "-f", "/dev/null"])
                    .stdin(Stdio::null())
                    .output()
                    .await
                    .expect("run pg_recvlogical");
                run.recvlogical_s = started.elapsed().as_secs_f64();
                assert!(
                    out.status.success(),
                    "pg_recvlogical failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        crate::support::backfill::process::wait_slot_released(ctx.admin, COPY).await;
        exec(
            ctx.admin,
            &format!("SELECT pg_drop_replication_slot('{COPY}')"),
        )
        .await;
        verify_statuses(ctx.admin, "public.users", "the catch-up").await;
        eprintln!(
            "  rep {}: backlog {:.0} MB (load {:.1} s): walshift {:.2} s (CPU {}), pg_recvlogical {:.2} s, peak RSS {:.1} MB",
            rep + 1,
            run.backlog_bytes / 1e6,
            run.load_s,
            run.walshift_s,
            run.cpu.line(),
            run.recvlogical_s,
            run.peak_rss_mb
        );
        outcome.runs.push(run);
    }
    drop_walshift_objects(ctx.admin, SPEC).await;
    outcome
}
