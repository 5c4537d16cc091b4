//! `kyc verification show`: the row, its sessions and every recorded input in order, with the
//! state machine's reason naming the input that decided; the same as JSON; by session,
//! onboarding or user; never personal data or URLs; a row the inputs no longer give is stale.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{PERSONAL, Ran, kyc};
use crate::harness::TestApp;
use crate::harness::fake_veriff::FakeVeriff;
use crate::harness::registration::SessionAnswer;
use crate::harness::seed::{decision, event, time, with_vendor_data};

/// An input as the database holds it, in the words `show` prints.
#[derive(Debug)]
struct Stored {
    id: i64,
    kind: String,
    session: String,
    attempt: Option<String>,
    status: Option<String>,
    decision_time: Option<DateTime<Utc>>,
    code: Option<i32>,
    source: String,
    received: Option<DateTime<Utc>>,
    recorded: DateTime<Utc>,
}

async fn stored_inputs(app: &TestApp, v: Uuid) -> Vec<Stored> {
    app.db()
        .client()
        .await
        .query(
            "SELECT id, kind, session_id, attempt_id, status, decision_time, reason_code, source,
                    received_at, recorded_at
             FROM inputs WHERE verification_id = $1 ORDER BY id",
            &[&v],
        )
        .await
        .expect("inputs")
        .iter()
        .map(|r| Stored {
            id: r.get(0),
            kind: r.get(1),
            session: r.get(2),
            attempt: r.get(3),
            status: r.get(4),
            decision_time: r.get(5),
            code: r.get(6),
            source: r.get(7),
            received: r.get(8),
            recorded: r.get(9),
        })
        .collect()
}

fn short(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "-".to_owned(),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

/// The words of the table line `show` prints for an input (after the `*` mark).
fn expected_words(input: &Stored) -> Vec<String> {
    let line = [
        input.id.to_string(),
        input.kind.clone(),
        input.session.clone(),
        input.attempt.clone().unwrap_or_else(|| "-".into()),
        input.status.clone().unwrap_or_else(|| "-".into()),
        short(input.decision_time),
        input.code.map_or_else(|| "-".into(), |c| c.to_string()),
        input.source.clone(),
        short(input.received),
        short(Some(input.recorded)),
        // A session's creation has no body; every webhook's is kept here.
        if input.kind == "session_created" {
            "-".to_owned()
        } else {
            "kept".to_owned()
        },
    ]
    .join(" ");
    line.split_whitespace().map(str::to_owned).collect()
}

/// Fails the test if the output shows personal data, Veriff's reason text or a URL.
fn assert_discreet(ran: &Ran, what: &str) {
    let all = format!("{}{}", ran.stdout, ran.stderr);
    for secret in PERSONAL.iter().chain(&[
        "reason 102",
        "reason 201",
        "https://",
        "vrftok",
        "veriff.example",
    ]) {
        assert!(!all.contains(secret), "{what} shows {secret}: {ran:#?}");
    }
    assert!(
        !all.to_lowercase().contains("url"),
        "{what} shows a URL field: {ran:#?}"
    );
}

/// `show`'s table, cut into its parts: the header lines, the sessions' lines and the inputs'.
struct Table<'a> {
    head: Vec<&'a str>,
    sessions: Vec<&'a str>,
    inputs: Vec<&'a str>,
}

fn table(ran: &Ran) -> Table<'_> {
    let lines = ran.lines();
    let sessions_at = lines
        .iter()
        .position(|l| l.starts_with("#   SESSION"))
        .expect("the sessions' header");
    let inputs_at = lines
        .iter()
        .position(|l| l.trim_start().starts_with("INPUT "))
        .expect("the inputs' header");
    Table {
        head: lines[..sessions_at].to_vec(),
        sessions: lines[sessions_at + 1..inputs_at]
            .iter()
            .copied()
            .filter(|l| !l.is_empty())
            .collect(),
        inputs: lines[inputs_at + 1..]
            .iter()
            .copied()
            .filter(|l| !l.is_empty() && !l.starts_with("* the input"))
            .collect(),
    }
}

/// One verification with three sessions: the first declined, the second (current) asked for
/// a resubmission, and an adopted orphan declined; events and decisions on each.
struct Story {
    _eu: FakeVeriff,
    app: TestApp,
    v: Uuid,
    onboarding: Uuid,
    user: String,
    first: SessionAnswer,
    second: SessionAnswer,
    orphan: String,
}

