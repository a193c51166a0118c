//! Confirming: what the session tells the server it may forget, and what
//! the observers learn from it.
//!
//! A position is confirmed only once everything before it is committed in
//! the targets (I4): a batch after its apply transaction commits, a batch
//! that needs no SQL (echoes, unrelated tables) as soon as the applier is
//! free, a keepalive's position when nothing is pending anywhere. The
//! watermarks (lag) are released by the count of transactions applied.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::origins::Cap;
use super::{Observed, Totals};
use crate::lsn::Lsn;
use crate::mirror::applier::Batch;
use crate::replication::Feedback;

/// The session's confirming side: the stream's feedback handle, the cap of
/// an `origin = none` stream (origins.rs), and the watermarks waiting for
/// the transactions received before them.
pub(super) struct Confirmer {
    feedback: Feedback,
    cap: Option<Cap>,
    observed: Observed,
    watermarks: crate::lag::PendingWatermarks,
    received_txns: u64,
    applied_txns: u64,
}

impl Confirmer {
    pub(super) fn new(feedback: Feedback, cap: Option<Cap>, observed: Observed) -> Self {
        Confirmer {
            feedback,
            cap,
            observed,
            watermarks: crate::lag::PendingWatermarks::default(),
            received_txns: 0,
            applied_txns: 0,
        }
    }

    /// Reports `lsn` as committed. The server is told at most what the cap
    /// allows; the totals and the lag follow `lsn` itself.
    pub(super) fn confirm(&self, totals: &mut Totals, lsn: Lsn) {
        self.feedback
            .confirm(self.cap.as_ref().map_or(lsn, |c| c.apply(lsn)));
        totals.confirmed = totals.confirmed.max(lsn);
        self.observed.confirmed.fetch_max(lsn.0, Ordering::AcqRel);
    }

    /// `batch` is applied (or needed nothing): confirm its end and release
    /// the watermarks that waited for its transactions.
    pub(super) fn applied(&mut self, totals: &mut Totals, batch: &Batch) {
        self.confirm(totals, batch.end_lsn);
        self.applied_txns += batch.txns as u64;
        self.release();
    }

    /// A transaction came through the stream.
    pub(super) fn received(&mut self) {
        self.received_txns += 1;
    }

    /// Watermark `seq` came through the stream: it is applied once every
    /// transaction received before it is.
    pub(super) fn watermark(&mut self, seq: u64) {
        self.watermarks.arrived(seq, self.received_txns);
        self.release();
    }

    /// Asks the server for a keepalive (it says how far the stream is).
    pub(super) fn request_reply(&self) {
        self.feedback.request_reply();
    }

    fn release(&mut self) {
        let now = Instant::now();
        for seq in self.watermarks.release(self.applied_txns) {
            self.observed.watermarks.applied(seq, now);
        }
    }
}
