//! Exact-text tests of the generated SQL. Every expected statement here was
//! also run against PostgreSQL 15 on the example tables of docs/design.md (batch,
//! range, rerun-writes-nothing, verify, truncate) before it was pinned.

use super::*;

fn k(name: &str, type_name: &str) -> KeyColumn {
    KeyColumn::new(name, type_name)
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

const ALL: Scope = Scope::Range {
    lower: false,
    upper: false,
};
const BETWEEN: Scope = Scope::Range {
    lower: true,
    upper: true,
};

/// The design's example: `users.status` from `is_active`.
fn users() -> SetPlan {
    SetPlan {
        source: QualifiedName::new("public", "users"),
        key: vec![k("id", "bigint")],
        set: vec![(
            "status".into(),
            "CASE WHEN is_active THEN 'active' ELSE 'disabled' END".into(),
        )],
    }
}

/// Composite key, mixed case, spaces and embedded quotes, a non-public
/// schema, two columns, and an expression ending in a `--` comment.
fn mixed_set() -> SetPlan {
    SetPlan {
        source: QualifiedName::new("My Schema", "Order \"Items\""),
        key: vec![k("Region", "text"), k("ID", "integer")],
        set: vec![
            ("Status".into(), "upper(trim(\"Note\")) -- shout".into()),
            ("Note".into(), "trim(\"Note\")".into()),
        ],
    }
}

/// The design's example: `orders.items` (jsonb array) -> `order_items`, upsert on its
/// primary key.
fn items() -> RowsPlan {
    RowsPlan {
        source: QualifiedName::new("public", "orders"),
        key: vec![k("id", "bigint")],
        target: QualifiedName::new("public", "order_items"),
        owner: vec![k("order_id", "bigint")],
        columns: strings(&["order_id", "line_no", "sku", "qty"]),
        conflict_key: Some(strings(&["order_id", "line_no"])),
        select: "SELECT src.id AS order_id, i.n AS line_no, i.v->>'sku' AS sku, (i.v->>'qty')::int AS qty\n\
                 FROM jsonb_array_elements(src.items) WITH ORDINALITY AS i(v, n)"
            .into(),
        owned_if: None,
    }
}

/// Replace-by-owner, composite owner, mixed-case names.
fn mixed_rows() -> RowsPlan {
    RowsPlan {
        source: QualifiedName::new("My Schema", "Order \"Items\""),
        key: vec![k("Region", "text"), k("ID", "integer")],
        target: QualifiedName::new("My Schema", "Line \"Items\""),
        owner: vec![k("Owner Region", "text"), k("Owner ID", "integer")],
        columns: strings(&["Owner Region", "Owner ID", "Line No", "payload"]),
        conflict_key: None,
        select: "SELECT src.\"Region\", src.\"ID\", g AS \"Line No\", jsonb_build_object('note', src.\"Note\") \
                 FROM generate_series(1, length(src.\"Note\")) AS g"
            .into(),
        owned_if: None,
    }
}

#[track_caller]
fn assert_sql(statement: &Statement, sql: &str, params: &[Param]) {
    assert_eq!(
        statement.sql, sql,
        "\n--- got ---\n{}\n--- expected ---\n{sql}\n",
        statement.sql
    );
    assert_eq!(statement.params, params);
}

#[test]
fn set_apply_key_batch() {
    assert_sql(
        &set_apply(&users(), Scope::Keys),
        r#"UPDATE "public"."users" AS src
SET "status" = (CASE WHEN is_active THEN 'active' ELSE 'disabled' END)
WHERE src."id" = ANY($1::text[]::bigint[])
  AND src."status" IS DISTINCT FROM (CASE WHEN is_active THEN 'active' ELSE 'disabled' END)"#,
        &[Param::KeyArray(0)],
    );
}

#[test]
fn set_apply_composite_key_and_awkward_names() {
    assert_sql(
        &set_apply(&mixed_set(), Scope::Keys),
        r#"UPDATE "My Schema"."Order ""Items""" AS src
SET "Status" = (upper(trim("Note")) -- shout
),
    "Note" = (trim("Note"))
WHERE (src."Region", src."ID") IN (SELECT * FROM unnest($1::text[]::text[], $2::text[]::integer[]))
  AND (src."Status", src."Note") IS DISTINCT FROM ((upper(trim("Note")) -- shout
), (trim("Note")))"#,
        &[Param::KeyArray(0), Param::KeyArray(1)],
    );
}

#[test]
fn set_apply_ranges() {
    let tail = "\n  AND src.\"status\" IS DISTINCT FROM (CASE WHEN is_active THEN 'active' ELSE 'disabled' END)";
    let head = "UPDATE \"public\".\"users\" AS src\n\
                SET \"status\" = (CASE WHEN is_active THEN 'active' ELSE 'disabled' END)\nWHERE ";
    assert_sql(
        &set_apply(&users(), BETWEEN),
        &format!("{head}src.\"id\" > $1::text::bigint\n  AND src.\"id\" <= $2::text::bigint{tail}"),
        &[Param::Lower(0), Param::Upper(0)],
    );
    let first = Scope::Range {
        lower: false,
        upper: true,
    };
    assert_sql(
        &set_apply(&users(), first),
        &format!("{head}src.\"id\" <= $1::text::bigint{tail}"),
        &[Param::Upper(0)],
    );
    let last = Scope::Range {
        lower: true,
        upper: false,
    };
    assert_sql(
        &set_apply(&users(), last),
        &format!("{head}src.\"id\" > $1::text::bigint{tail}"),
        &[Param::Lower(0)],
    );
    // The whole table: only the "would change" condition remains.
    assert_sql(
        &set_apply(&users(), ALL),
        &format!("{head}{}", &tail["\n  AND ".len()..]),
        &[],
    );
}

#[test]
fn set_apply_composite_range_compares_rows() {
    let sql = set_apply(&mixed_set(), BETWEEN).sql;
    assert!(sql.contains(
        "WHERE (src.\"Region\", src.\"ID\") > ($1::text::text, $2::text::integer)\n  \
         AND (src.\"Region\", src.\"ID\") <= ($3::text::text, $4::text::integer)\n  AND "
    ));
}

#[test]
fn chunk_upper_bound_statements() {
    let users = users();
    assert_sql(
        &chunk_upper_bound(&users.source, &users.key, false),
        r#"SELECT src."id"::text
FROM "public"."users" AS src
ORDER BY src."id"
LIMIT 1 OFFSET ($1::bigint - 1)"#,
        &[Param::ChunkRows],
    );
    let mixed = mixed_set();
    assert_sql(
        &chunk_upper_bound(&mixed.source, &mixed.key, true),
        r#"SELECT src."Region"::text, src."ID"::text
FROM "My Schema"."Order ""Items""" AS src
WHERE (src."Region", src."ID") > ($1::text::text, $2::text::integer)
ORDER BY src."Region", src."ID"
LIMIT 1 OFFSET ($3::bigint - 1)"#,
        &[Param::Lower(0), Param::Lower(1), Param::ChunkRows],
    );
}

#[test]
fn rows_apply_with_conflict_key() {
    assert_sql(
        &rows_apply(&items(), Scope::Keys),
        r#"WITH desired AS (
  SELECT m.c1, m.c2, m.c3, m.c4
  FROM "public"."orders" AS src
  CROSS JOIN LATERAL (
SELECT src.id AS order_id, i.n AS line_no, i.v->>'sku' AS sku, (i.v->>'qty')::int AS qty
FROM jsonb_array_elements(src.items) WITH ORDINALITY AS i(v, n)
  ) AS m(c1, c2, c3, c4)
  WHERE src."id" = ANY($1::text[]::bigint[])
    AND m.c1::text = src."id"::text
),
deleted AS (
  DELETE FROM "public"."order_items" AS t
  WHERE t."order_id" = ANY($1::text[]::bigint[])
    AND NOT EXISTS (
      SELECT FROM desired AS d
      WHERE (d.c1, d.c2) = (t."order_id", t."line_no"))
  RETURNING 1
),
written AS (
  INSERT INTO "public"."order_items" AS t ("order_id", "line_no", "sku", "qty")
  SELECT d.c1, d.c2, d.c3, d.c4
  FROM desired AS d
  WHERE NOT EXISTS (
    SELECT FROM "public"."order_items" AS e
    WHERE e."order_id" = ANY($1::text[]::bigint[])
      AND (e."order_id", e."line_no") = (d.c1, d.c2)
      AND (e."sku", e."qty") IS NOT DISTINCT FROM (d.c3, d.c4))
  ON CONFLICT ("order_id", "line_no") DO UPDATE
  SET "sku" = EXCLUDED."sku",
      "qty" = EXCLUDED."qty"
  WHERE (t."sku", t."qty") IS DISTINCT FROM (EXCLUDED."sku", EXCLUDED."qty")
  RETURNING 1
)
SELECT (SELECT count(*) FROM deleted) AS deleted, (SELECT count(*) FROM written) AS written"#,
        &[Param::KeyArray(0)],
    );
}

