//! `walshift check` against a real PostgreSQL: the examples of docs/design.md resolve
//! to the expected plans, and each broken spec or database is reported as
//! exactly one line that names the object and the fix, with nothing created
//! (no publication, slot, replication origin, `walshift` schema, prepared
//! statement or temporary schema) and the session left idle.

mod support;
/// The data scan's tests, in `tests/check/scan.rs`.
mod check {
    mod scan;
}

use support::fixtures::{ITEMS_SELECT, orders_mirror, orders_mirror_with};
use support::{Cluster, Database, fresh_db};
use walshift::catalog::{CheckReport, MirrorKind, Problem, check};
use walshift::ident::QualifiedName;
use walshift::mirror::sql::KeyColumn;
use walshift::spec::Spec;

/// The design's tables, with three users and no rows in the new shape yet.
const SHOP: &str = "
CREATE TABLE users (id bigint PRIMARY KEY, is_active boolean NOT NULL DEFAULT true,
                    email text NOT NULL, status text, score int);
INSERT INTO users (id, is_active, email) VALUES (1, true, 'a@x'), (2, false, 'b@x'), (3, true, 'c@x');
CREATE TABLE orders (id bigint PRIMARY KEY, items jsonb NOT NULL DEFAULT '[]');
INSERT INTO orders VALUES (10, '[{\"sku\": \"a\", \"qty\": 1}, {\"sku\": \"b\", \"qty\": 2}]');
";

const ORDER_ITEMS: &str = "
CREATE TABLE order_items (order_id bigint NOT NULL, line_no bigint NOT NULL, sku text, qty int,
                          PRIMARY KEY (order_id, line_no));
";

const USERS_STATUS: &str = r#"
name = "users-status"
[[mirror]]
source = "public.users"
set = { status = "CASE WHEN is_active THEN 'active' ELSE 'disabled' END" }
"#;

fn items_spec(select: &str) -> String {
    format!("name = \"order-items\"{}", orders_mirror_with(select))
}

/// The notes that ask for the operator's attention: all but the one that, from PostgreSQL 16 on,
/// says the stream will ask for origin = none (no other replication origin exists).
fn attention(notes: &[String]) -> Vec<&String> {
    notes
        .iter()
        .filter(|n| !n.starts_with("no other replication origin exists"))
        .collect()
}

fn spec(text: &str) -> Spec {
    Spec::from_str_named(text, "spec.toml").unwrap_or_else(|e| panic!("test spec: {e}"))
}

/// What `check` must never create, seen by the superuser.
#[derive(Debug, PartialEq, Eq)]
struct Trace {
    publications: i64,
    slots: i64,
    origins: i64,
    walshift_schema: bool,
}

async fn trace(admin: &tokio_postgres::Client) -> Trace {
    let row = admin
        .query_one(
            "SELECT (SELECT count(*) FROM pg_publication), (SELECT count(*) FROM pg_replication_slots),
                    (SELECT count(*) FROM pg_replication_origin),
                    EXISTS (SELECT FROM pg_namespace WHERE nspname = 'walshift')",
            &[],
        )
        .await
        .unwrap();
    Trace {
        publications: row.get(0),
        slots: row.get(1),
        origins: row.get(2),
        walshift_schema: row.get(3),
    }
}

fn simple_value(messages: &[tokio_postgres::SimpleQueryMessage]) -> String {
    messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("one value")
}

/// The checking session holds no prepared statement and no temporary
/// schema, and is out of check's transaction. Asked through the simple
/// protocol, which prepares nothing itself.
async fn assert_session_clean(client: &tokio_postgres::Client) {
    let prepared = client
        .simple_query("SELECT count(*) FROM pg_prepared_statements")
        .await
        .unwrap();
    assert_eq!(simple_value(&prepared), "0", "prepared statements left");
    let temp = client
        .simple_query("SELECT pg_my_temp_schema()::int")
        .await
        .unwrap();
    assert_eq!(simple_value(&temp), "0", "a temporary schema was created");
    let read_only = client
        .simple_query("SHOW transaction_read_only")
        .await
        .unwrap();
    assert_eq!(
        simple_value(&read_only),
        "off",
        "still in check's transaction"
    );
}

