//! The other sessions of a scenario's database: walshift's, to terminate them, and everyone's,
//! to wait until they are gone.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::scenario::count;
use crate::support::poll;
use crate::support::process::Run;

/// Waits until no other session of this database remains (a backend flushes its statistics
/// before it leaves pg_stat_activity), then expects `n_tup_upd` of users to be `expected`.
pub async fn settled_updates(client: &Client, expected: i64) -> i64 {
    poll(
        None,
        "the other sessions of the database to end",
        Duration::from_secs(30),
        || async move {
            count(
                client,
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()
                   AND backend_type IN ('client backend', 'walsender')",
            )
            .await
                == 0
        },
    )
    .await;
    let read = || async move {
        client
            .batch_execute("SELECT pg_stat_clear_snapshot()")
            .await
            .unwrap();
        count(
            client,
            "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relid = 'public.users'::regclass",
        )
        .await
    };
    // Before PG 15 statistics travel through the collector, asynchronously: poll for them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = read().await;
    while seen < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen = read().await;
    }
    assert_eq!(
        seen, expected,
        "n_tup_upd of users: every row version must come from an application update or a \
         recompute that changed the mapped column"
    );
    seen
}

/// Terminates walshift's sessions in this database once the walsender of its slot and at least
/// one SQL session are there (between two sessions, e.g. while it backs off after a deadlock
/// with the application, there are none). Returns the pids it terminated, the walsender's
/// among them.
pub async fn terminate_walshift_sessions(client: &Client, ws: &Run) -> Vec<i32> {
    // The MATERIALIZED CTE keeps pg_terminate_backend above the datname filter: written in the
    // view's WHERE, it can be pushed below the join with pg_database and reach other databases.
    let sql = "WITH w AS MATERIALIZED (
                   SELECT a.pid, a.pid IS NOT DISTINCT FROM (
                              SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1
                          ) AS streams
                   FROM pg_stat_activity AS a
                   WHERE a.datname = current_database() AND a.application_name LIKE 'walshift%')
               SELECT pid, streams, pg_terminate_backend(pid) FROM w
               WHERE (SELECT bool_or(streams) AND count(*) >= 2 FROM w)";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        ws.ensure_running();
        let rows = client
            .query(sql, &[&ws.slot()])
            .await
            .unwrap_or_else(|e| panic!("terminate walshift's sessions: {e:?}"));
        // A session may end on its own between the two steps (then it is not terminated).
        let terminated: Vec<(i32, bool)> = rows
            .iter()
            .filter(|r| r.get::<_, bool>(2))
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        if terminated.len() >= 2 && terminated.iter().any(|&(_, streams)| streams) {
            return terminated.into_iter().map(|(pid, _)| pid).collect();
        }
        if Instant::now() >= deadline {
            ws.fail("walshift never had both its stream and an SQL session for 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
