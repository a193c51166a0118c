//! Where the supported PostgreSQL majors differ, each difference pinned against real servers of
//! those majors (docs/testing.md). Every test starts its own cluster of the major it is about,
//! whatever `PG_BIN` says, from `WALSHIFT_PG<major>_BIN` (scripts/test exports them),
//! `.pg/<major>/bin` (scripts/fetch-pg) or Debian's `/usr/lib/postgresql/<major>/bin`. Under CI
//! a missing major fails; elsewhere the test says so and does not run.
//!
//! Each test was seen to fail with the behaviour it pins broken; the comment above it says how.

mod support;

use std::time::Duration;

use support::cli::{cli, one_i64, status_json};
use support::fixtures::USERS_MIRROR;
use support::process::{Run, Spec};
use support::{Cluster, Database, majors, poll, wait_backfill_done, wait_caught_up};
use walshift::conninfo::ConnConfig;
use walshift::replication::{ReplicationClient, SlotOptions, SnapshotAction, proto};

/// Users whose `status` differs from the mapping of `is_active`.
const WRONG: &str = "SELECT count(*) FROM users \
     WHERE status IS DISTINCT FROM CASE WHEN is_active THEN 'active' ELSE 'disabled' END";

/// A dedicated cluster of PostgreSQL `major` with `settings`, or `None` (outside CI) when this
/// machine has no such binaries.
async fn cluster_of(major: u32, settings: &[(&str, &str)]) -> Option<Cluster> {
    let dir = majors::required(major, "tests/versions.rs")?;
    let settings: Vec<(String, String)> = settings
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let cluster = tokio::task::spawn_blocking(move || {
        let mut builder = Cluster::builder().bin_dir(dir);
        for (key, value) in settings {
            builder = builder.setting(key, value);
        }
        builder.start()
    })
    .await
    .expect("start task")
    .unwrap_or_else(|e| panic!("start PostgreSQL {major}: {e}"));
    assert_eq!(cluster.version_num() / 10000, major, "the binaries found");
    Some(cluster)
}

/// A fresh database on `cluster` with the operator schema and `users` rows `1..=users`.
async fn setup(cluster: &Cluster, hint: &str, users: i64) -> (Database, tokio_postgres::Client) {
    let db = cluster.fresh_database_named(hint).expect("database");
    support::cli::setup_on(db, users, 0).await
}

async fn mirrored(c: &tokio_postgres::Client, what: &str) {
    poll(None, what, Duration::from_secs(60), || async {
        one_i64(c, WRONG).await == 0
    })
    .await;
}

async fn text(c: &tokio_postgres::Client, sql: &str) -> Option<String> {
    c.query_one(sql, &[]).await.expect(sql).get(0)
}

/// Whether `slot` exists and a walsender holds it (the mirror tests' `slot_active`, as a bool).
async fn slot_active(c: &tokio_postgres::Client, slot: &str) -> bool {
    support::mirror::waits::slot_active(c, slot).await == Some(true)
}

async fn wait_inactive(c: &tokio_postgres::Client, slot: &str) {
    poll(
        None,
        "the slot to be released",
        Duration::from_secs(30),
        || async move { !slot_active(c, slot).await },
    )
    .await;
}

// --- PostgreSQL 14: the replication command syntax ---------------------------------------------

