//! Replicas, proven: two `kyc serve` and two `kyc worker` processes (the real binary) share
//! one database and one broker, as N replicas of the Kubernetes base do. 2,000 signed
//! decisions go to both receivers at once; midway one receiver is stopped as Kubernetes
//! stops a pod (out of the Service's endpoints, then SIGTERM while the requests it accepted
//! are still in flight), one worker is killed with SIGKILL, and both are started again.
//! Whatever fails (a non-200 answer, a refused connection) is resent to the other receiver,
//! as Veriff would. At the end every webhook is recorded exactly once, and the stopped
//! receiver answered 200 to every request it had accepted.
//!
//! Why out of the endpoints first: a connection that reaches a listener at the instant it
//! closes is reset, by the kernel (still in its accept queue) or by actix-server (handed to a
//! worker that is already stopping, which drops it). No server can close a listener that
//! clients are still connecting to without that; the preStop pause of deploy/k8s/serve.yaml
//! keeps new connections away from a stopping pod. Measured while writing this test, with
//! senders hammering the receiver through its SIGTERM: one or two resets in one run of three.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use kyc::veriff::Kind;
use kyc::veriff::dedup::dedup_key;
use kyc::veriff::payload::parse;

use crate::harness::amqp::DeleteOnDrop;
use crate::harness::process::kyc_command;
use crate::harness::seed::{decision, signed, time, verifications_with_sessions};
use crate::harness::spawned::Spawned;
use crate::harness::{
    AMQP_URL, ARCHIVE_KEY, QueuePeek, TestDb, eventually, test_config, unique_prefix,
};

const WEBHOOKS: usize = 2_000;
/// Five decisions per session: four `resubmission_requested`, then the approval.
const SESSIONS: usize = WEBHOOKS / 5;
/// Requests in flight at once, over both receivers.
const CONCURRENCY: usize = 16;
/// Stop a receiver and a worker once this many webhooks were answered 200.
const MIDWAY: usize = WEBHOOKS / 3;
const WAIT: Duration = Duration::from_secs(120);

struct Webhook {
    body: Vec<u8>,
    signature: String,
    key: String,
}

