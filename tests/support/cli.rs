//! Driving the real `walshift` binary: specs in temporary directories, one-shot
//! commands, a `walshift run` child, and a database with the schema the operator tests share
//! ([`super::fixtures`]).

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;

use super::fixtures::SCHEMA;
use super::{Database, fresh_db};

pub const BIN: &str = env!("CARGO_BIN_EXE_walshift");

/// A spec in its own temporary directory (the run's stderr goes there too).
pub struct Spec {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub name: String,
}

impl Spec {
    pub fn new(name: &str, body: &str) -> Spec {
        let dir = tempfile::Builder::new()
            .prefix("walshift-ops-")
            .tempdir()
            .expect("temporary directory");
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, format!("name = \"{name}\"\n{body}")).expect("write the spec");
        Spec {
            dir,
            path,
            name: name.to_owned(),
        }
    }

    /// Slot, publication and origin name.
    pub fn object(&self) -> String {
        format!("walshift_{}", self.name.replace('-', "_"))
    }
}

/// What a finished command printed.
pub struct Out {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.status.code(),
            self.stdout,
            self.stderr
        )
    }
}

pub fn command(args: &[&str], spec: &Path, db: &Database) -> tokio::process::Command {
    command_on(args, spec, &db.conninfo())
}

/// [`command`] on any conninfo (through a relay, several hosts, another user).
pub fn command_on(args: &[&str], spec: &Path, conninfo: &str) -> tokio::process::Command {
    let (sub, rest) = args.split_first().expect("a subcommand");
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg(sub)
        .arg(spec)
        .args(rest)
        .args(["--db", conninfo])
        .env_remove("RUST_LOG")
        .env_remove("WALSHIFT_DB")
        // `run` serves HTTP on a fixed port by default; tests run side by side, so
        // none unless a test asks with --listen (tests/http.rs).
        .env("WALSHIFT_LISTEN", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// `walshift <args[0]> SPEC <args[1..]> --db ...`, to its end (at most 40 s).
pub async fn cli(args: &[&str], spec: &Spec, db: &Database) -> Out {
    let child = command(args, &spec.path, db).output();
    let out = tokio::time::timeout(Duration::from_secs(40), child)
        .await
        .unwrap_or_else(|_| panic!("walshift {args:?} did not finish in 40s"))
        .expect("run walshift");
    Out {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub async fn status_json(spec: &Spec, db: &Database) -> Value {
    let out = cli(&["status", "--json"], spec, db).await;
    assert_eq!(out.code(), Some(0), "status --json: {out}");
    out.json()
}

/// A `walshift run` child; killed on drop, its stderr shown if the test fails.
pub struct Run {
    pub child: tokio::process::Child,
    pub log: PathBuf,
    pub exited: Option<ExitStatus>,
}

impl Run {
    pub fn spawn(spec: &Spec, db: &Database) -> Run {
        Run::spawn_with(spec, db, &[])
    }

    /// `walshift run SPEC --db ... <extra>`.
    pub fn spawn_with(spec: &Spec, db: &Database, extra: &[&str]) -> Run {
        let mut args = vec!["run"];
        args.extend_from_slice(extra);
        Run::start(spec, command(&args, &spec.path, db))
    }

    /// Starts `cmd` (a `walshift run` from [`command`] or [`command_on`]), its stdout and
    /// stderr in a log file in the spec's directory.
    pub fn start(spec: &Spec, mut cmd: tokio::process::Command) -> Run {
        static RUNS: AtomicU32 = AtomicU32::new(0);
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        let log = spec.dir.path().join(format!("run-{n}.stderr"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("run log");
        cmd.stdout(Stdio::from(file.try_clone().expect("clone")))
            .stderr(Stdio::from(file));
        Run {
            child: cmd.spawn().expect("spawn walshift run"),
            log,
            exited: None,
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Times `needle` appears in the log.
    pub fn count(&self, needle: &str) -> usize {
        self.stderr().matches(needle).count()
    }

    /// Waits until the log holds `needle` more than `before` times; how
    /// long that took, or `None` after `timeout`. Fails at once if the run
    /// exits.
    pub async fn wait_log(
        &mut self,
        needle: &str,
        before: usize,
        timeout: Duration,
    ) -> Option<Duration> {
        let start = std::time::Instant::now();
        loop {
            if self.count(needle) > before {
                return Some(start.elapsed());
            }
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "walshift run exited:\n{}",
                self.stderr()
            );
            if start.elapsed() >= timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM; it must exit with success within 30 s. Returns its log.
    pub async fn stop(mut self) -> String {
        self.sigterm();
        let status = self.exit(Duration::from_secs(30)).await;
        assert!(
            status.success(),
            "walshift run: {status}\n{}",
            self.stderr()
        );
        self.stderr()
    }

    pub fn sigterm(&self) {
        let pid = self.child.id().expect("run still running") as i32;
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    }

    /// Exit status, once the run ends by itself (within `timeout`).
    pub async fn exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(s) = self.exited {
            return s;
        }
        let s = tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "walshift run did not exit within {timeout:?}; stderr:\n{}",
                    self.stderr()
                )
            })
            .expect("wait for walshift run");
        self.exited = Some(s);
        s
    }

    /// The address a run started with `--listen 127.0.0.1:0` serves (it
    /// logs it once bound).
    pub async fn listening(&mut self) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.stderr();
            if let Some(rest) = text.split("listening on http://").nth(1) {
                return rest.split('/').next().expect("an address").to_string();
            }
            assert!(
                self.still_running(),
                "walshift run exited before listening:\n{text}"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "walshift run did not say where it listens within 20 s:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn still_running(&mut self) -> bool {
        self.exited.is_none() && self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- walshift run stderr\n{}", self.stderr());
        }
    }
}

/// A fresh database with the schema and `users` rows `1..=users`, `orders`
/// `1..=orders` (each with 1-3 line items).
pub async fn setup(users: i64, orders: i64) -> (Database, tokio_postgres::Client) {
    let db = fresh_db().await;
    let c = db.connect().await;
    c.batch_execute(SCHEMA).await.expect("schema");
    c.execute(
        "INSERT INTO users (id, is_active) SELECT g, g % 3 = 0 FROM generate_series(1, $1::bigint) g",
        &[&users],
    )
    .await
    .expect("users");
    c.execute(
        "INSERT INTO orders SELECT g, (SELECT jsonb_agg(jsonb_build_object('sku', 's' || g || '-' || n, 'qty', n))
                                        FROM generate_series(1, 1 + g % 3) n)
         FROM generate_series(1, $1::bigint) g",
        &[&orders],
    )
    .await
    .expect("orders");
    (db, c)
}

pub async fn one_i64(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.expect(sql).get(0)
}
