//! `walshift run`: create publication, origin and slot if missing, then mirror live writes
//! until SIGINT/SIGTERM (or a cut-over ends the run).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use walshift::conninfo::ConnConfig;
use walshift::http::{self, Listen};
use walshift::mirror::applier::ApplierOptions;
use walshift::mirror::plant::{self, Plant};
use walshift::run::{self, AbortOnDrop, Observed, RunError, RunOptions, Totals};
use walshift::spec::Spec;

use crate::cli::{self, Db, LOG_TARGET};

#[derive(clap::Args)]
pub struct Args {
    spec: PathBuf,
    #[command(flatten)]
    db: Db,
    /// Apply committed transactions before they are visible to other
    /// sessions. Loses changes; exists only so a test can prove the
    /// visibility barrier is needed.
    #[arg(long, hide = true)]
    unsafe_no_visibility_barrier: bool,
    /// Plant a bug in the two-way engine. Loses data; exists only so a
    /// test can prove it fails without the rule it checks.
    #[arg(long, hide = true, value_enum)]
    unsafe_plant: Option<Plant>,
    /// Keys one mirror may collect per batch before falling back to a
    /// whole-mirror pass (bounds memory for huge transactions).
    #[arg(long, hide = true, default_value_t = RunOptions::default().max_txn_keys)]
    max_txn_keys: usize,
    /// How long a batch of live changes may wait for more while the
    /// applier is idle (e.g. 10ms; 0ms applies each at once). Longer windows
    /// cost the database less per change and add at most this much lag.
    #[arg(long, value_parser = walshift::spec::parse_duration, default_value = "10ms")]
    batch_window: Duration,
    /// Serve the status page, /metrics, /healthz, /readyz and /status on
    /// this address (HOST:PORT; port 0 picks one), or `off`.
    #[arg(long, env = "WALSHIFT_LISTEN", value_name = "ADDR", default_value = http::DEFAULT_LISTEN)]
    listen: Listen,
    /// Lag bound of /readyz ("ready" as `walshift wait --max-lag` means it).
    #[arg(long, value_parser = walshift::spec::parse_duration, default_value = "1s")]
    ready_max_lag: Duration,
}

pub async fn command(args: Args, bars: Option<indicatif::MultiProgress>) -> ExitCode {
    if let Some(bug) = args.unsafe_plant {
        plant::set(bug);
        tracing::warn!(
            target: LOG_TARGET,
            plant = ?bug,
            "a bug is planted in the engine: data will be lost or links left dead; never do this outside tests"
        );
    }
    let (spec, config) = match cli::load(&args.spec, &args.db) {
        Ok(v) => v,
        Err(code) => return code,
    };
    // Bound before anything is created in the database, so a taken
    // port costs nothing.
    let listener = match bind(&args.listen).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let opts = options(&args);
    let stop = stop_on_signal();
    let observed = Observed::default();
    let _ui = bars.map(|multi| {
        AbortOnDrop(tokio::spawn(walshift::terminal::draw(
            multi,
            observed.progress.clone(),
        )))
    });
    // Stops with the run (dropped when this function returns).
    let _http = match listener {
        Some(listener) => match serve(listener, &config, &spec, &observed, args.ready_max_lag) {
            Ok(server) => Some(server),
            Err(code) => return code,
        },
        None => None,
    };
    finish(&spec, run::run(&config, &spec, opts, stop, observed).await)
}

/// The HTTP listener `--listen` asks for, or the one-line error and its exit code.
async fn bind(listen: &Listen) -> Result<Option<TcpListener>, ExitCode> {
    match listen {
        Listen::Off => Ok(None),
        Listen::Addr(addr) => match http::bind(addr).await {
            Ok(l) => Ok(Some(l)),
            Err(e) => Err(cli::fail(&e)),
        },
    }
}

/// The run's options from the (hidden) test flags; warns when the visibility barrier is off.
fn options(args: &Args) -> RunOptions {
    let opts = RunOptions {
        applier: ApplierOptions {
            visibility_barrier: !args.unsafe_no_visibility_barrier,
            ..Default::default()
        },
        max_txn_keys: args.max_txn_keys.max(1),
        batch_window: args.batch_window,
        ..Default::default()
    };
    if args.unsafe_no_visibility_barrier {
        tracing::warn!(
            target: LOG_TARGET,
            "the visibility barrier is OFF: changes can be lost; never do this outside tests"
        );
    }
    opts
}

/// Turns true on SIGINT/SIGTERM: the run stops after the batch in flight.
fn stop_on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        cli::wait_for_signal().await;
        tracing::info!(target: LOG_TARGET, "stopping after the batch in flight");
        let _ = tx.send(true);
    });
    rx
}

/// The status page, /metrics, /healthz, /readyz and /status on `listener`, or the one-line
/// error and its exit code when metrics cannot be recorded.
fn serve(
    listener: TcpListener,
    config: &ConnConfig,
    spec: &Spec,
    observed: &Observed,
    ready_max_lag: Duration,
) -> Result<http::Server, ExitCode> {
    let metrics = walshift::metrics::install().map_err(|e| cli::fail(&e))?;
    Ok(http::serve(
        listener,
        http::Context {
            config: config.clone(),
            spec: spec.clone(),
            observed: observed.clone(),
            ready_max_lag,
            metrics: Some(metrics),
        },
    ))
}

/// What the run's end means for the exit code, said in the log or on stderr.
fn finish(spec: &Spec, result: Result<Totals, RunError>) -> ExitCode {
    match result {
        Ok(totals) if totals.cut_over => {
            tracing::info!(
                target: LOG_TARGET,
                "{} is cut over: walshift run is done; remove its objects with `walshift cleanup {}`",
                spec.name,
                spec.file
            );
            ExitCode::SUCCESS
        }
        Ok(totals) => {
            tracing::info!(
                target: LOG_TARGET,
                txns = totals.txns,
                echo_txns = totals.echo_txns,
                keys = totals.keys,
                rows_written = totals.rows_written,
                confirmed = %totals.confirmed,
                "walshift run stopped cleanly"
            );
            ExitCode::SUCCESS
        }
        Err(RunError::Check { problems }) => {
            for p in &problems {
                cli::say_line(&p.to_string());
            }
            cli::say_error("the spec does not fit the database (see above); nothing was created");
            ExitCode::from(1)
        }
        Err(e) => cli::fail(&e.to_string()),
    }
}
