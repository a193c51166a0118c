//! Mirroring: SQL generation per mode (pure), and the applier that runs it.

pub mod sql;
