//! `kyc clients create/list/revoke` (DESIGN.md section 9) through the real binary, against
//! the test's database and a running app: the key is printed once, stored only as its SHA-256,
//! works against the registration API until it is revoked, and is never listed.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use uuid::Uuid;

use kyc::storage::registration::key_digest;

use crate::harness::fake_veriff::FakeVeriff;
use crate::harness::registration::{Client, problem};
use crate::harness::{TestApp, TestDb, eventually};

/// `kyc clients …` with only `KYC_DATABASE_URL` set (no other `KYC_…` variable of the test
/// process leaks in), run off the async workers.
async fn kyc_clients(database_url: &str, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kyc"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("KYC_") {
            command.env_remove(name);
        }
    }
    command
        .arg("clients")
        .args(args)
        .env("KYC_DATABASE_URL", database_url)
        .stdin(Stdio::null());
    tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the command's thread")
        .expect("the kyc binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("UTF-8 output")
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).expect("UTF-8 output")
}

fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}): {}",
        output.status,
        stderr(output)
    );
}

/// Runs `kyc clients create` and reads the id and the key from what it printed.
async fn create(database_url: &str, args: &[&str]) -> (Client, String) {
    let mut all = vec!["create"];
    all.extend_from_slice(args);
    let output = kyc_clients(database_url, &all).await;
    assert_success(&output, "kyc clients create");
    let printed = stdout(&output);
    let id = printed
        .lines()
        .find_map(|l| l.strip_prefix("client ")?.split_whitespace().next())
        .and_then(|id| Uuid::parse_str(id).ok())
        .unwrap_or_else(|| panic!("the client id is printed: {printed}"));
    let keys: Vec<&str> = printed
        .lines()
        .filter_map(|l| l.strip_prefix("key (shown once, store it now): "))
        .collect();
    assert_eq!(keys.len(), 1, "the key is printed once: {printed}");
    let key = keys[0].trim().to_owned();
    assert!(key.len() >= 32, "a long random key: {key}");
    assert_eq!(
        printed.matches(key.as_str()).count(),
        1,
        "the key appears once: {printed}"
    );
    assert!(
        !stderr(&output).contains(&key),
        "the key is not logged: {}",
        stderr(&output)
    );
    (Client { id, key }, printed)
}

/// `kyc clients list --json`: one JSON object per line.
async fn list_json(database_url: &str) -> (Vec<serde_json::Value>, String) {
    let output = kyc_clients(database_url, &["list", "--json"]).await;
    assert_success(&output, "kyc clients list --json");
    let printed = stdout(&output);
    let clients = printed
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    (clients, printed)
}

fn listed(clients: &[serde_json::Value], id: Uuid) -> &serde_json::Value {
    clients
        .iter()
        .find(|c| c["id"] == id.to_string())
        .unwrap_or_else(|| panic!("{id} is listed: {clients:?}"))
}

