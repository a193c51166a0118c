//! Bugs a test can plant in the engine, to prove that the test
//! fails without the rule it checks (`walshift run --unsafe-plant BUG`,
//! hidden). Never set outside tests: each loses data by design.

use std::sync::OnceLock;

/// A planted bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Plant {
    /// Direction detection wrong: every update of a source recomputes the
    /// new shape, whatever it changed (pgroll's up trigger).
    RecomputeEveryWrite,
    /// Conflict rule wrong: of two writes of one key in opposite directions,
    /// the earlier decides.
    EarlierWriteWins,
    /// Backfill wrong: chunks recompute every key of their range, also those
    /// whose new shape the new version wrote meanwhile.
    ChunksIgnoreMarks,
    /// Poison keys not isolated: a row the mapping cannot take stops the
    /// run, and with it every other key (as before held keys).
    NoIsolation,
    /// Dependencies ignored: a change to a table the mapping reads through
    /// `depends` makes no source row dirty (as without `depends`).
    IgnoreDepends,
    /// Lost slot handled naively: a new slot, and the backfill and the
    /// position carry on where they were, so the writes only the lost slot
    /// held are never recomputed.
    NoResync,
    /// Dead links unnoticed on the stream: no receive timeout, so a
    /// black-holed replication connection waits on TCP alone (which a
    /// middlebox that still acknowledges never ends).
    NoReceiveTimeout,
    /// Resume position wrong: each session starts at the larger of the
    /// state row's applied position and the replication origin's progress,
    /// which PostgreSQL 16+ advances also for a transaction that set the
    /// origin up and then rolled back (walshift killed mid-apply).
    ResumeFromOriginProgress,
}

static PLANTED: OnceLock<Plant> = OnceLock::new();

/// Plants `plant` for the rest of the process.
pub fn set(plant: Plant) {
    let _ = PLANTED.set(plant);
}

pub fn active(plant: Plant) -> bool {
    PLANTED.get() == Some(&plant)
}
