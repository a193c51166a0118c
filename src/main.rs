//! The `walshift` command.
//!
//! Exit codes, for scripts:
//! - 0: done (check passed; run stopped cleanly on SIGINT/SIGTERM)
//! - 1: the answer is no (check found problems)
//! - 2: could not do the job (bad spec or arguments, connection failed,
//!   fatal error while running)

mod demo;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

use walshift::catalog;
use walshift::conninfo::ConnConfig;
use walshift::mirror::applier::ApplierOptions;
use walshift::run::{self, AbortOnDrop, RunError, RunOptions};
use walshift::spec::Spec;

#[derive(Parser)]
#[command(
    name = "walshift",
    version,
    about = "Mirror writes from the old schema shape to the new through logical replication, during expand/contract migrations"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// More detail in logs (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct Db {
    /// Connection string (libpq key=value or postgres:// URL). Unset values
    /// come from PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE, ...
    #[arg(
        long,
        env = "WALSHIFT_DB",
        hide_env_values = true,
        default_value = "",
        global = true
    )]
    db: String,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a spec against the live database and print the plan. Creates nothing.
    Check {
        /// The spec file (TOML).
        spec: PathBuf,
        /// Scan the data for about this long (e.g. 60s; `full`: every row; `off`: no scan, a
        /// few chunks timed for the ETA). Every mapping runs over the existing rows in
        /// chunks that are rolled back; failing rows are reported by kind with example keys.
        #[arg(long, value_name = "BUDGET", default_value = "60s")]
        scan: walshift::scan::Budget,
        #[command(flatten)]
        db: Db,
    },
    /// Create publication, origin and slot if missing, then mirror live writes until SIGINT/SIGTERM.
    Run {
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
        unsafe_plant: Option<walshift::mirror::plant::Plant>,
        /// Keys one mirror may collect per batch before falling back to a
        /// whole-mirror pass (bounds memory for huge transactions).
        #[arg(long, hide = true, default_value_t = RunOptions::default().max_txn_keys)]
        max_txn_keys: usize,
        /// Serve the status page, /metrics, /healthz, /readyz and /status on
        /// this address (HOST:PORT; port 0 picks one), or `off`.
        #[arg(long, env = "WALSHIFT_LISTEN", value_name = "ADDR", default_value = walshift::http::DEFAULT_LISTEN)]
        listen: walshift::http::Listen,
        /// Lag bound of /readyz ("ready" as `walshift wait --max-lag` means it).
        #[arg(long, value_parser = walshift::spec::parse_duration, default_value = "1s")]
        ready_max_lag: std::time::Duration,
    },
    /// The whole story on a throwaway local PostgreSQL: fill, expand, check, mirror under
    /// load with backfill, catch up, verify, summary. Needs only the server binaries.
    Demo(demo::DemoOptions),
    /// Phase, backfill progress and ETA, lag, throttle state, slot health, whether a run is alive.
    Status {
        spec: PathBuf,
        /// Machine-readable output (stable; fields are only ever added).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: Db,
    },
    /// Block until backfill is complete and lag is under the bound (exit 0), or time out (exit 1).
    Wait {
        spec: PathBuf,
        /// Give up after this long (e.g. 10m); default: wait forever.
        #[arg(long, value_parser = walshift::spec::parse_duration)]
        timeout: Option<std::time::Duration>,
        /// Lag bound for "ready".
        #[arg(long, value_parser = walshift::spec::parse_duration, default_value = "1s")]
        max_lag: std::time::Duration,
        #[command(flatten)]
        db: Db,
    },
    /// Prove every target equals the mapping of its source (chunk by chunk), then run the gates.
    /// Exit 0 only if everything matches and every gate passes.
    Verify {
        spec: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Example keys shown per mirror.
        #[arg(long, default_value_t = 10)]
        examples: usize,
        #[command(flatten)]
        db: Db,
    },
    /// Switch over: verify, lock the sources briefly (writes wait, reads go on), apply the last
    /// changes, re-check, run the gates and `[cutover] sql`, commit. Carried out by the running
    /// `walshift run`. Exit 0 on success, 1 when refused or failed (nothing changed).
    Cutover {
        spec: PathBuf,
        /// Do everything, then roll the operator's SQL back (measures the freeze).
        #[arg(long)]
        dry_run: bool,
        /// Lag bound for "ready" (as `walshift wait --max-lag`).
        #[arg(long, value_parser = walshift::spec::parse_duration, default_value = "1s")]
        max_lag: std::time::Duration,
        /// Give up (cancelling the request if the lock was not yet taken) after this long.
        #[arg(long, value_parser = walshift::spec::parse_duration, default_value = "30m")]
        timeout: std::time::Duration,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: Db,
    },
    /// Drop the slot, publication, origin and state of a spec (after the contract step).
    Cleanup {
        spec: PathBuf,
        /// Terminate a running walshift's stream instead of refusing.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        db: Db,
    },
    /// Control a running `walshift run` through the database (works from any host).
    Ctl {
        spec: PathBuf,
        #[command(subcommand)]
        action: CtlAction,
        #[command(flatten)]
        db: Db,
    },
}

