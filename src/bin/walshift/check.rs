//! `walshift check`: validate a spec against the live database and print the plan.

use std::path::PathBuf;
use std::process::ExitCode;

use walshift::check::Verdict;

use crate::cli::{self, Db};

#[derive(clap::Args)]
pub struct Args {
    /// The spec file (TOML).
    spec: PathBuf,
    /// Scan the data for about this long (e.g. 60s; `full`: every row; `off`: no scan, a
    /// few chunks timed for the ETA). Every mapping runs over the existing rows in
    /// chunks that are rolled back; failing rows are reported by kind with example keys.
    #[arg(long, value_name = "BUDGET", default_value = "60s")]
    scan: walshift::scan::Budget,
    #[command(flatten)]
    db: Db,
}

pub async fn command(args: Args) -> ExitCode {
    let (spec, config, client) = match cli::open(&args.spec, &args.db).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    match walshift::check::command(&client, &config, &spec, args.scan).await {
        Ok(Verdict::Passed) => ExitCode::SUCCESS,
        Ok(Verdict::Failed) => ExitCode::from(1),
        Err(e) => cli::fail(&e),
    }
}
