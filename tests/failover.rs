//! Failover (docs/topology.md): a primary killed under load, its physical standby promoted, and
//! walshift started again against the new primary, or (17) one run given both hosts following
//! the promotion by itself.
//!
//! ```text
//!  primary (killed: immediate stop) ──streaming, physical slot──▶ standby (promoted)
//!     ▲ walshift run #1, writer                                     ▲ walshift run #2, writer
//! ```
//!
//! - PostgreSQL 17: walshift's slot is a failover slot, the standby syncs it
//!   (`sync_replication_slots`), the primary holds logical decoding back for the standby
//!   (`synchronized_standby_slots`). walshift continues from the synced copy: no resync.
//! - PostgreSQL 16: no failover slots. The promoted standby has no walshift slot, the state row
//!   (replicated with the data) records a consistent point, so walshift resynchronises.
//!
//! Either way the targets end exact on the new primary, judged by plain SQL over source and
//! target. Replication is asynchronous: writes the old primary acknowledged that never reached
//! the standby are lost to everyone; the test counts them and prints the figures
//! (`FAILOVER ...` lines) docs/topology.md quotes.
//!
//! Each test needs its own major's binaries, found as tests/versions.rs finds them
//! (`support::majors`); under CI a missing major fails, elsewhere the test is skipped.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::cli::{cli, one_i64, status_json};
use support::fixtures::{SCHEMA, USERS_MIRROR};
use support::process::{Run, Spec};
use support::{Cluster, Database, majors, poll, wait_backfill_done, wait_caught_up, wrong_status};
use tokio::sync::watch;

/// Where the writer writes: a generation (0 = the old primary, 1 = the promoted standby) and
/// the database, or `None` while there is no primary.
type Target = Option<(u32, Database)>;

/// What the writer got acknowledged, by generation.
#[derive(Default)]
struct Acked {
    /// Ids of users inserted and committed, per generation.
    inserted: [Vec<i64>; 2],
    /// Committed updates, per generation.
    updates: [u64; 2],
}

