//! Runtime overrides of the `[backfill]` limits: `walshift ctl SPEC set
//! KEY=VALUE` writes them to `walshift.migration.settings` and notifies; a
//! running `run` picks them up at once, without a restart. They last until
//! reset (`KEY=default`) or until `walshift cleanup`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::spec::{BackfillLimits, parse_duration, parse_size};

/// The channel `ctl` notifies on; the payload is the spec's name.
pub const CHANNEL: &str = "walshift_control";

/// Keys `ctl set` accepts, with what their value is.
pub const KEYS: &[(&str, &str)] = &[
    (
        "chunk_target_time",
        "a duration (e.g. 200ms): the time one backfill chunk statement aims at",
    ),
    (
        "max_rows_per_second",
        "backfill rows per second (0 or none: no cap)",
    ),
    (
        "max_replica_lag",
        "a duration: pause history while a standby replays later than this",
    ),
    (
        "max_replica_lag_bytes",
        "a size (e.g. 256MB) or none: pause while a standby is this far behind",
    ),
    (
        "max_apply_lag",
        "a duration: pause history while live changes wait longer than this",
    ),
    (
        "max_retained_wal",
        "a size or none: pause while other slots retain more WAL than this",
    ),
    ("min_chunk_rows", "rows: the smallest chunk"),
    ("max_chunk_rows", "rows: the largest chunk"),
];

/// Overrides as stored: key -> value as the operator wrote it.
pub type Overrides = BTreeMap<String, String>;

/// What the operator set for a running `run`, as its control task last read
/// it from the state row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Control {
    pub overrides: Overrides,
    /// `walshift ctl SPEC pause`.
    pub paused: bool,
}

/// Checks `key=value` and returns it normalized (`default` removes the
/// override). The error is one line naming the problem.
pub fn parse_assignment(text: &str) -> Result<(String, Option<String>), String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(format!("{text:?} is not KEY=VALUE; keys: {}", key_list()));
    };
    let (key, value) = (key.trim(), value.trim());
    let Some((_, what)) = KEYS.iter().find(|(k, _)| *k == key) else {
        return Err(format!("unknown setting {key:?}; keys: {}", key_list()));
    };
    if value == "default" {
        return Ok((key.to_string(), None));
    }
    let mut probe = BackfillLimits::default();
    set(&mut probe, key, value).map_err(|e| format!("{key}: {e} (expected {what})"))?;
    Ok((key.to_string(), Some(value.to_string())))
}

fn key_list() -> String {
    KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
}

fn optional_size(value: &str) -> Result<Option<u64>, String> {
    if value.eq_ignore_ascii_case("none") {
        Ok(None)
    } else {
        parse_size(value).map(Some)
    }
}

fn rows(value: &str) -> Result<u64, String> {
    value
        .replace('_', "")
        .parse::<u64>()
        .map_err(|_| format!("{value:?} is not a whole number"))
}

fn positive(d: Duration) -> Result<Duration, String> {
    if d.is_zero() {
        Err("must be above zero".into())
    } else {
        Ok(d)
    }
}

/// Sets one field of `limits`.
fn set(limits: &mut BackfillLimits, key: &str, value: &str) -> Result<(), String> {
    match key {
        "chunk_target_time" => limits.chunk_target_time = positive(parse_duration(value)?)?,
        "max_rows_per_second" => {
            limits.max_rows_per_second = if value.eq_ignore_ascii_case("none") {
                None
            } else {
                Some(rows(value)?).filter(|r| *r > 0)
            }
        }
        "max_replica_lag" => limits.max_replica_lag = positive(parse_duration(value)?)?,
        "max_replica_lag_bytes" => limits.max_replica_lag_bytes = optional_size(value)?,
        "max_apply_lag" => limits.max_apply_lag = positive(parse_duration(value)?)?,
        "max_retained_wal" => limits.max_retained_wal = optional_size(value)?,
        "min_chunk_rows" => limits.min_chunk_rows = rows(value)?.max(1),
        "max_chunk_rows" => limits.max_chunk_rows = rows(value)?.max(1),
        other => return Err(format!("unknown setting {other:?}")),
    }
    Ok(())
}

/// The spec's limits with the overrides on top (overrides that no longer
/// parse are skipped with a warning; `ctl` never writes such).
pub fn effective(base: &BackfillLimits, overrides: &Overrides) -> BackfillLimits {
    let mut limits = base.clone();
    for (k, v) in overrides {
        if let Err(e) = set(&mut limits, k, v) {
            tracing::warn!(setting = %k, value = %v, "ignoring an override: {e}");
        }
    }
    if limits.min_chunk_rows > limits.max_chunk_rows {
        limits.max_chunk_rows = limits.min_chunk_rows;
    }
    limits
}

