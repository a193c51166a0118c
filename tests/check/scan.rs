//! `walshift check`'s data scan through the binary: rows the mapping or the
//! target's constraints refuse are found, counted by kind and named by key
//! (exit 1, never "check passed"); a small budget says how much it covered
//! and samples the rest; `--scan off` skips it; and nothing is left behind
//! (judged with SQL of the test's own).

use crate::support::cli::{Out, cli};
use crate::support::process::Spec;
use crate::support::{Database, fresh_db};
use crate::{Trace, trace};

/// `reviews`: 20,000 rows whose `rating` is an integer as text, but for
/// the rows `bad` lists; `rating_v2` is the new column.
async fn reviews(db: &Database, bad: &[(i64, &str)]) -> tokio_postgres::Client {
    let admin = db.connect().await;
    admin
        .batch_execute(
            "CREATE TABLE reviews (id bigint PRIMARY KEY, rating text, body text, rating_v2 integer);
             INSERT INTO reviews (id, rating, body)
               SELECT i, (i % 5 + 1)::text, repeat('x', 40) FROM generate_series(1, 20000) i;",
        )
        .await
        .unwrap();
    for (id, rating) in bad {
        admin
            .execute(
                "UPDATE reviews SET rating = $2 WHERE id = $1",
                &[id, rating],
            )
            .await
            .unwrap();
    }
    admin.batch_execute("ANALYZE reviews").await.unwrap();
    admin
}

fn reviews_spec(name: &str, expr: &str) -> Spec {
    Spec::new(
        name,
        &format!("[[mirror]]\nsource = \"public.reviews\"\nset = {{ rating_v2 = \"{expr}\" }}\n"),
    )
}

