//! Authentication and TLS of the replication connection (and of ordinary
//! SQL sessions through the same connection settings), against dedicated
//! clusters whose pg_hba.conf demands them.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use walshift::conninfo::ConnConfig;
use walshift::replication::{ReplicationClient, ReplicationError};
use walshift_cluster::Cluster;

async fn repl(conninfo: &str) -> Result<ReplicationClient, ReplicationError> {
    ReplicationClient::connect(&ConnConfig::parse(conninfo).expect("conninfo parses")).await
}

fn sql(cluster: &Cluster, statements: &str) {
    cluster.exec_sql("postgres", statements).expect("setup SQL");
}

#[tokio::test(flavor = "multi_thread")]
async fn scram_md5_and_cleartext_logins_and_a_wrong_password() {
    let cluster = Cluster::builder()
        .listen_tcp(true)
        .password("superpw")
        .auth_method("scram-sha-256")
        .hba_line("host all md5_user 127.0.0.1/32 md5")
        .hba_line("host all plain_user 127.0.0.1/32 password")
        .hba_line("host all scram_user 127.0.0.1/32 scram-sha-256")
        .start()
        .expect("cluster");
    sql(
        &cluster,
        "SET password_encryption = 'scram-sha-256';
         CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'scram pw';
         CREATE ROLE plain_user LOGIN REPLICATION PASSWORD 'plain pw';
         SET password_encryption = 'md5';
         CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'md5 pw';",
    );
    let base = format!(
        "host=127.0.0.1 port={} dbname=postgres sslmode=disable",
        cluster.port()
    );

    for (user, pw) in [
        ("scram_user", "scram pw"),
        ("md5_user", "md5 pw"),
        ("plain_user", "plain pw"),
    ] {
        let mut c = repl(&format!("{base} user={user} password='{pw}'"))
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        let rows = c.simple_query("SELECT current_user AS u").await.unwrap();
        assert_eq!(rows[0].get("u"), Some(user));
        c.identify_system().await.unwrap();
        c.close().await.unwrap();
    }
    // The stored hash really is of the kind the test claims.
    let rows = cluster
        .exec_sql(
            "postgres",
            "SELECT rolname || ':' || left(rolpassword, 5) FROM pg_authid WHERE rolname IN ('md5_user','scram_user') ORDER BY 1",
        )
        .unwrap();
    let text = format!("{rows:?}");
    assert!(text.contains("md5_user:md5"), "{text}");
    assert!(text.contains("scram_user:SCRAM"), "{text}");

    // Wrong password: the server's own words, with the SQLSTATE.
    let err = repl(&format!("{base} user=scram_user password=wrong"))
        .await
        .err()
        .expect("wrong password is refused");
    assert_eq!(err.code(), Some("28P01"), "{err}");
    assert!(
        err.to_string()
            .contains("password authentication failed for user \"scram_user\""),
        "{err}"
    );
    let err = repl(&format!("{base} user=md5_user password=wrong"))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Some("28P01"), "{err}");

    // No password at all: say what to set, without bothering the server twice.
    let err = repl(&format!("{base} user=scram_user"))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("PGPASSWORD"), "{err}");
    assert!(!err.to_string().contains("superpw"));
}

struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// A CA, a server certificate for `localhost` signed by it, and an unrelated CA.
fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let new_ca = |cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.self_signed(&key).unwrap();
        (cert, key)
    };
    let (ca_cert, ca_key) = new_ca("walshift test CA");
    let (other_cert, _) = new_ca("someone else's CA");
    let srv_key = KeyPair::generate().unwrap();
    let mut srv = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    srv.distinguished_name.push(DnType::CommonName, "localhost");
    let srv_cert = srv.signed_by(&srv_key, &ca_cert, &ca_key).unwrap();
    Pki {
        ca: write("ca.pem", ca_cert.pem()),
        other_ca: write("other-ca.pem", other_cert.pem()),
        cert: write("server.pem", srv_cert.pem()),
        key: write("server.key", srv_key.serialize_pem()),
        _dir: dir,
    }
}

fn conn(port: u16, host: &str, mode: &str, root: Option<&Path>) -> String {
    let mut s = format!("host={host} port={port} user=postgres dbname=postgres sslmode={mode}");
    if let Some(r) = root {
        s.push_str(&format!(" sslrootcert='{}'", r.display()));
    }
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_modes_against_a_certificate_the_test_made() {
    let pki = pki();
    let cluster = Cluster::builder()
        .listen_tcp(true)
        .tls(&pki.cert, &pki.key)
        // TCP without TLS is refused, so a silent plaintext fallback would fail.
        .hba_line("hostnossl all all 127.0.0.1/32 reject")
        .start()
        .expect("cluster with TLS");
    let port = cluster.port();

    // verify-full: chain and host name check out.
    let mut c = repl(&conn(port, "localhost", "verify-full", Some(&pki.ca)))
        .await
        .expect("verify-full to localhost");
    let rows = c
        .simple_query("SELECT ssl::text AS ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .await
        .unwrap();
    assert_eq!(rows[0].get("ssl"), Some("true"));
    c.identify_system().await.unwrap();
    c.close().await.unwrap();

    // Ordinary SQL sessions use the same settings.
    let client = ConnConfig::parse(&conn(port, "localhost", "verify-full", Some(&pki.ca)))
        .unwrap()
        .connect_sql()
        .await
        .expect("SQL session with verify-full");
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));

    // verify-full by IP: the certificate names only localhost.
    let err = repl(&conn(port, "127.0.0.1", "verify-full", Some(&pki.ca)))
        .await
        .err()
        .expect("name mismatch is refused");
    assert!(
        matches!(err, ReplicationError::TlsHandshake { .. }),
        "{err}"
    );
    // verify-ca does not check the name.
    repl(&conn(port, "127.0.0.1", "verify-ca", Some(&pki.ca)))
        .await
        .expect("verify-ca by IP");
    // A certificate from an untrusted CA is refused by both verify modes.
    for mode in ["verify-ca", "verify-full"] {
        let err = repl(&conn(port, "localhost", mode, Some(&pki.other_ca)))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, ReplicationError::TlsHandshake { .. }),
            "{mode}: {err}"
        );
    }
    // require: encrypted, not verified (libpq's meaning).
    repl(&conn(port, "localhost", "require", None))
        .await
        .expect("require");
    // disable: the server's pg_hba refuses plaintext.
    let err = repl(&conn(port, "localhost", "disable", None))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Some("28000"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn require_fails_clearly_when_the_server_has_no_tls() {
    let cluster = Cluster::builder()
        .listen_tcp(true)
        .start()
        .expect("cluster");
    let err = repl(&conn(cluster.port(), "127.0.0.1", "require", None))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, ReplicationError::TlsUnavailable { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("sslmode=require"), "{err}");
    // prefer falls back to plaintext.
    repl(&conn(cluster.port(), "127.0.0.1", "prefer", None))
        .await
        .expect("prefer without TLS on the server");
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_server_names_the_target() {
    // A port nothing listens on (the harness picks free ports; this one is
    // reserved for us by binding and dropping).
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = repl(&format!(
        "host=127.0.0.1 port={port} user=x sslmode=disable"
    ))
    .await
    .err()
    .unwrap();
    assert!(matches!(err, ReplicationError::Connect { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(err.is_closed(), "worth a reconnect");
}
