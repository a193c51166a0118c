//! Scenario 7: what two-way mirroring costs the application and the WAL.
//!
//! ```text
//!  pgbench -c 4 -T N update on public.users (the old version writing), per repetition,
//!  four variants, their order rotating:
//!    default          REPLICA IDENTITY DEFAULT, nothing mirrors
//!    full             REPLICA IDENTITY FULL (what a two-way source needs), nothing mirrors
//!    one-way          DEFAULT, walshift mirrors users.status from is_active
//!    two-way          FULL, walshift mirrors status <-> is_active (reverse too)
//!  tps from pgbench; WAL bytes per transaction from pg_current_wal_lsn() around the run;
//!  for walshift: the time until it confirmed everything after the load, then the mapping
//!  verified exactly
//! ```

use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

use crate::support::backfill::fixture::SET_MIRROR;
use crate::support::backfill::process::drop_walshift_objects;

use super::live::{pgbench, write_scripts};
use super::runner::Walshift;
use super::{Ctx, current_lsn, exec, median, verify_statuses};

const SPEC: &str = "e2e-identity";
const WITHIN: Duration = Duration::from_secs(1800);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Default,
    Full,
    OneWay,
    TwoWay,
}

impl Variant {
    const ALL: [Variant; 4] = [
        Variant::Default,
        Variant::Full,
        Variant::OneWay,
        Variant::TwoWay,
    ];

    fn label(self) -> &'static str {
        match self {
            Variant::Default => "REPLICA IDENTITY DEFAULT, no mirroring",
            Variant::Full => "REPLICA IDENTITY FULL, no mirroring",
            Variant::OneWay => "DEFAULT, walshift one-way",
            Variant::TwoWay => "FULL, walshift two-way",
        }
    }

    fn full(self) -> bool {
        matches!(self, Variant::Full | Variant::TwoWay)
    }
}

#[derive(Debug, Clone)]
pub struct Run {
    pub variant: Variant,
    pub tps: f64,
    pub wal_bytes_per_txn: f64,
    /// walshift only: load end until everything written is confirmed.
    pub drain_s: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub runs: Vec<Run>,
    pub skipped: Option<String>,
    pub seconds: u64,
    pub clients: u32,
}

impl Outcome {
    fn of(&self, v: Variant) -> Vec<&Run> {
        self.runs.iter().filter(|r| r.variant == v).collect()
    }

    /// The scenario's table: medians, and each variant against the default.
    pub fn markdown(&self) -> String {
        let mut out = String::from("\n## REPLICA IDENTITY FULL and two-way mirroring\n\n");
        if let Some(why) = &self.skipped {
            let _ = writeln!(out, "skipped: {why}");
            return out;
        }
        let _ = writeln!(
            out,
            "pgbench, {} clients, {} s per run, `UPDATE users SET is_active = NOT is_active` on \
             random ids; medians of {} repetition(s).\n",
            self.clients,
            self.seconds,
            self.of(Variant::Default).len()
        );
        out.push_str("| variant | tps | vs default | WAL bytes / txn | vs default | drain after the load |\n");
        out.push_str("|---|---|---|---|---|---|\n");
        let tps = |v| median(&self.of(v).iter().map(|r| r.tps).collect::<Vec<_>>());
        let wal = |v| {
            median(
                &self
                    .of(v)
                    .iter()
                    .map(|r| r.wal_bytes_per_txn)
                    .collect::<Vec<_>>(),
            )
        };
        for v in Variant::ALL {
            let drain = median(&self.of(v).iter().map(|r| r.drain_s).collect::<Vec<_>>());
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.2}x | {:.0} | {:.2}x | {} |",
                v.label(),
                tps(v),
                tps(v) / tps(Variant::Default),
                wal(v),
                wal(v) / wal(Variant::Default),
                if drain.is_nan() {
                    "-".to_string()
                } else {
                    format!("{drain:.2} s")
                }
            );
        }
        out
    }
}

