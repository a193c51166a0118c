//! The session loop's side of a two-way applier's sync (the applier's side
//! is mirror/applier/two_way.rs): the applier asks for the stream up to its
//! snapshot's WAL position, and the loop answers with every transaction it
//! received before that position.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::lsn::Lsn;
use crate::mirror::applier::{Batch, SyncReply};

/// Keys the session loop collects while an applier waits for the stream to
/// reach its snapshot; past it the loop answers short and the applier
/// stores the batch's two-way keys instead of applying them (a far-behind
/// stream must not hold unbounded memory).
pub(super) const SYNC_MAX_KEYS: usize = 1_000_000;

/// While an applier waits for the stream, how often the server is asked for
/// a keepalive (which tells how far it has sent).
pub(super) const SYNC_NUDGE: Duration = Duration::from_millis(5);

/// The session loop's side of a two-way applier's sync: at most one
/// outstanding, answered with every transaction received before the first
/// one committed at or past its position (or once a keepalive shows the
/// stream is past it).
pub(super) struct Syncing {
    reply: Option<mpsc::Sender<SyncReply>>,
    /// The position asked for, while the answer waits.
    to: Option<Lsn>,
    /// How far the stream is known to have come: the last commit received,
    /// or a keepalive's position between transactions.
    received: Lsn,
    /// The applier holds what a sync took, until it reports it done.
    pub(super) busy: bool,
}

impl Syncing {
    pub(super) fn new(reply: mpsc::Sender<SyncReply>) -> Self {
        Syncing {
            reply: Some(reply),
            to: None,
            received: Lsn::INVALID,
            busy: false,
        }
    }

    pub(super) fn waiting(&self) -> bool {
        self.to.is_some()
    }

    /// Work has left the session loop and is not reported done.
    pub(super) fn in_flight(&self) -> bool {
        self.busy || self.waiting()
    }

    /// A request for `lsn`: answered at once (true) when the stream is
    /// already there, else when it gets there.
    pub(super) fn request(&mut self, lsn: Lsn, pending: &mut Batch, n: usize) -> bool {
        if self.received >= lsn {
            self.answer(pending, n, true);
            return true;
        }
        self.to = Some(lsn);
        false
    }

    /// The stream has come to `lsn` (a commit received, or a keepalive
    /// between transactions); answers a waiting request it reaches (true).
    pub(super) fn reached(&mut self, lsn: Lsn, pending: &mut Batch, n: usize) -> bool {
        self.received = self.received.max(lsn);
        match self.to {
            Some(to) if lsn >= to => {
                self.to = None;
                self.answer(pending, n, true);
                true
            }
            _ => false,
        }
    }

    /// The stream is too far behind to reach the position within bounds.
    pub(super) fn give_up(&mut self, pending: &mut Batch, n: usize) {
        self.to = None;
        self.answer(pending, n, false);
    }

    fn answer(&mut self, pending: &mut Batch, n: usize, complete: bool) {
        self.busy = true;
        let batch = std::mem::replace(pending, Batch::new(n));
        if let Some(reply) = &self.reply {
            let _ = reply.try_send(SyncReply { batch, complete });
        }
    }

    /// The session ends: an applier waiting for an answer stops waiting.
    pub(super) fn close(&mut self) {
        self.to = None;
        self.reply = None;
    }
}
