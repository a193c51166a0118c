//! A transaction too large to track key by key: memory stays bounded
//! because the batch collapses to a whole-mirror recompute ("overflow"),
//! and the result is still exact. The threshold is lowered with the hidden
//! `--max-txn-keys` flag so the test needs thousands of rows, not millions.

mod common;

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

const SPEC: &str = r#"name = "large-txn"

[[mirror]]
source = "public.users"
set = { status = "CASE WHEN is_active THEN 'active' ELSE 'disabled' END" }

[[mirror]]
source = "public.orders"
target = "public.order_items"
owner  = ["order_id"]
select = """
SELECT src.id AS order_id, i.n AS line_no, i.v->>'sku' AS sku
FROM jsonb_array_elements(src.items) WITH ORDINALITY AS i(v, n)
"""
"#;

async fn caught_up(client: &tokio_postgres::Client, slot: &str) {
    let took = walshift::verify::wait_caught_up(client, slot, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        took.is_some(),
        "walshift did not confirm past the sync message within 60 s"
    );
}

/// Guards "large transactions keep memory bounded" (issue 3): a 20k-key
/// transaction against a 100-key bound must overflow into a whole-mirror
/// pass for both modes — including deletes, whose owned rows a keyed
/// recompute would have removed — and end exact.
#[tokio::test(flavor = "multi_thread")]
async fn huge_transaction_falls_back_to_a_whole_mirror_pass_and_stays_exact() {
    let db = common::fresh_db().await;
    let client = db.connect().await;
    client
        .batch_execute(
            "CREATE TABLE users (id bigint PRIMARY KEY, is_active boolean, status text);
             CREATE TABLE orders (id bigint PRIMARY KEY, items jsonb NOT NULL);
             CREATE TABLE order_items (order_id bigint, line_no bigint, sku text, PRIMARY KEY (order_id, line_no));
             INSERT INTO orders SELECT g, '[{\"sku\":\"a\"}]' FROM generate_series(1, 3000) g;",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.toml");
    std::fs::write(&spec, SPEC).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_walshift"))
        .args([
            "run",
            spec.to_str().unwrap(),
            "--db",
            &db.conninfo(),
            "--max-txn-keys",
            "100",
            "--listen",
            "off",
        ])
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    common::wait_for("the backfill to finish", Duration::from_secs(60), || async {
        client
            .query_one(
                "SELECT coalesce(bool_and(done), false) FROM walshift.backfill WHERE name = 'large-txn'",
                &[],
            )
            .await
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false)
    })
    .await;

    // One transaction: 20k new users, every order rewritten, 500 deleted.
    client
        .batch_execute(
            "BEGIN;
             INSERT INTO users SELECT g, g % 3 = 0 FROM generate_series(1, 20000) g;
             UPDATE orders SET items = items || '[{\"sku\":\"b\"}]';
             DELETE FROM orders WHERE id % 6 = 0;
             COMMIT;",
        )
        .await
        .unwrap();
    caught_up(&client, "walshift_large_txn").await;

    let wrong_status: i64 = client
        .query_one(
            "SELECT count(*) FROM users WHERE status IS DISTINCT FROM CASE WHEN is_active THEN 'active' ELSE 'disabled' END",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(wrong_status, 0);
    let diff: i64 = client
        .query_one(
            "WITH want AS (SELECT src.id AS order_id, i.n AS line_no, i.v->>'sku' AS sku
                           FROM orders src, jsonb_array_elements(src.items) WITH ORDINALITY AS i(v, n))
             SELECT (SELECT count(*) FROM (SELECT * FROM want EXCEPT ALL SELECT * FROM order_items) a)
                  + (SELECT count(*) FROM (SELECT * FROM order_items EXCEPT ALL SELECT * FROM want) b)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(diff, 0, "order_items differs from the mapping");
    let items: i64 = client
        .query_one("SELECT count(*) FROM order_items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(items, 2500 * 2);

    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("recomputed whole mirrors"),
        "the overflow path must have run:\n{stderr}"
    );
}
