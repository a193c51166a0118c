//! Multi-host connection strings and dead links, against the harness's real
//! server behind a TCP relay that can refuse, black-hole and cut
//! connections (tests/support/network/relay.rs).
//!
//! - which host every kind of session picks from a list, and the one-line
//!   error when none fits;
//! - `walshift run` behind a dead host and a standby;
//! - a write load while the relay black-holes every connection at random
//!   moments: walshift keeps going, and the target ends exact by SQL of
//!   the test's own;
//! - how soon a black-holed stream is noticed (measured and printed), and
//!   that without the receive timeout it never is (a planted bug).

mod support;

use std::time::{Duration, Instant};

use support::fixtures::{SCHEMA, USERS_MIRROR};
use support::network::relay::Relay;
use support::network::{Writer, credentials, refusing_port, run_on, server_socket, via_relay};
use support::process::Spec;
use support::{Cluster, Database, fresh_db, poll, shared_cluster, wrong_status};
use walshift::conninfo::ConnConfig;
use walshift::replication::ReplicationClient;

/// Short bounds so a dead link shows within seconds: the server's
/// wal_sender_timeout (the stream's receive timeout is it plus the status
/// interval, 2 s + 0.8 s), tcp_user_timeout (also how long a request may
/// go unanswered before the SQL watchdog probes), keepalives, and a
/// connect_timeout for hosts that accept and never answer.
const SHORT: &str = "options='-c wal_sender_timeout=2s' tcp_user_timeout=2000 keepalives_idle=1 \
                     keepalives_interval=1 keepalives_count=2 connect_timeout=2";
/// The stream's receive timeout under [`SHORT`].
const STREAM_BOUND: Duration = Duration::from_millis(2800);

/// A standby of the shared cluster, streaming, with `db` replayed.
async fn standby_with(db: &Database) -> Cluster {
    let standby = tokio::task::spawn_blocking(|| shared_cluster().start_standby())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("start a standby: {e}"));
    let on_standby = standby.database(db.name());
    poll(
        None,
        "the database on the standby",
        Duration::from_secs(30),
        || {
            let d = on_standby.clone();
            async move { d.try_connect().await.is_ok() }
        },
    )
    .await;
    standby
}

/// The unix-socket host and port of `cluster`, for a host list.
fn socket_host(cluster: &Cluster) -> (String, u16) {
    (cluster.socket_dir().display().to_string(), cluster.port())
}

/// The port the session's server listens on.
async fn sql_port(conninfo: &str) -> Result<u16, String> {
    let c = ConnConfig::parse(conninfo)
        .map_err(|e| e.to_string())?
        .connect_sql()
        .await
        .map_err(|e| e.to_string())?;
    let port: String = c.query_one("SHOW port", &[]).await.unwrap().get(0);
    Ok(port.parse().unwrap())
}

async fn replication_port(conninfo: &str) -> Result<u16, String> {
    let config = ConnConfig::parse(conninfo).map_err(|e| e.to_string())?;
    let mut c = ReplicationClient::connect(&config)
        .await
        .map_err(|e| e.to_string())?;
    let rows = c.simple_query("SHOW port").await.unwrap();
    let port = rows[0].values()[0].clone().unwrap().parse().unwrap();
    c.close().await.unwrap();
    Ok(port)
}

/// Host lists with a black hole (accepts, never answers), a refused port,
/// a standby and the primary: each `target_session_attrs` picks its host,
/// for SQL sessions and the replication connection alike, in the
/// key=value form and the URL form.
#[tokio::test(flavor = "multi_thread")]
async fn each_rule_picks_its_host_for_both_kinds_of_session() {
    let db = fresh_db().await;
    let standby = standby_with(&db).await;
    let primary = shared_cluster();
    let hole = Relay::start(server_socket(primary)).await;
    hole.black_hole_new(true);
    let refused = refusing_port();
    let (sdir, sport) = socket_host(&standby);
    let (pdir, pport) = socket_host(primary);
    let list = |rule: &str| {
        format!(
            "host=127.0.0.1,127.0.0.1,{sdir},{pdir} port={},{refused},{sport},{pport} \
             connect_timeout=1 sslmode=disable target_session_attrs={rule} {}",
            hole.port(),
            credentials(&db)
        )
    };
    for (rule, want) in [
        ("any", sport),
        ("read-write", pport),
        ("primary", pport),
        ("read-only", sport),
        ("standby", sport),
        ("prefer-standby", sport),
    ] {
        let started = Instant::now();
        assert_eq!(sql_port(&list(rule)).await, Ok(want), "SQL, {rule}");
        assert_eq!(
            replication_port(&list(rule)).await,
            Ok(want),
            "replication, {rule}"
        );
        // The black hole costs its connect_timeout, once per session.
        assert!(started.elapsed() >= Duration::from_secs(2), "{rule}");
    }
    // The URL form: a refused host, then the primary over TCP (a second
    // relay, passing).
    let pass = Relay::start(server_socket(primary)).await;
    let url = format!(
        "postgresql://127.0.0.1:{refused},127.0.0.1:{}/{}?user={}&sslmode=disable&target_session_attrs=primary",
        pass.port(),
        db.name(),
        primary.superuser()
    );
    assert_eq!(sql_port(&url).await, Ok(pport), "SQL, URL form");
    assert_eq!(
        replication_port(&url).await,
        Ok(pport),
        "replication, URL form"
    );
    drop(standby);
}

