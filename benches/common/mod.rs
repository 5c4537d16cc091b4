//! Shared by the benchmarks: run the real `kyc` binary as a separate process, and report
//! latency percentiles. The benchmarks print figures; they assert nothing about speed.

#![allow(dead_code)] // each benchmark uses a different part of this module

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SECRET: &str = "bench-shared-secret";
pub const API_KEY: &str = "bench-api-key";
pub const ARCHIVE_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub struct Deployment {
    pub prefix: String,
    pub database: String,
}

impl Deployment {
    pub fn new(name: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self {
            prefix: format!("kycbench-{name}-{}", &id[..8]),
            database: format!("kyc_bench_{}", &id[..12]),
        }
    }

    pub fn database_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.database)
    }

    /// Starts `kyc ROLE` with this deployment's settings; returns it and its HTTP address.
    pub fn spawn(&self, role: &str) -> (KycProcess, String) {
        self.spawn_with(&[role], &[])
    }

    /// Starts `kyc ARGS…` with this deployment's settings and `extra` environment.
    pub fn spawn_with(&self, args: &[&str], extra: &[(&str, &str)]) -> (KycProcess, String) {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(env!("CARGO_BIN_EXE_kyc"))
            .args(args)
            .envs(extra.iter().copied())
            .env("KYC_HTTP_ADDR", &addr)
            .env("KYC_QUEUE_PREFIX", &self.prefix)
            .env("KYC_DATABASE_URL", self.database_url())
            .env("KYC_AMQP_URL", AMQP_URL)
            .env("KYC_VERIFF_API_KEY", API_KEY)
            .env("KYC_VERIFF_SHARED_SECRETS", SECRET)
            .env("KYC_ARCHIVE_ENCRYPTION_KEY", ARCHIVE_KEY)
            .env("KYC_URL_ENCRYPTION_KEY", ARCHIVE_KEY)
            .env("KYC_JWT_SECRET", "bench-jwt-secret")
            .env("KYC_JWT_AUDIENCE", "kyc-bench")
            .env("KYC_VERIFF_CALLBACK_URL", "https://app.example/verified")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("kyc starts");
        (KycProcess(child), format!("http://{addr}"))
    }

    pub async fn migrate(&self) {
        kyc::storage::migrate::run(&self.database_url())
            .await
            .expect("migrates");
    }

    /// Removes the queues and the database.
    pub async fn clean_up(&self) {
        let topology = kyc::queue::Topology::new(
            self.prefix.clone(),
            vec![
                Duration::from_secs(5),
                Duration::from_secs(30),
                Duration::from_secs(120),
                Duration::from_secs(600),
            ],
        );
        if let Ok(conn) =
            lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default()).await
            && let Ok(ch) = conn.create_channel().await
        {
            for q in topology.queues() {
                let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
            }
            let _ = ch
                .exchange_delete(topology.exchange().as_str().into(), Default::default())
                .await;
        }
        if let Ok((client, conn)) = tokio_postgres::connect(
            "postgres://postgres@127.0.0.1:5432/postgres",
            tokio_postgres::NoTls,
        )
        .await
        {
            tokio::spawn(conn);
            let _ = client
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.database
                ))
                .await;
        }
    }
}

/// A child process killed when dropped.
pub struct KycProcess(pub Child);

impl Drop for KycProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn wait_ready(base: &str) {
    let client = kyc::tls::client_builder().build().expect("client");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("kyc at {base} did not become ready");
}

pub fn sign(body: &[u8]) -> String {
    kyc::veriff::signature::sign(&secrecy::SecretString::from(SECRET), body)
}

/// A decision body of about 1.5 KB, shaped like Veriff's.
pub fn decision(session: &str, status: &str, decision_time: &str) -> Vec<u8> {
    serde_json::json!({
        "status": "success",
        "verification": {
            "id": session, "attemptId": format!("{session}-a1"), "vendorData": null,
            "endUserId": "eeeeeeee-0000-4000-8000-000000000001", "status": status, "code": 9001,
            "reason": null, "reasonCode": null, "decisionTime": decision_time,
            "acceptanceTime": "2030-01-01T10:00:00.000Z",
            "person": { "firstName": "TESTY", "lastName": "MCTESTFACE", "dateOfBirth": "1990-01-31",
                "yearOfBirth": "1990", "placeOfBirth": "EXAMPLEVILLE", "gender": "M", "idNumber": null,
                "citizenship": null, "nationality": "EE", "pepSanctionMatch": null,
                "addresses": [{ "fullAddress": "1 Example Street, Exampletown, 00000 EST",
                    "parsedAddress": { "city": "Exampletown", "unit": null, "state": null, "street": "Example Street",
                        "country": "EE", "postcode": "00000", "houseNumber": "1" } }] },
            "document": { "type": "PASSPORT", "number": "TEST0000001", "country": "EE", "validFrom": "2020-02-01",
                "validUntil": "2030-01-31", "placeOfIssue": null, "firstIssue": null, "issueNumber": null, "issuedBy": null },
            "comments": [], "additionalVerifiedData": {},
            "riskLabels": [{ "label": "document_integration_level_crosslinked_with_fraud", "category": "document",
                "sessionIds": ["99999999-9999-4999-8999-999999999999"] }],
            "biometricAuthentication": { "matchedSessionId": null, "matchedSessionVendorData": null },
            "padding": "x".repeat(180)
        },
        "technicalData": { "ip": "192.0.2.10" }
    })
    .to_string()
    .into_bytes()
}

/// p-th percentile of sorted durations, in milliseconds.
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What a load run measured.
pub struct Report {
    /// Latencies of the 200 answers, sorted.
    pub latencies: Vec<Duration>,
    pub failures: usize,
    pub elapsed: Duration,
}

impl Report {
    pub fn print(&self, label: &str, unit: &str) {
        println!(
            "{label}: {} ok, {} failed in {:.2}s = {:.0} {unit}/s; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.latencies.len(),
            self.failures,
            self.elapsed.as_secs_f64(),
            self.latencies.len() as f64 / self.elapsed.as_secs_f64(),
            percentile_ms(&self.latencies, 50.0),
            percentile_ms(&self.latencies, 99.0),
            self.latencies
                .last()
                .copied()
                .unwrap_or_default()
                .as_secs_f64()
                * 1000.0,
        );
    }
}

/// Sends `requests` requests over `connections` keep-alive connections, as fast as they are
/// answered. `request(client, connection, i)` builds the i-th request of a connection's turn.
pub async fn load<F>(connections: usize, requests: usize, request: F) -> Report
where
    F: Fn(&reqwest::Client, usize, usize) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let request = std::sync::Arc::new(request);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for connection in 0..connections {
        let (request, next) = (
            std::sync::Arc::clone(&request),
            std::sync::Arc::clone(&next),
        );
        tasks.push(tokio::spawn(async move {
            let client = kyc::tls::client_builder()
                .pool_max_idle_per_host(1)
                .build()
                .expect("client");
            let (mut latencies, mut failures) = (Vec::new(), 0usize);
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let sent = Instant::now();
                match request(&client, connection, i).send().await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                        latencies.push(sent.elapsed());
                    }
                    _ => failures += 1,
                }
            }
            (latencies, failures)
        }));
    }
    let mut report = Report {
        latencies: Vec::with_capacity(requests),
        failures: 0,
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        let (latencies, failures) = task.await.expect("load task");
        report.latencies.extend(latencies);
        report.failures += failures;
    }
    report.elapsed = started.elapsed();
    report.latencies.sort();
    report
}