/// Run `setup` as the superuser, then `check` the spec as the role of
/// `conninfo`, asserting that it left no trace.
async fn check_as(db: &Database, conninfo: &str, setup: &str, spec_text: &str) -> CheckReport {
    let admin = db.connect().await;
    admin.batch_execute(setup).await.unwrap();
    let before = trace(&admin).await;
    let client = support::connect(conninfo).await;
    let report = check(&client, &spec(spec_text)).await.unwrap();
    assert_eq!(trace(&admin).await, before, "check created something");
    assert_session_clean(&client).await;
    assert_eq!(
        report.plan.is_some(),
        report.problems.is_empty(),
        "{report:#?}"
    );
    report
}

async fn check_db(setup: &str, spec_text: &str) -> CheckReport {
    let db = fresh_db().await;
    check_as(&db, &db.conninfo(), setup, spec_text).await
}

/// The report's single problem, printed as `check` prints it.
fn one_problem(report: &CheckReport) -> String {
    assert_eq!(
        report.problems.len(),
        1,
        "expected one problem: {report:#?}"
    );
    let line = report.problems[0].to_string();
    assert!(!line.contains('\n'), "a problem is one line: {line}");
    println!("{line}");
    line
}

fn assert_mentions(line: &str, parts: &[&str]) {
    for part in parts {
        assert!(line.contains(part), "{part:?} missing from: {line}");
    }
}

// --- happy paths -----------------------------------------------------------

#[tokio::test]
async fn design_example_plans_both_modes() {
    let text = format!(
        "{USERS_STATUS}{}\n[backfill]\n\
         max_replica_lag = \"5s\"\nmax_rows_per_second = 2\n\n[[gate]]\nname = \"every line item mirrored\"\n\
         sql = \"SELECT (SELECT sum(jsonb_array_length(items)) FROM orders) = (SELECT count(*) FROM order_items)\"\n\n\
         [cutover]\nsql = \"ALTER TABLE users RENAME COLUMN is_active TO is_active_retired\"\n",
        orders_mirror()
    );
    let report = check_db(&format!("{SHOP}{ORDER_ITEMS}"), &text).await;
    let plan = report
        .plan
        .as_ref()
        .unwrap_or_else(|| panic!("a plan: {:#?}", report.problems));
    assert!(plan.server_version_num >= 140_000);
    assert_eq!(plan.mirrors.len(), 2);

    let users = &plan.mirrors[0];
    assert_eq!(users.number, 1);
    assert_eq!(users.source, QualifiedName::new("public", "users"));
    assert_eq!(users.key, vec![KeyColumn::new("id", "bigint")]);
    assert_eq!(users.replica_identity, 'd');
    // Never analyzed and tiny: counted.
    assert_eq!(users.estimated_rows, 3);
    let MirrorKind::Set(set) = &users.kind else {
        panic!("set mode expected: {users:#?}")
    };
    assert_eq!(set.set[0].0, "status");

    let orders = &plan.mirrors[1];
    assert_eq!(orders.estimated_rows, 1);
    let MirrorKind::Rows(rows) = &orders.kind else {
        panic!("rows mode expected: {orders:#?}")
    };
    assert_eq!(rows.target, QualifiedName::new("public", "order_items"));
    assert_eq!(rows.owner, vec![KeyColumn::new("order_id", "bigint")]);
    assert_eq!(rows.columns, ["order_id", "line_no", "sku", "qty"]);
    assert_eq!(
        rows.conflict_key.as_deref(),
        Some(&["order_id".to_string(), "line_no".to_string()][..])
    );
    // Only the ETA: nothing else needs the operator's attention.
    let notes = attention(&plan.notes);
    assert_eq!(notes.len(), 1, "{:#?}", plan.notes);
    assert_mentions(notes[0], &["~4 source rows", "at least 2s"]);

    let text = report.render_plan();
    assert_mentions(
        &text,
        &[
            "mirror #1: public.users (set mode: status)",
            "estimated rows: 3",
            "UPDATE \"public\".\"users\" AS src",
            "mirror #2: public.orders (rows mode into public.order_items, owner (order_id bigint), \
             conflict key (order_id, line_no))",
            "ON CONFLICT (\"order_id\", \"line_no\") DO UPDATE",
        ],
    );
}

