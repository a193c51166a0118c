//! Helpers for `tests/mirror.rs`: a concurrent write load, the waits that define "caught up",
//! and exact comparisons of the new shape with the mapping evaluated by Postgres over the old,
//! around the real `walshift` binary as a child process ([`crate::support::process::Run`],
//! JSON logs).
//!
//! ```text
//!  Spec (tempdir) ──▶ Run (child, log to a file) ──────────────▶ slot walshift_<name>
//!                                                                   │
//!  Load: N tasks, one connection each, random SQL ──WAL──▶ ........ ┘
//!                                                                   ▼
//!  wait_caught_up: emit message at L, poll confirmed_flush_lsn >= L ──▶ compare once, exactly
//! ```
//!
//! Every wait polls a condition and checks that walshift is still alive, so a crashed binary
//! fails the test at once with its stderr instead of at a timeout.
//!
//! `tests/mirror.rs` and `tests/backfill.rs` use it (through [`super::backfill`]) the most.

pub mod compare;
pub mod load;
pub mod scenario;
pub mod sessions;
pub mod waits;
pub mod workloads;

// Re-exports for every binary that includes the module; each uses a different subset.
#[allow(unused_imports)]
pub use compare::SetMirror;
#[allow(unused_imports)]
pub use load::{Load, LoadOptions, LoadStats, Rng, Step};
#[allow(unused_imports)]
pub use scenario::{
    OPEN_ENDED, Scenario, assert_load, count, dedicated_cluster, fresh_db_on, step,
};
#[allow(unused_imports)]
pub use sessions::{settled_updates, terminate_walshift_sessions};
#[allow(unused_imports)]
pub use waits::{confirmed_at_least, wait_active, wait_caught_up, wait_inactive};
