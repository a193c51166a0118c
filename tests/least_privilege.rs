//! walshift under a role with only the privileges docs/operations.md lists, and
//! without EXECUTE on the replication origin functions (issue 3: "where
//! origin functions are not permitted, it still works and says so").
//! Without its origin, walshift's own writes come back through the stream
//! and recompute to no-ops; the result must still be exact.

mod support;

use std::time::Duration;

use support::fixtures::{SKU_SCHEMA, USERS_MIRROR, orders_sku_mirror};
use support::{Run, Spec};

/// Both shared mirrors, `users.status` and `orders` -> `order_items` without `qty`.
fn spec_text() -> String {
    format!("{USERS_MIRROR}{}", orders_sku_mirror())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_role_without_origin_rights_still_mirrors_exactly_and_says_so() {
    let db = support::fresh_db().await;
    let admin = db.connect().await;
    let role = format!("{}_migrator", db.name());
    // The recipe of docs/operations.md "Privileges": REPLICATION, CREATE on
    // the database, ownership of the sources (via membership), SELECT/UPDATE
    // on set columns, SELECT/INSERT/UPDATE/DELETE on targets. Origin
    // functions: not granted.
    admin
        .batch_execute(&format!(
            "CREATE ROLE app_owner;
             {SKU_SCHEMA}
             ALTER TABLE users OWNER TO app_owner;
             ALTER TABLE orders OWNER TO app_owner;
             INSERT INTO users SELECT g, g % 2 = 0 FROM generate_series(1, 2000) g;
             INSERT INTO orders SELECT g, '[{{\"sku\":\"a\"}},{{\"sku\":\"b\"}}]' FROM generate_series(1, 500) g;
             CREATE ROLE {role} LOGIN REPLICATION IN ROLE app_owner;
             GRANT CREATE ON DATABASE {db} TO {role};
             GRANT SELECT, UPDATE (status) ON users TO {role};
             GRANT SELECT ON orders TO {role};
             GRANT SELECT, INSERT, UPDATE, DELETE ON order_items TO {role};",
            db = db.name()
        ))
        .await
        .unwrap();
    let conninfo = format!("{} user={role}", db.conninfo());
    let spec = Spec::new("least-priv", &spec_text());

    let check = std::process::Command::new(env!("CARGO_BIN_EXE_walshift"))
        .args(["check", spec.path.to_str().unwrap(), "--db", &conninfo])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "check must pass for this role:\n{out}"
    );
    assert!(
        out.contains("may not execute the replication origin functions"),
        "{out}"
    );

    let run = Run::on(&spec, &conninfo).spawn();
    support::wait_backfill_done(&admin, "least-priv").await;
    admin
        .batch_execute(
            "UPDATE users SET is_active = NOT is_active WHERE id % 7 = 0;
             INSERT INTO users SELECT g, true FROM generate_series(2001, 2100) g;
             DELETE FROM users WHERE id % 11 = 0;
             UPDATE orders SET items = items || '[{\"sku\":\"c\"}]' WHERE id % 5 = 0;
             DELETE FROM orders WHERE id % 9 = 0;",
        )
        .await
        .unwrap();
    support::wait_caught_up(&run, &admin).await;
    assert_eq!(support::wrong_status(&admin).await, 0);
    assert_eq!(support::order_items_diff(&admin).await, 0);
    let origins: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_replication_origin WHERE roname = 'walshift_least_priv'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(origins, 0, "the role could not create an origin");

    let stderr = run.stop_within(Duration::from_secs(20)).await;
    assert!(
        stderr.contains("replication origin functions are not permitted"),
        "run says it works without its origin:\n{stderr}"
    );
}
