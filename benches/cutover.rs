//! Cut-over write freeze under load: repeated `walshift cutover --dry-run`
//! against a running `walshift run` while an application-like load writes
//! about 2,000 rows/s to both sources. Reports the freeze walshift measures
//! (LOCK statement to end of COMMIT) as p50/p99/max, and what the
//! application saw: the latency of its writes during the run (p50/p99/max).
//!
//! ```text
//! cargo bench --bench cutover
//! CUTOVER_BENCH_REPS=50 CUTOVER_BENCH_RATE=2000 cargo bench --bench cutover
//! ```
//!
//! Target (issue 5): freeze p99 under 100 ms.

mod support;

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use walshift_cluster::{Cluster, Database};

use support::backfill::{fixture, process};
use support::page as docs_page;

use fixture::{ROWS_MIRROR, SET_MIRROR};
use process::binary;

const USERS: i64 = 100_000;
const ORDERS: i64 = 20_000;
/// Sessions the load spreads its writes over.
const WRITERS: usize = 4;

const SCHEMA: &str = "
CREATE TABLE users (id bigint PRIMARY KEY, is_active boolean NOT NULL, pad text, status text);
CREATE TABLE orders (id bigint PRIMARY KEY, items jsonb NOT NULL);
CREATE TABLE order_items (order_id bigint NOT NULL, line_no bigint NOT NULL, sku text, qty int,
                          PRIMARY KEY (order_id, line_no));
";

/// The gate and the cut-over, after the backfill fixture's two mirrors.
const GATE_AND_CUTOVER: &str = r#"[[gate]]
name = "every user has a status"
sql = "SELECT count(*) = 0 FROM users WHERE status IS NULL"

[cutover]
lock_timeout = "200ms"
sql = "ALTER TABLE users RENAME COLUMN is_active TO is_active_retired"
"#;

/// The spec: `users.status` (set) and `orders` -> `order_items` (rows), the
/// mirrors of `benches/backfill.rs`, then the gate and the cut-over.
fn spec_text() -> String {
    format!("name = \"cutover-bench\"\n\n{SET_MIRROR}\n{ROWS_MIRROR}\n{GATE_AND_CUTOVER}")
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn walshift(args: &[&str], spec: &std::path::Path, db: &Database) -> std::process::Output {
    let (sub, rest) = args.split_first().expect("a subcommand");
    Command::new(binary())
        .arg(sub)
        .arg(spec)
        .args(rest)
        .args(["--db", &db.conninfo()])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run walshift")
}

/// The load: `rate` writes/s in all, spread over the writers, each write's
/// latency recorded (a write that waits for the cut-over's lock shows here).
async fn load(
    db: &Database,
    rate: f64,
    stop: Arc<AtomicBool>,
    latencies: Arc<Mutex<Vec<f64>>>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let c = db.connect().await;
        let (stop, latencies) = (stop.clone(), latencies.clone());
        let period = Duration::from_secs_f64(WRITERS as f64 / rate);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut i: i64 = w as i64;
            let mut next_id = 10_000_000 + w as i64 * 1_000_000;
            let mut done = 0u64;
            let mut mine = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                i += WRITERS as i64;
                let started = Instant::now();
                let r = match i % 4 {
                    0 => {
                        next_id += 1;
                        c.execute(
                            "INSERT INTO users (id, is_active) VALUES ($1::bigint, $1::bigint % 2 = 0)",
                            &[&next_id],
                        )
                        .await
                    }
                    1 | 2 => {
                        c.execute(
                            "UPDATE users SET is_active = NOT is_active WHERE id = $1",
                            &[&(1 + (i * 7919) % USERS)],
                        )
                        .await
                    }
                    _ => {
                        c.execute(
                            "UPDATE orders SET items = items || jsonb_build_array(jsonb_build_object('sku', 'x', 'qty', 1))
                             WHERE id = $1",
                            &[&(1 + (i * 104_729) % ORDERS)],
                        )
                        .await
                    }
                };
                if let Err(e) = r {
                    panic!("a load write failed: {e:?}");
                }
                mine.push(started.elapsed().as_secs_f64() * 1000.0);
                done += 1;
            }
            latencies.lock().await.extend(mine);
            done
        }));
    }
    tasks
}