#[test]
fn rows_apply_range_uses_owner_types_on_the_target() {
    let mut plan = items();
    plan.owner = vec![k("order_id", "integer")];
    let statement = rows_apply(&plan, BETWEEN);
    assert_eq!(statement.params, [Param::Lower(0), Param::Upper(0)]);
    let sql = &statement.sql;
    // Source rows by the key type, target rows by the owner type, same params.
    assert!(sql.contains(
        "  WHERE src.\"id\" > $1::text::bigint\n    AND src.\"id\" <= $2::text::bigint\n"
    ));
    assert!(sql.contains(
        "  WHERE t.\"order_id\" > $1::text::integer\n    AND t.\"order_id\" <= $2::text::integer\n"
    ));
    assert!(sql.contains(
        "    WHERE e.\"order_id\" > $1::text::integer\n      AND e.\"order_id\" <= $2::text::integer\n"
    ));
    // The whole table: no scope conditions at all, but still a valid DELETE.
    let all = rows_apply(&plan, ALL).sql;
    assert!(all.contains("  DELETE FROM \"public\".\"order_items\" AS t\n  WHERE TRUE\n"));
    assert!(all.contains("    WHERE (e.\"order_id\", e.\"line_no\") = (d.c1, d.c2)\n"));
}

#[test]
fn rows_apply_single_column_conflict_key_and_nothing_to_update() {
    let mut plan = items();
    plan.columns = strings(&["order_id", "sku"]);
    plan.conflict_key = Some(strings(&["sku"]));
    let sql = rows_apply(&plan, Scope::Keys).sql;
    assert!(sql.contains("      WHERE d.c2 = t.\"sku\")\n"));
    assert!(sql.contains(
        "      AND e.\"sku\" = d.c2\n      AND e.\"order_id\" IS NOT DISTINCT FROM d.c1)\n"
    ));
    assert!(sql.contains(
        "  ON CONFLICT (\"sku\") DO UPDATE\n  SET \"order_id\" = EXCLUDED.\"order_id\"\n  \
         WHERE t.\"order_id\" IS DISTINCT FROM EXCLUDED.\"order_id\"\n"
    ));
    // Every column in the conflict key: a conflicting row is identical.
    plan.conflict_key = Some(strings(&["order_id", "sku"]));
    let sql = rows_apply(&plan, Scope::Keys).sql;
    assert!(sql.contains(
        "      AND (e.\"order_id\", e.\"sku\") = (d.c1, d.c2))\n  ON CONFLICT (\"order_id\", \"sku\") DO NOTHING\n"
    ));
}

