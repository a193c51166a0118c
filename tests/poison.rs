//! Rows a mapping cannot take (docs/design.md §6, "Poison keys"): a key whose
//! recompute fails on its data is isolated and held, with its error, while
//! every other key goes on, live and backfill; it shows in `status`,
//! `/readyz`, `verify` and `cutover`, and is mirrored once its row is fixed
//! (or on `walshift ctl SPEC retry`). Every result is judged with SQL of the
//! test's own, never with walshift's verify alone.
//!
//! Without isolation (`--unsafe-plant no-isolation`, the behaviour before
//! held keys) the first test's scenario fails: the run stops at the first
//! bad row and mirrors nothing after it
//! (`planted_no_isolation_stops_everything`).

mod support;

use std::time::Duration;

use serde_json::Value;
use support::cli::*;
use support::fixtures::orders_mirror;
use support::process::{Run, Spec};
use support::{Database, poll, poll_some, wait_backfill_done, wait_caught_up};

/// `reviews.rating_v2 = CAST(rating AS integer)`, one review rated `'4.5'`.
const REVIEWS: &str = "
CREATE TABLE reviews (id bigint PRIMARY KEY, rating text NOT NULL, body text, rating_v2 integer);
INSERT INTO reviews SELECT g, (1 + g % 5)::text, 'review ' || g FROM generate_series(1, 20000) g;
UPDATE reviews SET rating = '4.5' WHERE id = 7777;
";

const REVIEWS_MIRROR: &str = r#"
[[mirror]]
source = "public.reviews"
set = { rating_v2 = "CAST(rating AS integer)" }
"#;

/// Reviews whose `rating_v2` is not what the mapping gives, among those
/// the mapping can take (the oracle, independent of walshift).
async fn reviews_wrong(c: &tokio_postgres::Client) -> i64 {
    one_i64(
        c,
        "SELECT count(*) FROM reviews WHERE rating ~ '^-?[0-9]+$' AND rating_v2 IS DISTINCT FROM rating::int",
    )
    .await
}

