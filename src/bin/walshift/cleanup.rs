//! `walshift cleanup`: drop the slot, publication, origin and state of a spec.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::cli::{self, Db};

#[derive(clap::Args)]
pub struct Args {
    spec: PathBuf,
    /// Terminate a running walshift's stream instead of refusing.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    db: Db,
}

pub async fn command(args: Args) -> ExitCode {
    let (spec, client) = match cli::load_and_connect(&args.spec, &args.db).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    match walshift::cleanup::cleanup(&client, &spec, args.force).await {
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
        Err(e) => cli::fail(&e),
    }
}
