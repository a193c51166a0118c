//! The HTTP surface of `walshift run` (`--listen`): `/metrics`, `/healthz`,
//! `/readyz`, `/status`, `/history`, `/overview` and the status page `/`,
//! each driven through the real binary against a fresh database
//! (docs/metrics.md: "HTTP endpoints" and "Metrics"); and the page itself in
//! headless Chromium.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use support::cli::cli;
use support::fixtures::USERS_MIRROR;
use support::http::get;
use support::process::{Run, Spec};
use support::{Database, poll, poll_some};

/// The label the run gives the `users` mirror (log lines, `/history`, the page).
const USERS_LABEL: &str = r#"mirror 1 ("public"."users" set status)"#;

/// Every metric docs/metrics.md documents; `/metrics` must list each of them.
const METRICS: &[&str] = &[
    "walshift_changes_received_total",
    "walshift_transactions_received_total",
    "walshift_keys_applied_total",
    "walshift_rows_written_total",
    "walshift_rows_deleted_total",
    "walshift_apply_batch_duration_seconds",
    "walshift_backfill_rows_total",
    "walshift_backfill_rows_per_second",
    "walshift_backfill_throttled",
    "walshift_lag_seconds",
    "walshift_lag_bytes",
    "walshift_slot_retained_wal_bytes",
    "walshift_stream_connected",
    "walshift_reconnects_total",
    "walshift_slot_resyncs_total",
    "walshift_dead_links_total",
    "walshift_errors_total",
    "walshift_held_keys",
];

/// `walshift run --listen 127.0.0.1:0 <extra>`, once it says where it serves.
async fn serve(spec: &Spec, db: &Database, extra: &[&str]) -> Run {
    let mut args = vec!["--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let run = Run::spawn_with(spec, db, &args);
    run.listening().await;
    run
}

/// One scrape of the run's `/metrics`, checked to be Prometheus text.
async fn metrics(run: &Run) -> Metrics {
    let r = run.get("/metrics").await;
    assert_eq!(r.code, 200, "{r}");
    assert!(
        r.content_type.starts_with("text/plain"),
        "Prometheus text: {r}"
    );
    Metrics(r.body)
}

/// One HTTP answer.
/// The Prometheus text of one scrape.
struct Metrics(String);

impl Metrics {
    /// The value of the sample `name` (with its labels, as rendered, e.g.
    /// `walshift_rows_written_total{work="live"}`); 0 when absent.
    fn value(&self, sample: &str) -> f64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == sample).then(|| value.parse().ok())?
            })
            .unwrap_or(0.0)
    }
}

/// A fresh database with `users` rows `1..=users` (and no orders).
async fn setup(users: i64) -> (Database, tokio_postgres::Client) {
    support::cli::setup(users, 0).await
}

async fn wait_ready(run: &Run) {
    poll_some(
        None,
        "/readyz to answer 200",
        Duration::from_secs(60),
        || async { (run.get("/readyz").await.code == 200).then_some(()) },
    )
    .await;
}

