//! Scenario 10: what the publication's column list saves the walsender (docs/design.md,
//! "Column lists").
//!
//! ```text
//!  public.accounts_wide: 11 columns (text, jsonb, numeric, timestamps), N rows
//!  walshift run, one-way set mirror (name_v2 from name) ─▶ its publication, as it makes it
//!  a second publication over the whole table (what walshift made before 15, or by hand)
//!  one pgoutput slot, then N single-row update transactions
//!  per repetition, both publications in turn over the same WAL:
//!    pg_logical_slot_peek_binary_changes(slot, ..., publication_names = p)
//!  ─▶ server time per 100k changes (decoding + pgoutput's printing), bytes per change
//! ```
//!
//! Peeking reads the slot without consuming it, so every repetition decodes the very same WAL;
//! the one backend does the walsender's work (decoding and pgoutput) and returns only a count
//! and a byte sum, so its time is the server's alone.

use std::fmt::Write;
use std::time::{Duration, Instant};

use crate::support::backfill::process::drop_walshift_objects;

use super::runner::Walshift;
use super::{Ctx, exec, median};

const SPEC: &str = "e2e-publication";
const SLOT: &str = "e2e_publication_peek";
const WHOLE: &str = "e2e_publication_whole";
const WITHIN: Duration = Duration::from_secs(1800);

const SCHEMA: &str = "
DROP TABLE IF EXISTS public.accounts_wide;
CREATE TABLE public.accounts_wide (
  id bigint PRIMARY KEY, account_id bigint, email text, name text, created_at timestamptz,
  updated_at timestamptz, balance numeric(12,2), is_active boolean, prefs jsonb, note text,
  name_v2 text);
";

const MIRROR: &str = r#"
[[mirror]]
source = "public.accounts_wide"
set = { name_v2 = "upper(name)" }
"#;

/// One peek over the WAL of the load.
#[derive(Debug, Clone)]
pub struct Peek {
    pub walshift: bool,
    pub seconds: f64,
    pub bytes: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub peeks: Vec<Peek>,
    pub changes: u64,
    /// The column list walshift's publication has (`-` for whole rows).
    pub list: String,
    pub skipped: Option<String>,
}

impl Outcome {
    fn median_of(&self, walshift: bool, f: impl Fn(&Peek) -> f64) -> f64 {
        let v: Vec<f64> = self
            .peeks
            .iter()
            .filter(|p| p.walshift == walshift)
            .map(f)
            .collect();
        median(&v)
    }

    /// (walshift, whole rows): server ms per 100k changes.
    pub fn ms_per_100k(&self) -> (f64, f64) {
        let per = |w| self.median_of(w, |p| p.seconds) * 1000.0 * 100_000.0 / self.changes as f64;
        (per(true), per(false))
    }

    /// (walshift, whole rows): bytes per change.
    pub fn bytes_per_change(&self) -> (f64, f64) {
        let per = |w| self.median_of(w, |p| p.bytes) / self.changes as f64;
        (per(true), per(false))
    }

    pub fn markdown(&self) -> String {
        let mut out = String::from("\n## The publication's column list\n\n");
        if let Some(why) = &self.skipped {
            let _ = writeln!(out, "skipped: {why}");
            return out;
        }
        let reps = self.peeks.iter().filter(|p| p.walshift).count();
        let _ = writeln!(
            out,
            "{} single-row update transactions on an 11-column table (`accounts_wide`: text, \
             jsonb, numeric, timestamps), decoded from one slot with each publication in turn \
             (`pg_logical_slot_peek_binary_changes`, the same WAL every time); medians of {reps} \
             peek(s) each. walshift's publication lists `{}`.\n",
            self.changes, self.list
        );
        out.push_str("| publication | server ms per 100k changes | bytes per change |\n");
        out.push_str("|---|---:|---:|\n");
        let (ms_w, ms_all) = self.ms_per_100k();
        let (b_w, b_all) = self.bytes_per_change();
        let _ = writeln!(
            out,
            "| walshift's (column list) | {ms_w:.0} | {b_w:.0} |\n| whole rows | {ms_all:.0} | \
             {b_all:.0} |\n| ratio | {:.2}x | {:.2}x |",
            ms_w / ms_all,
            b_w / b_all
        );
        out
    }
}