/// The `walshift run` child, killed however the bench ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let reps: usize = env_or("CUTOVER_BENCH_REPS", 30);
    let rate: f64 = env_or("CUTOVER_BENCH_RATE", 2000.0);
    let cluster = Cluster::builder()
        .start()
        .expect("start a throwaway PostgreSQL");
    let db = cluster
        .fresh_database_named("cutover_bench")
        .expect("create the bench database");
    let dir = tempfile::tempdir().expect("temporary directory");
    let spec = dir.path().join("cutover-bench.toml");
    std::fs::write(&spec, spec_text()).expect("write the spec");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let c = db.connect().await;
        c.batch_execute(SCHEMA).await.expect("schema");
        c.execute(
            "INSERT INTO users (id, is_active) SELECT g, g % 3 = 0 FROM generate_series(1, $1::bigint) g",
            &[&USERS],
        )
        .await
        .expect("users");
        c.execute(
            "INSERT INTO orders SELECT g, (SELECT jsonb_agg(jsonb_build_object('sku', 's' || g || '-' || n, 'qty', n))
                                            FROM generate_series(1, 1 + g % 9) n)
             FROM generate_series(1, $1::bigint) g",
            &[&ORDERS],
        )
        .await
        .expect("orders");
        c.batch_execute("VACUUM ANALYZE").await.expect("vacuum");
    });

    let log = std::fs::File::create(dir.path().join("run.log")).expect("run log");
    let run = KillOnDrop(
        Command::new(binary())
            .arg("run")
            .arg(&spec)
            .args(["--listen", "off", "--db", &db.conninfo()])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone"))
            .stderr(log)
            .spawn()
            .expect("spawn walshift run"),
    );
    let out = walshift(&["wait", "--timeout", "300s"], &spec, &db);
    assert!(
        out.status.success(),
        "walshift wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let tasks = runtime.block_on(load(&db, rate, stop.clone(), latencies.clone()));
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    let mut freezes = Vec::new();
    let parts = [
        "lock_wait_ms",
        "drain_ms",
        "checks_ms",
        "sql_ms",
        "commit_ms",
    ];
    let mut part_values: Vec<Vec<f64>> = vec![Vec::new(); parts.len()];
    let mut keys = Vec::new();
    let mut attempts = 0u64;
    for rep in 0..reps {
        // As an operator would: cut over once walshift is ready.
        let ready = walshift(&["wait", "--timeout", "120s"], &spec, &db);
        assert!(
            ready.status.success(),
            "walshift wait before cutover #{rep}: {}",
            String::from_utf8_lossy(&ready.stderr)
        );
        let out = walshift(&["cutover", "--dry-run", "--json"], &spec, &db);
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "cutover #{rep}: not JSON ({e}): {text}\n{}\n--- run log\n{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(dir.path().join("run.log")).unwrap_or_default()
            )
        });
        assert!(
            out.status.success() && v["passed"] == true,
            "cutover #{rep} failed: {v}"
        );
        freezes.push(v["freeze_ms"].as_f64().expect("freeze_ms"));
        for (values, part) in part_values.iter_mut().zip(parts) {
            values.push(v[part].as_f64().unwrap_or(f64::NAN));
        }
        keys.push(v["keys_checked"].as_f64().unwrap_or(f64::NAN));
        attempts += v["attempts"].as_u64().unwrap_or(1);
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let writes: u64 = runtime.block_on(async {
        let mut n = 0;
        for t in tasks {
            n += t.await.expect("load task");
        }
        n
    });
    drop(run);

    freezes.sort_by(f64::total_cmp);
    let mut lat = runtime.block_on(async { latencies.lock().await.clone() });
    lat.sort_by(f64::total_cmp);
    let p99 = percentile(&freezes, 99.0);
    let mut report = String::new();
    let _ = writeln!(
        report,
        "\n## cut-over write freeze under load (PostgreSQL {}, {} cores)\n",
        cluster.version_num(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let _ = writeln!(
        report,
        "{reps} dry-run cut-overs in {elapsed:.1} s while the load wrote {:.0} rows/s \
         ({writes} writes, {WRITERS} sessions; target {rate:.0}/s); lock attempts {attempts}",
        writes as f64 / elapsed
    );
    let _ = writeln!(report);
    let _ = writeln!(report, "| figure | p50 | p99 | max |");
    let _ = writeln!(report, "|---|---|---|---|");
    let _ = writeln!(
        report,
        "| freeze (LOCK to end of COMMIT), ms | {:.1} | {:.1} | {:.1} |",
        percentile(&freezes, 50.0),
        p99,
        freezes.last().copied().unwrap_or(f64::NAN)
    );
    for (values, part) in part_values.iter_mut().zip(parts) {
        values.sort_by(f64::total_cmp);
        let _ = writeln!(
            report,
            "| - {}, ms | {:.1} | {:.1} | {:.1} |",
            part.trim_end_matches("_ms"),
            percentile(values, 50.0),
            percentile(values, 99.0),
            values.last().copied().unwrap_or(f64::NAN)
        );
    }
    keys.sort_by(f64::total_cmp);
    let _ = writeln!(
        report,
        "| keys re-checked under the lock | {:.0} | {:.0} | {:.0} |",
        percentile(&keys, 50.0),
        percentile(&keys, 99.0),
        keys.last().copied().unwrap_or(f64::NAN)
    );
    let _ = writeln!(
        report,
        "| application write latency over the run, ms | {:.2} | {:.2} | {:.1} |",
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    let _ = writeln!(
        report,
        "\ntarget: freeze p99 < 100 ms: {}",
        if p99 < 100.0 { "PASS" } else { "MISS" }
    );
    print!("{report}");
    let v = cluster.version_num();
    let page = docs_page::write(
        "cutover",
        &docs_page::command("CUTOVER_BENCH_", "cutover"),
        &format!("PostgreSQL {}.{}", v / 10_000, v % 100),
        &report,
    );
    println!("wrote {}", page.display());
}