/// When no host fits, both kinds of session fail with one line naming
/// every host tried and why, and so do walshift's commands.
#[tokio::test(flavor = "multi_thread")]
async fn no_fitting_host_is_one_line_naming_every_host() {
    let db = fresh_db().await;
    let standby = standby_with(&db).await;
    let refused = refusing_port();
    let (sdir, sport) = socket_host(&standby);
    let conninfo = format!(
        "host=127.0.0.1,{sdir} port={refused},{sport} sslmode=disable target_session_attrs=read-write {}",
        credentials(&db)
    );
    let want = format!(
        "no host fits target_session_attrs=read-write (tried 127.0.0.1:{refused}: Connection refused \
         (os error 111); {sdir}/.s.PGSQL.{sport}: read-only (transaction_read_only is on))"
    );
    assert_eq!(sql_port(&conninfo).await, Err(want.clone()));
    let e = replication_port(&conninfo).await.unwrap_err();
    assert!(
        e.starts_with("no host fits target_session_attrs=read-write (tried 127.0.0.1:")
            && e.contains(&format!(
                "{sdir}/.s.PGSQL.{sport}: read-only (transaction_read_only is on))"
            ))
            && !e.contains('\n'),
        "{e}"
    );

    let spec = Spec::new("net-none-fits", USERS_MIRROR);
    let out = tokio::process::Command::new(support::process::BIN)
        .args(["check"])
        .arg(&spec.path)
        .args(["--db", &conninfo])
        .env_remove("WALSHIFT_DB")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&want), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    drop(standby);
}

/// `walshift run` with a dead host and a standby before the primary:
/// every session (setup, apply, stream, control, lag) finds the primary
/// and live writes are mirrored.
#[tokio::test(flavor = "multi_thread")]
async fn run_finds_the_primary_behind_a_dead_host_and_a_standby() {
    let db = fresh_db().await;
    let admin = db.connect().await;
    admin.batch_execute(SCHEMA).await.unwrap();
    let standby = standby_with(&db).await;
    let primary = shared_cluster();
    let hole = Relay::start(server_socket(primary)).await;
    hole.black_hole_new(true);
    let (sdir, sport) = socket_host(&standby);
    let (pdir, pport) = socket_host(primary);
    let conninfo = format!(
        "host=127.0.0.1,{sdir},{pdir} port={},{sport},{pport} connect_timeout=1 sslmode=disable \
         target_session_attrs=read-write {}",
        hole.port(),
        credentials(&db)
    );
    let spec = Spec::new("net-multi-host", USERS_MIRROR);
    let run = run_on(&spec, &conninfo, &[]);
    run.wait_log(" streaming slot=", 0, Duration::from_secs(60))
        .await
        .expect("walshift streams");
    admin
        .batch_execute(
            "INSERT INTO users (id, is_active) SELECT g, g % 2 = 0 FROM generate_series(1, 100) g",
        )
        .await
        .unwrap();
    poll(
        None,
        "the writes mirrored",
        Duration::from_secs(30),
        || async { wrong_status(&admin).await == 0 },
    )
    .await;
    let on_standby = standby.database(db.name()).connect().await;
    let slots: i64 = on_standby
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "nothing was created on the standby");
    assert!(hole.accepted() > 0, "the dead host was tried");
    run.stop().await;
}

