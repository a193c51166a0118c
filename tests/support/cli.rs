//! Driving the real `walshift` binary's one-shot commands (`check`, `status`, `wait`, ...), and
//! a database with the schema the operator tests share ([`super::fixtures`]). The spec and the
//! `walshift run` child are [`super::process`]'s.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::fixtures::SCHEMA;
use super::{Database, fresh_db};

use super::process::Spec;

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

/// [`command`] on any conninfo (through a relay, several hosts, another user): the one-shot
/// form of [`super::process::command`], its output piped, killed on drop.
pub fn command_on(args: &[&str], spec: &Path, conninfo: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::from(super::process::command(args, spec, conninfo));
    cmd.stdout(Stdio::piped())
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

/// A fresh database with the schema and `users` rows `1..=users`, `orders`
/// `1..=orders` (each with 1-3 line items).
pub async fn setup(users: i64, orders: i64) -> (Database, tokio_postgres::Client) {
    setup_on(fresh_db().await, users, orders).await
}

/// [`setup`] on a database of the test's own (another cluster, another major).
pub async fn setup_on(db: Database, users: i64, orders: i64) -> (Database, tokio_postgres::Client) {
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
