//! walshift end to end, side by side with what it replaces, on one throwaway PostgreSQL.
//!
//! ```text
//!  walshift_cluster (settings of benches/backfill.rs) ─▶ users 1M, orders 200k (the fixture)
//!   1 set    backfill users.status:       walshift run │ in-server DO loop │ trigger method
//!   2 rows   backfill orders → items:     walshift run │ in-server DO loop │ trigger method
//!   3 live   pgbench update / mix / -R:   no mirroring │ BEFORE trigger    │ walshift (+ lag)
//!   4 catchup 1M changes in the slot:     walshift run │ pg_recvlogical on a copy of the slot
//!   5 memory VmHWM of walshift in 1, 3, 4 and during one 5M-row transaction
//!   6 decoder in-process decode loop of benches/decoder.rs
//!   7 identity pgbench update: REPLICA IDENTITY DEFAULT │ FULL │ walshift one-way │ two-way
//!            (tps and WAL bytes per transaction)
//!   8 cost   pgbench -R a quarter of the unmirrored tps: no mirroring │ trigger │ walshift
//!            [│ E2E_BASELINE_BIN]: latency, lag, CPU per change by process against the floor
//!            (pg_recvlogical on a copy of the slot + the recompute looped in the server)
//!   9 capacity pgbench -R 0.3, 0.4, ... x the trigger's saturated tps, set and rows mode,
//!            until walshift misses (tps < 95% offered or lag p99 >= 1 s)
//!  10 publication the same WAL decoded through walshift's publication (column list, 15+)
//!            │ one over whole rows: server time and bytes per change
//!  medians of E2E_REPS ─▶ stdout + target/e2e/report.md (one table, same rows every run)
//!                        + docs/results/e2e.md (the same report as a page of the docs)
//!                        + target/e2e/*.svg (a chart per scenario, lag over time)
//! ```
//!
//! Run with `cargo bench --bench e2e`. Environment (see `support/e2e/config.rs`):
//! `E2E_REPS` (default 3), `E2E_SCALE` (default 1; 0.05 for a quick run), `E2E_ONLY`
//! (`set,rows,live,catchup,memory,decoder,identity,cost,capacity,publication`), `E2E_CLIENTS` (4), `E2E_LIVE_SECONDS`
//! (20 x scale), `E2E_CHUNK` (10000), `WALSHIFT_BIN` (another walshift binary),
//! `E2E_BASELINE_BIN` (a second binary the cost scenario runs beside it), `E2E_PAGE` (the
//! docs page to write, `docs/results/<E2E_PAGE>.md`, default `e2e`), `PG_BIN`
//! (other server binaries; pgbench and pg_recvlogical are taken from the same directory, or
//! from `E2E_CLIENT_BIN`).

mod support;

use std::path::PathBuf;
use std::time::Instant;

use walshift_cluster::Cluster;

use support::backfill::{fixture, process, summary};

use support::e2e::report::Figures;
use support::e2e::{
    Config, Ctx, backfill, capacity, catchup, cost, decoder, identity, live, loadavg, memory,
    publication,
};
use support::page as docs_page;

/// `<target>/e2e`.
fn out_dir() -> PathBuf {
    summary::target_dir().join("e2e")
}