/// Reviews the mapping cannot take, by id.
async fn reviews_bad(c: &tokio_postgres::Client) -> Vec<String> {
    c.query_one(
        "SELECT coalesce(array_agg(id::text ORDER BY id), '{}') FROM reviews WHERE rating !~ '^-?[0-9]+$'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// The held keys `status --json` shows for mirror 1 (first column only).
fn held_keys(s: &Value) -> Vec<String> {
    s["held"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|h| h["examples"].as_array().cloned().unwrap_or_default())
        .map(|e| e["key"][0].as_str().unwrap_or_default().to_string())
        .collect()
}

fn held_count(s: &Value) -> i64 {
    s["held"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| h["count"].as_i64().unwrap_or(0))
        .sum()
}

async fn status_until(
    what: &str,
    spec: &Spec,
    db: &Database,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    poll_some(None, what, Duration::from_secs(30), || async {
        let s = status_json(spec, db).await;
        cond(&s).then_some(s)
    })
    .await
}

/// The `'4.5'` rating: the backfill mirrors every other review, live writes
/// go on (the slot keeps confirming), the key shows as held everywhere an
/// operator looks, and fixing the row mirrors it without a restart.
#[tokio::test]
async fn a_rating_the_mapping_cannot_take_is_held_and_everything_else_goes_on() {
    let db = support::fresh_db().await;
    let c = db.connect().await;
    c.batch_execute(REVIEWS).await.unwrap();
    let spec = Spec::new("poison-rating", REVIEWS_MIRROR);
    let run = Run::spawn_with(&spec, &db, &["--listen", "127.0.0.1:0"]);
    let addr = run.listening().await;
    wait_backfill_done(&c, &spec.name).await;
    assert_eq!(reviews_wrong(&c).await, 0, "every other review is mirrored");
    assert_eq!(
        one_i64(
            &c,
            "SELECT count(*) FROM reviews WHERE id = 7777 AND rating_v2 IS NULL"
        )
        .await,
        1
    );

    // Live writes after it: updates and inserts, one more bad row among them.
    c.batch_execute(
        "UPDATE reviews SET rating = ((id % 4) + 1)::text WHERE id % 97 = 0;
         INSERT INTO reviews SELECT g, '3', 'new' FROM generate_series(20001, 20500) g;
         INSERT INTO reviews VALUES (20501, 'three', 'bad', NULL);",
    )
    .await
    .unwrap();
    let after_bad: String = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    wait_caught_up(&run, &c).await;
    assert_eq!(
        reviews_wrong(&c).await,
        0,
        "live writes go on past the bad rows"
    );
    assert_eq!(reviews_bad(&c).await, ["7777", "20501"]);
    // Held keys do not pin WAL: the slot confirms past them.
    poll(None, "the slot to confirm past the bad insert", Duration::from_secs(20), || async {
        c.query_one(
            "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $2",
            &[&after_bad, &spec.object()],
        )
        .await
        .unwrap()
        .get::<_, bool>(0)
    })
    .await;

    // status: the keys, their errors; not ready.
    let s = status_until("both keys held", &spec, &db, |s| held_count(s) == 2).await;
    assert_eq!(held_keys(&s), ["7777", "20501"], "{s}");
    let first = &s["held"][0]["examples"][0];
    assert_eq!(first["sqlstate"], "22P02", "{s}");
    assert!(first["error"].as_str().unwrap().contains("\"4.5\""), "{s}");
    assert_eq!(s["ready"], false, "{s}");
    let text = cli(&["status"], &spec, &db).await;
    assert!(
        text.stdout.contains("held:      mirror 1: 2 key(s)"),
        "{text}"
    );
    assert!(
        text.stdout
            .contains("(7777): invalid input syntax for type integer: \"4.5\""),
        "{text}"
    );
    // /readyz: not ready, saying why.
    let ready = support::http::get(&addr, "/readyz").await.unwrap();
    assert_eq!(ready.code, 503, "{ready}");
    assert!(ready.body.contains("2 key(s) held"), "{ready}");
    // verify names them and fails.
    let v = cli(&["verify"], &spec, &db).await;
    assert_eq!(v.code(), Some(1), "{v}");
    assert!(
        v.stdout.contains("held key (7777): invalid input syntax"),
        "{v}"
    );
    assert!(v.stdout.contains("held key (20501)"), "{v}");
    assert!(
        v.stdout.contains(
            "key (7777) (held by the run): invalid input syntax for type integer: \"4.5\""
        ),
        "verify finds the row itself, too: {v}"
    );
    // cutover refuses.
    let cut = cli(&["cutover", "--dry-run"], &spec, &db).await;
    assert_ne!(cut.code(), Some(0), "{cut}");
    assert!(cut.stderr.contains("key(s) held"), "{cut}");
    // The log named the keys.
    assert!(run.stderr().contains("keys held"), "{}", run.stderr());
    assert!(run.stderr().contains("(7777)"), "{}", run.stderr());

    // Fixing the rows mirrors them, no restart.
    c.batch_execute(
        "UPDATE reviews SET rating = '4' WHERE id = 7777; DELETE FROM reviews WHERE id = 20501",
    )
    .await
    .unwrap();
    wait_caught_up(&run, &c).await;
    assert_eq!(
        one_i64(&c, "SELECT rating_v2::int8 FROM reviews WHERE id = 7777").await,
        4
    );
    assert_eq!(reviews_wrong(&c).await, 0);
    let s = status_until("nothing held", &spec, &db, |s| {
        held_count(s) == 0 && s["ready"] == true
    })
    .await;
    assert!(s["held"].as_array().unwrap().is_empty(), "{s}");
    let v = cli(&["verify"], &spec, &db).await;
    assert_eq!(v.code(), Some(0), "{v}");
    let ready = support::http::get(&addr, "/readyz").await.unwrap();
    assert_eq!(ready.code, 200, "{ready}");
    assert!(run.still_running());
    assert!(
        run.stderr().contains("held keys mirrored"),
        "{}",
        run.stderr()
    );
}

/// The same scenario without isolation: the run stops at the first bad
/// row, and the test's oracle sees the rows it never mirrored.
#[tokio::test]
async fn planted_no_isolation_stops_everything() {
    let db = support::fresh_db().await;
    let c = db.connect().await;
    c.batch_execute(REVIEWS).await.unwrap();
    let spec = Spec::new("poison-planted", REVIEWS_MIRROR);
    let run = Run::spawn_with(&spec, &db, &["--unsafe-plant", "no-isolation"]);
    let status = run.exit(Duration::from_secs(60)).await;
    assert!(!status.success(), "{}", run.stderr());
    assert!(
        reviews_wrong(&c).await > 0,
        "without isolation the reviews after the bad one stay unmirrored"
    );
}

/// One poison key inside a live transaction of thousands: only it is held,
/// every other key of the batch is mirrored.
#[tokio::test]
async fn one_poison_key_in_a_live_batch_of_thousands_is_held_alone() {
    let db = support::fresh_db().await;
    let c = db.connect().await;
    c.batch_execute(
        "CREATE TABLE reviews (id bigint PRIMARY KEY, rating text NOT NULL, body text, rating_v2 integer);
         INSERT INTO reviews SELECT g, '2', 'old' FROM generate_series(1, 1000) g;",
    )
    .await
    .unwrap();
    let spec = Spec::new("poison-batch", REVIEWS_MIRROR);
    let run = Run::spawn(&spec, &db);
    wait_backfill_done(&c, &spec.name).await;
    c.batch_execute(
        "BEGIN;
         UPDATE reviews SET rating = '5';
         INSERT INTO reviews SELECT g, (g % 5)::text, 'new' FROM generate_series(1001, 6000) g;
         UPDATE reviews SET rating = 'n/a' WHERE id = 4321;
         COMMIT;",
    )
    .await
    .unwrap();
    wait_caught_up(&run, &c).await;
    assert_eq!(reviews_wrong(&c).await, 0);
    assert_eq!(
        one_i64(&c, "SELECT count(*) FROM reviews WHERE rating_v2 IS NULL").await,
        1
    );
    let s = status_until("one key held", &spec, &db, |s| held_count(s) == 1).await;
    assert_eq!(held_keys(&s), ["4321"], "{s}");
}

/// A CHECK of the new column refuses one row: held (23514) until the
/// operator changes the constraint and asks `walshift ctl SPEC retry`.
#[tokio::test]
async fn a_check_failure_is_held_until_ctl_retry() {
    let db = support::fresh_db().await;
    let c = db.connect().await;
    c.batch_execute(
        "CREATE TABLE scores (id bigint PRIMARY KEY, grade text NOT NULL,
                              grade_v2 text CONSTRAINT grade_known CHECK (grade_v2 IN ('A', 'B', 'C')));
         INSERT INTO scores SELECT g, (ARRAY['a', 'b', 'c'])[1 + g % 3] FROM generate_series(1, 3000) g;
         UPDATE scores SET grade = 'x' WHERE id = 1234;",
    )
    .await
    .unwrap();
    let spec = Spec::new(
        "poison-check",
        r#"
[[mirror]]
source = "public.scores"
set = { grade_v2 = "upper(grade)" }
"#,
    );
    let run = Run::spawn(&spec, &db);
    wait_backfill_done(&c, &spec.name).await;
    let wrong =
        "SELECT count(*) FROM scores WHERE id <> 1234 AND grade_v2 IS DISTINCT FROM upper(grade)";
    assert_eq!(one_i64(&c, wrong).await, 0);
    let s = status_until("the key held", &spec, &db, |s| held_count(s) == 1).await;
    assert_eq!(held_keys(&s), ["1234"], "{s}");
    assert_eq!(s["held"][0]["examples"][0]["sqlstate"], "23514", "{s}");
    assert!(
        s["held"][0]["examples"][0]["error"]
            .as_str()
            .unwrap()
            .contains("grade_known"),
        "{s}"
    );
    // The row does not change; the constraint does. Nothing happens by
    // itself; `ctl retry` mirrors it.
    c.batch_execute(
        "ALTER TABLE scores DROP CONSTRAINT grade_known,
           ADD CONSTRAINT grade_known CHECK (grade_v2 IN ('A', 'B', 'C', 'X'))",
    )
    .await
    .unwrap();
    let out = cli(&["ctl", "retry"], &spec, &db).await;
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("1 held key(s)"), "{out}");
    poll(
        None,
        "the held key mirrored",
        Duration::from_secs(20),
        || async {
            one_i64(
                &c,
                "SELECT count(*) FROM scores WHERE id = 1234 AND grade_v2 = 'X'",
            )
            .await
                == 1
        },
    )
    .await;
    status_until("nothing held", &spec, &db, |s| held_count(s) == 0).await;
    assert_eq!(
        one_i64(
            &c,
            "SELECT count(*) FROM scores WHERE grade_v2 IS DISTINCT FROM upper(grade)"
        )
        .await,
        0
    );
    assert!(run.still_running());
    assert!(
        run.stderr().contains("retried the held keys"),
        "{}",
        run.stderr()
    );
}

