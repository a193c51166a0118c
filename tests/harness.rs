//! The throwaway-PostgreSQL harness itself: what the server is configured with, that tests get
//! separate databases, that nothing outlives a panicking or killed test, that bad binaries are
//! reported clearly, and that dedicated clusters (hba lines, settings, TCP, passwords, TLS,
//! stop/start, standby) behave as their builder says.
//!
//! Tests that need a process to panic or be killed re-run this test binary as a child with
//! `WALSHIFT_HARNESS_CHILD=<test name>`; the child tests are `#[ignore]`d so that ordinary
//! runs skip them.

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Cluster, fresh_db, poll, poll_some, shared_cluster};
use walshift_cluster::{Rows, process_alive};

const CHILD_ENV: &str = "WALSHIFT_HARNESS_CHILD";
const REPORT: &str = "WALSHIFT_CHILD_CLUSTER";

fn show(cluster: &Cluster, setting: &str) -> String {
    let rows = cluster
        .exec_sql("postgres", &format!("SHOW {setting}"))
        .expect("SHOW");
    single(&rows).to_owned()
}

fn single(rows: &Rows) -> &str {
    rows.first()
        .and_then(|row| row.first())
        .and_then(|v| v.as_deref())
        .unwrap_or_else(|| panic!("expected one value, got {rows:?}"))
}

/// The server's own words for a failed connection (tokio-postgres displays only "db error").
fn server_message(err: &tokio_postgres::Error) -> String {
    err.as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_else(|| err.to_string())
}

/// Poll a synchronous condition (a process's or directory's fate) for up to five seconds.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn shared_cluster_is_logical_unsynced_and_private() {
    let cluster = shared_cluster();
    assert!(cluster.is_running());
    assert_eq!(show(cluster, "wal_level"), "logical");
    assert_eq!(show(cluster, "fsync"), "off");
    assert_eq!(show(cluster, "full_page_writes"), "off");
    // Real commit semantics are what the visibility-barrier tests depend on.
    assert_eq!(show(cluster, "synchronous_commit"), "on");
    assert_eq!(show(cluster, "max_replication_slots"), "40");
    assert_eq!(show(cluster, "max_wal_senders"), "40");
    assert_eq!(show(cluster, "max_connections"), "200");
    assert_eq!(show(cluster, "listen_addresses"), "");
    assert_eq!(
        show(cluster, "unix_socket_directories"),
        cluster.socket_dir().display().to_string()
    );
    assert!(
        cluster
            .socket_dir()
            .join(format!(".s.PGSQL.{}", cluster.port()))
            .exists()
    );
    assert_eq!(
        show(cluster, "server_version_num"),
        cluster.version_num().to_string()
    );
    assert_eq!(
        show(cluster, "data_directory"),
        cluster.data_dir().display().to_string()
    );
    assert!(cluster.bin_dir().join("postgres").is_file());
    assert_eq!(cluster.superuser(), "postgres");
    eprintln!(
        "shared cluster {} (server_version_num {}, {}) started in {:?}",
        cluster.name(),
        cluster.version_num(),
        cluster.bin_dir().display(),
        cluster.startup_time()
    );
}

