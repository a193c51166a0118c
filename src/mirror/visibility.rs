//! The visibility barrier (I2), pure part.
//!
//! A commit reaches the WAL stream before it is visible to new snapshots: the
//! commit record is flushed, then the transaction leaves the proc array (with
//! synchronous replication, only after the standby answers). Recomputing a key
//! in that gap reads the old row, and the change is lost for good. So before
//! applying keys from transaction X the applier takes `pg_current_snapshot()`
//! and checks that X is visible in it; any later snapshot (the apply
//! statement's) then sees X too.
//!
//! pgoutput gives 32-bit xids; snapshots are in 64-bit `xid8`. The xid is
//! widened with the epoch of the snapshot's `xmax`: a committed xid is never
//! ahead of `xmax`, so if the low bits are above `xmax`'s, it belongs to the
//! previous epoch.

/// `pg_current_snapshot()` as text: `xmin:xmax:xip,xip,...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub xmin: u64,
    pub xmax: u64,
    pub xip: Vec<u64>,
}

impl Snapshot {
    pub fn parse(s: &str) -> Option<Snapshot> {
        let mut parts = s.trim().splitn(3, ':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let xip = match parts.next()? {
            "" => Vec::new(),
            list => list
                .split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<Vec<u64>>>()?,
        };
        Some(Snapshot { xmin, xmax, xip })
    }

    /// The 64-bit form of a 32-bit xid that committed recently.
    pub fn widen(&self, xid: u32) -> u64 {
        let epoch = self.xmax >> 32;
        let candidate = (epoch << 32) | xid as u64;
        if candidate > self.xmax && epoch > 0 {
            candidate - (1 << 32)
        } else {
            candidate
        }
    }

    /// Whether the committed transaction `xid` is visible in this snapshot,
    /// by the rule `pg_visible_in_snapshot` applies.
    pub fn sees(&self, xid: u32) -> bool {
        let x = self.widen(xid);
        if x < self.xmin {
            return true;
        }
        x < self.xmax && !self.xip.contains(&x)
    }

    /// The xids of `xids` not yet visible.
    pub fn invisible(&self, xids: &[u32]) -> Vec<u32> {
        xids.iter().copied().filter(|x| !self.sees(*x)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_text_form() {
        assert_eq!(
            Snapshot::parse("10:20:12,15"),
            Some(Snapshot {
                xmin: 10,
                xmax: 20,
                xip: vec![12, 15]
            })
        );
        assert_eq!(Snapshot::parse("10:10:").unwrap().xip, Vec::<u64>::new());
        assert_eq!(Snapshot::parse("x:1:"), None);
    }

    #[test]
    fn visibility_follows_xmin_xmax_and_in_progress_list() {
        let s = Snapshot::parse("100:110:103,107").unwrap();
        assert!(s.sees(99));
        assert!(s.sees(104));
        assert!(!s.sees(103), "still in the proc array: the I2 race window");
        assert!(
            !s.sees(110),
            "at or past xmax: not yet finished for this snapshot"
        );
        assert_eq!(s.invisible(&[99, 103, 104, 111]), vec![103, 111]);
    }

    #[test]
    fn widening_across_an_epoch_boundary() {
        let epoch2 = 2u64 << 32;
        let s = Snapshot {
            xmin: epoch2 + 5,
            xmax: epoch2 + 10,
            xip: vec![],
        };
        assert_eq!(s.widen(7), epoch2 + 7);
        // 0xFFFF_FFF0 is far above xmax's low bits: the previous epoch.
        assert_eq!(s.widen(0xFFFF_FFF0), (1u64 << 32) + 0xFFFF_FFF0);
        assert!(s.sees(0xFFFF_FFF0));
    }
}
