//! Failover slots (PostgreSQL 17+): whether a standby keeps a synced copy
//! of walshift's slot, so a promoted standby can continue from it
//! (docs/topology.md).
//!
//! ```text
//!  primary: walshift_<name> (failover = true) ── slotsync worker ──▶ standby: walshift_<name>
//!           synchronized_standby_slots = '<standby's physical slot>'      synced = true, temporary = false
//! ```
//!
//! The standbys are the hosts of a multi-host `--db` that are in recovery;
//! each is asked for its copy. With one host, only the primary's side
//! (the slot's `failover` flag, `synchronized_standby_slots`) is shown.

use serde::Serialize;
use tokio_postgres::Client;

use crate::conninfo::ConnConfig;
use crate::status::SlotState;

/// What one standby holds of walshift's slot.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct StandbyCopy {
    /// The host as the connection string names it (no credentials).
    pub host: String,
    /// The copy is usable after a promotion: synced, not temporary, not
    /// invalidated.
    pub ready: bool,
    /// What the standby said, or why it could not be asked.
    pub detail: String,
}

/// The primary's `synchronized_standby_slots` (17+), `None` before 17.
pub async fn synchronized_standby_slots(
    client: &Client,
) -> Result<Option<String>, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "SELECT setting FROM pg_settings WHERE name = 'synchronized_standby_slots'",
            &[],
        )
        .await?
        .map(|r| r.get(0)))
}

/// Asks every host of `config` that is a standby (in recovery) about its
/// copy of `slot`; hosts that do not answer are listed with the reason. One
/// host (or none in recovery): an empty list.
pub async fn standby_copies(config: &ConnConfig, slot: &str) -> Vec<StandbyCopy> {
    let targets = config.each_target();
    if targets.len() < 2 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for target in targets {
        let host = target
            .redacted()
            .split("host=")
            .nth(1)
            .and_then(|h| h.split(' ').next())
            .unwrap_or("?")
            .to_string();
        let asked = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            ask(&target.with_application_name("walshift-topology"), slot),
        )
        .await;
        match asked {
            Ok(Ok(None)) => {} // the primary
            Ok(Ok(Some((ready, detail)))) => out.push(StandbyCopy {
                host,
                ready,
                detail,
            }),
            Ok(Err(e)) => out.push(StandbyCopy {
                host,
                ready: false,
                detail: format!("cannot ask: {e}"),
            }),
            Err(_) => out.push(StandbyCopy {
                host,
                ready: false,
                detail: "cannot ask: no answer within 5 s".into(),
            }),
        }
    }
    out
}

