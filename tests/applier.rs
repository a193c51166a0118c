//! The applier's transactions travel as flights: statements sent back to back,
//! answers read in order (src/mirror/pipeline.rs). These tests guard what that
//! must not change, on a real PostgreSQL:
//!
//! - all or nothing (I4, I6): a statement failing in the middle of a batch or
//!   a chunk (not on a row's data: the database refuses it) leaves nothing
//!   committed (no target row, no recorded position, no moved checkpoint), the
//!   error returned is the one that caused it (not the 25P02 of the
//!   statements after it), and the session is idle, out of any transaction,
//!   so the retry runs clean;
//! - a row the mapping fails on (division by zero) is held, alone: the rest
//!   of its batch or chunk commits with the position or checkpoint;
//! - how many round trips a batch and a chunk cost, counted by a relay
//!   between the applier and the server, so a statement that sneaks back to a
//!   prepare-then-execute (two round trips of its own) fails the count.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_postgres::Client;
use walshift::catalog::{self, MirrorPlan};
use walshift::mirror::applier::{Applier, ApplierOptions, ApplyError, Batch, SESSION_SETTINGS};
use walshift::mirror::txn::{Key, MirrorKeys};
use walshift::spec::Spec;
use walshift::{Lsn, state};

const NAME: &str = "flights";

/// Two mirrors: `doubled.x = a * 2` and `ratio.y = 100 / b`, which fails for
/// `b = 0` (division by zero, 22012).
const SETUP: &str = "
    CREATE TABLE doubled (id bigint PRIMARY KEY, a int, x int);
    CREATE TABLE ratio (id bigint PRIMARY KEY, b int, y int);
    INSERT INTO doubled SELECT g, g, NULL FROM generate_series(1, 10) g;
    INSERT INTO ratio SELECT g, 1, NULL FROM generate_series(1, 10) g;";

const SPEC: &str = r#"
name = "flights"

[[mirror]]
source = "public.doubled"
set = { x = "a * 2" }

[[mirror]]
source = "public.ratio"
set = { y = "100 / b" }
"#;

async fn plans(admin: &Client) -> (Spec, Vec<MirrorPlan>) {
    let spec = Spec::from_str_named(SPEC, "flights.toml").expect("valid spec");
    let report = catalog::check(admin, &spec).await.expect("check ran");
    let plan = report.plan.unwrap_or_else(|| {
        panic!("spec does not fit: {:?}", report.problems);
    });
    (spec, plan.mirrors)
}

/// A fresh database with the tables, walshift's state row and the two
/// mirrors' checkpoint rows, as `run` leaves them before its first batch.
async fn prepared() -> (walshift_cluster::Database, Client, Spec, Vec<MirrorPlan>) {
    let db = support::fresh_db().await;
    let admin = db.connect().await;
    admin.batch_execute(SETUP).await.expect("setup");
    let (spec, plans) = plans(&admin).await;
    state::ensure_schema(&admin).await.expect("state schema");
    state::register(&admin, &spec, None)
        .await
        .expect("state row");
    state::backfill_rows(&admin, NAME, &[10, 10])
        .await
        .expect("checkpoint rows");
    (db, admin, spec, plans)
}

async fn applier(client: Client, spec: &Spec, plans: &[MirrorPlan]) -> Applier {
    client
        .batch_execute(SESSION_SETTINGS)
        .await
        .expect("session settings");
    Applier::new(client, &spec.name, plans, false, ApplierOptions::default())
        .await
        .expect("applier")
}

fn keys(ids: &[i64]) -> MirrorKeys {
    MirrorKeys {
        keys: ids
            .iter()
            .map(|i| -> Key { vec![Box::<str>::from(i.to_string())].into_boxed_slice() })
            .collect(),
        ..Default::default()
    }
}

fn batch(doubled: &[i64], ratio: &[i64], end: u64) -> Batch {
    Batch {
        mirrors: vec![keys(doubled), keys(ratio)],
        end_lsn: Lsn(end),
        txns: 1,
        ..Default::default()
    }
}