async fn story() -> Story {
    let eu = FakeVeriff::start().await;
    let app = TestApp::run_with_veriff(&eu, None, &[]).await;
    let client = app.seed_client(false).await;
    let onboarding = app.seed_ready_onboarding(&client).await;
    let first = app.session(&client.key, onboarding).await;
    let (v, _) = app.verification_of(onboarding).await.expect("verification");
    let user: String = app
        .db()
        .client()
        .await
        .query_one(
            "SELECT user_id FROM onboardings WHERE id = $1",
            &[&onboarding],
        )
        .await
        .expect("onboarding")
        .get(0);

    let s1 = first.session_id.as_str();
    app.send("event", &event(s1, Some("a1"), "submitted")).await;
    app.send(
        "decision",
        &decision(s1, Some("a1"), "declined", &time(1), Some(102)),
    )
    .await;
    app.wait_inputs(v, 3).await;
    app.wait_row(v, "REJECTED", "NEW_SESSION").await;

    let second = app.session(&client.key, onboarding).await;
    assert!(!second.reused);
    let s2 = second.session_id.as_str();
    app.send("event", &event(s2, Some("a1"), "started")).await;
    app.send(
        "decision",
        &decision(
            s2,
            Some("a1"),
            "resubmission_requested",
            &time(2),
            Some(201),
        ),
    )
    .await;
    app.wait_inputs(v, 6).await;
    app.wait_row(v, "REJECTED", "SAME_SESSION").await;

    // A session Veriff has and kyc never committed, found through vendorData.
    let orphan = format!("orphan-{}", Uuid::new_v4().simple());
    let vendor = v.to_string();
    app.send(
        "event",
        &with_vendor_data(&event(&orphan, Some("o1"), "started"), &vendor),
    )
    .await;
    app.wait_inputs(v, 8).await;
    app.send(
        "decision",
        &with_vendor_data(
            &decision(&orphan, Some("o1"), "declined", &time(3), Some(102)),
            &vendor,
        ),
    )
    .await;
    app.wait_inputs(v, 9).await;
    Story {
        _eu: eu,
        app,
        v,
        onboarding,
        user,
        first,
        second,
        orphan,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_lists_the_row_sessions_and_inputs_and_why_by_session_onboarding_or_user() {
    let s = story().await;
    let (app, v) = (&s.app, s.v);
    let (s1, s2) = (s.first.session_id.as_str(), s.second.session_id.as_str());
    assert_eq!(app.row(v).await.0, "REJECTED");
    let inputs = stored_inputs(app, v).await;
    assert_eq!(inputs.len(), 9);
    // The input that decides: the current session's resubmission_requested.
    let decider = inputs
        .iter()
        .find(|i| i.session == s2 && i.kind == "decision")
        .expect("s2's decision");
    let why = format!(
        "REJECTED / SAME_SESSION: session 2 ({s2}) resubmission_requested (201) at \
         2030-01-01T10:02:00Z, 2 of 3 attempts declined"
    );

    let by_session = kyc(app, &["verification", "show", "--session", &s.orphan])
        .await
        .ok();
    let by_onboarding = kyc(
        app,
        &[
            "verification",
            "show",
            "--onboarding",
            &s.onboarding.to_string(),
        ],
    )
    .await
    .ok();
    let by_user = kyc(app, &["verification", "show", "--user", &s.user])
        .await
        .ok();
    assert_eq!(
        by_session.stdout, by_onboarding.stdout,
        "the same verification"
    );
    assert_eq!(by_session.stdout, by_user.stdout, "the same verification");
    assert_discreet(&by_session, "the table");

    let t = table(&by_session);
    let head = t.head.join("\n");
    assert!(
        t.head[0].starts_with(&format!(
            "verification {v}  region EU  onboarding {}  user {}",
            s.onboarding, s.user
        )),
        "{head}"
    );
    assert!(
        t.head[1].starts_with("row           REJECTED / SAME_SESSION  reason code 201  updated "),
        "{head}"
    );
    assert_eq!(t.head[2], format!("why           {why}"), "{head}");
    assert!(!head.contains("kyc recompute"), "not stale: {head}");

    // Every session, oldest first, the current one marked.
    assert_eq!(t.sessions.len(), 3, "{:#?}", t.sessions);
    for (line, (n, id, status, current)) in t.sessions.iter().zip([
        (1, s1, "declined", false),
        (2, s2, "resubmission_requested", true),
        (3, s.orphan.as_str(), "declined", false),
    ]) {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[..3], [n.to_string().as_str(), id, status], "{line}");
        assert_eq!(line.ends_with("(current)"), current, "{line}");
    }

    // Every input in recording order, each with its facts; the decider marked.
    assert_eq!(t.inputs.len(), inputs.len(), "{:#?}", t.inputs);
    for (line, input) in t.inputs.iter().zip(&inputs) {
        let (mark, rest) = line.split_at(1);
        let words: Vec<String> = rest.split_whitespace().map(str::to_owned).collect();
        assert_eq!(words, expected_words(input), "{line}");
        assert_eq!(mark == "*", input.id == decider.id, "{line}");
    }
    let sources: Vec<&str> = inputs.iter().map(|i| i.source.as_str()).collect();
    assert_eq!(
        sources,
        [
            "api", "webhook", "webhook", "api", "webhook", "webhook", "adopted", "webhook",
            "webhook"
        ],
        "sessions created by the API, one adopted, and webhooks"
    );
    assert!(
        inputs
            .iter()
            .filter(|i| i.source == "webhook")
            .all(|i| i.received.is_some()),
        "webhooks carry their receive time"
    );

    // --json: the same as one document.
    let json = kyc(app, &["verification", "show", "--session", s1, "--json"])
        .await
        .ok();
    assert_discreet(&json, "--json");
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).expect("one JSON document");
    assert_eq!(doc["verification"]["id"], v.to_string());
    assert_eq!(doc["verification"]["state"], "REJECTED");
    assert_eq!(doc["verification"]["retry"], "SAME_SESSION");
    assert_eq!(doc["verification"]["reason_code"], 201);
    assert_eq!(doc["verification"]["current_session_id"], s2);
    assert_eq!(doc["why"], why);
    assert_eq!(doc["decidedByInput"], decider.id);
    assert_eq!(doc["stale"], false);
    let sessions: Vec<&str> = doc["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| s["id"].as_str().expect("a session id"))
        .collect();
    assert_eq!(sessions, [s1, s2, s.orphan.as_str()]);
    let listed = doc["inputs"].as_array().expect("inputs");
    assert_eq!(listed.len(), inputs.len());
    for (json, input) in listed.iter().zip(&inputs) {
        assert_eq!(json["id"], input.id);
        assert_eq!(json["kind"], input.kind);
        assert_eq!(json["session_id"], input.session);
        assert_eq!(json["attempt_id"].as_str(), input.attempt.as_deref());
        assert_eq!(json["status"].as_str(), input.status.as_deref());
        assert_eq!(
            json["decision_time"]
                .as_str()
                .map(|t| t.parse::<DateTime<Utc>>().expect("a time")),
            input.decision_time
        );
        assert_eq!(json["reason_code"].as_i64(), input.code.map(i64::from));
        assert_eq!(json["source"], input.source);
        assert_eq!(
            json["received_at"]
                .as_str()
                .map(|t| t.parse::<DateTime<Utc>>().expect("a time")),
            input.received
        );
        assert!(json["recorded_at"].is_string());
        assert_eq!(json["body_kept"], input.kind != "session_created");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_inputs_no_longer_give_is_stale_with_the_recompute_hint() {
    let s = story().await;
    let (app, v) = (&s.app, s.v);
    let table_args = ["verification", "show", "--session", s.orphan.as_str()];
    let json_args = [
        "verification",
        "show",
        "--session",
        s.orphan.as_str(),
        "--json",
    ];
    let show = || kyc(app, &table_args);
    let json = || kyc(app, &json_args);
    let hint = format!(
        "the row is not what the recorded inputs give now: `kyc recompute --verification {v}`"
    );
    let db = app.db().client().await;
    // The row edited by hand, state and retry, then the reason code alone.
    for edit in [
        "UPDATE verifications SET state = 'VERIFIED', retry = 'NONE' WHERE id = $1",
        "UPDATE verifications SET reason_code = 999 WHERE id = $1",
    ] {
        db.execute(edit, &[&v]).await.expect("edit the row");
        let ran = show().await.ok();
        assert!(ran.stdout.contains(&hint), "{edit}: {ran:#?}");
        let t = table(&ran);
        assert!(
            t.head[2].starts_with("why           REJECTED / SAME_SESSION: "),
            "why says what the inputs give: {:#?}",
            t.head
        );
        let doc: serde_json::Value = serde_json::from_str(&json().await.ok().stdout).expect("JSON");
        assert_eq!(doc["stale"], true, "{edit}");

        kyc(app, &["recompute", "--verification", &v.to_string()])
            .await
            .ok();
        let ran = show().await.ok();
        assert!(!ran.stdout.contains("kyc recompute"), "{edit}: {ran:#?}");
        let doc: serde_json::Value = serde_json::from_str(&json().await.ok().stdout).expect("JSON");
        assert_eq!(doc["stale"], false, "{edit}: mended");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_selectors_fail_with_a_message() {
    let app = TestApp::run().await;
    let onboarding = Uuid::new_v4();
    for (args, message) in [
        (
            vec!["--session", "no-such-session"],
            "no verification has the session no-such-session".to_owned(),
        ),
        (
            vec!["--onboarding", &onboarding.to_string()],
            format!("the onboarding {onboarding} has no verification"),
        ),
        (
            vec!["--user", "nobody"],
            "the user nobody has no verification".to_owned(),
        ),
    ] {
        let mut all = vec!["verification", "show"];
        all.extend_from_slice(&args);
        let ran = kyc(&app, &all).await.refused();
        assert!(ran.stderr.contains(&message), "{args:?}: {ran:#?}");
        assert!(ran.stdout.is_empty(), "{args:?}: {ran:#?}");
    }
    let ran = kyc(&app, &["verification", "show"]).await.refused();
    assert!(ran.stderr.contains("--session"), "{ran:#?}");
}
