//! The operator's commands around a running `walshift run`: `status`, `wait`,
//! `verify`, `cleanup`, `ctl`, and the `[safety]` WAL limit — each driven
//! through the real binary against a fresh database (docs/design.md §7-8, README
//! "Commands").

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Database, connect, poll, poll_some};

use support::cli::*;
use support::fixtures::{USERS_MIRROR, orders_mirror};
use support::process::{Run, Spec};
/// Whether the backfill of `name` has not (yet) completed every mirror.
async fn backfill_incomplete(c: &tokio_postgres::Client, name: &str) -> bool {
    if one_i64(
        c,
        "SELECT (to_regclass('walshift.backfill') IS NULL)::int::int8",
    )
    .await
        == 1
    {
        return true;
    }
    let row = c
        .query_one(
            "SELECT count(*) FILTER (WHERE NOT done), count(*) FROM walshift.backfill WHERE name = $1",
            &[&name],
        )
        .await
        .unwrap();
    row.get::<_, i64>(0) > 0 || row.get::<_, i64>(1) == 0
}

/// Polls `status --json` until `cond` holds for it; returns that status.
async fn status_until(
    what: &str,
    timeout: Duration,
    spec: &Spec,
    db: &Database,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    poll_some(None, what, timeout, || async {
        let s = status_json(spec, db).await;
        cond(&s).then_some(s)
    })
    .await
}

fn ready_mirroring(s: &Value) -> bool {
    s["phase"] == "mirroring" && s["lag"]["seconds"].as_f64().is_some_and(|l| l < 1.0)
}

/// Polls `status --json` (20 s at most) until the run mirrors with lag under 1 s; returns that
/// status.
async fn wait_ready(what: &str, spec: &Spec, db: &Database) -> Value {
    status_until(what, Duration::from_secs(20), spec, db, ready_mirroring).await
}

/// A spec mirroring `users` whose backfill is capped at `rate` rows per second.
fn capped_users_spec(name: &str, rate: u32) -> Spec {
    Spec::new(
        name,
        &format!("{USERS_MIRROR}\n[backfill]\nmax_rows_per_second = {rate}\n"),
    )
}

/// Polls `status --json` (15 s at most) until the run is alive and its backfill has copied
/// some rows.
async fn wait_backfill_under_way(what: &str, spec: &Spec, db: &Database) {
    status_until(what, Duration::from_secs(15), spec, db, |s| {
        s["run"]["alive"] == true && rows_done(s) > 0
    })
    .await;
}

/// Waits (10 s at most) until user `id`'s `status` is the mapping of its `is_active`.
async fn wait_user_mirrored(what: &str, c: &tokio_postgres::Client, id: i64) {
    let sql = format!(
        "SELECT count(*) FROM users WHERE id = {id} AND status = CASE WHEN is_active THEN 'active' ELSE 'disabled' END"
    );
    poll(None, what, Duration::from_secs(10), || async {
        one_i64(c, &sql).await == 1
    })
    .await;
}

/// SIGTERM, then the run must exit 0 within 10 s.
async fn stop_cleanly(run: &Run) {
    run.sigterm();
    let code = run.exit(Duration::from_secs(10)).await;
    assert_eq!(code.code(), Some(0), "run: {}", run.stderr());
}

/// Guards: before any run, `status` answers (exit 0, phase `not-started`)
/// instead of failing on missing state, `--json` has the documented keys, and
/// `wait --timeout` gives up (exit 1) saying that no run has started.
#[tokio::test]
async fn status_before_any_run_is_not_started() {
    let (db, _c) = setup(10, 0).await;
    let spec = Spec::new("ops-before", USERS_MIRROR);
    let out = cli(&["status"], &spec, &db).await;
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("not-started"), "{out}");
    let json = status_json(&spec, &db).await;
    for key in ["name", "phase", "ready", "run", "lag", "backfill", "slot"] {
        assert!(json.get(key).is_some(), "status --json lacks {key}: {json}");
    }
    assert_eq!(json["name"], "ops-before");
    assert_eq!(json["phase"], "not-started");
    assert_eq!(json["ready"], false);
    assert_eq!(json["run"]["alive"], false);
    assert_eq!(json["slot"]["exists"], false);
    let out = cli(&["wait", "--timeout", "2s"], &spec, &db).await;
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(
        out.stderr.contains("timed out") && out.stderr.contains("has not started"),
        "wait should say it timed out and why: {out}"
    );
}

