//! Who the server runs as, and file operations that keep its files owned by that user.
//!
//! PostgreSQL refuses to run as root (initdb and postgres both check). CI and the
//! project's machines run as root, so there every server program is started as an unprivileged
//! user instead — `postgres` when it exists, or `WALSHIFT_TEST_PG_USER` — and the files it must
//! own are chowned to it. As any other user, programs simply run as that user.

use std::ffi::{CString, OsString};
use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, lchown, symlink};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use super::Error;

/// The environment variable naming the user to run servers as when the caller is root.
pub const PG_USER_ENV: &str = "WALSHIFT_TEST_PG_USER";

/// An unprivileged account that server programs run as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Account {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// `None` when this process is not root (programs run as ourselves), otherwise the account to
/// drop to.
pub(crate) fn detect() -> Result<Option<Account>, Error> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let (name, from_env) = match std::env::var(PG_USER_ENV) {
        Ok(name) if !name.is_empty() => (name, true),
        _ => ("postgres".to_owned(), false),
    };
    let Some(account) = lookup(&name) else {
        let how = if from_env {
            format!("{PG_USER_ENV}={name} names no user")
        } else {
            "there is no user `postgres`".to_owned()
        };
        return Err(Error::Config(format!(
            "running as root, which PostgreSQL refuses, and {how}; create one \
             (`useradd --system --user-group postgres`, or install the postgresql package) \
             or set {PG_USER_ENV} to an existing unprivileged user"
        )));
    };
    if account.uid == 0 {
        return Err(Error::Config(format!(
            "{PG_USER_ENV}={name} is root; PostgreSQL needs an unprivileged user"
        )));
    }
    Ok(Some(account))
}

fn lookup(name: &str) -> Option<Account> {
    let cname = CString::new(name).ok()?;
    // SAFETY: passwd is plain data; getpwnam_r fills it, pointing into `buf`, which outlives
    // every use below. A zeroed passwd is a valid (if meaningless) value.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        );
        if rc != 0 || result.is_null() {
            return None;
        }
        Some(Account {
            name: name.to_owned(),
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        })
    }
}

/// A command for a server program, run as `account` (if any) in `cwd`.
///
/// The `PG*` variables of the caller are removed: a developer's `PGDATA`, `PGPORT` or
/// `PGOPTIONS` must not steer a throwaway cluster.
///
/// Supplementary groups: std's `Command` calls `setgroups(0, NULL)` itself when a uid is set
/// while running as root, before `setuid`. A `pre_exec` hook runs *after* `setuid`, when
/// `setgroups` would fail with EPERM, so there is no hook here; the harness tests check the
/// postmaster's `Groups:` line is empty instead.
pub(crate) fn command(program: &Path, account: Option<&Account>, cwd: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(cwd);
    for key in pg_vars(std::env::vars_os().map(|(k, _)| k)) {
        cmd.env_remove(key);
    }
    if let Some(account) = account {
        cmd.uid(account.uid).gid(account.gid);
        cmd.env("USER", &account.name)
            .env("LOGNAME", &account.name)
            .env("HOME", cwd);
    }
    cmd
}

/// The names among `keys` that libpq or the server programs read (`PGDATA`, `PGPORT`, ...).
fn pg_vars(keys: impl Iterator<Item = OsString>) -> Vec<OsString> {
    keys.filter(|k| k.as_encoded_bytes().starts_with(b"PG"))
        .collect()
}

/// Give `path` (not following symlinks) to `account`; a no-op when not root.
pub(crate) fn chown(path: &Path, account: Option<&Account>) -> io::Result<()> {
    match account {
        Some(a) => lchown(path, Some(a.uid), Some(a.gid)),
        None => Ok(()),
    }
}

