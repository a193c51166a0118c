//! Mirroring: SQL generation per mode (pure), and the applier that runs it.
//!
//! ```text
//!  pgoutput messages ──▶ txn::TxnAssembler ──CommittedTxn (dirty keys)──▶ applier::Batch
//!                                                                           │
//!       confirmed LSN ◀── COMMIT (origin + progress) ◀── sql::* statements ◀┘
//! ```
//!
//! - [`txn`]: which keys each committed transaction made dirty (pure).
//! - [`visibility`]: the I2 barrier's snapshot arithmetic (pure).
//! - [`sql`]: statement text per mode (pure).
//! - [`applier`]: the one session that runs them (I2-I5).
//! - [`pipeline`]: statements sent back to back, one round trip for a transaction.

pub mod applier;
pub mod bind;
pub mod pipeline;
pub mod plant;
pub mod sql;
pub mod txn;
pub mod visibility;