/// PostgreSQL 14 knows only the keyword form of CREATE_REPLICATION_SLOT (`... LOGICAL pgoutput
/// EXPORT_SNAPSHOT`); 15 brought the parenthesized options. walshift's replication client picks
/// the form by the server's version (src/replication/proto.rs).
///
/// Checked to fail: with proto.rs's threshold lowered to 140000 (the 15 form on 14), the slot
/// creation fails with a syntax error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg14_slots_are_created_with_the_keyword_command() {
    let Some(cluster) = cluster_of(14, &[]).await else {
        return;
    };
    let db = cluster.fresh_database_named("v14slot").expect("database");
    let sql = db.connect().await;
    sql.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'before')",
    )
    .await
    .unwrap();
    let config = ConnConfig::parse(&db.conninfo()).unwrap();

    // The 15 form is a syntax error on 14: the choice matters.
    let mut modern = ReplicationClient::connect(&config).await.unwrap();
    assert_eq!(modern.server_version_num() / 10000, 14);
    let command = proto::create_logical_slot_command("v14_modern", SlotOptions::default(), 150000);
    let err = modern
        .simple_query(&command)
        .await
        .expect_err("PostgreSQL 14 accepted the parenthesized CREATE_REPLICATION_SLOT");
    assert_eq!(err.code(), Some("42601"), "{err}");
    drop(modern);

    // What walshift sends: the slot exists, and its exported snapshot is the slot's start.
    let mut repl = ReplicationClient::connect(&config).await.unwrap();
    let exported = SlotOptions {
        snapshot: SnapshotAction::Export,
        ..SlotOptions::default()
    };
    let created = repl
        .create_logical_slot("v14_export", exported)
        .await
        .expect("CREATE_REPLICATION_SLOT ... EXPORT_SNAPSHOT on 14");
    let snapshot = created.snapshot_name.clone().expect("an exported snapshot");
    sql.batch_execute("UPDATE t SET v = 'after'").await.unwrap();
    let reader = db.connect().await;
    reader
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{snapshot}'"
        ))
        .await
        .expect("the exported snapshot");
    let seen = text(&reader, "SELECT v FROM t WHERE id = 1").await;
    assert_eq!(
        seen.as_deref(),
        Some("before"),
        "the snapshot is the slot's"
    );
    reader.batch_execute("COMMIT").await.unwrap();

    // run's own form (NOEXPORT_SNAPSHOT) on a second slot.
    let plain = repl
        .create_logical_slot("v14_plain", SlotOptions::default())
        .await
        .expect("CREATE_REPLICATION_SLOT ... NOEXPORT_SNAPSHOT on 14");
    assert_eq!(plain.snapshot_name, None);
    let rows = sql
        .query(
            "SELECT slot_name::text, plugin::text, slot_type, database = current_database(),
                    confirmed_flush_lsn::text, two_phase
             FROM pg_replication_slots ORDER BY slot_name",
            &[],
        )
        .await
        .unwrap();
    let slots: Vec<(String, String, String, bool, String, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect();
    assert_eq!(slots.len(), 2, "{slots:?}");
    assert_eq!(slots[0].0, "v14_export");
    assert_eq!(
        slots[0].4,
        created.consistent_point.to_string(),
        "{slots:?}"
    );
    assert_eq!(slots[1].0, "v14_plain");
    for (_, plugin, kind, here, _, two_phase) in &slots {
        assert_eq!(
            (plugin.as_str(), kind.as_str(), *here, *two_phase),
            ("pgoutput", "logical", true, false)
        );
    }
}

// --- PostgreSQL 14: empty transactions ---------------------------------------------------------

/// pgoutput's BEGIN messages (`B`) for the transactions since a probe slot was made.
const PROBE_BEGINS: &str = "SELECT count(*) FROM pg_logical_slot_peek_binary_changes('probe', NULL, NULL, \
     'proto_version', '1', 'publication_names', $1) WHERE get_byte(data, 0) = 66";

/// 200 transactions that touch only `noise`, a table no publication has; the WAL position after.
async fn noise_transactions(c: &tokio_postgres::Client) -> String {
    for _ in 0..200 {
        c.execute("INSERT INTO noise DEFAULT VALUES", &[])
            .await
            .unwrap();
    }
    text(c, "SELECT pg_current_wal_lsn()::text").await.unwrap()
}

