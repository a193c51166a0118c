//! The watermark task: emits a watermark once a second, records lag,
//! heartbeat, backfill rates and two-way counts, and measures the slot (lag
//! bytes, retained WAL) on a session of its own, so a busy applier does not
//! delay the measurement. It also watches `[safety] max_retained_wal`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{Measured, Observed};
use crate::conninfo::ConnConfig;
use crate::spec::Spec;
use crate::{Lsn, lag, state};

/// How often a watermark is emitted (and lag and heartbeat recorded).
/// How often a watermark is emitted (and lag and heartbeat recorded).
const WATERMARK_INTERVAL: Duration = Duration::from_secs(1);

/// Emits watermarks and records lag and heartbeat, on a session of its own so
/// a busy applier does not delay the measurement.
pub(super) async fn emit_watermarks(
    config: ConnConfig,
    spec: Spec,
    observed: Observed,
    over_limit: mpsc::Sender<String>,
) {
    let name = spec.name.clone();
    let mut last_warning: Option<Instant> = None;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let pid = std::process::id() as i32;
    let mut tick = tokio::time::interval(WATERMARK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client: Option<tokio_postgres::Client> = None;
    loop {
        tick.tick().await;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            match config
                .with_application_name("walshift-lag")
                .connect_sql()
                .await
            {
                Ok(c) => client = Some(c),
                Err(e) => {
                    tracing::debug!(error = %e, "watermark session: cannot connect");
                    continue;
                }
            }
        }
        let Some(c) = client.as_ref() else { continue };
        let seq = observed.watermarks.emit(Instant::now());
        if let Err(e) = lag::emit_message(
            c,
            lag::PREFIX,
            &lag::content(&name, observed.watermarks.run(), seq),
        )
        .await
        {
            observed.watermarks.cancel(seq);
            tracing::debug!(error = %e, "cannot emit a watermark");
            continue;
        }
        let lag = observed
            .watermarks
            .lag(Instant::now())
            .map(|d| d.as_secs_f64());
        let confirmed = Lsn(observed.confirmed.load(Ordering::Acquire)).to_string();
        let progress = observed.progress.lock().expect("progress lock").clone();
        if let Err(e) = c
            .execute(
                state::RECORD_LAG,
                &[&name, &lag, &confirmed, &host, &pid, &progress.throttle],
            )
            .await
        {
            tracing::debug!(error = %e, "cannot record lag");
        }
        for m in progress.mirrors.iter().filter(|m| !m.done) {
            let _ = c
                .execute(state::RECORD_RATE, &[&name, &(m.mirror as i32), &m.rate])
                .await;
        }
        for (mirror, conflicts, keys) in observed.two_way.take() {
            let recorded = c
                .execute(
                    state::RECORD_TWO_WAY,
                    &[&name, &(mirror as i32), &(conflicts as i64), &(keys as i64)],
                )
                .await;
            if recorded.is_err() {
                observed.two_way.add(mirror, conflicts, keys);
            }
        }
        let measured = measure_slot(c, &spec, &confirmed).await;
        crate::metrics::lag(lag, measured.lag_bytes);
        if let Some(retained) = measured.retained_wal_bytes {
            crate::metrics::retained_wal(retained);
        }
        *observed.measured.lock().expect("measured lock") = measured;
        if let (Some(max), Some(retained)) =
            (spec.safety.max_retained_wal, measured.retained_wal_bytes)
        {
            if let Some(msg) = retained_wal_check(&spec, retained, max, &mut last_warning) {
                let _ = over_limit.send(msg).await;
                return;
            }
        }
    }
}

/// Lag in bytes (server WAL position minus `confirmed`, as `RECORD_LAG`
/// stores it) and the WAL walshift's slot retains; `None` where the
/// database does not answer or the slot is missing.
async fn measure_slot(c: &tokio_postgres::Client, spec: &Spec, confirmed: &str) -> Measured {
    let row = c
        .query_one(
            "SELECT greatest(pg_wal_lsn_diff(pg_current_wal_lsn(), $2::text::pg_lsn), 0)::bigint,
                    (SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::float8
                     FROM pg_replication_slots WHERE slot_name = $1)",
            &[&spec.slot_name(), &confirmed],
        )
        .await;
    match row {
        Ok(r) => Measured {
            lag_bytes: r.get(0),
            retained_wal_bytes: r.get::<_, Option<f64>>(1).map(|b| b.max(0.0) as u64),
        },
        Err(e) => {
            tracing::debug!(error = %e, "cannot measure the slot");
            Measured::default()
        }
    }
}

/// WAL safety: warns (once a minute) from 80% of `max` on; past `max` with
/// `on_max_retained_wal = "drop-slot"` returns the reason to stop.
fn retained_wal_check(
    spec: &Spec,
    retained: u64,
    max: u64,
    last_warning: &mut Option<Instant>,
) -> Option<String> {
    let human = crate::throttle::human_bytes;
    if retained > max && spec.safety.on_max_retained_wal == crate::spec::OnMaxRetainedWal::DropSlot
    {
        return Some(format!(
            "slot {} retains {} of WAL, over safety.max_retained_wal = {}: walshift stopped and dropped its slot \
             so the disk cannot fill; the backfill starts over with the next run",
            spec.slot_name(),
            human(retained),
            human(max)
        ));
    }
    if retained * 5 >= max * 4
        && last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
    {
        *last_warning = Some(Instant::now());
        tracing::warn!(
            slot = %spec.slot_name(),
            retained = %human(retained),
            max = %human(max),
            "walshift's slot retains a lot of WAL (is walshift falling behind, or stopped for long?)"
        );
    }
    None
}
