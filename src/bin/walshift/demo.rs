//! `walshift demo`: the whole story of a rolling deploy on a throwaway
//! PostgreSQL, with nothing but the machine's server binaries.
//!
//! 1. start a cluster (walshift_cluster), create users/orders, fill them;
//! 2. expand: `users.status`, table `order_items` (and REPLICA IDENTITY FULL,
//!    which two-way mirrors need);
//! 3. `check` the spec (plan, ETA);
//! 4. the old version writes; walshift runs: backfill and live mirroring,
//!    progress on the terminal; wait for backfill done and zero lag;
//! 5. deploy: the new version writes too (both shapes, the same keys);
//! 6. roll the new version back: the old shape holds everything it wrote;
//!    verify both directions under the old version's load;
//! 7. deploy again; the old version is gone; rehearse the cut-over under the
//!    new version's load (a dry run: the freeze it costs), then cut over,
//!    which ends the run;
//! 8. print a summary, remove the cluster.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use walshift::catalog::{self, MirrorKind, Plan};
use walshift::conninfo::ConnConfig;
use walshift::estimate::human_eta;
use walshift::run::{self, Observed, RunError, RunOptions, Totals};
use walshift::spec::Spec;
use walshift::state::{CONFLICTS_TOTAL, REVERSE_KEYS_TOTAL};
use walshift_cluster::{Cluster, Database};

use crate::cli;

/// Sizes of the demo.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    /// Users to create before walshift starts (history to backfill).
    #[arg(long, default_value_t = 200_000)]
    pub users: i64,
    /// Orders (1-9 JSON line items each) to create before walshift starts.
    #[arg(long, default_value_t = 100_000)]
    pub orders: i64,
    /// Connections each application version writes on.
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// How long each phase of the rolling deploy lasts (both versions
    /// writing, the rollback, the second deploy).
    #[arg(long, default_value = "4s", value_parser = walshift::spec::parse_duration)]
    pub phase: Duration,
}

const SPEC: &str = r#"name = "demo"

# users.is_active <-> users.status (same-row columns, both ways)
[[mirror]]
source = "public.users"
set = { status = "CASE WHEN is_active THEN 'active' ELSE 'disabled' END" }
reverse = { is_active = "status = 'active'" }

# orders.items (JSON array) <-> order_items (one row per item, both ways)
[[mirror]]
source = "public.orders"
target = "public.order_items"
owner  = ["order_id"]
select = """
SELECT src.id AS order_id, i.n AS line_no, i.v->>'sku' AS sku, (i.v->>'qty')::int AS qty
FROM jsonb_array_elements(src.items) WITH ORDINALITY AS i(v, n)
"""
reverse = { items = """(SELECT coalesce(jsonb_agg(jsonb_build_object('sku', t.sku, 'qty', t.qty)
                                  ORDER BY t.line_no), '[]'::jsonb)
                        FROM public.order_items t WHERE t.order_id = src.id)""" }

[backfill]
max_replica_lag = "5s"

[[gate]]
name = "every user has a status"
sql = "SELECT count(*) = 0 FROM users WHERE status IS NULL"

[cutover]
sql = "COMMENT ON COLUMN users.is_active IS 'retired: users.status is the source of truth since the cut-over'"
"#;

/// Plain SQL, independent of walshift: users and orders whose two shapes do
/// not follow from one another in either direction.
const INCONSISTENT: &str = "
SELECT (SELECT count(*) FROM users
        WHERE status IS DISTINCT FROM CASE WHEN is_active THEN 'active' ELSE 'disabled' END
          AND is_active IS DISTINCT FROM (status = 'active'))
     + (SELECT count(*) FROM orders o
        WHERE o.items IS DISTINCT FROM
              (SELECT coalesce(jsonb_agg(jsonb_build_object('sku', t.sku, 'qty', t.qty) ORDER BY t.line_no), '[]'::jsonb)
               FROM order_items t WHERE t.order_id = o.id))";

pub async fn command(opts: DemoOptions, bars: Option<indicatif::MultiProgress>) -> ExitCode {
    match demo(opts, bars).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => cli::fail(&format!("demo failed: {e:#}")),
    }
}

