//! A key the applier cannot write is isolated, and the rest goes on.
//!
//! ```text
//!  statement for keys K (or a key range) in a savepoint
//!    ok ─────────────▶ next
//!    fails on a row ─▶ roll back to the savepoint, split K in halves, again
//!                      ... until the key is alone: it comes back with why
//!      Later:  its row changed after the snapshot (two-way): carried
//!      Data:   its data fails the mapping or the target's constraints:
//!              held, with the error, until its row changes or `ctl retry`
//! ```
//!
//! Splitting costs a statement per halving for each failing key (about
//! log2 of the batch), and nothing when nothing fails: the first attempt is
//! the whole batch, as without isolation.

use std::collections::{HashMap, HashSet};

use tokio_postgres::Client;
use tokio_postgres::types::Type;

use super::super::bind::Args;
use super::super::pipeline;
use super::super::sql::{self, Scope};
use super::super::txn::{Dir, Key};
use super::{
    Applier, ApplyError, ApplyStats, Batch, PreparedMirror, Step, Wrote, bound_step,
    in_transaction, mirror_err, position_steps, simple,
};
use crate::catalog::{MirrorKind, MirrorPlan};
use crate::error_policy::{self, Action};
use crate::state::keys::{
    KEYS_FORGET_HELD, KEYS_HELD, KeyKind, keys_forget, keys_hold, keys_store,
};

/// A key whose recompute fails on its data, as the applier holds it (and
/// `walshift.keys` stores it, kind `held`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldKey {
    /// The direction that failed (forward for one-way mirrors).
    pub dir: Dir,
    pub sqlstate: String,
    pub message: String,
}

/// The held keys of the spec, per mirror.
pub(super) async fn load_held(
    client: &Client,
    spec_name: &str,
    plans: &[MirrorPlan],
) -> Result<Vec<HashMap<Key, HeldKey>>, ApplyError> {
    let mut held = vec![HashMap::new(); plans.len()];
    // Unprepared: a prepared statement's Close would travel later, on its
    // own, and cost a round trip of the first batch.
    let rows = client
        .query_typed(KEYS_HELD, &[(&spec_name, Type::TEXT)])
        .await
        .map_err(ApplyError::session)?;
    for row in rows {
        let mirror: i32 = row.get(0);
        let key: Vec<String> = row.get(1);
        let (Some(i), Some(dir)) = (
            plans.iter().position(|p| p.number as i32 == mirror),
            Dir::from_code(row.get(2)),
        ) else {
            continue;
        };
        held[i].insert(
            key.into_iter().map(Into::into).collect(),
            HeldKey {
                dir,
                sqlstate: row.get(3),
                message: row.get(4),
            },
        );
    }
    Ok(held)
}

/// What a transaction changes in one mirror's held keys.
#[derive(Debug, Default)]
pub(super) struct Holding {
    /// Keys that failed on their data now.
    pub hold: Vec<(Key, HeldKey)>,
    /// Held keys that were tried and written.
    pub recovered: Vec<Key>,
    /// The source was truncated: every held key that is not held again is
    /// gone with its row.
    pub forget_all: bool,
}

impl Holding {
    pub fn is_empty(&self) -> bool {
        self.hold.is_empty() && self.recovered.is_empty() && !self.forget_all
    }
}

/// How many held keys a log line names.
const NAMED_IN_LOG: usize = 10;

/// A lost race in a transaction that cannot carry a key: it runs again.
fn lost_race() -> ApplyError {
    ApplyError::Session {
        message: "a statement lost a race with the application (deadlock)".into(),
        action: Action::Retry,
        sqlstate: Some("40P01".into()),
    }
}

/// Why a key could not be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Lost {
    /// Its row changed after the transaction's snapshot, or it deadlocked
    /// with the application: decided again in the next transaction.
    Later,
    /// Its data: the error Postgres gave for it.
    Data { sqlstate: String, message: String },
}

impl Lost {
    /// Why `e` is about one key, if it is.
    pub(super) fn of(e: &ApplyError) -> Option<Lost> {
        if e.retry_in_place() {
            return Some(Lost::Later);
        }
        match e {
            ApplyError::Mirror {
                sqlstate: Some(code),
                message,
                ..
            } if error_policy::is_about_the_row(code)
                && !crate::mirror::plant::active(crate::mirror::plant::Plant::NoIsolation) =>
            {
                Some(Lost::Data {
                    sqlstate: code.clone(),
                    message: message.clone(),
                })
            }
            _ => None,
        }
    }
}