#[tokio::test]
async fn fresh_databases_are_distinct() {
    let a = fresh_db().await;
    let b = fresh_db().await;
    assert_ne!(a.name(), b.name());
    assert!(
        a.name().contains("fresh_databases_are_distinct"),
        "{}",
        a.name()
    );
    assert!(a.conninfo().contains(&format!("dbname={}", a.name())));
    let (ca, cb) = (a.connect().await, b.connect().await);
    ca.batch_execute("CREATE TABLE only_in_a (id int)")
        .await
        .unwrap();
    let current: String = ca
        .query_one("SELECT current_database()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(current, a.name());
    let seen: Option<String> = cb
        .query_one("SELECT to_regclass('only_in_a')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        seen, None,
        "a table made in one fresh database is not in another"
    );
}

#[test]
fn server_runs_unprivileged_without_supplementary_groups() {
    let pid = shared_cluster()
        .postmaster_pid()
        .expect("running postmaster");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {status}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let uid: u32 = field("Uid:")[0].parse().unwrap();
    // SAFETY: geteuid has no preconditions.
    let our_uid = unsafe { libc::geteuid() };
    if our_uid == 0 {
        assert_ne!(uid, 0, "the server must not run as root");
        assert_eq!(
            field("Groups:"),
            Vec::<String>::new(),
            "root's supplementary groups were dropped"
        );
    } else {
        assert_eq!(
            uid, our_uid,
            "as a normal user the server runs as that user"
        );
    }
}

// ---- cleanup: a panicking test, a killed test run ----

fn child(test: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary path"));
    cmd.args([
        test,
        "--exact",
        "--include-ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, test);
    cmd
}

fn require_parent(test: &str) {
    assert_eq!(
        std::env::var(CHILD_ENV).as_deref(),
        Ok(test),
        "{test} is run as a child process by the harness tests, not on its own"
    );
}

fn report(cluster: &Cluster) {
    let dir = cluster.data_dir().parent().unwrap();
    let pid = cluster.postmaster_pid().expect("running postmaster");
    println!("{REPORT} {pid} {}", dir.display());
}

/// The text after `marker` on a line of the child's stdout. libtest prints "test name ... "
/// without a newline before the test's own output, so the marker may start mid-line.
fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.split_once(marker).map(|(_, rest)| rest.trim())
}

fn parse_report(line: &str) -> Option<(i32, PathBuf)> {
    let rest = after(line, REPORT)?;
    let (pid, dir) = rest.split_once(' ')?;
    Some((pid.parse().ok()?, PathBuf::from(dir)))
}

#[test]
#[ignore = "child of panicking_test_leaves_no_cluster_behind; panics on purpose"]
fn child_panics_holding_clusters() {
    require_parent("child_panics_holding_clusters");
    let dedicated = Cluster::builder().start().unwrap();
    report(&dedicated);
    report(shared_cluster());
    panic!("deliberate panic while a dedicated and the shared cluster run");
}

#[test]
fn panicking_test_leaves_no_cluster_behind() {
    let output = child("child_panics_holding_clusters").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "the child test must fail\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("deliberate panic") || stdout.contains("deliberate panic"),
        "{stdout}\n{stderr}"
    );
    let clusters: Vec<(i32, PathBuf)> = stdout.lines().filter_map(parse_report).collect();
    assert_eq!(
        clusters.len(),
        2,
        "dedicated and shared cluster reported\n{stdout}"
    );
    for (pid, dir) in clusters {
        eventually(&format!("postmaster {pid} is gone"), || !process_alive(pid));
        assert!(!dir.exists(), "{} was left behind", dir.display());
    }
}

/// The cluster a child reported on its stdout, read as soon as it is printed.
fn read_report(proc: &mut std::process::Child) -> (i32, PathBuf) {
    let stdout = BufReader::new(proc.stdout.take().expect("piped stdout"));
    let mut seen = Vec::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(report) = parse_report(&line) {
            return report;
        }
        seen.push(line);
    }
    panic!("child reported no cluster:\n{}", seen.join("\n"));
}

#[test]
#[ignore = "child of the killed/terminated test-run tests; waits to be killed"]
fn child_waits_to_be_killed() {
    require_parent("child_waits_to_be_killed");
    let cluster = Cluster::builder().start().unwrap();
    report(&cluster);
    std::thread::sleep(Duration::from_secs(120));
    panic!("the parent test did not kill this child within 120 s");
}

#[test]
fn killed_test_run_is_swept_by_the_next_start() {
    let mut proc = child("child_waits_to_be_killed")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (pid, dir) = read_report(&mut proc);
    assert!(process_alive(pid) && dir.exists());
    proc.kill().unwrap(); // SIGKILL: no Drop, no atexit
    proc.wait().unwrap();

    let _sweeper = Cluster::builder().start().unwrap();
    eventually(
        &format!("postmaster {pid} of the killed run is stopped"),
        || !process_alive(pid),
    );
    eventually(&format!("{} is removed", dir.display()), || !dir.exists());
}