#[tokio::test]
async fn rows_mode_without_a_unique_key_replaces_by_owner() {
    let setup = format!(
        "{SHOP}CREATE TABLE order_items (order_id bigint NOT NULL, line_no bigint, sku text, qty int);
         CREATE INDEX ON order_items (order_id, line_no);"
    );
    let report = check_db(&setup, &items_spec(ITEMS_SELECT)).await;
    let plan = report
        .plan
        .clone()
        .unwrap_or_else(|| panic!("a plan: {:#?}", report.problems));
    let MirrorKind::Rows(rows) = &plan.mirrors[0].kind else {
        panic!("rows mode expected")
    };
    assert_eq!(rows.conflict_key, None);
    let notes = attention(&plan.notes);
    assert_eq!(notes.len(), 1, "{:#?}", plan.notes);
    assert_mentions(
        notes[0],
        &[
            "mirror #1 (public.orders): public.order_items",
            "no unique key covered by the select; replace-by-owner",
        ],
    );
}

#[tokio::test]
async fn quoted_mixed_case_names_in_another_schema() {
    let setup = r#"
        CREATE SCHEMA "Sales";
        CREATE TABLE "Sales"."Order Items" ("Region" text NOT NULL, "ID" int NOT NULL,
                                           "Note" text, "Status" text, "select" jsonb,
                                           UNIQUE ("Region", "ID"));
        CREATE TABLE "Sales"."Item Tags" ("Region" text NOT NULL, "ID" int NOT NULL, "Tag" text NOT NULL,
                                         PRIMARY KEY ("Region", "ID", "Tag"));
        ALTER TABLE "Sales"."Order Items" REPLICA IDENTITY FULL;
    "#;
    let text = r#"
name = "sales"
[[mirror]]
source = '"Sales"."Order Items"'
key = ['"Region"', '"ID"']
set = { '"Status"' = 'upper("Note") -- shout' }

[[mirror]]
source = '"Sales"."Order Items"'
key = ['"Region"', '"ID"']
target = '"Sales"."Item Tags"'
owner = ['"Region"', '"ID"']
select = '''
SELECT src."Region", src."ID", t AS "Tag" FROM jsonb_array_elements_text(src."select") AS t
'''
"#;
    let report = check_db(setup, text).await;
    let plan = report
        .plan
        .clone()
        .unwrap_or_else(|| panic!("a plan: {:#?}", report.problems));
    let source = QualifiedName::new("Sales", "Order Items");
    let key = vec![
        KeyColumn::new("Region", "text"),
        KeyColumn::new("ID", "integer"),
    ];
    for m in &plan.mirrors {
        assert_eq!(m.source, source);
        assert_eq!(m.key, key);
        assert_eq!(m.replica_identity, 'f');
        assert_eq!(m.estimated_rows, 0);
    }
    let MirrorKind::Rows(rows) = &plan.mirrors[1].kind else {
        panic!("rows mode expected")
    };
    assert_eq!(rows.columns, ["Region", "ID", "Tag"]);
    assert_eq!(rows.owner, key);
    assert_eq!(
        rows.conflict_key.as_deref(),
        Some(&["Region".to_string(), "ID".to_string(), "Tag".to_string()][..])
    );
    assert!(attention(&plan.notes).is_empty(), "{:#?}", plan.notes);
    assert_mentions(
        &report_text(&plan),
        &["mirror #1: \"Sales\".\"Order Items\" (set mode: Status)"],
    );
}

fn report_text(plan: &walshift::catalog::Plan) -> String {
    CheckReport {
        problems: Vec::new(),
        plan: Some(plan.clone()),
    }
    .render_plan()
}

// --- broken specs and databases: one line each ------------------------------

#[tokio::test]
async fn missing_table() {
    let text = USERS_STATUS.replace("public.users", "public.userz");
    let line = one_problem(&check_db(SHOP, &text).await);
    assert_mentions(
        &line,
        &["mirror #1 (public.userz): source table public.userz does not exist"],
    );
}