/// Guards the deploy-script contract of `wait`: it returns 0 only once the
/// backfill (running concurrently, throttled to take seconds) is complete,
/// never before; `status` shows `backfilling` with a live run meanwhile; and
/// with no run alive `wait --timeout` gives up with exit 1 and says why.
#[tokio::test]
async fn wait_returns_only_after_the_backfill_is_done() {
    let (db, c) = setup(50_000, 0).await;
    let spec = capped_users_spec("ops-wait", 10_000);
    let run = Run::spawn(&spec, &db);
    let started = Instant::now();
    let mut waiter = command(&["wait", "--timeout", "60s"], &spec.path, &db)
        .spawn()
        .expect("spawn wait");
    let mut saw_waiting_while_incomplete = false;
    let mut saw_backfilling_status = false;
    let wait_status = loop {
        if let Some(s) = waiter.try_wait().expect("try_wait") {
            break s;
        }
        // Checked in this order: wait was running at the first, so if the
        // backfill is still incomplete at the second, it was then too.
        let incomplete = backfill_incomplete(&c, "ops-wait").await;
        if incomplete {
            saw_waiting_while_incomplete = true;
            if !saw_backfilling_status {
                let s = status_json(&spec, &db).await;
                saw_backfilling_status =
                    s["phase"] == "backfilling" && s["run"]["alive"] == true && s["ready"] == false;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(28),
            "wait did not return in 28s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let done = one_i64(
        &c,
        "SELECT count(*) FILTER (WHERE NOT done) + (count(*) <> 1)::int FROM walshift.backfill WHERE name = 'ops-wait'",
    )
    .await;
    let out = waiter.wait_with_output().await.expect("wait output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        wait_status.code(),
        Some(0),
        "wait: {stdout}\n{stderr}\nrun:\n{}",
        run.stderr()
    );
    assert_eq!(
        done, 0,
        "wait returned while the backfill was not done: {stdout}"
    );
    assert!(
        saw_waiting_while_incomplete,
        "the backfill finished before it could be observed; slow it down"
    );
    assert!(
        saw_backfilling_status,
        "status never showed phase backfilling with a live run"
    );
    assert!(stdout.contains("ready"), "{stdout}");
    assert_eq!(support::wrong_status(&c).await, 0);

    stop_cleanly(&run).await;
    let out = cli(&["wait", "--timeout", "2s"], &spec, &db).await;
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(
        out.stderr.contains("timed out") && out.stderr.contains("no walshift run is alive"),
        "wait should say it timed out and why: {out}"
    );
}

/// Guards `wait` after a restart on a backlog: a run that has just started does not know its
/// lag until a watermark it emitted comes back through the stream, after everything before it.
/// Until then `wait` must not say ready, however young that watermark is. Planted: with the
/// lag taken as the age of the first watermark still out (a few ms at the first tick), `wait`
/// returned ready about a second after the restart with the whole backlog unapplied.
#[tokio::test]
async fn wait_after_a_restart_returns_only_once_the_backlog_is_applied() {
    let (db, c) = setup(200_000, 0).await;
    let spec = Spec::new("ops-restart", USERS_MIRROR);
    let run = Run::spawn(&spec, &db);
    let out = cli(&["wait", "--timeout", "60s"], &spec, &db).await;
    assert_eq!(out.code(), Some(0), "{out}\nrun:\n{}", run.stderr());
    stop_cleanly(&run).await;
    // The backlog: every user flips three times while no run reads the slot.
    for _ in 0..3 {
        c.batch_execute("UPDATE users SET is_active = NOT is_active")
            .await
            .expect("backlog");
    }
    assert!(
        support::wrong_status(&c).await > 0,
        "the backlog is not applied yet"
    );
    let run = Run::spawn(&spec, &db);
    let out = cli(
        &["wait", "--timeout", "120s", "--max-lag", "1s"],
        &spec,
        &db,
    )
    .await;
    let wrong = support::wrong_status(&c).await;
    assert_eq!(out.code(), Some(0), "{out}\nrun:\n{}", run.stderr());
    assert_eq!(
        wrong, 0,
        "wait said ready with {wrong} users not yet mirrored: {out}"
    );
    stop_cleanly(&run).await;
}

/// Guards `status` while a run mirrors: phase `mirroring`, run alive with its
/// pid, lag measured end to end (under 1 s once caught up, and refreshed),
/// slot active, `ready` true — and the human rendering says the same.
#[tokio::test]
async fn status_while_running_shows_live_run_lag_and_slot() {
    let (db, c) = setup(1_000, 0).await;
    let spec = Spec::new("ops-status", USERS_MIRROR);
    let run = Run::spawn(&spec, &db);
    let s = wait_ready("phase mirroring with lag < 1s", &spec, &db).await;
    assert_eq!(s["run"]["alive"], true, "{s}");
    assert_eq!(s["run"]["pid"].as_i64(), Some(i64::from(run.pid())), "{s}");
    assert_eq!(s["slot"]["exists"], true, "{s}");
    assert_eq!(s["slot"]["active"], true, "{s}");
    assert_eq!(s["slot"]["name"], spec.object(), "{s}");
    assert!(s["lag"]["bytes"].as_i64().is_some(), "{s}");
    assert!(
        s["lag"]["measured_age_seconds"]
            .as_f64()
            .is_some_and(|a| a < 5.0),
        "{s}"
    );
    assert_eq!(s["backfill"]["complete"], true, "{s}");
    assert_eq!(s["ready"], true, "{s}");
    // A live write is mirrored and the lag stays small.
    c.execute(
        "UPDATE users SET is_active = NOT is_active WHERE id = 7",
        &[],
    )
    .await
    .unwrap();
    wait_user_mirrored("the update mirrored", &c, 7).await;
    let text = cli(&["status"], &spec, &db).await;
    assert_eq!(text.code(), Some(0), "{text}");
    assert!(text.stdout.contains("mirroring"), "{text}");
    assert!(text.stdout.contains("alive"), "{text}");
    assert!(text.stdout.contains(" active"), "{text}");
    stop_cleanly(&run).await;
    let s = status_json(&spec, &db).await;
    assert_eq!(s["phase"], "stopped", "{s}");
    assert_eq!(s["run"]["alive"], false, "{s}");
    assert_eq!(s["ready"], false, "{s}");
}

/// Application-like writes on `users` and `orders` until `stop`.
fn write_load(db: &Database, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let conninfo = db.conninfo();
    tokio::spawn(async move {
        let c = connect(&conninfo).await;
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let id = (n * 7919 % 2000 + 1) as i64;
            c.execute(
                "UPDATE users SET is_active = NOT is_active WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
            // Orders 101..=500 only: 1..=100 stay still for the corruption check.
            let oid = (n * 104_729 % 400 + 101) as i64;
            c.execute(
                "UPDATE orders SET items = items || jsonb_build_array(jsonb_build_object('sku', 'x', 'qty', 1)) WHERE id = $1",
                &[&oid],
            )
            .await
            .unwrap();
            c.execute(
                "INSERT INTO orders VALUES (10000 + $1::bigint, '[{\"sku\":\"n\",\"qty\":2}]')",
                &[&(n as i64)],
            )
            .await
            .unwrap();
            n += 1;
        }
        n
    })
}

/// Guards `verify`: exit 0 on a mirrored set + rows spec checked while writes
/// continue (changing rows settle, no false alarm); exit 1 naming the key once
/// a target row is corrupted behind walshift's back; exit 1 for a gate that
/// returns false, and for a gate that returns two rows, even when data matches.
#[tokio::test]
async fn verify_passes_on_mirrored_data_and_fails_on_corruption_and_gates() {
    let (db, c) = setup(2_000, 500).await;
    let body = format!("{USERS_MIRROR}{}", orders_mirror());
    let spec = Spec::new("ops-verify", &body);
    let run = Run::spawn(&spec, &db);
    wait_ready("ready", &spec, &db).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = write_load(&db, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let under_load = cli(&["verify"], &spec, &db).await;
    stop.store(true, Ordering::Relaxed);
    let writes = load.await.expect("load");
    assert!(writes > 0);
    assert_eq!(
        under_load.code(),
        Some(0),
        "verify under load: {under_load}"
    );
    assert!(under_load.stdout.contains("verify passed"), "{under_load}");

    // Corrupt one rows-mode target row; the target is not published, so
    // walshift never hears of it.
    let n = c
        .execute(
            "UPDATE order_items SET qty = qty + 100 WHERE order_id = 42 AND line_no = 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let corrupt = cli(&["verify"], &spec, &db).await;
    assert_eq!(corrupt.code(), Some(1), "{corrupt}");
    assert!(
        corrupt.stdout.contains("key (42)"),
        "key not named: {corrupt}"
    );
    assert!(corrupt.stdout.contains("verify FAILED"), "{corrupt}");
    let json = cli(&["verify", "--json"], &spec, &db).await;
    assert_eq!(json.code(), Some(1), "{json}");
    let report = json.json();
    assert_eq!(report["passed"], false);
    assert_eq!(report["mirrors"][1]["differing"], 1, "{report}");
    assert_eq!(report["mirrors"][1]["changed"], 1, "{report}");
    assert_eq!(report["mirrors"][0]["differing"], 0, "{report}");
    c.execute(
        "UPDATE order_items SET qty = qty - 100 WHERE order_id = 42 AND line_no = 1",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(cli(&["verify"], &spec, &db).await.code(), Some(0));

    // Missing and extra rows are told apart: all of order 43's rows gone,
    // rows owned by an order that does not exist.
    let saved = c
        .query("SELECT * FROM order_items WHERE order_id = 43", &[])
        .await
        .unwrap()
        .len();
    c.batch_execute(
        "CREATE TEMP TABLE saved AS SELECT * FROM order_items WHERE order_id = 43;
         DELETE FROM order_items WHERE order_id = 43;
         INSERT INTO order_items VALUES (999999, 1, 'ghost', 1);",
    )
    .await
    .unwrap();
    let json = cli(&["verify", "--json"], &spec, &db).await;
    assert_eq!(json.code(), Some(1), "{json}");
    let report = json.json();
    let m = &report["mirrors"][1];
    assert_eq!(
        (&m["differing"], &m["missing"], &m["extra"], &m["changed"]),
        (
            &serde_json::json!(2),
            &serde_json::json!(1),
            &serde_json::json!(1),
            &serde_json::json!(0)
        ),
        "{report} ({saved} rows of order 43 removed)"
    );
    let text = cli(&["verify"], &spec, &db).await;
    assert!(
        text.stdout
            .contains("1 with rows missing, 1 with extra rows, 0 with changed rows"),
        "{text}"
    );
    c.batch_execute(
        "INSERT INTO order_items SELECT * FROM saved;
         DELETE FROM order_items WHERE order_id = 999999;",
    )
    .await
    .unwrap();
    assert_eq!(cli(&["verify"], &spec, &db).await.code(), Some(0));

    // Gates: data matches, the gate decides.
    let gate = |sql: &str| {
        Spec::new(
            "ops-verify",
            &format!("{body}\n[[gate]]\nname = \"the gate\"\nsql = \"{sql}\"\n"),
        )
    };
    let passing = gate("SELECT true");
    let out = cli(&["verify"], &passing, &db).await;
    assert_eq!(out.code(), Some(0), "a true gate: {out}");
    let failing = gate("SELECT false");
    let out = cli(&["verify"], &failing, &db).await;
    assert_eq!(out.code(), Some(1), "a false gate: {out}");
    assert!(out.stdout.contains("FAILED"), "{out}");
    let two_rows = gate("SELECT true FROM generate_series(1, 2)");
    let out = cli(&["verify"], &two_rows, &db).await;
    assert_eq!(out.code(), Some(1), "a gate with two rows: {out}");
    assert!(out.stdout.contains("FAILED"), "{out}");

    stop_cleanly(&run).await;
}

/// What walshift objects of `spec` remain, one word each.
async fn leftovers(c: &tokio_postgres::Client, spec: &Spec) -> Vec<String> {
    let name = spec.object();
    let row = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1),
                    EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1),
                    EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = $1),
                    EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'walshift')",
            &[&name],
        )
        .await
        .unwrap();
    ["slot", "publication", "origin", "walshift schema"]
        .iter()
        .enumerate()
        .filter(|(i, _)| row.get::<_, bool>(*i))
        .map(|(_, w)| w.to_string())
        .collect()
}

