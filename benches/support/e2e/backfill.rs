//! Scenarios 1 and 2: the backfill of history, three ways, from the same reset.
//!
//! ```text
//!  fixture (benches/support/backfill): users 1M (set: status) / orders 200k → order_items ~1M (rows)
//!  per repetition, the order rotating:
//!    reset ─▶ walshift run (fixed chunks, unthrottled) ─poll walshift.backfill─▶ done ─▶ SIGTERM
//!    reset ─▶ in-server DO block: the same chunks, walshift's own statements, COMMIT per chunk
//!    reset ─▶ trigger method (pgroll, reshape): CREATE TRIGGER computing the new shape on every
//!             write, then UPDATE ... SET id = id in keyset batches of 1000, COMMIT per batch
//!  every contender ends verified exact
//! ```
//!
//! The trigger method runs at its best: its batch loop is a `DO` block inside the server (no
//! round trips), as the in-server loop is. The tools drive it from a client.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::support::backfill::fixture::{
    InServerSample, Scenario, apply_session, in_server, plan_for, reset, scenarios, spec_text,
    verify,
};
use crate::support::backfill::process::{
    RunSample, binary, cpu_seconds, drop_walshift_objects, run_walshift, scalar_f64,
};

use super::{Ctx, exec, thousands};

/// Source rows per batch of the trigger method (pgroll's and reshape's default).
pub const TRIGGER_BATCH: u64 = 1000;

/// One run of the trigger method: trigger creation and the batch loop.
#[derive(Debug, Clone, Default)]
pub struct TriggerSample {
    pub total_s: f64,
    pub batches: i64,
    /// CPU seconds of the backend that ran it.
    pub cpu_backend_s: f64,
}

/// Every run of one backfill scenario.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub scenario: &'static str,
    pub size: String,
    pub target_rows: i64,
    pub walshift: Vec<RunSample>,
    pub in_server: Vec<InServerSample>,
    pub trigger: Vec<TriggerSample>,
}

impl Outcome {
    pub fn walshift_s(&self) -> Vec<f64> {
        self.walshift.iter().map(|s| s.total_s).collect()
    }
    pub fn in_server_s(&self) -> Vec<f64> {
        self.in_server.iter().map(|s| s.total_s).collect()
    }
    pub fn trigger_s(&self) -> Vec<f64> {
        self.trigger.iter().map(|s| s.total_s).collect()
    }
    pub fn peak_rss_mb(&self) -> Vec<f64> {
        self.walshift.iter().map(|s| s.peak_rss_mb).collect()
    }
    /// CPU seconds per run: walshift's process, apply backend and walsender together.
    pub fn walshift_cpu(&self) -> Vec<f64> {
        self.walshift.iter().map(RunSample::cpu_total_s).collect()
    }
    pub fn in_server_cpu(&self) -> Vec<f64> {
        self.in_server.iter().map(|s| s.cpu_backend_s).collect()
    }
    pub fn trigger_cpu(&self) -> Vec<f64> {
        self.trigger.iter().map(|s| s.cpu_backend_s).collect()
    }
}

/// The trigger of the trigger method and what it maps, per scenario. Like the triggers pgroll
/// and reshape generate, it declares the row's columns as variables (set mode) and maps only
/// writes of the old schema version, told apart by `search_path`.
fn trigger_ddl(scenario: &str) -> (&'static str, &'static str, &'static str) {
    match scenario {
        "set" => (
            "public.users",
            "CREATE FUNCTION public.e2e_users_status_trigger() RETURNS trigger
             LANGUAGE plpgsql AS $fn$
             DECLARE
               id public.users.id%TYPE := NEW.id;
               is_active public.users.is_active%TYPE := NEW.is_active;
             BEGIN
               IF current_setting('search_path') <> 'e2e_new_version' THEN
                 NEW.status := CASE WHEN is_active THEN 'active' ELSE 'disabled' END;
               END IF;
               RETURN NEW;
             END
             $fn$;
             CREATE TRIGGER e2e_users_status BEFORE INSERT OR UPDATE ON public.users
               FOR EACH ROW EXECUTE FUNCTION public.e2e_users_status_trigger();",
            "DROP TRIGGER e2e_users_status ON public.users;
             DROP FUNCTION public.e2e_users_status_trigger();",
        ),
        "rows" => (
            "public.orders",
            "CREATE FUNCTION public.e2e_order_items_trigger() RETURNS trigger
             LANGUAGE plpgsql AS $fn$
             BEGIN
               IF current_setting('search_path') <> 'e2e_new_version' THEN
                 IF TG_OP <> 'INSERT' THEN
                   DELETE FROM public.order_items WHERE order_id = OLD.id;
                 END IF;
                 IF TG_OP <> 'DELETE' THEN
                   INSERT INTO public.order_items (order_id, line_no, sku, qty)
                   SELECT NEW.id, i.n, i.v->>'sku', (i.v->>'qty')::int
                   FROM jsonb_array_elements(NEW.items) WITH ORDINALITY AS i(v, n);
                 END IF;
               END IF;
               RETURN NULL;
             END
             $fn$;
             CREATE TRIGGER e2e_order_items AFTER INSERT OR UPDATE OR DELETE ON public.orders
               FOR EACH ROW EXECUTE FUNCTION public.e2e_order_items_trigger();",
            "DROP TRIGGER e2e_order_items ON public.orders;
             DROP FUNCTION public.e2e_order_items_trigger();",
        ),
        other => panic!("no trigger method for scenario {other}"),
    }
}