pub async fn run(ctx: &Ctx<'_>) -> Outcome {
    let cfg = ctx.cfg;
    let mut outcome = Outcome {
        seconds: cfg.live_seconds,
        clients: cfg.clients,
        ..Outcome::default()
    };
    let [pgbench_bin] = match ctx.programs("identity", ["pgbench"]) {
        Ok(p) => p,
        Err(why) => {
            outcome.skipped = Some(why);
            return outcome;
        }
    };
    eprintln!(
        "== identity: {} clients, {} s per run",
        cfg.clients, cfg.live_seconds
    );
    let scripts = write_scripts(ctx.scratch);
    drop_walshift_objects(ctx.admin, SPEC).await;
    let one_way = ctx.write_spec(&format!("{SPEC}-1"), SET_MIRROR);
    let two_way = ctx.write_spec(
        &format!("{SPEC}-2"),
        &format!("{SET_MIRROR}reverse = {{ is_active = \"status = 'active'\" }}\n"),
    );
    // Both specs backfilled once, with their slots kept, before any
    // measurement.
    for (spec, name, full) in [(&one_way, "1", false), (&two_way, "2", true)] {
        set_identity(ctx, full).await;
        let mut ws = spawn(ctx, spec, name);
        ws.wait_backfill_done(ctx.admin, WITHIN).await;
        ws.wait_caught_up(ctx.admin, WITHIN).await;
        ws.stop();
    }
    for rep in 0..cfg.reps {
        for i in 0..Variant::ALL.len() {
            let variant = Variant::ALL[(rep + i) % Variant::ALL.len()];
            set_identity(ctx, variant.full()).await;
            if variant == Variant::TwoWay {
                // The other variants' updates ran under REPLICA IDENTITY
                // DEFAULT: they carry no old row, which a two-way mirror
                // refuses (it cannot tell which shape they changed). They
                // are not what this variant measures: its slot skips them.
                let slot = format!("walshift_{}_2", SPEC.replace('-', "_"));
                exec(
                    ctx.admin,
                    &format!("SELECT pg_replication_slot_advance('{slot}', pg_current_wal_lsn())"),
                )
                .await;
            }
            let mut ws = match variant {
                Variant::OneWay => Some(spawn(ctx, &one_way, "1")),
                Variant::TwoWay => Some(spawn(ctx, &two_way, "2")),
                _ => None,
            };
            if let Some(w) = ws.as_mut() {
                // It first drains what the other variants wrote meanwhile.
                w.wait_caught_up(ctx.admin, WITHIN).await;
            }
            exec(ctx.admin, "VACUUM public.users").await;
            exec(ctx.admin, "CHECKPOINT").await;
            let before = current_lsn(ctx.admin).await;
            let tag = format!("identity-{rep}-{variant:?}");
            let bench = pgbench(
                ctx,
                &pgbench_bin,
                &[(scripts.update.as_path(), 1)],
                None,
                &tag,
            )
            .await;
            let after = current_lsn(ctx.admin).await;
            let wal: f64 = ctx
                .admin
                .query_one(
                    "SELECT pg_wal_lsn_diff($2::text::pg_lsn, $1::text::pg_lsn)::float8",
                    &[&before, &after],
                )
                .await
                .expect("WAL bytes")
                .get(0);
            let txns = bench.tps * cfg.live_seconds as f64;
            let drain_s = match ws.take() {
                Some(mut w) => {
                    let drain = w.wait_caught_up(ctx.admin, WITHIN).await;
                    verify_statuses(ctx.admin, "public.users", "walshift's live mirroring").await;
                    w.stop();
                    drain
                }
                None => f64::NAN,
            };
            let run = Run {
                variant,
                tps: bench.tps,
                wal_bytes_per_txn: wal / txns.max(1.0),
                drain_s,
            };
            eprintln!(
                "  rep {} {}: {:.0} tps, {:.0} WAL bytes/txn{}",
                rep + 1,
                variant.label(),
                run.tps,
                run.wal_bytes_per_txn,
                if run.drain_s.is_nan() {
                    String::new()
                } else {
                    format!(", drain {:.2} s", run.drain_s)
                }
            );
            outcome.runs.push(run);
        }
    }
    set_identity(ctx, false).await;
    for name in ["1", "2"] {
        drop_walshift_objects(ctx.admin, &format!("{SPEC}-{name}")).await;
    }
    outcome
}

/// The source's replica identity for a variant. From PostgreSQL 15 on the one-way spec's
/// publication lists only `users (id)`, and under FULL PostgreSQL refuses every UPDATE of a
/// table a publication lists in part: FULL first lists it whole in the same transaction (as
/// `walshift check` advises), DEFAULT lists `(id)` again, as `walshift run` made it.
async fn set_identity(ctx: &Ctx<'_>, full: bool) {
    let one_way = format!("walshift_{}_1", SPEC.replace('-', "_"));
    let listed = ctx
        .admin
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1
               AND current_setting('server_version_num')::int >= 150000",
            &[&one_way],
        )
        .await
        .expect("look up the one-way publication")
        .is_some();
    let sql = match (full, listed) {
        (true, true) => format!(
            "BEGIN; ALTER PUBLICATION {one_way} DROP TABLE public.users;
             ALTER PUBLICATION {one_way} ADD TABLE public.users;
             ALTER TABLE public.users REPLICA IDENTITY FULL; COMMIT"
        ),
        (true, false) => "ALTER TABLE public.users REPLICA IDENTITY FULL".to_string(),
        (false, true) => format!(
            "BEGIN; ALTER TABLE public.users REPLICA IDENTITY DEFAULT;
             ALTER PUBLICATION {one_way} SET TABLE public.users (id); COMMIT"
        ),
        (false, false) => "ALTER TABLE public.users REPLICA IDENTITY DEFAULT".to_string(),
    };
    exec(ctx.admin, &sql).await;
}

fn spawn(ctx: &Ctx<'_>, spec: &Path, name: &str) -> Walshift {
    Walshift::spawn(
        &ctx.db.conninfo(),
        spec,
        &format!("{SPEC}-{name}"),
        &ctx.scratch.join(format!("{SPEC}-{name}.log")),
    )
}
