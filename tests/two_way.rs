//! Two-way mirrors (the rolling deploy): both shapes are written by the
//! application, walshift keeps each the mapping of the other, the later
//! commit wins, and nothing an application acknowledged is lost.

mod common;

use common::cli::{Spec, cli};
use common::fresh_db;

const USERS: &str = "
CREATE TABLE users (id bigint PRIMARY KEY, name text, is_active boolean, status text);
";

const USERS_TWO_WAY: &str = r#"
[[mirror]]
source = "public.users"
set = { status = "CASE WHEN is_active THEN 'active' ELSE 'disabled' END" }
reverse = { is_active = "status = 'active'" }
"#;

/// `check` wants REPLICA IDENTITY FULL on a two-way source and says how.
#[tokio::test]
async fn check_asks_for_replica_identity_full() {
    let db = fresh_db().await;
    let c = db.connect().await;
    c.batch_execute(USERS).await.unwrap();
    let spec = Spec::new("two-way", USERS_TWO_WAY);
    let out = cli(&["check"], &spec, &db).await;
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(
        out.stderr.contains(
            "public.users has REPLICA IDENTITY DEFAULT, so an update does not show which columns \
             it changed and walshift cannot tell the old version's writes from the new version's; \
             run ALTER TABLE public.users REPLICA IDENTITY FULL"
        ) || out
            .stdout
            .contains("run ALTER TABLE public.users REPLICA IDENTITY FULL"),
        "{out}"
    );
    c.batch_execute("ALTER TABLE users REPLICA IDENTITY FULL")
        .await
        .unwrap();
    let out = cli(&["check"], &spec, &db).await;
    assert_eq!(out.code(), Some(0), "{out}");
    eprintln!("{out}");
}
