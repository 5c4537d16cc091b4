//! One benchmark deployment: a database and a queue prefix of its own, the real `kyc` binary
//! as separate processes, seeded sessions, and the ledger that says whether every webhook
//! answered 200 ended applied or dead-lettered.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use secrecy::SecretString;
use tokio_postgres::{AsyncMessage, NoTls};
use uuid::Uuid;

pub const SECRET: &str = "bench-shared-secret";
pub const API_KEY: &str = "bench-api-key";
pub const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Nothing listens there: a broker that is down.
pub const DEAD_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:1/%2f";
pub const RETRY_DELAYS: [u64; 4] = [5, 30, 120, 600];

pub struct Deployment {
    pub prefix: String,
    pub database: String,
    pub db: tokio_postgres::Client,
}

/// A `kyc` process, killed when dropped.
pub struct Kyc {
    child: Child,
    pub addr: SocketAddr,
}

impl Kyc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory so far, in MiB (VmHWM).
    pub fn peak_rss_mib(&self) -> f64 {
        proc_status_kib(self.pid(), "VmHWM").map_or(f64::NAN, |kib| kib as f64 / 1024.0)
    }

    /// CPU seconds used so far (user + system).
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&format!("/proc/{}/stat", self.pid()))
    }

    /// SIGTERM, then wait.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Kyc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// CPU seconds the local RabbitMQ node has used (NaN where its pid file is not readable): the
/// broker shares the cores, so its cost per message is part of every ingest figure.
pub fn broker_cpu_seconds() -> f64 {
    let pid = std::fs::read_to_string("/var/lib/rabbitmq/mnesia/rabbit@localhost.pid")
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok());
    pid.map_or(f64::NAN, |pid| cpu_seconds(&format!("/proc/{pid}/stat")))
}

