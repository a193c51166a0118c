//! Lost slots (docs/topology.md): a slot the server invalidated while walshift was stopped
//! (`max_slot_wal_keep_size`), with writes made meanwhile. `run` resynchronises — a new slot
//! first, then every key recomputed — and the targets end exact, judged by plain SQL over
//! source and target; or, with `[safety] on_slot_lost = "stop"`, it stops with one line and
//! leaves everything as it was. A planted naive recovery (a new slot, the old checkpoints
//! kept) shows the test can fail.
//!
//! Each test starts its own cluster with `max_slot_wal_keep_size = 1MB` (the shared one must
//! not lose other tests' slots).

mod support;

use std::time::Duration;

use support::cli::{cli, one_i64, status_json};
use support::fixtures::order_items_qty_diff;
use support::fixtures::{SCHEMA, USERS_MIRROR, orders_mirror};
use support::process::{Run, Spec};
use support::{Cluster, Database, poll, wait_caught_up, wrong_status};

/// A cluster whose slots lose WAL past 1 MB, for one test.
async fn small_wal_cluster() -> Cluster {
    tokio::task::spawn_blocking(|| {
        Cluster::builder()
            .setting("max_slot_wal_keep_size", "1MB")
            .setting("wal_keep_size", "0")
            // New segments need not be written through: a few are switched past per test.
            .setting("wal_init_zero", "off")
            .start()
    })
    .await
    .expect("start task")
    .expect("start a cluster")
}

/// The operator schema with `users` 1..=3000 and `orders` 1..=1000 (1-3 line items each).
async fn setup(cluster: &Cluster, hint: &str) -> (Database, tokio_postgres::Client) {
    let db = cluster.fresh_database_named(hint).expect("database");
    let c = db.connect().await;
    c.batch_execute(SCHEMA).await.expect("schema");
    c.batch_execute(
        "INSERT INTO users (id, is_active) SELECT g, g % 3 = 0 FROM generate_series(1, 3000) g;
         INSERT INTO orders SELECT g, (SELECT jsonb_agg(jsonb_build_object('sku', 's' || g || '-' || n, 'qty', n))
                                       FROM generate_series(1, 1 + g % 3) n)
         FROM generate_series(1, 1000) g;",
    )
    .await
    .expect("rows");
    (db, c)
}

fn spec(name: &str, safety: &str) -> Spec {
    Spec::new(name, &format!("{USERS_MIRROR}{}{safety}", orders_mirror()))
}

/// Writes of every kind to both sources: updates, inserts, deletes, key by key and in bulk.
async fn write_a_round(c: &tokio_postgres::Client, round: i64) {
    c.batch_execute(&format!(
        "UPDATE users SET is_active = NOT is_active WHERE id % 7 = {r};
         INSERT INTO users (id, is_active) SELECT 10000 * {r} + g, g % 2 = 0 FROM generate_series(1, 50) g;
         DELETE FROM users WHERE id % 101 = {r};
         UPDATE orders SET items = items || jsonb_build_array(jsonb_build_object('sku', 'r{r}', 'qty', {r}))
           WHERE id % 5 = {r};
         INSERT INTO orders SELECT 10000 * {r} + g, jsonb_build_array(jsonb_build_object('sku', 'n' || g, 'qty', 1))
           FROM generate_series(1, 20) g;
         DELETE FROM orders WHERE id % 97 = {r};",
        r = round
    ))
    .await
    .expect("a round of writes");
}

