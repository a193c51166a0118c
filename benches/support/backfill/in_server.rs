//! The in-server limit: the same chunks, with the same generated statement
//! text, looped inside one `DO` block that commits after every chunk.
//!
//! ```text
//!  walshift::mirror::sql ─▶ chunk_upper_bound (first / after lower)
//!                         ─▶ set_apply | rows_apply (4 Range variants)
//!        └─ pasted verbatim into EXECUTE ... USING lo[i], hi[i], n ─▶ COMMIT per chunk
//! ```
//!
//! The statements bind their bounds as `$1, $2, ...` in [`Param`] order, and
//! PL/pgSQL's `EXECUTE ... USING` binds exactly that, so no text is edited:
//! both contenders run byte-identical SQL with the same parameter values.
//! What the loop leaves out is what walshift adds around the chunk: the
//! checkpoint row (I6), the throttle look-ups, the round trips, and the
//! replication stream that decodes every write.

use walshift::catalog::{MirrorKind, MirrorPlan};
use walshift::mirror::sql::{self, Param, Scope, Statement};

/// A dollar-quote tag that no generated statement contains (checked).
const TAG: &str = "$walshift_bench$";

/// The `DO` block backfilling `plan` in chunks of `chunk_rows` source rows.
/// Afterwards `current_setting('walshift_bench.chunks')` holds the number of
/// chunks it committed (a session setting survives the block's COMMITs).
pub fn do_block(plan: &MirrorPlan, chunk_rows: u64) -> String {
    let key_len = plan.key.len();
    let bound_first = sql::chunk_upper_bound(&plan.source, &plan.key, false);
    let bound_after = sql::chunk_upper_bound(&plan.source, &plan.key, true);
    let apply = |lower: bool, upper: bool| -> Statement {
        let scope = Scope::Range { lower, upper };
        match &plan.kind {
            MirrorKind::Set(p) => sql::set_apply(p, scope),
            MirrorKind::Rows(p) => sql::rows_apply(p, scope),
        }
    };
    let ks: Vec<String> = (1..=key_len).map(|i| format!("k{i}")).collect();
    let declare_ks: String = ks.iter().map(|k| format!("  {k} text;\n")).collect();
    let into = ks.join(", ");
    format!(
        "DO {TAG}
DECLARE
  lo text[];
  hi text[];
{declare_ks}  found_rows bigint;
  n bigint := {chunk_rows};
  chunks bigint := 0;
BEGIN
  LOOP
    IF lo IS NULL THEN
      {bound_first}
    ELSE
      {bound_after}
    END IF;
    GET DIAGNOSTICS found_rows = ROW_COUNT;
    hi := CASE WHEN found_rows = 0 THEN NULL ELSE ARRAY[{into}] END;
    IF lo IS NULL AND hi IS NULL THEN
      {apply_none}
    ELSIF lo IS NULL THEN
      {apply_upper}
    ELSIF hi IS NULL THEN
      {apply_lower}
    ELSE
      {apply_both}
    END IF;
    COMMIT;
    chunks := chunks + 1;
    EXIT WHEN hi IS NULL;
    lo := hi;
  END LOOP;
  PERFORM set_config('walshift_bench.chunks', chunks::text, false);
END
{TAG}",
        bound_first = execute(&bound_first, Some(&into)),
        bound_after = execute(&bound_after, Some(&into)),
        apply_none = execute(&apply(false, false), None),
        apply_upper = execute(&apply(false, true), None),
        apply_lower = execute(&apply(true, false), None),
        apply_both = execute(&apply(true, true), None),
    )
}

/// `EXECUTE <text> [INTO ...] [USING ...];` binding `stmt.params` in order.
fn execute(stmt: &Statement, into: Option<&str>) -> String {
    const INNER: &str = "$walshift_stmt$";
    assert!(
        !stmt.sql.contains(INNER) && !stmt.sql.contains(TAG),
        "generated SQL contains a dollar-quote tag of the bench"
    );
    let mut out = format!("EXECUTE {INNER}{}{INNER}", stmt.sql);
    if let Some(into) = into {
        out.push_str(" INTO ");
        out.push_str(into);
    }
    let args: Vec<String> = stmt
        .params
        .iter()
        .map(|p| match p {
            Param::Lower(i) => format!("lo[{}]", i + 1),
            Param::Upper(i) => format!("hi[{}]", i + 1),
            Param::ChunkRows | Param::Limit => "n".to_owned(),
            Param::KeyArray(_) => panic!("a range statement binds no key arrays"),
        })
        .collect();
    if !args.is_empty() {
        out.push_str(" USING ");
        out.push_str(&args.join(", "));
    }
    out.push(';');
    out
}