#[test]
fn rows_apply_replace_by_owner() {
    assert_sql(
        &rows_apply(&mixed_rows(), Scope::Keys),
        r#"WITH desired AS (
  SELECT m.c1, m.c2, m.c3, m.c4,
    row_number() OVER (PARTITION BY m.c1, m.c2, m.c3, m.c4) AS n
  FROM "My Schema"."Order ""Items""" AS src
  CROSS JOIN LATERAL (
SELECT src."Region", src."ID", g AS "Line No", jsonb_build_object('note', src."Note") FROM generate_series(1, length(src."Note")) AS g
  ) AS m(c1, c2, c3, c4)
  WHERE (src."Region", src."ID") IN (SELECT * FROM unnest($1::text[]::text[], $2::text[]::integer[]))
    AND (m.c1::text, m.c2::text) = (src."Region"::text, src."ID"::text)
),
existing AS (
  SELECT t.tableoid AS row_table, t.ctid AS row_id, t."Owner Region" AS c1, t."Owner ID" AS c2, t."Line No" AS c3, t."payload" AS c4,
    row_number() OVER (PARTITION BY t."Owner Region", t."Owner ID", t."Line No", t."payload") AS n
  FROM "My Schema"."Line ""Items""" AS t
  WHERE (t."Owner Region", t."Owner ID") IN (SELECT * FROM unnest($1::text[]::text[], $2::text[]::integer[]))
),
deleted AS (
  DELETE FROM "My Schema"."Line ""Items""" AS t
  WHERE (t."Owner Region", t."Owner ID") IN (SELECT * FROM unnest($1::text[]::text[], $2::text[]::integer[]))
    AND (t.tableoid, t.ctid) IN (
      SELECT e.row_table, e.row_id
      FROM existing AS e
      WHERE NOT EXISTS (
        SELECT FROM desired AS d
        WHERE (e.c1, e.c2) = (d.c1, d.c2)
          AND (d.c1, d.c2, d.c3, d.c4, d.n) IS NOT DISTINCT FROM (e.c1, e.c2, e.c3, e.c4, e.n)))
  RETURNING 1
),
written AS (
  INSERT INTO "My Schema"."Line ""Items""" ("Owner Region", "Owner ID", "Line No", "payload")
  SELECT d.c1, d.c2, d.c3, d.c4
  FROM desired AS d
  WHERE NOT EXISTS (
    SELECT FROM existing AS e
    WHERE (e.c1, e.c2) = (d.c1, d.c2)
      AND (d.c1, d.c2, d.c3, d.c4, d.n) IS NOT DISTINCT FROM (e.c1, e.c2, e.c3, e.c4, e.n))
  RETURNING 1
)
SELECT (SELECT count(*) FROM deleted) AS deleted, (SELECT count(*) FROM written) AS written"#,
        &[Param::KeyArray(0), Param::KeyArray(1)],
    );
}

