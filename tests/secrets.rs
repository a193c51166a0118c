//! Passwords never appear in what walshift prints (README "Commands":
//! "Passwords never appear in logs or errors"): the real binary against a
//! PostgreSQL that demands SCRAM passwords, with a distinctive password given
//! in each way walshift accepts one (`--db` key=value, `--db` URL,
//! `WALSHIFT_DB`, `PGPASSWORD`), through failures (wrong password, wrong host
//! or port, invalid connection strings) and through the commands of a
//! migration (`status`, `run` with trace-level text and JSON logs, `verify`,
//! `cleanup`). Errors must also stay one clear line.

mod support;

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use support::fixtures::USERS_MIRROR;
use support::process::Spec;
use walshift_cluster::{Cluster, Database};

const BIN: &str = env!("CARGO_BIN_EXE_walshift");

/// The superuser's password: distinctive, so any appearance is a leak.
const PASSWORD: &str = "Zq8Kx3Lm7Vt2-walshift";
/// A wrong password, just as distinctive.
const WRONG: &str = "Yh4Rt6Pq1Ns5-wrong";

/// Every fragment that must never be printed.
const SECRETS: &[&str] = &[PASSWORD, "Zq8Kx3Lm7Vt2", WRONG, "Yh4Rt6Pq1Ns5"];

/// How the password reaches walshift.
#[derive(Clone, Copy, Debug)]
enum Form {
    /// `--db "host=... password=..."`
    KeyValue,
    /// `--db postgresql://user:password@host:port/db`
    Url,
    /// `WALSHIFT_DB="host=... password=..."`
    WalshiftDb,
    /// `--db "host=..."` and `PGPASSWORD`
    PgPassword,
}

const FORMS: [Form; 4] = [
    Form::KeyValue,
    Form::Url,
    Form::WalshiftDb,
    Form::PgPassword,
];

/// Where to connect.
struct Target<'a> {
    host: &'a str,
    port: u16,
    dbname: &'a str,
}

/// A `walshift` command, its password given in `form`.
fn walshift(
    global: &[&str],
    args: &[&str],
    form: Form,
    t: &Target,
    password: &str,
) -> std::process::Command {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(global)
        .args(args)
        .env_remove("WALSHIFT_DB")
        .env_remove("PGPASSWORD")
        .env_remove("RUST_LOG")
        // Any free port for run's HTTP server, so runs in parallel do not collide.
        .env("WALSHIFT_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let Target { host, port, dbname } = t;
    let plain = format!("host={host} port={port} user=postgres dbname={dbname} sslmode=disable");
    match form {
        Form::KeyValue => {
            cmd.args(["--db", &format!("{plain} password={password}")]);
        }
        Form::Url => {
            cmd.args([
                "--db",
                &format!("postgresql://postgres:{password}@{host}:{port}/{dbname}?sslmode=disable"),
            ]);
        }
        Form::WalshiftDb => {
            cmd.env("WALSHIFT_DB", format!("{plain} password={password}"));
        }
        Form::PgPassword => {
            cmd.args(["--db", &plain]).env("PGPASSWORD", password);
        }
    }
    cmd
}

/// Runs to the end (at most 60 s).
fn output(mut cmd: std::process::Command) -> Output {
    let mut child = cmd.spawn().expect("spawn walshift");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("walshift output");
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("walshift {cmd:?} did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// No fragment of a password in stdout or stderr.
fn assert_no_secret(what: &str, out: &Output) {
    for stream in [&out.stdout, &out.stderr] {
        let s = text(stream);
        for secret in SECRETS {
            assert!(
                !s.contains(secret),
                "{what}: a password ({secret}) was printed:\n{s}"
            );
        }
    }
}

/// A line of the text log (`2026-01-02T03:04:05.678Z  INFO target: ...`).
fn is_log_line(line: &str) -> bool {
    line.split_whitespace().next().is_some_and(|t| {
        t.len() > 20 && t.as_bytes()[4] == b'-' && t.contains('T') && t.ends_with('Z')
    })
}

/// Exit 2 and exactly one line on stderr besides log lines, `walshift: ...`,
/// containing `needle`.
fn assert_one_line_error(what: &str, out: &Output, needle: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{what}: exit code; stderr:\n{stderr}"
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !is_log_line(l))
        .collect();
    assert_eq!(lines.len(), 1, "{what}: not one line:\n{stderr}");
    assert!(lines[0].starts_with("walshift: "), "{what}: {stderr}");
    assert!(
        lines[0].contains(needle),
        "{what}: should say {needle:?}: {stderr}"
    );
}

/// A cluster that demands SCRAM passwords (also over the socket), reachable
/// over TCP, with a database holding `users` and a spec mirroring it.
struct Fixture {
    cluster: Cluster,
    db: Database,
    spec: Spec,
}

impl Fixture {
    fn new(spec_name: &str) -> Fixture {
        let cluster = Cluster::builder()
            .listen_tcp(true)
            .auth_method("scram-sha-256")
            .password(PASSWORD)
            .start()
            .expect("start PostgreSQL with password authentication");
        let db = cluster.fresh_database_named(spec_name).expect("database");
        cluster
            .exec_sql(
                db.name(),
                "CREATE TABLE users (id bigint PRIMARY KEY, is_active boolean NOT NULL, status text);
                 INSERT INTO users (id, is_active) SELECT g, g % 2 = 0 FROM generate_series(1, 500) g;",
            )
            .expect("schema");
        Fixture {
            cluster,
            db,
            spec: Spec::new(spec_name, USERS_MIRROR),
        }
    }

    fn target(&self) -> Target<'_> {
        Target {
            host: "127.0.0.1",
            port: self.cluster.port(),
            dbname: self.db.name(),
        }
    }

    fn spec(&self) -> &str {
        self.spec.path.to_str().expect("UTF-8 path")
    }

    fn one(&self, sql: &str) -> String {
        self.cluster
            .exec_sql(self.db.name(), sql)
            .expect(sql)
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .unwrap_or_default()
    }
}

/// A port on 127.0.0.1 that nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("address").port()
}

