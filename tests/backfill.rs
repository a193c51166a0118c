//! The backfill of history, end to end through the real binary, against a real PostgreSQL.
//!
//! Every scenario pre-fills the old shape (rows that exist before walshift starts) and leaves
//! the new shape wrong on purpose, so only a backfill that covers every key, with no gap between
//! chunks, ends exact. Chunks are small, so there are many of them. Scenarios then check one of:
//! - the result under a concurrent write load that started before the slot existed (I1, I3),
//!   compared once, exactly, against the mapping evaluated by Postgres;
//! - keys that are composite, skewed, sparse, extreme or awkward as text, where every chunk
//!   bound is stored as `text[]` and cast back;
//! - the throttles (standby replay lag, another slot's retained WAL, the operator's query,
//!   `walshift ctl pause`): history stops — the checkpoint does not move for seconds — while
//!   live changes are still mirrored, and the log says why;
//! - SIGKILL mid-backfill (I6): the checkpoint and the data committed together, and the restart
//!   copies no finished range again.

mod support;
// Owned (and linted) by tests/mirror.rs, which uses more of it than this file does.
#[allow(dead_code, unused_imports, clippy::all)]
use std::sync::Arc;
use std::time::Duration;

use support::backfill::fixtures::{
    self, LEDGER_EXPR, ORDER_SKUS_SELECT, PARCELS_SELECT, PARTITIONED, PARTITIONED_EXPR, SPARSE,
    SPARSE_EXPR, ledger_step, shipments_step,
};
use support::backfill::throttle::{WalGenerator, assert_still, wait_resumed, wait_throttled};
use support::backfill::{
    Mapping, Scenario, assert_exact_progress, dedicated_cluster, fresh_db_on, tamper_as_walshift,
    wait_sessions_gone,
};
use support::fixtures::{ITEMS_SKU_SELECT, STATUS_EXPR};
use support::mirror::compare::{RowsMirror, SetMirror};
use support::mirror::workloads::{EVENTS_A, EVENTS_B, ID_BIG, ORDER_ITEMS, STATUS, TAGS};
use support::mirror::{Load, LoadOptions, Rng, Step, wait_caught_up, wait_inactive};

/// A load that runs until stopped.
const OPEN_ENDED: LoadOptions = LoadOptions {
    tasks: 4,
    txns_per_task: u64::MAX,
    reconnect: false,
};

/// Small chunks: many of them, so live writes land before, inside and after chunk ranges.
const SMALL_CHUNKS: &str = "[backfill]\nmin_chunk_rows = 50\nmax_chunk_rows = 200\n";

/// A load step paced by a short sleep before each transaction's writes (no locks are held
/// while it sleeps): four unpaced tasks keep the applier busy with live batches all the time,
/// and live changes always go first, so history would crawl on a small machine.
fn step(f: impl Fn(&mut Rng) -> String + Send + Sync + 'static) -> Step {
    Arc::new(move |rng: &mut Rng| format!("SELECT pg_sleep(0.003);\n{}", f(rng)))
}