/// How many `walshift-apply` backends the server has for `db`.
async fn apply_backends(admin: &tokio_postgres::Client, db: &Database) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'walshift-apply'",
            &[&db.name()],
        )
        .await
        .unwrap()
        .get(0)
}

/// Under a write load (and with history to backfill), the relay
/// black-holes every connection at random moments, and cuts them once.
/// walshift notices each dead link, starts new sessions, and once caught
/// up the target is exact by the test's own SQL; the backends of the
/// black-holed sessions (which the relay keeps open on the server's side,
/// as a middlebox would) are terminated, so no dead apply session lingers.
#[tokio::test(flavor = "multi_thread")]
async fn black_holes_under_load_end_exact() {
    let (db, admin) = support::cli::setup(3000, 0).await;
    let relay = Relay::start(server_socket(shared_cluster())).await;
    let spec = Spec::new("net-load", USERS_MIRROR);
    let run = run_on(&spec, &via_relay(&db, relay.port(), SHORT), &[]);
    run.wait_log(" streaming slot=", 0, Duration::from_secs(60))
        .await
        .expect("walshift streams");
    let writer = Writer::start(&db, 1_000_000).await;
    // Pseudo-random moments, the same every run.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for round in 0..5 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let pause = Duration::from_millis(300 + x % 2000);
        tokio::time::sleep(pause).await;
        let streams = run.count(" streaming slot=");
        let n = if round == 2 {
            relay.cut_all()
        } else {
            relay.black_hole_all()
        };
        let took = run
            .wait_log(" streaming slot=", streams, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("round {round}: walshift did not stream again within 30 s"));
        println!(
            "round {round}: {} {n} connections after {pause:?}; streaming again after {:.2} s",
            if round == 2 { "cut" } else { "black-holed" },
            took.as_secs_f64()
        );
    }
    let txns = writer.finish().await;
    assert!(txns > 100, "the writer committed only {txns} transactions");
    support::wait_backfill_done(&admin, &spec.name).await;
    support::wait_caught_up(&run, &admin).await;
    // The judge: every row's status is the mapping of its is_active, by a
    // query of the test's own, and every row written is there.
    assert_eq!(wrong_status(&admin).await, 0);
    let rows: i64 = admin
        .query_one("SELECT count(*) FROM users WHERE status IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 3000 + txns as i64);
    let log = run.stderr();
    let dead = log.matches("dead link").count();
    assert!(dead >= 4, "{dead} dead links noticed:\n{log}");
    for session in ["stream", "apply", "control", "lag"] {
        let sql = log
            .matches(&format!("dropping the session session=\"{session}\""))
            .count();
        let stream = log
            .matches("nothing arrived on the replication stream within")
            .count();
        println!(
            "dead links noticed, {session}: {}",
            if session == "stream" { stream } else { sql }
        );
    }
    // The relay keeps every black-holed backend's socket open: only
    // pg_terminate_backend ends them.
    poll(
        None,
        "one apply backend left",
        Duration::from_secs(20),
        || async { apply_backends(&admin, &db).await == 1 },
    )
    .await;
    let stopped = run.stop().await;
    assert!(
        stopped.contains("terminated the backend of a dead link"),
        "{stopped}"
    );
}

/// A black-holed stream (the relay swallows everything, TCP stays up) is
/// noticed within its bound: wal_sender_timeout 2 s plus the status
/// interval 0.8 s. Prints the figure measured.
#[tokio::test(flavor = "multi_thread")]
async fn a_black_holed_stream_is_noticed_within_its_bound() {
    let (db, admin) = support::cli::setup(10, 0).await;
    let relay = Relay::start(server_socket(shared_cluster())).await;
    let spec = Spec::new("net-bound", USERS_MIRROR);
    let run = run_on(&spec, &via_relay(&db, relay.port(), SHORT), &[]);
    run.wait_log(" streaming slot=", 0, Duration::from_secs(60))
        .await
        .expect("walshift streams");
    support::wait_backfill_done(&admin, &spec.name).await;
    const NOTICED: &str = "dead link: nothing arrived on the replication stream";
    let mut figures = Vec::new();
    for _ in 0..3 {
        let before = run.count(NOTICED);
        let streams = run.count(" streaming slot=");
        relay.black_hole_all();
        let took = run
            .wait_log(NOTICED, before, Duration::from_secs(20))
            .await
            .expect("the dead stream is noticed");
        figures.push(took);
        run.wait_log(" streaming slot=", streams, Duration::from_secs(30))
            .await
            .expect("walshift streams again");
    }
    for (i, f) in figures.iter().enumerate() {
        println!(
            "black-holed stream {i}: noticed after {:.2} s (bound {:.1} s)",
            f.as_secs_f64(),
            STREAM_BOUND.as_secs_f64()
        );
    }
    // The log is polled every 20 ms; a loaded machine gets a second more.
    for f in &figures {
        assert!(*f <= STREAM_BOUND + Duration::from_secs(1), "{figures:?}");
    }

    // And it still mirrors.
    admin
        .execute("UPDATE users SET is_active = NOT is_active", &[])
        .await
        .unwrap();
    support::wait_caught_up(&run, &admin).await;
    assert_eq!(wrong_status(&admin).await, 0);
    run.stop().await;
}