#[derive(Subcommand, Clone)]
enum CtlAction {
    /// Pause the backfill of history (live mirroring continues).
    Pause,
    /// Resume the backfill.
    Resume,
    /// Change `[backfill]` limits of the running run without a restart: chunk_target_time,
    /// max_rows_per_second, max_replica_lag, max_replica_lag_bytes, max_apply_lag,
    /// max_retained_wal, min_chunk_rows, max_chunk_rows. `KEY=default` removes an override.
    Set {
        #[arg(required = true, value_name = "KEY=VALUE")]
        assignments: Vec<String>,
    },
    /// Show the overrides in force.
    Show,
    /// Refuse `walshift cutover` until allowed again (e.g. during a traffic peak).
    PostponeCutover,
    /// Allow `walshift cutover` again.
    AllowCutover,
    /// Try the held keys again now (keys whose rows failed the mapping or the target's
    /// constraints; `walshift status` lists them). A held key is also tried again whenever
    /// its row changes, and when `walshift run` starts.
    Retry,
}

fn main() -> ExitCode {
    use std::io::IsTerminal;
    // `walshift status | head` should end quietly like any Unix tool, not
    // panic on a closed pipe: restore SIGPIPE's default action.
    // SAFETY: called before any thread starts; SIG_DFL is a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    // Progress bars only for a person at a terminal, with human logs.
    let bars = (matches!(cli.command, Command::Run { .. } | Command::Demo(_))
        && matches!(cli.log_format, LogFormat::Text)
        && std::io::stderr().is_terminal())
    .then(walshift::terminal::multi);
    init_logging(cli.log_format, cli.verbose, bars.clone());
    JSON_ERRORS.store(
        matches!(cli.log_format, LogFormat::Json),
        std::sync::atomic::Ordering::Relaxed,
    );
    // One thread. walshift's own work is small next to the database's; what
    // cost it CPU was tasks waking each other across worker threads (the
    // stream reader, the session loop, the applier's connections): `perf`
    // showed a quarter of the process in context switches. On one thread a
    // hand-off is a queue push. e2e live run: 4.9 -> 1.7 CPU-s per 20 s.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("walshift: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async_main(cli.command, bars))
}

