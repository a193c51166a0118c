//! The pure parts of `check`: where a Postgres error points in the operator's
//! SQL, one-line messages, the privilege script, key and replica-identity
//! verdicts, the conflict-key choice, and the rendered plan. The parts that
//! ask Postgres are tested against a real server in `tests/check.rs`.

use super::privileges::Grants;
use super::relation::{Column, Index, TableInfo};
use super::render::{eta_note, version_text};
use super::rows::{conflict_key, has_owner_index};
use super::session::{Refusal, line_at, locate, one_line};
use super::source::{Leaf, identity_fix, identity_problem, resolve_key};
use super::*;
use crate::mirror::sql::KeyColumn;

fn column(num: i16, name: &str, type_name: &str, not_null: bool) -> Column {
    Column {
        num,
        name: name.into(),
        display: name.into(),
        type_oid: if type_name == "bigint" { 20 } else { 25 },
        type_name: type_name.into(),
        collation: 0,
        collation_name: None,
        not_null,
        has_default: false,
        generated: false,
        identity_always: false,
        is_array: type_name.ends_with("[]"),
        can_select: true,
        can_update: true,
    }
}

fn index(display: &str, columns: &[i16], unique: bool, primary: bool) -> Index {
    Index {
        display: display.into(),
        columns: columns.to_vec(),
        unique,
        primary,
        valid: true,
        immediate: true,
        partial: false,
        replica_identity: false,
        btree: true,
    }
}

/// `public.t (id bigint NOT NULL, email text NOT NULL, note text, tags text[] NOT NULL)`.
fn table(indexes: Vec<Index>) -> TableInfo {
    TableInfo {
        oid: 1,
        name: QualifiedName::new("public", "t"),
        display: "public.t".into(),
        kind: 'r',
        persistence: 'p',
        replica_identity: 'd',
        owner: "app".into(),
        owner_is_superuser: false,
        owned: true,
        schema: "public".into(),
        schema_usage: true,
        select: true,
        insert: true,
        update: true,
        delete: true,
        columns: vec![
            column(1, "id", "bigint", true),
            column(2, "email", "text", true),
            column(3, "note", "text", false),
            column(4, "tags", "text[]", true),
        ],
        indexes,
    }
}