fn spec_of(mappings: &[Mapping<'_>], backfill: &str) -> String {
    let mut spec: String = mappings.iter().map(Mapping::spec).collect();
    spec.push_str(backfill);
    spec
}

// ---------------------------------------------------------------------------------------------
// Every mirror kind, backfilled under a concurrent write load

/// The shared shape of the load scenarios: the load starts first (so writes race with slot
/// creation, I1), walshift backfills while it runs, the load goes on a little after the
/// backfill is done, then once caught up every target is compared exactly.
async fn backfill_under_load(name: &str, setup: &str, mappings: &[Mapping<'_>], load_step: Step) {
    let s = Scenario::new(name, setup, &spec_of(mappings, SMALL_CHUNKS)).await;
    let load = Load::start(&s.conninfo(), OPEN_ENDED, load_step);
    load.wait_acked(50, None).await;

    let ws = s.start(&[]).await;
    let acked_at_start = load.acked();
    let cps = s.wait_done(&ws).await;
    let acked_during = load.acked() - acked_at_start;
    let acked = load.acked();
    load.wait_acked(acked + 100, Some(&ws)).await;
    let stats = load.stop().await;
    wait_caught_up(&ws, &s.sql).await;

    for m in mappings {
        let rows = m.assert_exact(&s.sql, &ws).await;
        assert!(rows >= 1000, "too few rows to mean much: {rows}");
    }
    // The scenario tested what it claims: many chunks, with the load running between them.
    let chunks: i64 = cps.iter().map(|c| c.chunks).sum();
    assert!(
        chunks >= 40,
        "only {chunks} chunks; the spec asks for at most 200 rows each: {cps:?}"
    );
    assert!(
        acked_during >= 20,
        "only {acked_during} load transactions committed while history was copied ({stats:?})"
    );
    eprintln!(
        "{name}: {chunks} chunks, {acked_during} load transactions during the backfill, {stats:?}"
    );
    for line in support::backfill::throttle::log_lines(&ws) {
        if line.get("level").and_then(|l| l.as_str()) != Some("INFO") {
            eprintln!("walshift: {line}");
        }
    }
    ws.stop_summary().await;
}

/// Guards set-mode backfill: `status` NULL, stale or already right on 20k pre-filled users,
/// with inserts, updates (single and ranges straddling chunks), deletes and application writes
/// to `status` racing from four sessions; every row ends equal to the mapping.
#[tokio::test(flavor = "multi_thread")]
async fn backfill_set_mode_status_under_load() {
    const N: i64 = 20_000;
    backfill_under_load(
        "bf-status",
        &fixtures::users_mixed(N),
        &[Mapping::Set(&STATUS)],
        step(|r| fixtures::users_step(r, N)),
    )
    .await;
}

/// Guards set-mode backfill over int keys that are negative, around zero and at both ends of
/// `int`, with primary-key updates under load: `id_big = id::bigint` everywhere.
#[tokio::test(flavor = "multi_thread")]
async fn backfill_set_mode_int_to_bigint_under_load() {
    const N: i64 = 20_000;
    backfill_under_load(
        "bf-id-big",
        &fixtures::accounts(N),
        &[Mapping::Set(&ID_BIG)],
        step(|r| fixtures::accounts_step(r, N)),
    )
    .await;
}

const ORDER_SKUS: RowsMirror<'static> = RowsMirror {
    source: "public.orders",
    select: ORDER_SKUS_SELECT,
    target: "public.order_skus",
    owner: &["order_id"],
    columns: "order_id, sku",
};

/// Guards rows-mode backfill, one-to-many, into a target with a primary key (`order_items`,
/// rows updated in place) and one without (`order_skus`, replaced per owner as a multiset,
/// duplicates included). Both start with right rows, wrong rows, extra lines or duplicates, and
/// rows of orders that do not exist (below, between and above the source keys); items are
/// edited, renumbered and orders deleted under load. Each target ends as exactly the multiset
/// its select yields.
#[tokio::test(flavor = "multi_thread")]
async fn backfill_rows_mode_order_items_under_load() {
    const N: i64 = 10_000;
    backfill_under_load(
        "bf-order-items",
        &fixtures::orders(N),
        &[Mapping::Rows(&ORDER_ITEMS), Mapping::Rows(&ORDER_SKUS)],
        step(|r| fixtures::orders_step(r, N)),
    )
    .await;
}

/// Guards two rows-mode mirrors of one source split by a discriminator: both targets start
/// with rows of the wrong kind, stale payloads and orphans; kinds change under load (rows move
/// between targets). The mirrors are backfilled one after the other while live changes hit
/// both.
#[tokio::test(flavor = "multi_thread")]
async fn backfill_split_by_discriminator_under_load() {
    const N: i64 = 20_000;
    backfill_under_load(
        "bf-events-split",
        &fixtures::events(N),
        &[Mapping::Rows(&EVENTS_A), Mapping::Rows(&EVENTS_B)],
        step(|r| fixtures::events_step(r, N)),
    )
    .await;
}

/// Guards a set-mode mapping that reads the column it writes (idempotent array merge) while
/// the application keeps appending to that column: backfill and live recomputes must both
/// land on the fixed point.
#[tokio::test(flavor = "multi_thread")]
async fn backfill_array_merge_under_load() {
    const N: i64 = 20_000;
    backfill_under_load(
        "bf-tags",
        &fixtures::profiles(N),
        &[Mapping::Set(&TAGS)],
        step(|r| fixtures::profiles_step(r, N)),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Keys

const LEDGER: SetMirror<'static> = SetMirror {
    table: "public.ledger",
    column: "amount_cents",
    expr: LEDGER_EXPR,
};

const PARCELS: RowsMirror<'static> = RowsMirror {
    source: "public.shipments",
    select: PARCELS_SELECT,
    target: "public.parcels",
    owner: &["region", "order_no"],
    columns: "region, order_no, n, weight",
};

/// Guards composite keys as chunk bounds, `(a, b) > (l1, l2)` in the key's btree order: a
/// primary key `(tenant_id, id)` with one tenant holding 12k rows and 3000 tenants holding one
/// to three (chunks end inside the big tenant and span many small ones), and a spec `key` of
/// `(region text, order_no int)` on a unique constraint, with regions that sort awkwardly or
/// need quoting in a `text[]` bound, in rows mode with stale and orphan target rows. Key
/// changes under load move rows across tenants and regions.
#[tokio::test(flavor = "multi_thread")]
async fn composite_keys_skewed_and_text_parts_under_load() {
    const BIG: i64 = 12_000;
    let parcels_spec = PARCELS.spec().replacen(
        "[[mirror]]\n",
        "[[mirror]]\nkey = [\"region\", \"order_no\"]\n",
        1,
    );
    let spec = format!("{}{parcels_spec}{SMALL_CHUNKS}", LEDGER.spec());
    let setup = format!(
        "{};\n{}",
        fixtures::ledger(BIG),
        fixtures::shipments(BIG / 2)
    );
    let s = Scenario::new("bf-composite", &setup, &spec).await;
    let load = Load::start(
        &s.conninfo(),
        LoadOptions {
            tasks: 3,
            ..OPEN_ENDED
        },
        step(|r| {
            if r.chance(50) {
                ledger_step(r, BIG)
            } else {
                shipments_step(r, BIG / 2)
            }
        }),
    );
    load.wait_acked(50, None).await;
    let ws = s.start(&[]).await;
    let cps = s.wait_done(&ws).await;
    let acked = load.acked();
    load.wait_acked(acked + 100, Some(&ws)).await;
    load.stop().await;
    wait_caught_up(&ws, &s.sql).await;

    let ledger_rows = LEDGER.assert_exact(&s.sql, Some(&ws)).await;
    let parcel_rows = PARCELS.assert_exact(&s.sql, Some(&ws)).await;
    assert!(
        ledger_rows > BIG && parcel_rows > BIG / 2,
        "too few rows: {ledger_rows} ledger rows, {parcel_rows} parcels"
    );
    for cp in &cps {
        assert!(
            cp.chunks >= 20,
            "mirror {} ran only {} chunks: {cps:?}",
            cp.mirror,
            cp.chunks
        );
    }
    let regions = s
        .count("SELECT count(DISTINCT region) FROM public.parcels")
        .await;
    assert!(
        regions >= 8,
        "only {regions} regions have parcels; the awkward ones are missing"
    );
    ws.stop_summary().await;
}

/// Guards a range-partitioned source: chunks range over the root's key order across
/// partitions that are negative, sparse, dense, empty and open-ended, while the load updates
/// rows, moves them between partitions by key updates, inserts and deletes. Every row ends
/// equal to the mapping.
#[tokio::test(flavor = "multi_thread")]
async fn partitioned_source_backfills_across_partitions_under_load() {
    let ledger = SetMirror {
        table: "public.ledger_p",
        column: "doubled",
        expr: PARTITIONED_EXPR,
    };
    backfill_under_load(
        "bf-partitioned",
        PARTITIONED,
        &[Mapping::Set(&ledger)],
        step(fixtures::partitioned_step),
    )
    .await;
}

/// Guards empty sources: their backfill completes at once (done, 0 rows), a rows-mode target
/// whose source is empty loses its orphan rows, the next mirror is backfilled after them, and
/// live changes to the empty sources are mirrored afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn empty_sources_complete_at_once_and_clear_orphans() {
    const SETUP: &str = "
        CREATE TABLE public.empty_users (id int PRIMARY KEY, is_active boolean, status text);
        CREATE TABLE public.empty_orders (id bigint PRIMARY KEY, items jsonb);
        CREATE TABLE public.empty_items (
            order_id bigint NOT NULL, line_no bigint NOT NULL, sku text,
            PRIMARY KEY (order_id, line_no));
        INSERT INTO public.empty_items VALUES (1, 1, 'orphan'), (-7, 2, 'orphan'), (1000000, 1, 'orphan');
        CREATE TABLE public.after_empty (id int PRIMARY KEY, v int, w int);
        INSERT INTO public.after_empty (id, v) SELECT g, g FROM generate_series(1, 500) AS g";
    let users = SetMirror {
        table: "public.empty_users",
        column: "status",
        expr: STATUS_EXPR,
    };
    let items = RowsMirror {
        source: "public.empty_orders",
        select: ITEMS_SKU_SELECT,
        target: "public.empty_items",
        owner: &["order_id"],
        columns: "order_id, line_no, sku",
    };
    let after = SetMirror {
        table: "public.after_empty",
        column: "w",
        expr: "v + 1",
    };
    let spec = format!(
        "{}{}{}{SMALL_CHUNKS}",
        users.spec(),
        items.spec(),
        after.spec()
    );
    let s = Scenario::new("bf-empty", SETUP, &spec).await;
    let ws = s.start(&[]).await;
    let cps = s.wait_done(&ws).await;
    let rows_done: Vec<(i32, bool, i64)> = cps
        .iter()
        .map(|c| (c.mirror, c.done, c.rows_done))
        .collect();
    assert_eq!(
        rows_done,
        vec![(1, true, 0), (2, true, 0), (3, true, 500)],
        "{cps:?}"
    );
    assert_eq!(
        s.count("SELECT count(*) FROM public.empty_items").await,
        0,
        "orphans of an empty source must go"
    );

    s.sql
        .batch_execute(
            "INSERT INTO public.empty_users VALUES (1, true, NULL), (2, NULL, 'bogus');
             INSERT INTO public.empty_orders VALUES (5, '[{\"sku\": \"a\"}, {\"sku\": \"b\"}]')",
        )
        .await
        .unwrap();
    wait_caught_up(&ws, &s.sql).await;
    assert_eq!(users.assert_exact(&s.sql, Some(&ws)).await, 2);
    assert_eq!(items.assert_exact(&s.sql, Some(&ws)).await, 2);
    assert_eq!(after.assert_exact(&s.sql, Some(&ws)).await, 500);
    ws.stop_summary().await;
}

