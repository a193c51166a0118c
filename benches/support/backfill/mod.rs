//! The backfill bench's pieces, shared with `cutover` and `e2e`.

pub mod fixture;
pub mod in_server;
pub mod process;
pub mod profile;
pub mod report;
pub mod summary;
