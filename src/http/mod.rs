//! The HTTP surface of `walshift run` (`--listen`, default `127.0.0.1:9780`).
//!
//! | path       | answer |
//! |------------|--------|
//! | `/metrics` | Prometheus text ([`crate::metrics`]) |
//! | `/healthz` | 200 while the replication stream is connected, else 503 |
//! | `/readyz`  | 200 when ready as `walshift wait` means it ([`Status::is_ready`]), else 503 saying what it waits for |
//! | `/status`  | the JSON of `walshift status --json` |
//! | `/history` | lag samples of the last 15 minutes (one a second) and the mirrors' labels, for the page |
//! | `/overview`| for the page: `/status` and readiness (as `/readyz`) in one JSON, always 200 |
//! | `/`        | a self-contained status page (`page.html`) that polls the above |
//!
//! `/status` and `/readyz` read [`crate::status::read`] on a database session
//! of their own (`walshift-http`), opened on the first request and opened
//! again after it breaks; nothing here writes. `/healthz` and `/history`
//! only read the run's in-process state ([`Observed`]).
//!
//! Why axum: it is hyper (a complete, well-tested HTTP/1.1 server: keep-alive,
//! HEAD, pipelining, chunking) with routing, shared state and response
//! conversions on top, so the server is a table of handlers instead of
//! protocol code. With its default features off it adds little beyond hyper
//! itself. The Prometheus exporter's own listener is not used: one port
//! serves metrics, health and status.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::conninfo::ConnConfig;
use crate::error_policy::pg_message;
use crate::run::{AbortOnDrop, Observed};
use crate::spec::Spec;
use crate::status::{self, Status};

/// Where `run` listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9780";
/// Lag samples kept for `/history`: 15 minutes at one a second.
pub const HISTORY_LEN: usize = 900;
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Bound on connecting and reading status for one request.
const DB_TIMEOUT: Duration = Duration::from_secs(5);

const PAGE: &str = include_str!("page.html");

/// The value of `--listen`: an address to bind, or `off`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Off,
    Addr(String),
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("off") {
            Ok(Listen::Off)
        } else if s.is_empty() {
            Err("give an address such as 127.0.0.1:9780, or off".into())
        } else {
            Ok(Listen::Addr(s.to_string()))
        }
    }
}

/// Binds `addr` (`host:port`; port 0 picks a free one). The error is one
/// line naming the address and what to do.
pub async fn bind(addr: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|e| {
        format!(
            "cannot listen on {addr} for HTTP (metrics, health, status): {e}; \
             choose another address with --listen HOST:PORT, or --listen off"
        )
    })
}

/// What the server needs from `run`.
pub struct Context {
    pub config: ConnConfig,
    pub spec: Spec,
    pub observed: Observed,
    /// Lag bound of `/readyz` (`--ready-max-lag`).
    pub ready_max_lag: Duration,
    /// Renders `/metrics`; `None`: no recorder (the endpoint says so).
    pub metrics: Option<PrometheusHandle>,
}

/// The running server; dropping it stops it (and its helper tasks).
pub struct Server {
    pub addr: std::net::SocketAddr,
    _tasks: Vec<AbortOnDrop>,
}

/// Serves `ctx` on `listener` until the returned [`Server`] is dropped.
pub fn serve(listener: TcpListener, ctx: Context) -> Server {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
    let app = Arc::new(App {
        ctx,
        db: tokio::sync::Mutex::new(None),
        history: std::sync::Mutex::new(VecDeque::with_capacity(HISTORY_LEN)),
    });
    let mut tasks = vec![AbortOnDrop(tokio::spawn(sample(app.clone())))];
    if let Some(h) = app.ctx.metrics.clone() {
        // Without the exporter's own listener, draining histograms is ours.
        tasks.push(AbortOnDrop(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                h.run_upkeep();
            }
        })));
    }
    let router = router(app);
    tasks.push(AbortOnDrop(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "the HTTP server stopped");
        }
    })));
    tracing::info!(
        "listening on http://{addr}/ (status page; /metrics, /healthz, /readyz, /status)"
    );
    Server {
        addr,
        _tasks: tasks,
    }
}