pub async fn run(ctx: &Ctx<'_>) -> Outcome {
    let mut outcome = Outcome::default();
    let version: i32 = ctx
        .admin
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .expect("server_version_num")
        .get(0);
    if version < 150_000 {
        let why = "publication column lists need PostgreSQL 15 or later".to_string();
        eprintln!("== publication: skipped: {why}");
        outcome.skipped = Some(why);
        return outcome;
    }
    let rows = ((100_000.0 * ctx.cfg.scale) as i64).max(5_000);
    let changes = rows as u64;
    eprintln!("== publication: {rows} rows, {changes} update transactions");
    drop_walshift_objects(ctx.admin, SPEC).await;
    exec(ctx.admin, SCHEMA).await;
    exec(
        ctx.admin,
        &format!(
            "INSERT INTO public.accounts_wide
             SELECT g, g % 1000, 'user' || g || '@example.com', 'User Name ' || g, now(), now(),
                    g * 1.5, true, '{{\"theme\": \"dark\", \"lang\": \"en\", \"n\": 3}}',
                    repeat('x', 80), NULL
             FROM generate_series(1, {rows}) g;
             ANALYZE public.accounts_wide"
        ),
    )
    .await;
    let spec = ctx.write_spec(SPEC, MIRROR);
    let mut ws = Walshift::spawn(
        &ctx.db.conninfo(),
        &spec,
        SPEC,
        &ctx.scratch.join(format!("{SPEC}.log")),
    );
    ws.wait_backfill_done(ctx.admin, WITHIN).await;
    ws.wait_caught_up(ctx.admin, WITHIN).await;
    ws.stop();
    let pubname = format!("walshift_{}", SPEC.replace('-', "_"));
    outcome.list = ctx
        .admin
        .query_one(
            "SELECT coalesce((
               SELECT array_to_string(ARRAY(
                        SELECT a.attname::text FROM pg_attribute a
                        WHERE a.attrelid = r.prrelid AND a.attnum = ANY(r.prattrs::int2[])
                        ORDER BY a.attnum), ', ')
               FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
               WHERE p.pubname = $1 AND r.prrelid = 'public.accounts_wide'::regclass
                 AND r.prattrs IS NOT NULL), '-')",
            &[&pubname],
        )
        .await
        .expect("walshift's column list")
        .get(0);
    exec(
        ctx.admin,
        &format!(
            "DROP PUBLICATION IF EXISTS {WHOLE};
             CREATE PUBLICATION {WHOLE} FOR TABLE public.accounts_wide"
        ),
    )
    .await;
    // A slot is made in a transaction of its own.
    exec(
        ctx.admin,
        &format!("SELECT pg_create_logical_replication_slot('{SLOT}', 'pgoutput')"),
    )
    .await;
    exec(
        ctx.admin,
        &format!(
            "CREATE OR REPLACE PROCEDURE pg_temp.churn(n int) LANGUAGE plpgsql AS $$
             BEGIN
               FOR i IN 1..n LOOP
                 UPDATE public.accounts_wide SET is_active = NOT is_active WHERE id = 1 + (i * 7919) % {rows};
                 COMMIT;
               END LOOP;
             END $$"
        ),
    )
    .await;
    // A procedure that commits runs outside a transaction block: a query of its own.
    exec(ctx.admin, &format!("CALL pg_temp.churn({changes})")).await;
    outcome.changes = changes;
    for rep in 0..ctx.cfg.reps.max(3) {
        // Alternate which goes first, so neither always finds the WAL in cache first.
        let order = if rep % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for walshift in order {
            let p = if walshift { &pubname } else { WHOLE };
            let started = Instant::now();
            let row = ctx
                .admin
                .query_one(
                    "SELECT count(*), coalesce(sum(length(data)), 0)::float8
                     FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL,
                          'proto_version', '1', 'publication_names', $2)",
                    &[&SLOT, &p],
                )
                .await
                .expect("peek the slot");
            let seconds = started.elapsed().as_secs_f64();
            let bytes: f64 = row.get(1);
            eprintln!(
                "  rep {} {}: {:.3} s, {:.0} bytes/change",
                rep + 1,
                if walshift { "walshift's" } else { "whole rows" },
                seconds,
                bytes / changes as f64
            );
            outcome.peeks.push(Peek {
                walshift,
                seconds,
                bytes,
            });
        }
    }
    exec(
        ctx.admin,
        &format!(
            "SELECT pg_drop_replication_slot('{SLOT}');
             DROP PUBLICATION {WHOLE};
             DROP TABLE public.accounts_wide"
        ),
    )
    .await;
    drop_walshift_objects(ctx.admin, SPEC).await;
    outcome
}
