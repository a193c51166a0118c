//! What the benches share, one tree for all of them: each bench (`benches/<name>.rs`) has
//! `mod support;` and uses a different part of it.
//!
//! - [`page`]: a bench's report as a page of the documentation (`docs/results/<name>.md`).
//! - [`backfill`]: the backfill scenarios and their fixture, the `walshift run` child timed from
//!   spawn to done, the in-server loop, the profile, the report and the summary statistics
//!   (`backfill`, `cutover`, `e2e`).
//! - [`stream`]: a pgoutput stream recorded from a real server, for the decoder (`decoder`, `e2e`).
//! - [`e2e`]: the scenarios of `cargo bench --bench e2e`.
#![allow(dead_code)]

pub mod backfill;
pub mod e2e;
pub mod page;
pub mod stream;
