//! Connection settings, in libpq's own forms.
//!
//! Operators already have a connection string for their database, so walshift
//! takes it as libpq does: `key=value` pairs or a `postgres://` URL, with the
//! usual `PG*` environment variables filling what the string leaves out.
//! Parsing of everything but TLS is delegated to [`tokio_postgres::Config`];
//! it does not know `sslmode=verify-ca`/`verify-full` or `sslrootcert`, so
//! those are taken out of the string first and handled here (see [`crate::tls`]).
//!
//! The network keys (`target_session_attrs`, `keepalives*`,
//! `tcp_user_timeout`) are taken out too and read by [`crate::net`], which
//! tokio-postgres cannot do for all of them: it knows no
//! `target_session_attrs=primary` and cannot tell an unset keepalive value
//! from its own default.
//!
//! The same [`ConnConfig`] opens both kinds of connection walshift needs: the
//! replication connection (our own client, [`crate::replication`]) and
//! ordinary SQL sessions ([`ConnConfig::connect_sql`]); both walk the host
//! list by libpq's rules and open their sockets in [`crate::net`].

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::Host;

use crate::net::params::{self, NetParams, ParamError};
use crate::net::socket::OpenError;
use crate::net::{NoHostFits, Target};
use crate::tls::{SslMode, TlsError, TlsSettings};

/// Connection-string keys walshift handles itself rather than passing on.
const TLS_KEYS: &[&str] = &["sslmode", "sslrootcert", "sslcert", "sslkey"];

fn is_own_key(k: &str) -> bool {
    TLS_KEYS.contains(&k) || params::KEYS.contains(&k)
}

/// The connection string could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnConfigError {
    #[error(
        "invalid connection string: {0} (expected libpq form, e.g. \"host=db user=app dbname=app\" or postgres://user@db/app)"
    )]
    Syntax(String),
    #[error("invalid sslmode {0:?}: use disable, allow, prefer, require, verify-ca or verify-full")]
    SslMode(String),
    #[error(transparent)]
    Net(#[from] ParamError),
    #[error(
        "channel_binding=require is not supported: walshift does its own TLS and does not offer SCRAM-SHA-256-PLUS; use sslmode=verify-full to authenticate the server"
    )]
    ChannelBinding,
    #[error(
        "load_balance_hosts=random is not supported: walshift tries the hosts in the order given (use target_session_attrs to pick the primary)"
    )]
    LoadBalance,
    #[error("invalid {var}={value:?}: {why}")]
    Env {
        var: &'static str,
        value: String,
        why: String,
    },
}

/// Where and how to connect: host(s), credentials, database, TLS.
#[derive(Clone)]
pub struct ConnConfig {
    pg: tokio_postgres::Config,
    tls: TlsSettings,
    net: NetParams,
    /// Set for a session that must reach one host of the list only (the
    /// watchdog's probe): tokio-postgres's host list cannot be shortened.
    pinned: Option<Target>,
}

impl fmt::Debug for ConnConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the password: this ends up in logs and error reports.
        f.write_str(&self.redacted())
    }
}

impl ConnConfig {
    /// Parses a libpq connection string or URL, then fills unset values from
    /// the `PG*` environment variables and libpq's defaults.
    pub fn parse(s: &str) -> Result<Self, ConnConfigError> {
        Self::parse_with_env(s, |k| std::env::var(k).ok())
    }

