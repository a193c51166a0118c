//! walshift: keep a new schema shape in step with the old one through logical
//! replication, during an expand/contract migration.
//!
//! ```text
//!  PostgreSQL ──WAL──▶ replication (socket, CopyBoth) ──bytes──▶ pgoutput (decode)
//!        ▲                                                        │ messages
//!        │ confirmed LSN                                          ▼
//!        └──────────── applier (recompute dirty keys) ◀── relcache + key batches
//! ```
//!
//! The byte level (`pgoutput`, `replication::proto`) is pure: bytes in,
//! values out. Everything that owns a socket lives in `replication`.

pub mod backfill;
pub mod catalog;
pub mod check;
pub mod cleanup;
pub mod conninfo;
pub mod cutover;
pub mod error_policy;
pub mod estimate;
pub mod http;
pub mod ident;
pub mod lag;
pub mod lsn;
pub mod metrics;
pub mod mirror;
pub mod net;
pub mod pgoutput;
pub mod relcache;
pub mod replication;
pub mod run;
pub mod scan;
pub mod settings;
pub mod spec;
pub mod state;
pub mod status;
pub mod terminal;
pub mod throttle;
pub mod tls;
pub mod topology;
pub mod verify;

pub use lsn::Lsn;