/// Create `path` with `mode`, owned by `account`.
pub(crate) fn create_dir(path: &Path, mode: u32, account: Option<&Account>) -> io::Result<()> {
    fs::create_dir(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    chown(path, account)
}

/// Copy the tree `src` into the new directory `dst`, keeping modes and symlinks, every copy
/// owned by `account`. `skip(relative_path)` leaves a file or directory out (a skipped
/// directory is still created, empty: Postgres needs pg_wal/ to exist even when its contents
/// are not copied). With `tolerate_vanished`, files that disappear mid-copy are ignored, as a
/// base backup of a running server requires.
pub(crate) fn copy_tree(
    src: &Path,
    dst: &Path,
    account: Option<&Account>,
    skip: &dyn Fn(&Path) -> bool,
    tolerate_vanished: bool,
) -> io::Result<()> {
    let vanished = |e: &io::Error| tolerate_vanished && e.kind() == io::ErrorKind::NotFound;
    let root_mode = fs::metadata(src)?.permissions().mode();
    create_dir(dst, root_mode & 0o7777, account)?;
    let mut stack = vec![std::path::PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let entries = match fs::read_dir(src.join(&rel)) {
            Ok(entries) => entries,
            Err(e) if vanished(&e) => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let rel_child = rel.join(entry.file_name());
            let from = src.join(&rel_child);
            let to = dst.join(&rel_child);
            let meta = match fs::symlink_metadata(&from) {
                Ok(meta) => meta,
                Err(e) if vanished(&e) => continue,
                Err(e) => return Err(e),
            };
            let skipped = skip(&rel_child);
            if meta.is_dir() {
                create_dir(&to, meta.permissions().mode() & 0o7777, account)?;
                if !skipped {
                    stack.push(rel_child);
                }
            } else if skipped {
                continue;
            } else if meta.file_type().is_symlink() {
                symlink(fs::read_link(&from)?, &to)?;
                chown(&to, account)?;
            } else {
                match fs::copy(&from, &to) {
                    Ok(_) => chown(&to, account)?,
                    Err(e) if vanished(&e) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_tree_keeps_modes_symlinks_and_skips() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::set_permissions(&src, fs::Permissions::from_mode(0o700)).unwrap();
        fs::create_dir(src.join("pg_wal")).unwrap();
        fs::write(src.join("pg_wal/000000010000000000000001"), b"wal").unwrap();
        fs::write(src.join("PG_VERSION"), b"16\n").unwrap();
        fs::set_permissions(src.join("PG_VERSION"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(src.join("postmaster.pid"), b"1\n").unwrap();
        symlink("PG_VERSION", src.join("link")).unwrap();

        let dst = tmp.path().join("dst");
        let skip = |rel: &Path| rel == Path::new("pg_wal") || rel == Path::new("postmaster.pid");
        copy_tree(&src, &dst, None, &skip, false).unwrap();

        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dst), 0o700);
        assert_eq!(mode(&dst.join("PG_VERSION")), 0o600);
        assert_eq!(fs::read(dst.join("PG_VERSION")).unwrap(), b"16\n");
        assert_eq!(
            fs::read_link(dst.join("link")).unwrap(),
            Path::new("PG_VERSION")
        );
        assert!(
            dst.join("pg_wal").is_dir(),
            "skipped directories still exist"
        );
        assert_eq!(fs::read_dir(dst.join("pg_wal")).unwrap().count(), 0);
        assert!(!dst.join("postmaster.pid").exists());
    }

    #[test]
    fn commands_do_not_inherit_pg_variables() {
        let keys = ["PGDATA", "PATH", "PG_BIN", "XPGPORT", "PGOPTIONS"].map(OsString::from);
        assert_eq!(
            pg_vars(keys.into_iter()),
            ["PGDATA", "PG_BIN", "PGOPTIONS"].map(OsString::from)
        );
        let tmp = tempfile::tempdir().unwrap();
        let cmd = command(Path::new("/bin/true"), None, tmp.path());
        assert_eq!(cmd.get_current_dir(), Some(tmp.path()));
    }
}
