//! Prometheus metrics of `walshift run`.
//!
//! Every metric is named and described here, once ([`describe`]); the engine
//! records through the small functions below, where the data is (stream,
//! applier, backfill, watermark task, retry loop). They go through the
//! [`metrics`] facade: without an installed recorder (the demo, library
//! users, tests) they cost next to nothing and record nothing. `walshift run`
//! installs the Prometheus recorder ([`install`]) and serves its text itself
//! on `/metrics` (src/http); the exporter opens no listener of its own.
//!
//! Names follow Prometheus conventions: `walshift_` prefix, `_total` for
//! counters, base units (seconds, bytes) in the name. docs/metrics.md
//! lists them for operators.

use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::pgoutput::LogicalMessage;

/// Row changes (insert, update, delete, truncate) decoded from the stream.
pub const CHANGES_RECEIVED: &str = "walshift_changes_received_total";
/// Committed transactions received (walshift's own echoes included).
pub const TRANSACTIONS_RECEIVED: &str = "walshift_transactions_received_total";
/// Dirty keys recomputed by live batches.
pub const KEYS_APPLIED: &str = "walshift_keys_applied_total";
/// Target rows written (inserted or updated) by the applier; label `work`.
pub const ROWS_WRITTEN: &str = "walshift_rows_written_total";
/// Target rows deleted by the applier; label `work`.
pub const ROWS_DELETED: &str = "walshift_rows_deleted_total";
/// Time to apply one live batch (barrier, recompute, commit).
pub const APPLY_BATCH_SECONDS: &str = "walshift_apply_batch_duration_seconds";
/// Source rows covered by backfill chunks; label `mirror`.
pub const BACKFILL_ROWS: &str = "walshift_backfill_rows_total";
/// Backfill rate over the last 10 s; label `mirror`.
pub const BACKFILL_RATE: &str = "walshift_backfill_rows_per_second";
/// 1 while the backfill waits for this reason; label `reason`.
pub const BACKFILL_THROTTLED: &str = "walshift_backfill_throttled";
/// Watermark round trip (emit -> applied).
pub const LAG_SECONDS: &str = "walshift_lag_seconds";
/// Server WAL position minus walshift's confirmed position.
pub const LAG_BYTES: &str = "walshift_lag_bytes";
/// WAL walshift's slot keeps from being recycled.
pub const SLOT_RETAINED_WAL_BYTES: &str = "walshift_slot_retained_wal_bytes";
/// 1 while the replication stream is connected.
pub const STREAM_CONNECTED: &str = "walshift_stream_connected";
/// New sessions after a transient failure.
pub const RECONNECTS: &str = "walshift_reconnects_total";
/// Resynchronisations after the slot was lost (docs/design.md, "Lost slots").
pub const SLOT_RESYNCS: &str = "walshift_slot_resyncs_total";
/// Sessions dropped because their link went silent; label `session`.
pub const DEAD_LINKS: &str = "walshift_dead_links_total";
/// Failures by kind; label `kind`.
pub const ERRORS: &str = "walshift_errors_total";
/// counter, label `mirror`
pub const CONFLICTS: &str = "walshift_two_way_conflicts_total";
/// counter, label `mirror`
pub const REVERSE_KEYS: &str = "walshift_reverse_keys_applied_total";
/// gauge, label `mirror`
pub const CARRIED_KEYS: &str = "walshift_carried_keys";
/// gauge, label `mirror`
pub const HELD_KEYS: &str = "walshift_held_keys";

/// Every value of the `reason` label of [`BACKFILL_THROTTLED`]: the kinds of
/// [`crate::throttle::Reason`] ([`crate::throttle::Reason::kind`]).
pub const THROTTLE_REASONS: [&str; 7] = [
    "paused",
    "replica_lag",
    "replica_lag_bytes",
    "retained_wal",
    "apply_lag",
    "query",
    "rate_limit",
];

/// Values of the `kind` label of [`ERRORS`].
pub mod error_kind {
    /// A session failed transiently; walshift reconnects after a backoff.
    pub const RETRY: &str = "retry";
    /// A failure only the operator can fix; `run` stopped.
    pub const STOP: &str = "stop";
    /// `[safety] on_max_retained_wal = "drop-slot"` stopped `run`.
    pub const SAFETY_STOP: &str = "safety_stop";
    /// walshift's slot or state was removed while it ran; `run` stopped.
    pub const OBJECTS_GONE: &str = "objects_gone";
    /// A batch or chunk lost a race with the application (serialization
    /// failure, deadlock) and was run again in place.
    pub const LOST_RACE: &str = "lost_race";
    /// Every kind, in the order docs/metrics.md lists them.
    pub const ALL: [&str; 5] = [RETRY, STOP, SAFETY_STOP, OBJECTS_GONE, LOST_RACE];
}