/// utime + stime of a /proc/…/stat file, in seconds.
pub fn cpu_seconds(stat: &str) -> f64 {
    let Ok(text) = std::fs::read_to_string(stat) else {
        return f64::NAN;
    };
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

impl Deployment {
    pub async fn new(name: &str) -> Self {
        kyc::tls::install();
        let id = Uuid::new_v4().simple().to_string();
        let prefix = format!("kycperf-{name}-{}", &id[..8]);
        let database = format!("kyc_perf_{}", &id[..12]);
        let url = format!("postgres://postgres@127.0.0.1:5432/{database}");
        kyc::storage::migrate::run(&url).await.expect("migrates");
        let (db, connection) = tokio_postgres::connect(&url, NoTls)
            .await
            .expect("database");
        tokio::spawn(connection);
        Self {
            prefix,
            database,
            db,
        }
    }

    pub fn database_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:5432/{}?sslmode=disable",
            self.database
        )
    }

    pub fn topology(&self) -> kyc::queue::Topology {
        kyc::queue::Topology::new(
            self.prefix.clone(),
            RETRY_DELAYS.map(Duration::from_secs).to_vec(),
        )
    }

    /// Starts `kyc ROLE` (the binary of this build) with this deployment's settings.
    pub fn spawn(&self, role: &str, amqp_url: &str, extra: &[(&str, &str)]) -> Kyc {
        self.spawn_wrapped(&[], role, amqp_url, extra)
    }

    /// The same, under a wrapper command (e.g. valgrind).
    pub fn spawn_wrapped(
        &self,
        wrapper: &[&str],
        role: &str,
        amqp_url: &str,
        extra: &[(&str, &str)],
    ) -> Kyc {
        let addr = free_addr();
        let delays: Vec<String> = RETRY_DELAYS.iter().map(|d| format!("{d}s")).collect();
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_kyc"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_kyc")),
        };
        let child = command
            .arg(role)
            .env("KYC_HTTP_ADDR", addr.to_string())
            .env("KYC_QUEUE_PREFIX", &self.prefix)
            .env("KYC_DATABASE_URL", self.database_url())
            .env("KYC_AMQP_URL", amqp_url)
            .env("KYC_VERIFF_API_KEY", API_KEY)
            .env("KYC_VERIFF_SHARED_SECRETS", SECRET)
            .env("KYC_ARCHIVE_ENCRYPTION_KEY", KEY)
            .env("KYC_URL_ENCRYPTION_KEY", KEY)
            .env("KYC_JWT_SECRET", "bench-jwt-secret")
            .env("KYC_JWT_AUDIENCE", "kyc-bench")
            .env("KYC_VERIFF_CALLBACK_URL", "https://app.example/verified")
            .env("KYC_RETRY_DELAYS", delays.join(","))
            .env("KYC_CLIENT_RATE_LIMIT", "0")
            .env("RUST_LOG", "warn")
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Its warnings (the broker that is down on purpose) are noise here, unless asked for.
            .stderr(match std::env::var_os("PERF_LOGS") {
                Some(_) => Stdio::inherit(),
                None => Stdio::null(),
            })
            .spawn()
            .expect("kyc starts");
        Kyc { child, addr }
    }

    /// Waits until the process answers /readyz.
    pub async fn ready(&self, kyc: &Kyc, within: Duration) {
        let deadline = Instant::now() + within;
        let request = b"GET /readyz HTTP/1.1\r\nhost: kyc\r\n\r\n";
        loop {
            let mut conn = crate::client::Conn::new(kyc.addr);
            if conn.exchange(request).await.is_ok_and(|s| s == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kyc on {} did not become ready",
                kyc.addr
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `n` verifications with one session each, as the registration API leaves them.
    pub async fn seed(&self, n: usize) -> Vec<(Uuid, String)> {
        let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
        let sessions: Vec<String> = ids.iter().map(|id| format!("s-{}", id.simple())).collect();
        for (ids, sessions) in ids.chunks(50_000).zip(sessions.chunks(50_000)) {
            self.db
                .execute(
                    "INSERT INTO verifications (id, region, state, retry, current_session_id)
                     SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[])",
                    &[
                        &ids,
                        &vec!["EU"; ids.len()],
                        &vec!["UNVERIFIED"; ids.len()],
                        &vec!["NONE"; ids.len()],
                        &sessions,
                    ],
                )
                .await
                .expect("verifications");
            self.db
                .execute(
                    "INSERT INTO sessions (id, verification_id) SELECT * FROM unnest($1::text[], $2::uuid[])",
                    &[&sessions, &ids],
                )
                .await
                .expect("sessions");
            self.db
                .execute(
                    "INSERT INTO inputs (verification_id, dedup_key, kind, session_id, source)
                     SELECT v, encode(sha256(('session_created|' || s)::bytea), 'hex'), 'session_created', s, 'api'
                     FROM unnest($1::uuid[], $2::text[]) AS t(v, s)",
                    &[&ids, &sessions],
                )
                .await
                .expect("session inputs");
        }
        ids.into_iter().zip(sessions).collect()
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.db.query_one(sql, &[]).await.expect("a count").get(0)
    }

    /// Waits until `sql` counts at least `n`, or `within` passes; returns when it got there.
    pub async fn wait_count(&self, sql: &str, n: i64, within: Duration) -> Option<Instant> {
        let deadline = Instant::now() + within;
        loop {
            if self.count(sql).await >= n {
                return Some(Instant::now());
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The ledger of `accepted` dedup keys (answered 200): each must end recorded once in
    /// `inputs` or in `dead_letters`.
    pub async fn ledger(&self, sent: usize, accepted: &[String], other: usize) -> Ledger {
        let keys: HashSet<&str> = accepted.iter().map(String::as_str).collect();
        let rows = self
            .db
            .query(
                "SELECT dedup_key, count(*) FROM inputs WHERE kind <> 'session_created' GROUP BY dedup_key",
                &[],
            )
            .await
            .expect("inputs");
        let recorded: HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let dead: HashSet<String> = self
            .db
            .query(
                "SELECT DISTINCT message_id FROM dead_letters WHERE message_id IS NOT NULL",
                &[],
            )
            .await
            .expect("dead letters")
            .iter()
            .map(|r| r.get(0))
            .collect();
        let applied = keys.iter().filter(|k| recorded.contains_key(**k)).count();
        let dead_lettered = keys
            .iter()
            .filter(|k| !recorded.contains_key(**k) && dead.contains(**k))
            .count();
        let duplicated = keys
            .iter()
            .filter(|k| {
                recorded.get(**k).is_some_and(|n| *n > 1)
                    || (recorded.contains_key(**k) && dead.contains(**k))
            })
            .count();
        Ledger {
            sent,
            ok: accepted.len(),
            other,
            applied,
            dead_lettered,
            missing: keys.len() - applied - dead_lettered,
            duplicated,
        }
    }

    /// The time each verification's change was announced (NOTIFY), from now on.
    pub async fn listen(&self) -> (tokio_postgres::Client, Arc<Mutex<HashMap<Uuid, Instant>>>) {
        let (client, mut connection) = tokio_postgres::connect(&self.database_url(), NoTls)
            .await
            .expect("listen connection");
        let seen: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::default();
        let record = Arc::clone(&seen);
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        tokio::spawn(async move {
            while let Some(Ok(message)) = messages.next().await {
                if let AsyncMessage::Notification(n) = message
                    && let Ok(id) = Uuid::parse_str(n.payload())
                {
                    record
                        .lock()
                        .expect("lock")
                        .entry(id)
                        .or_insert_with(Instant::now);
                }
            }
        });
        client
            .batch_execute("LISTEN verification_state")
            .await
            .expect("listen");
        (client, seen)
    }

    /// Removes the queues and the database.
    pub async fn clean_up(self) {
        let topology = self.topology();
        if let Ok(conn) =
            lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default()).await
            && let Ok(ch) = conn.create_channel().await
        {
            for q in topology.queues() {
                let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
            }
            let _ = ch
                .exchange_delete(topology.exchange().as_str().into(), Default::default())
                .await;
            let _ = conn.close(200, "done".into()).await;
        }
        drop(self.db);
        if let Ok((admin, connection)) =
            tokio_postgres::connect("postgres://postgres@127.0.0.1:5432/postgres", NoTls).await
        {
            tokio::spawn(connection);
            let _ = admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.database
                ))
                .await;
        }
    }
}

/// Every webhook answered 200 must end applied or dead-lettered: a run whose ledger does not
/// balance is void, not a result.
#[derive(Debug, Clone, Copy)]
pub struct Ledger {
    pub sent: usize,
    pub ok: usize,
    pub other: usize,
    pub applied: usize,
    pub dead_lettered: usize,
    pub missing: usize,
    pub duplicated: usize,
}

impl Ledger {
    pub fn balances(&self) -> bool {
        self.missing == 0 && self.duplicated == 0 && self.applied + self.dead_lettered == self.ok
    }
}

impl std::fmt::Display for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {}, 200 {}, other {}, applied {}, dead-lettered {}, missing {}, duplicated {}{}",
            self.sent,
            self.ok,
            self.other,
            self.applied,
            self.dead_lettered,
            self.missing,
            self.duplicated,
            if self.balances() { "" } else { " — VOID" }
        )
    }
}