/// Guards `cleanup`: it refuses (exit 2, one line) while a run is alive;
/// after the run stops it leaves no slot, publication, origin, state or
/// schema; `--force` with a run alive leaves nothing either, and the run then
/// stops by itself with a non-zero exit and a clear message (it must not
/// quietly recreate what was just dropped).
#[tokio::test]
async fn cleanup_refuses_while_alive_and_leaves_nothing() {
    let (db, c) = setup(500, 0).await;
    let spec = Spec::new("ops-cleanup", USERS_MIRROR);
    let run = Run::spawn(&spec, &db);
    wait_ready("ready", &spec, &db).await;
    let refused = cli(&["cleanup"], &spec, &db).await;
    assert_eq!(refused.code(), Some(2), "{refused}");
    assert_eq!(refused.stderr.trim().lines().count(), 1, "{refused}");
    assert!(refused.stderr.contains("alive"), "{refused}");
    assert!(
        run.still_running(),
        "a refused cleanup must not stop the run"
    );
    assert_eq!(leftovers(&c, &spec).await.len(), 4);

    stop_cleanly(&run).await;
    let out = cli(&["cleanup"], &spec, &db).await;
    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(leftovers(&c, &spec).await, Vec::<String>::new(), "{out}");

    // Again, forced, with the run alive.
    let run = Run::spawn(&spec, &db);
    wait_ready("ready again", &spec, &db).await;
    let out = cli(&["cleanup", "--force"], &spec, &db).await;
    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(leftovers(&c, &spec).await, Vec::<String>::new(), "{out}");
    let code = run.exit(Duration::from_secs(15)).await;
    let stderr = run.stderr();
    assert_eq!(
        leftovers(&c, &spec).await,
        Vec::<String>::new(),
        "the run recreated objects after the forced cleanup: {stderr}"
    );
    assert!(
        code.code().is_some_and(|c| c != 0),
        "the run should stop by itself with an error exit: {code:?}\n{stderr}"
    );
    let last = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.contains("slot") || last.contains("cleanup"),
        "the run's last line should say its slot/state was removed (by cleanup), not: {last:?}\n{stderr}"
    );
}