    /// [`ConnConfig::parse`] with an explicit environment, for tests.
    pub fn parse_with_env(
        s: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConnConfigError> {
        let (rest, own) = split_own_params(s)?;
        let mut pg = if rest.trim().is_empty() {
            tokio_postgres::Config::new()
        } else {
            tokio_postgres::Config::from_str(&rest).map_err(|e| {
                // tokio-postgres says only "invalid connection string"; the
                // reason (an option's name, never its value) is its source.
                ConnConfigError::Syntax(match std::error::Error::source(&e) {
                    Some(reason) => reason.to_string(),
                    None => e.to_string(),
                })
            })?
        };
        let lookup = |key: &str| {
            own.iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };

        env_defaults(&mut pg, &env)?;
        let tls = tls_settings(&lookup, &env)?;
        // tokio-postgres only knows disable/prefer/require; our TLS connector
        // does the verification that verify-ca/verify-full ask for.
        pg.ssl_mode(match tls.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Allow | SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        if pg.get_channel_binding() == tokio_postgres::config::ChannelBinding::Require {
            return Err(ConnConfigError::ChannelBinding);
        }
        if pg.get_load_balance_hosts() == tokio_postgres::config::LoadBalanceHosts::Random {
            return Err(ConnConfigError::LoadBalance);
        }
        let net = NetParams::from_values(lookup, &env, pg.get_connect_timeout().copied())?;
        Ok(ConnConfig {
            pg,
            tls,
            net,
            pinned: None,
        })
    }

    /// Host list rules and bounds on silence.
    pub fn net(&self) -> &NetParams {
        &self.net
    }

    /// A copy that connects to `target` alone, whatever its role
    /// (`target_session_attrs=any`): the watchdog's probe asks that very
    /// server about a session there.
    pub fn pinned(&self, target: &Target) -> Self {
        let mut c = self.clone();
        c.pinned = Some(target.clone());
        c.net.target = crate::net::TargetSessionAttrs::Any;
        c
    }

    /// The settings as tokio-postgres sees them.
    pub fn pg(&self) -> &tokio_postgres::Config {
        &self.pg
    }

    pub fn tls(&self) -> &TlsSettings {
        &self.tls
    }

    pub fn user(&self) -> &str {
        self.pg.get_user().unwrap_or("postgres")
    }

    pub fn dbname(&self) -> &str {
        self.pg.get_dbname().unwrap_or("postgres")
    }

    pub fn password(&self) -> Option<&[u8]> {
        self.pg.get_password()
    }

    pub fn application_name(&self) -> &str {
        self.pg.get_application_name().unwrap_or("walshift")
    }

    /// (host, port) pairs to try in order, as libpq pairs them: one port for
    /// all hosts, or one port per host; 5432 when none is given.
    pub fn targets(&self) -> Vec<Target> {
        if let Some(t) = &self.pinned {
            return vec![t.clone()];
        }
        let ports = self.pg.get_ports();
        let hosts = self.pg.get_hosts();
        // libpq: `hostaddr` is where to connect, `host` the name TLS checks;
        // either may stand alone.
        let addrs = self.pg.get_hostaddrs();
        (0..hosts.len().max(addrs.len()))
            .map(|i| {
                let port = match ports.len() {
                    0 => 5432,
                    1 => ports[0],
                    _ => ports.get(i).copied().unwrap_or(5432),
                };
                let addr = addrs.get(i).copied();
                let host = match (hosts.get(i), addr) {
                    (Some(h), _) => h.clone(),
                    (None, Some(a)) => Host::Tcp(a.to_string()),
                    (None, None) => unreachable!("i is below one of the lengths"),
                };
                Target { host, port, addr }
            })
            .collect()
    }

    /// One copy per host of a multi-host string, each pinned to that host
    /// alone and accepting any server there (to ask every server of a
    /// cluster, e.g. which is a standby).
    pub fn each_target(&self) -> Vec<ConnConfig> {
        self.targets().iter().map(|t| self.pinned(t)).collect()
    }

    /// A copy with another database name (state lives in the same database,
    /// but tests and the demo switch databases).
    pub fn with_dbname(&self, dbname: &str) -> Self {
        let mut c = self.clone();
        c.pg.dbname(dbname);
        c
    }

    /// A copy with another application name, so each of walshift's sessions
    /// is recognisable in `pg_stat_activity`.
    pub fn with_application_name(&self, name: &str) -> Self {
        let mut c = self.clone();
        c.pg.application_name(name);
        c
    }

    /// Describes the target without secrets: safe for logs and errors.
    pub fn redacted(&self) -> String {
        let hosts: Vec<String> = self.targets().iter().map(Target::to_string).collect();
        format!(
            "user={} dbname={} host={} sslmode={}",
            self.user(),
            self.dbname(),
            hosts.join(","),
            self.tls.mode
        )
    }

    /// Opens an ordinary SQL session with the configured TLS mode, and spawns
    /// the task that drives it. Errors from that task after connecting are
    /// logged at debug level; the client then reports itself closed.
    pub async fn connect_sql(&self) -> Result<tokio_postgres::Client, SqlConnectError> {
        self.connect_with(None).await
    }

    /// [`ConnConfig::connect_sql`], and the host of the list it reached.
    pub async fn connect_sql_to(
        &self,
    ) -> Result<(tokio_postgres::Client, Target), SqlConnectError> {
        crate::net::sql::connect(self, None).await
    }

    /// Like [`ConnConfig::connect_sql`], and the payloads of notifications
    /// the session receives (after it LISTENs) arrive on the receiver.
    pub async fn connect_sql_listening(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio::sync::mpsc::UnboundedReceiver<String>,
        ),
        SqlConnectError,
    > {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Ok((self.connect_with(Some(tx)).await?, rx))
    }

    async fn connect_with(
        &self,
        notes: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    ) -> Result<tokio_postgres::Client, SqlConnectError> {
        crate::net::sql::connect(self, notes).await.map(|(c, _)| c)
    }
}

/// Environment defaults, as libpq applies them: only where the connection
/// string left a parameter unset.
fn env_defaults(
    pg: &mut tokio_postgres::Config,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConnConfigError> {
    if pg.get_hosts().is_empty() && pg.get_hostaddrs().is_empty() {
        match env("PGHOST") {
            Some(h) if !h.is_empty() => {
                for h in h.split(',') {
                    pg.host(h);
                }
            }
            _ => {
                pg.host_path(default_socket_dir());
            }
        }
    }
    if pg.get_ports().is_empty() {
        if let Some(p) = env("PGPORT").filter(|p| !p.is_empty()) {
            for p in p.split(',') {
                let port = p.trim().parse().map_err(|_| ConnConfigError::Env {
                    var: "PGPORT",
                    value: p.to_string(),
                    why: "not a port number".into(),
                })?;
                pg.port(port);
            }
        }
    }
    if pg.get_user().is_none() {
        let user = env("PGUSER")
            .filter(|u| !u.is_empty())
            .or_else(os_user_name)
            .unwrap_or_else(|| "postgres".into());
        pg.user(user);
    }
    if pg.get_dbname().is_none() {
        let db = env("PGDATABASE")
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| pg.get_user().unwrap_or("postgres").to_string());
        pg.dbname(db);
    }
    if pg.get_password().is_none() {
        if let Some(pw) = env("PGPASSWORD") {
            pg.password(pw);
        }
    }
    if pg.get_application_name().is_none() {
        pg.application_name(env("PGAPPNAME").unwrap_or_else(|| "walshift".into()));
    }
    if pg.get_connect_timeout().is_none() {
        if let Some(t) = env("PGCONNECT_TIMEOUT").filter(|t| !t.is_empty()) {
            let secs: u64 = t.trim().parse().map_err(|_| ConnConfigError::Env {
                var: "PGCONNECT_TIMEOUT",
                value: t.clone(),
                why: "not a whole number of seconds".into(),
            })?;
            if secs > 0 {
                pg.connect_timeout(Duration::from_secs(secs.max(2)));
            }
        }
    }
    Ok(())
}

/// The TLS parameters: the connection string's, else the environment's.
fn tls_settings(
    lookup: &impl Fn(&str) -> Option<String>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<TlsSettings, ConnConfigError> {
    let mode_text = lookup("sslmode").or_else(|| env("PGSSLMODE").filter(|m| !m.is_empty()));
    let mode = match mode_text {
        Some(m) => m
            .parse::<SslMode>()
            .map_err(|_| ConnConfigError::SslMode(m))?,
        None => SslMode::Prefer,
    };
    let path = |key: &str, var: &str| {
        lookup(key)
            .or_else(|| env(var).filter(|v| !v.is_empty()))
            .map(PathBuf::from)
    };
    Ok(TlsSettings {
        mode,
        root_cert: path("sslrootcert", "PGSSLROOTCERT"),
        client_cert: path("sslcert", "PGSSLCERT"),
        client_key: path("sslkey", "PGSSLKEY"),
    })
}

/// An ordinary SQL session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SqlConnectError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot connect to {target}: {source}")]
    Open {
        target: String,
        #[source]
        source: OpenError,
    },
    /// Several hosts, none of them fit: each named with its reason.
    #[error(transparent)]
    NoHost(NoHostFits),
    /// The whole reason in one line: tokio-postgres alone says only "db
    /// error" or "error connecting to server". Not a `source`, so callers
    /// that walk the chain do not repeat it.
    #[error("{}", describe_connect_error(.0))]
    Postgres(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for SqlConnectError {
    fn from(e: tokio_postgres::Error) -> Self {
        SqlConnectError::Postgres(e)
    }
}

/// The server's message (e.g. "password authentication failed for user
/// ...", with its SQLSTATE), or the error and its causes ("error connecting
/// to server: Connection refused").
fn describe_connect_error(e: &tokio_postgres::Error) -> String {
    if e.as_db_error().is_some() {
        return crate::error_policy::pg_message(e);
    }
    crate::error_policy::with_causes(e)
}

impl FromStr for ConnConfig {
    type Err = ConnConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ConnConfig::parse(s)
    }
}

/// libpq's default socket directory. Debian patches it to
/// `/var/run/postgresql`; upstream builds use `/tmp`.
fn default_socket_dir() -> &'static str {
    if std::path::Path::new("/var/run/postgresql").is_dir() {
        "/var/run/postgresql"
    } else {
        "/tmp"
    }
}

fn os_user_name() -> Option<String> {
    if let Ok(u) = std::env::var("USER") {
        if !u.is_empty() {
            return Some(u);
        }
    }
    // SAFETY: getpwuid returns a pointer into static storage or null; we copy
    // the name out before any other call could overwrite it.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() || (*pw).pw_name.is_null() {
            return None;
        }
        Some(
            std::ffi::CStr::from_ptr((*pw).pw_name)
                .to_string_lossy()
                .into_owned(),
        )
    }
}