/// Reads the overrides of `name` (empty before the first `ctl set`, or when
/// the state predates them).
pub async fn read(
    client: &tokio_postgres::Client,
    name: &str,
) -> Result<Overrides, tokio_postgres::Error> {
    let text = crate::state::read_settings(client, name).await?;
    Ok(text
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default())
}

/// Applies `changes` (None removes) to the stored overrides and notifies a
/// running `run`. Returns the overrides now in force, or `None` when
/// walshift has no state for `name`.
pub async fn write(
    client: &tokio_postgres::Client,
    name: &str,
    changes: &[(String, Option<String>)],
) -> Result<Option<Overrides>, tokio_postgres::Error> {
    let mut set = serde_json::Map::new();
    let mut removed = Vec::new();
    for (k, v) in changes {
        match v {
            Some(v) => {
                set.insert(k.clone(), serde_json::Value::String(v.clone()));
            }
            None => removed.push(k.clone()),
        }
    }
    let stored = crate::state::update_settings(
        client,
        name,
        &serde_json::Value::Object(set).to_string(),
        &removed,
    )
    .await?;
    let Some(stored) = stored else {
        return Ok(None);
    };
    notify(client, name).await?;
    Ok(serde_json::from_str(&stored).ok())
}

/// Wakes a running `run` of `name` (it re-reads its control state now
/// instead of at its next poll).
pub async fn notify(
    client: &tokio_postgres::Client,
    name: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &name])
        .await
        .map(|_| ())
}

/// Human summary of the differences between two limit sets, for the log.
pub fn describe_changes(before: &BackfillLimits, after: &BackfillLimits) -> Vec<String> {
    KEYS.iter()
        .filter_map(|(key, _)| {
            let (a, b) = (shown(before, key), shown(after, key));
            (a != b).then(|| format!("{key} {a} -> {b}"))
        })
        .collect()
}

/// The value of setting `key` in `limits`, for the log.
fn shown(limits: &BackfillLimits, key: &str) -> String {
    match key {
        "chunk_target_time" => format!("{:?}", limits.chunk_target_time),
        "max_rows_per_second" => format!("{:?}", limits.max_rows_per_second),
        "max_replica_lag" => format!("{:?}", limits.max_replica_lag),
        "max_replica_lag_bytes" => format!("{:?}", limits.max_replica_lag_bytes),
        "max_apply_lag" => format!("{:?}", limits.max_apply_lag),
        "max_retained_wal" => format!("{:?}", limits.max_retained_wal),
        "min_chunk_rows" => limits.min_chunk_rows.to_string(),
        "max_chunk_rows" => limits.max_chunk_rows.to_string(),
        other => unreachable!("{other} is not in KEYS"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_are_checked_and_explained() {
        assert_eq!(
            parse_assignment("max_rows_per_second=2000").unwrap(),
            ("max_rows_per_second".into(), Some("2000".into()))
        );
        assert_eq!(
            parse_assignment("chunk_target_time = default").unwrap(),
            ("chunk_target_time".into(), None)
        );
        let e = parse_assignment("chunk_target_time=fast").unwrap_err();
        assert!(e.starts_with("chunk_target_time: "), "{e}");
        assert!(e.contains("expected a duration"), "{e}");
        let e = parse_assignment("speed=3").unwrap_err();
        assert!(e.contains("unknown setting \"speed\""), "{e}");
        assert!(e.contains("max_rows_per_second"), "{e}");
        assert!(parse_assignment("max_rows_per_second").is_err());
        assert!(parse_assignment("max_apply_lag=0s").is_err());
    }

    #[test]
    fn overrides_apply_on_top_of_the_spec() {
        let base = BackfillLimits::default();
        let mut o = Overrides::new();
        o.insert("max_rows_per_second".into(), "500".into());
        o.insert("max_replica_lag".into(), "2s".into());
        o.insert("max_replica_lag_bytes".into(), "16MB".into());
        o.insert("min_chunk_rows".into(), "90000".into());
        let e = effective(&base, &o);
        assert_eq!(e.max_rows_per_second, Some(500));
        assert_eq!(e.max_replica_lag, Duration::from_secs(2));
        assert_eq!(e.max_replica_lag_bytes, Some(16 << 20));
        assert_eq!(e.min_chunk_rows, 90_000);
        assert_eq!(e.max_chunk_rows, 90_000, "min above max lifts max");
        let changes = describe_changes(&base, &e);
        assert!(
            changes
                .iter()
                .any(|c| c == "max_rows_per_second None -> Some(500)"),
            "{changes:?}"
        );
        o.insert("max_rows_per_second".into(), "none".into());
        assert_eq!(effective(&base, &o).max_rows_per_second, None);
    }
}
