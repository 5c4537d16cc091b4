//! A ledger of webhooks sent the way Veriff sends them: signed, and resent after any answer
//! other than 200 (or a connection error) until 200 or a deadline. Once the faults are over it
//! checks the promise of a 200 (DESIGN.md section 6): every key answered 200 is recorded once
//! in `inputs` or is in `dead_letters`; none missing, none recorded twice.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use kyc::veriff::{Kind, dedup, payload};
use tokio::task::JoinSet;

use super::TestDb;
use super::seed::signed;

/// How often Veriff's retry is simulated (Veriff waits about an hour).
const RESEND_EVERY: Duration = Duration::from_millis(250);
/// How long one request may take before it counts as failed and is resent.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// One signed webhook and its dedup key (the `message_id` it travels with).
#[derive(Clone)]
pub struct Webhook {
    pub kind: &'static str,
    pub body: Vec<u8>,
    pub key: String,
    signature: String,
}

impl Webhook {
    /// `body` signed with the EU secret, as Veriff signs it.
    pub fn signed(kind: &'static str, body: Vec<u8>) -> Self {
        let parsed = Kind::parse(kind).expect("decision or event");
        let facts = payload::parse(parsed, &body);
        Self {
            kind,
            key: dedup::dedup_key(parsed, facts.as_ref(), &body),
            signature: signed(&body),
            body,
        }
    }
}

/// What a case's ledger found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Requests made (first sends and resends).
    pub sent: u64,
    pub ok: u64,
    /// Answers other than 200, connection errors included.
    pub other: u64,
    /// Distinct keys answered 200 at least once.
    pub keys: usize,
    /// Keys recorded in `inputs`.
    pub applied: usize,
    /// Keys not recorded but in `dead_letters`.
    pub dead_lettered: usize,
    /// Keys answered 200 that are in neither.
    pub missing: usize,
    /// Keys recorded more than once.
    pub duplicated: usize,
    /// Keys never answered 200 before the sender's deadline.
    pub unanswered: usize,
    /// A few of the missing keys, to look for in the logs.
    pub missing_keys: Vec<String>,
    /// The answers other than 200, by status code or kind of connection error.
    pub other_kinds: BTreeMap<String, u64>,
}

impl Report {
    pub fn line(&self, case: &str) -> String {
        let kinds: Vec<String> = self
            .other_kinds
            .iter()
            .map(|(kind, n)| format!("{kind}: {n}"))
            .collect();
        let kinds = match kinds.is_empty() {
            true => String::new(),
            false => format!(" ({})", kinds.join(", ")),
        };
        format!(
            "ledger {case}: sent={} 200={} other={}{kinds} | keys={} applied={} dead-lettered={} missing={} duplicated={}",
            self.sent,
            self.ok,
            self.other,
            self.keys,
            self.applied,
            self.dead_lettered,
            self.missing,
            self.duplicated
        )
    }
}

#[derive(Default)]
struct Answers {
    /// Every key sent, and whether it was answered 200.
    keys: BTreeMap<String, bool>,
    /// Answers other than 200, by status code or kind of connection error.
    other: BTreeMap<String, u64>,
}

/// Sends webhooks to a kyc receiver as Veriff would, and keeps the books.
pub struct Ledger {
    case: String,
    /// The receiver's base URL; a test may move it (a new `kyc serve` after a kill).
    target: RwLock<String>,
    http: reqwest::Client,
    deadline: Duration,
    answers: Mutex<Answers>,
    sent: AtomicU64,
    ok: AtomicU64,
    other: AtomicU64,
    /// Requests sent and not answered yet.
    in_flight: AtomicU64,
}

impl Ledger {
    /// A ledger for `case`, sending to `base_url`; a webhook not answered 200 within
    /// `deadline` of its first send is given up.
    pub fn new(case: &str, base_url: &str, deadline: Duration) -> Arc<Self> {
        Arc::new(Self {
            case: case.to_owned(),
            target: RwLock::new(base_url.to_owned()),
            http: client(),
            deadline,
            answers: Mutex::default(),
            sent: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            other: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
        })
    }

