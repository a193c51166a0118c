//! Asking Postgres: statements prepared (never executed) to learn whether a
//! type compares, an expression compiles or a generated statement is valid.
//! Their refusals are turned into problem text that points into the
//! operator's own SQL when the error is there.

use tokio_postgres::Error;

use super::session::{LOCK_TIMEOUT, Refusal, line_at, locate};
use super::{Ctx, MirrorKind};
use crate::mirror::sql::{
    Scope, Statement, VerifyOutput, chunk_upper_bound, rows_apply, rows_owner_mismatch,
    rows_truncate, rows_verify, set_apply, set_verify,
};

/// Why a type can hold mirrored values: stored and computed values are
/// compared with `IS DISTINCT FROM` (the type's `=`), and rows mode numbers
/// identical rows with `PARTITION BY`, keys are ranged and sorted, all of
/// which need the type's default btree ordering. Parse analysis looks both
/// up, so preparing this is enough; it also rejects `json[]` or a composite
/// with a `json` field, whose `=` only fails when run. It returns a
/// built-in type, so describing it never makes the client look up a type.
fn type_probe(type_name: &str) -> String {
    format!(
        "SELECT 1 FROM (VALUES (NULL::{type_name})) AS p(x) WHERE x IS DISTINCT FROM x ORDER BY x"
    )
}

impl Ctx<'_> {
    /// Report a probe Postgres refused: `message` says what the refusal
    /// means, unless the probe only gave up waiting for a lock, which says
    /// nothing about the spec.
    pub(super) fn refused(
        &mut self,
        label: &str,
        refusal: &Refusal,
        message: impl FnOnce() -> String,
    ) {
        let message = if refusal.is_lock_timeout() {
            format!(
                "another session held a lock on a table of this mirror for over {LOCK_TIMEOUT} \
                 (DDL or a long transaction?), so check could not finish: {}; run check again \
                 when it is done",
                refusal.describe(None)
            )
        } else {
            message()
        };
        self.problem(label, message);
    }

    /// `None` when `type_name` has equality and ordering; otherwise
    /// Postgres's reason. Cached per type for the whole check.
    pub(super) async fn type_refusal(&mut self, type_name: &str) -> Result<Option<Refusal>, Error> {
        if let Some(answer) = self.type_probes.get(type_name) {
            return Ok(answer.clone());
        }
        let answer = self.session.prepare(&type_probe(type_name)).await?.err();
        self.type_probes
            .insert(type_name.to_string(), answer.clone());
        Ok(answer)
    }
}

/// The fix for a type without equality or ordering.
pub(super) fn type_advice(type_name: &str) -> &'static str {
    match type_name {
        "json" => "use jsonb",
        "xml" => "use text (or jsonb)",
        _ => "use a type with a default btree operator class (equality and ordering), e.g. text",
    }
}

/// Postgres's refusal of a statement embedding the operator's `fragment`
/// (e.g. an expression) at character `start`: its message, with the place
/// inside the fragment when the error is there (`what` names the fragment,
/// e.g. "the expression").
pub(super) fn refusal_in(refusal: &Refusal, fragment: &str, start: usize, what: &str) -> String {
    let at = refusal
        .position
        .and_then(|p| locate(fragment, start, p))
        .map(|(line, column)| format!("at line {line}, column {column} of {what}"));
    refusal.describe(at.as_deref())
}

/// Every statement `run`, `verify` and `cutover` generate for a mirror,
/// named for messages. Ranges use both bounds, so every condition a partial
/// range could have is present.
fn statements(kind: &MirrorKind) -> Vec<(&'static str, Statement)> {
    let both = Scope::Range {
        lower: true,
        upper: true,
    };
    match kind {
        MirrorKind::Set(plan) => vec![
            ("set_apply (batch of keys)", set_apply(plan, Scope::Keys)),
            ("set_apply (backfill chunk)", set_apply(plan, both)),
            (
                "chunk_upper_bound",
                chunk_upper_bound(&plan.source, &plan.key, true),
            ),
            ("set_verify", set_verify(plan, both, VerifyOutput::Keys)),
        ],
        MirrorKind::Rows(plan) => vec![
            ("rows_apply (batch of keys)", rows_apply(plan, Scope::Keys)),
            ("rows_apply (backfill chunk)", rows_apply(plan, both)),
            (
                "chunk_upper_bound",
                chunk_upper_bound(&plan.source, &plan.key, true),
            ),
            ("rows_truncate", rows_truncate(plan)),
            ("rows_verify", rows_verify(plan, both, VerifyOutput::Keys)),
            ("rows_owner_mismatch", rows_owner_mismatch(plan, both)),
        ],
    }
}

/// The final ask: Postgres prepares every generated statement of the
/// mirror. The first refusal is reported (the others would share its cause)
/// with the generated line it points at; `false` then.
pub(super) async fn prepare_generated(
    ctx: &mut Ctx<'_>,
    label: &str,
    kind: &MirrorKind,
) -> Result<bool, Error> {
    for (name, statement) in statements(kind) {
        if let Err(refusal) = ctx.session.prepare(&statement.sql).await? {
            let near = refusal
                .position
                .and_then(|p| line_at(&statement.sql, p))
                .map(|(line, text)| format!("at line {line} of it: {text}"));
            ctx.refused(label, &refusal, || {
                format!(
                    "the generated {name} statement does not prepare: {}; the mapping compiles \
                     on its own, so check the types it produces, or report this as a walshift \
                     bug if they are right",
                    refusal.describe(near.as_deref())
                )
            });
            return Ok(false);
        }
    }
    Ok(true)
}
