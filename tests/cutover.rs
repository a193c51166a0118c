//! `walshift cutover` against a running `walshift run` (docs/design.md §8): the
//! switch under a concurrent write load, the dry run, a lock it cannot get,
//! a failing gate, the operator's hold, and what happens after the switch.
//! Everything is driven through the real binary against a fresh database.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use support::cli::*;
use support::fixtures::{USERS_MIRROR, orders_mirror};
use support::process::{Run, Spec};
use support::{Database, connect, poll};

/// Independent of walshift: how many rows of each target differ from the
/// mapping of its source, computed by plain SQL.
const MISMATCHES: &str = "
SELECT (SELECT count(*) FROM users
        WHERE status IS DISTINCT FROM CASE WHEN is_active THEN 'active' ELSE 'disabled' END)
     + (SELECT count(*) FROM (
          (SELECT o.id, i.n, i.v->>'sku', (i.v->>'qty')::int
             FROM orders o, jsonb_array_elements(o.items) WITH ORDINALITY AS i(v, n)
           EXCEPT ALL SELECT order_id, line_no, sku, qty FROM order_items)
          UNION ALL
          (SELECT order_id, line_no, sku, qty FROM order_items
           EXCEPT ALL SELECT o.id, i.n, i.v->>'sku', (i.v->>'qty')::int
             FROM orders o, jsonb_array_elements(o.items) WITH ORDINALITY AS i(v, n))) d)";

/// Both mirrors, a gate, and operator SQL that records, inside the cut-over
/// transaction, how the targets compare with their mapping at that moment.
fn spec(name: &str, extra: &str) -> Spec {
    Spec::new(
        name,
        &format!(
            r#"{USERS_MIRROR}
{orders}
[[gate]]
name = "every user has a status"
sql = "SELECT count(*) = 0 FROM users WHERE status IS NULL"

{extra}
"#,
            orders = orders_mirror()
        ),
    )
}

fn cutover_sql(lock_timeout: &str, attempts: u32) -> String {
    format!(
        r#"[cutover]
lock_timeout = "{lock_timeout}"
max_attempts = {attempts}
sql = """
CREATE TABLE cutover_check AS SELECT ({MISMATCHES}) AS mismatched, (SELECT count(*) FROM users) AS users;
ALTER TABLE users ALTER COLUMN status SET DEFAULT 'active';
"""
"#
    )
}

