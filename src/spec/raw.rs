//! The spec file exactly as TOML gives it, before validation.
//!
//! Every field is optional and spanned so that validation, not serde, decides
//! what is missing, and every problem can point at a line. `deny_unknown_fields`
//! everywhere: a misspelt `max_replica_lag` must not silently mean "no limit".

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpec {
    pub name: Option<Spanned<String>>,
    #[serde(default)]
    pub mirror: Vec<Spanned<RawMirror>>,
    pub backfill: Option<RawBackfill>,
    #[serde(default)]
    pub gate: Vec<Spanned<RawGate>>,
    pub cutover: Option<RawCutover>,
    pub safety: Option<RawSafety>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMirror {
    pub source: Option<Spanned<String>>,
    pub key: Option<Spanned<Vec<Spanned<String>>>>,
    /// Column -> expression. A `BTreeMap` because assignments in one UPDATE
    /// are simultaneous: file order carries no meaning, sorted order makes the
    /// generated SQL deterministic.
    pub set: Option<RawColumns>,
    pub target: Option<Spanned<String>>,
    pub owner: Option<Spanned<Vec<Spanned<String>>>>,
    pub select: Option<Spanned<String>>,
    /// The way back (two-way mirror): column -> expression of the old shape,
    /// computed from the new one. Sorted like `set`.
    pub reverse: Option<RawColumns>,
    /// The way back of a table split (rows mode): the source row a target
    /// row stands for.
    pub reverse_select: Option<Spanned<String>>,
    /// Other tables the mapping reads: `[{ table, columns }]`.
    pub depends: Option<Spanned<Vec<Spanned<RawDepends>>>>,
}

/// One `depends` entry: the source's `columns` refer to `table`'s key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDepends {
    pub table: Option<Spanned<String>>,
    pub columns: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `column = "expression"` pairs (`set`, `reverse`), spanned.
pub(super) type RawColumns = Spanned<BTreeMap<Spanned<String>, Spanned<String>>>;

/// Durations and sizes arrive as any TOML value so that `max_replica_lag = 5`
/// gets "the unit is missing" rather than serde's "expected a string".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackfill {
    pub max_replica_lag: Option<Spanned<toml::Value>>,
    pub max_replica_lag_bytes: Option<Spanned<toml::Value>>,
    pub max_retained_wal: Option<Spanned<toml::Value>>,
    pub max_apply_lag: Option<Spanned<toml::Value>>,
    pub throttle_query: Option<Spanned<String>>,
    pub throttle_query_max: Option<Spanned<f64>>,
    pub max_rows_per_second: Option<Spanned<i64>>,
    pub chunk_target_time: Option<Spanned<toml::Value>>,
    pub min_chunk_rows: Option<Spanned<i64>>,
    pub max_chunk_rows: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGate {
    pub name: Option<Spanned<String>>,
    pub sql: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCutover {
    pub sql: Option<Spanned<String>>,
    pub lock_timeout: Option<Spanned<toml::Value>>,
    pub max_attempts: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSafety {
    pub max_retained_wal: Option<Spanned<toml::Value>>,
    pub on_max_retained_wal: Option<Spanned<String>>,
    pub on_slot_lost: Option<Spanned<String>>,
}
