//! Where walshift's extra time goes (`BACKFILL_BENCH_PROFILE=1`): three
//! variants between the two contenders, each adding one of walshift's costs
//! to the in-server loop.
//!
//! ```text
//!  in-server DO ──+ a pgoutput consumer on the source ─▶ "decoding tax"   (stream)
//!               ──+ walshift's engine, no stream      ─▶ "engine tax"     (round trips,
//!                   (Backfill::step over Applier, in this process)          checkpoint row, throttle)
//!               ──  the same chunk steps by hand, timed one by one ─▶ per-step split
//! ```
//!
//! The consumer is `pg_recvlogical` with pgoutput on a publication of the
//! source, so the server decodes and sends every change as it does for
//! walshift's slot (on PostgreSQL < 16 pgoutput cannot drop walshift's own
//! writes, origin = none, so they are all sent).

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_postgres::types::ToSql;
use walshift::backfill::{Backfill, LiveLag, SharedProgress};
use walshift::catalog::{MirrorKind, MirrorPlan};
use walshift::mirror::applier::{Applier, ApplierOptions, SESSION_SETTINGS};
use walshift::mirror::sql::{self, Param, Scope};
use walshift::spec::Spec;
use walshift::state;
use walshift_cluster::Database;

use crate::support::backfill::fixture::apply_session;
use crate::support::backfill::process::{cpu_seconds, slot_walsender, wait_slot_released};

const SLOT: &str = "walshift_bench_consumer";
const PUBLICATION: &str = "walshift_bench_consumer";

/// The in-server loop while a pgoutput consumer streams the source.
#[derive(Debug, Clone, Default)]
pub struct WithConsumer {
    pub total_s: f64,
    pub cpu_backend_s: f64,
    pub cpu_walsender_s: f64,
    pub cpu_consumer_s: f64,
}

pub async fn in_server_with_consumer(
    admin: &Client,
    db: &Database,
    bin_dir: &Path,
    source: &str,
    block: &str,
) -> WithConsumer {
    for s in [
        format!("CREATE PUBLICATION {PUBLICATION} FOR TABLE {source}"),
        format!("SELECT pg_create_logical_replication_slot('{SLOT}', 'pgoutput')"),
    ] {
        admin.batch_execute(&s).await.expect(&s);
    }
    let mut consumer = Command::new(bin_dir.join("pg_recvlogical"))
        .args(["-d", &db.conninfo(), "-S", SLOT, "--start", "--no-loop"])
        .args(["-o", "proto_version=1", "-o"])
        .arg(format!("publication_names={PUBLICATION}"))
        .args(["-F", "0", "-f", "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pg_recvlogical");
    let sender = slot_walsender(admin, SLOT, Duration::from_secs(900)).await;
    let sample = crate::support::backfill::fixture::in_server(db, block).await;
    let cpu_walsender_s = cpu_seconds(sender);
    let cpu_consumer_s = cpu_seconds(consumer.id() as i32);
    // SAFETY: SIGINT to our own child, not yet reaped; pg_recvlogical exits
    // cleanly on it.
    unsafe {
        libc::kill(consumer.id() as i32, libc::SIGINT);
    }
    let _ = consumer.wait();
    wait_slot_released(admin, SLOT).await;
    for s in [
        format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{SLOT}'"
        ),
        format!("DROP PUBLICATION {PUBLICATION}"),
    ] {
        admin.batch_execute(&s).await.expect(&s);
    }
    WithConsumer {
        total_s: sample.total_s,
        cpu_backend_s: sample.cpu_backend_s,
        cpu_walsender_s,
        cpu_consumer_s,
    }
}

/// walshift's own backfill loop (throttle check, then `Backfill::step`) in
/// this process, on an applier session, with no replication stream.
pub async fn engine_without_stream(
    admin: &Client,
    db: &Database,
    spec: &Spec,
    plan: &MirrorPlan,
) -> (f64, f64) {
    state::ensure_schema(admin).await.expect("state schema");
    state::register(admin, spec, None).await.expect("state row");
    let (client, pid) = apply_session(db).await;
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let plans = std::slice::from_ref(plan);
    let mut applier = Applier::new(client, &spec.name, plans, false, ApplierOptions::default())
        .await
        .expect("applier");
    let mut backfill = Backfill::load(
        applier.client(),
        spec,
        plans,
        applier.labels(),
        Arc::new(LiveLag::default()),
        SharedProgress::default(),
    )
    .await
    .expect("load the backfill state");
    while !backfill.is_done() {
        let throttled = backfill
            .throttled(applier.client())
            .await
            .expect("throttle signals");
        assert!(throttled.is_none(), "throttled: {throttled:?}");
        backfill.step(&mut applier).await.expect("backfill chunk");
    }
    let total_s = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu_before;
    drop(applier);
    admin
        .batch_execute("DROP SCHEMA walshift CASCADE")
        .await
        .expect("drop the state schema");
    (total_s, cpu)
}

