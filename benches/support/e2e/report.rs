//! The report: one markdown table with the same rows and columns on every run (a scenario that
//! did not run shows SKIP), the details behind it, and an SVG chart per scenario.

use std::fmt::Write as _;
use std::path::Path;

use super::chart::{self, Bars, Limit};
use super::live::{Variant, Workload};
use super::runner::Cpu;
use super::{backfill, catchup, decoder, live, max, median, memory, quantile};

/// Targets of issue 7.
pub const BACKFILL_VS_IN_SERVER: f64 = 1.15;
pub const BACKFILL_VS_TRIGGER: f64 = 3.0;
pub const LIVE_TPS_VS_TRIGGER: f64 = 1.0;
pub const LIVE_LAG_P99_S: f64 = 1.0;
pub const CATCHUP_VS_RECVLOGICAL: f64 = 1.5;
pub const RSS_MB: f64 = 64.0;
pub const RSS_BIG_TXN_MB: f64 = 256.0;

/// Everything one run measured, and the circumstances.
#[derive(Default)]
pub struct Figures {
    pub backfill: Vec<backfill::Outcome>,
    pub live: Option<live::Outcome>,
    pub catchup: Option<catchup::Outcome>,
    pub memory: Option<memory::Outcome>,
    pub decoder: Option<decoder::Outcome>,
    pub identity: Option<super::identity::Outcome>,
    pub cost: Option<super::cost::Outcome>,
    pub capacity: Option<super::capacity::Outcome>,
    pub publication: Option<super::publication::Outcome>,
    /// The docs page the report becomes (`docs/results/<page>.md`; `E2E_PAGE`): charts that
    /// the page shows are named for it.
    pub page: String,
    pub command: String,
    pub server: String,
    pub settings: Vec<(String, String)>,
    pub reps: usize,
    pub scale: f64,
    pub chunk: u64,
    /// (scenario, load average before, after).
    pub loadavg: Vec<(String, String, String)>,
    pub wall_s: f64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Miss,
    Info,
    Skip,
}

impl Verdict {
    fn of(ok: bool) -> Verdict {
        if ok { Verdict::Pass } else { Verdict::Miss }
    }

    fn text(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Miss => "MISS",
            Verdict::Info => "—",
            Verdict::Skip => "SKIP",
        }
    }
}

struct Row {
    id: &'static str,
    scenario: String,
    size: String,
    measure: String,
    walshift: String,
    reference: String,
    ratio: String,
    target: String,
    verdict: Verdict,
}

impl Row {
    fn new(id: &'static str, scenario: &str, measure: &str, target: &str) -> Row {
        Row {
            id,
            scenario: scenario.to_owned(),
            size: "—".into(),
            measure: measure.to_owned(),
            walshift: "—".into(),
            reference: "—".into(),
            ratio: "—".into(),
            target: target.to_owned(),
            verdict: Verdict::Skip,
        }
    }
}

const DASH: &str = "—";

fn s2(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}")
    } else {
        DASH.into()
    }
}

fn s0(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.0}")
    } else {
        DASH.into()
    }
}

