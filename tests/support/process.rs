//! The `walshift` binary under test: a spec in its own temporary directory ([`Spec`]), and the
//! one `walshift run` child process every test uses ([`Run`]).
//!
//! A run is driven only through its public surface: arguments, environment, signals, exit
//! code, HTTP, and what it logs. Its stderr (and its stdout) go to files of their own per run
//! beside the spec, so a failing test can show them: every failure that names the run ends with
//! the last [`TAIL_LINES`] lines of its log, and a run dropped while the test panics prints
//! them. Dropping a run kills it.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::Database;
use super::http::{Reply, get};

pub const BIN: &str = env!("CARGO_BIN_EXE_walshift");

/// How long a SIGTERM may take to end `walshift run` ("finish the in-flight batch"), for
/// [`Run::stop_summary`].
pub const STOP_WITHIN: Duration = Duration::from_secs(10);
/// How long [`Run::stop`] gives a SIGTERM.
pub const STOP_LOG_WITHIN: Duration = Duration::from_secs(30);
/// Lines of a run's log shown with a failure.
const TAIL_LINES: usize = 80;

/// A spec written into its own temporary directory; the logs of its runs go there too.
pub struct Spec {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub name: String,
    runs: AtomicU32,
}

impl Spec {
    /// Writes `name = "<name>"` followed by `body` (the `[[mirror]]` tables and the rest).
    pub fn new(name: &str, body: &str) -> Spec {
        let dir = tempfile::Builder::new()
            .prefix("walshift-test-")
            .tempdir()
            .expect("create a temporary directory for the spec");
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, format!("name = \"{name}\"\n{body}"))
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        Spec {
            dir,
            path,
            name: name.to_owned(),
            runs: AtomicU32::new(0),
        }
    }

    /// The slot, publication and origin name: `walshift_` + name with `-` as `_`.
    pub fn object(&self) -> String {
        format!("walshift_{}", self.name.replace('-', "_"))
    }

    /// The next run's stderr and stdout files.
    fn next_log(&self) -> (PathBuf, PathBuf) {
        let n = self.runs.fetch_add(1, Ordering::Relaxed) + 1;
        let file = |ext: &str| self.dir.path().join(format!("walshift-run-{n}.{ext}"));
        (file("stderr"), file("stdout"))
    }
}

/// `walshift <args[0]> SPEC <args[1..]> --db CONNINFO`, with the environment every test gives
/// the binary: no `RUST_LOG` or `WALSHIFT_DB` of the caller's, no HTTP port unless the test asks
/// with `--listen` (tests run side by side), stdin closed. Output is left to the caller.
pub fn command(args: &[&str], spec: &Path, conninfo: &str) -> Command {
    let (sub, rest) = args.split_first().expect("a subcommand");
    let mut cmd = Command::new(BIN);
    cmd.arg(sub).arg(spec).args(rest).args(["--db", conninfo]);
    hermetic(&mut cmd);
    cmd
}

fn hermetic(cmd: &mut Command) {
    cmd.env_remove("RUST_LOG")
        .env_remove("WALSHIFT_DB")
        .env("WALSHIFT_LISTEN", "off")
        .stdin(Stdio::null());
}

/// The final log line of a clean `walshift run` (JSON logs): totals over the life of the process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub txns: u64,
    pub echo_txns: u64,
    pub keys: u64,
    pub rows_written: u64,
    pub confirmed: String,
}

/// How to start a `walshift run`: [`Run::on`], then arguments, environment, global options.
pub struct Launch<'a> {
    spec: &'a Spec,
    conninfo: String,
    global: Vec<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// The caller chose the global options ([`Launch::global`]): `WALSHIFT_TEST_VERBOSE` does
    /// not add `-v`.
    own_global: bool,
}

