//! Validation of the spec's own shape: raw TOML values in, a [`Spec`] or a
//! list of [`FieldProblem`]s out, each naming the field and what to do.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::raw::{
    RawBackfill, RawColumns, RawCutover, RawDepends, RawGate, RawMirror, RawSafety, RawSpec,
};
use super::units::{parse_duration, parse_size};
use super::{
    BackfillLimits, Cutover, Depends, FieldProblem, Gate, MAX_NAME_LEN, Mirror, MirrorMode,
    OnMaxRetainedWal, OnSlotLost, Reverse, Safety, Spec, ThrottleQuery,
};
use crate::ident::{self, QualifiedName};

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Collects every problem rather than stopping at the first: an operator
/// fixing a spec wants the whole list in one run.
pub(super) struct Checker<'a> {
    pub(super) text: &'a str,
    pub(super) problems: Vec<FieldProblem>,
}

impl Checker<'_> {
    pub(super) fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let at = Some(line_column(self.text, span.start));
        self.problems.push(FieldProblem {
            at,
            message: message.into(),
        });
    }

    pub(super) fn nowhere(&mut self, message: impl Into<String>) {
        self.problems.push(FieldProblem {
            at: None,
            message: message.into(),
        });
    }

    pub(super) fn spec(&mut self, raw: RawSpec, file: &str) -> Option<Spec> {
        let name = self.name(raw.name);
        if raw.mirror.is_empty() {
            self.nowhere(
                "no [[mirror]]: add at least one, with source and either set = { column = \"expression\" } \
                 or target, owner and select",
            );
        }
        let mirrors: Vec<Option<Mirror>> = raw
            .mirror
            .into_iter()
            .enumerate()
            .map(|(i, m)| self.mirror(i + 1, m))
            .collect();
        let backfill = self.backfill(raw.backfill.unwrap_or_default());
        let gates = self.gates(raw.gate);
        let cutover = self.cutover(raw.cutover.unwrap_or_default());
        let safety = self.safety(raw.safety.unwrap_or_default());
        let mirrors: Vec<Mirror> = mirrors.into_iter().flatten().collect();
        self.across_mirrors(&mirrors);
        Some(Spec {
            file: file.to_string(),
            name: name?,
            mirrors,
            backfill: backfill?,
            gates: gates?,
            cutover: cutover?,
            safety: safety?,
        })
    }

    fn safety(&mut self, raw: RawSafety) -> Option<Safety> {
        let max_retained_wal = self.size("safety.max_retained_wal", raw.max_retained_wal);
        let on = match raw.on_max_retained_wal {
            None => Some(OnMaxRetainedWal::Warn),
            Some(v) => match v.get_ref().as_str() {
                "warn" => Some(OnMaxRetainedWal::Warn),
                "drop-slot" => Some(OnMaxRetainedWal::DropSlot),
                other => {
                    self.at(
                        v.span(),
                        format!(
                            "safety.on_max_retained_wal: {other:?} is not an action; use \"warn\" or \"drop-slot\""
                        ),
                    );
                    None
                }
            },
        };
        let on_slot_lost = match raw.on_slot_lost {
            None => Some(OnSlotLost::Resync),
            Some(v) => match v.get_ref().as_str() {
                "resync" => Some(OnSlotLost::Resync),
                "stop" => Some(OnSlotLost::Stop),
                other => {
                    self.at(
                        v.span(),
                        format!(
                            "safety.on_slot_lost: {other:?} is not an action; use \"resync\" or \"stop\""
                        ),
                    );
                    None
                }
            },
        };
        Some(Safety {
            max_retained_wal: max_retained_wal?,
            on_max_retained_wal: on?,
            on_slot_lost: on_slot_lost?,
        })
    }

    fn name(&mut self, raw: Option<Spanned<String>>) -> Option<String> {
        let Some(raw) = raw else {
            self.nowhere(
                "name: missing; add e.g. name = \"users-status\" (it names walshift's slot, \
                 publication and origin)",
            );
            return None;
        };
        let name = raw.get_ref();
        let valid_chars = name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if name.is_empty() || name.chars().count() > MAX_NAME_LEN || !valid_chars {
            self.at(
                raw.span(),
                format!(
                    "name: {name:?} must be 1-{MAX_NAME_LEN} characters of a-z, 0-9, _ and - \
                     (it names the replication slot walshift_<name>)"
                ),
            );
            return None;
        }
        Some(raw.into_inner())
    }

    fn mirror(&mut self, number: usize, raw: Spanned<RawMirror>) -> Option<Mirror> {
        let span = raw.span();
        let line = line_column(self.text, span.start).0;
        let raw = raw.into_inner();
        let label = match &raw.source {
            Some(source) => format!("mirror #{number} ({})", source.get_ref()),
            None => format!("mirror #{number}"),
        };
        let source = match &raw.source {
            Some(source) => self.table(&label, "source", source),
            None => {
                self.at(
                    span.clone(),
                    format!("{label}: source is missing; add e.g. source = \"public.users\""),
                );
                None
            }
        };
        let key = raw
            .key
            .as_ref()
            .and_then(|key| self.columns(&label, "key", key));
        let rows_fields = raw.target.is_some() || raw.owner.is_some() || raw.select.is_some();
        let mode = match (raw.set, rows_fields) {
            (Some(set), false) => self.set_mode(&label, set, key.as_deref()),
            (None, true) => self.rows_mode(&label, span, raw.target, raw.owner, raw.select, &key),
            (Some(set), true) => {
                self.at(
                    set.span(),
                    format!(
                        "{label}: set and target/owner/select are two different modes; \
                         keep set for new columns of the source, or target, owner and select \
                         for a new table"
                    ),
                );
                None
            }
            (None, false) => {
                self.at(
                    span,
                    format!(
                        "{label}: nothing to mirror; add set = {{ column = \"expression\" }} \
                         (new columns of the source) or target, owner and select (a new table)"
                    ),
                );
                None
            }
        };
        let reverse = self.reverse(
            &label,
            (raw.reverse, raw.reverse_select),
            mode.as_ref(),
            key.as_deref(),
        );
        let depends = self.depends(&label, raw.depends, source.as_ref());
        Some(Mirror {
            number,
            line,
            source: source?,
            key: match (raw.key, key) {
                (None, _) => None,
                (Some(_), key) => Some(key?),
            },
            mode: mode?,
            reverse: reverse?,
            depends: depends?,
        })
    }

    /// `depends`: distinct tables other than the source, each with columns.
    fn depends(
        &mut self,
        label: &str,
        raw: Option<Spanned<Vec<Spanned<RawDepends>>>>,
        source: Option<&QualifiedName>,
    ) -> Option<Vec<Depends>> {
        let Some(raw) = raw else {
            return Some(Vec::new());
        };
        let mut out: Vec<Depends> = Vec::new();
        let mut ok = true;
        for (i, entry) in raw.into_inner().into_iter().enumerate() {
            let span = entry.span();
            let entry = entry.into_inner();
            let field = format!("depends[{i}]");
            let table = match &entry.table {
                Some(t) => self.table(label, &format!("{field}.table"), t),
                None => {
                    self.at(
                        span.clone(),
                        format!(
                            "{label}: {field}: table is missing; write {{ table = \"public.users\", \
                             columns = [\"user_id\"] }}"
                        ),
                    );
                    None
                }
            };
            let columns = match &entry.columns {
                Some(c) => self.columns(label, &format!("{field}.columns"), c),
                None => {
                    self.at(
                        span.clone(),
                        format!(
                            "{label}: {field}: columns is missing; list the source columns that \
                             hold the key of the table it reads, e.g. columns = [\"user_id\"]"
                        ),
                    );
                    None
                }
            };
            let (Some(table), Some(columns)) = (table, columns) else {
                ok = false;
                continue;
            };
            if Some(&table) == source {
                self.at(
                    span,
                    format!(
                        "{label}: {field}: {table} is the source itself; a change to the source \
                         already makes its row dirty, so leave it out"
                    ),
                );
                ok = false;
                continue;
            }
            if out.iter().any(|d| d.table == table) {
                self.at(
                    span,
                    format!("{label}: {field}: {table} is listed twice; keep one entry per table"),
                );
                ok = false;
                continue;
            }
            out.push(Depends { table, columns });
        }
        ok.then_some(out)
    }

    /// `reverse` or `reverse_select`: the way back of a two-way mirror.
    /// `Some(None)` for a one-way mirror, `None` on a problem.
    fn reverse(
        &mut self,
        label: &str,
        (columns, select): (Option<RawColumns>, Option<Spanned<String>>),
        mode: Option<&MirrorMode>,
        key: Option<&[String]>,
    ) -> Option<Option<Reverse>> {
        match (columns, select) {
            (None, None) => Some(None),
            (Some(_), Some(select)) => {
                self.at(
                    select.span(),
                    format!(
                        "{label}: reverse and reverse_select are two ways back; keep reverse for \
                         columns of the source computed from the new shape, or reverse_select for \
                         source rows computed from target rows (a table split)"
                    ),
                );
                None
            }
            (None, Some(select)) => {
                if let Some(MirrorMode::Set { .. }) = mode {
                    self.at(
                        select.span(),
                        format!(
                            "{label}: reverse_select is for rows mode (a new table); in set mode \
                             write reverse = {{ old_column = \"expression of the new columns\" }}"
                        ),
                    );
                    return None;
                }
                let select = self.sql(label, "reverse_select", &select)?;
                Some(Some(Reverse::Rows { select }))
            }
            (Some(columns), None) => {
                if columns.get_ref().is_empty() {
                    self.at(
                        columns.span(),
                        format!(
                            "{label}: reverse is empty; add old_column = \"expression\" pairs, or \
                             remove it for a one-way mirror"
                        ),
                    );
                    return None;
                }
                let mut out = Vec::new();
                let mut seen = BTreeMap::new();
                let mut ok = true;
                for (column, expr) in columns.into_inner() {
                    let field = format!("reverse.{}", column.get_ref());
                    let name = self.identifier(label, &field, &column);
                    let expr = self.sql(label, &field, &expr);
                    let (Some(name), Some(expr)) = (name, expr) else {
                        ok = false;
                        continue;
                    };
                    if key.is_some_and(|key| key.contains(&name)) {
                        self.at(
                            column.span(),
                            format!(
                                "{label}: {field} writes a key column; the key identifies the row \
                                 in both shapes, so neither direction may compute it"
                            ),
                        );
                        ok = false;
                    }
                    if let Some(MirrorMode::Set { columns: set }) = mode
                        && set.iter().any(|(c, _)| *c == name)
                    {
                        self.at(
                            column.span(),
                            format!(
                                "{label}: {field} is also in set; a column belongs to one shape: \
                                 set computes the new columns, reverse the old ones"
                            ),
                        );
                        ok = false;
                    }
                    if let Some(other) = seen.insert(name.clone(), column.get_ref().clone()) {
                        self.at(
                            column.span(),
                            format!(
                                "{label}: {field} and reverse.{other} name the same column; keep one"
                            ),
                        );
                        ok = false;
                    }
                    out.push((name, expr));
                }
                out.sort();
                ok.then_some(Some(Reverse::Columns(out)))
            }
        }
    }

    fn set_mode(
        &mut self,
        label: &str,
        set: RawColumns,
        key: Option<&[String]>,
    ) -> Option<MirrorMode> {
        if set.get_ref().is_empty() {
            self.at(
                set.span(),
                format!("{label}: set is empty; add column = \"expression\" pairs"),
            );
            return None;
        }
        let mut columns = Vec::new();
        let mut seen = BTreeMap::new();
        let mut ok = true;
        for (column, expr) in set.into_inner() {
            let field = format!("set.{}", column.get_ref());
            let name = self.identifier(label, &field, &column);
            let expr = self.sql(label, &field, &expr);
            let (Some(name), Some(expr)) = (name, expr) else {
                ok = false;
                continue;
            };
            if key.is_some_and(|key| key.contains(&name)) {
                self.at(
                    column.span(),
                    format!(
                        "{label}: {field} writes a key column; the key identifies the row being \
                         recomputed, so it cannot be computed itself"
                    ),
                );
                ok = false;
            }
            // `status` and `"status"` are the same column once folded.
            if let Some(other) = seen.insert(name.clone(), column.get_ref().clone()) {
                self.at(
                    column.span(),
                    format!("{label}: {field} and set.{other} name the same column; keep one"),
                );
                ok = false;
            }
            columns.push((name, expr));
        }
        columns.sort();
        ok.then_some(MirrorMode::Set { columns })
    }

    fn rows_mode(
        &mut self,
        label: &str,
        span: Range<usize>,
        target: Option<Spanned<String>>,
        owner: Option<Spanned<Vec<Spanned<String>>>>,
        select: Option<Spanned<String>>,
        key: &Option<Vec<String>>,
    ) -> Option<MirrorMode> {
        for (field, present, example) in [
            (
                "target",
                target.is_some(),
                "target = \"public.order_items\"",
            ),
            ("owner", owner.is_some(), "owner = [\"order_id\"]"),
            (
                "select",
                select.is_some(),
                "select = \"SELECT src.id AS order_id, ...\"",
            ),
        ] {
            if !present {
                self.at(
                    span.clone(),
                    format!(
                        "{label}: {field} is missing; rows mode needs target, owner and select \
                         (e.g. {example})"
                    ),
                );
            }
        }
        let target = self.table(label, "target", target.as_ref()?);
        let owner_span = owner.as_ref()?.span();
        let owner = self.columns(label, "owner", owner.as_ref()?);
        let select = self.sql(label, "select", select.as_ref()?);
        if let (Some(owner), Some(key)) = (&owner, key)
            && owner.len() != key.len()
        {
            self.at(
                owner_span,
                format!(
                    "{label}: owner has {} column(s) but key has {}; owner lists the target \
                     columns holding the source key, one per key column, in key order",
                    owner.len(),
                    key.len()
                ),
            );
            return None;
        }
        Some(MirrorMode::Rows {
            target: target?,
            owner: owner?,
            select: select?,
        })
    }

    /// Checks that need every mirror at once.
    fn across_mirrors(&mut self, mirrors: &[Mirror]) {
        if let Some(two_way) = mirrors.iter().find(|m| m.is_two_way()) {
            for m in mirrors.iter().filter(|m| !m.depends.is_empty()) {
                self.problems.push(FieldProblem {
                    at: Some((m.line, 1)),
                    message: format!(
                        "mirror #{}: depends is not supported yet in a spec with a two-way mirror \
                         (#{} has reverse): a change to a dependency could not tell which shape \
                         to recompute; mirror one way, or make the mapping read only its source",
                        m.number, two_way.number
                    ),
                });
            }
        }
        let mut written: BTreeMap<(&QualifiedName, &str), usize> = BTreeMap::new();
        let mut owned: BTreeMap<(&QualifiedName, BTreeSet<&str>), usize> = BTreeMap::new();
        for m in mirrors {
            let at = Some((m.line, 1));
            // The old-shape columns a two-way mirror writes back are written
            // like set columns: by one mirror only.
            let reverse = match &m.reverse {
                Some(Reverse::Columns(columns)) => columns.as_slice(),
                _ => &[],
            };
            for (field, column) in reverse.iter().map(|(c, _)| ("reverse", c)).chain(
                match &m.mode {
                    MirrorMode::Set { columns } => columns.as_slice(),
                    MirrorMode::Rows { .. } => &[],
                }
                .iter()
                .map(|(c, _)| ("set", c)),
            ) {
                if let Some(other) = written.insert((&m.source, column), m.number) {
                    self.problems.push(FieldProblem {
                        at,
                        message: format!(
                            "mirror #{}: {field}.{column} of {} is also written by mirror \
                             #{other}; each column must be computed by one mirror",
                            m.number, m.source
                        ),
                    });
                }
            }
            if let MirrorMode::Rows { target, owner, .. } = &m.mode {
                self.rows_target(m, target, owner, &mut owned);
            }
        }
    }

    /// A rows mirror's target: not its source, and its owner columns its own.
    fn rows_target<'m>(
        &mut self,
        m: &Mirror,
        target: &'m QualifiedName,
        owner: &'m [String],
        owned: &mut BTreeMap<(&'m QualifiedName, BTreeSet<&'m str>), usize>,
    ) {
        let at = Some((m.line, 1));
        if *target == m.source {
            self.problems.push(FieldProblem {
                at,
                message: format!(
                    "mirror #{}: target is the source itself; rows mode writes a \
                     different table (use set for new columns of the same rows)",
                    m.number
                ),
            });
        }
        // Each mirror deletes the rows it owns that its select no longer
        // yields; two mirrors sharing owner columns of one target would
        // delete each other's rows.
        let owner_set = owner.iter().map(String::as_str).collect();
        if let Some(other) = owned.insert((target, owner_set), m.number) {
            self.problems.push(FieldProblem {
                at,
                message: format!(
                    "mirror #{}: writes {target} with the same owner columns as \
                     mirror #{other}; each would delete the other's rows, so give \
                     each mirror its own owner columns",
                    m.number
                ),
            });
        }
    }

    fn backfill(&mut self, raw: RawBackfill) -> Option<BackfillLimits> {
        let d = BackfillLimits::default();
        let max_replica_lag = self.duration(
            "backfill.max_replica_lag",
            raw.max_replica_lag,
            d.max_replica_lag,
        );
        let max_apply_lag =
            self.duration("backfill.max_apply_lag", raw.max_apply_lag, d.max_apply_lag);
        let chunk_span = raw.chunk_target_time.as_ref().map_or(0..0, |v| v.span());
        let chunk_target_time = self.duration(
            "backfill.chunk_target_time",
            raw.chunk_target_time,
            d.chunk_target_time,
        );
        let max_replica_lag_bytes =
            self.size("backfill.max_replica_lag_bytes", raw.max_replica_lag_bytes);
        let max_retained_wal = self.size("backfill.max_retained_wal", raw.max_retained_wal);
        let max_rows_per_second = match raw.max_rows_per_second {
            None => Some(None),
            Some(v) => self.count("backfill.max_rows_per_second", v, 1).map(Some),
        };
        let min_chunk_rows = match raw.min_chunk_rows {
            None => Some(d.min_chunk_rows),
            Some(v) => self.count("backfill.min_chunk_rows", v, 1),
        };
        let max_chunk_rows = match raw.max_chunk_rows {
            None => Some(d.max_chunk_rows),
            Some(ref v) => self.count("backfill.max_chunk_rows", v.clone(), 1),
        };
        let mut chunk_rows_ok = true;
        if let (Some(min), Some(max)) = (min_chunk_rows, max_chunk_rows)
            && min > max
        {
            chunk_rows_ok = false;
            let span = raw.max_chunk_rows.map_or(0..0, |v| v.span());
            self.at(
                span,
                format!(
                    "backfill.max_chunk_rows: {max} is below min_chunk_rows ({min}); raise it \
                     or lower min_chunk_rows"
                ),
            );
        }
        if chunk_target_time == Some(Duration::ZERO) {
            self.at(
                chunk_span,
                "backfill.chunk_target_time: must be above zero, e.g. \"200ms\"",
            );
        }
        let throttle_query = match (raw.throttle_query, raw.throttle_query_max) {
            (None, None) => Some(None),
            (Some(sql), Some(max)) => {
                let sql = self.sql("backfill", "throttle_query", &sql);
                if !max.get_ref().is_finite() {
                    self.at(
                        max.span(),
                        "backfill.throttle_query_max: must be a finite number",
                    );
                }
                sql.map(|sql| {
                    Some(ThrottleQuery {
                        sql,
                        max: max.into_inner(),
                    })
                })
            }
            (Some(sql), None) => {
                self.at(
                    sql.span(),
                    "backfill.throttle_query: throttle_query_max is missing; add the value above \
                     which the backfill pauses, e.g. throttle_query_max = 100",
                );
                None
            }
            (None, Some(max)) => {
                self.at(
                    max.span(),
                    "backfill.throttle_query_max: throttle_query is missing; add the SQL that \
                     returns the number compared with it",
                );
                None
            }
        };
        Some(BackfillLimits {
            max_replica_lag: max_replica_lag?,
            max_replica_lag_bytes: max_replica_lag_bytes?,
            max_retained_wal: max_retained_wal?,
            max_apply_lag: max_apply_lag?,
            throttle_query: throttle_query?,
            max_rows_per_second: max_rows_per_second?,
            chunk_target_time: chunk_target_time.filter(|t| !t.is_zero())?,
            min_chunk_rows: min_chunk_rows?,
            max_chunk_rows: max_chunk_rows.filter(|_| chunk_rows_ok)?,
        })
    }

    fn gates(&mut self, raw: Vec<Spanned<RawGate>>) -> Option<Vec<Gate>> {
        let mut gates = Vec::new();
        let mut names = BTreeSet::new();
        let mut ok = true;
        for (i, gate) in raw.into_iter().enumerate() {
            let span = gate.span();
            let gate = gate.into_inner();
            let label = format!("gate #{}", i + 1);
            let name = match gate.name {
                Some(name) if !name.get_ref().trim().is_empty() => {
                    if !names.insert(name.get_ref().clone()) {
                        self.at(
                            name.span(),
                            format!("{label}: name {:?} is used twice; gate names are how reports name them", name.get_ref()),
                        );
                        ok = false;
                    }
                    Some(name.into_inner())
                }
                _ => {
                    self.at(
                        span.clone(),
                        format!("{label}: name is missing or empty; add e.g. name = \"every line item mirrored\""),
                    );
                    None
                }
            };
            let sql = match gate.sql {
                Some(sql) => self.sql(&label, "sql", &sql),
                None => {
                    self.at(
                        span,
                        format!("{label}: sql is missing; add a query returning one boolean"),
                    );
                    None
                }
            };
            match (name, sql) {
                (Some(name), Some(sql)) => gates.push(Gate { name, sql }),
                _ => ok = false,
            }
        }
        ok.then_some(gates)
    }

    fn cutover(&mut self, raw: RawCutover) -> Option<Cutover> {
        let d = Cutover::default();
        let sql = match raw.sql {
            None => Some(None),
            // A script of the operator's: several statements, run as they are.
            Some(sql) => self.script("cutover", "sql", &sql).map(Some),
        };
        let lock_span = raw.lock_timeout.as_ref().map_or(0..0, |v| v.span());
        let lock_timeout = self.duration("cutover.lock_timeout", raw.lock_timeout, d.lock_timeout);
        if lock_timeout == Some(Duration::ZERO) {
            // lock_timeout = 0 is Postgres for "wait forever": writes would be
            // frozen for as long as any long transaction holds its lock.
            self.at(
                lock_span,
                "cutover.lock_timeout: must be above zero (0 would let writes queue behind the lock \
                 indefinitely), e.g. \"200ms\"",
            );
        }
        let max_attempts = match raw.max_attempts {
            None => Some(d.max_attempts),
            Some(v) => self
                .count("cutover.max_attempts", v, 1)
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        };
        Some(Cutover {
            sql: sql?,
            lock_timeout: lock_timeout.filter(|t| !t.is_zero())?,
            max_attempts: max_attempts?,
        })
    }

    fn table(&mut self, label: &str, field: &str, raw: &Spanned<String>) -> Option<QualifiedName> {
        QualifiedName::parse(raw.get_ref())
            .map_err(|err| {
                self.at(
                    raw.span(),
                    format!(
                        "{label}: {field} {:?}: {err}; write a table as users, public.users or \
                         \"My Schema\".\"Order Items\"",
                        raw.get_ref()
                    ),
                )
            })
            .ok()
    }

    fn identifier(&mut self, label: &str, field: &str, raw: &Spanned<String>) -> Option<String> {
        ident::parse_identifier(raw.get_ref())
            .map_err(|err| {
                self.at(
                    raw.span(),
                    format!(
                        "{label}: {field}: {:?} is not a column name: {err}; write status, or \
                         '\"Status\"' for a mixed-case name",
                        raw.get_ref()
                    ),
                )
            })
            .ok()
    }

    /// A non-empty list of distinct column names.
    fn columns(
        &mut self,
        label: &str,
        field: &str,
        raw: &Spanned<Vec<Spanned<String>>>,
    ) -> Option<Vec<String>> {
        if raw.get_ref().is_empty() {
            self.at(
                raw.span(),
                format!("{label}: {field} is empty; list at least one column"),
            );
            return None;
        }
        let mut columns = Vec::new();
        let mut ok = true;
        for column in raw.get_ref() {
            match self.identifier(label, field, column) {
                Some(name) if columns.contains(&name) => {
                    self.at(
                        column.span(),
                        format!("{label}: {field} lists column {name:?} twice"),
                    );
                    ok = false;
                }
                Some(name) => columns.push(name),
                None => ok = false,
            }
        }
        ok.then_some(columns)
    }

    /// SQL run as written (any number of statements): only emptiness (nothing
    /// but `;` and blanks) and NUL characters are problems.
    fn script(&mut self, label: &str, field: &str, raw: &Spanned<String>) -> Option<String> {
        let text = raw.get_ref().trim();
        if text.chars().all(|c| c == ';' || c.is_whitespace()) {
            self.at(raw.span(), format!("{label}: {field} is empty"));
            return None;
        }
        self.no_nul(label, field, raw, text)
    }

    /// SQL text that is embedded in a larger statement: non-empty, and no
    /// trailing `;` (which would end the statement early).
    fn sql(&mut self, label: &str, field: &str, raw: &Spanned<String>) -> Option<String> {
        let text = raw.get_ref().trim();
        if text.is_empty() {
            self.at(raw.span(), format!("{label}: {field} is empty"));
            return None;
        }
        if text.ends_with(';') {
            self.at(
                raw.span(),
                format!("{label}: {field} ends with ';'; remove it (walshift embeds it in its own statement)"),
            );
            return None;
        }
        self.no_nul(label, field, raw, text)
    }

    /// `text` (trimmed from `raw`) unless it holds a NUL character, which no
    /// PostgreSQL statement can carry.
    fn no_nul(
        &mut self,
        label: &str,
        field: &str,
        raw: &Spanned<String>,
        text: &str,
    ) -> Option<String> {
        if text.contains('\0') {
            self.at(
                raw.span(),
                format!("{label}: {field} contains a NUL character"),
            );
            return None;
        }
        Some(text.to_string())
    }

    fn duration(
        &mut self,
        field: &str,
        raw: Option<Spanned<toml::Value>>,
        default: Duration,
    ) -> Option<Duration> {
        let Some(raw) = raw else {
            return Some(default);
        };
        let parsed = match raw.get_ref() {
            toml::Value::String(s) => parse_duration(s).map_err(|e| format!("{s:?}: {e}")),
            toml::Value::Integer(n) => Err(format!(
                "{n} has no unit; write it as a string with a unit, e.g. \"{n}s\" or \"{n}ms\""
            )),
            other => Err(format!(
                "expected a duration string such as \"5s\", found a {}",
                other.type_str()
            )),
        };
        parsed
            .map_err(|e| self.at(raw.span(), format!("{field}: {e}")))
            .ok()
    }

    /// An optional size: `Some(None)` when absent, `None` on a problem.
    fn size(&mut self, field: &str, raw: Option<Spanned<toml::Value>>) -> Option<Option<u64>> {
        let Some(raw) = raw else {
            return Some(None);
        };
        let parsed = match raw.get_ref() {
            toml::Value::String(s) => parse_size(s).map_err(|e| format!("{s:?}: {e}")),
            toml::Value::Integer(n) => u64::try_from(*n)
                .map_err(|_| format!("{n} is negative; give a size such as \"64MB\"")),
            other => Err(format!(
                "expected a size such as \"64MB\", found a {}",
                other.type_str()
            )),
        };
        parsed
            .map(Some)
            .map_err(|e| self.at(raw.span(), format!("{field}: {e}")))
            .ok()
    }

    fn count(&mut self, field: &str, raw: Spanned<i64>, min: u64) -> Option<u64> {
        match u64::try_from(*raw.get_ref()) {
            Ok(n) if n >= min => Some(n),
            _ => {
                self.at(
                    raw.span(),
                    format!("{field}: must be at least {min}, found {}", raw.get_ref()),
                );
                None
            }
        }
    }
}