#[test]
fn failed_connections_say_why_in_one_line_without_the_password() {
    let f = Fixture::new("secrets_fail");
    let spec = f.spec();
    let good = f.target();

    for form in FORMS {
        // Wrong password: the server's words, once per command that connects.
        for args in [
            vec!["check", spec],
            vec!["status", spec],
            vec!["verify", spec],
            vec!["cleanup", spec],
            vec!["ctl", spec, "pause"],
        ] {
            let out = output(walshift(&[], &args, form, &good, WRONG));
            let what = format!("{args:?} with a wrong password, {form:?}");
            assert_no_secret(&what, &out);
            assert_one_line_error(&what, &out, "password authentication failed");
        }
        let out = output(walshift(&[], &["run", spec], form, &good, WRONG));
        let what = format!("run with a wrong password, {form:?}");
        assert_no_secret(&what, &out);
        assert_one_line_error(&what, &out, "password authentication failed");
        // The same in JSON-log mode, with everything traced.
        let out = output(walshift(
            &["-vv", "--log-format", "json"],
            &["run", spec],
            form,
            &good,
            WRONG,
        ));
        assert_no_secret(
            &format!("run -vv --log-format json, wrong password, {form:?}"),
            &out,
        );
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        // wait retries until its timeout, saying why.
        let out = output(walshift(
            &[],
            &["wait", spec, "--timeout", "1s"],
            form,
            &good,
            WRONG,
        ));
        assert_no_secret(&format!("wait with a wrong password, {form:?}"), &out);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));

        // Right password, nobody there: a closed port, another loopback
        // address, a socket directory that does not exist.
        let closed = closed_port();
        for (target, needle) in [
            (
                Target {
                    port: closed,
                    ..f.target()
                },
                format!("127.0.0.1:{closed}"),
            ),
            (
                Target {
                    host: "127.0.0.2",
                    ..f.target()
                },
                "127.0.0.2".to_owned(),
            ),
        ] {
            for args in [vec!["check", spec], vec!["run", spec]] {
                let out = output(walshift(&[], &args, form, &target, PASSWORD));
                let what = format!("{args:?} to {needle}, {form:?}");
                assert_no_secret(&what, &out);
                assert_one_line_error(&what, &out, &needle);
            }
        }
        if !matches!(form, Form::Url) {
            let missing = Target {
                host: "/nonexistent/walshift-socket-dir",
                ..f.target()
            };
            let out = output(walshift(&[], &["check", spec], form, &missing, PASSWORD));
            let what = format!("check to a missing socket, {form:?}");
            assert_no_secret(&what, &out);
            assert_one_line_error(&what, &out, "/nonexistent/walshift-socket-dir");
        }
    }
}