async fn wal_status(c: &tokio_postgres::Client, slot: &str) -> Option<String> {
    c.query_opt(
        "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .expect("pg_replication_slots")
    .and_then(|r| r.get(0))
}

/// Pushes WAL past `max_slot_wal_keep_size` and checkpoints until the server has invalidated
/// `slot` (`wal_status = 'lost'`); returns how many checkpoints it took.
async fn invalidate(c: &tokio_postgres::Client, slot: &str) -> usize {
    for checkpoints in 1..=30 {
        for _ in 0..3 {
            c.batch_execute(
                "SELECT pg_logical_emit_message(false, 'filler', repeat('x', 100)); SELECT pg_switch_wal();",
            )
            .await
            .expect("switch WAL");
        }
        c.batch_execute("CHECKPOINT").await.expect("checkpoint");
        if wal_status(c, slot).await.as_deref() == Some("lost") {
            return checkpoints;
        }
    }
    panic!(
        "slot {slot} not invalidated after 30 checkpoints: wal_status {:?}",
        wal_status(c, slot).await
    );
}

/// Runs until mirrored and caught up, stops cleanly, then makes writes and loses the slot:
/// writes before and after the invalidation, all of them only in the lost slot's WAL.
async fn mirror_then_lose_the_slot(spec: &Spec, db: &Database, c: &tokio_postgres::Client) {
    let run = Run::spawn(spec, db);
    wait_exact("the first run's mirror", c).await;
    wait_caught_up(&run, c).await;
    run.sigterm();
    let code = run.exit(Duration::from_secs(20)).await;
    assert_eq!(code.code(), Some(0), "{}", run.stderr());

    write_a_round(c, 1).await;
    write_a_round(c, 2).await;
    let checkpoints = invalidate(c, &spec.object()).await;
    eprintln!("slot invalidated after {checkpoints} checkpoint(s)");
    write_a_round(c, 3).await;
    assert!(
        wrong_status(c).await > 0 && order_items_qty_diff(c).await > 0,
        "the writes made while walshift was stopped must leave the targets behind"
    );
}

/// Both targets equal the mapping of their sources, by SQL independent of walshift's.
async fn exact(c: &tokio_postgres::Client) -> bool {
    wrong_status(c).await == 0 && order_items_qty_diff(c).await == 0
}

async fn wait_exact(what: &str, c: &tokio_postgres::Client) {
    poll(None, what, Duration::from_secs(60), || exact(c)).await;
}

/// Guards the resync: after the slot was invalidated while walshift was stopped, `run` drops
/// the dead slot, creates a new one, recomputes every key, and both targets end exact; live
/// writes after it are mirrored too. The resync is logged at warn with its reason, shown by
/// `status` and counted in `walshift_slot_resyncs_total`.
#[tokio::test]
async fn a_slot_lost_while_stopped_is_resynced_and_ends_exact() {
    let cluster = small_wal_cluster().await;
    let (db, c) = setup(&cluster, "slots_resync").await;
    let spec = spec("slots-resync", "");
    mirror_then_lose_the_slot(&spec, &db, &c).await;
    let first_point: String = c
        .query_one(
            "SELECT consistent_point::text FROM walshift.migration WHERE name = $1",
            &[&spec.name],
        )
        .await
        .unwrap()
        .get(0);

    let run = Run::spawn_with(&spec, &db, &["--listen", "127.0.0.1:0"]);
    let addr = run.listening().await;
    wait_exact("the resynced mirror", &c).await;
    poll(
        None,
        "the backfill to finish again",
        Duration::from_secs(60),
        || support::backfill_done(&c, &spec.name),
    )
    .await;
    write_a_round(&c, 4).await;
    wait_caught_up(&run, &c).await;
    assert!(
        exact(&c).await,
        "not exact after the resync and live writes"
    );

    let stderr = run.stderr();
    let warned = stderr
        .lines()
        .find(|l| l.contains("WARN") && l.contains("resynchronised after the slot was lost"))
        .unwrap_or_else(|| panic!("no warning of the resync:\n{stderr}"));
    assert!(warned.contains("wal_status = lost"), "{warned}");
    assert_eq!(
        wal_status(&c, &spec.object()).await.as_deref(),
        Some("reserved")
    );
    let row = c
        .query_one(
            "SELECT slot_resyncs, slot_lost IS NULL, consistent_point::text <> $2
             FROM walshift.migration WHERE name = $1",
            &[&spec.name, &first_point],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    assert!(row.get::<_, bool>(1), "the resync is recorded as finished");
    assert!(row.get::<_, bool>(2), "a new consistent point is recorded");

    let s = status_json(&spec, &db).await;
    assert_eq!(s["slot"]["resyncs"], 1, "{s}");
    assert!(
        s["slot"]["resync_reason"]
            .as_str()
            .is_some_and(|r| r.contains("wal_status = lost")),
        "{s}"
    );
    let out = cli(&["status"], &spec, &db).await;
    assert!(
        out.stdout.contains("resynced:  after slot lost at "),
        "{out}"
    );
    let metrics = support::http::get(&addr, "/metrics")
        .await
        .expect("/metrics");
    assert!(
        metrics.body.contains("walshift_slot_resyncs_total 1"),
        "{}",
        metrics.body
    );
    run.sigterm();
    assert_eq!(run.exit(Duration::from_secs(20)).await.code(), Some(0));
}

/// Guards `[safety] on_slot_lost = "stop"`: the run exits non-zero with one line naming the
/// slot and saying what to do, and changes nothing: the dead slot and the state stay.
#[tokio::test]
async fn on_slot_lost_stop_exits_and_leaves_things_intact() {
    let cluster = small_wal_cluster().await;
    let (db, c) = setup(&cluster, "slots_stop").await;
    let spec = spec("slots-stop", "\n[safety]\non_slot_lost = \"stop\"\n");
    mirror_then_lose_the_slot(&spec, &db, &c).await;
    let before: String = c
        .query_one(
            "SELECT (SELECT to_jsonb(m) - 'run_heartbeat' - 'lag_measured_at' - 'lag_seconds' - 'lag_bytes'
                     FROM walshift.migration m WHERE name = $1)::text
                 || (SELECT jsonb_agg(to_jsonb(b) ORDER BY mirror) FROM walshift.backfill b WHERE name = $1)::text",
            &[&spec.name],
        )
        .await
        .unwrap()
        .get(0);

    let run = Run::spawn(&spec, &db);
    let code = run.exit(Duration::from_secs(30)).await;
    let stderr = run.stderr();
    assert_eq!(code.code(), Some(2), "{stderr}");
    let last = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.contains(&spec.object())
            && last.contains("on_slot_lost = \"stop\"")
            && last.contains("on_slot_lost = \"resync\""),
        "the last line should name the slot and the way out: {last:?}\n{stderr}"
    );
    assert_eq!(
        wal_status(&c, &spec.object()).await.as_deref(),
        Some("lost"),
        "the dead slot is left for the operator"
    );
    let after: String = c
        .query_one(
            "SELECT (SELECT to_jsonb(m) - 'run_heartbeat' - 'lag_measured_at' - 'lag_seconds' - 'lag_bytes'
                     FROM walshift.migration m WHERE name = $1)::text
                 || (SELECT jsonb_agg(to_jsonb(b) ORDER BY mirror) FROM walshift.backfill b WHERE name = $1)::text",
            &[&spec.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(before, after, "the state changed: {stderr}");
}

/// The test above it can fail: with the naive recovery planted (`--unsafe-plant no-resync`:
/// a new slot, the finished backfill and the position kept), the writes made while the slot
/// was lost are never recomputed, and the same SQL finds the targets wrong.
#[tokio::test]
async fn planted_naive_recovery_misses_the_writes() {
    let cluster = small_wal_cluster().await;
    let (db, c) = setup(&cluster, "slots_planted").await;
    let spec = spec("slots-planted", "");
    mirror_then_lose_the_slot(&spec, &db, &c).await;
    let wrong_before = (wrong_status(&c).await, order_items_qty_diff(&c).await);

    let run = Run::spawn_with(&spec, &db, &["--unsafe-plant", "no-resync"]);
    poll(
        None,
        "the planted run streaming from a new slot",
        Duration::from_secs(30),
        || async { wal_status(&c, &spec.object()).await.as_deref() == Some("reserved") },
    )
    .await;
    write_a_round(&c, 4).await;
    wait_caught_up(&run, &c).await;
    let wrong_after = (wrong_status(&c).await, order_items_qty_diff(&c).await);
    assert!(
        wrong_after.0 > 0 && wrong_after.1 > 0,
        "the naive recovery should have missed writes (before {wrong_before:?}, after {wrong_after:?})"
    );
    assert_eq!(
        one_i64(
            &c,
            "SELECT count(*) FROM walshift.backfill WHERE name = 'slots-planted' AND NOT done"
        )
        .await,
        0,
        "the planted recovery keeps the finished backfill"
    );
    run.sigterm();
    assert_eq!(run.exit(Duration::from_secs(20)).await.code(), Some(0));
}