/// Guards sparse and skewed bigint keys: 1..100, a dense run from 10^9, a sparse run from
/// 10^15 in steps of 10^9, negative keys, and both ends of bigint, in chunks of 37 rows. Every
/// row is copied once: `rows_done` equals the row count and the chunk count is exact.
#[tokio::test(flavor = "multi_thread")]
async fn sparse_skewed_and_extreme_integer_keys() {
    const SIZE: i64 = 37;
    let sparse = SetMirror {
        table: "public.sparse",
        column: "doubled",
        expr: SPARSE_EXPR,
    };
    let spec = format!(
        "{}[backfill]\nmin_chunk_rows = {SIZE}\nmax_chunk_rows = {SIZE}\n",
        sparse.spec()
    );
    let s = Scenario::new("bf-sparse", SPARSE, &spec).await;
    let rows = s.count("SELECT count(*) FROM public.sparse").await;
    let ws = s.start(&[]).await;
    let cps = s.wait_done(&ws).await;
    wait_caught_up(&ws, &s.sql).await;
    assert_eq!(sparse.assert_exact(&s.sql, Some(&ws)).await, rows);
    assert_exact_progress(&cps[0], rows, SIZE);
    ws.stop_summary().await;
}

/// Guards keys whose text form is awkward, with one row per chunk so every key becomes a stored
/// `text[]` bound and is cast back: text keys that are empty, blank, differ only in case or
/// accents, hold commas, braces, quotes, backslashes, tabs, newlines, the word NULL, or 1200
/// characters; numeric keys from -1e20 to 1e20 with 1e-20 and NaN; timestamptz keys with
/// ±infinity, BC dates and microseconds.
#[tokio::test(flavor = "multi_thread")]
async fn awkward_text_numeric_and_timestamp_keys_as_chunk_bounds() {
    let mappings = [
        SetMirror {
            table: "public.tkeys",
            column: "v_len",
            expr: "length(v)",
        },
        SetMirror {
            table: "public.nkeys",
            column: "w",
            expr: "v * 3",
        },
        SetMirror {
            table: "public.tskeys",
            column: "w",
            expr: "v + 1",
        },
    ];
    let mut spec: String = mappings.iter().map(SetMirror::spec).collect();
    spec.push_str("[backfill]\nmin_chunk_rows = 1\nmax_chunk_rows = 1\n");
    let s = Scenario::new("bf-awkward", &fixtures::awkward_keys(), &spec).await;
    let ws = s.start(&[]).await;
    let cps = s.wait_done(&ws).await;
    wait_caught_up(&ws, &s.sql).await;
    for (m, cp) in mappings.iter().zip(&cps) {
        let rows = m.assert_exact(&s.sql, Some(&ws)).await;
        assert_exact_progress(cp, rows, 1);
    }
    ws.stop_summary().await;
}