impl Launch<'_> {
    /// `walshift run` arguments after `SPEC --db CONNINFO`.
    pub fn args(mut self, extra: &[&str]) -> Self {
        self.args.extend(extra.iter().map(|a| a.to_string()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// `--log-format json`: what [`Run::summary`] and the JSON log readers need.
    pub fn json_log(mut self) -> Self {
        self.global.extend(["--log-format".into(), "json".into()]);
        self
    }

    /// Global options before the subcommand (`--log-format`, `-v`), exactly these: a test that
    /// checks what a run logs chooses its verbosity itself.
    pub fn global(mut self, global: &[&str]) -> Self {
        self.global.extend(global.iter().map(|a| a.to_string()));
        self.own_global = true;
        self
    }

    pub fn spawn(self) -> Run {
        let (log, stdout) = self.spec.next_log();
        let open = |path: &Path| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
        };
        let mut cmd = Command::new(BIN);
        cmd.args(&self.global)
            .arg("run")
            .arg(&self.spec.path)
            .args(["--db", &self.conninfo])
            .args(&self.args);
        hermetic(&mut cmd);
        if !self.own_global && std::env::var_os("WALSHIFT_TEST_VERBOSE").is_some() {
            cmd.arg("-v");
        }
        cmd.envs(self.env).stdout(open(&stdout)).stderr(open(&log));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {BIN} run: {e}"));
        Run {
            pid: child.id() as i32,
            child: Mutex::new(child),
            log,
            stdout,
            slot: self.spec.object(),
            addr: OnceLock::new(),
            reported: AtomicBool::new(false),
        }
    }
}

/// A running (or exited) `walshift run`. Dropping it kills the process; while the test is
/// panicking, the end of its log is printed first (unless a failure message already showed it).
pub struct Run {
    child: Mutex<Child>,
    pid: i32,
    /// Its stderr: what it logs.
    log: PathBuf,
    /// Its stdout (`walshift run` prints nothing there; tests/logs.rs checks that).
    stdout: PathBuf,
    slot: String,
    /// Where it serves HTTP, once [`Run::listening`] has read it from the log.
    addr: OnceLock<String>,
    /// The tail was already part of a failure message.
    reported: AtomicBool,
}

impl Run {
    /// A run of `spec` against `conninfo` (through a relay, several hosts, another user), to
    /// set up and [`Launch::spawn`].
    pub fn on<'a>(spec: &'a Spec, conninfo: &str) -> Launch<'a> {
        Launch {
            spec,
            conninfo: conninfo.to_owned(),
            global: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            own_global: false,
        }
    }

    /// `walshift run SPEC --db <db>`, text logs.
    pub fn spawn(spec: &Spec, db: &Database) -> Run {
        Run::spawn_with(spec, db, &[])
    }

    /// `walshift run SPEC --db <db> <extra>`, text logs.
    pub fn spawn_with(spec: &Spec, db: &Database, extra: &[&str]) -> Run {
        Run::on(spec, &db.conninfo()).args(extra).spawn()
    }

    /// Runs walshift to its own exit (for runs expected to fail at startup), JSON logs: exit
    /// status and everything it wrote.
    pub async fn run_to_exit(
        spec: &Spec,
        conninfo: &str,
        timeout: Duration,
    ) -> (ExitStatus, String) {
        let run = Run::on(spec, conninfo).json_log().spawn();
        let status = run.exit(timeout).await;
        let output = run.stderr();
        run.reported.store(true, Ordering::Relaxed);
        (status, output)
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The replication slot this run uses (its spec's [`Spec::object`]).
    pub fn slot(&self) -> &str {
        &self.slot
    }

    /// The exit status, if it has exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        child.try_wait().expect("try_wait on walshift run")
    }

    pub fn still_running(&self) -> bool {
        self.exited().is_none()
    }

    /// Fails the test, with the run's log, if the process has ended.
    pub fn ensure_running(&self) {
        if let Some(status) = self.exited() {
            self.fail(&format!("walshift run exited unexpectedly ({status})"));
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
                "cannot send signal {sig}: walshift run already exited"
            ));
        }
        // SAFETY: plain kill(2) on our own child, which has not been reaped (checked above,
        // and only this struct reaps it), so the pid cannot have been reused.
        let rc = unsafe { libc::kill(self.pid, sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid);
    }

    /// Waits for the process to exit by itself; fails the test after `timeout`.
    pub async fn exit(&self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            if Instant::now() >= deadline {
                self.fail(&format!("walshift run did not exit within {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM; it must exit with code 0 within `within`. Returns how long that took.
    pub async fn terminate(&self, within: Duration) -> Duration {
        let asked = Instant::now();
        self.sigterm();
        let status = self.exit(within).await;
        let took = asked.elapsed();
        if status.code() != Some(0) {
            self.fail(&format!(
                "walshift run did not stop cleanly on SIGTERM: {status}"
            ));
        }
        took
    }

    /// SIGTERM; it must exit with code 0 within [`STOP_LOG_WITHIN`]. Returns its log.
    pub async fn stop(self) -> String {
        self.stop_within(STOP_LOG_WITHIN).await
    }

    /// SIGTERM; it must exit with code 0 within `within`. Returns its log.
    pub async fn stop_within(self, within: Duration) -> String {
        self.terminate(within).await;
        self.reported.store(true, Ordering::Relaxed);
        self.stderr()
    }

    /// SIGTERM; expects exit code 0 within [`STOP_WITHIN`] and the summary as the last line
    /// (JSON logs). Returns the summary and how long the stop took.
    pub async fn stop_summary(self) -> (Summary, Duration) {
        let took = self.terminate(STOP_WITHIN).await;
        let summary = self.summary();
        self.reported.store(true, Ordering::Relaxed);
        (summary, took)
    }

    /// SIGKILL, and reap it.
    pub async fn kill(self) {
        self.sigkill();
        self.exit(Duration::from_secs(10)).await;
        self.reported.store(true, Ordering::Relaxed);
    }

    /// Everything the process logged (its stderr).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What the process wrote on stdout.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Times `needle` appears in the log.
    pub fn count(&self, needle: &str) -> usize {
        self.stderr().matches(needle).count()
    }

    /// Waits until the log holds `needle` more than `before` times; how long that took, or
    /// `None` after `timeout`. Fails at once if the run exits.
    pub async fn wait_log(
        &self,
        needle: &str,
        before: usize,
        timeout: Duration,
    ) -> Option<Duration> {
        let start = Instant::now();
        loop {
            if self.count(needle) > before {
                return Some(start.elapsed());
            }
            self.ensure_running();
            if start.elapsed() >= timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The address a run started with `--listen 127.0.0.1:0` serves (it logs it once bound,
    /// the port the kernel chose); fails if it exits first or does not say within 20 s.
    pub async fn listening(&self) -> String {
        if let Some(addr) = self.addr.get() {
            return addr.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.stderr();
            if let Some(rest) = text.split("listening on http://").nth(1) {
                let addr = rest.split('/').next().expect("an address").to_string();
                return self.addr.get_or_init(|| addr).clone();
            }
            if let Some(status) = self.exited() {
                self.fail(&format!("walshift run exited ({status}) before listening"));
            }
            if Instant::now() >= deadline {
                self.fail("walshift run did not say where it listens within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET path` from the run's HTTP server ([`Run::listening`]); fails, with the log, if
    /// there is no answer.
    pub async fn get(&self, path: &str) -> Reply {
        let addr = self.listening().await;
        get(&addr, path)
            .await
            .unwrap_or_else(|e| self.fail(&format!("GET {path}: {e}")))
    }

    /// Parses the final line: `{"fields": {"message": "walshift run stopped cleanly", ...}}`
    /// (tracing's JSON layout; top-level fields are accepted as well).
    pub fn summary(&self) -> Summary {
        let output = self.stderr();
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

    /// The last lines of the log, for failure messages.
    pub fn tail(&self) -> String {
        let output = self.stderr();
        let lines: Vec<&str> = output.lines().collect();
        lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
    }

    fn banner(&self) -> String {
        format!(
            "--- walshift run output (pid {}, last {TAIL_LINES} lines of {}) ---\n{}\n---",
            self.pid,
            self.log.display(),
            self.tail()
        )
    }

    /// Fails the test with `message` and the end of the run's log.
    pub fn fail(&self, message: &str) -> ! {
        self.reported.store(true, Ordering::Relaxed);
        panic!("{message}\n{}", self.banner())
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() && !self.reported.load(Ordering::Relaxed) {
            eprintln!("{}", self.banner());
        }
    }
}
