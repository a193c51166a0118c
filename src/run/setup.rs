//! Creating (idempotently) what `run` needs: state schema, publication,
//! replication origin, slot — in that order, because pgoutput looks the
//! publication up with the snapshot of the change it decodes: a publication
//! created after the slot is unknown to the slot's earliest changes.
//!
//! On failure, whatever this call created is dropped again: a failed `run`
//! leaves no orphan publication or origin behind.

use tokio_postgres::Client;

use crate::catalog::Plan;
use crate::conninfo::ConnConfig;
use crate::error_policy::pg_message;
use crate::ident::QualifiedName;
use crate::replication::ReplicationClient;
use crate::spec::Spec;
use crate::state;

/// What setup found or made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Objects {
    /// walshift may use its replication origin (echo suppression, exact
    /// resume position). Without it, its own writes are recomputed once.
    pub origin: bool,
    pub created_slot: bool,
    /// The slot is lost (slot.rs): why. Nothing replaced it yet.
    pub lost: Option<String>,
}

/// Every table the publication lists, once, in spec order: the sources and
/// the targets of two-way rows mirrors ([`crate::catalog::MirrorPlan::published`]).
pub fn sources(plan: &Plan) -> Vec<QualifiedName> {
    let mut out: Vec<QualifiedName> = Vec::new();
    for t in plan.mirrors.iter().flat_map(|m| m.published()) {
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out
}

pub async fn ensure(
    client: &Client,
    config: &ConnConfig,
    spec: &Spec,
    plan: &Plan,
) -> Result<Objects, String> {
    let mut created_publication = false;
    let mut created_origin = false;
    let result = ensure_inner(
        client,
        config,
        spec,
        plan,
        &mut created_publication,
        &mut created_origin,
    )
    .await;
    if result.is_err() {
        // Undo only what this call made.
        if created_publication {
            let _ = client
                .batch_execute(&format!(
                    "DROP PUBLICATION IF EXISTS {}",
                    crate::ident::quote_ident(&spec.publication_name())
                ))
                .await;
        }
        if created_origin {
            let _ = client
                .execute(
                    "SELECT pg_replication_origin_drop($1)",
                    &[&spec.origin_name()],
                )
                .await;
        }
    }
    result
}

async fn ensure_inner(
    client: &Client,
    config: &ConnConfig,
    spec: &Spec,
    plan: &Plan,
    created_publication: &mut bool,
    created_origin: &mut bool,
) -> Result<Objects, String> {
    state::ensure_schema(client)
        .await
        .map_err(|e| fail("creating the walshift state schema", e))?;
    super::publication::ensure(client, spec, plan, created_publication).await?;
    let origin = ensure_origin(client, config, spec, created_origin).await?;
    let (created_slot, lost) = ensure_slot(client, config, spec).await?;
    Ok(Objects {
        origin,
        created_slot,
        lost,
    })
}

/// `what` failed, as one line.
fn fail(what: &str, e: tokio_postgres::Error) -> String {
    format!("{what}: {}", pg_message(&e))
}

/// The replication origin: optional. Creating and using one needs superuser
/// or granted EXECUTE on the origin functions; without, walshift warns and
/// goes on (returns whether there is one).
async fn ensure_origin(
    client: &Client,
    config: &ConnConfig,
    spec: &Spec,
    created: &mut bool,
) -> Result<bool, String> {
    let origin_name = spec.origin_name();
    let origin_exists = client
        .query_opt(
            "SELECT 1 FROM pg_replication_origin WHERE roname = $1",
            &[&origin_name],
        )
        .await
        .map_err(|e| fail("looking up the replication origin", e))?
        .is_some();
    if origin_exists {
        return Ok(true);
    }
    match client
        .execute("SELECT pg_replication_origin_create($1)", &[&origin_name])
        .await
    {
        Ok(_) => {
            *created = true;
            Ok(true)
        }
        Err(e) if e.code().map(|c| c.code()) == Some("42501") => {
            tracing::warn!(
                "replication origin functions are not permitted for {}: walshift still works, but its own \
                 writes come back through the stream and are recomputed once (no-ops), and progress is kept \
                 only in walshift.migration. To avoid that: GRANT EXECUTE ON FUNCTION \
                 pg_replication_origin_create(text), pg_replication_origin_session_setup(text), \
                 pg_replication_origin_xact_setup(pg_lsn, timestamptz), pg_replication_origin_progress(text, boolean) TO {}",
                config.user(),
                config.user()
            );
            Ok(false)
        }
        Err(e) => Err(fail("creating the replication origin", e)),
    }
}

/// The slot, last: the publication exists before its consistent point. A
/// slot that is lost (invalidated, or gone though the state says walshift
/// made one) is not replaced here: `run` resynchronises, or stops, as
/// `[safety] on_slot_lost` says (slot.rs). Returns whether the slot was
/// created, and why it is lost if it is; the state row is registered.
async fn ensure_slot(
    client: &Client,
    config: &ConnConfig,
    spec: &Spec,
) -> Result<(bool, Option<String>), String> {
    let slot = spec.slot_name();
    let health = super::slot::health(client, &slot)
        .await
        .map_err(|e| fail("looking up the replication slot", e))?;
    if health == super::slot::Health::OtherDatabase {
        return Err(format!(
            "replication slot {slot} exists but belongs to another database: rename the spec or drop that slot"
        ));
    }
    let lost = super::slot::lost_at_start(client, spec).await?;
    let mut consistent_point = None;
    let created_slot = if health == super::slot::Health::Missing && lost.is_none() {
        consistent_point = Some(super::slot::create_slot(config, &slot).await?);
        true
    } else {
        false
    };
    if let Err(e) = state::register(client, spec, consistent_point).await {
        if created_slot {
            drop_slot(config, &slot).await;
        }
        return Err(fail("recording walshift's state", e));
    }
    Ok((created_slot, lost))
}

async fn drop_slot(config: &ConnConfig, slot: &str) {
    if let Ok(mut repl) = ReplicationClient::connect(config).await {
        let _ = repl.drop_slot(slot, false).await;
        let _ = repl.close().await;
    }
}
