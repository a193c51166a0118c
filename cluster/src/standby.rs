//! A physical standby of a cluster, for tests of replica-lag throttling and of failover
//! (promotion, failover slots).
//!
//! The base backup uses the low-level API (`pg_backup_start` / `pg_backup_stop` in one session,
//! copying the files in between) rather than `pg_basebackup`, so a server-only install (one
//! without the client tools) can make standbys too. A physical slot, created before the backup starts,
//! keeps the WAL the standby needs from the backup's start until it streams; it is dropped with
//! the standby.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::account::{self, Account};
use super::builder::Origin;
use super::server::{block_on, query};
use super::{Cluster, Endpoint, Error, Result, conf};

/// Directories whose contents a base backup leaves out (they are recreated empty); the same
/// list pg_basebackup uses.
const EMPTY_DIRS: [&str; 8] = [
    "pg_wal",
    "pg_dynshmem",
    "pg_notify",
    "pg_replslot",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];

/// Files a base backup leaves out: the primary's process state, and recovery state the
/// standby writes for itself.
const SKIPPED_FILES: [&str; 8] = [
    "postmaster.pid",
    "postmaster.opts",
    "pg_internal.init",
    "current_logfiles",
    "backup_label",
    "tablespace_map",
    "standby.signal",
    "recovery.signal",
];

impl Cluster {
    /// Start a hot standby that streams from this cluster through a physical slot, with the
    /// same settings and pg_hba lines. It reports to `pg_stat_replication` on this cluster
    /// with `application_name` = its [`name`](Cluster::name); `pg_wal_replay_pause()` on it
    /// makes replay lag appear there. Drop the standby before its primary.
    pub fn start_standby(&self) -> Result<Cluster> {
        self.start_standby_with(&[])
    }

    /// [`start_standby`](Cluster::start_standby) with `settings` for the standby alone, over
    /// the primary's: e.g. `hot_standby_feedback` and (17+) `sync_replication_slots`, which a
    /// standby needs to keep copies of failover slots. Its `primary_conninfo` names a database
    /// (`dbname=postgres`), as the slot sync worker requires.
    pub fn start_standby_with(&self, settings: &[(&str, &str)]) -> Result<Cluster> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let slot = format!(
            "walshift_standby_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let options = settings.iter().fold(
            self.options.clone().bin_dir(self.bins.dir.clone()),
            |options, (key, value)| options.setting(*key, *value),
        );
        let started = options.launch(Origin::Standby {
            primary: self,
            slot: slot.clone(),
        });
        if started.is_err() {
            drop_slot(&self.endpoint, &slot);
        }
        started
    }
}

impl Cluster {
    /// For a standby: the physical slot on its primary it streams through
    /// (`primary_slot_name`), e.g. for the primary's `synchronized_standby_slots`.
    pub fn primary_slot_name(&self) -> Option<&str> {
        self.standby_of.as_ref().map(|(_, slot)| slot.as_str())
    }

    /// Promote a standby to a primary (`pg_promote`, waiting up to 60 s for it to leave
    /// recovery). SQL rather than `pg_ctl promote`, so server-only installs can do it too. The
    /// old primary is best stopped first ([`crash`](Cluster::crash) for a failover): two
    /// primaries of one history is what a real failover must never have.
    pub fn promote(&self) -> Result<()> {
        let rows = query(&self.endpoint, "postgres", "SELECT pg_promote(true, 60)")?;
        match rows.first().and_then(|r| r.first()).cloned().flatten() {
            Some(done) if done == "t" => Ok(()),
            other => Err(Error::Config(format!(
                "pg_promote on {} did not finish within 60 s (returned {other:?})",
                self.name()
            ))),
        }
    }
}

