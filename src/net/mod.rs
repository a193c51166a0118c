//! How walshift reaches the server: the host list, the sockets, and the
//! bounds on silence, the same for every session it opens.
//!
//! ```text
//!  conninfo ──▶ params.rs   target_session_attrs, keepalives*, tcp_user_timeout, connect_timeout
//!      │
//!      ▼
//!  hosts.rs  each host in order, each attempt whole under connect_timeout ──▶ first that fits
//!      │        │
//!      │        ▼
//!      │     socket.rs  TCP (keepalives, TCP_USER_TIMEOUT via socket2) or unix; TLS
//!      ▼
//!  replication session (src/replication)     SQL session (sql.rs, tokio-postgres)
//!    reader task: receive timeout from         watch.rs: requests vs ReadyForQuery;
//!    wal_sender_timeout (stream.rs)            unanswered too long ─▶ probe ─▶ drop
//! ```
//!
//! A session dropped at a dead link leaves its backend behind; the next
//! SQL session to the same host terminates it ([`watch::terminate_abandoned`]).
//! The bounds, with their formulas and default figures, are in
//! docs/network.md.

pub mod hosts;
pub mod params;
pub mod socket;
pub(crate) mod sql;
pub mod watch;

pub use hosts::{NoHostFits, Target};
pub use params::{NetParams, TargetSessionAttrs};

/// The `session` label of `walshift_dead_links_total` for a session of
/// `application_name`: `walshift-apply` counts as `apply`, `walshift` alone
/// as `main`.
pub fn session_label(application_name: &str) -> &'static str {
    match application_name.strip_prefix("walshift-").unwrap_or("main") {
        "stream" => "stream",
        "apply" => "apply",
        "flush" => "flush",
        "control" => "control",
        "lag" => "lag",
        "origins" => "origins",
        "http" => "http",
        "setup" => "setup",
        "verify" => "verify",
        "probe" => "probe",
        "main" => "main",
        _ => "other",
    }
}
