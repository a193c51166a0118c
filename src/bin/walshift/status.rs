//! `walshift status`: phase, backfill progress and ETA, lag, throttle state, slot health.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::cli::{self, Db};

#[derive(clap::Args)]
pub struct Args {
    spec: PathBuf,
    /// Machine-readable output (stable; fields are only ever added).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    db: Db,
}

pub async fn command(args: Args) -> ExitCode {
    let (spec, config, client) = match cli::open(&args.spec, &args.db).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    let read = match walshift::status::read(&client, &spec).await {
        Ok(mut s) => {
            // The standbys of a multi-host --db: their copies of the slot.
            s.slot.standbys = walshift::topology::standby_copies(&config, &spec.slot_name()).await;
            Ok(s)
        }
        Err(e) => Err(e),
    };
    match read {
        Ok(s) if args.json => {
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
        Err(e) => cli::fail(&walshift::error_policy::pg_message(&e)),
    }
}
