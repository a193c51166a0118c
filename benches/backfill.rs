//! Backfill speed of `walshift run` beside the in-server limit: the same
//! chunks of the same generated statements, looped inside one `DO` block.
//! The goal (issue "walshift takes at most 1.15x the in-server loop's time")
//! is a ratio of at most 1.15.
//!
//! ```text
//!  one throwaway cluster (walshift_cluster), same settings for everyone
//!    ├─ set:  users(id, is_active, status)   status = CASE WHEN is_active ...
//!    └─ rows: orders(id, items jsonb)  ──▶   order_items(order_id, line_no, sku, qty)
//!  per scenario, per repetition (the order alternates):
//!    reset target ─▶ walshift run spec.toml (the release binary) ─poll done every 20ms─▶ SIGTERM
//!    reset target ─▶ DO block: chunk_upper_bound + set_apply/rows_apply text, COMMIT per chunk
//!  medians ─▶ markdown table on stdout + target/bench-results/backfill.json
//!           + docs/results/backfill.md (the same table as a page of the docs)
//! ```
//!
//! walshift's time runs from process start (check, publication, origin,
//! slot, sessions: "setup", reported apart) until `walshift.backfill` says
//! done. It also pays for what the in-server loop does not do: a checkpoint
//! row per chunk (I6), throttle look-ups, client round trips, and a walsender
//! decoding every write it makes and streaming it back (echoes, I5). The CPU
//! columns of the details table show where that went.
//!
//! Run with `cargo bench --bench backfill`. Environment:
//! `BACKFILL_BENCH_ROWS` (users, default 1,000,000), `BACKFILL_BENCH_ORDERS`
//! (default 200,000), `BACKFILL_BENCH_REPS` (default 3),
//! `BACKFILL_BENCH_CHUNK` (fixed chunk rows, default 10,000),
//! `BACKFILL_BENCH_ADAPTIVE_REPS` (runs with the default adaptive chunk
//! size, default 1; 0 skips them), `BACKFILL_BENCH_PROFILE=1` (also the
//! variants of [`profile`] that split walshift's extra time),
//! `BACKFILL_BENCH_ENGINE_PAIRS` (pairs of the in-server loop and walshift's
//! engine without a stream, run back to back: does driving the chunks from a
//! client cost the backend anything, default 0),
//! `BACKFILL_BENCH_ONLY` (`set` or `rows`), `BACKFILL_BENCH_PG_SETTINGS`
//! (`key=value,...` added to the server settings of both contenders, for
//! experiments), `WALSHIFT_BIN` (another binary).

mod support;

use std::path::Path;
use std::time::Instant;

use tokio_postgres::Client;
use walshift::catalog::MirrorPlan;
use walshift::spec::Spec;
use walshift_cluster::{Cluster, Database};

use support::backfill::{fixture, in_server, process, profile, report, summary};
use support::page as docs_page;

use fixture::{SETTINGS, Scenario, in_server, load, plan_for, reset, scenarios, spec_text, verify};
use process::{RunSample, drop_walshift_objects, run_walshift};
use report::{Figures, Outcome};

struct Config {
    users: u64,
    orders: u64,
    reps: usize,
    chunk: u64,
    adaptive_reps: usize,
    profile: bool,
    /// `BACKFILL_BENCH_ENGINE_PAIRS`: see [`engine_pairs`].
    engine_pairs: usize,
    /// `BACKFILL_BENCH_ONLY=set` or `rows`: one scenario.
    only: Option<String>,
    /// `BACKFILL_BENCH_PG_SETTINGS="jit=off,work_mem=64MB"`: extra server
    /// settings for an experiment, on top of [`SETTINGS`], for both contenders.
    extra_settings: Vec<(String, String)>,
}

impl Config {
    fn from_env() -> Self {
        fn var(name: &str, default: u64) -> u64 {
            match std::env::var(name) {
                Ok(v) => v
                    .replace(['_', ','], "")
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
                Err(_) => default,
            }
        }
        Config {
            users: var("BACKFILL_BENCH_ROWS", 1_000_000).max(1),
            orders: var("BACKFILL_BENCH_ORDERS", 200_000).max(1),
            reps: var("BACKFILL_BENCH_REPS", 3).max(1) as usize,
            chunk: var("BACKFILL_BENCH_CHUNK", 10_000).max(1),
            adaptive_reps: var("BACKFILL_BENCH_ADAPTIVE_REPS", 1) as usize,
            profile: var("BACKFILL_BENCH_PROFILE", 0) != 0,
            engine_pairs: var("BACKFILL_BENCH_ENGINE_PAIRS", 0) as usize,
            only: std::env::var("BACKFILL_BENCH_ONLY").ok(),
            extra_settings: std::env::var("BACKFILL_BENCH_PG_SETTINGS")
                .unwrap_or_default()
                .split(',')
                .filter(|kv| !kv.trim().is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or_else(|| {
                        panic!("BACKFILL_BENCH_PG_SETTINGS: {kv:?} is not key=value")
                    });
                    (k.trim().to_owned(), v.trim().to_owned())
                })
                .collect(),
        }
    }
}