// ---------------------------------------------------------------------------------------------
// Throttles

/// Users pre-filled for the throttle and kill scenarios (ids `1..=N`, `status` NULL).
const N: i64 = 30_000;

/// `status` is wrong on rows the backfill has not reached (and live changes did not touch).
const UNMAPPED: &str = "SELECT count(*) FROM public.users
    WHERE status IS DISTINCT FROM CASE WHEN is_active THEN 'active' ELSE 'disabled' END";

/// Fixed chunks of 300 rows at 3000 rows/s: about ten seconds for N rows unthrottled, so a
/// throttle engages well before the end.
fn paced_spec(extra: &str) -> String {
    format!(
        "{}[backfill]\nmin_chunk_rows = 300\nmax_chunk_rows = 300\nmax_rows_per_second = 3000\n{extra}",
        STATUS.spec()
    )
}

/// How long a throttled backfill must stay still.
const WINDOW: Duration = Duration::from_secs(4);

/// With the backfill throttled (event `at` in the log): history does not move while live
/// changes are mirrored. A new user and the last pre-filled user (which the backfill has not
/// reached) are written, walshift catches up, both are right; then for [`WINDOW`] the
/// checkpoint stays exactly where it was, and the number of unmapped rows dropped by exactly
/// the one row the live change fixed.
async fn history_waits_live_goes_on(s: &Scenario, ws: &support::process::Run, at: usize) {
    let before = s.checkpoints().await;
    let lower: i64 = before[0]
        .lower_key
        .as_ref()
        .and_then(|k| k.first())
        .and_then(|k| k.parse().ok())
        .unwrap_or_else(|| ws.fail(&format!("no numeric lower_key yet: {before:?}")));
    assert!(
        !before[0].done && lower < N - 1,
        "the backfill got too far before the throttle engaged: {before:?}"
    );
    let unmapped = s.count(UNMAPPED).await;

    s.sql
        .batch_execute(&format!(
            "INSERT INTO public.users (id, email, is_active) VALUES ({}, 'live', true);
             UPDATE public.users SET is_active = true WHERE id = {N}",
            N + 1
        ))
        .await
        .unwrap();
    wait_caught_up(ws, &s.sql).await;
    let live = s
        .count(&format!(
            "SELECT count(*) FROM public.users WHERE id IN ({N}, {}) AND status = 'active'",
            N + 1
        ))
        .await;
    if live != 2 {
        ws.fail("live changes were not mirrored while the backfill was throttled");
    }

    let held = assert_still(s, ws, at, WINDOW).await;
    assert_eq!(
        held, before,
        "the checkpoint moved while live changes were applied"
    );
    assert_eq!(
        s.count(UNMAPPED).await,
        unmapped - 1,
        "only the live change may have fixed a row while history waited"
    );
}