    /// Where the next requests go.
    #[allow(dead_code, reason = "used by the fault suite (tests/faults) only")]
    pub fn retarget(&self, base_url: &str) {
        *self.target.write().expect("target lock") = base_url.to_owned();
    }

    /// Requests answered 200 so far.
    pub fn answered_ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    /// Requests sent and not answered yet.
    #[allow(dead_code, reason = "used by the fault suite (tests/faults) only")]
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Requests answered otherwise so far (connection errors included).
    #[allow(dead_code, reason = "used by the fault suite (tests/faults) only")]
    pub fn answered_other(&self) -> u64 {
        self.other.load(Ordering::SeqCst)
    }

    /// Sends one webhook until it is answered 200 or its deadline passes; `true` on 200.
    pub async fn send(&self, webhook: &Webhook) -> bool {
        self.answers
            .lock()
            .expect("answers lock")
            .keys
            .entry(webhook.key.clone())
            .or_insert(false);
        let deadline = Instant::now() + self.deadline;
        loop {
            if self.post(&self.http, webhook).await {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(RESEND_EVERY).await;
        }
    }

    /// The same webhook from `connections` separate connections at once (each resent as
    /// Veriff would until 200).
    #[allow(dead_code, reason = "used by the fault suite (tests/faults) only")]
    pub async fn send_concurrently(self: &Arc<Self>, webhook: &Webhook, connections: usize) {
        let clients: Vec<reqwest::Client> = (0..connections).map(|_| client()).collect();
        let start = Arc::new(tokio::sync::Barrier::new(connections));
        let mut sends = JoinSet::new();
        for http in clients {
            let (ledger, webhook, start) = (Arc::clone(self), webhook.clone(), Arc::clone(&start));
            sends.spawn(async move {
                ledger
                    .answers
                    .lock()
                    .expect("answers lock")
                    .keys
                    .entry(webhook.key.clone())
                    .or_insert(false);
                // Connected first, so that the requests leave together.
                let _ = http.get(ledger.url("/healthz")).send().await;
                start.wait().await;
                let deadline = Instant::now() + ledger.deadline;
                while !ledger.post(&http, &webhook).await && Instant::now() < deadline {
                    tokio::time::sleep(RESEND_EVERY).await;
                }
            });
        }
        while sends.join_next().await.is_some() {}
    }

    /// Sends `webhooks` at a steady `per_second`, each on its own (resent as needed), and
    /// returns once every one is answered 200 or given up.
    pub async fn stream(self: &Arc<Self>, webhooks: Vec<Webhook>, per_second: u32) {
        let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sends = JoinSet::new();
        for webhook in webhooks {
            tick.tick().await;
            let ledger = Arc::clone(self);
            sends.spawn(async move { ledger.send(&webhook).await });
        }
        while sends.join_next().await.is_some() {}
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.target.read().expect("target lock"))
    }

    /// One request; `true` if answered 200.
    async fn post(&self, http: &reqwest::Client, webhook: &Webhook) -> bool {
        let url = self.url(&format!("/webhooks/veriff/{}", webhook.kind));
        self.sent.fetch_add(1, Ordering::SeqCst);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let answer = http
            .post(url)
            .header("content-type", "application/json")
            .header("x-hmac-signature", &webhook.signature)
            .body(webhook.body.clone())
            .send()
            .await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let ok = matches!(&answer, Ok(r) if r.status() == 200);
        if !ok {
            let kind = match &answer {
                Ok(r) => r.status().as_u16().to_string(),
                Err(e) if e.is_connect() => "connection refused".to_owned(),
                Err(e) if e.is_timeout() => "timed out".to_owned(),
                Err(_) => "connection lost".to_owned(),
            };
            *self
                .answers
                .lock()
                .expect("answers lock")
                .other
                .entry(kind)
                .or_default() += 1;
        }
        if ok {
            self.ok.fetch_add(1, Ordering::SeqCst);
            self.answers
                .lock()
                .expect("answers lock")
                .keys
                .insert(webhook.key.clone(), true);
        } else {
            self.other.fetch_add(1, Ordering::SeqCst);
        }
        ok
    }