fn names(columns: &[&Column]) -> Vec<String> {
    columns.iter().map(|c| c.name.clone()).collect()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn positions_map_into_the_fragment() {
    let head = "UPDATE t SET x = (\n";
    let start = head.chars().count();
    let expr = "CASE WHEN a\nTHEN 'é' ELS 1 END";
    // Postgres counts characters from 1; "ELS" is on the fragment's line 2.
    let els = head.chars().count() + expr.find("ELS").map(|b| expr[..b].chars().count()).unwrap();
    assert_eq!(locate(expr, start, els + 1), Some((2, 10)));
    assert_eq!(locate(expr, start, start + 1), Some((1, 1)));
    // "at end of input" points just past the fragment.
    assert_eq!(
        locate(expr, start, start + expr.chars().count() + 1),
        Some((2, 19))
    );
    // Outside the fragment: in walshift's own text.
    assert_eq!(locate(expr, start, 3), None);
    assert_eq!(locate(expr, start, start + expr.chars().count() + 5), None);
    assert_eq!(locate(expr, start, 0), None);
}

#[test]
fn generated_lines_are_quoted_short() {
    let sql = "WITH a AS (\n  SELECT d.c1\n)\nSELECT 1";
    assert_eq!(line_at(sql, 15), Some((2, "SELECT d.c1".to_string())));
    let long = format!("SELECT {}", "x".repeat(300));
    let (line, text) = line_at(&long, 1).unwrap();
    assert_eq!(line, 1);
    assert_eq!(text.chars().count(), 103);
    assert!(text.ends_with("..."));
    assert_eq!(line_at(sql, 0), None);
}

#[test]
fn refusals_are_one_line() {
    assert_eq!(one_line("a\n  b\tc "), "a b c");
    let refusal = Refusal {
        code: "42804".into(),
        message: "column \"n\" is of type integer but expression is of type text".into(),
        detail: None,
        hint: Some("You will need to rewrite or cast the expression.".into()),
        position: Some(3),
    };
    assert_eq!(
        refusal.describe(Some("at line 1, column 1 of the expression")),
        "column \"n\" is of type integer but expression is of type text (SQLSTATE 42804, at line \
         1, column 1 of the expression); hint: You will need to rewrite or cast the expression"
    );
    let with_detail = Refusal {
        detail: Some("Key (id)=(1) exists.".into()),
        hint: None,
        ..refusal
    };
    assert!(
        with_detail
            .describe(None)
            .ends_with("(SQLSTATE 42804); Key (id)=(1) exists")
    );
}

#[test]
fn privileges_become_one_script() {
    let mut grants = Grants::default();
    assert_eq!(grants.problem(), None);
    grants.set_role("app");
    grants.need(
        "REPLICATION",
        "to stream the WAL",
        "ALTER ROLE app REPLICATION",
    );
    grants.need(
        "CREATE on database d",
        "for the publication",
        "GRANT CREATE ON DATABASE d TO app",
    );
    grants.need(
        "CREATE on database d",
        "for the walshift schema",
        "GRANT CREATE ON DATABASE d TO app",
    );
    grants.need(
        "CREATE on database d",
        "for the publication",
        "GRANT CREATE ON DATABASE d TO app",
    );
    grants.table("public.users", "SELECT");
    grants.table("public.users", "UPDATE (status)");
    grants.table("public.users", "SELECT");
    grants.table("public.items", "INSERT");
    let problem = grants.problem().unwrap();
    assert_eq!(problem.object, "role app");
    assert_eq!(
        problem.message,
        "lacks REPLICATION (to stream the WAL), CREATE on database d (for the publication and for \
         the walshift schema), INSERT on public.items, SELECT, UPDATE (status) on public.users; as \
         a superuser run: ALTER ROLE app REPLICATION; GRANT CREATE ON DATABASE d TO app; GRANT \
         INSERT ON public.items TO app; GRANT SELECT, UPDATE (status) ON public.users TO app"
    );
}

#[test]
fn the_key_is_the_primary_key_by_default() {
    let t = table(vec![index("t_pkey", &[1], true, true)]);
    assert_eq!(names(&resolve_key(&t, None).unwrap()), ["id"]);

    let no_pk = table(vec![index("t_email_key", &[2], true, false)]);
    let err = resolve_key(&no_pk, None).unwrap_err();
    assert_eq!(err.len(), 1);
    assert!(
        err[0].starts_with("source public.t has no primary key"),
        "{err:?}"
    );
}

#[test]
fn a_spec_key_must_be_unique_not_null_scalar_columns() {
    let t = table(vec![
        index("t_pkey", &[1], true, true),
        index("t_email_key", &[2], true, false),
        index("t_note_idx", &[3], false, false),
    ]);
    let key = |cols: &[&str]| resolve_key(&t, Some(&strings(cols)));
    assert_eq!(names(&key(&["email"]).unwrap()), ["email"]);
    // A unique subset makes the whole key unique.
    assert_eq!(names(&key(&["email", "id"]).unwrap()), ["email", "id"]);

    let err = key(&["nope", "note"]).unwrap_err();
    assert_eq!(err.len(), 2, "{err:?}");
    assert!(err[0].contains("has no column nope"));
    assert!(err[1].contains("column note allows NULL"));
    assert!(err[1].contains("ALTER TABLE public.t ALTER COLUMN note SET NOT NULL"));

    let mut partial = t.clone();
    partial.indexes[1].partial = true;
    let err = resolve_key(&partial, Some(&strings(&["email"]))).unwrap_err();
    assert!(
        err[0].contains("CREATE UNIQUE INDEX ON public.t (email)"),
        "{err:?}"
    );

    let mut arrays = t.clone();
    arrays.indexes.push(index("t_tags_key", &[4], true, false));
    let err = resolve_key(&arrays, Some(&strings(&["tags"]))).unwrap_err();
    assert!(
        err[0].contains("column tags is an array (text[])"),
        "{err:?}"
    );
}

fn leaf(replica_identity: char, pk: Option<&[&str]>, identity: Option<&[&str]>) -> Leaf {
    Leaf {
        display: "public.t".into(),
        replica_identity,
        primary_key: pk.map(strings),
        identity_index: identity.map(strings),
    }
}

#[test]
fn replica_identity_must_carry_the_key() {
    let id = ["id"];
    assert_eq!(identity_problem(&leaf('d', Some(&["id"]), None), &id), None);
    assert_eq!(identity_problem(&leaf('f', None, None), &id), None);
    assert_eq!(
        identity_problem(&leaf('i', None, Some(&["id", "x"])), &id),
        None
    );
    let verdict = |l: &Leaf, key: &[&str]| identity_problem(l, key).unwrap();
    assert!(verdict(&leaf('n', Some(&["id"]), None), &id).contains("NOTHING"));
    assert!(verdict(&leaf('d', None, None), &id).contains("no primary key"));
    assert!(verdict(&leaf('d', Some(&["id"]), None), &["email"]).contains("primary key (id)"));
    assert!(verdict(&leaf('i', None, Some(&["x"])), &id).contains("USING INDEX on (x)"));
    assert!(verdict(&leaf('i', None, None), &id).contains("index is gone"));

    assert_eq!(
        identity_fix(&leaf('n', Some(&["id"]), None), &id, None),
        "DEFAULT"
    );
    assert_eq!(
        identity_fix(
            &leaf('n', Some(&["id"]), None),
            &["email"],
            Some("t_email_key")
        ),
        "USING INDEX t_email_key"
    );
    assert_eq!(identity_fix(&leaf('n', None, None), &id, None), "FULL");
}

#[test]
fn the_conflict_key_prefers_the_primary_key_then_not_null() {
    let mut t = table(vec![
        index("a_note_key", &[3], true, false),
        index("b_email_key", &[2], true, false),
        index("t_pkey", &[1, 2], true, true),
    ]);
    let all = strings(&["id", "email", "note"]);
    assert_eq!(conflict_key(&t, &all).unwrap().names, ["id", "email"]);
    // Without the primary key columns selected: the NOT NULL unique key.
    let some = strings(&["email", "note"]);
    let ck = conflict_key(&t, &some).unwrap();
    assert_eq!((ck.names, ck.nullable), (strings(&["email"]), vec![]));
    // Only a nullable one left: chosen, and its NULL column named.
    let note = strings(&["note"]);
    assert_eq!(conflict_key(&t, &note).unwrap().nullable, ["note"]);
    // DEFERRABLE, partial or invalid indexes cannot arbitrate ON CONFLICT.
    for broken in [
        |i: &mut Index| i.immediate = false,
        |i: &mut Index| i.partial = true,
        |i: &mut Index| i.valid = false,
    ] {
        let mut t = t.clone();
        broken(&mut t.indexes[0]);
        assert_eq!(conflict_key(&t, &note), None);
    }
    t.indexes.clear();
    assert_eq!(conflict_key(&t, &all), None);
}

#[test]
fn the_owner_index_must_lead_with_the_owner_columns() {
    let t = table(vec![index("t_email_id", &[2, 1], false, false)]);
    let id = t.column("id").unwrap();
    let email = t.column("email").unwrap();
    assert!(has_owner_index(&t, &[email]));
    assert!(has_owner_index(&t, &[id, email]));
    assert!(!has_owner_index(&t, &[id]));
    let mut hash = t.clone();
    hash.indexes[0].btree = false;
    assert!(!has_owner_index(&hash, &[email]));
}

#[test]
fn labels_quote_only_what_needs_it() {
    assert_eq!(
        pretty(&QualifiedName::new("public", "users")),
        "public.users"
    );
    assert_eq!(
        pretty(&QualifiedName::new("Sales", "Order Items")),
        "\"Sales\".\"Order Items\""
    );
    assert_eq!(pretty_ident("_a1"), "_a1");
    assert_eq!(pretty_ident("1a"), "\"1a\"");
}

#[test]
fn versions_and_etas_read_naturally() {
    assert_eq!(version_text(150004), "15.4");
    assert_eq!(version_text(170000), "17.0");
    assert_eq!(version_text(90624), "9.6.24");

    let plan = |rows: i64| MirrorPlan {
        number: 1,
        source: QualifiedName::new("public", "users"),
        source_oid: 1,
        key: vec![KeyColumn::new("id", "bigint")],
        kind: MirrorKind::Set(SetPlan {
            source: QualifiedName::new("public", "users"),
            key: vec![KeyColumn::new("id", "bigint")],
            set: vec![("status".into(), "'x'".into())],
        }),
        estimated_rows: rows,
        replica_identity: 'd',
        two_way: None,
        depends: Vec::new(),
    };
    assert_eq!(eta_note(&[plan(10)], None), None);
    assert_eq!(eta_note(&[plan(-1)], Some(10)), None);
    assert_eq!(
        eta_note(&[plan(7_200_000), plan(1)], Some(1000)).unwrap(),
        "backfill: ~7200001 source rows at backfill.max_rows_per_second = 1000 take at least 2h00m"
    );
    assert!(eta_note(&[plan(90)], Some(1)).unwrap().ends_with("1m30s"));
}

#[test]
fn a_report_renders_its_plan_or_its_problems() {
    let items = RowsPlan {
        source: QualifiedName::new("public", "orders"),
        key: vec![KeyColumn::new("id", "bigint")],
        target: QualifiedName::new("public", "order_items"),
        owner: vec![KeyColumn::new("order_id", "bigint")],
        columns: strings(&["order_id", "sku"]),
        conflict_key: None,
        select: "SELECT src.id AS order_id, 'x' AS sku".into(),
        owned_if: None,
    };
    let report = CheckReport {
        problems: Vec::new(),
        plan: Some(Plan {
            mirrors: vec![MirrorPlan {
                number: 2,
                source: items.source.clone(),
                source_oid: 1,
                key: items.key.clone(),
                kind: MirrorKind::Rows(items),
                estimated_rows: -1,
                replica_identity: 'f',
                two_way: None,
                depends: Vec::new(),
            }],
            server_version_num: 150004,
            notes: vec!["a note".into()],
            warnings: Vec::new(),
        }),
    };
    let text = report.render_plan();
    for expected in [
        "PostgreSQL 15.4 (server_version_num 150004); 1 mirror(s)",
        "mirror #2: public.orders (rows mode into public.order_items, owner (order_id bigint), \
         replace-by-owner)",
        "  key: id bigint",
        "  replica identity: full",
        "  estimated rows: unknown (run ANALYZE)",
        "    WITH desired AS (",
        "notes:\n  - a note",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }

    let failed = CheckReport {
        problems: vec![Problem {
            object: "wal_level".into(),
            message: "is replica; set wal_level = logical".into(),
        }],
        plan: None,
    };
    assert_eq!(
        failed.render_plan(),
        "1 problem(s); nothing was created:\nwal_level: is replica; set wal_level = logical\n"
    );
}

#[test]
fn dependencies_are_published_and_so_locked_at_cut_over() {
    let posts = QualifiedName::new("public", "posts");
    let plan = MirrorPlan {
        number: 1,
        source: posts.clone(),
        source_oid: 1,
        key: vec![KeyColumn::new("id", "bigint")],
        kind: MirrorKind::Set(SetPlan {
            source: posts.clone(),
            key: vec![KeyColumn::new("id", "bigint")],
            set: vec![("user_id_v2".into(), "user_id".into())],
        }),
        estimated_rows: 1,
        replica_identity: 'd',
        two_way: None,
        depends: vec![DependPlan {
            table: QualifiedName::new("public", "users"),
            table_oid: 2,
            key: vec![KeyColumn::new("id", "bigint")],
            refs: vec![KeyColumn::new("user_id", "bigint")],
        }],
    };
    assert_eq!(
        plan.published(),
        vec![posts, QualifiedName::new("public", "users")]
    );
}
