//! Session URLs carry access tokens: the real binary must never write one to its logs,
//! even at debug level, while it creates, stores and hands them out.

use std::io::Read;
use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use crate::harness::fake_veriff::FakeVeriff;
use crate::harness::process::kyc_command;
use crate::harness::registration::OnboardingSpec;
use crate::harness::{TestApp, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_urls_never_reach_the_logs() {
    let veriff = FakeVeriff::start().await;
    let app = TestApp::run_with_veriff(&veriff, None, &[]).await;
    let client = app.seed_client(false).await;
    let onboarding = app
        .seed_onboarding(&client, OnboardingSpec::default())
        .await;

    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let log = tempfile_path();
    let mut serve = kyc_command(&app.config)
        .arg("serve")
        .env("KYC_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("KYC_VERIFF_BASE_URL", &veriff.base_url)
        .env("KYC_VERIFF_CALLBACK_URL", "https://app.example/verified")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("kyc serve starts");

    let base = format!("http://127.0.0.1:{port}");
    eventually(Duration::from_secs(30), "kyc serve to be ready", || async {
        let r = app.http.get(format!("{base}/readyz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    let mut urls = Vec::new();
    for _ in 0..2 {
        let answer: serde_json::Value = app
            .http
            .post(format!("{base}/v1/auth/register/verification"))
            .header("x-client-key", &client.key)
            .json(&serde_json::json!({ "onboardingId": onboarding }))
            .send()
            .await
            .expect("session request")
            .json()
            .await
            .expect("session answer");
        urls.push(answer["url"].as_str().expect("a url").to_owned());
    }
    assert_eq!(urls[0], urls[1], "the second answer reuses the session");

    serve.kill().expect("stop kyc serve");
    serve.wait().expect("reap kyc serve");
    let mut logged = String::new();
    std::fs::File::open(&log)
        .and_then(|mut f| f.read_to_string(&mut logged))
        .expect("read the log");
    let _ = std::fs::remove_file(&log);
    assert!(
        logged.contains("Veriff session created"),
        "the log was captured: {logged}"
    );
    let token = urls[0].rsplit('/').next().expect("a token in the url");
    assert!(!logged.contains(&urls[0]), "the session URL is in the log");
    assert!(
        !logged.contains(token),
        "the session URL's token is in the log"
    );
}

fn tempfile_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("kyc-log-{}.txt", uuid::Uuid::new_v4().simple()))
}