struct App {
    ctx: Context,
    /// The status session, opened on demand.
    db: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    history: std::sync::Mutex<VecDeque<Sample>>,
}

/// One lag sample: unix time (s), watermark lag (s), lag (bytes); the lags
/// are `null` while the stream is down.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
struct Sample(f64, Option<f64>, Option<i64>);

impl App {
    /// `status::read` on the server's session, reconnecting once if the
    /// session broke.
    async fn status(&self) -> Result<Status, String> {
        let mut db = self.db.lock().await;
        for attempt in 0..2 {
            if db.as_ref().is_none_or(|c| c.is_closed()) {
                let config = self.ctx.config.with_application_name("walshift-http");
                let c = tokio::time::timeout(DB_TIMEOUT, config.connect_sql())
                    .await
                    .map_err(|_| format!("timed out connecting to {}", self.ctx.config.redacted()))?
                    .map_err(|e| {
                        format!("cannot connect to {}: {e}", self.ctx.config.redacted())
                    })?;
                *db = Some(c);
            }
            let c = db.as_ref().expect("connected above");
            match tokio::time::timeout(DB_TIMEOUT, status::read(c, &self.ctx.spec)).await {
                Ok(Ok(s)) => return Ok(s),
                Ok(Err(e)) => {
                    let closed = e.is_closed();
                    *db = None;
                    if !closed || attempt == 1 {
                        return Err(format!("cannot read the status: {}", pg_message(&e)));
                    }
                }
                Err(_) => {
                    *db = None;
                    return Err("timed out reading the status from the database".into());
                }
            }
        }
        unreachable!("the second attempt returns")
    }

    fn connected(&self) -> bool {
        self.ctx.observed.connected.load(Ordering::Acquire)
    }
}

/// Appends a lag sample every second.
async fn sample(app: Arc<App>) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let t = unix_now();
        let s = if app.connected() {
            let lag = app
                .ctx
                .observed
                .watermarks
                .lag(Instant::now())
                .map(|d| d.as_secs_f64());
            let bytes = app
                .ctx
                .observed
                .measured
                .lock()
                .expect("measured")
                .lag_bytes;
            Sample(t, lag, bytes)
        } else {
            Sample(t, None, None)
        };
        let mut h = app.history.lock().expect("history lock");
        if h.len() == HISTORY_LEN {
            h.pop_front();
        }
        h.push_back(s);
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| (d.as_millis() as f64) / 1000.0)
        .unwrap_or(0.0)
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status_json))
        .route("/history", get(history))
        .route("/overview", get(overview))
        .fallback(not_found)
        .with_state(app)
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

fn reply(code: StatusCode, content_type: &'static str, body: String) -> Response {
    (
        code,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn page() -> Response {
    reply(StatusCode::OK, "text/html; charset=utf-8", PAGE.to_string())
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    match &app.ctx.metrics {
        Some(h) => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            h.render(),
        ),
        None => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "no metrics recorder in this process\n".into(),
        ),
    }
}

async fn healthz(State(app): State<Arc<App>>) -> Response {
    let slot = app.ctx.spec.slot_name();
    if app.connected() {
        reply(
            StatusCode::OK,
            TEXT,
            format!("ok: streaming from slot {slot}\n"),
        )
    } else {
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            format!(
                "not streaming: the replication session on slot {slot} is not connected \
                 (starting, reconnecting, or stopping; see the log)\n"
            ),
        )
    }
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    let max_lag = app.ctx.ready_max_lag;
    match app.status().await {
        Ok(s) => match s.waiting_for(max_lag) {
            None => reply(
                StatusCode::OK,
                TEXT,
                format!(
                    "ready: backfill complete, lag {:.0} ms <= {} ms\n",
                    s.lag.seconds.unwrap_or(0.0) * 1000.0,
                    max_lag.as_millis()
                ),
            ),
            Some(w) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("not ready: waiting for {w}\n"),
            ),
        },
        Err(e) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            format!("not ready: {e}\n"),
        ),
    }
}