fn rows_done(s: &Value) -> i64 {
    s["backfill"]["mirrors"]
        .as_array()
        .map(|m| m.iter().filter_map(|m| m["rows_done"].as_i64()).sum())
        .unwrap_or(0)
}

/// Guards `ctl pause|resume`: a paused backfill shows in `status` and stops
/// advancing while live changes are still mirrored; resume lets it go on.
#[tokio::test]
async fn ctl_pause_stops_backfill_but_not_mirroring() {
    let (db, c) = setup(50_000, 0).await;
    let spec = capped_users_spec("ops-ctl", 5_000);
    let run = Run::spawn(&spec, &db);
    wait_backfill_under_way("the backfill under way", &spec, &db).await;
    let out = cli(&["ctl", "pause"], &spec, &db).await;
    assert_eq!(out.code(), Some(0), "{out}");
    let s = status_json(&spec, &db).await;
    assert_eq!(s["backfill"]["paused"], true, "{s}");
    assert_eq!(s["backfill"]["complete"], false, "{s}");
    let text = cli(&["status"], &spec, &db).await;
    assert!(text.stdout.contains("paused"), "{text}");

    // The chunk in flight may still land; then rows_done must hold still.
    let prev = std::cell::Cell::new(rows_done(&s));
    let last = poll_some(
        None,
        "rows_done to hold still",
        Duration::from_secs(10),
        || {
            let (spec, db, prev) = (&spec, &db, &prev);
            async move {
                tokio::time::sleep(Duration::from_millis(700)).await;
                let now = rows_done(&status_json(spec, db).await);
                (now == prev.replace(now)).then_some(now)
            }
        },
    )
    .await;
    // Live mirroring continues: a row far beyond the backfill's position.
    c.execute(
        "UPDATE users SET is_active = NOT is_active WHERE id = 49999",
        &[],
    )
    .await
    .unwrap();
    wait_user_mirrored("a live update mirrored while paused", &c, 49999).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = status_json(&spec, &db).await;
    assert_eq!(
        rows_done(&s),
        last,
        "the backfill advanced while paused: {s}"
    );
    assert_eq!(s["run"]["alive"], true, "{s}");

    let out = cli(&["ctl", "resume"], &spec, &db).await;
    assert_eq!(out.code(), Some(0), "{out}");
    status_until(
        "the backfill moving again",
        Duration::from_secs(10),
        &spec,
        &db,
        |s| s["backfill"]["paused"] == false && rows_done(s) > last,
    )
    .await;
    stop_cleanly(&run).await;
}

