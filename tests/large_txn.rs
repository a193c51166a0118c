//! A transaction too large to track key by key: memory stays bounded
//! because the batch collapses to a whole-mirror recompute ("overflow"),
//! and the result is still exact. The threshold is lowered with the hidden
//! `--max-txn-keys` flag so the test needs thousands of rows, not millions.

mod support;

use std::time::Duration;

use support::fixtures::{SKU_SCHEMA, USERS_MIRROR, orders_sku_mirror};
use support::{Run, Spec};

/// Both shared mirrors, `users.status` and `orders` -> `order_items` without `qty`.
fn spec_text() -> String {
    format!("{USERS_MIRROR}{}", orders_sku_mirror())
}

/// Guards "large transactions keep memory bounded" (issue 3): a 20k-key
/// transaction against a 100-key bound must overflow into a whole-mirror
/// pass for both modes — including deletes, whose owned rows a keyed
/// recompute would have removed — and end exact.
#[tokio::test(flavor = "multi_thread")]
async fn huge_transaction_falls_back_to_a_whole_mirror_pass_and_stays_exact() {
    let db = support::fresh_db().await;
    let client = db.connect().await;
    client
        .batch_execute(&format!(
            "{SKU_SCHEMA}INSERT INTO orders SELECT g, '[{{\"sku\":\"a\"}}]' FROM generate_series(1, 3000) g;"
        ))
        .await
        .unwrap();
    let spec = Spec::new("large-txn", &spec_text());
    let run = Run::spawn_with(&spec, &db, &["--max-txn-keys", "100"]);
    support::wait_backfill_done(&client, "large-txn").await;

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
    support::wait_caught_up(&run, &client).await;

    assert_eq!(support::wrong_status(&client).await, 0);
    assert_eq!(
        support::order_items_diff(&client).await,
        0,
        "order_items differs from the mapping"
    );
    let items: i64 = client
        .query_one("SELECT count(*) FROM order_items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(items, 2500 * 2);

    let stderr = run.stop_within(Duration::from_secs(20)).await;
    assert!(
        stderr.contains("recomputed whole mirrors"),
        "the overflow path must have run:\n{stderr}"
    );
}
