//! Statements on walshift's key table, `walshift.keys` (sql/state.sql): the
//! keys of two-way mirrors held between transactions, and the held keys of
//! any mirror. The statement builders are pure; the applier runs them.
//!
//! Keys travel as one `text[]` per key column (as in a batch's statements)
//! and are stored as one `text[]` per key; directions as their one-letter
//! codes ([`crate::mirror::txn::Dir::code`]).

/// Which kind of row of the key table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// Work waiting for the next transaction.
    Carry,
    /// A key the backfill must leave alone.
    Mark,
    /// A key whose recompute fails on its data.
    Held,
}

impl KeyKind {
    fn literal(self) -> &'static str {
        match self {
            KeyKind::Carry => "'carry'",
            KeyKind::Mark => "'mark'",
            KeyKind::Held => "'held'",
        }
    }
}

/// `ARRAY[u.k1, ...]` and `$4::text[], ...` for `key_len` key columns whose
/// arrays start at parameter `first`.
fn key_rows(key_len: usize, first: usize) -> (String, Vec<String>, Vec<String>) {
    let names: Vec<String> = (1..=key_len).map(|i| format!("k{i}")).collect();
    let arrays: Vec<String> = (0..key_len)
        .map(|i| format!("${}::text[]", first + i))
        .collect();
    let key = format!(
        "ARRAY[{}]",
        names
            .iter()
            .map(|n| format!("u.{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    (key, names, arrays)
}

/// Stores keys with their directions. Params: `$1` spec name, `$2` mirror
/// (`int4`), `$3` directions (`text[]`), `$4..` one `text[]` per key column.
/// A carried key takes the newer direction; a mark, once set, stays.
pub fn keys_store(kind: KeyKind, key_len: usize) -> String {
    let (key, names, arrays) = key_rows(key_len, 4);
    let on_conflict = match kind {
        KeyKind::Carry | KeyKind::Held => "DO UPDATE SET dir = EXCLUDED.dir, since = now()",
        KeyKind::Mark => "DO NOTHING",
    };
    format!(
        "INSERT INTO walshift.keys (name, mirror, kind, key, dir)\n\
         SELECT $1, $2, {}, {key}, u.dir\n\
         FROM unnest($3::text[], {}) AS u(dir, {})\n\
         ON CONFLICT (name, mirror, key, kind) {on_conflict}",
        kind.literal(),
        arrays.join(", "),
        names.join(", ")
    )
}

/// Holds keys with their errors. Params: `$1` spec name, `$2` mirror, `$3`
/// directions, `$4` SQLSTATEs, `$5` messages (each `text[]`), `$6..` one
/// `text[]` per key column. A key held again keeps the time it was first
/// held and takes the new error.
pub fn keys_hold(key_len: usize) -> String {
    let (key, names, arrays) = key_rows(key_len, 6);
    format!(
        "INSERT INTO walshift.keys (name, mirror, kind, key, dir, sqlstate, error)\n\
         SELECT $1, $2, 'held', {key}, u.dir, u.sqlstate, u.error\n\
         FROM unnest($3::text[], $4::text[], $5::text[], {}) AS u(dir, sqlstate, error, {})\n\
         ON CONFLICT (name, mirror, key, kind) DO UPDATE\n  \
         SET dir = EXCLUDED.dir, sqlstate = EXCLUDED.sqlstate, error = EXCLUDED.error",
        arrays.join(", "),
        names.join(", ")
    )
}

/// The held keys of a spec: `mirror int4, key text[], dir text, sqlstate
/// text, error text`.
pub const KEYS_HELD: &str = "SELECT mirror, key, dir, coalesce(sqlstate, ''), coalesce(error, '') \
     FROM walshift.keys WHERE name = $1 AND kind = 'held' ORDER BY mirror";

/// Forgets carried keys. Params: `$1` spec name, `$2` mirror, `$3..` one
/// `text[]` per key column.
pub fn keys_forget(kind: KeyKind, key_len: usize) -> String {
    let (key, names, arrays) = key_rows(key_len, 3);
    format!(
        "DELETE FROM walshift.keys\n\
         WHERE name = $1 AND mirror = $2 AND kind = {}\n  \
         AND key IN (SELECT {key} FROM unnest({}) AS u({}))",
        kind.literal(),
        arrays.join(", "),
        names.join(", ")
    )
}

/// Forgets every held key of a mirror (its source was truncated).
/// Params: `$1` spec name, `$2` mirror.
pub const KEYS_FORGET_HELD: &str =
    "DELETE FROM walshift.keys WHERE name = $1 AND mirror = $2 AND kind = 'held'";

/// The carried keys of a spec: `mirror int4, key text[], dir text`.
pub const KEYS_CARRIED: &str =
    "SELECT mirror, key, dir FROM walshift.keys WHERE name = $1 AND kind = 'carry' ORDER BY mirror";

/// Once a mirror's backfill is complete its marks have done their job.
/// Params: `$1` spec name, `$2` mirror.
pub const KEYS_FORGET_MARKS: &str =
    "DELETE FROM walshift.keys WHERE name = $1 AND mirror = $2 AND kind = 'mark'";

/// Forgets the carried keys and marks of `name` (its slot was lost: the
/// resync's full pass decides every key again); held keys stay.
pub async fn forget_carried_and_marked(
    client: &impl tokio_postgres::GenericClient,
    name: &str,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM walshift.keys WHERE name = $1 AND kind IN ('carry', 'mark')",
            &[&name],
        )
        .await
}

/// Whether the key table exists (a state schema from before two-way
/// mirrors has none).
pub async fn has_keys_table(
    client: &tokio_postgres::Client,
) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one("SELECT to_regclass('walshift.keys') IS NOT NULL", &[])
        .await?
        .get(0))
}

/// Whether the key table exists and records why a key is held (a state
/// table from an older walshift may not).
pub const HAS_HELD_KEYS: &str = "SELECT to_regclass('walshift.keys') IS NOT NULL \
             AND EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass('walshift.keys') AND attname = 'error')";

/// The held keys of migration `$1`, at most `$2` per mirror, with each
/// mirror's total, for `walshift status`: `mirror int4, total int8, key
/// text[], dir text, sqlstate text, error text, since text`.
pub const HELD_KEYS: &str =
    "SELECT mirror, total, key, dir, coalesce(sqlstate, ''), coalesce(error, ''), since::text
             FROM (SELECT *, row_number() OVER (PARTITION BY mirror ORDER BY since, key) AS n,
                          count(*) OVER (PARTITION BY mirror) AS total
                   FROM walshift.keys WHERE name = $1 AND kind = 'held') k
             WHERE n <= $2
             ORDER BY mirror, n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_for_a_composite_key() {
        assert_eq!(
            keys_store(KeyKind::Carry, 2),
            "INSERT INTO walshift.keys (name, mirror, kind, key, dir)\n\
             SELECT $1, $2, 'carry', ARRAY[u.k1, u.k2], u.dir\n\
             FROM unnest($3::text[], $4::text[], $5::text[]) AS u(dir, k1, k2)\n\
             ON CONFLICT (name, mirror, key, kind) DO UPDATE SET dir = EXCLUDED.dir, since = now()"
        );
        assert!(keys_store(KeyKind::Mark, 1).ends_with("DO NOTHING"));
        assert_eq!(
            keys_forget(KeyKind::Carry, 1),
            "DELETE FROM walshift.keys\n\
             WHERE name = $1 AND mirror = $2 AND kind = 'carry'\n  \
             AND key IN (SELECT ARRAY[u.k1] FROM unnest($3::text[]) AS u(k1))"
        );
    }
}
