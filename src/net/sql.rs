//! Ordinary SQL sessions (tokio-postgres) on walshift's own sockets: the
//! host list walked as libpq walks it, TLS done in src/net/socket.rs, and
//! every session driven by a task that watches for a dead link.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc::UnboundedSender;

use super::hosts::{self, ServerRole, Target, WalkError};
use super::socket::{self, OpenError, Socket};
use super::watch::{self, Link, Watched};
use crate::conninfo::{ConnConfig, SqlConnectError};

impl ServerRole for tokio_postgres::Client {
    async fn read_only(&mut self) -> Result<bool, String> {
        let v = first_value(self, "SHOW transaction_read_only").await?;
        Ok(v == "on")
    }
    async fn in_recovery(&mut self) -> Result<bool, String> {
        let v = first_value(self, "SELECT pg_is_in_recovery()").await?;
        Ok(v == "t")
    }
}

async fn first_value(c: &tokio_postgres::Client, sql: &str) -> Result<String, String> {
    let msgs = c
        .simple_query(sql)
        .await
        .map_err(|e| crate::error_policy::pg_message(&e))?;
    msgs.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .ok_or_else(|| format!("{sql} returned no row"))
}

/// Opens a session on the first host that fits; `notes` receives the
/// payloads of notifications. The session's drive task watches its link
/// ([`Watchdog`]); a session to a host an earlier one was dropped from
/// first terminates the backends left there.
pub(crate) async fn connect(
    config: &ConnConfig,
    notes: Option<UnboundedSender<String>>,
) -> Result<(tokio_postgres::Client, Target), SqlConnectError> {
    let targets = config.targets();
    let walk = hosts::first_fitting(&targets, config.net(), |t| {
        let notes = notes.clone();
        async move {
            let (client, conn, link) = connect_one(config, &t).await?;
            let dog = Watchdog {
                link,
                silence: config.net().request_silence(),
                probe: config.pinned(&t).with_application_name("walshift-probe"),
                target: t.to_string(),
                application_name: config.application_name().to_string(),
            };
            tokio::spawn(drive(conn, notes, dog));
            Ok(client)
        }
    })
    .await;
    let (client, target) = walk_result(walk)?;
    let name = target.to_string();
    if watch::any_abandoned(&name) {
        watch::terminate_abandoned(&client, &name).await;
    }
    Ok((client, target))
}

/// The probe's own session: not watched itself (its caller bounds it).
async fn connect_unwatched(config: &ConnConfig) -> Result<tokio_postgres::Client, SqlConnectError> {
    let targets = config.targets();
    let walk = hosts::first_fitting(&targets, config.net(), |t| async move {
        let (client, conn, _) = connect_one(config, &t).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    })
    .await;
    walk_result(walk).map(|(c, _)| c)
}

fn walk_result(
    walk: Result<(tokio_postgres::Client, Target), WalkError<SqlConnectError>>,
) -> Result<(tokio_postgres::Client, Target), SqlConnectError> {
    match walk {
        Ok(found) => Ok(found),
        Err(WalkError::Only(e)) => Err(e),
        Err(WalkError::None(e)) => Err(SqlConnectError::NoHost(e)),
    }
}

type Connection = tokio_postgres::Connection<Watched<Socket>, tokio_postgres::tls::NoTlsStream>;

async fn connect_one(
    config: &ConnConfig,
    target: &Target,
) -> Result<(tokio_postgres::Client, Connection, Arc<Link>), SqlConnectError> {
    let socket = socket::open(target, config.net(), config.tls())
        .await
        .map_err(|source| SqlConnectError::Open {
            target: target.to_string(),
            source,
        })?;
    let link = Link::new();
    let stream = Watched::new(socket, link.clone());
    // TLS is already done (or refused) on the socket.
    let mut pg = config.pg().clone();
    pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
    let (client, conn) = pg.connect_raw(stream, tokio_postgres::NoTls).await?;
    Ok((client, conn, link))
}

/// What the drive task needs to judge its session's link.
struct Watchdog {
    link: Arc<Link>,
    /// An outstanding request unanswered this long is probed.
    silence: Duration,
    /// The same host, for the probe's own session.
    probe: ConnConfig,
    target: String,
    application_name: String,
}

/// What a probe found.
#[derive(Debug, PartialEq, Eq)]
enum Liveness {
    /// The server is still working on the request, or answered meanwhile.
    Alive,
    /// The answer is lost: the server is done with the request, or cannot be
    /// reached at all.
    Dead(String),
    /// The server answered the probe but could not say.
    Unknown,
}

