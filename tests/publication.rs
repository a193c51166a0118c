//! The publication `run` makes (src/run/publication.rs, docs/design.md §4): from
//! PostgreSQL 15 on it lists only the columns the stream reads (a one-way source's key, a
//! dependency's primary key, and always the replica identity), so the walsender prints and
//! sends nothing walshift would parse for nothing; before 15 it lists whole tables. The
//! targets are judged by the tests' own SQL, the publication by the catalog.
//!
//! Planted: with the widening of a publication that leaves out a read column removed
//! (`up_to_date` comparing tables only), `a_hand_made_list_leaving_out_the_key_is_widened`
//! fails: the backfill's first chunk is refused ("cannot update table accounts: Column list
//! used by the publication does not cover the replica identity"), `run` exits and nothing is
//! mirrored.

mod support;

use std::time::Duration;

use support::cli::{cli, one_i64};
use support::{Database, Run, Spec, fresh_db, poll, wait_caught_up};

/// Accounts with a team each; `name_v2` reads both (a dependency on teams).
const SCHEMA: &str = "
CREATE TABLE teams (id bigint PRIMARY KEY, title text NOT NULL, pad text);
CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL UNIQUE, name text NOT NULL,
                       team_id bigint, pad text, note jsonb, name_v2 text);
CREATE INDEX ON accounts (team_id);
INSERT INTO teams SELECT g, 'team ' || g, repeat('t', 50) FROM generate_series(1, 20) g;
INSERT INTO accounts SELECT g, 'a' || g || '@example.com', 'name ' || g, 1 + g % 20,
                            repeat('p', 80), '{\"k\": 1}' FROM generate_series(1, 2000) g;
";

const MAPPING: &str = r#"
[[mirror]]
source = "public.accounts"
set = { name_v2 = "upper(name) || ' of ' || coalesce((SELECT t.title FROM public.teams t WHERE t.id = team_id), '-')" }
depends = [{ table = "public.teams", columns = ["team_id"] }]
"#;

/// Accounts whose `name_v2` is not what the mapping gives now.
async fn wrong(c: &tokio_postgres::Client) -> i64 {
    one_i64(
        c,
        "SELECT count(*) FROM accounts a WHERE a.name_v2 IS DISTINCT FROM
           upper(a.name) || ' of ' || coalesce((SELECT t.title FROM teams t WHERE t.id = a.team_id), '-')",
    )
    .await
}

async fn server_version(c: &tokio_postgres::Client) -> i64 {
    one_i64(c, "SELECT current_setting('server_version_num')::bigint").await
}

/// The publication's column list for `table`: `None` for the whole table (or no list, before
/// 15), read from `pg_publication_rel`, not from walshift.
async fn column_list(
    c: &tokio_postgres::Client,
    pubname: &str,
    table: &str,
) -> Option<Vec<String>> {
    if server_version(c).await < 150000 {
        return None;
    }
    let row = c
        .query_one(
            "SELECT CASE WHEN r.prattrs IS NULL THEN NULL ELSE
                 ARRAY(SELECT a.attname::text FROM pg_attribute a
                       WHERE a.attrelid = r.prrelid AND a.attnum = ANY(r.prattrs::int2[]) ORDER BY a.attnum)
               END
             FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
             WHERE p.pubname = $1 AND r.prrelid = $2::text::regclass",
            &[&pubname, &table],
        )
        .await
        .unwrap_or_else(|e| panic!("{table} in publication {pubname}: {e}"));
    row.get(0)
}

/// Writes that change names, teams, emails (the unique key), team titles, and deletes and
/// inserts accounts.
async fn write_a_round(c: &tokio_postgres::Client, round: i64) {
    c.batch_execute(&format!(
        "UPDATE accounts SET name = name || '+' WHERE id % 7 = {m};
         UPDATE accounts SET team_id = 1 + (team_id + {round}) % 20 WHERE id % 11 = {m};
         UPDATE accounts SET email = 'r{round}.' || email WHERE id % 13 = {m};
         UPDATE teams SET title = title || '*' WHERE id % 3 = {m3};
         DELETE FROM accounts WHERE id % 97 = {m};
         INSERT INTO accounts (id, email, name, team_id)
           SELECT 100000 * {round} + g, 'n{round}.' || g, 'new ' || g, g FROM generate_series(1, 10) g;",
        m = round % 7,
        m3 = round % 3,
    ))
    .await
    .unwrap();
}

