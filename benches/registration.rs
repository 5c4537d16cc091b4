//! Registration API figures: requests/s and latency of the status endpoint (a valid client
//! key, no change) and of the session endpoint on its reuse path, at 64 connections, each
//! connection polling its own onboarding. The rate limit is turned off: one client polling
//! thousands of times a second is the load, not the abuse the limit is for.
//!
//! `cargo bench --bench registration` (BENCH_REQUESTS, BENCH_CONCURRENCY override the defaults).

mod common;

use std::sync::Arc;

use common::{Deployment, env_or, load, wait_ready};
use tokio_postgres::NoTls;
use uuid::Uuid;

#[tokio::main]
async fn main() {
    let requests: usize = env_or("BENCH_REQUESTS", 50_000);
    let concurrency: usize = env_or("BENCH_CONCURRENCY", 64);
    let deployment = Deployment::new("registration");
    deployment.migrate().await;
    // --dev mounts the Veriff stand-in, so sessions are created locally.
    let (server, base) =
        deployment.spawn_with(&["--dev", "serve"], &[("KYC_CLIENT_RATE_LIMIT", "0")]);
    wait_ready(&base).await;

    let (db, connection) = tokio_postgres::connect(&deployment.database_url(), NoTls)
        .await
        .expect("db");
    tokio::spawn(connection);
    let pool = kyc::storage::pool(&deployment.database_url(), 1).expect("pool");
    let (client_id, key) =
        kyc::storage::clients::create(&pool.get().await.expect("connection"), "bench", false)
            .await
            .expect("client");
    let onboardings: Vec<Uuid> = (0..concurrency).map(|_| Uuid::new_v4()).collect();
    db.execute(
        "INSERT INTO onboardings (id, client_id, phone_verified_at, expires_at)
         SELECT unnest($1::uuid[]), $2, now(), now() + interval '1 day'",
        &[&onboardings, &client_id],
    )
    .await
    .expect("onboardings");

    let http = kyc::tls::client_builder().build().expect("client");
    for onboarding in &onboardings {
        let created = http
            .post(format!("{base}/v1/auth/register/verification"))
            .header("x-client-key", &key)
            .json(&serde_json::json!({ "onboardingId": onboarding }))
            .send()
            .await
            .expect("session request");
        assert_eq!(created.status(), 200, "the first session is created");
    }

    let key = Arc::new(key);
    for endpoint in [Endpoint::Status, Endpoint::Reuse] {
        let (key, base, onboardings) = (Arc::clone(&key), base.clone(), onboardings.clone());
        // Each connection polls its own onboarding.
        let report = load(concurrency, requests, move |client, connection, _| {
            let onboarding = onboardings[connection];
            let request = match endpoint {
                Endpoint::Status => client.get(format!(
                    "{base}/v1/auth/register/status?onboardingId={onboarding}"
                )),
                Endpoint::Reuse => client
                    .post(format!("{base}/v1/auth/register/verification"))
                    .json(&serde_json::json!({ "onboardingId": onboarding })),
            };
            request.header("x-client-key", key.as_str())
        })
        .await;
        report.print(
            &format!(
                "registration {} ({concurrency} connections)",
                endpoint.name()
            ),
            "requests",
        );
    }
    drop((db, server));
    deployment.clean_up().await;
}

#[derive(Clone, Copy)]
enum Endpoint {
    Status,
    Reuse,
}

impl Endpoint {
    fn name(self) -> &'static str {
        match self {
            Endpoint::Status => "GET /v1/auth/register/status",
            Endpoint::Reuse => "POST /v1/auth/register/verification (reuse)",
        }
    }
}
