//! The staging set-up in docker/ (docs/docker.md, "Running with
//! docker-compose (staging)"): no Docker engine runs here, so these tests check what breaks
//! silently in a compose file — names, ports, paths and files that must agree
//! across docker-compose.yml, prometheus.yml, the Dockerfile, the spec and the
//! init scripts — and run the init SQL and `walshift check` of the mounted
//! spec against a real PostgreSQL as the role the scripts create.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_norway::Value;
use tokio_postgres::config::Host;
use walshift::conninfo::ConnConfig;
use walshift::spec::Spec;
use walshift_cluster::Cluster;

const BIN: &str = env!("CARGO_BIN_EXE_walshift");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn docker_dir() -> PathBuf {
    repo().join("docker")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn yaml(path: &Path) -> Value {
    serde_norway::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

fn compose() -> Value {
    yaml(&docker_dir().join("docker-compose.yml"))
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose["services"]
        .get(name)
        .unwrap_or_else(|| panic!("docker-compose.yml has no service {name:?}"))
}

/// A string or list of strings (compose accepts both for command, entrypoint,
/// healthcheck test), as words.
fn words(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        Value::Sequence(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => panic!("expected a string, got {other:?}"),
            })
            .collect(),
        Value::Null => Vec::new(),
        other => panic!("expected a string or a list, got {other:?}"),
    }
}

