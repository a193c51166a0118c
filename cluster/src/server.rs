//! Running the server: the postmaster process, SQL from synchronous code, stop/start, teardown.

use std::fs::{self, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::PoisonError;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::account::{self, Account};
use super::bins::Bins;
use super::{Cluster, Database, Endpoint, Error, Result, Rows, SUPERUSER, conf, dirs};

/// How long a start or a stop may take; generous because CI machines have two busy cores.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);
/// Poll interval while waiting for the postmaster. pg_ctl polls every 100 ms, which was most of
/// a start once the template copy got fast; that is why the postmaster is run and signalled
/// here directly, with the same signals pg_ctl sends.
const POLL: Duration = Duration::from_millis(5);

/// What a [`Cluster`] knows about its server process.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// The postmaster, our child while it runs (reaped on stop, so no zombie lingers).
    pub(crate) postmaster: Option<Child>,
    /// The directory was removed; the cluster cannot start again.
    pub(crate) removed: bool,
}

/// How to stop a server: the signals behind `pg_ctl stop -m <mode>`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum StopMode {
    /// `-m fast` (SIGINT): disconnect sessions, checkpoint, exit.
    Fast,
    /// `-m immediate` (SIGQUIT): exit at once, crash recovery on the next start.
    Immediate,
}

impl StopMode {
    fn signal(self) -> libc::c_int {
        match self {
            StopMode::Fast => libc::SIGINT,
            StopMode::Immediate => libc::SIGQUIT,
        }
    }
}

/// Start `postgres -D data_dir` with its output appended to `log_file` and wait until it
/// accepts connections. `Err` says why it did not.
///
/// The postmaster stays in the caller's process group on purpose: Ctrl-C, or nextest
/// terminating a hung test (it signals the test's whole group), reaches the server too. SIGINT
/// is a fast shutdown and SIGTERM a smart one, which ends as soon as the dying test's sessions
/// close, so an interrupted run leaves only its directory, for the next start's sweep.
pub(crate) fn spawn_postmaster(
    bins: &Bins,
    account: Option<&Account>,
    data_dir: &Path,
    log_file: &Path,
) -> std::result::Result<Child, String> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)
        .map_err(|e| format!("open {}: {e}", log_file.display()))?;
    let _ = account::chown(log_file, account);
    let log_err = log.try_clone().map_err(|e| format!("dup log fd: {e}"))?;
    let cwd = data_dir.parent().unwrap_or(data_dir);
    let mut child = bins
        .command("postgres", account, cwd)
        .arg("-D")
        .arg(data_dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| format!("cannot run {}/postgres: {e}", bins.dir.display()))?;
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Err(format!("postgres exited during startup ({status})")),
            Ok(None) => {}
            Err(e) => return Err(format!("wait for postgres: {e}")),
        }
        if accepts_connections(data_dir, child.id()) {
            return Ok(child);
        }
        if Instant::now() > deadline {
            stop_child(&mut child, StopMode::Immediate);
            return Err(format!("postgres was not ready after {STARTUP_TIMEOUT:?}"));
        }
        std::thread::sleep(POLL);
    }
}

/// Whether postmaster.pid, written by postmaster `pid`, says it accepts connections: its 8th
/// line is "ready" on a primary and "standby" on a hot standby (PostgreSQL 10 and later).
fn accepts_connections(data_dir: &Path, pid: u32) -> bool {
    let Ok(text) = fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return false;
    };
    pid_file_ready(&text, pid)
}

pub(crate) fn pid_file_ready(text: &str, pid: u32) -> bool {
    let lines: Vec<&str> = text.lines().collect();
    lines.first().and_then(|l| l.trim().parse::<u32>().ok()) == Some(pid)
        && matches!(lines.get(7).map(|l| l.trim()), Some("ready" | "standby"))
}

