//! Helpers for `tests/mirror.rs`: the real `walshift` binary as a child process, a concurrent
//! write load, the waits that define "caught up", and exact comparisons of the new shape with
//! the mapping evaluated by Postgres over the old.
//!
//! ```text
//!  SpecFile (tempdir) ──▶ Walshift (child, stderr to a file) ──▶ slot walshift_<name>
//!                                                                   │
//!  Load: N tasks, one connection each, random SQL ──WAL──▶ ........ ┘
//!                                                                   ▼
//!  wait_caught_up: emit message at L, poll confirmed_flush_lsn >= L ──▶ compare once, exactly
//! ```
//!
//! Every wait polls a condition and checks that walshift is still alive, so a crashed binary
//! fails the test at once with its stderr instead of at a timeout.

pub mod compare;
pub mod load;
pub mod process;
pub mod waits;
pub mod workloads;

pub use compare::SetMirror;
pub use load::{Load, LoadOptions, LoadStats, Rng, Step};
pub use process::{SpecFile, Walshift};
pub use waits::{confirmed_at_least, poll, wait_active, wait_caught_up, wait_inactive};
