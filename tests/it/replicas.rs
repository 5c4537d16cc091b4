//! Replicas, proven: two `kyc serve` and two `kyc worker` processes (the real binary) share
//! one database and one broker, as N replicas of the Kubernetes base do. 2,000 signed
//! decisions go to both receivers at once. Midway one receiver is stopped as Kubernetes stops
//! a pod: out of the Service's endpoints first (its last requests finish), then SIGTERM while
//! it holds requests it has accepted (their heads read and `100 Continue` sent, their bodies
//! sent only after its listener has closed); one worker is killed with SIGKILL; both are
//! started again. Whatever fails (a non-200 answer, a refused connection) is resent to the
//! other receiver, as Veriff would. At the end every webhook is recorded exactly once, the
//! stopped receiver answered 200 to every request it had accepted, and its address refused
//! connections (before anything was sent) once it had exited.
//!
//! Why out of the endpoints first: a connection that reaches a listener at the instant it
//! closes is reset, by the kernel (still in its accept queue) or by actix-server (handed to a
//! worker that is already stopping, which drops it). No server can close a listener that
//! clients are still connecting to without that; the preStop pause of deploy/k8s/serve.yaml
//! keeps new connections away from a stopping pod. Measured while writing this test, with
//! senders connecting to the receiver right through its SIGTERM: a reset or two (out of
//! about 100 requests around the signal) in about one run of three.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use kyc::veriff::Kind;
use kyc::veriff::dedup::dedup_key;
use kyc::veriff::payload::parse;

use crate::harness::process::kyc_command;
use crate::harness::seed::{decision, signed, time, verifications_with_sessions};
use crate::harness::spawned::Spawned;
use crate::harness::{QueuePeek, child_deployment, eventually};

const WEBHOOKS: usize = 2_000;
/// Five decisions per session: four `resubmission_requested`, then the approval.
const SESSIONS: usize = WEBHOOKS / 5;
/// Requests in flight at once, over both receivers.
const CONCURRENCY: usize = 16;
/// Stop a receiver and a worker once this many webhooks were answered 200.
const MIDWAY: usize = WEBHOOKS / 3;
const WAIT: Duration = Duration::from_secs(120);
/// Webhooks whose requests the stopping receiver holds open across its SIGTERM.
const HELD: usize = 8;

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
    /// Requests to serve-a#0 under way.
    in_flight_a: AtomicUsize,
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
        let to_a = process == "serve-a#0";
        if to_a {
            self.in_flight_a.fetch_add(1, Ordering::SeqCst);
        }
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
        if to_a {
            self.in_flight_a.fetch_sub(1, Ordering::SeqCst);
        }
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
            // The last HELD webhooks are the held requests'.
            let Some(webhook) = self.webhooks.get(i).filter(|_| i < WEBHOOKS - HELD) else {
                return;
            };
            self.deliver(i % 2, webhook).await;
        }
    }

    /// Sends `webhook` to `receiver`, and on anything but 200 to the other one, until it is
    /// answered 200.
    async fn deliver(&self, mut receiver: usize, webhook: &Webhook) {
        let mut failures = 0u32;
        while !self.attempt(receiver, webhook).await {
            receiver = 1 - receiver;
            failures += 1;
            // Both failed in turn (never expected: one receiver is up at any time):
            // back off as a sender would, rather than spin.
            if failures.is_multiple_of(2) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(failures < 200, "a webhook was never accepted");
        }
        self.answered.fetch_add(1, Ordering::SeqCst);
    }
}

/// A webhook request the receiver has accepted and is reading: its head sent with
/// `Expect: 100-continue`, and the server's `100 Continue` (the application took the
/// request and waits for its body) received. The body is sent later, by `finish`.
fn hold(addr: &str, webhook: &Webhook) -> std::net::TcpStream {
    let mut stream = std::net::TcpStream::connect(addr).expect("serve-a takes the connection");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("a read timeout");
    let head = format!(
        "POST /webhooks/veriff/decision HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         X-HMAC-SIGNATURE: {}\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        webhook.signature,
        webhook.body.len()
    );
    stream.write_all(head.as_bytes()).expect("the head is sent");
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("100 Continue");
        answer.push(byte[0]);
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    stream
}