/// What check must leave as it found: no walshift object, and the table's
/// content (every column) the same.
async fn footprint(admin: &tokio_postgres::Client, table: &str) -> (Trace, String) {
    let content: String = admin
        .query_one(
            &format!(
                "SELECT coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') FROM {table} AS t"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    (trace(admin).await, content)
}

fn assert_failed(out: &Out) {
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(!out.stdout.contains("check passed"), "{out}");
    assert!(out.stderr.contains("nothing was created"), "{out}");
}

#[tokio::test]
async fn the_one_rating_of_4_5_fails_check_and_is_named() {
    let db = fresh_db().await;
    let admin = reviews(&db, &[(12_345, "4.5")]).await;
    let before = footprint(&admin, "reviews").await;
    let spec = reviews_spec("reviews-45", "CAST(rating AS integer)");
    let out = cli(&["check"], &spec, &db).await;
    println!("{out}");
    assert_failed(&out);
    assert!(
        out.stdout.contains(
            "  1 row(s): invalid input syntax for type integer: \"4.5\" (SQLSTATE 22P02); e.g. key 12345\n"
        ),
        "{out}"
    );
    assert!(
        out.stdout.contains(
            "scan, mirror #1 (\"public\".\"reviews\" set rating_v2): all 20000 row(s) in"
        ),
        "{out}"
    );
    assert!(
        out.stdout.contains("FAILED: 1 failing row(s) in 1 kind(s)"),
        "{out}"
    );
    assert!(!out.stdout.contains("could not time"), "{out}");
    // Nothing created, nothing changed: no slot, publication, origin or
    // state schema, and every row as it was.
    assert_eq!(footprint(&admin, "reviews").await, before);
    let written: i64 = admin
        .query_one(
            "SELECT count(*) FROM reviews WHERE rating_v2 IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(written, 0);
    let before_trace = &before.0;
    assert_eq!(before_trace.slots, 0);
    assert!(!before_trace.walshift_schema);
}

#[tokio::test]
async fn several_kinds_of_failure_in_one_mirror_are_counted_apart() {
    let db = fresh_db().await;
    let _admin = reviews(
        &db,
        &[
            (5, "4.5"),
            (9_000, "abc"),
            (14_000, "zero"),
            (19_999, "zero"),
        ],
    )
    .await;
    let spec = reviews_spec(
        "reviews-kinds",
        "CASE WHEN rating = 'zero' THEN 1 / (length(rating) - 4) ELSE CAST(rating AS integer) END",
    );
    let out = cli(&["check", "--scan", "full"], &spec, &db).await;
    assert_failed(&out);
    for line in [
        "FAILED: 4 failing row(s) in 3 kind(s)",
        "  1 row(s): invalid input syntax for type integer: \"4.5\" (SQLSTATE 22P02); e.g. key 5\n",
        "  1 row(s): invalid input syntax for type integer: \"abc\" (SQLSTATE 22P02); e.g. key 9000\n",
        "  2 row(s): division by zero (SQLSTATE 22012); e.g. key 14000; 19999\n",
    ] {
        assert!(out.stdout.contains(line), "{line:?} missing:\n{out}");
    }
}

#[tokio::test]
async fn not_null_check_and_unique_of_the_new_columns_are_found() {
    let db = fresh_db().await;
    let admin = db.connect().await;
    admin
        .batch_execute(
            "CREATE TABLE accounts (id bigint PRIMARY KEY, name text, score int, slug text UNIQUE,
                 score_v2 int NOT NULL DEFAULT 0 CONSTRAINT score_v2_positive CHECK (score_v2 >= 0));
             INSERT INTO accounts (id, name, score)
               SELECT i, 'user' || i, i FROM generate_series(1, 3000) i;
             UPDATE accounts SET score = NULL WHERE id = 7;
             UPDATE accounts SET score = -5 WHERE id IN (8, 2500);
             -- the same slug in different chunks, and twice in one chunk
             UPDATE accounts SET name = 'Dup' WHERE id = 10;
             UPDATE accounts SET name = 'DUP' WHERE id = 2900;
             UPDATE accounts SET name = 'twin' WHERE id IN (20, 21);
             ANALYZE accounts;",
        )
        .await
        .unwrap();
    let before = footprint(&admin, "accounts").await;
    let spec = Spec::new(
        "accounts",
        "[[mirror]]\nsource = \"public.accounts\"\nset = { slug = \"lower(name)\", score_v2 = \"score\" }\n",
    );
    let out = cli(&["check"], &spec, &db).await;
    assert_failed(&out);
    for part in [
        "1 row(s): null value in column \"score_v2\" of relation \"accounts\" violates not-null constraint (SQLSTATE 23502); e.g. key 7\n",
        "2 row(s): new row for relation \"accounts\" violates check constraint \"score_v2_positive\" (SQLSTATE 23514); e.g. key 8; 2500\n",
        "4 row(s): the mapping computes the same value of unique index \"accounts_slug_key\" (\"slug\") for several keys (SQLSTATE 23505)",
        "10 and 2900 all compute (dup)",
        "20 and 21 all compute (twin)",
    ] {
        assert!(out.stdout.contains(part), "{part:?} missing:\n{out}");
    }
    assert_eq!(footprint(&admin, "accounts").await, before);
}

/// `orders` (2,000 rows of one item each, `sku` s<id>, qty 1, then `updates`
/// run) and the empty `order_items` with a unique `sku`, a NOT NULL and a
/// CHECK (`qty_positive`), then `extra` (rows the target already holds).
async fn orders(db: &Database, updates: &str, extra: &str) -> tokio_postgres::Client {
    let admin = db.connect().await;
    admin
        .batch_execute(&format!(
            "CREATE TABLE orders (id bigint PRIMARY KEY, items jsonb NOT NULL);
             INSERT INTO orders SELECT i, jsonb_build_array(jsonb_build_object('sku', 's' || i, 'qty', 1))
               FROM generate_series(1, 2000) i;
             {updates}
             CREATE TABLE order_items (order_id bigint NOT NULL, line_no bigint NOT NULL,
                 sku text NOT NULL UNIQUE, qty int NOT NULL CONSTRAINT qty_positive CHECK (qty > 0),
                 PRIMARY KEY (order_id, line_no));
             {extra}
             ANALYZE orders;"
        ))
        .await
        .unwrap();
    admin
}

/// The orders -> order_items mirror, with `tail` (e.g. a `[backfill]` table) after it.
fn items_spec(name: &str, tail: &str) -> Spec {
    Spec::new(
        name,
        &format!(
            "{}{tail}",
            crate::support::fixtures::orders_mirror().trim_start()
        ),
    )
}

#[tokio::test]
async fn rows_mode_constraints_duplicates_and_collisions_are_found() {
    let db = fresh_db().await;
    let admin = orders(
        &db,
        "UPDATE orders SET items = '[{\"sku\": \"a\", \"qty\": 1}]' WHERE id IN (3, 1800);
         UPDATE orders SET items = '[{\"sku\": \"q\", \"qty\": 0}]' WHERE id = 4;
         UPDATE orders SET items = '[{\"sku\": \"taken\", \"qty\": 1}]' WHERE id = 5;",
        // a row no source key owns, holding a sku order 5 computes
        "INSERT INTO order_items VALUES (99999, 1, 'taken', 1);",
    )
    .await;
    let before = footprint(&admin, "order_items").await;
    let spec = items_spec("items", "");
    let out = cli(&["check"], &spec, &db).await;
    assert_failed(&out);
    for part in [
        "1 row(s): new row for relation \"order_items\" violates check constraint \"qty_positive\" (SQLSTATE 23514); e.g. key 4\n",
        // The existing row is met by the INSERT itself.
        "1 row(s): duplicate key value violates unique constraint \"order_items_sku_key\" (SQLSTATE 23505); e.g. key 5\n",
        "2 row(s): the mapping computes the same value of unique index \"order_items_sku_key\" (\"sku\") for several keys (SQLSTATE 23505); e.g. key 3 and 1800 all compute (a)\n",
    ] {
        assert!(out.stdout.contains(part), "{part:?} missing:\n{out}");
    }
    assert_eq!(footprint(&admin, "order_items").await, before);
}

/// Rows the read-only evaluation alone must find: every failing order sits
/// in a chunk the scan does not time (100 chunks of 20; the first five and
/// those at powers of two are timed), so no write meets it.
#[tokio::test]
async fn rows_mode_refusals_in_chunks_that_are_only_evaluated() {
    let db = fresh_db().await;
    orders(
        &db,
        "UPDATE orders SET items = '[{\"sku\": \"d\", \"qty\": 1}, {\"sku\": \"d\", \"qty\": 2}]' WHERE id = 1500;
         UPDATE orders SET items = '[{\"sku\": \"q\", \"qty\": 0}]' WHERE id = 1700;
         UPDATE orders SET items = '[{\"sku\": \"x\", \"qty\": \"x\"}]' WHERE id = 1900;
         UPDATE orders SET items = '[{\"qty\": 3}]' WHERE id = 1950;",
        "",
    )
    .await;
    let spec = items_spec(
        "items-evaluated",
        "\n[backfill]\nmin_chunk_rows = 20\nmax_chunk_rows = 20\n",
    );
    let out = cli(&["check", "--scan", "full"], &spec, &db).await;
    assert_failed(&out);
    for part in [
        "FAILED: 4 failing row(s) in 4 kind(s)",
        "1 row(s): duplicate key value violates unique constraint \"order_items_sku_key\" (SQLSTATE 23505); e.g. key 1500\n",
        "1 row(s): new row for relation \"order_items\" violates check constraint \"qty_positive\" (SQLSTATE 23514); e.g. key 1700\n",
        "1 row(s): invalid input syntax for type integer: \"x\" (SQLSTATE 22P02); e.g. key 1900\n",
        "1 row(s): null value in column \"sku\" of relation \"order_items\" violates not-null constraint (SQLSTATE 23502); e.g. key 1950\n",
    ] {
        assert!(out.stdout.contains(part), "{part:?} missing:\n{out}");
    }
}

#[tokio::test]
async fn a_conflict_key_taking_over_another_owners_row_is_a_collision() {
    // The sku is the target's primary key, so the chunk statement's ON
    // CONFLICT would move the row to the new owner without an error: only
    // the scan's own question finds it.
    let db = fresh_db().await;
    let admin = db.connect().await;
    admin
        .batch_execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, sku text NOT NULL);
             INSERT INTO orders SELECT i, 's' || i FROM generate_series(1, 100) i;
             CREATE TABLE order_skus (sku text PRIMARY KEY, order_id bigint NOT NULL);
             CREATE INDEX ON order_skus (order_id);
             INSERT INTO order_skus VALUES ('s42', 7777);",
        )
        .await
        .unwrap();
    let spec = Spec::new(
        "skus",
        "[[mirror]]\nsource = \"public.orders\"\ntarget = \"public.order_skus\"\nowner = [\"order_id\"]\n\
         select = \"SELECT src.sku, src.id AS order_id\"\n",
    );
    let out = cli(&["check"], &spec, &db).await;
    assert_failed(&out);
    assert!(
        out.stdout.contains(
            "1 row(s): computed rows collide on unique index \"order_skus_pkey\" (\"sku\") with existing rows of \"public\".\"order_skus\" that another key owns (SQLSTATE 23505); e.g. key 42: s42, held by the row of 7777\n"
        ),
        "{out}"
    );
}

