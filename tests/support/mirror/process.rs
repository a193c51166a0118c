//! The `walshift` binary under test, as a child process.
//!
//! It is driven only through its public surface: arguments, signals, exit code, and the JSON
//! log lines on stderr (kept in a file beside the spec, so a failing test can show them).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a SIGTERM may take to end `walshift run` ("finish the in-flight batch").
pub const STOP_WITHIN: Duration = Duration::from_secs(10);
/// Lines of stderr shown with a failure.
const TAIL_LINES: usize = 80;

/// A spec written into its own temporary directory; walshift's stderr files go there too.
pub struct SpecFile {
    dir: tempfile::TempDir,
    path: PathBuf,
    name: String,
    runs: AtomicU32,
}

impl SpecFile {
    /// Writes `name = "<name>"` followed by `body` (the `[[mirror]]` tables).
    pub fn new(name: &str, body: &str) -> SpecFile {
        let dir = tempfile::Builder::new()
            .prefix("walshift-mirror-")
            .tempdir()
            .expect("create a temporary directory for the spec");
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, format!("name = \"{name}\"\n\n{body}"))
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        SpecFile {
            dir,
            path,
            name: name.to_owned(),
            runs: AtomicU32::new(0),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The slot, publication and origin name: `walshift_` + name with `-` as `_`.
    pub fn object_name(&self) -> String {
        format!("walshift_{}", self.name.replace('-', "_"))
    }

    fn next_log(&self) -> PathBuf {
        let n = self.runs.fetch_add(1, Ordering::Relaxed) + 1;
        self.dir.path().join(format!("walshift-run-{n}.stderr"))
    }
}

/// The final log line of a clean `walshift run`: totals over the life of the process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub txns: u64,
    pub echo_txns: u64,
    pub keys: u64,
    pub rows_written: u64,
    pub confirmed: String,
}

/// A running (or exited) `walshift run`. Dropping it kills the process; while the test is
/// panicking, the end of its stderr is printed first.
pub struct Walshift {
    child: Mutex<Child>,
    pid: i32,
    log: PathBuf,
    slot: String,
    /// The tail was already part of a failure message.
    reported: AtomicBool,
}

impl Walshift {
    /// `walshift --log-format json run SPEC --db CONNINFO [extra...]`.
    pub fn spawn(spec: &SpecFile, conninfo: &str, extra: &[&str]) -> Walshift {
        let log = spec.next_log();
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().expect("clone the log file handle");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_walshift"));
        cmd.args(["--log-format", "json", "run"])
            .arg(spec.path())
            .args(["--db", conninfo])
            // Tests run side by side: no HTTP port to fight over (tests/http.rs covers it).
            .args(["--listen", "off"])
            .args(extra)
            // The defaults decide what is logged; the final summary line must be there.
            .env_remove("RUST_LOG")
            .env_remove("WALSHIFT_DB")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        if std::env::var_os("WALSHIFT_TEST_VERBOSE").is_some() {
            cmd.arg("-v");
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", env!("CARGO_BIN_EXE_walshift")));
        Walshift {
            pid: child.id() as i32,
            child: Mutex::new(child),
            log,
            slot: spec.object_name(),
            reported: AtomicBool::new(false),
        }
    }

    /// Runs walshift to its own exit (for runs expected to fail at startup): exit status and
    /// everything it wrote.
    pub async fn run_to_exit(
        spec: &SpecFile,
        conninfo: &str,
        timeout: Duration,
    ) -> (ExitStatus, String) {
        let ws = Walshift::spawn(spec, conninfo, &[]);
        let status = ws.wait_exit(timeout).await;
        let output = ws.output();
        ws.reported.store(true, Ordering::Relaxed);
        (status, output)
    }

    /// The replication slot this run uses.
    pub fn slot(&self) -> &str {
        &self.slot
    }

    /// The exit status, if it has exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        child.try_wait().expect("try_wait on walshift")
    }

