use std::time::Duration;

use super::*;

const MINIMAL: &str = r#"
name = "users-status"

[[mirror]]
source = "users"
set = { status = "CASE WHEN is_active THEN 'active' ELSE 'disabled' END" }
"#;

fn parse(text: &str) -> Spec {
    Spec::from_str_named(text, "spec.toml").unwrap_or_else(|e| panic!("{e}"))
}

/// The problems of an invalid spec, rendered as the operator sees them.
fn problems(text: &str) -> Vec<String> {
    match Spec::from_str_named(text, "spec.toml") {
        Ok(spec) => panic!("expected problems, got {spec:?}"),
        Err(err) => err.to_string().lines().map(str::to_string).collect(),
    }
}

fn assert_problem(text: &str, expected: &str) {
    let found = problems(text);
    assert!(
        found.iter().any(|p| p == expected),
        "expected {expected:?} among:\n{}",
        found.join("\n")
    );
}

#[test]
fn design_example_parses() {
    let spec = Spec::from_path(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/specs/users-status.toml"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec.name, "users-status");
    assert_eq!(spec.slot_name(), "walshift_users_status");
    assert_eq!(spec.publication_name(), "walshift_users_status");
    assert_eq!(spec.origin_name(), "walshift_users_status");
    assert_eq!(spec.mirrors.len(), 2);
    let users = &spec.mirrors[0];
    assert_eq!((users.number, users.line), (1, 5));
    assert_eq!(users.source, QualifiedName::new("public", "users"));
    assert_eq!(users.key, None);
    assert_eq!(
        users.mode,
        MirrorMode::Set {
            columns: vec![(
                "status".into(),
                "CASE WHEN is_active THEN 'active' ELSE 'disabled' END".into()
            )]
        }
    );
    let MirrorMode::Rows {
        target,
        owner,
        select,
    } = &spec.mirrors[1].mode
    else {
        panic!("rows mode expected")
    };
    assert_eq!(*target, QualifiedName::new("public", "order_items"));
    assert_eq!(*owner, vec!["order_id".to_string()]);
    assert!(select.starts_with("SELECT src.id AS order_id"));
    assert!(select.ends_with("WITH ORDINALITY AS i(v, n)"));
    assert_eq!(spec.backfill.max_replica_lag, Duration::from_secs(5));
    assert_eq!(spec.gates[0].name, "every line item mirrored");
    assert_eq!(
        spec.cutover.sql.as_deref(),
        Some("ALTER TABLE users RENAME COLUMN is_active TO is_active_retired")
    );
    assert_eq!(spec.cutover.lock_timeout, Duration::from_millis(200));
}

#[test]
fn full_example_parses() {
    let spec = Spec::from_path(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/specs/split-addresses.toml"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let source = QualifiedName::new("Sales", "Customer Addresses");
    assert!(spec.mirrors.iter().all(|m| m.source == source));
    assert_eq!(
        spec.mirrors[0].key,
        Some(vec!["customer_id".into(), "kind".into()])
    );
    let MirrorMode::Set { columns } = &spec.mirrors[0].mode else {
        panic!("set mode expected")
    };
    let names: Vec<&str> = columns.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(names, ["postcode", "street"], "sorted by column");
    let b = &spec.backfill;
    assert_eq!(b.max_replica_lag, Duration::from_secs(2));
    assert_eq!(b.max_replica_lag_bytes, Some(64 << 20));
    assert_eq!(b.max_retained_wal, Some(10 << 30));
    assert_eq!(b.max_apply_lag, Duration::from_secs(1));
    assert_eq!(b.throttle_query.as_ref().map(|q| q.max), Some(40.0));
    assert_eq!(b.max_rows_per_second, Some(20_000));
    assert_eq!(b.chunk_target_time, Duration::from_millis(100));
    assert_eq!((b.min_chunk_rows, b.max_chunk_rows), (50, 5000));
    assert_eq!(spec.cutover.lock_timeout, Duration::from_millis(100));
    assert_eq!(spec.cutover.max_attempts, 30);
}

#[test]
fn defaults() {
    let spec = parse(MINIMAL);
    assert_eq!(spec.backfill, BackfillLimits::default());
    assert_eq!(spec.cutover, Cutover::default());
    assert_eq!(spec.backfill.chunk_target_time, Duration::from_millis(200));
    assert_eq!(spec.cutover.lock_timeout, Duration::from_millis(200));
    assert!(spec.gates.is_empty());
    assert_eq!(spec.file, "spec.toml");
}

#[test]
fn object_names_replace_dashes() {
    assert_eq!(object_name("a-b_c-1"), "walshift_a_b_c_1");
}

#[test]
fn unknown_fields_are_rejected_with_their_line() {
    let text = format!("{MINIMAL}\n[backfill]\nmax_replica_lags = \"5s\"\n");
    let found = problems(&text);
    assert_eq!(found.len(), 1);
    assert!(
        found[0].starts_with("spec.toml:9:1: unknown field `max_replica_lags`, expected one of"),
        "{found:?}"
    );
    let text = MINIMAL.replace("source = \"users\"", "source = \"users\"\ncolumns = []");
    assert!(problems(&text)[0].starts_with("spec.toml:6:1: unknown field `columns`"));
}

#[test]
fn toml_syntax_errors_carry_line_and_column() {
    let found = problems("name = \"x\"\n[[mirror]\n");
    assert_eq!(found.len(), 1);
    assert!(found[0].starts_with("spec.toml:2:"), "{found:?}");
    assert!(!found[0].contains('\n'));
}

#[test]
fn name_rules() {
    for bad in ["", "Users", "users status", "ü", &"a".repeat(41)] {
        let text = MINIMAL.replace("users-status", bad);
        let found = problems(&text);
        assert!(
            found[0].starts_with("spec.toml:2:8: name: ")
                && found[0].contains("must be 1-40 characters of a-z, 0-9, _ and -"),
            "{bad:?}: {found:?}"
        );
    }
    parse(&MINIMAL.replace("users-status", &"a".repeat(40)));
    parse(&MINIMAL.replace("users-status", "v2_users-9"));
    assert_problem(
        &MINIMAL.replace("name = \"users-status\"", ""),
        "spec.toml: name: missing; add e.g. name = \"users-status\" (it names walshift's slot, \
         publication and origin)",
    );
}

#[test]
fn needs_a_mirror() {
    assert_problem(
        "name = \"x\"\n",
        "spec.toml: no [[mirror]]: add at least one, with source and either set = { column = \
         \"expression\" } or target, owner and select",
    );
}

#[test]
fn mirror_needs_exactly_one_mode() {
    assert_problem(
        "name = \"x\"\n[[mirror]]\nsource = \"users\"\n",
        "spec.toml:2:1: mirror #1 (users): nothing to mirror; add set = { column = \"expression\" } \
         (new columns of the source) or target, owner and select (a new table)",
    );
    let both = format!("{MINIMAL}target = \"t\"\nowner = [\"id\"]\nselect = \"SELECT 1\"\n");
    let found = problems(&both);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with(
        "spec.toml:6:7: mirror #1 (users): set and target/owner/select are two different modes"
    ));
}

#[test]
fn rows_mode_needs_all_three_fields() {
    let text = "name = \"x\"\n[[mirror]]\nsource = \"orders\"\ntarget = \"order_items\"\n";
    let found = problems(text);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].starts_with("spec.toml:2:1: mirror #1 (orders): owner is missing; rows mode needs target, owner and select"));
    assert!(found[1].starts_with("spec.toml:2:1: mirror #1 (orders): select is missing;"));
    assert_problem(
        "name = \"x\"\n[[mirror]]\nsource = \"orders\"\ntarget = \"t\"\nowner = []\nselect = \"SELECT 1\"\n",
        "spec.toml:5:9: mirror #1 (orders): owner is empty; list at least one column",
    );
}

