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
