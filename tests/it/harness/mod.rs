//! Test harness: start the real service on port 0 with its own queue prefix (and database),
//! talk to it over HTTP, and look at what it left in the broker.

pub mod amqp;
pub mod db;
pub mod fake_veriff;
pub mod ledger;
pub mod process;
pub mod proxy;
pub mod rabbit;
pub mod registration;
pub mod seed;
pub mod spawned;

use std::future::Future;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use clap::Parser;
use kyc::app::{Roles, Service};
use kyc::config::Config;

pub use amqp::QueuePeek;
pub use db::TestDb;
use proxy::Proxy;

pub const EU_API_KEY: &str = "eu-api-key";
pub const EU_SECRET: &str = "test-shared-secret";
pub const US_API_KEY: &str = "us-api-key";
pub const US_SECRET: &str = "us-shared-secret";
pub const JWT_SECRET: &str = "test-jwt-secret";
pub const JWT_AUDIENCE: &str = "kyc-test";
pub const URL_KEY: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[derive(Parser)]
struct ConfigOnly {
    #[command(flatten)]
    config: Config,
}

/// A configuration for one test: its own prefix, test secrets, short retry delays.
pub fn test_config(prefix: &str, amqp_url: &str, database_url: &str, extra: &[&str]) -> Config {
    let mut args = vec![
        "kyc",
        "--queue-prefix",
        prefix,
        "--amqp-url",
        amqp_url,
        "--database-url",
        database_url,
        "--veriff-api-key",
        EU_API_KEY,
        "--veriff-shared-secrets",
        EU_SECRET,
        "--veriff-us-api-key",
        US_API_KEY,
        "--veriff-us-shared-secrets",
        US_SECRET,
        "--jwt-secret",
        JWT_SECRET,
        "--jwt-audience",
        JWT_AUDIENCE,
        "--veriff-callback-url",
        "https://app.example/verified",
        "--url-encryption-key",
        URL_KEY,
        "--retry-delays",
        "1s,2s",
    ];
    args.extend_from_slice(extra);
    match ConfigOnly::try_parse_from(args) {
        Ok(c) => c.config,
        Err(e) => panic!("test configuration: {e}"),
    }
}

pub fn unique_prefix() -> String {
    format!("kyctest-{}", uuid::Uuid::new_v4().simple())
}

pub const ARCHIVE_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// A deployment for kyc processes the test starts as children: a database and a queue prefix
/// of its own, and a guard that deletes the queues. Bind it before the processes, so that it
/// drops after them and nothing declares the queues again.
pub async fn child_deployment() -> (TestDb, Config, amqp::DeleteOnDrop) {
    kyc::tls::install();
    let db = TestDb::create().await;
    let config = test_config(
        &unique_prefix(),
        AMQP_URL,
        &db.url,
        &["--archive-encryption-key", ARCHIVE_KEY],
    );
    let queues = amqp::DeleteOnDrop(config.topology());
    (db, config, queues)
}

/// A running kyc on port 0 with a queue prefix (and, with the worker, a database) of its own.
pub struct TestApp {
    pub base_url: String,
    pub config: Config,
    pub http: reqwest::Client,
    pub db: Option<TestDb>,
    service: Option<Service>,
    /// Whether this app created the deployment (its queue prefix) and deletes it when dropped;
    /// other processes joined with `start_with` leave it to the owner.
    owner: bool,
}

/// What a test starts: the HTTP side, the worker, or both; where the broker is; extra flags.
#[derive(Clone, Copy)]
pub struct Spawn<'a> {
    pub http: bool,
    pub worker: bool,
    /// A database of its own even without the worker (e.g. the worker runs as a subprocess).
    pub database: bool,
    /// The service reaches PostgreSQL through this proxy (the test itself goes direct).
    pub database_via: Option<&'a Proxy>,
    /// The service's KYC_DATABASE_URL for its database, when not the plain one (e.g. TLS).
    pub database_url: Option<fn(&TestDb) -> String>,
    pub amqp_url: &'a str,
    pub args: &'a [&'a str],
    /// `kyc run --dev`: the local Veriff stand-in at /dev/veriff (the default Veriff base URL
    /// then points at it).
    pub dev: bool,
}

impl Default for Spawn<'_> {
    fn default() -> Self {
        Self {
            http: true,
            worker: false,
            database: false,
            database_via: None,
            database_url: None,
            amqp_url: AMQP_URL,
            args: &[],
            dev: false,
        }
    }
}

impl TestApp {
    pub async fn start(spawn: Spawn<'_>) -> Self {
        init_logs();
        kyc::tls::install();
        let db = match spawn.worker || spawn.database {
            true => Some(TestDb::create().await),
            false => None,
        };
        let database_url = match (&db, spawn.database_via, spawn.database_url) {
            (Some(db), _, Some(url_of)) => url_of(db),
            (Some(db), Some(proxy), None) => db.url_via(proxy.port),
            (Some(db), None, None) => db.url.clone(),
            (None, _, _) => "postgres://postgres@127.0.0.1:5432/unused".to_owned(),
        };
        let mut args = vec!["--archive-encryption-key", ARCHIVE_KEY];
        args.extend_from_slice(spawn.args);
        let mut app = Self::start_with(
            spawn,
            test_config(&unique_prefix(), spawn.amqp_url, &database_url, &args),
            db,
        )
        .await;
        app.owner = true;
        app
    }

