//! The plan as the operator reads it after `walshift check`: per mirror the
//! key, how target rows are identified, the row estimate and the statement
//! one batch of dirty keys runs; then the notes.

use std::fmt::Write;
use std::time::Duration;

use super::{
    CheckReport, MirrorKind, MirrorPlan, Plan, ReversePlan, ShapeColumn, TwoWayPlan, pretty,
};
use crate::mirror::sql::{KeyColumn, Scope, rows_apply, set_apply};

impl CheckReport {
    /// The plan in human terms; when there are problems instead, them, one
    /// per line.
    pub fn render_plan(&self) -> String {
        match &self.plan {
            Some(plan) => render(plan),
            None => {
                let mut out = format!("{} problem(s); nothing was created:\n", self.problems.len());
                for p in &self.problems {
                    let _ = writeln!(out, "{p}");
                }
                out
            }
        }
    }
}

fn render(plan: &Plan) -> String {
    let mut out = format!(
        "PostgreSQL {} (server_version_num {}); {} mirror(s)\n",
        version_text(plan.server_version_num),
        plan.server_version_num,
        plan.mirrors.len()
    );
    for m in &plan.mirrors {
        out.push('\n');
        mirror(&mut out, m);
    }
    if !plan.warnings.is_empty() {
        out.push_str("\nwarnings:\n");
        for warning in &plan.warnings {
            let _ = writeln!(out, "  - {warning}");
        }
    }
    if !plan.notes.is_empty() {
        out.push_str("\nnotes:\n");
        for note in &plan.notes {
            let _ = writeln!(out, "  - {note}");
        }
    }
    out
}

fn mirror(out: &mut String, m: &MirrorPlan) {
    let (mode, statement) = match &m.kind {
        MirrorKind::Set(p) => {
            let columns: Vec<&str> = p.set.iter().map(|(c, _)| c.as_str()).collect();
            (
                format!("set mode: {}", columns.join(", ")),
                set_apply(p, Scope::Keys),
            )
        }
        MirrorKind::Rows(p) => {
            let identity = match &p.conflict_key {
                Some(ck) => format!("conflict key ({})", ck.join(", ")),
                None => "replace-by-owner".to_string(),
            };
            (
                format!(
                    "rows mode into {}, owner ({}), {identity}",
                    pretty(&p.target),
                    key_text(&p.owner)
                ),
                rows_apply(p, Scope::Keys),
            )
        }
    };
    let _ = writeln!(out, "mirror #{}: {} ({mode})", m.number, pretty(&m.source));
    let _ = writeln!(out, "  key: {}", key_text(&m.key));
    let _ = writeln!(
        out,
        "  replica identity: {}",
        match m.replica_identity {
            'd' => "default (primary key)",
            'f' => "full",
            'i' => "index",
            _ => "nothing",
        }
    );
    for d in &m.depends {
        let _ = writeln!(
            out,
            "  depends on {}: a change to its row ({}) makes dirty the rows whose ({}) hold it",
            pretty(&d.table),
            key_text(&d.key),
            key_text(&d.refs)
        );
    }
    let _ = writeln!(out, "  estimated rows: {}", rows_text(m.estimated_rows));
    out.push_str("  statement per batch of keys ($1 = the keys as text[]):\n");
    for line in statement.sql.lines() {
        let _ = writeln!(out, "    {line}");
    }
    if let Some(t) = &m.two_way {
        two_way(out, m, t);
    }
}

/// A two-way mirror's way back and what tells its directions apart.
fn two_way(out: &mut String, m: &MirrorPlan, t: &TwoWayPlan) {
    let names = |cols: &[String]| -> String {
        if cols.is_empty() {
            "none".to_string()
        } else {
            cols.iter()
                .map(|c| super::pretty_ident(c))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let _ = writeln!(
        out,
        "  two-way: a write changing {} recomputes the new shape",
        names(&t.forward_signal)
    );
    match &m.kind {
        MirrorKind::Rows(p) => {
            let _ = writeln!(
                out,
                "  two-way: a write to {} recomputes the old shape of its owner",
                pretty(&p.target)
            );
        }
        MirrorKind::Set(_) => {
            let _ = writeln!(
                out,
                "  two-way: a write changing {} recomputes the old shape",
                names(&t.reverse_signal)
            );
        }
    }
    let shape = |cols: &[ShapeColumn]| -> String {
        cols.iter()
            .map(|c| match &c.default {
                Some(d) => format!("{} (default {d})", super::pretty_ident(&c.name)),
                None => super::pretty_ident(&c.name),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !t.old_shape.is_empty() {
        let _ = writeln!(
            out,
            "  two-way: an insert leaving {} NULL (or at its default) is mirrored from {}",
            shape(&t.old_shape),
            if t.new_shape.is_empty() {
                "the target rows".to_string()
            } else {
                shape(&t.new_shape)
            }
        );
    }
    let statement = match &t.reverse {
        ReversePlan::Columns(p) => set_apply(p, Scope::Keys),
        ReversePlan::Rows(p) => rows_apply(p, Scope::Keys),
    };
    out.push_str("  the way back per batch of keys:\n");
    for line in statement.sql.lines() {
        let _ = writeln!(out, "    {line}");
    }
}

fn key_text(key: &[KeyColumn]) -> String {
    let parts: Vec<String> = key
        .iter()
        .map(|k| format!("{} {}", super::pretty_ident(&k.name), k.type_name))
        .collect();
    parts.join(", ")
}

fn rows_text(rows: i64) -> String {
    if rows < 0 {
        "unknown (run ANALYZE)".to_string()
    } else {
        rows.to_string()
    }
}

/// `150004` -> `15.4`; before 10 the scheme was `90624` -> `9.6.24`.
pub(super) fn version_text(num: u32) -> String {
    if num >= 100_000 {
        format!("{}.{}", num / 10_000, num % 10_000)
    } else {
        format!("{}.{}.{}", num / 10_000, num / 100 % 100, num % 100)
    }
}

/// A lower bound for the backfill when the spec caps its rate; without a
/// cap the pace depends on throttling and load, so no ETA is promised.
pub(super) fn eta_note(mirrors: &[MirrorPlan], max_rows_per_second: Option<u64>) -> Option<String> {
    let rate = max_rows_per_second.filter(|r| *r > 0)?;
    let known: Vec<i64> = mirrors.iter().map(|m| m.estimated_rows).collect();
    if known.iter().any(|r| *r < 0) {
        return None;
    }
    let rows: i64 = known.iter().sum();
    let seconds = (rows as u64).div_ceil(rate);
    Some(format!(
        "backfill: ~{rows} source rows at backfill.max_rows_per_second = {rate} take at least {}",
        duration_text(Duration::from_secs(seconds))
    ))
}

fn duration_text(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}