/// The steps of the module's header, in order; each says what it does as it goes.
async fn demo(opts: DemoOptions, bars: Option<indicatif::MultiProgress>) -> Result<()> {
    let t0 = Instant::now();
    let (cluster, db) = start_cluster().await?;
    let client = db
        .try_connect()
        .await
        .context("cannot connect to the demo database")?;
    fill(&client, &opts).await?;

    let dir = tempfile::tempdir()?;
    let spec_path = dir.path().join("demo.toml");
    std::fs::write(&spec_path, SPEC)?;
    let spec = Spec::from_path(&spec_path)?;
    let config = ConnConfig::parse(&db.conninfo())?;
    let plan = check(&config, &spec).await?;

    // The old version writes all along, until the new one has replaced it.
    let old = Load::start(&config, Version::Old, &opts).await?;
    say(&format!(
        "the old version writes on {} connections",
        opts.writers.max(1)
    ));

    let mut walshift = Walshift::start(&config, &spec, bars);
    let backfill_time = walshift.backfilled().await?;
    let lag_under_load = watermark(&client, &spec.slot_name()).await?;
    say(&format!(
        "caught up under load: a watermark took {:.0} ms through the stream",
        lag_under_load.as_secs_f64() * 1000.0
    ));

    let (new_writes, rollback, verify) =
        deploy_and_roll_back(&client, &config, &spec, &plan, &opts).await?;
    let last = deploy_again_and_cut_over(&client, &config, &spec, &opts, old).await?;
    let (totals, observed) = walshift.finish().await?;
    let mut summary = Summary::read(&client, &spec).await?;
    // What the run counted in its last second, not yet recorded.
    for (_, conflicts, keys) in observed.two_way.take() {
        summary.conflicts += conflicts as i64;
        summary.reverse_keys += keys as i64;
    }
    print_summary(&Story {
        summary: &summary,
        totals: &totals,
        backfill_time,
        lag_under_load,
        old_writes: last.old_writes,
        new_writes: new_writes + last.new_writes,
        rollback: &rollback,
        verify: &verify,
        rehearsal: &last.rehearsal,
        outcome: &last.outcome,
        started: t0,
    });
    drop(client);
    drop(cluster);
    if summary.inconsistent != 0 {
        bail!(
            "{} rows are inconsistent after the cut-over",
            summary.inconsistent
        );
    }
    println!("  result:               cut over; both shapes equal; the cluster was removed");
    Ok(())
}

/// Step 1, the server: a throwaway PostgreSQL and the demo's database in it.
async fn start_cluster() -> Result<(Cluster, Database)> {
    say("starting a throwaway PostgreSQL");
    let cluster = tokio::task::spawn_blocking(|| Cluster::builder().start())
        .await?
        .context("cannot start a throwaway PostgreSQL (are the server binaries installed? scripts/demo installs them)")?;
    let db = cluster
        .fresh_database_named("demo")
        .context("cannot create the demo database")?;
    say(&format!(
        "PostgreSQL {} at {}, database {}",
        cluster.version_num(),
        cluster.socket_dir().display(),
        db.name()
    ));
    Ok((cluster, db))
}

/// walshift itself, `walshift run` in a task, with its progress on the terminal.
struct Walshift {
    stop: watch::Sender<bool>,
    observed: Observed,
    ui: Option<JoinHandle<()>>,
    runner: JoinHandle<Result<Totals, RunError>>,
    started: Instant,
}

impl Walshift {
    fn start(config: &ConnConfig, spec: &Spec, bars: Option<indicatif::MultiProgress>) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let observed = Observed::default();
        let ui = bars
            .map(|multi| tokio::spawn(walshift::terminal::draw(multi, observed.progress.clone())));
        let started = Instant::now();
        let runner = {
            let (config, spec, observed) = (config.clone(), spec.clone(), observed.clone());
            tokio::spawn(async move {
                run::run(&config, &spec, RunOptions::default(), stop_rx, observed).await
            })
        };
        Walshift {
            stop,
            observed,
            ui,
            runner,
            started,
        }
    }

    /// Step 4: waits for the backfill to complete (live writes mirrored meanwhile); how long it
    /// took since the start.
    async fn backfilled(&mut self) -> Result<Duration> {
        loop {
            if self.runner.is_finished() {
                let r = (&mut self.runner).await?;
                bail!("walshift stopped early: {:?}", r.err());
            }
            let p = self.observed.progress.lock().expect("progress").clone();
            if !p.mirrors.is_empty() && p.done() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let backfill_time = self.started.elapsed();
        say(&format!(
            "backfill complete in {:.1}s, live writes mirrored meanwhile",
            backfill_time.as_secs_f64()
        ));
        Ok(backfill_time)
    }

    /// The run's end (after the cut-over): its totals, and what it observed.
    async fn finish(self) -> Result<(Totals, Observed)> {
        let totals = self
            .runner
            .await?
            .map_err(|e| anyhow::anyhow!("walshift run failed: {e}"))?;
        drop(self.stop);
        if let Some(ui) = self.ui {
            ui.abort();
        }
        Ok((totals, self.observed))
    }
}

