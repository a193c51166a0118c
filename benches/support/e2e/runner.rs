//! `walshift run` as a long-lived child of the benchmark: started, watched, asked for its peak
//! memory, stopped with SIGTERM. Its stderr (JSON log lines) goes to a file in the scratch
//! directory, whose tail a failure shows.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::support::backfill::process::{
    BackfillDone, cpu_seconds, peak_rss_mb, session_pids, spawn_run, spawn_run_of, stop, tail,
};

use super::{confirmed_at_least, sync_point};

/// How often waits poll the server.
const POLL: Duration = Duration::from_millis(20);

/// CPU seconds of the processes a run keeps busy: the walshift process, its apply session's
/// backend and the walsender decoding its slot.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    pub walshift: f64,
    pub apply: f64,
    pub walsender: f64,
}

impl Cpu {
    pub fn total(&self) -> f64 {
        self.walshift + self.apply + self.walsender
    }

    /// CPU spent between `earlier` and `self`.
    pub fn since(&self, earlier: &Cpu) -> Cpu {
        Cpu {
            walshift: self.walshift - earlier.walshift,
            apply: self.apply - earlier.apply,
            walsender: self.walsender - earlier.walsender,
        }
    }

    /// `walshift 1.2 + apply 3.4 + walsender 5.6 = 10.2 s`
    pub fn line(&self) -> String {
        format!(
            "walshift {:.1} + apply {:.1} + walsender {:.1} = {:.1} s",
            self.walshift,
            self.apply,
            self.walsender,
            self.total()
        )
    }
}

pub struct Walshift {
    child: Option<Child>,
    log: PathBuf,
    pub spec_name: String,
    /// The slot (and publication, origin) name: `walshift_<name>`.
    pub object: String,
    /// Highest VmHWM read so far, MB (the process may be gone when asked last).
    peak_mb: f64,
}

impl Walshift {
    /// `walshift --log-format json run <spec> --db <conninfo> [--listen off]`.
    pub fn spawn(conninfo: &str, spec: &Path, spec_name: &str, log: &Path) -> Walshift {
        let file = File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        Walshift::of(spawn_run(conninfo, spec, file), spec_name, log)
    }

    /// [`Walshift::spawn`] of `binary`, serving its metrics on `listen` (see
    /// [`Walshift::metric`]).
    pub fn spawn_listening(
        binary: &Path,
        conninfo: &str,
        spec: &Path,
        spec_name: &str,
        log: &Path,
        listen: &str,
    ) -> Walshift {
        let file = File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let child = spawn_run_of(binary, conninfo, spec, file, &["--listen", listen]);
        Walshift::of(child, spec_name, log)
    }

    fn of(child: Child, spec_name: &str, log: &Path) -> Walshift {
        Walshift {
            child: Some(child),
            log: log.to_owned(),
            spec_name: spec_name.to_owned(),
            object: walshift::spec::object_name(spec_name),
            peak_mb: f64::NAN,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Peak resident memory so far (VmHWM), MB.
    pub fn peak_rss_mb(&mut self) -> f64 {
        let now = peak_rss_mb(self.pid());
        if !now.is_nan() {
            self.peak_mb = if self.peak_mb.is_nan() {
                now
            } else {
                self.peak_mb.max(now)
            };
        }
        self.peak_mb
    }

    /// CPU used so far by the process and its two sessions (NaN for a session not connected).
    pub async fn cpu(&self, admin: &Client) -> Cpu {
        let (apply, walsender) = match session_pids(admin).await {
            Some((apply, sender)) => (cpu_seconds(apply), cpu_seconds(sender)),
            None => (f64::NAN, f64::NAN),
        };
        Cpu {
            walshift: cpu_seconds(self.pid()),
            apply,
            walsender,
        }
    }

    /// Panics with the log's tail if the process has exited.
    pub fn ensure_running(&mut self) {
        let child = self.child.as_mut().expect("walshift was stopped");
        if let Some(status) = child.try_wait().expect("try_wait on walshift") {
            panic!(
                "walshift exited unexpectedly ({status}); the end of {}:\n{}",
                self.log.display(),
                tail(&self.log)
            );
        }
    }

    /// SIGTERM (SIGKILL after 30 s); returns the peak memory, read just before.
    pub fn stop(mut self) -> f64 {
        let peak = self.peak_rss_mb();
        if let Some(mut child) = self.child.take() {
            stop(&mut child);
        }
        peak
    }

    /// Polls until `walshift.backfill` says every mirror is done.
    pub async fn wait_backfill_done(&mut self, admin: &Client, within: Duration) {
        let started = Instant::now();
        let mut done = BackfillDone::new(&self.spec_name);
        loop {
            self.ensure_running();
            self.peak_rss_mb();
            if done.poll(admin).await {
                return;
            }
            self.give_up_after(started, within, "the backfill to finish");
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls until the slot has confirmed `lsn`; returns how long that took.
    pub async fn wait_confirmed(&mut self, admin: &Client, lsn: &str, within: Duration) -> f64 {
        let started = Instant::now();
        loop {
            self.ensure_running();
            self.peak_rss_mb();
            if confirmed_at_least(admin, &self.object, lsn).await {
                return started.elapsed().as_secs_f64();
            }
            self.give_up_after(started, within, &format!("the slot to confirm {lsn}"));
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until every change written so far is applied; returns how long that took.
    pub async fn wait_caught_up(&mut self, admin: &Client, within: Duration) -> f64 {
        let lsn = sync_point(admin).await;
        self.wait_confirmed(admin, &lsn, within).await
    }

    fn give_up_after(&mut self, started: Instant, within: Duration, what: &str) {
        if started.elapsed() > within {
            let log = self.log.clone();
            if let Some(mut child) = self.child.take() {
                stop(&mut child);
            }
            panic!(
                "walshift: gave up after {within:?} waiting for {what}; the end of {}:\n{}",
                log.display(),
                tail(&log)
            );
        }
    }
}

impl Drop for Walshift {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child);
        }
    }
}

/// An unlabelled sample of walshift's Prometheus metrics at `addr` (`walshift_..._total`), NaN
/// when the endpoint or the line is missing.
pub fn metric(addr: &str, name: &str) -> f64 {
    use std::io::{Read, Write};
    let Ok(mut conn) = std::net::TcpStream::connect(addr) else {
        return f64::NAN;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    if conn
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .is_err()
    {
        return f64::NAN;
    }
    let mut body = String::new();
    if conn.read_to_string(&mut body).is_err() {
        return f64::NAN;
    }
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// A loopback address with a port free at the time of asking, for `--listen`.
pub fn free_listen_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("local address").to_string()
}
