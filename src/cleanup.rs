//! `walshift cleanup`: after the contract step, drop everything walshift made
//! for a spec — state rows (and the `walshift` schema once no spec uses it),
//! slot, publication, replication origin, in that order. Refuses while a
//! `run` is alive, unless forced (then the run's stream is terminated).

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::error_policy::pg_message;
use crate::ident::quote_ident;
use crate::spec::Spec;
use crate::{state, status};

/// What cleanup did, one line each.
pub async fn cleanup(client: &Client, spec: &Spec, force: bool) -> Result<Vec<String>, String> {
    let err = |what: &str, e: tokio_postgres::Error| format!("{what}: {}", pg_message(&e));
    let st = status::read(client, spec)
        .await
        .map_err(|e| err("reading status", e))?;
    if st.run.alive && !force {
        return Err(format!(
            "a walshift run for {} is alive (pid {} on {}): stop it first, or pass --force to terminate its stream",
            spec.name,
            st.run
                .pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "?".into()),
            st.run.host.as_deref().unwrap_or("?")
        ));
    }
    let mut done = Vec::new();
    // The state first: a run that finds its slot gone while its state is
    // there resynchronises with a new slot (run/slot.rs), so the state must
    // not outlive the slot, even for a moment.
    let has_state = state::has_migration_table(client)
        .await
        .map_err(|e| err("reading the state schema", e))?;
    if has_state {
        let n = state::delete_migration(client, &spec.name)
            .await
            .map_err(|e| err("deleting walshift's state", e))?;
        if n > 0 {
            done.push(format!("deleted the state of {}", spec.name));
        }
        let others = state::count_migrations(client)
            .await
            .map_err(|e| err("reading walshift's state", e))?;
        if others == 0 {
            state::drop_schema(client)
                .await
                .map_err(|e| err("dropping the walshift schema", e))?;
            done.push("dropped schema walshift (no other spec uses it)".into());
        }
    }
    let slot = spec.slot_name();
    // A forced cleanup (or a walsender that outlived its run) holds the slot:
    // end that session, then wait for the slot to be released.
    match drop_slot(client, &slot, true).await {
        Ok(true) => done.push(format!("dropped replication slot {slot}")),
        Ok(false) => {}
        Err(SlotDrop::Held(pid)) => {
            return Err(format!(
                "slot {slot} is still in use by pid {pid} after 10s; stop that session and retry"
            ));
        }
        Err(SlotDrop::Failed(what, e)) => return Err(err(what, e)),
    }
    let publication = spec.publication_name();
    if client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|e| err("reading publications", e))?
        .is_some()
    {
        client
            .batch_execute(&format!("DROP PUBLICATION {}", quote_ident(&publication)))
            .await
            .map_err(|e| err(&format!("dropping publication {publication}"), e))?;
        done.push(format!("dropped publication {publication}"));
    }
    let origin = spec.origin_name();
    if client
        .query_opt(
            "SELECT 1 FROM pg_replication_origin WHERE roname = $1",
            &[&origin],
        )
        .await
        .map_err(|e| err("reading replication origins", e))?
        .is_some()
    {
        client
            .execute("SELECT pg_replication_origin_drop($1)", &[&origin])
            .await
            .map_err(|e| err(&format!("dropping replication origin {origin}"), e))?;
        done.push(format!("dropped replication origin {origin}"));
    }
    Ok(done)
}

/// Why [`drop_slot`] did not drop a slot.
#[derive(Debug)]
pub(crate) enum SlotDrop {
    /// Still held by this backend after 10 s.
    Held(i32),
    /// A statement failed: what it was doing, and the error.
    Failed(&'static str, tokio_postgres::Error),
}

/// Drops replication slot `slot` once no session holds it, looking every
/// 100 ms for up to 10 s. A holder is ended (`pg_terminate_backend`) when
/// `terminate`, else waited for (a walsender on its way out). `Ok(false)`:
/// there was no such slot.
pub(crate) async fn drop_slot(
    client: &Client,
    slot: &str,
    terminate: bool,
) -> Result<bool, SlotDrop> {
    let started = Instant::now();
    loop {
        let active: Option<Option<i32>> = client
            .query_opt(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| SlotDrop::Failed("reading the slot", e))?
            .map(|r| r.get(0));
        match active {
            None => return Ok(false),
            Some(None) => match client
                .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                .await
            {
                Ok(_) => return Ok(true),
                // Taken or dropped meanwhile: look again.
                Err(e)
                    if e.code()
                        .is_some_and(|c| c.code() == "42704" || c.code() == "55006") => {}
                Err(e) => return Err(SlotDrop::Failed("dropping the slot", e)),
            },
            Some(Some(pid)) if started.elapsed() > Duration::from_secs(10) => {
                return Err(SlotDrop::Held(pid));
            }
            Some(Some(pid)) if terminate => {
                client
                    .execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await
                    .map_err(|e| SlotDrop::Failed("terminating the slot's session", e))?;
            }
            Some(Some(_)) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