/// Steps 5 and 6: the rolling deploy (the new version starts while the old one runs), then
/// its rollback, verified under the old version's load. The new version's writes, what the
/// old shape shows of them, and the verification.
async fn deploy_and_roll_back(
    client: &tokio_postgres::Client,
    config: &ConnConfig,
    spec: &Spec,
    plan: &Plan,
    opts: &DemoOptions,
) -> Result<(u64, Rollback, walshift::verify::Report)> {
    say("deploy: the new version starts; both versions write both shapes of the same rows");
    let new = Load::start(config, Version::New, opts).await?;
    tokio::time::sleep(opts.phase).await;

    // Something is wrong with the new version: roll it back. Everything it
    // wrote is in the old shape the old version reads.
    say("roll back: the new version stops; the old version goes on");
    let new_writes = new.stop().await;
    watermark(client, &spec.slot_name()).await?;
    let rollback = Rollback::measure(client).await?;
    say(&format!(
        "after the rollback the old shape holds the new version's writes: {} users it paused are \
         inactive, {} of its {} order lines are in orders.items",
        rollback.paused_inactive, rollback.new_lines_in_items, rollback.new_lines
    ));
    tokio::time::sleep(opts.phase / 2).await;
    let verify = walshift::verify::verify_with(client, spec, plan, 3, false).await?;
    say(&format!(
        "verified both directions under the old version's load in {:.1}s: {}",
        verify.seconds,
        verify.summary()
    ));
    if !verify.passed {
        bail!("verification failed: {}", verify.summary());
    }
    Ok((new_writes, rollback, verify))
}

/// What step 7 did.
struct LastDeploy {
    old_writes: u64,
    new_writes: u64,
    rehearsal: walshift::cutover::Outcome,
    outcome: walshift::cutover::Outcome,
}

/// Step 7: deploy again, retire the old version, rehearse the cut-over under the new
/// version's load, then cut over, which ends the run.
async fn deploy_again_and_cut_over(
    client: &tokio_postgres::Client,
    config: &ConnConfig,
    spec: &Spec,
    opts: &DemoOptions,
    old: Load,
) -> Result<LastDeploy> {
    say("deploy again: the new version writes, the old version is retired");
    let new = Load::start(config, Version::New, opts).await?;
    tokio::time::sleep(opts.phase).await;
    let old_writes = old.stop().await;
    watermark(client, &spec.slot_name()).await?;

    // The switch rehearsed under the new version's load: the running
    // walshift locks both shapes' tables, applies the last changes,
    // re-checks, runs the gate and the operator's SQL, and rolls the SQL
    // back: the freeze the switch would cost, now.
    let rehearsal = cutover(client, spec, true).await?;
    // The switch itself, once the new version is quiet for it (after it,
    // the old shape is no longer kept in step, so the demo's own check of
    // both shapes below sees exactly the switch's state).
    let new_writes = new.stop().await;
    let outcome = cutover(client, spec, false).await?;
    Ok(LastDeploy {
        old_writes,
        new_writes,
        rehearsal,
        outcome,
    })
}

/// Everything step 8 prints.
struct Story<'a> {
    summary: &'a Summary,
    totals: &'a Totals,
    backfill_time: Duration,
    lag_under_load: Duration,
    old_writes: u64,
    new_writes: u64,
    rollback: &'a Rollback,
    verify: &'a walshift::verify::Report,
    rehearsal: &'a walshift::cutover::Outcome,
    outcome: &'a walshift::cutover::Outcome,
    started: Instant,
}

