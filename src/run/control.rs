//! The run's control task: what the operator asks of a running `run`
//! through the database (so it works from any host). It reads the pause and
//! the `ctl set` overrides from the state row, hands cut-over requests from
//! `walshift.cutover` to the session and writes their steps back, and
//! notices a request the operator cancelled, and passes `ctl retry` on. It
//! LISTENs on [`crate::settings::CHANNEL`], so `ctl` takes effect at once,
//! and polls every 200 ms as well (a notification can be lost with its
//! connection).

use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::conninfo::ConnConfig;
use crate::cutover::session::{Job, Update};
use crate::settings;

/// How often the state is read without a notification.
const POLL: Duration = Duration::from_millis(200);

/// The control task. Ends when the session drops `updates`.
pub(super) async fn control(
    config: ConnConfig,
    name: String,
    requests: mpsc::Sender<Control>,
    mut updates: mpsc::UnboundedReceiver<Update>,
    settings_tx: watch::Sender<settings::Control>,
) {
    let mut session: Option<Session> = None;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut active: Option<i64> = None;
    let mut first = true;
    // `walshift ctl SPEC retry` counts up; the count when the run started
    // is the baseline (the run loads its held keys fresh anyway).
    let mut retries: Option<i64> = None;
    loop {
        let notified = async {
            match session.as_mut() {
                Some(s) => s.notes.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            u = updates.recv() => {
                let Some(u) = u else { return };
                if u.result.is_some() {
                    active = None;
                }
                // Steps are best effort; the outcome is retried a little.
                for _ in 0..if u.result.is_some() { 20 } else { 1 } {
                    if let Some(s) = connected(&config, &mut session).await {
                        if write_update(&s.client, &u).await.is_ok() {
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                continue;
            }
            note = notified => {
                if note.is_none() {
                    // The connection ended; reconnect at the next poll.
                    session = None;
                    continue;
                }
            }
            _ = tick.tick() => {}
        }
        let Some(s) = connected(&config, &mut session).await else {
            continue;
        };
        let c = &s.client;
        if first {
            // Requests a previous session had in hand died with it.
            if c.execute(
                "UPDATE walshift.cutover SET state = 'failed', finished_at = now(), updated_at = now(),
                        detail = 'interrupted: the run restarted its session; nothing was changed, request again'
                 WHERE name = $1 AND state NOT IN ('requested', 'done', 'failed', 'cancelled')",
                &[&name],
            )
            .await
            .is_err()
            {
                continue;
            }
            first = false;
        }
        // The pause and the overrides.
        if let Ok(Some(row)) = c
            .query_opt(
                "SELECT backfill_paused, (to_jsonb(m)->'settings')::text, \
                        coalesce((to_jsonb(m)->>'retry_held')::int8, 0) \
                 FROM walshift.migration m WHERE name = $1",
                &[&name],
            )
            .await
        {
            let asked: i64 = row.get(2);
            if retries.is_some_and(|r| r != asked) && requests.send(Control::Retry).await.is_err() {
                return;
            }
            retries = Some(asked);
            let now = settings::Control {
                paused: row.get(0),
                overrides: row
                    .get::<_, Option<String>>(1)
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .unwrap_or_default(),
            };
            settings_tx.send_if_modified(|current| {
                if *current == now {
                    false
                } else {
                    *current = now;
                    true
                }
            });
        }
        // Cut-over requests.
        if let Some(id) = active {
            if let Ok(Some(row)) = c
                .query_opt("SELECT state FROM walshift.cutover WHERE id = $1", &[&id])
                .await
            {
                if row.get::<_, String>(0) == "cancelled" {
                    active = None;
                    if requests.send(Control::Cancelled(id)).await.is_err() {
                        return;
                    }
                }
            }
            continue;
        }
        let taken = c
            .query_opt(
                "UPDATE walshift.cutover c SET state = 'accepted', updated_at = now()
                 WHERE id = (SELECT id FROM walshift.cutover WHERE name = $1 AND state = 'requested'
                             ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
                 RETURNING id, dry_run,
                           (SELECT cutover_postponed FROM walshift.migration WHERE name = $1),
                           spec_digest, spec_file",
                &[&name],
            )
            .await;
        if let Ok(Some(row)) = taken {
            let job = Job {
                id: row.get(0),
                dry_run: row.get(1),
                spec_digest: row.get(3),
                spec_file: row.get(4),
            };
            let postponed: Option<bool> = row.get(2);
            active = Some(job.id);
            let msg = if postponed == Some(true) {
                Control::Postponed(job)
            } else {
                Control::Request(job)
            };
            if requests.send(msg).await.is_err() {
                return;
            }
        }
    }
}

/// The control task's database session and the notifications it receives.
struct Session {
    client: tokio_postgres::Client,
    notes: mpsc::UnboundedReceiver<String>,
}

/// What the control task tells the session.
#[derive(Debug)]
pub(super) enum Control {
    Request(Job),
    /// Requested while the operator had postponed cut-over.
    Postponed(Job),
    Cancelled(i64),
    /// `walshift ctl SPEC retry`: try the held keys again.
    Retry,
}

async fn connected<'a>(
    config: &ConnConfig,
    session: &'a mut Option<Session>,
) -> Option<&'a mut Session> {
    if session.as_ref().is_none_or(|s| s.client.is_closed()) {
        *session = None;
        let (client, notes) = config
            .with_application_name("walshift-control")
            .connect_sql_listening()
            .await
            .ok()?;
        client
            .batch_execute(&format!("LISTEN {}", settings::CHANNEL))
            .await
            .ok()?;
        *session = Some(Session { client, notes });
    }
    session.as_mut()
}

pub(crate) async fn write_update(
    c: &tokio_postgres::Client,
    u: &Update,
) -> Result<(), tokio_postgres::Error> {
    let result = u
        .result
        .as_ref()
        .and_then(|r| serde_json::to_string(r).ok());
    let attempts = u.attempts.map(|a| a as i32);
    c.execute(
        "UPDATE walshift.cutover SET state = $2, detail = $3,
                attempts = coalesce($4, attempts), result = coalesce($5::text::jsonb, result), updated_at = now(),
                finished_at = CASE WHEN $2 IN ('done', 'failed') THEN now() END
         WHERE id = $1",
        &[&u.id, &u.state, &u.detail, &attempts, &result],
    )
    .await
    .map(|_| ())
}
