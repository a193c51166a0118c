//! libpq's host-list rules, for every kind of session: try each host in
//! order; skip one that cannot be reached, fails to start a session, or
//! does not fit `target_session_attrs`; when none fits, one line names
//! every host tried and why it was skipped.
//!
//! ```text
//!  host=a,b,c ──▶ a: open ─▶ startup ─▶ fits? ─no─▶ b: ... ─▶ c: ...
//!                  │ each attempt whole under connect_timeout     │
//!                  └──────────── first that fits ◀────────────────┘
//! ```

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio_postgres::config::Host;

use super::params::{NetParams, TargetSessionAttrs};

/// One host of the list, with its port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: Host,
    pub port: u16,
    /// libpq's `hostaddr`: connect here, and check TLS against `host`.
    pub addr: Option<std::net::IpAddr>,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Tcp(h) if h.contains(':') => write!(f, "[{h}]:{}", self.port)?,
            Host::Tcp(h) => write!(f, "{h}:{}", self.port)?,
            Host::Unix(dir) => write!(f, "{}/.s.PGSQL.{}", dir.display(), self.port)?,
        }
        match self.addr {
            Some(a) if !matches!(&self.host, Host::Tcp(h) if *h == a.to_string()) => {
                write!(f, " ({a})")
            }
            _ => Ok(()),
        }
    }
}

/// What a started session can be asked to decide whether it fits.
pub(crate) trait ServerRole {
    /// `SHOW transaction_read_only` is `on`.
    async fn read_only(&mut self) -> Result<bool, String>;
    /// `SELECT pg_is_in_recovery()`.
    async fn in_recovery(&mut self) -> Result<bool, String>;
}

/// No host gave a session that fits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoHostFits {
    pub target: TargetSessionAttrs,
    /// Each host tried, and why it was skipped.
    pub tried: Vec<(String, String)>,
}

impl fmt::Display for NoHostFits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.target {
            TargetSessionAttrs::Any => f.write_str("no host accepted a session")?,
            t => write!(f, "no host fits target_session_attrs={t}")?,
        }
        f.write_str(" (tried ")?;
        for (i, (host, why)) in self.tried.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            // One line, whatever the server's message held.
            write!(f, "{host}: {}", why.replace('\n', " "))?;
        }
        f.write_str(")")
    }
}

impl std::error::Error for NoHostFits {}

/// Why the walk found no session.
#[derive(Debug)]
pub enum WalkError<E> {
    /// One host, one plain failure: its own error, as it was.
    Only(E),
    /// Every host tried, listed.
    None(NoHostFits),
}

/// How a session compares with `target_session_attrs`.
enum Fit {
    Yes,
    No(String),
    /// prefer-standby: not a standby, but good for the second pass.
    Fallback,
}

async fn fits<S: ServerRole>(session: &mut S, target: TargetSessionAttrs) -> Result<Fit, String> {
    let ro = |on: bool| {
        if on {
            "read-only (transaction_read_only is on)"
        } else {
            "read-write (transaction_read_only is off)"
        }
    };
    let rec = |on: bool| {
        if on {
            "a standby (pg_is_in_recovery() is true)"
        } else {
            "a primary (pg_is_in_recovery() is false)"
        }
    };
    Ok(match target {
        TargetSessionAttrs::Any => Fit::Yes,
        TargetSessionAttrs::ReadWrite => match session.read_only().await? {
            false => Fit::Yes,
            true => Fit::No(ro(true).into()),
        },
        TargetSessionAttrs::ReadOnly => match session.read_only().await? {
            true => Fit::Yes,
            false => Fit::No(ro(false).into()),
        },
        TargetSessionAttrs::Primary => match session.in_recovery().await? {
            false => Fit::Yes,
            true => Fit::No(rec(true).into()),
        },
        TargetSessionAttrs::Standby => match session.in_recovery().await? {
            true => Fit::Yes,
            false => Fit::No(rec(false).into()),
        },
        TargetSessionAttrs::PreferStandby => match session.in_recovery().await? {
            true => Fit::Yes,
            false => Fit::Fallback,
        },
    })
}

/// Tries `targets` in order with `attempt` and returns the first session
/// that fits `params.target`, with the target it is connected to.
pub(crate) async fn first_fitting<S, E, F, Fut>(
    targets: &[Target],
    params: &NetParams,
    mut attempt: F,
) -> Result<(S, Target), WalkError<E>>
where
    S: ServerRole,
    E: fmt::Display,
    F: FnMut(Target) -> Fut,
    Fut: Future<Output = Result<S, E>>,
{
    let mut tried = Vec::new();
    let mut fallback: Option<(S, Target)> = None;
    let only_one = targets.len() == 1;
    for target in targets {
        let timeout = params.connect_timeout;
        let checked = async {
            let mut session = attempt(target.clone()).await.map_err(Failure::Connect)?;
            match fits(&mut session, params.target).await {
                Ok(fit) => Ok((session, fit)),
                Err(e) => Err(Failure::Check(e)),
            }
        };
        let outcome = match tokio::time::timeout(timeout, checked).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Silent(timeout)),
        };
        match outcome {
            Ok((session, Fit::Yes)) => return Ok((session, target.clone())),
            Ok((session, Fit::Fallback)) => {
                if fallback.is_none() {
                    fallback = Some((session, target.clone()));
                }
                tried.push((target.to_string(), "not a standby".to_string()));
            }
            Ok((_, Fit::No(why))) => tried.push((target.to_string(), why)),
            Err(Failure::Connect(e)) if only_one => return Err(WalkError::Only(e)),
            Err(Failure::Connect(e)) => {
                // The list names the host already.
                let text = e.to_string();
                let own = format!("cannot connect to {target}: ");
                let why = text.strip_prefix(&own).unwrap_or(&text).to_string();
                tried.push((target.to_string(), why))
            }
            Err(Failure::Check(e)) => {
                tried.push((target.to_string(), format!("cannot tell its role: {e}")))
            }
            Err(Failure::Silent(t)) => tried.push((
                target.to_string(),
                format!("no session within connect_timeout ({}s)", secs(t)),
            )),
        }
    }
    if let Some(found) = fallback {
        return Ok(found);
    }
    Err(WalkError::None(NoHostFits {
        target: params.target,
        tried,
    }))
}