#[test]
fn rows_apply_closes_a_select_ending_in_a_comment() {
    let mut plan = items();
    plan.select = format!("{} -- one row per element", plan.select);
    let sql = rows_apply(&plan, Scope::Keys).sql;
    assert!(
        sql.contains(
            "WITH ORDINALITY AS i(v, n) -- one row per element\n  ) AS m(c1, c2, c3, c4)\n"
        )
    );
}

#[test]
fn set_verify_statements() {
    assert_sql(
        &set_verify(&users(), Scope::Keys, VerifyOutput::Keys),
        r#"SELECT src."id"::text
FROM "public"."users" AS src
WHERE src."id" = ANY($1::text[]::bigint[])
  AND src."status" IS DISTINCT FROM (CASE WHEN is_active THEN 'active' ELSE 'disabled' END)
ORDER BY src."id"
LIMIT $2::bigint"#,
        &[Param::KeyArray(0), Param::Limit],
    );
    assert_sql(
        &set_verify(&users(), ALL, VerifyOutput::Count),
        r#"SELECT count(*)
FROM "public"."users" AS src
WHERE src."status" IS DISTINCT FROM (CASE WHEN is_active THEN 'active' ELSE 'disabled' END)"#,
        &[],
    );
    let statement = set_verify(&mixed_set(), BETWEEN, VerifyOutput::Keys);
    assert_eq!(
        statement.params,
        [
            Param::Lower(0),
            Param::Lower(1),
            Param::Upper(0),
            Param::Upper(1),
            Param::Limit
        ]
    );
    assert!(
        statement
            .sql
            .ends_with("\nORDER BY src.\"Region\", src.\"ID\"\nLIMIT $5::bigint")
    );
}