async fn async_main(command: Command, bars: Option<indicatif::MultiProgress>) -> ExitCode {
    match command {
        Command::Check { spec, scan, db } => {
            let (spec, config) = match load(&spec, &db) {
                Ok(v) => v,
                Err(code) => return code,
            };
            let client = match connect(&config).await {
                Ok(c) => c,
                Err(code) => return code,
            };
            match walshift::check::command(&client, &config, &spec, scan).await {
                Ok(walshift::check::Verdict::Passed) => ExitCode::SUCCESS,
                Ok(walshift::check::Verdict::Failed) => ExitCode::from(1),
                Err(e) => fail(&e),
            }
        }
        Command::Demo(opts) => match demo::demo(opts, bars).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("demo failed: {e:#}")),
        },
        Command::Status { spec, json, db } => {
            let (spec, config) = match load(&spec, &db) {
                Ok(v) => v,
                Err(code) => return code,
            };
            let client = match connect(&config).await {
                Ok(c) => c,
                Err(code) => return code,
            };
            let read = match walshift::status::read(&client, &spec).await {
                Ok(mut s) => {
                    // The standbys of a multi-host --db: their copies of the slot.
                    s.slot.standbys =
                        walshift::topology::standby_copies(&config, &spec.slot_name()).await;
                    Ok(s)
                }
                Err(e) => Err(e),
            };
            match read {
                Ok(s) if json => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&s).expect("status serializes")
                    );
                    ExitCode::SUCCESS
                }
                Ok(s) => {
                    print!("{}", s.render());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&walshift::error_policy::pg_message(&e)),
            }
        }
        Command::Wait {
            spec,
            timeout,
            max_lag,
            db,
        } => {
            let (spec, config) = match load(&spec, &db) {
                Ok(v) => v,
                Err(code) => return code,
            };
            wait(&spec, &config, timeout, max_lag).await
        }
        Command::Verify {
            spec,
            json,
            examples,
            db,
        } => {
            let (spec, client) = match load_and_connect(&spec, &db).await {
                Ok(v) => v,
                Err(code) => return code,
            };
            let plan = match catalog::check(&client, &spec).await {
                Ok(r) if r.problems.is_empty() => r.plan.expect("a plan without problems"),
                Ok(r) => {
                    for p in &r.problems {
                        say_line(&p.to_string());
                    }
                    return fail(
                        "the spec does not fit the database (see above); nothing to verify",
                    );
                }
                Err(e) => return fail(&walshift::error_policy::pg_message(&e)),
            };
            match walshift::verify::verify(&client, &spec, &plan, examples).await {
                Ok(report) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&report).expect("report serializes")
                        );
                    } else {
                        print!("{}", report.render());
                    }
                    if report.passed {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => fail(&format!(
                    "verify failed: {}",
                    walshift::error_policy::pg_message(&e)
                )),
            }
        }
        Command::Cleanup { spec, force, db } => {
            let (spec, client) = match load_and_connect(&spec, &db).await {
                Ok(v) => v,
                Err(code) => return code,
            };
            match walshift::cleanup::cleanup(&client, &spec, force).await {
                Ok(done) => {
                    for line in &done {
                        println!("{line}");
                    }
                    println!(
                        "cleanup of {} complete: no walshift object remains for it",
                        spec.name
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Command::Cutover {
            spec,
            dry_run,
            max_lag,
            timeout,
            json,
            db,
        } => {
            let (spec, client) = match load_and_connect(&spec, &db).await {
                Ok(v) => v,
                Err(code) => return code,
            };
            cutover(&spec, &client, dry_run, max_lag, timeout, json).await
        }
        Command::Ctl { spec, action, db } => {
            let (spec, config) = match load(&spec, &db) {
                Ok(v) => v,
                Err(code) => return code,
            };
            ctl(&spec, &config, action).await
        }
        Command::Run {
            spec,
            db,
            unsafe_no_visibility_barrier,
            unsafe_plant,
            max_txn_keys,
            listen,
            ready_max_lag,
        } => {
            if let Some(plant) = unsafe_plant {
                walshift::mirror::plant::set(plant);
                tracing::warn!(
                    ?plant,
                    "a bug is planted in the engine: data will be lost or links left dead; never do this outside tests"
                );
            }
            let (spec, config) = match load(&spec, &db) {
                Ok(v) => v,
                Err(code) => return code,
            };
            // Bound before anything is created in the database, so a taken
            // port costs nothing.
            let listener = match &listen {
                walshift::http::Listen::Off => None,
                walshift::http::Listen::Addr(addr) => match walshift::http::bind(addr).await {
                    Ok(l) => Some(l),
                    Err(e) => return fail(&e),
                },
            };
            let opts = RunOptions {
                applier: ApplierOptions {
                    visibility_barrier: !unsafe_no_visibility_barrier,
                    ..Default::default()
                },
                max_txn_keys: max_txn_keys.max(1),
                ..Default::default()
            };
            if unsafe_no_visibility_barrier {
                tracing::warn!(
                    "the visibility barrier is OFF: changes can be lost; never do this outside tests"
                );
            }
            let (tx, rx) = watch::channel(false);
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("stopping after the batch in flight");
                let _ = tx.send(true);
            });
            let observed = run::Observed::default();
            let _ui = bars.map(|multi| {
                AbortOnDrop(tokio::spawn(walshift::terminal::draw(
                    multi,
                    observed.progress.clone(),
                )))
            });
            // Stops with the run (dropped when this branch returns).
            let _http = match listener {
                Some(listener) => match walshift::metrics::install() {
                    Ok(metrics) => Some(walshift::http::serve(
                        listener,
                        walshift::http::Context {
                            config: config.clone(),
                            spec: spec.clone(),
                            observed: observed.clone(),
                            ready_max_lag,
                            metrics: Some(metrics),
                        },
                    )),
                    Err(e) => return fail(&e),
                },
                None => None,
            };
            match run::run(&config, &spec, opts, rx, observed).await {
                Ok(totals) if totals.cut_over => {
                    tracing::info!(
                        "{} is cut over: walshift run is done; remove its objects with `walshift cleanup {}`",
                        spec.name,
                        spec.file
                    );
                    ExitCode::SUCCESS
                }
                Ok(totals) => {
                    tracing::info!(
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
                        say_line(&p.to_string());
                    }
                    say_error(
                        "the spec does not fit the database (see above); nothing was created",
                    );
                    ExitCode::from(1)
                }
                Err(e) => fail(&e.to_string()),
            }
        }
    }
}

