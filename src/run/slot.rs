//! Lost slots: telling that walshift's slot is gone or invalidated, and
//! resynchronising (docs/topology.md).
//!
//! ```text
//!  state: backfill reset, slot_lost = reason ─▶ drop the dead slot ─▶ new slot (I1: before any chunk)
//!     ─▶ state: consistent point, slot_lost = NULL, slot_resyncs + 1 ─▶ sessions: every key again
//! ```
//!
//! A slot that lost WAL cannot say which keys changed meanwhile, so every
//! key is recomputed: the backfill starts over, from a slot made before its
//! first chunk. Recomputing from current state is idempotent, so this full
//! pass converges whatever the targets hold. The state is reset *before* the
//! dead slot goes, and `slot_lost` is cleared only once the new slot is
//! recorded: a resync cut short (walshift killed, the database gone) leaves
//! `slot_lost` set, and the next run carries it out again from the start.

use tokio_postgres::Client;

use crate::Lsn;
use crate::conninfo::ConnConfig;
use crate::error_policy::pg_message;
use crate::replication::{ReplicationClient, SlotOptions};
use crate::spec::{OnSlotLost, Spec};
use crate::state;

/// The slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Missing,
    /// It exists but can no longer stream; why, in the server's words.
    Invalidated(String),
    /// A slot of that name belongs to another database.
    OtherDatabase,
}

/// The slot's row, read through `to_jsonb` so that one query fits every
/// major: `wal_status` (13+; `lost` once WAL it needs was removed),
/// `conflicting` (16: invalidated by a recovery conflict), and
/// `invalidation_reason` (17+: `wal_removed`, `rows_removed`,
/// `wal_level_insufficient`, 18: `idle_timeout`).
pub const HEALTH_SQL: &str = "SELECT s.database = current_database(),
        j->>'wal_status', j->>'invalidation_reason', j->>'conflicting'
     FROM pg_replication_slots AS s, to_jsonb(s) AS j WHERE s.slot_name = $1";

pub async fn health(client: &Client, slot: &str) -> Result<Health, tokio_postgres::Error> {
    let Some(row) = client.query_opt(HEALTH_SQL, &[&slot]).await? else {
        return Ok(Health::Missing);
    };
    if row.get::<_, Option<bool>>(0) != Some(true) {
        return Ok(Health::OtherDatabase);
    }
    Ok(judge(row.get(1), row.get(2), row.get(3)))
}

/// What the columns of [`HEALTH_SQL`] say.
fn judge(
    wal_status: Option<String>,
    invalidation_reason: Option<String>,
    conflicting: Option<String>,
) -> Health {
    let mut why = Vec::new();
    if wal_status.as_deref() == Some("lost") {
        why.push("wal_status = lost".to_string());
    }
    if let Some(r) = invalidation_reason {
        why.push(format!("invalidation_reason = {r}"));
    }
    if conflicting.as_deref() == Some("true") && why.is_empty() {
        why.push("conflicting = true".to_string());
    }
    if why.is_empty() {
        Health::Healthy
    } else {
        Health::Invalidated(format!("invalidated ({})", why.join(", ")))
    }
}

/// Why the slot counts as lost when `run` starts, if it does: invalidated;
/// missing although walshift's state says it made one (a consistent point
/// is recorded); or a resync was cut short.
pub async fn lost_at_start(client: &Client, spec: &Spec) -> Result<Option<String>, String> {
    let fail = |what: &str, e: tokio_postgres::Error| format!("{what}: {}", pg_message(&e));
    let (had_slot, unfinished) = state::slot_state(client, &spec.name)
        .await
        .map_err(|e| fail("reading walshift's state", e))?
        .unwrap_or((false, None));
    if let Some(reason) = unfinished {
        return Ok(Some(format!("{reason}; its resync had not finished")));
    }
    let health = health(client, &spec.slot_name())
        .await
        .map_err(|e| fail("looking up the replication slot", e))?;
    Ok(match health {
        Health::Invalidated(why) => Some(why),
        Health::Missing if had_slot => Some(missing()),
        Health::Missing | Health::Healthy | Health::OtherDatabase => None,
    })
}

