//! Slow and flooding clients (issue 11, "Timeouts"): hundreds of connections that declare a
//! 1 MiB body and trickle it one byte at a time, and some that trickle their request head,
//! against a real `kyc serve` process. Meanwhile real signed webhooks and status polls get
//! their normal answers promptly; then the deadlines cut the slow ones off (the head within
//! 5 s, the body within 10 s), and the process never reserved memory for the bodies that
//! were declared but never sent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Semaphore;

use kyc::storage::registration::key_digest;

use super::raw::{self, RawAnswer};
use crate::harness::process::kyc_command;
use crate::harness::seed::{event, signed};
use crate::harness::spawned::Spawned;
use crate::harness::{child_deployment, eventually};

/// Connections that declare `Content-Length: 1048576` and send a byte every `TRICKLE`.
const SLOW_BODIES: usize = 300;
/// Connections that send their request head a byte every `TRICKLE`.
const SLOW_HEADS: usize = 50;
const TRICKLE: Duration = Duration::from_secs(2);
/// The server's deadlines (src/http/mod.rs).
const HEAD_DEADLINE: Duration = Duration::from_secs(5);
const BODY_DEADLINE: Duration = Duration::from_secs(10);
/// Real requests sent while the slow connections are held: one webhook and one poll a round.
const ROUNDS: usize = 30;
const ROUND_PACE: Duration = Duration::from_millis(100);
/// A real request that takes longer than this while under attack fails the test.
const PROMPT: Duration = Duration::from_secs(1);