#[test]
fn terminated_test_takes_its_server_down() {
    // nextest terminates a hung test by signalling its process group, as Ctrl-C does.
    let mut proc = child("child_waits_to_be_killed")
        .process_group(0)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (pid, dir) = read_report(&mut proc);
    assert!(process_alive(pid));
    // SAFETY: signals the process group we just created for the child.
    assert_eq!(unsafe { libc::killpg(proc.id() as i32, libc::SIGTERM) }, 0);
    proc.wait().unwrap();
    eventually(
        &format!("postmaster {pid} shuts down with its test"),
        || !process_alive(pid),
    );
    let _sweeper = Cluster::builder().start().unwrap();
    eventually(&format!("{} is removed", dir.display()), || !dir.exists());
}

#[test]
#[ignore = "child of bogus_pg_bin_is_reported_clearly; needs PG_BIN set by it"]
fn child_starts_with_env_pg_bin() {
    require_parent("child_starts_with_env_pg_bin");
    let err = Cluster::builder()
        .start()
        .err()
        .expect("start must fail with a bogus PG_BIN");
    println!("WALSHIFT_CHILD_ERROR {err}");
}

#[test]
fn bogus_pg_bin_is_reported_clearly() {
    let empty = tempfile::tempdir().unwrap();
    let missing = empty.path().join("missing");
    for (dir, expected) in [
        (empty.path(), "has no executable initdb, postgres"),
        (missing.as_path(), "is not a directory"),
    ] {
        let output = child("child_starts_with_env_pg_bin")
            .env("PG_BIN", dir)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let line = stdout
            .lines()
            .find_map(|l| after(l, "WALSHIFT_CHILD_ERROR"))
            .unwrap_or_else(|| panic!("no error reported:\n{stdout}"));
        assert!(
            line.starts_with(&format!("PG_BIN={} {expected}", dir.display())),
            "{line}"
        );
    }
    let err = Cluster::builder()
        .bin_dir(empty.path())
        .start()
        .err()
        .expect("bogus bin_dir fails");
    assert!(
        err.to_string().contains("has no executable initdb"),
        "{err}"
    );
}

// ---- dedicated clusters ----

#[test]
fn startup_failure_shows_the_server_log_and_keeps_it() {
    let err = Cluster::builder()
        .setting("shared_buffers", "lots")
        .start()
        .err()
        .expect("an invalid setting must stop the server from starting");
    let walshift_cluster::Error::Startup { log, tail, .. } = &err else {
        panic!("expected a startup error, got {err}");
    };
    assert!(tail.contains("shared_buffers"), "{err}");
    assert!(err.to_string().contains(&log.display().to_string()));
    let kept = std::fs::read_to_string(log).expect("the log outlives the removed cluster");
    assert!(kept.contains("shared_buffers"));
    std::fs::remove_file(log).unwrap();
}

#[tokio::test]
async fn dedicated_cluster_honours_hba_line_and_setting() {
    let cluster = Cluster::builder()
        .hba_line("local all shunned reject")
        .setting("work_mem", "7MB")
        .setting("max_connections", "50")
        .start()
        .unwrap();
    assert_eq!(show(&cluster, "work_mem"), "7MB");
    assert_eq!(
        show(&cluster, "max_connections"),
        "50",
        "builder settings override defaults"
    );
    assert_eq!(
        show(&cluster, "wal_level"),
        "logical",
        "other defaults stay"
    );
    cluster
        .exec_sql("postgres", "CREATE ROLE shunned LOGIN")
        .unwrap();
    let as_shunned = format!(
        "host={} port={} user=shunned dbname=postgres",
        cluster.socket_dir().display(),
        cluster.port()
    );
    let err = tokio_postgres::connect(&as_shunned, tokio_postgres::NoTls)
        .await
        .err()
        .expect("the reject line must win over the default trust line");
    assert!(
        server_message(&err).contains("pg_hba.conf rejects connection"),
        "{err:?}"
    );
    cluster
        .database("postgres")
        .connect()
        .await
        .simple_query("SELECT 1")
        .await
        .unwrap();
}

