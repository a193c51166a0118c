//! `walshift cutover`: the command's side of the switch (see the module
//! above for the whole protocol).

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use super::{Outcome, UNCLAIMED_TIMEOUT};
use crate::error_policy::pg_message;
use crate::spec::Spec;
use crate::{state, status};

/// Why the command did not get an outcome.
#[derive(Debug, thiserror::Error)]
pub enum CutoverError {
    /// The migration is not in a state to cut over (exit 1).
    #[error("{0}")]
    NotReady(String),
    /// The database said no, or went away (exit 2).
    #[error("{0}")]
    Database(String),
}

impl From<tokio_postgres::Error> for CutoverError {
    fn from(e: tokio_postgres::Error) -> Self {
        CutoverError::Database(pg_message(&e))
    }
}

/// The command's options.
#[derive(Debug, Clone)]
pub struct Request {
    pub dry_run: bool,
    /// Lag bound for "ready" (as `walshift wait --max-lag`).
    pub max_lag: Duration,
}

/// Checks readiness and files the request; returns its id.
pub async fn request(client: &Client, spec: &Spec, req: &Request) -> Result<i64, CutoverError> {
    let (cut_over_at, postponed) = state::cutover_hold(client, &spec.name)
        .await
        .map_err(|e| {
            if e.code() == Some(&SqlState::UNDEFINED_TABLE) {
                CutoverError::NotReady(format!(
                    "no walshift state in this database: start `walshift run {}` first",
                    spec.file
                ))
            } else {
                e.into()
            }
        })?
        .ok_or_else(|| {
            CutoverError::NotReady(format!(
                "no walshift state for {:?} in this database: start `walshift run {}` first",
                spec.name, spec.file
            ))
        })?;
    if let Some(at) = cut_over_at {
        return Err(CutoverError::NotReady(format!(
            "{} was already cut over at {at}; run `walshift cleanup {}` to remove walshift's objects",
            spec.name, spec.file
        )));
    }
    if postponed {
        return Err(CutoverError::NotReady(format!(
            "cut-over of {} is postponed by the operator; run `walshift ctl {} allow-cutover` first",
            spec.name, spec.file
        )));
    }
    let status = status::read(client, spec).await?;
    if let Some(waiting) = status.waiting_for(req.max_lag) {
        return Err(CutoverError::NotReady(format!(
            "not ready to cut over: {waiting}; `walshift wait {}` returns once it is",
            spec.file
        )));
    }
    let id = state::file_cutover_request(
        client,
        &spec.name,
        req.dry_run,
        &spec.cutover_digest(),
        &spec.file,
    )
    .await?;
    Ok(id)
}

/// Follows request `id` until the run writes its outcome, calling `step`
/// with each new step's description. Gives up (and cancels the request if
/// the run has not started locking) after `timeout`, or when no run claims
/// it within [`UNCLAIMED_TIMEOUT`].
pub async fn follow(
    client: &Client,
    id: i64,
    timeout: Duration,
    mut step: impl FnMut(&str, &str),
) -> Result<Outcome, CutoverError> {
    let started = Instant::now();
    let mut last: (String, Option<String>) = (String::new(), None);
    loop {
        let row = client.query_one(state::CUTOVER_PROGRESS, &[&id]).await?;
        let state: String = row.get(0);
        let detail: Option<String> = row.get(1);
        if (state.as_str(), detail.as_ref()) != (last.0.as_str(), last.1.as_ref()) {
            step(&state, detail.as_deref().unwrap_or(""));
            last = (state.clone(), detail.clone());
        }
        match state.as_str() {
            "done" | "failed" => {
                let result: Option<String> = row.get(2);
                let mut outcome: Outcome = result
                    .and_then(|r| serde_json::from_str(&r).ok())
                    .unwrap_or_default();
                outcome.id = id;
                if state == "failed" && outcome.error.is_none() {
                    outcome.error = Some(detail.unwrap_or_else(|| "failed".into()));
                }
                return Ok(outcome);
            }
            "cancelled" => {
                return Err(CutoverError::NotReady(
                    "the request was cancelled; nothing was changed".into(),
                ));
            }
            "requested" if started.elapsed() > UNCLAIMED_TIMEOUT => {
                cancel(client, id).await?;
                return Err(CutoverError::NotReady(format!(
                    "no running walshift claimed the cut-over request within {UNCLAIMED_TIMEOUT:?}; \
                     is `walshift run` running against this database?"
                )));
            }
            _ if started.elapsed() > timeout => {
                let cancelled = cancel(client, id).await?;
                return Err(CutoverError::NotReady(if cancelled {
                    format!(
                        "no outcome within {timeout:?}: the request was cancelled; nothing was changed"
                    )
                } else {
                    format!(
                        "no outcome within {timeout:?}, and the run is already past verifying: \
                         see `walshift status` for how it ended"
                    )
                }));
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Cancels request `id` if the run has not begun locking. Returns whether
/// it was cancelled.
pub async fn cancel(client: &Client, id: i64) -> Result<bool, CutoverError> {
    Ok(state::cancel_cutover_request(client, id).await?)
}
