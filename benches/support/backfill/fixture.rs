//! The two backfill scenarios and their fixture, shared by
//! `benches/backfill.rs` and `benches/e2e.rs`: the server settings, the
//! tables and their generated contents, the mirrors, how to put a target
//! back to "empty", how to check it, and the in-server loop's timed run.
//! `benches/cutover.rs` takes its two mirrors.

use std::time::Instant;

use tokio_postgres::Client;
use walshift::catalog::{self, MirrorPlan};
use walshift::mirror::applier::SESSION_SETTINGS;
use walshift::spec::Spec;
use walshift_cluster::Database;

use crate::support::backfill::process::{cpu_seconds, runq_wait_seconds, scalar_f64};

/// One run of the in-server loop.
#[derive(Debug, Clone, Default)]
pub struct InServerSample {
    pub total_s: f64,
    pub chunks: i64,
    /// CPU seconds of the backend that ran the `DO` block.
    pub cpu_backend_s: f64,
    /// Seconds that backend waited for a core.
    pub runq_backend_s: f64,
}

/// Settings for both contenders. Durability is off (a benchmark of CPU and
/// round trips, not of the disk), checkpoints stay out of the measured
/// phases (max_wal_size, checkpoint_timeout, and a CHECKPOINT in every
/// reset), and autovacuum is off so it never runs during a measurement; the
/// resets vacuum by hand. `fsync = off` and `full_page_writes = off` are the
/// cluster library's defaults.
pub const SETTINGS: &[(&str, &str)] = &[
    ("shared_buffers", "256MB"),
    ("max_wal_size", "20GB"),
    ("min_wal_size", "1GB"),
    ("checkpoint_timeout", "1h"),
    ("autovacuum", "off"),
    ("maintenance_work_mem", "256MB"),
];

/// One mirror to backfill, and how to put its target back to "empty".
pub struct Scenario {
    pub name: &'static str,
    pub spec_name: &'static str,
    pub mirror_toml: &'static str,
    pub source_rows: u64,
    pub reset: &'static [&'static str],
    /// True when the target is exactly the mapping of the source.
    pub verify: &'static str,
    /// Rows the target holds when verified.
    pub target_rows: &'static str,
}

pub const SET_MIRROR: &str = r#"[[mirror]]
source = "public.users"
set = { status = "CASE WHEN is_active THEN 'active' ELSE 'disabled' END" }
"#;

pub const ROWS_MIRROR: &str = r#"[[mirror]]
source = "public.orders"
target = "public.order_items"
owner = ["order_id"]
select = """
SELECT src.id AS order_id, i.n AS line_no, i.v->>'sku' AS sku, (i.v->>'qty')::int AS qty
FROM jsonb_array_elements(src.items) WITH ORDINALITY AS i(v, n)
"""
"#;

pub fn scenarios(users: u64, orders: u64) -> [Scenario; 2] {
    [
        Scenario {
            name: "set",
            spec_name: "bench-set",
            mirror_toml: SET_MIRROR,
            source_rows: users,
            // VACUUM FULL rewrites the table compactly, so every contender
            // starts from the same physical layout (no free space from the
            // previous run for HOT updates); the plain VACUUM then sets the
            // visibility map for the bound query's index-only scan.
            reset: &[
                "UPDATE public.users SET status = NULL WHERE status IS NOT NULL",
                "VACUUM FULL public.users",
                "VACUUM (ANALYZE) public.users",
                "CHECKPOINT",
            ],
            verify: "SELECT NOT EXISTS (SELECT FROM public.users
                       WHERE status IS DISTINCT FROM CASE WHEN is_active THEN 'active' ELSE 'disabled' END)",
            target_rows: "SELECT count(*) FROM public.users WHERE status IS NOT NULL",
        },
        Scenario {
            name: "rows",
            spec_name: "bench-rows",
            mirror_toml: ROWS_MIRROR,
            source_rows: orders,
            // No ANALYZE of the emptied target: after TRUNCATE it looks like
            // a table just created (reltuples -1), as in a real migration.
            // Analyzed while empty (reltuples 0) the planner may probe it
            // with a nested-loop seq scan per desired row (see the report).
            reset: &[
                "TRUNCATE public.order_items",
                "VACUUM (ANALYZE) public.orders",
                "CHECKPOINT",
            ],
            verify: "SELECT (SELECT sum(jsonb_array_length(items)) FROM public.orders)
                          = (SELECT count(*) FROM public.order_items)
                      AND NOT EXISTS (
                          SELECT src.id, i.n, i.v->>'sku', (i.v->>'qty')::int
                          FROM public.orders AS src,
                               jsonb_array_elements(src.items) WITH ORDINALITY AS i(v, n)
                          EXCEPT
                          SELECT order_id, line_no, sku, qty FROM public.order_items)",
            target_rows: "SELECT count(*) FROM public.order_items",
        },
    ]
}