/// The stored row: (name, key_sha256, us_enabled, revoked).
async fn stored(db: &TestDb, id: Uuid) -> (Option<String>, Vec<u8>, bool, bool) {
    let row = db
        .client()
        .await
        .query_one(
            "SELECT name, key_sha256, us_enabled, revoked_at IS NOT NULL FROM api_clients WHERE id = $1",
            &[&id],
        )
        .await
        .expect("the client's row");
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_key_works_until_it_is_revoked_and_is_never_listed() {
    let eu = FakeVeriff::start().await;
    let app = TestApp::run_with_veriff(&eu, None, &["--client-rate-limit", "0"]).await;
    let url = app.db().url.clone();

    let (client, _) = create(&url, &["--name", "Mobile app"]).await;
    // Only the key's SHA-256 is stored.
    let (name, digest, us_enabled, revoked) = stored(app.db(), client.id).await;
    assert_eq!(name.as_deref(), Some("Mobile app"));
    assert_eq!(digest, key_digest(&client.key), "the key's SHA-256");
    assert!(!us_enabled && !revoked);
    let holding_the_key: i64 = app
        .db()
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM api_clients c WHERE strpos(row_to_json(c)::text, $1) > 0",
            &[&client.key],
        )
        .await
        .expect("search the clients' rows")
        .get(0);
    assert_eq!(holding_the_key, 0, "the key itself is not stored");

    // The key works against the registration API of a running app.
    let onboarding = app.seed_ready_onboarding(&client).await;
    let answer = app.session(&client.key, onboarding).await;
    assert!(!answer.reused);
    assert!(app.session(&client.key, onboarding).await.reused);

    // Listed, without the key.
    let (clients, printed) = list_json(&url).await;
    let entry = listed(&clients, client.id);
    let mut fields: Vec<&str> = entry
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        ["created_at", "id", "name", "revoked_at", "us_enabled"],
        "{entry}"
    );
    assert_eq!(entry["name"], "Mobile app");
    assert_eq!(entry["us_enabled"], false);
    assert!(entry["created_at"].is_string(), "{entry}");
    assert!(entry["revoked_at"].is_null(), "{entry}");
    let table = kyc_clients(&url, &["list"]).await;
    assert_success(&table, "kyc clients list");
    let table = stdout(&table);
    assert!(table.contains(&client.id.to_string()), "{table}");
    let hex_digest = hex::encode(key_digest(&client.key));
    for output in [&printed, &table] {
        assert!(
            !output.contains(&client.key),
            "the key is not listed: {output}"
        );
        assert!(!output.contains(&hex_digest), "nor its digest: {output}");
    }

    // Revoked: refused within seconds, though the key is cached by the app.
    let revoke = kyc_clients(&url, &["revoke", &client.id.to_string()]).await;
    assert_success(&revoke, "kyc clients revoke");
    assert!(stdout(&revoke).contains("revoked"), "{}", stdout(&revoke));
    let refused = eventually(
        Duration::from_secs(8),
        "the revoked key to be refused",
        || async {
            let response = app.register(&client.key, onboarding).await;
            (response.status() != 200).then_some(response)
        },
    )
    .await;
    assert_eq!(problem(refused, 498).await, "INVALID_CLIENT_KEY");
    let (clients, _) = list_json(&url).await;
    let revoked_at = listed(&clients, client.id)["revoked_at"].clone();
    assert!(revoked_at.is_string(), "listed as revoked: {revoked_at}");

    // Revoking again succeeds and keeps the first time.
    let again = kyc_clients(&url, &["revoke", &client.id.to_string()]).await;
    assert_success(&again, "revoking twice");
    let (clients, _) = list_json(&url).await;
    assert_eq!(listed(&clients, client.id)["revoked_at"], revoked_at);
    assert_eq!(eu.session_requests().len(), 1);
    drop(app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_created_with_us_may_use_the_us_environment() {
    let eu = FakeVeriff::start().await;
    let us = FakeVeriff::start().await;
    let app = TestApp::run_with_veriff(&eu, Some(&us), &[]).await;
    let url = app.db().url.clone();
    let (with_us, printed) = create(&url, &["--name", "US app", "--us"]).await;
    assert!(printed.contains("US enabled"), "{printed}");
    let (without_us, _) = create(&url, &["--name", "EU app"]).await;
    assert_ne!(with_us.key, without_us.key, "every client has its own key");

    let (clients, _) = list_json(&url).await;
    assert_eq!(listed(&clients, with_us.id)["us_enabled"], true);
    assert_eq!(listed(&clients, without_us.id)["us_enabled"], false);

    let onboarding = app.seed_ready_onboarding(&with_us).await;
    let answer = crate::harness::registration::session_answer(
        app.register_us(&with_us.key, onboarding).await,
    )
    .await;
    assert_eq!(answer.session_id, us.created()[0].id, "a US session");
    let onboarding = app.seed_ready_onboarding(&without_us).await;
    let refused = app.register_us(&without_us.key, onboarding).await;
    assert_eq!(problem(refused, 400).await, "US_ENV_NOT_AVAILABLE");
    assert!(eu.session_requests().is_empty());
    drop(app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_unknown_or_malformed_id_fails_with_a_message() {
    let db = TestDb::create().await;
    let (client, _) = create(&db.url, &["--name", "Kept"]).await;

    let unknown = Uuid::new_v4();
    let output = kyc_clients(&db.url, &["revoke", &unknown.to_string()]).await;
    assert!(!output.status.success(), "exits non-zero");
    let message = stderr(&output);
    assert!(
        message.contains(&format!("no client {unknown}")),
        "says which client does not exist: {message}"
    );
    assert!(!stdout(&output).contains("revoked"), "{}", stdout(&output));

    let output = kyc_clients(&db.url, &["revoke", "not-a-uuid"]).await;
    assert!(!output.status.success(), "exits non-zero");
    let message = stderr(&output);
    assert!(
        message.contains("not-a-uuid"),
        "names the bad id: {message}"
    );

    // Nothing else was revoked.
    let (.., revoked) = stored(&db, client.id).await;
    assert!(!revoked, "the existing client is untouched");
    let (clients, _) = list_json(&db.url).await;
    assert_eq!(clients.len(), 1);
    assert!(listed(&clients, client.id)["revoked_at"].is_null());
}
