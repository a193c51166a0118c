//! Mappings that read other tables (`depends`, docs/design.md §4): a change
//! to a row of a declared table makes dirty every source row that refers to
//! it, so the targets follow inserts, updates, key changes, deletes and
//! truncates there. Judged with SQL of the tests' own, never with walshift's
//! verify alone.
//!
//! With dependencies ignored (`--unsafe-plant ignore-depends`, walshift
//! before `depends`) the posts/users scenario fails: posts pointing at users
//! inserted or deleted later keep their old `user_id_v2`
//! (`posts_test_fails_with_depends_ignored`), and so does the comment split
//! (`likes_test_fails_with_depends_ignored`).

mod support;

use std::time::{Duration, Instant};

use support::cli::*;
use support::process::{Run, Spec};
use support::{Database, wait_backfill_done, wait_caught_up};

/// pgroll's example: `user_id_v2` keeps only references to users that exist.
const POSTS: &str = "
CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL);
CREATE TABLE posts (id bigint PRIMARY KEY, user_id bigint, title text NOT NULL, user_id_v2 bigint);
CREATE INDEX ON posts (user_id);
INSERT INTO users SELECT g, 'user ' || g FROM generate_series(1, 400, 2) g;
INSERT INTO posts SELECT g, 1 + g % 500, 'post ' || g FROM generate_series(1, 5000) g;
";

const POSTS_MIRROR: &str = r#"
[[mirror]]
source = "public.posts"
set = { user_id_v2 = "CASE WHEN EXISTS (SELECT 1 FROM public.users WHERE users.id = user_id) THEN user_id END" }
depends = [{ table = "public.users", columns = ["user_id"] }]
"#;

/// Posts whose `user_id_v2` is not what the mapping gives now.
async fn posts_wrong(c: &tokio_postgres::Client) -> i64 {
    one_i64(
        c,
        "SELECT count(*) FROM posts p WHERE p.user_id_v2 IS DISTINCT FROM
           (CASE WHEN EXISTS (SELECT 1 FROM users u WHERE u.id = p.user_id) THEN p.user_id END)",
    )
    .await
}

/// A small deterministic generator, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Writes to users (inserts, renames, key changes, deletes, one truncate
/// and refill) and to posts (new posts, re-pointed posts) for `seconds`.
async fn users_and_posts_load(c: &tokio_postgres::Client, seconds: u64) -> u64 {
    let mut rng = Rng(7);
    let started = Instant::now();
    let mut txns = 0u64;
    let mut truncated = false;
    let mut next_post = 100_000i64;
    while started.elapsed() < Duration::from_secs(seconds) {
        let user = 1 + rng.below(600) as i64;
        let sql = match rng.below(8) {
            0 | 1 => format!(
                "INSERT INTO users VALUES ({user}, 'new') ON CONFLICT (id) DO UPDATE SET name = 'again'"
            ),
            2 => format!("DELETE FROM users WHERE id = {user}"),
            3 => format!(
                "UPDATE users SET id = {0} WHERE id = {user} AND NOT EXISTS (SELECT FROM users WHERE id = {0})",
                user + 1000
            ),
            4 => format!("UPDATE users SET name = name || '!' WHERE id = {user}"),
            5 => {
                next_post += 1;
                format!("INSERT INTO posts VALUES ({next_post}, {user}, 'live')")
            }
            6 => format!(
                "UPDATE posts SET user_id = {user} WHERE id = {}",
                1 + rng.below(5000)
            ),
            _ => format!(
                "BEGIN; DELETE FROM users WHERE id = {user}; INSERT INTO users VALUES ({}, 'x') ON CONFLICT DO NOTHING; COMMIT",
                user + 1
            ),
        };
        c.batch_execute(&sql).await.expect("load");
        txns += 1;
        if !truncated && started.elapsed() > Duration::from_secs(seconds / 2) {
            c.batch_execute(
                "TRUNCATE users; INSERT INTO users SELECT g, 'refill' FROM generate_series(2, 600, 3) g",
            )
            .await
            .expect("truncate");
            truncated = true;
        }
    }
    txns
}

/// The posts/users scenario; returns the posts left wrong once walshift
/// has caught up.
async fn posts_scenario(name: &str, extra: &[&str]) -> (i64, Run, Database) {
    let db = support::fresh_db().await;
    let c = db.connect().await;
    c.batch_execute(POSTS).await.unwrap();
    let spec = Spec::new(name, POSTS_MIRROR);
    let run = Run::spawn_with(&spec, &db, extra);
    wait_backfill_done(&c, &spec.name).await;
    assert_eq!(posts_wrong(&c).await, 0, "the backfill reads users");
    let txns = users_and_posts_load(&c, 6).await;
    assert!(txns > 100, "the load ran: {txns} transactions");
    wait_caught_up(&run, &c).await;
    (posts_wrong(&c).await, run, db)
}

