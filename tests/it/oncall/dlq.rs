//! `kyc dlq list | show | replay | purge` over dead letters the real worker recorded.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use kyc::queue::message::{
    HEADER_ATTEMPTS, HEADER_DEAD_LETTER_ID, HEADER_DEAD_REASON, HEADER_FIRST_FAILURE,
    HEADER_LAST_FAILURE, HEADER_SIGNATURE,
};
use kyc::veriff::integration::Integration;
use lapin::types::AMQPValue;
use uuid::Uuid;

use super::{
    Letter, OPERATOR, PERSONAL, WAIT, audit_log, command, inject_forged_decision, kyc, letters,
    of_reason, unparseable, wait_letters,
};
use crate::harness::seed::{decision, signed, time};
use crate::harness::{TestApp, US_SECRET, eventually};

const EU: Integration = Integration::Eu;

/// One dead letter of each reason the worker gives, in this order of sending:
/// `UNKNOWN_SESSION` (after the 1s and 2s tiers), `INVALID_SIGNATURE`, `UNPARSEABLE`,
/// `UNKNOWN_STATUS` and `REGION_MISMATCH`. Returns the recorded letters.
async fn one_of_each_reason(app: &TestApp) -> Vec<Letter> {
    app.seed_verification(EU, "s-eu").await;
    app.send(
        "decision",
        &decision("s-ghost", Some("a1"), "approved", &time(1), None),
    )
    .await;
    inject_forged_decision(
        app,
        &decision("s-forged", Some("a1"), "approved", &time(1), None),
    )
    .await;
    app.send("decision", &unparseable(0)).await;
    app.send(
        "decision",
        &decision("s-eu", Some("a2"), "bewildered", &time(2), None),
    )
    .await;
    app.send_signed_with(
        US_SECRET,
        "decision",
        &decision("s-eu", Some("a3"), "approved", &time(3), None),
    )
    .await;
    wait_letters(app, 5).await
}

/// `kyc dlq list --json ARGS…`, one JSON object a line.
async fn list_json(app: &TestApp, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["dlq", "list", "--json"];
    all.extend_from_slice(args);
    kyc(app, &all)
        .await
        .ok()
        .lines()
        .iter()
        .map(|line| serde_json::from_str(line).expect("each line is a JSON object"))
        .collect()
}

fn time_of(value: &serde_json::Value) -> DateTime<Utc> {
    value
        .as_str()
        .expect("a time string")
        .parse()
        .expect("an RFC 3339 time")
}

/// The table's columns of one dead letter, as the JSON form says they should be printed.
fn table_row(json: &serde_json::Value) -> Vec<String> {
    let short = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_owned(),
        t => time_of(t).format("%Y-%m-%d %H:%M:%S").to_string(),
    };
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    vec![
        text(&json["id"]),
        text(&json["kind"]),
        text(&json["session_id"]),
        text(&json["reason"]),
        json["attempts"].to_string(),
        short(&json["first_failure"]),
        short(&json["last_failure"]),
        short(&json["replayed_at"]),
        short(&json["purged_at"]),
    ]
}