#[tokio::test]
async fn a_small_budget_says_what_it_covered_and_samples_the_rest() {
    let db = fresh_db().await;
    let admin = reviews(&db, &[]).await;
    let before = footprint(&admin, "reviews").await;
    let spec = reviews_spec("reviews-budget", "CAST(rating AS integer)");
    let out = cli(&["check", "--scan", "1ms"], &spec, &db).await;
    assert_eq!(out.code(), Some(0), "{out}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("scan, mirror #1"))
        .unwrap_or_else(|| panic!("no scan line:\n{out}"));
    // One chunk (the budget is checked between chunks), its share of the
    // table, and a sample of the rest.
    let covered: u64 = line
        .split("set rating_v2): ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no coverage in {line}"));
    assert!(covered > 0 && covered < 20_000, "{line}");
    assert!(
        line.contains(&format!(
            "{covered} of ~20000 row(s) ({:.1}%)",
            covered as f64 / 200.0
        )),
        "{line}"
    );
    assert!(line.contains("then the budget (1ms) ran out"), "{line}");
    let sampled: u64 = line
        .split("a spread sample of ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no sample in {line}"));
    assert!(sampled >= 250, "{line}");
    assert!(line.ends_with(": no failures"), "{line}");
    assert!(out.stdout.contains("check passed"), "{out}");
    assert_eq!(footprint(&admin, "reviews").await, before);
}