/// Signal the postmaster as `mode` says and reap it; SIGKILL if it outstays its time.
pub(crate) fn stop_child(child: &mut Child, mode: StopMode) {
    let pid = child.id() as libc::pid_t;
    let patience = match mode {
        StopMode::Fast => SHUTDOWN_TIMEOUT,
        StopMode::Immediate => Duration::from_secs(10),
    };
    // SAFETY: kill(2) on our own child, not yet reaped, so the pid cannot have been reused.
    unsafe { libc::kill(pid, mode.signal()) };
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(POLL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Set the superuser's password in single-user mode, before the server first starts: the
/// builder's own pg_hba lines may already demand the password, so there is no window in which
/// a normal connection could set it.
pub(crate) fn set_password(
    bins: &Bins,
    account: Option<&Account>,
    data_dir: &Path,
    password: &str,
) -> Result<()> {
    let sql = format!(
        "ALTER ROLE {} PASSWORD {}\n",
        conf::quote_ident(SUPERUSER),
        conf::quote_literal(password)
    );
    if sql.lines().count() != 1 {
        // Single-user mode ends a statement at a newline.
        return Err(Error::Config(
            "the password must not contain a newline".to_owned(),
        ));
    }
    let cwd = data_dir.parent().unwrap_or(data_dir);
    let mut child = bins
        .command("postgres", account, cwd)
        .arg("--single")
        .arg("-D")
        .arg(data_dir)
        .arg("postgres")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(format!("run {}/postgres --single", bins.dir.display()), e))?;
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(sql.as_bytes()));
    let output = child
        .wait_with_output()
        .map_err(|e| Error::io("wait for postgres --single", e))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Single-user mode exits 0 even when the statement failed; the error is only printed.
    if output.status.success() && !stderr.contains("ERROR") && matches!(written, Some(Ok(()))) {
        return Ok(());
    }
    Err(Error::Command {
        what: "postgres --single (set the superuser password)".to_owned(),
        status: output.status.to_string(),
        output: format!("{}{stderr}", String::from_utf8_lossy(&output.stdout)),
    })
}