/// Step 8: the summary (but its last line, printed once the cluster is gone).
fn print_summary(story: &Story) {
    let Story {
        summary,
        totals,
        rollback,
        rehearsal,
        ..
    } = story;
    let differences: u64 = story.verify.mirrors.iter().map(|m| m.differing).sum();
    println!();
    println!("walshift demo summary");
    println!(
        "  history backfilled:   {} users, {} order items in {:.1}s",
        summary.users,
        summary.items,
        story.backfill_time.as_secs_f64()
    );
    println!(
        "  live changes:         {} transactions mirrored ({} keys recomputed, {} of them the old shape from the new; {} echoes of walshift's own writes skipped)",
        totals.txns - totals.echo_txns,
        totals.keys,
        summary.reverse_keys,
        totals.echo_txns
    );
    println!(
        "  both versions:        {} writes of the old version, {} of the new; {} conflicts resolved (the later commit won in both shapes)",
        story.old_writes, story.new_writes, summary.conflicts
    );
    println!(
        "  rollback:             {} paused users inactive in the old shape, {}/{} new order lines in orders.items",
        rollback.paused_inactive, rollback.new_lines_in_items, rollback.new_lines
    );
    println!(
        "  lag under load:       {:.0} ms (watermark round trip)",
        story.lag_under_load.as_secs_f64() * 1000.0
    );
    println!(
        "  verify:               {differences} differences in {:.1}s (both directions)",
        story.verify.seconds
    );
    println!(
        "  cut-over under load:  writes frozen {:.1} ms (lock {:.1}, drain {:.1}, checks {:.1}, sql {:.1}, commit {:.1}); {} key(s) re-checked under the lock (dry run)",
        rehearsal.freeze_ms,
        rehearsal.lock_wait_ms,
        rehearsal.drain_ms,
        rehearsal.checks_ms,
        rehearsal.sql_ms,
        rehearsal.commit_ms,
        rehearsal.keys_checked
    );
    println!(
        "  cut-over:             writes frozen {:.1} ms; the run ended",
        story.outcome.freeze_ms
    );
    println!(
        "  both shapes equal:    {} rows inconsistent in either direction (plain SQL)",
        summary.inconsistent
    );
    println!(
        "  total time:           {:.1}s",
        story.started.elapsed().as_secs_f64()
    );
}

/// The history walshift will backfill, and the expand step.
async fn fill(client: &tokio_postgres::Client, opts: &DemoOptions) -> Result<()> {
    say(&format!(
        "creating {} users and {} orders (the history walshift will backfill)",
        opts.users, opts.orders
    ));
    let fill = Instant::now();
    client
        .batch_execute(&format!(
            "CREATE TABLE users (
                 id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                 email text NOT NULL,
                 is_active boolean NOT NULL DEFAULT true,
                 created_at timestamptz NOT NULL DEFAULT now());
             INSERT INTO users (id, email, is_active)
                 SELECT g, 'user' || g || '@example.com', random() < 0.8 FROM generate_series(1, {users}) g;
             SELECT setval(pg_get_serial_sequence('users', 'id'), {users});
             CREATE TABLE orders (
                 id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                 user_id bigint NOT NULL,
                 items jsonb NOT NULL DEFAULT '[]',
                 created_at timestamptz NOT NULL DEFAULT now());
             INSERT INTO orders (id, user_id, items)
                 SELECT g, 1 + g % {users},
                        (SELECT jsonb_agg(jsonb_build_object('sku', 'SKU-' || ((g * 7 + i) % 5000), 'qty', 1 + (g + i) % 4))
                         FROM generate_series(1, 1 + g % 9) i)
                 FROM generate_series(1, {orders}) g;
             SELECT setval(pg_get_serial_sequence('orders', 'id'), {orders});
             -- expand: the new shape, empty; updates must show what they changed
             ALTER TABLE users ADD COLUMN status text;
             CREATE TABLE order_items (
                 order_id bigint NOT NULL, line_no bigint NOT NULL,
                 sku text NOT NULL, qty int NOT NULL,
                 PRIMARY KEY (order_id, line_no));
             ALTER TABLE users REPLICA IDENTITY FULL;
             ALTER TABLE orders REPLICA IDENTITY FULL;
             ANALYZE;",
            users = opts.users.max(1),
            orders = opts.orders.max(1),
        ))
        .await
        .context("creating the demo schema")?;
    say(&format!("filled in {:.1}s", fill.elapsed().as_secs_f64()));
    Ok(())
}