/// The table printed by `kyc dlq list ARGS…`: the header, then each row's columns.
async fn list_table(app: &TestApp, args: &[&str]) -> Vec<Vec<String>> {
    let mut all = vec!["dlq", "list"];
    all.extend_from_slice(args);
    let ran = kyc(app, &all).await.ok();
    let lines = ran.lines();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "ID", "KIND", "SESSION", "REASON", "ATTEMPTS", "FIRST", "FAILURE", "LAST", "FAILURE",
            "REPLAYED", "PURGED"
        ],
        "the table's header: {}",
        ran.stdout
    );
    lines[1..]
        .iter()
        .map(|line| {
            // Times are printed as two words (date and time): join them back.
            let words: Vec<&str> = line.split_whitespace().collect();
            let mut columns: Vec<String> = words[..5].iter().map(|w| (*w).to_owned()).collect();
            let mut rest = &words[5..];
            while !rest.is_empty() {
                if rest[0] == "-" {
                    columns.push("-".to_owned());
                    rest = &rest[1..];
                } else {
                    columns.push(format!("{} {}", rest[0], rest[1]));
                    rest = &rest[2..];
                }
            }
            columns
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shows_dead_letters_of_every_reason_as_a_table_and_as_json() {
    let app = TestApp::run().await;
    let recorded = one_of_each_reason(&app).await;

    let listed = list_json(&app, &[]).await;
    assert_eq!(listed.len(), 5, "{listed:#?}");
    // Newest first, and every dead letter exactly once.
    let newest_first: Vec<String> = recorded.iter().rev().map(|l| l.id.to_string()).collect();
    let ids: Vec<String> = listed
        .iter()
        .map(|l| l["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(ids, newest_first, "newest first");
    for field in [
        "id",
        "kind",
        "session_id",
        "reason",
        "attempts",
        "first_failure",
        "last_failure",
        "message_id",
        "recorded_at",
        "replayed_at",
        "headers",
    ] {
        for letter in &listed {
            assert!(letter.get(field).is_some(), "{field} in {letter}");
        }
    }
    let by_reason: BTreeMap<&str, &serde_json::Value> = listed
        .iter()
        .map(|l| (l["reason"].as_str().expect("reason"), l))
        .collect();
    let expected = [
        // reason, kind, session, attempts
        ("UNKNOWN_SESSION", Some("s-ghost"), 3),
        ("INVALID_SIGNATURE", Some("s-forged"), 1),
        ("UNPARSEABLE", None, 1),
        ("UNKNOWN_STATUS", Some("s-eu"), 1),
        ("REGION_MISMATCH", Some("s-eu"), 1),
    ];
    for (reason, session, attempts) in expected {
        let letter = by_reason
            .get(reason)
            .unwrap_or_else(|| panic!("{reason} listed: {listed:#?}"));
        let db = of_reason(&recorded, reason);
        assert_eq!(letter["id"], db.id.to_string(), "{reason}");
        assert_eq!(letter["kind"], "decision", "{reason}");
        assert_eq!(letter["session_id"].as_str(), session, "{reason}");
        assert_eq!(letter["attempts"], attempts, "{reason}");
        assert_eq!(letter["replayed_at"], serde_json::Value::Null, "{reason}");
        let (first, last) = (
            time_of(&letter["first_failure"]),
            time_of(&letter["last_failure"]),
        );
        assert!(first <= last, "{reason}: {first} .. {last}");
        assert!(
            (Utc::now() - last).num_minutes() < 5,
            "{reason}: a recent failure"
        );
    }
    let ghost = by_reason["UNKNOWN_SESSION"];
    assert!(
        time_of(&ghost["last_failure"]) - time_of(&ghost["first_failure"])
            >= chrono::Duration::milliseconds(2_500),
        "UNKNOWN_SESSION waited out both tiers: {ghost}"
    );

    // The table: a header and the same rows, in the same order.
    let table = list_table(&app, &[]).await;
    let expected_rows: Vec<Vec<String>> = listed.iter().map(table_row).collect();
    assert_eq!(table, expected_rows);

    // --reason filters (both forms), --limit keeps the newest.
    for (reason, _, _) in expected {
        let only = list_json(&app, &["--reason", reason]).await;
        assert_eq!(only.len(), 1, "--reason {reason}: {only:#?}");
        assert_eq!(only[0], *by_reason[reason]);
        let table = list_table(&app, &["--reason", reason]).await;
        assert_eq!(table, [table_row(by_reason[reason])], "--reason {reason}");
    }
    assert!(
        list_json(&app, &["--reason", "NO_SUCH_REASON"])
            .await
            .is_empty()
    );
    let two = list_json(&app, &["--limit", "2"]).await;
    assert_eq!(two, listed[..2], "--limit 2: the two newest");
    assert_eq!(list_table(&app, &["--limit", "1"]).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_prints_headers_and_facts_without_personal_data_and_raw_is_audited() {
    let app = TestApp::run().await;
    app.seed_verification(EU, "s-eu").await;
    let body = decision("s-eu", Some("a2"), "bewildered", &time(2), Some(102));
    app.send("decision", &body).await;
    let letter = wait_letters(&app, 1).await.remove(0);
    assert_eq!(letter.reason, "UNKNOWN_STATUS");
    let id = letter.id.to_string();

    let shown = kyc(&app, &["dlq", "show", &id]).await.ok();
    for fact in [
        id.as_str(),
        "UNKNOWN_STATUS",
        "s-eu",
        HEADER_SIGNATURE,
        signed(&body).as_str(),
        "session s-eu attempt a2 decision bewildered",
    ] {
        assert!(
            shown.stdout.contains(fact),
            "show prints {fact}: {shown:#?}"
        );
    }
    for personal in PERSONAL {
        assert!(
            !shown.stdout.contains(personal) && !shown.stderr.contains(personal),
            "show must not print {personal}: {shown:#?}"
        );
    }
    assert!(
        audit_log(&app).await.is_empty(),
        "reading facts is not audited"
    );

    let raw = kyc(&app, &["dlq", "show", &id, "--raw"]).await.ok();
    assert!(
        raw.stdout
            .contains(std::str::from_utf8(&body).expect("UTF-8")),
        "--raw prints the body byte for byte: {raw:#?}"
    );
    assert_eq!(
        audit_log(&app).await,
        [(
            OPERATOR.to_owned(),
            "dlq.show.raw".to_owned(),
            Some(id.clone()),
            None
        )],
        "reading the raw body is recorded: who, what, which"
    );

    // A body without a session id: its size, still no personal data.
    app.send("decision", &unparseable(1)).await;
    let unparsed = of_reason(&wait_letters(&app, 2).await, "UNPARSEABLE").id;
    let shown = kyc(&app, &["dlq", "show", &unparsed.to_string()])
        .await
        .ok();
    assert!(
        shown.stdout.contains("no session id could be read"),
        "{shown:#?}"
    );
    assert!(!shown.stdout.contains("MCTESTFACE"), "{shown:#?}");

    // Past retention: the facts that are kept, and no body.
    app.db()
        .client()
        .await
        .execute(
            "UPDATE dead_letters SET body_ciphertext = NULL WHERE id = $1",
            &[&letter.id],
        )
        .await
        .expect("expire the body");
    let expired = kyc(&app, &["dlq", "show", &id, "--raw"]).await.ok();
    assert!(expired.stdout.contains("past retention"), "{expired:#?}");
    assert!(expired.stdout.contains("UNKNOWN_STATUS"), "{expired:#?}");
    assert!(!expired.stdout.contains("MCTESTFACE"), "{expired:#?}");
    let replay = kyc(&app, &["dlq", "replay", "--id", &id]).await.ok();
    assert!(
        replay
            .stdout
            .contains(&format!("{id}  not replayed: body past retention"))
            && replay.stdout.contains("0 replayed, 1 past retention"),
        "{replay:#?}"
    );
    assert!(
        letters(&app).await.iter().all(|l| l.replayed_at.is_none()),
        "nothing was replayed"
    );

    let missing = kyc(&app, &["dlq", "show", &Uuid::new_v4().to_string()])
        .await
        .refused();
    assert!(missing.stderr.contains("no dead letter"), "{missing:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_by_session_applies_a_letter_whose_session_now_exists_and_twice_is_harmless() {
    let app = TestApp::run().await;
    app.send(
        "decision",
        &decision("s-late", Some("a1"), "approved", &time(1), None),
    )
    .await;
    app.send(
        "decision",
        &decision("s-other", Some("a1"), "approved", &time(1), None),
    )
    .await;
    let recorded = wait_letters(&app, 2).await;
    let late = recorded
        .iter()
        .find(|l| l.session_id.as_deref() == Some("s-late"))
        .expect("s-late's dead letter")
        .clone();
    assert_eq!(late.reason, "UNKNOWN_SESSION");

    // The session is created late (after every retry tier).
    let v = app.seed_verification(EU, "s-late").await;
    assert_eq!(app.row(v).await.0, "UNVERIFIED");

    let ran = kyc(&app, &["dlq", "replay", "--session", "s-late"])
        .await
        .ok();
    assert!(
        ran.stdout
            .contains(&format!("{}  replayed (UNKNOWN_SESSION, s-late)", late.id)),
        "{ran:#?}"
    );
    assert!(
        ran.stdout.contains("1 replayed, 0 past retention"),
        "{ran:#?}"
    );
    app.wait_row(v, "VERIFIED", "NONE").await;
    app.wait_inputs(v, 2).await;
    let after_first = letters(&app).await;
    let replayed_at = after_first
        .iter()
        .find(|l| l.id == late.id)
        .and_then(|l| l.replayed_at)
        .expect("the replayed row is marked");
    assert!(
        after_first
            .iter()
            .filter(|l| l.id != late.id)
            .all(|l| l.replayed_at.is_none()),
        "only s-late's letter replayed: {after_first:#?}"
    );

    // Again: nothing left to replay, nothing changes.
    let again = kyc(&app, &["dlq", "replay", "--session", "s-late"])
        .await
        .ok();
    assert!(
        again.stdout.contains("0 replayed, 0 past retention"),
        "{again:#?}"
    );
    let after_second = letters(&app).await;
    assert_eq!(after_second, after_first, "no row changed");
    assert_eq!(
        after_second
            .iter()
            .find(|l| l.id == late.id)
            .and_then(|l| l.replayed_at),
        Some(replayed_at)
    );
    assert_eq!(app.row(v).await.0, "VERIFIED");
    assert_eq!(app.input_count(v).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_by_id_reason_and_all_republishes_the_originals_and_dry_run_changes_nothing() {
    let mut app = TestApp::run().await;
    app.seed_verification(EU, "s-eu").await;
    let bodies = [
        decision("s-eu", Some("a2"), "bewildered", &time(2), None),
        unparseable(0),
        unparseable(1),
    ];
    for body in &bodies {
        app.send("decision", body).await;
    }
    let forged = decision("s-eu", Some("a3"), "approved", &time(3), None);
    inject_forged_decision(&app, &forged).await;
    let recorded = wait_letters(&app, 4).await;
    let original_headers: BTreeMap<Uuid, serde_json::Value> = {
        let client = app.db().client().await;
        client
            .query("SELECT id, headers FROM dead_letters", &[])
            .await
            .expect("headers")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    // Nothing consumes the main queue from here on: what is published stays there.
    app.stop().await;
    let peek = app.peek();
    let replayed = |letters: &[Letter]| -> BTreeSet<Uuid> {
        letters
            .iter()
            .filter(|l| l.replayed_at.is_some())
            .map(|l| l.id)
            .collect()
    };

    let dry = kyc(&app, &["dlq", "replay", "--all", "--dry-run"])
        .await
        .ok();
    assert!(
        dry.stdout.contains("would replay 4 dead letter(s)"),
        "{dry:#?}"
    );
    for letter in &recorded {
        assert!(dry.stdout.contains(&letter.id.to_string()), "{dry:#?}");
    }
    assert_eq!(letters(&app).await, recorded, "a dry run changes no row");
    assert_eq!(peek.main_count().await, 0, "a dry run publishes nothing");

    let status = of_reason(&recorded, "UNKNOWN_STATUS").id;
    kyc(&app, &["dlq", "replay", "--id", &status.to_string()])
        .await
        .ok();
    assert_eq!(replayed(&letters(&app).await), BTreeSet::from([status]));
    assert_eq!(peek.main_count().await, 1);

    let ran = kyc(&app, &["dlq", "replay", "--reason", "UNPARSEABLE"])
        .await
        .ok();
    assert!(ran.stdout.contains("2 replayed"), "{ran:#?}");
    let unparsed: BTreeSet<Uuid> = recorded
        .iter()
        .filter(|l| l.reason == "UNPARSEABLE")
        .map(|l| l.id)
        .collect();
    let mut expected = unparsed.clone();
    expected.insert(status);
    assert_eq!(replayed(&letters(&app).await), expected);
    assert_eq!(peek.main_count().await, 3);

    // --all replays what is left, not what was replayed already.
    let ran = kyc(&app, &["dlq", "replay", "--all"]).await.ok();
    let invalid = of_reason(&recorded, "INVALID_SIGNATURE").id;
    assert!(
        ran.stdout.contains(&format!("{invalid}  replayed")) && ran.stdout.contains("1 replayed"),
        "{ran:#?}"
    );
    let all: BTreeSet<Uuid> = recorded.iter().map(|l| l.id).collect();
    assert_eq!(replayed(&letters(&app).await), all);
    assert_eq!(peek.main_count().await, 4);
    let ran = kyc(&app, &["dlq", "replay", "--all"]).await.ok();
    assert!(ran.stdout.contains("0 replayed"), "{ran:#?}");
    assert_eq!(
        peek.main_count().await,
        4,
        "a second replay publishes nothing"
    );

    // What was published: the original message, without the failure bookkeeping.
    let messages = peek.drain_main().await;
    assert_eq!(messages.len(), 4);
    let mut seen = BTreeSet::new();
    for message in &messages {
        let properties = &message.delivery.properties;
        let message_id = properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_owned());
        let letter = recorded
            .iter()
            .find(|l| l.message_id == message_id)
            .unwrap_or_else(|| panic!("a replayed message is a dead letter's: {message_id:?}"));
        seen.insert(letter.id);
        let headers = properties.headers().clone().unwrap_or_default();
        for gone in [
            HEADER_ATTEMPTS,
            HEADER_FIRST_FAILURE,
            HEADER_LAST_FAILURE,
            HEADER_DEAD_REASON,
            HEADER_DEAD_LETTER_ID,
        ] {
            assert!(
                !headers.inner().contains_key(gone),
                "{gone} is removed for a fresh start"
            );
        }
        let signature = match headers.inner().get(HEADER_SIGNATURE) {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            other => panic!("the signature travels with the message: {other:?}"),
        };
        assert_eq!(
            Some(signature.as_str()),
            original_headers[&letter.id][HEADER_SIGNATURE].as_str(),
            "the original signature"
        );
        let body = message.delivery.data.clone();
        let expected_body = match letter.reason.as_str() {
            "INVALID_SIGNATURE" => forged.clone(),
            "UNKNOWN_STATUS" => bodies[0].clone(),
            _ => {
                assert!(
                    body == bodies[1] || body == bodies[2],
                    "an unparseable body"
                );
                body.clone()
            }
        };
        assert_eq!(body, expected_body, "the original body, byte for byte");
        let routing_key = message.delivery.routing_key.as_str();
        let expected_key = match letter.reason.as_str() {
            "UNPARSEABLE" => "veriff.unparsed",
            _ => "veriff.decision",
        };
        assert_eq!(routing_key, expected_key, "{}", letter.reason);
    }
    assert_eq!(seen, all, "each dead letter republished once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_killed_midway_loses_nothing_and_applies_each_once() {
    const N: usize = 200;
    let app = TestApp::run().await;
    let sessions: Vec<String> = (0..N).map(|i| format!("s-{i:03}")).collect();
    let bodies: Vec<Vec<u8>> = sessions
        .iter()
        .map(|s| decision(s, Some("a1"), "approved", &time(1), None))
        .collect();
    for chunk in bodies.chunks(20) {
        join_all(chunk.iter().map(|body| app.send("decision", body))).await;
    }
    let recorded = wait_letters(&app, N).await;
    assert!(recorded.iter().all(|l| l.reason == "UNKNOWN_SESSION"));

    // The sessions are created late; then a replay of every dead letter, killed mid-way.
    let mut verifications = Vec::new();
    for session in &sessions {
        verifications.push(app.seed_verification(EU, session).await);
    }
    let mut child = command(&app, &["dlq", "replay", "--all"])
        .spawn()
        .expect("kyc dlq replay starts");
    // Killed at whatever point of its loop it is once a few rows are marked: between a
    // publish and its row's update, or anywhere else. (Its stdout stays open until then.)
    let marked_rows = || async {
        letters(&app)
            .await
            .iter()
            .filter(|l| l.replayed_at.is_some())
            .count()
    };
    // A bound, not a pause: the command starts, connects and replays as fast as the
    // machine lets it (slow when every test of the suite runs beside it).
    eventually(
        Duration::from_secs(60),
        "the replay to be under way",
        || async { (marked_rows().await >= 20).then_some(()) },
    )
    .await;
    child.kill().expect("SIGKILL the replay");
    let status = child.wait().expect("reap the replay");
    let mut printed = String::new();
    child
        .stdout
        .take()
        .expect("stdout is piped")
        .read_to_string(&mut printed)
        .expect("what the replay printed");
    assert!(
        status.code().is_none(),
        "the replay was killed, not finished: {status:?} after {printed}"
    );
    let marked = marked_rows().await;
    assert!(
        (20..N).contains(&marked),
        "killed mid-way: {marked} of {N} marked replayed"
    );

    // Again, to the end: it replays the rest (and at worst one message twice).
    let ran = kyc(&app, &["dlq", "replay", "--all"]).await.ok();
    assert!(
        ran.stdout
            .contains(&format!("{} replayed, 0 past retention", N - marked)),
        "{ran:#?}"
    );
    eventually(WAIT, "every verification VERIFIED", || async {
        let verified: i64 = app
            .db()
            .client()
            .await
            .query_one(
                "SELECT count(*) FROM verifications WHERE state = 'VERIFIED'",
                &[],
            )
            .await
            .expect("count")
            .get(0);
        (verified == i64::try_from(N).expect("N")).then_some(())
    })
    .await;
    // Settled: the main queue is empty and nothing is left unacked.
    eventually(WAIT, "the main queue drained", || async {
        (app.peek().main_count().await == 0).then_some(())
    })
    .await;
    let after = letters(&app).await;
    assert_eq!(after.len(), N, "no new dead letters");
    assert!(
        after.iter().all(|l| l.replayed_at.is_some()),
        "no row left un-replayed"
    );
    assert_eq!(app.total_inputs().await, 2 * i64::try_from(N).expect("N"));
    let client = app.db().client().await;
    let decisions: Vec<i64> = client
        .query(
            "SELECT count(*) FILTER (WHERE kind = 'decision') FROM inputs
             GROUP BY verification_id",
            &[],
        )
        .await
        .expect("inputs")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(decisions.len(), N);
    assert!(
        decisions.iter().all(|&n| n == 1),
        "each decision recorded exactly once: {decisions:?}"
    );
    for v in &verifications {
        assert_eq!(app.row(*v).await.0, "VERIFIED");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_needs_yes_and_deletes_by_id_or_by_time() {
    let app = TestApp::run().await;
    for n in 0..3 {
        app.send("decision", &unparseable(n)).await;
    }
    let recorded = wait_letters(&app, 3).await;
    let ids: Vec<Uuid> = recorded.iter().map(|l| l.id).collect();
    // A purged letter keeps its row, without its body: it no longer needs action.
    let remaining = || async {
        app.db()
            .client()
            .await
            .query(
                "SELECT id FROM dead_letters WHERE purged_at IS NULL ORDER BY recorded_at, id",
                &[],
            )
            .await
            .expect("unpurged letters")
            .iter()
            .map(|r| r.get::<_, Uuid>(0))
            .collect::<Vec<_>>()
    };
    let bodies_of_purged = || async {
        app.db()
            .client()
            .await
            .query_one(
                "SELECT count(*) FILTER (WHERE body_ciphertext IS NOT NULL), count(*)
                 FROM dead_letters WHERE purged_at IS NOT NULL",
                &[],
            )
            .await
            .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)))
            .expect("purged letters")
    };

    let refused = kyc(&app, &["dlq", "purge", "--id", &ids[0].to_string()])
        .await
        .refused();
    assert!(
        refused
            .stderr
            .contains("refusing to purge 1 dead letter(s) without --yes"),
        "{refused:#?}"
    );
    assert_eq!(remaining().await, ids, "nothing deleted without --yes");
    kyc(&app, &["dlq", "purge", "--yes"]).await.refused();
    assert_eq!(
        remaining().await,
        ids,
        "nothing deleted without a selection"
    );

    let ran = kyc(
        &app,
        &["dlq", "purge", "--id", &ids[0].to_string(), "--yes"],
    )
    .await
    .ok();
    assert!(ran.stdout.contains("1 dead letter(s) purged"), "{ran:#?}");
    assert_eq!(remaining().await, ids[1..]);
    assert_eq!(
        bodies_of_purged().await,
        (0, 1),
        "the purged body is deleted"
    );
    assert_eq!(letters(&app).await.len(), 3, "the row stays as a record");

    // --before: only those recorded before the time.
    app.db()
        .client()
        .await
        .execute(
            "UPDATE dead_letters SET recorded_at = '2020-06-01T00:00:00Z' WHERE id = $1",
            &[&ids[1]],
        )
        .await
        .expect("age a dead letter");
    kyc(&app, &["dlq", "purge", "--before", "2021-01-01"])
        .await
        .refused();
    assert_eq!(remaining().await.len(), 2, "nothing deleted without --yes");
    let ran = kyc(&app, &["dlq", "purge", "--before", "2021-01-01", "--yes"])
        .await
        .ok();
    assert!(ran.stdout.contains("1 dead letter(s) purged"), "{ran:#?}");
    assert_eq!(remaining().await, ids[2..]);
    let ran = kyc(
        &app,
        &["dlq", "purge", "--before", "2021-01-01T00:00:00Z", "--yes"],
    )
    .await
    .ok();
    assert!(ran.stdout.contains("0 dead letter(s) purged"), "{ran:#?}");
    assert_eq!(remaining().await, ids[2..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shows_what_needs_action_and_all_shows_replayed_and_purged_letters() {
    let app = TestApp::run().await;
    app.seed_verification(EU, "s-eu").await;
    app.send("decision", &unparseable(0)).await;
    app.send("decision", &unparseable(1)).await;
    app.send(
        "decision",
        &decision("s-eu", Some("a2"), "bewildered", &time(2), None),
    )
    .await;
    let first = wait_letters(&app, 3).await;
    let unparsed: Vec<&Letter> = first.iter().filter(|l| l.reason == "UNPARSEABLE").collect();
    let (replayed, purged) = (unparsed[0].id.to_string(), unparsed[1].id.to_string());
    let status = of_reason(&first, "UNKNOWN_STATUS").id.to_string();

    kyc(&app, &["dlq", "replay", "--id", &replayed]).await.ok();
    // Replayed, it fails again: a new life, so a new letter, not the old one again.
    let after = wait_letters(&app, 4).await;
    let again = after
        .iter()
        .find(|l| first.iter().all(|f| f.id != l.id))
        .expect("the replayed letter dead-lettered again");
    assert_eq!(again.message_id, unparsed[0].message_id, "the same webhook");
    let again = again.id.to_string();
    kyc(&app, &["dlq", "purge", "--id", &purged, "--yes"])
        .await
        .ok();

    let ids = |listed: &[serde_json::Value]| -> BTreeSet<String> {
        listed
            .iter()
            .map(|l| l["id"].as_str().expect("an id").to_owned())
            .collect()
    };
    let set = |of: &[&String]| -> BTreeSet<String> { of.iter().map(|s| (*s).clone()).collect() };

    // By default only what needs action: neither replayed nor purged.
    let open = list_json(&app, &[]).await;
    assert_eq!(
        ids(&open),
        set(&[&again, &status]),
        "only what needs action"
    );
    assert!(
        open.iter()
            .all(|l| l["replayed_at"].is_null() && l["purged_at"].is_null()),
        "{open:#?}"
    );
    let table = list_table(&app, &[]).await;
    assert_eq!(table, open.iter().map(table_row).collect::<Vec<_>>());
    let open_unparsed = list_json(&app, &["--reason", "UNPARSEABLE"]).await;
    assert_eq!(
        ids(&open_unparsed),
        set(&[&again]),
        "--reason: open ones only"
    );

    // --all: every letter, with its replay and purge times, in the table too.
    let all = list_json(&app, &["--all"]).await;
    assert_eq!(
        ids(&all),
        set(&[&replayed, &purged, &again, &status]),
        "{all:#?}"
    );
    let by_id = |id: &str| {
        all.iter()
            .find(|l| l["id"] == id)
            .unwrap_or_else(|| panic!("{id} listed with --all"))
    };
    let db = letters(&app).await;
    let replayed_at = db
        .iter()
        .find(|l| l.id.to_string() == replayed)
        .and_then(|l| l.replayed_at)
        .expect("marked replayed");
    assert_eq!(time_of(&by_id(&replayed)["replayed_at"]), replayed_at);
    assert!(by_id(&replayed)["purged_at"].is_null());
    assert!(by_id(&purged)["purged_at"].is_string());
    assert!(by_id(&purged)["replayed_at"].is_null());
    assert!(by_id(&again)["replayed_at"].is_null());
    let table = list_table(&app, &["--all"]).await;
    assert_eq!(table, all.iter().map(table_row).collect::<Vec<_>>());
    let replayed_row = table
        .iter()
        .find(|row| row[0] == replayed)
        .expect("the replayed letter's row");
    assert_eq!(
        replayed_row[7],
        replayed_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        "the REPLAYED column"
    );
    let purged_row = table
        .iter()
        .find(|row| row[0] == purged)
        .expect("the purged letter's row");
    assert_ne!(purged_row[8], "-", "the PURGED column");

    // --all with --reason: every letter of that reason, whatever became of it.
    let all_unparsed = list_json(&app, &["--all", "--reason", "UNPARSEABLE"]).await;
    assert_eq!(ids(&all_unparsed), set(&[&replayed, &purged, &again]));
    let table = list_table(&app, &["--reason", "UNPARSEABLE", "--all"]).await;
    assert_eq!(
        table,
        all_unparsed.iter().map(table_row).collect::<Vec<_>>()
    );
    let all_status = list_json(&app, &["--all", "--reason", "UNKNOWN_STATUS"]).await;
    assert_eq!(ids(&all_status), set(&[&status]));
}