/// PostgreSQL 14's pgoutput sends BEGIN and COMMIT for every transaction, even one that touched
/// no published table; 15 stopped sending those. walshift's stream on 14 takes 200 of them in
/// its stride: the slot is confirmed past them and a later write is mirrored.
///
/// Checked to fail: with src/run/mod.rs handing over only batches that have work (`pending.
/// has_work()` for `pending.txns > 0`), transactions without work (14's empty ones, and
/// walshift's echoes) stay pending, the slot is never confirmed past them and the test times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg14_empty_transactions_are_streamed_and_confirmed_past() {
    let Some(cluster) = cluster_of(14, &[]).await else {
        return;
    };
    let (db, c) = setup(&cluster, "v14empty", 1000).await;
    c.batch_execute("CREATE TABLE noise (id bigserial PRIMARY KEY)")
        .await
        .unwrap();
    let spec = Spec::new("v14empty", USERS_MIRROR);
    let run = Run::spawn(&spec, &db);
    mirrored(&c, "the backfill").await;
    wait_backfill_done(&c, &spec.name).await;
    wait_caught_up(&run, &c).await;

    c.batch_execute("SELECT pg_create_logical_replication_slot('probe', 'pgoutput')")
        .await
        .unwrap();
    let after = noise_transactions(&c).await;
    let begins: i64 = c
        .query_one(PROBE_BEGINS, &[&spec.object()])
        .await
        .unwrap()
        .get(0);
    assert!(
        begins >= 200,
        "PostgreSQL 14's pgoutput sends the empty transactions: {begins} BEGIN messages"
    );
    let slot = spec.object();
    let (c_ref, slot_ref, after_ref) = (&c, &slot, &after);
    poll(None,
        "walshift's slot to be confirmed past the empty transactions",
        Duration::from_secs(30),
        || async move {
            c_ref
                .query_one(
                    "SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
                    &[slot_ref, after_ref],
                )
                .await
                .unwrap()
                .get(0)
        },
    )
    .await;
    c.execute(
        "UPDATE users SET is_active = NOT is_active WHERE id <= 10",
        &[],
    )
    .await
    .unwrap();
    mirrored(&c, "a write after the empty transactions").await;
    c.batch_execute("SELECT pg_drop_replication_slot('probe')")
        .await
        .unwrap();
    run.stop().await;
}

/// The other side of the difference: from 15 on, pgoutput sends nothing for those
/// transactions. Checked to fail: run against 14 instead, it counts 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg15_and_later_send_no_empty_transactions() {
    for major in [15, 16, 17, 18] {
        let Some(cluster) = cluster_of(major, &[]).await else {
            continue;
        };
        let db = cluster.fresh_database_named("v15empty").expect("database");
        let c = db.connect().await;
        c.batch_execute(
            "CREATE TABLE published (id int PRIMARY KEY); CREATE TABLE noise (id bigserial PRIMARY KEY);
             CREATE PUBLICATION pub FOR TABLE published",
        )
        .await
        .unwrap();
        c.batch_execute("SELECT pg_create_logical_replication_slot('probe', 'pgoutput')")
            .await
            .unwrap();
        noise_transactions(&c).await;
        c.batch_execute("INSERT INTO published VALUES (1)")
            .await
            .unwrap();
        let begins: i64 = c.query_one(PROBE_BEGINS, &[&"pub"]).await.unwrap().get(0);
        assert_eq!(
            begins, 1,
            "PostgreSQL {major} sends only the transaction that wrote a published table"
        );
    }
}

// --- PostgreSQL 16+: origin = none -------------------------------------------------------------

/// What walshift's own backfill writes cost the walsender on `major`: check's and run's words
/// about the origin filter, and the bytes the slot decoded.
struct OwnWrites {
    check: String,
    log: String,
    decoded_bytes: i64,
}

async fn own_writes_on(major: u32) -> Option<OwnWrites> {
    let cluster = cluster_of(major, &[]).await?;
    let (db, c) = setup(&cluster, "ownwrites", 20_000).await;
    let spec = Spec::new("own", USERS_MIRROR);
    let check = cli(&["check"], &spec, &db).await;
    assert_eq!(check.code(), Some(0), "check on {major}: {check}");
    let run = Run::spawn(&spec, &db);
    mirrored(&c, "the backfill").await;
    wait_backfill_done(&c, &spec.name).await;
    // A write of the test's own, so the slot's statistics have been written since the backfill.
    c.execute(
        "UPDATE users SET is_active = NOT is_active WHERE id <= 100",
        &[],
    )
    .await
    .unwrap();
    mirrored(&c, "a write after the backfill").await;
    wait_caught_up(&run, &c).await;
    let slot = spec.object();
    let stats = "SELECT coalesce(sum(total_txns), 0)::bigint, coalesce(sum(total_bytes), 0)::bigint \
                 FROM pg_stat_replication_slots WHERE slot_name = $1";
    let (c_ref, slot_ref) = (&c, &slot);
    // 14's statistics reach the view through the stats collector, a moment later.
    let decoded_bytes = wait_for_some_stat(c_ref, stats, slot_ref).await;
    eprintln!("PostgreSQL {major}: the slot decoded {decoded_bytes} bytes");
    let log = run.stderr();
    run.stop().await;
    Some(OwnWrites {
        check: check.stdout,
        log,
        decoded_bytes,
    })
}