#[test]
fn missing_source() {
    assert_problem(
        "name = \"x\"\n[[mirror]]\nset = { a = \"1\" }\n",
        "spec.toml:2:1: mirror #1: source is missing; add e.g. source = \"public.users\"",
    );
}

#[test]
fn owner_length_must_match_key() {
    let text = r#"
name = "x"
[[mirror]]
source = "orders"
key = ["region", "id"]
target = "order_items"
owner = ["order_id"]
select = "SELECT src.id AS order_id"
"#;
    assert_problem(
        text,
        "spec.toml:7:9: mirror #1 (orders): owner has 1 column(s) but key has 2; owner lists the \
         target columns holding the source key, one per key column, in key order",
    );
    parse(&text.replace(r#"["order_id"]"#, r#"["order_region", "order_id"]"#));
}

#[test]
fn table_names_parse_as_identifiers() {
    let spec = parse(&MINIMAL.replace(
        "source = \"users\"",
        r#"source = '"My Schema"."Order ""Items"""'"#,
    ));
    assert_eq!(
        spec.mirrors[0].source,
        QualifiedName::new("My Schema", r#"Order "Items""#)
    );
    let spec = parse(&MINIMAL.replace("\"users\"", "\"App.Users\""));
    assert_eq!(spec.mirrors[0].source, QualifiedName::new("app", "users"));
    let found = problems(&MINIMAL.replace("\"users\"", "\"my table\""));
    assert!(
        found[0].starts_with(
            "spec.toml:5:10: mirror #1 (my table): source \"my table\": unexpected 't'"
        ) && found[0]
            .ends_with("write a table as users, public.users or \"My Schema\".\"Order Items\""),
        "{found:?}"
    );
    assert!(
        problems(&MINIMAL.replace("\"users\"", "\"a.b.c\""))[0].contains("3 dot-separated parts")
    );
}

#[test]
fn column_names_fold_like_sql() {
    let spec = parse(
        &MINIMAL
            .replace("status =", r#"'"Status"' ="#)
            .replace("source = \"users\"", "source = \"users\"\nkey = [\"ID\"]"),
    );
    assert_eq!(spec.mirrors[0].key, Some(vec!["id".to_string()]));
    let MirrorMode::Set { columns } = &spec.mirrors[0].mode else {
        panic!()
    };
    assert_eq!(columns[0].0, "Status");
    assert_problem(
        &MINIMAL.replace("status =", "\"status x\" ="),
        "spec.toml:6:9: mirror #1 (users): set.status x: \"status x\" is not a column name: \
         unexpected 'x' in an unquoted name (unquoted names are letters, digits, _ and $); \
         double-quote the name to use it; write status, or '\"Status\"' for a mixed-case name",
    );
}

#[test]
fn duplicate_columns_are_rejected() {
    assert_problem(
        &MINIMAL.replace(
            "source = \"users\"",
            "source = \"users\"\nkey = [\"a\", \"A\"]",
        ),
        "spec.toml:6:13: mirror #1 (users): key lists column \"a\" twice",
    );
    let found = problems(&MINIMAL.replace("status = ", "Status = \"1\", status = "));
    assert!(
        found[0].contains("set.status and set.Status name the same column; keep one"),
        "{found:?}"
    );
}

#[test]
fn set_may_not_write_the_key() {
    assert_problem(
        &MINIMAL.replace(
            "source = \"users\"",
            "source = \"users\"\nkey = [\"status\"]",
        ),
        "spec.toml:7:9: mirror #1 (users): set.status writes a key column; the key identifies the \
         row being recomputed, so it cannot be computed itself",
    );
}

#[test]
fn two_set_mirrors_may_not_write_one_column() {
    let text = format!(
        "{MINIMAL}\n[[mirror]]\nsource = \"public.users\"\nset = {{ status = \"'x'\", other = \"1\" }}\n"
    );
    assert_problem(
        &text,
        "spec.toml:8:1: mirror #2: set.status of \"public\".\"users\" is also written by mirror \
         #1; each column must be computed by one mirror",
    );
    // Another table's column of the same name is fine.
    parse(&text.replace("public.users", "public.accounts"));
}

#[test]
fn rows_mirrors_sharing_target_and_owner_are_rejected() {
    let one = |source: &str, owner: &str| {
        format!(
            "[[mirror]]\nsource = \"{source}\"\ntarget = \"events\"\nowner = [{owner}]\nselect = \"SELECT 1\"\n"
        )
    };
    let text = format!(
        "name = \"x\"\n{}{}",
        one("orders", "\"src_id\""),
        one("refunds", "\"src_id\"")
    );
    assert_problem(
        &text,
        "spec.toml:7:1: mirror #2: writes \"public\".\"events\" with the same owner columns as \
         mirror #1; each would delete the other's rows, so give each mirror its own owner columns",
    );
    parse(&format!(
        "name = \"x\"\n{}{}",
        one("orders", "\"order_id\""),
        one("refunds", "\"refund_id\"")
    ));
    let itself = "name = \"x\"\n[[mirror]]\nsource = \"t\"\ntarget = \"public.t\"\nowner = [\"id\"]\nselect = \"SELECT 1\"\n";
    assert!(problems(itself)[0].contains("target is the source itself"));
}

#[test]
fn embedded_sql_must_be_a_fragment() {
    assert_problem(
        &MINIMAL.replace("END\" }", "END;\" }"),
        "spec.toml:6:18: mirror #1 (users): set.status ends with ';'; remove it (walshift embeds \
         it in its own statement)",
    );
    assert_problem(
        &MINIMAL.replace(
            "\"CASE WHEN is_active THEN 'active' ELSE 'disabled' END\"",
            "\" \"",
        ),
        "spec.toml:6:18: mirror #1 (users): set.status is empty",
    );
}

#[test]
fn sql_text_with_a_nul_character() {
    // Neither an embedded fragment nor a script can reach PostgreSQL with a
    // NUL in it (the protocol's strings end at NUL): refused at parse time.
    assert_problem(
        &MINIMAL.replace("ELSE 'disabled'", "ELSE 'dis\\u0000abled'"),
        "spec.toml:6:18: mirror #1 (users): set.status contains a NUL character",
    );
    let cutover = |sql: &str| format!("{MINIMAL}\n[cutover]\nsql = \"{sql}\"\n");
    assert_problem(
        &cutover("SELECT 1;\\u0000"),
        "spec.toml:9:7: cutover: sql contains a NUL character",
    );
}

#[test]
fn cutover_sql_is_a_script() {
    // Run as written: several statements and a trailing ';' are fine, but a
    // script of nothing but semicolons is empty.
    let cutover = |sql: &str| format!("{MINIMAL}\n[cutover]\nsql = \"{sql}\"\n");
    let spec = parse(&cutover(
        "ALTER TABLE users DROP COLUMN is_active; SELECT 1;",
    ));
    assert_eq!(
        spec.cutover.sql.as_deref(),
        Some("ALTER TABLE users DROP COLUMN is_active; SELECT 1;")
    );
    assert_problem(&cutover(" ; ;"), "spec.toml:9:7: cutover: sql is empty");
}

#[test]
fn durations_and_sizes() {
    let with = |body: &str| format!("{MINIMAL}\n[backfill]\n{body}\n");
    assert_problem(
        &with("max_replica_lag = 5"),
        "spec.toml:9:19: backfill.max_replica_lag: 5 has no unit; write it as a string with a \
         unit, e.g. \"5s\" or \"5ms\"",
    );
    assert_problem(
        &with("max_apply_lag = \"5 sec\""),
        "spec.toml:9:17: backfill.max_apply_lag: \"5 sec\": unknown unit \"sec\"; write a whole \
         number and a unit, e.g. \"250ms\", \"5s\", \"2m\", \"1h\"",
    );
    assert_problem(
        &with("max_replica_lag_bytes = \"64\""),
        "spec.toml:9:25: backfill.max_replica_lag_bytes: \"64\": the unit is missing; write a \
         whole number and a unit, e.g. \"512kB\", \"64MB\", \"2GB\" (1MB = 1024kB)",
    );
    let spec = parse(&with(
        "max_retained_wal = 1024\nmax_replica_lag = \"250ms\"",
    ));
    assert_eq!(spec.backfill.max_retained_wal, Some(1024));
    assert_eq!(spec.backfill.max_replica_lag, Duration::from_millis(250));
    assert!(problems(&with("chunk_target_time = \"0ms\""))[0].contains("must be above zero"));
}

#[test]
fn chunk_rows_and_rates() {
    let with = |body: &str| format!("{MINIMAL}\n[backfill]\n{body}\n");
    assert_problem(
        &with("min_chunk_rows = 500\nmax_chunk_rows = 100"),
        "spec.toml:10:18: backfill.max_chunk_rows: 100 is below min_chunk_rows (500); raise it or \
         lower min_chunk_rows",
    );
    assert_problem(
        &with("max_rows_per_second = 0"),
        "spec.toml:9:23: backfill.max_rows_per_second: must be at least 1, found 0",
    );
    assert_problem(
        &with("min_chunk_rows = -1"),
        "spec.toml:9:18: backfill.min_chunk_rows: must be at least 1, found -1",
    );
}

#[test]
fn throttle_query_needs_its_max() {
    let with = |body: &str| format!("{MINIMAL}\n[backfill]\n{body}\n");
    assert!(
        problems(&with("throttle_query = \"SELECT 1\""))[0]
            .starts_with("spec.toml:9:18: backfill.throttle_query: throttle_query_max is missing")
    );
    assert!(
        problems(&with("throttle_query_max = 3"))[0]
            .starts_with("spec.toml:9:22: backfill.throttle_query_max: throttle_query is missing")
    );
    let spec = parse(&with(
        "throttle_query = \"SELECT 1\"\nthrottle_query_max = 2.5",
    ));
    assert_eq!(
        spec.backfill.throttle_query,
        Some(ThrottleQuery {
            sql: "SELECT 1".into(),
            max: 2.5
        })
    );
}

#[test]
fn gates_need_unique_names_and_sql() {
    let text = format!(
        "{MINIMAL}\n[[gate]]\nname = \"g\"\nsql = \"SELECT true\"\n[[gate]]\nname = \"g\"\n"
    );
    let found = problems(&text);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].starts_with("spec.toml:12:8: gate #2: name \"g\" is used twice"));
    assert_eq!(
        found[1],
        "spec.toml:11:1: gate #2: sql is missing; add a query returning one boolean"
    );
}

#[test]
fn cutover_settings() {
    let with = |body: &str| format!("{MINIMAL}\n[cutover]\n{body}\n");
    assert!(problems(&with("lock_timeout = \"0s\""))[0].starts_with(
        "spec.toml:9:16: cutover.lock_timeout: must be above zero (0 would let writes queue"
    ));
    assert_problem(
        &with("max_attempts = 0"),
        "spec.toml:9:16: cutover.max_attempts: must be at least 1, found 0",
    );
    let spec = parse(&with("lock_timeout = \"1s\""));
    assert_eq!(spec.cutover.sql, None);
    assert_eq!(spec.cutover.lock_timeout, Duration::from_secs(1));
}

#[test]
fn safety_settings() {
    let with = |body: &str| format!("{MINIMAL}\n[safety]\n{body}\n");
    let spec = parse(&with(
        "max_retained_wal = \"20GB\"\non_max_retained_wal = \"drop-slot\"",
    ));
    assert_eq!(spec.safety.max_retained_wal, Some(20 << 30));
    assert_eq!(
        spec.safety.on_max_retained_wal,
        crate::spec::OnMaxRetainedWal::DropSlot
    );
    assert_eq!(parse(MINIMAL).safety, crate::spec::Safety::default());
    assert_problem(
        &with("on_max_retained_wal = \"panic\""),
        "spec.toml:9:23: safety.on_max_retained_wal: \"panic\" is not an action; use \"warn\" or \"drop-slot\"",
    );
    assert_eq!(
        parse(MINIMAL).safety.on_slot_lost,
        crate::spec::OnSlotLost::Resync
    );
    assert_eq!(
        parse(&with("on_slot_lost = \"stop\"")).safety.on_slot_lost,
        crate::spec::OnSlotLost::Stop
    );
    assert_problem(
        &with("on_slot_lost = \"ignore\""),
        "spec.toml:9:16: safety.on_slot_lost: \"ignore\" is not an action; use \"resync\" or \"stop\"",
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = r#"
name = "Bad Name"
[[mirror]]
source = "a..b"
set = { x = "" }
[backfill]
max_replica_lag = "soon"
"#;
    let found = problems(text);
    assert_eq!(found.len(), 4, "{found:?}");
    assert!(found.iter().all(|p| p.starts_with("spec.toml:")));
}

#[test]
fn columns_are_counted_in_characters() {
    // "ü" is two bytes: the column must still be the 11th character.
    let text = MINIMAL
        .replace("set = {", "set = { \"ü\" = \"1\",")
        .replace("status =", "\"st x\" =");
    let found = problems(&text);
    assert!(found[0].starts_with("spec.toml:6:20:"), "{found:?}");
}

#[test]
fn unreadable_file_names_it() {
    let err = Spec::from_path("/nonexistent/spec.toml").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/nonexistent/spec.toml: cannot read the spec:")
    );
}

const TWO_WAY: &str = r#"
name = "users-status"

[[mirror]]
source = "users"
set = { status = "CASE WHEN is_active THEN 'active' ELSE 'disabled' END" }
reverse = { is_active = "status = 'active'" }
"#;

#[test]
fn reverse_makes_a_mirror_two_way() {
    let spec = parse(TWO_WAY);
    let m = &spec.mirrors[0];
    assert!(m.is_two_way());
    assert_eq!(
        m.reverse,
        Some(Reverse::Columns(vec![(
            "is_active".into(),
            "status = 'active'".into()
        )]))
    );
    assert!(!parse(MINIMAL).mirrors[0].is_two_way());
}

#[test]
fn reverse_select_is_the_way_back_of_a_split() {
    let spec = parse(
        r#"
name = "comments-split"
[[mirror]]
source = "comments"
target = "product_comment"
owner = ["id"]
select = "SELECT src.id, src.body WHERE src.kind = 'product'"
reverse_select = "SELECT tgt.id, tgt.body, 'product' AS kind"
"#,
    );
    assert_eq!(
        spec.mirrors[0].reverse,
        Some(Reverse::Rows {
            select: "SELECT tgt.id, tgt.body, 'product' AS kind".into()
        })
    );
}

#[test]
fn reverse_problems_name_the_field_and_the_fix() {
    assert_problem(
        &TWO_WAY.replace("is_active = \"status", "status = \"status"),
        "spec.toml:7:13: mirror #1 (users): reverse.status is also in set; a column belongs to \
         one shape: set computes the new columns, reverse the old ones",
    );
    assert_problem(
        &TWO_WAY.replace(
            "reverse = { is_active = \"status = 'active'\" }",
            "reverse = {}",
        ),
        "spec.toml:7:11: mirror #1 (users): reverse is empty; add old_column = \"expression\" \
         pairs, or remove it for a one-way mirror",
    );
    assert_problem(
        &TWO_WAY.replace("reverse = {", "reverse_select = \"SELECT 1\"\nreverse = {"),
        "spec.toml:7:18: mirror #1 (users): reverse and reverse_select are two ways back; keep \
         reverse for columns of the source computed from the new shape, or reverse_select for \
         source rows computed from target rows (a table split)",
    );
    assert_problem(
        &TWO_WAY.replace(
            "reverse = { is_active = \"status = 'active'\" }",
            "reverse_select = \"SELECT 1\"",
        ),
        "spec.toml:7:18: mirror #1 (users): reverse_select is for rows mode (a new table); in set \
         mode write reverse = { old_column = \"expression of the new columns\" }",
    );
    assert_problem(
        &TWO_WAY
            .replace("source = \"users\"", "source = \"users\"\nkey = [\"id\"]")
            .replace("is_active = \"status", "id = \"status"),
        "spec.toml:8:13: mirror #1 (users): reverse.id writes a key column; the key identifies \
         the row in both shapes, so neither direction may compute it",
    );
    assert_problem(
        &TWO_WAY.replace(
            "is_active = \"status = 'active'\"",
            "is_active = \"status = 'active';\"",
        ),
        "spec.toml:7:25: mirror #1 (users): reverse.is_active ends with ';'; remove it (walshift \
         embeds it in its own statement)",
    );
}

#[test]
fn an_old_column_is_written_back_by_one_mirror_only() {
    let text = format!(
        "{TWO_WAY}\n[[mirror]]\nsource = \"users\"\nset = {{ is_active = \"status = 'x'\" }}\n"
    );
    assert_problem(
        &text,
        "spec.toml:9:1: mirror #2: set.is_active of \"public\".\"users\" is also written by mirror #1; \
         each column must be computed by one mirror",
    );
}
