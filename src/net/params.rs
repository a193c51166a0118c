//! The network part of a connection string: which host may be used
//! (`target_session_attrs`) and how long each socket may stay silent
//! (`connect_timeout`, `keepalives*`, `tcp_user_timeout`), with libpq's
//! names and units and walshift's defaults where libpq has none.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Connection-string keys this module reads (taken out before the rest
/// goes to tokio-postgres, which knows only some of them and cannot tell
/// a value left unset from its own default).
pub const KEYS: &[&str] = &[
    "target_session_attrs",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    // tokio-postgres's name for keepalives_count.
    "keepalives_retries",
    "tcp_user_timeout",
];

/// Per host: the TCP connect, TLS, startup, authentication and the
/// `target_session_attrs` check together. libpq waits forever when
/// `connect_timeout` is unset; a host that accepts and then says nothing
/// (a black hole) would hold walshift forever, and the next host would
/// never be tried.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle time before the first keepalive probe (libpq: the system's, often 2 h).
pub const DEFAULT_KEEPALIVES_IDLE: Duration = Duration::from_secs(10);
/// Between unanswered probes.
pub const DEFAULT_KEEPALIVES_INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered probes before the kernel resets the connection.
pub const DEFAULT_KEEPALIVES_COUNT: u32 = 3;
/// How long sent data may stay unacknowledged before the kernel resets the
/// connection (libpq: the system's, about 15 minutes of retransmissions).
/// The same as the keepalive bound, 10 + 3 x 5 s, so an idle link and a
/// busy one are given up alike. walshift also uses it one level up: a
/// request the server has not answered for this long is looked into
/// (src/net/watch.rs).
pub const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(25);

/// libpq's `target_session_attrs`: which server of a host list will do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TargetSessionAttrs {
    #[default]
    Any,
    /// `SHOW transaction_read_only` is `off`.
    ReadWrite,
    /// `SHOW transaction_read_only` is `on`.
    ReadOnly,
    /// `pg_is_in_recovery()` is false.
    Primary,
    /// `pg_is_in_recovery()` is true.
    Standby,
    /// A standby if any host is one, else any host.
    PreferStandby,
}

impl FromStr for TargetSessionAttrs {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "any" => TargetSessionAttrs::Any,
            "read-write" => TargetSessionAttrs::ReadWrite,
            "read-only" => TargetSessionAttrs::ReadOnly,
            "primary" => TargetSessionAttrs::Primary,
            "standby" => TargetSessionAttrs::Standby,
            "prefer-standby" => TargetSessionAttrs::PreferStandby,
            _ => return Err(()),
        })
    }
}

impl fmt::Display for TargetSessionAttrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::ReadOnly => "read-only",
            TargetSessionAttrs::Primary => "primary",
            TargetSessionAttrs::Standby => "standby",
            TargetSessionAttrs::PreferStandby => "prefer-standby",
        })
    }
}

/// TCP keepalive settings (`keepalives=1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalives {
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
}

impl Keepalives {
    /// How long an idle connection whose peer vanished lives on: the first
    /// probe after `idle`, then `count` probes `interval` apart.
    pub fn bound(&self) -> Duration {
        self.idle + self.interval * self.count
    }
}

/// The network settings of a connection string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetParams {
    pub target: TargetSessionAttrs,
    /// `None` with `keepalives=0`.
    pub keepalives: Option<Keepalives>,
    /// `None` with `tcp_user_timeout=0`.
    pub tcp_user_timeout: Option<Duration>,
    /// Per host attempt, whole (see [`DEFAULT_CONNECT_TIMEOUT`]).
    pub connect_timeout: Duration,
}

