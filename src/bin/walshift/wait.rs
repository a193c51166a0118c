//! `walshift wait`: block until backfill is complete and lag is under the bound, or time out.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use walshift::conninfo::ConnConfig;
use walshift::spec::Spec;

use crate::cli::{self, Db};

#[derive(clap::Args)]
pub struct Args {
    spec: PathBuf,
    /// Give up after this long (e.g. 10m); default: wait forever.
    #[arg(long, value_parser = walshift::spec::parse_duration)]
    timeout: Option<Duration>,
    /// Lag bound for "ready".
    #[arg(long, value_parser = walshift::spec::parse_duration, default_value = "1s")]
    max_lag: Duration,
    #[command(flatten)]
    db: Db,
}

pub async fn command(args: Args) -> ExitCode {
    let (spec, config) = match cli::load(&args.spec, &args.db) {
        Ok(v) => v,
        Err(code) => return code,
    };
    wait(&spec, &config, args.timeout, args.max_lag).await
}

/// Polls status until ready; prints what it waits for whenever that changes.
async fn wait(
    spec: &Spec,
    config: &ConnConfig,
    timeout: Option<Duration>,
    max_lag: Duration,
) -> ExitCode {
    let started = Instant::now();
    let mut client: Option<tokio_postgres::Client> = None;
    // What was said last, so a message repeated on every poll is printed once.
    let mut last = String::new();
    loop {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            if let Some(c) = connect(config, &mut last).await {
                client = Some(c);
            }
        }
        if let Some(c) = &client {
            match poll(c, spec, max_lag, &mut last).await {
                Poll::Ready => return ExitCode::SUCCESS,
                Poll::Waiting => {}
                Poll::Failed => client = None,
            }
        }
        if let Some(t) = timeout {
            if started.elapsed() >= t {
                eprintln!("walshift wait: timed out after {t:?} ({last})");
                return ExitCode::from(1);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A session, or `None` after saying why not (once for the same reason).
async fn connect(config: &ConnConfig, last: &mut String) -> Option<tokio_postgres::Client> {
    match config.connect_sql().await {
        Ok(c) => Some(c),
        Err(e) => {
            let msg = format!("cannot connect to {}: {e}", config.redacted());
            if msg != *last {
                eprintln!("walshift wait: {msg}; retrying");
                *last = msg;
            }
            None
        }
    }
}

enum Poll {
    Ready,
    Waiting,
    /// Status could not be read: connect again.
    Failed,
}

/// One look at the status: ready (said on stdout), or still waiting (the kind of thing waited
/// for said when it changes), or the status could not be read (said).
async fn poll(
    client: &tokio_postgres::Client,
    spec: &Spec,
    max_lag: Duration,
    last: &mut String,
) -> Poll {
    let status = match walshift::status::read(client, spec).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("walshift wait: {}", walshift::error_policy::pg_message(&e));
            return Poll::Failed;
        }
    };
    match status.waiting_for(max_lag) {
        None => {
            println!(
                "ready: backfill complete, lag {:.0} ms <= {} ms",
                status.lag.seconds.unwrap_or(0.0) * 1000.0,
                max_lag.as_millis()
            );
            Poll::Ready
        }
        Some(w) => {
            // Progress numbers change every poll; report the kind.
            let kind = w.split(':').next().unwrap_or(&w).to_string();
            if kind != *last {
                eprintln!("walshift wait: waiting for {w}");
                *last = kind;
            }
            Poll::Waiting
        }
    }
}
