//! The integration tests' one support tree, `mod support;` in every test binary: one throwaway
//! PostgreSQL per test process (`walshift_cluster`), a fresh database per test, the one poller
//! ([`poll_some`], [`poll`]) instead of sleeping, and the checks and waits several tests make
//! around a `walshift run`.
//!
//! - [`fixtures`]: the schemas, specs and oracles many tests share (`users.status`,
//!   `orders` -> `order_items`).
//! - [`process`]: a spec in a temporary directory and the one `walshift run` child process
//!   every test uses ([`Run`]: a log file per run, killed on drop, its log's tail with every
//!   failure, the final summary, signals, HTTP).
//! - [`cli`]: the binary's one-shot commands; [`http`], [`majors`]: its HTTP side, other
//!   PostgreSQL majors.
//! - [`mirror`]: write loads, the waits that define "caught up", exact comparisons;
//!   [`backfill`] builds its backfill scenarios on it.
//! - [`network`]: a relay that breaks links, and runs through it; [`two_way`]: a rolling
//!   deploy's writers.
//!
//! Each test binary compiles this module on its own and uses a different subset of it.
#![allow(dead_code)]

pub mod backfill;
pub mod cli;
pub mod fixtures;
pub mod http;
pub mod majors;
pub mod mirror;
pub mod network;
/// `benches/support/page.rs` (a symlink): the benches write their reports as pages of the
/// documentation, and `tests/docs.rs` checks those pages.
pub mod page;
pub mod process;
pub mod two_way;

use std::future::Future;
use std::time::{Duration, Instant};

pub use walshift_cluster::{Cluster, Database};

// The users and order_items oracles, for the tests that name them here.
#[allow(unused_imports)]
pub use fixtures::{order_items_diff, wrong_status};
#[allow(unused_imports)]
pub use process::{Run, Spec};
// The one "caught up" poller, for the tests that name it here.
#[allow(unused_imports)]
pub use mirror::waits::wait_caught_up;

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

/// The one poller: polls `poll` until it yields a value, backing off from 10 ms to 200 ms between
/// polls, and panics after `timeout`, naming `what` was awaited. With `ws`, it checks before each
/// poll that that `walshift run` is alive, so a crashed binary fails the test at once with its
/// output, and a timeout fails with that output too.
pub async fn poll_some<T, F, Fut>(ws: Option<&Run>, what: &str, timeout: Duration, mut poll: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(ws) = ws {
            ws.ensure_running();
        }
        if let Some(value) = poll().await {
            return value;
        }
        if Instant::now() >= deadline {
            let message = format!("timed out after {timeout:?} waiting for {what}");
            match ws {
                Some(ws) => ws.fail(&message),
                None => panic!("{message}"),
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// [`poll_some`] for a condition: until `cond` holds.
pub async fn poll<F, Fut>(ws: Option<&Run>, what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    poll_some(ws, what, timeout, || {
        let fut = cond();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// The contract's `SELECT bool_and(done) FROM walshift.backfill WHERE name = ...`: whether every
/// mirror of spec `name` has finished its backfill; false while there is no row (or no table) yet.
pub async fn backfill_done(client: &tokio_postgres::Client, name: &str) -> bool {
    client
        .query_one(
            "SELECT coalesce(bool_and(done), false) FROM walshift.backfill WHERE name = $1",
            &[&name],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(false)
}

/// Polls [`backfill_done`] for spec `name`; panics if the backfill has not finished within 60 s.
pub async fn wait_backfill_done(client: &tokio_postgres::Client, name: &str) {
    poll(
        None,
        "the backfill to finish",
        Duration::from_secs(60),
        || backfill_done(client, name),
    )
    .await
}