#[test]
fn rows_verify_statements() {
    let body = r#"WITH desired AS (
  SELECT src."id" AS k1, m.c1, m.c2, m.c3, m.c4,
    row_number() OVER (PARTITION BY m.c1, m.c2, m.c3, m.c4) AS n
  FROM "public"."orders" AS src
  CROSS JOIN LATERAL (
SELECT src.id AS order_id, i.n AS line_no, i.v->>'sku' AS sku, (i.v->>'qty')::int AS qty
FROM jsonb_array_elements(src.items) WITH ORDINALITY AS i(v, n)
  ) AS m(c1, c2, c3, c4)
  WHERE src."id" = ANY($1::text[]::bigint[])
),
existing AS (
  SELECT t."order_id"::text::bigint AS k1, t."order_id" AS c1, t."line_no" AS c2, t."sku" AS c3, t."qty" AS c4,
    row_number() OVER (PARTITION BY t."order_id", t."line_no", t."sku", t."qty") AS n
  FROM "public"."order_items" AS t
  WHERE t."order_id" = ANY($1::text[]::bigint[])
),
differing AS (
  SELECT d.k1
  FROM desired AS d
  WHERE NOT EXISTS (
    SELECT FROM existing AS e
    WHERE e.c1 = d.c1
      AND (d.c1, d.c2, d.c3, d.c4, d.n) IS NOT DISTINCT FROM (e.c1, e.c2, e.c3, e.c4, e.n))
  UNION
  SELECT e.k1
  FROM existing AS e
  WHERE NOT EXISTS (
    SELECT FROM desired AS d
    WHERE e.c1 = d.c1
      AND (d.c1, d.c2, d.c3, d.c4, d.n) IS NOT DISTINCT FROM (e.c1, e.c2, e.c3, e.c4, e.n))
)
"#;
    assert_sql(
        &rows_verify(&items(), Scope::Keys, VerifyOutput::Keys),
        &format!("{body}SELECT f.k1::text\nFROM differing AS f\nORDER BY f.k1\nLIMIT $2::bigint"),
        &[Param::KeyArray(0), Param::Limit],
    );
    assert_sql(
        &rows_verify(&items(), Scope::Keys, VerifyOutput::Count),
        &format!("{body}SELECT count(*) FROM differing"),
        &[Param::KeyArray(0)],
    );
    let sql = rows_verify(&mixed_rows(), ALL, VerifyOutput::Keys).sql;
    assert!(sql.contains(
        "  SELECT t.\"Owner Region\"::text::text AS k1, t.\"Owner ID\"::text::integer AS k2, "
    ));
    assert!(sql.contains("  WHERE TRUE\n),\nexisting AS"));
    assert!(sql.ends_with(
        "SELECT f.k1::text, f.k2::text\nFROM differing AS f\nORDER BY f.k1, f.k2\nLIMIT $1::bigint"
    ));
}

#[test]
fn rows_truncate_statements() {
    assert_sql(
        &rows_truncate(&items()),
        r#"DELETE FROM "public"."order_items" AS t
WHERE t."order_id" IS NOT NULL
  AND NOT EXISTS (
    SELECT FROM "public"."orders" AS src
    WHERE src."id" = t."order_id"::text::bigint)"#,
        &[],
    );
    assert_sql(
        &rows_truncate(&mixed_rows()),
        r#"DELETE FROM "My Schema"."Line ""Items""" AS t
WHERE t."Owner Region" IS NOT NULL
  AND t."Owner ID" IS NOT NULL
  AND NOT EXISTS (
    SELECT FROM "My Schema"."Order ""Items""" AS src
    WHERE (src."Region", src."ID") = (t."Owner Region"::text::text, t."Owner ID"::text::integer))"#,
        &[],
    );
}

#[test]
fn rows_owner_mismatch_statement() {
    assert_sql(
        &rows_owner_mismatch(&items(), Scope::Keys),
        r#"SELECT src."id"::text
FROM "public"."orders" AS src
WHERE src."id" = ANY($1::text[]::bigint[])
  AND EXISTS (
    SELECT FROM (
SELECT src.id AS order_id, i.n AS line_no, i.v->>'sku' AS sku, (i.v->>'qty')::int AS qty
FROM jsonb_array_elements(src.items) WITH ORDINALITY AS i(v, n)
    ) AS m(c1, c2, c3, c4)
    WHERE m.c1::text IS DISTINCT FROM src."id"::text)
ORDER BY src."id"
LIMIT $2::bigint"#,
        &[Param::KeyArray(0), Param::Limit],
    );
}

#[test]
fn owner_columns_are_found_by_name_not_position() {
    let mut plan = items();
    plan.columns = strings(&["line_no", "sku", "order_id"]);
    plan.conflict_key = Some(strings(&["order_id", "line_no"]));
    let sql = rows_apply(&plan, Scope::Keys).sql;
    assert!(sql.contains("    AND m.c3::text = src.\"id\"::text\n"));
    assert!(sql.contains("      WHERE (d.c3, d.c1) = (t.\"order_id\", t.\"line_no\"))\n"));
}

