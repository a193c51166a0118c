//! Helpers for `tests/network.rs`: the relay that breaks links
//! ([`relay::Relay`]), conninfo strings through it, a `walshift run` child
//! on any conninfo, and a write load on the source that walshift must
//! keep up with.

pub mod relay;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use walshift_cluster::{Cluster, Database};

use crate::support::cli::Spec;

/// The unix socket of `cluster`'s server.
pub fn server_socket(cluster: &Cluster) -> PathBuf {
    cluster
        .socket_dir()
        .join(format!(".s.PGSQL.{}", cluster.port()))
}

/// `db`'s conninfo without its host and port: user, dbname, password.
pub fn credentials(db: &Database) -> String {
    db.conninfo()
        .split_whitespace()
        .filter(|kv| !kv.starts_with("host=") && !kv.starts_with("port="))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `db` through the relay on `port`, plus `extra` keys.
pub fn via_relay(db: &Database, port: u16, extra: &str) -> String {
    format!(
        "host=127.0.0.1 port={port} sslmode=disable {} {extra}",
        credentials(db)
    )
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn refusing_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A `walshift run` child on `conninfo`, its stderr in a file; killed on
/// drop, the log shown if the test fails.
pub struct Run {
    pub child: tokio::process::Child,
    pub log: PathBuf,
}

impl Run {
    pub fn spawn(spec: &Spec, conninfo: &str, extra: &[&str]) -> Run {
        let log = spec.dir.path().join("run.stderr");
        let file = std::fs::File::create(&log).expect("run log");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_walshift"))
            .arg("run")
            .arg(&spec.path)
            .args(["--db", conninfo, "--listen", "off"])
            .args(extra)
            .env_remove("WALSHIFT_DB")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn walshift run");
        Run { child, log }
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
        let start = Instant::now();
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

    /// SIGTERM; it must exit with success within 30 s.
    pub async fn stop(mut self) -> String {
        let pid = self.child.id().expect("still running") as i32;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("run did not stop:\n{}", self.stderr()))
            .unwrap();
        assert!(status.success(), "{}", self.stderr());
        self.stderr()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- walshift run stderr\n{}", self.stderr());
        }
    }
}

/// Inserts and updates on `users` from its own session (not through the
/// relay) until stopped: new ids, and flips of `is_active` on old ones.
pub struct Writer {
    stop: Arc<AtomicBool>,
    pub txns: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub async fn start(db: &Database, first_id: i64) -> Writer {
        let c = db.connect().await;
        let stop = Arc::new(AtomicBool::new(false));
        let txns = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), txns.clone());
        let task = tokio::spawn(async move {
            let mut id = first_id;
            // A small LCG: the rows updated wander over the table.
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            while !s.load(Ordering::SeqCst) {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let old = 1 + (x >> 33) as i64 % id.max(1);
                c.batch_execute(&format!(
                    "BEGIN;
                     INSERT INTO users (id, is_active) VALUES ({id}, {});
                     UPDATE users SET is_active = NOT is_active WHERE id = {old};
                     UPDATE users SET is_active = NOT is_active, pad = md5(random()::text)
                      WHERE id IN ({}, {});
                     COMMIT",
                    id % 2 == 0,
                    (old * 7) % id.max(1) + 1,
                    (old * 13) % id.max(1) + 1,
                ))
                .await
                .expect("writer transaction");
                id += 1;
                n.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        Writer { stop, txns, task }
    }

    pub async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("writer task");
        self.txns.load(Ordering::SeqCst)
    }
}