/// The end of every throttle scenario: done, caught up, exact, every row counted once.
async fn finishes_exact(s: &Scenario, ws: &support::process::Run) {
    let cps = s.wait_done(ws).await;
    wait_caught_up(ws, &s.sql).await;
    let rows = STATUS.assert_exact(&s.sql, Some(ws)).await;
    assert_eq!(
        cps[0].rows_done, rows,
        "rows_done must count every row once: {cps:?}"
    );
}

/// Guards the replica-lag throttle (`max_replica_lag`): with replay paused on a physical
/// standby and WAL still coming, its `replay_lag` passes 1s; the backfill stops (checkpoint
/// still for seconds), live changes are still mirrored, the log names the standby and the
/// limit; after `pg_wal_replay_resume()` the backfill resumes and ends exact.
#[tokio::test(flavor = "multi_thread")]
async fn standby_replay_lag_holds_history_not_live_changes() {
    // Status replies every second, so the primary sees replay lag without a 10 s delay.
    let primary = dedicated_cluster(&[("wal_receiver_status_interval", "1s")]).await;
    let db = fresh_db_on(&primary, "standby_lag").await;
    let s = Scenario::on(
        db,
        "bf-standby",
        &fixtures::users_null_status(N),
        &paced_spec("max_replica_lag = \"1s\"\n"),
    )
    .await;
    let standby = {
        let primary = primary.clone();
        tokio::task::spawn_blocking(move || primary.start_standby())
            .await
            .expect("standby start task")
            .unwrap_or_else(|e| panic!("start a standby: {e}"))
    };
    let standby_name = standby.name().to_owned();
    let on_standby = standby.database("postgres").connect().await;
    let sql = &s.sql;
    let name = standby_name.as_str();
    support::poll(
        None,
        "the standby to stream",
        Duration::from_secs(30),
        || async move {
            sql.query_opt(
                "SELECT 1 FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming'",
                &[&name],
            )
            .await
            .unwrap()
            .is_some()
        },
    )
    .await;

    let ws = s.start(&[]).await;
    s.wait_rows_done(&ws, 1, 600).await;
    on_standby
        .execute("SELECT pg_wal_replay_pause()", &[])
        .await
        .unwrap();
    let wal = WalGenerator::start(&s.db).await;
    let prefix = format!("standby {standby_name} replay lag ");
    let (at, reason) = wait_throttled(&ws, &format!("\"{prefix}<lag> > 1s\""), |r| {
        r.starts_with(&prefix) && r.ends_with(" > 1s")
    })
    .await;
    eprintln!("throttled: {reason}");

    history_waits_live_goes_on(&s, &ws, at).await;

    on_standby
        .execute("SELECT pg_wal_replay_resume()", &[])
        .await
        .unwrap();
    wait_resumed(&ws, at).await;
    finishes_exact(&s, &ws).await;
    let commits = wal.stop().await;
    eprintln!("the WAL generator committed {commits} transactions");
    ws.stop_summary().await;
    drop(on_standby);
    drop(standby);
}