/// An application-like write load: inserts and updates on both sources from
/// a few sessions, each write acknowledged (committed) or counted as failed.
struct Load {
    stop: Arc<AtomicBool>,
    users_inserted: Arc<AtomicU64>,
    orders_inserted: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Ids the load inserts start here (the fixtures are below).
const LOAD_IDS: i64 = 1_000_000;

impl Load {
    async fn start(db: &Database, sessions: usize, users: i64, orders: i64) -> Load {
        let load = Load {
            stop: Arc::new(AtomicBool::new(false)),
            users_inserted: Arc::new(AtomicU64::new(0)),
            orders_inserted: Arc::new(AtomicU64::new(0)),
            failed: Arc::new(AtomicU64::new(0)),
            writes: Arc::new(AtomicU64::new(0)),
            tasks: Vec::new(),
        };
        let next_id = Arc::new(AtomicU64::new(LOAD_IDS as u64));
        let mut tasks = Vec::new();
        for s in 0..sessions {
            let c = connect(&db.conninfo()).await;
            let (stop, ui, oi, failed, writes, next_id) = (
                load.stop.clone(),
                load.users_inserted.clone(),
                load.orders_inserted.clone(),
                load.failed.clone(),
                load.writes.clone(),
                next_id.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut i: i64 = s as i64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let r = match i % 4 {
                        0 => {
                            let id = next_id.fetch_add(1, Ordering::Relaxed) as i64;
                            let r = c
                                .execute(
                                    "INSERT INTO users (id, is_active) VALUES ($1::bigint, $1::bigint % 2 = 0)",
                                    &[&id],
                                )
                                .await;
                            if r.is_ok() {
                                ui.fetch_add(1, Ordering::Relaxed);
                            }
                            r
                        }
                        1 => {
                            c.execute(
                                "UPDATE users SET is_active = NOT is_active WHERE id = $1",
                                &[&(1 + (i * 7919) % users)],
                            )
                            .await
                        }
                        2 => {
                            let id = next_id.fetch_add(1, Ordering::Relaxed) as i64;
                            let r = c
                                .execute(
                                    "INSERT INTO orders VALUES ($1::bigint, jsonb_build_array(
                                        jsonb_build_object('sku', 'n' || $1::bigint::text, 'qty', 1),
                                        jsonb_build_object('sku', 'm' || $1::bigint::text, 'qty', 2)))",
                                    &[&id],
                                )
                                .await;
                            if r.is_ok() {
                                oi.fetch_add(1, Ordering::Relaxed);
                            }
                            r
                        }
                        _ => {
                            c.execute(
                                "UPDATE orders SET items = items || jsonb_build_array(jsonb_build_object('sku', 'x', 'qty', $2::int))
                                 WHERE id = $1",
                                &[&(1 + (i * 104729) % orders), &((i % 9) as i32)],
                            )
                            .await
                        }
                    };
                    writes.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = r {
                        eprintln!("load write failed: {:?}", e.as_db_error().map(|d| d.message()));
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
        Load { tasks, ..load }
    }

    async fn stop(mut self) -> Load {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            t.await.expect("load task");
        }
        self
    }
}

/// Whether the `cutover_check` table the operator's cut-over SQL creates exists (it must not
/// after a dry run, a refused or a failed cut-over).
async fn cutover_check_exists(c: &tokio_postgres::Client) -> bool {
    one_i64(
        c,
        "SELECT (to_regclass('cutover_check') IS NOT NULL)::int::int8",
    )
    .await
        == 1
}

/// Runs `walshift run`, waits until it is ready (backfill complete, lag
/// under 1 s).
async fn running(spec: &Spec, db: &Database) -> Run {
    let run = Run::spawn(spec, db);
    let out = cli(&["wait", "--timeout", "30s"], spec, db).await;
    assert_eq!(out.code(), Some(0), "wait: {out}\nrun:\n{}", run.stderr());
    run
}

fn outcome(out: &Out) -> Value {
    let v = out.json();
    assert!(v["id"].as_i64().is_some(), "an outcome: {out}");
    v
}

/// Guards the whole switch (§5): under a concurrent write load the cut-over
/// locks, drains, checks and commits the operator's SQL. Inside that
/// transaction (recorded by the SQL itself) every target equals its mapping
/// exactly; no acknowledged application write is lost; writes waited but
/// none failed; reads never waited (a reader with a 100 ms lock_timeout never
/// timed out); the freeze is reported; the run ends by itself and refuses to
/// start again; cleanup leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cutover_under_load_switches_exactly_and_loses_nothing() {
    let (db, c) = setup(3_000, 800).await;
    let spec = spec("co-load", &cutover_sql("500ms", 10));
    let run = running(&spec, &db).await;
    let load = Load::start(&db, 3, 3_000, 800).await;

    // A reader that would notice a lock blocking reads.
    let reader_stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let r = connect(&db.conninfo()).await;
        r.batch_execute("SET lock_timeout = '100ms'").await.unwrap();
        let stop = reader_stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                match r
                    .query_one("SELECT count(*) FROM users WHERE id % 97 = 0", &[])
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        eprintln!("read failed: {e}");
                        failed += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = cli(&["cutover", "--json"], &spec, &db).await;
    let load = load.stop().await;
    reader_stop.store(true, Ordering::Relaxed);
    let (reads_ok, reads_failed) = reader.await.unwrap();
    assert_eq!(
        out.code(),
        Some(0),
        "cutover: {out}\nrun:\n{}",
        run.stderr()
    );
    let o = outcome(&out);
    assert_eq!(o["passed"], true, "{o}");
    assert_eq!(o["committed"], true, "{o}");
    let freeze = o["freeze_ms"].as_f64().unwrap();
    assert!(freeze > 0.0, "{o}");
    assert!(o["gates"][0]["passed"] == true, "{o}");
    eprintln!(
        "freeze {freeze:.1} ms, drained {} txns, re-checked {} keys, {} load writes",
        o["drained_txns"],
        o["keys_checked"],
        load.writes.load(Ordering::Relaxed)
    );