/// The scan reads: the chunks it only evaluates take no row lock and write
/// nothing, so their rows keep `xmax = 0`; only the few chunks timed for the
/// ETA run the write (rolled back), which leaves its xid in their rows'
/// `xmax`. Planted: with every chunk written and rolled back (the scan
/// before it was read-only), all 20,000 rows carried an xmax.
#[tokio::test]
async fn the_scan_locks_and_writes_only_the_timed_chunks() {
    let db = fresh_db().await;
    let admin = reviews(&db, &[]).await;
    let before = footprint(&admin, "reviews").await;
    let spec = Spec::new(
        "reviews-read-only",
        "[[mirror]]\nsource = \"public.reviews\"\nset = { rating_v2 = \"CAST(rating AS integer)\" }\n\n\
         [backfill]\nmin_chunk_rows = 200\nmax_chunk_rows = 200\n",
    );
    let wal = "SELECT pg_current_wal_lsn()::text";
    let wal_before: String = admin.query_one(wal, &[]).await.unwrap().get(0);
    let out = cli(&["check", "--scan", "full"], &spec, &db).await;
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("all 20000 row(s)"), "{out}");
    let touched = crate::support::cli::one_i64(
        &admin,
        "SELECT count(*) FROM reviews WHERE xmax <> '0'::xid",
    )
    .await;
    let wal_bytes = crate::support::cli::one_i64(
        &admin,
        &format!("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{wal_before}')::bigint"),
    )
    .await;
    eprintln!("rows locked by the scan: {touched} of 20000; WAL written: {wal_bytes} bytes");
    // 100 chunks of 200: the first five and those at 8, 16, 32 and 64 are timed.
    assert!(
        touched > 0 && touched <= 9 * 200,
        "{touched} rows carry an xmax: the scan wrote more than its timed chunks"
    );
    assert_eq!(footprint(&admin, "reviews").await, before);
}

#[tokio::test]
async fn a_failing_row_beyond_the_budget_is_found_by_the_sample() {
    // Every row of the rest fails: whichever pages the sample picks, it
    // meets them, though the ordered pass never got there.
    let db = fresh_db().await;
    let admin = reviews(&db, &[]).await;
    admin
        .batch_execute("UPDATE reviews SET rating = 'n/a' WHERE id > 5000")
        .await
        .unwrap();
    let spec = reviews_spec("reviews-sample", "CAST(rating AS integer)");
    let out = cli(&["check", "--scan", "1ms"], &spec, &db).await;
    assert_failed(&out);
    assert!(
        out.stdout
            .contains("invalid input syntax for type integer: \"n/a\" (SQLSTATE 22P02)"),
        "{out}"
    );
}

#[tokio::test]
async fn scan_off_skips_the_scan() {
    let db = fresh_db().await;
    let admin = db.connect().await;
    admin
        .batch_execute(
            "CREATE TABLE reviews (id bigint PRIMARY KEY, rating text, rating_v2 integer);
             INSERT INTO reviews (id, rating) SELECT i, '3' FROM generate_series(1, 100000) i;
             UPDATE reviews SET rating = '4.5' WHERE id = 99999;
             ANALYZE reviews;",
        )
        .await
        .unwrap();
    let spec = reviews_spec("reviews-off", "CAST(rating AS integer)");
    let out = cli(&["check", "--scan", "off"], &spec, &db).await;
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("not scanned (--scan off)"), "{out}");
    assert!(
        out.stdout.contains("backfill estimate, mirror 1: ~"),
        "{out}"
    );
    assert!(out.stdout.contains("check passed"), "{out}");
    // ... and the default scan finds the row.
    let out = cli(&["check"], &spec, &db).await;
    assert_failed(&out);
    assert!(out.stdout.contains("e.g. key 99999"), "{out}");
}

