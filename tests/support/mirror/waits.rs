//! Conditions a scenario waits on. Each polls, and fails the test at once, with walshift's
//! output, if the process ended meanwhile.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::support::poll;
use crate::support::process::Run;

/// Startup: check, setup, connect, START_REPLICATION.
pub const ACTIVE_WITHIN: Duration = Duration::from_secs(30);
/// The "caught up" condition of the contract.
pub const CAUGHT_UP_WITHIN: Duration = Duration::from_secs(60);

/// `active` of a slot; `None` when there is no such slot.
pub async fn slot_active(client: &Client, slot: &str) -> Option<bool> {
    client
        .query_opt(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap_or_else(|e| panic!("read pg_replication_slots: {e}"))
        .map(|r| r.get(0))
}

/// Whether a walsender streams from `slot`: the slot's `active_pid` is a walsender in state
/// `catchup` or `streaming`, and the slot has a consistent point.
///
/// `active` alone is not enough: the walsender running CREATE_REPLICATION_SLOT holds the slot
/// too (state `startup`), and on a busy server it may wait a long time for running
/// transactions before the slot is consistent. Rows written meanwhile precede the consistent
/// point and never reach the stream, and a "caught up" check against the still-future
/// consistent point passes at once.
pub async fn slot_streaming(client: &Client, slot: &str) -> bool {
    client
        .query_opt(
            "SELECT 1 FROM pg_replication_slots AS s
             JOIN pg_stat_replication AS r ON r.pid = s.active_pid
             WHERE s.slot_name = $1 AND s.confirmed_flush_lsn IS NOT NULL
               AND r.state IN ('catchup', 'streaming')",
            &[&slot],
        )
        .await
        .unwrap_or_else(|e| panic!("read pg_replication_slots: {e}"))
        .is_some()
}

/// Until walshift streams from its slot (see [`slot_streaming`]).
pub async fn wait_active(ws: &Run, client: &Client) {
    let slot = ws.slot();
    poll(
        Some(ws),
        &format!("walshift to stream from slot {slot}"),
        ACTIVE_WITHIN,
        || async move { slot_streaming(client, slot).await },
    )
    .await;
}

/// Until nothing streams from `slot` (e.g. the walsender of a killed walshift has noticed).
pub async fn wait_inactive(client: &Client, slot: &str) {
    poll(
        None,
        &format!("slot {slot} to become inactive"),
        ACTIVE_WITHIN,
        || async move { slot_active(client, slot).await == Some(false) },
    )
    .await;
}

/// The one "caught up" poller, the contract's: once walshift uses its slot, emit a
/// non-transactional message at L, then wait until the slot's `confirmed_flush_lsn >= L`.
/// walshift confirms a keepalive's position only when nothing is pending, so every change
/// committed before L is then applied. Returns L. Fails at once, with the run's log, if the run
/// exits; after [`CAUGHT_UP_WITHIN`] without a walshift on the slot, or as long again after L
/// without the confirmation.
///
/// The slot must be in use first: right after a backfill, or while a resync creates a new slot,
/// walshift may not be streaming yet, and a slot created after L would be past it at once.
pub async fn wait_caught_up(run: &Run, client: &Client) -> String {
    let slot = run.slot();
    poll(
        Some(run),
        &format!("walshift to use slot {slot} before the sync message"),
        CAUGHT_UP_WITHIN,
        || async move { slot_active(client, slot).await == Some(true) },
    )
    .await;
    let lsn: String = client
        .query_one(
            "SELECT pg_logical_emit_message(false, 'test', 'sync')::text",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("emit the sync message: {e}"))
        .get(0);
    let target = lsn.as_str();
    let what = format!("slot {slot} to confirm {lsn}");
    let deadline = Instant::now() + CAUGHT_UP_WITHIN;
    loop {
        run.ensure_running();
        if confirmed_at_least(client, slot, target).await {
            return lsn;
        }
        if Instant::now() >= deadline {
            let state = slot_state(client, slot).await;
            run.fail(&format!(
                "timed out after {CAUGHT_UP_WITHIN:?} waiting for {what}; slot now: {state}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the slot's confirmed_flush_lsn is at or past `lsn`.
pub async fn confirmed_at_least(client: &Client, slot: &str, lsn: &str) -> bool {
    client
        .query_opt(
            "SELECT coalesce(confirmed_flush_lsn >= $1::text::pg_lsn, false)
             FROM pg_replication_slots WHERE slot_name = $2",
            &[&lsn, &slot],
        )
        .await
        .unwrap_or_else(|e| panic!("read pg_replication_slots: {e}"))
        .is_some_and(|r| r.get(0))
}

/// One line describing a slot, for failure messages.
pub async fn slot_state(client: &Client, slot: &str) -> String {
    match client
        .query_opt(
            "SELECT format('active=%s active_pid=%s restart_lsn=%s confirmed_flush_lsn=%s \
                            current_wal_lsn=%s',
                           active, active_pid, restart_lsn, confirmed_flush_lsn,
                           pg_current_wal_lsn())
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
    {
        Ok(Some(row)) => row.get(0),
        Ok(None) => "no such slot".to_owned(),
        Err(e) => format!("(could not read: {e})"),
    }
}
