//! `walshift verify`: prove every target equals the mapping of its source, then run the gates.

use std::path::PathBuf;
use std::process::ExitCode;

use walshift::catalog::{self, Plan};
use walshift::spec::Spec;

use crate::cli::{self, Db};

#[derive(clap::Args)]
pub struct Args {
    spec: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    /// Example keys shown per mirror.
    #[arg(long, default_value_t = 10)]
    examples: usize,
    #[command(flatten)]
    db: Db,
}

pub async fn command(args: Args) -> ExitCode {
    let (spec, client) = match cli::load_and_connect(&args.spec, &args.db).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    let plan = match plan(&client, &spec).await {
        Ok(plan) => plan,
        Err(code) => return code,
    };
    match walshift::verify::verify(&client, &spec, &plan, args.examples).await {
        Ok(report) => cli::print_report(args.json, &report, report.render(), report.passed),
        Err(e) => cli::fail(&format!(
            "verify failed: {}",
            walshift::error_policy::pg_message(&e)
        )),
    }
}

/// The plan of a spec that fits the database, or its problems on stderr and the exit code.
async fn plan(client: &tokio_postgres::Client, spec: &Spec) -> Result<Plan, ExitCode> {
    match catalog::check(client, spec).await {
        Ok(r) if r.problems.is_empty() => Ok(r.plan.expect("a plan without problems")),
        Ok(r) => {
            for p in &r.problems {
                cli::say_line(&p.to_string());
            }
            Err(cli::fail(
                "the spec does not fit the database (see above); nothing to verify",
            ))
        }
        Err(e) => Err(cli::fail(&walshift::error_policy::pg_message(&e))),
    }
}
