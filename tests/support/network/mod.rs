//! Helpers for `tests/network.rs`: the relay that breaks links
//! ([`relay::Relay`]), conninfo strings through it, a `walshift run` child
//! on any conninfo, and a write load on the source that walshift must
//! keep up with.

pub mod relay;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use walshift_cluster::{Cluster, Database};

use crate::support::process::{Run, Spec};

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

/// A `walshift run` child on `conninfo` (through a relay, several hosts), logging at
/// `RUST_LOG=info`, its output in a file; killed on drop, the log shown if the test fails.
pub fn run_on(spec: &Spec, conninfo: &str, extra: &[&str]) -> Run {
    Run::on(spec, conninfo)
        .args(extra)
        .env("RUST_LOG", "info")
        .spawn()
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
