//! Pure text for the files a cluster is configured by: `walshift.conf` (included from the
//! template's `postgresql.conf`), `pg_hba.conf`, libpq conninfo strings and database names.
//! Nothing here touches the disk, so all of it is unit-tested.

use std::path::Path;

/// The settings every throwaway cluster starts with, before the builder's own.
///
/// `synchronous_commit` is deliberately absent: tests of the visibility barrier (docs/design.md I2)
/// and of confirm-after-commit rely on real commit semantics.
pub(crate) fn default_settings(
    port: u16,
    socket_dir: &Path,
    listen_tcp: bool,
    cluster_name: &str,
) -> Vec<(String, String)> {
    let listen = if listen_tcp { "127.0.0.1" } else { "" };
    [
        ("listen_addresses", listen.to_owned()),
        ("port", port.to_string()),
        ("unix_socket_directories", socket_dir.display().to_string()),
        ("cluster_name", cluster_name.to_owned()),
        ("wal_level", "logical".to_owned()),
        // A throwaway cluster never needs to survive an OS crash; skipping fsync and full-page
        // images makes commits and checkpoints cheap without changing what tests observe.
        ("fsync", "off".to_owned()),
        ("full_page_writes", "off".to_owned()),
        ("max_replication_slots", "40".to_owned()),
        ("max_wal_senders", "40".to_owned()),
        ("max_connections", "200".to_owned()),
        // Timestamps and pids in the log make a failed test's log readable next to its output.
        ("log_line_prefix", "%m [%p] %q%u@%d ".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// `defaults` with every key of `extra` replaced in place (Postgres keys are case-insensitive),
/// and the keys `extra` adds appended in its order. One line per key keeps the file honest about
/// what is in force.
pub(crate) fn merge_settings(
    defaults: Vec<(String, String)>,
    extra: &[(String, String)],
) -> Vec<(String, String)> {
    let mut out = defaults;
    for (key, value) in extra {
        match out.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(key)) {
            Some(slot) => slot.1 = value.clone(),
            None => out.push((key.clone(), value.clone())),
        }
    }
    out
}

/// `key = 'value'` lines. Every value is quoted: postgresql.conf accepts quoted integers,
/// booleans and enums, and quoting means a path or an empty string can never break the file.
pub(crate) fn render_conf(settings: &[(String, String)]) -> String {
    let mut out = String::from("# Written by walshift::cluster at every start; edits are lost.\n");
    for (key, value) in settings {
        out.push_str(key);
        out.push_str(" = ");
        out.push_str(&quote_conf_value(value));
        out.push('\n');
    }
    out
}

/// A postgresql.conf string literal: single quotes, an embedded quote doubled.
pub(crate) fn quote_conf_value(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// pg_hba.conf: the builder's lines first (the first matching line wins, so they override the
/// defaults), then local and loopback access for everyone with `auth`, including replication.
pub(crate) fn render_hba(extra_lines: &[String], auth: &str) -> String {
    let mut out = String::from(
        "# Written by walshift::cluster; the builder's lines come first so they win.\n",
    );
    for line in extra_lines {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    for (kind, db, addr) in [
        ("local", "all", ""),
        ("local", "replication", ""),
        ("host", "all", "127.0.0.1/32"),
        ("host", "replication", "127.0.0.1/32"),
        ("host", "all", "::1/128"),
        ("host", "replication", "::1/128"),
    ] {
        let addr = if addr.is_empty() {
            String::new()
        } else {
            format!(" {addr}")
        };
        out.push_str(&format!("{kind} {db} all{addr} {auth}\n"));
    }
    out
}

/// A value in a libpq `key=value` conninfo string: bare when it is plain, otherwise single
/// quoted with `\` escaping `'` and `\` (libpq's rule; tokio-postgres parses the same way).
pub(crate) fn quote_conninfo_value(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| !c.is_whitespace() && c != '\'' && c != '\\' && c != '=');
    if plain {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// A database name for the `n`th fresh database of this process, readable in logs: the test's
/// name (libtest names each test's thread after it) made identifier-safe, then `n`.
/// Always shorter than NAMEDATALEN (64) so Postgres never truncates two names to one.
pub(crate) fn database_name(thread_name: Option<&str>, n: u32) -> String {
    let suffix = format!("_{n}");
    let mut stem: String = thread_name
        .unwrap_or("db")
        .rsplit("::")
        .next()
        .unwrap_or("db")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if stem.is_empty() || stem == "main" {
        stem = "db".to_owned();
    }
    // "t_" keeps the name a plain identifier even when the test name starts with a digit.
    let budget = 63 - suffix.len() - 2;
    stem.truncate(budget);
    format!("t_{stem}{suffix}")
}

/// A SQL identifier in double quotes, an embedded quote doubled.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A SQL string literal, an embedded quote doubled (standard_conforming_strings is on).
pub(crate) fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> (String, String) {
        (k.to_owned(), v.to_owned())
    }

    #[test]
    fn defaults_are_logical_and_unsynced_but_keep_synchronous_commit() {
        let s = default_settings(5433, Path::new("/tmp/x/sock"), false, "c1");
        let get = |k: &str| s.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!(get("wal_level"), Some("logical"));
        assert_eq!(get("fsync"), Some("off"));
        assert_eq!(get("full_page_writes"), Some("off"));
        assert_eq!(get("listen_addresses"), Some(""));
        assert_eq!(get("port"), Some("5433"));
        assert_eq!(get("unix_socket_directories"), Some("/tmp/x/sock"));
        assert_eq!(get("synchronous_commit"), None);
        let tcp = default_settings(5433, Path::new("/s"), true, "c1");
        assert!(tcp.contains(&kv("listen_addresses", "127.0.0.1")));
    }

    #[test]
    fn extra_settings_replace_defaults_case_insensitively_and_append_new_keys() {
        let merged = merge_settings(
            vec![kv("fsync", "off"), kv("port", "1")],
            &[kv("FSYNC", "on"), kv("work_mem", "7MB")],
        );
        assert_eq!(
            merged,
            vec![kv("fsync", "on"), kv("port", "1"), kv("work_mem", "7MB")]
        );
    }

    #[test]
    fn conf_values_are_quoted_and_quotes_doubled() {
        assert_eq!(quote_conf_value(""), "''");
        assert_eq!(quote_conf_value("it's"), "'it''s'");
        let text = render_conf(&[kv("listen_addresses", ""), kv("search_path", "a, 'b'")]);
        assert!(text.contains("\nlisten_addresses = ''\n"));
        assert!(text.contains("\nsearch_path = 'a, ''b'''\n"));
    }

    #[test]
    fn hba_puts_builder_lines_before_defaults() {
        let text = render_hba(&["local all bob reject".to_owned()], "trust");
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines[0], "local all bob reject");
        assert_eq!(lines[1], "local all all trust");
        assert!(lines.contains(&"host replication all 127.0.0.1/32 trust"));
        assert_eq!(lines.len(), 7);
    }

    #[test]
    fn conninfo_values_are_quoted_only_when_needed() {
        assert_eq!(
            quote_conninfo_value("/tmp/walshift-pg-0/c1/sock"),
            "/tmp/walshift-pg-0/c1/sock"
        );
        assert_eq!(quote_conninfo_value(""), "''");
        assert_eq!(quote_conninfo_value("a b"), "'a b'");
        assert_eq!(quote_conninfo_value(r"it's\x"), r"'it\'s\\x'");
        assert_eq!(quote_conninfo_value("a=b"), "'a=b'");
    }

    #[test]
    fn conninfo_quoting_round_trips_through_tokio_postgres() {
        for pw in ["plain", "with space", r"q'uo\te", "="] {
            let conninfo = format!("user=u password={}", quote_conninfo_value(pw));
            let config: tokio_postgres::Config = conninfo.parse().expect("parses");
            assert_eq!(config.get_password(), Some(pw.as_bytes()));
        }
    }

    #[test]
    fn database_names_follow_the_test_name_and_fit_namedatalen() {
        assert_eq!(
            database_name(Some("fresh_databases_are_distinct"), 3),
            "t_fresh_databases_are_distinct_3"
        );
        assert_eq!(
            database_name(Some("mirror::rows::Deletes-Work"), 0),
            "t_deletes_work_0"
        );
        assert_eq!(database_name(None, 1), "t_db_1");
        assert_eq!(database_name(Some("main"), 1), "t_db_1");
        let long = database_name(Some(&"x".repeat(200)), 123_456);
        assert!(long.len() <= 63, "{long}");
        assert!(long.ends_with("_123456"));
    }

    #[test]
    fn sql_quoting_doubles_quotes() {
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