/// Values of the `session` label of [`DEAD_LINKS`] registered at zero:
/// `walshift run`'s long-lived sessions ([`crate::net::session_label`] gives
/// the label of any session). Backfill chunks run on the apply session
/// (I3), so they count as `apply`.
pub const DEAD_LINK_SESSIONS: [&str; 5] = ["stream", "apply", "flush", "control", "lag"];

/// Values of the `work` label of [`ROWS_WRITTEN`] and [`ROWS_DELETED`].
pub const WORK_LIVE: &str = "live";
pub const WORK_BACKFILL: &str = "backfill";

/// Buckets of [`APPLY_BATCH_SECONDS`]: 1 ms to 10 s.
pub const APPLY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The recorder with walshift's buckets, not installed (tests record into it
/// through [`metrics::with_local_recorder`]).
pub fn recorder() -> metrics_exporter_prometheus::PrometheusRecorder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(APPLY_BATCH_SECONDS.to_string()),
            &APPLY_BUCKETS,
        )
        .expect("the buckets are not empty")
        .build_recorder()
}

/// Installs the Prometheus recorder for the whole process and describes
/// every metric; returns the handle that renders the text. Call once.
pub fn install() -> Result<PrometheusHandle, String> {
    let recorder = recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    describe();
    Ok(handle)
}

/// Names, units and help text of every metric; registers the counters, the
/// histogram and the throttle gauges at zero so `/metrics` lists them from
/// the start (the other gauges appear once measured).
pub fn describe() {
    describe_stream_and_apply();
    describe_backfill_and_lag();
    describe_health();
    describe_keys();
    register_at_zero();
}

/// What comes in (changes, transactions) and what the applier does with it.
fn describe_stream_and_apply() {
    describe_counter!(
        CHANGES_RECEIVED,
        Unit::Count,
        "Row changes (insert, update, delete, truncate) decoded from the replication stream."
    );
    describe_counter!(
        TRANSACTIONS_RECEIVED,
        Unit::Count,
        "Committed transactions received from the replication stream, walshift's own writes coming back included."
    );
    describe_counter!(
        KEYS_APPLIED,
        Unit::Count,
        "Dirty source keys recomputed by live batches."
    );
    describe_counter!(
        ROWS_WRITTEN,
        Unit::Count,
        "Target rows inserted or updated by the applier (work=live: live batches, work=backfill: history chunks)."
    );
    describe_counter!(
        ROWS_DELETED,
        Unit::Count,
        "Target rows deleted by the applier (work=live: live batches, work=backfill: history chunks)."
    );
    describe_histogram!(
        APPLY_BATCH_SECONDS,
        Unit::Seconds,
        "Time to apply one live batch: visibility barrier, recompute statements, commit."
    );
}

/// History's progress and throttle; lag and retained WAL.
fn describe_backfill_and_lag() {
    describe_counter!(
        BACKFILL_ROWS,
        Unit::Count,
        "Source rows covered by backfill chunks of each mirror, by this process."
    );
    describe_gauge!(
        BACKFILL_RATE,
        "Backfill rate of each mirror over the last 10 s, source rows per second (0 while throttled or paused, and once done)."
    );
    describe_gauge!(
        BACKFILL_THROTTLED,
        "1 while the backfill of history waits for this reason, else 0."
    );
    describe_gauge!(
        LAG_SECONDS,
        Unit::Seconds,
        "Watermark lag: time from emitting a message into the WAL until walshift applied everything before it."
    );
    describe_gauge!(
        LAG_BYTES,
        Unit::Bytes,
        "Server WAL position minus the position walshift confirmed."
    );
    describe_gauge!(
        SLOT_RETAINED_WAL_BYTES,
        Unit::Bytes,
        "WAL that walshift's replication slot keeps from being recycled (from its restart_lsn)."
    );
}

/// The stream's connection, reconnects, resyncs, dead links and failures.
fn describe_health() {
    describe_gauge!(
        STREAM_CONNECTED,
        "1 while walshift's replication stream is connected and streaming, else 0."
    );
    describe_counter!(
        RECONNECTS,
        Unit::Count,
        "New replication sessions started after a transient failure."
    );
    describe_counter!(
        SLOT_RESYNCS,
        Unit::Count,
        "Resynchronisations: walshift's slot was gone or invalidated, so it made a new slot and \
         recomputes every key from scratch."
    );
    describe_counter!(
        DEAD_LINKS,
        Unit::Count,
        "Sessions walshift dropped because their link went silent beyond its bound (stream: nothing \
         received for wal_sender_timeout plus the status interval; SQL sessions: a request unanswered \
         for tcp_user_timeout and the server no longer working on it), by session."
    );
    describe_counter!(
        ERRORS,
        Unit::Count,
        "Failures by kind: retry (transient, reconnecting), stop (run stopped; operator must act), \
         safety_stop (WAL safety limit), objects_gone (slot or state removed), lost_race (retried in place)."
    );
}