    // The operator's SQL ran, and saw exact targets.
    let row = c
        .query_one("SELECT mismatched, users FROM cutover_check", &[])
        .await
        .expect("cutover.sql created cutover_check");
    assert_eq!(
        row.get::<_, i64>(0),
        0,
        "targets differed inside the cut-over"
    );
    assert!(row.get::<_, i64>(1) >= 3_000);
    // No acknowledged write lost, and none failed (they only waited).
    assert_eq!(load.failed.load(Ordering::Relaxed), 0);
    assert_eq!(
        one_i64(
            &c,
            &format!("SELECT count(*) FROM users WHERE id >= {LOAD_IDS}")
        )
        .await,
        load.users_inserted.load(Ordering::Relaxed) as i64
    );
    assert_eq!(
        one_i64(
            &c,
            &format!("SELECT count(*) FROM orders WHERE id >= {LOAD_IDS}")
        )
        .await,
        load.orders_inserted.load(Ordering::Relaxed) as i64
    );
    assert_eq!(reads_failed, 0, "a read waited for the cut-over's lock");
    assert!(reads_ok > 0);

    // The run is done, and says so; it will not start again.
    let status = run.exit(Duration::from_secs(15)).await;
    assert!(status.success(), "run: {}", run.stderr());
    assert!(run.stderr().contains("is cut over"), "{}", run.stderr());
    let again = cli(&["run"], &spec, &db).await;
    assert_ne!(again.code(), Some(0));
    assert!(again.stderr.contains("was cut over at"), "{again}");
    let refused = cli(&["cutover"], &spec, &db).await;
    assert_eq!(refused.code(), Some(1), "{refused}");
    assert!(refused.stderr.contains("already cut over"), "{refused}");

    let out = cli(&["cleanup"], &spec, &db).await;
    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(
        one_i64(
            &c,
            "SELECT (SELECT count(*) FROM pg_replication_slots)
                  + (SELECT count(*) FROM pg_publication)
                  + (SELECT count(*) FROM pg_replication_origin)
                  + (SELECT count(*) FROM pg_namespace WHERE nspname = 'walshift')"
        )
        .await,
        0
    );
}

/// Guards `--dry-run`: every step runs (the freeze is measured) and the
/// operator's SQL is rolled back; the run keeps mirroring, a second dry run
/// works as well, and verify still passes afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dry_run_rolls_back_and_mirroring_goes_on() {
    let (db, c) = setup(1_000, 300).await;
    let spec = spec("co-dry", &cutover_sql("500ms", 5));
    let run = running(&spec, &db).await;
    let load = Load::start(&db, 2, 1_000, 300).await;
    for _ in 0..2 {
        let out = cli(&["cutover", "--dry-run", "--json"], &spec, &db).await;
        assert_eq!(out.code(), Some(0), "{out}\nrun:\n{}", run.stderr());
        let o = outcome(&out);
        assert_eq!(
            (o["passed"].as_bool(), o["committed"].as_bool()),
            (Some(true), Some(false))
        );
        assert!(o["freeze_ms"].as_f64().unwrap() > 0.0);
    }
    let load = load.stop().await;
    assert_eq!(load.failed.load(Ordering::Relaxed), 0);
    assert!(
        !cutover_check_exists(&c).await,
        "the dry run's SQL was rolled back"
    );
    assert!(run.still_running(), "{}", run.stderr());
    let out = cli(&["verify"], &spec, &db).await;
    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(one_i64(&c, MISMATCHES).await, 0);
    let human = cli(&["cutover", "--dry-run"], &spec, &db).await;
    assert_eq!(human.code(), Some(0), "{human}");
    assert!(human.stdout.starts_with("dry run passed"), "{human}");
}

