//! TLS to PostgreSQL as KYC_DATABASE_URL asks for it (`sslmode`, `sslrootcert`), against this
//! machine's PostgreSQL, which has `ssl = on` with Debian's snakeoil certificate (issued for
//! `localhost`, self-signed).

use kyc::storage::Database;

use kyc::veriff::integration::Integration;

use crate::harness::seed::decision;
use crate::harness::{Spawn, TestApp, TestDb, eventually};

const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

/// Whether the connection `url` describes is encrypted (PostgreSQL's own view of it).
async fn encrypted(url: &str) -> Result<bool, String> {
    let database = Database::from_url(url).map_err(|e| e.to_string())?;
    let client = database
        .connect()
        .await
        .map_err(|e| kyc::error::chain(&e).to_string())?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

/// A CA nobody signed the server's certificate with.
fn unrelated_ca() -> tempfile_like::Path {
    let dir = tempfile_like::dir("ca");
    let key = dir.join("ca.key");
    let cert = dir.join("ca.pem");
    let status = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=unrelated test CA", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success(), "openssl made a CA");
    tempfile_like::Path { dir, file: cert }
}

mod tempfile_like {
    /// A file in a folder of its own, removed with it.
    pub struct Path {
        pub dir: std::path::PathBuf,
        pub file: std::path::PathBuf,
    }

    impl Drop for Path {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    pub fn dir(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("kyc-{name}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a temporary folder");
        dir
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sslmode_connects_as_libpq_would() {
    let db = TestDb::create().await;
    let at =
        |host: &str, query: &str| format!("postgres://postgres@{host}:5432/{}?{query}", db.name);

    assert_eq!(
        encrypted(&at("127.0.0.1", "sslmode=disable")).await,
        Ok(false)
    );
    assert_eq!(
        encrypted(&at("127.0.0.1", "sslmode=prefer")).await,
        Ok(true)
    );
    assert_eq!(
        encrypted(&at("127.0.0.1", "sslmode=require")).await,
        Ok(true)
    );
    // The snakeoil certificate as root: the chain holds, whatever name was connected to.
    let verify_ca = format!("sslmode=verify-ca&sslrootcert={SNAKEOIL}");
    assert_eq!(encrypted(&at("127.0.0.1", &verify_ca)).await, Ok(true));
    // verify-full checks the name as well: the certificate is for localhost only.
    let verify_full = format!("sslmode=verify-full&sslrootcert={SNAKEOIL}");
    assert_eq!(encrypted(&at("localhost", &verify_full)).await, Ok(true));
    let wrong_name = encrypted(&at("127.0.0.1", &verify_full)).await;
    assert!(
        wrong_name
            .as_ref()
            .is_err_and(|e| e.contains("TLS") || e.contains("certificate")),
        "verify-full to an address the certificate does not name: {wrong_name:?}"
    );
    // A root that did not sign the server's certificate is refused, by verify-ca and by
    // require with a root (libpq's rule).
    let other = unrelated_ca();
    for mode in ["verify-ca", "require"] {
        let url = at(
            "127.0.0.1",
            &format!("sslmode={mode}&sslrootcert={}", other.file.display()),
        );
        let refused = encrypted(&url).await;
        assert!(
            refused.is_err(),
            "{mode} with an unrelated root: {refused:?}"
        );
    }
    // The key=value form takes the same options.
    let pairs = format!(
        "host=localhost port=5432 user=postgres dbname={} sslmode=verify-full sslrootcert={SNAKEOIL}",
        db.name
    );
    assert_eq!(encrypted(&pairs).await, Ok(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_runs_over_verified_tls() {
    let app = TestApp::start(Spawn {
        worker: true,
        database_url: Some(|db| {
            format!(
                "postgres://postgres@localhost:5432/{}?sslmode=verify-full&sslrootcert={SNAKEOIL}",
                db.name
            )
        }),
        ..Spawn::default()
    })
    .await;
    assert!(app.config.database_url.contains("verify-full"));
    let v = app.seed_verification(Integration::Eu, "s-tls").await;
    let body = decision(
        "s-tls",
        Some("a1"),
        "approved",
        "2030-01-01T10:00:00Z",
        None,
    );
    app.send("decision", &body).await;
    app.wait_row(v, "VERIFIED", "NONE").await;
    // Every connection of the service (the test's own are plain) is encrypted.
    let client = app.db().client().await;
    let (plain, encrypted): (i64, i64) = eventually(
        std::time::Duration::from_secs(5),
        "the service's connections",
        || async {
            let row = client
                .query_one(
                    "SELECT count(*) FILTER (WHERE NOT s.ssl), count(*) FILTER (WHERE s.ssl)
                     FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid
                     WHERE a.datname = $1 AND a.pid <> pg_backend_pid()",
                    &[&app.db().name],
                )
                .await
                .ok()?;
            let counts: (i64, i64) = (row.get(0), row.get(1));
            (counts.1 > 0).then_some(counts)
        },
    )
    .await;
    assert!(encrypted > 0);
    assert!(plain <= 1, "only the test's own plain connections: {plain}");
}
