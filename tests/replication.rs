//! The WAL subscription against a real PostgreSQL: every kind of change
//! arrives decoded, restarts resume exactly at the confirmed position, idle
//! slots do not pin WAL, and a slow consumer is not dropped by the server.

mod support;

use std::time::Duration;

use bytes::Bytes;
use walshift::Lsn;
use walshift::conninfo::ConnConfig;
use walshift::pgoutput::{
    Decoder, DecoderOptions, LogicalMessage, OldTuple, ReplicaIdentity, TupleColumn,
};
use walshift::replication::{
    LogicalStream, ReplicationClient, ReplicationEvent, SlotOptions, SnapshotAction, StreamOptions,
};

const WAIT: Duration = Duration::from_secs(30);

/// A test's view of one logical slot: stream + decoder.
struct Tap {
    stream: LogicalStream,
    decoder: Decoder,
}

impl Tap {
    /// Creates publication `pub` over `tables` and slot `slot`, then streams.
    async fn open(
        conninfo: &str,
        tables: &str,
        slot: &str,
        proto_version: u32,
        extra: &[(&str, &str)],
    ) -> Tap {
        let sql = support::connect(conninfo).await;
        sql.batch_execute(&format!("CREATE PUBLICATION pub FOR TABLE {tables}"))
            .await
            .unwrap();
        let mut repl = repl_client(conninfo).await;
        repl.create_logical_slot(slot, SlotOptions::default())
            .await
            .unwrap();
        Self::start(repl, slot, proto_version, extra, StreamOptions::default()).await
    }

    async fn start(
        repl: ReplicationClient,
        slot: &str,
        proto_version: u32,
        extra: &[(&str, &str)],
        options: StreamOptions,
    ) -> Tap {
        let mut opts = vec![
            ("proto_version".to_string(), proto_version.to_string()),
            ("publication_names".to_string(), "\"pub\"".to_string()),
            ("messages".to_string(), "true".to_string()),
        ];
        opts.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let stream = LogicalStream::start(repl, slot, Lsn::INVALID, &opts, options)
            .await
            .unwrap();
        Tap {
            stream,
            decoder: Decoder::new(DecoderOptions {
                proto_version,
                streaming_parallel: false,
            }),
        }
    }

    /// The next decoded message, skipping keepalives. One deadline for the
    /// whole wait: keepalives must not extend it.
    async fn next(&mut self) -> LogicalMessage {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let ev = tokio::time::timeout_at(deadline, self.stream.recv())
                .await
                .expect("no message within 30s")
                .expect("stream ended")
                .expect("stream error");
            if let ReplicationEvent::XLogData { data, .. } = ev {
                return self.decoder.decode(data).expect("decodes");
            }
        }
    }

    /// One whole transaction: Begin .. Commit, returning what is between
    /// (Relation messages included) and the Commit.
    async fn txn(&mut self) -> (Vec<LogicalMessage>, walshift::pgoutput::Commit) {
        let first = self.next().await;
        assert!(
            matches!(first, LogicalMessage::Begin(_)),
            "expected Begin, got {first:?}"
        );
        let mut body = Vec::new();
        loop {
            match self.next().await {
                LogicalMessage::Commit(c) => return (body, c),
                m => body.push(m),
            }
        }
    }
}

/// `server_version_num`, e.g. 140023.
async fn server_version(sql: &tokio_postgres::Client) -> i32 {
    sql.query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0)
}

async fn repl_client(conninfo: &str) -> ReplicationClient {
    ReplicationClient::connect(&ConnConfig::parse(conninfo).unwrap())
        .await
        .expect("replication connection")
}

fn text(s: &str) -> TupleColumn {
    TupleColumn::Text(Bytes::copy_from_slice(s.as_bytes()))
}