    /// Waits (up to `timeout`) until every key answered 200 is recorded or dead-lettered,
    /// then prints the ledger and fails the test if a key is missing or recorded twice, or
    /// if a key was never answered 200 (Veriff would still be retrying it).
    pub async fn settle(&self, db: &TestDb, timeout: Duration) -> Report {
        let report = self.wait_for(db, timeout, |r| r.missing == 0).await;
        self.print(&report);
        assert!(
            report.missing == 0 && report.duplicated == 0,
            "the ledger does not balance: {} (missing, e.g.: {:?})",
            report.line(&self.case),
            report.missing_keys
        );
        assert_eq!(
            report.unanswered,
            0,
            "some webhooks were never answered 200 within {:?}: {}",
            self.deadline,
            report.line(&self.case)
        );
        report
    }

    /// Prints the ledger line, past the test harness's capture, so that it shows for every case.
    pub fn print(&self, report: &Report) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", report.line(&self.case));
        let _ = out.flush();
    }

    /// Prints a line about the case under its ledger (past the capture, like the ledger).
    pub fn note(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "    {}: {text}", self.case);
        let _ = out.flush();
    }

    /// Polls the books until `done` holds or `timeout` passes; returns the last count.
    pub async fn wait_for(
        &self,
        db: &TestDb,
        timeout: Duration,
        done: impl Fn(&Report) -> bool,
    ) -> Report {
        let deadline = Instant::now() + timeout;
        loop {
            let report = self.count(db).await;
            if done(&report) || Instant::now() >= deadline {
                return report;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Counts the books now.
    pub async fn count(&self, db: &TestDb) -> Report {
        let (answered, unanswered, other_kinds): (Vec<String>, usize, _) = {
            let answers = self.answers.lock().expect("answers lock");
            let answered = answers
                .keys
                .iter()
                .filter(|(_, ok)| **ok)
                .map(|(k, _)| k.clone())
                .collect();
            let unanswered = answers.keys.values().filter(|ok| !**ok).count();
            (answered, unanswered, answers.other.clone())
        };
        let client = db.client().await;
        let recorded: BTreeMap<String, i64> = client
            .query(
                "SELECT dedup_key, count(*) FROM inputs WHERE dedup_key = ANY($1) GROUP BY dedup_key",
                &[&answered],
            )
            .await
            .expect("inputs by dedup key")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let dead: BTreeSet<String> = client
            .query(
                "SELECT DISTINCT message_id FROM dead_letters WHERE message_id = ANY($1)",
                &[&answered],
            )
            .await
            .expect("dead letters by message id")
            .iter()
            .map(|r| r.get(0))
            .collect();
        let applied = answered
            .iter()
            .filter(|k| recorded.contains_key(*k))
            .count();
        let dead_lettered = answered
            .iter()
            .filter(|k| !recorded.contains_key(*k) && dead.contains(*k))
            .count();
        let missing_keys = answered
            .iter()
            .filter(|k| !recorded.contains_key(*k) && !dead.contains(*k))
            .take(5)
            .cloned()
            .collect();
        Report {
            sent: self.sent.load(Ordering::SeqCst),
            ok: self.ok.load(Ordering::SeqCst),
            other: self.other.load(Ordering::SeqCst),
            keys: answered.len(),
            applied,
            dead_lettered,
            missing: answered.len() - applied - dead_lettered,
            duplicated: recorded.values().filter(|n| **n > 1).count(),
            unanswered,
            missing_keys,
            other_kinds,
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        // Shorter than the server's keep-alive (5 s), so that an idle connection is never
        // reused just as the server closes it (a lost request that is no answer of kyc's).
        .pool_idle_timeout(Duration::from_secs(2))
        .build()
        .expect("HTTP client")
}