/// Guards `ctl set`: from another process, through the database, a running
/// run takes a new `max_rows_per_second` without a restart (its log says so
/// within a second or two: NOTIFY, not a slow poll), `status` shows the
/// override, the backfill speeds up to finish; `KEY=default` removes it; bad
/// keys and values are one-line errors (exit 2) that change nothing.
#[tokio::test]
async fn ctl_set_changes_a_running_backfill() {
    let (db, _c) = setup(30_000, 0).await;
    let spec = capped_users_spec("ops-set", 500);
    let run = Run::spawn(&spec, &db);
    wait_backfill_under_way("the capped backfill under way", &spec, &db).await;

    let bad = cli(&["ctl", "set", "max_rows_per_second=fast"], &spec, &db).await;
    assert_eq!(bad.code(), Some(2), "{bad}");
    assert_eq!(bad.stderr.lines().count(), 1, "{bad}");
    assert!(bad.stderr.contains("max_rows_per_second"), "{bad}");
    let bad = cli(&["ctl", "set", "speed=3"], &spec, &db).await;
    assert_eq!(bad.code(), Some(2), "{bad}");
    assert!(bad.stderr.contains("unknown setting"), "{bad}");
    let s = status_json(&spec, &db).await;
    assert_eq!(s["backfill"]["overrides"], serde_json::json!({}), "{s}");

    let asked = Instant::now();
    let out = cli(
        &[
            "ctl",
            "set",
            "max_rows_per_second=100000",
            "chunk_target_time=100ms",
        ],
        &spec,
        &db,
    )
    .await;
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("max_rows_per_second=100000"), "{out}");
    poll_some(
        None,
        "the run to log the change",
        Duration::from_secs(10),
        || {
            let log = run.stderr();
            async move {
                log.contains("backfill settings changed by the operator")
                    .then_some(())
            }
        },
    )
    .await;
    eprintln!("change taken in {:?}", asked.elapsed());
    assert!(
        run.stderr()
            .contains("max_rows_per_second Some(500) -> Some(100000)"),
        "{}",
        run.stderr()
    );
    let s = status_json(&spec, &db).await;
    assert_eq!(
        s["backfill"]["overrides"]["max_rows_per_second"], "100000",
        "{s}"
    );
    // At 500 rows/s the 30,000 rows would take a minute.
    status_until(
        "the backfill done at the new pace",
        Duration::from_secs(20),
        &spec,
        &db,
        |s| s["backfill"]["complete"] == true,
    )
    .await;
    assert!(asked.elapsed() < Duration::from_secs(30));

    let out = cli(&["ctl", "set", "max_rows_per_second=default"], &spec, &db).await;
    assert_eq!(out.code(), Some(0), "{out}");
    let out = cli(&["ctl", "show"], &spec, &db).await;
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("chunk_target_time=100ms"), "{out}");
    assert!(!out.stdout.contains("max_rows_per_second"), "{out}");
    stop_cleanly(&run).await;
}