pub(super) fn list(values: &[f64], digits: usize) -> String {
    values
        .iter()
        .map(|v| format!("{v:.digits$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Figures {
    fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        for (scenario, ids, label) in [
            ("set", ["1a", "1b"], "backfill, set mode: users.status"),
            (
                "rows",
                ["2a", "2b"],
                "backfill, rows mode: orders → order_items",
            ),
        ] {
            let mut a = Row::new(
                ids[0],
                label,
                "time s",
                &format!("≤ {BACKFILL_VS_IN_SERVER:.2}x in-server"),
            );
            let mut b = Row::new(
                ids[1],
                label,
                "time s",
                &format!("≥ {BACKFILL_VS_TRIGGER:.0}x faster than trigger"),
            );
            if let Some(o) = self.backfill.iter().find(|o| o.scenario == scenario) {
                let w = median(&o.walshift_s());
                let i = median(&o.in_server_s());
                let t = median(&o.trigger_s());
                for r in [&mut a, &mut b] {
                    r.size = o.size.clone();
                    r.walshift = s2(w);
                }
                a.reference = format!("in-server loop {}", s2(i));
                a.ratio = format!("{:.2}x", w / i);
                a.verdict = Verdict::of(w / i <= BACKFILL_VS_IN_SERVER);
                b.reference = format!("trigger method {}", s2(t));
                b.ratio = format!("{:.2}x faster", t / w);
                b.verdict = Verdict::of(t / w >= BACKFILL_VS_TRIGGER);
            }
            rows.push(a);
            rows.push(b);
        }

        let ids = [["3a", "3b", "3c"], ["3d", "3e", "3f"], ["3g", "3h", "3i"]];
        for (workload, ids) in Workload::ALL.into_iter().zip(ids) {
            let saturated = workload != Workload::Rated;
            let label = format!("live, {}", workload.label());
            let mut tps = Row::new(
                ids[0],
                &label,
                "throughput tps",
                if saturated { "≥ 1.00x trigger" } else { DASH },
            );
            let mut p99 = Row::new(ids[1], &label, "p99 latency ms", DASH);
            let mut lag = Row::new(
                ids[2],
                &label,
                "watermark lag s p50 / p99 / max",
                if saturated { "p99 < 1 s" } else { DASH },
            );
            if let Some(o) = self.live.as_ref().filter(|o| o.skipped.is_none()) {
                let of = |v: Variant, f: fn(&live::LiveRun) -> f64| -> f64 {
                    median(&o.of(workload, v).iter().map(|r| f(r)).collect::<Vec<_>>())
                };
                let size = match workload {
                    Workload::Rated => format!(
                        "{}, {} clients, -R {}",
                        o.size,
                        o.clients,
                        s0(of(Variant::None, |r| r.rate.unwrap_or(f64::NAN)))
                    ),
                    _ => format!("{}, {} clients, {} s", o.size, o.clients, o.seconds),
                };
                for r in [&mut tps, &mut p99, &mut lag] {
                    r.size = size.clone();
                }
                let (w, t, n) = (
                    of(Variant::Walshift, |r| r.tps),
                    of(Variant::Trigger, |r| r.tps),
                    of(Variant::None, |r| r.tps),
                );
                tps.walshift = s0(w);
                tps.reference = format!("trigger {} / none {}", s0(t), s0(n));
                tps.ratio = format!("{:.2}x trigger, {:.2}x none", w / t, w / n);
                tps.verdict = if saturated {
                    Verdict::of(w / t >= LIVE_TPS_VS_TRIGGER)
                } else {
                    Verdict::Info
                };
                let (w, t, n) = (
                    of(Variant::Walshift, |r| r.p99_ms),
                    of(Variant::Trigger, |r| r.p99_ms),
                    of(Variant::None, |r| r.p99_ms),
                );
                p99.walshift = s2(w);
                p99.reference = format!("trigger {} / none {}", s2(t), s2(n));
                p99.ratio = format!("{:.2}x trigger", w / t);
                p99.verdict = Verdict::Info;
                let pooled: Vec<f64> = o
                    .of(workload, Variant::Walshift)
                    .iter()
                    .flat_map(|r| r.lag_values())
                    .collect();
                let (l50, l99, lmax) = (
                    quantile(&pooled, 0.5),
                    quantile(&pooled, 0.99),
                    max(&pooled),
                );
                lag.walshift = format!("{l50:.3} / {l99:.3} / {lmax:.3}");
                lag.reference = format!(
                    "drain after load {} s",
                    s2(of(Variant::Walshift, |r| r.drain_s))
                );
                lag.verdict = if saturated {
                    Verdict::of(l99 < LIVE_LAG_P99_S)
                } else {
                    Verdict::Info
                };
            }
            rows.extend([tps, p99, lag]);
        }

        let mut c = Row::new(
            "4",
            "catch-up of a backlog",
            "drain s",
            &format!("≤ {CATCHUP_VS_RECVLOGICAL:.1}x pg_recvlogical"),
        );
        if let Some(o) = self.catchup.as_ref().filter(|o| o.skipped.is_none()) {
            let w = median(&o.walshift_s());
            let r = median(&o.recvlogical_s());
            c.size = o.size.clone();
            c.walshift = s2(w);
            c.reference = format!("pg_recvlogical {}", s2(r));
            c.ratio = format!("{:.2}x", w / r);
            c.verdict = Verdict::of(w / r <= CATCHUP_VS_RECVLOGICAL);
        }
        rows.push(c);

        let rss = |id, what: &str, limit: f64, peak: Option<(String, f64)>, note: String| {
            let mut r = Row::new(
                id,
                &format!("memory: {what}"),
                "peak RSS MB (max of runs)",
                &format!("< {limit:.0} MB"),
            );
            if let Some((size, mb)) = peak {
                r.size = size;
                r.walshift = format!("{mb:.1}");
                r.reference = note;
                r.verdict = Verdict::of(mb < limit);
            }
            r
        };
        for (id, scenario) in [("5a", "set"), ("5b", "rows")] {
            let o = self.backfill.iter().find(|o| o.scenario == scenario);
            rows.push(rss(
                id,
                &format!("backfill, {scenario} mode"),
                RSS_MB,
                o.map(|o| (o.size.clone(), max(&o.peak_rss_mb()))),
                DASH.into(),
            ));
        }
        let live = self.live.as_ref().filter(|o| o.skipped.is_none());
        rows.push(rss(
            "5c",
            "live mirroring",
            RSS_MB,
            live.map(|o| {
                let peaks: Vec<f64> = o
                    .runs
                    .iter()
                    .filter(|r| r.variant == Variant::Walshift)
                    .map(|r| r.peak_rss_mb)
                    .collect();
                (o.size.clone(), max(&peaks))
            }),
            DASH.into(),
        ));
        let catchup = self.catchup.as_ref().filter(|o| o.skipped.is_none());
        rows.push(rss(
            "5d",
            "catch-up",
            RSS_MB,
            catchup.map(|o| (o.size.clone(), max(&o.peak_rss_mb()))),
            DASH.into(),
        ));
        rows.push(rss(
            "5e",
            "one huge transaction",
            RSS_BIG_TXN_MB,
            self.memory
                .as_ref()
                .map(|m| (m.size.clone(), m.peak_rss_mb)),
            self.memory.as_ref().map_or(DASH.into(), |m| {
                format!("mirrored {:.1} s after commit", m.mirror_s)
            }),
        ));

        let mut d = Row::new("6", "pgoutput decoder, in-process", "messages/s", DASH);
        if let Some(o) = &self.decoder {
            d.size = format!("{} messages per pass", o.messages);
            d.walshift = format!("{:.2} M", o.median() / 1e6);
            d.reference = "same loop as `cargo bench --bench decoder`".into();
            d.verdict = Verdict::Info;
        }
        rows.push(d);
        rows.extend(self.cost_rows());
        rows.extend(self.capacity_rows());
        rows.extend(self.publication_rows());
        rows
    }

    /// 10a, 10b: the column list against whole rows, over the same WAL.
    fn publication_rows(&self) -> Vec<Row> {
        let scenario = "publication: column list vs whole rows";
        let mut time = Row::new("10a", scenario, "server ms per 100k changes", DASH);
        let mut bytes = Row::new("10b", scenario, "bytes per change", DASH);
        if let Some(o) = self.publication.as_ref().filter(|o| o.skipped.is_none()) {
            let (ms_w, ms_all) = o.ms_per_100k();
            let (b_w, b_all) = o.bytes_per_change();
            for (row, w, all, digits) in [(&mut time, ms_w, ms_all, 0), (&mut bytes, b_w, b_all, 0)]
            {
                row.size = format!("{} changes, 11 columns", o.changes);
                row.walshift = format!("{w:.digits$}");
                row.reference = format!("whole rows {all:.digits$}");
                row.ratio = format!("{:.2}x", w / all);
                row.verdict = Verdict::Info;
            }
        }
        vec![time, bytes]
    }

    /// 9a, 9b: the capacity sweep's targets.
    fn capacity_rows(&self) -> Vec<Row> {
        use super::capacity::{TARGET_ROWS, TARGET_SET};
        let mut rows = Vec::new();
        for (id, mode, target) in [("9a", "set", TARGET_SET), ("9b", "rows", TARGET_ROWS)] {
            let mut r = Row::new(
                id,
                &format!("capacity, {mode} mode"),
                "highest -R held, x trigger's saturated tps",
                &format!("≥ {target:.2}x trigger"),
            );
            let found = self
                .capacity
                .as_ref()
                .filter(|o| o.skipped.is_none())
                .and_then(|o| o.modes.iter().find(|m| m.mode == mode));
            if let Some(m) = found {
                r.size = format!("trigger {} tps", s0(median(&m.trigger_tps)));
                r.walshift = format!("{:.2}x", m.capacity());
                r.reference = format!("per rep {}", list(&m.capacities(), 1));
                r.verdict = Verdict::of(m.capacity() >= target);
            }
            rows.push(r);
        }
        rows
    }

    /// 8a-8d: the cost scenario's targets.
    fn cost_rows(&self) -> Vec<Row> {
        use super::cost::{COST_VS_FLOOR, LAG_P99_S, LOAD_FRACTION, P99_VS_TRIGGER, Variant as V};
        let scenario = format!("normal load: update at {LOAD_FRACTION} x unmirrored tps");
        let mut a = Row::new(
            "8a",
            &scenario,
            "CPU-s per 100k changes (walsender + walshift + apply)",
            &format!("≤ {COST_VS_FLOOR:.1}x floor"),
        );
        let mut b = Row::new(
            "8b",
            &scenario,
            "application p99 latency ms",
            &format!("≤ {P99_VS_TRIGGER:.1}x trigger"),
        );
        let mut c = Row::new(
            "8c",
            &scenario,
            "watermark lag s p99",
            &format!("< {LAG_P99_S} s"),
        );
        let mut d = Row::new(
            "8d",
            &scenario,
            "p99 latency ms of the hot row's transactions",
            &format!("≤ {P99_VS_TRIGGER:.1}x trigger"),
        );
        if let Some(o) = self.cost.as_ref().filter(|o| o.skipped.is_none()) {
            let size = format!(
                "1 change per txn, -R {}",
                s0(o.median_of(V::Walshift, |r| r.rate))
            );
            for r in [&mut a, &mut b, &mut c, &mut d] {
                r.size = size.clone();
            }
            let per =
                |v, f: &dyn Fn(&super::cost::CostRun) -> f64| o.median_of(v, |r| r.per_100k(f(r)));
            let total = per(V::Walshift, &|r| r.cpu.total());
            let floor = per(V::Walshift, &|r| {
                r.floor.as_ref().map_or(f64::NAN, super::cost::Floor::total)
            });
            a.walshift = s2(total);
            a.reference = format!("floor {}", s2(floor));
            a.ratio = format!("{:.2}x", total / floor);
            a.verdict = Verdict::of(total / floor <= COST_VS_FLOOR);
            let (w, t, n) = (
                o.median_of(V::Walshift, |r| r.p99_ms),
                o.median_of(V::Trigger, |r| r.p99_ms),
                o.median_of(V::None, |r| r.p99_ms),
            );
            b.walshift = s2(w);
            b.reference = format!("trigger {} / none {}", s2(t), s2(n));
            b.ratio = format!("{:.2}x trigger", w / t);
            b.verdict = Verdict::of(w / t <= P99_VS_TRIGGER);
            let (w, t, n) = (
                o.median_of(V::Walshift, |r| r.hot_p99_ms),
                o.median_of(V::Trigger, |r| r.hot_p99_ms),
                o.median_of(V::None, |r| r.hot_p99_ms),
            );
            d.walshift = s2(w);
            d.reference = format!("trigger {} / none {}", s2(t), s2(n));
            d.ratio = format!("{:.2}x trigger", w / t);
            d.verdict = Verdict::of(w / t <= P99_VS_TRIGGER);
            let lag = o.lag_p99(V::Walshift);
            c.walshift = format!("{lag:.3}");
            c.verdict = Verdict::of(lag < LAG_P99_S);
        }
        vec![a, b, c, d]
    }

    /// The summary table.
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| # | scenario | size | measure | walshift | reference | ratio | target | result |\n\
             |---|---|---|---|---:|---|---|---|---|\n",
        );
        for r in self.rows() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.id,
                r.scenario,
                r.size,
                r.measure,
                r.walshift,
                r.reference,
                r.ratio,
                r.target,
                r.verdict.text()
            );
        }
        out
    }

    /// The whole report: circumstances, table, details.
    pub fn markdown(&self) -> String {
        let mut out = String::from("# walshift end-to-end benchmarks\n\n");
        let _ = writeln!(
            out,
            "`{}` — E2E_REPS={}, E2E_SCALE={}, chunk {} rows; {}; {} CPU(s); total {:.0} s.\n\
             Every figure is the median of the repetitions unless it says otherwise; contenders \
             run one after the other from the same reset, their order rotating. The server, \
             walshift, pgbench and the bench share these CPUs, and so may other work on the \
             machine (load averages at the end): compare ratios, not absolute times.\n",
            self.command,
            self.reps,
            self.scale,
            self.chunk,
            self.server,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            self.wall_s
        );
        out.push_str(&self.table());
        if let Some(identity) = &self.identity {
            out.push_str(&identity.markdown());
        }
        if let Some(cost) = &self.cost {
            out.push_str(&cost.markdown());
        }
        if let Some(capacity) = &self.capacity {
            out.push_str(&capacity.markdown(&self.page));
        }
        if let Some(publication) = &self.publication {
            out.push_str(&publication.markdown());
        }
        out.push_str("\n## Details\n");
        for o in &self.backfill {
            let _ = writeln!(
                out,
                "\n**Backfill, {} mode** ({}, {} target rows)\n\n\
                 - walshift (from process start; `walshift run` with fixed chunks, unthrottled): {} s; \
                 of which setup {} s; backfill alone (server clock) {} s; {} chunks\n\
                 - in-server loop (`DO` block, same statements and chunks, COMMIT per chunk): {} s; {} chunks\n\
                 - trigger method (trigger + `UPDATE ... SET id = id` in batches of {}, COMMIT per batch, as a `DO` block): {} s; {} batches\n\
                 - walshift peak RSS: {} MB\n\
                 - CPU seconds (steadier than wall time when the cores are shared): walshift {} \
                 (process {} + apply backend {} + walsender {}); in-server backend {}; trigger \
                 backend {}. Medians: walshift / in-server {:.2}x, trigger / walshift {:.2}x",
                o.scenario,
                o.size,
                o.target_rows,
                list(&o.walshift_s(), 2),
                list(&o.walshift.iter().map(|s| s.setup_s).collect::<Vec<_>>(), 2),
                list(
                    &o.walshift.iter().map(|s| s.backfill_s).collect::<Vec<_>>(),
                    2
                ),
                s0(median(
                    &o.walshift
                        .iter()
                        .map(|s| s.chunks as f64)
                        .collect::<Vec<_>>()
                )),
                list(&o.in_server_s(), 2),
                s0(median(
                    &o.in_server
                        .iter()
                        .map(|s| s.chunks as f64)
                        .collect::<Vec<_>>()
                )),
                backfill::TRIGGER_BATCH,
                list(&o.trigger_s(), 2),
                s0(median(
                    &o.trigger
                        .iter()
                        .map(|s| s.batches as f64)
                        .collect::<Vec<_>>()
                )),
                list(&o.peak_rss_mb(), 1),
                list(&o.walshift_cpu(), 2),
                list(
                    &o.walshift
                        .iter()
                        .map(|s| s.cpu_walshift_s)
                        .collect::<Vec<_>>(),
                    2
                ),
                list(
                    &o.walshift
                        .iter()
                        .map(|s| s.cpu_apply_backend_s)
                        .collect::<Vec<_>>(),
                    2
                ),
                list(
                    &o.walshift
                        .iter()
                        .map(|s| s.cpu_walsender_s)
                        .collect::<Vec<_>>(),
                    2
                ),
                list(&o.in_server_cpu(), 2),
                list(&o.trigger_cpu(), 2),
                median(&o.walshift_cpu()) / median(&o.in_server_cpu()),
                median(&o.trigger_cpu()) / median(&o.walshift_cpu()),
            );
        }
        if let Some(o) = &self.live {
            if let Some(why) = &o.skipped {
                let _ = writeln!(out, "\n**Live mirroring**: skipped, {why}");
            } else {
                let _ = writeln!(
                    out,
                    "\n**Live mirroring** ({}, pgbench -M prepared, {} clients, {} s per run; \
                     latency from pgbench's per-transaction log; lag: walshift's watermark lag \
                     as written to walshift.migration once a second, sampled every 200 ms, \
                     pooled over the repetitions)\n\n\
                     | workload | variant | tps per run | p50 ms | p99 ms per run | lag p50 / p99 / max s | max WAL behind MB | drain s | peak RSS MB | walshift CPU during the load (median) |\n\
                     |---|---|---|---:|---|---|---|---|---|---|",
                    o.size, o.clients, o.seconds
                );
                for w in Workload::ALL {
                    for v in Variant::ALL {
                        let runs = o.of(w, v);
                        if runs.is_empty() {
                            continue;
                        }
                        let get = |f: fn(&live::LiveRun) -> f64| -> Vec<f64> {
                            runs.iter().map(|r| f(r)).collect()
                        };
                        let (lag, behind, drain, rss, cpu) = if v == Variant::Walshift {
                            let pooled: Vec<f64> =
                                runs.iter().flat_map(|r| r.lag_values()).collect();
                            (
                                format!(
                                    "{:.3} / {:.3} / {:.3}",
                                    quantile(&pooled, 0.5),
                                    quantile(&pooled, 0.99),
                                    max(&pooled)
                                ),
                                list(&get(|r| r.behind_max_mb()), 1),
                                list(&get(|r| r.drain_s), 2),
                                list(&get(|r| r.peak_rss_mb), 1),
                                median_cpu(runs.iter().filter_map(|r| r.cpu)).line(),
                            )
                        } else {
                            (
                                DASH.into(),
                                DASH.into(),
                                DASH.into(),
                                DASH.into(),
                                DASH.into(),
                            )
                        };
                        let label = match runs[0].rate {
                            Some(_) => format!(
                                "{} (-R {})",
                                w.label(),
                                list(&get(|r| r.rate.unwrap_or(f64::NAN)), 0)
                            ),
                            None => w.label().to_owned(),
                        };
                        let _ = writeln!(
                            out,
                            "| {label} | {} | {} | {} | {} | {lag} | {behind} | {drain} | {rss} | {cpu} |",
                            v.label(),
                            list(&get(|r| r.tps), 0),
                            s2(median(&get(|r| r.p50_ms))),
                            list(&get(|r| r.p99_ms), 2),
                        );
                    }
                }
            }
        }
        if let Some(o) = &self.catchup {
            if let Some(why) = &o.skipped {
                let _ = writeln!(out, "\n**Catch-up**: skipped, {why}");
            } else {
                let _ = writeln!(
                    out,
                    "\n**Catch-up** ({}): backlog {} MB of WAL per run (load took {} s). \
                     walshift from process start until its slot confirmed the end of the load: {} s. \
                     pg_recvlogical (pgoutput, proto_version=1, walshift's publication, messages=true, \
                     output to /dev/null) on a copy of the slot until --endpos: {} s. walshift peak RSS {} MB. \
                     CPU of walshift's processes until caught up (median): {}.",
                    o.size,
                    list(
                        &o.runs
                            .iter()
                            .map(|r| r.backlog_bytes / 1e6)
                            .collect::<Vec<_>>(),
                        0
                    ),
                    list(&o.runs.iter().map(|r| r.load_s).collect::<Vec<_>>(), 1),
                    list(&o.walshift_s(), 2),
                    list(&o.recvlogical_s(), 2),
                    list(&o.peak_rss_mb(), 1),
                    median_cpu(o.runs.iter().map(|r| r.cpu)).line(),
                );
            }
        }
        if let Some(m) = &self.memory {
            let _ = writeln!(
                out,
                "\n**One huge transaction** ({}, one run): INSERT took {:.1} s; walshift confirmed \
                 it {:.1} s after commit (decoded, collapsed to a whole-table pass, applied); \
                 peak RSS {:.1} MB.",
                m.size, m.insert_s, m.mirror_s, m.peak_rss_mb
            );
        }
        if let Some(d) = &self.decoder {
            let _ = writeln!(
                out,
                "\n**Decoder**: {} messages ({} bytes) decoded per pass, 2 s per repetition: {} M messages/s.",
                d.messages,
                d.bytes,
                list(&d.rates.iter().map(|r| r / 1e6).collect::<Vec<_>>(), 2)
            );
        }
        let _ = writeln!(
            out,
            "\n**Circumstances**: load average (1/5/15 min) before → after each scenario: {}. \
             Server settings: {}.",
            self.loadavg
                .iter()
                .map(|(s, b, a)| format!("{s} {b} → {a}"))
                .collect::<Vec<_>>()
                .join("; "),
            self.settings
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        out
    }

    /// One SVG per scenario that ran; returns the file names written.
    pub fn charts(&self, dir: &Path) -> Vec<String> {
        let mut written = Vec::new();
        let mut emit = |name: &str, result: Result<(), Box<dyn std::error::Error>>| match result {
            Ok(()) => written.push(name.to_owned()),
            Err(e) => eprintln!("chart {name}: {e}"),
        };
        for o in &self.backfill {
            let name = format!("backfill-{}.svg", o.scenario);
            emit(
                &name,
                chart::bars(
                    &dir.join(&name),
                    &format!(
                        "Backfill, {} mode: {} (lower is better)",
                        o.scenario, o.size
                    ),
                    "seconds",
                    std::slice::from_ref(&o.size),
                    &[
                        bars("walshift", chart::WALSHIFT, vec![o.walshift_s()]),
                        bars("in-server loop", chart::IN_SERVER, vec![o.in_server_s()]),
                        bars("trigger method", chart::TRIGGER, vec![o.trigger_s()]),
                    ],
                    &[],
                    median,
                ),
            );
        }
        if let Some(o) = self.live.as_ref().filter(|o| o.skipped.is_none()) {
            let groups: Vec<String> = Workload::ALL.iter().map(|w| w.label().to_owned()).collect();
            let series = |f: fn(&live::LiveRun) -> f64| -> Vec<Bars> {
                Variant::ALL
                    .iter()
                    .map(|v| {
                        let color = match v {
                            Variant::None => chart::NONE,
                            Variant::Trigger => chart::TRIGGER,
                            Variant::Walshift => chart::WALSHIFT,
                        };
                        bars(
                            v.label(),
                            color,
                            Workload::ALL
                                .iter()
                                .map(|w| o.of(*w, *v).iter().map(|r| f(r)).collect())
                                .collect(),
                        )
                    })
                    .collect()
            };
            emit(
                "live.svg",
                chart::bars(
                    &dir.join("live.svg"),
                    &format!(
                        "Live load on {}: throughput, {} clients (higher is better)",
                        o.size, o.clients
                    ),
                    "transactions/s",
                    &groups,
                    &series(|r| r.tps),
                    &[],
                    median,
                ),
            );
            emit(
                "live-p99.svg",
                chart::bars(
                    &dir.join("live-p99.svg"),
                    &format!("Live load on {}: p99 latency (lower is better)", o.size),
                    "ms",
                    &groups,
                    &series(|r| r.p99_ms),
                    &[],
                    median,
                ),
            );
            let colors = [chart::WALSHIFT, chart::TRIGGER, chart::NONE];
            let lines: Vec<chart::Line> = Workload::ALL
                .iter()
                .zip(colors)
                .filter_map(|(w, color)| {
                    let run = o.of(*w, Variant::Walshift).into_iter().next()?;
                    Some(chart::Line {
                        name: w.label().to_owned(),
                        color,
                        points: run.lag.iter().map(|s| (s.t, s.lag_s)).collect(),
                    })
                })
                .collect();
            emit(
                "live-lag.svg",
                chart::lines(
                    &dir.join("live-lag.svg"),
                    "walshift's watermark lag during the load (first repetition)",
                    "seconds since the load started",
                    "lag, seconds",
                    &lines,
                    &[Limit {
                        value: LIVE_LAG_P99_S,
                        label: "target: p99 < 1 s (saturated)".into(),
                    }],
                ),
            );
        }
        if let Some(o) = self.catchup.as_ref().filter(|o| o.skipped.is_none()) {
            emit(
                "catchup.svg",
                chart::bars(
                    &dir.join("catchup.svg"),
                    &format!("Catch-up of {} (lower is better)", o.size),
                    "seconds",
                    std::slice::from_ref(&o.size),
                    &[
                        bars(
                            "walshift (decode + apply)",
                            chart::WALSHIFT,
                            vec![o.walshift_s()],
                        ),
                        bars(
                            "pg_recvlogical (receive only)",
                            chart::RECVLOGICAL,
                            vec![o.recvlogical_s()],
                        ),
                    ],
                    &[],
                    median,
                ),
            );
        }
        let mut groups = Vec::new();
        let mut samples = Vec::new();
        for o in &self.backfill {
            groups.push(format!("backfill {}", o.scenario));
            samples.push(o.peak_rss_mb());
        }
        if let Some(o) = self.live.as_ref().filter(|o| o.skipped.is_none()) {
            groups.push("live".into());
            samples.push(
                o.runs
                    .iter()
                    .filter(|r| r.variant == Variant::Walshift)
                    .map(|r| r.peak_rss_mb)
                    .collect(),
            );
        }
        if let Some(o) = self.catchup.as_ref().filter(|o| o.skipped.is_none()) {
            groups.push("catch-up".into());
            samples.push(o.peak_rss_mb());
        }
        if let Some(m) = &self.memory {
            groups.push("huge transaction".into());
            samples.push(vec![m.peak_rss_mb]);
        }
        if !groups.is_empty() {
            emit(
                "memory.svg",
                chart::bars(
                    &dir.join("memory.svg"),
                    "walshift's peak resident memory (VmHWM; bar: max of the runs)",
                    "MB",
                    &groups,
                    &[bars("walshift", chart::WALSHIFT, samples)],
                    &[
                        Limit {
                            value: RSS_MB,
                            label: "target 64 MB".into(),
                        },
                        Limit {
                            value: RSS_BIG_TXN_MB,
                            label: "target 256 MB (huge transaction)".into(),
                        },
                    ],
                    max,
                ),
            );
        }
        if let Some(o) = self.capacity.as_ref().filter(|o| o.skipped.is_none()) {
            written.extend(o.charts(dir, &self.page));
        }
        written
    }
}

/// The median of each component.
fn median_cpu(runs: impl Iterator<Item = Cpu>) -> Cpu {
    let runs: Vec<Cpu> = runs.collect();
    let of = |f: fn(&Cpu) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    Cpu {
        walshift: of(|c| c.walshift),
        apply: of(|c| c.apply),
        walsender: of(|c| c.walsender),
    }
}

fn bars(name: &str, color: chart::RGBColor, samples: Vec<Vec<f64>>) -> Bars {
    Bars {
        name: name.to_owned(),
        color,
        samples,
    }
}