/// Users inserted, deleted, re-keyed and truncated under a live load reach
/// every post pointing at them.
#[tokio::test]
async fn posts_follow_their_users_under_load() {
    let (wrong, run, db) = posts_scenario("depends-posts", &[]).await;
    assert_eq!(wrong, 0, "posts left stale by user changes");
    assert!(run.still_running(), "{}", run.stderr());
    // The oracle agrees with walshift's verify.
    let spec = Spec::new("depends-posts", POSTS_MIRROR);
    let v = cli(&["verify"], &spec, &db).await;
    assert_eq!(v.code(), Some(0), "{v}");
    // A user's arrival after everything: no post write needed.
    let c = db.connect().await;
    c.batch_execute("DELETE FROM users WHERE id = 77; INSERT INTO posts VALUES (999999, 77, 'p')")
        .await
        .unwrap();
    wait_caught_up(&run, &c).await;
    c.batch_execute("INSERT INTO users VALUES (77, 'late')")
        .await
        .unwrap();
    wait_caught_up(&run, &c).await;
    assert_eq!(
        one_i64(&c, "SELECT user_id_v2 FROM posts WHERE id = 999999").await,
        77
    );
    assert_eq!(posts_wrong(&c).await, 0);
    // The cut-over (it locks the dependency with the source: the lock list
    // is MirrorPlan::published, unit-tested in src/catalog/tests.rs).
    let cut = cli(&["cutover", "--dry-run"], &spec, &db).await;
    assert_eq!(cut.code(), Some(0), "{cut}");
    if let Some(line) = cut.stderr.lines().find(|l| l.starts_with("locking:")) {
        assert!(line.contains("\"public\".\"users\""), "{cut}");
    }
}

/// The same without dependencies: the targets go stale.
#[tokio::test]
async fn posts_test_fails_with_depends_ignored() {
    let (wrong, _run, _db) =
        posts_scenario("depends-planted", &["--unsafe-plant", "ignore-depends"]).await;
    assert!(
        wrong > 0,
        "with dependencies ignored some posts must keep a stale user_id_v2"
    );
}

/// A launch platform's comment split: likes go to product_likes or
/// blog_likes by the kind of their comment, which changes.
const LIKES: &str = "
CREATE TABLE comments (id integer PRIMARY KEY, kind text NOT NULL, body text);
CREATE TABLE likes (id bigint PRIMARY KEY, comment_id integer NOT NULL, user_id bigint NOT NULL);
CREATE INDEX ON likes (comment_id);
CREATE TABLE product_likes (like_id bigint PRIMARY KEY, comment_id integer NOT NULL, user_id bigint NOT NULL);
CREATE TABLE blog_likes (like_id bigint PRIMARY KEY, comment_id integer NOT NULL, user_id bigint NOT NULL);
INSERT INTO comments SELECT g, CASE WHEN g % 3 = 0 THEN 'blog' ELSE 'product' END, 'c' FROM generate_series(1, 300) g;
INSERT INTO likes SELECT g, 1 + g % 300, g % 50 FROM generate_series(1, 6000) g;
";

const LIKES_MIRRORS: &str = r#"
[[mirror]]
source = "public.likes"
target = "public.product_likes"
owner = ["like_id"]
select = "SELECT src.id AS like_id, src.comment_id, src.user_id FROM public.comments c WHERE c.id = src.comment_id AND c.kind = 'product'"
depends = [{ table = "public.comments", columns = ["comment_id"] }]

[[mirror]]
source = "public.likes"
target = "public.blog_likes"
owner = ["like_id"]
select = "SELECT src.id AS like_id, src.comment_id, src.user_id FROM public.comments c WHERE c.id = src.comment_id AND c.kind = 'blog'"
depends = [{ table = "public.comments", columns = ["comment_id"] }]
"#;

/// Likes rows that are not where their comment's kind puts them (missing,
/// extra or different), over both targets.
async fn likes_wrong(c: &tokio_postgres::Client) -> i64 {
    one_i64(
        c,
        "WITH want AS (
           SELECT l.id, l.comment_id, l.user_id, c.kind FROM likes l JOIN comments c ON c.id = l.comment_id
         ), have AS (
           SELECT like_id AS id, comment_id, user_id, 'product' AS kind FROM product_likes
           UNION ALL SELECT like_id, comment_id, user_id, 'blog' FROM blog_likes
         )
         SELECT count(*) FROM ((TABLE want EXCEPT ALL TABLE have) UNION ALL (TABLE have EXCEPT ALL TABLE want)) d",
    )
    .await
}