/// total_bytes of the slot once its statistics count at least the test's own transaction.
async fn wait_for_some_stat(c: &tokio_postgres::Client, stats: &str, slot: &str) -> i64 {
    support::poll_some(
        None,
        "the slot's statistics to count a transaction",
        Duration::from_secs(30),
        || async move {
            let row = c.query_one(stats, &[&slot]).await.unwrap();
            let (txns, bytes): (i64, i64) = (row.get(0), row.get(1));
            (txns >= 1).then_some(bytes)
        },
    )
    .await
}

/// Before 16 there is no filter: the walsender decodes walshift's 20,000 backfill writes (about
/// 60 bytes each) and walshift drops them as they arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg14_decodes_walshifts_own_writes() {
    let Some(own) = own_writes_on(14).await else {
        return;
    };
    assert!(
        !own.check.contains("origin = none") && !own.log.contains("origin = none"),
        "no origin filter before 16:\n{}\n{}",
        own.check,
        own.log
    );
    assert!(
        own.decoded_bytes > 600_000,
        "the walsender decoded only {} bytes: were walshift's writes not decoded on 14?",
        own.decoded_bytes
    );
}

/// From 16 on, with no other origin, walshift streams with origin = none and the walsender
/// skips its writes. Checked to fail: with src/run/origins.rs's choice forced to every origin,
/// the slot decodes what it does on 14 (2.9 MB for these 20,000 rows).
async fn origin_none_skips_own_writes(major: u32) {
    let Some(own) = own_writes_on(major).await else {
        return;
    };
    assert!(
        own.decoded_bytes < 200_000,
        "the walsender of {major} decoded {} bytes: walshift's own writes were not skipped",
        own.decoded_bytes
    );
    assert!(
        own.check.contains("no other replication origin exists"),
        "check on {major} tells the stream asks for origin = none:\n{}",
        own.check
    );
    assert!(
        own.log
            .contains("pgoutput skips walshift's own writes (origin = none)"),
        "run on {major} streams with origin = none:\n{}",
        own.log
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg16_skips_walshifts_own_writes() {
    origin_none_skips_own_writes(16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg17_skips_walshifts_own_writes() {
    origin_none_skips_own_writes(17).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg18_skips_walshifts_own_writes() {
    origin_none_skips_own_writes(18).await;
}

// --- PostgreSQL 16+: a rolled-back transaction moves its origin ---------------------------------

/// From 16 on, a transaction that called pg_replication_origin_xact_setup and then rolled back
/// advances the origin's progress anyway (14 and 15 leave it). An apply of walshift's that dies
/// mid-flight (SIGKILL, a failed batch) is such a transaction, so walshift resumes from its
/// state row's applied position, not from its origin's progress (src/run/mod.rs).
///
/// Checked to fail: with session() resuming from max(applied_lsn, origin progress) again, the
/// 100 updates made while walshift was stopped stay unmirrored on 16, 17 and 18.
async fn rolled_back_apply_on(major: u32) {
    let Some(cluster) = cluster_of(major, &[]).await else {
        return;
    };
    let (db, c) = setup(&cluster, "rollback", 1000).await;
    let spec = Spec::new("rb", USERS_MIRROR);
    let run = Run::spawn(&spec, &db);
    mirrored(&c, "the backfill").await;
    wait_backfill_done(&c, &spec.name).await;
    run.stop().await;

    // While walshift is stopped: writes to mirror, then an apply that set walshift's origin up
    // and rolled back, ending where those writes end.
    c.execute(
        "UPDATE users SET is_active = NOT is_active WHERE id <= 100",
        &[],
    )
    .await
    .unwrap();
    let end = text(&c, "SELECT pg_current_wal_lsn()::text").await.unwrap();
    let origin = spec.object();
    let apply = db.connect().await;
    apply
        .execute("SELECT pg_replication_origin_session_setup($1)", &[&origin])
        .await
        .unwrap();
    apply.batch_execute("BEGIN").await.unwrap();
    apply
        .execute(
            "SELECT pg_replication_origin_xact_setup($1::text::pg_lsn, now())",
            &[&end],
        )
        .await
        .unwrap();
    apply
        .batch_execute("UPDATE users SET pad = 'rolled back' WHERE id = 1000; ROLLBACK")
        .await
        .unwrap();
    apply
        .batch_execute("SELECT pg_replication_origin_session_reset()")
        .await
        .unwrap();
    drop(apply);
    let progress = c
        .query_one(
            "SELECT pg_replication_origin_progress($1, false)::text = $2",
            &[&origin, &end],
        )
        .await
        .unwrap()
        .get::<_, Option<bool>>(0)
        .unwrap_or(false);
    assert_eq!(
        progress,
        major >= 16,
        "whether the rolled-back transaction moved the origin to {end} on {major}"
    );
    assert_eq!(
        one_i64(&c, WRONG).await,
        100,
        "the writes wait for walshift"
    );

    let run = Run::spawn(&spec, &db);
    mirrored(&c, "the writes made while walshift was stopped").await;
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg14_a_rolled_back_apply_leaves_the_origin() {
    rolled_back_apply_on(14).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg16_a_rolled_back_apply_moves_the_origin_and_walshift_resumes_from_its_state() {
    rolled_back_apply_on(16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg18_a_rolled_back_apply_moves_the_origin_and_walshift_resumes_from_its_state() {
    rolled_back_apply_on(18).await;
}

// --- PostgreSQL 17: new pg_replication_slots columns -------------------------------------------

/// 17 added `failover`, `synced`, `inactive_since` and `invalidation_reason` to
/// pg_replication_slots (16 added `conflicting`). walshift creates its slot as a failover slot
/// on 17 (src/run/slot.rs) and reads `failover` and `invalidation_reason` through `to_jsonb`;
/// this pins what 17 reports for walshift's slot, running and stopped, and that status and
/// check agree with it there. (tests/failover.rs follows the slot through a promotion.)
///
/// Checked to fail: with src/status.rs reporting every slot active, the stopped slot's status
/// fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg17_slot_columns_and_walshift_status() {
    let Some(cluster) = cluster_of(17, &[]).await else {
        return;
    };
    let (db, c) = setup(&cluster, "v17slot", 1000).await;
    let spec = Spec::new("v17", USERS_MIRROR);
    let slot = spec.object();
    let run = Run::spawn(&spec, &db);
    mirrored(&c, "the backfill").await;
    wait_caught_up(&run, &c).await;

    let columns = "SELECT active, failover, synced, inactive_since IS NULL, invalidation_reason,
                          conflicting, wal_status, confirmed_flush_lsn::text
                   FROM pg_replication_slots WHERE slot_name = $1";
    let row = c.query_one(columns, &[&slot]).await.unwrap();
    let running: (
        bool,
        bool,
        bool,
        bool,
        Option<String>,
        Option<bool>,
        String,
        String,
    ) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
        row.get(6),
        row.get(7),
    );
    assert_eq!(
        (
            running.0,
            running.1,
            running.2,
            running.3,
            running.4.as_deref(),
            running.5,
            running.6.as_str()
        ),
        (true, true, false, true, None, Some(false), "reserved"),
        "walshift's running slot on 17: active, a failover slot, not synced, no \
         inactive_since, valid, not conflicting, WAL reserved"
    );
    let status = status_json(&spec, &db).await;
    assert_eq!(status["slot"]["exists"], true, "{status}");
    assert_eq!(status["slot"]["active"], true, "{status}");
    assert_eq!(status["slot"]["wal_status"], "reserved", "{status}");
    let check = cli(&["check"], &spec, &db).await;
    assert_eq!(check.code(), Some(0), "{check}");
    assert!(
        check.stdout.contains(&format!("slot {slot} is in use")),
        "{check}"
    );

    run.stop().await;
    wait_inactive(&c, &slot).await;
    let stopped: (bool, bool, Option<String>, String) = {
        let r = c
            .query_one(
                "SELECT active, inactive_since IS NOT NULL AND inactive_since <= now(),
                        invalidation_reason, wal_status
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    assert_eq!(
        (
            stopped.0,
            stopped.1,
            stopped.2.as_deref(),
            stopped.3.as_str()
        ),
        (false, true, None, "reserved"),
        "walshift's released slot on 17 has inactive_since and stays valid"
    );
    let status = status_json(&spec, &db).await;
    assert_eq!(status["slot"]["exists"], true, "{status}");
    assert_eq!(status["slot"]["active"], false, "{status}");
    assert_eq!(
        status["slot"]["confirmed_flush_lsn"],
        text(
            &c,
            &format!(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = '{slot}'"
            )
        )
        .await
        .unwrap()
        .as_str(),
        "{status}"
    );
    let check = cli(&["check"], &spec, &db).await;
    assert_eq!(check.code(), Some(0), "{check}");
    assert!(
        check
            .stdout
            .contains(&format!("slot {slot} already exists; run resumes from it")),
        "{check}"
    );
}

// --- replication origins' limit: max_active_replication_origins (18), max_replication_slots ------

/// Makes `n` other replication origins that hold progress (as subscriptions' do).
async fn busy_origins(c: &tokio_postgres::Client, n: i64) {
    c.execute(
        "SELECT pg_replication_origin_create('sub_' || g), pg_replication_origin_advance('sub_' || g, '0/1')
         FROM generate_series(1, $1::bigint) g",
        &[&n],
    )
    .await
    .unwrap();
    assert_eq!(
        one_i64(c, "SELECT count(*) FROM pg_replication_origin_status").await,
        n
    );
}

/// With every origin progress slot taken, `walshift check` (and so `run`, which checks first)
/// names the setting that bounds them; with one freed, both work.
///
/// Checked to fail: before src/catalog/server.rs counted origins, check passed here, and run
/// created its slot and then failed to set its origin up ("could not find free replication
/// state slot"), again at every retry, mirroring nothing.
async fn origin_limit_on(major: u32, setting: &str, limit: i64) {
    let limit_text = limit.to_string();
    let Some(cluster) = cluster_of(major, &[(setting, &limit_text)]).await else {
        return;
    };
    let (db, c) = setup(&cluster, "origins", 100).await;
    busy_origins(&c, limit).await;
    let spec = Spec::new("lim", USERS_MIRROR);
    let check = cli(&["check"], &spec, &db).await;
    assert_ne!(check.code(), Some(0), "check must refuse:\n{check}");
    let all = format!("{}{}", check.stdout, check.stderr);
    assert!(
        all.contains(&format!("{setting}: is {limit}"))
            && all.contains(&spec.object())
            && all.contains(&format!(
                "{limit} other replication origin(s) hold progress"
            )),
        "check names the limit and walshift's origin:\n{check}"
    );
    if setting == "max_replication_slots" {
        // Slots are free: it is the origins that are not.
        assert!(!all.contains("slot(s) exist"), "{check}");
    }

    // run makes the same check first, so it refuses before creating anything.
    let run = Run::spawn(&spec, &db);
    let status = run.exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(1), "run must refuse:\n{}", run.stderr());
    assert!(
        run.stderr().contains(&format!("{setting}: is {limit}")),
        "{}",
        run.stderr()
    );
    assert_eq!(
        one_i64(&c, "SELECT count(*) FROM pg_replication_slots").await,
        0,
        "nothing was created"
    );

    c.batch_execute("SELECT pg_replication_origin_drop('sub_1')")
        .await
        .unwrap();
    let check = cli(&["check"], &spec, &db).await;
    assert_eq!(check.code(), Some(0), "one origin freed:\n{check}");
    let run = Run::spawn(&spec, &db);
    mirrored(&c, "the backfill with an origin free").await;
    // Its own origin now holds the freed progress slot, and check counts it as walshift's.
    let check = cli(&["check"], &spec, &db).await;
    assert_eq!(
        check.code(),
        Some(0),
        "walshift's own origin is not another:\n{check}"
    );
    run.stop().await;
}

/// 18 bounds replication origins by max_active_replication_origins (default 10), apart from
/// max_replication_slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg18_check_counts_origins_against_max_active_replication_origins() {
    origin_limit_on(18, "max_active_replication_origins", 2).await;
}

/// Before 18, max_replication_slots bounds replication origins too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg17_check_counts_origins_against_max_replication_slots() {
    origin_limit_on(17, "max_replication_slots", 3).await;
}

/// What 18 runs with by default: ten origins, apart from the slots, and no idle timeout;
/// walshift's check passes and its run works. Checked to fail: with check's origin limit read as
/// 0 on 18 (src/catalog/server.rs), check refuses here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg18_default_origin_limit_and_idle_timeout_are_off_walshifts_path() {
    let Some(cluster) = cluster_of(18, &[]).await else {
        return;
    };
    let (db, c) = setup(&cluster, "v18defaults", 1000).await;
    assert_eq!(
        text(&c, "SHOW max_active_replication_origins")
            .await
            .as_deref(),
        Some("10")
    );
    assert_eq!(
        text(&c, "SHOW idle_replication_slot_timeout")
            .await
            .as_deref(),
        Some("0"),
        "idle slots are not invalidated by default"
    );
    let spec = Spec::new("v18", USERS_MIRROR);
    let check = cli(&["check"], &spec, &db).await;
    assert_eq!(check.code(), Some(0), "{check}");
    let run = Run::spawn(&spec, &db);
    mirrored(&c, "the backfill").await;
    run.stop().await;
}

// --- PostgreSQL 18: idle_replication_slot_timeout ----------------------------------------------

/// 18 invalidates a slot left idle longer than idle_replication_slot_timeout, at a checkpoint.
/// A running walshift's slot is never idle; a stopped one's is: status shows it lost, check
/// says run resynchronises (or, under on_slot_lost = "stop", stops), and run does.
///
/// Checked to fail: with walshift stopped before the first CHECKPOINT, the running-slot
/// assertion sees (idle_timeout, lost); before src/catalog/server.rs looked at the slot's
/// wal_status, check passed with "run resumes from it" and run retried forever against
/// "can no longer access replication slot".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg18_idle_slot_timeout_spares_a_running_slot_and_check_refuses_a_lost_one() {
    let Some(cluster) = cluster_of(18, &[("idle_replication_slot_timeout", "1s")]).await else {
        return;
    };
    let (db, c) = setup(&cluster, "v18idle", 1000).await;
    let spec = Spec::new("idle", USERS_MIRROR);
    let slot = spec.object();
    let run = Run::spawn(&spec, &db);
    mirrored(&c, "the backfill").await;
    wait_caught_up(&run, &c).await;
    let reason =
        "SELECT invalidation_reason, wal_status FROM pg_replication_slots WHERE slot_name = $1";

    tokio::time::sleep(Duration::from_millis(2500)).await;
    c.batch_execute("CHECKPOINT").await.unwrap();
    let row = c.query_one(reason, &[&slot]).await.unwrap();
    let (why, wal): (Option<String>, String) = (row.get(0), row.get(1));
    assert_eq!(
        (why.as_deref(), wal.as_str()),
        (None, "reserved"),
        "the running slot"
    );
    c.execute(
        "UPDATE users SET is_active = NOT is_active WHERE id <= 10",
        &[],
    )
    .await
    .unwrap();
    mirrored(&c, "a write past the timeout").await;

    run.stop().await;
    wait_inactive(&c, &slot).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    c.batch_execute("CHECKPOINT").await.unwrap();
    let row = c.query_one(reason, &[&slot]).await.unwrap();
    let (why, wal): (Option<String>, String) = (row.get(0), row.get(1));
    assert_eq!(
        (why.as_deref(), wal.as_str()),
        (Some("idle_timeout"), "lost"),
        "the stopped slot, idle past the timeout"
    );
    let status = status_json(&spec, &db).await;
    assert_eq!(status["slot"]["wal_status"], "lost", "{status}");

    // check says so, and run resynchronises by itself (docs/topology.md) instead of resuming
    // from a dead slot; under on_slot_lost = "stop" check says run stops, naming the way out.
    let check = cli(&["check"], &spec, &db).await;
    assert_eq!(check.code(), Some(0), "{check}");
    assert!(
        check.stdout.contains(&format!(
            "slot {slot} was invalidated by the server (idle_timeout): run resynchronises"
        )),
        "{check}"
    );
    let stopping = Spec::new(
        "idle",
        &format!("{USERS_MIRROR}\n[safety]\non_slot_lost = \"stop\"\n"),
    );
    let check = cli(&["check"], &stopping, &db).await;
    assert_eq!(check.code(), Some(0), "{check}");
    assert!(
        check.stdout.contains(&format!(
            "slot {slot} was invalidated by the server (idle_timeout): run stops"
        )),
        "{check}"
    );
    c.execute(
        "UPDATE users SET is_active = NOT is_active WHERE id <= 10",
        &[],
    )
    .await
    .unwrap();
    let run = Run::spawn(&spec, &db);
    mirrored(
        &c,
        "the writes after the slot was lost, by a run that resynchronised",
    )
    .await;
    assert!(
        run.stderr().contains("invalidation_reason = idle_timeout"),
        "{}",
        run.stderr()
    );
    run.stop().await;
}