/// Splits the keys walshift handles itself out of a connection string,
/// returning the rest (same form: URL or key=value) and the taken pairs.
fn split_own_params(s: &str) -> Result<(String, Vec<(String, String)>), ConnConfigError> {
    let trimmed = s.trim();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        let Some((base, query)) = trimmed.split_once('?') else {
            return Ok((trimmed.to_string(), Vec::new()));
        };
        let mut kept = Vec::new();
        let mut own = Vec::new();
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            if is_own_key(k) {
                own.push((k.to_string(), percent_decode(v)?));
            } else {
                kept.push(part);
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, own));
    }
    let pairs = parse_key_values(trimmed)?;
    let mut rest = String::new();
    let mut own = Vec::new();
    for (k, v) in pairs {
        if is_own_key(&k) {
            own.push((k, v));
        } else {
            if !rest.is_empty() {
                rest.push(' ');
            }
            rest.push_str(&k);
            rest.push_str("='");
            for c in v.chars() {
                if c == '\'' || c == '\\' {
                    rest.push('\\');
                }
                rest.push(c);
            }
            rest.push('\'');
        }
    }
    Ok((rest, own))
}

/// libpq's connection keywords (and tokio-postgres's `keepalives_retries`):
/// words that errors may show, as they cannot be secrets.
const LIBPQ_KEYS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "require_auth",
    "channel_binding",
    "connect_timeout",
    "client_encoding",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "keepalives_retries",
    "tcp_user_timeout",
    "replication",
    "gssencmode",
    "sslmode",
    "sslnegotiation",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcertmode",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "requirepeer",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "service",
    "target_session_attrs",
    "load_balance_hosts",
];