/// `environment:` as (name, value) pairs, in either compose form.
fn environment(service: &Value) -> Vec<(String, String)> {
    match &service["environment"] {
        Value::Mapping(m) => m
            .iter()
            .map(|(k, v)| {
                let k = k.as_str().expect("environment name").to_owned();
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    Value::Null => String::new(),
                    other => panic!("environment {k}: unexpected {other:?}"),
                };
                (k, v)
            })
            .collect(),
        Value::Sequence(items) => items
            .iter()
            .map(|i| {
                let s = i.as_str().expect("environment entry");
                let (k, v) = s.split_once('=').unwrap_or((s, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        Value::Null => Vec::new(),
        other => panic!("unexpected environment {other:?}"),
    }
}

fn env_var(service: &Value, name: &str) -> Option<String> {
    environment(service)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Short-form volume mounts (`source:target[:mode]`) as (source, target).
fn mounts(service: &Value) -> Vec<(String, String)> {
    match &service["volumes"] {
        Value::Sequence(items) => items
            .iter()
            .map(|i| {
                let s = i.as_str().expect("short-form volume");
                let mut parts = s.split(':');
                let source = parts.next().unwrap_or_default().to_owned();
                let target = parts.next().unwrap_or_default().to_owned();
                (source, target)
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The file in docker/ bind-mounted at `target`; it must exist in the repo.
fn bind_source(service: &Value, name: &str, target: &str) -> PathBuf {
    let (source, _) = mounts(service)
        .into_iter()
        .find(|(_, t)| t == target)
        .unwrap_or_else(|| panic!("service {name} mounts nothing at {target}"));
    assert!(
        source.starts_with("./") || source.starts_with("../"),
        "service {name}: {target} should be a file of the repository, mounted by a relative path, not {source:?}"
    );
    let path = docker_dir().join(&source);
    assert!(
        path.exists(),
        "service {name} mounts {source} at {target}, but {} does not exist",
        path.display()
    );
    path
}

/// The value after `flag` in a command (`--listen ADDR` or `--listen=ADDR`).
fn flag_value(command: &[String], flag: &str) -> Option<String> {
    let prefix = format!("{flag}=");
    command.iter().enumerate().find_map(|(i, w)| {
        if w == flag {
            command.get(i + 1).cloned()
        } else {
            w.strip_prefix(&prefix).map(str::to_owned)
        }
    })
}

/// `walshift run SPEC --listen ADDR`: the listen address.
fn walshift_listen(compose: &Value) -> SocketAddr {
    let command = words(&service(compose, "walshift")["command"]);
    let listen = flag_value(&command, "--listen")
        .unwrap_or_else(|| panic!("walshift's command has no --listen: {command:?}"));
    listen
        .parse()
        .unwrap_or_else(|e| panic!("--listen {listen:?} is not host:port: {e}"))
}

/// http://host:port/path -> (host, port, path).
fn split_url(url: &str) -> (String, u16, String) {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("{url} is not an http:// URL"));
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = authority
        .rsplit_once(':')
        .map(|(h, p)| (h, p.parse().expect("port")))
        .unwrap_or((authority, 80));
    (host.to_owned(), port, path.to_owned())
}

/// Every `${NAME...}` interpolated anywhere in the compose file.
fn interpolated(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        rest = &rest[i + 2..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        names.insert(name);
    }
    names
}

/// Dockerfile instructions as (INSTRUCTION, arguments), continuation lines
/// joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let text = read(&docker_dir().join("Dockerfile"));
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (instr, args) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((instr.to_uppercase(), args.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

/// The instructions of the last stage (the image that is shipped).
fn runtime_stage() -> Vec<(String, String)> {
    let all = dockerfile();
    let start = all
        .iter()
        .rposition(|(i, _)| i == "FROM")
        .expect("the Dockerfile has a FROM");
    all[start..].to_vec()
}

#[test]
fn every_depends_on_names_a_service() {
    let compose = compose();
    let services = compose["services"]
        .as_mapping()
        .expect("docker-compose.yml has services");
    let names: BTreeSet<&str> = services.keys().filter_map(Value::as_str).collect();
    for expected in ["primary", "standby", "walshift", "prometheus"] {
        assert!(names.contains(expected), "no service {expected}: {names:?}");
    }
    for (name, svc) in services {
        let deps: Vec<String> = match &svc["depends_on"] {
            Value::Sequence(items) => items
                .iter()
                .map(|i| i.as_str().expect("service name").to_owned())
                .collect(),
            Value::Mapping(m) => m
                .keys()
                .map(|k| k.as_str().expect("service name").to_owned())
                .collect(),
            Value::Null => Vec::new(),
            other => panic!("{name:?}: unexpected depends_on {other:?}"),
        };
        for dep in deps {
            assert!(
                names.contains(dep.as_str()),
                "service {name:?} depends on {dep:?}, which is not a service ({names:?})"
            );
        }
    }
}

#[test]
fn walshift_listens_where_its_healthcheck_prometheus_and_dockerfile_look() {
    let compose = compose();
    let walshift = service(&compose, "walshift");
    let listen = walshift_listen(&compose);
    assert!(
        listen.ip().is_unspecified(),
        "walshift must listen on all interfaces ({listen}) for Prometheus to reach it"
    );
    let port = listen.port();

    // Healthcheck: GET /readyz on that port, inside the container.
    let test = words(&walshift["healthcheck"]["test"]);
    let url = test
        .iter()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("walshift's healthcheck has no URL: {test:?}"));
    let (host, hc_port, path) = split_url(url);
    assert!(
        ["127.0.0.1", "localhost"].contains(&host.as_str()),
        "the healthcheck runs inside the container: {url}"
    );
    assert_eq!(hc_port, port, "healthcheck {url} vs --listen {listen}");
    assert_eq!(path, "/readyz", "healthcheck {url}");
    // The healthcheck's program is in the image.
    assert_eq!(test.first().map(String::as_str), Some("CMD"), "{test:?}");
    let program = &test[1];
    let runtime = runtime_stage();
    assert!(
        runtime.iter().any(|(i, args)| i == "RUN"
            && args.contains("apt-get install")
            && args.contains(program.as_str())),
        "the healthcheck runs {program}, which the runtime stage does not install"
    );

    // Published port.
    let published: Vec<String> = match &walshift["ports"] {
        Value::Sequence(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => panic!("unexpected port {other:?}"),
            })
            .collect(),
        _ => Vec::new(),
    };
    assert!(
        published
            .iter()
            .any(|p| p.rsplit(':').next() == Some(port.to_string().as_str())),
        "walshift's ports {published:?} do not publish container port {port}"
    );

    // The Dockerfile exposes the same port.
    let exposed: Vec<u16> = runtime
        .iter()
        .filter(|(i, _)| i == "EXPOSE")
        .flat_map(|(_, args)| {
            args.split_whitespace()
                .map(|p| {
                    p.trim_end_matches("/tcp")
                        .parse::<u16>()
                        .expect("EXPOSE port")
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        exposed,
        vec![port],
        "Dockerfile EXPOSE vs --listen {listen}"
    );
    // The image's own default address, if it sets one, is that port too.
    for (_, args) in runtime.iter().filter(|(i, _)| i == "ENV") {
        if let Some(addr) = args.strip_prefix("WALSHIFT_LISTEN=") {
            let addr: SocketAddr = addr.parse().expect("WALSHIFT_LISTEN is host:port");
            assert_eq!(addr, listen, "Dockerfile WALSHIFT_LISTEN vs --listen");
        }
    }

    // Prometheus scrapes walshift by its service name, on that port, at /metrics.
    let prometheus = service(&compose, "prometheus");
    let config = bind_source(prometheus, "prometheus", "/etc/prometheus/prometheus.yml");
    let command = words(&prometheus["command"]);
    if let Some(file) = flag_value(&command, "--config.file") {
        assert_eq!(file, "/etc/prometheus/prometheus.yml");
    }
    let prom = yaml(&config);
    let jobs = prom["scrape_configs"]
        .as_sequence()
        .expect("prometheus.yml has scrape_configs");
    let job = jobs
        .iter()
        .find(|j| j["job_name"] == "walshift")
        .expect("a scrape job named walshift");
    let metrics_path = job["metrics_path"].as_str().unwrap_or("/metrics");
    assert_eq!(metrics_path, "/metrics");
    let targets: Vec<String> = job["static_configs"]
        .as_sequence()
        .expect("static_configs")
        .iter()
        .flat_map(|c| words(&c["targets"]))
        .collect();
    assert_eq!(
        targets,
        vec![format!("walshift:{port}")],
        "prometheus must scrape the walshift service on the port it listens on"
    );
}

#[test]
fn the_mounted_spec_exists_and_parses() {
    let compose = compose();
    let walshift = service(&compose, "walshift");
    let command = words(&walshift["command"]);
    assert_eq!(
        command.first().map(String::as_str),
        Some("run"),
        "{command:?}"
    );
    let spec_path = command
        .get(1)
        .filter(|p| p.starts_with('/'))
        .unwrap_or_else(|| {
            panic!("walshift run needs the spec's absolute path in the container: {command:?}")
        });
    let file = bind_source(walshift, "walshift", spec_path);
    let spec = Spec::from_path(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert_eq!(spec.name, "staging-demo");
    assert!(!spec.mirrors.is_empty());
}

#[test]
fn the_primary_decodes_wal_and_the_standby_is_built_from_it() {
    let compose = compose();
    let primary = service(&compose, "primary");
    let command = words(&primary["command"]);
    let settings: Vec<&str> = command
        .windows(2)
        .filter(|w| w[0] == "-c")
        .map(|w| w[1].as_str())
        .collect();
    assert!(
        settings.contains(&"wal_level=logical"),
        "the primary must run with wal_level=logical: {command:?}"
    );
    for key in ["max_wal_senders", "max_replication_slots"] {
        let value: u32 = settings
            .iter()
            .find_map(|s| s.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("the primary should set {key}: {command:?}"))
            .parse()
            .expect("a number");
        // walshift's slot and sender, the standby's, and room for a second run.
        assert!(value >= 4, "{key}={value}");
    }
    let image = primary["image"].as_str().expect("primary image");
    assert!(image.starts_with("postgres:16"), "{image}");
    let initdb = bind_source(primary, "primary", "/docker-entrypoint-initdb.d");
    for f in ["10-schema.sql", "20-walshift.sh", "30-grants.sql"] {
        assert!(initdb.join(f).is_file(), "docker/initdb/{f} is missing");
    }
    assert_eq!(env_var(primary, "POSTGRES_DB").as_deref(), Some("app"));

    let standby = service(&compose, "standby");
    let entrypoint = words(&standby["entrypoint"]);
    let script = bind_source(standby, "standby", &entrypoint[0]);
    let script = read(&script);
    assert!(
        script.contains("pg_basebackup"),
        "the standby starts from a base backup"
    );
    assert!(
        script.contains("--slot standby")
            && read(&initdb.join("20-walshift.sh"))
                .contains("pg_create_physical_replication_slot('standby'"),
        "the standby streams through the physical slot the primary's init creates"
    );
    assert_eq!(
        env_var(standby, "PRIMARY_HOST").as_deref(),
        Some("primary"),
        "the standby's primary is the primary service"
    );
}

#[test]
fn walshift_connects_to_the_primary_and_no_password_is_written_down() {
    let compose = compose();
    let walshift = service(&compose, "walshift");
    let db = env_var(walshift, "WALSHIFT_DB").expect("walshift gets WALSHIFT_DB");
    let config = ConnConfig::parse_with_env(&db, |_| None)
        .unwrap_or_else(|e| panic!("WALSHIFT_DB {db:?}: {e}"));
    assert_eq!(config.password(), None, "no password in WALSHIFT_DB");
    let hosts: Vec<String> = config
        .targets()
        .iter()
        .map(|t| match &t.host {
            Host::Tcp(h) => format!("{h}:{}", t.port),
            Host::Unix(path) => panic!("WALSHIFT_DB names a socket {}", path.display()),
        })
        .collect();
    assert_eq!(hosts, vec!["primary:5432".to_owned()]);
    assert_eq!(config.user(), "walshift");
    assert_eq!(
        config.dbname(),
        env_var(service(&compose, "primary"), "POSTGRES_DB").expect("POSTGRES_DB")
    );

    // Every password comes from the environment of `docker compose`, and the
    // example .env names each variable the file requires.
    let text = read(&docker_dir().join("docker-compose.yml"));
    let example = read(&docker_dir().join(".env.example"));
    for name in interpolated(&text) {
        assert!(
            example.lines().any(|l| l.starts_with(&format!("{name}="))),
            "docker/.env.example does not name {name}"
        );
    }
    for (svc_name, svc) in compose["services"].as_mapping().expect("services") {
        for (k, v) in environment(svc) {
            if k.contains("PASSWORD") {
                assert!(
                    v.starts_with("${") && v.ends_with('}'),
                    "service {svc_name:?}: {k} must come from the environment, not be written down"
                );
            }
        }
    }
    assert!(
        read(&repo().join(".gitignore"))
            .lines()
            .any(|l| l.trim() == "/docker/.env"),
        "docker/.env (real passwords) must be ignored by git"
    );
}

#[test]
fn the_image_is_built_from_the_repository_and_runs_walshift_unprivileged() {
    let compose = compose();
    let build = &service(&compose, "walshift")["build"];
    let context = docker_dir().join(build["context"].as_str().expect("build context"));
    let file = context.join(build["dockerfile"].as_str().unwrap_or("Dockerfile"));
    assert!(file.is_file(), "{} is missing", file.display());
    assert!(
        context.join("Cargo.toml").is_file(),
        "the build context must be the repository root"
    );

    let all = dockerfile();
    let froms: Vec<&str> = all
        .iter()
        .filter(|(i, _)| i == "FROM")
        .map(|(_, a)| a.as_str())
        .collect();
    assert!(froms[0].starts_with("rust:1-bookworm"), "{froms:?}");
    assert!(
        froms.last().unwrap().starts_with("debian:bookworm-slim"),
        "{froms:?}"
    );
    assert!(
        all.iter()
            .any(|(i, a)| i == "RUN" && a.contains("cargo build --release --locked")),
        "the build is locked to Cargo.lock"
    );
    let runtime = runtime_stage();
    let user = runtime
        .iter()
        .rev()
        .find(|(i, _)| i == "USER")
        .map(|(_, a)| a.clone())
        .expect("the runtime stage sets USER");
    assert!(
        !["root", "0", "0:0"].contains(&user.as_str()),
        "runs as root: {user}"
    );
    let entrypoint = runtime
        .iter()
        .rev()
        .find(|(i, _)| i == "ENTRYPOINT")
        .map(|(_, a)| a.clone())
        .expect("ENTRYPOINT");
    assert_eq!(entrypoint, r#"["walshift"]"#);
    for (i, a) in &runtime {
        assert!(
            !(i == "ENV" || i == "ARG") || !a.to_uppercase().contains("PASSWORD"),
            "no password in the image: {i} {a}"
        );
    }

    // The build context leaves out target/ and the .env with passwords.
    let ignore = read(&repo().join(".dockerignore"));
    let lines: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    if lines.first() == Some(&"*") {
        for l in &lines[1..] {
            let allowed = l.strip_prefix('!').expect("after *, only exceptions");
            assert!(
                !allowed.starts_with("target")
                    && !allowed.starts_with("docker")
                    && allowed != ".git",
                ".dockerignore lets {allowed} into the build context"
            );
        }
    } else {
        for needed in ["target", "docker/.env", ".git"] {
            assert!(
                lines
                    .iter()
                    .any(|l| l.trim_start_matches('/').trim_end_matches('/') == needed),
                ".dockerignore should leave out {needed}"
            );
        }
    }
}

/// The heredoc of SQL in initdb/20-walshift.sh, with its psql variables
/// (`:'name'`, read by `\getenv`) replaced by the quoted values given.
fn role_sql(passwords: &[(&str, &str)]) -> String {
    let script = read(&docker_dir().join("initdb/20-walshift.sh"));
    let start = script.find("<<'SQL'\n").expect("a <<'SQL' heredoc") + "<<'SQL'\n".len();
    let len = script[start..].find("\nSQL\n").expect("the heredoc's end");
    let heredoc = &script[start..start + len];
    for (name, _) in passwords {
        assert!(
            heredoc.contains(&format!("\\getenv {name} ")),
            "20-walshift.sh does not read {name} with \\getenv"
        );
    }
    // psql's meta-commands are not SQL.
    let mut sql: String = heredoc
        .lines()
        .filter(|l| !l.starts_with('\\'))
        .map(|l| format!("{l}\n"))
        .collect();
    for (name, value) in passwords {
        sql = sql.replace(&format!(":'{name}'"), &format!("'{value}'"));
    }
    assert!(!sql.contains(":'"), "a psql variable is left: {sql}");
    sql
}

/// A psql of version 15 or later (for `\getenv`): the server's or on PATH.
fn psql_15(cluster: &Cluster) -> Option<PathBuf> {
    [cluster.bin_dir().join("psql"), PathBuf::from("psql")]
        .into_iter()
        .find(|psql| {
            std::process::Command::new(psql)
                .arg("--version")
                .output()
                .ok()
                .and_then(|o| {
                    // "psql (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"
                    let text = String::from_utf8_lossy(&o.stdout).into_owned();
                    let version = text.split_whitespace().nth(2)?.to_owned();
                    version.split('.').next()?.parse::<u32>().ok()
                })
                .is_some_and(|major| major >= 15)
        })
}

/// initdb/20-walshift.sh itself, as the postgres image runs it: its
/// environment, psql on the socket, and a PGDATA whose pg_hba.conf it extends.
fn run_role_script(cluster: &Cluster, dbname: &str, psql: &Path) {
    let pgdata = tempfile::tempdir().expect("temporary directory");
    std::fs::write(pgdata.path().join("pg_hba.conf"), "").expect("pg_hba.conf");
    let mut path =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect::<Vec<_>>();
    if let Some(dir) = psql.parent().filter(|d| !d.as_os_str().is_empty()) {
        path.insert(0, dir.to_owned());
    }
    let out = std::process::Command::new("bash")
        .arg(docker_dir().join("initdb/20-walshift.sh"))
        .env("PATH", std::env::join_paths(path).expect("PATH"))
        .env("POSTGRES_USER", cluster.superuser())
        .env("POSTGRES_DB", dbname)
        .env("PGHOST", cluster.socket_dir())
        .env("PGPORT", cluster.port().to_string())
        .env("PGDATA", pgdata.path())
        .env("WALSHIFT_PASSWORD", "pw-walshift")
        .env("REPLICATION_PASSWORD", "pw-replicator")
        .output()
        .expect("run initdb/20-walshift.sh");
    assert!(
        out.status.success(),
        "initdb/20-walshift.sh failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let hba = read(&pgdata.path().join("pg_hba.conf"));
    assert!(
        hba.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
            == ["host", "replication", "replicator", "all", "scram-sha-256"]),
        "the standby's replication connections need a pg_hba line: {hba:?}"
    );
}

/// The init scripts against a real server, in the order the postgres image
/// runs them; then `walshift check docker/spec.toml` as the walshift role
/// must pass, and that role must see a standby's replay lag (the backfill
/// throttles on it; without pg_monitor the lag columns read NULL).
#[test]
fn the_init_scripts_give_a_schema_and_role_the_spec_fits() {
    // A cluster of its own: the scripts create roles, which are cluster-wide.
    let cluster = Cluster::builder().start().expect("start PostgreSQL");
    let db = cluster.fresh_database_named("app").expect("database");
    let sql = |text: &str| {
        cluster
            .exec_sql(db.name(), text)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    sql(&read(&docker_dir().join("initdb/10-schema.sql")));
    match psql_15(&cluster) {
        Some(psql) => run_role_script(&cluster, db.name(), &psql),
        // No psql here: the script's SQL alone.
        None => {
            eprintln!("no psql 15 or later: running the SQL of initdb/20-walshift.sh only");
            sql(&role_sql(&[
                ("walshift_password", "pw-walshift"),
                ("replication_password", "pw-replicator"),
            ]));
        }
    }
    sql(&read(&docker_dir().join("initdb/30-grants.sql")));
    let hashes = sql(
        "SELECT rolname || ':' || left(rolpassword, 13) FROM pg_authid
         WHERE rolname IN ('walshift', 'replicator') ORDER BY 1",
    );
    assert_eq!(
        format!("{hashes:?}"),
        r#"[[Some("replicator:SCRAM-SHA-256")], [Some("walshift:SCRAM-SHA-256")]]"#,
        "both roles get a SCRAM password from the environment"
    );

    let spec = docker_dir().join("spec.toml");
    let out = std::process::Command::new(BIN)
        .arg("check")
        .arg(&spec)
        .args(["--db", &format!("{} user=walshift", db.conninfo())])
        .env_remove("WALSHIFT_DB")
        .env_remove("RUST_LOG")
        .output()
        .expect("run walshift check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "walshift check docker/spec.toml as walshift failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("check passed"), "{stdout}");
    assert!(
        !stdout.contains("may not execute the replication origin functions"),
        "30-grants.sql should grant the origin functions:\n{stdout}"
    );

    // The standby's lag, as the backfill reads it, with and without pg_monitor.
    let standby = cluster.start_standby().expect("start a standby");
    let visible = |role: &str| {
        let rows = sql(&format!(
            "SET ROLE {role};
             SELECT count(*) FILTER (WHERE replay_lsn IS NOT NULL), count(*) FROM pg_stat_replication;
             RESET ROLE;"
        ));
        (rows[0][0].clone(), rows[0][1].clone())
    };
    sql("CREATE ROLE no_monitor LOGIN REPLICATION");
    let seen = |role: &str| {
        let mut last = (None, None);
        for _ in 0..100 {
            last = visible(role);
            if last.1.as_deref() != Some("0") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        last
    };
    assert_eq!(
        seen("walshift"),
        (Some("1".to_owned()), Some("1".to_owned())),
        "the walshift role must see the standby's replay position"
    );
    assert_eq!(
        seen("no_monitor"),
        (Some("0".to_owned()), Some("1".to_owned())),
        "without pg_monitor the standby's replay position is hidden (why 30-grants.sql grants it)"
    );
    drop(standby);
}