/// `(rows, rows/s)` of each mirror's `backfill estimate` line.
fn estimates(stdout: &str) -> Vec<(f64, f64)> {
    stdout
        .lines()
        .filter(|l| l.starts_with("backfill estimate, mirror "))
        .filter_map(|l| {
            let rows = l.split(" for ~").nth(1)?.split(' ').next()?.parse().ok()?;
            let rate = l.split(" rows (").nth(1)?.split(' ').next()?.parse().ok()?;
            Some((rows, rate))
        })
        .collect()
}

/// The ETA against a real backfill of the same rows (one-way, no load):
/// within half either way. The estimate times the scan's chunks; the run
/// pays a checkpoint and a commit per chunk, and a walsender decodes its
/// writes on the same cores. A measurement, and on a shared 2-core machine
/// not a robust one (ratios 0.44 to 1.19 were seen), hence ignored; run it
/// with `cargo nextest run --test check --run-ignored only the_estimate
/// --no-capture` to print the ratios.
#[tokio::test]
#[ignore = "a measurement: prints estimate / actual per mirror"]
async fn the_estimate_is_within_half_of_the_real_backfill() {
    let db = fresh_db().await;
    let admin = db.connect().await;
    admin
        .batch_execute(
            "CREATE TABLE users (id bigint PRIMARY KEY, is_active boolean NOT NULL, pad text, status text);
             INSERT INTO users SELECT i, i % 3 > 0, repeat('p', 60) FROM generate_series(1, 150000) i;
             CREATE TABLE orders (id bigint PRIMARY KEY, items jsonb NOT NULL);
             INSERT INTO orders SELECT i, jsonb_build_array(
                 jsonb_build_object('sku', 'a' || i, 'qty', 1), jsonb_build_object('sku', 'b', 'qty', 2),
                 jsonb_build_object('sku', 'c', 'qty', 3)) FROM generate_series(1, 40000) i;
             CREATE TABLE order_items (order_id bigint NOT NULL, line_no bigint NOT NULL, sku text, qty int,
                                       PRIMARY KEY (order_id, line_no));
             ANALYZE users; ANALYZE orders;",
        )
        .await
        .unwrap();
    let spec = Spec::new(
        "eta",
        &format!(
            "{}{}",
            crate::support::fixtures::USERS_MIRROR,
            crate::support::fixtures::orders_mirror()
        ),
    );
    let out = cli(&["check", "--scan", "full"], &spec, &db).await;
    assert_eq!(out.code(), Some(0), "{out}");
    let estimated = estimates(&out.stdout);
    assert_eq!(estimated.len(), 2, "{out}");
    let run = crate::support::process::Run::spawn(&spec, &db);
    crate::support::wait_backfill_done(&admin, "eta").await;
    run.sigterm();
    run.exit(std::time::Duration::from_secs(20)).await;
    let rows = admin
        .query(
            // Mirrors are backfilled one after the other, and every
            // mirror's started_at is the run's start: a mirror's own time
            // begins when the one before it finished.
            "SELECT extract(epoch FROM finished_at - greatest(started_at,
                        coalesce(lag(finished_at) OVER (ORDER BY mirror), started_at)))::float8
             FROM walshift.backfill WHERE name = 'eta' ORDER BY mirror",
            &[],
        )
        .await
        .unwrap();
    let mut off = Vec::new();
    for (i, ((rows_n, rate), row)) in estimated.iter().zip(&rows).enumerate() {
        let actual: f64 = row.get(0);
        let estimate = rows_n / rate;
        let ratio = estimate / actual;
        println!(
            "mirror {}: estimate {estimate:.2}s, backfill {actual:.2}s, ratio {ratio:.2}",
            i + 1
        );
        if !(0.5..=1.5).contains(&ratio) {
            off.push(format!("mirror {}: ratio {ratio:.2}", i + 1));
        }
    }
    assert!(off.is_empty(), "{off:?}\n{out}");
}
