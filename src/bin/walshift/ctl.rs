//! `walshift ctl`: control a running `walshift run` through the database.

use std::path::PathBuf;
use std::process::ExitCode;

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use walshift::settings::{self, Overrides};
use walshift::spec::Spec;
use walshift::state;

use crate::cli::{self, Db};

#[derive(clap::Args)]
pub struct Args {
    spec: PathBuf,
    #[command(subcommand)]
    action: CtlAction,
    #[command(flatten)]
    db: Db,
}

#[derive(clap::Subcommand, Clone)]
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

/// What an action did: `Ok(true)` and what to say when the spec's state row was there,
/// `Ok(false)` when it was not.
type Done = (Result<bool, tokio_postgres::Error>, String);

pub async fn command(args: Args) -> ExitCode {
    let (spec, client) = match cli::load_and_connect(&args.spec, &args.db).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    let name = spec.name.as_str();
    let (done, said) = match act(&client, &spec, &args.action).await {
        Ok(done) => done,
        Err(code) => return code,
    };
    match done {
        Ok(true) => {
            // Wake the run now rather than at its next poll (best effort).
            let _ = settings::notify(&client, name).await;
            println!("{said}");
            ExitCode::SUCCESS
        }
        Ok(false) => cli::fail(&format!(
            "no walshift state for {name:?} in this database: start `walshift run {}` first",
            spec.file
        )),
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => cli::fail(&format!(
            "no walshift state in this database: start `walshift run {}` first",
            spec.file
        )),
        Err(e) => cli::fail(&walshift::error_policy::pg_message(&e)),
    }
}

/// Carries out `action`; an assignment that does not parse is the one-line error and its exit
/// code.
async fn act(client: &Client, spec: &Spec, action: &CtlAction) -> Result<Done, ExitCode> {
    let name = spec.name.as_str();
    Ok(match action {
        CtlAction::Pause => pause(client, name, true).await,
        CtlAction::Resume => pause(client, name, false).await,
        CtlAction::PostponeCutover => postpone(client, name, true).await,
        CtlAction::AllowCutover => postpone(client, name, false).await,
        CtlAction::Set { assignments } => set(client, name, assignments).await?,
        CtlAction::Retry => retry(client, spec).await,
        CtlAction::Show => match settings::read(client, name).await {
            Ok(now) => (Ok(true), render_overrides(name, &now)),
            Err(e) => (Err(e), String::new()),
        },
    })
}

async fn pause(client: &Client, name: &str, paused: bool) -> Done {
    (
        state::set_backfill_paused(client, name, paused).await,
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

async fn postpone(client: &Client, name: &str, postpone: bool) -> Done {
    (
        state::set_cutover_postponed(client, name, postpone).await,
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

async fn set(client: &Client, name: &str, assignments: &[String]) -> Result<Done, ExitCode> {
    let mut changes = Vec::new();
    for a in assignments {
        match settings::parse_assignment(a) {
            Ok(c) => changes.push(c),
            Err(e) => return Err(cli::fail(&e)),
        }
    }
    Ok(match settings::write(client, name, &changes).await {
        Ok(Some(now)) => (Ok(true), render_overrides(name, &now)),
        Ok(None) => (Ok(false), String::new()),
        Err(e) => (Err(e), String::new()),
    })
}

async fn retry(client: &Client, spec: &Spec) -> Done {
    let name = spec.name.as_str();
    match state::request_retry(client, name).await {
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
    }
}

fn render_overrides(name: &str, overrides: &Overrides) -> String {
    if overrides.is_empty() {
        format!("{name}: no overrides; the spec's [backfill] limits are in force")
    } else {
        let list: Vec<String> = overrides.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{name}: overrides in force: {}", list.join(" "))
    }
}