/// Guards docs/metrics.md "Metrics": every documented metric is on `/metrics` with
/// its help and type from the start, every `walshift_*` metric served is
/// documented, and the counters move with the work: backfill rows per
/// mirror, changes and transactions received, keys applied, rows written,
/// the batch latency histogram, lag and retained-WAL gauges.
#[tokio::test]
async fn metrics_are_documented_and_move_with_writes() {
    let (db, c) = setup(2_000).await;
    let spec = Spec::new("http-metrics", USERS_MIRROR);
    let run = serve(&spec, &db, &[]).await;
    // Gauges appear once measured: within a second or two of streaming.
    let m = poll_some(
        None,
        "every documented metric on /metrics",
        Duration::from_secs(30),
        || async {
            let m = metrics(&run).await;
            METRICS
                .iter()
                .all(|name| m.0.contains(&format!("# TYPE {name} ")))
                .then_some(m)
        },
    )
    .await;
    for name in METRICS {
        assert!(
            m.0.contains(&format!("# HELP {name} ")) && m.0.contains(&format!("# TYPE {name} ")),
            "{name} missing from /metrics:\n{}",
            m.0
        );
    }
    let documented =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md"))
            .expect("docs/metrics.md");
    let served: BTreeSet<&str> =
        m.0.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
    for name in &served {
        assert!(
            documented.contains(&format!("`{name}`")),
            "docs/metrics.md does not document {name}"
        );
        assert!(METRICS.contains(name), "this test does not know {name}");
    }

    // History: every row is covered by the backfill of mirror 1.
    let m = poll_some(
        None,
        "the backfill to finish",
        Duration::from_secs(60),
        || async {
            let m = metrics(&run).await;
            (m.value("walshift_backfill_rows_total{mirror=\"1\"}") >= 2_000.0).then_some(m)
        },
    )
    .await;
    assert_eq!(
        m.value("walshift_backfill_rows_total{mirror=\"1\"}"),
        2_000.0
    );
    assert!(m.value("walshift_rows_written_total{work=\"backfill\"}") > 0.0);
    wait_ready(&run).await;

    // Live writes: 100 row changes in 10 transactions.
    let before = metrics(&run).await;
    for i in 0..10 {
        c.execute(
            "UPDATE users SET is_active = NOT is_active WHERE id > $1 AND id <= $1 + 10",
            &[&(i * 10i64)],
        )
        .await
        .unwrap();
    }
    let after = poll_some(
        None,
        "the metrics to move",
        Duration::from_secs(30),
        || async {
            let m = metrics(&run).await;
            let moved = |name: &str, by: f64| m.value(name) >= before.value(name) + by;
            (moved("walshift_changes_received_total", 100.0)
                && moved("walshift_transactions_received_total", 10.0)
                && moved("walshift_keys_applied_total", 100.0)
                && moved("walshift_rows_written_total{work=\"live\"}", 100.0)
                && moved("walshift_apply_batch_duration_seconds_count", 1.0))
            .then_some(m)
        },
    )
    .await;
    assert!(
        after.value("walshift_apply_batch_duration_seconds_bucket{le=\"10\"}")
            >= after.value("walshift_apply_batch_duration_seconds_count"),
        "every batch took under 10 s:\n{}",
        after.0
    );
    assert!(
        after
            .0
            .contains("walshift_apply_batch_duration_seconds_bucket{le=\"0.001\"}"),
        "buckets from 1 ms:\n{}",
        after.0
    );
    assert_eq!(after.value("walshift_stream_connected"), 1.0);
    assert!(
        after.0.contains("\nwalshift_lag_seconds ") && after.0.contains("\nwalshift_lag_bytes "),
        "lag gauges: {}",
        after.0
    );
    assert!(after.value("walshift_slot_retained_wal_bytes") > 0.0);
    for reason in [
        "paused",
        "replica_lag",
        "replica_lag_bytes",
        "retained_wal",
        "apply_lag",
        "query",
        "rate_limit",
    ] {
        let sample = format!("walshift_backfill_throttled{{reason=\"{reason}\"}}");
        assert!(after.0.contains(&sample), "{sample} missing");
        assert_eq!(after.value(&sample), 0.0, "{sample}");
    }
    assert_eq!(support::wrong_status(&c).await, 0);
}