/// The source tables, filled. Runs once; every contender starts from a reset.
pub async fn load(admin: &Client, users: u64, orders: u64) {
    let started = Instant::now();
    let statements = [
        "CREATE TABLE public.users (id bigint PRIMARY KEY, is_active boolean NOT NULL, status text)"
            .to_owned(),
        format!(
            "INSERT INTO public.users (id, is_active)
             SELECT g, g % 3 <> 0 FROM generate_series(1, {}) AS g",
            users
        ),
        "CREATE TABLE public.orders (id bigint PRIMARY KEY, items jsonb NOT NULL)".to_owned(),
        // 3..7 items per order: 5 on average.
        format!(
            "INSERT INTO public.orders (id, items)
             SELECT g, (SELECT jsonb_agg(jsonb_build_object(
                                 'sku', 'SKU-' || lpad(((g * 7 + i) % 5000)::text, 5, '0'),
                                 'qty', 1 + (g + i) % 9))
                        FROM generate_series(1, 3 + (g % 5)::int) AS i)
             FROM generate_series(1, {}) AS g",
            orders
        ),
        "CREATE TABLE public.order_items (
             order_id bigint NOT NULL, line_no bigint NOT NULL, sku text, qty int,
             PRIMARY KEY (order_id, line_no))"
            .to_owned(),
        "VACUUM (ANALYZE) public.users, public.orders".to_owned(),
        "CHECKPOINT".to_owned(),
    ];
    for s in &statements {
        exec(admin, s).await;
    }
    println!(
        "loaded {} users and {} orders in {:.1}s",
        users,
        orders,
        started.elapsed().as_secs_f64()
    );
}

pub fn spec_text(scenario: &Scenario, spec_name: &str, fixed_chunk: Option<u64>) -> String {
    let mut text = format!("name = \"{spec_name}\"\n\n{}", scenario.mirror_toml);
    if let Some(n) = fixed_chunk {
        text.push_str(&format!(
            "\n[backfill]\nmin_chunk_rows = {n}\nmax_chunk_rows = {n}\n"
        ));
    }
    text
}

/// The plan `walshift run` would build for the spec: the same catalog check,
/// so the in-server loop runs the statements walshift generates.
pub async fn plan_for(admin: &Client, spec_text: &str) -> MirrorPlan {
    let spec = Spec::from_str_named(spec_text, "bench.toml").expect("the bench spec is valid");
    let report = catalog::check(admin, &spec)
        .await
        .expect("catalog check ran");
    let plan = report.plan.unwrap_or_else(|| {
        let problems: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
        panic!("the bench spec does not fit:\n{}", problems.join("\n"))
    });
    plan.mirrors.into_iter().next().expect("one mirror")
}

pub async fn reset(admin: &Client, scenario: &Scenario) {
    for s in scenario.reset {
        exec(admin, s).await;
    }
}

pub async fn verify(admin: &Client, scenario: &Scenario, who: &str) -> i64 {
    let ok: bool = admin
        .query_one(scenario.verify, &[])
        .await
        .expect("verify query")
        .get(0);
    assert!(
        ok,
        "{}: after {who} the target is not the mapping of the source",
        scenario.name
    );
    admin
        .query_one(scenario.target_rows, &[])
        .await
        .expect("count target rows")
        .get(0)
}

/// A new session under walshift's apply settings, and its backend's pid (for
/// its CPU time): where the in-server loops and the in-process engine run.
pub async fn apply_session(db: &Database) -> (Client, i32) {
    let client = db.connect().await;
    client
        .batch_execute(SESSION_SETTINGS)
        .await
        .expect("session settings");
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("backend pid")
        .get(0);
    (client, pid)
}

pub async fn in_server(db: &Database, block: &str) -> InServerSample {
    let (client, pid) = apply_session(db).await;
    let cpu_before = cpu_seconds(pid);
    let runq_before = runq_wait_seconds(pid);
    let started = Instant::now();
    // Alone in its Query message, so the DO block is not inside an implicit
    // transaction block and may COMMIT.
    client
        .batch_execute(block)
        .await
        .unwrap_or_else(|e| panic!("in-server loop failed: {e:?}\n{block}"));
    let total_s = started.elapsed().as_secs_f64();
    let cpu_backend_s = cpu_seconds(pid) - cpu_before;
    let runq_backend_s = runq_wait_seconds(pid) - runq_before;
    let chunks = scalar_f64(
        &client,
        "SELECT current_setting('walshift_bench.chunks')::float8",
    )
    .await as i64;
    InServerSample {
        total_s,
        chunks,
        cpu_backend_s,
        runq_backend_s,
    }
}

pub async fn exec(client: &Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("`{sql}`: {e:?}"));
}