/// `check`: plan and ETA, nothing created.
async fn check(config: &ConnConfig, spec: &Spec) -> Result<Plan> {
    let check_client = config.connect_sql().await?;
    let report = catalog::check(&check_client, spec).await?;
    if !report.problems.is_empty() {
        for p in &report.problems {
            eprintln!("{p}");
        }
        bail!("the demo spec does not pass check");
    }
    let plan = report.plan.context("check passed without a plan")?;
    // A short budget: the demo's tables are scanned whole in a few seconds
    // on a small machine, and the ETA below is timed by the same chunks.
    let budget = walshift::scan::Budget::For(std::time::Duration::from_secs(5));
    let scanned = walshift::scan::scan(
        &check_client,
        spec,
        &plan,
        budget,
        &mut walshift::scan::Quiet,
    )
    .await?;
    for line in scanned.render().lines() {
        say(&format!("  {line}"));
    }
    if !scanned.passed() {
        bail!("the demo's data does not pass the scan");
    }
    say("check passed: nothing created yet");
    let estimates = scanned.estimates(spec.backfill.max_rows_per_second);
    for (m, e) in plan.mirrors.iter().zip(estimates) {
        let what = match &m.kind {
            MirrorKind::Set(p) => format!("{} set {}", p.source, p.set[0].0),
            MirrorKind::Rows(p) => format!("{} -> {}", p.source, p.target),
        };
        say(&format!(
            "  mirror {} ({what}, two-way): ~{} rows, backfill estimate {}",
            m.number,
            e.rows_estimate,
            e.eta.map(human_eta).unwrap_or_else(|| "-".into())
        ));
    }
    Ok(plan)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Version {
    Old,
    New,
}

/// One application version writing on several connections until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    async fn start(config: &ConnConfig, version: Version, opts: &DemoOptions) -> Result<Load> {
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for w in 0..opts.writers.max(1) {
            let client = config.connect_sql().await?;
            let (stop, writes) = (stop.clone(), writes.clone());
            let (users, orders) = (opts.users.max(1), opts.orders.max(1));
            tasks.push(tokio::spawn(async move {
                let mut n: u64 =
                    w as u64 * 7919 + if version == Version::New { 104_729 } else { 0 };
                while !stop.load(Ordering::Relaxed) {
                    n = n
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let r = (n >> 33) as i64;
                    let sql = match version {
                        Version::Old => old_write(r, users, orders),
                        Version::New => new_write(r, users, orders),
                    };
                    // A write computed from a shape walshift has not caught
                    // up with yet may collide with it (a duplicate line):
                    // the application would retry; the demo moves on.
                    if client.batch_execute(&sql).await.is_ok() {
                        writes.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
        Ok(Load {
            stop,
            writes,
            tasks,
        })
    }

    /// Stops the writers; how many writes they made.
    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        self.writes.load(Ordering::Relaxed)
    }
}

/// Rows both versions write most: a hot hundred, as real applications have
/// (their writes meet there, and the later commit must win).
const HOT: i64 = 100;

/// A row id: a quarter of the time one of the hot ones.
fn pick(r: i64, rows: i64) -> i64 {
    if (r >> 7) % 4 == 0 {
        1 + r % HOT.min(rows)
    } else {
        1 + r % rows
    }
}

/// The old version: flips users, adds users, rewrites order items.
fn old_write(r: i64, users: i64, orders: i64) -> String {
    let (user, order) = (pick(r, users), pick(r, orders));
    match r % 10 {
        0..=3 => format!("UPDATE users SET is_active = NOT is_active WHERE id = {user}"),
        4 => format!(
            "INSERT INTO users (email, is_active) VALUES ('old{r}@example.com', {})",
            r % 2 == 0
        ),
        5 | 6 => format!(
            "UPDATE orders SET items = items || jsonb_build_array(jsonb_build_object('sku', 'SKU-{}', 'qty', {})) WHERE id = {order}",
            r % 5000,
            1 + r % 3
        ),
        7 => format!("UPDATE orders SET items = items - 0 WHERE id = {order}"),
        8 => format!(
            "INSERT INTO orders (user_id, items) VALUES ({}, '[{{\"sku\": \"SKU-{}\", \"qty\": 1}}]')",
            1 + r % users,
            r % 5000
        ),
        _ => format!("DELETE FROM orders WHERE id = {}", 1 + r % orders),
    }
}

/// The new version: sets statuses (some 'paused', which the old shape can
/// only approximate), adds users, adds and drops order lines, adds orders
/// with their lines.
fn new_write(r: i64, users: i64, orders: i64) -> String {
    let status = ["active", "disabled", "paused"][(r % 3) as usize];
    let (user, order) = (pick(r, users), pick(r, orders));
    match r % 10 {
        0..=3 => format!("UPDATE users SET status = '{status}' WHERE id = {user}"),
        4 => format!("INSERT INTO users (email, status) VALUES ('new{r}@example.com', '{status}')"),
        5 | 6 => format!(
            "INSERT INTO order_items SELECT {order}, coalesce(max(line_no), 0) + 1, 'NEW-{}', {}
             FROM order_items WHERE order_id = {order} HAVING EXISTS (SELECT FROM orders WHERE id = {order})",
            r % 5000,
            1 + r % 3
        ),
        7 => format!(
            "DELETE FROM order_items WHERE order_id = {order}
               AND line_no = (SELECT max(line_no) FROM order_items WHERE order_id = {order})
               AND sku NOT LIKE 'NEW-%'"
        ),
        _ => format!(
            "WITH o AS (INSERT INTO orders (user_id) VALUES ({}) RETURNING id)
             INSERT INTO order_items SELECT o.id, 1, 'NEW-{}', 2 FROM o",
            1 + r % users,
            r % 5000
        ),
    }
}

/// What the old shape shows of the new version's writes after it was rolled
/// back (plain SQL).
struct Rollback {
    paused_inactive: i64,
    new_lines: i64,
    new_lines_in_items: i64,
}

impl Rollback {
    async fn measure(client: &tokio_postgres::Client) -> Result<Rollback> {
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM users WHERE status = 'paused' AND is_active = false),
                        (SELECT count(*) FROM order_items WHERE sku LIKE 'NEW-%'),
                        (SELECT count(*) FROM orders o, jsonb_array_elements(o.items) i
                         WHERE i->>'sku' LIKE 'NEW-%')",
                &[],
            )
            .await?;
        Ok(Rollback {
            paused_inactive: row.get(0),
            new_lines: row.get(1),
            new_lines_in_items: row.get(2),
        })
    }
}

/// The switch, requested from and carried out by the running walshift.
async fn cutover(
    client: &tokio_postgres::Client,
    spec: &Spec,
    dry_run: bool,
) -> Result<walshift::cutover::Outcome> {
    let request = walshift::cutover::Request {
        dry_run,
        max_lag: Duration::from_secs(1),
    };
    let id = walshift::cutover::request(client, spec, &request)
        .await
        .map_err(|e| anyhow::anyhow!("cutover refused: {e}"))?;
    let outcome =
        walshift::cutover::follow(client, id, Duration::from_secs(300), |state, detail| {
            if !detail.is_empty() {
                say(&format!("cutover {state}: {detail}"));
            }
        })
        .await
        .map_err(|e| anyhow::anyhow!("cutover: {e}"))?;
    say(&outcome.render());
    if !outcome.passed {
        bail!("the cut-over failed: {}", outcome.error.unwrap_or_default());
    }
    Ok(outcome)
}

/// The end state, read with plain SQL (and walshift's counts of the two-way
/// mirrors from its state).
struct Summary {
    users: i64,
    items: i64,
    conflicts: i64,
    reverse_keys: i64,
    inconsistent: i64,
}

impl Summary {
    async fn read(client: &tokio_postgres::Client, spec: &Spec) -> Result<Summary> {
        let row = client
            .query_one(
                &format!(
                    "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM order_items),
                            ({CONFLICTS_TOTAL}),
                            ({REVERSE_KEYS_TOTAL}),
                            ({INCONSISTENT})"
                ),
                &[&spec.name],
            )
            .await?;
        Ok(Summary {
            users: row.get(0),
            items: row.get(1),
            conflicts: row.get(2),
            reverse_keys: row.get(3),
            inconsistent: row.get(4),
        })
    }
}

/// The time a watermark takes through the stream until walshift has
/// applied everything before it.
async fn watermark(client: &tokio_postgres::Client, slot: &str) -> Result<Duration> {
    walshift::verify::wait_caught_up(client, slot, Duration::from_secs(120))
        .await?
        .context("walshift did not catch up within 2 minutes")
}

fn say(s: &str) {
    eprintln!("demo: {s}");
}