/// Seconds spent per step of walshift's chunk: the same statements as
/// `Applier::backfill_chunk`, but each on its own round trip (a prepare, then
/// the execution), so each can be timed. walshift itself sends them in two
/// flights (BEGIN with the bound; the recompute with the checkpoint and
/// COMMIT), so this replay's total is an upper bound of its round trips.
#[derive(Debug, Clone, Default)]
pub struct Steps {
    pub chunks: u64,
    pub total_s: f64,
    pub begin_s: f64,
    pub bound_s: f64,
    pub count_s: f64,
    pub apply_s: f64,
    pub checkpoint_s: f64,
    pub commit_s: f64,
}

impl Steps {
    pub fn line(&self) -> String {
        let mut s = format!("{:.2}s over {} chunks: ", self.total_s, self.chunks);
        let parts = [
            ("BEGIN", self.begin_s),
            ("bound", self.bound_s),
            ("last-chunk count", self.count_s),
            ("apply", self.apply_s),
            ("checkpoint row", self.checkpoint_s),
            ("COMMIT", self.commit_s),
        ];
        let listed: Vec<String> = parts
            .iter()
            .map(|(what, t)| format!("{what} {t:.3}s ({:.1}%)", 100.0 * t / self.total_s))
            .collect();
        let _ = write!(s, "{}", listed.join(", "));
        s
    }
}

pub async fn replay_steps(admin: &Client, db: &Database, plan: &MirrorPlan, chunk: u64) -> Steps {
    // A stand-in for walshift.backfill, updated like RECORD_CHUNK does.
    admin
        .batch_execute(
            "CREATE TABLE public.bench_checkpoint (lower_key text[], done boolean NOT NULL DEFAULT false,
                 rows_done bigint NOT NULL DEFAULT 0, chunks bigint NOT NULL DEFAULT 0, updated_at timestamptz);
             INSERT INTO public.bench_checkpoint DEFAULT VALUES",
        )
        .await
        .expect("checkpoint table");
    let mut client = db.connect().await;
    client
        .batch_execute(SESSION_SETTINGS)
        .await
        .expect("session settings");
    let mut steps = Steps::default();
    let mut lower: Option<Vec<String>> = None;
    let started = Instant::now();
    loop {
        let t = Instant::now();
        let tx = client.transaction().await.expect("BEGIN");
        steps.begin_s += t.elapsed().as_secs_f64();

        let t = Instant::now();
        let bound = sql::chunk_upper_bound(&plan.source, &plan.key, lower.is_some());
        let n = chunk as i64;
        let upper: Option<Vec<String>> = tx
            .query_opt(&bound.sql, &bind(&bound.params, lower.as_deref(), None, &n))
            .await
            .expect("bound")
            .map(|r| (0..plan.key.len()).map(|c| r.get::<_, String>(c)).collect());
        steps.bound_s += t.elapsed().as_secs_f64();

        let t = Instant::now();
        let covered = match upper {
            Some(_) => n,
            None => {
                let count = sql::range_count(&plan.source, &plan.key, lower.is_some());
                tx.query_one(&count.sql, &bind(&count.params, lower.as_deref(), None, &n))
                    .await
                    .expect("count")
                    .get::<_, i64>(0)
            }
        };
        steps.count_s += t.elapsed().as_secs_f64();

        let t = Instant::now();
        let scope = Scope::Range {
            lower: lower.is_some(),
            upper: upper.is_some(),
        };
        match &plan.kind {
            MirrorKind::Set(p) => {
                let s = sql::set_apply(p, scope);
                tx.execute(
                    &s.sql,
                    &bind(&s.params, lower.as_deref(), upper.as_deref(), &n),
                )
                .await
                .expect("apply");
            }
            MirrorKind::Rows(p) => {
                let s = sql::rows_apply(p, scope);
                tx.query_one(
                    &s.sql,
                    &bind(&s.params, lower.as_deref(), upper.as_deref(), &n),
                )
                .await
                .expect("apply");
            }
        }
        steps.apply_s += t.elapsed().as_secs_f64();

        let t = Instant::now();
        tx.execute(
            "UPDATE public.bench_checkpoint
             SET lower_key = $1::text[], done = ($1::text[] IS NULL), rows_done = rows_done + $2::bigint,
                 chunks = chunks + 1, updated_at = now()",
            &[&upper, &covered],
        )
        .await
        .expect("checkpoint row");
        steps.checkpoint_s += t.elapsed().as_secs_f64();

        let t = Instant::now();
        tx.commit().await.expect("COMMIT");
        steps.commit_s += t.elapsed().as_secs_f64();
        steps.chunks += 1;
        match upper {
            Some(u) => lower = Some(u),
            None => break,
        }
    }
    steps.total_s = started.elapsed().as_secs_f64();
    admin
        .batch_execute("DROP TABLE public.bench_checkpoint")
        .await
        .expect("drop the checkpoint table");
    steps
}

fn bind<'a>(
    params: &[Param],
    lower: Option<&'a [String]>,
    upper: Option<&'a [String]>,
    n: &'a i64,
) -> Vec<&'a (dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| -> &'a (dyn ToSql + Sync) {
            match *p {
                Param::Lower(i) => &lower.expect("a lower bound")[i],
                Param::Upper(i) => &upper.expect("an upper bound")[i],
                Param::ChunkRows | Param::Limit => n,
                Param::KeyArray(_) => panic!("a range statement binds no key arrays"),
            }
        })
        .collect()
}