/// Guards the operator's throttle query (`throttle_query`, `throttle_query_max`): while it
/// returns 11 > 10 the backfill stops (checkpoint still for seconds), live changes are still
/// mirrored, the log gives the value and the limit; at 10 (not above the limit) it resumes
/// and ends exact.
#[tokio::test(flavor = "multi_thread")]
async fn throttle_query_holds_history_not_live_changes() {
    let setup = format!(
        "{};
         CREATE TABLE public.throttle_knob (value int);
         INSERT INTO public.throttle_knob VALUES (0)",
        fixtures::users_null_status(N)
    );
    let spec = paced_spec(
        "throttle_query = \"SELECT value FROM public.throttle_knob\"\nthrottle_query_max = 10\n",
    );
    let s = Scenario::new("bf-knob", &setup, &spec).await;
    let ws = s.start(&[]).await;
    s.wait_rows_done(&ws, 1, 600).await;

    s.sql
        .batch_execute("UPDATE public.throttle_knob SET value = 11")
        .await
        .unwrap();
    let (at, _) = wait_throttled(&ws, "\"throttle query returned 11 > 10\"", |r| {
        r == "throttle query returned 11 > 10"
    })
    .await;
    history_waits_live_goes_on(&s, &ws, at).await;

    s.sql
        .batch_execute("UPDATE public.throttle_knob SET value = 10")
        .await
        .unwrap();
    wait_resumed(&ws, at).await;
    finishes_exact(&s, &ws).await;
    ws.stop_summary().await;
}

