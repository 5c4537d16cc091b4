//! kyc's performance, measured against the machine's ceilings in the same run.
//!
//! `cargo bench --bench perf` runs every scenario and prints the table that
//! docs/BENCHMARKS.md records. `cargo test` runs it too, as a smoke run (a few hundred
//! webhooks, a few seconds) that asserts only that every ledger balances, so the harness
//! cannot rot. Everything runs on this machine against the local PostgreSQL and RabbitMQ:
//! the generator, kyc, and the services share the cores, which is why each figure is shown
//! with the ceiling it is a share of.
//!
//! `PERF_ONLY=ingest,drain,…` runs some scenarios only; `PERF_SCALE=0.2` shrinks them;
//! `PERF_PROFILE_DIR=dir` records the whole machine with `perf` during the measured phases of
//! ingest, drain and end to end.

mod ceilings;
mod client;
mod deployment;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use secrecy::SecretString;

use ceilings::Route;
use deployment::{
    AMQP_URL, DEAD_AMQP_URL, Deployment, Ledger, Profile, broker_cpu_seconds, cpu_seconds, webhooks,
};

/// What one figure is, against what, and the target it has.
struct Figure {
    name: String,
    value: f64,
    unit: &'static str,
    ceiling: Option<(&'static str, f64)>,
    target: Option<Target>,
}

#[derive(Clone, Copy)]
enum Target {
    AtLeast(f64),
    AtMost(f64),
    /// At least this share of the ceiling.
    Ratio(f64),
}

impl Figure {
    fn new(name: impl Into<String>, value: f64, unit: &'static str) -> Self {
        Self {
            name: name.into(),
            value,
            unit,
            ceiling: None,
            target: None,
        }
    }

    fn against(mut self, name: &'static str, ceiling: f64) -> Self {
        self.ceiling = Some((name, ceiling));
        self
    }

    fn target(mut self, target: Target) -> Self {
        self.target = Some(target);
        self
    }

    fn met(&self, full: bool) -> Option<bool> {
        // A smoke run's figures are not results: only its ledgers count.
        if !full {
            return None;
        }
        Some(match self.target? {
            Target::AtLeast(t) => self.value >= t,
            Target::AtMost(t) => self.value <= t,
            Target::Ratio(r) => self.value >= r * self.ceiling?.1,
        })
    }
}

struct Report {
    full: bool,
    figures: Vec<Figure>,
    ledgers: Vec<(String, Ledger)>,
    notes: Vec<String>,
}

impl Report {
    fn add(&mut self, figure: Figure) {
        println!("  {}: {:.2} {}", figure.name, figure.value, figure.unit);
        self.figures.push(figure);
    }

    fn ledger(&mut self, name: &str, ledger: Ledger) {
        println!("  ledger {name}: {ledger}");
        self.ledgers.push((name.to_owned(), ledger));
    }

    fn print(&self) {
        println!("\n| figure | value | ceiling | ratio | target | met |");
        println!("|---|---|---|---|---|---|");
        for f in &self.figures {
            let (ceiling, ratio) = match f.ceiling {
                Some((name, c)) => (format!("{c:.0} ({name})"), format!("{:.2}", f.value / c)),
                None => ("-".into(), "-".into()),
            };
            let target = match f.target {
                Some(Target::AtLeast(t)) => format!("≥ {t}"),
                Some(Target::AtMost(t)) => format!("≤ {t}"),
                Some(Target::Ratio(r)) => format!("≥ {r} × ceiling"),
                None => "-".into(),
            };
            let met = match f.met(self.full) {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "-",
            };
            println!(
                "| {} | {:.2} {} | {ceiling} | {ratio} | {target} | {met} |",
                f.name, f.value, f.unit
            );
        }
        println!(
            "\n| ledger | sent | 200 | other | applied | dead-lettered | missing | duplicated |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for (name, l) in &self.ledgers {
            println!(
                "| {name} | {} | {} | {} | {} | {} | {} | {} |",
                l.sent, l.ok, l.other, l.applied, l.dead_lettered, l.missing, l.duplicated
            );
        }
        for note in &self.notes {
            println!("\n{note}");
        }
    }
}

/// Sizes of one run: the full figures, or the smoke run of `cargo test`.
struct Plan {
    full: bool,
    only: Option<Vec<String>>,
    scale: f64,
}

impl Plan {
    fn n(&self, full: usize, smoke: usize) -> usize {
        if self.full {
            ((full as f64 * self.scale) as usize).max(1)
        } else {
            smoke
        }
    }