/// Polls status until ready; prints what it waits for whenever that changes.
async fn wait(
    spec: &Spec,
    config: &ConnConfig,
    timeout: Option<std::time::Duration>,
    max_lag: std::time::Duration,
) -> ExitCode {
    let started = std::time::Instant::now();
    let mut client: Option<tokio_postgres::Client> = None;
    let mut last = String::new();
    loop {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            match config.connect_sql().await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    let msg = format!("cannot connect to {}: {e}", config.redacted());
                    if msg != last {
                        eprintln!("walshift wait: {msg}; retrying");
                        last = msg;
                    }
                }
            }
        }
        if let Some(c) = &client {
            match walshift::status::read(c, spec).await {
                Ok(s) => match s.waiting_for(max_lag) {
                    None => {
                        println!(
                            "ready: backfill complete, lag {:.0} ms <= {} ms",
                            s.lag.seconds.unwrap_or(0.0) * 1000.0,
                            max_lag.as_millis()
                        );
                        return ExitCode::SUCCESS;
                    }
                    Some(w) => {
                        // Progress numbers change every poll; report the kind.
                        let kind = w.split(':').next().unwrap_or(&w).to_string();
                        if kind != last {
                            eprintln!("walshift wait: waiting for {w}");
                            last = kind;
                        }
                    }
                },
                Err(e) => {
                    eprintln!("walshift wait: {}", walshift::error_policy::pg_message(&e));
                    client = None;
                }
            }
        }
        if let Some(t) = timeout {
            if started.elapsed() >= t {
                eprintln!("walshift wait: timed out after {t:?} ({last})");
                return ExitCode::from(1);
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

async fn cutover(
    spec: &Spec,
    client: &tokio_postgres::Client,
    dry_run: bool,
    max_lag: std::time::Duration,
    timeout: std::time::Duration,
    json: bool,
) -> ExitCode {
    use walshift::cutover::{self, CutoverError, Request};
    let req = Request { dry_run, max_lag };
    let id = match cutover::request(client, spec, &req).await {
        Ok(id) => id,
        Err(CutoverError::NotReady(why)) => {
            say_error(&why);
            return ExitCode::from(1);
        }
        Err(CutoverError::Database(e)) => return fail(&e),
    };
    let quiet = json;
    let follow = cutover::follow(client, id, timeout, |state, detail| {
        if !quiet && !detail.is_empty() {
            eprintln!("{state}: {detail}");
        }
    });
    let outcome = tokio::select! {
        r = follow => r,
        _ = wait_for_signal() => {
            let cancelled = cutover::cancel(client, id).await.unwrap_or(false);
            return fail(if cancelled {
                "interrupted: the cut-over request was cancelled; nothing was changed"
            } else {
                "interrupted after the run began locking: the cut-over completes or rolls back on its own; see walshift status"
            });
        }
    };
    match outcome {
        Ok(o) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&o).expect("outcome serializes")
                );
            } else {
                println!("{}", o.render());
            }
            if o.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(CutoverError::NotReady(why)) => {
            say_error(&why);
            ExitCode::from(1)
        }
        Err(CutoverError::Database(e)) => fail(&e),
    }
}

