//! Long-polling status requests cost the database nothing until their own row changes: with
//! 2,000 of them waiting and a stream of unrelated changes, the database sees no status read.

use std::time::Duration;

use futures_util::future::join_all;
use uuid::Uuid;

use crate::harness::{TestApp, eventually};

const WAITERS: usize = 2_000;
const UNRELATED: usize = 600;

async fn counter(app: &TestApp, name: &str) -> u64 {
    app.metrics()
        .await
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .map_or(0, |v| v.trim().parse::<f64>().expect("a number") as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_waiters_cost_no_query_for_changes_that_are_not_theirs() {
    let app = TestApp::start(crate::harness::Spawn {
        database: true,
        args: &["--client-rate-limit", "0"],
        ..crate::harness::Spawn::default()
    })
    .await;
    let client = app.seed_client(false).await;
    let db = app.db().client().await;
    // Onboardings with a verification each: WAITERS polled, UNRELATED that will change.
    db.execute(
        "INSERT INTO onboardings (id, client_id, phone_verified_at, expires_at)
         SELECT gen_random_uuid(), $1, now(), now() + interval '1 day' FROM generate_series(1, $2::bigint)",
        &[&client.id, &((WAITERS + UNRELATED) as i64)],
    )
    .await
    .expect("onboardings");
    db.execute(
        "INSERT INTO verifications (id, onboarding_id, region, state, retry)
         SELECT gen_random_uuid(), id, 'EU', 'UNVERIFIED', 'NONE' FROM onboardings",
        &[],
    )
    .await
    .expect("verifications");
    let rows = db
        .query(
            "SELECT onboarding_id, id FROM verifications ORDER BY id",
            &[],
        )
        .await
        .expect("ids");
    let all: Vec<(Uuid, Uuid)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let (polled, unrelated) = all.split_at(WAITERS);

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(WAITERS)
        .build()
        .expect("client");
    let status = |onboarding: Uuid, etag: Option<String>| {
        let mut request = http
            .get(app.url(&format!(
                "/v1/auth/register/status?onboardingId={onboarding}"
            )))
            .header("x-client-key", &client.key);
        if let Some(etag) = etag {
            request = request
                .header("if-none-match", etag)
                .header("prefer", "wait=30");
        }
        async move {
            let response = request.send().await.expect("status answers");
            let etag = response
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            (response.status().as_u16(), etag)
        }
    };
    let mut etags = Vec::with_capacity(WAITERS);
    for chunk in polled.chunks(200) {
        for (answer, _) in join_all(chunk.iter().map(|(o, _)| status(*o, None)))
            .await
            .into_iter()
            .zip(chunk)
        {
            assert_eq!(answer.0, 200);
            etags.push(answer.1.expect("an ETag"));
        }
    }
    let first_reads = counter(&app, "kyc_status_reads_total").await;

    // Every polled onboarding waits for a change.
    let waiting = polled
        .iter()
        .zip(etags)
        .map(|((o, _), etag)| tokio::spawn(status(*o, Some(etag))));
    let waiting: Vec<_> = waiting.collect();
    eventually(Duration::from_secs(30), "every request waiting", || async {
        (counter(&app, "kyc_status_waiters").await == WAITERS as u64).then_some(())
    })
    .await;
    let before = counter(&app, "kyc_status_reads_total").await;

    // Changes to other rows, about 200 a second, each announced as the worker does it.
    for chunk in unrelated.chunks(20) {
        let ids: Vec<Uuid> = chunk.iter().map(|(_, v)| *v).collect();
        db.execute(
            "WITH changed AS (
                 UPDATE verifications SET state = 'PENDING', updated_at = now() WHERE id = ANY($1)
                 RETURNING id
             )
             SELECT pg_notify('verification_state', id::text) FROM changed",
            &[&ids],
        )
        .await
        .expect("unrelated changes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Notifications arrive in commit order: once one sent after them is seen, so were they.
    let (_, marker) = polled[0];
    db.execute(
        "WITH changed AS (
             UPDATE verifications SET state = 'PENDING', updated_at = now() WHERE id = $1
             RETURNING id
         )
         SELECT pg_notify('verification_state', id::text) FROM changed",
        &[&marker],
    )
    .await
    .expect("a change of a polled row");
    eventually(
        Duration::from_secs(10),
        "the polled row's waiter answered",
        || async {
            (counter(&app, "kyc_status_waiters").await == WAITERS as u64 - 1).then_some(())
        },
    )
    .await;
    let after = counter(&app, "kyc_status_reads_total").await;
    println!(
        "{WAITERS} waiters, {UNRELATED} unrelated changes: {first_reads} reads to answer them \
         first, then {} reads while they waited through the changes and the one that changed",
        after - before
    );
    assert_eq!(
        after - before,
        1,
        "only the changed row's waiter read the database (O(changes), not O(waiters × changes))"
    );
    for task in waiting {
        task.abort();
    }
}