#[tokio::test]
async fn missing_column() {
    let text = USERS_STATUS.replace("status =", "statuz =");
    let line = one_problem(&check_db(SHOP, &text).await);
    assert_mentions(
        &line,
        &[
            "set.statuz: public.users has no column statuz",
            "ADD COLUMN",
        ],
    );
}

#[tokio::test]
async fn set_column_that_is_the_primary_key() {
    let text = USERS_STATUS.replace(
        "status = \"CASE WHEN is_active THEN 'active' ELSE 'disabled' END\"",
        "id = \"src.id + 1\"",
    );
    let line = one_problem(&check_db(SHOP, &text).await);
    assert_mentions(&line, &["set.id: id is a key column", "remove it from set"]);
}

#[tokio::test]
async fn no_primary_key_and_no_key() {
    let setup = "CREATE TABLE events (id bigint NOT NULL, kind text, kind_upper text);";
    let text =
        "name = \"ev\"\n[[mirror]]\nsource = \"events\"\nset = { kind_upper = \"upper(kind)\" }\n";
    let line = one_problem(&check_db(setup, text).await);
    assert_mentions(
        &line,
        &[
            "source public.events has no primary key",
            "ALTER TABLE public.events ADD PRIMARY KEY",
            "set key = [...]",
        ],
    );
}

#[tokio::test]
async fn key_naming_a_column_without_a_unique_index() {
    let text = USERS_STATUS.replace("source =", "key = [\"email\"]\nsource =");
    let line = one_problem(&check_db(SHOP, &text).await);
    assert_mentions(
        &line,
        &[
            "key: no unique index of public.users is on (email)",
            "CREATE UNIQUE INDEX ON public.users (email)",
        ],
    );
}

#[tokio::test]
async fn expression_with_a_syntax_error() {
    let text = USERS_STATUS.replace("ELSE 'disabled'", "ELS 'disabled'");
    let line = one_problem(&check_db(SHOP, &text).await);
    assert_mentions(
        &line,
        &[
            "set.status: the expression does not compile: syntax error at or near",
            "SQLSTATE 42601, at line 1, column 35 of the expression",
        ],
    );
}

#[tokio::test]
async fn expression_of_the_wrong_type() {
    let text = USERS_STATUS.replace(
        "status = \"CASE WHEN is_active THEN 'active' ELSE 'disabled' END\"",
        "score = \"upper(email)\"",
    );
    let line = one_problem(&check_db(SHOP, &text).await);
    assert_mentions(
        &line,
        &[
            "set.score: the expression does not compile",
            "column \"score\" is of type integer but expression is of type text",
            "SQLSTATE 42804",
        ],
    );
}

#[tokio::test]
async fn select_referencing_a_missing_column() {
    let text = items_spec(&ITEMS_SELECT.replace("src.items", "src.itemz"));
    let line = one_problem(&check_db(&format!("{SHOP}{ORDER_ITEMS}"), &text).await);
    assert_mentions(
        &line,
        &[
            "mirror #1 (public.orders): select does not compile: column src.itemz does not exist",
            "at line 2, column 27 of select",
        ],
    );
}

#[tokio::test]
async fn owner_column_of_another_type_than_the_key() {
    let setup = format!(
        "{SHOP}{}",
        ORDER_ITEMS.replace("order_id bigint", "order_id int")
    );
    let line = one_problem(&check_db(&setup, &items_spec(ITEMS_SELECT)).await);
    assert_mentions(
        &line,
        &[
            "owner order_id is integer but key column id of public.orders is bigint",
            "ALTER TABLE public.order_items ALTER COLUMN order_id TYPE bigint",
        ],
    );
}

#[tokio::test]
async fn replica_identity_nothing() {
    let setup = format!("{SHOP}ALTER TABLE users REPLICA IDENTITY NOTHING;");
    let line = one_problem(&check_db(&setup, USERS_STATUS).await);
    assert_mentions(
        &line,
        &[
            "public.users has REPLICA IDENTITY NOTHING",
            "ALTER TABLE public.users REPLICA IDENTITY DEFAULT",
        ],
    );
}