/// Kinds flip, comments go and come back, likes move between comments;
/// returns the likes left on the wrong side once walshift has caught up.
async fn likes_scenario(name: &str, extra: &[&str]) -> (i64, Run) {
    let db = support::fresh_db().await;
    let c = db.connect().await;
    c.batch_execute(LIKES).await.unwrap();
    let spec = Spec::new(name, LIKES_MIRRORS);
    let run = Run::spawn_with(&spec, &db, extra);
    wait_backfill_done(&c, &spec.name).await;
    assert_eq!(likes_wrong(&c).await, 0, "the backfill splits by kind");

    let mut rng = Rng(11);
    let started = Instant::now();
    let mut next_like = 100_000i64;
    while started.elapsed() < Duration::from_secs(5) {
        let comment = 1 + rng.below(320) as i64;
        let sql = match rng.below(6) {
            0 | 1 => format!(
                "UPDATE comments SET kind = CASE kind WHEN 'blog' THEN 'product' ELSE 'blog' END WHERE id = {comment}"
            ),
            2 => format!("DELETE FROM comments WHERE id = {comment}"),
            3 => format!(
                "INSERT INTO comments VALUES ({comment}, 'blog', 'again') ON CONFLICT (id) DO UPDATE SET kind = 'product'"
            ),
            4 => {
                next_like += 1;
                format!("INSERT INTO likes VALUES ({next_like}, {comment}, 1)")
            }
            _ => format!(
                "BEGIN; UPDATE comments SET kind = 'blog' WHERE id = {comment}; UPDATE likes SET comment_id = {comment} WHERE id = {}; COMMIT",
                1 + rng.below(6000)
            ),
        };
        c.batch_execute(&sql).await.unwrap();
    }
    wait_caught_up(&run, &c).await;
    (likes_wrong(&c).await, run)
}

#[tokio::test]
async fn likes_follow_their_comments_kind_under_load() {
    let (wrong, run) = likes_scenario("depends-likes", &[]).await;
    assert_eq!(wrong, 0, "likes left on the wrong side");
    assert!(run.still_running(), "{}", run.stderr());
}

#[tokio::test]
async fn likes_test_fails_with_depends_ignored() {
    let (wrong, _run) = likes_scenario(
        "depends-likes-planted",
        &["--unsafe-plant", "ignore-depends"],
    )
    .await;
    assert!(
        wrong > 0,
        "with dependencies ignored some likes must stay on the wrong side"
    );
}

/// `check` names a table the mapping reads without `depends`, and the run
/// logs the same warning; a good `depends` silences it.
#[tokio::test]
async fn an_undeclared_read_is_warned_of() {
    let db = support::fresh_db().await;
    let c = db.connect().await;
    c.batch_execute(POSTS).await.unwrap();
    let undeclared = r#"
[[mirror]]
source = "public.posts"
set = { user_id_v2 = "CASE WHEN EXISTS (SELECT 1 FROM public.users WHERE users.id = user_id) THEN user_id END" }
"#;
    let spec = Spec::new("depends-undeclared", undeclared);
    let out = cli(&["check"], &spec, &db).await;
    assert_eq!(out.code(), Some(0), "a warning, not a problem: {out}");
    assert!(
        out.stdout
            .contains("the mapping reads public.users but does not declare it"),
        "{out}"
    );
    assert!(
        out.stdout.contains("depends = [{ table = \"public.users\""),
        "{out}"
    );
    let run = Run::spawn(&spec, &db);
    wait_backfill_done(&c, &spec.name).await;
    assert!(
        run.stderr()
            .contains("the mapping reads public.users but does not declare it"),
        "{}",
        run.stderr()
    );
    run.sigterm();
    run.exit(Duration::from_secs(30)).await;

    let declared = Spec::new("depends-declared", POSTS_MIRROR);
    let out = cli(&["check"], &declared, &db).await;
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(!out.stdout.contains("does not declare"), "{out}");
    assert!(
        out.stdout
            .contains("depends on public.users: a change to its row (id bigint)"),
        "{out}"
    );
}

