//! Finding the PostgreSQL server binaries (initdb and postgres; pg_ctl is not needed).
//!
//! Order: the builder's `bin_dir`, then `PG_BIN`, then the newest Debian-style
//! `/usr/lib/postgresql/<major>/bin`, then `pg_config --bindir`. A directory named explicitly
//! (builder or `PG_BIN`) that lacks a binary is an error, never a silent fall-through: a test
//! run meant for PostgreSQL 16 must not quietly run against 15. `WALSHIFT_PG_MAJOR`, when set,
//! says which major those binaries must be (scripts/test sets it for each major of its matrix).
//!
//! A self-contained install (`<prefix>/bin` beside a `<prefix>/lib` holding libpq, as
//! `scripts/fetch-pg` makes) runs with that `lib` first on `LD_LIBRARY_PATH`: its programs find
//! their libraries through their RUNPATH, but the modules the server loads later (the
//! walreceiver of a standby links libpq) may point elsewhere.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::Error;
use super::account::{self, Account};

/// The major the default binaries (`PG_BIN` or discovery, not a builder's `bin_dir`) must be.
pub const PG_MAJOR_ENV: &str = "WALSHIFT_PG_MAJOR";

/// The programs a cluster runs. The postmaster is started and signalled directly rather than
/// through pg_ctl, and standbys are made without pg_basebackup, so these two are all: any
/// server package or build has them, even one without the client tools.
pub(crate) const REQUIRED: [&str; 2] = ["initdb", "postgres"];

/// Where Debian and Ubuntu put one directory per installed major version.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

/// What to tell someone who has no binaries at all.
const INSTALL_HINT: &str = "install the server (Debian/Ubuntu: `apt-get install postgresql`), \
    or run `scripts/fetch-pg 17` and set PG_BIN to the directory it prints, \
    or set PG_BIN to any directory holding initdb and postgres";

/// A directory of server binaries and the version they report.
#[derive(Clone, Debug)]
pub(crate) struct Bins {
    pub(crate) dir: PathBuf,
    /// `postgres --version`, e.g. "postgres (PostgreSQL) 16.4". Part of the template key, so a
    /// package upgrade in place gets a fresh template.
    pub(crate) version: String,
    /// The install's own library directory, put first on `LD_LIBRARY_PATH` for its programs.
    pub(crate) lib_dir: Option<PathBuf>,
}