/// Two-way mirrors' conflicts and keys, and held keys.
fn describe_keys() {
    describe_counter!(
        CONFLICTS,
        Unit::Count,
        "Two-way mirrors: keys both application versions wrote (one shape each) before walshift \
         had reconciled the first write; the later commit won in both shapes."
    );
    describe_counter!(
        REVERSE_KEYS,
        Unit::Count,
        "Two-way mirrors: keys whose old shape was recomputed from the new one (writes of the new version)."
    );
    describe_gauge!(
        CARRIED_KEYS,
        "Two-way mirrors: keys whose recompute waits for the next transaction (the application \
         changed their row while walshift applied, or the stream is catching up)."
    );
    describe_gauge!(
        HELD_KEYS,
        "Keys whose recompute fails on their data (a mapping error, a constraint of the target): \
         held, with their error, until their row changes or `walshift ctl SPEC retry`; every \
         other key goes on. Not ready while any is held."
    );
}

/// Counters at zero, the empty histogram and the gauges that have a value
/// from the start, so `/metrics` lists them before anything happened.
fn register_at_zero() {
    for name in [
        CHANGES_RECEIVED,
        TRANSACTIONS_RECEIVED,
        KEYS_APPLIED,
        RECONNECTS,
        SLOT_RESYNCS,
    ] {
        counter!(name).absolute(0);
    }
    for work in [WORK_LIVE, WORK_BACKFILL] {
        counter!(ROWS_WRITTEN, "work" => work).absolute(0);
        counter!(ROWS_DELETED, "work" => work).absolute(0);
    }
    for kind in error_kind::ALL {
        counter!(ERRORS, "kind" => kind).absolute(0);
    }
    for session in DEAD_LINK_SESSIONS {
        counter!(DEAD_LINKS, "session" => session).absolute(0);
    }
    // Registered, so the empty histogram is listed before the first batch.
    let _ = histogram!(APPLY_BATCH_SECONDS);
    gauge!(STREAM_CONNECTED).set(0.0);
    throttle(None);
}

/// One decoded message of the stream: counts row changes and commits.
pub fn decoded(msg: &LogicalMessage) {
    match msg {
        LogicalMessage::Insert(_)
        | LogicalMessage::Update(_)
        | LogicalMessage::Delete(_)
        | LogicalMessage::Truncate(_) => counter!(CHANGES_RECEIVED).increment(1),
        LogicalMessage::Commit(_) => counter!(TRANSACTIONS_RECEIVED).increment(1),
        _ => {}
    }
}

/// Two-way mirror `mirror` (number in the spec): conflicts resolved.
pub fn conflicts(mirror: usize, n: u64) {
    counter!(CONFLICTS, "mirror" => mirror.to_string()).increment(n);
}

/// Two-way mirror `mirror`: keys whose old shape was recomputed.
pub fn reverse_keys(mirror: usize, n: u64) {
    counter!(REVERSE_KEYS, "mirror" => mirror.to_string()).increment(n);
}

/// Two-way mirrors: the keys waiting in the applier's carry, per mirror.
pub fn carried(applier: &crate::mirror::applier::Applier) {
    for (number, n) in applier.carried_counts() {
        gauge!(CARRIED_KEYS, "mirror" => number.to_string()).set(n as f64);
    }
}

/// Keys of mirror `mirror` held on their data.
pub fn held_keys(mirror: usize, n: usize) {
    gauge!(HELD_KEYS, "mirror" => mirror.to_string()).set(n as f64);
}

/// A live batch committed: its keys, rows and how long it took.
pub fn batch_applied(keys: usize, rows_written: u64, rows_deleted: u64, took: Duration) {
    counter!(KEYS_APPLIED).increment(keys as u64);
    counter!(ROWS_WRITTEN, "work" => WORK_LIVE).increment(rows_written);
    counter!(ROWS_DELETED, "work" => WORK_LIVE).increment(rows_deleted);
    histogram!(APPLY_BATCH_SECONDS).record(took.as_secs_f64());
}

/// A backfill chunk committed: the target rows it wrote and deleted.
pub fn chunk_applied(rows_written: u64, rows_deleted: u64) {
    counter!(ROWS_WRITTEN, "work" => WORK_BACKFILL).increment(rows_written);
    counter!(ROWS_DELETED, "work" => WORK_BACKFILL).increment(rows_deleted);
}

/// Backfill progress of `mirror` (its number in the spec): source rows the
/// last chunk covered, and the current rate.
pub fn backfill_progress(mirror: usize, rows: u64, rate: f64) {
    let m = mirror.to_string();
    counter!(BACKFILL_ROWS, "mirror" => m.clone()).increment(rows);
    gauge!(BACKFILL_RATE, "mirror" => m).set(rate);
}