/// The trigger of scenario `set` or `rows` alone: (create, drop).
pub fn trigger_of(scenario: &str) -> (&'static str, &'static str) {
    let (_, create, drop) = trigger_ddl(scenario);
    (create, drop)
}

/// The SET-mode trigger alone, for the live scenario's "trigger" variant: (create, drop).
pub fn users_trigger() -> (&'static str, &'static str) {
    let (_, create, drop) = trigger_ddl("set");
    (create, drop)
}

/// The batch loop of the trigger method: touch every row in key order, `TRIGGER_BATCH` at a
/// time, so the trigger fires for it; COMMIT per batch. Each batch is a key range (the next
/// `TRIGGER_BATCH` keys after the last one), so it is an index range scan whatever the
/// planner thinks of a 1000-key IN list. Keys are the bench tables' positive bigints, so the
/// loop starts below the smallest.
fn trigger_backfill(source: &str) -> String {
    format!(
        "DO $e2e$
DECLARE
  last_key bigint := -9223372036854775808;
  upper_key bigint;
  batches bigint := 0;
BEGIN
  LOOP
    SELECT max(id) INTO upper_key
    FROM (SELECT id FROM {source} WHERE id > last_key ORDER BY id LIMIT {TRIGGER_BATCH}) AS b;
    EXIT WHEN upper_key IS NULL;
    UPDATE {source} SET id = id WHERE id > last_key AND id <= upper_key;
    COMMIT;
    batches := batches + 1;
    last_key := upper_key;
  END LOOP;
  PERFORM set_config('e2e.batches', batches::text, false);
END
$e2e$"
    )
}

async fn trigger_run(ctx: &Ctx<'_>, scenario: &Scenario) -> TriggerSample {
    let (source, create, drop) = trigger_ddl(scenario.name);
    let (client, pid) = apply_session(ctx.db).await;
    let block = trigger_backfill(source);
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    exec(&client, create).await;
    // Alone in its Query message, so the DO block may COMMIT.
    exec(&client, &block).await;
    let total_s = started.elapsed().as_secs_f64();
    let cpu_backend_s = cpu_seconds(pid) - cpu_before;
    let batches = scalar_f64(&client, "SELECT current_setting('e2e.batches')::float8").await as i64;
    exec(&client, drop).await;
    TriggerSample {
        total_s,
        batches,
        cpu_backend_s,
    }
}

async fn walshift_run(ctx: &Ctx<'_>, scenario: &Scenario, run_no: usize) -> RunSample {
    let path = ctx.scratch.join(format!("{}.toml", scenario.spec_name));
    std::fs::write(
        &path,
        spec_text(scenario, scenario.spec_name, Some(ctx.cfg.chunk)),
    )
    .expect("write the spec");
    // What `check` promises, on the same reset tables, against what the run
    // then takes (its backfill, setup left out).
    let estimate = check_estimate_s(&ctx.db.conninfo(), &path);
    let log = ctx
        .scratch
        .join(format!("{}-{run_no}.log", scenario.spec_name));
    let sample = run_walshift(
        ctx.admin,
        &ctx.db.conninfo(),
        &path,
        scenario.spec_name,
        &log,
    )
    .await;
    drop_walshift_objects(ctx.admin, scenario.spec_name).await;
    let actual = sample.total_s - sample.setup_s;
    match estimate {
        Some(e) => eprintln!(
            "  check's ETA {e:.2}s, the backfill took {actual:.2}s: estimate/actual {:.2}",
            e / actual
        ),
        None => eprintln!("  check printed no ETA"),
    }
    sample
}

