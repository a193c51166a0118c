//! Shared helpers for integration tests: one throwaway PostgreSQL per test process
//! (`walshift::cluster`), a fresh database per test, and waiting on conditions instead of
//! sleeping.
//!
//! Each test binary compiles this module on its own and uses a different subset of it.
#![allow(dead_code)]

pub mod cli;

use std::future::Future;
use std::time::{Duration, Instant};

pub use walshift::cluster::{Cluster, Database};

/// The cluster shared by every test of this process, started on first use and removed at exit.
pub fn shared_cluster() -> &'static Cluster {
    Cluster::shared()
}

/// A new, empty database on the shared cluster, named after the calling test.
pub async fn fresh_db() -> Database {
    // Starting the shared cluster and CREATE DATABASE block; keep them off the async workers.
    // The database is named after the thread that asks, so ask from this one.
    let hint = std::thread::current().name().unwrap_or("db").to_owned();
    tokio::task::spawn_blocking(move || shared_cluster().fresh_database_named(&hint))
        .await
        .expect("fresh_db task")
        .unwrap_or_else(|e| panic!("create a fresh database: {e}"))
}

/// A client for any conninfo (no TLS), its connection task spawned; panics if it cannot connect.
pub async fn connect(conninfo: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {conninfo}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Poll `poll` until it yields a value, backing off from 10 ms to 200 ms between polls.
/// Panics after `timeout`, naming `what` was awaited.
pub async fn wait_for_some<T, F, Fut>(what: &str, timeout: Duration, mut poll: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(value) = poll().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Poll `cond` until it holds; panics after `timeout`, naming `what` was awaited.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for_some(what, timeout, || {
        let fut = cond();
        async move { fut.await.then_some(()) }
    })
    .await
}
