//! pgoutput's `origin = 'none'` (PostgreSQL 16+), and the guard that keeps
//! it safe (I5).
//!
//! walshift's own writes carry its replication origin. On PostgreSQL 15 the
//! walsender decodes and sends every one of them back, and the reader drops
//! them ([`crate::replication::StreamOptions::skip_changes_of_origin`]). From
//! 16 on, `origin = 'none'` makes the walsender skip them while decoding:
//! for a set-mode backfill that is a million rows the walsender never turns
//! into messages. But the filter drops *every* change that carries an
//! origin, including those a subscription (or another tool, or another
//! walshift whose target is our source) writes into a source table. So:
//!
//! - the stream asks for `origin = 'none'` only when no replication origin
//!   other than walshift's own exists ([`choose`]);
//! - while it does, a [`Guard`] looks again every [`POLL`]. A change that
//!   carries an origin was written by a session that found the origin in
//!   `pg_replication_origin` first, so an origin used at or before WAL
//!   position `W` (read first) is seen by a later query of the catalog.
//!   Positions confirmed to the server are capped at the last such `W`
//!   whose query found no other origin ([`Guard::cap`]). The server
//!   therefore sends again everything after the last proven position;
//! - when another origin appears, the session ends and the next one streams
//!   with `origin = 'any'` from the slot's confirmed position, not from the
//!   (uncapped) applied position, so what the filter may have dropped is
//!   decoded again. Recomputing a key twice is harmless (I5).
//!
//! Not covered: an origin created, used and dropped again between two looks
//! (within [`POLL`]). Subscriptions keep their origin for their lifetime.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::Lsn;
use crate::conninfo::ConnConfig;

/// How often the guard looks for other origins.
pub const POLL: Duration = Duration::from_millis(200);

/// [`POLL`], or `WALSHIFT_ORIGIN_POLL_MS` (tests slow the guard down to make
/// it lose a race on purpose).
fn poll_interval() -> Duration {
    std::env::var("WALSHIFT_ORIGIN_POLL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(POLL, Duration::from_millis)
}

/// Replication origins other than `own`, by name.
pub async fn others(client: &Client, own: &str) -> Result<Vec<String>, tokio_postgres::Error> {
    let row = client
        .query_one(crate::catalog::OTHER_ORIGINS, &[&own])
        .await?;
    row.try_get(0)
}

/// What the stream asks pgoutput for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// `origin = 'none'`: walshift's own writes are not even decoded.
    None,
    /// Every origin (the default): the server is older than 16, walshift
    /// has no origin of its own, or other origins exist (named).
    Any { others: Vec<String> },
}

/// Which filter a session may ask for.
pub async fn choose(
    client: &Client,
    own: &str,
    server_version: u32,
    has_own_origin: bool,
) -> Result<Choice, tokio_postgres::Error> {
    if server_version < crate::catalog::ORIGIN_OPTION_SINCE || !has_own_origin {
        return Ok(Choice::Any { others: Vec::new() });
    }
    let others = others(client, own).await?;
    Ok(if others.is_empty() {
        Choice::None
    } else {
        Choice::Any { others }
    })
}

/// The confirmable part of a position; cheap to clone.
#[derive(Debug, Clone)]
pub struct Cap(Arc<AtomicU64>);

impl Cap {
    /// `lsn`, or less: the last position proven free of other origins.
    pub fn apply(&self, lsn: Lsn) -> Lsn {
        lsn.min(Lsn(self.0.load(Ordering::Acquire)))
    }
}

/// See the module documentation.
pub struct Guard {
    safe: Arc<AtomicU64>,
    foreign: watch::Receiver<Vec<String>>,
    task: JoinHandle<()>,
}

impl Guard {
    /// Starts the guard on a session of its own. The first look happens
    /// before this returns, so positions up to the current WAL position may
    /// be confirmed at once.
    pub async fn start(config: &ConnConfig, own: String) -> Result<Guard, String> {
        let config = config.with_application_name("walshift-origins");
        let client = config
            .connect_sql()
            .await
            .map_err(|e| format!("connecting the origin guard's session: {e}"))?;
        let safe = Arc::new(AtomicU64::new(0));
        let (foreign_tx, foreign) = watch::channel(Vec::new());
        let found = look(&client, &own)
            .await
            .map_err(|e| format!("looking for other replication origins: {e}"))?;
        record(&safe, &foreign_tx, found);
        let task = tokio::spawn(watch_origins(config, client, own, safe.clone(), foreign_tx));
        Ok(Guard {
            safe,
            foreign,
            task,
        })
    }

    /// What may be confirmed of a position.
    pub fn cap(&self) -> Cap {
        Cap(self.safe.clone())
    }

    /// Resolves with their names once other origins exist.
    pub async fn foreign(&mut self) -> Vec<String> {
        let found = self
            .foreign
            .wait_for(|names| !names.is_empty())
            .await
            .map(|names| names.clone());
        match found {
            Ok(names) => names,
            // The task ended (it never does on its own): never resolve.
            Err(_) => std::future::pending().await,
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One look: the WAL insert position first, then (a new snapshot) the other
/// origins. `Ok((w, names))`.
async fn look(client: &Client, own: &str) -> Result<(Lsn, Vec<String>), tokio_postgres::Error> {
    let w: String = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await?
        .try_get(0)?;
    let names = others(client, own).await?;
    Ok((w.parse().unwrap_or(Lsn::INVALID), names))
}

fn record(safe: &AtomicU64, foreign: &watch::Sender<Vec<String>>, (w, names): (Lsn, Vec<String>)) {
    if names.is_empty() {
        safe.fetch_max(w.0, Ordering::AcqRel);
    } else {
        // Never again: the filter is unsafe from here on.
        foreign.send_replace(names);
    }
}

async fn watch_origins(
    config: ConnConfig,
    client: Client,
    own: String,
    safe: Arc<AtomicU64>,
    foreign: watch::Sender<Vec<String>>,
) {
    let mut client = Some(client);
    let mut tick = tokio::time::interval(poll_interval());
    tick.tick().await;
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        if !foreign.borrow().is_empty() {
            return;
        }
        if client.is_none() {
            client = config.connect_sql().await.ok();
        }
        let Some(c) = client.as_ref() else { continue };
        match look(c, &own).await {
            Ok(found) => {
                if failing {
                    tracing::info!("looking for other replication origins again");
                    failing = false;
                }
                record(&safe, &foreign, found);
            }
            Err(e) => {
                // Positions stop being confirmed until a look succeeds: the
                // slot keeps WAL, nothing is lost.
                if !failing {
                    tracing::warn!(
                        error = %e,
                        "cannot look for other replication origins; confirming no further until it can"
                    );
                    failing = true;
                }
                client = None;
            }
        }
    }
}
