//! What the subcommands share: the `--db` option, loading a spec and connecting, the error
//! lines and exit codes, the signal wait, and logging.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::EnvFilter;

use walshift::conninfo::ConnConfig;
use walshift::spec::Spec;

use crate::LogFormat;

/// The target of the command's own log lines, whichever file of the binary they come from:
/// `walshift`, as when the whole command was one file, so its log lines stay as they were.
pub const LOG_TARGET: &str = "walshift";

#[derive(clap::Args)]
pub struct Db {
    /// Connection string (libpq key=value or postgres:// URL). Unset values
    /// come from PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE, ...
    #[arg(
        long,
        env = "WALSHIFT_DB",
        hide_env_values = true,
        default_value = "",
        global = true
    )]
    pub db: String,
}

/// The spec and an SQL session, or the one-line
/// error and its exit code.
pub async fn load_and_connect(
    path: &Path,
    db: &Db,
) -> Result<(Spec, tokio_postgres::Client), ExitCode> {
    let (spec, _, client) = open(path, db).await?;
    Ok((spec, client))
}

/// The spec, the connection settings and an SQL session, or the one-line
/// error and exit code.
pub async fn open(
    path: &Path,
    db: &Db,
) -> Result<(Spec, ConnConfig, tokio_postgres::Client), ExitCode> {
    let (spec, config) = load(path, db)?;
    let client = connect(&config).await?;
    Ok((spec, config, client))
}

/// Prints a report (as JSON, or `text` as it is) and exits as it passed:
/// 0, or 1 when it did not.
pub fn print_report(
    json: bool,
    report: &impl serde::Serialize,
    text: String,
    passed: bool,
) -> ExitCode {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).expect("a report serializes")
        );
    } else {
        print!("{text}");
    }
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// An SQL session, or the one-line error and exit code.
pub async fn connect(config: &ConnConfig) -> Result<tokio_postgres::Client, ExitCode> {
    config.connect_sql().await.map_err(|e| {
        // TLS errors keep their reason in the source chain.
        let msg = walshift::error_policy::with_causes(&e);
        fail(&format!("cannot connect to {}: {msg}", config.redacted()))
    })
}

pub fn load(path: &Path, db: &Db) -> Result<(Spec, ConnConfig), ExitCode> {
    let spec = Spec::from_path(path).map_err(|e| fail(&e.to_string()))?;
    let config = ConnConfig::parse(&db.db).map_err(|e| fail(&e.to_string()))?;
    Ok((spec, config))
}

pub fn fail(message: &str) -> ExitCode {
    say_error(message);
    ExitCode::from(2)
}

/// `--log-format json` was given: errors go out as JSON log lines too, so a
/// log collector never meets a line it cannot parse.
static JSON_ERRORS: AtomicBool = AtomicBool::new(false);

/// A line of an error's detail (a spec problem) on stderr, as it is in text
/// mode, as a JSON log line otherwise.
pub fn say_line(line: &str) {
    if JSON_ERRORS.load(Ordering::Relaxed) {
        tracing::error!(target: LOG_TARGET, "{line}");
    } else {
        eprintln!("{line}");
    }
}

/// One error line on stderr, in the chosen log format.
pub fn say_error(message: &str) {
    if JSON_ERRORS.load(Ordering::Relaxed) {
        tracing::error!(target: LOG_TARGET, "{message}");
    } else {
        eprintln!("walshift: {message}");
    }
}

pub async fn wait_for_signal() {
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

/// Logs on stderr in `format` (above the progress bars, if any), and error lines in the same
/// format.
pub fn init_logging(format: LogFormat, verbose: u8, bars: Option<indicatif::MultiProgress>) {
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
    JSON_ERRORS.store(matches!(format, LogFormat::Json), Ordering::Relaxed);
}