/// The command as run, with the E2E_* variables that were set.
fn command() -> String {
    let mut vars: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("E2E_"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    vars.sort();
    vars.push("cargo bench --bench e2e".into());
    vars.join(" ")
}

async fn scenarios(cfg: &Config, cluster: &Cluster, figures: &mut Figures) {
    let db = cluster
        .fresh_database_named("e2e_bench")
        .expect("create the bench database");
    let admin = db.connect().await;
    figures.server = format!(
        "PostgreSQL {}",
        admin
            .query_one("SHOW server_version", &[])
            .await
            .expect("server_version")
            .get::<_, String>(0)
    );
    let scratch = tempfile::Builder::new()
        .prefix("walshift-e2e-")
        .tempdir()
        .expect("scratch directory");
    let ctx = Ctx {
        cfg,
        db: &db,
        admin: &admin,
        bin_dir: cluster.bin_dir(),
        scratch: scratch.path(),
    };
    if [
        "set", "rows", "live", "catchup", "identity", "cost", "capacity",
    ]
    .iter()
    .any(|s| cfg.runs(s))
    {
        fixture::load(&admin, cfg.users, cfg.orders).await;
    }
    let mut timed = |name: &str, before: String| {
        figures.loadavg.push((name.to_owned(), before, loadavg()));
    };
    let before = loadavg();
    let backfill = backfill::run(&ctx).await;
    if !backfill.is_empty() {
        timed("backfill", before);
    }
    let mut live = None;
    if cfg.runs("live") {
        let before = loadavg();
        live = Some(live::run(&ctx).await);
        timed("live", before);
    }
    let mut catchup = None;
    if cfg.runs("catchup") {
        let before = loadavg();
        catchup = Some(catchup::run(&ctx).await);
        timed("catch-up", before);
    }
    if cfg.runs("identity") {
        let before = loadavg();
        figures.identity = Some(identity::run(&ctx).await);
        timed("identity", before);
    }
    if cfg.runs("cost") {
        let before = loadavg();
        figures.cost = Some(cost::run(&ctx).await);
        timed("cost", before);
    }
    if cfg.runs("capacity") {
        let before = loadavg();
        figures.capacity = Some(capacity::run(&ctx).await);
        timed("capacity", before);
    }
    if cfg.runs("publication") {
        let before = loadavg();
        figures.publication = Some(publication::run(&ctx).await);
        timed("publication", before);
    }
    let mut memory = None;
    if cfg.runs("memory") {
        let before = loadavg();
        memory = Some(memory::run(&ctx).await);
        timed("memory", before);
    }
    figures.backfill = backfill;
    figures.live = live;
    figures.catchup = catchup;
    figures.memory = memory;
}

fn main() {
    let cfg = Config::from_env();
    let started = Instant::now();
    let out = out_dir();
    std::fs::create_dir_all(&out).unwrap_or_else(|e| panic!("create {}: {e}", out.display()));
    let settings: Vec<(String, String)> = fixture::SETTINGS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // E2E_PAGE: a run of some scenarios only may keep its own page beside the full run's.
    let page = std::env::var("E2E_PAGE").unwrap_or_else(|_| "e2e".into());
    assert!(
        !page.is_empty() && page.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
        "E2E_PAGE={page:?}: letters, digits and '-' only (the page is docs/results/<E2E_PAGE>.md)"
    );
    let mut figures = Figures {
        page: page.clone(),
        command: command(),
        reps: cfg.reps,
        scale: cfg.scale,
        chunk: cfg.chunk,
        settings: settings.clone(),
        ..Figures::default()
    };
    eprintln!(
        "walshift e2e: scenarios {}, {} repetition(s), scale {}, binary {}",
        cfg.only.join(","),
        cfg.reps,
        cfg.scale,
        process::binary().display()
    );
    if [
        "set",
        "rows",
        "live",
        "catchup",
        "memory",
        "identity",
        "cost",
        "capacity",
        "publication",
    ]
    .iter()
    .any(|s| cfg.runs(s))
    {
        let mut builder = Cluster::builder();
        for (k, v) in &settings {
            builder = builder.setting(k, v);
        }
        let cluster = builder.start().expect("start a throwaway PostgreSQL");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(scenarios(&cfg, &cluster, &mut figures));
    }
    if cfg.runs("decoder") {
        let before = loadavg();
        figures.decoder = Some(decoder::run(cfg.reps));
        figures.loadavg.push(("decoder".into(), before, loadavg()));
    }
    figures.wall_s = started.elapsed().as_secs_f64();
    let report = figures.markdown();
    println!("\n{report}");
    let path = out.join("report.md");
    std::fs::write(&path, &report).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    let charts = figures.charts(&out);
    println!(
        "wrote {} and {} chart(s) there: {}",
        path.display(),
        charts.len(),
        charts.join(", ")
    );
    let server = if figures.server.is_empty() {
        "no server"
    } else {
        &figures.server
    };
    let path = docs_page::write_as(
        &page,
        "e2e",
        &docs_page::command("E2E_", "e2e"),
        server,
        &report,
    );
    println!("wrote {}", path.display());
    // The charts the page shows, beside it.
    if let (Some(capacity), Some(dir)) = (&figures.capacity, path.parent()) {
        let charts = capacity.charts(dir, &page);
        println!("wrote {} there", charts.join(", "));
    }
}