/// Guards the lock's back-off: while another session holds a conflicting
/// lock, cutover retries `max_attempts` times and gives up with exit 1,
/// leaving no lock, no operator SQL and a run that goes on mirroring.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_lock_makes_cutover_retry_then_give_up_cleanly() {
    let (db, c) = setup(200, 50).await;
    let spec = spec("co-lock", &cutover_sql("100ms", 3));
    let run = running(&spec, &db).await;
    let holder = db.connect().await;
    holder
        .batch_execute("BEGIN; UPDATE users SET pad = 'held' WHERE id = 1")
        .await
        .unwrap();
    let out = cli(&["cutover", "--json"], &spec, &db).await;
    assert_eq!(out.code(), Some(1), "{out}\nrun:\n{}", run.stderr());
    let o = outcome(&out);
    assert_eq!(o["passed"], false);
    assert_eq!(o["attempts"], 3, "{o}");
    assert!(
        o["error"].as_str().unwrap().contains("could not lock"),
        "{o}"
    );
    assert_eq!(
        one_i64(
            &c,
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name LIKE 'walshift%' AND l.relation IN ('users'::regclass, 'orders'::regclass)"
        )
        .await,
        0,
        "walshift still holds a lock on a source"
    );
    assert!(!cutover_check_exists(&c).await);
    holder.batch_execute("COMMIT").await.unwrap();
    // Still mirroring: a new write reaches the target.
    c.execute(
        "UPDATE users SET is_active = NOT is_active WHERE id = 2",
        &[],
    )
    .await
    .unwrap();
    let out = cli(&["wait", "--timeout", "20s"], &spec, &db).await;
    assert_eq!(out.code(), Some(0), "{out}");
    poll(
        None,
        "the write after the failed cut-over mirrored",
        Duration::from_secs(20),
        || async { one_i64(&c, MISMATCHES).await == 0 },
    )
    .await;
    assert!(run.still_running(), "{}", run.stderr());
}

/// Guards the gates as a release gate: a failing gate fails `verify` (exit
/// 1) and makes `cutover` refuse (exit 1) with nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_gate_blocks_verify_and_cutover() {
    let (db, c) = setup(100, 20).await;
    let spec = spec(
        "co-gate",
        &format!(
            "[[gate]]\nname = \"no disabled users\"\nsql = \"SELECT count(*) = 0 FROM users WHERE status = 'disabled'\"\n\n{}",
            cutover_sql("200ms", 2)
        ),
    );
    let run = running(&spec, &db).await;
    let out = cli(&["verify"], &spec, &db).await;
    assert_eq!(out.code(), Some(1), "{out}");
    let out = cli(&["cutover"], &spec, &db).await;
    assert_eq!(out.code(), Some(1), "{out}\nrun:\n{}", run.stderr());
    assert!(out.stdout.contains("no disabled users"), "{out}");
    assert!(!cutover_check_exists(&c).await);
    assert!(run.still_running());
}

/// Guards the operator's hold: `ctl postpone-cutover` makes `cutover`
/// refuse; `ctl allow-cutover` lets it through. Before any run, `cutover`
/// refuses, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postpone_and_allow_cutover() {
    let (db, _c) = setup(100, 20).await;
    let spec = spec("co-hold", &cutover_sql("200ms", 2));
    let out = cli(&["cutover"], &spec, &db).await;
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("start `walshift run"), "{out}");

    let _run = running(&spec, &db).await;
    let out = cli(&["ctl", "postpone-cutover"], &spec, &db).await;
    assert_eq!(out.code(), Some(0), "{out}");
    let out = cli(&["cutover", "--dry-run"], &spec, &db).await;
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("postponed"), "{out}");
    let out = cli(&["ctl", "allow-cutover"], &spec, &db).await;
    assert_eq!(out.code(), Some(0), "{out}");
    let out = cli(&["cutover", "--dry-run"], &spec, &db).await;
    assert_eq!(out.code(), Some(0), "{out}");
}

/// Guards that a cut-over honours the spec it is given: `walshift cutover
/// other.toml`, whose gate would fail, is refused by the run that loaded
/// another spec of the same name (before, the run used its own gates and
/// switched). Nothing is changed; the run goes on, and a cut-over with its
/// own spec still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cutover_with_another_spec_than_the_runs_is_refused() {
    let (db, c) = setup(100, 20).await;
    let spec = spec("co-other", &cutover_sql("200ms", 2));
    let run = running(&spec, &db).await;
    let other = Spec::new(
        "co-other",
        &format!(
            "{USERS_MIRROR}\n{}\n[[gate]]\nname = \"no users at all\"\nsql = \"SELECT count(*) = 0 FROM users\"\n\n{}",
            orders_mirror(),
            cutover_sql("200ms", 2)
        ),
    );
    let out = cli(&["cutover"], &other, &db).await;
    assert_eq!(out.code(), Some(1), "{out}\nrun:\n{}", run.stderr());
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        all.contains("whose mirrors, gates or [cutover] differ from")
            && all.contains("cut over with the spec the run uses"),
        "{out}"
    );
    assert!(!cutover_check_exists(&c).await);
    assert!(run.still_running());
    let out = cli(&["cutover", "--dry-run"], &spec, &db).await;
    assert_eq!(out.code(), Some(0), "{out}");
}
