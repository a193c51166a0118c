//! Where clusters live on disk, who owns them, and sweeping up after owners that died.
//!
//! ```text
//! <parent>/walshift-pg-<euid>/        parent: $WALSHIFT_CLUSTER_DIR, else /dev/shm, else $TMPDIR
//!   templates/<key>/        initdb output, made once per (binaries, user); <key>.lock guards it
//!   clusters/c<pid>-<n>/
//!     owner                 "<pid>\n", flock-ed by the owning process for as long as it lives
//!     data/  sock/  postgres.log
//!   logs/                   logs of clusters that failed to start or were dropped by a panic
//! ```
//!
//! A process killed by SIGKILL cannot clean up, so liveness is an exclusive `flock` on the
//! owner file: the kernel drops it when the owner dies, however it dies, and unlike a pid it
//! cannot be fooled by pid reuse. Starting any cluster first sweeps the directories whose lock
//! is free: stops their postmaster and removes them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// A directory with no owner pid yet is being created; only one this old is abandoned.
const HALF_CREATED_GRACE: Duration = Duration::from_secs(300);
/// Kept logs older than this are pruned by the sweep.
const LOG_RETENTION: Duration = Duration::from_secs(3 * 24 * 3600);

pub(crate) struct Base {
    pub(crate) clusters: PathBuf,
    pub(crate) templates: PathBuf,
    pub(crate) logs: PathBuf,
    /// `clusters/` of the other places a base can be (a run with another
    /// `WALSHIFT_CLUSTER_DIR`, or before /dev/shm filled up), swept too.
    pub(crate) other_clusters: Vec<PathBuf>,
}

/// Overrides where the base directory is made (its parent).
pub const CLUSTER_DIR_ENV: &str = "WALSHIFT_CLUSTER_DIR";
/// tmpfs is used only with this much room: a cluster is ~40 MB before a test writes anything.
const MIN_TMPFS_FREE: u64 = 2 << 30;

/// The directory the base directory goes in: `WALSHIFT_CLUSTER_DIR`, else `/dev/shm` when it is
/// a roomy tmpfs, else the temp dir. tmpfs because copying a template is the bulk of a start:
/// 39 MB in ~1000 files took 0.7 s of kernel time on the project's ext4 VM disk and 0.06 s on
/// tmpfs, and with fsync off nothing is lost by keeping a throwaway cluster in memory.
fn base_parent() -> PathBuf {
    if let Some(dir) = std::env::var_os(CLUSTER_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    if roomy_tmpfs(shm) {
        return shm.to_owned();
    }
    std::env::temp_dir()
}

fn roomy_tmpfs(path: &Path) -> bool {
    let Ok(cpath) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct; the path is a valid C string.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(cpath.as_ptr(), &mut stat) } != 0 {
        return false;
    }
    let free = (stat.f_bavail as u64).saturating_mul(stat.f_bsize as u64);
    // f_type's width differs between targets (c_long here, u32 on some); compare widened.
    #[allow(clippy::unnecessary_cast)]
    let is_tmpfs = stat.f_type as i64 == libc::TMPFS_MAGIC as i64;
    is_tmpfs && free >= MIN_TMPFS_FREE
}

/// The per-user base directory, created on first use. Per effective uid, so that root's and a
/// developer's runs on one machine never share (or fight over) files.
pub(crate) fn base() -> io::Result<Base> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let root = base_parent().join(format!("walshift-pg-{euid}"));
    // 0755: the unprivileged server user must traverse into clusters/ and templates/.
    for dir in [
        &root,
        &root.join("clusters"),
        &root.join("templates"),
        &root.join("logs"),
    ] {
        match fs::DirBuilder::new().mode(0o755).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    // The name is predictable in a shared /tmp; refuse one planted by another user.
    let owner = fs::metadata(&root)?.uid();
    if owner != euid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to uid {owner}, not to us ({euid})",
                root.display()
            ),
        ));
    }
    let name = root.file_name().map(|n| n.to_owned()).unwrap_or_default();
    let other_clusters = [Path::new("/dev/shm").to_owned(), std::env::temp_dir()]
        .into_iter()
        .map(|parent| parent.join(&name))
        .filter(|other| *other != root && fs::metadata(other).is_ok_and(|m| m.uid() == euid))
        .map(|other| other.join("clusters"))
        .collect();
    Ok(Base {
        clusters: root.join("clusters"),
        templates: root.join("templates"),
        logs: root.join("logs"),
        other_clusters,
    })
}