enum Failure<E> {
    Connect(E),
    Check(String),
    Silent(Duration),
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pretend session: its role, or a failure to report it.
    struct Fake {
        read_only: bool,
        in_recovery: bool,
    }

    impl ServerRole for Fake {
        async fn read_only(&mut self) -> Result<bool, String> {
            Ok(self.read_only)
        }
        async fn in_recovery(&mut self) -> Result<bool, String> {
            Ok(self.in_recovery)
        }
    }

    fn targets(n: u16) -> Vec<Target> {
        (0..n)
            .map(|i| Target {
                host: Host::Tcp(format!("h{i}")),
                port: 5432 + i,
                addr: None,
            })
            .collect()
    }

    /// h0 refuses, h1 is a standby, h2 the primary.
    async fn walk(target: TargetSessionAttrs) -> Result<(Fake, Target), WalkError<String>> {
        let params = NetParams {
            target,
            ..NetParams::default()
        };
        first_fitting(&targets(3), &params, |t| async move {
            match t.port {
                5432 => Err("Connection refused (os error 111)".to_string()),
                5433 => Ok(Fake {
                    read_only: true,
                    in_recovery: true,
                }),
                _ => Ok(Fake {
                    read_only: false,
                    in_recovery: false,
                }),
            }
        })
        .await
    }

    #[tokio::test]
    async fn each_rule_picks_its_host() {
        use TargetSessionAttrs::*;
        for (rule, port) in [
            (Any, 5433),
            (ReadWrite, 5434),
            (Primary, 5434),
            (ReadOnly, 5433),
            (Standby, 5433),
            (PreferStandby, 5433),
        ] {
            let (_, t) = walk(rule).await.map_err(|_| rule).unwrap();
            assert_eq!(t.port, port, "{rule}");
        }
    }

    #[tokio::test]
    async fn none_fits_names_every_host() {
        let params = NetParams {
            target: TargetSessionAttrs::ReadWrite,
            ..NetParams::default()
        };
        let r = first_fitting(&targets(2), &params, |t| async move {
            if t.port == 5432 {
                Err("Connection refused (os error 111)".to_string())
            } else {
                Ok(Fake {
                    read_only: true,
                    in_recovery: true,
                })
            }
        })
        .await;
        let Err(WalkError::None(e)) = r else {
            panic!("expected no host")
        };
        assert_eq!(
            e.to_string(),
            "no host fits target_session_attrs=read-write (tried h0:5432: Connection refused (os error 111); \
             h1:5433: read-only (transaction_read_only is on))"
        );
    }

    #[tokio::test]
    async fn prefer_standby_falls_back_to_the_first_host_that_answered() {
        let params = NetParams {
            target: TargetSessionAttrs::PreferStandby,
            ..NetParams::default()
        };
        let (_, t) = first_fitting(&targets(3), &params, |_| async {
            Ok::<_, String>(Fake {
                read_only: false,
                in_recovery: false,
            })
        })
        .await
        .map_err(|_| ())
        .unwrap();
        assert_eq!(t.port, 5432);
    }

    #[tokio::test]
    async fn a_silent_host_is_skipped_after_connect_timeout() {
        let params = NetParams {
            connect_timeout: Duration::from_millis(200),
            ..NetParams::default()
        };
        let (_, t) = first_fitting(&targets(2), &params, |t| async move {
            if t.port == 5432 {
                std::future::pending::<()>().await;
            }
            Ok::<_, String>(Fake {
                read_only: false,
                in_recovery: false,
            })
        })
        .await
        .map_err(|_| ())
        .unwrap();
        assert_eq!(t.port, 5433);
        let one = first_fitting(&targets(1), &params, |_| async move {
            std::future::pending::<Result<Fake, String>>().await
        })
        .await;
        let Err(WalkError::None(e)) = one else {
            panic!("expected no host")
        };
        assert_eq!(
            e.to_string(),
            "no host accepted a session (tried h0:5432: no session within connect_timeout (0.2s))"
        );
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        let t = Target {
            host: Host::Tcp("::1".into()),
            port: 5432,
            addr: None,
        };
        assert_eq!(t.to_string(), "[::1]:5432");
    }
}
