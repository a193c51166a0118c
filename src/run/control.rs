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
use crate::cutover::session::{Job, StateUpdate};
use crate::{settings, state};

/// How often the state is read without a notification.
const POLL: Duration = Duration::from_millis(200);

/// The control task. Ends when the session drops `updates`.
pub(super) async fn control(
    config: ConnConfig,
    name: String,
    requests: mpsc::Sender<ControlEvent>,
    mut updates: mpsc::UnboundedReceiver<StateUpdate>,
    settings_tx: watch::Sender<settings::Control>,
) {
    let mut task = ControlTask {
        config,
        name,
        requests,
        settings_tx,
        active: None,
        first: true,
        retries: None,
    };
    let mut conn: Option<ControlSession> = None;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wake = tokio::select! {
            u = updates.recv() => Wake::StateUpdate(u.map(Box::new)),
            note = notification(&mut conn) => Wake::Notified(note.is_some()),
            _ = tick.tick() => Wake::Tick,
        };
        match wake {
            Wake::StateUpdate(None) => return,
            Wake::StateUpdate(Some(u)) => {
                task.write(&mut conn, &u).await;
                continue;
            }
            // The connection ended; reconnect at the next poll.
            Wake::Notified(false) => {
                conn = None;
                continue;
            }
            Wake::Notified(true) | Wake::Tick => {}
        }
        let Some(s) = connected(&task.config, &mut conn).await else {
            continue;
        };
        if task.poll(&s.client).await == Err(Gone) {
            return;
        }
    }
}

/// What woke the control task.
enum Wake {
    /// A step or outcome to write (`None`: the session is gone).
    StateUpdate(Option<Box<StateUpdate>>),
    /// A notification (`false`: the connection ended).
    Notified(bool),
    Tick,
}

/// The session no longer listens: the control task ends.
#[derive(Debug, PartialEq, Eq)]
struct Gone;

/// The control task's state between polls.
struct ControlTask {
    config: ConnConfig,
    name: String,
    requests: mpsc::Sender<ControlEvent>,
    settings_tx: watch::Sender<settings::Control>,
    /// The cut-over request handed to the session and not finished.
    active: Option<i64>,
    /// No poll has run yet on any connection.
    first: bool,
    /// `walshift ctl SPEC retry` counts up; the count when the run started
    /// is the baseline (the run loads its held keys fresh anyway).
    retries: Option<i64>,
}

impl ControlTask {
    /// Writes a step (best effort) or an outcome (retried a little).
    async fn write(&mut self, conn: &mut Option<ControlSession>, u: &StateUpdate) {
        if u.result.is_some() {
            self.active = None;
        }
        for _ in 0..if u.result.is_some() { 20 } else { 1 } {
            if let Some(s) = connected(&self.config, conn).await {
                if write_update(&s.client, u).await.is_ok() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// One reading of the state: what a previous session left, the pause
    /// and overrides, then the request in hand or a new one.
    async fn poll(&mut self, c: &tokio_postgres::Client) -> Result<(), Gone> {
        if self.first {
            if self.mark_interrupted(c).await.is_err() {
                return Ok(());
            }
            self.first = false;
        }
        self.follow_settings(c).await?;
        match self.active {
            Some(id) => self.follow_active(c, id).await,
            None => self.take_request(c).await,
        }
    }

    /// Requests a previous session had in hand died with it.
    async fn mark_interrupted(
        &self,
        c: &tokio_postgres::Client,
    ) -> Result<(), tokio_postgres::Error> {
        state::fail_interrupted_cutovers(c, &self.name).await
    }

    /// The pause and the overrides (sent on when they changed), and `ctl
    /// retry` (passed on when its count moved).
    async fn follow_settings(&mut self, c: &tokio_postgres::Client) -> Result<(), Gone> {
        let Ok(Some(row)) = c.query_opt(state::CONTROL_STATE, &[&self.name]).await else {
            return Ok(());
        };
        let asked: i64 = row.get(2);
        if self.retries.is_some_and(|r| r != asked) {
            self.send(ControlEvent::Retry).await?;
        }
        self.retries = Some(asked);
        let now = settings::Control {
            paused: row.get(0),
            overrides: row
                .get::<_, Option<String>>(1)
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default(),
        };
        self.settings_tx.send_if_modified(|current| {
            if *current == now {
                false
            } else {
                *current = now;
                true
            }
        });
        Ok(())
    }

    /// The request in hand: has the operator cancelled it?
    async fn follow_active(&mut self, c: &tokio_postgres::Client, id: i64) -> Result<(), Gone> {
        let Ok(Some(request)) = state::cutover_request_state(c, id).await else {
            return Ok(());
        };
        if request == "cancelled" {
            self.active = None;
            self.send(ControlEvent::Cancelled(id)).await?;
        }
        Ok(())
    }

    /// Claims the oldest new request, if any, and hands it to the session.
    async fn take_request(&mut self, c: &tokio_postgres::Client) -> Result<(), Gone> {
        let taken = c.query_opt(state::CUTOVER_ACCEPT, &[&self.name]).await;
        let Ok(Some(row)) = taken else {
            return Ok(());
        };
        let job = Job {
            id: row.get(0),
            dry_run: row.get(1),
            spec_digest: row.get(3),
            spec_file: row.get(4),
        };
        let postponed: Option<bool> = row.get(2);
        self.active = Some(job.id);
        let event = if postponed == Some(true) {
            ControlEvent::Postponed(job)
        } else {
            ControlEvent::Request(job)
        };
        self.send(event).await
    }

    async fn send(&self, event: ControlEvent) -> Result<(), Gone> {
        self.requests.send(event).await.map_err(|_| Gone)
    }
}

/// The next notification on the control session; never, without one.
async fn notification(conn: &mut Option<ControlSession>) -> Option<String> {
    match conn.as_mut() {
        Some(s) => s.notes.recv().await,
        None => std::future::pending().await,
    }
}

/// The control task's database session and the notifications it receives.
struct ControlSession {
    client: tokio_postgres::Client,
    notes: mpsc::UnboundedReceiver<String>,
}

/// What the control task tells the session.
#[derive(Debug)]
pub(super) enum ControlEvent {
    Request(Job),
    /// Requested while the operator had postponed cut-over.
    Postponed(Job),
    Cancelled(i64),
    /// `walshift ctl SPEC retry`: try the held keys again.
    Retry,
}

async fn connected<'a>(
    config: &ConnConfig,
    session: &'a mut Option<ControlSession>,
) -> Option<&'a mut ControlSession> {
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
        *session = Some(ControlSession { client, notes });
    }
    session.as_mut()
}

pub(crate) async fn write_update(
    c: &tokio_postgres::Client,
    u: &StateUpdate,
) -> Result<(), tokio_postgres::Error> {
    let result = u
        .result
        .as_ref()
        .and_then(|r| serde_json::to_string(r).ok());
    let attempts = u.attempts.map(|a| a as i32);
    state::record_cutover_step(
        c,
        u.id,
        u.state,
        u.detail.as_deref(),
        attempts,
        result.as_deref(),
    )
    .await
}