/// A decision body of about 1.5 KB, shaped like Veriff's fixtures.
pub fn decision(session: &str, status: &str) -> Vec<u8> {
    serde_json::json!({
        "status": "success",
        "verification": {
            "id": session, "attemptId": format!("{session}-a1"), "vendorData": null,
            "endUserId": "eeeeeeee-0000-4000-8000-000000000001", "status": status, "code": 9001,
            "reason": null, "reasonCode": null, "decisionTime": "2030-01-01T10:03:21.123Z",
            "acceptanceTime": "2030-01-01T10:00:00.000Z",
            "person": { "firstName": "TESTY", "lastName": "MCTESTFACE", "dateOfBirth": "1990-01-31",
                "yearOfBirth": "1990", "placeOfBirth": "EXAMPLEVILLE", "gender": "M", "idNumber": null,
                "citizenship": null, "nationality": "EE", "pepSanctionMatch": null,
                "addresses": [{ "fullAddress": "1 Example Street, Exampletown, 00000 EST",
                    "parsedAddress": { "city": "Exampletown", "unit": null, "state": null, "street": "Example Street",
                        "country": "EE", "postcode": "00000", "houseNumber": "1" } }] },
            "document": { "type": "PASSPORT", "number": "TEST0000001", "country": "EE", "validFrom": "2020-02-01",
                "validUntil": "2030-01-31", "placeOfIssue": null, "firstIssue": null, "issueNumber": null, "issuedBy": null },
            "comments": [], "additionalVerifiedData": {},
            "riskLabels": [{ "label": "document_integration_level_crosslinked_with_fraud", "category": "document",
                "sessionIds": ["99999999-9999-4999-8999-999999999999"] }],
            "biometricAuthentication": { "matchedSessionId": null, "matchedSessionVendorData": null },
            "padding": "x".repeat(180)
        },
        "technicalData": { "ip": "192.0.2.10" }
    })
    .to_string()
    .into_bytes()
}

pub fn sign(body: &[u8]) -> String {
    kyc::veriff::signature::sign(&SecretString::from(SECRET), body)
}

/// The dedup key the receiver gives a decision body.
pub fn dedup_key(body: &[u8]) -> String {
    let kind = kyc::veriff::Kind::Decision;
    kyc::veriff::dedup::dedup_key(kind, kyc::veriff::payload::parse(kind, body).as_ref(), body)
}

/// Signed decision webhooks for these sessions, as requests ready to send, with their keys.
pub fn webhooks(sessions: &[(Uuid, String)]) -> (Vec<Vec<u8>>, Vec<String>) {
    sessions
        .iter()
        .map(|(_, session)| {
            let body = decision(session, "approved");
            let signature = sign(&body);
            (
                crate::client::post(
                    "/webhooks/veriff/decision",
                    &[("x-hmac-signature", &signature)],
                    &body,
                ),
                dedup_key(&body),
            )
        })
        .unzip()
}

/// `perf record` of the whole machine while one measured phase runs, when `PERF_PROFILE_DIR`
/// is set (set-up and seeding stay out of it). `perf report -i DIR/NAME.data --sort comm`
/// then says which process had the cores, `--sort comm,dso,sym` what they did.
pub struct Profile(Option<Child>);

impl Profile {
    pub fn start(name: &str) -> Self {
        let Ok(dir) = std::env::var("PERF_PROFILE_DIR") else {
            return Self(None);
        };
        std::fs::create_dir_all(&dir).expect("PERF_PROFILE_DIR");
        let child = Command::new("perf")
            .args(["record", "-a", "-F", "499", "-q", "-o"])
            .arg(format!("{dir}/{name}.data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("perf (Debian's linux-perf) for PERF_PROFILE_DIR");
        Self(Some(child))
    }

    /// SIGINT, as perf expects, then wait for it to write the file.
    pub fn stop(self) {
        if let Some(mut child) = self.0 {
            let _ = Command::new("kill")
                .arg("-INT")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }
}