/// `None` for a server not in recovery; else whether its copy is usable and
/// what it is.
async fn ask(config: &ConnConfig, slot: &str) -> Result<Option<(bool, String)>, String> {
    let c = config.connect_sql().await.map_err(|e| e.to_string())?;
    let fail = |e: tokio_postgres::Error| crate::error_policy::pg_message(&e);
    let standby: bool = c
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .map_err(fail)?
        .get(0);
    if !standby {
        return Ok(None);
    }
    let row = c
        .query_opt(
            "SELECT j->>'synced', j->>'temporary', j->>'invalidation_reason', confirmed_flush_lsn::text
             FROM pg_replication_slots AS s, to_jsonb(s) AS j WHERE s.slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(fail)?;
    let Some(row) = row else {
        return Ok(Some((
            false,
            "no copy of the slot (needs PostgreSQL 17+, a failover slot, and on the standby \
             sync_replication_slots = on, hot_standby_feedback = on, primary_slot_name, dbname in primary_conninfo)"
                .into(),
        )));
    };
    let (synced, temporary, invalidated, confirmed): (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    ) = (row.get(0), row.get(1), row.get(2), row.get(3));
    let synced = synced.as_deref() == Some("true");
    let temporary = temporary.as_deref() == Some("true");
    Ok(Some(match (synced, temporary, invalidated) {
        (true, false, None) => (
            true,
            format!(
                "synced copy at {}",
                confirmed.as_deref().unwrap_or("an unknown position")
            ),
        ),
        (_, _, Some(r)) => (false, format!("its copy is invalidated ({r})")),
        (true, true, None) => (
            false,
            "its copy is still temporary (the first sync has not caught up; it is dropped on promotion)"
                .into(),
        ),
        (false, _, None) => (false, "a slot of that name that is not synced from the primary".into()),
    }))
}

/// One line on failover for `status`: what the slot is, what the primary
/// waits for, and what each standby holds.
pub fn render(slot: &SlotState) -> Option<String> {
    if !slot.exists {
        return None;
    }
    let primary = match slot.failover {
        None => {
            return Some(
                "PostgreSQL before 17 has no failover slots: after a promotion walshift resynchronises".into(),
            );
        }
        Some(false) => {
            return Some(
                "the slot is not a failover slot: a promoted standby has no copy, and walshift resynchronises"
                    .into(),
            );
        }
        Some(true) => match slot.synchronized_standby_slots.as_deref() {
            Some(s) if !s.is_empty() => format!("failover slot; synchronized_standby_slots = '{s}'"),
            _ => "failover slot; synchronized_standby_slots is unset, so walshift may receive changes a standby has not"
                .into(),
        },
    };
    if slot.standbys.is_empty() {
        return Some(format!(
            "{primary}; no standby asked (list the standbys as further hosts of --db)"
        ));
    }
    let standbys: Vec<String> = slot
        .standbys
        .iter()
        .map(|s| {
            format!(
                "{} {}: {}",
                s.host,
                if s.ready { "ready" } else { "NOT ready" },
                s.detail
            )
        })
        .collect();
    Some(format!("{primary}; standby {}", standbys.join("; ")))
}

/// What `check` says about failover: the slot's kind (or what `run` will
/// make), the primary's `synchronized_standby_slots`, and every standby of a
/// multi-host `--db` (its copy, or the setting it lacks for one).
pub async fn check_line(
    client: &Client,
    config: &ConnConfig,
    slot: &str,
) -> Result<String, tokio_postgres::Error> {
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await?
        .get(0);
    if version < 170000 {
        return Ok(format!(
            "failover: PostgreSQL {} has no failover slots: after a promotion the slot is gone and walshift \
             resynchronises (a new slot, then every key recomputed)",
            version / 10000
        ));
    }
    let existing: Option<Option<bool>> = client
        .query_opt(
            "SELECT (to_jsonb(s)->>'failover')::bool FROM pg_replication_slots AS s WHERE slot_name = $1",
            &[&slot],
        )
        .await?
        .map(|r| r.get(0));
    let mut state = SlotState {
        name: slot.to_string(),
        exists: true,
        failover: Some(existing.flatten().unwrap_or(true)),
        synchronized_standby_slots: synchronized_standby_slots(client).await?,
        ..SlotState::default()
    };
    if existing.is_some() {
        state.standbys = standby_copies(config, slot).await;
    } else {
        for t in config.each_target() {
            if let Ok(Some(missing)) = standby_settings(&t).await {
                state.standbys.push(missing);
            }
        }
    }
    let mut line = render(&state).unwrap_or_default();
    if existing.is_none() {
        line = format!("run creates a {line}");
    }
    Ok(format!("failover: {line}"))
}

/// A standby's settings for slot sync, checked before the slot exists;
/// `None` for the primary.
async fn standby_settings(config: &ConnConfig) -> Result<Option<StandbyCopy>, String> {
    let c = config
        .with_application_name("walshift-topology")
        .connect_sql()
        .await
        .map_err(|e| e.to_string())?;
    let row = c
        .query_one(
            "SELECT pg_is_in_recovery(), current_setting('sync_replication_slots', true),
                    current_setting('hot_standby_feedback'), current_setting('primary_slot_name')",
            &[],
        )
        .await
        .map_err(|e| crate::error_policy::pg_message(&e))?;
    if !row.get::<_, bool>(0) {
        return Ok(None);
    }
    let (sync, feedback, slot): (Option<String>, String, String) =
        (row.get(1), row.get(2), row.get(3));
    let mut lacks = Vec::new();
    if sync.as_deref() != Some("on") {
        lacks.push("sync_replication_slots = on");
    }
    if feedback != "on" {
        lacks.push("hot_standby_feedback = on");
    }
    if slot.is_empty() {
        lacks.push("primary_slot_name");
    }
    let host = config
        .redacted()
        .split("host=")
        .nth(1)
        .and_then(|h| h.split(' ').next())
        .unwrap_or("?")
        .to_string();
    Ok(Some(StandbyCopy {
        host,
        ready: lacks.is_empty(),
        detail: if lacks.is_empty() {
            "set up to sync slots".into()
        } else {
            format!("lacks {}", lacks.join(", "))
        },
    }))
}
