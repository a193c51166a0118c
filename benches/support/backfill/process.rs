//! The real `walshift run` as a child process, timed from spawn until
//! `walshift.backfill` says every mirror is done; and CPU time per process
//! from `/proc`, to see where a run's time went.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, SimpleQueryMessage};

/// How often the backfill state is polled.
const POLL: Duration = Duration::from_millis(20);
/// A run that takes longer than this is broken, not slow.
const GIVE_UP: Duration = Duration::from_secs(900);
/// How long SIGTERM may take ("finish the batch in flight") before SIGKILL.
const STOP_WITHIN: Duration = Duration::from_secs(30);

/// The binary: `WALSHIFT_BIN`, else the one cargo built for this bench
/// (`target/release/walshift`, from the same sources).
pub fn binary() -> PathBuf {
    std::env::var_os("WALSHIFT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_walshift")))
}

/// Arguments every `walshift run` of a benchmark gets after the spec: `--listen off` once the
/// binary has the HTTP surface (its default address is fixed, and runs must not collide on it),
/// nothing for a binary without it (`WALSHIFT_BIN` may name an older build).
pub fn run_extra_args() -> &'static [&'static str] {
    static ARGS: std::sync::OnceLock<&'static [&'static str]> = std::sync::OnceLock::new();
    ARGS.get_or_init(|| {
        let help = Command::new(binary())
            .args(["run", "--help"])
            .output()
            .unwrap_or_else(|e| panic!("run {} run --help: {e}", binary().display()));
        if String::from_utf8_lossy(&help.stdout).contains("--listen") {
            &["--listen", "off"]
        } else {
            &[]
        }
    })
}

/// `walshift --log-format json run <spec> --db <conninfo> [--listen off]`, its
/// stderr (JSON log lines) into `log`; RUST_LOG, WALSHIFT_DB and WALSHIFT_LISTEN
/// of the bench's environment do not reach it.
pub fn spawn_run(conninfo: &str, spec: &Path, log: File) -> Child {
    spawn_run_of(&binary(), conninfo, spec, log, run_extra_args())
}