async fn count(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.expect(sql).get(0)
}

/// The position walshift's state row records as applied (`walshift.migration.applied_lsn`),
/// if any.
async fn applied_lsn(admin: &Client) -> Option<String> {
    admin
        .query_one(
            "SELECT applied_lsn::text FROM walshift.migration WHERE name = $1",
            &[&NAME],
        )
        .await
        .unwrap()
        .get(0)
}

/// The applier session's state in `pg_stat_activity`: "idle" between
/// transactions, "idle in transaction (aborted)" if a failed flight had left
/// its transaction open.
async fn session_state(admin: &Client, pid: i32) -> String {
    admin
        .query_one("SELECT state FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .await
        .expect("pg_stat_activity")
        .get(0)
}

/// [`prepared`] with a trigger that refuses mirror 2's write of `ratio` at
/// `id` as a lost privilege would (42501: not about the row's data, so the
/// statement fails as a whole), and an applier on a new session: the admin
/// session, the applier, and the applier session's backend pid. Dropping
/// the trigger `refuse` lets the writes through.
async fn failing_at(id: i64) -> (Client, Applier, i32) {
    let (db, admin, spec, plans) = prepared().await;
    admin
        .batch_execute(&format!(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'refused by the test' USING ERRCODE = '42501'; END $$;
             CREATE TRIGGER refuse BEFORE UPDATE ON ratio FOR EACH ROW WHEN (NEW.id = {id})
               EXECUTE FUNCTION refuse();"
        ))
        .await
        .unwrap();
    applier_on(db, admin, spec, plans).await
}

/// [`prepared`] with `ratio.b = 0` at `zero_id` (mirror 2's recompute divides
/// by zero there: 22012, about that row's data), as [`failing_at`].
async fn dividing_by_zero_at(zero_id: i64) -> (Client, Applier, i32) {
    let (db, admin, spec, plans) = prepared().await;
    admin
        .execute("UPDATE ratio SET b = 0 WHERE id = $1", &[&zero_id])
        .await
        .unwrap();
    applier_on(db, admin, spec, plans).await
}

async fn applier_on(
    db: walshift_cluster::Database,
    admin: Client,
    spec: Spec,
    plans: Vec<MirrorPlan>,
) -> (Client, Applier, i32) {
    let client = db.connect().await;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    (admin, applier(client, &spec, &plans).await, pid)
}

#[tokio::test]
async fn a_failing_statement_in_a_batch_commits_nothing_and_leaves_the_session_idle() {
    let (admin, mut applier, applier_pid) = failing_at(3).await;

    // Mirror 1's statement comes first in the flight and succeeds; mirror 2's
    // fails on id 3; the COMMIT after them must roll mirror 1's rows back.
    let err = applier
        .apply(&batch(&[1, 2], &[2, 3], 0x100))
        .await
        .expect_err("the refused write must fail the batch");
    match &err {
        ApplyError::Mirror {
            mirror, sqlstate, ..
        } => {
            assert!(mirror.contains("ratio"), "{err}");
            assert_eq!(sqlstate.as_deref(), Some("42501"), "{err}");
        }
        other => panic!("expected mirror 2's refused write, got {other}"),
    }
    assert_eq!(
        count(&admin, "SELECT count(*) FROM doubled WHERE x IS NOT NULL").await,
        0,
        "mirror 1's rows were committed although the batch failed"
    );
    assert_eq!(
        count(&admin, "SELECT count(*) FROM ratio WHERE y IS NOT NULL").await,
        0
    );
    assert_eq!(
        applied_lsn(&admin).await,
        None,
        "a failed batch recorded its position"
    );
    assert_eq!(session_state(&admin, applier_pid).await, "idle");

    // The database lets it through: the same batch applies, on the same session.
    admin
        .batch_execute("DROP TRIGGER refuse ON ratio")
        .await
        .unwrap();
    let stats = applier
        .apply(&batch(&[1, 2], &[2, 3], 0x100))
        .await
        .expect("the batch applies once the write is allowed");
    assert_eq!((stats.keys, stats.rows_written), (4, 4));
    assert_eq!(
        count(&admin, "SELECT count(*) FROM doubled WHERE x = a * 2").await,
        2
    );
    assert_eq!(
        count(&admin, "SELECT count(*) FROM ratio WHERE y = 100 / b").await,
        2
    );
    assert_eq!(applied_lsn(&admin).await.as_deref(), Some("0/100"));
    assert_eq!(session_state(&admin, applier_pid).await, "idle");
}

#[tokio::test]
async fn a_failing_chunk_keeps_its_checkpoint_and_the_retry_goes_on_from_it() {
    let (admin, mut applier, applier_pid) = failing_at(7).await;
    let checkpoint = || async {
        let row = admin
            .query_one(
                "SELECT lower_key, rows_done, chunks FROM walshift.backfill
                 WHERE name = $1 AND mirror = 2",
                &[&NAME],
            )
            .await
            .unwrap();
        (
            row.get::<_, Option<Vec<String>>>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
        )
    };

    let first = applier
        .backfill_chunk(1, None, 5)
        .await
        .expect("ids 1-5 have no zero");
    assert_eq!(first.upper, Some(vec!["5".to_string()]));
    assert_eq!((first.rows, first.written), (5, 5));
    assert_eq!(checkpoint().await, (Some(vec!["5".into()]), 5, 1));

    let err = applier
        .backfill_chunk(1, first.upper.as_deref(), 5)
        .await
        .expect_err("the write of id 7 is refused");
    assert!(
        matches!(&err, ApplyError::Mirror { sqlstate, .. } if sqlstate.as_deref() == Some("42501")),
        "expected the refused write, got {err}"
    );
    assert_eq!(
        checkpoint().await,
        (Some(vec!["5".into()]), 5, 1),
        "a failed chunk moved its checkpoint"
    );
    assert_eq!(
        count(&admin, "SELECT count(*) FROM ratio WHERE y IS NOT NULL").await,
        5,
        "a failed chunk committed rows"
    );
    assert_eq!(session_state(&admin, applier_pid).await, "idle");

    admin
        .batch_execute("DROP TRIGGER refuse ON ratio")
        .await
        .unwrap();
    let second = applier
        .backfill_chunk(1, first.upper.as_deref(), 5)
        .await
        .expect("the retry goes on from the checkpoint");
    assert_eq!(second.upper, Some(vec!["10".to_string()]));
    let last = applier
        .backfill_chunk(1, second.upper.as_deref(), 5)
        .await
        .expect("the last chunk");
    assert_eq!((last.upper, last.rows), (None, 0));
    assert_eq!(checkpoint().await, (None, 10, 3));
    assert_eq!(
        count(&admin, "SELECT count(*) FROM ratio WHERE y = 100 / b").await,
        10
    );
    assert_eq!(session_state(&admin, applier_pid).await, "idle");
}

/// The keys walshift holds for mirror `mirror`, with their SQLSTATEs.
async fn held(admin: &Client, mirror: i32) -> Vec<(Vec<String>, String)> {
    admin
        .query(
            "SELECT key, sqlstate FROM walshift.keys WHERE name = $1 AND mirror = $2 AND kind = 'held' ORDER BY key",
            &[&NAME, &mirror],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn a_row_the_mapping_fails_on_is_held_and_the_rest_of_the_batch_commits() {
    let (admin, mut applier, applier_pid) = dividing_by_zero_at(3).await;
    let stats = applier
        .apply(&batch(&[1, 2], &[2, 3, 4], 0x100))
        .await
        .expect("the batch commits without its failing key");
    assert_eq!(stats.keys, 4, "{stats:?}");
    assert_eq!(
        count(&admin, "SELECT count(*) FROM doubled WHERE x = a * 2").await,
        2
    );
    assert_eq!(
        count(
            &admin,
            "SELECT count(*) FROM ratio WHERE id IN (2, 4) AND y = 100 / b"
        )
        .await,
        2
    );
    assert_eq!(
        count(
            &admin,
            "SELECT count(*) FROM ratio WHERE id = 3 AND y IS NULL"
        )
        .await,
        1
    );
    assert_eq!(
        held(&admin, 2).await,
        [(vec!["3".to_string()], "22012".to_string())]
    );
    assert_eq!(applied_lsn(&admin).await.as_deref(), Some("0/100"));
    assert_eq!(applier.held_total(), 1);
    assert_eq!(session_state(&admin, applier_pid).await, "idle");

    // Its row changes (the key comes in a batch again): fixed, forgotten.
    admin
        .batch_execute("UPDATE ratio SET b = 5 WHERE id = 3")
        .await
        .unwrap();
    applier
        .apply(&batch(&[], &[3], 0x200))
        .await
        .expect("the fixed key applies");
    assert_eq!(
        count(&admin, "SELECT count(*) FROM ratio WHERE id = 3 AND y = 20").await,
        1
    );
    assert!(held(&admin, 2).await.is_empty());
    assert_eq!(applier.held_total(), 0);
}

#[tokio::test]
async fn a_chunk_with_a_row_the_mapping_fails_on_holds_it_and_moves_its_checkpoint() {
    let (admin, mut applier, applier_pid) = dividing_by_zero_at(7).await;
    let first = applier.backfill_chunk(1, None, 5).await.expect("ids 1-5");
    let second = applier
        .backfill_chunk(1, first.upper.as_deref(), 5)
        .await
        .expect("the chunk commits without id 7");
    assert_eq!(second.upper, Some(vec!["10".to_string()]));
    assert_eq!((second.rows, second.written), (5, 4));
    let checkpoint = admin
        .query_one(
            "SELECT lower_key, rows_done FROM walshift.backfill WHERE name = $1 AND mirror = 2",
            &[&NAME],
        )
        .await
        .unwrap();
    assert_eq!(
        checkpoint.get::<_, Option<Vec<String>>>(0),
        Some(vec!["10".to_string()])
    );
    assert_eq!(checkpoint.get::<_, i64>(1), 10);
    assert_eq!(
        count(
            &admin,
            "SELECT count(*) FROM ratio WHERE id <> 7 AND y = 100 / b"
        )
        .await,
        9
    );
    assert_eq!(
        held(&admin, 2).await,
        [(vec!["7".to_string()], "22012".to_string())]
    );
    assert_eq!(session_state(&admin, applier_pid).await, "idle");
}

/// A unix-socket relay in front of the server that counts round trips: the
/// times the client sends after the server has answered. Requests sent back
/// to back, before any answer is read, count once.
struct Relay {
    dir: tempfile::TempDir,
    port: u16,
    round_trips: Arc<AtomicU64>,
}

impl Relay {
    async fn start(server_socket: std::path::PathBuf, port: u16) -> Relay {
        let dir = tempfile::tempdir().expect("relay dir");
        let listener =
            UnixListener::bind(dir.path().join(format!(".s.PGSQL.{port}"))).expect("bind relay");
        let round_trips = Arc::new(AtomicU64::new(0));
        let counter = round_trips.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = UnixStream::connect(&server_socket)
                    .await
                    .expect("relay to the server");
                // true once the server has sent something since the client last did.
                let answered = Arc::new(AtomicBool::new(true));
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let (a, n) = (answered.clone(), counter.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    // The flag is taken before the bytes go on and set before
                    // the answer goes on: otherwise an answer that came back
                    // while the request was still being forwarded would be
                    // cleared with it, and the next request not counted.
                    while let Ok(len) = cr.read(&mut buf).await {
                        if len > 0 && a.swap(false, Ordering::SeqCst) {
                            n.fetch_add(1, Ordering::SeqCst);
                        }
                        if len == 0 || sw.write_all(&buf[..len]).await.is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(len) = sr.read(&mut buf).await {
                        if len > 0 {
                            answered.store(true, Ordering::SeqCst);
                        }
                        if len == 0 || cw.write_all(&buf[..len]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Relay {
            dir,
            port,
            round_trips,
        }
    }

    fn conninfo(&self, db: &walshift_cluster::Database) -> String {
        // The database's own conninfo, pointed at the relay's socket directory.
        let theirs = db.conninfo();
        let rest: Vec<&str> = theirs
            .split_whitespace()
            .filter(|kv| !kv.starts_with("host=") && !kv.starts_with("port="))
            .collect();
        format!(
            "host={} port={} {}",
            self.dir.path().display(),
            self.port,
            rest.join(" ")
        )
    }

    fn count(&self) -> u64 {
        self.round_trips.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_batch_costs_two_round_trips_and_a_chunk_two() {
    let (db, admin, spec, plans) = prepared().await;
    let cluster = support::shared_cluster();
    let socket = cluster
        .socket_dir()
        .join(format!(".s.PGSQL.{}", cluster.port()));
    let relay = Relay::start(socket, cluster.port()).await;
    let client = support::connect(&relay.conninfo(&db)).await;
    let mut applier = applier(client, &spec, &plans).await;

    // A batch touching both mirrors: the barrier's snapshot, then BEGIN,
    // the position, two recomputes and COMMIT in one flight.
    let mut b = batch(&[1, 2, 3], &[4, 5], 0x200);
    // A committed transaction: the barrier passes at its first look.
    let xid: i64 = admin
        .query_one("SELECT pg_current_xact_id()::text::bigint", &[])
        .await
        .unwrap()
        .get(0);
    b.xids = vec![xid as u32];
    let before = relay.count();
    let stats = applier.apply(&b).await.expect("batch");
    assert_eq!(stats.rows_written, 5);
    assert_eq!(relay.count() - before, 2, "round trips of one live batch");

    // A chunk with an upper bound: BEGIN + bound, then recompute +
    // checkpoint + COMMIT.
    let before = relay.count();
    let out = applier.backfill_chunk(0, None, 4).await.expect("chunk");
    assert!(out.upper.is_some());
    assert_eq!(
        relay.count() - before,
        2,
        "round trips of one backfill chunk"
    );

    // The last chunk also counts the rows it covered.
    let before = relay.count();
    let out = applier
        .backfill_chunk(0, out.upper.as_deref(), 100)
        .await
        .expect("last chunk");
    assert_eq!((out.upper, out.rows), (None, 6));
    assert_eq!(relay.count() - before, 3, "round trips of the last chunk");
}

/// Orders in the catch-up batch of [`a_recompute_is_planned_for_its_batch_not_for_an_empty_target`].
const CATCH_UP_ORDERS: i64 = 10_000;

/// A recompute must be planned for the batch it runs, with the target as it is now.
///
/// The applier prepares its statements once. PostgreSQL plans a prepared statement with its
/// parameters for five executions, then switches to one generic plan if that looks no dearer,
/// and keeps it until the tables' statistics change. Prepared when a rows-mode target is empty
/// (a new table, analyzed once, then filled by the backfill before autovacuum analyzes it
/// again), the generic plan of the rows statement probes the target with a sequential scan per
/// desired row: a 10,000-key catch-up batch then ran past a minute (measured, planted: remove
/// `plan_cache_mode` from `SESSION_SETTINGS` and the plan below shows `$1` in place of the keys)
/// where the batch's own plan takes under a second. [`SESSION_SETTINGS`] plans every execution
/// with its keys.
#[tokio::test(flavor = "multi_thread")]
async fn a_recompute_is_planned_for_its_batch_not_for_an_empty_target() {
    use support::fixtures::{SCHEMA, order_items_qty_diff, orders_mirror};
    use walshift::catalog::MirrorKind;
    use walshift::mirror::sql::{Scope, rows_apply};

    let db = support::fresh_db().await;
    let admin = db.connect().await;
    admin.batch_execute(SCHEMA).await.expect("schema");
    // Analyzed while empty; no autovacuum to analyze it again while the test runs.
    admin
        .batch_execute(
            "ALTER TABLE order_items SET (autovacuum_enabled = off); ANALYZE order_items",
        )
        .await
        .expect("empty target analyzed");
    let name = "catch-up";
    let spec = Spec::from_str_named(&format!("name = \"{name}\"\n{}", orders_mirror()), "t.toml")
        .expect("valid spec");
    let report = catalog::check(&admin, &spec).await.expect("check ran");
    let plans = report.plan.expect("the spec fits").mirrors;
    let MirrorKind::Rows(rows) = &plans[0].kind else {
        panic!("orders -> order_items is a rows mirror")
    };
    state::ensure_schema(&admin).await.expect("state schema");
    state::register(&admin, &spec, None)
        .await
        .expect("state row");
    state::backfill_rows(&admin, name, &[0])
        .await
        .expect("checkpoint row");

    // The statement as the applier prepares it, on a session set up as the applier's; and the
    // applier itself. Both run small batches against the empty target first.
    let session = db.connect().await;
    session
        .batch_execute(SESSION_SETTINGS)
        .await
        .expect("settings");
    let sql = rows_apply(rows, Scope::Keys).sql;
    session
        .batch_execute(&format!("PREPARE recompute AS {sql}"))
        .await
        .expect("prepare");
    let mut applier = applier(db.connect().await, &spec, &plans).await;
    // Live batches of a few dozen keys: dearer to plan one by one than the generic plan looks
    // (it assumes ten keys), so PostgreSQL would switch to it after the fifth.
    for round in 0..8_i64 {
        let ids: Vec<i64> = (round * 50 + 1..=round * 50 + 50).collect();
        let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        session
            .batch_execute(&format!("EXECUTE recompute('{{{list}}}')"))
            .await
            .expect("small recompute");
        let b = Batch {
            mirrors: vec![keys(&ids)],
            end_lsn: Lsn(round as u64 + 1),
            txns: 1,
            ..Default::default()
        };
        applier.apply(&b).await.expect("small batch");
    }

    // The target fills (as a backfill fills it) without being analyzed; then every order
    // changes: one catch-up batch with all the keys.
    admin
        .batch_execute(&format!(
            "INSERT INTO orders SELECT g, (SELECT jsonb_agg(jsonb_build_object('sku', 's' || n, 'qty', n))
                                           FROM generate_series(1, 5) n)
             FROM generate_series(1, {CATCH_UP_ORDERS}) g;
             INSERT INTO order_items
             SELECT o.id, i.n, i.v->>'sku', (i.v->>'qty')::int
             FROM orders AS o, jsonb_array_elements(o.items) WITH ORDINALITY AS i(v, n);
             UPDATE orders SET items = jsonb_set(items, '{{0,qty}}', '9');"
        ))
        .await
        .expect("fill and change");
    let all: Vec<i64> = (1..=CATCH_UP_ORDERS).collect();
    let array = format!(
        "{{{}}}",
        all.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
    );
    // EXPLAIN EXECUTE plans as EXECUTE does (custom or the cached generic plan); a utility
    // statement takes no parameters, so the keys go in as a literal.
    let plan: String = session
        .simple_query(&format!("EXPLAIN EXECUTE recompute('{array}')"))
        .await
        .expect("explain")
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|l| l.to_owned() + "\n"),
            _ => None,
        })
        .collect();
    assert!(
        plan.contains("{1,2,3,4,5,"),
        "the catch-up batch is planned without its keys (a generic plan made for the empty \
         target):\n{plan}"
    );

    let b = Batch {
        mirrors: vec![keys(&all)],
        end_lsn: Lsn(100),
        txns: 1,
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let stats = tokio::time::timeout(std::time::Duration::from_secs(60), applier.apply(&b))
        .await
        .expect("the catch-up batch finishes within a minute (it takes about 0.2 s)")
        .expect("catch-up batch");
    eprintln!(
        "catch-up batch of {CATCH_UP_ORDERS} keys: {:?}",
        started.elapsed()
    );
    assert_eq!(stats.rows_written, CATCH_UP_ORDERS as u64);
    assert_eq!(order_items_qty_diff(&admin).await, 0);
}