/// Settings that make a copied data directory a streaming standby of `primary`.
pub(crate) fn settings(primary: &Cluster, slot: &str, name: &str) -> Vec<(String, String)> {
    let conninfo = format!(
        "{} application_name={}",
        primary.endpoint.conninfo("postgres"),
        conf::quote_conninfo_value(name)
    );
    [
        ("primary_conninfo", conninfo),
        ("primary_slot_name", slot.to_owned()),
        ("hot_standby", "on".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn skip(rel: &Path) -> bool {
    if EMPTY_DIRS.iter().any(|d| rel == Path::new(d)) {
        return true;
    }
    let name = rel
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    SKIPPED_FILES.contains(&name.as_ref()) || name.starts_with("pgsql_tmp")
}

/// Copy `primary`'s data directory into `data` as a consistent base backup, with
/// `standby.signal`, reserving WAL in `slot`.
pub(crate) fn base_backup(
    primary: &Cluster,
    slot: &str,
    data: &Path,
    account: Option<&Account>,
) -> Result<()> {
    let (start, stop) = if primary.version_num >= 150_000 {
        (
            "SELECT pg_backup_start($1, true)::text",
            "SELECT labelfile, spcmapfile FROM pg_backup_stop(false)",
        )
    } else {
        (
            "SELECT pg_start_backup($1, true, false)::text",
            "SELECT labelfile, spcmapfile FROM pg_stop_backup(false, false)",
        )
    };
    let label = format!("walshift standby {slot}");
    let files = block_on(async {
        let admin = primary.database("postgres");
        let client = admin.try_connect().await?;
        client
            .execute(
                "SELECT pg_create_physical_replication_slot($1, true)",
                &[&slot],
            )
            .await
            .map_err(|e| Error::sql(format!("create physical slot {slot}"), e))?;
        // A non-exclusive backup belongs to this session: closing it aborts the backup.
        client
            .execute(start, &[&label])
            .await
            .map_err(|e| Error::sql("start the base backup", e))?;
        account::copy_tree(primary.data_dir(), data, account, &skip, true).map_err(|e| {
            Error::io(
                format!(
                    "copy {} to {}",
                    primary.data_dir().display(),
                    data.display()
                ),
                e,
            )
        })?;
        let row = client
            .query_one(stop, &[])
            .await
            .map_err(|e| Error::sql("stop the base backup", e))?;
        let label: String = row.get(0);
        let spcmap: Option<String> = row.get(1);
        Ok::<_, Error>((label, spcmap))
    })??;
    let (label, spcmap) = files;
    let mut to_write = vec![("backup_label", label), ("standby.signal", String::new())];
    if let Some(map) = spcmap.filter(|m| !m.is_empty()) {
        to_write.push(("tablespace_map", map));
    }
    for (name, text) in to_write {
        let path = data.join(name);
        std::fs::write(&path, text)
            .and_then(|()| account::chown(&path, account))
            .map_err(|e| Error::io(format!("write {}", path.display()), e))?;
    }
    Ok(())
}

/// Drop `slot` on `primary`, best effort. The walsender of a standby just stopped may hold the
/// slot for a moment ("is active for PID"), so that error is retried briefly. A primary that
/// is gone already needs nothing.
pub(crate) fn drop_slot(primary: &Endpoint, slot: &str) {
    let literal = conf::quote_literal(slot);
    let sql = format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = {literal}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = query(primary, "postgres", &sql) {
        if !e.to_string().contains("is active") || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_skips_process_state_but_keeps_data() {
        assert!(skip(Path::new("pg_wal")));
        assert!(skip(Path::new("postmaster.pid")));
        assert!(skip(Path::new("global/pg_internal.init")));
        assert!(skip(Path::new("base/pgsql_tmp")));
        assert!(!skip(Path::new("base/1/1259")));
        assert!(!skip(Path::new("global/pg_control")));
        assert!(!skip(Path::new("postgresql.auto.conf")));
        assert!(
            !skip(Path::new("base/pg_wal")),
            "only the top-level pg_wal is emptied"
        );
    }
}