/// Sends a held request's body and reads the answer.
fn finish(mut stream: std::net::TcpStream, webhook: &Webhook) -> Outcome {
    let mut answer = Vec::new();
    let read = stream
        .write_all(&webhook.body)
        .and_then(|()| stream.read_to_end(&mut answer));
    let status = String::from_utf8_lossy(&answer)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok());
    match (read, status) {
        (Ok(_), Some(200)) => Outcome::Ok,
        (Ok(_), Some(status)) => Outcome::Status(status),
        (read, _) => Outcome::Dropped(format!("{read:?}: {}", String::from_utf8_lossy(&answer))),
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
    let (db, config, _queues) = child_deployment().await;
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
        in_flight_a: AtomicUsize::new(0),
        attempts: Mutex::new(Vec::new()),
    });
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| tokio::spawn(Arc::clone(&senders).run()))
        .collect();

    // Midway: serve-a leaves the endpoints (what its preStop pause gives the endpoints
    // controller time for) and its last requests finish; then it holds HELD requests it has
    // accepted (their bodies not sent yet) and gets SIGTERM, and worker-1 is killed mid-work.
    eventually(WAIT, "the first third answered", || {
        let n = senders.answered.load(Ordering::SeqCst);
        async move { (n >= MIDWAY).then_some(()) }
    })
    .await;
    senders.set(0, "serve-a#0", &url_a, false);
    eventually(WAIT, "serve-a's last requests answered", || {
        let n = senders.in_flight_a.load(Ordering::SeqCst);
        async move { (n == 0).then_some(()) }
    })
    .await;
    let addr_a = url_a.trim_start_matches("http://").to_owned();
    let held_webhooks = &senders.webhooks[WEBHOOKS - HELD..];
    let held: Vec<(Instant, std::net::TcpStream)> = held_webhooks
        .iter()
        .map(|w| (Instant::now(), hold(&addr_a, w)))
        .collect();
    let signalled = Instant::now();
    serve_a.terminate();
    worker_1.kill();
    // Its listener closes: new connections are refused (a probe that still gets through
    // sends nothing). Then the held requests' bodies arrive, after the signal.
    eventually(Duration::from_secs(30), "serve-a's listener closed", || {
        let refused = std::net::TcpStream::connect(&addr_a).is_err();
        async move { refused.then_some(()) }
    })
    .await;
    let closed = Instant::now();
    let mut unanswered = Vec::new();
    for ((started, stream), webhook) in held.into_iter().zip(held_webhooks) {
        let outcome = finish(stream, webhook);
        if outcome != Outcome::Ok {
            unanswered.push(webhook);
        }
        senders
            .attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Attempt {
                process: "serve-a#0 (held)".into(),
                started,
                finished: Instant::now(),
                outcome,
            });
    }
    // Veriff sends again what got no 200 (to serve-b: serve-a is out of the endpoints).
    for webhook in unanswered {
        senders.deliver(1, webhook).await;
    }
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

    // The receiver under SIGTERM answered 200 to every request it had accepted, the held
    // ones included, whose bodies came after its listener had closed. Its address after it
    // exited refused connections: nothing was sent there, and everything was resent.
    let stopping: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.process.starts_with("serve-a#0") && !a.process.ends_with("(exited)"))
        .collect();
    let in_flight = stopping
        .iter()
        .filter(|a| a.started < signalled && a.finished >= signalled)
        .count();
    let held_ok = stopping
        .iter()
        .filter(|a| a.process == "serve-a#0 (held)" && a.outcome == Outcome::Ok)
        .count();
    let not_ok: Vec<String> = stopping
        .iter()
        .filter(|a| a.outcome != Outcome::Ok)
        .map(|a| format!("{}: {:?}", a.process, a.outcome))
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
        "serve-a: out of the endpoints, then SIGTERM with {in_flight} accepted requests in flight \
         ({HELD} held open, their bodies sent after its listener closed {:.0} ms after the signal): \
         {held_ok} of the held answered 200, {} answers other than 200 in all; exited {:.2} s after \
         the signal; its address then refused {refused} of {} requests, all resent",
        (closed - signalled).as_secs_f64() * 1e3,
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
    assert_eq!(held_ok, HELD, "every held request answered 200");
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