/// `VmRSS`, `VmHWM` and `VmSize` of a process, in KiB.
fn memory(pid: u32) -> (u64, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"), field("VmSize:"))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// How a slow connection ended, and when (from its last head byte, or from its connect).
struct Ended {
    answer: Option<u16>,
    problem_code: Option<String>,
    after: Duration,
}

/// Declares a 1 MiB body, then sends it one byte every `TRICKLE` until the server answers
/// or closes.
async fn slow_body(addr: String, started: Arc<Semaphore>) -> Ended {
    let stream = TcpStream::connect(&addr).await.expect("connects");
    let (mut read, mut write) = stream.into_split();
    let head = format!(
        "POST /webhooks/veriff/decision HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: 1048576\r\nx-hmac-signature: {}\r\n\r\n{{",
        "0".repeat(64)
    );
    write.write_all(head.as_bytes()).await.expect("head sent");
    let sent = Instant::now();
    started.add_permits(1);
    let answer = trickle_until_answered(&mut read, &mut write, b" ").await;
    ended(answer, sent.elapsed())
}

/// Sends a request line, then a header name one byte every `TRICKLE`, never ending the head.
async fn slow_head(addr: String, started: Arc<Semaphore>) -> Ended {
    let stream = TcpStream::connect(&addr).await.expect("connects");
    let connected = Instant::now();
    let (mut read, mut write) = stream.into_split();
    write
        .write_all(b"POST /webhooks/veriff/decision HTTP/1.1\r\nx")
        .await
        .expect("request line sent");
    started.add_permits(1);
    let answer = trickle_until_answered(&mut read, &mut write, b"a").await;
    ended(answer, connected.elapsed())
}

/// Writes `byte` every `TRICKLE` until the server answers or closes, and returns what it said.
async fn trickle_until_answered(
    read: &mut OwnedReadHalf,
    write: &mut OwnedWriteHalf,
    byte: &[u8],
) -> RawAnswer {
    let trickle = async {
        let mut tick = tokio::time::interval(TRICKLE);
        tick.tick().await;
        loop {
            tick.tick().await;
            if write.write_all(byte).await.is_err() {
                // The server is gone from this connection: wait for the reader to see why.
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        answer = raw::read_response(read) => answer,
        () = trickle => unreachable!("the trickle never ends by itself"),
    }
}

fn ended(answer: RawAnswer, after: Duration) -> Ended {
    let problem_code = match &answer {
        RawAnswer::Response { body, .. } => serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|b| b["code"].as_str().map(str::to_owned)),
        RawAnswer::Closed => None,
    };
    Ended {
        answer: answer.status(),
        problem_code,
        after,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_while_real_requests_are_answered_promptly() {
    let (db, config, _queues) = child_deployment().await;
    let client_key = format!("ck_slow_{}", uuid::Uuid::new_v4().simple());
    let onboarding = uuid::Uuid::new_v4();
    let sql = db.client().await;
    let client_id = uuid::Uuid::new_v4();
    sql.execute(
        "INSERT INTO api_clients (id, name, key_sha256, created_at) VALUES ($1, 'slow test', $2, now())",
        &[&client_id, &key_digest(&client_key).as_slice()],
    )
    .await
    .expect("client");
    sql.execute(
        "INSERT INTO onboardings (id, client_id, phone_verified_at, expires_at, created_at)
         VALUES ($1, $2, now(), now() + interval '1 day', now())",
        &[&onboarding, &client_id],
    )
    .await
    .expect("onboarding");

    let mut serve = Spawned::start("kyc serve", {
        let mut command = kyc_command(&config);
        command.arg("serve").env("KYC_HTTP_ADDR", "127.0.0.1:0");
        command
    });
    let addr = serve.http_addr().await.to_string();
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    crate::harness::process::ServeChild::wait_ready(&http, &base).await;
    let pid = serve.id();
    let status_url = format!("{base}/v1/auth/register/status?onboardingId={onboarding}");
    let poll = |http: &reqwest::Client| {
        http.get(&status_url)
            .header("x-client-key", &client_key)
            .send()
    };
    let webhook = |http: &reqwest::Client, n: usize| {
        let body = event(&format!("slow-test-{n}"), Some("a1"), "started");
        http.post(format!("{base}/webhooks/veriff/event"))
            .header("x-hmac-signature", signed(&body))
            .body(body)
            .send()
    };
    // Warm: the process has served what it will serve under attack.
    for n in 0..5 {
        assert_eq!(
            webhook(&http, 1_000 + n).await.expect("webhook").status(),
            200
        );
        assert_eq!(poll(&http).await.expect("poll").status(), 200);
    }
    let (baseline_rss, _, baseline_size) = memory(pid);
    let baseline_fds = open_fds(pid);

    // The attack: every slow connection holds a server connection before the real requests go.
    let started = Arc::new(Semaphore::new(0));
    let attack_started = Instant::now();
    let bodies: Vec<_> = (0..SLOW_BODIES)
        .map(|_| tokio::spawn(slow_body(addr.clone(), Arc::clone(&started))))
        .collect();
    let heads: Vec<_> = (0..SLOW_HEADS)
        .map(|_| tokio::spawn(slow_head(addr.clone(), Arc::clone(&started))))
        .collect();
    let all = u32::try_from(SLOW_BODIES + SLOW_HEADS).expect("a count");
    drop(
        started
            .acquire_many(all)
            .await
            .expect("every slow client started"),
    );
    eventually(
        Duration::from_secs(4),
        "the server to hold every slow connection",
        || async { (open_fds(pid) >= baseline_fds + SLOW_BODIES + SLOW_HEADS).then_some(()) },
    )
    .await;
    let held_after = attack_started.elapsed();

    // Real traffic, on connections of its own, while the slow ones are held.
    let real = reqwest::Client::new();
    let mut webhook_times = Vec::new();
    let mut poll_times = Vec::new();
    let mut pace = tokio::time::interval(ROUND_PACE);
    for n in 0..ROUNDS {
        pace.tick().await;
        let t = Instant::now();
        let status = webhook(&real, n).await.expect("webhook answered").status();
        webhook_times.push(t.elapsed());
        assert_eq!(status, 200, "a real webhook under attack");
        let t = Instant::now();
        let status = poll(&real).await.expect("poll answered").status();
        poll_times.push(t.elapsed());
        assert_eq!(status, 200, "a real status poll under attack");
    }
    let real_done = attack_started.elapsed();
    let (rss_under_attack, _, size_under_attack) = memory(pid);
    let fds_under_attack = open_fds(pid);
    assert!(
        fds_under_attack >= baseline_fds + SLOW_BODIES,
        "the slow connections were still held during the real traffic ({fds_under_attack} fds)"
    );

    // The deadlines cut every slow connection off.
    let mut body_ends = Vec::new();
    for task in bodies {
        body_ends.push(task.await.expect("slow body task"));
    }
    let mut head_ends = Vec::new();
    for task in heads {
        head_ends.push(task.await.expect("slow head task"));
    }
    let (_, peak_rss, peak_size) = memory(pid);
    serve.assert_running();
    crate::harness::process::ServeChild::wait_ready(&http, &base).await;
    assert_eq!(poll(&http).await.expect("poll").status(), 200);
    eventually(
        Duration::from_secs(10),
        "the slow connections released",
        || async { (open_fds(pid) <= baseline_fds + 10).then_some(()) },
    )
    .await;

    webhook_times.sort_unstable();
    poll_times.sort_unstable();
    let longest = |ends: &[Ended]| ends.iter().map(|e| e.after).max().unwrap_or_default();
    let shortest = |ends: &[Ended]| ends.iter().map(|e| e.after).min().unwrap_or_default();
    let tally = |ends: &[Ended]| {
        let mut counts = std::collections::BTreeMap::new();
        for e in ends {
            let key = match (&e.answer, &e.problem_code) {
                (Some(s), Some(code)) => format!("{s} {code}"),
                (Some(s), None) => s.to_string(),
                (None, _) => "closed".to_owned(),
            };
            *counts.entry(key).or_insert(0) += 1;
        }
        counts
    };
    eprintln!(
        "slow clients: {SLOW_BODIES} slow bodies, {SLOW_HEADS} slow heads, all held after {held_after:?}\n\
         real traffic ({ROUNDS} webhooks + {ROUNDS} polls, done {real_done:?} into the attack): \
         webhooks p50 {:?} max {:?}; polls p50 {:?} max {:?}\n\
         slow bodies ended {:?} (after {:?}..{:?}); slow heads ended {:?} (after {:?}..{:?})\n\
         memory KiB: baseline RSS {baseline_rss}, under attack RSS {rss_under_attack}, peak RSS (VmHWM) {peak_rss}; \
         VmSize baseline {baseline_size}, under attack {size_under_attack}, end {peak_size}; \
         fds baseline {baseline_fds}, under attack {fds_under_attack}",
        percentile(&webhook_times, 0.5),
        webhook_times.last(),
        percentile(&poll_times, 0.5),
        poll_times.last(),
        tally(&body_ends),
        shortest(&body_ends),
        longest(&body_ends),
        tally(&head_ends),
        shortest(&head_ends),
        longest(&head_ends),
    );

    assert!(
        webhook_times.last().is_some_and(|t| *t < PROMPT)
            && poll_times.last().is_some_and(|t| *t < PROMPT),
        "real requests answered within {PROMPT:?} under attack"
    );
    for e in &body_ends {
        assert!(
            e.answer.is_none()
                || (e.answer == Some(408) && e.problem_code.as_deref() == Some("REQUEST_TIMEOUT")),
            "a slow body ends with 408 REQUEST_TIMEOUT or a closed connection: {:?} {:?}",
            e.answer,
            e.problem_code
        );
        assert!(
            e.after >= BODY_DEADLINE - Duration::from_millis(500)
                && e.after < BODY_DEADLINE + Duration::from_secs(5),
            "a slow body is cut off at the body deadline, not after {:?}",
            e.after
        );
    }
    for e in &head_ends {
        assert!(
            e.answer.is_none() || e.answer == Some(408),
            "a slow head ends with 408 or a closed connection: {:?}",
            e.answer
        );
        assert!(
            e.after >= HEAD_DEADLINE - Duration::from_millis(500)
                && e.after < HEAD_DEADLINE + Duration::from_secs(5),
            "a slow head is cut off at the head deadline, not after {:?}",
            e.after
        );
    }
    // 300 declared MiB were never reserved: the peak stays far below them.
    let declared_kib = (SLOW_BODIES * 1024) as u64;
    assert!(
        peak_rss.saturating_sub(baseline_rss) < declared_kib / 5,
        "RSS grew by {} KiB under {SLOW_BODIES} declared 1 MiB bodies",
        peak_rss.saturating_sub(baseline_rss)
    );
    // RSS alone would not show a reservation (untouched pages are not resident); the
    // address space does, while the slow bodies are held.
    let grown = size_under_attack
        .max(peak_size)
        .saturating_sub(baseline_size);
    assert!(
        grown < declared_kib / 2,
        "VmSize grew by {grown} KiB under attack: memory reserved ahead of the bytes"
    );
}