#[test]
fn names_with_quotes_are_escaped_everywhere() {
    let plan = SetPlan {
        source: QualifiedName::new("we\"ird", "ta\"ble"),
        key: vec![k("i\"d", "\"we\"\"ird\".\"ty\"\"pe\"")],
        set: vec![("co\"l".into(), "1".into())],
    };
    assert_sql(
        &set_apply(&plan, Scope::Keys),
        r#"UPDATE "we""ird"."ta""ble" AS src
SET "co""l" = (1)
WHERE src."i""d" = ANY($1::text[]::"we""ird"."ty""pe"[])
  AND src."co""l" IS DISTINCT FROM (1)"#,
        &[Param::KeyArray(0)],
    );
}

#[test]
fn plan_checks() {
    assert_eq!(users().check(), Ok(()));
    assert_eq!(mixed_set().check(), Ok(()));
    assert_eq!(items().check(), Ok(()));
    assert_eq!(mixed_rows().check(), Ok(()));

    let mut p = users();
    p.key.clear();
    assert_eq!(p.check(), Err(PlanError::EmptyKey));
    let mut p = users();
    p.set.clear();
    assert_eq!(p.check(), Err(PlanError::EmptySet));
    let mut p = users();
    p.set.push(("id".into(), "1".into()));
    assert_eq!(p.check(), Err(PlanError::WritesKey("id".into())));
    let mut p = users();
    p.set.push(("status".into(), "1".into()));
    assert_eq!(p.check(), Err(PlanError::DuplicateColumn("status".into())));

    let mut p = items();
    p.owner.push(k("x", "int"));
    assert_eq!(p.check(), Err(PlanError::OwnerLength { owner: 2, key: 1 }));
    let mut p = items();
    p.owner = vec![k("nope", "bigint")];
    assert_eq!(p.check(), Err(PlanError::OwnerNotSelected("nope".into())));
    let mut p = items();
    p.conflict_key = Some(vec![]);
    assert_eq!(p.check(), Err(PlanError::EmptyConflictKey));
    let mut p = items();
    p.conflict_key = Some(strings(&["id"]));
    assert_eq!(
        p.check(),
        Err(PlanError::ConflictKeyNotSelected("id".into()))
    );
    let mut p = items();
    p.columns.clear();
    assert_eq!(p.check(), Err(PlanError::NoColumns));
    let mut p = items();
    p.columns.push("a\0".into());
    assert_eq!(p.check(), Err(PlanError::Nul));
}

#[test]
fn fragments_and_rows() {
    assert_eq!(fragment("a + 1"), "(a + 1)");
    assert_eq!(fragment("a -- why"), "(a -- why\n)");
    assert_eq!(row(&strings(&["a"])), "a");
    assert_eq!(row(&strings(&["a", "b"])), "(a, b)");
}

#[test]
fn range_count_counts_past_the_lower_bound() {
    let source = QualifiedName::new("public", "users");
    let key = vec![KeyColumn::new("id", "bigint")];
    let s = range_count(&source, &key, true);
    assert_eq!(
        s.sql,
        "SELECT count(*)\nFROM \"public\".\"users\" AS src\nWHERE src.\"id\" > $1::text::bigint"
    );
    assert_eq!(s.params, vec![Param::Lower(0)]);
    let s = range_count(&source, &key, false);
    assert_eq!(s.sql, "SELECT count(*)\nFROM \"public\".\"users\" AS src");
    assert!(s.params.is_empty());
}