/// Guards `[safety] max_retained_wal` with `drop-slot`: when one long
/// transaction makes the slot retain more WAL than allowed, the run stops
/// with exit 2 and a line naming `safety.max_retained_wal`, and drops its slot
/// so a forgotten sidecar cannot fill the disk.
#[tokio::test]
async fn safety_drops_the_slot_past_max_retained_wal() {
    let (db, c) = setup(60_000, 0).await;
    // History already mapped: the backfill writes no WAL of its own, so only
    // the long transaction below can push the slot over the limit.
    c.execute(
        "UPDATE users SET status = CASE WHEN is_active THEN 'active' ELSE 'disabled' END",
        &[],
    )
    .await
    .unwrap();
    c.batch_execute("CHECKPOINT").await.unwrap();
    let spec = Spec::new(
        "ops-safety",
        &format!(
            "{USERS_MIRROR}\n[safety]\nmax_retained_wal = \"4MB\"\non_max_retained_wal = \"drop-slot\"\n"
        ),
    );
    let run = Run::spawn(&spec, &db);
    wait_ready("ready", &spec, &db).await;
    let conninfo = db.conninfo();
    let big = tokio::spawn(async move {
        let c = connect(&conninfo).await;
        c.batch_execute(
            "BEGIN;
             UPDATE users SET pad = repeat('x', 100);
             SELECT pg_sleep(5);
             COMMIT;",
        )
        .await
    });
    let code = run.exit(Duration::from_secs(20)).await;
    let stderr = run.stderr();
    assert!(
        !big.is_finished(),
        "the run should stop while the long transaction is still open: {stderr}"
    );
    assert_eq!(code.code(), Some(2), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("safety.max_retained_wal")),
        "no line names safety.max_retained_wal: {stderr}"
    );
    big.await.unwrap().expect("the long transaction commits");
    let slots = one_i64(
        &c,
        &format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}'",
            spec.object()
        ),
    )
    .await;
    assert_eq!(slots, 0, "the slot remains: {stderr}");
}