/// The backfill ETA `walshift check SPEC --scan off` prints for all mirrors,
/// in seconds (`None` when it printed none).
pub fn check_estimate_s(conninfo: &str, spec: &Path) -> Option<f64> {
    let out = Command::new(binary())
        .arg("check")
        .arg(spec)
        .args(["--db", conninfo, "--scan", "off"])
        .env_remove("RUST_LOG")
        .env_remove("WALSHIFT_DB")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", binary().display()));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("backfill estimate, all mirrors: ~"))?;
    parse_eta(line.strip_suffix(" unthrottled")?)
}

/// Seconds of an ETA as check prints it: `1h 02m`, `3m 20s`, `42s`, `4.2s`, `850ms`.
fn parse_eta(text: &str) -> Option<f64> {
    let mut total = 0.0;
    for part in text.split_whitespace() {
        let digits: String = part
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let n: f64 = digits.parse().ok()?;
        total += match &part[digits.len()..] {
            "h" => n * 3600.0,
            "m" => n * 60.0,
            "s" => n,
            "ms" => n / 1000.0,
            _ => return None,
        };
    }
    Some(total)
}

#[derive(Clone, Copy)]
enum Contender {
    Walshift,
    InServer,
    Trigger,
}

/// Runs the backfill scenarios `ctx.cfg` selects.
pub async fn run(ctx: &Ctx<'_>) -> Vec<Outcome> {
    let cfg = ctx.cfg;
    let mut outcomes = Vec::new();
    let mut run_no = 0;
    for scenario in scenarios(cfg.users, cfg.orders) {
        if !cfg.runs(scenario.name) {
            continue;
        }
        let size = match scenario.name {
            "set" => format!("{} users", thousands(scenario.source_rows)),
            _ => format!("{} orders", thousands(scenario.source_rows)),
        };
        eprintln!("== backfill {}: {size}", scenario.name);
        let plan = plan_for(
            ctx.admin,
            &spec_text(&scenario, scenario.spec_name, Some(cfg.chunk)),
        )
        .await;
        let block = crate::support::backfill::in_server::do_block(&plan, cfg.chunk);
        let mut o = Outcome {
            scenario: scenario.name,
            size,
            target_rows: 0,
            walshift: Vec::new(),
            in_server: Vec::new(),
            trigger: Vec::new(),
        };
        let order = [Contender::Walshift, Contender::InServer, Contender::Trigger];
        for rep in 0..cfg.reps {
            // Rotate who goes first, so drift in the machine's load does not favour anyone.
            for i in 0..order.len() {
                reset(ctx.admin, &scenario).await;
                match order[(rep + i) % order.len()] {
                    Contender::Walshift => {
                        run_no += 1;
                        let s = walshift_run(ctx, &scenario, run_no).await;
                        o.target_rows = verify(ctx.admin, &scenario, "walshift").await;
                        eprintln!(
                            "  rep {}: walshift {:.2}s (setup {:.2}s, {} chunks, peak RSS {:.1} MB)",
                            rep + 1,
                            s.total_s,
                            s.setup_s,
                            s.chunks,
                            s.peak_rss_mb
                        );
                        o.walshift.push(s);
                    }
                    Contender::InServer => {
                        let s = in_server(ctx.db, &block).await;
                        verify(ctx.admin, &scenario, "the in-server loop").await;
                        eprintln!(
                            "  rep {}: in-server loop {:.2}s ({} chunks)",
                            rep + 1,
                            s.total_s,
                            s.chunks
                        );
                        o.in_server.push(s);
                    }
                    Contender::Trigger => {
                        let s = trigger_run(ctx, &scenario).await;
                        verify(ctx.admin, &scenario, "the trigger method").await;
                        eprintln!(
                            "  rep {}: trigger method {:.2}s ({} batches)",
                            rep + 1,
                            s.total_s,
                            s.batches
                        );
                        o.trigger.push(s);
                    }
                }
            }
        }
        outcomes.push(o);
    }
    outcomes
}