/// Guards `/healthz`: 200 while the stream is connected; 503 while the
/// session is down (its walsender terminated: the run backs off before it
/// reconnects, and counts the reconnect and the error); 200 again after;
/// connection refused once the run has stopped.
#[tokio::test]
async fn healthz_follows_the_replication_session() {
    let (db, c) = setup(100).await;
    let spec = Spec::new("http-health", USERS_MIRROR);
    let run = serve(&spec, &db, &[]).await;
    poll(None, "/healthz 200", Duration::from_secs(30), || async {
        run.get("/healthz").await.code == 200
    })
    .await;
    let ok = run.get("/healthz").await;
    assert!(ok.body.contains("streaming"), "{ok}");

    // Cut the stream; poll faster than the 0.5 s backoff.
    let terminated: i64 = c
        .query_one(
            "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots
             WHERE slot_name = 'walshift_http_health' AND active_pid IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(terminated, 1);
    let down = poll_some(None, "/healthz 503", Duration::from_secs(10), || async {
        let r = run.get("/healthz").await;
        (r.code == 503).then_some(r)
    })
    .await;
    assert!(down.body.contains("not streaming"), "{down}");
    poll(
        None,
        "/healthz 200 again",
        Duration::from_secs(30),
        || async { run.get("/healthz").await.code == 200 },
    )
    .await;
    let m = metrics(&run).await;
    assert!(m.value("walshift_reconnects_total") >= 1.0, "{}", m.0);
    assert!(
        m.value("walshift_errors_total{kind=\"retry\"}") >= 1.0,
        "{}",
        m.0
    );

    let addr = run.listening().await;
    run.sigterm();
    assert_eq!(run.exit(Duration::from_secs(15)).await.code(), Some(0));
    let after = get(&addr, "/healthz").await;
    assert!(
        after.is_err(),
        "nothing should answer on {addr} after the run stopped: {}",
        after.map(|r| r.to_string()).unwrap_or_default()
    );
}

/// Guards `/readyz` = `walshift wait`: 503 saying it waits for the
/// backfill while the backfill is paused (and the throttle gauge says
/// `paused`), 200 once it is complete and lag is under `--ready-max-lag`;
/// `walshift wait` agrees at that point.
#[tokio::test]
async fn readyz_is_what_wait_waits_for() {
    let (db, _c) = setup(40_000).await;
    let spec = Spec::new(
        "http-ready",
        &format!("{USERS_MIRROR}\n[backfill]\nmax_rows_per_second = 4000\n"),
    );
    let run = serve(&spec, &db, &["--ready-max-lag", "2s"]).await;
    // Pause as soon as the state exists.
    poll(
        None,
        "walshift ctl pause",
        Duration::from_secs(30),
        || async { cli(&["ctl", "pause"], &spec, &db).await.status.success() },
    )
    .await;
    let waiting = poll_some(
        None,
        "/readyz to say the backfill is paused",
        Duration::from_secs(30),
        || async {
            let r = run.get("/readyz").await;
            (r.code == 503 && r.body.contains("paused")).then_some(r)
        },
    )
    .await;
    assert!(
        waiting.body.starts_with("not ready: waiting for backfill:"),
        "{waiting}"
    );
    poll(
        None,
        "the paused throttle gauge",
        Duration::from_secs(10),
        || async {
            metrics(&run)
                .await
                .value("walshift_backfill_throttled{reason=\"paused\"}")
                == 1.0
        },
    )
    .await;
    let out = cli(&["wait", "--timeout", "1s"], &spec, &db).await;
    assert_eq!(out.code(), Some(1), "wait must agree: not ready\n{out}");

    assert!(cli(&["ctl", "resume"], &spec, &db).await.status.success());
    wait_ready(&run).await;
    let ready = run.get("/readyz").await;
    assert!(
        ready.body.starts_with("ready: backfill complete, lag "),
        "{ready}"
    );
    assert!(
        ready.body.contains("<= 2000 ms"),
        "the bound is --ready-max-lag: {ready}"
    );
    let out = cli(&["wait", "--timeout", "20s", "--max-lag", "2s"], &spec, &db).await;
    assert_eq!(out.code(), Some(0), "wait must agree: ready\n{out}");
    let m = metrics(&run).await;
    assert_eq!(
        m.value("walshift_backfill_throttled{reason=\"paused\"}"),
        0.0
    );
    assert_eq!(
        m.value("walshift_backfill_rows_per_second{mirror=\"1\"}"),
        0.0
    );
}

/// The keys of a JSON document, recursively, as paths (array elements
/// merged under `[]`).
fn shape(v: &Value, at: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let p = format!("{at}.{k}");
                out.insert(p.clone());
                shape(v, &p, out);
            }
        }
        Value::Array(a) => {
            for v in a {
                shape(v, &format!("{at}[]"), out);
            }
        }
        _ => {}
    }
}