/// Guards that `status` never shows stale figures as live: after the run is
/// killed mid-backfill it says no run is alive, gives the last lag with its
/// age, and calls the backfill stopped, not running (nor throttled, nor with
/// a rate or an ETA).
#[tokio::test]
async fn status_without_a_live_run_shows_no_stale_figures() {
    let (db, _c) = setup(2_000, 0).await;
    let spec = capped_users_spec("ops-stale", 200);
    let run = Run::spawn(&spec, &db);
    wait_backfill_under_way("the backfill under way", &spec, &db).await;
    status_until("a lag measured", Duration::from_secs(15), &spec, &db, |s| {
        s["lag"]["seconds"].as_f64().is_some()
    })
    .await;
    run.sigkill();
    run.exit(Duration::from_secs(10)).await;
    let s = status_until("the run dead", Duration::from_secs(15), &spec, &db, |s| {
        s["run"]["alive"] == false
    })
    .await;
    assert_eq!(s["phase"], "stopped", "{s}");
    assert_eq!(s["lag"]["live"], false, "{s}");
    assert_eq!(s["backfill"]["running"], false, "{s}");
    assert!(s["backfill"]["throttle"].is_null(), "{s}");
    assert!(
        s["backfill"]["mirrors"][0]["rows_per_second"].is_null(),
        "{s}"
    );
    assert!(s["backfill"]["mirrors"][0]["eta_seconds"].is_null(), "{s}");
    let out = cli(&["status"], &spec, &db).await;
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("run:       not running"), "{out}");
    assert!(
        out.stdout
            .contains("lag:       not measured: no run alive (the last run measured"),
        "{out}"
    );
    assert!(out.stdout.contains("backfill:  stopped at "), "{out}");
    assert!(!out.stdout.contains("backfill:  running"), "{out}");
}