async fn ctl(spec: &Spec, config: &ConnConfig, action: CtlAction) -> ExitCode {
    use walshift::{settings, state};
    let client = match connect(config).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let name = spec.name.as_str();
    let (done, said) = match &action {
        CtlAction::Pause | CtlAction::Resume => {
            let paused = matches!(action, CtlAction::Pause);
            (
                state::set_backfill_paused(&client, name, paused).await,
                format!(
                    "backfill of {name} {}",
                    if paused {
                        "paused (live mirroring continues)"
                    } else {
                        "resumed"
                    }
                ),
            )
        }
        CtlAction::PostponeCutover | CtlAction::AllowCutover => {
            let postpone = matches!(action, CtlAction::PostponeCutover);
            (
                state::set_cutover_postponed(&client, name, postpone).await,
                format!(
                    "cut-over of {name} {}",
                    if postpone {
                        "postponed: walshift cutover refuses until `walshift ctl SPEC allow-cutover`"
                    } else {
                        "allowed"
                    }
                ),
            )
        }
        CtlAction::Set { assignments } => {
            let mut changes = Vec::new();
            for a in assignments {
                match settings::parse_assignment(a) {
                    Ok(c) => changes.push(c),
                    Err(e) => return fail(&e),
                }
            }
            match settings::write(&client, name, &changes).await {
                Ok(Some(now)) => (Ok(true), render_overrides(name, &now)),
                Ok(None) => (Ok(false), String::new()),
                Err(e) => (Err(e), String::new()),
            }
        }
        CtlAction::Retry => match state::request_retry(&client, name).await {
            Ok(Some(held)) => (
                Ok(true),
                format!(
                    "{held} held key(s) of {name} will be tried again by the run (at once if it is \
                     running, else when it starts); `walshift status {}` shows what is still held",
                    spec.file
                ),
            ),
            Ok(None) => (Ok(false), String::new()),
            Err(e) => (Err(e), String::new()),
        },
        CtlAction::Show => match settings::read(&client, name).await {
            Ok(now) => (Ok(true), render_overrides(name, &now)),
            Err(e) => (Err(e), String::new()),
        },
    };
    match done {
        Ok(true) => {
            // Wake the run now rather than at its next poll (best effort).
            let _ = settings::notify(&client, name).await;
            println!("{said}");
            ExitCode::SUCCESS
        }
        Ok(false) => fail(&format!(
            "no walshift state for {name:?} in this database: start `walshift run {}` first",
            spec.file
        )),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            fail(&format!(
                "no walshift state in this database: start `walshift run {}` first",
                spec.file
            ))
        }
        Err(e) => fail(&walshift::error_policy::pg_message(&e)),
    }
}

fn render_overrides(name: &str, overrides: &walshift::settings::Overrides) -> String {
    if overrides.is_empty() {
        format!("{name}: no overrides; the spec's [backfill] limits are in force")
    } else {
        let list: Vec<String> = overrides.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{name}: overrides in force: {}", list.join(" "))
    }
}

/// The spec and an SQL session, or the one-line
/// error and its exit code.
async fn load_and_connect(
    path: &std::path::Path,
    db: &Db,
) -> Result<(Spec, tokio_postgres::Client), ExitCode> {
    let (spec, config) = load(path, db)?;
    let client = connect(&config).await?;
    Ok((spec, client))
}

/// An SQL session, or the one-line error and exit code.
async fn connect(config: &ConnConfig) -> Result<tokio_postgres::Client, ExitCode> {
    config.connect_sql().await.map_err(|e| {
        // TLS errors keep their reason in the source chain.
        let msg = walshift::error_policy::with_causes(&e);
        fail(&format!("cannot connect to {}: {msg}", config.redacted()))
    })
}

fn load(path: &std::path::Path, db: &Db) -> Result<(Spec, ConnConfig), ExitCode> {
    let spec = Spec::from_path(path).map_err(|e| fail(&e.to_string()))?;
    let config = ConnConfig::parse(&db.db).map_err(|e| fail(&e.to_string()))?;
    Ok((spec, config))
}

fn fail(message: &str) -> ExitCode {
    say_error(message);
    ExitCode::from(2)
}

/// `--log-format json` was given: errors go out as JSON log lines too, so a
/// log collector never meets a line it cannot parse.
static JSON_ERRORS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A line of an error's detail (a spec problem) on stderr, as it is in text
/// mode, as a JSON log line otherwise.
fn say_line(line: &str) {
    if JSON_ERRORS.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::error!("{line}");
    } else {
        eprintln!("{line}");
    }
}

/// One error line on stderr, in the chosen log format.
fn say_error(message: &str) {
    if JSON_ERRORS.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::error!("{message}");
    } else {
        eprintln!("walshift: {message}");
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_logging(format: LogFormat, verbose: u8, bars: Option<indicatif::MultiProgress>) {
    let default = match verbose {
        0 => "walshift=info",
        1 => "walshift=debug",
        _ => "walshift=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal());
    match (format, bars) {
        (LogFormat::Text, Some(multi)) => builder
            .with_writer(move || walshift::terminal::AboveBars(multi.clone()))
            .init(),
        (LogFormat::Text, None) => builder.with_writer(std::io::stderr).init(),
        (LogFormat::Json, _) => builder.json().with_writer(std::io::stderr).init(),
    }
}
