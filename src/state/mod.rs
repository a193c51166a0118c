//! walshift's own state in the migrated database (`sql/state.sql`). Every
//! statement that reads or writes walshift's tables lives here, by table:
//! [`migration`] (`walshift.migration`), [`backfill`] (`walshift.backfill`),
//! [`keys`] (`walshift.keys`) and [`cutover`] (`walshift.cutover`). Their
//! items are re-exported here, so `crate::state::NAME` names each of them.

pub mod backfill;
pub mod cutover;
pub mod keys;
pub mod migration;

pub use backfill::*;
pub use cutover::*;
pub use keys::*;
pub use migration::*;

/// The state schema's DDL; idempotent.
pub const STATE_SQL: &str = include_str!("../../sql/state.sql");

/// Creates the state schema if missing.
pub async fn ensure_schema(client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(STATE_SQL).await
}

/// Drops the state schema and everything in it (`walshift cleanup`, once no
/// spec has state left).
pub async fn drop_schema(client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    client.batch_execute("DROP SCHEMA walshift CASCADE").await
}