/// Whether `e` is about one key's data.
pub(super) fn about_the_row(e: &ApplyError) -> bool {
    matches!(Lost::of(e), Some(Lost::Data { .. }))
}

impl Applier {
    /// Runs `step` in a savepoint: a failure leaves the transaction as it
    /// was before it, so the caller may split the work and go on.
    pub(super) async fn guarded<'a>(&'a self, step: Step<'a>) -> Result<Wrote, ApplyError> {
        let c = &self.client;
        let steps = vec![
            simple(c, "SAVEPOINT walshift_keys"),
            step,
            simple(c, "RELEASE SAVEPOINT walshift_keys"),
        ];
        match pipeline::in_order(steps).await {
            Ok(mut wrote) => Ok(wrote.swap_remove(1)),
            Err(failed) => {
                c.batch_execute(
                    "ROLLBACK TO SAVEPOINT walshift_keys; RELEASE SAVEPOINT walshift_keys",
                )
                .await
                .map_err(ApplyError::session)?;
                Err(failed.error)
            }
        }
    }

    /// One direction of mirror `m` for `keys`, split in halves around the
    /// keys it cannot write until each such key is alone: those come back,
    /// with why ([`Lost`]); any other failure is the caller's.
    pub(super) async fn keyed(
        &self,
        m: &PreparedMirror,
        dir: Dir,
        keys: Vec<Key>,
    ) -> Result<(Wrote, Vec<(Key, Lost)>), ApplyError> {
        let mut total = Wrote::default();
        let mut lost = Vec::new();
        let mut parts = vec![keys];
        while let Some(part) = parts.pop() {
            if part.is_empty() {
                continue;
            }
            match self.guarded(keyed_step(&self.client, m, dir, &part)).await {
                Ok(w) => {
                    total.written += w.written;
                    total.deleted += w.deleted;
                }
                Err(e) if let Some(why) = Lost::of(&e) => {
                    if part.len() == 1 {
                        tracing::debug!(mirror = m.plan.number, key = %part[0].join(","), ?dir, error = %e, "isolated");
                        let key = part.into_iter().next().expect("one key");
                        lost.push((key, why));
                    } else {
                        let mut part = part;
                        let second = part.split_off(part.len() / 2);
                        parts.push(second);
                        parts.push(part);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok((total, lost))
    }

    /// Mirror `m` forward over `(lower, upper]` (holding `rows` source rows),
    /// leaving `excluded` keys alone, split around the rows it cannot write
    /// until each is alone; those come back with why.
    pub(super) async fn ranged(
        &self,
        m: &PreparedMirror,
        excluded: Option<&sql::Excluded>,
        lower: Option<Vec<String>>,
        upper: Option<Vec<String>>,
        rows: i64,
    ) -> Result<(Wrote, Vec<(Key, Lost)>), ApplyError> {
        let c = &self.client;
        let mut total = Wrote::default();
        let mut lost = Vec::new();
        let mut parts: Vec<Part> = vec![(lower, upper, rows)];
        while let Some((lo, hi, n)) = parts.pop() {
            if n <= 0 {
                continue;
            }
            match self
                .guarded(excluded_range(c, m, excluded, lo.clone(), hi.clone()))
                .await
            {
                Ok(w) => {
                    total.written += w.written;
                    total.deleted += w.deleted;
                }
                Err(e) => {
                    let Some(why) = Lost::of(&e) else {
                        return Err(e);
                    };
                    let half = (n / 2).max(1);
                    let mid = bound_step(c, m, lo.as_deref(), half)
                        .await?
                        .upper_key(&m.plan);
                    match mid {
                        Some(mid) if n > 1 => {
                            parts.push((Some(mid.clone()), hi, n - half));
                            parts.push((lo, Some(mid), half));
                        }
                        // One row left: its key comes back.
                        Some(key) => {
                            tracing::debug!(mirror = m.plan.number, key = %key.join(","), error = %e, "isolated");
                            lost.push((key.into_iter().map(Into::into).collect(), why));
                        }
                        None => return Err(e),
                    }
                }
            }
        }
        Ok((total, lost))
    }
}

impl Applier {
    /// Whether mirror `i` holds keys.
    pub(super) fn holds(&self, i: usize) -> bool {
        !self.held[i].is_empty()
    }

    /// The exclusion of mirror `i`'s listed keys (held, and for two-way
    /// mirrors carried and marked) from a range statement, when it has any
    /// held key; two-way callers exclude always.
    pub(super) fn excluded(&self, i: usize) -> sql::Excluded {
        sql::Excluded {
            spec: self.spec_name.clone(),
            mirror: self.mirrors[i].plan.number,
        }
    }

    /// Whether a key of `batch` is held: its row changed, so it is tried
    /// again (and forgotten if it now succeeds).
    pub(super) fn batch_touches_held(&self, batch: &Batch) -> bool {
        self.held.iter().zip(&batch.mirrors).any(|(held, keys)| {
            !held.is_empty()
                && (keys.truncated
                    || keys.keys.iter().any(|k| held.contains_key(k))
                    || keys.dirs.keys().any(|k| held.contains_key(k)))
        })
    }

    /// Splits what [`Applier::keyed`] or [`Applier::ranged`] lost in
    /// direction `dir` of mirror `i` into keys lost to a later write and
    /// the mirror's [`Holding`]: keys failing on their data, and held keys
    /// among `tried` that now succeeded.
    pub(super) fn sort_lost<'k>(
        &self,
        i: usize,
        dir: Dir,
        tried: impl Iterator<Item = &'k Key>,
        lost: Vec<(Key, Lost)>,
        holding: &mut Holding,
    ) -> Vec<Key> {
        let mut later = Vec::new();
        for (key, why) in lost {
            match why {
                Lost::Later => later.push(key),
                Lost::Data { sqlstate, message } => holding.hold.push((
                    key,
                    HeldKey {
                        dir,
                        sqlstate,
                        message,
                    },
                )),
            }
        }
        if !self.held[i].is_empty() {
            let failing: HashSet<&Key> = holding
                .hold
                .iter()
                .map(|(k, _)| k)
                .chain(later.iter())
                .collect();
            let recovered: Vec<Key> = tried
                .filter(|k| self.held[i].contains_key(*k) && !failing.contains(k))
                .cloned()
                .collect();
            holding.recovered.extend(recovered);
        }
        later
    }

    /// The writes of `walshift.keys` that go with the transaction: keys
    /// held, keys recovered.
    pub(super) fn holding_steps<'a>(&'a self, holdings: &'a [Holding]) -> Vec<Step<'a>> {
        let c = &self.client;
        let mut steps: Vec<Step<'a>> = Vec::new();
        for (m, h) in self.mirrors.iter().zip(holdings) {
            if h.forget_all {
                steps.push(Box::pin(async move {
                    let mirror = m.plan.number as i32;
                    c.execute_typed(
                        KEYS_FORGET_HELD,
                        &[(&self.spec_name, Type::TEXT), (&mirror, Type::INT4)],
                    )
                    .await
                    .map_err(ApplyError::session)?;
                    Ok(Wrote::default())
                }));
            } else if !h.recovered.is_empty() {
                steps.push(forget_keys(
                    c,
                    &self.spec_name,
                    m,
                    KeyKind::Held,
                    &h.recovered,
                ));
            }
            if !h.hold.is_empty() {
                steps.push(hold_keys(c, &self.spec_name, m, &h.hold));
            }
        }
        steps
    }

    /// After the transaction committed: the held keys in memory, a log line
    /// naming the keys held and recovered, the gauges.
    pub(super) fn held_after(&mut self, holdings: Vec<Holding>) {
        for (i, h) in holdings.into_iter().enumerate() {
            if h.is_empty() {
                continue;
            }
            let label = self.mirrors[i].label.clone();
            let held = &mut self.held[i];
            if h.forget_all {
                held.clear();
            }
            for k in &h.recovered {
                held.remove(k);
            }
            if !h.recovered.is_empty() {
                tracing::info!(
                    mirror = %label,
                    keys = %name_keys(h.recovered.iter()),
                    "held keys mirrored: their rows no longer fail"
                );
            }
            let mut new = Vec::new();
            for (k, why) in h.hold {
                if held.get(&k) != Some(&why) {
                    new.push((k.clone(), why.clone()));
                }
                held.insert(k, why);
            }
            if !new.is_empty() {
                let first = &new[0].1;
                tracing::warn!(
                    mirror = %label,
                    held = new.len(),
                    keys = %name_keys(new.iter().map(|(k, _)| k)),
                    sqlstate = %first.sqlstate,
                    error = %first.message,
                    "keys held: their rows fail the mapping or the target's constraints; every \
                     other key goes on. Fix the rows (a held key is tried again when its row \
                     changes) or the spec, or run `walshift ctl SPEC retry`"
                );
            }
        }
        self.publish_held();
    }

    /// The held-key gauges (metrics and the run's own count).
    pub(super) fn publish_held(&self) {
        let mut total = 0;
        for (m, held) in self.mirrors.iter().zip(&self.held) {
            crate::metrics::held_keys(m.plan.number, held.len());
            total += held.len();
        }
        self.held_total
            .store(total, std::sync::atomic::Ordering::Release);
    }

    /// Held keys: (mirror number, count) per mirror.
    pub fn held_counts(&self) -> Vec<(usize, usize)> {
        self.mirrors
            .iter()
            .zip(&self.held)
            .map(|(m, h)| (m.plan.number, h.len()))
            .collect()
    }

    /// A one-way batch, key by key where it must be: each mirror's keys
    /// in a savepoint, split around the keys that fail on their data, which
    /// are held; held keys of the batch that now succeed are forgotten.
    /// The position is recorded when `position`.
    pub(super) async fn apply_isolating(
        &mut self,
        batch: &Batch,
        position: bool,
    ) -> Result<ApplyStats, ApplyError> {
        let c = &self.client;
        let mut stats = ApplyStats::default();
        c.batch_execute("BEGIN")
            .await
            .map_err(ApplyError::session)?;
        let attempt = async {
            let mut holdings = Vec::with_capacity(self.mirrors.len());
            for (i, (m, work)) in self.mirrors.iter().zip(&batch.mirrors).enumerate() {
                let mut h = Holding::default();
                if !work.keys.is_empty() && !work.overflowed {
                    let keys: Vec<Key> = work.keys.iter().cloned().collect();
                    let (wrote, lost) = self.keyed(m, Dir::Forward, keys).await?;
                    stats.keys += work.keys.len() - lost.len();
                    stats.add(vec![wrote]);
                    let later = self.sort_lost(i, Dir::Forward, work.keys.iter(), lost, &mut h);
                    if !later.is_empty() {
                        return Err(lost_race());
                    }
                }
                if work.truncated {
                    if let Some((stmt, params)) = &m.truncate {
                        let none = Args::default();
                        let n = c.execute(stmt, &none.bind(params)).await;
                        stats.rows_deleted += n.map_err(|e| mirror_err(&m.label, e))?;
                    }
                    h.forget_all = true;
                }
                holdings.push(h);
            }
            Ok(holdings)
        }
        .await;
        let holdings = match attempt {
            Ok(h) => h,
            Err(e) => {
                let _ = c.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        };
        let mut steps = self.holding_steps(&holdings);
        if position {
            steps.extend(position_steps(c, &self.positions, &self.spec_name, batch));
        }
        steps.push(simple(c, "COMMIT"));
        in_transaction(c, steps).await?;
        self.held_after(holdings);
        Ok(stats)
    }

    /// Mirror `i` over the `rows` source rows after `lower`, in a
    /// REPEATABLE READ transaction the caller has open (so the counts the
    /// splitting relies on hold for every statement), leaving `excluded`
    /// keys alone. Returns the range's upper key (`None`: to the end), the
    /// rows it covered, what it wrote and the keys it lost.
    pub(super) async fn isolated_range(
        &self,
        i: usize,
        excluded: Option<&sql::Excluded>,
        lower: Option<&[String]>,
        rows: i64,
    ) -> Result<(Option<Vec<String>>, i64, Wrote, Vec<(Key, Lost)>), ApplyError> {
        let m = &self.mirrors[i];
        let upper = bound_step(&self.client, m, lower, rows)
            .await?
            .upper_key(&m.plan);
        let covered = match upper {
            Some(_) => rows.max(1),
            None => self.count_after(m, lower).await?,
        };
        let (wrote, lost) = self
            .ranged(
                m,
                excluded,
                lower.map(<[String]>::to_vec),
                upper.clone(),
                covered,
            )
            .await?;
        Ok((upper, covered, wrote, lost))
    }

    /// Source rows of mirror `m` after `lower` (the last chunk's size).
    pub(super) async fn count_after(
        &self,
        m: &PreparedMirror,
        lower: Option<&[String]>,
    ) -> Result<i64, ApplyError> {
        let count = sql::range_count(&m.plan.source, &m.plan.key, lower.is_some());
        let args = Args {
            lower,
            ..Default::default()
        };
        Ok(self
            .client
            .query_typed_one(&count.sql, &args.bind_typed(&count.params))
            .await
            .map_err(|e| mirror_err(&m.label, e))?
            .get::<_, i64>(0))
    }
}

/// `(1) (2, x) ...`: the first keys, and how many more.
pub(super) fn name_keys<'k>(keys: impl Iterator<Item = &'k Key>) -> String {
    let mut out = Vec::new();
    let mut more = 0usize;
    for k in keys {
        if out.len() < NAMED_IN_LOG {
            out.push(format!("({})", k.join(", ")));
        } else {
            more += 1;
        }
    }
    if more > 0 {
        out.push(format!("and {more} more"));
    }
    out.join(" ")
}

/// A part of a range: lower bound, upper bound, rows in between.
type Part = (Option<Vec<String>>, Option<Vec<String>>, i64);

/// Holds `keys` of mirror `m` with their errors.
pub(super) fn hold_keys<'a>(
    c: &'a Client,
    spec_name: &'a str,
    m: &'a PreparedMirror,
    keys: &[(Key, HeldKey)],
) -> Step<'a> {
    let n = m.plan.key.len();
    let dirs: Vec<String> = keys.iter().map(|(_, h)| h.dir.code().to_string()).collect();
    let codes: Vec<String> = keys.iter().map(|(_, h)| h.sqlstate.clone()).collect();
    let errors: Vec<String> = keys.iter().map(|(_, h)| h.message.clone()).collect();
    let columns: Vec<Vec<String>> = (0..n)
        .map(|c| keys.iter().map(|(k, _)| k[c].to_string()).collect())
        .collect();
    Box::pin(async move {
        let mirror = m.plan.number as i32;
        let mut params: Vec<(&(dyn tokio_postgres::types::ToSql + Sync), Type)> = vec![
            (&spec_name, Type::TEXT),
            (&mirror, Type::INT4),
            (&dirs, Type::TEXT_ARRAY),
            (&codes, Type::TEXT_ARRAY),
            (&errors, Type::TEXT_ARRAY),
        ];
        for col in &columns {
            params.push((col, Type::TEXT_ARRAY));
        }
        c.execute_typed(&keys_hold(n), &params)
            .await
            .map_err(ApplyError::session)?;
        Ok(Wrote::default())
    })
}

