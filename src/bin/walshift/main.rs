//! The `walshift` command.
//!
//! Exit codes, for scripts:
//! - 0: done (check passed; run stopped cleanly on SIGINT/SIGTERM)
//! - 1: the answer is no (check found problems)
//! - 2: could not do the job (bad spec or arguments, connection failed,
//!   fatal error while running)
//!
//! This file parses the command line and dispatches; each subcommand has its own file, and
//! what several share (the `--db` option, loading and connecting, error lines, logging) is in
//! `cli.rs`.

mod check;
mod cleanup;
mod cli;
mod ctl;
mod cutover;
mod demo;
mod run;
mod status;
mod verify;
mod wait;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

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

#[derive(Subcommand)]
enum Command {
    /// Validate a spec against the live database and print the plan. Creates nothing.
    Check(check::Args),
    /// Create publication, origin and slot if missing, then mirror live writes until SIGINT/SIGTERM.
    Run(run::Args),
    /// The whole story on a throwaway local PostgreSQL: fill, expand, check, mirror under
    /// load with backfill, catch up, verify, summary. Needs only the server binaries.
    Demo(demo::DemoOptions),
    /// Phase, backfill progress and ETA, lag, throttle state, slot health, whether a run is alive.
    Status(status::Args),
    /// Block until backfill is complete and lag is under the bound (exit 0), or time out (exit 1).
    Wait(wait::Args),
    /// Prove every target equals the mapping of its source (chunk by chunk), then run the gates.
    /// Exit 0 only if everything matches and every gate passes.
    Verify(verify::Args),
    /// Switch over: verify, lock the sources briefly (writes wait, reads go on), apply the last
    /// changes, re-check, run the gates and `[cutover] sql`, commit. Carried out by the running
    /// `walshift run`. Exit 0 on success, 1 when refused or failed (nothing changed).
    Cutover(cutover::Args),
    /// Drop the slot, publication, origin and state of a spec (after the contract step).
    Cleanup(cleanup::Args),
    /// Control a running `walshift run` through the database (works from any host).
    Ctl(ctl::Args),
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
    let bars = (matches!(cli.command, Command::Run(_) | Command::Demo(_))
        && matches!(cli.log_format, LogFormat::Text)
        && std::io::stderr().is_terminal())
    .then(walshift::terminal::multi);
    cli::init_logging(cli.log_format, cli.verbose, bars.clone());
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
    runtime.block_on(dispatch(cli.command, bars))
}

async fn dispatch(command: Command, bars: Option<indicatif::MultiProgress>) -> ExitCode {
    match command {
        Command::Check(args) => check::command(args).await,
        Command::Run(args) => run::command(args, bars).await,
        Command::Demo(opts) => demo::command(opts, bars).await,
        Command::Status(args) => status::command(args).await,
        Command::Wait(args) => wait::command(args).await,
        Command::Verify(args) => verify::command(args).await,
        Command::Cutover(args) => cutover::command(args).await,
        Command::Cleanup(args) => cleanup::command(args).await,
        Command::Ctl(args) => ctl::command(args).await,
    }
}