/// Run `future` to completion on a private runtime in a helper thread, so synchronous callers
/// work both outside and inside a tokio runtime (where `block_on` would panic).
pub(crate) fn block_on<F>(future: F) -> Result<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::io("build a tokio runtime for cluster SQL", e))?;
                Ok(runtime.block_on(future))
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// `sql` (one or more statements) through the simple query protocol; rows of every statement.
pub(crate) async fn query_async(endpoint: &Endpoint, dbname: &str, sql: &str) -> Result<Rows> {
    let conninfo = endpoint.conninfo(dbname);
    let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .map_err(|e| Error::sql(format!("connect to {conninfo}"), e))?;
    let driver = tokio::spawn(connection);
    let messages = client.simple_query(sql).await;
    drop(client);
    let _ = driver.await;
    let messages = messages.map_err(|e| Error::sql(format!("run `{sql}` in {dbname}"), e))?;
    Ok(messages
        .into_iter()
        .filter_map(|message| match message {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

pub(crate) fn query(endpoint: &Endpoint, dbname: &str, sql: &str) -> Result<Rows> {
    block_on(query_async(endpoint, dbname, sql))?
}

impl Cluster {
    /// Run `sql` in database `dbname` as the superuser, from synchronous or async code (it uses
    /// its own connection on a helper thread). Returns the rows of every statement, as text.
    pub fn exec_sql(&self, dbname: &str, sql: &str) -> Result<Rows> {
        query(&self.endpoint, dbname, sql)
    }

    /// A new, empty database named after the calling test (`t_<test name>_<n>`): libtest names
    /// each test's thread after the test.
    pub fn fresh_database(&self) -> Result<Database> {
        self.fresh_database_named(std::thread::current().name().unwrap_or("db"))
    }

    /// A new, empty database named `t_<hint>_<n>` (the hint made identifier-safe), for callers
    /// on a thread that is not the test's own, e.g. a `spawn_blocking` task.
    pub fn fresh_database_named(&self, hint: &str) -> Result<Database> {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        let name = conf::database_name(Some(hint), n);
        self.exec_sql(
            "postgres",
            &format!("CREATE DATABASE {}", conf::quote_ident(&name)),
        )?;
        Ok(self.database(&name))
    }

    /// Whether the postmaster is running.
    pub fn is_running(&self) -> bool {
        self.postmaster_pid().is_some()
    }

    /// The postmaster's pid while it runs.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let child = state.postmaster.as_mut()?;
        matches!(child.try_wait(), Ok(None)).then(|| child.id() as i32)
    }

    /// Start a stopped server on the same port and socket. A no-op when it is running.
    pub fn start(&self) -> Result<()> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.removed {
            return Err(Error::Config(format!(
                "cluster {} was already removed",
                self.name()
            )));
        }
        if let Some(child) = state.postmaster.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                return Ok(());
            }
        }
        let child = spawn_postmaster(
            &self.bins,
            self.account.as_ref(),
            &self.data_dir,
            &self.log_file,
        )
        .map_err(|reason| Error::Startup {
            reason,
            log: self.log_file.clone(),
            tail: dirs::log_tail(&self.log_file, 40),
        })?;
        state.postmaster = Some(child);
        Ok(())
    }

    /// A clean shutdown (as `pg_ctl stop -m fast`): sessions are disconnected, the server
    /// checkpoints and exits. For connection-loss tests; on the shared cluster it would hit
    /// every other test.
    pub fn stop(&self) {
        self.stop_mode(StopMode::Fast);
    }

    /// An immediate shutdown (as `pg_ctl stop -m immediate`), like a crash: no checkpoint,
    /// crash recovery on the next start.
    pub fn crash(&self) {
        self.stop_mode(StopMode::Immediate);
    }

    /// `stop()` then `start()`: settings that need a restart (e.g. `ALTER SYSTEM SET
    /// max_wal_senders`) take effect.
    pub fn restart(&self) -> Result<()> {
        self.stop();
        self.start()
    }

    fn stop_mode(&self, mode: StopMode) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(mut child) = state.postmaster.take() {
            stop_child(&mut child, mode);
        }
    }

    /// Stop the server and remove the directory; idempotent. Called by `Drop` and, for the
    /// shared cluster, at process exit.
    pub(crate) fn teardown(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.removed {
            return;
        }
        state.removed = true;
        if let Some(mut child) = state.postmaster.take() {
            stop_child(&mut child, StopMode::Immediate);
        }
        // A postmaster that is not our child (none should be) is found through its pid file.
        dirs::stop_postmaster(&self.data_dir);
        if std::thread::panicking() {
            if let Some(kept) = dirs::keep_log(&self.logs_dir, &self.log_file, self.name()) {
                eprintln!(
                    "walshift::cluster: log of {} kept at {}",
                    self.name(),
                    kept.display()
                );
            }
        }
        let _ = fs::remove_dir_all(&self.dir.path);
        if let Some((primary, slot)) = &self.standby_of {
            super::standby::drop_slot(primary, slot);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_file_is_ready_only_for_its_pid_and_ready_states() {
        let file = |status: &str| {
            format!("4242\n/data\n1700000000\n5432\n/sock\n127.0.0.1\n  1234  5678\n{status}\n")
        };
        assert!(pid_file_ready(&file("ready   "), 4242));
        assert!(pid_file_ready(&file("standby "), 4242));
        assert!(!pid_file_ready(&file("starting"), 4242));
        assert!(!pid_file_ready(&file("stopping"), 4242));
        assert!(
            !pid_file_ready(&file("ready   "), 4243),
            "a stale file of another postmaster"
        );
        assert!(!pid_file_ready("4242\n/data\n", 4242), "not yet complete");
    }
}