/// Guards `/status`: the document of `walshift status --json`, same shape
/// and same facts; `/overview` carries it with readiness; `/history` has
/// one lag sample a second and the mirror's label; unknown paths are 404.
#[tokio::test]
async fn status_is_the_status_json_of_the_cli() {
    let (db, _c) = setup(500).await;
    let spec = Spec::new("http-status", USERS_MIRROR);
    let run = serve(&spec, &db, &[]).await;
    wait_ready(&run).await;
    let http = run.get("/status").await;
    assert_eq!(http.code, 200, "{http}");
    assert!(http.content_type.starts_with("application/json"), "{http}");
    let http = http.json();
    let out = cli(&["status", "--json"], &spec, &db).await;
    assert_eq!(out.code(), Some(0), "{out}");
    let cli = out.json();
    let (mut a, mut b) = (BTreeSet::new(), BTreeSet::new());
    shape(&http, "", &mut a);
    shape(&cli, "", &mut b);
    assert_eq!(a, b, "/status and status --json differ in shape");
    for path in [
        "/name",
        "/phase",
        "/ready",
        "/run/alive",
        "/run/pid",
        "/run/host",
        "/backfill/complete",
        "/backfill/mirrors/0/rows_done",
        "/slot/name",
        "/slot/exists",
        "/slot/active",
        "/slot/wal_status",
    ] {
        assert_eq!(http.pointer(path), cli.pointer(path), "{path}");
    }
    assert_eq!(http["phase"], "mirroring");
    assert_eq!(
        http["run"]["pid"].as_u64(),
        Some(run.pid() as u64),
        "the run's own pid"
    );

    let ov = run.get("/overview").await;
    assert_eq!(ov.code, 200, "{ov}");
    let ov = ov.json();
    assert_eq!(ov["ready"], true, "{ov}");
    assert_eq!(ov["waiting_for"], Value::Null, "{ov}");
    assert_eq!(ov["status"]["name"], "http-status");

    let samples = poll_some(None, "3 lag samples", Duration::from_secs(10), || async {
        let h = run.get("/history").await.json();
        let n = h["samples"].as_array().map_or(0, |s| s.len());
        (n >= 3).then_some(h)
    })
    .await;
    assert_eq!(samples["connected"], true);
    assert_eq!(samples["mirrors"][0]["label"], USERS_LABEL, "{samples}");
    let s = samples["samples"].as_array().unwrap();
    let last = s.last().unwrap().as_array().unwrap();
    assert!(
        last[1].as_f64().is_some(),
        "a lag while connected: {last:?}"
    );
    let t = last[0].as_f64().unwrap();
    let newer = run.get(&format!("/history?since={t}")).await.json();
    assert!(
        newer["samples"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s[0].as_f64().unwrap() > t),
        "?since= returns only newer samples"
    );

    let missing = run.get("/nope").await;
    assert_eq!(missing.code, 404, "{missing}");
}

/// Guards the page at `/`: served as HTML, self-contained (no external
/// script, style or image), and it reads the endpoints that exist.
#[tokio::test]
async fn the_page_is_served_self_contained() {
    let (db, _c) = setup(10).await;
    let spec = Spec::new("http-page", USERS_MIRROR);
    let run = serve(&spec, &db, &[]).await;
    let page = run.get("/").await;
    assert_eq!(page.code, 200, "{page}");
    assert!(page.content_type.starts_with("text/html"), "{page}");
    assert!(page.body.contains("<title>walshift</title>"));
    for external in [
        "src=\"http",
        "href=\"http",
        "src=\"//",
        "href=\"//",
        "@import",
        "url(http",
    ] {
        assert!(!page.body.contains(external), "external asset: {external}");
    }
    for endpoint in ["\"/overview\"", "\"/history\"", "/history?since="] {
        assert!(page.body.contains(endpoint), "the page reads {endpoint}");
    }
}