/// [`spawn_run`] of another binary, with `args` after the spec in place of
/// [`run_extra_args`] (`--listen <addr>` to read its metrics).
pub fn spawn_run_of(binary: &Path, conninfo: &str, spec: &Path, log: File, args: &[&str]) -> Child {
    Command::new(binary)
        .args(["--log-format", "json", "run"])
        .arg(spec)
        .args(["--db", conninfo])
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("WALSHIFT_DB")
        .env_remove("WALSHIFT_LISTEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()))
}

/// Whether `walshift.backfill` says every mirror of a spec is done, one poll
/// at a time. Setup creates the state table; asking before that is an error
/// (and a line in the server log every poll), so it looks for the table first.
pub struct BackfillDone {
    sql: String,
    table_ready: bool,
}

impl BackfillDone {
    pub fn new(spec_name: &str) -> BackfillDone {
        BackfillDone {
            sql: format!(
                "SELECT coalesce(bool_and(done), false) FROM walshift.backfill WHERE name = {}",
                walshift::ident::quote_literal(spec_name)
            ),
            table_ready: false,
        }
    }

    /// One poll: true once the backfill is done.
    pub async fn poll(&mut self, admin: &Client) -> bool {
        if !self.table_ready {
            let msgs = admin
                .simple_query("SELECT to_regclass('walshift.backfill') IS NOT NULL")
                .await
                .expect("look for walshift.backfill");
            self.table_ready = first_value(&msgs).as_deref() == Some("t");
        }
        if !self.table_ready {
            return false;
        }
        let msgs = admin
            .simple_query(&self.sql)
            .await
            .expect("poll walshift.backfill");
        first_value(&msgs).as_deref() == Some("t")
    }
}

/// One timed `walshift run`.
#[derive(Debug, Clone, Default)]
pub struct RunSample {
    /// Spawn until the poll saw `bool_and(done)`.
    pub total_s: f64,
    /// Spawn until the backfill rows were created (`started_at`, server clock):
    /// check, publication, origin, slot, sessions.
    pub setup_s: f64,
    /// `finished_at - started_at` of the backfill rows (server clock).
    pub backfill_s: f64,
    pub chunks: i64,
    pub rows_done: i64,
    /// CPU seconds of the processes involved, sampled when done.
    pub cpu_apply_backend_s: f64,
    pub cpu_walsender_s: f64,
    pub cpu_walshift_s: f64,
    /// Peak resident memory of the walshift process (VmHWM), MB.
    pub peak_rss_mb: f64,
    /// Seconds the apply backend was runnable but waited for a core: apart
    /// from its CPU time, the rest of its wall time is waiting for walshift
    /// (round trips) or for locks.
    pub runq_apply_backend_s: f64,
}

impl RunSample {
    /// CPU seconds of every process walshift's backfill kept busy.
    pub fn cpu_total_s(&self) -> f64 {
        self.cpu_apply_backend_s + self.cpu_walsender_s + self.cpu_walshift_s
    }
}

/// Runs `walshift run spec` until its backfill is done, then SIGTERM.
/// `admin` is a session of the bench on the same database (polls, cleanup).
pub async fn run_walshift(
    admin: &Client,
    conninfo: &str,
    spec_path: &Path,
    spec_name: &str,
    log_path: &Path,
) -> RunSample {
    let log = File::create(log_path).expect("create the walshift log file");
    let spawned_at = scalar_f64(
        admin,
        "SELECT extract(epoch FROM clock_timestamp())::float8",
    )
    .await;
    let started = Instant::now();
    let mut child = spawn_run(conninfo, spec_path, log);
    let mut done = BackfillDone::new(spec_name);
    let mut pids: Option<(i32, i32)> = None;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait on walshift") {
            panic!(
                "walshift exited before its backfill was done ({status}); its log:\n{}",
                tail(log_path)
            );
        }
        if started.elapsed() > GIVE_UP {
            stop(&mut child);
            panic!(
                "walshift backfill not done after {GIVE_UP:?}; its log:\n{}",
                tail(log_path)
            );
        }
        if pids.is_none() {
            pids = session_pids(admin).await;
        }
        if done.poll(admin).await {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let total_s = started.elapsed().as_secs_f64();
    let (cpu_apply_backend_s, cpu_walsender_s, runq_apply_backend_s) = match pids {
        Some((apply, sender)) => (
            cpu_seconds(apply),
            cpu_seconds(sender),
            runq_wait_seconds(apply),
        ),
        None => (f64::NAN, f64::NAN, f64::NAN),
    };
    let cpu_walshift_s = cpu_seconds(child.id() as i32);
    let peak_rss_mb = peak_rss_mb(child.id() as i32);
    stop(&mut child);
    let row = admin
        .query_one(
            "SELECT extract(epoch FROM min(started_at))::float8,
                    extract(epoch FROM max(finished_at) - min(started_at))::float8,
                    sum(chunks)::bigint, sum(rows_done)::bigint
             FROM walshift.backfill WHERE name = $1",
            &[&spec_name],
        )
        .await
        .expect("read walshift.backfill");
    let backfill_started: f64 = row.get(0);
    RunSample {
        total_s,
        setup_s: backfill_started - spawned_at,
        backfill_s: row.get(1),
        chunks: row.get(2),
        rows_done: row.get(3),
        cpu_apply_backend_s,
        cpu_walsender_s,
        cpu_walshift_s,
        peak_rss_mb,
        runq_apply_backend_s,
    }
}

/// Drops what `walshift run` created for `spec_name`: slot, publication,
/// origin and the state schema, so the next run starts from nothing.
pub async fn drop_walshift_objects(admin: &Client, spec_name: &str) {
    let object = walshift::spec::object_name(spec_name);
    let lit = walshift::ident::quote_literal(&object);
    wait_slot_released(admin, &object).await;
    let statements = [
        format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = {lit}"
        ),
        format!(
            "DROP PUBLICATION IF EXISTS {}",
            walshift::ident::quote_ident(&object)
        ),
        format!(
            "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname = {lit}"
        ),
        "DROP SCHEMA IF EXISTS walshift CASCADE".to_owned(),
    ];
    for s in statements {
        admin
            .batch_execute(&s)
            .await
            .unwrap_or_else(|e| panic!("cleanup `{s}`: {e:?}"));
    }
}

