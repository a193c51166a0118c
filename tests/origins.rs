//! pgoutput's `origin = 'none'` on PostgreSQL 16+ (I5, src/run/origins.rs).
//!
//! walshift asks for it only when no other replication origin exists, so
//! the walsender skips walshift's own writes while decoding. These tests
//! guard the other half: writes that carry *another* origin (a
//! subscription feeding a source table) are never lost to the filter.
//!
//! They need PostgreSQL 16 or later and run on the server the harness picks
//! (`PG_BIN`, see cluster/src/bins.rs): `scripts/test` runs this binary on
//! 16, 17 and 18 (docs/testing.md) and leaves it out on older majors. On an
//! older server the tests say why they did not run, except under CI, where
//! that means the matrix is wrong and they fail.

mod support;

use std::time::Duration;

use support::cli::{cli, one_i64};
use support::fixtures::USERS_MIRROR;
use support::process::{Run, Spec};
use support::{Cluster, Database, poll};

/// Users whose `status` differs from the mapping of `is_active`.
const WRONG: &str = "SELECT count(*) FROM users \
     WHERE status IS DISTINCT FROM CASE WHEN is_active THEN 'active' ELSE 'disabled' END";

/// A cluster of the default binaries when they are PostgreSQL 16+, or `None` (outside CI).
async fn cluster16() -> Option<Cluster> {
    let cluster = tokio::task::spawn_blocking(|| Cluster::builder().start())
        .await
        .expect("start task")
        .expect("start a cluster");
    let version = cluster.version_num();
    if version >= 160000 {
        return Some(cluster);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "tests/origins.rs needs PostgreSQL 16+, but the harness's binaries are \
         server_version_num {version}: under CI, scripts/test runs it on 16, 17 and 18 only"
    );
    eprintln!(
        "SKIPPED: server_version_num {version} has no pgoutput origin option; \
         run with PG_BIN=$(scripts/fetch-pg 17)"
    );
    None
}

async fn setup(cluster: &Cluster, users: i64) -> (Database, tokio_postgres::Client) {
    let db = cluster.fresh_database_named("origins").expect("database");
    support::cli::setup_on(db, users, 0).await
}

async fn mirrored(c: &tokio_postgres::Client, what: &str) {
    poll(None, what, Duration::from_secs(60), || async {
        one_i64(c, WRONG).await == 0
    })
    .await;
}

/// Guards the cap on confirmed positions and the restart from the slot.
/// The origin guard is slowed to 3 s, so walshift applies a later local
/// write (and records its position) before it notices the new origin.
/// Without the cap, the slot would be confirmed past the filtered write;
/// without restarting from the slot, the next session would resume past
/// it: either way those 100 users would stay wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_origin_appearing_mid_run_loses_no_write() {
    let Some(cluster) = cluster16().await else {
        return;
    };
    let (db, c) = setup(&cluster, 20_000).await;
    let spec = Spec::new("orig", USERS_MIRROR);
    let run = Run::on(&spec, &db.conninfo())
        .env("WALSHIFT_ORIGIN_POLL_MS", "3000")
        .spawn();
    let stderr = || run.stderr();

    mirrored(&c, "the backfill").await;
    let check = cli(&["check"], &spec, &db).await;
    assert!(
        check.stdout.contains("no other replication origin exists"),
        "check says the stream skips walshift's own writes:\n{}",
        check.stdout
    );
    assert!(
        stderr().contains("pgoutput skips walshift's own writes (origin = none)"),
        "walshift streams with origin = none when no other origin exists:\n{}",
        stderr()
    );
    // walshift's 20,000 backfill writes were not decoded: the slot's
    // decoded bytes stay far below what they would take (~60 bytes each).
    let decoded = one_i64(
        &c,
        "SELECT coalesce(sum(total_bytes), 0)::bigint FROM pg_stat_replication_slots WHERE slot_name LIKE 'walshift%'",
    )
    .await;
    assert!(
        decoded < 200_000,
        "the walsender decoded {decoded} bytes: walshift's own writes were not skipped"
    );

    // A "subscription": a new origin, and a write carrying it.
    let feed = db.connect().await;
    feed.batch_execute(
        "SELECT pg_replication_origin_create('feed');
         SELECT pg_replication_origin_session_setup('feed');
         UPDATE users SET is_active = NOT is_active WHERE id <= 100;",
    )
    .await
    .expect("a write with another origin");
    // Then a local write, applied (and its position recorded) at once.
    c.execute(
        "UPDATE users SET is_active = NOT is_active WHERE id BETWEEN 1001 AND 1010",
        &[],
    )
    .await
    .expect("local write");

    mirrored(&c, "the write that carried another origin").await;
    let log_text = stderr();
    assert!(
        log_text.contains("replication origin feed appeared"),
        "walshift noticed the new origin and streamed again:\n{log_text}"
    );
    assert!(
        log_text.contains("other replication origins exist"),
        "the next session streams every origin:\n{log_text}"
    );
    // Later writes of both kinds keep being mirrored.
    feed.execute(
        "UPDATE users SET is_active = NOT is_active WHERE id BETWEEN 101 AND 200",
        &[],
    )
    .await
    .expect("another write with the other origin");
    mirrored(&c, "a later write with the other origin").await;

    let out = cli(&["verify"], &spec, &db).await;
    assert_eq!(out.code(), Some(0), "verify: {}", out.stderr);
    drop(run);
    feed.batch_execute("SELECT pg_replication_origin_session_reset()")
        .await
        .ok();
}

/// With another origin already there, walshift never asks for the filter,
/// and that origin's writes are mirrored like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_other_origin_keeps_every_change_decoded() {
    let Some(cluster) = cluster16().await else {
        return;
    };
    let (db, c) = setup(&cluster, 1_000).await;
    c.batch_execute("SELECT pg_replication_origin_create('upstream')")
        .await
        .expect("origin");
    let spec = Spec::new("orig2", USERS_MIRROR);
    let check = cli(&["check"], &spec, &db).await;
    assert!(
        check
            .stdout
            .contains("other replication origins exist (upstream)"),
        "check names the other origin:\n{}",
        check.stdout
    );
    let run = Run::spawn(&spec, &db);
    mirrored(&c, "the backfill").await;
    let feed = db.connect().await;
    feed.batch_execute(
        "SELECT pg_replication_origin_session_setup('upstream');
         UPDATE users SET is_active = NOT is_active WHERE id <= 50;",
    )
    .await
    .expect("a write with the other origin");
    mirrored(&c, "the write with the other origin").await;
    let log = run.stderr();
    assert!(
        log.contains("other replication origins exist")
            && !log.contains("pgoutput skips walshift's own writes"),
        "no origin filter while another origin exists:\n{log}"
    );
    run.sigterm();
    assert!(run.exit(Duration::from_secs(30)).await.success());
}
