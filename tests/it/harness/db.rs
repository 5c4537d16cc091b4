//! A database per test, cloned from a template that is migrated once per migration set,
//! and dropped when the test ends.

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

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

    /// The same database reached through a proxy on `port` (see `proxy::Proxy`).
    pub fn url_via(&self, port: u16) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/{}", self.name)
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .expect("connects to the test database");
        tokio::spawn(connection);
        client
    }

    /// A connection that `LISTEN`s on `channel` and hands over each payload in order.
    pub async fn listen(&self, channel: &str) -> Listener {
        let (client, mut connection) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .expect("listener connects to the test database");
        let (tx, payloads) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(|cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let AsyncMessage::Notification(n) = message
                    && tx.send(n.payload().to_owned()).is_err()
                {
                    break;
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {channel}"))
            .await
            .expect("LISTEN");
        Listener {
            channel: channel.to_owned(),
            client,
            payloads,
        }
    }
}

/// Notifications of one channel, in the order PostgreSQL delivered them (commit order).
pub struct Listener {
    channel: String,
    client: tokio_postgres::Client,
    payloads: mpsc::UnboundedReceiver<String>,
}

impl Listener {
    /// The next payload, failing the test if none comes within 20 s.
    pub async fn next(&mut self) -> String {
        tokio::time::timeout(std::time::Duration::from_secs(20), self.payloads.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for a NOTIFY on {}", self.channel))
            .expect("the listener connection is alive")
    }

    /// Sends a marker on the channel from this connection. Notifications arrive in commit
    /// order, so once the marker is received, nothing committed before it is still on its way:
    /// `assert_eq!(listener.next().await, marker)` proves that nothing was announced before.
    pub async fn mark(&self, marker: &str) {
        self.client
            .execute("SELECT pg_notify($1, $2)", &[&self.channel, &marker])
            .await
            .expect("NOTIFY marker");
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