impl Watchdog {
    /// Asks the server, on a session of its own, what the backend is doing.
    async fn probe(&self, pid: Option<i32>) -> Liveness {
        let stamp = self.link.progress_stamp();
        let Some(pid) = pid else {
            // No BackendKeyData yet: the startup itself is unanswered.
            return Liveness::Dead("no answer to the startup".into());
        };
        let bound = self.probe.net().connect_timeout + Duration::from_secs(1);
        let asked = tokio::time::timeout(bound, async {
            let c = connect_unwatched(&self.probe).await?;
            let row = c
                .query_opt("SELECT state FROM pg_stat_activity WHERE pid = $1", &[&pid])
                .await?;
            Ok::<_, SqlConnectError>(row.and_then(|r| r.get::<_, Option<String>>(0)))
        })
        .await;
        if self.link.progress_stamp() != stamp || self.link.outstanding() == 0 {
            return Liveness::Alive;
        }
        match asked {
            Ok(Ok(Some(state))) if state == "active" => Liveness::Alive,
            Ok(Ok(Some(state))) => Liveness::Dead(format!("the server's backend {pid} is {state}")),
            Ok(Ok(None)) => Liveness::Dead(format!("the server's backend {pid} is gone")),
            Ok(Err(SqlConnectError::Postgres(e))) if e.as_db_error().is_some() => Liveness::Unknown,
            Ok(Err(e)) => Liveness::Dead(format!("the server cannot be reached: {e}")),
            Err(_) => Liveness::Dead(format!(
                "the server cannot be reached: no answer within {bound:?}"
            )),
        }
    }
}

/// Drives a session's connection; notifications go to `notes`. With a
/// watchdog, a request unanswered for its bound is probed, and on a dead
/// link the connection is dropped (its socket closed): the client then
/// reports itself closed, which the callers retry.
async fn drive(mut conn: Connection, notes: Option<UnboundedSender<String>>, dog: Watchdog) {
    let tick_every = (dog.silence / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probe: Option<BoxFuture<'_, Liveness>> = None;
    // Probed and found alive at this stamp: wait another bound from then.
    let mut judged_at: Option<std::time::Instant> = None;
    loop {
        let wake = tokio::select! {
            m = futures_util::future::poll_fn(|cx| conn.poll_message(cx)) => {
                Wake::Message(deliver(m, notes.as_ref()))
            }
            _ = tick.tick(), if probe.is_none() => Wake::Tick,
            verdict = async { probe.as_mut().expect("guarded").await }, if probe.is_some() => {
                Wake::Liveness(verdict)
            }
        };
        match wake {
            Wake::Message(open) => {
                if !open {
                    return;
                }
            }
            Wake::Tick => {
                let d = &dog;
                let due = d
                    .link
                    .unanswered_for()
                    .is_some_and(|silent| silent >= d.silence)
                    && judged_at.is_none_or(|at| at.elapsed() >= d.silence);
                if due {
                    probe = Some(Box::pin(d.probe(d.link.pid())));
                }
            }
            Wake::Liveness(verdict) => {
                probe = None;
                match verdict {
                    Liveness::Alive | Liveness::Unknown => {
                        judged_at = Some(std::time::Instant::now())
                    }
                    Liveness::Dead(why) => {
                        dog.drop_dead(&why);
                        return;
                    }
                }
            }
        }
    }
}

/// What woke a session's driver.
enum Wake {
    /// A message was handled (`false`: the connection ended).
    Message(bool),
    /// Time to look whether a request waits past the bound.
    Tick,
    /// The probe of the server's backend answered.
    Liveness(Liveness),
}

/// A message of the connection: notifications go to `notes`. `false` when
/// the connection ended.
fn deliver(
    m: Option<Result<tokio_postgres::AsyncMessage, tokio_postgres::Error>>,
    notes: Option<&UnboundedSender<String>>,
) -> bool {
    match m {
        Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
            if let Some(tx) = notes {
                let _ = tx.send(n.payload().to_string());
            }
            true
        }
        Some(Ok(_)) => true,
        Some(Err(e)) => {
            tracing::debug!(error = %e, "SQL connection ended");
            false
        }
        None => false,
    }
}

impl Watchdog {
    /// The link is dead: say so, count it, and leave the server's backend
    /// for the next session to terminate. The caller drops the connection.
    fn drop_dead(&self, why: &str) {
        let label = super::session_label(&self.application_name);
        tracing::warn!(
            session = label,
            host = %self.target,
            silence = ?self.silence,
            "dead link: a request got no answer and {why}; dropping the session"
        );
        crate::metrics::dead_link(label);
        if let Some(pid) = self.link.pid() {
            watch::abandon(&self.target, pid, &self.application_name);
        }
    }
}

impl From<OpenError> for std::io::Error {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Io(e) => e,
            other => std::io::Error::other(other.to_string()),
        }
    }
}
