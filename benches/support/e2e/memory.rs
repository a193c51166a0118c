//! Scenario 5 (its own part): walshift's memory during one huge transaction.
//!
//! ```text
//!  public.events (id, is_active, status), empty; walshift run mirrors status (caught up)
//!  INSERT INTO events SELECT ... generate_series(1, 5,000,000)   -- one transaction
//!  until the slot confirms it; verify; VmHWM of the walshift process
//! ```
//!
//! The peak memory of the other scenarios is read from their own walshift runs.

use std::time::{Duration, Instant};

use crate::support::backfill::process::drop_walshift_objects;

use super::runner::Walshift;
use super::{Ctx, current_lsn, exec, thousands, verify_statuses};

const SPEC: &str = "e2e-bigtxn";
const WITHIN: Duration = Duration::from_secs(3600);

const MIRROR: &str = r#"[[mirror]]
source = "public.events"
set = { status = "CASE WHEN is_active THEN 'active' ELSE 'disabled' END" }
"#;

#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub size: String,
    pub insert_s: f64,
    /// Commit of the transaction until the slot confirmed it.
    pub mirror_s: f64,
    pub peak_rss_mb: f64,
}

pub async fn run(ctx: &Ctx<'_>) -> Outcome {
    let rows = ctx.cfg.big_txn_rows;
    let size = format!("{} rows in one transaction", thousands(rows));
    eprintln!("== memory: {size}");
    exec(
        ctx.admin,
        "DROP TABLE IF EXISTS public.events;
         CREATE TABLE public.events (id bigint PRIMARY KEY, is_active boolean NOT NULL, status text)",
    )
    .await;
    drop_walshift_objects(ctx.admin, SPEC).await;
    let spec = ctx.write_spec(SPEC, MIRROR);
    let mut ws = Walshift::spawn(
        &ctx.db.conninfo(),
        &spec,
        SPEC,
        &ctx.scratch.join(format!("{SPEC}.log")),
    );
    ws.wait_backfill_done(ctx.admin, WITHIN).await;
    ws.wait_caught_up(ctx.admin, WITHIN).await;
    let started = Instant::now();
    exec(
        ctx.admin,
        &format!(
            "INSERT INTO public.events (id, is_active)
             SELECT g, g % 3 <> 0 FROM generate_series(1, {rows}) AS g"
        ),
    )
    .await;
    let insert_s = started.elapsed().as_secs_f64();
    let end = current_lsn(ctx.admin).await;
    let mirror_s = ws.wait_confirmed(ctx.admin, &end, WITHIN).await;
    let peak_rss_mb = ws.stop();
    verify_statuses(ctx.admin, "public.events", "the huge transaction").await;
    eprintln!(
        "  insert {insert_s:.1} s, mirrored {mirror_s:.1} s after commit, peak RSS {peak_rss_mb:.1} MB"
    );
    drop_walshift_objects(ctx.admin, SPEC).await;
    exec(ctx.admin, "DROP TABLE public.events").await;
    Outcome {
        size,
        insert_s,
        mirror_s,
        peak_rss_mb,
    }
}