/// Rows mode: a unique index of the target refuses an order whose line
/// items repeat another order's SKU. That order is held (23505), the others
/// are mirrored, live too; once the order changes to a free SKU it is
/// mirrored and forgotten.
#[tokio::test]
async fn a_unique_collision_in_a_rows_target_is_held() {
    let db = support::fresh_db().await;
    let c = db.connect().await;
    c.batch_execute(
        "CREATE TABLE orders (id bigint PRIMARY KEY, items jsonb NOT NULL);
         CREATE TABLE order_items (order_id bigint NOT NULL, line_no bigint NOT NULL, sku text, qty int,
                                   PRIMARY KEY (order_id, line_no));
         CREATE UNIQUE INDEX order_items_sku ON order_items (sku);
         INSERT INTO orders SELECT g, jsonb_build_array(jsonb_build_object('sku', 's' || g, 'qty', 1),
                                                        jsonb_build_object('sku', 't' || g, 'qty', 2))
         FROM generate_series(1, 4000) g;
         UPDATE orders SET items = jsonb_build_array(jsonb_build_object('sku', 'u3000', 'qty', 1),
                                                     jsonb_build_object('sku', 's10', 'qty', 1))
         WHERE id = 3000;",
    )
    .await
    .unwrap();
    let spec = Spec::new("poison-unique", &orders_mirror());
    let run = Run::spawn(&spec, &db);
    wait_backfill_done(&c, &spec.name).await;
    // The oracle: every order but the held ones has exactly its line items.
    let wrong = |held: &'static str| {
        format!(
            "SELECT count(*) FROM (
               (SELECT o.id, i.n, i.v->>'sku', (i.v->>'qty')::int FROM orders o,
                       jsonb_array_elements(o.items) WITH ORDINALITY AS i(v, n) WHERE o.id NOT IN ({held})
                EXCEPT SELECT order_id, line_no, sku, qty FROM order_items WHERE order_id NOT IN ({held}))
               UNION ALL
               (SELECT order_id, line_no, sku, qty FROM order_items WHERE order_id NOT IN ({held})
                EXCEPT SELECT o.id, i.n, i.v->>'sku', (i.v->>'qty')::int FROM orders o,
                       jsonb_array_elements(o.items) WITH ORDINALITY AS i(v, n) WHERE o.id NOT IN ({held}))) d"
        )
    };
    assert_eq!(one_i64(&c, &wrong("3000")).await, 0);
    assert_eq!(
        one_i64(&c, "SELECT count(*) FROM order_items WHERE order_id = 3000").await,
        0
    );
    let s = status_until("order 3000 held", &spec, &db, |s| held_count(s) == 1).await;
    assert_eq!(held_keys(&s), ["3000"], "{s}");
    assert_eq!(s["held"][0]["examples"][0]["sqlstate"], "23505", "{s}");

    // Live: another colliding order, among good ones.
    c.batch_execute(
        "INSERT INTO orders SELECT g, jsonb_build_array(jsonb_build_object('sku', 's' || g, 'qty', 1)) FROM generate_series(4001, 4100) g;
         INSERT INTO orders VALUES (4101, '[{\"sku\": \"t20\", \"qty\": 5}]');",
    )
    .await
    .unwrap();
    wait_caught_up(&run, &c).await;
    assert_eq!(one_i64(&c, &wrong("3000, 4101")).await, 0);
    let s = status_until("two orders held", &spec, &db, |s| held_count(s) == 2).await;
    assert_eq!(held_keys(&s), ["3000", "4101"], "{s}");

    // The new version of the row takes a free SKU: mirrored and forgotten.
    c.batch_execute("UPDATE orders SET items = '[{\"sku\": \"free-3000\", \"qty\": 1}]' WHERE id = 3000; DELETE FROM orders WHERE id = 4101")
        .await
        .unwrap();
    wait_caught_up(&run, &c).await;
    assert_eq!(one_i64(&c, &wrong("0")).await, 0);
    status_until("nothing held", &spec, &db, |s| held_count(s) == 0).await;
    assert!(run.still_running());
}