/// Mirror `m` forward over `(lower, upper]`, leaving `excluded` keys alone.
pub(super) fn excluded_range<'a>(
    c: &'a Client,
    m: &'a PreparedMirror,
    excluded: Option<&'a sql::Excluded>,
    lower: Option<Vec<String>>,
    upper: Option<Vec<String>>,
) -> Step<'a> {
    Box::pin(async move {
        let scope = Scope::Range {
            lower: lower.is_some(),
            upper: upper.is_some(),
        };
        let args = Args {
            lower: lower.as_deref(),
            upper: upper.as_deref(),
            ..Default::default()
        };
        let err = |e| mirror_err(&m.label, e);
        match &m.plan.kind {
            MirrorKind::Set(p) => {
                let s = sql::set_apply_excluding(p, scope, excluded);
                let n = c.execute_typed(&s.sql, &args.bind_typed(&s.params)).await;
                Ok(Wrote::set(n.map_err(err)?))
            }
            MirrorKind::Rows(p) => {
                let s = sql::rows_apply_excluding(p, scope, excluded);
                let row = c.query_typed_one(&s.sql, &args.bind_typed(&s.params)).await;
                Ok(Wrote::rows(&row.map_err(err)?))
            }
        }
    })
}

/// The statement of mirror `m` in direction `dir` for `keys`.
pub(super) fn keyed_step<'a>(
    c: &'a Client,
    m: &'a PreparedMirror,
    dir: Dir,
    keys: &[Key],
) -> Step<'a> {
    let keys: Vec<Key> = keys.to_vec();
    Box::pin(async move {
        let refs: Vec<&Key> = keys.iter().collect();
        let args = Args::engine_keys(&refs, m.plan.key.len());
        let err = |e| mirror_err(&m.label, e);
        let (statement, params, rows) = match (dir, &m.reverse) {
            (Dir::Reverse, Some(r)) => (&r.statement, &r.params, r.rows),
            _ => (
                &m.keys,
                &m.keys_params,
                matches!(m.plan.kind, MirrorKind::Rows(_)),
            ),
        };
        let params = args.bind(params);
        if rows {
            Ok(Wrote::rows(
                &c.query_one(statement, &params).await.map_err(err)?,
            ))
        } else {
            Ok(Wrote::set(
                c.execute(statement, &params).await.map_err(err)?,
            ))
        }
    })
}