async fn walshift_run(
    admin: &Client,
    db: &Database,
    dir: &Path,
    scenario: &Scenario,
    fixed_chunk: Option<u64>,
    run_no: usize,
) -> RunSample {
    let path = dir.join(format!("{}.toml", scenario.spec_name));
    std::fs::write(&path, spec_text(scenario, scenario.spec_name, fixed_chunk))
        .expect("write the spec");
    let log = dir.join(format!("{}-{run_no}.log", scenario.spec_name));
    let sample = run_walshift(admin, &db.conninfo(), &path, scenario.spec_name, &log).await;
    drop_walshift_objects(admin, scenario.spec_name).await;
    sample
}

async fn bench(cfg: &Config, db: &Database) -> Figures {
    let admin = db.connect().await;
    load(&admin, cfg.users, cfg.orders).await;
    let dir = tempfile::Builder::new()
        .prefix("walshift-backfill-bench-")
        .tempdir()
        .expect("temporary directory");
    let mut figures = Figures::default();
    let mut run_no = 0;
    for scenario in scenarios(cfg.users, cfg.orders) {
        if cfg
            .only
            .as_deref()
            .is_some_and(|only| only != scenario.name)
        {
            continue;
        }
        let fixed = spec_text(&scenario, scenario.spec_name, Some(cfg.chunk));
        let plan = plan_for(&admin, &fixed).await;
        let block = in_server::do_block(&plan, cfg.chunk);
        let mut outcome = Outcome::new(scenario.name, scenario.source_rows, cfg.chunk);
        for rep in 0..cfg.reps {
            // Alternate who goes first, so a drift in the machine's load
            // (or a warm cache) does not favour one contender.
            let walshift_first = rep % 2 == 0;
            for turn in 0..2 {
                reset(&admin, &scenario).await;
                if (turn == 0) == walshift_first {
                    run_no += 1;
                    let s =
                        walshift_run(&admin, db, dir.path(), &scenario, Some(cfg.chunk), run_no)
                            .await;
                    outcome.target_rows = verify(&admin, &scenario, "walshift").await;
                    eprintln!(
                        "  {} rep {}: walshift {:.2}s (setup {:.2}s, {} chunks)",
                        scenario.name,
                        rep + 1,
                        s.total_s,
                        s.setup_s,
                        s.chunks
                    );
                    outcome.walshift.push(s);
                } else {
                    let s = in_server(db, &block).await;
                    verify(&admin, &scenario, "the in-server loop").await;
                    eprintln!(
                        "  {} rep {}: in-server {:.2}s ({} chunks)",
                        scenario.name,
                        rep + 1,
                        s.total_s,
                        s.chunks
                    );
                    outcome.in_server.push(s);
                }
            }
        }
        for rep in 0..cfg.adaptive_reps {
            reset(&admin, &scenario).await;
            run_no += 1;
            let s = walshift_run(&admin, db, dir.path(), &scenario, None, run_no).await;
            verify(&admin, &scenario, "walshift (adaptive)").await;
            eprintln!(
                "  {} adaptive rep {}: walshift {:.2}s (setup {:.2}s, {} chunks)",
                scenario.name,
                rep + 1,
                s.total_s,
                s.setup_s,
                s.chunks
            );
            outcome.adaptive.push(s);
        }
        if cfg.engine_pairs > 0 {
            engine_pairs(&admin, db, &scenario, &plan, &block, cfg).await;
        }
        if cfg.profile {
            outcome.profile =
                Some(profile_scenario(&admin, db, &scenario, &plan, &block, cfg).await);
        }
        figures.outcomes.push(outcome);
    }
    figures
}

/// The spec walshift's engine runs with when it runs in this process
/// (engine pairs, profile): the scenario's mirror, fixed chunks.
fn engine_spec(scenario: &Scenario, cfg: &Config) -> Spec {
    let text = spec_text(scenario, "bench-engine", Some(cfg.chunk));
    Spec::from_str_named(&text, "bench.toml").expect("the bench spec is valid")
}