/// A two-way mirror whose way back cannot take what the new version wrote
/// (`is_active` is NOT NULL; `'paused'` has no old form): that key is held
/// in the way back, every other write goes both ways, and the new
/// version's next write of the key settles it.
#[tokio::test]
async fn a_two_way_key_whose_way_back_fails_is_held() {
    let db = support::fresh_db().await;
    let c = db.connect().await;
    c.batch_execute(
        "CREATE TABLE users (id bigint PRIMARY KEY, is_active boolean NOT NULL, status text);
         ALTER TABLE users REPLICA IDENTITY FULL;
         INSERT INTO users SELECT g, g % 2 = 0, NULL FROM generate_series(1, 2000) g;",
    )
    .await
    .unwrap();
    let spec = Spec::new(
        "poison-two-way",
        r#"
[[mirror]]
source = "public.users"
set = { status = "CASE WHEN is_active THEN 'active' ELSE 'disabled' END" }
reverse = { is_active = "CASE status WHEN 'active' THEN true WHEN 'disabled' THEN false END" }
"#,
    );
    let run = Run::spawn(&spec, &db);
    wait_backfill_done(&c, &spec.name).await;
    // The new version writes status: 'paused' (no old form) and others.
    c.batch_execute(
        "UPDATE users SET status = 'paused' WHERE id = 42;
         UPDATE users SET status = 'active' WHERE id BETWEEN 100 AND 199;
         UPDATE users SET is_active = false WHERE id BETWEEN 200 AND 299;",
    )
    .await
    .unwrap();
    wait_caught_up(&run, &c).await;
    let wrong = "SELECT count(*) FROM users WHERE id <> 42 AND
                   status IS DISTINCT FROM CASE WHEN is_active THEN 'active' ELSE 'disabled' END";
    assert_eq!(one_i64(&c, wrong).await, 0);
    assert_eq!(
        one_i64(
            &c,
            "SELECT count(*) FROM users WHERE id BETWEEN 100 AND 199 AND is_active"
        )
        .await,
        100,
        "the way back went on for the other keys"
    );
    let s = status_until("key 42 held", &spec, &db, |s| held_count(s) == 1).await;
    assert_eq!(held_keys(&s), ["42"], "{s}");
    assert_eq!(s["held"][0]["examples"][0]["dir"], "r", "{s}");
    assert_eq!(s["held"][0]["examples"][0]["sqlstate"], "23502", "{s}");
    // The new version writes the key again.
    c.batch_execute("UPDATE users SET status = 'disabled' WHERE id = 42")
        .await
        .unwrap();
    wait_caught_up(&run, &c).await;
    assert_eq!(
        one_i64(
            &c,
            "SELECT count(*) FROM users WHERE id = 42 AND NOT is_active"
        )
        .await,
        1
    );
    status_until("nothing held", &spec, &db, |s| held_count(s) == 0).await;
    assert!(run.still_running());
}