/// Tokenizes libpq's `key = value` form: values are bare words or single
/// quoted, and a backslash escapes the next character in either.
///
/// Errors never show a word that is not a known key: in `password=two words`
/// (quotes forgotten) the stray word is part of a password.
fn parse_key_values(s: &str) -> Result<Vec<(String, String)>, ConnConfigError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let known = LIBPQ_KEYS.contains(&key.as_str());
        let previous = out.last().map(|(k, _)| k.as_str());
        if chars.next() != Some('=') {
            return Err(ConnConfigError::Syntax(match previous {
                _ if known => format!("missing \"=\" after {key:?}"),
                Some(p) => format!(
                    "a word without \"=\" follows the value of {p:?} (not shown: it may be part of a \
                     password); quote values that contain spaces, e.g. {p}='two words'"
                ),
                None => "the first word has no \"=\" (not shown: it may be a password); use \
                         key=value pairs or a URL that starts with postgres:// or postgresql://"
                    .into(),
            }));
        }
        if !known && previous == Some("password") {
            return Err(ConnConfigError::Syntax(
                "an unknown option follows the value of \"password\" (not shown: it may be part \
                 of the password); quote values that contain spaces, e.g. password='two words'"
                    .into(),
            ));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let value = parse_value(&mut chars, &key)?;
        out.push((key, value));
    }
}