    fn runs(&self, scenario: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|s| s == scenario))
    }
}

fn self_cpu() -> f64 {
    cpu_seconds("/proc/self/stat")
}

#[tokio::main]
async fn main() {
    // cargo bench passes --bench; cargo test runs the binary without it.
    let full = std::env::args().any(|a| a == "--bench");
    let plan = Plan {
        full,
        only: std::env::var("PERF_ONLY")
            .ok()
            .map(|v| v.split(',').map(str::to_owned).collect()),
        scale: std::env::var("PERF_SCALE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1.0),
    };
    println!(
        "kyc performance, {} run, {} cores",
        if full { "full" } else { "smoke" },
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let mut report = Report {
        full,
        figures: Vec::new(),
        ledgers: Vec::new(),
        notes: Vec::new(),
    };
    let mut ceilings = Ceilings::default();
    if plan.runs("ceilings") {
        ceilings = measure_ceilings(&plan, &mut report).await;
    }
    if plan.runs("ingest") {
        ingest(&plan, &mut report, &ceilings).await;
    }
    if plan.runs("drain") {
        drain(&plan, &mut report, ceilings.database_batched).await;
    }
    if plan.runs("e2e") {
        end_to_end(&plan, &mut report).await;
    }
    if plan.runs("spool") {
        spool(&plan, &mut report).await;
    }
    if full && plan.runs("status") {
        status(&plan, &mut report).await;
    }
    if full && plan.runs("instructions") {
        instructions(&plan, &mut report).await;
    }
    report.print();
    let void: Vec<&String> = report
        .ledgers
        .iter()
        .filter(|(_, l)| !l.balances())
        .map(|(n, _)| n)
        .collect();
    assert!(void.is_empty(), "ledgers that do not balance: {void:?}");
}

/// The machine's ceilings, measured in this run (NaN for those a scenario filter skipped).
struct Ceilings {
    /// A bare publisher, default exchange straight into the queue.
    broker_bare: f64,
    /// A publisher that routes as the contract does (DESIGN.md §5: the `kyc.webhooks` topic
    /// exchange, kyc's headers, mandatory).
    broker_contract: f64,
    database_batched: f64,
}

impl Default for Ceilings {
    fn default() -> Self {
        Self {
            broker_bare: f64::NAN,
            broker_contract: f64::NAN,
            database_batched: f64::NAN,
        }
    }
}

async fn measure_ceilings(plan: &Plan, report: &mut Report) -> Ceilings {
    println!("ceilings");
    let deployment = Deployment::new("ceiling").await;
    let body_len = deployment::decision("s-00000000000000000000000000000000", "approved").len();
    let messages = plan.n(50_000, 500);
    let mut broker = [f64::NAN; 2];
    for (rate, route) in broker.iter_mut().zip([Route::Bare, Route::Contract]) {
        let cpu = broker_cpu_seconds();
        *rate = ceilings::broker(&deployment.prefix, route, messages, 64, body_len, None)
            .await
            .per_second;
        let cpu = broker_cpu_seconds() - cpu;
        report.add(Figure::new(
            format!("broker ceiling: {route}, 64 tasks, {body_len} B, quorum queue"),
            *rate,
            "msg/s",
        ));
        report.add(Figure::new(
            format!("RabbitMQ CPU per 1,000 messages, {route}"),
            cpu * 1000.0 / messages as f64,
            "s",
        ));
    }
    // What a publisher's confirm alone takes at the open-loop rate kyc's latency target has.
    let (rate, due) = if plan.full {
        (1000.0, 10_000)
    } else {
        (400.0, 200)
    };
    let open = ceilings::broker(
        &deployment.prefix,
        Route::Contract,
        due,
        64,
        body_len,
        Some(rate),
    )
    .await;
    report.add(Figure::new(
        "broker confirm latency p50 at 1,000/s open loop, contract publisher",
        open.ms(0.5),
        "ms",
    ));
    report.add(Figure::new(
        "broker confirm latency p99 at 1,000/s open loop, contract publisher",
        open.ms(0.99),
        "ms",
    ));
    let single = deployment.seed(plan.n(10_000, 200)).await;
    let unbatched = ceilings::database(&deployment, &single, 1, 4).await;
    report.add(Figure::new(
        "database ceiling: the worker's writes, 1 decision per transaction, 4 connections",
        unbatched,
        "decisions/s",
    ));
    let batched_work = deployment.seed(plan.n(50_000, 500)).await;
    let batched = ceilings::database(&deployment, &batched_work, 64, 4).await;
    report.add(Figure::new(
        "database ceiling: the worker's writes, 64 decisions per transaction, 4 connections",
        batched,
        "decisions/s",
    ));
    deployment.clean_up().await;
    Ceilings {
        broker_bare: broker[0],
        broker_contract: broker[1],
        database_batched: batched,
    }
}

/// Ingest, closed loop: how many signed webhooks one `kyc serve` accepts (every confirm
/// awaited), then the worker drains them, and the ledger.
async fn ingest(plan: &Plan, report: &mut Report, ceilings: &Ceilings) {
    println!("ingest");
    let deployment = Deployment::new("ingest").await;
    let n = plan.n(60_000, 300);
    const WARM: usize = 64;
    let open_n = plan.n(10_000, 100);
    let sessions = deployment.seed(n + WARM + open_n).await;
    let (mut requests, mut keys) = webhooks(&sessions);
    let (mut warm_requests, mut warm_keys) = (requests.split_off(n), keys.split_off(n));
    let (open_requests, open_keys) = (warm_requests.split_off(WARM), warm_keys.split_off(WARM));
    let serve = deployment.spawn("serve", AMQP_URL, &[]);
    deployment.ready(&serve, Duration::from_secs(30)).await;
    // Warm up connections and the broker with webhooks of their own.
    let warm = client::run(serve.addr, Arc::new(warm_requests), 8, None).await;
    let (cpu_gen, cpu_serve, cpu_broker) = (self_cpu(), serve.cpu_seconds(), broker_cpu_seconds());
    let profile = Profile::start("ingest");
    let run = client::run(serve.addr, Arc::new(requests.clone()), 64, None).await;
    profile.stop();
    let (cpu_gen, cpu_serve, cpu_broker) = (
        self_cpu() - cpu_gen,
        serve.cpu_seconds() - cpu_serve,
        broker_cpu_seconds() - cpu_broker,
    );
    report.add(
        Figure::new(
            "ingest throughput, closed loop, 64 connections",
            run.per_second(),
            "webhooks/s",
        )
        .against("broker, bare publisher", ceilings.broker_bare)
        .target(Target::Ratio(0.75)),
    );
    report.add(
        Figure::new(
            "ingest throughput against a publisher routed as the contract is",
            run.per_second(),
            "webhooks/s",
        )
        .against("broker, contract publisher", ceilings.broker_contract),
    );
    report.add(Figure::new("ingest latency p50", run.ms(0.5), "ms"));
    report.add(Figure::new("ingest latency p99", run.ms(0.99), "ms"));
    report.add(Figure::new("ingest latency p99.9", run.ms(0.999), "ms"));
    report.add(Figure::new("ingest latency max", run.max_ms(), "ms"));
    report.add(
        Figure::new(
            "kyc serve peak RSS at full load",
            serve.peak_rss_mib(),
            "MiB",
        )
        .target(Target::AtMost(32.0)),
    );
    report.add(Figure::new(
        "kyc serve CPU per 1,000 webhooks",
        cpu_serve * 1000.0 / run.ok().max(1) as f64,
        "s",
    ));
    report.add(Figure::new(
        "RabbitMQ CPU per 1,000 webhooks",
        cpu_broker * 1000.0 / run.ok().max(1) as f64,
        "s",
    ));
    report.add(Figure::new(
        "generator CPU per 1,000 webhooks",
        cpu_gen * 1000.0 / run.ok().max(1) as f64,
        "s",
    ));
    if run.other() > 0 {
        report.notes.push(format!(
            "ingest: answers other than 200: {:?}",
            run.statuses
        ));
    }
    // The same serve at 1,000/s with nothing else of kyc's running: its latency without the
    // worker and PostgreSQL taking the cores, next to end to end's figure with them.
    let rate = if plan.full { 1000.0 } else { 400.0 };
    let open = client::run(serve.addr, Arc::new(open_requests), 64, Some(rate)).await;
    report.add(Figure::new(
        "ingest latency p50 at 1,000/s open loop, serve alone (no worker)",
        open.ms(0.5),
        "ms",
    ));
    report.add(Figure::new(
        "ingest latency p99 at 1,000/s open loop, serve alone (no worker)",
        open.ms(0.99),
        "ms",
    ));
    let worker = deployment.spawn("worker", AMQP_URL, &[]);
    let accepted: Vec<String> = run
        .accepted
        .iter()
        .map(|(i, _)| keys[*i].clone())
        .chain(warm.accepted.iter().map(|(i, _)| warm_keys[*i].clone()))
        .chain(open.accepted.iter().map(|(i, _)| open_keys[*i].clone()))
        .collect();
    settle(&deployment, &accepted, Duration::from_secs(120)).await;
    let others = run.other() + warm.other() + open.other();
    report.ledger(
        "ingest",
        deployment
            .ledger(n + WARM + open_n, &accepted, others)
            .await,
    );
    drop((serve, worker));
    deployment.clean_up().await;
}

/// Waits until every accepted key is recorded (or dead-lettered), or `within` passes.
async fn settle(deployment: &Deployment, accepted: &[String], within: Duration) {
    let n = accepted.len() as i64;
    deployment
        .wait_count(
            "SELECT (SELECT count(*) FROM inputs WHERE kind <> 'session_created')
                  + (SELECT count(*) FROM dead_letters)",
            n,
            within,
        )
        .await;
}

/// Backlog drain: signed decisions queued while no worker runs, then one `kyc worker`.
async fn drain(plan: &Plan, report: &mut Report, database_ceiling: f64) {
    println!("drain");
    let deployment = Deployment::new("drain").await;
    let n = plan.n(200_000, 300);
    let sessions = deployment.seed(n).await;
    let keys = preload(&deployment, &sessions).await;
    let started = Instant::now();
    let profile = Profile::start("drain");
    let worker = deployment.spawn("worker", AMQP_URL, &[]);
    let done = deployment
        .wait_count(
            "SELECT count(*) FROM inputs WHERE kind = 'decision'",
            n as i64,
            Duration::from_secs(600),
        )
        .await;
    profile.stop();
    let took = done.map_or(Duration::MAX, |d| d - started);
    report.add(
        Figure::new(
            format!("backlog drain, {n} queued, one worker (process start included)"),
            n as f64 / took.as_secs_f64(),
            "decisions/s",
        )
        .against("database, batched", database_ceiling)
        .target(Target::AtLeast(5000.0)),
    );
    report.add(
        Figure::new(
            "kyc worker peak RSS during the drain",
            worker.peak_rss_mib(),
            "MiB",
        )
        .target(Target::AtMost(128.0)),
    );
    report.ledger("drain", deployment.ledger(n, &keys, 0).await);
    drop(worker);
    deployment.clean_up().await;
}

/// Publishes a signed decision for each session exactly as the receiver would, confirmed.
async fn preload(deployment: &Deployment, sessions: &[(uuid::Uuid, String)]) -> Vec<String> {
    let topology = deployment.topology();
    let connection = lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default())
        .await
        .expect("broker");
    let channel = connection.create_channel().await.expect("channel");
    topology.declare(&channel).await.expect("topology");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let integrations = kyc::veriff::integration::Integrations::new(
        kyc::veriff::integration::IntegrationKeys::new(
            kyc::veriff::integration::Integration::Eu,
            SecretString::from(deployment::API_KEY),
            vec![SecretString::from(deployment::SECRET)],
        ),
        None,
    );
    let mut keys = Vec::with_capacity(sessions.len());
    for chunk in sessions.chunks(5_000) {
        for (_, session) in chunk {
            let body = deployment::decision(session, "approved");
            let raw = kyc::veriff::signature::RawWebhook {
                kind: kyc::veriff::Kind::Decision,
                headers: kyc::veriff::signature::SignatureHeaders::hmac(Some(&deployment::sign(
                    &body,
                ))),
                body: Bytes::from(body),
            };
            let webhook = integrations.verify(raw).expect("signed");
            let facts = kyc::veriff::payload::parse(kyc::veriff::Kind::Decision, webhook.body());
            let key = kyc::veriff::dedup::dedup_key(
                kyc::veriff::Kind::Decision,
                facts.as_ref(),
                webhook.body(),
            );
            let envelope = kyc::queue::Envelope::webhook(
                &topology,
                &webhook,
                facts.as_ref(),
                key.clone(),
                Utc::now(),
            );
            keys.push(key);
            let _confirm = channel
                .basic_publish(
                    envelope.exchange().into(),
                    envelope.routing_key().into(),
                    BasicPublishOptions::default(),
                    envelope.body(),
                    envelope.properties("preload"),
                )
                .await
                .expect("publish");
        }
        channel.wait_for_confirms().await.expect("confirms");
    }
    let _ = connection.close(200, "preloaded".into()).await;
    keys
}

/// Serve and worker together, open loop: ingest latency at 1,000/s, the time from the 200 to
/// the committed row, then a sustained 3,000/s with its ledger.
async fn end_to_end(plan: &Plan, report: &mut Report) {
    println!("end to end");
    for (rate, seconds, label) in [(1000.0, 20.0, "1,000/s"), (3000.0, 60.0, "3,000/s")] {
        let deployment = Deployment::new("e2e").await;
        let n = plan.n((rate * seconds) as usize, 200);
        let rate = if plan.full { rate } else { 400.0 };
        let sessions = deployment.seed(n).await;
        let (requests, keys) = webhooks(&sessions);
        let (_listener, committed) = deployment.listen().await;
        let serve = deployment.spawn("serve", AMQP_URL, &[]);
        let worker = deployment.spawn("worker", AMQP_URL, &[]);
        deployment.ready(&serve, Duration::from_secs(30)).await;
        deployment.ready(&worker, Duration::from_secs(30)).await;
        let profile = Profile::start(&format!("e2e-{}", rate as u64));
        let run = client::run(serve.addr, Arc::new(requests), 64, Some(rate)).await;
        profile.stop();
        let accepted: Vec<String> = run.accepted.iter().map(|(i, _)| keys[*i].clone()).collect();
        settle(&deployment, &accepted, Duration::from_secs(120)).await;
        let committed = committed.lock().expect("lock").clone();
        let mut e2e =
            hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
        for (i, ok_at) in &run.accepted {
            if let Some(at) = committed.get(&sessions[*i].0) {
                let _ = e2e.record(at.saturating_duration_since(*ok_at).as_micros().max(1) as u64);
            }
        }
        let ms = |q: f64| e2e.value_at_quantile(q) as f64 / 1000.0;
        report.add(
            Figure::new(
                format!("open loop {label}: achieved"),
                run.per_second(),
                "webhooks/s",
            )
            .target(Target::AtLeast(rate * 0.98)),
        );
        if label == "1,000/s" {
            report.add(
                Figure::new(
                    "ingest latency p99 at 1,000/s (from scheduled send)",
                    run.ms(0.99),
                    "ms",
                )
                .target(Target::AtMost(5.0)),
            );
            report.add(
                Figure::new("200 → committed row p99 at 1,000/s", ms(0.99), "ms")
                    .target(Target::AtMost(100.0)),
            );
            report.add(Figure::new(
                "200 → committed row p50 at 1,000/s",
                ms(0.5),
                "ms",
            ));
        } else {
            report.add(Figure::new(
                format!("ingest latency p99 at {label}"),
                run.ms(0.99),
                "ms",
            ));
            report.add(Figure::new(
                format!("200 → committed row p99 at {label}"),
                ms(0.99),
                "ms",
            ));
        }
        report.ledger(
            &format!("end to end {label}"),
            deployment.ledger(n, &accepted, run.other()).await,
        );
        drop((serve, worker));
        deployment.clean_up().await;
    }
}

/// The spool: ingest while the broker is down, then a relay draining it while new webhooks
/// keep flowing.
async fn spool(plan: &Plan, report: &mut Report) {
    println!("spool");
    let deployment = Deployment::new("spool").await;
    let n = plan.n(60_000, 200);
    let live_n = plan.n(20_000, 100);
    let sessions = deployment.seed(n + live_n).await;
    let (requests, keys) = webhooks(&sessions);
    // Broker down: its URL points where nothing listens.
    let down = deployment.spawn("serve", DEAD_AMQP_URL, &[]);
    deployment.ready(&down, Duration::from_secs(30)).await;
    let spooled = client::run(down.addr, Arc::new(requests[..n].to_vec()), 64, None).await;
    report.add(
        Figure::new(
            "spool: webhooks answered 200 while the broker is down",
            spooled.per_second(),
            "webhooks/s",
        )
        .target(Target::AtLeast(3000.0)),
    );
    report.add(Figure::new(
        "spool: latency p99 while the broker is down",
        spooled.ms(0.99),
        "ms",
    ));
    drop(down);
    // The broker back: a relay (in a serve with the broker) drains, new webhooks keep coming.
    let relay = deployment.spawn("serve", AMQP_URL, &[]);
    let started = Instant::now();
    deployment.ready(&relay, Duration::from_secs(30)).await;
    let live_rate = if plan.full { 1000.0 } else { 200.0 };
    let live = tokio::spawn(client::run(
        relay.addr,
        Arc::new(requests[n..].to_vec()),
        16,
        Some(live_rate),
    ));
    let drained = deployment
        .wait_count(
            "SELECT (CASE WHEN EXISTS (SELECT 1 FROM spool) THEN 0 ELSE 1 END)::bigint",
            1,
            Duration::from_secs(300),
        )
        .await;
    let took = drained.map_or(Duration::MAX, |d| d - started);
    report.add(
        Figure::new(
            format!(
                "spool: relay drain with new webhooks at {live_rate}/s (process start included)"
            ),
            spooled.ok() as f64 / took.as_secs_f64(),
            "webhooks/s",
        )
        .target(Target::AtLeast(5000.0)),
    );
    let live = live.await.expect("live stream");
    let worker = deployment.spawn("worker", AMQP_URL, &[]);
    let accepted: Vec<String> = spooled
        .accepted
        .iter()
        .map(|(i, _)| keys[*i].clone())
        .chain(live.accepted.iter().map(|(i, _)| keys[n + *i].clone()))
        .collect();
    settle(&deployment, &accepted, Duration::from_secs(300)).await;
    report.ledger(
        "spool",
        deployment
            .ledger(n + live_n, &accepted, spooled.other() + live.other())
            .await,
    );
    drop((relay, worker));
    deployment.clean_up().await;
}

/// The status endpoint under an external generator (wrk), 64 connections, no change.
async fn status(plan: &Plan, report: &mut Report) {
    println!("status");
    let Ok(wrk) = which("wrk") else {
        report
            .notes
            .push("status: wrk is not installed (apt-get install wrk); not measured".into());
        return;
    };
    let deployment = Deployment::new("status").await;
    let client_id = uuid::Uuid::new_v4();
    let key = format!("ck_perf_{}", uuid::Uuid::new_v4().simple());
    deployment
        .db
        .execute(
            "INSERT INTO api_clients (id, name, key_sha256, created_at) VALUES ($1, 'perf', sha256($2::text::bytea), now())",
            &[&client_id, &key],
        )
        .await
        .expect("client");
    let onboardings: Vec<uuid::Uuid> = (0..64).map(|_| uuid::Uuid::new_v4()).collect();
    deployment
        .db
        .execute(
            "INSERT INTO onboardings (id, client_id, phone_verified_at, expires_at)
             SELECT unnest($1::uuid[]), $2, now(), now() + interval '1 day'",
            &[&onboardings, &client_id],
        )
        .await
        .expect("onboardings");
    let serve = deployment.spawn("serve", AMQP_URL, &[]);
    deployment.ready(&serve, Duration::from_secs(30)).await;
    let script = std::env::temp_dir().join(format!("kyc-status-{}.lua", client_id.simple()));
    let paths: Vec<String> = onboardings
        .iter()
        .map(|o| format!("\"/v1/auth/register/status?onboardingId={o}\""))
        .collect();
    std::fs::write(
        &script,
        format!(
            "local paths = {{{}}}\nlocal i = 0\nrequest = function()\n  i = i + 1\n  return wrk.format(\"GET\", paths[(i % #paths) + 1], {{[\"x-client-key\"] = \"{key}\"}})\nend\n",
            paths.join(",")
        ),
    )
    .expect("the wrk script");
    let seconds = if plan.scale < 1.0 { 5 } else { 15 };
    let output = std::process::Command::new(wrk)
        .args(["-t2", "-c64", &format!("-d{seconds}s"), "--latency", "-s"])
        .arg(&script)
        .arg(format!("http://{}", serve.addr))
        .output()
        .expect("wrk runs");
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&output.stdout);
    let rate = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map_or(f64::NAN, |v| wrk_ms(v.trim()));
    let non_2xx = text.contains("Non-2xx");
    report.add(
        Figure::new("status endpoint, wrk 64 connections", rate, "requests/s")
            .target(Target::AtLeast(20_000.0)),
    );
    report.add(Figure::new("status endpoint p99", p99, "ms").target(Target::AtMost(10.0)));
    if non_2xx {
        report
            .notes
            .push(format!("status: wrk saw answers other than 2xx:\n{text}"));
    }
    drop(serve);
    deployment.clean_up().await;
}