/// Bad `depends`: each a one-line problem naming the table and the fix;
/// nothing is created.
#[tokio::test]
async fn bad_depends_are_refused_by_check() {
    let db = support::fresh_db().await;
    let c = db.connect().await;
    c.batch_execute(POSTS).await.unwrap();
    c.batch_execute(
        "CREATE TABLE tags (name text PRIMARY KEY); CREATE TABLE nokey (id bigint);
         ALTER TABLE posts ADD COLUMN tag text, ADD COLUMN author integer",
    )
    .await
    .unwrap();
    let case = |depends: &str| {
        format!(
            "[[mirror]]\nsource = \"public.posts\"\nset = {{ user_id_v2 = \"user_id\" }}\ndepends = [{depends}]\n"
        )
    };
    let cases = [
        (
            r#"{ table = "public.missing", columns = ["user_id"] }"#,
            "table public.missing does not exist",
        ),
        (
            r#"{ table = "public.users", columns = ["nope"] }"#,
            "source public.posts has no column nope",
        ),
        (
            r#"{ table = "public.users", columns = ["author"] }"#,
            "author of public.posts is integer but key column id of public.users is bigint",
        ),
        (
            r#"{ table = "public.users", columns = ["user_id", "title"] }"#,
            "columns lists 2 column(s) but the primary key of public.users (id) has 1",
        ),
        (
            r#"{ table = "public.tags", columns = ["tag"] }"#,
            "no index of public.posts starts with (tag); every change to public.tags looks its rows up through one, so run CREATE INDEX ON public.posts (tag)",
        ),
        (
            r#"{ table = "public.nokey", columns = ["user_id"] }"#,
            "public.nokey has no primary key",
        ),
    ];
    for (i, (depends, want)) in cases.iter().enumerate() {
        let spec = Spec::new(&format!("depends-bad-{i}"), &case(depends));
        let out = cli(&["check"], &spec, &db).await;
        assert_eq!(out.code(), Some(1), "{depends}: {out}");
        assert!(
            out.stdout.contains(want),
            "{depends}: want {want:?} in {out}"
        );
    }
    // A spec-level mistake: the source itself.
    let spec = Spec::new(
        "depends-self",
        &case(r#"{ table = "public.posts", columns = ["id"] }"#),
    );
    let out = cli(&["check"], &spec, &db).await;
    assert_ne!(out.code(), Some(0), "{out}");
    assert!(out.stderr.contains("is the source itself"), "{out}");
    assert_eq!(
        one_i64(
            &c,
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'walshift_depends%'"
        )
        .await,
        0,
        "check creates no slot"
    );
}

/// Waits until walshift's stream is connected (its slot active).
async fn streaming(c: &tokio_postgres::Client, slot: &str) {
    support::poll(
        None,
        "the stream to connect",
        Duration::from_secs(30),
        || async {
            c.query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active",
                &[&slot],
            )
            .await
            .unwrap()
            .is_some()
        },
    )
    .await;
}

/// A `depends` added to a migration that already runs: the changes to the
/// new dependency made before never reached the stream, so the mirror's
/// history is recomputed. Without that restart the posts that pointed at
/// users inserted while walshift did not watch them would stay NULL.
#[tokio::test]
async fn a_depends_added_later_recomputes_the_mirror() {
    let db = support::fresh_db().await;
    let c = db.connect().await;
    c.batch_execute(POSTS).await.unwrap();
    let undeclared = r#"
[[mirror]]
source = "public.posts"
set = { user_id_v2 = "CASE WHEN EXISTS (SELECT 1 FROM public.users WHERE users.id = user_id) THEN user_id END" }
"#;
    let before = Spec::new("depends-later", undeclared);
    let run = Run::spawn(&before, &db);
    wait_backfill_done(&c, &before.name).await;
    streaming(&c, &before.object()).await;
    // Users arrive that posts point at; nothing watches users yet.
    c.batch_execute("INSERT INTO users SELECT g, 'late' FROM generate_series(2, 400, 2) g")
        .await
        .unwrap();
    wait_caught_up(&run, &c).await;
    assert!(posts_wrong(&c).await > 0, "undeclared, the posts go stale");
    run.sigterm();
    run.exit(Duration::from_secs(30)).await;

    let after = Spec::new("depends-later", POSTS_MIRROR);
    let run = Run::spawn(&after, &db);
    // The old run's checkpoint says done until the new run's setup restarts
    // it: wait for that first.
    support::poll(
        None,
        "the history to restart",
        Duration::from_secs(30),
        || async {
            run.stderr()
                .contains("its history is recomputed from the start")
        },
    )
    .await;
    wait_backfill_done(&c, &after.name).await;
    streaming(&c, &after.object()).await;
    wait_caught_up(&run, &c).await;
    assert_eq!(posts_wrong(&c).await, 0, "the history was recomputed");
}
