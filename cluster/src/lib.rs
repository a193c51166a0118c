//! A real PostgreSQL server, started for a test, a benchmark or `walshift demo`, and thrown away.
//!
//! ```text
//!  Cluster::builder() ─▶ binaries (PG_BIN | /usr/lib/postgresql/<newest>/bin | pg_config)
//!        │                  │
//!        │                  ▼ once per (binaries, user), under flock
//!        │              templates/<key>/  ◀── initdb
//!        ▼                  │ copy (~tens of ms)
//!  sweep dead owners    clusters/c<pid>-<n>/{owner, data/, sock/, postgres.log}
//!                           │ walshift.conf + pg_hba.conf, then postgres -D data
//!                           ▼
//!                      Cluster ── fresh_database() ─▶ Database ── connect() ─▶ Client
//!                           │
//!                           └─ Drop / atexit: immediate shutdown (SIGQUIT), remove the directory
//! ```
//!
//! Running as root (CI), server programs run as the `postgres` user, or `WALSHIFT_TEST_PG_USER`
//! ([`account::PG_USER_ENV`]). `PG_BIN` selects the binaries (e.g. from `scripts/fetch-pg 17`),
//! and `WALSHIFT_PG_MAJOR` ([`PG_MAJOR_ENV`]) makes sure they are the major a run is meant for.
//! Clusters live under `/dev/shm/walshift-pg-<uid>/` when /dev/shm is a roomy tmpfs (else the
//! temp dir; `WALSHIFT_CLUSTER_DIR` overrides, see [`CLUSTER_DIR_ENV`]).
//!
//! Use [`Cluster::shared`] and [`Cluster::fresh_database`] for tests that only need a database;
//! use a dedicated [`Cluster::builder`] cluster for anything that stops, restarts or reconfigures
//! the server, or needs its own `pg_hba.conf` lines.

pub mod account;
mod bins;
mod builder;
mod conf;
mod dirs;
mod port;
mod server;
mod shared;
mod standby;
mod template;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

pub use bins::PG_MAJOR_ENV;
pub use builder::ClusterBuilder;
pub use dirs::{CLUSTER_DIR_ENV, process_alive};

/// The superuser every cluster is initialised with, whatever OS user runs it.
pub const SUPERUSER: &str = "postgres";