/// Guards the retained-WAL throttle (`max_retained_wal`): another logical slot that never
/// advances while WAL is written retains more than 2MB; the backfill stops (checkpoint still
/// for seconds), live changes are still mirrored, the log names the slot and the limit; once
/// the slot is dropped the backfill resumes and ends exact. A dedicated cluster, so no other
/// test's slots count.
#[tokio::test(flavor = "multi_thread")]
async fn retained_wal_of_another_slot_holds_history_not_live_changes() {
    let cluster = dedicated_cluster(&[]).await;
    let db = fresh_db_on(&cluster, "retained_wal").await;
    let s = Scenario::on(
        db,
        "bf-retained",
        &fixtures::users_null_status(N),
        &paced_spec("max_retained_wal = \"2MB\"\n"),
    )
    .await;
    let ws = s.start(&[]).await;
    s.wait_rows_done(&ws, 1, 600).await;

    s.sql
        .batch_execute(
            "SELECT pg_create_logical_replication_slot('bf_lagging_consumer', 'pgoutput');
             CREATE TABLE public.wal_ballast (n int, pad text);
             INSERT INTO public.wal_ballast SELECT g, repeat('x', 1000) FROM generate_series(1, 4000) AS g",
        )
        .await
        .unwrap();
    let (at, reason) = wait_throttled(
        &ws,
        "\"slot bf_lagging_consumer retains <size> of WAL > 2.0MB\"",
        |r| r.starts_with("slot bf_lagging_consumer retains ") && r.ends_with(" of WAL > 2.0MB"),
    )
    .await;
    eprintln!("throttled: {reason}");
    history_waits_live_goes_on(&s, &ws, at).await;

    s.sql
        .batch_execute("SELECT pg_drop_replication_slot('bf_lagging_consumer')")
        .await
        .unwrap();
    wait_resumed(&ws, at).await;
    finishes_exact(&s, &ws).await;
    ws.stop_summary().await;
}

const PAUSED: &str = "paused by the operator";

/// Guards `walshift ctl pause|resume`: refused (exit 2) before any run; during a run, pause
/// stops the backfill (checkpoint still for seconds) while live changes are mirrored; SIGTERM
/// while paused exits 0; the pause is state in the database, so a new run starts paused and
/// copies nothing until `ctl resume`, then ends exact.
#[tokio::test(flavor = "multi_thread")]
async fn ctl_pause_holds_history_across_a_restart_until_resume() {
    let s = Scenario::new("bf-ctl", &fixtures::users_null_status(N), &paced_spec("")).await;
    let (code, out, err) = s.ctl("pause").await;
    assert_eq!(
        code,
        Some(2),
        "ctl before any run must fail: stdout {out:?}, stderr {err:?}"
    );
    assert!(
        err.contains("walshift run"),
        "ctl before any run should say to start `walshift run`: {err:?}"
    );

    let ws = s.start(&[]).await;
    s.wait_rows_done(&ws, 1, 600).await;
    let (code, out, err) = s.ctl("pause").await;
    assert!(
        code == Some(0) && out.contains("paused"),
        "ctl pause: exit {code:?}, stdout {out:?}, stderr {err:?}"
    );
    let (at, _) =
        wait_throttled(&ws, &format!("\"{PAUSED} ...\""), |r| r.starts_with(PAUSED)).await;
    history_waits_live_goes_on(&s, &ws, at).await;

    let before = s.checkpoints().await;
    ws.stop_summary().await;
    let ws = s.start(&[]).await;
    let (at, _) =
        wait_throttled(&ws, &format!("\"{PAUSED} ...\""), |r| r.starts_with(PAUSED)).await;
    let held = assert_still(&s, &ws, at, Duration::from_secs(2)).await;
    assert_eq!(held, before, "a restarted run copied history while paused");

    let (code, out, err) = s.ctl("resume").await;
    assert!(
        code == Some(0) && out.contains("resumed"),
        "ctl resume: exit {code:?}, stdout {out:?}, stderr {err:?}"
    );
    wait_resumed(&ws, at).await;
    finishes_exact(&s, &ws).await;
    ws.stop_summary().await;
}

// ---------------------------------------------------------------------------------------------
// Crash