/// The planted bug: with no receive timeout, the same black hole is never
/// noticed. The walsender gives up on its own (it hears nothing either),
/// but walshift's end of the link stays open and silent, TCP keepalives
/// are answered by the relay's kernel, and the slot stays without a
/// consumer. This is how `a_black_holed_stream_is_noticed_within_its_bound`
/// fails without the feature.
#[tokio::test(flavor = "multi_thread")]
async fn planted_without_the_receive_timeout_a_black_holed_stream_hangs() {
    let (db, admin) = support::cli::setup(10, 0).await;
    let relay = Relay::start(server_socket(shared_cluster())).await;
    let spec = Spec::new("net-plant", USERS_MIRROR);
    let run = run_on(
        &spec,
        &via_relay(&db, relay.port(), SHORT),
        &["--unsafe-plant", "no-receive-timeout"],
    );
    run.wait_log(" streaming slot=", 0, Duration::from_secs(60))
        .await
        .expect("walshift streams");
    support::wait_backfill_done(&admin, &spec.name).await;
    relay.black_hole_all();
    let wait = STREAM_BOUND * 4;
    let noticed = run
        .wait_log(
            "dead link: nothing arrived on the replication stream",
            0,
            wait,
        )
        .await;
    assert_eq!(noticed, None, "the planted run noticed the dead stream");
    assert_eq!(
        run.count(" streaming slot="),
        1,
        "the planted run streamed again"
    );
    let active: bool = admin
        .query_one(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[&spec.object()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        !active,
        "the walsender timed out; nobody streams from the slot"
    );
    println!("planted: no dead link noticed within {wait:?}; the slot has no consumer");
}

/// No false alarm: an apply statement that waits on a row lock the
/// application holds, for three times `tcp_user_timeout`, is probed and
/// found `active`, so the session is left alone; once the lock goes the
/// target is exact.
#[tokio::test(flavor = "multi_thread")]
async fn a_statement_waiting_on_a_lock_is_not_a_dead_link() {
    let (db, admin) = support::cli::setup(0, 10).await;
    let relay = Relay::start(server_socket(shared_cluster())).await;
    let spec = Spec::new("net-lock", &support::fixtures::orders_mirror());
    let run = run_on(&spec, &via_relay(&db, relay.port(), SHORT), &[]);
    run.wait_log(" streaming slot=", 0, Duration::from_secs(60))
        .await
        .expect("walshift streams");
    support::wait_backfill_done(&admin, &spec.name).await;
    let holder = db.connect().await;
    holder
        .batch_execute("BEGIN; SELECT * FROM order_items WHERE order_id = 1 FOR UPDATE")
        .await
        .unwrap();
    admin
        .execute(
            "UPDATE orders SET items = '[{\"sku\": \"x\", \"qty\": 9}]' WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    poll(None, "the apply session waits on the lock", Duration::from_secs(20), || async {
        admin
            .query_opt(
                "SELECT 1 FROM pg_stat_activity WHERE datname = $1 AND application_name = 'walshift-apply'
                   AND state = 'active' AND wait_event_type = 'Lock'",
                &[&db.name()],
            )
            .await
            .unwrap()
            .is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(run.count("dead link"), 0, "{}", run.stderr());
    assert_eq!(run.count(" streaming slot="), 1, "{}", run.stderr());
    holder.batch_execute("COMMIT").await.unwrap();
    support::wait_caught_up(&run, &admin).await;
    // The mapping by the test's own SQL, both ways, as multisets.
    let diff = support::fixtures::order_items_qty_diff(&admin).await;
    assert_eq!(diff, 0);
    run.stop().await;
}