    /// Starts another process of the same deployment (same database and queues), e.g. a
    /// second worker. The app that created the deployment keeps deleting its queues.
    pub async fn start_with(spawn: Spawn<'_>, config: Config, db: Option<TestDb>) -> Self {
        let http = spawn
            .http
            .then(|| TcpListener::bind("127.0.0.1:0").expect("bind port 0"));
        let roles = Roles {
            http,
            ops: None,
            api: spawn.http,
            worker: spawn.worker,
        };
        let config = Config {
            dev: spawn.dev,
            ..config
        };
        let service = Service::start(&config, roles).expect("service starts");
        let base_url = service
            .http_addr()
            .map(|a| format!("http://{a}"))
            .unwrap_or_default();
        let app = Self {
            base_url,
            config,
            http: reqwest::Client::new(),
            db,
            service: Some(service),
            owner: false,
        };
        if spawn.http {
            app.wait_ready().await;
        }
        app
    }

    /// Serves with the broker reached at `amqp_url` (a proxy in fault tests).
    pub async fn serve_via(amqp_url: &str) -> Self {
        Self::start(Spawn {
            amqp_url,
            ..Spawn::default()
        })
        .await
    }

    pub async fn serve() -> Self {
        Self::start(Spawn::default()).await
    }

    /// HTTP and the worker, like `kyc run`.
    pub async fn run() -> Self {
        Self::start(Spawn {
            worker: true,
            ..Spawn::default()
        })
        .await
    }

    /// HTTP and the worker, with extra flags (e.g. `--worker-concurrency`).
    pub async fn run_with(args: &[&str]) -> Self {
        Self::start(Spawn {
            worker: true,
            args,
            ..Spawn::default()
        })
        .await
    }

    pub fn db(&self) -> &TestDb {
        self.db.as_ref().expect("this app has a database")
    }

    /// Stops the service (gracefully) but keeps its database and queues for inspection.
    pub async fn stop(&mut self) {
        if let Some(service) = self.service.take() {
            service.shutdown().await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub async fn wait_ready(&self) {
        eventually(
            Duration::from_secs(20),
            "the service to become ready",
            || async {
                let r = self.http.get(self.url("/readyz")).send().await.ok()?;
                r.status().is_success().then_some(())
            },
        )
        .await;
    }

    /// POSTs a webhook body to `/webhooks/veriff/{kind}` with the given headers.
    pub async fn post_webhook(
        &self,
        kind: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(self.url(&format!("/webhooks/veriff/{kind}")))
            .header("content-type", "application/json")
            .body(body.to_vec());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("request reaches the server")
    }

    pub fn peek(&self) -> QueuePeek {
        QueuePeek::new(self.config.topology())
    }

    /// The Prometheus text of `/metrics` (HTTP and worker share one registry per process).
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics endpoint answers")
            .text()
            .await
            .expect("metrics text")
    }

    /// `kyc_worker_messages_total{outcome, reason}`, 0 while the series does not exist.
    pub async fn worker_count(&self, outcome: &str, reason: &str) -> u64 {
        let series =
            format!(r#"kyc_worker_messages_total{{outcome="{outcome}",reason="{reason}"}} "#);
        self.metrics()
            .await
            .lines()
            .find_map(|line| line.strip_prefix(&series))
            .map_or(0, |value| value.trim().parse().expect("a counter value"))
    }

    /// Waits until the worker counted at least `at_least` messages with this outcome.
    pub async fn wait_worker_count(&self, outcome: &str, reason: &str, at_least: u64) -> u64 {
        eventually(
            Duration::from_secs(20),
            &format!("{at_least} worker outcomes {outcome}/{reason}"),
            || async {
                let n = self.worker_count(outcome, reason).await;
                (n >= at_least).then_some(n)
            },
        )
        .await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Idle keep-alive connections would hold up the graceful shutdown.
        drop(std::mem::take(&mut self.http));
        let service = self.service.take();
        let topology = self.owner.then(|| self.config.topology());
        // Drop cannot be async: clean up on a thread of its own, even after a panic.
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Some(service) = service {
                    service.shutdown().await;
                }
                if let Some(topology) = topology {
                    amqp::delete_topology(&topology).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// The service's logs go through the test writer: shown for a failing test, captured otherwise.
fn init_logs() {
    let base = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    // As in the service: lapin's log of returned messages carries bodies (personal data).
    let filter =
        tracing_subscriber::EnvFilter::new(format!("{base},{}", kyc::telemetry::REDACTIONS));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Polls `check` until it returns `Some`, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A Veriff fixture's bytes and its X-HMAC-SIGNATURE from SIGNATURES.txt.
pub fn fixture(name: &str) -> (Vec<u8>, String) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/veriff");
    let body = std::fs::read(format!("{dir}/{name}")).expect("fixture exists");
    let signatures = std::fs::read_to_string(format!("{dir}/SIGNATURES.txt")).expect("signatures");
    let signature = signatures
        .lines()
        .find_map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            (cols.first() == Some(&name)).then(|| cols[1].to_owned())
        })
        .expect("fixture has a signature");
    (body, signature)
}

pub const FIXTURES: &[&str] = &[
    "event-started.json",
    "event-submitted.json",
    "decision-approved.json",
    "decision-declined.json",
    "decision-resubmission-requested.json",
    "decision-expired.json",
    "decision-abandoned.json",
];