async fn mirrored(spec: &Spec, db: &Database, c: &tokio_postgres::Client) {
    let run = Run::spawn(spec, db);
    // The publication is set up (and any hand-made list widened) before the stream starts.
    wait_caught_up(&run, c).await;
    for round in 1..=3 {
        write_a_round(c, round).await;
    }
    wait_caught_up(&run, c).await;
    poll(
        None,
        "every account mirrored",
        Duration::from_secs(60),
        || async { wrong(c).await == 0 },
    )
    .await;
    run.stop().await;
}

/// The list is the key and the replica identity, on the source and on the dependency; the
/// targets follow every kind of write through it.
#[tokio::test]
async fn the_publication_lists_only_the_columns_the_stream_reads() {
    let db = fresh_db().await;
    let c = db.connect().await;
    c.batch_execute(SCHEMA).await.unwrap();
    let spec = Spec::new("lists", MAPPING);
    mirrored(&spec, &db, &c).await;
    let pubname = spec.object();
    if server_version(&c).await >= 150000 {
        assert_eq!(
            column_list(&c, &pubname, "public.accounts").await,
            Some(vec!["id".to_string()])
        );
        assert_eq!(
            column_list(&c, &pubname, "public.teams").await,
            Some(vec!["id".to_string()])
        );
    } else {
        let tables = one_i64(
            &c,
            &format!("SELECT count(*) FROM pg_publication_tables WHERE pubname = '{pubname}'"),
        )
        .await;
        assert_eq!(tables, 2);
    }
}

/// A publication made by hand over whole tables is left as it is (a role that does not own the
/// tables could not change it), and mirroring works through it.
#[tokio::test]
async fn a_whole_table_publication_made_by_hand_is_left_alone() {
    let db = fresh_db().await;
    let c = db.connect().await;
    c.batch_execute(SCHEMA).await.unwrap();
    let spec = Spec::new("whole", MAPPING);
    let pubname = spec.object();
    c.batch_execute(&format!(
        "CREATE PUBLICATION {pubname} FOR TABLE accounts, teams WITH (publish_via_partition_root = true)"
    ))
    .await
    .unwrap();
    mirrored(&spec, &db, &c).await;
    assert_eq!(column_list(&c, &pubname, "public.accounts").await, None);
    assert_eq!(column_list(&c, &pubname, "public.teams").await, None);
}

/// A list made by hand that leaves out the key (here the replica identity index on email):
/// PostgreSQL refuses the application's updates while it stands, and the stream would carry no
/// key. `run` widens it to what the stream reads, and the targets follow.
#[tokio::test]
async fn a_hand_made_list_leaving_out_the_key_is_widened() {
    let db = fresh_db().await;
    let c = db.connect().await;
    c.batch_execute(SCHEMA).await.unwrap();
    if server_version(&c).await < 150000 {
        return; // no column lists before 15
    }
    c.batch_execute("ALTER TABLE accounts REPLICA IDENTITY USING INDEX accounts_email_key")
        .await
        .unwrap();
    let spec = Spec::new(
        "narrow",
        &MAPPING.replace("source =", "key = [\"email\"]\nsource ="),
    );
    let pubname = spec.object();
    c.batch_execute(&format!(
        "CREATE PUBLICATION {pubname} FOR TABLE accounts (id), teams (id) WITH (publish_via_partition_root = true)"
    ))
    .await
    .unwrap();
    let refused = c
        .batch_execute("UPDATE accounts SET name = name WHERE id = 1")
        .await
        .expect_err("an update while the list leaves out the replica identity");
    assert!(
        format!("{refused:?}").contains("does not cover the replica identity"),
        "{refused:?}"
    );
    mirrored(&spec, &db, &c).await;
    assert_eq!(
        column_list(&c, &pubname, "public.accounts").await,
        Some(vec!["email".to_string()])
    );
    assert_eq!(
        column_list(&c, &pubname, "public.teams").await,
        Some(vec!["id".to_string()])
    );
}