/// Typed execution (`query_typed`, the applier's pipelines) declares each
/// parameter's type from [`Param::pg_type`] instead of asking the server. It
/// guards that the declared type is the one the text casts the parameter to
/// first, for every statement and scope a caller can bind: a mismatch would
/// either fail at bind time or compare keys as another type.
#[test]
fn declared_parameter_types_match_the_first_cast_in_the_text() {
    let scopes = [
        Scope::Keys,
        ALL,
        BETWEEN,
        Scope::Range {
            lower: true,
            upper: false,
        },
        Scope::Range {
            lower: false,
            upper: true,
        },
    ];
    let mut statements = Vec::new();
    for scope in scopes {
        for plan in [users(), mixed_set()] {
            statements.push(set_apply(&plan, scope));
            for output in [VerifyOutput::Count, VerifyOutput::Keys, VerifyOutput::Kinds] {
                statements.push(set_verify(&plan, scope, output));
            }
        }
        for plan in [items(), mixed_rows()] {
            statements.push(rows_apply(&plan, scope));
            for output in [VerifyOutput::Count, VerifyOutput::Keys, VerifyOutput::Kinds] {
                statements.push(rows_verify(&plan, scope, output));
            }
        }
    }
    for plan in [users(), mixed_set()] {
        for after in [false, true] {
            statements.push(chunk_upper_bound(&plan.source, &plan.key, after));
            statements.push(range_count(&plan.source, &plan.key, after));
        }
    }
    statements.push(rows_truncate(&items()));
    statements.push(rows_truncate(&mixed_rows()));
    let mut checked = 0;
    for st in &statements {
        for (i, p) in st.params.iter().enumerate() {
            let cast = match p.pg_type() {
                t if t == tokio_postgres::types::Type::TEXT => "::text",
                t if t == tokio_postgres::types::Type::TEXT_ARRAY => "::text[]",
                t if t == tokio_postgres::types::Type::INT8 => "::bigint",
                t => panic!("{p:?}: no cast known for {t}"),
            };
            let placeholder = format!("${}", i + 1);
            let uses: Vec<&str> = st
                .sql
                .match_indices(&placeholder)
                .map(|(at, _)| &st.sql[at + placeholder.len()..])
                // `$1` is not the start of `$10`.
                .filter(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
                .collect();
            assert!(!uses.is_empty(), "{placeholder} unused in:\n{}", st.sql);
            for rest in uses {
                assert!(
                    rest.starts_with(cast) && !(cast == "::text" && rest.starts_with("::text[]")),
                    "{placeholder} ({p:?}) is declared {cast} but reads {:?} in:\n{}",
                    &rest[..rest.len().min(20)],
                    st.sql
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 100, "only {checked} placeholders checked");
}

fn excluded() -> Excluded {
    Excluded {
        spec: "o'k".into(),
        mirror: 2,
    }
}

/// Ranges of a two-way mirror leave alone the keys walshift's key table
/// lists, on both the source rows and the owned target rows.
#[test]
fn excluded_keys_are_left_alone_by_range_statements() {
    let range = Scope::Range {
        lower: true,
        upper: false,
    };
    let set = set_apply_excluding(&users(), range, Some(&excluded()));
    assert!(set.sql.ends_with(
        "\n  AND NOT EXISTS (SELECT FROM walshift.keys AS w WHERE w.name = 'o''k' AND w.mirror = 2 \
         AND w.key = ARRAY[src.\"id\"::text])"
    ), "{}", set.sql);
    assert_eq!(set.params, set_apply(&users(), range).params);
    let rows = rows_apply_excluding(&mixed_rows(), range, Some(&excluded()));
    let on_source = "AND NOT EXISTS (SELECT FROM walshift.keys AS w WHERE w.name = 'o''k' AND \
                     w.mirror = 2 AND w.key = ARRAY[src.\"Region\"::text, src.\"ID\"::text])";
    let on_target = "AND NOT EXISTS (SELECT FROM walshift.keys AS w WHERE w.name = 'o''k' AND \
                     w.mirror = 2 AND w.key = ARRAY[t.\"Owner Region\"::text, t.\"Owner ID\"::text])";
    assert_eq!(rows.sql.matches(on_source).count(), 1, "{}", rows.sql);
    // The `existing` copy and the DELETE.
    assert_eq!(rows.sql.matches(on_target).count(), 2, "{}", rows.sql);
    assert_eq!(
        rows_apply_excluding(&items(), Scope::Keys, None),
        rows_apply(&items(), Scope::Keys)
    );
}

/// The way back of a split owns only the old table's rows its forward
/// select yields: the DELETE and the ON CONFLICT update skip the others.
#[test]
fn owned_if_restricts_deletes_and_updates_to_owned_rows() {
    let mut back = items();
    back.owned_if = Some("SELECT 1 WHERE src.kind = 'product'".into());
    let s = rows_apply(&back, Scope::Keys);
    let owned = "EXISTS (SELECT FROM (SELECT t.*) AS src CROSS JOIN LATERAL (\n\
                 SELECT 1 WHERE src.kind = 'product'\n) AS f)";
    assert!(
        s.sql.contains(&format!(
            "WHERE t.\"order_id\" = ANY($1::text[]::bigint[])\n    AND {owned}\n    AND NOT EXISTS"
        )),
        "{}",
        s.sql
    );
    assert!(
        s.sql.contains(&format!(
            "WHERE (t.\"sku\", t.\"qty\") IS DISTINCT FROM (EXCLUDED.\"sku\", EXCLUDED.\"qty\")\n    AND {owned}"
        )),
        "{}",
        s.sql
    );
    let v = rows_verify(&back, Scope::Keys, VerifyOutput::Count);
    assert!(v.sql.contains(&format!("AND {owned}")), "{}", v.sql);
}

#[test]
fn reverse_rows_select_names_the_target_row_tgt() {
    assert_eq!(
        reverse_rows_select("SELECT tgt.id, 'p' AS kind -- note"),
        "SELECT r.* FROM (SELECT src.*) AS tgt CROSS JOIN LATERAL (\n\
         SELECT tgt.id, 'p' AS kind -- note\n) AS r"
    );
}

/// A two-way key differs only when neither shape follows from the other.
#[test]
fn two_way_verify_needs_both_directions_to_differ() {
    let reverse = SetPlan {
        source: QualifiedName::new("public", "users"),
        key: vec![k("id", "bigint")],
        set: vec![("is_active".into(), "status = 'active'".into())],
    };
    let s = set_verify_two_way(&users(), &reverse, Scope::Keys, VerifyOutput::Count);
    assert_sql(
        &s,
        r#"SELECT count(*)
FROM "public"."users" AS src
WHERE src."id" = ANY($1::text[]::bigint[])
  AND src."status" IS DISTINCT FROM (CASE WHEN is_active THEN 'active' ELSE 'disabled' END)
  AND src."is_active" IS DISTINCT FROM (status = 'active')"#,
        &[Param::KeyArray(0)],
    );
    let items_back = SetPlan {
        source: QualifiedName::new("public", "orders"),
        key: vec![k("id", "bigint")],
        set: vec![("items".into(), "(SELECT '[]'::jsonb)".into())],
    };
    let r = rows_verify_two_way(&items(), &items_back, Scope::Keys, VerifyOutput::Count);
    assert!(
        r.sql.contains(
            "differing AS (\n  SELECT f.*\n  FROM forward AS f\n  WHERE NOT EXISTS (\n    \
             SELECT FROM \"public\".\"orders\" AS src\n    WHERE src.\"id\" = f.k1\n      \
             AND NOT (src.\"items\" IS DISTINCT FROM ((SELECT '[]'::jsonb))))\n)\n\
             SELECT count(*) FROM differing"
        ),
        "{}",
        r.sql
    );
    assert!(
        r.sql.contains("),\nforward AS (\n  SELECT d.k1"),
        "{}",
        r.sql
    );
}

#[test]
fn depends_keys_one_and_two_columns() {
    let posts = QualifiedName::new("public", "posts");
    let s = depends_keys(&posts, &[k("id", "bigint")], &[k("user_id", "bigint")]);
    assert_eq!(
        s.sql,
        "SELECT src.\"id\"::text\nFROM \"public\".\"posts\" AS src\n\
         WHERE src.\"user_id\" = ANY($1::text[]::bigint[])\nLIMIT $2::bigint"
    );
    assert_eq!(s.params, vec![Param::KeyArray(0), Param::Limit]);
    let likes = QualifiedName::new("public", "likes");
    let s = depends_keys(
        &likes,
        &[k("id", "integer")],
        &[k("site", "text"), k("comment_id", "integer")],
    );
    assert_eq!(
        s.sql,
        "SELECT src.\"id\"::text\nFROM \"public\".\"likes\" AS src\n\
         WHERE (src.\"site\", src.\"comment_id\") IN (SELECT * FROM unnest($1::text[]::text[], $2::text[]::integer[]))\n\
         LIMIT $3::bigint"
    );
    assert_eq!(
        s.params,
        vec![Param::KeyArray(0), Param::KeyArray(1), Param::Limit]
    );
}
