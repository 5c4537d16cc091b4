//! Operational endpoints and the API description.

use crate::harness::TestApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_every_public_endpoint_with_its_errors() {
    let app = TestApp::serve().await;
    let response = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("openapi");
    assert_eq!(response.status(), 200);
    let doc: serde_json::Value = response.json().await.expect("JSON");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/webhooks/veriff/decision", "post"),
        ("/webhooks/veriff/event", "post"),
        ("/v1/auth/register/verification", "post"),
        ("/v1/auth/register/status", "get"),
        ("/v1/user/verification", "get"),
        ("/v1/user/verification/status", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} documented"
        );
    }
    let register = &paths["/v1/auth/register/verification"]["post"]["responses"];
    for status in ["200", "400", "403", "404", "409", "429", "498", "500"] {
        assert!(
            register.get(status).is_some(),
            "register documents {status}"
        );
    }
    assert!(doc["components"]["schemas"]["Problem"]["properties"]["code"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_are_problem_documents() {
    let app = TestApp::serve().await;
    let response = app
        .http
        .get(app.url("/no/such/thing"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 404);
    let problem: serde_json::Value = response.json().await.expect("problem");
    assert_eq!(problem["code"], "NOT_FOUND");
    let health = app
        .http
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_process_serves_its_readiness_and_metrics_but_no_api() {
    let app = TestApp::run().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let mut worker = crate::harness::process::kyc_command(&app.config)
        .arg("worker")
        .env("KYC_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kyc worker starts");
    let base = format!("http://127.0.0.1:{port}");
    let ready = crate::harness::eventually(
        std::time::Duration::from_secs(30),
        "the worker to be ready",
        || async {
            let r = app.http.get(format!("{base}/readyz")).send().await.ok()?;
            r.status().is_success().then_some(())
        },
    );
    ready.await;
    // Queue depths are sampled as soon as the worker is connected.
    let main_queue = format!(
        "kyc_queue_depth{{queue=\"{}.webhooks\"}}",
        app.config.queue_prefix
    );
    crate::harness::eventually(
        std::time::Duration::from_secs(10),
        "queue depth metrics",
        || async {
            let text = app
                .http
                .get(format!("{base}/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            text.contains(&main_queue).then_some(())
        },
    )
    .await;
    let webhook = app
        .http
        .post(format!("{base}/webhooks/veriff/decision"))
        .body("{}")
        .send()
        .await
        .expect("request");
    assert_eq!(webhook.status(), 404, "a worker does not receive webhooks");
    worker.kill().expect("stop the worker");
    worker.wait().expect("reap the worker");
}