impl Default for NetParams {
    fn default() -> Self {
        NetParams {
            target: TargetSessionAttrs::Any,
            keepalives: Some(Keepalives {
                idle: DEFAULT_KEEPALIVES_IDLE,
                interval: DEFAULT_KEEPALIVES_INTERVAL,
                count: DEFAULT_KEEPALIVES_COUNT,
            }),
            tcp_user_timeout: Some(DEFAULT_TCP_USER_TIMEOUT),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// A value this module reads is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {key}={value:?}: {why}")]
pub struct ParamError {
    pub key: String,
    pub value: String,
    pub why: &'static str,
}

impl NetParams {
    /// From the connection string's values (`lookup`, the last one given
    /// wins), `PGTARGETSESSIONATTRS` (`env`) and tokio-postgres's parsed
    /// `connect_timeout` (which `PGCONNECT_TIMEOUT` may have filled).
    pub fn from_values(
        lookup: impl Fn(&str) -> Option<String>,
        env: impl Fn(&str) -> Option<String>,
        connect_timeout: Option<Duration>,
    ) -> Result<Self, ParamError> {
        let mut p = NetParams::default();
        let bad = |key: &str, value: &str, why| ParamError {
            key: key.to_string(),
            value: value.to_string(),
            why,
        };
        let target = lookup("target_session_attrs")
            .map(|v| ("target_session_attrs", v))
            .or_else(|| {
                env("PGTARGETSESSIONATTRS")
                    .filter(|v| !v.is_empty())
                    .map(|v| ("PGTARGETSESSIONATTRS", v))
            });
        if let Some((key, v)) = target {
            p.target = v.parse().map_err(|_| {
                bad(
                    key,
                    &v,
                    "use any, read-write, read-only, primary, standby or prefer-standby",
                )
            })?;
        }
        let number = |key: &str| -> Result<Option<u64>, ParamError> {
            match lookup(key) {
                None => Ok(None),
                Some(v) if v.trim().is_empty() => Ok(None),
                Some(v) => v
                    .trim()
                    .parse::<u64>()
                    .map(Some)
                    .map_err(|_| bad(key, &v, "not a whole number")),
            }
        };
        if let Some(on) = number("keepalives")? {
            if on == 0 {
                p.keepalives = None;
            }
        }
        if let Some(k) = p.keepalives.as_mut() {
            if let Some(s) = number("keepalives_idle")? {
                k.idle = Duration::from_secs(s.max(1));
            }
            if let Some(s) = number("keepalives_interval")? {
                k.interval = Duration::from_secs(s.max(1));
            }
            let count = match number("keepalives_count")? {
                Some(n) => Some(n),
                None => number("keepalives_retries")?,
            };
            if let Some(n) = count {
                k.count = u32::try_from(n.max(1)).map_err(|_| {
                    bad(
                        "keepalives_count",
                        &n.to_string(),
                        "too large for a probe count",
                    )
                })?;
            }
        }
        // libpq: milliseconds; 0 leaves the system's behaviour.
        if let Some(ms) = number("tcp_user_timeout")? {
            p.tcp_user_timeout = (ms > 0).then(|| Duration::from_millis(ms));
        }
        if let Some(t) = connect_timeout {
            p.connect_timeout = t;
        }
        Ok(p)
    }

    /// How long a request may go unanswered before walshift asks the server
    /// (on another connection) whether it is still working on it.
    pub fn request_silence(&self) -> Duration {
        self.tcp_user_timeout.unwrap_or(DEFAULT_TCP_USER_TIMEOUT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<NetParams, ParamError> {
        NetParams::from_values(
            |k| {
                pairs
                    .iter()
                    .rev()
                    .find(|(pk, _)| *pk == k)
                    .map(|(_, v)| v.to_string())
            },
            |_| None,
            None,
        )
    }

    #[test]
    fn defaults_bound_every_kind_of_silence() {
        let p = from(&[]).unwrap();
        assert_eq!(p.target, TargetSessionAttrs::Any);
        assert_eq!(p.keepalives.unwrap().bound(), Duration::from_secs(25));
        assert_eq!(p.tcp_user_timeout, Some(Duration::from_secs(25)));
        assert_eq!(p.connect_timeout, Duration::from_secs(10));
    }

    #[test]
    fn libpq_names_and_units() {
        let p = from(&[
            ("target_session_attrs", "primary"),
            ("keepalives_idle", "7"),
            ("keepalives_interval", "2"),
            ("keepalives_count", "4"),
            ("tcp_user_timeout", "1500"),
        ])
        .unwrap();
        assert_eq!(p.target, TargetSessionAttrs::Primary);
        assert_eq!(
            p.keepalives,
            Some(Keepalives {
                idle: Duration::from_secs(7),
                interval: Duration::from_secs(2),
                count: 4
            })
        );
        assert_eq!(p.tcp_user_timeout, Some(Duration::from_millis(1500)));
        let p = from(&[("keepalives", "0"), ("tcp_user_timeout", "0")]).unwrap();
        assert_eq!(p.keepalives, None);
        assert_eq!(p.tcp_user_timeout, None);
        let p = from(&[("keepalives_retries", "9")]).unwrap();
        assert_eq!(p.keepalives.unwrap().count, 9);
    }

    #[test]
    fn bad_values_are_one_line_naming_the_key() {
        let e = from(&[("target_session_attrs", "master")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid target_session_attrs=\"master\": use any, read-write, read-only, primary, standby or prefer-standby"
        );
        let e = from(&[("keepalives_idle", "soon")]).unwrap_err();
        assert!(e.to_string().starts_with("invalid keepalives_idle="), "{e}");
        let e = NetParams::from_values(
            |_| None,
            |k| (k == "PGTARGETSESSIONATTRS").then(|| "x".into()),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("PGTARGETSESSIONATTRS"), "{e}");
    }
}