/// One value of the `key = value` form: single quoted, or a bare word; a
/// backslash escapes the next character in either.
fn parse_value(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    key: &str,
) -> Result<String, ConnConfigError> {
    let mut value = String::new();
    if chars.next_if_eq(&'\'').is_none() {
        while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
            let c = if c == '\\' { chars.next() } else { Some(c) };
            value.extend(c);
        }
        return Ok(value);
    }
    loop {
        match chars.next() {
            None => {
                return Err(ConnConfigError::Syntax(format!(
                    "unterminated quoted value for {key:?}"
                )));
            }
            Some('\\') => value.extend(chars.next()),
            Some('\'') => return Ok(value),
            Some(c) => value.push(c),
        }
    }
}

fn percent_decode(s: &str) -> Result<String, ConnConfigError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ConnConfigError::Syntax(format!("bad percent-encoding in {s:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ConnConfigError::Syntax(format!("{s:?} is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str, env: &[(&str, &str)]) -> ConnConfig {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ConnConfig::parse_with_env(s, |k| {
            env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.clone())
        })
        .unwrap()
    }

    #[test]
    fn key_value_form_with_quotes_and_tls_keys() {
        let c = parse(
            r"host=db.example port=6543 user=app password='it\'s a \\secret' dbname=shop sslmode=verify-full sslrootcert=/etc/ca.pem",
            &[],
        );
        assert_eq!(c.user(), "app");
        assert_eq!(c.password(), Some(&br"it's a \secret"[..]));
        assert_eq!(c.dbname(), "shop");
        assert_eq!(
            c.targets(),
            vec![Target {
                host: Host::Tcp("db.example".into()),
                port: 6543,
                addr: None,
            }]
        );
        assert_eq!(c.tls().mode, SslMode::VerifyFull);
        assert_eq!(
            c.tls().root_cert.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
    }

    #[test]
    fn url_form_takes_tls_keys_out_of_the_query() {
        let c = parse(
            "postgresql://app:pw@db:5433/shop?sslmode=verify-ca&sslrootcert=%2Ftmp%2Fca.pem&application_name=x",
            &[],
        );
        assert_eq!(c.user(), "app");
        assert_eq!(c.dbname(), "shop");
        assert_eq!(c.application_name(), "x");
        assert_eq!(c.tls().mode, SslMode::VerifyCa);
        assert_eq!(
            c.tls().root_cert.as_deref(),
            Some(std::path::Path::new("/tmp/ca.pem"))
        );
    }

    #[test]
    fn environment_fills_only_what_is_unset() {
        let env = [
            ("PGHOST", "envhost"),
            ("PGPORT", "7777"),
            ("PGUSER", "envuser"),
            ("PGPASSWORD", "envpw"),
            ("PGDATABASE", "envdb"),
            ("PGSSLMODE", "require"),
        ];
        let c = parse("user=given", &env);
        assert_eq!(c.user(), "given");
        assert_eq!(c.dbname(), "envdb");
        assert_eq!(c.password(), Some(&b"envpw"[..]));
        assert_eq!(c.targets()[0].to_string(), "envhost:7777");
        assert_eq!(c.tls().mode, SslMode::Require);
        let c = parse("dbname=given sslmode=disable", &env);
        assert_eq!(c.dbname(), "given");
        assert_eq!(c.tls().mode, SslMode::Disable);
    }

    #[test]
    fn dbname_defaults_to_user_and_host_to_socket_dir() {
        let c = parse("user=alice", &[]);
        assert_eq!(c.dbname(), "alice");
        assert!(matches!(c.targets()[0].host, Host::Unix(_)));
        assert_eq!(c.targets()[0].port, 5432);
    }

    #[test]
    fn bad_input_is_one_clear_error() {
        let e = ConnConfig::parse_with_env("host=x sslmode=sometimes", |_| None).unwrap_err();
        assert!(e.to_string().contains("verify-full"), "{e}");
        let e = ConnConfig::parse_with_env("host", |_| None).unwrap_err();
        assert!(
            e.to_string().starts_with("invalid connection string"),
            "{e}"
        );
        let e = ConnConfig::parse_with_env("password='open", |_| None).unwrap_err();
        assert!(e.to_string().contains("unterminated"), "{e}");
        let e =
            ConnConfig::parse_with_env("", |k| (k == "PGPORT").then(|| "abc".into())).unwrap_err();
        assert!(e.to_string().contains("PGPORT"), "{e}");
    }

    #[test]
    fn syntax_errors_never_show_what_may_be_a_password() {
        for s in [
            // Quotes forgotten around a password with a space.
            "host=db user=app password=Zq8Kx3 Lm7Vt2",
            "host=db password=Zq8Kx3 Lm7Vt2 user=app",
            "host=db password=Zq8Kx3 Lm7Vt2=x",
            // A URL with one slash too few is no URL.
            "postgres:/app:Zq8Kx3Lm7Vt2@db/x",
            "Zq8Kx3Lm7Vt2",
        ] {
            let e = ConnConfig::parse_with_env(s, |_| None)
                .unwrap_err()
                .to_string();
            assert!(!e.contains("Zq8Kx3") && !e.contains("Lm7Vt2"), "{s}: {e}");
            assert!(e.starts_with("invalid connection string: "), "{e}");
        }
        let e = ConnConfig::parse_with_env("host=db password=a b", |_| None).unwrap_err();
        assert!(e.to_string().contains("password='two words'"), "{e}");
        // A known key is named, and tokio-postgres's reason is kept.
        let e = ConnConfig::parse_with_env("host", |_| None).unwrap_err();
        assert!(
            e.to_string().contains("missing \"=\" after \"host\""),
            "{e}"
        );
        let e = ConnConfig::parse_with_env("host=db port=x password=Zq8Kx3", |_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid value for option `port`"), "{e}");
        assert!(!e.contains("Zq8Kx3"), "{e}");
        let e = ConnConfig::parse_with_env("postgres://u:Zq8Kx3@db/x?bogus=1", |_| None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown option `bogus`") && !e.contains("Zq8Kx3"),
            "{e}"
        );
    }

    #[test]
    fn host_lists_in_both_forms_with_the_network_keys() {
        let c = parse(
            "host=a,b port=5433,5434 target_session_attrs=primary keepalives_count=2 dbname=x",
            &[],
        );
        let t: Vec<String> = c.targets().iter().map(Target::to_string).collect();
        assert_eq!(t, ["a:5433", "b:5434"]);
        assert_eq!(c.net().target, crate::net::TargetSessionAttrs::Primary);
        assert_eq!(c.net().keepalives.unwrap().count, 2);
        let c = parse(
            "postgresql://a:5433,b:5434/db?target_session_attrs=read-write&tcp_user_timeout=500&keepalives_idle=3",
            &[],
        );
        let t: Vec<String> = c.targets().iter().map(Target::to_string).collect();
        assert_eq!(t, ["a:5433", "b:5434"]);
        assert_eq!(c.dbname(), "db");
        assert_eq!(c.net().target, crate::net::TargetSessionAttrs::ReadWrite);
        assert_eq!(c.net().tcp_user_timeout, Some(Duration::from_millis(500)));
        assert_eq!(c.net().keepalives.unwrap().idle, Duration::from_secs(3));
        // hostaddr: where to connect; host: the name TLS checks.
        let c = parse(
            "host=db.example,other hostaddr=127.0.0.1,127.0.0.2 port=7",
            &[],
        );
        let t = c.targets();
        assert_eq!(t[1].addr, Some("127.0.0.2".parse().unwrap()));
        assert_eq!(t[1].to_string(), "other:7 (127.0.0.2)");
        let c = parse("hostaddr=127.0.0.1", &[]);
        assert_eq!(c.targets()[0].to_string(), "127.0.0.1:5432");
        // One port for every host.
        let c = parse("host=a,b port=6000", &[]);
        let t: Vec<String> = c.targets().iter().map(Target::to_string).collect();
        assert_eq!(t, ["a:6000", "b:6000"]);
        let e = ConnConfig::parse_with_env("host=a target_session_attrs=leader", |_| None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("invalid target_session_attrs=\"leader\": use any"),
            "{e}"
        );
        let e = ConnConfig::parse_with_env("host=a channel_binding=require", |_| None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("channel_binding=require is not supported"),
            "{e}"
        );
    }

    #[test]
    fn debug_and_redacted_never_show_the_password() {
        let c = parse("host=db user=app password=hunter2", &[]);
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!c.redacted().contains("hunter2"));
        let c = parse("postgres://app:hunter2@db/x", &[]);
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