/// Guards the bind failure: a taken address is one line naming it and
/// `--listen`, exit 2, and nothing is created in the database.
#[tokio::test]
async fn a_taken_address_fails_before_anything_is_created() {
    let (db, c) = setup(10).await;
    let spec = Spec::new("http-taken", USERS_MIRROR);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = cli(&["run", "--listen", &addr], &spec, &db).await;
    assert_eq!(out.code(), Some(2), "{out}");
    let lines: Vec<&str> = out.stderr.trim().lines().collect();
    assert_eq!(lines.len(), 1, "one line: {out}");
    assert!(
        lines[0].contains(&addr) && lines[0].contains("--listen"),
        "{out}"
    );
    let created: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'walshift')
                 OR EXISTS (SELECT 1 FROM pg_replication_slots)
                 OR EXISTS (SELECT 1 FROM pg_publication)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!created, "nothing may be created when the address is taken");
}

// ---- the page in a real browser --------------------------------------------

/// Debian's Chromium, which scripts/ensure-postgres installs.
fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "chromium is not installed, so the status page cannot be tested in a browser: \
         run scripts/ensure-postgres (as root it installs chromium), or apt-get install chromium"
    );
}

/// Runs headless Chromium on `url` with `args` for `budget` of virtual time;
/// returns stdout and the console lines it logged (any is a failure: the
/// page writes nothing to the console).
async fn chromium_on(url: &str, args: &[&str], profile: &Path) -> (String, Vec<String>, String) {
    let mut cmd = tokio::process::Command::new(chromium());
    cmd.args([
        "--headless",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1280,860",
        "--virtual-time-budget=8000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // Chromium's sandbox refuses to run as root.
        cmd.arg("--no-sandbox");
    }
    cmd.args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("chromium finished within 90 s")
        .expect("run chromium");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "chromium failed ({}):\n{stderr}",
        out.status
    );
    let console = stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught"))
        .map(str::to_string)
        .collect();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        console,
        stderr,
    )
}

/// The text of the element with `id` in a serialized DOM.
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let open = format!("id=\"{id}\"");
    let at = dom
        .find(&open)
        .unwrap_or_else(|| panic!("no #{id} in the DOM:\n{dom}"));
    let rest = &dom[at..];
    let start = rest.find('>').expect("tag end") + 1;
    let end = rest[start..].find('<').expect("text end") + start;
    rest[start..end].trim()
}

