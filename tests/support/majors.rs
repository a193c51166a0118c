//! Binaries of a given PostgreSQL major, for tests that need that major whatever `PG_BIN`
//! says (tests/versions.rs, tests/failover.rs): from `WALSHIFT_PG<major>_BIN` (scripts/test
//! exports them), `PG_BIN`, `.pg/<major>/bin` (scripts/fetch-pg) or Debian's
//! `/usr/lib/postgresql/<major>/bin`. Under CI a missing major fails; elsewhere the test says
//! so and does not run.

use std::path::{Path, PathBuf};

/// The major of `<dir>/postgres --version`, run with the install's own lib (if any) first.
pub fn major_of(dir: &Path) -> Option<u32> {
    let mut cmd = std::process::Command::new(dir.join("postgres"));
    if let Some(lib) = dir.parent().map(|p| p.join("lib")) {
        cmd.env("LD_LIBRARY_PATH", lib);
    }
    let out = cmd.arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rest = text.split_once("(PostgreSQL) ")?.1;
    rest.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

/// A directory of PostgreSQL `major`'s server binaries, if this machine has one.
pub fn bins_of(major: u32) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os(format!("WALSHIFT_PG{major}_BIN")) {
        candidates.push(dir.into());
    }
    if let Some(dir) = std::env::var_os("PG_BIN") {
        candidates.push(dir.into());
    }
    candidates.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(".pg/{major}/bin")));
    candidates.push(PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")));
    candidates
        .into_iter()
        .filter(|d| !d.as_os_str().is_empty() && d.join("initdb").is_file())
        .find(|d| major_of(d) == Some(major))
}

/// [`bins_of`] for a test of `file`: under CI a missing major fails the test (the matrix is
/// wrong); elsewhere it prints `SKIPPED: ...` and gives `None`.
pub fn required(major: u32, file: &str) -> Option<PathBuf> {
    let found = bins_of(major);
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs PostgreSQL {major} binaries for {file}: scripts/test fetches them \
             (scripts/fetch-pg {major}) and exports WALSHIFT_PG{major}_BIN"
        );
        eprintln!("SKIPPED: no PostgreSQL {major} binaries here (run scripts/fetch-pg {major})");
    }
    found
}