/// A whole-table statement of mirror `m` (no parameters).
pub(super) fn range<'a>(
    c: &'a Client,
    m: &'a PreparedMirror,
    s: &'a sql::Statement,
    rows: bool,
) -> Step<'a> {
    Box::pin(async move {
        let err = |e| mirror_err(&m.label, e);
        if rows {
            Ok(Wrote::rows(
                &c.query_typed_one(&s.sql, &[]).await.map_err(err)?,
            ))
        } else {
            Ok(Wrote::set(c.execute_typed(&s.sql, &[]).await.map_err(err)?))
        }
    })
}

/// Stores `keys` of mirror `m` in the key table.
pub(super) fn store_keys<'a>(
    c: &'a Client,
    spec_name: &'a str,
    m: &'a PreparedMirror,
    kind: KeyKind,
    keys: &[(Key, Dir)],
) -> Step<'a> {
    let n = m.plan.key.len();
    // A key listed twice (carried by the batch and lost again in a chunk) would have the
    // INSERT's ON CONFLICT DO UPDATE touch its row twice, which PostgreSQL refuses (21000,
    // seen as a failed backfill chunk on 14): the last direction wins, as it does in the
    // applier's own map of carried keys.
    let keys = last_per_key(keys);
    let dirs: Vec<String> = keys.iter().map(|(_, d)| d.code().to_string()).collect();
    let columns: Vec<Vec<String>> = (0..n)
        .map(|c| keys.iter().map(|(k, _)| k[c].to_string()).collect())
        .collect();
    Box::pin(async move {
        let mirror = m.plan.number as i32;
        let mut params: Vec<(&(dyn tokio_postgres::types::ToSql + Sync), Type)> = vec![
            (&spec_name, Type::TEXT),
            (&mirror, Type::INT4),
            (&dirs, Type::TEXT_ARRAY),
        ];
        for col in &columns {
            params.push((col, Type::TEXT_ARRAY));
        }
        c.execute_typed(&keys_store(kind, n), &params)
            .await
            .map_err(ApplyError::session)?;
        Ok(Wrote::default())
    })
}