/// The webhooks in sending order: each session's decisions are spread over the whole run.
fn webhooks() -> Vec<Webhook> {
    (0..WEBHOOKS)
        .map(|i| {
            let (session, n) = (i % SESSIONS, i / SESSIONS);
            let status = if n == 4 {
                "approved"
            } else {
                "resubmission_requested"
            };
            let minute = u32::try_from(n + 1).expect("a small number");
            let body = decision(
                &format!("replica-{session}"),
                Some(&format!("a{n}")),
                status,
                &time(minute),
                None,
            );
            let key = dedup_key(Kind::Decision, parse(Kind::Decision, &body).as_ref(), &body);
            Webhook {
                signature: signed(&body),
                body,
                key,
            }
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// An answer other than 200.
    Status(u16),
    /// The connection was refused: the request never left.
    Refused,
    /// The request was sent (or being sent) and no answer came: a dropped request.
    Dropped(String),
}

struct Attempt {
    /// Which process: `serve-a#0`, `serve-b#0`, `serve-a#1`.
    process: String,
    started: Instant,
    finished: Instant,
    outcome: Outcome,
}

/// Where a receiver is now (it moves when it is started again).
struct Receiver {
    process: String,
    url: String,
    /// In the Service's endpoints: new webhooks may go to it.
    in_rotation: bool,
}

struct Senders {
    http: reqwest::Client,
    webhooks: Vec<Webhook>,
    receivers: [RwLock<Receiver>; 2],
    next: AtomicUsize,
    answered: AtomicUsize,
    attempts: Mutex<Vec<Attempt>>,
}

impl Senders {
    /// `preferred`, or the other one while `preferred` is out of the endpoints.
    fn pick(&self, preferred: usize) -> usize {
        let in_rotation = |i: usize| {
            self.receivers[i]
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .in_rotation
        };
        if in_rotation(preferred) {
            preferred
        } else {
            1 - preferred
        }
    }

    fn set(&self, receiver: usize, process: &str, url: &str, in_rotation: bool) {
        *self.receivers[receiver]
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Receiver {
            process: process.to_owned(),
            url: url.to_owned(),
            in_rotation,
        };
    }

    async fn attempt(&self, receiver: usize, webhook: &Webhook) -> bool {
        let (process, url) = {
            let r = self.receivers[self.pick(receiver)]
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            (
                r.process.clone(),
                format!("{}/webhooks/veriff/decision", r.url),
            )
        };
        let started = Instant::now();
        let sent = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("x-hmac-signature", &webhook.signature)
            .body(webhook.body.clone())
            .send()
            .await;
        let outcome = match sent {
            Ok(r) if r.status() == 200 => Outcome::Ok,
            Ok(r) => Outcome::Status(r.status().as_u16()),
            Err(e) if e.is_connect() => Outcome::Refused,
            Err(e) => Outcome::Dropped(format!("{e:?}")),
        };
        let ok = outcome == Outcome::Ok;
        self.attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Attempt {
                process,
                started,
                finished: Instant::now(),
                outcome,
            });
        ok
    }

    /// Takes webhooks until none is left; each goes to one receiver, and on anything but 200
    /// to the other, until it is answered 200.
    async fn run(self: Arc<Self>) {
        loop {
            let i = self.next.fetch_add(1, Ordering::SeqCst);
            let Some(webhook) = self.webhooks.get(i) else {
                return;
            };
            let mut receiver = i % 2;
            let mut failures = 0u32;
            while !self.attempt(receiver, webhook).await {
                receiver = 1 - receiver;
                failures += 1;
                // Both failed in turn (never expected: one receiver is up at any time):
                // back off as a sender would, rather than spin.
                if failures.is_multiple_of(2) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                assert!(failures < 200, "webhook {i} was never accepted");
            }
            self.answered.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn serve(config: &kyc::config::Config, name: &str) -> Spawned {
    let mut command = kyc_command(config);
    command.arg("serve").env("KYC_HTTP_ADDR", "127.0.0.1:0");
    Spawned::start(name, command)
}

fn worker(config: &kyc::config::Config, name: &str) -> Spawned {
    let mut command = kyc_command(config);
    command.arg("worker").env("KYC_HTTP_ADDR", "127.0.0.1:0");
    Spawned::start(name, command)
}

/// The process's base URL once `/readyz` answers 200.
async fn ready(http: &reqwest::Client, process: &mut Spawned) -> String {
    let base = format!("http://{}", process.http_addr().await);
    let url = format!("{base}/readyz");
    eventually(
        Duration::from_secs(30),
        &format!("{} ready", process.name()),
        || async {
            http.get(&url)
                .send()
                .await
                .ok()?
                .status()
                .is_success()
                .then_some(())
        },
    )
    .await;
    base
}

/// `outcome="duplicate"` deliveries a worker counted: redeliveries that dedup absorbed.
async fn duplicates(http: &reqwest::Client, base: &str) -> u64 {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .filter(|l| {
            l.starts_with("kyc_worker_messages_total{") && l.contains(r#"outcome="duplicate""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Webhooks of `keys` recorded as inputs or dead-lettered.
async fn settled(client: &tokio_postgres::Client, keys: &[String]) -> usize {
    let recorded: i64 = client
        .query_one(
            "SELECT count(DISTINCT dedup_key) FROM inputs WHERE dedup_key = ANY($1)",
            &[&keys],
        )
        .await
        .expect("count")
        .get(0);
    let dead: i64 = client
        .query_one(
            "SELECT count(*) FROM dead_letters WHERE message_id = ANY($1)",
            &[&keys],
        )
        .await
        .expect("count")
        .get(0);
    usize::try_from(recorded + dead).expect("a count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_receivers_and_two_workers_apply_every_webhook_once_through_sigterm_and_sigkill() {
    let wall = Instant::now();
    kyc::tls::install();
    let db = TestDb::create().await;
    let config = test_config(
        &unique_prefix(),
        AMQP_URL,
        &db.url,
        &["--archive-encryption-key", ARCHIVE_KEY],
    );
    // Declared before the processes, so dropped after them: nothing declares the queues again.
    let _queues = DeleteOnDrop(config.topology());
    let sessions: Vec<String> = (0..SESSIONS).map(|i| format!("replica-{i}")).collect();
    let verifications = verifications_with_sessions(&db.url, &config.policy(), &sessions).await;

    // Each request on a connection of its own, so "accepted" means one thing: the receiver
    // accepted the connection that carried it.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let mut serve_a = serve(&config, "serve-a#0");
    let mut serve_b = serve(&config, "serve-b#0");
    let mut worker_1 = worker(&config, "worker-1#0");
    let mut worker_2 = worker(&config, "worker-2#0");
    let url_a = ready(&http, &mut serve_a).await;
    let url_b = ready(&http, &mut serve_b).await;
    ready(&http, &mut worker_1).await;
    let worker_2_url = ready(&http, &mut worker_2).await;

    let senders = Arc::new(Senders {
        http: http.clone(),
        webhooks: webhooks(),
        receivers: [
            RwLock::new(Receiver {
                process: "serve-a#0".into(),
                url: url_a.clone(),
                in_rotation: true,
            }),
            RwLock::new(Receiver {
                process: "serve-b#0".into(),
                url: url_b,
                in_rotation: true,
            }),
        ],
        next: AtomicUsize::new(0),
        answered: AtomicUsize::new(0),
        attempts: Mutex::new(Vec::new()),
    });
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| tokio::spawn(Arc::clone(&senders).run()))
        .collect();

    // Midway: serve-a leaves the endpoints (what the preStop pause gives the endpoints
    // controller time for) and gets SIGTERM at once, with the requests it accepted still in
    // flight; worker-1 is killed mid-work.
    eventually(WAIT, "the first third answered", || {
        let n = senders.answered.load(Ordering::SeqCst);
        async move { (n >= MIDWAY).then_some(()) }
    })
    .await;
    senders.set(0, "serve-a#0", &url_a, false);
    let signalled = Instant::now();
    serve_a.terminate();
    worker_1.kill();
    let status = serve_a.exited().await;
    assert!(
        status.success(),
        "serve-a stops cleanly on SIGTERM: {status}"
    );
    let stopped = Instant::now();
    // A stale endpoint: until its replacement is ready, webhooks still go to the address
    // of the stopped receiver, are refused, and are resent to the other one.
    senders.set(0, "serve-a#0 (exited)", &url_a, true);
    let mut worker_1 = worker(&config, "worker-1#1");
    let mut serve_a = serve(&config, "serve-a#1");
    let url_a = ready(&http, &mut serve_a).await;
    senders.set(0, "serve-a#1", &url_a, true);
    let worker_1_url = ready(&http, &mut worker_1).await;
    for task in tasks {
        task.await.expect("a sender");
    }
    let all_answered = Instant::now();

    // Every webhook recorded (or dead-lettered), and the queues empty.
    let keys: Vec<String> = senders.webhooks.iter().map(|w| w.key.clone()).collect();
    let client = db.client().await;
    eventually(WAIT, "every webhook recorded or dead-lettered", || async {
        (settled(&client, &keys).await >= WEBHOOKS).then_some(())
    })
    .await;
    let peek = QueuePeek::new(config.topology());
    eventually(WAIT, "the queues empty", || async {
        let side: u32 = peek.side_queue_counts().await.iter().map(|(_, n)| n).sum();
        (peek.main_count().await + side == 0).then_some(())
    })
    .await;
    let applied_at = Instant::now();

    // The ledger, from `inputs` grouped by dedup key.
    let per_key: HashMap<String, i64> = client
        .query(
            "SELECT dedup_key, count(*) FROM inputs WHERE dedup_key = ANY($1) GROUP BY dedup_key",
            &[&keys],
        )
        .await
        .expect("inputs by key")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let dead_lettered: Vec<String> = client
        .query(
            "SELECT message_id FROM dead_letters WHERE message_id = ANY($1)",
            &[&keys],
        )
        .await
        .expect("dead letters")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let applied = per_key.len();
    let missing = keys
        .iter()
        .filter(|k| !per_key.contains_key(*k) && !dead_lettered.contains(k))
        .count();
    let duplicated: i64 = per_key.values().map(|n| n - 1).sum::<i64>()
        + dead_lettered
            .iter()
            .filter(|k| per_key.contains_key(*k))
            .count() as i64;
    let attempts = std::mem::take(
        &mut *senders
            .attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    let answered_200 = attempts.iter().filter(|a| a.outcome == Outcome::Ok).count();
    let mut other = BTreeMap::<String, usize>::new();
    for a in attempts.iter().filter(|a| a.outcome != Outcome::Ok) {
        let kind = match &a.outcome {
            Outcome::Status(s) => format!("{s}"),
            Outcome::Refused => "refused".into(),
            Outcome::Dropped(_) => "dropped".into(),
            Outcome::Ok => unreachable!(),
        };
        *other.entry(kind).or_default() += 1;
    }
    let other_total: usize = other.values().sum();
    println!(
        "ledger: sent {WEBHOOKS}, 200 {answered_200}, other {other_total} {other:?}, applied {applied}, \
         dead-lettered {}, missing {missing}, duplicated {duplicated}",
        dead_lettered.len()
    );

    // The receiver under SIGTERM answered 200 to every request it had: those in flight at
    // the signal included. Its address after it exited refused connections: nothing was
    // sent there, and everything was resent.
    let stopping: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.process == "serve-a#0")
        .collect();
    let in_flight: Vec<&&Attempt> = stopping
        .iter()
        .filter(|a| a.started < signalled && a.finished >= signalled)
        .collect();
    let in_flight_ok = in_flight
        .iter()
        .filter(|a| a.outcome == Outcome::Ok)
        .count();
    let last_answer = in_flight
        .iter()
        .map(|a| a.finished.duration_since(signalled).as_secs_f64() * 1e3)
        .fold(0.0, f64::max);
    let not_ok: Vec<String> = stopping
        .iter()
        .filter(|a| a.outcome != Outcome::Ok)
        .map(|a| {
            format!(
                "{:?} {:.1} ms after the signal",
                a.outcome,
                a.finished.duration_since(signalled).as_secs_f64() * 1e3
            )
        })
        .collect();
    let exited: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.process == "serve-a#0 (exited)")
        .collect();
    let refused = exited
        .iter()
        .filter(|a| a.outcome == Outcome::Refused)
        .count();
    println!(
        "serve-a: SIGTERM with {} requests in flight, {in_flight_ok} of them answered 200 (the last \
         {last_answer:.1} ms after the signal), {} other answers; exited {:.2} s after the signal; \
         its address then refused {refused} of {} requests, all resent",
        in_flight.len(),
        not_ok.len(),
        (stopped - signalled).as_secs_f64(),
        exited.len()
    );
    let absorbed = duplicates(&http, &worker_1_url).await + duplicates(&http, &worker_2_url).await;
    println!(
        "redeliveries absorbed by dedup (live workers): {absorbed}; wall time {:.1} s \
         (sending {:.1} s, then applied {:.1} s later)",
        wall.elapsed().as_secs_f64(),
        (all_answered - wall).as_secs_f64(),
        (applied_at - all_answered).as_secs_f64()
    );

    assert_eq!(
        answered_200, WEBHOOKS,
        "every webhook was answered 200 once"
    );
    assert_eq!(missing, 0, "webhooks answered 200 but never recorded");
    assert_eq!(duplicated, 0, "webhooks recorded twice");
    assert!(dead_lettered.is_empty(), "dead-lettered: {dead_lettered:?}");
    assert!(
        not_ok.is_empty(),
        "serve-a answered 200 to everything it had: {not_ok:?}"
    );
    assert!(
        !in_flight.is_empty(),
        "the SIGTERM came with requests in flight"
    );
    assert_eq!(
        refused,
        exited.len(),
        "a stopped receiver's address refuses connections"
    );
    // And the rows are what the decisions say: each session's approval came last.
    let rows: Vec<(String, String)> = client
        .query(
            "SELECT state, retry FROM verifications WHERE id = ANY($1)",
            &[&verifications],
        )
        .await
        .expect("rows")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows.len(), SESSIONS);
    assert!(
        rows.iter()
            .all(|(state, retry)| state == "VERIFIED" && retry == "NONE"),
        "every verification VERIFIED: {:?}",
        rows.iter()
            .filter(|(s, _)| s != "VERIFIED")
            .take(5)
            .collect::<Vec<_>>()
    );
    for process in [&mut serve_a, &mut serve_b, &mut worker_1, &mut worker_2] {
        process.assert_running();
    }
}