#[tokio::test]
async fn json_column_mirrored() {
    let setup =
        format!("{SHOP}ALTER TABLE users ADD COLUMN profile jsonb, ADD COLUMN profile_v1 json;");
    let text = USERS_STATUS.replace(
        "status = \"CASE WHEN is_active THEN 'active' ELSE 'disabled' END\"",
        "profile_v1 = \"profile::json\"",
    );
    let line = one_problem(&check_db(&setup, &text).await);
    assert_mentions(
        &line,
        &[
            "set.profile_v1: column profile_v1 is json, which cannot be compared",
            "use jsonb",
        ],
    );
}

#[tokio::test]
async fn target_without_an_index_on_the_owner_columns() {
    let setup = format!(
        "{SHOP}CREATE TABLE order_items (order_id bigint NOT NULL, line_no bigint, sku text, qty int);"
    );
    let line = one_problem(&check_db(&setup, &items_spec(ITEMS_SELECT)).await);
    assert_mentions(
        &line,
        &[
            "no index of public.order_items starts with the owner columns (order_id)",
            "CREATE INDEX ON public.order_items (order_id)",
        ],
    );
}

#[tokio::test]
async fn role_without_privileges() {
    let db = fresh_db().await;
    let role = format!("{}_app", db.name());
    let setup = format!("{SHOP}CREATE ROLE {role} LOGIN;");
    let conninfo = format!("{} user={role}", db.conninfo());
    let report = check_as(&db, &conninfo, &setup, USERS_STATUS).await;
    let line = one_problem(&report);
    assert_mentions(
        &line,
        &[
            &format!("role {role}: lacks REPLICATION (to stream the WAL)"),
            &format!(
                "CREATE on database {} (for the publication and for the walshift schema)",
                db.name()
            ),
            "ownership of public.users (CREATE PUBLICATION ... FOR TABLE requires it)",
            "SELECT, UPDATE (status) on public.users",
            &format!("ALTER ROLE {role} REPLICATION"),
            &format!("GRANT SELECT, UPDATE (status) ON public.users TO {role}"),
            &format!("ALTER TABLE public.users OWNER TO {role}"),
        ],
    );
}

/// Issue 3: where the replication origin functions are not permitted,
/// walshift still works — so check must not refuse, only say what it costs
/// and how to avoid it.
#[tokio::test]
async fn missing_origin_rights_are_a_note_not_a_problem() {
    let db = fresh_db().await;
    let role = format!("{}_app", db.name());
    let setup = format!(
        "{SHOP}CREATE ROLE {role} LOGIN REPLICATION;
         GRANT CREATE ON DATABASE {db} TO {role};
         ALTER TABLE users OWNER TO {role};",
        db = db.name()
    );
    let conninfo = format!("{} user={role}", db.conninfo());
    let report = check_as(&db, &conninfo, &setup, USERS_STATUS).await;
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    let notes = report.plan.expect("a plan").notes.join("\n");
    assert_mentions(
        &notes,
        &[
            &format!("role {role} may not execute the replication origin functions"),
            "walshift works without them",
            "GRANT EXECUTE ON FUNCTION pg_replication_origin_create(text)",
        ],
    );
}