#[tokio::test]
async fn password_auth_over_tcp() {
    let password = "s3cret 'pw'";
    let cluster = Cluster::builder()
        .listen_tcp(true)
        .auth_method("scram-sha-256")
        .password(password)
        .start()
        .unwrap();
    assert!(cluster.listens_on_tcp());
    let db = cluster.database("postgres");
    let tcp = db.tcp_conninfo().expect("TCP is on");
    let client = support::connect(&tcp).await;
    let addr: String = client
        .query_one("SELECT inet_server_addr()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(addr, "127.0.0.1/32");
    let stored: String = client
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = current_user",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(stored.starts_with("SCRAM-SHA-256$"), "{stored}");
    let wrong = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres password=wrong",
        cluster.port()
    );
    let err = tokio_postgres::connect(&wrong, tokio_postgres::NoTls)
        .await
        .err()
        .expect("wrong password");
    assert!(
        server_message(&err).contains("password authentication failed"),
        "{err:?}"
    );
    let no_password = format!(
        "host={} port={} user=postgres dbname=postgres",
        cluster.socket_dir().display(),
        cluster.port()
    );
    assert!(
        tokio_postgres::connect(&no_password, tokio_postgres::NoTls)
            .await
            .is_err(),
        "the socket needs it too"
    );
    db.connect().await.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn tls_files_turn_ssl_on() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let files = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (
        files.path().join("server.crt"),
        files.path().join("server.key"),
    );
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.key_pair.serialize_pem()).unwrap();
    let cluster = Cluster::builder()
        .listen_tcp(true)
        .tls(&cert_path, &key_path)
        .start()
        .unwrap();
    assert_eq!(show(&cluster, "ssl"), "on");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let conninfo = format!(
        "host=localhost hostaddr=127.0.0.1 port={} user=postgres dbname=postgres sslmode=require",
        cluster.port()
    );
    let (client, connection) = tokio_postgres::connect(
        &conninfo,
        tokio_postgres_rustls::MakeRustlsConnect::new(config),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_start_restart_and_crash_keep_committed_data() {
    let cluster = Cluster::builder().start().unwrap();
    let db = cluster.fresh_database().unwrap();
    let client = db.connect().await;
    client
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();

    cluster.stop();
    assert!(!cluster.is_running());
    assert!(
        client.simple_query("SELECT 1").await.is_err(),
        "the session was cut"
    );
    assert!(
        db.try_connect().await.is_err(),
        "nothing listens while stopped"
    );

    cluster.start().unwrap();
    let first_pid = cluster.postmaster_pid().unwrap();
    let client = db.connect().await;
    client
        .batch_execute("INSERT INTO t VALUES (2)")
        .await
        .unwrap();
    cluster.restart().unwrap();
    assert_ne!(cluster.postmaster_pid(), Some(first_pid));
    cluster.crash();
    cluster.start().unwrap();
    let count: i64 = db
        .connect()
        .await
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        count, 2,
        "committed rows survive stop, restart and crash recovery"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn standby_replay_lag_shows_while_replay_is_paused() {
    // Status replies every second, so replay progress shows without waiting 10 s.
    let primary = Cluster::builder()
        .setting("wal_receiver_status_interval", "1s")
        .start()
        .unwrap();
    let standby = primary.start_standby().unwrap();
    let name = standby.name().to_owned();
    let on_primary = primary.database("postgres").connect().await;
    let on_standby = standby.database("postgres").connect().await;
    let in_recovery: bool = on_standby
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(in_recovery);

    let lag_sql = "SELECT state, pg_wal_lsn_diff(flush_lsn, replay_lsn)::float8 \
                   FROM pg_stat_replication WHERE application_name = $1";
    let lag = || async {
        let row = on_primary.query_opt(lag_sql, &[&name]).await.unwrap()?;
        let state: String = row.get(0);
        let lag: Option<f64> = row.get(1);
        (state == "streaming").then_some(lag).flatten()
    };
    poll_some(None, "the standby to stream", Duration::from_secs(30), lag).await;

    on_standby
        .execute("SELECT pg_wal_replay_pause()", &[])
        .await
        .unwrap();
    on_primary
        .batch_execute("CREATE TABLE lag_probe AS SELECT generate_series(1, 1000) AS n")
        .await
        .unwrap();
    let behind = poll_some(
        None,
        "replay lag while paused",
        Duration::from_secs(30),
        || async { lag().await.filter(|bytes| *bytes > 0.0) },
    )
    .await;
    let visible: Option<String> = on_standby
        .query_one("SELECT to_regclass('lag_probe')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        visible, None,
        "paused replay has not applied the table ({behind} bytes behind)"
    );

    on_standby
        .execute("SELECT pg_wal_replay_resume()", &[])
        .await
        .unwrap();
    poll(
        None,
        "replay to catch up",
        Duration::from_secs(30),
        || async { lag().await == Some(0.0) },
    )
    .await;
    poll(
        None,
        "the table to appear on the standby",
        Duration::from_secs(30),
        || async {
            on_standby
                .query_one("SELECT count(*) FROM lag_probe", &[])
                .await
                .map(|row| row.get::<_, i64>(0) == 1000)
                .unwrap_or(false)
        },
    )
    .await;

    let slot = format!("walshift_standby_{}_", std::process::id());
    drop(on_standby);
    drop(standby);
    let left = primary
        .exec_sql(
            "postgres",
            &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE '{slot}%'"),
        )
        .unwrap();
    assert_eq!(single(&left), "0", "the standby's slot is dropped with it");
}

/// `start_standby_with` applies settings to the standby alone, `primary_slot_name` names the
/// physical slot it streams through, and after the primary crashes `promote` makes it a
/// primary that holds what was replicated and takes writes (tests/failover.rs builds on it).
#[test]
fn standby_with_its_own_settings_is_promoted_after_the_primary_crashes() {
    let primary = Cluster::builder().start().unwrap();
    let standby = primary
        .start_standby_with(&[("hot_standby_feedback", "on")])
        .unwrap();
    let show = |c: &Cluster, sql: &str| single(&c.exec_sql("postgres", sql).unwrap()).to_owned();
    assert_eq!(show(&primary, "SHOW hot_standby_feedback"), "off");
    assert_eq!(show(&standby, "SHOW hot_standby_feedback"), "on");
    let slot = standby
        .primary_slot_name()
        .expect("a standby's slot")
        .to_owned();
    assert_eq!(
        show(&standby, "SHOW primary_slot_name"),
        slot,
        "the standby streams through it"
    );
    assert_eq!(
        show(
            &primary,
            &format!("SELECT slot_type FROM pg_replication_slots WHERE slot_name = '{slot}'")
        ),
        "physical"
    );
    assert_eq!(primary.primary_slot_name(), None);

    primary
        .exec_sql("postgres", "CREATE TABLE before_crash AS SELECT 1 AS n")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while standby
        .exec_sql("postgres", "SELECT count(*) FROM before_crash")
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the table never reached the standby"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    primary.crash();
    standby.promote().unwrap();
    assert_eq!(show(&standby, "SELECT pg_is_in_recovery()"), "f");
    standby
        .exec_sql("postgres", "INSERT INTO before_crash VALUES (2)")
        .unwrap();
    assert_eq!(show(&standby, "SELECT count(*) FROM before_crash"), "2");
    drop(standby);
}

#[test]
fn socket_dir_is_inside_the_cluster_dir() {
    let cluster = shared_cluster();
    let dir: &Path = cluster.data_dir().parent().unwrap();
    assert!(cluster.socket_dir().starts_with(dir));
    assert!(cluster.log_file().starts_with(dir));
    let owner = std::fs::read_to_string(dir.join("owner")).unwrap();
    assert_eq!(
        owner.trim(),
        std::process::id().to_string(),
        "the directory records its owner"
    );
}