fn missing() -> String {
    "gone: it no longer exists, though walshift's state says it made it".into()
}

/// What a failed session means, asked of the database after the failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterFailure {
    /// The state (or all of it) was removed: nothing to resume; the message.
    Gone(String),
    /// The state is there but the slot is missing or invalidated.
    Lost(String),
}

/// Whether a session failed because walshift's objects went away; `None`
/// when they are fine or the database cannot be asked (the retry will tell).
pub async fn after_failure(config: &ConnConfig, spec: &Spec) -> Option<AfterFailure> {
    let c = config
        .with_application_name("walshift")
        .connect_sql()
        .await
        .ok()?;
    let has_state = state::has_migration_table(&c).await.ok()?
        && state::has_migration(&c, &spec.name).await.ok()?;
    let health = health(&c, &spec.slot_name()).await.ok()?;
    match (has_state, health) {
        (true, Health::Healthy | Health::OtherDatabase) => None,
        (true, Health::Missing) => Some(AfterFailure::Lost(missing())),
        (true, Health::Invalidated(why)) => Some(AfterFailure::Lost(why)),
        // `walshift cleanup` deletes the state before it drops the slot, so
        // a missing state (with or without the slot) is a cleanup, never a
        // reason to make a new slot.
        (false, health) => Some(AfterFailure::Gone(format!(
            "walshift's {} removed while it ran (by walshift cleanup, or by hand), so there is nothing \
             to resume: stopping; run walshift run again to start over",
            if health == Health::Missing {
                "slot and state were"
            } else {
                "state was"
            }
        ))),
    }
}

/// The one line `run` stops with under `on_slot_lost = "stop"`.
pub fn stop_message(spec: &Spec, reason: &str) -> String {
    format!(
        "replication slot {} is lost ({reason}) and [safety] on_slot_lost = \"stop\": walshift stopped and \
         left the slot and its state as they are; to recover, set on_slot_lost = \"resync\" and run again \
         (a new slot, then every key recomputed), or start over after `walshift cleanup {}`",
        spec.slot_name(),
        spec.file
    )
}

/// The slot is lost: resynchronise, or stop as the spec says. Errors are
/// the one line `run` ends with.
pub async fn handle_lost(config: &ConnConfig, spec: &Spec, reason: &str) -> Result<Lsn, String> {
    match spec.safety.on_slot_lost {
        OnSlotLost::Stop => Err(stop_message(spec, reason)),
        OnSlotLost::Resync => resync(config, spec, reason).await,
    }
}