/// A writer task: inserts a user and flips another's `is_active` every few milliseconds,
/// autocommit, on whatever `target` says; a failed statement (the primary died) drops the
/// connection and it connects again to the current target.
fn spawn_writer(
    target: watch::Receiver<Target>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Acked> {
    tokio::spawn(async move {
        let mut acked = Acked::default();
        let mut next_id: i64 = 1_000_000;
        while !stop.load(Ordering::Relaxed) {
            let Some((generation, db)) = target.borrow().clone() else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let Ok(c) = db.try_connect().await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let g = generation as usize;
            while !stop.load(Ordering::Relaxed) {
                next_id += 1;
                let insert = c
                    .execute(
                        "INSERT INTO users (id, is_active) VALUES ($1::bigint, $1::bigint % 2 = 0)",
                        &[&next_id],
                    )
                    .await;
                if let Err(e) = insert {
                    eprintln!("writer (generation {generation}): {e:?}; connecting again");
                    break;
                }
                acked.inserted[g].push(next_id);
                let flip = c
                    .execute(
                        "UPDATE users SET is_active = NOT is_active WHERE id = $1",
                        &[&(next_id % 3000 + 1)],
                    )
                    .await;
                if let Err(e) = flip {
                    eprintln!("writer (generation {generation}): {e:?}; connecting again");
                    break;
                }
                acked.updates[g] += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        acked
    })
}

/// Settings for the standby: what a failover slot's copy needs (docs/topology.md); 16 has no
/// `sync_replication_slots`.
fn standby_settings(major: u32) -> Vec<(&'static str, &'static str)> {
    let mut settings = vec![("hot_standby_feedback", "on")];
    if major >= 17 {
        settings.push(("sync_replication_slots", "on"));
    }
    settings
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// walshift's slot on a server: (failover, synced, temporary, invalidated), `None` if absent.
async fn slot_row(c: &tokio_postgres::Client, slot: &str) -> Option<(bool, bool, bool, bool)> {
    c.query_opt(
        "SELECT coalesce((to_jsonb(s)->>'failover')::bool, false),
                coalesce((to_jsonb(s)->>'synced')::bool, false),
                temporary,
                wal_status = 'lost' OR to_jsonb(s)->>'invalidation_reason' IS NOT NULL
         FROM pg_replication_slots AS s WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .expect("pg_replication_slots")
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
}

/// Whether `slot` exists and a walsender holds it (the mirror tests' `slot_active`, as a bool).
async fn slot_active(c: &tokio_postgres::Client, slot: &str) -> bool {
    support::mirror::waits::slot_active(c, slot).await == Some(true)
}

/// On 17: the standby's copy of `slot` is synced, not temporary, valid, and has caught up with
/// the primary's confirmed position as it is now.
async fn wait_synced_copy(primary: &tokio_postgres::Client, standby: &Database, slot: &str) {
    let on_standby = standby.connect().await;
    let confirmed: String = primary
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    poll(
        None,
        "the standby's synced copy of walshift's slot",
        Duration::from_secs(60),
        || async {
            let copy = on_standby
                .query_opt(
                    "SELECT synced AND NOT temporary AND invalidation_reason IS NULL
                            AND confirmed_flush_lsn >= $2::text::pg_lsn
                     FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot, &confirmed],
                )
                .await
                .unwrap();
            copy.is_some_and(|r| r.get::<_, Option<bool>>(0) == Some(true))
        },
    )
    .await;
}

/// A primary of `major` (binaries in `dir`) with `users` 1..=3000 in a fresh database, and its
/// standby set up for failover slots (17+: the primary's `synchronized_standby_slots` names the
/// standby's physical slot). Drop the standby first.
async fn start_pair(major: u32, dir: std::path::PathBuf) -> (Cluster, Cluster, Database) {
    let primary = blocking(move || {
        Cluster::builder()
            .bin_dir(dir)
            // Replies every second, so the primary sees the standby's flush position promptly.
            .setting("wal_receiver_status_interval", "1s")
            .start()
    })
    .await
    .unwrap_or_else(|e| panic!("start PostgreSQL {major}: {e}"));
    assert_eq!(primary.version_num() / 10000, major, "the binaries found");
    let db = primary.fresh_database_named("failover").expect("database");
    let c = db.connect().await;
    c.batch_execute(SCHEMA).await.expect("schema");
    c.execute(
        "INSERT INTO users (id, is_active) SELECT g, g % 3 = 0 FROM generate_series(1, 3000) g",
        &[],
    )
    .await
    .expect("users");

    // The base backup and the standby's start block: off the async workers.
    let standby =
        tokio::task::block_in_place(|| primary.start_standby_with(&standby_settings(major)))
            .expect("start the standby");
    if major >= 17 {
        // Set after the base backup, so the standby (once promoted) does not wait for a slot
        // it does not have.
        let physical = standby.primary_slot_name().expect("a standby");
        c.batch_execute(&format!(
            "ALTER SYSTEM SET synchronized_standby_slots = '{physical}'"
        ))
        .await
        .unwrap();
        c.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    }
    (primary, standby, db)
}

/// How many of `ids` are not in `users`.
async fn missing(c: &tokio_postgres::Client, ids: &[i64]) -> i64 {
    c.query_one(
        "SELECT count(*) FROM unnest($1::bigint[]) AS a(id)
         WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = a.id)",
        &[&ids],
    )
    .await
    .unwrap()
    .get(0)
}

/// Resumed from the synced slot (`failover_slots`) or resynchronised, as the major allows:
/// walshift's log (`log`), its state row and `status` on the new primary all say the same.
async fn how_it_resumed(
    failover_slots: bool,
    log: &str,
    c: &tokio_postgres::Client,
    spec: &Spec,
    db: &Database,
) {
    let resyncs = one_i64(
        c,
        &format!(
            "SELECT slot_resyncs::bigint FROM walshift.migration WHERE name = '{}'",
            spec.name
        ),
    )
    .await;
    let s = status_json(spec, db).await;
    let text = cli(&["status"], spec, db).await;
    if failover_slots {
        assert!(
            !log.contains("resynchronis"),
            "walshift resynchronised although the synced slot survived:\n{log}"
        );
        assert_eq!(resyncs, 0, "{log}");
        assert!(!text.stdout.contains("resynced"), "{text}");
        assert_eq!(s["slot"]["resyncs"].as_i64().unwrap_or(0), 0, "{s}");
    } else {
        let warned = log
            .lines()
            .find(|l| l.contains("WARN") && l.contains("resynchronised after the slot was lost"))
            .unwrap_or_else(|| panic!("no warning of the resync:\n{log}"));
        assert!(warned.contains("gone"), "{warned}");
        assert_eq!(resyncs, 1, "{log}");
        assert!(
            text.stdout.contains("resynced:  after slot lost at "),
            "{text}"
        );
        assert_eq!(s["slot"]["resyncs"], 1, "{s}");
    }
}

/// The whole scenario on `major`; `failover_slots` says whether walshift continues from a
/// synced copy (17+) or resynchronises (16).
async fn failover_on(major: u32) {
    let Some(dir) = majors::required(major, "tests/failover.rs") else {
        return;
    };
    let failover_slots = major >= 17;
    let (primary, standby, db) = start_pair(major, dir).await;
    let physical = standby.primary_slot_name().expect("a standby").to_owned();
    let c = db.connect().await;
    let on_standby_db = standby.database(db.name());

    let spec = Spec::new(&format!("fo{major}"), USERS_MIRROR);
    let slot = spec.object();
    let first = Run::spawn(&spec, &db);
    poll(
        None,
        "the backfill's mirror",
        Duration::from_secs(60),
        || async { wrong_status(&c).await == 0 },
    )
    .await;
    wait_backfill_done(&c, &spec.name).await;
    wait_caught_up(&first, &c).await;

    let on_primary = slot_row(&c, &slot).await.expect("walshift's slot");
    assert_eq!(
        on_primary.0, failover_slots,
        "walshift's slot on {major} is a failover slot exactly from 17 on"
    );
    if failover_slots {
        let s = status_json(&spec, &db).await;
        assert_eq!(s["slot"]["failover"], true, "{s}");
        assert_eq!(s["slot"]["synchronized_standby_slots"], physical, "{s}");
        let since = Instant::now();
        wait_synced_copy(&c, &on_standby_db, &slot).await;
        eprintln!(
            "FAILOVER PostgreSQL {major}: the standby's copy was synced and caught up {} ms after \
             walshift had caught up",
            since.elapsed().as_millis()
        );
    } else {
        let copy = slot_row(&on_standby_db.connect().await, &slot).await;
        assert_eq!(
            copy, None,
            "16 keeps no copy of a logical slot on a standby"
        );
    }

    // Load on the primary, mirrored live, for a while.
    let (to, target) = watch::channel::<Target>(Some((0, db.clone())));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(target, Arc::clone(&stop));
    poll(
        None,
        "writes on the old primary",
        Duration::from_secs(30),
        || async { one_i64(&c, "SELECT count(*) FROM users WHERE id > 1000000").await > 200 },
    )
    .await;
    if failover_slots {
        // The copy keeps following while the load runs.
        wait_synced_copy(&c, &on_standby_db, &slot).await;
    }

    // The primary dies under load.
    to.send_replace(None);
    drop(c);
    primary.crash();
    let killed = Instant::now();
    // The run cannot reach the dead host and retries; stop it. With both hosts in its `--db`
    // (`host=a,b target_session_attrs=read-write`) the same run follows the promotion by
    // itself: pg17_one_run_follows_the_promotion_through_its_host_list.
    assert!(first.still_running(), "{}", first.stderr());
    first.sigterm();
    first.exit(Duration::from_secs(30)).await;

    // pg_promote waits in the server and the harness's query blocks: off the async workers.
    tokio::task::block_in_place(|| standby.promote()).expect("promote the standby");
    let promoted = killed.elapsed();
    let c = on_standby_db.connect().await;
    to.send_replace(Some((1, on_standby_db.clone())));

    // What the promoted standby holds of walshift's slot.
    let copy = slot_row(&c, &slot).await;
    if failover_slots {
        let (failover, synced, temporary, invalidated) =
            copy.expect("the synced copy survives the promotion");
        assert!(
            failover && synced && !temporary && !invalidated,
            "the new primary's slot is the synced failover copy: {copy:?}"
        );
    } else {
        assert_eq!(copy, None, "no copy on 16");
    }
    let state_rows = one_i64(
        &c,
        "SELECT count(*) FROM walshift.migration WHERE consistent_point IS NOT NULL",
    )
    .await;
    assert_eq!(state_rows, 1, "the state row came over with the data");

    // walshift again, against the new primary.
    let restarted = Instant::now();
    let second = Run::spawn(&spec, &on_standby_db);
    poll(
        None,
        "walshift streaming from the new primary",
        Duration::from_secs(60),
        || async { slot_active(&c, &slot).await },
    )
    .await;
    let streaming = restarted.elapsed();
    wait_caught_up(&second, &c).await;
    let caught_up = restarted.elapsed();

    // The load goes on against the new primary for a while, then stops.
    let base = one_i64(&c, "SELECT count(*) FROM users WHERE id > 1000000").await;
    poll(
        None,
        "writes on the new primary",
        Duration::from_secs(30),
        || async {
            one_i64(&c, "SELECT count(*) FROM users WHERE id > 1000000").await > base + 200
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.expect("writer");
    assert!(
        !acked.inserted[1].is_empty(),
        "the writer wrote to the new primary"
    );
    if !failover_slots {
        wait_backfill_done(&c, &spec.name).await;
    }
    wait_caught_up(&second, &c).await;
    assert_eq!(
        wrong_status(&c).await,
        0,
        "users.status is not the mapping of is_active on the new primary"
    );
    assert!(second.still_running(), "{}", second.stderr());

    // Writes acknowledged by the old primary that the standby never received.
    let lost = missing(&c, &acked.inserted[0]).await;
    let lost_new = missing(&c, &acked.inserted[1]).await;
    assert_eq!(lost_new, 0, "the new primary lost none of its own writes");

    how_it_resumed(failover_slots, &second.stderr(), &c, &spec, &on_standby_db).await;
    eprintln!(
        "FAILOVER PostgreSQL {major}: {} walshift run #2 streaming {} ms and caught up {} ms after \
         it started; standby promoted {} ms after the kill; writer acknowledged {} inserts and {} \
         updates on the old primary, {} of those inserts lost to asynchronous replication; {} \
         inserts and {} updates on the new primary",
        if failover_slots {
            "continued from the synced slot;"
        } else {
            "resynchronised (no copy on 16);"
        },
        streaming.as_millis(),
        caught_up.as_millis(),
        promoted.as_millis(),
        acked.inserted[0].len(),
        acked.updates[0],
        lost,
        acked.inserted[1].len(),
        acked.updates[1],
    );

    second.sigterm();
    let code = second.exit(Duration::from_secs(30)).await;
    assert!(code.success(), "{code}\n{}", second.stderr());
    drop(c);
    // The standby first: its teardown looks for its slot on the (dead) primary.
    drop(standby);
}

/// Guards failover slots on 17: the standby keeps a synced copy of walshift's slot; after the
/// primary is killed under load and the standby promoted, walshift continues from that copy
/// (no resync: nothing in its log, status or state says so) and ends exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg17_failover_continues_from_the_synced_slot_and_ends_exact() {
    failover_on(17).await;
}

/// Guards the lost-slot path of a promotion on 16, which has no failover slots: the promoted
/// standby has no walshift slot, walshift resynchronises (status shows it) and ends exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg16_failover_resynchronises_on_the_promoted_standby_and_ends_exact() {
    failover_on(16).await;
}

/// `host=<primary>,<standby> port=...,... target_session_attrs=read-write`: the two
/// servers' conninfos joined into one host list, the rest as the first has it.
fn host_list(first: &str, second: &str) -> String {
    let value = |conninfo: &str, key: &str| -> String {
        conninfo
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} in {conninfo}"))
            .to_string()
    };
    let rest: Vec<&str> = first
        .split_whitespace()
        .filter(|kv| !kv.starts_with("host=") && !kv.starts_with("port="))
        .collect();
    format!(
        "host={},{} port={},{} target_session_attrs=read-write {}",
        value(first, "host"),
        value(second, "host"),
        value(first, "port"),
        value(second, "port"),
        rest.join(" ")
    )
}

/// Guards following a promotion without a restart on 17: one `walshift run` given both
/// servers (`target_session_attrs=read-write`) loses its primary under load, retries while
/// the standby is still read-only, finds the promoted standby by itself, continues from the
/// synced slot (no resync) and ends exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg17_one_run_follows_the_promotion_through_its_host_list() {
    let Some(dir) = majors::required(17, "tests/failover.rs") else {
        return;
    };
    let (primary, standby, db) = start_pair(17, dir).await;
    let c = db.connect().await;
    let on_standby_db = standby.database(db.name());
    let spec = Spec::new("fo17-follow", USERS_MIRROR);
    let slot = spec.object();
    let both = host_list(&db.conninfo(), &on_standby_db.conninfo());
    let run = Run::on(&spec, &both).spawn();
    wait_backfill_done(&c, &spec.name).await;
    poll(None, "the stream", Duration::from_secs(30), || async {
        slot_active(&c, &slot).await
    })
    .await;
    wait_caught_up(&run, &c).await;
    wait_synced_copy(&c, &on_standby_db, &slot).await;

    // status and check, given both hosts, ask the standby about its copy.
    let both_cli = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_walshift"));
        cmd.arg(args[0])
            .arg(&spec.path)
            .args(&args[1..])
            .args(["--db", &both])
            .env_remove("WALSHIFT_DB");
        cmd
    };
    let out = both_cli(&["status", "--json"]).output().await.unwrap();
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    let standbys = s["slot"]["standbys"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(standbys.len(), 1, "{s}");
    assert_eq!(
        standbys[0]["ready"], true,
        "the standby's copy is ready: {s}"
    );
    let out = both_cli(&["check", "--scan", "off"])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("failover: failover slot;") && l.contains(" ready: ")),
        "{text}"
    );

    let (to, target) = watch::channel::<Target>(Some((0, db.clone())));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(target, Arc::clone(&stop));
    poll(
        None,
        "writes on the old primary",
        Duration::from_secs(30),
        || async { one_i64(&c, "SELECT count(*) FROM users WHERE id > 1000000").await > 200 },
    )
    .await;
    wait_synced_copy(&c, &on_standby_db, &slot).await;

    to.send_replace(None);
    drop(c);
    primary.crash();
    let killed = Instant::now();
    tokio::task::block_in_place(|| standby.promote()).expect("promote the standby");
    let c = on_standby_db.connect().await;
    to.send_replace(Some((1, on_standby_db.clone())));
    // The same run, through its host list (its reconnect backoff is at most 30 s).
    poll(
        None,
        "the same run streaming from the new primary",
        Duration::from_secs(90),
        || async { slot_active(&c, &slot).await },
    )
    .await;
    let followed = killed.elapsed();
    let base = one_i64(&c, "SELECT count(*) FROM users WHERE id > 1000000").await;
    poll(
        None,
        "writes on the new primary",
        Duration::from_secs(30),
        || async {
            one_i64(&c, "SELECT count(*) FROM users WHERE id > 1000000").await > base + 200
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    wait_caught_up(&run, &c).await;
    assert_eq!(
        wrong_status(&c).await,
        0,
        "users.status is not the mapping of is_active on the new primary"
    );
    let log = run.stop_within(Duration::from_secs(20)).await;
    how_it_resumed(true, &log, &c, &spec, &on_standby_db).await;
    eprintln!(
        "FAILOVER PostgreSQL 17: one run followed the promotion through its host list, streaming \
         from the new primary {} ms after the kill",
        followed.as_millis()
    );
    drop(c);
    drop(standby);
}