/// A cluster directory this process owns. The lock is held until this value is dropped, which
/// for a running cluster is after the directory has been removed.
pub(crate) struct ClusterDir {
    pub(crate) path: PathBuf,
    pub(crate) name: String,
    _owner: File,
}

/// Create and lock a new cluster directory under `clusters`.
pub(crate) fn claim(clusters: &Path) -> io::Result<ClusterDir> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let pid = std::process::id();
    loop {
        let name = format!("c{pid}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let path = clusters.join(&name);
        match fs::DirBuilder::new().mode(0o755).create(&path) {
            Ok(()) => {}
            // Left by an earlier process with our pid that was not swept (its lock is held by
            // someone, or it is half-created): pick the next number.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        let mut owner = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(path.join("owner"))?;
        flock(&owner, libc::LOCK_EX)?;
        // The pid is written only under the lock: a sweeper that wins the lock in the instant
        // between create and flock finds the file empty and leaves the directory alone.
        writeln!(owner, "{pid}")?;
        return Ok(ClusterDir {
            path,
            name,
            _owner: owner,
        });
    }
}

/// Stop the postmaster of every cluster directory whose owner is dead, and remove it.
/// Best effort: a directory that cannot be swept now is retried by the next start.
pub(crate) fn sweep(base: &Base) {
    for clusters in std::iter::once(&base.clusters).chain(&base.other_clusters) {
        let Ok(entries) = fs::read_dir(clusters) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                sweep_one(&path);
            }
        }
    }
    if let Ok(entries) = fs::read_dir(&base.logs) {
        for entry in entries.flatten() {
            if older_than(&entry.path(), LOG_RETENTION) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

fn sweep_one(dir: &Path) {
    let mut owner = match File::open(dir.join("owner")) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if older_than(dir, HALF_CREATED_GRACE) {
                stop_postmaster(&dir.join("data"));
                let _ = fs::remove_dir_all(dir);
            }
            return;
        }
        Err(_) => return,
    };
    if flock(&owner, libc::LOCK_EX | libc::LOCK_NB).is_err() {
        return; // the owner is alive
    }
    let mut pid = String::new();
    let _ = owner.read_to_string(&mut pid);
    if pid.trim().is_empty() && !older_than(dir, HALF_CREATED_GRACE) {
        return; // its creator is between create and flock
    }
    // Holding the lock while removing keeps a second sweeper out.
    stop_postmaster(&dir.join("data"));
    let _ = fs::remove_dir_all(dir);
}

fn older_than(path: &Path, age: Duration) -> bool {
    fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .map(|t| SystemTime::now().duration_since(t).unwrap_or_default() > age)
        .unwrap_or(false)
}

/// `flock(2)` on `file`, retried on EINTR.
pub(crate) fn flock(file: &File, operation: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: the descriptor is valid for the borrow of `file`.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// The postmaster pid recorded in `data_dir/postmaster.pid`, if any.
pub(crate) fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines()
        .next()?
        .trim()
        .parse()
        .ok()
        .filter(|pid| *pid > 0)
}

/// Whether `pid` is a running process. A zombie counts as dead: the postmaster of an owner that
/// died is reparented to PID 1, which in a container may never reap it.
pub fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let exists = unsafe { libc::kill(pid, 0) } == 0
        || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next()),
            Some('Z' | 'X')
        ),
        Err(_) => false,
    }
}