impl Bins {
    pub(crate) fn program(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A command for the program `name` of these binaries, run as `account` in `cwd`
    /// ([`account::command`]), with the install's libraries first on `LD_LIBRARY_PATH`.
    pub(crate) fn command(&self, name: &str, account: Option<&Account>, cwd: &Path) -> Command {
        let mut cmd = account::command(&self.program(name), account, cwd);
        if let Some(lib) = &self.lib_dir {
            let existing = std::env::var_os("LD_LIBRARY_PATH");
            cmd.env("LD_LIBRARY_PATH", library_path(lib, existing.as_deref()));
        }
        cmd
    }
}

/// `lib`, then the entries of `existing` (an inherited `LD_LIBRARY_PATH`) other than `lib`.
pub(crate) fn library_path(lib: &Path, existing: Option<&OsStr>) -> OsString {
    let mut out = OsString::from(lib);
    for entry in existing.map(std::env::split_paths).into_iter().flatten() {
        if !entry.as_os_str().is_empty() && entry != lib {
            out.push(":");
            out.push(&entry);
        }
    }
    out
}

/// `<bin>/../lib` when it holds libpq: the library directory of a self-contained install.
/// Debian's `/usr/lib/postgresql/<major>/lib` has no libpq (that is in the system's library
/// directory), so a distribution's server runs with the environment it was given.
fn own_lib_dir(bin: &Path) -> Option<PathBuf> {
    let lib = bin.parent()?.join("lib");
    lib.join("libpq.so.5").is_file().then_some(lib)
}

/// The major of a `postgres --version` line: "postgres (PostgreSQL) 17.11" -> 17,
/// "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" -> 15, "... 9.6.24" -> 9.
pub(crate) fn version_major(version: &str) -> Option<u32> {
    let rest = version.split_once("(PostgreSQL) ")?.1;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Resolve the binaries for a cluster; `explicit` is the builder's `bin_dir`.
pub(crate) fn resolve(explicit: Option<&Path>) -> Result<Bins, Error> {
    let dir = find_dir(
        explicit,
        std::env::var_os("PG_BIN").map(PathBuf::from),
        Path::new(DEBIAN_ROOT),
    )?;
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let mut bins = Bins {
        lib_dir: own_lib_dir(&dir),
        dir,
        version: String::new(),
    };
    let output = bins
        .command("postgres", None, Path::new("/"))
        .arg("--version")
        .output()
        .map_err(|e| Error::Binaries(format!("cannot run {}/postgres: {e}", bins.dir.display())))?;
    if !output.status.success() {
        return Err(Error::Binaries(format!(
            "{}/postgres --version failed ({}): {}",
            bins.dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    bins.version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if explicit.is_none() {
        if let Some(want) = std::env::var(PG_MAJOR_ENV).ok().filter(|v| !v.is_empty()) {
            check_major(&bins, &want)?;
        }
    }
    Ok(bins)
}

/// `Err` unless `bins` are PostgreSQL `want` (the value of [`PG_MAJOR_ENV`]).
fn check_major(bins: &Bins, want: &str) -> Result<(), Error> {
    if version_major(&bins.version)
        .map(|m| m.to_string())
        .as_deref()
        == Some(want.trim())
    {
        return Ok(());
    }
    Err(Error::Binaries(format!(
        "{PG_MAJOR_ENV}={want}, but the binaries found ({}) are {}; set PG_BIN to \
         PostgreSQL {want}'s bin directory (scripts/fetch-pg {want} prints one), or unset {PG_MAJOR_ENV}",
        bins.dir.display(),
        bins.version
    )))
}

/// The directory to use; `debian_root` is a parameter so tests can fake the layout.
pub(crate) fn find_dir(
    explicit: Option<&Path>,
    pg_bin_env: Option<PathBuf>,
    debian_root: &Path,
) -> Result<PathBuf, Error> {
    if let Some(dir) = explicit {
        return check(dir)
            .map(|()| dir.to_owned())
            .map_err(|missing| Error::Binaries(format!("bin_dir {} {missing}", dir.display())));
    }
    if let Some(dir) = pg_bin_env.filter(|d| !d.as_os_str().is_empty()) {
        return check(&dir).map(|()| dir.clone()).map_err(|missing| {
            Error::Binaries(format!(
                "PG_BIN={} {missing}; point PG_BIN at a directory holding initdb and postgres, or unset it",
                dir.display()
            ))
        });
    }
    let mut searched = Vec::new();
    if let Some(dir) = newest_debian_dir(debian_root) {
        return Ok(dir);
    }
    searched.push(format!("{}/<major>/bin", debian_root.display()));
    if let Some(dir) = pg_config_bindir() {
        if check(&dir).is_ok() {
            return Ok(dir);
        }
        searched.push(format!("pg_config --bindir ({})", dir.display()));
    } else {
        searched.push("pg_config --bindir (no pg_config on PATH)".to_owned());
    }
    Err(Error::Binaries(format!(
        "no PostgreSQL server binaries found (PG_BIN is unset; searched {}); {INSTALL_HINT}",
        searched.join(", ")
    )))
}

/// `Ok` when `dir` holds every required program, else a phrase naming what is missing.
fn check(dir: &Path) -> Result<(), String> {
    if !dir.is_dir() {
        return Err("is not a directory".to_owned());
    }
    let missing: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|name| !is_executable(&dir.join(name)))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("has no executable {}", missing.join(", ")))
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The bin directory of the newest major under `root` that has all required programs.
fn newest_debian_dir(root: &Path) -> Option<PathBuf> {
    let names = std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok());
    let mut majors: Vec<((u32, u32), String)> = names
        .filter_map(|name| Some((parse_major(&name)?, name)))
        .collect();
    majors.sort();
    majors
        .into_iter()
        .rev()
        .map(|(_, name)| root.join(name).join("bin"))
        .find(|dir| check(dir).is_ok())
}

/// "16" -> (16, 0); "9.6" -> (9, 6) (majors before 10 had two parts); anything else -> None.
pub(crate) fn parse_major(name: &str) -> Option<(u32, u32)> {
    let mut parts = name.splitn(2, '.');
    let major = parts.next()?.parse().ok()?;
    let minor = match parts.next() {
        Some(minor) => minor.parse().ok()?,
        None => 0,
    };
    Some((major, minor))
}

fn pg_config_bindir() -> Option<PathBuf> {
    let output = Command::new("pg_config").arg("--bindir").output().ok()?;
    if !output.status.success() {
        return None;
    }
    let dir = String::from_utf8(output.stdout).ok()?;
    Some(PathBuf::from(dir.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn fake_bin(root: &Path, major: &str, programs: &[&str]) -> PathBuf {
        let bin = root.join(major).join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for p in programs {
            let path = bin.join(p);
            std::fs::write(&path, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        bin
    }

    #[test]
    fn majors_parse_old_and_new_style() {
        assert_eq!(parse_major("16"), Some((16, 0)));
        assert_eq!(parse_major("9.6"), Some((9, 6)));
        assert_eq!(parse_major("bin"), None);
        assert_eq!(parse_major("16.x"), None);
    }

    #[test]
    fn newest_complete_major_wins() {
        let root = tempfile::tempdir().unwrap();
        fake_bin(root.path(), "9.6", &REQUIRED);
        let fifteen = fake_bin(root.path(), "15", &REQUIRED);
        // 17 is newest but incomplete (a client-only install), so 15 is the one to use.
        fake_bin(root.path(), "17", &["pg_ctl", "postgres"]);
        std::fs::create_dir_all(root.path().join("not-a-version/bin")).unwrap();
        assert_eq!(find_dir(None, None, root.path()).unwrap(), fifteen);
        let sixteen = fake_bin(root.path(), "16", &REQUIRED);
        assert_eq!(find_dir(None, None, root.path()).unwrap(), sixteen);
    }

    #[test]
    fn explicit_dir_beats_env_and_env_beats_debian() {
        let root = tempfile::tempdir().unwrap();
        let debian = fake_bin(root.path(), "15", &REQUIRED);
        let env = fake_bin(root.path(), "env", &REQUIRED);
        let explicit = fake_bin(root.path(), "explicit", &REQUIRED);
        assert_eq!(
            find_dir(Some(&explicit), Some(env.clone()), root.path()).unwrap(),
            explicit
        );
        assert_eq!(find_dir(None, Some(env.clone()), root.path()).unwrap(), env);
        // An empty PG_BIN counts as unset.
        assert_eq!(
            find_dir(None, Some(PathBuf::new()), root.path()).unwrap(),
            debian
        );
    }

    #[test]
    fn bogus_pg_bin_names_itself_and_what_is_missing() {
        let root = tempfile::tempdir().unwrap();
        fake_bin(root.path(), "15", &REQUIRED);
        let partial = fake_bin(root.path(), "partial", &["initdb"]);
        let err = find_dir(None, Some(partial.clone()), root.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("PG_BIN={}", partial.display())),
            "{err}"
        );
        assert!(err.contains("has no executable postgres"), "{err}");
        let err = find_dir(None, Some(root.path().join("nope")), root.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a directory"), "{err}");
    }

    #[test]
    fn non_executable_files_do_not_count() {
        let root = tempfile::tempdir().unwrap();
        let bin = fake_bin(root.path(), "16", &REQUIRED);
        std::fs::set_permissions(bin.join("postgres"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let err = find_dir(Some(&bin), None, root.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("has no executable postgres"), "{err}");
    }

    #[test]
    fn majors_of_version_lines() {
        assert_eq!(version_major("postgres (PostgreSQL) 17.11"), Some(17));
        assert_eq!(
            version_major("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(version_major("postgres (PostgreSQL) 18beta1"), Some(18));
        assert_eq!(version_major("postgres (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(version_major("something else 17"), None);
    }

    #[test]
    fn a_wrong_major_is_refused_with_what_was_found() {
        let bins = |version: &str| Bins {
            dir: PathBuf::from("/opt/pg/bin"),
            version: version.to_owned(),
            lib_dir: None,
        };
        assert!(check_major(&bins("postgres (PostgreSQL) 17.11"), "17").is_ok());
        let err = check_major(&bins("postgres (PostgreSQL) 15.18"), "17")
            .unwrap_err()
            .to_string();
        assert!(err.contains("WALSHIFT_PG_MAJOR=17"), "{err}");
        assert!(err.contains("/opt/pg/bin"), "{err}");
        assert!(err.contains("15.18"), "{err}");
        assert!(check_major(&bins("postgres (PostgreSQL) 1.0"), "17").is_err());
    }

    #[test]
    fn a_self_contained_install_brings_its_lib_dir() {
        let root = tempfile::tempdir().unwrap();
        let bin = fake_bin(root.path(), "17", &REQUIRED);
        assert_eq!(own_lib_dir(&bin), None, "no lib directory");
        let lib = root.path().join("17/lib");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(lib.join("pgoutput.so"), "").unwrap();
        assert_eq!(
            own_lib_dir(&bin),
            None,
            "a plugin directory without libpq (Debian's)"
        );
        std::fs::write(lib.join("libpq.so.5"), "").unwrap();
        assert_eq!(own_lib_dir(&bin), Some(lib));
    }

    #[test]
    fn the_install_lib_dir_goes_first_once() {
        let lib = Path::new("/opt/pg/lib");
        assert_eq!(library_path(lib, None), OsString::from("/opt/pg/lib"));
        assert_eq!(
            library_path(lib, Some(OsStr::new("/a::/opt/pg/lib:/b"))),
            OsString::from("/opt/pg/lib:/a:/b")
        );
        let tmp = tempfile::tempdir().unwrap();
        let bins = Bins {
            dir: tmp.path().to_owned(),
            version: String::new(),
            lib_dir: Some(lib.to_owned()),
        };
        let cmd = bins.command("postgres", None, tmp.path());
        let set: Vec<_> = cmd
            .get_envs()
            .filter(|(k, _)| *k == OsStr::new("LD_LIBRARY_PATH"))
            .collect();
        assert_eq!(set.len(), 1);
        assert!(
            set[0]
                .1
                .is_some_and(|v| v.to_string_lossy().starts_with("/opt/pg/lib"))
        );
    }
}