const MEMBERS: &str = "
CREATE TABLE members (id bigint PRIMARY KEY, is_active boolean, status text, pad text);
INSERT INTO members SELECT g, g % 2 = 0, NULL, 'p' FROM generate_series(1, 500) g;
";

const MEMBERS_ONE_WAY: &str = r#"
[[mirror]]
source = "public.members"
set = { status = "CASE WHEN is_active THEN 'active' ELSE 'disabled' END" }
"#;

/// A one-way mirror's list stands in the way of the REPLICA IDENTITY FULL a two-way mirror
/// needs: under FULL, PostgreSQL refuses every UPDATE of a table a publication lists in part.
/// `check` says so and gives the statements that change both in one transaction; run as given,
/// the application's writes never fail, and the two-way mirror then works.
#[tokio::test]
async fn check_says_how_to_make_a_listed_table_replica_identity_full() {
    let db = fresh_db().await;
    let c = db.connect().await;
    c.batch_execute(MEMBERS).await.unwrap();
    if server_version(&c).await < 150000 {
        return; // no column lists before 15
    }
    let one_way = Spec::new("members", MEMBERS_ONE_WAY);
    let run = Run::spawn(&one_way, &db);
    wait_caught_up(&run, &c).await;
    run.stop().await;
    let pubname = one_way.object();
    assert_eq!(
        column_list(&c, &pubname, "public.members").await,
        Some(vec!["id".to_string()])
    );

    let two_way = Spec::new(
        "members",
        &format!("{MEMBERS_ONE_WAY}reverse = {{ is_active = \"status = 'active'\" }}\n"),
    );
    let out = cli(&["check"], &two_way, &db).await;
    assert_eq!(out.code(), Some(1), "{out}");
    let text = format!("{}{}", out.stdout, out.stderr);
    let lead = "so run, as one transaction: ";
    let fix = text
        .lines()
        .find_map(|l| l.split_once(lead).map(|(_, fix)| fix.to_string()))
        .unwrap_or_else(|| panic!("no one-transaction fix in:\n{out}"));
    assert_eq!(
        fix,
        format!(
            "BEGIN; ALTER PUBLICATION {pubname} DROP TABLE public.members; ALTER PUBLICATION \
             {pubname} ADD TABLE public.members; ALTER TABLE public.members REPLICA IDENTITY FULL; \
             COMMIT"
        )
    );

    // What the fix avoids: FULL alone makes every update of the table fail.
    c.batch_execute("BEGIN; ALTER TABLE members REPLICA IDENTITY FULL")
        .await
        .unwrap();
    let refused = c
        .batch_execute("UPDATE members SET pad = 'q' WHERE id = 1")
        .await
        .expect_err("an update under FULL with a column list");
    assert!(
        format!("{refused:?}").contains("does not cover the replica identity"),
        "{refused:?}"
    );
    c.batch_execute("ROLLBACK").await.unwrap();

    c.batch_execute(&fix).await.unwrap();
    c.batch_execute("UPDATE members SET pad = 'q' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(column_list(&c, &pubname, "public.members").await, None);
    let out = cli(&["check"], &two_way, &db).await;
    assert_eq!(out.code(), Some(0), "{out}");

    // Both ways now: the old version flips is_active, the new one writes status.
    let run = Run::spawn(&two_way, &db);
    c.batch_execute(
        "UPDATE members SET is_active = NOT is_active WHERE id <= 100;
         UPDATE members SET status = 'disabled' WHERE id BETWEEN 401 AND 500;",
    )
    .await
    .unwrap();
    wait_caught_up(&run, &c).await;
    poll(
        None,
        "both shapes to agree",
        Duration::from_secs(60),
        || async {
            one_i64(
                &c,
                "SELECT count(*) FROM members
             WHERE status IS DISTINCT FROM CASE WHEN is_active THEN 'active' ELSE 'disabled' END",
            )
            .await
                == 0
        },
    )
    .await;
    assert_eq!(
        one_i64(
            &c,
            "SELECT count(*) FROM members WHERE id > 400 AND is_active"
        )
        .await,
        0
    );
    run.stop().await;
}