/// Whether `pid` is a postmaster serving `data_dir`: walshift (like pg_ctl) starts it as
/// `postgres -D <data_dir>`, so its command line names the directory. Guards against
/// signalling an unrelated process that inherited a stale pid.
fn is_postmaster_of(pid: i32, data_dir: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = data_dir.as_os_str().as_encoded_bytes();
    cmdline.split(|b| *b == 0).any(|arg| arg == needle)
}

/// Stop the postmaster of `data_dir` without pg_ctl (the binaries of a dead owner may be gone):
/// SIGQUIT, the immediate-shutdown signal, then SIGKILL if it lingers. Returns once it is gone.
pub(crate) fn stop_postmaster(data_dir: &Path) {
    let Some(pid) = postmaster_pid(data_dir) else {
        return;
    };
    if !process_alive(pid) || !is_postmaster_of(pid, data_dir) {
        return;
    }
    for (signal, patience) in [
        (libc::SIGQUIT, Duration::from_secs(10)),
        (libc::SIGKILL, Duration::from_secs(5)),
    ] {
        // SAFETY: plain kill(2) on a pid we checked is our postmaster.
        unsafe { libc::kill(pid, signal) };
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if !process_alive(pid) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Copy a cluster's log to `logs/` so it outlives the cluster; returns where it went.
pub(crate) fn keep_log(logs: &Path, log_file: &Path, name: &str) -> Option<PathBuf> {
    let kept = logs.join(format!("{name}.log"));
    fs::copy(log_file, &kept).ok().map(|_| kept)
}

/// The last `lines` lines of a log file, or a note saying why there are none.
pub(crate) fn log_tail(log_file: &Path, lines: usize) -> String {
    match fs::read(log_file) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(no log at {}: {e})", log_file.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_base(root: &Path) -> Base {
        let base = Base {
            clusters: root.join("clusters"),
            templates: root.join("templates"),
            logs: root.join("logs"),
            other_clusters: vec![root.join("elsewhere/clusters")],
        };
        for d in [&base.clusters, &base.templates, &base.logs] {
            fs::create_dir_all(d).unwrap();
        }
        base
    }

    #[test]
    fn sweep_removes_unlocked_dirs_and_keeps_live_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let base = fake_base(tmp.path());
        let live = claim(&base.clusters).unwrap();
        // A dead owner: a pid was written, and nobody holds the lock any more.
        let dead = base.clusters.join("c1-0");
        fs::create_dir(&dead).unwrap();
        fs::write(dead.join("owner"), "1\n").unwrap();
        fs::create_dir(dead.join("data")).unwrap();
        // A directory being created right now: no pid yet, young.
        let young = base.clusters.join("c2-0");
        fs::create_dir(&young).unwrap();
        fs::write(young.join("owner"), "").unwrap();

        let elsewhere = base.other_clusters[0].join("c3-0");
        fs::create_dir_all(&elsewhere).unwrap();
        fs::write(elsewhere.join("owner"), "3\n").unwrap();

        sweep(&base);
        assert!(
            !elsewhere.exists(),
            "dead owners' directories in other bases are swept too"
        );
        assert!(live.path.exists(), "a live owner's directory is kept");
        assert!(!dead.exists(), "a dead owner's directory is swept");
        assert!(young.exists(), "a half-created directory is left alone");
    }

    #[test]
    fn claimed_names_are_unique_and_record_the_pid() {
        let tmp = tempfile::tempdir().unwrap();
        let base = fake_base(tmp.path());
        let a = claim(&base.clusters).unwrap();
        let b = claim(&base.clusters).unwrap();
        assert_ne!(a.path, b.path);
        let pid = fs::read_to_string(a.path.join("owner")).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        assert!(a.name.starts_with(&format!("c{}-", std::process::id())));
    }

    #[test]
    fn liveness_treats_missing_processes_as_dead() {
        assert!(process_alive(std::process::id() as i32));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert!(!process_alive(pid));
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("log");
        fs::write(&log, "a\nb\nc\n").unwrap();
        assert_eq!(log_tail(&log, 2), "b\nc");
        assert!(log_tail(&tmp.path().join("none"), 2).starts_with("(no log at"));
    }
}