/// Guards I6 and resumption: SIGKILL in the middle of the backfill, then a restart.
/// - At the kill, data and checkpoint agree exactly: every row up to `lower_key` is copied,
///   none after it (the chunk in flight rolled back with its checkpoint).
/// - After the restart, no finished range is copied again: rows of the finished range marked
///   behind walshift's back (as its own origin, so the stream skips them) keep the mark, and
///   the other finished rows keep their xmin; rows after `lower_key` marked the same way are
///   recomputed.
/// - The counters continue from the last committed chunk: `rows_done` ends at exactly the
///   table size and `chunks` at exactly `ROWS / 500 + 1`, not more.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_backfill_resumes_after_the_last_committed_chunk() {
    const ROWS: i64 = 30_250;
    const SIZE: i64 = 500;
    let spec = format!(
        "{}[backfill]\nmin_chunk_rows = {SIZE}\nmax_chunk_rows = {SIZE}\nmax_rows_per_second = 5000\n",
        STATUS.spec()
    );
    let s = Scenario::new("bf-kill", &fixtures::users_null_status(ROWS), &spec).await;
    let ws = s.start(&[]).await;
    s.wait_rows_done(&ws, 1, 8_000).await;
    let slot = ws.slot().to_owned();
    ws.kill().await;
    wait_inactive(&s.sql, &slot).await;
    wait_sessions_gone(&s).await;

    let at_kill = s.checkpoints().await[0].clone();
    eprintln!("at the kill: {at_kill:?}");
    let copied = at_kill.rows_done;
    assert!(
        !at_kill.done && copied > 0 && copied < ROWS - 2 * SIZE,
        "killed too late or too early to mean much: {at_kill:?}"
    );
    assert_eq!(
        (copied, at_kill.lower_key.clone()),
        (at_kill.chunks * SIZE, Some(vec![copied.to_string()])),
        "full chunks of {SIZE} over ids 1..: rows_done = chunks * {SIZE}, lower_key = last id copied"
    );
    let split = s
        .sql
        .query_one(
            "SELECT count(*) FILTER (WHERE id <= $1::bigint AND differs),
                    count(*) FILTER (WHERE id > $1::bigint AND NOT differs)
             FROM (SELECT id, status IS DISTINCT FROM
                          CASE WHEN is_active THEN 'active' ELSE 'disabled' END AS differs
                   FROM public.users) AS u",
            &[&copied],
        )
        .await
        .unwrap();
    let (missing, extra): (i64, i64) = (split.get(0), split.get(1));
    assert_eq!(
        (missing, extra),
        (0, 0),
        "at the kill, (rows up to lower_key not copied, rows after it copied) must be (0, 0): \
         data and checkpoint commit together"
    );

    let finished_marks = [1, copied / 2, copied];
    let pending_marks = [copied + 1, copied + SIZE + 1, ROWS];
    let fingerprint = format!(
        "SELECT md5(string_agg(id || ':' || xmin, ',' ORDER BY id)) FROM public.users
         WHERE id <= {copied} AND id NOT IN ({}, {}, {})",
        finished_marks[0], finished_marks[1], finished_marks[2]
    );
    let before: String = s.sql.query_one(&fingerprint, &[]).await.unwrap().get(0);
    tamper_as_walshift(
        &s,
        &[finished_marks.as_slice(), pending_marks.as_slice()].concat(),
    )
    .await;

    let ws = s.start(&[]).await;
    let cps = s.wait_done(&ws).await;
    wait_caught_up(&ws, &s.sql).await;

    let marked: Vec<i64> = s
        .sql
        .query(
            "SELECT id::bigint FROM public.users WHERE status = 'tampered' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        marked,
        finished_marks.to_vec(),
        "after the restart, exactly the marks in the finished range (ids <= {copied}) must \
         remain: a finished mark that is gone was copied again; a mark after {copied} that \
         remains was never copied"
    );
    let after: String = s.sql.query_one(&fingerprint, &[]).await.unwrap().get(0);
    assert_eq!(
        after, before,
        "rows of the finished range were rewritten after the restart"
    );
    assert_exact_progress(&cps[0], ROWS, SIZE);
    let diff = STATUS.diff(&s.sql).await;
    assert!(
        diff.differing == 3 && diff.sample.iter().all(|l| l.contains("has tampered")),
        "besides the three marks every row must equal the mapping: {}",
        diff.report()
    );
    ws.stop_summary().await;
}