/// Waits until no walsender holds `slot`: it lets go a moment after its
/// client left, and an active slot cannot be dropped.
pub async fn wait_slot_released(admin: &Client, slot: &str) {
    let started = Instant::now();
    while admin
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = $1 AND active)",
            &[&slot],
        )
        .await
        .expect("slot state")
        .get::<_, bool>(0)
    {
        assert!(
            started.elapsed() < STOP_WITHIN,
            "slot {slot} still active after {STOP_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The apply session's backend and the walsender, once both are connected.
pub async fn session_pids(admin: &Client) -> Option<(i32, i32)> {
    let rows = admin
        .query(
            "SELECT application_name, pid FROM pg_stat_activity
             WHERE application_name IN ('walshift-apply', 'walshift-stream')",
            &[],
        )
        .await
        .ok()?;
    let find = |name: &str| {
        rows.iter()
            .find(|r| r.get::<_, &str>(0) == name)
            .map(|r| r.get::<_, i32>(1))
    };
    Some((find("walshift-apply")?, find("walshift-stream")?))
}

/// The pid of the walsender streaming from `slot` now, if one does.
pub async fn slot_walsender_now(admin: &Client, slot: &str) -> Option<i32> {
    admin
        .query_opt(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active",
            &[&slot],
        )
        .await
        .expect("slot state")
        .and_then(|r| r.get::<_, Option<i32>>(0))
}

/// The pid of the walsender streaming from `slot`, once one does (at most `within`).
pub async fn slot_walsender(admin: &Client, slot: &str, within: Duration) -> i32 {
    let started = Instant::now();
    loop {
        if let Some(pid) = slot_walsender_now(admin, slot).await {
            return pid;
        }
        assert!(
            started.elapsed() < within,
            "no walsender streams from slot {slot} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// utime + stime of a live process, in seconds (NaN when it is gone).
pub fn cpu_seconds(pid: i32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // The command name is in parentheses and may hold spaces: count fields
    // after the last ')'. utime and stime are fields 14 and 15 of the line.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) if hz > 0 => (u + s) as f64 / hz as f64,
        _ => f64::NAN,
    }
}

/// Seconds a live process spent runnable but waiting for a core (the second
/// field of `/proc/<pid>/schedstat`, nanoseconds; NaN when it is gone).
pub fn runq_wait_seconds(pid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(f64::NAN, |ns| ns as f64 / 1e9)
}

/// Peak resident set size of a live process (`VmHWM` in `/proc/<pid>/status`), in MB (NaN when
/// it is gone).
pub fn peak_rss_mb(pid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb / 1024.0)
        })
        .unwrap_or(f64::NAN)
}

/// SIGTERM, then SIGKILL if it has not exited within [`STOP_WITHIN`].
pub fn stop(child: &mut Child) {
    // SAFETY: kill(2) on our own child, not yet reaped (only this function
    // and the poll loop wait on it), so the pid cannot have been reused.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let asked = Instant::now();
    while asked.elapsed() < STOP_WITHIN {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The last 40 lines of a log file.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

pub async fn scalar_f64(client: &Client, sql: &str) -> f64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("`{sql}`: {e:?}"))
        .get(0)
}

pub fn first_value(msgs: &[SimpleQueryMessage]) -> Option<String> {
    msgs.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    })
}