fn wrk_ms(text: &str) -> f64 {
    let (number, unit) = text.split_at(
        text.find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(text.len()),
    );
    let n: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => f64::NAN,
    }
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .ok_or(())
}

/// Instructions per accepted webhook and per applied decision, from callgrind: figures that
/// repeat from run to run where times do not. Each is the difference of two runs (a small
/// and a larger load) divided by the difference in load, so start-up does not count.
async fn instructions(plan: &Plan, report: &mut Report) {
    println!("instructions (callgrind)");
    if which("valgrind").is_err() {
        report
            .notes
            .push("instructions: valgrind is not installed; not measured".into());
        return;
    }
    let (small, large) = (plan.n(200, 20), plan.n(1200, 60));
    let mut serve_ir = Vec::new();
    let mut worker_ir = Vec::new();
    for n in [small, large] {
        let deployment = Deployment::new("ir").await;
        let sessions = deployment.seed(n).await;
        let (requests, keys) = webhooks(&sessions);
        let dir = std::env::temp_dir();
        let out = |role: &str| dir.join(format!("kyc-callgrind-{role}-{}-{n}", deployment.prefix));
        let serve_out = out("serve");
        let wrapper = |path: &std::path::Path| {
            vec![
                "valgrind".to_owned(),
                "--tool=callgrind".to_owned(),
                format!("--callgrind-out-file={}", path.display()),
            ]
        };
        let serve_wrapper = wrapper(&serve_out);
        let serve_wrapper: Vec<&str> = serve_wrapper.iter().map(String::as_str).collect();
        let serve = deployment.spawn_wrapped(&serve_wrapper, "serve", AMQP_URL, &[]);
        deployment.ready(&serve, Duration::from_secs(120)).await;
        let run = client::run(serve.addr, Arc::new(requests), 8, None).await;
        serve.stop();
        serve_ir.push(callgrind_total(&serve_out));
        let worker_out = out("worker");
        let worker_wrapper = wrapper(&worker_out);
        let worker_wrapper: Vec<&str> = worker_wrapper.iter().map(String::as_str).collect();
        let worker = deployment.spawn_wrapped(&worker_wrapper, "worker", AMQP_URL, &[]);
        let accepted: Vec<String> = run.accepted.iter().map(|(i, _)| keys[*i].clone()).collect();
        settle(&deployment, &accepted, Duration::from_secs(300)).await;
        worker.stop();
        worker_ir.push(callgrind_total(&worker_out));
        // PERF_KEEP keeps the profiles for callgrind_annotate.
        if std::env::var_os("PERF_KEEP").is_none() {
            let _ = std::fs::remove_file(&serve_out);
            let _ = std::fs::remove_file(&worker_out);
        } else {
            println!(
                "  kept {} and {}",
                serve_out.display(),
                worker_out.display()
            );
        }
        deployment.clean_up().await;
    }
    let per = |ir: &[f64]| (ir[1] - ir[0]) / (large - small) as f64;
    report.add(Figure::new(
        "instructions per accepted webhook (kyc serve)",
        per(&serve_ir),
        "Ir",
    ));
    report.add(Figure::new(
        "instructions per applied decision (kyc worker)",
        per(&worker_ir),
        "Ir",
    ));
}

/// The `summary:` (or `totals:`) instruction count of a callgrind output file.
fn callgrind_total(path: &std::path::Path) -> f64 {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}
