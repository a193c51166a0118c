//! A scenario's fixture: a database with the old and new shapes, a spec, a client; and the
//! clusters, loads and counts the scenarios share.

use std::sync::Arc;

use tokio_postgres::Client;

use super::load::{Load, LoadOptions, LoadStats, Rng, Step};
use super::waits::wait_active;
use crate::support::process::{Run, Spec};
use crate::support::{Cluster, Database};

/// A load that runs until stopped (mid-load actions need it to keep going afterwards).
pub const OPEN_ENDED: LoadOptions = LoadOptions {
    tasks: 4,
    txns_per_task: u64::MAX,
    reconnect: false,
};

/// The one scenario builder of the mirror and backfill tests: a database with the shapes
/// created (and, for a backfill, the old one pre-filled) by `ddl`, a spec, and a client.
/// [`crate::support::backfill`] adds the backfill's checkpoint reads and `walshift ctl` to it.
pub struct Scenario {
    pub db: Database,
    pub sql: Client,
    pub spec: Spec,
}

impl Scenario {
    pub async fn new(name: &str, ddl: &str, spec: &str) -> Scenario {
        Scenario::on(crate::support::fresh_db().await, name, ddl, spec).await
    }

    pub async fn on(db: Database, name: &str, ddl: &str, spec: &str) -> Scenario {
        let sql = db.connect().await;
        sql.batch_execute(ddl)
            .await
            .unwrap_or_else(|e| panic!("create (and fill) the shapes: {e:?}"));
        Scenario {
            spec: Spec::new(name, spec),
            db,
            sql,
        }
    }

    pub fn conninfo(&self) -> String {
        self.db.conninfo()
    }

    /// Spawns walshift and waits until it streams from its slot.
    pub async fn start(&self, extra: &[&str]) -> Run {
        let ws = Run::on(&self.spec, &self.conninfo())
            .json_log()
            .args(extra)
            .spawn();
        wait_active(&ws, &self.sql).await;
        ws
    }

    pub fn load(&self, opts: LoadOptions, step: Step) -> Load {
        Load::start(&self.conninfo(), opts, step)
    }

    pub async fn count(&self, sql: &str) -> i64 {
        count(&self.sql, sql).await
    }
}

/// The single `i64` that `sql` returns; panics with the statement if it fails.
pub async fn count(client: &Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .get(0)
}

pub fn step(f: impl Fn(&mut Rng) -> String + Send + Sync + 'static) -> Step {
    Arc::new(f)
}

/// The load really ran: at least `min` transactions were acknowledged.
pub fn assert_load(stats: &LoadStats, min: u64) {
    let attempted = stats.acked + stats.rejected + stats.lost;
    assert!(
        stats.acked >= min,
        "only {} of {attempted} transactions were acknowledged (expected at least {min}): \
         {stats:?}",
        stats.acked
    );
}

/// Starts a dedicated cluster with `settings` (it is reconfigured or restarted, so not the
/// shared one).
pub async fn dedicated_cluster(settings: &[(&'static str, &'static str)]) -> Arc<Cluster> {
    let settings = settings.to_vec();
    let cluster = tokio::task::spawn_blocking(move || {
        settings
            .into_iter()
            .fold(Cluster::builder(), |b, (k, v)| b.setting(k, v))
            .start()
    })
    .await
    .expect("cluster start task")
    .unwrap_or_else(|e| panic!("start a dedicated cluster: {e}"));
    Arc::new(cluster)
}

/// A new, empty database named after `hint` on a dedicated `cluster`.
pub async fn fresh_db_on(cluster: &Arc<Cluster>, hint: &str) -> Database {
    let (cluster, hint) = (cluster.clone(), hint.to_owned());
    tokio::task::spawn_blocking(move || cluster.fresh_database_named(&hint))
        .await
        .expect("create database task")
        .unwrap_or_else(|e| panic!("create a database: {e}"))
}
