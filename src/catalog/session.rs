//! The one transaction `check` runs in, and what a refused statement leaves
//! behind: a [`Refusal`], which becomes a problem line, never an `Err`.
//!
//! ```text
//!  BEGIN READ ONLY; SET LOCAL lock_timeout, statement_timeout
//!    SAVEPOINT; <catalog query | prepare of a probe>; ROLLBACK TO SAVEPOINT   (each statement)
//!  ROLLBACK
//! ```
//!
//! Every statement runs in a savepoint that is always rolled back, for two
//! reasons: a refused statement would otherwise abort the whole transaction
//! and hide every later check, and preparing an UPDATE or INSERT takes a
//! ROW EXCLUSIVE lock on its table at parse time, which rolling back the
//! savepoint releases at once instead of holding it until the end of the
//! check (a queued ALTER TABLE behind it would stall the application).
//!
//! Nothing is executed that writes: probes are only prepared (parse analysis
//! and rewrite, which resolve names, types and operators but run no user
//! function), and READ ONLY makes that a guarantee rather than a habit.
//! tokio-postgres closes each prepared statement when its `Statement` drops.
//! (Its own type-lookup statement, prepared the first time a non-built-in
//! type is seen, stays cached in the client for the session, as it would for
//! any query of such a type.)

use tokio_postgres::error::ErrorPosition;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Error, Row, Statement};

/// How long one statement of `check` waits for a lock before reporting
/// instead of waiting: preparing a statement locks its tables, and a
/// migration's DDL may hold them. Short, because a check that hangs behind a
/// long transaction tells the operator nothing.
pub(super) const LOCK_TIMEOUT: &str = "2s";

/// A backstop for the row count of small never-analyzed tables and for
/// catalog queries on very large catalogs.
const STATEMENT_TIMEOUT: &str = "30s";

/// SQLSTATE of `lock_timeout` expiring.
const LOCK_NOT_AVAILABLE: &str = "55P03";

const SAVEPOINT: &str = "SAVEPOINT walshift_check";
const ROLLBACK_TO: &str = "ROLLBACK TO SAVEPOINT walshift_check";

/// A statement Postgres refused, as the parts a one-line problem needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Refusal {
    /// SQLSTATE, e.g. `42703`.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// 1-based character offset into the statement text, when Postgres gave one.
    pub position: Option<usize>,
}

impl Refusal {
    pub(super) fn from_db(db: &tokio_postgres::error::DbError) -> Self {
        Refusal {
            code: db.code().code().to_string(),
            message: one_line(db.message()),
            detail: db.detail().map(one_line),
            hint: db.hint().map(one_line),
            position: match db.position() {
                Some(ErrorPosition::Original(p)) => Some(*p as usize),
                _ => None,
            },
        }
    }

    /// A lock another session holds made the statement give up: nothing is
    /// wrong with the statement itself.
    pub(super) fn is_lock_timeout(&self) -> bool {
        self.code == LOCK_NOT_AVAILABLE
    }

    /// `message (SQLSTATE code)` plus `; detail` and `; hint: ...` when present;
    /// `at` (e.g. "at line 1, column 5 of the expression") goes inside the
    /// parentheses.
    pub(super) fn describe(&self, at: Option<&str>) -> String {
        let mut out = format!("{} (SQLSTATE {}", self.message, self.code);
        if let Some(at) = at {
            out.push_str(", ");
            out.push_str(at);
        }
        out.push(')');
        // Postgres ends details and hints with a period; mid-line, before
        // walshift's own advice, it reads as ".;".
        if let Some(detail) = &self.detail {
            out.push_str("; ");
            out.push_str(detail.trim_end_matches('.'));
        }
        if let Some(hint) = &self.hint {
            out.push_str("; hint: ");
            out.push_str(hint.trim_end_matches('.'));
        }
        out
    }
}

/// `Err`: the connection is gone (or the client failed on its own side);
/// `Ok(Err(_))`: Postgres refused the statement.
pub(super) type Asked<T> = Result<Result<T, Refusal>, Error>;

fn split<T>(result: Result<T, Error>) -> Asked<T> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(e) => match e.as_db_error() {
            Some(db) => Ok(Err(Refusal::from_db(db))),
            None => Err(e),
        },
    }
}

/// Problems are one line each: Postgres's messages rarely hold a newline,
/// hints and details sometimes do.
pub(super) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The check's transaction on the caller's client, which must be idle (not
/// inside a transaction of its own).
pub(super) struct CheckTransaction<'a> {
    client: &'a Client,
}

impl<'a> CheckTransaction<'a> {
    pub(super) async fn begin(client: &'a Client) -> Result<CheckTransaction<'a>, Error> {
        client
            .batch_execute(&format!(
                "BEGIN READ ONLY; SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'; \
                 SET LOCAL statement_timeout = '{STATEMENT_TIMEOUT}'"
            ))
            .await?;
        Ok(CheckTransaction { client })
    }

    /// Roll everything back; `check` never keeps anything.
    pub(super) async fn end(self) -> Result<(), Error> {
        self.client.batch_execute("ROLLBACK").await
    }

    /// Rows of a query, or Postgres's refusal.
    pub(super) async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Asked<Vec<Row>> {
        self.client.batch_execute(SAVEPOINT).await?;
        let result = split(self.client.query(sql, params).await)?;
        self.client.batch_execute(ROLLBACK_TO).await?;
        Ok(result)
    }

    /// Prepare (parse, analyze, rewrite; never execute) and describe a
    /// statement: its parameter and column types, or why Postgres refuses it.
    pub(super) async fn prepare(&self, sql: &str) -> Asked<Statement> {
        self.client.batch_execute(SAVEPOINT).await?;
        let result = split(self.client.prepare(sql).await)?;
        self.client.batch_execute(ROLLBACK_TO).await?;
        Ok(result)
    }
}

/// Where `position` (1-based, in characters, as Postgres reports it) falls
/// in a user fragment embedded at character `start` of a statement:
/// `Some((line, column))`, both 1-based within the fragment.
pub(super) fn locate(fragment: &str, start: usize, position: usize) -> Option<(usize, usize)> {
    let offset = position.checked_sub(1)?.checked_sub(start)?;
    let mut line = 1;
    let mut column = 1;
    for (i, ch) in fragment.chars().enumerate() {
        if i == offset {
            return Some((line, column));
        }
        if ch == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    // Just past the end: "syntax error at end of input" points there.
    (offset == fragment.chars().count()).then_some((line, column))
}

/// The line of `sql` holding `position` (1-based characters), trimmed and
/// cut to a readable length, for errors in text walshift generated.
pub(super) fn line_at(sql: &str, position: usize) -> Option<(usize, String)> {
    let offset = position.checked_sub(1)?;
    let before: String = sql.chars().take(offset).collect();
    let number = before.matches('\n').count() + 1;
    let text = sql.lines().nth(number - 1)?.trim();
    let cut: String = text.chars().take(100).collect();
    let cut = if cut.len() < text.len() {
        format!("{cut}...")
    } else {
        cut
    };
    Some((number, cut))
}