#[tokio::test]
async fn every_problem_is_collected() {
    let text = format!(
        "{}\n[[mirror]]\nsource = \"public.nope\"\nset = {{ a = \"1\" }}\n",
        USERS_STATUS.replace("status =", "statuz =")
    );
    let report = check_db(SHOP, &text).await;
    let lines: Vec<String> = report.problems.iter().map(Problem::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_mentions(&lines[0], &["mirror #1 (public.users): set.statuz"]);
    assert_mentions(&lines[1], &["mirror #2 (public.nope): source table"]);
    assert_mentions(
        &report.render_plan(),
        &["2 problem(s); nothing was created"],
    );
}

/// A dedicated cluster with one extra setting, and a database on it.
async fn dedicated(key: &'static str, value: &'static str) -> (Cluster, Database) {
    tokio::task::spawn_blocking(move || {
        let cluster = Cluster::builder()
            .setting(key, value)
            .start()
            .unwrap_or_else(|e| panic!("start a cluster with {key}={value}: {e}"));
        let db = cluster.fresh_database().expect("a database");
        (cluster, db)
    })
    .await
    .expect("cluster task")
}

#[tokio::test]
async fn wal_level_replica() {
    let (_cluster, db) = dedicated("wal_level", "replica").await;
    let line = one_problem(&check_as(&db, &db.conninfo(), SHOP, USERS_STATUS).await);
    assert_mentions(
        &line,
        &[
            "wal_level: is replica",
            "set wal_level = logical in postgresql.conf",
            "restart",
        ],
    );
}

#[tokio::test]
async fn replication_slot_limit_reached() {
    let (_cluster, db) = dedicated("max_replication_slots", "1").await;
    // A slot cannot be created in a transaction that wrote, so in its own.
    db.connect().await.batch_execute(SHOP).await.unwrap();
    let other = "SELECT pg_create_logical_replication_slot('someone_else', 'pgoutput')";
    let line = one_problem(&check_as(&db, &db.conninfo(), other, USERS_STATUS).await);
    assert_mentions(
        &line,
        &[
            "max_replication_slots: is 1 and 1 slot(s) exist",
            "walshift_users_status",
        ],
    );

    // walshift's own slot is not "another" slot: a restarted run reuses it.
    db.connect()
        .await
        .batch_execute("SELECT pg_drop_replication_slot('someone_else')")
        .await
        .unwrap();
    let own = "SELECT pg_create_logical_replication_slot('walshift_users_status', 'pgoutput')";
    let report = check_as(&db, &db.conninfo(), own, USERS_STATUS).await;
    let plan = report
        .plan
        .unwrap_or_else(|| panic!("a plan: {:#?}", report.problems));
    assert_mentions(
        &plan.notes.join("\n"),
        &["slot walshift_users_status already exists"],
    );
}

// --- more ways to be wrong -------------------------------------------------

#[tokio::test]
async fn a_view_is_not_a_source() {
    let setup = format!("{SHOP}CREATE VIEW active_users AS SELECT * FROM users WHERE is_active;");
    let text = USERS_STATUS.replace("public.users", "active_users");
    let line = one_problem(&check_db(&setup, &text).await);
    assert_mentions(
        &line,
        &["source public.active_users is a view; source must be a table"],
    );
}

#[tokio::test]
async fn a_partition_without_replica_identity_is_named() {
    let setup = "
        CREATE TABLE events (id bigint, at date, kind text, kind_upper text, PRIMARY KEY (id, at))
            PARTITION BY RANGE (at);
        CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
        CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
        ALTER TABLE events_2025 REPLICA IDENTITY NOTHING;
        INSERT INTO events VALUES (1, '2024-05-01', 'a'), (2, '2025-05-01', 'b');";
    let text =
        "name = \"ev\"\n[[mirror]]\nsource = \"events\"\nset = { kind_upper = \"upper(kind)\" }\n";
    let line = one_problem(&check_db(setup, text).await);
    assert_mentions(
        &line,
        &[
            "public.events_2025 has REPLICA IDENTITY NOTHING",
            "ALTER TABLE public.events_2025 REPLICA IDENTITY DEFAULT",
        ],
    );

    // Fixed, the partitioned source plans, its rows counted over the leaves.
    let db = fresh_db().await;
    let fixed = format!("{setup}ALTER TABLE events_2025 REPLICA IDENTITY DEFAULT;");
    let report = check_as(&db, &db.conninfo(), &fixed, text).await;
    let plan = report
        .plan
        .unwrap_or_else(|| panic!("a plan: {:#?}", report.problems));
    assert_eq!(plan.mirrors[0].estimated_rows, 2);
    assert_eq!(
        plan.mirrors[0].key,
        vec![KeyColumn::new("id", "bigint"), KeyColumn::new("at", "date")]
    );
}

#[tokio::test]
async fn select_rows_that_do_not_fit_the_target() {
    let select = ITEMS_SELECT.replace("(i.v->>'qty')::int AS qty", "i.v->>'qty' AS qty");
    let line = one_problem(&check_db(&format!("{SHOP}{ORDER_ITEMS}"), &items_spec(&select)).await);
    assert_mentions(
        &line,
        &[
            "select: its rows do not fit public.order_items",
            "column \"qty\" is of type integer but expression is of type text",
        ],
    );
}

#[tokio::test]
async fn select_leaving_out_a_not_null_column() {
    let setup = format!(
        "{SHOP}{}",
        ORDER_ITEMS.replace("sku text", "sku text NOT NULL")
    );
    let select = ITEMS_SELECT.replace(", i.v->>'sku' AS sku", "");
    let line = one_problem(&check_db(&setup, &items_spec(&select)).await);
    assert_mentions(
        &line,
        &[
            "select does not produce public.order_items.sku, which is NOT NULL without a default",
            "AS sku",
        ],
    );
}

#[tokio::test]
async fn select_output_that_is_not_a_target_column() {
    let select = ITEMS_SELECT.replace("AS sku", "AS sku_code");
    let line = one_problem(&check_db(&format!("{SHOP}{ORDER_ITEMS}"), &items_spec(&select)).await);
    assert_mentions(
        &line,
        &["select: output column sku_code is not a column of public.order_items"],
    );
}

#[tokio::test]
async fn role_with_grants_that_does_not_own_the_source() {
    let db = fresh_db().await;
    let (owner, role) = (format!("{}_owner", db.name()), format!("{}_app", db.name()));
    let setup = format!(
        "CREATE ROLE {owner}; CREATE ROLE {role} LOGIN REPLICATION;
         GRANT CREATE ON DATABASE {db} TO {role};
         GRANT EXECUTE ON FUNCTION pg_replication_origin_create(text), pg_replication_origin_oid(text),
               pg_replication_origin_session_setup(text), pg_replication_origin_progress(text, boolean),
               pg_replication_origin_xact_setup(pg_lsn, timestamptz) TO {role};
         {SHOP}ALTER TABLE users OWNER TO {owner};
         GRANT SELECT, UPDATE (status) ON users TO {role};",
        db = db.name()
    );
    let conninfo = format!("{} user={role}", db.conninfo());
    let line = one_problem(&check_as(&db, &conninfo, &setup, USERS_STATUS).await);
    assert_eq!(
        line,
        format!(
            "role {role}: lacks ownership of public.users (CREATE PUBLICATION ... FOR TABLE \
             requires it); as a superuser run: GRANT {owner} TO {role}"
        )
    );

    // Once a member of the owner role, nothing is missing.
    let report = check_as(
        &db,
        &conninfo,
        &format!("GRANT {owner} TO {role}"),
        USERS_STATUS,
    )
    .await;
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
}

#[tokio::test]
async fn expression_assignable_but_not_comparable() {
    let setup =
        format!("{SHOP}ALTER TABLE users ADD COLUMN profile jsonb, ADD COLUMN profile_v2 jsonb;");
    let text = USERS_STATUS.replace(
        "status = \"CASE WHEN is_active THEN 'active' ELSE 'disabled' END\"",
        "profile_v2 = \"profile::json\"",
    );
    let line = one_problem(&check_db(&setup, &text).await);
    assert_mentions(
        &line,
        &[
            "set.profile_v2: the stored value cannot be compared with the expression: operator \
             does not exist: jsonb = json",
            "(...)::jsonb",
        ],
    );
}

#[tokio::test]
async fn a_locked_source_is_reported_not_waited_for() {
    let db = fresh_db().await;
    let admin = db.connect().await;
    admin.batch_execute(SHOP).await.unwrap();
    // A migration's DDL holding ACCESS EXCLUSIVE on the source.
    let ddl = db.connect().await;
    ddl.batch_execute("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let line = one_problem(&check_as(&db, &db.conninfo(), "", USERS_STATUS).await);
    assert_mentions(
        &line,
        &[
            "canceling statement due to lock timeout (SQLSTATE 55P03",
            "run check again",
        ],
    );
    ddl.batch_execute("ROLLBACK").await.unwrap();
}
