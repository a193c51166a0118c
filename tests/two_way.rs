//! Two-way mirrors (the rolling deploy): both shapes are written by the
//! application, walshift keeps each the mapping of the other, the later
//! commit wins, and nothing an application acknowledged is lost.

mod common;

use std::time::Duration;

use common::cli::{Run, Spec, cli};
use common::{fresh_db, wait_backfill_done, wait_caught_up};

const USERS: &str = "
CREATE TABLE users (id bigint PRIMARY KEY, name text, is_active boolean, status text);
";

const USERS_TWO_WAY: &str = r#"
[[mirror]]
source = "public.users"
set = { status = "CASE WHEN is_active THEN 'active' ELSE 'disabled' END" }
reverse = { is_active = "status = 'active'" }
"#;

/// `check` wants REPLICA IDENTITY FULL on a two-way source and says how.
#[tokio::test]
async fn check_asks_for_replica_identity_full() {
    let db = fresh_db().await;
    let c = db.connect().await;
    c.batch_execute(USERS).await.unwrap();
    let spec = Spec::new("two-way", USERS_TWO_WAY);
    let out = cli(&["check"], &spec, &db).await;
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(
        out.stderr.contains(
            "public.users has REPLICA IDENTITY DEFAULT, so an update does not show which columns \
             it changed and walshift cannot tell the old version's writes from the new version's; \
             run ALTER TABLE public.users REPLICA IDENTITY FULL"
        ) || out
            .stdout
            .contains("run ALTER TABLE public.users REPLICA IDENTITY FULL"),
        "{out}"
    );
    c.batch_execute("ALTER TABLE users REPLICA IDENTITY FULL")
        .await
        .unwrap();
    let out = cli(&["check"], &spec, &db).await;
    assert_eq!(out.code(), Some(0), "{out}");
}

async fn users_row(c: &tokio_postgres::Client, id: i64) -> (Option<bool>, Option<String>) {
    let r = c
        .query_one("SELECT is_active, status FROM users WHERE id = $1", &[&id])
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

/// Each direction from what a write changed, inserts from either version,
/// and a value only the new version can write ('paused') that survives the
/// old version's unrelated writes.
#[tokio::test]
async fn set_mode_follows_the_shape_each_write_changed() {
    let db = fresh_db().await;
    let c = db.connect().await;
    c.batch_execute(USERS).await.unwrap();
    c.batch_execute(
        "ALTER TABLE users REPLICA IDENTITY FULL;
         INSERT INTO users (id, name, is_active) SELECT g, 'u' || g, g % 2 = 0 FROM generate_series(1, 100) g;",
    )
    .await
    .unwrap();
    let spec = Spec::new("two-way", USERS_TWO_WAY);
    let run = Run::spawn(&spec, &db);
    wait_backfill_done(&c, &spec.name).await;
    let slot = spec.object();
    wait_caught_up(&c, &slot).await;
    assert_eq!(users_row(&c, 2).await, (Some(true), Some("active".into())));
    // The old version flips is_active: status follows.
    c.execute("UPDATE users SET is_active = false WHERE id = 2", &[])
        .await
        .unwrap();
    // The new version writes a value the forward mapping never produces.
    c.execute("UPDATE users SET status = 'paused' WHERE id = 4", &[])
        .await
        .unwrap();
    wait_caught_up(&c, &slot).await;
    assert_eq!(
        users_row(&c, 2).await,
        (Some(false), Some("disabled".into()))
    );
    assert_eq!(users_row(&c, 4).await, (Some(false), Some("paused".into())));
    // The old version writes name alone: nothing is recomputed.
    c.execute("UPDATE users SET name = 'renamed' WHERE id = 4", &[])
        .await
        .unwrap();
    // Inserts from either version.
    c.execute(
        "INSERT INTO users (id, name, is_active) VALUES (1001, 'old', true)",
        &[],
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO users (id, name, status) VALUES (1002, 'new', 'active')",
        &[],
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO users (id, name, status) VALUES (1003, 'new', 'paused')",
        &[],
    )
    .await
    .unwrap();
    wait_caught_up(&c, &slot).await;
    assert_eq!(users_row(&c, 4).await, (Some(false), Some("paused".into())));
    assert_eq!(
        users_row(&c, 1001).await,
        (Some(true), Some("active".into()))
    );
    assert_eq!(
        users_row(&c, 1002).await,
        (Some(true), Some("active".into()))
    );
    assert_eq!(
        users_row(&c, 1003).await,
        (Some(false), Some("paused".into()))
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {}).await;
    drop(run);
}
