//! A database per test, cloned from a template that is migrated once per migration set,
//! and dropped when the test ends.

use tokio_postgres::NoTls;

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Serialises template creation across test processes.
const TEMPLATE_LOCK: i64 = 0x006b_7963_7465_6d70;

pub struct TestDb {
    pub name: String,
    pub url: String,
}

fn url_of(name: &str) -> String {
    format!("postgres://postgres@127.0.0.1:5432/{name}")
}

async fn admin() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(ADMIN_URL, NoTls)
        .await
        .expect("test connects to PostgreSQL");
    tokio::spawn(connection);
    client
}

async fn template() -> String {
    let name = format!("kyc_template_{}", kyc::storage::migrate::fingerprint());
    let client = admin().await;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&TEMPLATE_LOCK])
        .await
        .expect("template lock");
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .expect("pg_database")
        .is_some();
    if !exists {
        // Migrate under another name and rename, so a half-built template is never used.
        let building = format!("{name}_building");
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"))
            .await
            .expect("drop stale template");
        kyc::storage::migrate::run(&url_of(&building))
            .await
            .expect("template migrates");
        client
            .batch_execute(&format!("ALTER DATABASE {building} RENAME TO {name}"))
            .await
            .expect("template renamed");
    }
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&TEMPLATE_LOCK])
        .await
        .expect("template unlock");
    name
}

impl TestDb {
    pub async fn create() -> Self {
        let template = template().await;
        let name = format!("kyc_test_{}", uuid::Uuid::new_v4().simple());
        admin()
            .await
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .await
            .expect("test database from template");
        Self {
            url: url_of(&name),
            name,
        }
    }

    /// A fresh name whose database does not exist yet (dropped afterwards all the same).
    pub fn reserve() -> Self {
        let name = format!("kyc_test_{}", uuid::Uuid::new_v4().simple());
        Self {
            url: url_of(&name),
            name,
        }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .expect("connects to the test database");
        tokio::spawn(connection);
        client
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let dropper = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok((client, connection)) = tokio_postgres::connect(ADMIN_URL, NoTls).await {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        });
        let _ = dropper.join();
    }
}