/// Each key of `keys` once, with its last direction, in the order of those last entries.
fn last_per_key(keys: &[(Key, Dir)]) -> Vec<&(Key, Dir)> {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<&(Key, Dir)> = keys.iter().rev().filter(|(k, _)| seen.insert(k)).collect();
    out.reverse();
    out
}

#[cfg(test)]
#[test]
fn a_key_listed_twice_is_stored_once_with_its_last_direction() {
    let k = |s: &str| -> Key { vec![Box::<str>::from(s)].into_boxed_slice() };
    let keys = [
        (k("1"), Dir::Forward),
        (k("2"), Dir::Forward),
        (k("1"), Dir::Reverse),
    ];
    let once: Vec<_> = last_per_key(&keys).into_iter().cloned().collect();
    assert_eq!(once, vec![(k("2"), Dir::Forward), (k("1"), Dir::Reverse)]);
}

/// Forgets `keys` of mirror `m` of kind `kind`.
pub(super) fn forget_keys<'a>(
    c: &'a Client,
    spec_name: &'a str,
    m: &'a PreparedMirror,
    kind: KeyKind,
    keys: &[Key],
) -> Step<'a> {
    let n = m.plan.key.len();
    let columns: Vec<Vec<String>> = (0..n)
        .map(|c| keys.iter().map(|k| k[c].to_string()).collect())
        .collect();
    Box::pin(async move {
        let mirror = m.plan.number as i32;
        let mut params: Vec<(&(dyn tokio_postgres::types::ToSql + Sync), Type)> =
            vec![(&spec_name, Type::TEXT), (&mirror, Type::INT4)];
        for col in &columns {
            params.push((col, Type::TEXT_ARRAY));
        }
        c.execute_typed(&keys_forget(kind, n), &params)
            .await
            .map_err(ApplyError::session)?;
        Ok(Wrote::default())
    })
}