/// The backfill rate of `mirror` alone (0 while history waits).
pub fn backfill_rate(mirror: usize, rate: f64) {
    gauge!(BACKFILL_RATE, "mirror" => mirror.to_string()).set(rate);
}

/// Which throttle reason holds the backfill (`None`: none).
pub fn throttle(kind: Option<&str>) {
    for reason in THROTTLE_REASONS {
        let on = kind == Some(reason);
        gauge!(BACKFILL_THROTTLED, "reason" => reason).set(if on { 1.0 } else { 0.0 });
    }
}

/// Lag as the watermark task measured it.
pub fn lag(seconds: Option<f64>, bytes: Option<i64>) {
    if let Some(s) = seconds {
        gauge!(LAG_SECONDS).set(s);
    }
    if let Some(b) = bytes {
        gauge!(LAG_BYTES).set(b as f64);
    }
}

/// WAL retained by walshift's slot.
pub fn retained_wal(bytes: u64) {
    gauge!(SLOT_RETAINED_WAL_BYTES).set(bytes as f64);
}

/// The replication stream came up (`true`) or ended (`false`).
pub fn stream_connected(up: bool) {
    gauge!(STREAM_CONNECTED).set(if up { 1.0 } else { 0.0 });
}

/// A new session after a transient failure.
pub fn reconnect() {
    counter!(RECONNECTS).increment(1);
}

/// The slot was lost and walshift resynchronised.
pub fn slot_resync() {
    counter!(SLOT_RESYNCS).increment(1);
}

/// A session's link was found dead and the session dropped.
pub fn dead_link(session: &'static str) {
    counter!(DEAD_LINKS, "session" => session).increment(1);
}

/// A failure of `kind` (one of [`error_kind`]).
pub fn error(kind: &'static str) {
    counter!(ERRORS, "kind" => kind).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::throttle::Reason;

    #[test]
    fn every_throttle_reason_has_a_label_value() {
        let d = Duration::from_secs(1);
        let reasons = [
            Reason::Paused,
            Reason::ReplayLag {
                standby: "s".into(),
                lag: d,
                max: d,
            },
            Reason::ReplayLagBytes {
                standby: "s".into(),
                bytes: 1,
                max: 1,
            },
            Reason::RetainedWal {
                slot: "s".into(),
                bytes: 1,
                max: 1,
            },
            Reason::ApplyLag { lag: d, max: d },
            Reason::Query {
                value: 1.0,
                max: 1.0,
            },
            Reason::RateLimit { rows_per_second: 1 },
        ];
        for r in reasons {
            assert!(THROTTLE_REASONS.contains(&r.kind()), "{} missing", r.kind());
        }
    }

    #[test]
    fn described_metrics_render_with_help_and_type() {
        let recorder = recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            batch_applied(3, 2, 1, Duration::from_millis(4));
            chunk_applied(10, 0);
            backfill_progress(1, 100, 50.0);
            throttle(Some("paused"));
            lag(Some(0.25), Some(4096));
            retained_wal(1 << 20);
            stream_connected(true);
            reconnect();
            error(error_kind::RETRY);
            dead_link("stream");
        });
        let text = handle.render();
        for name in [
            CHANGES_RECEIVED,
            TRANSACTIONS_RECEIVED,
            KEYS_APPLIED,
            ROWS_WRITTEN,
            ROWS_DELETED,
            BACKFILL_ROWS,
            BACKFILL_RATE,
            BACKFILL_THROTTLED,
            LAG_SECONDS,
            LAG_BYTES,
            SLOT_RETAINED_WAL_BYTES,
            STREAM_CONNECTED,
            RECONNECTS,
            SLOT_RESYNCS,
            DEAD_LINKS,
            ERRORS,
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
        }
        assert!(text.contains("# TYPE walshift_apply_batch_duration_seconds histogram"));
        assert!(text.contains("walshift_apply_batch_duration_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("walshift_keys_applied_total 3"), "{text}");
        assert!(text.contains("walshift_rows_written_total{work=\"backfill\"} 10"));
        assert!(text.contains("walshift_backfill_throttled{reason=\"paused\"} 1"));
        assert!(text.contains("walshift_backfill_throttled{reason=\"query\"} 0"));
        assert!(text.contains("walshift_backfill_rows_total{mirror=\"1\"} 100"));
        assert!(text.contains("walshift_errors_total{kind=\"retry\"} 1"));
        assert!(text.contains("walshift_dead_links_total{session=\"stream\"} 1"));
        assert!(text.contains("walshift_dead_links_total{session=\"apply\"} 0"));
    }
}