/// Data messages (not Relation/Type) of a transaction.
fn changes(body: Vec<LogicalMessage>) -> Vec<LogicalMessage> {
    body.into_iter()
        .filter(|m| !matches!(m, LogicalMessage::Relation(_) | LogicalMessage::Type(_)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn identify_system_and_slot_lifecycle() {
    let db = support::fresh_db().await;
    let mut repl = repl_client(&db.conninfo()).await;
    let sys = repl.identify_system().await.unwrap();
    assert!(sys.xlogpos.is_valid());
    assert_eq!(sys.dbname.as_deref(), Some(db.name()));
    assert!(repl.server_version_num() >= 140000);

    let slot = repl
        .create_logical_slot(
            "lifecycle",
            SlotOptions {
                temporary: false,
                snapshot: SnapshotAction::Export,
                two_phase: false,
                failover: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(slot.slot_name, "lifecycle");
    assert!(slot.consistent_point >= sys.xlogpos);
    assert!(slot.snapshot_name.is_some(), "exported snapshot has a name");
    assert_eq!(slot.output_plugin.as_deref(), Some("pgoutput"));

    let err = repl
        .create_logical_slot("lifecycle", SlotOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("42710"), "duplicate slot: {err}");
    assert!(err.to_string().contains("already exists"), "{err}");

    repl.drop_slot("lifecycle", false).await.unwrap();
    let err = repl.drop_slot("lifecycle", false).await.unwrap_err();
    assert_eq!(err.code(), Some("42704"), "{err}");
    // The connection is still usable after errors.
    assert!(repl.identify_system().await.is_ok());
    repl.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn use_snapshot_sees_exactly_the_state_at_the_consistent_point() {
    let db = support::fresh_db().await;
    let sql = db.connect().await;
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let mut repl = repl_client(&db.conninfo()).await;
    repl.simple_query("BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    repl.create_logical_slot(
        "snap",
        SlotOptions {
            snapshot: SnapshotAction::Use,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    sql.batch_execute("INSERT INTO t VALUES (2)").await.unwrap();
    let rows = repl
        .simple_query("SELECT count(*) AS n FROM t")
        .await
        .unwrap();
    assert_eq!(
        rows[0].get("n"),
        Some("1"),
        "the slot's snapshot predates row 2"
    );
    repl.simple_query("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_change_arrives_decoded() {
    let db = support::fresh_db().await;
    let sql = db.connect().await;
    sql.batch_execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, name text, note text, big text);
         ALTER TABLE items ALTER COLUMN big SET STORAGE EXTERNAL;
         CREATE TABLE full_ri (a int, b text);
         ALTER TABLE full_ri REPLICA IDENTITY FULL;",
    )
    .await
    .unwrap();
    let mut tap = Tap::open(&db.conninfo(), "items, full_ri", "kinds", 1, &[]).await;

    // Insert with NULL and unicode.
    sql.batch_execute("INSERT INTO items VALUES (1, 'Zoë ✓ 東京', NULL, repeat('x', 5000))")
        .await
        .unwrap();
    let (body, commit) = tap.txn().await;
    assert!(commit.end_lsn > commit.commit_lsn);
    let rel = match &body[0] {
        LogicalMessage::Relation(r) => r.clone(),
        m => panic!("first message of the first txn is the Relation, got {m:?}"),
    };
    assert_eq!(
        (rel.namespace.as_str(), rel.name.as_str()),
        ("public", "items")
    );
    assert_eq!(rel.replica_identity, ReplicaIdentity::Default);
    let names: Vec<_> = rel.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "name", "note", "big"]);
    assert!(rel.columns[0].is_key() && !rel.columns[1].is_key());
    let LogicalMessage::Insert(ins) = &body[1] else {
        panic!("{body:?}")
    };
    assert_eq!(ins.relid, rel.oid);
    assert_eq!(ins.new_tuple[0], text("1"));
    assert_eq!(ins.new_tuple[1], text("Zoë ✓ 東京"));
    assert_eq!(ins.new_tuple[2], TupleColumn::Null);
    assert_eq!(ins.new_tuple[3], text(&"x".repeat(5000)));

    // Update that leaves the TOASTed column alone: it arrives as unchanged.
    sql.batch_execute("UPDATE items SET name = 'renamed' WHERE id = 1")
        .await
        .unwrap();
    let changes1 = changes(tap.txn().await.0);
    let LogicalMessage::Update(up) = &changes1[0] else {
        panic!("{changes1:?}")
    };
    assert_eq!(
        up.old_tuple, None,
        "no key change, default identity: no old tuple"
    );
    assert_eq!(up.new_tuple[1], text("renamed"));
    assert_eq!(up.new_tuple[3], TupleColumn::UnchangedToast);

    // Primary-key update: the old key comes along.
    sql.batch_execute("UPDATE items SET id = 2 WHERE id = 1")
        .await
        .unwrap();
    let changes2 = changes(tap.txn().await.0);
    let LogicalMessage::Update(up) = &changes2[0] else {
        panic!("{changes2:?}")
    };
    match &up.old_tuple {
        Some(OldTuple::Key(k)) => {
            assert_eq!(k[0], text("1"));
            // Non-key columns of a key tuple are sent as NULL.
            assert_eq!(k[1], TupleColumn::Null);
        }
        other => panic!("expected old key, got {other:?}"),
    }
    assert_eq!(up.new_tuple[0], text("2"));

    // Delete: old key.
    sql.batch_execute("DELETE FROM items WHERE id = 2")
        .await
        .unwrap();
    let changes3 = changes(tap.txn().await.0);
    let LogicalMessage::Delete(del) = &changes3[0] else {
        panic!("{changes3:?}")
    };
    assert!(matches!(&del.old_tuple, OldTuple::Key(k) if k[0] == text("2")));

    // REPLICA IDENTITY FULL: updates and deletes carry the whole old row.
    // (Several statements in one simple query are one transaction.)
    sql.batch_execute(
        "INSERT INTO full_ri VALUES (1, 'a'); UPDATE full_ri SET b = 'b'; DELETE FROM full_ri;",
    )
    .await
    .unwrap();
    let full = changes(tap.txn().await.0);
    assert_eq!(full.len(), 3, "{full:?}");
    let LogicalMessage::Insert(i) = &full[0] else {
        panic!("{full:?}")
    };
    assert_eq!(i.new_tuple, vec![text("1"), text("a")]);
    let LogicalMessage::Update(u) = &full[1] else {
        panic!("{full:?}")
    };
    assert_eq!(
        u.old_tuple,
        Some(OldTuple::Full(vec![text("1"), text("a")]))
    );
    assert_eq!(u.new_tuple, vec![text("1"), text("b")]);
    let LogicalMessage::Delete(d) = &full[2] else {
        panic!("{full:?}")
    };
    assert_eq!(d.old_tuple, OldTuple::Full(vec![text("1"), text("b")]));

    // TRUNCATE of both tables in one statement: one message, both relations.
    sql.batch_execute("INSERT INTO items VALUES (5, 'e')")
        .await
        .unwrap();
    let _insert_txn = tap.txn().await;
    sql.batch_execute("TRUNCATE items, full_ri").await.unwrap();
    let changes4 = changes(tap.txn().await.0);
    let LogicalMessage::Truncate(tr) = &changes4[0] else {
        panic!("{changes4:?}")
    };
    assert_eq!(tr.relids.len(), 2);
    assert!(!tr.cascade() && !tr.restart_identity());
}

#[tokio::test(flavor = "multi_thread")]
async fn logical_message_and_origin_arrive() {
    let db = support::fresh_db().await;
    let sql = db.connect().await;
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let mut tap = Tap::open(&db.conninfo(), "t", "msgs", 1, &[]).await;

    // A non-transactional message arrives on its own, outside any Begin.
    sql.batch_execute("SELECT pg_logical_emit_message(false, 'walshift', 'ping 42')")
        .await
        .unwrap();
    match tap.next().await {
        LogicalMessage::Message(m) => {
            assert!(!m.transactional());
            assert_eq!(m.prefix, "walshift");
            assert_eq!(&m.content[..], b"ping 42");
        }
        m => panic!("expected Message, got {m:?}"),
    }

    // A session with a replication origin: its transactions name it.
    // The origin first, in a transaction of its own (as walshift's setup makes its origin):
    // PostgreSQL 14's pgoutput names no origin that was created in the decoded transaction.
    sql.batch_execute("SELECT pg_replication_origin_create('upstream_feed')")
        .await
        .unwrap();
    sql.batch_execute(
        "SELECT pg_replication_origin_session_setup('upstream_feed');
         BEGIN;
         SELECT pg_replication_origin_xact_setup('0/AB', now());
         INSERT INTO t VALUES (1);
         SELECT pg_logical_emit_message(true, 'walshift', 'in txn');
         COMMIT;
         SELECT pg_replication_origin_session_reset();",
    )
    .await
    .unwrap();
    // PostgreSQL 14 also sends the (empty) transaction of pg_replication_origin_create; 15
    // stopped sending transactions that touched no published table.
    let version = server_version(&sql).await;
    let body = loop {
        let (body, _) = tap.txn().await;
        if !(body.is_empty() && version < 150000) {
            break body;
        }
    };
    let origin = body
        .iter()
        .find_map(|m| match m {
            LogicalMessage::Origin(o) => Some(o.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("an Origin message in the transaction: {body:?}"));
    assert_eq!(origin.name, "upstream_feed");
    assert_eq!(origin.origin_lsn, "0/AB".parse().unwrap());
    assert!(body.iter().any(|m| matches!(m, LogicalMessage::Insert(_))));
    assert!(body
        .iter()
        .any(|m| matches!(m, LogicalMessage::Message(msg) if msg.transactional() && &msg.content[..] == b"in txn")));
}

#[tokio::test(flavor = "multi_thread")]
async fn relation_message_is_resent_after_ddl() {
    let db = support::fresh_db().await;
    let sql = db.connect().await;
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let mut tap = Tap::open(&db.conninfo(), "t", "ddl", 1, &[]).await;
    let mut cache = walshift::relcache::RelationCache::default();

    sql.batch_execute("INSERT INTO t VALUES (1)").await.unwrap();
    for m in tap.txn().await.0 {
        if let LogicalMessage::Relation(r) = m {
            cache.apply(r);
        }
    }
    sql.batch_execute("ALTER TABLE t ADD COLUMN extra text; INSERT INTO t VALUES (2, 'x')")
        .await
        .unwrap();
    let (body, _) = tap.txn().await;
    let mut saw_relation = false;
    for m in body {
        match m {
            LogicalMessage::Relation(r) => {
                saw_relation = true;
                cache.apply(r);
            }
            LogicalMessage::Insert(i) => {
                let rel = cache.get(i.relid).expect("relation known");
                assert_eq!(rel.columns.len(), 2, "cache follows the new shape");
                assert_eq!(i.new_tuple.len(), 2);
            }
            _ => {}
        }
    }
    assert!(saw_relation, "pgoutput re-sends Relation after DDL");
}

#[tokio::test(flavor = "multi_thread")]
async fn large_transaction_is_streamed_with_protocol_v2() {
    let db = support::fresh_db().await;
    let sql = db.connect().await;
    sql.batch_execute("CREATE TABLE big (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    // A small logical_decoding_work_mem forces streaming of the transaction
    // while it is still in progress.
    let conninfo = format!(
        "{} options='-c logical_decoding_work_mem=64kB'",
        db.conninfo()
    );
    let mut tap = Tap::open(&conninfo, "big", "streamed", 2, &[("streaming", "on")]).await;

    sql.batch_execute("INSERT INTO big SELECT g, 'row ' || g FROM generate_series(1, 200000) g")
        .await
        .unwrap();
    let mut inserts = 0u64;
    let mut sum = 0u64;
    let mut stream_starts = 0;
    let xid;
    loop {
        match tap.next().await {
            LogicalMessage::StreamStart(_) => stream_starts += 1,
            LogicalMessage::Insert(i) => {
                assert!(
                    i.xid.is_some(),
                    "changes inside a stream block carry the xid"
                );
                inserts += 1;
                let TupleColumn::Text(id) = &i.new_tuple[0] else {
                    panic!()
                };
                sum += std::str::from_utf8(id).unwrap().parse::<u64>().unwrap();
            }
            LogicalMessage::StreamCommit(c) => {
                xid = c.xid;
                break;
            }
            LogicalMessage::StreamStop | LogicalMessage::Relation(_) => {}
            m => panic!("unexpected {m:?}"),
        }
    }
    assert!(
        stream_starts > 1,
        "transaction arrived in several stream blocks"
    );
    assert!(xid != 0);
    assert_eq!(inserts, 200_000);
    assert_eq!(sum, 200_000 * 200_001 / 2, "every row exactly once");
}

/// Restart safety (I4): after confirming a commit and reconnecting, nothing
/// up to that commit is sent again and nothing after it is missing.
#[tokio::test(flavor = "multi_thread")]
async fn restart_resumes_exactly_after_the_confirmed_commit() {
    let db = support::fresh_db().await;
    let sql = db.connect().await;
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let mut tap = Tap::open(&db.conninfo(), "t", "resume", 1, &[]).await;
    for i in 1..=5 {
        sql.execute("INSERT INTO t VALUES ($1)", &[&i])
            .await
            .unwrap();
    }
    let mut confirmed_through = 0;
    for i in 1..=3 {
        let (body, commit) = tap.txn().await;
        assert!(changes(body).len() == 1);
        tap.stream.feedback().confirm(commit.end_lsn);
        confirmed_through = i;
    }
    // Read the 4th without confirming it, then disconnect.
    let _unconfirmed = tap.txn().await;
    tap.stream.close().await.unwrap();
    // Regression (seen in CI under load): close() returned before the
    // walsender let go of the slot, and an immediate restart failed with
    // "replication slot ... is active for PID" (55006).
    let active: bool = sql
        .query_one(
            "SELECT active FROM pg_replication_slots WHERE slot_name = 'resume'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        !active,
        "close() returns once the server has released the slot"
    );
    sql.execute("INSERT INTO t VALUES (6)", &[]).await.unwrap();

    let repl = repl_client(&db.conninfo()).await;
    let mut tap = Tap::start(repl, "resume", 1, &[], StreamOptions::default()).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        for m in changes(tap.txn().await.0) {
            let LogicalMessage::Insert(i) = m else {
                panic!("{m:?}")
            };
            let TupleColumn::Text(v) = &i.new_tuple[0] else {
                panic!()
            };
            seen.push(std::str::from_utf8(v).unwrap().parse::<i32>().unwrap());
        }
    }
    assert_eq!(confirmed_through, 3);
    assert_eq!(seen, vec![4, 5, 6]);
}

/// An idle slot must not pin WAL: with unrelated WAL flowing and nothing
/// published, confirming the keepalive's wal_end moves confirmed_flush_lsn.
#[tokio::test(flavor = "multi_thread")]
async fn idle_slot_confirmed_flush_follows_keepalives() {
    let db = support::fresh_db().await;
    let sql = db.connect().await;
    sql.batch_execute("CREATE TABLE published (id int PRIMARY KEY); CREATE TABLE other (id int)")
        .await
        .unwrap();
    let mut tap = Tap::open(&db.conninfo(), "published", "idle", 1, &[]).await;
    let slot_flush = |sql: tokio_postgres::Client| async move {
        let row = sql
            .query_one(
                "SELECT coalesce(confirmed_flush_lsn, '0/0')::text FROM pg_replication_slots WHERE slot_name = 'idle'",
                &[],
            )
            .await
            .unwrap();
        row.get::<_, String>(0).parse::<Lsn>().unwrap()
    };
    let version = server_version(&sql).await;
    let before = slot_flush(db.connect().await).await;
    let target: Lsn = {
        sql.batch_execute("INSERT INTO other SELECT generate_series(1, 1000)")
            .await
            .unwrap();
        let row = sql
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap();
        row.get::<_, String>(0).parse().unwrap()
    };
    let feedback = tap.stream.feedback();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // The consumer: nothing is pending, so a keepalive's position is safe
        // to confirm.
        let ev = tokio::time::timeout_at(deadline, tap.stream.recv())
            .await
            .expect("keepalive within 30s")
            .unwrap()
            .unwrap();
        match ev {
            ReplicationEvent::Keepalive { wal_end, .. } => feedback.confirm(wal_end),
            ReplicationEvent::XLogData { data, .. } => {
                let m = tap.decoder.decode(data).unwrap();
                // PostgreSQL 14 sends BEGIN and COMMIT even for a transaction that touched no
                // published table (15 stopped); nothing else may come.
                let empty_txn = version < 150000
                    && matches!(m, LogicalMessage::Begin(_) | LogicalMessage::Commit(_));
                assert!(empty_txn, "nothing published changed, got {m:?}");
            }
        }
        let now = slot_flush(db.connect().await).await;
        if now >= target {
            assert!(now > before);
            break;
        }
        // Keep unrelated WAL flowing so the walsender has news to report.
        sql.batch_execute("INSERT INTO other VALUES (0)")
            .await
            .unwrap();
    }
}

/// I7: a consumer that does not read for longer than wal_sender_timeout is
/// not dropped, because the reader task keeps sending status updates. The
/// second half shows the test can fail: with updates less frequent than the
/// timeout, the server ends the connection.
#[tokio::test(flavor = "multi_thread")]
async fn slow_consumer_is_not_dropped_by_wal_sender_timeout() {
    let db = support::fresh_db().await;
    let sql = db.connect().await;
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY, pad text)")
        .await
        .unwrap();
    let conninfo = format!("{} options='-c wal_sender_timeout=2s'", db.conninfo());
    let small = StreamOptions {
        channel_capacity: 4,
        status_interval: None,
        ..Default::default()
    };
    let sqlc = support::connect(&conninfo).await;
    sqlc.batch_execute("CREATE PUBLICATION pub FOR TABLE t")
        .await
        .unwrap();
    let mut repl = repl_client(&conninfo).await;
    repl.create_logical_slot("slow", SlotOptions::default())
        .await
        .unwrap();
    let mut tap = Tap::start(repl, "slow", 1, &[], small.clone()).await;
    assert!(tap.stream.status_interval() < Duration::from_secs(2));

    sql.batch_execute("INSERT INTO t SELECT g, repeat('p', 500) FROM generate_series(1, 20000) g")
        .await
        .unwrap();
    // Take one message so we know streaming is under way, then stall for
    // three timeouts.
    let _ = tap.next().await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut inserts = 0;
    while inserts < 20000 {
        if let LogicalMessage::Insert(_) = tap.next().await {
            inserts += 1;
        }
    }
    tap.stream.close().await.unwrap();

    // Control: status updates every 60s are too rare for a 2s timeout.
    let repl = repl_client(&conninfo).await;
    let rare = StreamOptions {
        channel_capacity: 4,
        status_interval: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    let mut tap = Tap::start(repl, "slow", 1, &[], rare).await;
    sql.batch_execute(
        "INSERT INTO t SELECT g, repeat('p', 500) FROM generate_series(20001, 40000) g",
    )
    .await
    .unwrap();
    let _ = tap.next().await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match tap.stream.recv().await {
                None | Some(Err(_)) => return true,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("stream should end");
    assert!(
        ended,
        "without timely status updates the server drops the stream"
    );
}
