//! initdb once, copy many times.
//!
//! initdb takes about a second; copying its output takes a few tens of milliseconds. So each
//! (binaries, server user) pair gets one template data directory, made under an exclusive
//! `flock` so concurrent test processes (nextest runs one per test) never race on it, and
//! published by an atomic rename so a half-made template is never seen. Templates are never
//! modified afterwards, so copying one needs no lock.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::account::{self, Account};
use super::bins::Bins;
use super::dirs::{self, Base};
use super::{Error, SUPERUSER};

/// Bumped whenever the initdb arguments or the template's postgresql.conf tail change, so old
/// templates are not reused.
const TEMPLATE_FORMAT: u32 = 1;

/// The line appended to the template's postgresql.conf. Every cluster writes its own
/// walshift.conf; the include comes last so its settings win over initdb's, while
/// postgresql.auto.conf (ALTER SYSTEM) still wins over both, as on a real server.
pub(crate) const INCLUDE_LINE: &str = "\n# walshift::cluster writes its per-cluster settings here.\ninclude_if_exists = 'walshift.conf'\n";

/// The directory name of the template for these binaries and this server user.
pub(crate) fn key(bins: &Bins, account: Option<&Account>) -> String {
    let mut hash = Sha256::new();
    hash.update(TEMPLATE_FORMAT.to_le_bytes());
    hash.update(bins.dir.as_os_str().as_encoded_bytes());
    hash.update([0]);
    hash.update(bins.version.as_bytes());
    hash.update([0]);
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = account.map_or_else(|| unsafe { libc::geteuid() }, |a| a.uid);
    hash.update(uid.to_le_bytes());
    let digest = hash.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("t{hex}")
}

/// The template data directory for `bins`, made now if it does not exist yet.
pub(crate) fn ensure(
    base: &Base,
    bins: &Bins,
    account: Option<&Account>,
) -> Result<PathBuf, Error> {
    let key = key(bins, account);
    let ready = base.templates.join(&key);
    if is_complete(&ready) {
        return Ok(ready);
    }
    let lock_path = base.templates.join(format!("{key}.lock"));
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::io(format!("open {}", lock_path.display()), e))?;
    dirs::flock(&lock, libc::LOCK_EX)
        .map_err(|e| Error::io(format!("lock {}", lock_path.display()), e))?;
    // Someone else may have made it while we waited for the lock.
    if is_complete(&ready) {
        return Ok(ready);
    }
    // A template damaged by a /tmp cleaner, or a partial one from a killed initdb.
    let partial = base.templates.join(format!("{key}.partial"));
    for stale in [&ready, &partial] {
        if stale.exists() {
            fs::remove_dir_all(stale)
                .map_err(|e| Error::io(format!("remove {}", stale.display()), e))?;
        }
    }
    account::create_dir(&partial, 0o700, account)
        .map_err(|e| Error::io(format!("create {}", partial.display()), e))?;
    run_initdb(bins, account, &partial, &base.templates)?;
    let conf = partial.join("postgresql.conf");
    OpenOptions::new()
        .append(true)
        .open(&conf)
        .and_then(|mut f| f.write_all(INCLUDE_LINE.as_bytes()))
        .map_err(|e| Error::io(format!("append to {}", conf.display()), e))?;
    fs::rename(&partial, &ready)
        .map_err(|e| Error::io(format!("publish template {}", ready.display()), e))?;
    Ok(ready)
}

fn is_complete(dir: &Path) -> bool {
    dir.join("PG_VERSION").is_file()
        && dir.join("global/pg_control").is_file()
        && dir.join("postgresql.conf").is_file()
}

fn run_initdb(
    bins: &Bins,
    account: Option<&Account>,
    data: &Path,
    cwd: &Path,
) -> Result<(), Error> {
    let output = bins
        .command("initdb", account, cwd)
        .arg("-D")
        .arg(data)
        .args([
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ])
        .output()
        .map_err(|e| Error::io(format!("run {}/initdb", bins.dir.display()), e))?;
    if output.status.success() {
        return Ok(());
    }
    Err(Error::Command {
        what: format!("{}/initdb -D {}", bins.dir.display(), data.display()),
        status: output.status.to_string(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_depends_on_binaries_version_and_user() {
        let a = Bins {
            dir: PathBuf::from("/usr/lib/postgresql/16/bin"),
            version: "postgres (PostgreSQL) 16.4".into(),
            lib_dir: None,
        };
        let upgraded = Bins {
            version: "postgres (PostgreSQL) 16.5".into(),
            ..a.clone()
        };
        let other_dir = Bins {
            dir: PathBuf::from("/opt/pg16/bin"),
            ..a.clone()
        };
        let user = |uid| Account {
            name: "pg".into(),
            uid,
            gid: uid,
        };
        let k = key(&a, Some(&user(101)));
        assert_eq!(k, key(&a, Some(&user(101))), "stable");
        assert_ne!(k, key(&upgraded, Some(&user(101))));
        assert_ne!(k, key(&other_dir, Some(&user(101))));
        assert_ne!(k, key(&a, Some(&user(102))));
        assert_eq!(k.len(), 17);
    }
}