#[test]
fn invalid_connection_strings_do_not_echo_the_password() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let spec = dir.path().join("spec.toml");
    std::fs::write(
        &spec,
        "name = \"secrets-invalid\"\n[[mirror]]\nsource = \"public.users\"\nset = { status = \"'x'\" }\n",
    )
    .expect("write the spec");
    let spec = spec.to_str().expect("UTF-8 path");
    let invalid = [
        // Quotes forgotten around a password with a space.
        "host=127.0.0.1 user=postgres password=Zq8Kx3Lm7Vt2 Yh4Rt6Pq1Ns5".to_owned(),
        "host=127.0.0.1 password=Zq8Kx3Lm7Vt2 Yh4Rt6Pq1Ns5=1 user=postgres".to_owned(),
        // An unterminated quote.
        format!("host=127.0.0.1 password='{PASSWORD}"),
        // A bad port next to the password, in both forms.
        format!("host=127.0.0.1 port=notaport password={PASSWORD}"),
        format!("postgresql://postgres:{PASSWORD}@127.0.0.1:notaport/db"),
        // An unknown option, a bad sslmode.
        format!("postgresql://postgres:{PASSWORD}@127.0.0.1/db?nosuchoption=1"),
        format!("host=127.0.0.1 password={PASSWORD} sslmode=sometimes"),
        // A URL with one slash too few is not a URL.
        format!("postgres:/postgres:{PASSWORD}@127.0.0.1/db"),
        // Only a password.
        PASSWORD.to_owned(),
    ];
    for conninfo in &invalid {
        for via_env in [false, true] {
            for command in ["check", "run", "status"] {
                let mut cmd = std::process::Command::new(BIN);
                cmd.args([command, spec])
                    .env_remove("WALSHIFT_DB")
                    .env_remove("PGPASSWORD")
                    .env_remove("RUST_LOG")
                    .stdin(Stdio::null());
                if via_env {
                    cmd.env("WALSHIFT_DB", conninfo);
                } else {
                    cmd.args(["--db", conninfo]);
                }
                let out = cmd.output().expect("run walshift");
                let what = format!("{command} with {conninfo:?} (in WALSHIFT_DB: {via_env})");
                assert_no_secret(&what, &out);
                let needle = if conninfo.contains("sslmode=sometimes") {
                    "invalid sslmode"
                } else {
                    "invalid connection string"
                };
                assert_one_line_error(&what, &out, needle);
            }
        }
    }
}

/// A `walshift run` for a few seconds, then SIGTERM: exit 0, and its output.
fn short_run(f: &Fixture, global: &[&str], form: Form) -> Output {
    let mut cmd = walshift(global, &["run", f.spec()], form, &f.target(), PASSWORD);
    let child = cmd.spawn().expect("spawn walshift run");
    let pid = child.id() as i32;
    // Mirroring: the slot is active; then a write goes through it.
    let started = Instant::now();
    while f.one("SELECT count(*) FROM pg_replication_slots WHERE active AND slot_type = 'logical'")
        != "1"
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "walshift run ({form:?}) did not start streaming in 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    f.one("UPDATE users SET is_active = NOT is_active WHERE id = 7 RETURNING 1");
    let started = Instant::now();
    while f.one("SELECT count(*) FROM users WHERE status IS DISTINCT FROM CASE WHEN is_active THEN 'active' ELSE 'disabled' END") != "0" {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "walshift run ({form:?}) did not mirror in 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Long enough for a watermark, lag record and a standby status update.
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().expect("walshift run output");
    assert_eq!(
        out.status.code(),
        Some(0),
        "run {global:?} ({form:?}) did not stop cleanly:\n{}",
        text(&out.stderr)
    );
    out
}

#[test]
fn a_migration_with_trace_logs_never_prints_the_password() {
    let f = Fixture::new("secrets_ok");
    let spec = f.spec();
    for form in FORMS {
        let out = output(walshift(&[], &["check", spec], form, &f.target(), PASSWORD));
        assert_no_secret(&format!("check, {form:?}"), &out);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

        for args in [vec!["status", spec], vec!["status", spec, "--json"]] {
            let out = output(walshift(&[], &args, form, &f.target(), PASSWORD));
            assert_no_secret(&format!("{args:?}, {form:?}"), &out);
            assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        }

        let out = short_run(&f, &["-vv", "--log-format", "json"], form);
        assert_no_secret(&format!("run -vv --log-format json, {form:?}"), &out);
        assert!(
            text(&out.stderr).lines().count() > 3,
            "a traced run logs something:\n{}",
            text(&out.stderr)
        );
        let out = short_run(&f, &["-vv"], form);
        assert_no_secret(&format!("run -vv, {form:?}"), &out);

        for args in [
            vec!["verify", spec],
            vec!["verify", spec, "--json"],
            vec!["wait", spec, "--timeout", "1s"],
            vec!["ctl", spec, "pause"],
            vec!["ctl", spec, "resume"],
        ] {
            let out = output(walshift(&["-vv"], &args, form, &f.target(), PASSWORD));
            assert_no_secret(&format!("{args:?}, {form:?}"), &out);
        }
        let out = output(walshift(
            &["-vv"],
            &["verify", spec],
            form,
            &f.target(),
            PASSWORD,
        ));
        assert_eq!(out.status.code(), Some(0), "verify:\n{}", text(&out.stdout));

        let out = output(walshift(
            &["-vv"],
            &["cleanup", spec],
            form,
            &f.target(),
            PASSWORD,
        ));
        assert_no_secret(&format!("cleanup, {form:?}"), &out);
        assert_eq!(
            out.status.code(),
            Some(0),
            "cleanup:\n{}",
            text(&out.stderr)
        );
    }
}
