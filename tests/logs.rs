//! The log formats of `walshift run` (README "Commands": "Logs go to stderr,
//! human-readable or `--log-format json`"): with `--log-format json` every
//! line on stderr is one JSON object a log collector can take as it is
//! (timestamp, level, target, fields with the message and structured
//! values); by default the lines are human text, without colour codes when
//! stderr is not a terminal.

mod support;

use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use support::fixtures::USERS_MIRROR;
use support::process::{Run, Spec};

const BIN: &str = env!("CARGO_BIN_EXE_walshift");

/// A short `walshift run` (until it mirrors a write, then SIGTERM) on a fresh
/// database; `global` goes before the subcommand.
async fn short_run(name: &str, global: &[&str]) -> Output {
    let db = support::fresh_db().await;
    let c = db.connect().await;
    c.batch_execute(
        "CREATE TABLE users (id bigint PRIMARY KEY, is_active boolean NOT NULL, status text);
         INSERT INTO users (id, is_active) SELECT g, g % 2 = 0 FROM generate_series(1, 200) g;",
    )
    .await
    .expect("schema");
    let spec = Spec::new(name, USERS_MIRROR);
    let run = Run::on(&spec, &db.conninfo())
        .global(global)
        // Any free port for run's HTTP server, so runs in parallel do not collide.
        .env("WALSHIFT_LISTEN", "127.0.0.1:0")
        .spawn();
    c.execute(
        "UPDATE users SET is_active = NOT is_active WHERE id = 3",
        &[],
    )
    .await
    .expect("a live write");
    // Backfill and live mirroring both done: every status matches.
    let client = &c;
    support::poll(Some(&run), "walshift run to mirror", Duration::from_secs(30), || async move {
        client
            .query_one(
                "SELECT count(*) FROM users
                 WHERE status IS DISTINCT FROM CASE WHEN is_active THEN 'active' ELSE 'disabled' END",
                &[],
            )
            .await
            .is_ok_and(|r| r.get::<_, i64>(0) == 0)
    })
    .await;
    // A watermark round trip, so the periodic paths log too.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // It must stop cleanly (exit 0) within 20 s of SIGTERM.
    run.terminate(Duration::from_secs(20)).await;
    Output {
        status: run.exited().expect("exited"),
        stdout: run.stdout().into_bytes(),
        stderr: run.stderr().into_bytes(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line() {
    let out = short_run("logs-json", &["--log-format", "json", "-v"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.stdout.is_empty(),
        "run prints nothing on stdout: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.len() >= 2, "too few log lines:\n{stderr}");
    let mut levels = std::collections::BTreeSet::new();
    let mut stopped = None;
    for line in &lines {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\nall of stderr:\n{stderr}"));
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("not a JSON object: {line}"));
        let ts = obj["timestamp"]
            .as_str()
            .unwrap_or_else(|| panic!("no timestamp: {line}"));
        // RFC 3339 in UTC: 2026-01-02T03:04:05.678901Z
        assert!(
            ts.len() >= 20
                && ts.as_bytes()[4] == b'-'
                && ts.as_bytes()[10] == b'T'
                && ts.ends_with('Z'),
            "timestamp {ts:?} is not RFC 3339 UTC: {line}"
        );
        let level = obj["level"]
            .as_str()
            .unwrap_or_else(|| panic!("no level: {line}"));
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level),
            "level {level:?}: {line}"
        );
        levels.insert(level.to_owned());
        assert!(obj["target"].is_string(), "no target: {line}");
        let fields = obj["fields"]
            .as_object()
            .unwrap_or_else(|| panic!("no fields object: {line}"));
        assert!(
            fields.get("message").is_some_and(Value::is_string),
            "no message in fields: {line}"
        );
        if fields["message"]
            .as_str()
            .is_some_and(|m| m.contains("stopped cleanly"))
        {
            stopped = Some(fields.clone());
        }
    }
    assert!(levels.contains("INFO"), "{levels:?}");
    assert!(
        levels.contains("DEBUG"),
        "-v should add debug lines: {levels:?}"
    );
    // Structured values stay JSON values, not text inside the message.
    let stopped = stopped.unwrap_or_else(|| panic!("no 'stopped cleanly' line:\n{stderr}"));
    assert!(
        stopped.get("txns").is_some_and(Value::is_u64),
        "the totals are fields of their own: {stopped:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_default_is_human_text() {
    let out = short_run("logs-text", &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains('\u{1b}'),
        "no colour codes when stderr is not a terminal:\n{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "too few log lines:\n{stderr}");
    for line in &lines {
        assert!(
            serde_json::from_str::<Value>(line).is_err(),
            "the default format is text, not JSON: {line}"
        );
        // 2026-01-02T03:04:05.678901Z  INFO walshift::run: message key=value
        let mut words = line.split_whitespace();
        let ts = words.next().unwrap_or_default();
        assert!(
            ts.len() >= 20 && ts.as_bytes()[4] == b'-' && ts.ends_with('Z'),
            "a text log line starts with its timestamp: {line}"
        );
        let level = words.next().unwrap_or_default();
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level),
            "then its level: {line}"
        );
    }
    let stopped = lines
        .iter()
        .find(|l| l.contains("stopped cleanly"))
        .unwrap_or_else(|| panic!("no 'stopped cleanly' line:\n{stderr}"));
    assert!(stopped.contains("txns="), "fields as key=value: {stopped}");
    // Without -v, no debug lines.
    assert!(
        !lines
            .iter()
            .any(|l| l.split_whitespace().nth(1) == Some("DEBUG")),
        "{stderr}"
    );
}

/// Guards that errors keep the format: with `--log-format json` the one-line
/// error of a failing command (here a spec that does not exist, and a
/// connection string that does not parse) is a JSON object at level ERROR,
/// not a bare text line a collector would choke on; exit codes unchanged.
#[tokio::test]
async fn errors_are_json_lines_in_json_mode() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let missing = dir.path().join("missing.toml");
    let spec = dir.path().join("spec.toml");
    std::fs::write(
        &spec,
        "name = \"x\"\n\n[[mirror]]\nsource = \"public.users\"\nset = { status = \"'a'\" }\n",
    )
    .expect("write the spec");
    for (spec, db) in [(&missing, ""), (&spec, "host=")] {
        let out = tokio::process::Command::new(BIN)
            .args(["--log-format", "json", "status"])
            .arg(spec)
            .args(["--db", db])
            .env_remove("RUST_LOG")
            .env_remove("WALSHIFT_DB")
            .output()
            .await
            .expect("run walshift");
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line:\n{stderr}");
        let v: Value = serde_json::from_str(lines[0])
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {stderr}"));
        assert_eq!(v["level"], "ERROR", "{v}");
        assert!(
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    }
}
