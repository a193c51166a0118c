//! `walshift cutover`: request the switch from the running `walshift run` and follow it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use walshift::cutover::{self, CutoverError, Outcome, Request};

use crate::cli::{self, Db};

#[derive(clap::Args)]
pub struct Args {
    spec: PathBuf,
    /// Do everything, then roll the operator's SQL back (measures the freeze).
    #[arg(long)]
    dry_run: bool,
    /// Lag bound for "ready" (as `walshift wait --max-lag`).
    #[arg(long, value_parser = walshift::spec::parse_duration, default_value = "1s")]
    max_lag: Duration,
    /// Give up (cancelling the request if the lock was not yet taken) after this long.
    #[arg(long, value_parser = walshift::spec::parse_duration, default_value = "30m")]
    timeout: Duration,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    db: Db,
}

pub async fn command(args: Args) -> ExitCode {
    let (spec, client) = match cli::load_and_connect(&args.spec, &args.db).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    let req = Request {
        dry_run: args.dry_run,
        max_lag: args.max_lag,
    };
    let id = match cutover::request(&client, &spec, &req).await {
        Ok(id) => id,
        Err(CutoverError::NotReady(why)) => {
            cli::say_error(&why);
            return ExitCode::from(1);
        }
        Err(CutoverError::Database(e)) => return cli::fail(&e),
    };
    let quiet = args.json;
    let follow = cutover::follow(&client, id, args.timeout, |state, detail| {
        if !quiet && !detail.is_empty() {
            eprintln!("{state}: {detail}");
        }
    });
    let followed = tokio::select! {
        r = follow => Some(r),
        _ = cli::wait_for_signal() => None,
    };
    match followed {
        Some(outcome) => report(outcome, args.json),
        None => interrupted(&client, id).await,
    }
}

/// SIGINT/SIGTERM while following: cancel the request if the run has not begun locking.
async fn interrupted(client: &tokio_postgres::Client, id: i64) -> ExitCode {
    let cancelled = cutover::cancel(client, id).await.unwrap_or(false);
    cli::fail(if cancelled {
        "interrupted: the cut-over request was cancelled; nothing was changed"
    } else {
        "interrupted after the run began locking: the cut-over completes or rolls back on its own; see walshift status"
    })
}

fn report(outcome: Result<Outcome, CutoverError>, json: bool) -> ExitCode {
    match outcome {
        Ok(o) => cli::print_report(json, &o, format!("{}\n", o.render()), o.passed),
        Err(CutoverError::NotReady(why)) => {
            cli::say_error(&why);
            ExitCode::from(1)
        }
        Err(CutoverError::Database(e)) => cli::fail(&e),
    }
}