    /// Fails the test, with walshift's stderr, if the process has ended.
    pub fn ensure_running(&self) {
        if let Some(status) = self.exited() {
            self.fail(&format!("walshift exited unexpectedly ({status})"));
        }
    }

    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    pub fn sigkill(&self) {
        self.signal(libc::SIGKILL);
    }

    fn signal(&self, sig: libc::c_int) {
        if self.exited().is_some() {
            self.fail(&format!(
                "cannot send signal {sig}: walshift already exited"
            ));
        }
        // SAFETY: plain kill(2) on our own child, which has not been reaped (checked above,
        // and only this struct reaps it), so the pid cannot have been reused.
        let rc = unsafe { libc::kill(self.pid, sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid);
    }

    /// Waits for the process to exit by itself; fails the test after `timeout`.
    pub async fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            if Instant::now() >= deadline {
                self.fail(&format!("walshift did not exit within {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM; expects exit code 0 within [`STOP_WITHIN`] and the summary as the last line.
    /// Returns the summary and how long the stop took.
    pub async fn stop(self) -> (Summary, Duration) {
        let asked = Instant::now();
        self.sigterm();
        let status = self.wait_exit(STOP_WITHIN).await;
        let took = asked.elapsed();
        if status.code() != Some(0) {
            self.fail(&format!(
                "walshift did not stop cleanly on SIGTERM: {status}"
            ));
        }
        let summary = self.summary();
        self.reported.store(true, Ordering::Relaxed);
        (summary, took)
    }

    /// SIGKILL, and reap it.
    pub async fn kill(self) {
        self.sigkill();
        self.wait_exit(Duration::from_secs(10)).await;
        self.reported.store(true, Ordering::Relaxed);
    }

    /// Everything the process wrote (stdout and stderr, interleaved as written).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Parses the final line: `{"fields": {"message": "walshift run stopped cleanly", ...}}`
    /// (tracing's JSON layout; top-level fields are accepted as well).
    pub fn summary(&self) -> Summary {
        let output = self.output();
        let Some(last) = output.lines().rev().find(|l| !l.trim().is_empty()) else {
            self.fail("walshift wrote nothing; expected the final summary line")
        };
        let value: serde_json::Value = serde_json::from_str(last)
            .unwrap_or_else(|e| self.fail(&format!("the last line is not JSON ({e}): {last}")));
        let field = |key: &str| -> Option<&serde_json::Value> {
            value
                .get("fields")
                .and_then(|f| f.get(key))
                .or_else(|| value.get(key))
        };
        let message = field("message").and_then(|m| m.as_str()).unwrap_or("");
        if message != "walshift run stopped cleanly" {
            self.fail(&format!("the last line is not the summary: {last}"));
        }
        let number = |key: &str| -> u64 {
            field(key)
                .and_then(|v| v.as_u64())
                .unwrap_or_else(|| self.fail(&format!("summary has no integer {key:?}: {last}")))
        };
        Summary {
            txns: number("txns"),
            echo_txns: number("echo_txns"),
            keys: number("keys"),
            rows_written: number("rows_written"),
            confirmed: field("confirmed")
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string())
                })
                .unwrap_or_else(|| self.fail(&format!("summary has no \"confirmed\": {last}"))),
        }
    }

    /// The last lines of output, for failure messages.
    pub fn tail(&self) -> String {
        let output = self.output();
        let lines: Vec<&str> = output.lines().collect();
        lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
    }

    /// Fails the test with `message` and the end of walshift's output.
    pub fn fail(&self, message: &str) -> ! {
        self.reported.store(true, Ordering::Relaxed);
        panic!(
            "{message}\n--- walshift output (pid {}, last {TAIL_LINES} lines of {}) ---\n{}\n---",
            self.pid,
            self.log.display(),
            self.tail()
        )
    }
}

impl Drop for Walshift {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() && !self.reported.load(Ordering::Relaxed) {
            eprintln!(
                "--- walshift output (pid {}, last {TAIL_LINES} lines of {}) ---\n{}\n---",
                self.pid,
                self.log.display(),
                self.tail()
            );
        }
    }
}