/// `BACKFILL_BENCH_ENGINE_PAIRS=n`: n pairs of the in-server loop and
/// walshift's engine without a stream ([`profile::engine_without_stream`]:
/// the same chunk steps, checkpoints and throttle look-ups as `walshift run`,
/// driven from this process, no slot), back to back and in alternating order
/// so that a drift of the machine's speed cancels. Prints each pair and the median ratios: what
/// driving the chunks from a client costs, apart from the stream.
async fn engine_pairs(
    admin: &Client,
    db: &Database,
    scenario: &Scenario,
    plan: &MirrorPlan,
    block: &str,
    cfg: &Config,
) {
    let spec = engine_spec(scenario, cfg);
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for pair in 0..cfg.engine_pairs {
        // Alternate who goes first, as the repetitions do.
        let mut looped = None;
        let mut engine = None;
        for turn in 0..2 {
            reset(admin, scenario).await;
            if (turn == 0) == (pair % 2 == 0) {
                looped = Some(in_server(db, block).await);
                verify(admin, scenario, "the in-server loop").await;
            } else {
                engine = Some(profile::engine_without_stream(admin, db, &spec, plan).await);
                verify(admin, scenario, "walshift's engine without a stream").await;
            }
        }
        let (looped, (engine_s, engine_cpu_s)) = (
            looped.expect("one turn ran the loop"),
            engine.expect("one turn ran the engine"),
        );
        wall.push(engine_s / looped.total_s);
        cpu.push(engine_cpu_s / looped.cpu_backend_s);
        eprintln!(
            "  {} engine pair {}: in-server {:.2}s (backend CPU {:.2}s), engine without stream \
             {engine_s:.2}s (backend CPU {engine_cpu_s:.2}s): {:.2}x, CPU {:.2}x",
            scenario.name,
            pair + 1,
            looped.total_s,
            looped.cpu_backend_s,
            wall[pair],
            cpu[pair],
        );
    }
    eprintln!(
        "  {} engine without stream over in-server, {} pairs: time {}, backend CPU {}",
        scenario.name,
        cfg.engine_pairs,
        summary::ratio_spread(&wall),
        summary::ratio_spread(&cpu)
    );
}

/// The variants of [`profile`], once each, from a reset.
async fn profile_scenario(
    admin: &Client,
    db: &Database,
    scenario: &Scenario,
    plan: &MirrorPlan,
    block: &str,
    cfg: &Config,
) -> report::Profile {
    reset(admin, scenario).await;
    let consumer = profile::in_server_with_consumer(
        admin,
        db,
        &bin_dir(admin).await,
        &plan.source.to_string(),
        block,
    )
    .await;
    verify(admin, scenario, "the in-server loop with a consumer").await;
    eprintln!(
        "  {} profile: in-server with a pgoutput consumer {:.2}s",
        scenario.name, consumer.total_s
    );

    reset(admin, scenario).await;
    let spec = engine_spec(scenario, cfg);
    let (engine_s, engine_cpu_s) = profile::engine_without_stream(admin, db, &spec, plan).await;
    verify(admin, scenario, "walshift's engine without a stream").await;
    eprintln!(
        "  {} profile: walshift engine without stream {engine_s:.2}s",
        scenario.name
    );

    reset(admin, scenario).await;
    let steps = profile::replay_steps(admin, db, plan, cfg.chunk).await;
    verify(admin, scenario, "the timed replay").await;
    eprintln!("  {} profile: replay {}", scenario.name, steps.line());
    report::Profile {
        consumer,
        engine_s,
        engine_cpu_s,
        steps,
    }
}

/// The server's binaries (pg_recvlogical), from `pg_config --bindir` of the
/// running server's installation.
async fn bin_dir(admin: &Client) -> std::path::PathBuf {
    let row = admin
        .query_one("SELECT setting FROM pg_config WHERE name = 'BINDIR'", &[])
        .await
        .expect("pg_config BINDIR");
    std::path::PathBuf::from(row.get::<_, String>(0))
}

fn main() {
    let cfg = Config::from_env();
    let load_before = summary::loadavg();
    let mut builder = Cluster::builder();
    let settings: Vec<(String, String)> = SETTINGS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain(cfg.extra_settings.iter().cloned())
        .collect();
    for (k, v) in &settings {
        builder = builder.setting(k, v);
    }
    let cluster = builder.start().expect("start a throwaway PostgreSQL");
    let db = cluster
        .fresh_database_named("backfill_bench")
        .expect("create the bench database");
    println!(
        "PostgreSQL {} (cluster {}), walshift binary {}",
        cluster.version_num(),
        cluster.name(),
        process::binary().display()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let mut figures = runtime.block_on(bench(&cfg, &db));
    figures.settings = settings;
    figures.server_version_num = cluster.version_num();
    figures.loadavg_before = load_before;
    figures.loadavg_after = summary::loadavg();
    figures.wall_s = started.elapsed().as_secs_f64();
    let markdown = figures.markdown();
    print!("{markdown}");
    let out = report::results_path();
    figures.write_json(&out);
    println!("wrote {}", out.display());
    let v = figures.server_version_num;
    let server = format!("PostgreSQL {}.{}", v / 10_000, v % 100);
    let page = docs_page::write(
        "backfill",
        &docs_page::command("BACKFILL_BENCH_", "backfill"),
        &server,
        &markdown,
    );
    println!("wrote {}", page.display());
}