/// Resets the backfill, drops what is left of the slot, creates a new one
/// (a failover slot on 17+) and records it; returns its consistent point.
pub async fn resync(config: &ConnConfig, spec: &Spec, reason: &str) -> Result<Lsn, String> {
    let slot = spec.slot_name();
    tracing::warn!(slot = %slot, reason, "replication slot lost: resynchronising (a new slot, then every key recomputed)");
    let fail = |what: &str, e: tokio_postgres::Error| {
        format!(
            "resynchronising after slot {slot} was lost: {what}: {}",
            pg_message(&e)
        )
    };
    let mut client = config
        .with_application_name("walshift")
        .connect_sql()
        .await
        .map_err(|e| format!("resynchronising after slot {slot} was lost: connecting: {e}"))?;

    // 1. The state first: from here on, until the new slot is recorded,
    //    every run knows it must resynchronise.
    let tx = client
        .transaction()
        .await
        .map_err(|e| fail("beginning", e))?;
    state::mark_slot_lost(&tx, &spec.name, reason)
        .await
        .map_err(|e| fail("marking the resync", e))?;
    let planted = crate::mirror::plant::active(crate::mirror::plant::Plant::NoResync);
    if !planted {
        state::reset_backfill(&tx, &spec.name)
            .await
            .map_err(|e| fail("resetting the backfill", e))?;
    }
    // Two-way mirrors' carried directions and marks describe writes of the
    // lost stream; the full pass decides every key again. Held keys stay
    // held (their rows still fail) and are tried again as always.
    state::forget_carried_and_marked(&tx, &spec.name)
        .await
        .map_err(|e| fail("forgetting carried and marked keys", e))?;
    tx.commit().await.map_err(|e| fail("committing", e))?;

    // 2. What is left of the dead slot. Its walsender may still be on its
    //    way out; another run holding it is not ours to end.
    use crate::cleanup::{SlotDrop, drop_slot};
    match drop_slot(&client, &slot, false).await {
        Ok(true) => tracing::info!(slot = %slot, "dropped the dead slot"),
        Ok(false) => {}
        Err(SlotDrop::Held(pid)) => {
            return Err(format!(
                "resynchronising after slot {slot} was lost: the dead slot is still held by pid {pid} after 10 s \
                 (another walshift run for this spec?); stop it and run again"
            ));
        }
        Err(SlotDrop::Failed(what, e)) => return Err(fail(what, e)),
    }

    // 3. The new slot, before any chunk reads (I1).
    let created = create_slot(config, &slot)
        .await
        .map_err(|e| format!("resynchronising after slot {slot} was lost: {e}"))?;

    // 4. Recorded: the resync is done, the backfill starts from scratch.
    let recorded = state::record_resync(&client, &spec.name, &created.to_string(), reason).await;
    if let Err(e) = recorded {
        // `slot_lost` is still set: the next run starts the resync over,
        // and finds no slot of this attempt in its way.
        let _ = client
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await;
        return Err(fail("recording the new slot", e));
    }
    crate::metrics::slot_resync();
    tracing::warn!(
        slot = %slot,
        consistent_point = %created,
        reason,
        "resynchronised after the slot was lost: new slot created; the backfill recomputes every key from scratch"
    );
    Ok(created)
}

/// `CREATE_REPLICATION_SLOT` for walshift's slot: a failover slot where the
/// server has them (17+), so a standby that syncs slots keeps a copy.
pub async fn create_slot(config: &ConnConfig, slot: &str) -> Result<Lsn, String> {
    let mut repl = ReplicationClient::connect(&config.with_application_name("walshift-setup"))
        .await
        .map_err(|e| format!("opening a replication connection to create slot {slot}: {e}"))?;
    let options = SlotOptions {
        failover: true,
        ..SlotOptions::default()
    };
    let created = repl
        .create_logical_slot(slot, options)
        .await
        .map_err(|e| format!("creating replication slot {slot}: {e}"))?;
    let _ = repl.close().await;
    tracing::info!(slot = %slot, consistent_point = %created.consistent_point, "created replication slot");
    Ok(created.consistent_point)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_counts_as_invalidated() {
        let s = |v: &str| Some(v.to_string());
        assert_eq!(judge(s("reserved"), None, s("false")), Health::Healthy);
        assert_eq!(judge(s("unreserved"), None, None), Health::Healthy);
        assert_eq!(
            judge(s("lost"), None, None),
            Health::Invalidated("invalidated (wal_status = lost)".into()),
            "14-16: the WAL it needs is gone"
        );
        assert_eq!(
            judge(s("lost"), s("wal_removed"), s("false")),
            Health::Invalidated(
                "invalidated (wal_status = lost, invalidation_reason = wal_removed)".into()
            )
        );
        assert_eq!(
            judge(s("reserved"), s("rows_removed"), s("true")),
            Health::Invalidated("invalidated (invalidation_reason = rows_removed)".into()),
            "17+: a recovery conflict"
        );
        assert_eq!(
            judge(s("reserved"), None, s("true")),
            Health::Invalidated("invalidated (conflicting = true)".into()),
            "16: a recovery conflict"
        );
    }
}
