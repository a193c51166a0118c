//! One table that decides what a failure means operationally.
//!
//! Every error from a database session lands in one of two buckets: retry
//! after a delay (the connection or the server's state will come back), or
//! stop and tell the operator what to do (retrying the same statement would
//! fail the same way). Unknown errors are assumed transient: a pause costs
//! little, a sidecar that quits on a hiccup costs a page.

use std::time::Duration;

/// What to do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Reconnect and resume from the last committed position after a delay.
    Retry,
    /// Stop with the error: only the operator can fix it.
    Stop,
}

/// Decides by SQLSTATE class, as Postgres documents them (Appendix A).
pub fn for_sqlstate(code: &str) -> Action {
    match code.get(..2).unwrap_or("") {
        // connection_exception
        "08" => Action::Retry,
        // transaction_rollback: serialization_failure, deadlock_detected
        "40" => Action::Retry,
        // insufficient_resources: disk full, out of memory, too many connections
        "53" => Action::Retry,
        // operator_intervention: admin/crash shutdown, cannot_connect_now,
        // query_canceled (statement_timeout, pg_cancel_backend)
        "57" => Action::Retry,
        // system_error: I/O error
        "58" => Action::Retry,
        // object_not_in_prerequisite_state: lock_not_available (55P03) and
        // "replication slot is active for PID" (55006) clear by themselves.
        "55" => Action::Retry,
        // XX: internal_error — could be anything; assume transient.
        "XX" => Action::Retry,
        // Data exceptions, integrity violations, syntax errors, privileges,
        // undefined objects: the mapping or the database must change.
        _ => Action::Stop,
    }
}

/// Whether an error of a recompute is about the data of the rows it read
/// (so the failing keys are isolated and held, and the rest goes on) rather
/// than about the database or the mapping as a whole (which stops the run):
/// data exceptions (22: invalid input, division by zero, out of range),
/// integrity violations (23: unique, NOT NULL, CHECK, foreign key),
/// cardinality violations (21: ON CONFLICT hitting a row twice), exceptions
/// raised by functions the mapping calls (2F, P0) and program limits a row
/// can hit (54: a value too large). A dropped table (42P01), a lost
/// privilege (42501) or a broken expression (42xxx) is not.
pub fn is_about_the_row(code: &str) -> bool {
    matches!(
        code.get(..2).unwrap_or(""),
        "22" | "23" | "21" | "2F" | "P0" | "54"
    )
}

/// For tokio-postgres errors: a closed connection or an error without a
/// SQLSTATE (I/O, TLS, protocol) is retried.
pub fn for_pg(e: &tokio_postgres::Error) -> Action {
    if e.is_closed() {
        return Action::Retry;
    }
    match e.code() {
        Some(code) => for_sqlstate(code.code()),
        None => Action::Retry,
    }
}

/// Capped exponential backoff: 0.5s, 1s, 2s, ... up to 30s.
pub fn backoff(attempt: u32) -> Duration {
    let ms = 500u64.saturating_mul(1u64 << attempt.min(6));
    Duration::from_millis(ms.min(30_000))
}

/// The database's own message, without tokio-postgres's "db error: " prefix,
/// with detail and hint when the server gave them.
pub fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = db.message().to_string();
            if let Some(d) = db.detail() {
                s.push_str(&format!(" ({d})"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!(" hint: {h}"));
            }
            s.push_str(&format!(" [SQLSTATE {}]", db.code().code()));
            s
        }
        None => e.to_string(),
    }
}

/// `e` and its causes in one line ("error connecting to server: Connection
/// refused"), each cause once: a cause whose text `e` already shows is not
/// repeated.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        assert_eq!(for_sqlstate("08006"), Action::Retry);
        assert_eq!(for_sqlstate("57P01"), Action::Retry);
        assert_eq!(for_sqlstate("40P01"), Action::Retry);
        assert_eq!(for_sqlstate("55P03"), Action::Retry);
        assert_eq!(
            for_sqlstate("22012"),
            Action::Stop,
            "division by zero in a mapping"
        );
        assert_eq!(
            for_sqlstate("23505"),
            Action::Stop,
            "unique violation in a target"
        );
        assert_eq!(for_sqlstate("42501"), Action::Stop, "permission denied");
        assert_eq!(for_sqlstate("42P01"), Action::Stop, "table dropped");
    }

    #[test]
    fn backoff_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(20), Duration::from_secs(30));
    }
}