/// Guards the page as an on-call engineer sees it, in headless Chromium
/// against a live run: it loads, fills in live numbers (the mirror's label
/// and progress, a measured lag, phase and readiness), and logs nothing to
/// the console. Saves `target/test-artifacts/status-page.png`.
#[tokio::test]
async fn the_page_shows_live_numbers_in_a_browser() {
    let browser = chromium();
    let (db, c) = setup(3_000).await;
    let spec = Spec::new("http-browser", USERS_MIRROR);
    let run = serve(&spec, &db, &[]).await;
    wait_ready(&run).await;
    // Some live traffic, and a few seconds of lag history for the chart.
    for i in 0..5 {
        c.execute(
            "UPDATE users SET is_active = NOT is_active WHERE id % 50 = $1",
            &[&i64::from(i)],
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let url = format!("http://{}/", run.listening().await);
    let profile = tempfile::tempdir().expect("profile dir");

    let (dom, console, stderr) = chromium_on(&url, &["--dump-dom"], profile.path()).await;
    assert!(
        console.is_empty(),
        "the page logged to the console:\n{}\n--- chromium stderr\n{stderr}",
        console.join("\n")
    );
    assert!(dom.contains(USERS_LABEL), "the mirror's label:\n{dom}");
    assert_eq!(text_of(&dom, "name"), "http-browser");
    assert_eq!(text_of(&dom, "phase"), "mirroring");
    assert_eq!(text_of(&dom, "ready"), "ready");
    assert_eq!(text_of(&dom, "stream"), "stream connected");
    let lag = text_of(&dom, "lag-value");
    assert!(
        lag.ends_with(" ms") || lag.ends_with(" s"),
        "a measured lag, not a placeholder: {lag:?}"
    );
    assert!(
        lag.chars().next().is_some_and(|c| c.is_ascii_digit()),
        "{lag:?}"
    );
    assert_eq!(text_of(&dom, "backfill-state"), "complete");
    assert!(
        text_of(&dom, "slot-state").starts_with("active"),
        "{}",
        text_of(&dom, "slot-state")
    );
    assert_eq!(text_of(&dom, "run-state"), "alive");
    assert_ne!(text_of(&dom, "updated"), "never");
    assert!(
        dom.contains("aria-valuenow=\"100.0\""),
        "a full progress bar"
    );
    assert!(
        dom.contains("class=\"lagline\""),
        "the lag chart has a line"
    );
    assert!(dom.contains("class=\"banner hidden\""), "no error banner");

    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("target/test-artifacts");
    let png = dir.join("status-page.png");
    let _ = std::fs::remove_file(&png);
    let (_, console, stderr) = chromium_on(
        &url,
        &[&format!("--screenshot={}", png.display())],
        profile.path(),
    )
    .await;
    assert!(
        console.is_empty(),
        "the page logged to the console:\n{}\n--- chromium stderr\n{stderr}",
        console.join("\n")
    );
    let bytes = std::fs::read(&png).unwrap_or_else(|e| {
        panic!(
            "{} from {}: {e}\n{stderr}",
            png.display(),
            browser.display()
        )
    });
    assert!(bytes.starts_with(b"\x89PNG"), "a PNG screenshot");
    assert!(bytes.len() > 10_000, "a screenshot with content");
}

/// `--batch-window`: twenty single-row commits 20 ms apart are applied in one
/// or two batches when a batch may wait 2 s for more keys, and in at least
/// five with no window (the planted half: `0ms` hands each commit over as
/// soon as the applier is free, so this half fails if the window is not
/// what collects them). Judged by `/metrics` and, for the data, by SQL.
#[tokio::test]
async fn batch_window_collects_commits_into_fewer_batches() {
    const BATCHES: &str = "walshift_apply_batch_duration_seconds_count";
    for (window, name, fits) in [
        ("2s", "http-window-2s", (|n| n <= 2.0) as fn(f64) -> bool),
        ("0ms", "http-window-0ms", |n| n >= 5.0),
    ] {
        let (db, c) = setup(50).await;
        let spec = Spec::new(name, USERS_MIRROR);
        let run = serve(&spec, &db, &["--batch-window", window]).await;
        wait_ready(&run).await;
        let before = metrics(&run).await.value(BATCHES);
        for id in 1..=20i64 {
            c.execute(
                "UPDATE users SET is_active = NOT is_active WHERE id = $1",
                &[&id],
            )
            .await
            .expect("update a user");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        poll(
            None,
            "every update mirrored",
            Duration::from_secs(30),
            || async {
                support::cli::one_i64(
                    &c,
                    "SELECT count(*) FROM users
                     WHERE status IS DISTINCT FROM CASE WHEN is_active THEN 'active' ELSE 'disabled' END",
                )
                .await
                    == 0
            },
        )
        .await;
        let batches = metrics(&run).await.value(BATCHES) - before;
        assert!(
            fits(batches),
            "--batch-window {window}: twenty commits 20 ms apart went in {batches} batches"
        );
    }
}