async fn status_json(State(app): State<Arc<App>>) -> Response {
    match app.status().await {
        Ok(s) => reply(
            StatusCode::OK,
            JSON,
            serde_json::to_string_pretty(&s).expect("status serializes") + "\n",
        ),
        Err(e) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            JSON,
            serde_json::json!({ "error": e }).to_string() + "\n",
        ),
    }
}

/// What the page shows from the database, always with 200 (a 503 would be
/// a console error in the browser): the `/status` document, and readiness
/// as `/readyz` decides it.
#[derive(Serialize)]
struct Overview {
    status: Option<Status>,
    /// Why `status` is missing (the database does not answer).
    error: Option<String>,
    /// Ready under `--ready-max-lag` ([`Status::is_ready`]).
    ready: bool,
    /// What readiness waits for ([`Status::waiting_for`]).
    waiting_for: Option<String>,
    ready_max_lag_seconds: f64,
}

async fn overview(State(app): State<Arc<App>>) -> Response {
    let max_lag = app.ctx.ready_max_lag;
    let body = match app.status().await {
        Ok(s) => Overview {
            ready: s.is_ready(max_lag),
            waiting_for: s.waiting_for(max_lag),
            status: Some(s),
            error: None,
            ready_max_lag_seconds: max_lag.as_secs_f64(),
        },
        Err(e) => Overview {
            status: None,
            ready: false,
            waiting_for: Some(e.clone()),
            error: Some(e),
            ready_max_lag_seconds: max_lag.as_secs_f64(),
        },
    };
    reply(
        StatusCode::OK,
        JSON,
        serde_json::to_string(&body).expect("overview serializes"),
    )
}

#[derive(Serialize)]
struct History {
    interval_seconds: f64,
    ready_max_lag_seconds: f64,
    /// The replication stream is connected (what `/healthz` answers).
    connected: bool,
    /// Each mirror's number and label, as the run's log names them.
    mirrors: Vec<MirrorLabel>,
    /// `[unix seconds, lag seconds, lag bytes]`, oldest first; with
    /// `?since=T` only those after `T`.
    samples: Vec<Sample>,
}

#[derive(Serialize)]
struct MirrorLabel {
    mirror: usize,
    label: String,
}

async fn history(State(app): State<Arc<App>>, RawQuery(query): RawQuery) -> Response {
    let since = query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("since="))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(f64::NEG_INFINITY);
    let samples: Vec<Sample> = app
        .history
        .lock()
        .expect("history lock")
        .iter()
        .filter(|s| s.0 > since)
        .copied()
        .collect();
    let mirrors = app
        .ctx
        .observed
        .progress
        .lock()
        .expect("progress lock")
        .mirrors
        .iter()
        .map(|m| MirrorLabel {
            mirror: m.mirror,
            label: m.label.clone(),
        })
        .collect();
    let body = History {
        interval_seconds: SAMPLE_INTERVAL.as_secs_f64(),
        ready_max_lag_seconds: app.ctx.ready_max_lag.as_secs_f64(),
        connected: app.connected(),
        mirrors,
        samples,
    };
    reply(
        StatusCode::OK,
        JSON,
        serde_json::to_string(&body).expect("history serializes"),
    )
}

async fn not_found() -> Response {
    reply(
        StatusCode::NOT_FOUND,
        TEXT,
        "not found; walshift serves / (status page), /metrics, /healthz, /readyz, /status, /history, /overview\n"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_off_or_an_address() {
        assert_eq!("off".parse::<Listen>(), Ok(Listen::Off));
        assert_eq!("OFF".parse::<Listen>(), Ok(Listen::Off));
        assert_eq!(
            "127.0.0.1:0".parse::<Listen>(),
            Ok(Listen::Addr("127.0.0.1:0".into()))
        );
        assert!("".parse::<Listen>().is_err());
    }

    #[tokio::test]
    async fn a_taken_address_is_a_one_line_error_naming_it() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let e = bind(&addr).await.unwrap_err();
        assert!(e.contains(&addr) && e.contains("--listen"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn samples_serialize_as_arrays() {
        let s = serde_json::to_string(&Sample(1.5, Some(0.25), None)).unwrap();
        assert_eq!(s, "[1.5,0.25,null]");
    }
}