/// Rows of a simple query, every value as Postgres's text output (`None` for NULL).
pub type Rows = Vec<Vec<Option<String>>>;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a cluster could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable server binaries; the message says what to install or which variable to fix.
    #[error("{0}")]
    Binaries(String),
    /// The builder's options or this machine's users do not allow a cluster.
    #[error("invalid cluster setup: {0}")]
    Config(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// A server program (initdb, postgres --single) failed.
    #[error("{what} failed ({status}):\n{output}")]
    Command {
        what: String,
        status: String,
        output: String,
    },
    /// The server did not come up; `tail` is the end of its log, which is kept at `log`.
    #[error("PostgreSQL did not start: {reason}\n--- last lines of {} ---\n{tail}", log.display())]
    Startup {
        reason: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{context}: {}", describe_sql(source))]
    Sql {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// [`Cluster::shared`] failed earlier in this process; this is its message.
    #[error("the shared cluster failed to start: {0}")]
    Shared(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn sql(context: impl Into<String>, source: tokio_postgres::Error) -> Self {
        Error::Sql {
            context: context.into(),
            source,
        }
    }
}

/// tokio-postgres displays a server error as just "db error"; the message, SQLSTATE and
/// detail are what a failing test needs to show.
fn describe_sql(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut out = format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
        if let Some(detail) = db.detail() {
            out.push_str("; DETAIL: ");
            out.push_str(detail);
        }
        return out;
    }
    match std::error::Error::source(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
}

/// How to reach a server: its socket directory and port, always; 127.0.0.1 when TCP is on.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    pub(crate) socket_dir: PathBuf,
    pub(crate) port: u16,
    pub(crate) tcp: bool,
    pub(crate) user: String,
    pub(crate) password: Option<String>,
}

impl Endpoint {
    fn conninfo_for_host(&self, host: &str, dbname: &str) -> String {
        let mut out = format!(
            "host={} port={} user={} dbname={}",
            conf::quote_conninfo_value(host),
            self.port,
            conf::quote_conninfo_value(&self.user),
            conf::quote_conninfo_value(dbname)
        );
        if let Some(password) = &self.password {
            out.push_str(" password=");
            out.push_str(&conf::quote_conninfo_value(password));
        }
        out
    }

    pub(crate) fn conninfo(&self, dbname: &str) -> String {
        self.conninfo_for_host(&self.socket_dir.to_string_lossy(), dbname)
    }

    pub(crate) fn tcp_conninfo(&self, dbname: &str) -> Option<String> {
        self.tcp
            .then(|| self.conninfo_for_host("127.0.0.1", dbname))
    }
}

/// One database on a cluster. Cheap to clone; holds no connection.
#[derive(Clone, Debug)]
pub struct Database {
    name: String,
    endpoint: Endpoint,
}

impl Database {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A libpq `key=value` string over the unix socket:
    /// `host=<socket dir> port=<port> user=postgres dbname=<name>` (and `password=` if set).
    pub fn conninfo(&self) -> String {
        self.endpoint.conninfo(&self.name)
    }

    /// The same over TCP to 127.0.0.1, when the cluster was built with `listen_tcp(true)`.
    pub fn tcp_conninfo(&self) -> Option<String> {
        self.endpoint.tcp_conninfo(&self.name)
    }

    /// A connected client over the unix socket (no TLS), for tests: panics with the conninfo
    /// and the server's reason when the connection fails. [`try_connect`](Self::try_connect)
    /// returns the error instead.
    pub async fn connect(&self) -> tokio_postgres::Client {
        match self.try_connect().await {
            Ok(client) => client,
            Err(e) => panic!("{e}"),
        }
    }

    /// A connected client over the unix socket (no TLS). The connection task is spawned on the
    /// current tokio runtime and ends when the client is dropped.
    pub async fn try_connect(&self) -> Result<tokio_postgres::Client> {
        let (client, connection) = tokio_postgres::connect(&self.conninfo(), tokio_postgres::NoTls)
            .await
            .map_err(|e| Error::sql(format!("connect to {}", self.conninfo()), e))?;
        tokio::spawn(async move {
            // A broken connection shows up as an error on the client's next call; nothing to add.
            let _ = connection.await;
        });
        Ok(client)
    }
}

/// A running (or deliberately stopped) throwaway PostgreSQL server.
///
/// Dropping it stops the server (immediate shutdown, as `pg_ctl stop -m immediate`) and removes
/// its directory, also while a test unwinds from a panic (the log is then kept under the base
/// directory's `logs/`).
pub struct Cluster {
    dir: dirs::ClusterDir,
    data_dir: PathBuf,
    log_file: PathBuf,
    logs_dir: PathBuf,
    endpoint: Endpoint,
    bins: bins::Bins,
    account: Option<account::Account>,
    /// What it was built with, so a standby can inherit the settings it must match.
    options: ClusterBuilder,
    version_num: u32,
    startup_time: Duration,
    next_db: AtomicU32,
    /// The postmaster (our child) and whether the directory is gone; the lock serialises
    /// start, stop and teardown.
    state: Mutex<server::State>,
    /// For a standby: the primary's endpoint and the physical slot to drop when it goes.
    standby_of: Option<(Endpoint, String)>,
}

impl Cluster {
    /// Options for a dedicated cluster; `.start()` starts it.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// The directory holding initdb and postgres (and, in every packaging, pg_ctl).
    pub fn bin_dir(&self) -> &Path {
        &self.bins.dir
    }

    /// `server_version_num`, e.g. 160004.
    pub fn version_num(&self) -> u32 {
        self.version_num
    }

    /// The data directory (PGDATA).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The directory holding the unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        &self.endpoint.socket_dir
    }

    pub fn port(&self) -> u16 {
        self.endpoint.port
    }

    /// The superuser name (always [`SUPERUSER`]).
    pub fn superuser(&self) -> &str {
        &self.endpoint.user
    }

    /// The server log (stderr of the postmaster).
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// `cluster_name`, also the name of its directory; shows in `ps` and in
    /// `pg_stat_replication.application_name` for a standby.
    pub fn name(&self) -> &str {
        &self.dir.name
    }

    /// How long `start()` took, from finding binaries to accepting connections.
    pub fn startup_time(&self) -> Duration {
        self.startup_time
    }

    /// Whether `listen_tcp(true)` was set.
    pub fn listens_on_tcp(&self) -> bool {
        self.endpoint.tcp
    }

    /// An existing database on this cluster (e.g. "postgres").
    pub fn database(&self, name: &str) -> Database {
        Database {
            name: name.to_owned(),
            endpoint: self.endpoint.clone(),
        }
    }
}
